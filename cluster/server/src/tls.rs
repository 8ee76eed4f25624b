//! TLS (rustls, ring) on the client API and between nodes.
//!
//! - The server accepts TLS itself (tokio-rustls) and hands tonic the
//!   established streams, so that its configuration can be **reloaded from
//!   disk without a restart**: the certificate, key and CA files are polled
//!   every second; a change builds a new configuration for new connections,
//!   while open connections carry on. A configuration that fails to load
//!   is logged and the previous one kept.
//! - Client certificates are verified against the CA when presented
//!   (mutual TLS); clients may instead authenticate with a bearer token.
//!   Nodes always present their certificate (`node-<id>`).
//! - [`LocalCa`] makes a local CA and node and client certificates for
//!   trying it out and for tests (`hourcell certs init DIR`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::TlsError;

type Result<T, E = TlsError> = std::result::Result<T, E>;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use hourcell_node::config::TlsPaths;

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.to_path_buf(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(p)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            path: p.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: p.to_path_buf(),
        });
    }
    Ok(certs)
}

fn roots(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: format!("bad CA certificate in {}", ca.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// Builds the server side from the files as they are now.
pub fn server_config(p: &TlsPaths) -> Result<Arc<ServerConfig>> {
    let certs = read_certs(&p.cert)?;
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|source| TlsError::Pem {
        path: p.key.clone(),
        source,
    })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&p.ca)?), provider())
        // Clients may authenticate with a bearer token instead.
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions".into(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            what: format!("{} does not fit {}", p.key.display(), p.cert.display()),
            source,
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

