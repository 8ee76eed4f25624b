//! TLS on the client API: certificates from `hourcell certs init`, client
//! certificates as principals, bearer tokens over TLS, and what must fail:
//! a wrong CA, a client certificate from another CA, an expired one, a
//! plaintext client. Then certificate rotation on disk while a client
//! stays connected.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hourcell_node::config::NodeConfig;
use hourcell_proto::{internal, v1};
use hourcell_server::auth::{issue_token, Claims};
use hourcell_server::server;
use hourcell_server::tls::{date_time_ymd, init_dir, LocalCa, TlsPaths, LOCAL_CA_NAME};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// 2026-11-01T00:00:00Z
const T0: i64 = 1_793_491_200;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

async fn connect(
    port: u16,
    ca: &Path,
    id: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((c, k)) = id {
        tls = tls.identity(Identity::from_pem(read(c), read(k)));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn status(ch: Channel) -> Result<v1::StatusResponse, tonic::Status> {
    v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// Replaces `to` atomically with `text`.
fn replace(to: &Path, text: &str) {
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_authenticates_refuses_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    init_dir(&certs, 1, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let c = |f: &str| certs.join(f);
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 16;
    cfg.security.tls = Some(TlsPaths {
        cert: c("node-1.pem"),
        key: c("node-1.key"),
        ca: c("ca.pem"),
    });
    cfg.security.token_key_file = Some(c("token.key"));
    cfg.security
        .cert_roles
        .insert("admin".into(), vec!["all".into()]);
    cfg.validate().unwrap();
    let node = hourcell_server::open_node(&cfg, Arc::new(|| T0)).unwrap();
    let (addr, listener) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = addr.port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        node,
        cfg.security.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));

    // The admin's client certificate is its principal (all roles).
    let admin = connect(port, &c("ca.pem"), Some((&c("admin.pem"), &c("admin.key"))))
        .await
        .unwrap();
    status(admin.clone()).await.unwrap();

    // Over TLS without a client certificate, a bearer token works, for its
    // roles only.
    let anon = connect(port, &c("ca.pem"), None).await.unwrap();
    let key = read(&c("token.key"));
    let t = issue_token(
        &key,
        &Claims {
            sub: "analyst-1".into(),
            roles: vec!["analyst".into()],
            exp: T0 + 3600,
        },
    );
    let mut req = tonic::Request::new(v1::StatusRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let denied = v1::admin_client::AdminClient::new(anon.clone())
        .status(req)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // With neither, nothing is allowed (no anonymous roles under TLS).
    assert_eq!(
        status(anon).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A client that trusts another CA does not accept the server.
    let other = dir.path().join("other");
    init_dir(&other, 1, &["127.0.0.1".into()]).unwrap();
    assert!(connect(port, &other.join("ca.pem"), None).await.is_err());
    // A client certificate from another CA is refused by the server.
    let foreign = match connect(
        port,
        &c("ca.pem"),
        Some((&other.join("admin.pem"), &other.join("admin.key"))),
    )
    .await
    {
        Err(_) => true,
        Ok(ch) => status(ch).await.is_err(),
    };
    assert!(foreign, "a client certificate from another CA was accepted");
    // An expired client certificate from the right CA is refused.
    let ca = LocalCa::load(&certs, LOCAL_CA_NAME).unwrap();
    let (pem, k) = ca
        .issue("admin", &[], Some(date_time_ymd(2024, 6, 1)))
        .unwrap();
    std::fs::write(dir.path().join("expired.pem"), pem).unwrap();
    std::fs::write(dir.path().join("expired.key"), k).unwrap();
    let expired = match connect(
        port,
        &c("ca.pem"),
        Some((
            &dir.path().join("expired.pem"),
            &dir.path().join("expired.key"),
        )),
    )
    .await
    {
        Err(_) => true,
        Ok(ch) => status(ch).await.is_err(),
    };
    assert!(expired, "an expired client certificate was accepted");
    // A plaintext client gets nowhere.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            status(ch).await.is_err(),
            "plaintext accepted by a TLS server"
        );
    }

    // Rotation: a new CA and new node and admin certificates replace the
    // files. The connected admin carries on; new connections need the new
    // CA.
    std::fs::copy(c("ca.pem"), dir.path().join("old-ca.pem")).unwrap();
    let new = dir.path().join("new");
    init_dir(&new, 1, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    replace(
        &c("node-1.pem"),
        &std::fs::read_to_string(new.join("node-1.pem")).unwrap(),
    );
    replace(
        &c("node-1.key"),
        &std::fs::read_to_string(new.join("node-1.key")).unwrap(),
    );
    replace(
        &c("ca.pem"),
        &std::fs::read_to_string(new.join("ca.pem")).unwrap(),
    );
    let new_admin = (&new.join("admin.pem"), &new.join("admin.key"));
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(ch) = connect(port, &new.join("ca.pem"), Some((new_admin.0, new_admin.1))).await {
            if status(ch).await.is_ok() {
                rotated = true;
                break;
            }
        }
    }
    assert!(rotated, "the server did not pick up the new certificates");
    status(admin)
        .await
        .expect("a client connected before the rotation stays connected");
    assert!(
        connect(port, &dir.path().join("old-ca.pem"), None)
            .await
            .is_err(),
        "a client trusting only the old CA still reaches the server"
    );
    let _ = tx.send(());
}

/// The node-only `Shard` service of a sharded node (routed shard reads and
/// writes) answers cluster nodes only: an admin's certificate is refused,
/// a `node-<id>` certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_routing_accepts_only_node_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    init_dir(&certs, 2, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    let c = |f: &str| certs.join(f);
    let (addr, listener) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 16;
    cfg.security.tls = Some(TlsPaths {
        cert: c("node-1.pem"),
        key: c("node-1.key"),
        ca: c("ca.pem"),
    });
    cfg.security
        .cert_roles
        .insert("admin".into(), vec!["all".into()]);
    cfg.cluster = Some(hourcell_node::config::ClusterConfig {
        node_id: 1,
        peers: vec![hourcell_node::config::PeerConfig {
            id: 1,
            addr: addr.to_string(),
        }],
        tick_ms: 20,
        join: false,
        cell_shards: 2,
        person_shards: 1,
        replicas: 3,
        ..Default::default()
    });
    cfg.validate().unwrap();
    let node = hourcell_server::open_node(&cfg, Arc::new(|| T0)).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        node,
        cfg.security.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let members = |ch: Channel| async move {
        internal::shard_client::ShardClient::new(ch)
            .members(internal::ShardMembersRequest {})
            .await
    };
    let admin = connect(
        addr.port(),
        &c("ca.pem"),
        Some((&c("admin.pem"), &c("admin.key"))),
    )
    .await
    .unwrap();
    let denied = members(admin).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("node-<id>"), "{denied:?}");
    let peer = connect(
        addr.port(),
        &c("ca.pem"),
        Some((&c("node-2.pem"), &c("node-2.key"))),
    )
    .await
    .unwrap();
    let ok = members(peer.clone()).await.unwrap().into_inner();
    assert_eq!(ok.node_id, 1);
    // The person shard's group runs here (the one node holds every shard).
    assert!(ok.groups.iter().any(|g| g.shard == "persons 0"), "{ok:?}");
    // A node speaks only for itself: node-2's certificate cannot send raft
    // messages as node 3.
    let mut raft = internal::raft_client::RaftClient::new(peer);
    let forged = raft
        .send(internal::RaftBatch {
            from: 3,
            envelopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    raft.send(internal::RaftBatch {
        from: 2,
        envelopes: vec![],
    })
    .await
    .unwrap();
    // No certificate at all: not a node.
    let anonymous = connect(addr.port(), &c("ca.pem"), None).await.unwrap();
    let e = members(anonymous).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let _ = tx.send(());
}
