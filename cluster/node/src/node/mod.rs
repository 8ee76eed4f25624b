//! The [`Node`]: its stores, its raft groups and the query engine over
//! them, with an injectable clock.
//!
//! Writes reach the stores as [`Command`]s through [`Node::propose`]: on a
//! single node they apply directly, in a cluster they are appended to the
//! group's raft log and the call returns once they are applied. The
//! concerns live in submodules: `replicated` (raft groups, membership),
//! `placement` (shards, routing, rebalancing), `group` (group commit of
//! ingest batches and audit records), `ingest`,
//! `barrier` (read freshness), `tasks`, `retention`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hourcell_query::validate::{self, RawAddress, RawEvent, RawRegistration, Rejection};
use hourcell_query::{QueryEngine, RuleConfig};
use hourcell_storage::{
    ApplyOutcome, Command, MetaStore, Outcome, RocksConfig, RocksEngine, TaskRecord, TaskState,
    TaskUpdate,
};

use crate::config::NodeConfig;
use crate::error::{NodeError, OpenError};
use crate::network::{Introduction, Network};
use hourcell_raft::StateMachine;

pub mod backup;
mod barrier;
mod group;
mod ingest;
mod placement;
mod replicated;
mod retention;
mod split;
pub use split::Split;
mod tasks;

use group::GroupCommit;
use replicated::start_replication;
pub use replicated::Replication;
pub(crate) use replicated::{founding_persons, placed_shards, start_voters};

pub use crate::shards::Shards;
pub use crate::types::{system_clock, Clock, ShardMembers, Store, DATA_GROUP};
pub struct Node {
    /// The whole data set, or in a sharded cluster the metadata group's
    /// store (dictionaries, addresses, registry, tasks, audit log).
    store: Arc<Store>,
    /// The data shards of a sharded cluster.
    shards: Option<Arc<Shards>>,
    replication: Option<Replication>,
    metrics: Arc<crate::metrics::Metrics>,
    query: QueryEngine,
    data_dir: PathBuf,
    clock: Clock,
    max_batch: usize,
    events_accepted: AtomicU64,
    /// Set once a storage error made the node unable to serve safely.
    failed: AtomicBool,
    rules: RuleConfig,
    rules_hourly: bool,
    /// One rule evaluation at a time (hourly and on demand).
    rules_running: parking_lot::Mutex<()>,
    /// The latest task change-log sequence number; watchers wait on it.
    task_seq: tokio::sync::watch::Sender<u64>,
    retention_days: u32,
    /// One shard-map sync at a time.
    shard_sync: parking_lot::Mutex<()>,
    ingest_group: GroupCommit<hourcell_storage::SliceEvent>,
    /// Audit records of concurrent requests, committed together.
    audit_group: GroupCommit<hourcell_storage::AuditEntry>,
    /// Per-shard read barriers of a sharded node's queries.
    gate: Option<Arc<crate::shards::ReadGate>>,
    /// Sends reads and writes of shards held elsewhere to their nodes.
    router: Option<Arc<crate::route::Router>>,
    /// Replicas per data shard.
    replicas: usize,
    /// The person shards' placement when the cluster was created.
    founding: Vec<Vec<u64>>,
    /// Started with `--join`: starts no shard as a founding voter.
    joining: bool,
    /// When the metadata leader last considered a rebalancing move.
    last_rebalance: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Consecutive keeper rounds in which this node, leading a data group,
    /// could not read the shard map linearizably.
    map_read_failures: parking_lot::Mutex<u32>,
    /// Cell shards this node leads: what a split decision compares with
    /// (see `split_chores`).
    split_samples: parking_lot::Mutex<std::collections::HashMap<u64, split::SplitSample>>,
    /// When this node last split a cell shard on its own.
    last_auto_split: parking_lot::Mutex<Option<std::time::Instant>>,
    /// When cell shards split on their own (see `ClusterConfig`).
    split_at: split::SplitThresholds,
}

/// What one rule run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub at: i64,
    pub evaluation: String,
    pub proposed: u64,
    pub created: u64,
    pub persons_scored: u64,
    pub departures_checked: u64,
    pub seconds: f64,
}