fn mtimes(p: &TlsPaths) -> Vec<Option<SystemTime>> {
    [&p.cert, &p.key, &p.ca]
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// The TLS connections accepted on `listener`, for
/// `serve_with_incoming`. Handshakes run concurrently (a slow or hostile
/// client does not hold up the others); failed ones are dropped.
pub fn incoming(
    listener: TcpListener,
    paths: TlsPaths,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>> {
    let current = Arc::new(RwLock::new(server_config(&paths)?));
    {
        let current = current.clone();
        let paths = paths.clone();
        tokio::spawn(async move {
            let mut seen = mtimes(&paths);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = mtimes(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                match server_config(&paths) {
                    Ok(c) => {
                        *current.write() = c;
                        tracing::info!(cert = %paths.cert.display(), "reloaded TLS certificates");
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = TlsAcceptor::from(current.read().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What a client needs: the CA to check the server against, and optionally
/// its own certificate and key.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// From `HOURCELL_CA`, `HOURCELL_CERT` and `HOURCELL_KEY`.
    pub fn from_env() -> Self {
        let var = |n: &str| {
            std::env::var(n)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        };
        ClientTls {
            ca: var("HOURCELL_CA"),
            cert: var("HOURCELL_CERT"),
            key: var("HOURCELL_KEY"),
        }
    }

    /// A node dialling its peers: its own certificate, the cluster CA.
    pub fn of_node(p: &TlsPaths) -> Self {
        ClientTls {
            ca: Some(p.ca.clone()),
            cert: Some(p.cert.clone()),
            key: Some(p.key.clone()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    /// The tonic client configuration (files read now, so a reconnect
    /// picks up rotated certificates).
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        let ca = self.ca.as_ref().ok_or(TlsError::NoCa)?;
        let pem = read(ca)?;
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert = read(cert)?;
                let key = read(key)?;
                c = c.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => return Err(TlsError::HalfIdentity),
        }
        Ok(c)
    }
}

// ------------------------------------------------------------ subject CN

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// The subject common name of an X.509 certificate (DER), read with a
/// minimal parser: Certificate → TBSCertificate → (version), serial,
/// signature, issuer, validity, subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2; // serial, signature, issuer, validity
    }
    let (_, subject, _) = tlv(rest)?;
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_, set, r) = tlv(rdns)?;
        rdns = r;
        let (_, atv, _) = tlv(set)?;
        let (_, oid, r) = tlv(atv)?;
        if oid == [0x55, 0x04, 0x03] {
            let (_, v, _) = tlv(r)?;
            return String::from_utf8(v.to_vec()).ok();
        }
    }
    None
}

// ------------------------------------------------------------ a local CA

/// A CA for trying hourcell out and for tests. Its key and certificate
/// are files in a directory; certificates it issues name it as issuer.
pub struct LocalCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    name: String,
}

fn ca_params(name: &str) -> Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(p)
}

impl LocalCa {
    pub fn create(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let cert = ca_params(name)?.self_signed(&key)?;
        Ok(LocalCa {
            key,
            cert,
            name: name.to_string(),
        })
    }

    /// Loads `ca.key` from `dir` (the CA certificate is re-derived from the
    /// same name and key, which is all that signing needs).
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let pem = read(&dir.join("ca.key"))?;
        let key = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(&pem))?;
        let cert = ca_params(name)?.self_signed(&key)?;
        Ok(LocalCa {
            key,
            cert,
            name: name.to_string(),
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Issues a certificate for `cn`, valid for the `hosts` as subject
    /// alternative names (DNS names or IP addresses), usable as server and
    /// client certificate, until `not_after` (default: 2035). Returns the
    /// certificate and key, PEM.
    pub fn issue(
        &self,
        cn: &str,
        hosts: &[String],
        not_after: Option<time::OffsetDateTime>,
    ) -> Result<(String, String)> {
        let mut p = rcgen::CertificateParams::new(hosts.to_vec())?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        match not_after {
            Some(t) => {
                p.not_before = t - time::Duration::days(365);
                p.not_after = t;
            }
            None => {
                p.not_before = rcgen::date_time_ymd(2025, 1, 1);
                p.not_after = rcgen::date_time_ymd(2035, 1, 1);
            }
        }
        let key = rcgen::KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Creates `path` with `bytes`, refusing to overwrite it; `private` makes
/// it readable by its owner only (keys).
pub fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let create = |source| TlsError::Create {
        path: path.to_path_buf(),
        source,
    };
    o.open(path)
        .map_err(create)?
        .write_all(bytes)
        .map_err(create)?;
    Ok(())
}

pub use rcgen::date_time_ymd;

/// The CA's name in `hourcell certs init`.
pub const LOCAL_CA_NAME: &str = "hourcell local CA";

/// `hourcell certs init DIR`: a CA, `node-1..=nodes` certificates for
/// `hosts`, an `admin` client certificate and a token key. Refuses to
/// overwrite anything. Returns the files written.
pub fn init_dir(dir: &Path, nodes: u32, hosts: &[String]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = LocalCa::create(LOCAL_CA_NAME)?;
    let mut out = Vec::new();
    let mut put = |name: &str, text: &str, private: bool| -> Result<()> {
        let p = dir.join(name);
        write_new(&p, text.as_bytes(), private)?;
        out.push(p);
        Ok(())
    };
    put("ca.pem", &ca.cert_pem(), false)?;
    put("ca.key", &ca.key.serialize_pem(), true)?;
    for n in 1..=nodes {
        let (c, k) = ca.issue(&format!("node-{n}"), hosts, None)?;
        put(&format!("node-{n}.pem"), &c, false)?;
        put(&format!("node-{n}.key"), &k, true)?;
    }
    let (c, k) = ca.issue("admin", &[], None)?;
    put("admin.pem", &c, false)?;
    put("admin.key", &k, true)?;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    put("token.key", &hex, true)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_subject() {
        let ca = LocalCa::create("test CA").unwrap();
        let (pem, _) = ca.issue("node-7", &["127.0.0.1".into()], None).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("node-7"));
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(common_name(&ca_der).as_deref(), Some("test CA"));
        for junk in [
            &[][..],
            &[0x30, 0x82, 0xff][..],
            &[0x30, 0x03, 0x30, 0x01, 0x00][..],
        ] {
            assert_eq!(common_name(junk), None);
        }
    }
}
