//! Serving a node over gRPC: the four `hourcell.v1` services, the standard
//! health service and server reflection (so grpcurl works without our
//! protos).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hourcell_proto::{internal, v1};
use tokio::net::TcpListener;
use tonic::transport::Server;

use hourcell_node::config::{NodeConfig, SecurityConfig};
use hourcell_node::node::{Clock, Node};
use hourcell_node::NodeError;

use crate::auth::Auth;
use crate::error::ServerError;
use crate::service::Services;

/// Largest gRPC message accepted: a 100k-event ingest batch fits easily.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Binds `listen` (port 0 picks a free port) and returns the bound address
/// with the listener, so callers can print it before serving.
pub async fn bind(listen: SocketAddr) -> Result<(SocketAddr, TcpListener), ServerError> {
    let l = TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    Ok((l.local_addr()?, l))
}

/// Opens a node whose peers are reached over gRPC (TLS as `cfg` says) and,
/// when it was started with `--join` and is not a member yet, asks its
/// peers to add it.
pub fn open_node(cfg: &NodeConfig, clock: Clock) -> Result<Arc<Node>, ServerError> {
    let tls = cfg
        .security
        .tls
        .as_ref()
        .map(crate::tls::ClientTls::of_node);
    let network = crate::network::GrpcNetwork {
        dialer: crate::channel::PeerDialer::of_node(&cfg.security)?,
    };
    let node = Node::open(cfg, clock, &network)?;
    if node.needs_join() {
        if let Some(c) = &cfg.cluster {
            let key = Auth::from_config(&cfg.security)?.token_key;
            tokio::spawn(crate::join::ask_to_join(c.clone(), key, tls));
        }
    }
    Ok(node)
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
/// `security` says who may call what and whether to serve TLS.
pub async fn serve(
    node: Arc<Node>,
    security: SecurityConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_metrics(node, security, listener, shutdown, Arc::default()).await
}

/// [`serve`], the gate counting every RPC and refusal into `metrics`
/// (those [`crate::metrics::start`] exports).
pub async fn serve_with_metrics(
    node: Arc<Node>,
    security: SecurityConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metrics: Arc<crate::metrics::ServerMetrics>,
) -> Result<(), ServerError> {
    let auth = Arc::new(Auth::from_config(&security)?);
    let tls = security.tls.clone();
    let svc = Services {
        node: node.clone(),
        auth: auth.clone(),
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<v1::ingest_server::IngestServer<Services>>()
        .await;
    health
        .set_serving::<v1::query_server::QueryServer<Services>>()
        .await;
    health
        .set_serving::<v1::registry_server::RegistryServer<Services>>()
        .await;
    health
        .set_serving::<v1::admin_server::AdminServer<Services>>()
        .await;
    health
        .set_serving::<v1::tasks_server::TasksServer<Services>>()
        .await;
    if node.rules_hourly() {
        tokio::spawn(hourly_rules(node.clone()));
    }
    tokio::spawn(hourly_retention(node.clone()));
    tokio::spawn(idle_flush(node.clone()));
    if node.shards().is_some() {
        tokio::spawn(shard_keeper(node.clone()));
    }
    if node.replication().is_some() {
        let dialer = crate::channel::PeerDialer::of_node(&security)?;
        tokio::spawn(introduce_until_known(node.clone(), dialer));
    }
    // The empty service name means "the whole server".
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // Health turns NOT_SERVING once the node has stopped serving after a
    // storage failure (for good), and, on a replicated node, while it has
    // known no raft leader for a few seconds (it can then neither commit a
    // write nor serve a linearizable read); it turns back when a leader is
    // known again.
    {
        let node = node.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut leaderless_since: Option<std::time::Instant> = None;
            let mut serving = true;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !node.healthy() {
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                    health
                        .set_not_serving::<v1::ingest_server::IngestServer<Services>>()
                        .await;
                    health
                        .set_not_serving::<v1::query_server::QueryServer<Services>>()
                        .await;
                    break;
                }
                let n = node.clone();
                let has_leader = tokio::task::spawn_blocking(move || {
                    n.replication()
                        .is_none_or(|r| r.handle.status(r.group).is_some_and(|s| s.leader != 0))
                })
                .await
                .unwrap_or(false);
                leaderless_since = match (has_leader, leaderless_since) {
                    (true, _) => None,
                    (false, None) => Some(std::time::Instant::now()),
                    (false, since) => since,
                };
                let want = leaderless_since.is_none_or(|t| t.elapsed() < Duration::from_secs(3));
                if want != serving {
                    serving = want;
                    let st = if want {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tracing::warn!("no raft leader known: reporting NOT_SERVING");
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status("", st).await;
                }
            }
        });
    }
    // Reflection lists the public API only (the internal services' package
    // is not registered), as v1 and as v1alpha: Python's grpcio-reflection,
    // Postman and older grpcurl ask only v1alpha.
    let reflect = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflect().build_v1()?;
    let reflection_alpha = reflect().build_v1alpha()?;
    let raft_svc = node.replication().map(|r| {
        internal::raft_server::RaftServer::new(crate::raft_service::RaftService {
            inbox: r.inbox.clone(),
            snapshots: r.handle.snapshots(),
            node: node.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
    });
    let shard_svc = node.shards().map(|_| {
        internal::shard_server::ShardServer::new(crate::shard_service::ShardService {
            node: node.clone(),
        })
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
    });
    let router = Server::builder()
        // A request that has not produced its response in a minute is
        // cancelled (streams, once started, are not cut).
        .timeout(Duration::from_secs(60))
        // Per connection: at most this many requests running and HTTP/2
        // streams open, so that one connection cannot take every worker
        // (per principal, the gate caps requests in flight).
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(Some(256))
        // Every client RPC is authenticated, rate-limited, role-checked
        // and (when refused) audited here, before any service sees it.
        .layer(crate::gate::Gate::new(auth, node.clone(), metrics))
        .add_optional_service(raft_svc)
        .add_optional_service(shard_svc)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            v1::ingest_server::IngestServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            v1::registry_server::RegistryServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            v1::query_server::QueryServer::new(svc.clone())
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(v1::tasks_server::TasksServer::new(svc.clone()))
        .add_service(v1::audit_server::AuditServer::new(svc.clone()))
        .add_service(v1::admin_server::AdminServer::new(svc));
    let max_connections = security.max_connections.max(1) as usize;
    match &tls {
        Some(paths) => {
            let incoming = crate::tls::incoming(listener, paths.clone())?;
            router
                .serve_with_incoming_shutdown(
                    crate::limit::limit(incoming, max_connections),
                    shutdown,
                )
                .await?
        }
        None => {
            // Without TCP_NODELAY small responses wait on delayed ACKs
            // (~40 ms).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(
                    crate::limit::limit(incoming, max_connections),
                    shutdown,
                )
                .await?
        }
    }
    Ok(())
}

/// Seconds from `now` until the next hourly rule run: `RULES_MINUTE`
/// minutes past the next hour, so that the hour just ended is complete.
pub fn secs_until_next_run(now: i64) -> i64 {
    const RULES_MINUTE: i64 = 5;
    let next = (now - RULES_MINUTE * 60).div_euclid(3600) * 3600 + 3600 + RULES_MINUTE * 60;
    next - now
}

/// Runs the rules every hour. On one node this is the only evaluator; in a
/// cluster it will run where the metadata group's leader is. Running twice
/// is harmless (raising is idempotent), so a leadership change at the wrong
/// moment cannot duplicate tasks.
async fn hourly_rules(node: Arc<Node>) {
    loop {
        let wait = secs_until_next_run(node.now()).max(1) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        on_leader(&node, "hourly rule evaluation", |n| {
            n.run_tasks(None).map(|_| ())
        })
        .await;
    }
}

/// Applies the retention limit a minute after start and then every hour,
/// on the leader only (the command it proposes carries the cut-off, so
/// every replica removes the same hours).
async fn hourly_retention(node: Arc<Node>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::time::sleep(wait).await;
        wait = Duration::from_secs(3600);
        on_leader(&node, "retention", |n| {
            let (cutoff, removed) = n.expire(n.now(), "retention")?;
            tracing::info!(
                cutoff_hour = cutoff,
                person_days = removed,
                "retention applied"
            );
            Ok(())
        })
        .await;
    }
}

