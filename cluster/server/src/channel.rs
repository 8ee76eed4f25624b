//! Client connections to a node: the URL rules, credentials sent with
//! every request, TLS, and typed clients with the message size limits.
//! Used by the CLI and by nodes that call each other (join, routing).

use std::time::Duration;

use crate::error::ClientError;

type Result<T, E = ClientError> = std::result::Result<T, E>;
use hourcell_proto::v1;
use tonic::transport::{Channel, Endpoint};

use crate::tls::ClientTls;

/// Largest gRPC message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// `127.0.0.1:7420` → `http://127.0.0.1:7420`; URLs with a scheme are kept.
pub fn normalize_server(server: &str) -> String {
    let s = server.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// A connection that sends the caller's credentials with every request.
pub type Ch = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// The `authorization: Bearer TOKEN` header of every request: the token
/// comes from `HOURCELL_TOKEN`, or the file named by `HOURCELL_TOKEN_FILE`
/// (`hourcell token issue` makes one). Without either, requests carry no
/// credentials, which a `hourcell dev` node accepts as the local user.
#[derive(Clone, Default)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Credentials {
    pub fn bearer(token: &str) -> Result<Self> {
        let v = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::BadToken)?;
        Ok(Credentials(Some(v)))
    }

    pub fn from_env() -> Result<Self> {
        if let Ok(t) = std::env::var("HOURCELL_TOKEN") {
            if !t.trim().is_empty() {
                return Self::bearer(&t);
            }
        }
        if let Ok(f) = std::env::var("HOURCELL_TOKEN_FILE") {
            let t = std::fs::read_to_string(&f).map_err(|source| ClientError::TokenFile {
                path: f.into(),
                source,
            })?;
            return Self::bearer(&t);
        }
        Ok(Credentials(None))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connects to a node with the caller's credentials (see [`Credentials`]).
pub async fn channel(server: &str) -> Result<Ch> {
    channel_as(server, Credentials::from_env()?).await
}

/// Connects to a node with the given credentials, with a clear error naming
/// the server if it is not reachable. TLS as `HOURCELL_CA`, `HOURCELL_CERT`
/// and `HOURCELL_KEY` say.
pub async fn channel_as(server: &str, creds: Credentials) -> Result<Ch> {
    channel_with(server, creds, &ClientTls::from_env()).await
}

/// Connects with the given credentials and TLS files.
pub async fn channel_with(server: &str, creds: Credentials, tls: &ClientTls) -> Result<Ch> {
    Ok(tonic::service::interceptor::InterceptedService::new(
        plain_channel(server, tls).await?,
        creds,
    ))
}

/// `host:port` → `https://host:port` when TLS is configured, else
/// `http://`; URLs with a scheme are kept.
pub fn server_url(server: &str, tls: bool) -> String {
    let u = normalize_server(server);
    if tls && !server.contains("://") {
        u.replacen("http://", "https://", 1)
    } else {
        u
    }
}

async fn plain_channel(server: &str, tls: &ClientTls) -> Result<Channel> {
    let url = server_url(server, tls.enabled());
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| ClientError::BadUrl {
            server: server.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        if !tls.enabled() {
            return Err(ClientError::NeedsCa { url });
        }
        endpoint = endpoint.tls_config(tls.config()?)?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable {
            cause: root_cause(&e),
            url,
        })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub fn query_client(ch: Ch) -> v1::query_client::QueryClient<Ch> {
    v1::query_client::QueryClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn ingest_client(ch: Ch) -> v1::ingest_client::IngestClient<Ch> {
    v1::ingest_client::IngestClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn registry_client(ch: Ch) -> v1::registry_client::RegistryClient<Ch> {
    v1::registry_client::RegistryClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn admin_client(ch: Ch) -> v1::admin_client::AdminClient<Ch> {
    v1::admin_client::AdminClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