impl Node {
    /// Opens the node's stores under `cfg.data_dir` and, with a
    /// `[cluster]` section, starts its raft groups, reaching other nodes
    /// through `network`.
    pub fn open(
        cfg: &NodeConfig,
        clock: Clock,
        network: &dyn Network,
    ) -> Result<Arc<Node>, OpenError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| OpenError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let rc = RocksConfig {
            block_cache_bytes: cfg.block_cache_mb << 20,
            write_buffer_bytes: cfg.write_buffer_mb << 20,
            ..RocksConfig::default()
        };
        let db = cfg.data_dir.join("db");
        let engine =
            RocksEngine::open(&db, &rc).map_err(|source| OpenError::Engine { path: db, source })?;
        let store = Arc::new(MetaStore::open(
            hourcell_storage::PrefixedEngine::whole(Arc::new(engine)),
            Some(cfg.slice_level),
        )?);
        store.set_defer_events(cfg.hold_events)?;
        let (task_seq, _) = tokio::sync::watch::channel(store.last_task_change());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let layout = match &cfg.cluster {
            Some(c) => c.layout()?,
            None => None,
        };
        let shards = match layout {
            None => None,
            Some(layout) => {
                // Every data shard lives in one shared engine; it gets three
                // quarters of the block cache, the metadata store the rest.
                let rc = RocksConfig {
                    block_cache_bytes: ((cfg.block_cache_mb * 3 / 4).max(8)) << 20,
                    write_buffer_bytes: cfg.write_buffer_mb << 20,
                    ..RocksConfig::default()
                };
                let sh = Shards::open(
                    layout,
                    cfg.data_dir.join("shards"),
                    rc,
                    cfg.slice_level,
                    cfg.hold_events,
                )?;
                // The weeks this replica's shard map holds; the keeper
                // follows later changes.
                for (w, cells) in &store.shard_map().weeks {
                    sh.open_week(*w, cells.len())?;
                }
                Some(Arc::new(sh))
            }
        };
        let replication = match &cfg.cluster {
            None => None,
            Some(c) => {
                // A joining node starts with no members and waits to be
                // added.
                let voters: Vec<u64> = if c.join {
                    Vec::new()
                } else {
                    c.peers.iter().map(|p| p.id).collect()
                };
                let machine = |st| -> Arc<dyn StateMachine<ApplyOutcome>> {
                    Arc::new(crate::replication::StoreMachine {
                        store: st,
                        apply_latency: metrics.apply_latency.clone(),
                    })
                };
                let mut groups = vec![(DATA_GROUP, machine(store.clone()), voters)];
                if let Some(sh) = &shards {
                    // The data shards the map places here.
                    let map = store.shard_map();
                    let founding = founding_persons(c, sh.layout);
                    for (id, replicas) in placed_shards(&map, &founding) {
                        if !replicas.contains(&c.node_id) {
                            continue;
                        }
                        let Some((g, st)) = sh.slot(id) else {
                            continue;
                        };
                        let start = start_voters(&map, id, &replicas, c.node_id, &founding, c.join);
                        sh.host(g);
                        groups.push((
                            g,
                            Arc::new(crate::replication::StoreMachine {
                                store: st,
                                apply_latency: metrics.apply_latency.clone(),
                            }) as Arc<dyn StateMachine<ApplyOutcome>>,
                            start,
                        ));
                    }
                }
                Some(start_replication(cfg, c, groups, network)?)
            }
        };
        if let Some(sh) = &shards {
            *sh.synced_version.write() = store.shard_map_version();
        }
        let router = match (&shards, &cfg.cluster) {
            (Some(_), Some(c)) => Some(crate::route::Router::new(
                c.node_id,
                network.peer_client(),
                std::time::Duration::from_secs(10),
            )),
            _ => None,
        };
        let gate = match (&shards, &replication) {
            (Some(_), Some(r)) => Some(Arc::new(crate::shards::ReadGate::new(
                r.handle.clone(),
                r.propose_timeout,
            ))),
            _ => None,
        };
        let slices: Arc<dyn hourcell_query::SliceReader> = match (&shards, &gate, &router) {
            (Some(sh), Some(gate), Some(router)) => {
                use hourcell_storage::shard::ShardId;
                use hourcell_storage::ShardPart;
                let source = {
                    let (sh, gate, router, meta) =
                        (sh.clone(), gate.clone(), router.clone(), store.clone());
                    move |id: ShardId| -> Arc<dyn hourcell_query::SliceReader> {
                        Arc::new(crate::route::ShardSource {
                            id,
                            group: crate::shards::group_of(id),
                            shards: sh.clone(),
                            gate: gate.clone(),
                            router: router.clone(),
                            meta: meta.clone(),
                        })
                    }
                };
                let persons = (0..sh.layout.persons as usize)
                    .map(|index| {
                        source(ShardId {
                            part: ShardPart::Persons,
                            week: 0,
                            index,
                        })
                    })
                    .collect();
                let (sh2, g, meta) = (sh.clone(), gate.clone(), store.clone());
                Arc::new(
                    hourcell_query::ShardedSource::new(
                        sh.layout,
                        store.clone(),
                        Arc::new(move |w| {
                            if !meta.shard_map_has_week(w) {
                                return Vec::new();
                            }
                            // One round for the week's shards held here; a
                            // failure shows when a store is read.
                            let groups: Vec<u64> = sh2.week(w).iter().map(|(g, _)| *g).collect();
                            let _ = g.ensure_all(&groups);
                            (0..meta.week_shards(w))
                                .map(|index| {
                                    source(ShardId {
                                        part: ShardPart::Cells,
                                        week: w,
                                        index,
                                    })
                                })
                                .collect()
                        }),
                        persons,
                    )
                    .with_fanout(Arc::new(crate::shards::QueryFanout))
                    .with_batches(Arc::new(crate::route::RoutedBatch {
                        shards: sh.clone(),
                        router: router.clone(),
                    })),
                )
            }
            _ => store.clone(),
        };
        let node = Arc::new(Node {
            router: router.clone(),
            replicas: cfg.cluster.as_ref().map_or(3, |c| c.replicas as usize),
            founding: cfg.cluster.as_ref().map_or(Vec::new(), |c| match &shards {
                Some(sh) => founding_persons(c, sh.layout),
                None => Vec::new(),
            }),
            joining: cfg.cluster.as_ref().is_some_and(|c| c.join),
            last_rebalance: parking_lot::Mutex::new(None),
            map_read_failures: parking_lot::Mutex::new(0),
            split_samples: parking_lot::Mutex::new(std::collections::HashMap::new()),
            last_auto_split: parking_lot::Mutex::new(None),
            split_at: cfg
                .cluster
                .as_ref()
                .map_or_else(split::SplitThresholds::default, split::SplitThresholds::of),
            shards,
            shard_sync: parking_lot::Mutex::new(()),
            gate,
            retention_days: cfg.security.retention_days,
            replication,
            metrics,
            rules: cfg.rules.to_rule_config(),
            rules_hourly: cfg.rules.hourly,
            rules_running: parking_lot::Mutex::new(()),
            task_seq,
            query: QueryEngine::with_parts(store.clone(), slices),
            store,
            data_dir: cfg.data_dir.clone(),
            clock,
            max_batch: cfg.max_batch,
            events_accepted: AtomicU64::new(0),
            ingest_group: GroupCommit::default(),
            audit_group: GroupCommit::default(),
            failed: AtomicBool::new(false),
        });
        if let Some(r) = &router {
            let weak: std::sync::Weak<Node> = Arc::downgrade(&node);
            r.attach(weak);
        }
        Ok(node)
    }

    /// Whether this node was started with `--join` and is not a member of
    /// the data group yet: the server then asks its peers to add it.
    pub fn needs_join(&self) -> bool {
        let Some(r) = self.replication.as_ref().filter(|_| self.joining) else {
            return false;
        };
        let me = r.handle.id();
        !r.handle
            .status(DATA_GROUP)
            .is_some_and(|s| s.voters.contains(&me) || s.learners.contains(&me))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn query(&self) -> &QueryEngine {
        &self.query
    }

    /// The data shards, in a sharded cluster.
    pub fn shards(&self) -> Option<&Shards> {
        self.shards.as_deref()
    }

    /// RocksDB's figures for each database of this node: the metadata
    /// store's, the data shards' shared one and the raft log's.
    pub fn engine_figures(&self) -> Vec<(&'static str, hourcell_storage::EngineFigures)> {
        let mut out = vec![("meta", self.store.engine().inner().figures())];
        if let Some(sh) = &self.shards {
            out.push(("shards", sh.engine_figures()));
        }
        if let Some(r) = &self.replication {
            out.push(("raft", r.raft_engine.0.figures()));
        }
        out
    }

    /// Counts over every store of this node: persons, addresses and
    /// registrations from the metadata store, disk summed, hours spanned.
    pub fn stats(&self) -> Result<hourcell_storage::StoreStats, NodeError> {
        let mut st = self.store.stats()?;
        if let Some(sh) = &self.shards {
            st.disk_bytes += sh.disk_bytes();
            for (_, s) in sh.all() {
                let x = s.stats()?;
                st.disk_bytes += x.disk_bytes;
                st.first_hour = match (st.first_hour, x.first_hour) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                st.last_hour = st.last_hour.max(x.last_hour);
            }
        }
        Ok(st)
    }

    /// Postings (cell and address slices) and person-index places over
    /// every store of this node.
    pub fn count_postings(&self) -> Result<(u64, u64), NodeError> {
        let mut total = self.store.count_postings()?;
        for (_, s) in self.shards.iter().flat_map(|sh| sh.all()) {
            let (a, b) = s.count_postings()?;
            total.0 += a;
            total.1 += b;
        }
        Ok(total)
    }

    /// Writes the held ingest of every store in which nothing was held for
    /// `idle` (see `Store::flush_idle`): once a load pauses, the first
    /// query does not pay for that write. Returns the stores written.
    pub fn flush_idle(&self, idle: std::time::Duration) -> Result<usize, NodeError> {
        let mut n = usize::from(self.store.flush_idle(idle)?);
        for (_, s) in self.shards.iter().flat_map(|sh| sh.all()) {
            n += usize::from(s.flush_idle(idle)?);
        }
        Ok(n)
    }

    /// Compacts every store; returns the disk bytes before and after.
    pub fn compact(&self) -> Result<(u64, u64), NodeError> {
        use hourcell_storage::KvEngine;
        // Held ingest slices first (stats flushes them too; say so here).
        self.store.flush()?;
        for (_, s) in self.shards.iter().flat_map(|sh| sh.all()) {
            s.flush()?;
        }
        let before = self.stats()?.disk_bytes;
        self.store.engine().compact()?;
        if let Some(sh) = &self.shards {
            sh.compact()?;
        }
        Ok((before, self.stats()?.disk_bytes))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    pub fn events_accepted(&self) -> u64 {
        self.events_accepted.load(Ordering::Relaxed)
    }

    /// Makes a command durable and applied. Returns only after the write is
    /// synced. A storage error marks the node failed.
    pub fn propose(&self, cmd: &Command) -> Result<ApplyOutcome, NodeError> {
        let t0 = std::time::Instant::now();
        self.metrics.proposals.inc();
        let r = self.propose_inner(cmd);
        match &r {
            Ok(_) => self
                .metrics
                .commit_latency
                .observe(t0.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.proposal_failures.inc();
            }
        }
        r
    }

    fn propose_inner(&self, cmd: &Command) -> Result<ApplyOutcome, NodeError> {
        if !self.healthy() {
            return Err(NodeError::Storage(hourcell_storage::StorageError::Engine(
                "node stopped serving after an earlier storage failure".into(),
            )));
        }
        if let Some(r) = &self.replication {
            // Acknowledged once committed by a majority and applied here.
            // A timeout may still commit later: the caller may retry, as
            // every command is idempotent.
            use crate::replication::ProposeError;
            let data = cmd.encode();
            return match r.retry_dropped(|left| r.handle.propose(r.group, data.clone(), left)) {
                Ok(out) => Ok(out),
                Err(ProposeError::Apply(why)) => Err(NodeError::Invalid(why)),
                Err(ProposeError::Stopped(why)) => {
                    self.failed.store(true, Ordering::Relaxed);
                    Err(NodeError::Unavailable(format!(
                        "replication stopped: {why}"
                    )))
                }
                Err(other) => Err(NodeError::Unavailable(other.to_string())),
            };
        }
        let t0 = std::time::Instant::now();
        let r = self.store.apply(cmd);
        self.metrics
            .apply_latency
            .observe(t0.elapsed().as_secs_f64());
        r.map_err(|e| {
            if e.is_fatal() {
                tracing::error!(error = %e, "storage failure: node stops serving");
                self.failed.store(true, Ordering::Relaxed);
            }
            NodeError::Storage(e)
        })
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn replication(&self) -> Option<&Replication> {
        self.replication.as_ref()
    }

    /// Stops the raft loop (if replicated) and waits for it; call before
    /// the process exits.
    pub fn shutdown(&self) {
        if let Some(r) = &self.replication {
            r.stop();
        }
    }

    /// Whether this node should run cluster-wide chores (the hourly rules):
    /// a single node always, a replica only while it leads the data group.
    pub fn leads(&self) -> bool {
        match &self.replication {
            None => true,
            Some(r) => r.handle.status(r.group).is_some_and(|s| s.is_leader),
        }
    }
}

impl crate::route::Placement for Node {
    fn shard_replicas(&self, id: hourcell_storage::shard::ShardId) -> (u64, Vec<u64>) {
        Node::shard_replicas(self, id)
    }

    /// Read from the raft engine: once per routing round, not per part.
    fn peers(&self) -> std::collections::HashMap<u64, String> {
        self.replication
            .as_ref()
            .map(|r| r.known_peers().into_iter().collect())
            .unwrap_or_default()
    }

    fn refresh_map(&self) -> Result<(), NodeError> {
        Node::refresh_map(self)
    }

    fn sync_shards(&self) -> Result<(), NodeError> {
        Node::sync_shards(self)
    }

    fn shard_members(&self) -> Vec<ShardMembers> {
        Node::shard_members(self)
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        Node::metrics(self)
    }
}