/// Writes held ingest once ingest has paused for a second, checked twice a
/// second: the end of a bulk load is not paid for by the first query.
async fn idle_flush(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !node.healthy() {
            return;
        }
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.flush_idle(Duration::from_secs(1))).await {
            Ok(Ok(0)) => {}
            Ok(Ok(stores)) => tracing::debug!(stores, "wrote held ingest after a pause"),
            Ok(Err(e)) => tracing::warn!(error = %e, "writing held ingest after a pause"),
            Err(e) => tracing::warn!(error = %e, "idle flush task failed"),
        }
    }
}

/// Keeps a sharded node's weeks in line with the shard map, creates weeks
/// ahead of ingest and keeps shard membership in line with the cluster's
/// (see [`Node::shard_chores`]), twice a second; follows a change of the
/// shard map (a split, a new week, a move) within 50 ms.
async fn shard_keeper(node: Arc<Node>) {
    let mut last_error = String::new();
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tick += 1;
        let n = node.clone();
        let r = if tick % 10 == 0 {
            tokio::task::spawn_blocking(move || n.shard_chores(n.now())).await
        } else if node.shard_map_moved() {
            tokio::task::spawn_blocking(move || n.sync_shards()).await
        } else {
            continue;
        };
        let e = match r {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("panicked: {e}"),
        };
        // Each distinct failure once (no leader yet is common at start).
        if !e.is_empty() && e != last_error {
            tracing::warn!(error = %e, "shard chores failed; retrying");
        }
        last_error = e;
    }
}

