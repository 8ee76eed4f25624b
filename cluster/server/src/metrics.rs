//! Metrics: `GET /metrics` in the Prometheus text format on its own port
//! (`metrics_listen`, axum), so that scrapers need no gRPC; `GET /health`
//! answers 200 while the node can serve and 503 after it failed.
//!
//! One prometheus-client registry holds: the node's counters and
//! histograms (`hourcell_node::metrics`); this crate's per-RPC request
//! counts and latency by status code and its refusals (counted in the
//! gate); `hourcell_build_info`; and collectors read when scraped: node
//! and raft gauges, RocksDB figures per database, and the standard
//! `process_*` figures from /proc. Names, labels and what an alert on each
//! means are in docs/OPERATIONS.md; `deploy/monitoring` holds a Grafana
//! dashboard and Prometheus alert rules over them.

use std::sync::Arc;
use std::time::Duration;

use hourcell_node::node::Node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::auth::Rpc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    code: &'static str,
}

/// Why the gate refused a request before any service ran.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Refusal {
    /// No credentials, or bad ones.
    unauthenticated,
    /// Authenticated, but no role the RPC needs.
    permission_denied,
    /// A call of a node-to-node service without a node's identity.
    internal,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Limit {
    /// Requests per second of one principal.
    principal,
    /// Requests with bad credentials from one address.
    bad_credentials,
    /// Requests in flight of one principal.
    in_flight,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: Limit,
}

/// What the gate counts: every client RPC answered, and every refusal.
pub struct ServerMetrics {
    requests: Family<RpcLabels, Counter>,
    latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    refusals: Family<RefusalLabels, Counter>,
    limited: Family<LimitLabels, Counter>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(hourcell_node::metrics::latency_histogram),
            refusals: Family::default(),
            limited: Family::default(),
        }
    }
}

impl ServerMetrics {
    /// A client RPC answered with `code` after `took`.
    pub fn answered(&self, rpc: Option<Rpc>, code: tonic::Code, took: Duration) {
        let l = RpcLabels {
            rpc: rpc.map_or("unknown", |r| r.name()),
            code: code_name(code),
        };
        self.requests.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(took.as_secs_f64());
    }

    pub fn refused(&self, reason: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    pub fn limited(&self, limit: Limit) {
        self.limited.get_or_create(&LimitLabels { limit }).inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "rpc_requests",
            "Client RPCs answered, by RPC and gRPC status code (a stream's code as its head carries it)",
            self.requests.clone(),
        );
        r.register_with_unit(
            "rpc",
            "Time to answer a client RPC (to its response head), by RPC and gRPC status code",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register(
            "auth_refusals",
            "Requests refused by authentication or role checks, by reason",
            self.refusals.clone(),
        );
        r.register(
            "rate_limit_refusals",
            "Requests refused by a rate or concurrency limit, by limit",
            self.limited.clone(),
        );
    }
}

/// The gRPC name of a status code, as Prometheus labels usually carry it.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Every metric of the node, ready to encode.
pub fn registry(node: Arc<Node>, server: &ServerMetrics) -> Registry {
    let mut root = Registry::default();
    root.register_collector(Box::new(ProcessCollector));
    let r = root.sub_registry_with_prefix("hourcell");
    r.register(
        "build",
        "The running binary: version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    node.metrics().register(r);
    server.register(r);
    r.register_collector(Box::new(NodeCollector(node)));
    root
}

/// The scrape body, in the Prometheus text format (0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Gauges read from the node when scraped.
struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.0;
        ConstCounter::new(node.events_accepted()).encode(enc.encode_descriptor(
            "ingest_events",
            "Events accepted by ingest on this node",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            &mut enc,
            "healthy",
            "1 while the node can serve, 0 after a storage or replication failure",
            i64::from(node.healthy()),
        )?;
        if let Ok(st) = node.stats() {
            gauge(
                &mut enc,
                "rocksdb_disk_bytes",
                "Live SST and memtable bytes of every database of this node",
                st.disk_bytes as i64,
            )?;
            gauge(
                &mut enc,
                "persons",
                "Persons in the id dictionary",
                st.persons as i64,
            )?;
            if let Some(h) = st.last_hour {
                gauge(
                    &mut enc,
                    "newest_hour_seconds",
                    "Unix time of the newest stored hour",
                    h * 3600,
                )?;
            }
        }
        if let Ok(fs) = rustix::fs::statvfs(node.data_dir()) {
            gauge(
                &mut enc,
                "data_dir_free_bytes",
                "Bytes free for the node on the data directory's filesystem",
                (fs.f_bavail.saturating_mul(fs.f_frsize)) as i64,
            )?;
            gauge(
                &mut enc,
                "data_dir_size_bytes",
                "Size of the data directory's filesystem",
                (fs.f_blocks.saturating_mul(fs.f_frsize)) as i64,
            )?;
        }
        gauge(
            &mut enc,
            "audit_records",
            "Records in the hash-chained audit log",
            node.store().audit_len() as i64,
        )?;
        let (seq, hash) = node.store().audit_head();
        let mut f = enc.encode_descriptor(
            "audit_head_info",
            "The audit log's head (last record's seq and hash)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(f.encode_family(&[
            ("seq", seq.to_string()),
            ("hash", hourcell_storage::audit::hex(&hash)),
        ])?)?;
        self.encode_engines(&mut enc)?;
        self.encode_raft(&mut enc)
    }
}

