//! A node served over gRPC on 127.0.0.1 with bearer tokens, no anonymous
//! access and an injected clock: the harness of the security tests.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use hourcell_node::config::NodeConfig;
use hourcell_node::node::Node;
use hourcell_proto::v1;
use hourcell_server::auth::{issue_token, Claims, Role};
use hourcell_server::server;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

/// 2026-11-01T00:00:00Z
pub const T0: i64 = 1_793_491_200;
/// The token key of every harness (generated for tests).
pub const KEY: &[u8] = b"generated-test-key-0123456789abcdef";

pub struct Harness {
    pub channel: Channel,
    pub clock: Arc<AtomicI64>,
    pub node: Arc<Node>,
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A node with `retention_days`, `requests_per_sec` (0: no limit), and
/// whatever `tweak` changes in its config; the clock starts at T0 + 3 days.
pub async fn start_with(
    retention_days: u32,
    requests_per_sec: u32,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("token.key");
    std::fs::write(&key, KEY).unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 16;
    cfg.security.token_key_file = Some(key);
    cfg.security.retention_days = retention_days;
    cfg.security.requests_per_sec = requests_per_sec;
    cfg.rules.hourly = false;
    tweak(&mut cfg);
    let clock = Arc::new(AtomicI64::new(T0 + 3 * 86_400));
    let c = clock.clone();
    let node =
        hourcell_server::open_node(&cfg, Arc::new(move || c.load(Ordering::SeqCst))).unwrap();
    let (addr, listener) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        node.clone(),
        cfg.security.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Harness {
        channel,
        clock,
        node,
        dir,
        addr,
        stop: Some(tx),
    }
}

pub fn token(sub: &str, roles: &[Role], exp: i64) -> String {
    issue_token(
        KEY,
        &Claims {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.name().to_string()).collect(),
            exp,
        },
    )
}

/// A request carrying `token` (none if empty).
pub fn req<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if !token.is_empty() {
        let v: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Every audit record, read as an auditor.
pub async fn audit(h: &Harness) -> Vec<v1::AuditRecord> {
    let t = token("auditor-1", &[Role::Auditor], T0 + 10 * 86_400);
    v1::audit_client::AuditClient::new(h.channel.clone())
        .list(req(
            v1::ListAuditRequest {
                after_seq: 0,
                limit: 1_000,
                ..Default::default()
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner()
        .records
}