/// Runs a cluster-wide chore off the async runtime if this node leads,
/// logging what went wrong.
async fn on_leader(
    node: &Arc<Node>,
    what: &'static str,
    chore: impl FnOnce(&Node) -> Result<(), NodeError> + Send + 'static,
) {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || if n.leads() { chore(&n) } else { Ok(()) }).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
        Err(e) => tracing::error!(error = %e, "{what} panicked"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Introduces this node to every peer that was not reachable when it
/// started (founders start in any order), so that each peer knows its
/// incarnation and a later start on a lost data directory is refused.
/// Stops once every configured peer has answered.
async fn introduce_until_known(node: Arc<Node>, dialer: crate::channel::PeerDialer) {
    let Some(r) = node.replication() else {
        return;
    };
    let me = r.handle.id();
    let Ok(incarnation) = r.incarnation() else {
        return;
    };
    let mut left: std::collections::HashMap<u64, String> = r
        .peers
        .iter()
        .filter(|(id, _)| *id != me)
        .cloned()
        .collect();
    let mut pause = Duration::from_secs(1);
    while !left.is_empty() {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
        let mut answered = Vec::new();
        for (id, addr) in &left {
            let reply =
                crate::raft_service::hello(&dialer, addr, me, incarnation, false, 2_000).await;
            if let Some(known) = reply {
                if known != 0 {
                    tracing::error!(
                        peer = id,
                        "node {id} knew this node by another incarnation: this node's data \
                         was lost; stop it and restart it with --join"
                    );
                }
                answered.push(*id);
            }
        }
        for id in answered {
            left.remove(&id);
        }
    }
}

/// `hourcell node --config FILE`.
pub async fn run(cfg: NodeConfig) -> Result<(), ServerError> {
    if cfg.security.tls.is_none() {
        if !cfg.security.insecure {
            return Err(ServerError::Plaintext);
        }
        let exposed = !cfg.listen.ip().is_loopback();
        let tokens = cfg.security.token_key_file.is_some();
        if (exposed || tokens) && !cfg.security.allow_insecure_network {
            return Err(ServerError::InsecureExposed {
                listen: cfg.listen,
                tokens,
            });
        }
        tracing::warn!(
            listen = %cfg.listen,
            allow_insecure_network = cfg.security.allow_insecure_network,
            "[security] insecure = true: serving plaintext gRPC without client certificates; \
             credentials and person-level answers travel in clear; use only on a trusted network"
        );
    }
    let node = open_node(&cfg, hourcell_node::node::system_clock())?;
    let (addr, listener) = bind(cfg.listen).await?;
    let metrics = match cfg.metrics_listen {
        Some(m) => {
            let (maddr, ml) = bind(m).await?;
            tracing::info!(%maddr, "serving /metrics and /health");
            crate::metrics::start(node.clone(), ml)
        }
        None => Arc::default(),
    };
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), slice_level = node.store().slice_level(), "hourcell node serving");
    let r = serve_with_metrics(
        node.clone(),
        cfg.security.clone(),
        listener,
        shutdown_signal(),
        metrics,
    )
    .await;
    node.shutdown();
    r
}

#[cfg(test)]
mod tests {
    use super::secs_until_next_run;

    #[test]
    fn hourly_rules_run_five_minutes_past_each_hour() {
        let h = 1_795_824_000; // an hour boundary
        assert_eq!(secs_until_next_run(h), 300);
        assert_eq!(secs_until_next_run(h + 300), 3600);
        assert_eq!(secs_until_next_run(h + 301), 3599);
        assert_eq!(secs_until_next_run(h + 299), 1);
    }
}
