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

/// The URL a client at this environment's TLS settings connects to, for
/// messages and status output: `https://` when `HOURCELL_CA` is set.
pub fn shown_server(server: &str) -> String {
    server_url(server, ClientTls::from_env().enabled()).unwrap_or_else(|_| normalize_server(server))
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
/// `http://`; URLs with a scheme are kept, except that with TLS an
/// `http://` URL is refused: a URL cannot switch TLS off (credentials
/// would travel in clear).
pub fn server_url(server: &str, tls: bool) -> Result<String> {
    let u = normalize_server(server);
    if !tls {
        return Ok(u);
    }
    if u.starts_with("http://") {
        if server.contains("://") {
            return Err(ClientError::PlaintextWithTls { url: u });
        }
        return Ok(u.replacen("http://", "https://", 1));
    }
    Ok(u)
}

/// What a node shows another node's internal services besides its TLS
/// certificate: the cluster secret, on a cluster without TLS.
#[derive(Clone, Default)]
pub struct NodeCredentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl NodeCredentials {
    pub fn new(secret: Option<&hourcell_node::config::Secret>) -> Result<Self> {
        match secret {
            None => Ok(NodeCredentials(None)),
            Some(s) => Ok(NodeCredentials(Some(
                s.0.parse().map_err(|_| ClientError::BadToken)?,
            ))),
        }
    }
}

impl tonic::service::Interceptor for NodeCredentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut()
                .insert(crate::auth::NODE_SECRET_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A connection to another node's internal services.
pub type NodeChannel = tonic::service::interceptor::InterceptedService<Channel, NodeCredentials>;

/// How this node dials its peers: TLS with its node certificate, or the
/// cluster secret.
#[derive(Clone, Default)]
pub struct PeerDialer {
    pub tls: Option<ClientTls>,
    pub creds: NodeCredentials,
}

impl PeerDialer {
    /// How a node with `security` dials its peers: its node certificate
    /// under TLS, else the cluster secret.
    pub fn of_node(security: &hourcell_node::config::SecurityConfig) -> Result<PeerDialer> {
        let tls = security.tls.as_ref().map(ClientTls::of_node);
        let secret = match &tls {
            Some(_) => None,
            None => security.cluster_secret.as_ref(),
        };
        Ok(PeerDialer {
            creds: NodeCredentials::new(secret)?,
            tls,
        })
    }

    /// The URL of a peer at `addr` (see [`server_url`]).
    pub fn url(&self, addr: &str) -> Result<String> {
        server_url(addr, self.tls.is_some())
    }

    /// Connects to `url`; requests time out after `timeout`.
    pub async fn connect(&self, url: &str, timeout: Duration) -> Result<NodeChannel> {
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|source| ClientError::BadUrl {
                server: url.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout)
            .tcp_nodelay(true);
        if let Some(t) = &self.tls {
            ep = ep.tls_config(t.config()?)?;
        }
        let ch = ep.connect().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            cause: root_cause(&e),
        })?;
        Ok(tonic::service::interceptor::InterceptedService::new(
            ch,
            self.creds.clone(),
        ))
    }
}

async fn plain_channel(server: &str, tls: &ClientTls) -> Result<Channel> {
    let url = server_url(server, tls.enabled())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_cannot_switch_tls_off() {
        assert_eq!(
            server_url("127.0.0.1:7420", false).unwrap(),
            "http://127.0.0.1:7420"
        );
        assert_eq!(
            server_url("127.0.0.1:7420", true).unwrap(),
            "https://127.0.0.1:7420"
        );
        assert_eq!(server_url("https://h:1/", true).unwrap(), "https://h:1");
        let e = server_url("http://h:1", true).unwrap_err();
        assert!(matches!(e, ClientError::PlaintextWithTls { .. }), "{e}");
        assert!(e.to_string().contains("plaintext"), "{e}");
        // Peers dial through the same rule.
        let d = PeerDialer {
            tls: Some(ClientTls::default()),
            creds: NodeCredentials::default(),
        };
        assert!(d.url("http://10.0.0.2:7420").is_err());
        assert_eq!(d.url("10.0.0.2:7420").unwrap(), "https://10.0.0.2:7420");
    }
}
