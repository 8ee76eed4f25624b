//! The server crate's errors: TLS material, client connections and
//! starting a node. (Errors of requests become gRPC statuses in
//! [`crate::status`].)

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_rustls::rustls;

/// Certificates, keys and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path} (it must not exist yet): {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad PEM in {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS needs a CA certificate (HOURCELL_CA)")]
    NoCa,
    #[error("a client certificate needs both HOURCELL_CERT and HOURCELL_KEY")]
    HalfIdentity,
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Connecting to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the token is not printable ASCII")]
    BadToken,
    #[error("cannot read HOURCELL_TOKEN_FILE {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --server {server:?}: {source}")]
    BadUrl {
        server: String,
        source: tonic::transport::Error,
    },
    #[error(
        "{url} is TLS: set HOURCELL_CA to the CA certificate (and HOURCELL_CERT and \
         HOURCELL_KEY for a client certificate)"
    )]
    NeedsCa { url: String },
    #[error(
        "{url} is plaintext but TLS is configured (HOURCELL_CA or [security.tls]); use \
         https:// or host:port, so that credentials never travel in clear"
    )]
    PlaintextWithTls { url: String },
    #[error("cannot reach hourcell at {url}: is `hourcell dev` running? ({cause})")]
    Unreachable { url: String, cause: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Why a node could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Open(#[from] hourcell_node::OpenError),
    #[error(transparent)]
    Config(#[from] hourcell_node::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read security.token_key_file {path}: {source}")]
    TokenKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("security.token_key_file {path} holds {len} bytes; at least 32 are needed")]
    ShortTokenKey { path: PathBuf, len: usize },
    #[error(
        "this node has no TLS configuration ([security.tls] cert, key, ca); hourcell node \
         serves person-level data and refuses to run in plaintext unless [security] \
         insecure = true is set explicitly (see docs/SECURITY.md; `hourcell certs init DIR` \
         makes certificates to try TLS with)"
    )]
    Plaintext,
    #[error(
        "insecure = true {}: plaintext would carry {} across the network; \
         use [security.tls], or set [security] allow_insecure_network = true to accept that",
        if *tokens { "with a token_key_file" } else { "on a non-loopback address" },
        if *tokens { "bearer tokens" } else { "person-level answers" }
    )]
    InsecureExposed { listen: SocketAddr, tokens: bool },
    #[error(transparent)]
    Roles(#[from] hourcell_node::NodeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