impl NodeCollector {
    fn encode_engines(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Get = fn(&hourcell_storage::EngineFigures) -> i64;
        let figures = self.0.engine_figures();
        let families: [(&str, &str, Get); 6] = [
            (
                "rocksdb_sst_bytes",
                "Bytes of every SST file of the database (rocksdb.total-sst-files-size)",
                |f| f.sst_bytes as i64,
            ),
            (
                "rocksdb_memtable_bytes",
                "Bytes of the database's memtables",
                |f| f.memtable_bytes as i64,
            ),
            (
                "rocksdb_pending_compaction_bytes",
                "Bytes compaction must rewrite to settle the database (stalls follow when it grows)",
                |f| f.pending_compaction_bytes as i64,
            ),
            (
                "rocksdb_running_compactions",
                "Compactions running now",
                |f| f.running_compactions as i64,
            ),
            (
                "rocksdb_write_stopped",
                "1 while writes to the database are stopped (a write stall)",
                |f| i64::from(f.write_stopped),
            ),
            (
                "rocksdb_delayed_write_rate_bytes",
                "Bytes per second writes are slowed to while RocksDB delays them; 0 when not delayed",
                |f| f.delayed_write_rate as i64,
            ),
        ];
        for (name, help, get) in families {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (db, fig) in &figures {
                ConstGauge::new(get(fig)).encode(f.encode_family(&[("db", *db)])?)?;
            }
        }
        Ok(())
    }

    fn encode_raft(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = self.0.replication() else {
            return Ok(());
        };
        let st: Vec<(u64, hourcell_node::replication::GroupStatus)> = r
            .groups()
            .into_iter()
            .filter_map(|g| r.handle.status(g).map(|s| (g, s)))
            .collect();
        type Get = fn(&hourcell_node::replication::GroupStatus) -> u64;
        let families: [(&str, &str, Get); 5] = [
            ("raft_term", "Raft term per group", |s| s.term),
            ("raft_is_leader", "1 if this node leads the group", |s| {
                u64::from(s.is_leader)
            }),
            (
                "raft_leader",
                "Node id of the group's leader (0 = none known)",
                |s| s.leader,
            ),
            (
                "raft_apply_lag",
                "Committed entries not yet applied here",
                |s| s.commit.saturating_sub(s.applied),
            ),
            (
                "raft_log_entries",
                "Entries kept in the raft log (bounded by compaction)",
                |s| s.commit.saturating_sub(s.first_index.saturating_sub(1)),
            ),
        ];
        for (name, help, get) in families {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (g, s) in &st {
                ConstGauge::new(get(s) as i64).encode(f.encode_family(&[("group", *g)])?)?;
            }
        }
        let mut f = enc.encode_descriptor(
            "raft_members",
            "Voters and learners of the group",
            None,
            MetricType::Gauge,
        )?;
        for (g, s) in &st {
            for (kind, n) in [("voter", s.voters.len()), ("learner", s.learners.len())] {
                ConstGauge::new(n as i64).encode(
                    f.encode_family(&[("group", g.to_string()), ("kind", kind.to_string())])?,
                )?;
            }
        }
        Ok(())
    }
}

/// The standard `process_*` figures of this process, from /proc (Linux;
/// elsewhere none).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let tps = procfs::ticks_per_second() as f64;
        let page = procfs::page_size() as i64;
        if let Ok(stat) = me.stat() {
            ConstCounter::new((stat.utime + stat.stime) as f64 / tps).encode(
                enc.encode_descriptor(
                    "process_cpu_seconds",
                    "User and system CPU time spent, seconds",
                    None,
                    MetricType::Counter,
                )?,
            )?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.rss as i64 * page,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as i64,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Threads of the process",
                stat.num_threads,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut enc,
                    "process_start_time_seconds",
                    "Start time of the process since the unix epoch, seconds",
                    boot as f64 + stat.starttime as f64 / tps,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors",
                n as i64,
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
                gauge(
                    &mut enc,
                    "process_max_fds",
                    "Limit on open file descriptors",
                    v as i64,
                )?;
            }
        }
        Ok(())
    }
}

/// Starts serving `node`'s metrics on `listener` (a task); returns the
/// gate's metrics, which the node's gRPC server must count into
/// ([`crate::server::serve_with_metrics`]).
pub fn start(node: Arc<Node>, listener: TcpListener) -> Arc<ServerMetrics> {
    let server = Arc::new(ServerMetrics::default());
    let registry = Arc::new(registry(node.clone(), &server));
    tokio::spawn(serve(node, registry, listener));
    server
}

/// Serves `GET /metrics` and `GET /health` on `listener` until the task
/// is dropped.
pub async fn serve(node: Arc<Node>, registry: Arc<Registry>, listener: TcpListener) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let metrics = {
        let registry = registry.clone();
        move || async move {
            let body = tokio::task::spawn_blocking(move || render(&registry))
                .await
                .unwrap_or_default();
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
        }
    };
    let health = move || async move {
        if node.healthy() {
            (StatusCode::OK, "ok\n")
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "failed: see the node's log\n",
            )
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}
