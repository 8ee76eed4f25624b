//! A single node: one shard (the whole data set) on RocksDB, the query
//! engine over it, and an injectable clock.
//!
//! Writes reach the store as [`Command`]s through [`Node::propose`]. On one
//! node that applies directly; when shards become raft groups, `propose`
//! becomes "append to the group's log and wait for apply", and nothing above
//! it changes.

use hourcell_proto::v1;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hourcell_query::validate::{self, RawAddress, RawEvent, RawRegistration, Rejection};
use hourcell_query::{QueryEngine, RuleConfig};
use hourcell_storage::{
    ApplyOutcome, Command, Outcome, RocksConfig, RocksEngine, SliceStore, TaskRecord, TaskState,
    TaskUpdate,
};

use crate::config::NodeConfig;

/// A store on RocksDB: the whole of its engine (a single node's, or a
/// sharded cluster's metadata group) or one data shard's part of the
/// node's shared shard engine.
pub type Store = SliceStore<hourcell_storage::PrefixedEngine<RocksEngine>>;

/// A source of "now" in unix seconds; tests inject a fixed clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(hourcell_query::time::now)
}

/// The raft side of a replicated node.
pub struct Replication {
    pub handle: crate::replication::RaftHandle,
    /// Where the gRPC Raft service delivers peers' messages.
    pub inbox: std::sync::mpsc::Sender<crate::replication::node::Input>,
    /// The group that holds the dictionaries, catalog, tasks and audit
    /// log (the only group of an unsharded cluster).
    pub group: u64,
    /// Every group this node hosts, `group` first (a sharded cluster's
    /// weeks come and go).
    pub groups: parking_lot::RwLock<Vec<u64>>,
    pub propose_timeout: std::time::Duration,
    /// Whether data shards are placed by the shard map (membership changes
    /// then go to the metadata group only).
    pub sharded: bool,
    /// Peers as configured: (id, gRPC address).
    pub peers: Vec<(u64, String)>,
    /// The raft log's engine, which also records the addresses of nodes
    /// added after the cluster started.
    pub raft_engine: Arc<RocksEngine>,
    /// The raft loop's thread, joined by [`Replication::stop`].
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Replication {
    /// Stops the raft loop and waits for it, so that nothing writes to the
    /// engines while the process exits (RocksDB aborts if a thread uses it
    /// during exit).
    pub fn stop(&self) {
        self.handle.stop();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Every node this one knows an address for: the configured peers and
    /// the nodes added since, by id.
    pub fn known_peers(&self) -> Vec<(u64, String)> {
        let mut m: std::collections::BTreeMap<u64, String> = self.peers.iter().cloned().collect();
        if let Ok(stored) =
            crate::replication::log_store::stored_peer_addresses(self.raft_engine.as_ref())
        {
            m.extend(stored);
        }
        m.into_iter().collect()
    }

    /// Adds node `id` at `addr` as a learner (promoted to voter by the
    /// leader once caught up). With `replace`, a current member is removed
    /// first, which is how a node that lost its data directory rejoins.
    pub fn add_node(&self, id: u64, addr: &str, replace: bool) -> Result<(), NodeError> {
        use raft::eraftpb::{ConfChange, ConfChangeType};
        if id == 0 || addr.trim().is_empty() {
            return Err(NodeError::Invalid(
                "add-node needs a non-zero --id and the node's --addr".into(),
            ));
        }
        let s = self.status()?;
        if s.voters.contains(&id) || s.learners.contains(&id) {
            if !replace {
                return Err(NodeError::Refused(format!(
                    "node {id} is already a member; to re-add a node whose data was lost, \
                     start it with --join (or pass --replace)"
                )));
            }
            self.remove_node(id)?;
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = id;
        cc.context = addr.trim().as_bytes().to_vec().into();
        // Unsharded: the one group. Sharded: the metadata group, which is
        // on every node; the shard map then places data shards on the new
        // node (new weeks, and replacements for nodes that leave). A group
        // that already has it (an earlier, partly failed add) is skipped.
        let groups = if self.sharded {
            vec![self.group]
        } else {
            self.groups()
        };
        for g in groups {
            let sg = self.status_of(g)?;
            if !sg.voters.contains(&id) && !sg.learners.contains(&id) {
                self.change(g, cc.clone())?;
            }
        }
        Ok(())
    }

    /// Removes node `id`. If it leads, leadership moves to another voter
    /// first.
    pub fn remove_node(&self, id: u64) -> Result<(), NodeError> {
        let s = self.status()?;
        if !s.voters.contains(&id) && !s.learners.contains(&id) {
            return Err(NodeError::Invalid(format!("node {id} is not a member")));
        }
        if s.voters == [id] {
            return Err(NodeError::Refused(format!(
                "node {id} is the only voter; add another node first"
            )));
        }
        // The metadata group last: it is what says whether `id` is a member.
        // Sharded: the metadata group only; its leader then moves the
        // node's shard replicas to other members, and each shard's leader
        // removes the node once the replacement votes.
        let groups = if self.sharded {
            vec![self.group]
        } else {
            self.groups()
        };
        for g in groups.into_iter().rev() {
            let sg = self.status_of(g)?;
            if sg.voters.contains(&id) || sg.learners.contains(&id) {
                self.remove_from(g, id)?;
            }
        }
        Ok(())
    }

    /// Removes node `id` from group `g`, moving the group's leadership
    /// away from it first.
    fn remove_from(&self, g: u64, id: u64) -> Result<(), NodeError> {
        use raft::eraftpb::{ConfChange, ConfChangeType};
        let s = self.status_of(g)?;
        if s.leader == id {
            let to = s.voters.iter().copied().find(|v| *v != id).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                self.handle.transfer_leader(g, to);
                std::thread::sleep(std::time::Duration::from_millis(200));
                let now = self.status_of(g)?;
                if now.leader != 0 && now.leader != id {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(NodeError::Unavailable(format!(
                        "node {id} leads group {g} and did not hand leadership to node {to} within 10 s"
                    )));
                }
            }
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        self.change(g, cc)
    }

    fn status(&self) -> Result<crate::replication::GroupStatus, NodeError> {
        self.status_of(self.group)
    }

    /// Every group this node hosts now, the metadata group first.
    pub fn groups(&self) -> Vec<u64> {
        self.groups.read().clone()
    }

    /// Members (voters and learners) of the metadata group: every data
    /// group should have the same.
    pub fn meta_members(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        self.handle
            .status(self.group)
            .map(|s| (s.voters, s.learners))
    }

    fn status_of(&self, g: u64) -> Result<crate::replication::GroupStatus, NodeError> {
        self.handle
            .status(g)
            .ok_or_else(|| NodeError::Unavailable(format!("raft group {g} is not running")))
    }

    /// Proposes a membership change to group `g`, retrying while another
    /// one is still pending or no leader is known.
    fn change(&self, g: u64, cc: raft::eraftpb::ConfChange) -> Result<(), NodeError> {
        use crate::replication::ProposeError;
        match self.retry_dropped(|left| self.handle.change_membership(g, cc.clone(), left)) {
            Ok(()) => Ok(()),
            Err(ProposeError::Apply(why)) => Err(NodeError::Refused(why)),
            Err(e) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Calls `f` with the time left until it returns anything but
    /// `Dropped` (no leader yet, or the leader changed under the request)
    /// or `propose_timeout` has passed. Retrying is safe: commands are
    /// idempotent and read barriers have no effect.
    fn retry_dropped<T>(
        &self,
        mut f: impl FnMut(std::time::Duration) -> Result<T, crate::replication::ProposeError>,
    ) -> Result<T, crate::replication::ProposeError> {
        let deadline = std::time::Instant::now() + self.propose_timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match f(left) {
                Err(crate::replication::ProposeError::Dropped) if !left.is_zero() => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// Proposes `(group, encoded command)` pairs at once and waits until
    /// every one is applied here, retrying those dropped (no leader yet)
    /// until `propose_timeout`. Fails if any part fails: the caller reports
    /// the whole request as failed, and a retry of it is harmless.
    pub fn propose_all(
        &self,
        items: Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, crate::replication::ProposeError> {
        use crate::replication::ProposeError;
        let deadline = std::time::Instant::now() + self.propose_timeout;
        let mut out: Vec<Option<ApplyOutcome>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let batch: Vec<(u64, Vec<u8>)> = pending.iter().map(|&i| items[i].clone()).collect();
            let results = self.handle.propose_many(batch, left);
            let mut again = Vec::new();
            for (i, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(o) => out[i] = Some(o),
                    Err(ProposeError::Dropped) if !left.is_zero() => again.push(i),
                    Err(e) => return Err(e),
                }
            }
            if again.is_empty() {
                return Ok(out.into_iter().map(|o| o.unwrap_or_default()).collect());
            }
            pending = again;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// ReadIndex on several groups at once (see [`RaftHandle::read_index`]).
    pub fn read_index_all(&self, groups: &[u64]) -> Result<(), crate::replication::ProposeError> {
        use crate::replication::ProposeError;
        let deadline = std::time::Instant::now() + self.propose_timeout;
        let mut pending = groups.to_vec();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let results = self.handle.read_index_many(&pending, left);
            let mut again = Vec::new();
            for (g, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(()) => {}
                    Err(ProposeError::Dropped) if !left.is_zero() => again.push(g),
                    Err(e) => return Err(e),
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            pending = again;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

pub use crate::shards::Shards;

/// The one data group until sharding arrives.
pub const DATA_GROUP: u64 = 1;

pub struct Node {
    /// The whole data set, or in a sharded cluster the metadata group's
    /// store (dictionaries, addresses, registry, tasks, audit log).
    store: Arc<Store>,
    /// The data shards of a sharded cluster.
    shards: Option<Arc<Shards>>,
    replication: Option<Replication>,
    metrics: Arc<crate::metrics::Metrics>,
    query: QueryEngine<dyn hourcell_query::SliceSource>,
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
    auth: crate::auth::Auth,
    retention_days: u32,
    tls: Option<crate::tls::TlsPaths>,
    /// One shard-map sync at a time.
    shard_sync: parking_lot::Mutex<()>,
    ingest_group: IngestGroup,
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
}

/// Drafts per `RaiseTasks` command: a log entry carries a batch.
const TASKS_PER_COMMAND: usize = 5_000;

/// Group commit of ingest batches. Requests validate their events in
/// parallel, then queue them; whichever request finds no apply running
/// takes everything queued (up to `max_batch` events) and proposes it as one
/// `Ingest` command, and every request returns once the command holding its
/// events is durable. Consecutive batches share many slice keys (a quarter
/// of the address-day keys and a tenth of the person-day keys of two
/// 20,000-event batches of the generated town), so one command writes fewer
/// merge operands into the memtable than two, and syncs once.
#[derive(Default)]
struct IngestGroup {
    state: std::sync::Mutex<GroupState>,
    applied: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    next_ticket: u64,
    queue: std::collections::VecDeque<(u64, Vec<hourcell_storage::SliceEvent>)>,
    applying: bool,
    /// Outcome per ticket whose events were proposed, until its request
    /// collects it: `Ok` or the error, as a copy for the requests that did
    /// not propose.
    done: std::collections::HashMap<u64, Result<(), NodeError>>,
}

/// Ends a group whose proposal panicked: every request in it gets an
/// error, and the next waiting request proposes.
struct GroupGuard<'a> {
    group: &'a IngestGroup,
    tickets: Option<Vec<u64>>,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if let Some(tickets) = self.tickets.take() {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                st.done.insert(
                    t,
                    Err(NodeError::Unavailable(
                        "the write failed on this node; retry it".into(),
                    )),
                );
            }
            self.group.applied.notify_all();
        }
    }
}

/// A copy of an error for the other requests of a failed group: the same
/// kind where it is only a message, otherwise unavailable with its text.
fn shared_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::Invalid(m) => NodeError::Invalid(m.clone()),
        NodeError::Refused(m) => NodeError::Refused(m.clone()),
        other => NodeError::Unavailable(other.to_string()),
    }
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

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Query(#[from] hourcell_query::QueryError),
    #[error(transparent)]
    Storage(#[from] hourcell_storage::StorageError),
    /// The request was well-formed but the current state does not allow it.
    #[error("{0}")]
    Refused(String),
    /// Not now: no raft leader, or the write did not commit in time.
    #[error("{0}")]
    Unavailable(String),
}

/// Where the raft engine records the shard layout the cluster was created
/// with (cell shards and person shards, u32 big-endian each; 0 and 0 =
/// unsharded); a later start with another layout is refused.
const LAYOUT_KEY: &[u8] = &[0x06];

fn check_layout(
    engine: &RocksEngine,
    want: Option<hourcell_storage::shard::Layout>,
) -> anyhow::Result<()> {
    use hourcell_storage::KvEngine;
    let (c, p) = want.map_or((0, 0), |l| (l.cells, l.persons));
    let mut enc = c.to_be_bytes().to_vec();
    enc.extend_from_slice(&p.to_be_bytes());
    let show = |c: u32, p: u32| {
        if c == 0 && p == 0 {
            "unsharded (cell_shards = 0, person_shards = 0)".to_string()
        } else {
            format!("with cell_shards = {c}, person_shards = {p}")
        }
    };
    match engine
        .get(LAYOUT_KEY)
        .map_err(|e| anyhow::anyhow!("cannot read the shard layout: {e}"))?
    {
        Some(v) if v == enc => {}
        Some(v) if v.len() == 8 => {
            let hc = u32::from_be_bytes(v[0..4].try_into().unwrap());
            let hp = u32::from_be_bytes(v[4..8].try_into().unwrap());
            anyhow::bail!(
                "this data directory belongs to a cluster created {}, but the config says {}; \
                 the layout is fixed when a cluster is created",
                show(hc, hp),
                show(c, p)
            );
        }
        Some(_) => anyhow::bail!("the stored shard layout is damaged"),
        None => {
            let mut b = hourcell_storage::WriteBatch::default();
            b.put(LAYOUT_KEY.to_vec(), enc);
            engine
                .write(b, true)
                .map_err(|e| anyhow::anyhow!("cannot record the shard layout: {e}"))?;
        }
    }
    Ok(())
}

/// Where the person shards of a new cluster start: placed over the
/// configured peers (every node of a new cluster computes the same).
pub(crate) fn founding_persons(
    c: &crate::config::ClusterConfig,
    layout: hourcell_storage::shard::Layout,
) -> Vec<Vec<u64>> {
    let ids: Vec<u64> = c.peers.iter().map(|p| p.id).collect();
    hourcell_storage::shard::ShardMap::default_persons(layout, &ids, c.replicas as usize)
}

/// Every shard with the nodes that should hold it: the map's, with the
/// person shards at their founding placement until the metadata group
/// records theirs.
pub(crate) fn placed_shards(
    map: &hourcell_storage::shard::ShardMap,
    founding: &[Vec<u64>],
) -> Vec<(hourcell_storage::shard::ShardId, Vec<u64>)> {
    use hourcell_storage::shard::ShardId;
    let mut out: Vec<(ShardId, Vec<u64>)> = Vec::new();
    if map.persons.is_empty() {
        for (index, r) in founding.iter().enumerate() {
            let id = ShardId {
                part: hourcell_storage::ShardPart::Persons,
                week: 0,
                index,
            };
            out.push((id, r.clone()));
        }
    }
    out.extend(map.shards().into_iter().map(|(id, r)| (id, r.to_vec())));
    out
}

/// The voters this node starts shard `id`'s raft group with when it
/// begins holding a replica: the shard's founders, if this node is one and
/// the shard has not moved since (a new cluster's person shards, a new
/// week's cell shards); otherwise none, and the shard's leader adds this
/// node as a learner and sends it a snapshot. A joining node founds
/// nothing.
pub(crate) fn start_voters(
    map: &hourcell_storage::shard::ShardMap,
    id: hourcell_storage::shard::ShardId,
    replicas: &[u64],
    me: u64,
    founding: &[Vec<u64>],
    joining: bool,
) -> Vec<u64> {
    if joining {
        return Vec::new();
    }
    let founders = match id.part {
        // Recorded placement: the cluster is past its creation.
        hourcell_storage::ShardPart::Persons if !map.persons.is_empty() => &[][..],
        _ => map.founders(id, founding),
    };
    if founders.contains(&me) && founders == replicas {
        founders.to_vec()
    } else {
        Vec::new()
    }
}

/// Starts the raft loop with `groups`: (group, store, the voters a new
/// group starts with; empty to wait to be added).
fn start_replication(
    cfg: &NodeConfig,
    c: &crate::config::ClusterConfig,
    groups: Vec<(u64, Arc<Store>, Vec<u64>)>,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<Replication> {
    use crate::replication::{grpc::GrpcTransport, RaftNode, RaftTiming, StoreMachine};
    let raft_dir = cfg.data_dir.join("raft");
    let engine = RocksEngine::open(
        &raft_dir,
        &RocksConfig {
            block_cache_bytes: 16 << 20,
            write_buffer_bytes: 16 << 20,
            ..RocksConfig::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", raft_dir.display()))?;
    check_layout(&engine, c.layout().map_err(anyhow::Error::msg)?)?;
    let engine = Arc::new(engine);
    let mut peers: std::collections::HashMap<u64, String> =
        c.peers.iter().map(|p| (p.id, p.addr.clone())).collect();
    // Nodes added by membership changes since the cluster started.
    peers.extend(
        crate::replication::log_store::stored_peer_addresses(engine.as_ref())
            .map_err(|e| anyhow::anyhow!("cannot read peer addresses: {e}"))?,
    );
    let transport = Arc::new(GrpcTransport::start(
        c.node_id,
        &peers,
        cfg.security
            .tls
            .as_ref()
            .map(crate::tls::ClientTls::of_node),
    ));
    let timing = RaftTiming {
        tick: std::time::Duration::from_millis(c.tick_ms),
        ..RaftTiming::default()
    };
    // (compact_after: the default 1,000 entries of up to 100,000 events.)
    let (mut raft, handle) = RaftNode::new(c.node_id, timing, transport);
    let ids: Vec<u64> = groups.iter().map(|g| g.0).collect();
    for (g, store, voters) in groups {
        raft.add_group(
            g,
            engine.clone(),
            &voters,
            Arc::new(StoreMachine {
                store,
                apply_latency: metrics.apply_latency.clone(),
            }),
        )
        .map_err(|e| anyhow::anyhow!("cannot start raft group {g}: {e}"))?;
    }
    let inbox = handle.inbox();
    let thread = raft.spawn();
    let r = Replication {
        thread: parking_lot::Mutex::new(Some(thread)),
        handle,
        inbox,
        group: DATA_GROUP,
        groups: parking_lot::RwLock::new(ids),
        propose_timeout: std::time::Duration::from_secs(10),
        sharded: c.layout().map_err(anyhow::Error::msg)?.is_some(),
        peers: c.peers.iter().map(|p| (p.id, p.addr.clone())).collect(),
        raft_engine: engine,
    };
    if c.join {
        let me = r.handle.status(DATA_GROUP);
        let member =
            me.is_some_and(|s| s.voters.contains(&c.node_id) || s.learners.contains(&c.node_id));
        if !member {
            let key = cfg.security.auth()?.token_key;
            let tls = cfg
                .security
                .tls
                .as_ref()
                .map(crate::tls::ClientTls::of_node);
            tokio::spawn(ask_to_join(c.clone(), key, tls));
        }
    }
    Ok(r)
}

/// Asks the configured peers, in turn, to add this node (replacing its old
/// membership, if any) until one of them does.
async fn ask_to_join(
    c: crate::config::ClusterConfig,
    token_key: Option<Vec<u8>>,
    tls: Option<crate::tls::ClientTls>,
) {
    let me = c
        .peers
        .iter()
        .find(|p| p.id == c.node_id)
        .map(|p| p.addr.clone())
        .unwrap_or_default();
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        for p in c.peers.iter().filter(|p| p.id != c.node_id) {
            let req = hourcell_proto::v1::AddNodeRequest {
                id: c.node_id,
                addr: me.clone(),
                replace: true,
            };
            // Nodes of a cluster share the token key: the request is signed
            // as this node, with the operator role, for five minutes.
            let creds = match &token_key {
                Some(k) => crate::client::Credentials::bearer(&crate::auth::issue_token(
                    k,
                    &crate::auth::Claims {
                        sub: format!("node-{}", c.node_id),
                        roles: vec!["operator".into()],
                        exp: hourcell_query::time::now() + 300,
                    },
                ))
                .unwrap_or_default(),
                None => crate::client::Credentials::default(),
            };
            // With TLS the node's certificate (node-<id>) speaks for it.
            let tls = tls.clone().unwrap_or_default();
            match crate::client::channel_with(&p.addr, creds, &tls).await {
                Ok(ch) => match crate::client::admin_client(ch).add_node(req).await {
                    Ok(_) => {
                        tracing::info!(
                            via = p.id,
                            "joined the cluster as a learner; waiting for a snapshot"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(via = p.id, error = %e.message(), "join refused; retrying")
                    }
                },
                Err(e) => tracing::debug!(via = p.id, error = %e, "peer unreachable"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

impl Node {
    pub fn open(cfg: &NodeConfig, clock: Clock) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", cfg.data_dir.display())
        })?;
        let rc = RocksConfig {
            block_cache_bytes: cfg.block_cache_mb << 20,
            write_buffer_bytes: cfg.write_buffer_mb << 20,
            ..RocksConfig::default()
        };
        let engine = RocksEngine::open(&cfg.data_dir.join("db"), &rc)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.data_dir.display()))?;
        let store = Arc::new(SliceStore::open(
            hourcell_storage::PrefixedEngine::whole(Arc::new(engine)),
            Some(cfg.slice_level),
        )?);
        store.set_defer_events(cfg.hold_events)?;
        let (task_seq, _) = tokio::sync::watch::channel(store.last_task_change());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let auth = cfg.security.auth()?;
        let layout = match &cfg.cluster {
            Some(c) => c.layout().map_err(anyhow::Error::msg)?,
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
                for w in store.shard_map().weeks.keys() {
                    sh.open_week(*w)?;
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
                let mut groups = vec![(DATA_GROUP, store.clone(), voters)];
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
                        groups.push((g, st, start));
                    }
                }
                Some(start_replication(cfg, c, groups, &metrics)?)
            }
        };
        if let Some(sh) = &shards {
            *sh.synced_version.write() = store.shard_map_version();
        }
        let router = match (&shards, &cfg.cluster) {
            (Some(_), Some(c)) => Some(crate::route::Router::new(
                c.node_id,
                cfg.security
                    .tls
                    .as_ref()
                    .map(crate::tls::ClientTls::of_node),
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
        let source: Arc<dyn hourcell_query::SliceSource> = match (&shards, &gate, &router) {
            (Some(sh), Some(gate), Some(router)) => {
                use hourcell_storage::shard::ShardId;
                use hourcell_storage::ShardPart;
                let source = {
                    let (sh, gate, router, meta) =
                        (sh.clone(), gate.clone(), router.clone(), store.clone());
                    move |id: ShardId| -> Arc<dyn hourcell_query::SliceSource> {
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
                Arc::new(hourcell_query::ShardedSource::new(
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
                        (0..sh2.layout.cells as usize)
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
                ))
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
            shards,
            shard_sync: parking_lot::Mutex::new(()),
            gate,
            auth,
            tls: cfg.security.tls.clone(),
            retention_days: cfg.security.retention_days,
            replication,
            metrics,
            rules: cfg.rules.to_rule_config(),
            rules_hourly: cfg.rules.hourly,
            rules_running: parking_lot::Mutex::new(()),
            task_seq,
            query: QueryEngine::new(source),
            store,
            data_dir: cfg.data_dir.clone(),
            clock,
            max_batch: cfg.max_batch,
            events_accepted: AtomicU64::new(0),
            ingest_group: IngestGroup::default(),
            failed: AtomicBool::new(false),
        });
        if let Some(r) = &router {
            r.attach(&node);
        }
        Ok(node)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn query(&self) -> &QueryEngine<dyn hourcell_query::SliceSource> {
        &self.query
    }

    /// The data shards, in a sharded cluster.
    pub fn shards(&self) -> Option<&Shards> {
        self.shards.as_deref()
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
        let mut total = (0, 0);
        for s in self.stores() {
            let (a, b) = s.count_postings()?;
            total.0 += a;
            total.1 += b;
        }
        Ok(total)
    }

    /// Compacts every store; returns the disk bytes before and after.
    pub fn compact(&self) -> Result<(u64, u64), NodeError> {
        use hourcell_storage::KvEngine;
        // Held ingest slices first (stats flushes them too; say so here).
        for s in self.stores() {
            s.flush()?;
        }
        let before = self.stats()?.disk_bytes;
        self.store.engine().compact()?;
        if let Some(sh) = &self.shards {
            sh.compact()?;
        }
        Ok((before, self.stats()?.disk_bytes))
    }

    /// Every store this node holds: the metadata (or only) store first.
    pub fn stores(&self) -> Vec<Arc<Store>> {
        let mut v = vec![self.store.clone()];
        if let Some(sh) = &self.shards {
            v.extend(sh.all().into_iter().map(|(_, s)| s));
        }
        v
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
        self.metrics.proposals.fetch_add(1, Ordering::Relaxed);
        let r = self.propose_inner(cmd);
        match &r {
            Ok(_) => self.metrics.commit_latency.observe(t0.elapsed()),
            Err(_) => {
                self.metrics
                    .proposal_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// Ingest in a sharded cluster: the weeks' partitions and the ids
    /// from the metadata group first (only for weeks, persons and labels it
    /// has not seen), then one part per shard the events touch, all
    /// proposed at once (here for the shards this node holds, through
    /// their nodes for the others).
    fn ingest_sharded(
        &self,
        sh: &Shards,
        events: Vec<hourcell_storage::SliceEvent>,
    ) -> Result<(), NodeError> {
        let weeks = hourcell_storage::shard::Layout::weeks(&events);
        self.ensure_weeks(&weeks)?;
        let (persons, sources) = hourcell_storage::shard::Layout::missing_ids(&self.store, &events);
        if !persons.is_empty() || !sources.is_empty() {
            self.propose(&Command::AssignIds { persons, sources })?;
        }
        // A shard held elsewhere is sent every dictionary entry its part
        // needs (learning one twice is harmless).
        let parts = sh.layout.split(&self.store, events, &|id, k| {
            sh.get(id).is_some_and(|(_, store)| store.knows(k))
        })?;
        let items = parts
            .into_iter()
            .map(|(id, cmd)| (id, Command::IngestShard(cmd)))
            .collect();
        self.propose_parts(items).map(|_| ())
    }

    /// The shard map's version and the nodes that should hold shard `id`
    /// (the person shards' founding placement until the map records one).
    pub fn shard_replicas(&self, id: hourcell_storage::shard::ShardId) -> (u64, Vec<u64>) {
        let (v, r) = self.store.shard_replicas(id);
        if r.is_empty() && id.part == hourcell_storage::ShardPart::Persons {
            return (v, self.founding.get(id.index).cloned().unwrap_or_default());
        }
        (v, r)
    }

    /// Proposes one command per data shard at once: those this node holds
    /// through its own raft groups, the others through a node that holds
    /// them. Succeeds only when every one is applied; outcomes in order.
    fn propose_parts(
        &self,
        parts: Vec<(hourcell_storage::shard::ShardId, Command)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        let (Some(sh), Some(router)) = (&self.shards, &self.router) else {
            return Err(NodeError::Invalid("sharding needs [cluster]".into()));
        };
        let mut local = Vec::new();
        let mut local_at = Vec::new();
        let mut remote = Vec::new();
        let mut remote_at = Vec::new();
        for (i, (id, cmd)) in parts.iter().enumerate() {
            match sh.get(*id) {
                Some((g, _)) => {
                    local.push((g, cmd.clone()));
                    local_at.push(i);
                }
                None => {
                    remote.push((*id, crate::shards::group_of(*id), cmd.encode()));
                    remote_at.push(i);
                }
            }
        }
        let mut out = vec![ApplyOutcome::default(); parts.len()];
        let routed = if remote.is_empty() {
            None
        } else {
            // The routed parts travel while this node proposes its own.
            let router = router.clone();
            Some(std::thread::spawn(move || router.propose(remote)))
        };
        let here = if local.is_empty() {
            Ok(Vec::new())
        } else {
            self.propose_local(local)
        };
        if let Some(t) = routed {
            let outs = t
                .join()
                .map_err(|_| NodeError::Unavailable("routing a write panicked".into()))??;
            for (i, o) in remote_at.into_iter().zip(outs) {
                out[i] = o;
            }
        }
        for (i, o) in local_at.into_iter().zip(here?) {
            out[i] = o;
        }
        Ok(out)
    }

    /// Proposes one command per `(group, command)` pair of groups this
    /// node holds, at once; succeeds only when every one is applied here.
    fn propose_local(&self, parts: Vec<(u64, Command)>) -> Result<Vec<ApplyOutcome>, NodeError> {
        use crate::replication::ProposeError;
        let Some(r) = &self.replication else {
            return Err(NodeError::Invalid("sharding needs [cluster]".into()));
        };
        let t0 = std::time::Instant::now();
        let n = parts.len() as u64;
        self.metrics.proposals.fetch_add(n, Ordering::Relaxed);
        let items = parts.into_iter().map(|(g, c)| (g, c.encode())).collect();
        match r.propose_all(items) {
            Ok(out) => {
                self.metrics.commit_latency.observe(t0.elapsed());
                Ok(out)
            }
            Err(e) => {
                self.metrics
                    .proposal_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    ProposeError::Apply(why) => NodeError::Invalid(why),
                    ProposeError::Stopped(why) => {
                        self.failed.store(true, Ordering::Relaxed);
                        NodeError::Unavailable(format!("replication stopped: {why}"))
                    }
                    other => NodeError::Unavailable(format!(
                        "not every shard committed this batch ({other}); retry it: \
                         a repeated batch is harmless"
                    )),
                })
            }
        }
    }

    /// Catches up with the shard map: a linearizable read of the metadata
    /// group, then hosting what it places here (after a routed request
    /// named a newer map, or a node said this one is stale).
    pub fn refresh_map(&self) -> Result<(), NodeError> {
        self.read_barrier()?;
        self.sync_shards()
    }

    /// The data groups this node holds, with their members as it sees
    /// them (for status and for membership changes).
    pub fn shard_members(&self) -> Vec<v1::ShardStatus> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Vec::new();
        };
        sh.all()
            .into_iter()
            .map(|(g, store)| {
                let s = r.handle.status(g);
                v1::ShardStatus {
                    group: g,
                    shard: sh.describe(g),
                    leader: s.as_ref().map_or(0, |s| s.leader),
                    term: s.as_ref().map_or(0, |s| s.term),
                    commit: s.as_ref().map_or(0, |s| s.commit),
                    applied: s.as_ref().map_or(0, |s| s.applied),
                    voters: s.as_ref().map_or(Vec::new(), |s| s.voters.clone()),
                    learners: s.as_ref().map_or(Vec::new(), |s| s.learners.clone()),
                    first_index: s.as_ref().map_or(0, |s| s.first_index),
                    replicas: sh
                        .shard_of(g)
                        .map_or(Vec::new(), |id| self.shard_replicas(id).1),
                    map_version: self.store.shard_map_version(),
                    disk_bytes: {
                        use hourcell_storage::KvEngine;
                        store.engine().disk_bytes()
                    },
                }
            })
            .collect()
    }

    /// Adds node `id` (see [`Replication::add_node`]). In a sharded
    /// cluster with `replace` (a node that lost its data rejoining), the
    /// node's old replicas are first taken out of every data group: the
    /// shard map stops placing anything on it, and this waits until no
    /// group's leader lists it, so that no group counts a replica that
    /// forgot its log. The map then places shards on it again as on any
    /// new member, and it receives them by snapshot.
    pub fn add_node(&self, id: u64, addr: &str, replace: bool) -> Result<(), NodeError> {
        let r = self.replication.as_ref().ok_or_else(|| {
            NodeError::Refused(
                "this is a single node without [cluster]: there is no membership".into(),
            )
        })?;
        if self.shards.is_none() || !replace {
            return r.add_node(id, addr, replace);
        }
        if id == 0 || addr.trim().is_empty() {
            return Err(NodeError::Invalid(
                "add-node needs a non-zero --id and the node's --addr".into(),
            ));
        }
        let (voters, learners) = r
            .meta_members()
            .ok_or_else(|| NodeError::Unavailable("metadata group is not running".into()))?;
        if voters.contains(&id) || learners.contains(&id) {
            r.remove_node(id)?;
        }
        self.evict(id)?;
        r.add_node(id, addr, false)
    }

    /// Takes node `id` out of every data shard: out of the shard map's
    /// placement, then waits until no data group's leader lists it.
    fn evict(&self, id: u64) -> Result<(), NodeError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        self.read_barrier()?;
        let map = self.store.shard_map();
        let moves: Vec<_> = placed_shards(&map, &self.founding)
            .into_iter()
            .filter(|(_, r)| r.contains(&id))
            .map(|(sid, r)| (sid, r.into_iter().filter(|n| *n != id).collect()))
            .collect();
        if !moves.is_empty() {
            self.propose(&Command::PlaceShards { shards: moves })?;
        }
        // Under the server's 60 s request timeout, so the caller gets this
        // error rather than a cancelled call (a joining node asks again).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
        loop {
            let _ = self.sync_shards();
            let views = router.members_everywhere();
            let mut led = std::collections::HashSet::new();
            let mut still = Vec::new();
            for (n, groups) in &views {
                for g in groups {
                    if g.leader == *n {
                        led.insert(g.group);
                        if g.voters.contains(&id) || g.learners.contains(&id) {
                            still.push(g.group);
                        }
                    }
                }
            }
            let all: std::collections::HashSet<u64> = views
                .iter()
                .flat_map(|(_, gs)| gs.iter().map(|g| g.group))
                .collect();
            let leaderless: Vec<u64> = all.difference(&led).copied().collect();
            if still.is_empty() && leaderless.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(NodeError::Unavailable(format!(
                    "node {id}'s old replicas are still members of shard groups {still:?} \
                     (groups without a reachable leader: {leaderless:?}); retry"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// Checks that this node holds `group` for a request routed by shard
    /// map `version`, catching up first if the sender knew a newer map.
    fn check_routed(&self, version: u64, group: u64) -> Result<Arc<Store>, NodeError> {
        let Some(sh) = &self.shards else {
            return Err(NodeError::Invalid("this node is not sharded".into()));
        };
        if version > self.store.shard_map_version() || !sh.hosts(group) {
            self.refresh_map()?;
        }
        let mine = self.store.shard_map_version();
        match sh.shard_of(group).and_then(|id| sh.get(id)) {
            Some((_, store)) => Ok(store),
            None => Err(NodeError::Refused(format!(
                "stale shard map: node {} holds no replica of shard group {group} \
                 (its shard map is at version {mine}, the request was routed by {version}); \
                 refresh the map and route again",
                self.replication.as_ref().map_or(0, |r| r.handle.id()),
            ))),
        }
    }

    /// Serves a write routed here by another node: every command must be
    /// for a group this node holds.
    pub fn serve_propose(
        &self,
        version: u64,
        items: Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        let mut parts = Vec::with_capacity(items.len());
        for (g, bytes) in items {
            self.check_routed(version, g)?;
            let cmd = Command::decode(&bytes)
                .map_err(|e| NodeError::Invalid(format!("bad routed command: {e}")))?;
            parts.push((g, cmd));
        }
        self.propose_local(parts)
    }

    /// Serves a read of group `group` routed here by another node; with
    /// `barrier`, after a ReadIndex on the group.
    pub fn serve_read(
        &self,
        version: u64,
        group: u64,
        barrier: bool,
        op: crate::route::ReadOp,
    ) -> Result<(Vec<u8>, u64), NodeError> {
        let store = self.check_routed(version, group)?;
        if barrier {
            let r = self
                .replication
                .as_ref()
                .ok_or_else(|| NodeError::Invalid("sharding needs [cluster]".into()))?;
            r.read_index_all(&[group]).map_err(|e| {
                NodeError::Unavailable(format!(
                    "cannot serve a linearizable read of shard group {group}: {e}"
                ))
            })?;
        }
        if store.is_restoring() {
            return Err(NodeError::Unavailable(
                "this replica is installing a snapshot; retry, or ask another node".into(),
            ));
        }
        let reply = crate::route::serve_read(&store, op)?;
        Ok((reply, self.store.shard_map_version()))
    }

    /// Makes sure the shard map has `weeks` and this node hosts what the
    /// map places here of their cell shards: a week not in the map is
    /// added through the metadata group, each cell shard on the least
    /// loaded `replicas` members; the other nodes follow within a moment
    /// (see [`Node::sync_shards`]).
    pub fn ensure_weeks(&self, weeks: &[i64]) -> Result<(), NodeError> {
        let Some(sh) = &self.shards else {
            return Ok(());
        };
        let missing: Vec<i64> = weeks
            .iter()
            .copied()
            .filter(|w| !self.store.shard_map_has_week(*w))
            .collect();
        if !missing.is_empty() {
            let r = self
                .replication
                .as_ref()
                .ok_or_else(|| NodeError::Invalid("sharding needs [cluster]".into()))?;
            let (voters, _) = r
                .meta_members()
                .ok_or_else(|| NodeError::Unavailable("metadata group is not running".into()))?;
            let mut load = self.store.shard_map().load();
            let weeks = missing
                .into_iter()
                .map(|w| {
                    let cells = (0..sh.layout.cells)
                        .map(|_| {
                            hourcell_storage::shard::place(&voters, &mut load, self.replicas, &[])
                        })
                        .collect();
                    (w, cells)
                })
                .collect();
            self.propose(&Command::CreatePartitions { weeks })?;
        }
        if weeks.iter().any(|w| sh.week_slots(*w).is_empty()) {
            self.sync_shards()?;
        }
        Ok(())
    }

    /// Brings the shards this node holds in line with its replica of the
    /// shard map: starts the raft groups of shards placed here (as voters
    /// if this node founded the shard, else empty, to be added and sent a
    /// snapshot), lets go of shards moved away once their new replicas
    /// vote, and removes the groups and files of dropped weeks. Cheap when
    /// nothing changed.
    pub fn sync_shards(&self) -> Result<(), NodeError> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Ok(());
        };
        let _one = self.shard_sync.lock();
        let map = self.store.shard_map();
        let me = r.handle.id();
        let moving = sh.all().iter().any(|(g, _)| {
            sh.shard_of(*g)
                .is_some_and(|id| !self.shard_replicas(id).1.contains(&me))
        });
        if *sh.synced_version.read() == map.version
            && sh.weeks().len() == map.weeks.len()
            && !moving
        {
            return Ok(());
        }
        let timeout = std::time::Duration::from_secs(10);
        let fail = |e: String| NodeError::Unavailable(e);
        for week in map.weeks.keys() {
            if sh.week_slots(*week).is_empty() {
                sh.open_week(*week).map_err(|e| fail(e.to_string()))?;
            }
        }
        for (id, replicas) in placed_shards(&map, &self.founding) {
            let Some((g, store)) = sh.slot(id) else {
                continue;
            };
            let hosted = sh.hosts(g);
            if replicas.contains(&me) && !hosted {
                let start = start_voters(&map, id, &replicas, me, &self.founding, self.joining);
                r.handle
                    .add_group(
                        g,
                        start,
                        Arc::new(crate::replication::StoreMachine {
                            store,
                            apply_latency: self.metrics.apply_latency.clone(),
                        }),
                        timeout,
                    )
                    .map_err(fail)?;
                sh.host(g);
                let mut gs = r.groups.write();
                if !gs.contains(&g) {
                    gs.push(g);
                }
                tracing::info!(group = g, shard = %sh.describe(g), "holding a replica of a shard");
            } else if !replicas.contains(&me) && hosted {
                // Moved away: let go once this replica is out of the group
                // or every replica the map names votes (the leader then
                // removes this one).
                let done = r.handle.status(g).is_none_or(|s| {
                    (!s.voters.contains(&me) && !s.learners.contains(&me))
                        || replicas.iter().all(|n| s.voters.contains(n))
                });
                if done {
                    r.handle.remove_group(g, timeout).map_err(fail)?;
                    r.groups.write().retain(|x| *x != g);
                    sh.release(id).map_err(|e| fail(e.to_string()))?;
                    tracing::info!(group = g, "let go of a shard moved to other nodes");
                }
            }
        }
        for week in sh.weeks() {
            if map.weeks.contains_key(&week) {
                continue;
            }
            for (g, _) in sh.week_slots(week) {
                if sh.hosts(g) {
                    r.handle.remove_group(g, timeout).map_err(fail)?;
                }
                r.groups.write().retain(|x| *x != g);
            }
            sh.drop_week(week).map_err(|e| fail(e.to_string()))?;
            tracing::info!(week, "dropped the cell shards of a week past retention");
        }
        *sh.synced_version.write() = map.version;
        Ok(())
    }

    /// Cluster chores of a sharded cluster, run every half second: follow
    /// the shard map; on the metadata group's leader, create the current
    /// and next week ahead of ingest, record the person shards' placement
    /// and move replicas off nodes that left the cluster; on each data
    /// group's leader, make the group's members what the map says.
    pub fn shard_chores(&self, now: i64) -> Result<(), NodeError> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Ok(());
        };
        self.sync_shards()?;
        if self.leads() {
            let week = hourcell_storage::shard::week_of_hour(now.div_euclid(3600));
            let retained = hourcell_storage::shard::week_of_hour(self.retained_from(now));
            let ahead: Vec<i64> = [week, week + 1]
                .into_iter()
                .filter(|w| *w >= retained && !self.store.shard_map_has_week(*w))
                .collect();
            if !ahead.is_empty() {
                self.ensure_weeks(&ahead)?;
            }
            self.place_chores()?;
        }
        let peers: std::collections::HashMap<u64, String> = r.known_peers().into_iter().collect();
        let me = r.handle.id();
        let led: Vec<(u64, crate::replication::GroupStatus)> = sh
            .all()
            .into_iter()
            .filter_map(|(g, _)| r.handle.status(g).map(|s| (g, s)))
            .filter(|(_, s)| s.is_leader)
            .collect();
        if led.is_empty() {
            return Ok(());
        }
        // A leader acts on the current shard map only: a linearizable read
        // of the metadata group first. A node that keeps failing it (one
        // removed from the cluster, which no longer hears the metadata
        // group and holds an old map) hands its leaderships over, so that
        // members with the current map finish the moves.
        if r.handle
            .read_index(r.group, std::time::Duration::from_secs(1))
            .is_err()
        {
            let fails = {
                let mut f = self.map_read_failures.lock();
                *f += 1;
                *f
            };
            if fails >= 4 {
                for (g, s) in &led {
                    if let Some(to) = s.voters.iter().copied().find(|v| *v != me) {
                        r.handle.transfer_leader(*g, to);
                    }
                }
                tracing::warn!(
                    groups = led.len(),
                    "cannot read the current shard map: handing shard leaderships over"
                );
            }
            return Ok(());
        }
        *self.map_read_failures.lock() = 0;
        for (g, s) in led {
            let Some(id) = sh.shard_of(g) else {
                continue;
            };
            let target = self.shard_replicas(id).1;
            if target.is_empty() {
                continue;
            }
            use raft::eraftpb::{ConfChange, ConfChangeType};
            let t = std::time::Duration::from_secs(5);
            for id in &target {
                if !s.voters.contains(id) && !s.learners.contains(id) {
                    let mut cc = ConfChange::default();
                    cc.set_change_type(ConfChangeType::AddLearnerNode);
                    cc.node_id = *id;
                    cc.context = peers
                        .get(id)
                        .cloned()
                        .unwrap_or_default()
                        .into_bytes()
                        .into();
                    let _ = r.handle.change_membership(g, cc, t);
                    tracing::info!(group = g, node = id, "adding a replica to a shard");
                }
            }
            // Members the map no longer names leave once every replica it
            // names votes, so the group never shrinks below its size.
            if !target.iter().all(|n| s.voters.contains(n)) {
                continue;
            }
            for id in s.voters.iter().chain(&s.learners) {
                if target.contains(id) {
                    continue;
                }
                if *id == me {
                    // Hand the lead to a replica that stays; the new
                    // leader removes this one.
                    r.handle.transfer_leader(g, target[0]);
                    break;
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
                let _ = r.handle.change_membership(g, cc, t);
                tracing::info!(group = g, node = id, "removing a replica moved elsewhere");
            }
        }
        Ok(())
    }

    /// The metadata leader's part of placement: records the person shards'
    /// placement once, and gives every shard with a replica on a node that
    /// is no longer a member (or with fewer replicas than wanted) a
    /// replacement on the least loaded member.
    fn place_chores(&self) -> Result<(), NodeError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        let Some((voters, learners)) = r.meta_members() else {
            return Ok(());
        };
        let map = self.store.shard_map();
        let mut load = map.load();
        let mut moves = Vec::new();
        for (id, replicas) in placed_shards(&map, &self.founding) {
            let mut keep: Vec<u64> = replicas
                .iter()
                .copied()
                .filter(|n| voters.contains(n) || learners.contains(n))
                .collect();
            let recorded =
                !(id.part == hourcell_storage::ShardPart::Persons && map.persons.is_empty());
            if keep.len() < self.replicas.min(voters.len()) {
                let more = hourcell_storage::shard::place(
                    &voters,
                    &mut load,
                    self.replicas - keep.len(),
                    &keep,
                );
                keep.extend(more);
            }
            if keep != replicas || !recorded {
                moves.push((id, keep));
            }
        }
        if !moves.is_empty() {
            tracing::info!(shards = moves.len(), "placing shard replicas");
            self.propose(&Command::PlaceShards { shards: moves })?;
            return Ok(());
        }
        self.rebalance(&voters)
    }

    /// Evens out replicas per node (a node just added holds none): at most
    /// one move every few seconds, and only while no shard is mid-move, so
    /// a group never has more than one replica catching up.
    fn rebalance(&self, voters: &[u64]) -> Result<(), NodeError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        {
            let mut last = self.last_rebalance.lock();
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3)) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let map = self.store.shard_map();
        let shards = placed_shards(&map, &self.founding);
        let Some((id, moved)) = hourcell_storage::shard::rebalance_move(&shards, voters) else {
            return Ok(());
        };
        // Every shard settled: its leader (reachable) sees exactly the
        // placed replicas as voters and no learners.
        let views = router.members_everywhere();
        let settled = shards.iter().all(|(sid, replicas)| {
            let g = crate::shards::group_of(*sid);
            let mut want = replicas.clone();
            want.sort_unstable();
            views.iter().any(|(n, gs)| {
                gs.iter().any(|s| {
                    let mut v = s.voters.clone();
                    v.sort_unstable();
                    s.group == g && s.leader == *n && v == want && s.learners.is_empty()
                })
            })
        });
        if !settled {
            return Ok(());
        }
        tracing::info!(
            group = crate::shards::group_of(id),
            to = ?moved,
            "moving a shard replica to even out the nodes"
        );
        self.propose(&Command::PlaceShards {
            shards: vec![(id, moved)],
        })?;
        Ok(())
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
        self.metrics.apply_latency.observe(t0.elapsed());
        r.map_err(|e| {
            if e.is_fatal() {
                tracing::error!(error = %e, "storage failure: node stops serving");
                self.failed.store(true, Ordering::Relaxed);
            }
            NodeError::Storage(e)
        })
    }

    fn check_batch(&self, n: usize, what: &str) -> Result<(), NodeError> {
        if n > self.max_batch {
            return Err(NodeError::Invalid(format!(
                "{what}: {n} items in one request, at most {} allowed",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// Validates, places and durably applies events. Bad events are
    /// rejected one by one; their good neighbours are applied.
    pub fn ingest(&self, raw: &[RawEvent]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.ingest_owned(raw.to_vec())
    }

    /// [`Node::ingest`] of events the caller gives away: their strings move
    /// into the command instead of being copied.
    pub fn ingest_owned(&self, raw: Vec<RawEvent>) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "events")?;
        // Validation reads the address table: on a replica it must see
        // every address acknowledged anywhere before this request.
        self.read_barrier()?;
        let now = self.now();
        let (ok, bad) = validate::place_events_owned(
            self.store.as_ref(),
            raw,
            now,
            Some(self.retained_from(now)),
        );
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.ingest_grouped(ok)?;
        }
        self.events_accepted.fetch_add(n, Ordering::Relaxed);
        Ok((n, bad))
    }

    /// Proposes `events`, possibly in one command with other requests'
    /// events (see [`IngestGroup`]); returns once they are durable.
    fn ingest_grouped(&self, events: Vec<hourcell_storage::SliceEvent>) -> Result<(), NodeError> {
        let g = &self.ingest_group;
        let mut st = g.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back((ticket, events));
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r;
            }
            if st.applying {
                st = g.applied.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Take the queue in order, at least one batch, at most
            // max_batch events in all.
            st.applying = true;
            let mut tickets = Vec::new();
            let mut all: Vec<hourcell_storage::SliceEvent> = Vec::new();
            while let Some((_, ev)) = st.queue.front() {
                if !all.is_empty() && all.len() + ev.len() > self.max_batch {
                    break;
                }
                let (t, ev) = st.queue.pop_front().expect("front exists");
                tickets.push(t);
                if all.is_empty() {
                    all = ev;
                } else {
                    all.extend(ev);
                }
            }
            drop(st);
            // Should the proposal panic, the group's requests get an error
            // and the next one in line proposes.
            let mut guard = GroupGuard {
                group: g,
                tickets: Some(tickets.clone()),
            };
            let r = match &self.shards {
                Some(sh) => self.ingest_sharded(sh, all),
                None => self.propose(&Command::Ingest(all)).map(|_| ()),
            };
            guard.tickets = None;
            st = g.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                let copy = match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(shared_error(e)),
                };
                st.done.insert(t, copy);
            }
            if let Err(e) = r {
                // If our own events were in this group, hand back the
                // original error rather than the copy.
                if st.done.remove(&ticket).is_some() {
                    g.applied.notify_all();
                    return Err(e);
                }
            }
            g.applied.notify_all();
        }
    }

    pub fn put_addresses(&self, raw: &[RawAddress]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "addresses")?;
        self.read_barrier()?;
        let (ok, bad) = validate::check_addresses(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutAddresses(ok))?;
        }
        Ok((n, bad))
    }

    pub fn put_registrations(
        &self,
        raw: &[RawRegistration],
    ) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "registrations")?;
        self.read_barrier()?;
        let (ok, bad) = validate::check_registrations(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutRegistrations(ok))?;
        }
        Ok((n, bad))
    }

    // ------------------------------------------------- security and audit

    pub fn auth(&self) -> &crate::auth::Auth {
        &self.auth
    }

    /// This node's TLS files, when it serves TLS.
    pub fn tls(&self) -> Option<&crate::tls::TlsPaths> {
        self.tls.as_ref()
    }

    /// The first hour the retention limit keeps at `now`.
    pub fn retained_from(&self, now: i64) -> i64 {
        now.div_euclid(3600) - i64::from(self.retention_days) * 24
    }

    /// Commits audit records through the log (on every replica) and
    /// returns once they are applied here. A person-level answer is only
    /// sent after this succeeds.
    pub fn audit(&self, entries: Vec<hourcell_storage::AuditEntry>) -> Result<(), NodeError> {
        self.propose(&Command::Audit(entries)).map(|_| ())
    }

    /// Applies the retention limit as of `now`: every replica removes the
    /// hours before the cut-off this command carries, and the removal is
    /// audited. Returns the cut-off hour and the person-days removed.
    pub fn expire(&self, now: i64, principal: &str) -> Result<(i64, u64), NodeError> {
        let cutoff = self.retained_from(now);
        let at = hourcell_query::time::format_time(cutoff * 3600);
        let cmd = Command::Expire {
            cutoff_hour: cutoff,
            audit: hourcell_storage::AuditEntry {
                time: now,
                principal: principal.to_string(),
                roles: String::new(),
                rpc: "Retention".into(),
                parameters: format!(
                    "{{\"cutoff\":\"{at}\",\"retention_days\":{}}}",
                    self.retention_days
                ),
                purpose: "retention limit".into(),
                case_ref: String::new(),
                persons_returned: 0,
                outcome: format!("retention: removed every hour before {at}"),
            },
        };
        if self.shards.is_none() {
            let out = self.propose(&cmd)?;
            return Ok((cutoff, out.applied));
        }
        // Sharded: weeks wholly before the cut-off are dropped from the
        // shard map (every node then deletes their shards); the rest, and
        // the person shards, remove their old hours; then, if anything was
        // removed, the metadata group's audit log records it.
        let map = self.store.shard_map();
        let old: Vec<i64> = map
            .weeks
            .keys()
            .copied()
            .filter(|w| hourcell_storage::shard::week_start_hour(w + 1) <= cutoff)
            .collect();
        let dropped = !old.is_empty();
        if dropped {
            self.propose(&Command::DropPartitions { weeks: old.clone() })?;
            self.sync_shards()?;
        }
        // Every remaining shard, wherever it is held.
        let outs = self.propose_parts(
            placed_shards(&map, &self.founding)
                .into_iter()
                .filter(|(id, _)| {
                    id.part == hourcell_storage::ShardPart::Persons || !old.contains(&id.week)
                })
                .map(|(id, _)| (id, cmd.clone()))
                .collect(),
        )?;
        if dropped || outs.iter().any(|o| o.expired) {
            let Command::Expire { audit, .. } = cmd else {
                unreachable!()
            };
            self.audit(vec![audit])?;
        }
        Ok((cutoff, outs.iter().map(|o| o.applied).sum()))
    }

    // ------------------------------------------------------------- tasks

    pub fn rules_hourly(&self) -> bool {
        self.rules_hourly
    }

    /// Makes the next local read linearizable: on a replicated node, waits
    /// until this replica has applied everything committed before the read
    /// (ReadIndex through the leader, retried across leader changes); on a
    /// single node, nothing to wait for.
    pub fn read_barrier(&self) -> Result<(), NodeError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        r.retry_dropped(|left| r.handle.read_index(r.group, left))
            .map_err(|e| {
                NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
            })?;
        self.check_restoring()
    }

    /// A read barrier on every group (the data shards as well as the
    /// metadata group), for queries.
    pub fn read_barrier_all(&self) -> Result<(), NodeError> {
        crate::shards::ReadGate::end();
        let Some(r) = &self.replication else {
            return Ok(());
        };
        if self.shards.is_none() {
            return self.read_barrier();
        }
        let unavailable = |e: crate::replication::ProposeError| {
            NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
        };
        r.read_index_all(&r.groups()).map_err(unavailable)?;
        // The metadata replica is now current: if its shard map has weeks
        // this node does not host yet, host them and wait for them too, or
        // a week created through another node would read as empty here.
        if let Some(sh) = &self.shards {
            if self.store.shard_map_version() != *sh.synced_version.read() {
                self.sync_shards()?;
                r.read_index_all(&r.groups()).map_err(unavailable)?;
            }
        }
        self.check_restoring()
    }

    fn check_restoring(&self) -> Result<(), NodeError> {
        let restoring = self.store.is_restoring()
            || self
                .shards
                .as_ref()
                .is_some_and(|sh| sh.all().iter().any(|(_, s)| s.is_restoring()));
        if restoring {
            return Err(NodeError::Unavailable(
                "this replica is installing a snapshot; retry, or ask another node".into(),
            ));
        }
        Ok(())
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// A read barrier that may be relaxed: with `max_staleness_ms`, a
    /// follower that heard from the leader within that bound and has
    /// applied everything it knows to be committed answers from its own
    /// state. Returns how stale the answer may be (0 = linearizable).
    ///
    /// `window` (unix seconds, from..to) is what the query will read, if
    /// known: a sharded node then takes the ReadIndex of the weeks it
    /// spans in its first round.
    pub fn read_barrier_bounded(
        &self,
        max_staleness_ms: Option<u32>,
        window: Option<(i64, i64)>,
    ) -> Result<u64, NodeError> {
        crate::shards::ReadGate::end();
        if let (Some(max), Some(r)) = (max_staleness_ms, &self.replication) {
            // Every group must be fresh enough; the answer is as stale as
            // the stalest of them.
            let mut worst = Some(0u64);
            for g in r.groups() {
                worst = match (worst, r.handle.status(g)) {
                    (Some(w), Some(s)) => match s.leader_contact_ms {
                        Some(ms)
                            if !s.is_leader && s.applied >= s.commit && ms <= u64::from(max) =>
                        {
                            Some(w.max(ms))
                        }
                        _ => None,
                    },
                    _ => None,
                };
            }
            if let Some(ms) = worst {
                self.check_restoring()?;
                crate::shards::ReadGate::begin_stale();
                return Ok(ms);
            }
        }
        self.read_barrier_query(window)?;
        Ok(0)
    }

    /// The barrier of a linearizable query: on a sharded node, a ReadIndex
    /// on the metadata group now and on each data group when the query
    /// first reads it (see [`crate::shards::ReadGate`]); otherwise
    /// [`Node::read_barrier_all`].
    pub fn read_barrier_query(&self, window: Option<(i64, i64)>) -> Result<(), NodeError> {
        if self.shards.is_none() || self.replication.is_none() {
            return self.read_barrier_all();
        }
        let started = std::time::Instant::now();
        let (Some(sh), Some(r), Some(gate)) = (&self.shards, &self.replication, &self.gate) else {
            return self.read_barrier_all();
        };
        // One round for the metadata group and, of the person shards, this
        // week's cell shards and those of the weeks the query's window
        // spans (what it will read), the ones held here with a leader;
        // other shards get theirs when first read, so a query never waits
        // for a shard it does not read (a week just created may still be
        // electing).
        use hourcell_storage::shard::week_of_hour;
        let this_week = week_of_hour(self.now().div_euclid(3600));
        let mut weeks = vec![this_week];
        if let Some((from, to)) = window {
            let (a, b) = (
                week_of_hour(from.div_euclid(3600)),
                week_of_hour((to - 1).div_euclid(3600)),
            );
            // A window of more than a year reads its weeks as it goes.
            if a <= b && b - a < 53 {
                weeks.extend((a..=b).filter(|w| *w != this_week));
            }
        }
        let mut first: Vec<u64> = vec![r.group];
        first.extend(
            sh.persons()
                .iter()
                .map(|(g, _)| *g)
                .chain(weeks.iter().flat_map(|w| sh.week(*w)).map(|(g, _)| g))
                .filter(|g| r.handle.status(*g).is_some_and(|s| s.leader != 0)),
        );
        r.read_index_all(&first).map_err(|e| {
            NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
        })?;
        gate.record(&first[1..], started);
        self.check_restoring()?;
        if self.store.shard_map_version() != *sh.synced_version.read() {
            self.sync_shards()?;
        }
        crate::shards::ReadGate::begin(started);
        Ok(())
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

    /// Follows the task change log: the receiver sees the latest sequence
    /// number whenever tasks change.
    pub fn watch_tasks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.task_seq.subscribe()
    }

    fn tasks_changed(&self) {
        self.task_seq.send_replace(self.store.last_task_change());
    }

    /// Runs the rules as of `at` (default: now) and stores the tasks they
    /// call for. Safe to run twice: a subject with an open task (or a recent
    /// rejection) is not raised again.
    pub fn run_tasks(&self, at: Option<i64>) -> Result<RunSummary, NodeError> {
        let _one_at_a_time = self.rules_running.lock();
        let started = std::time::Instant::now();
        let at = at.unwrap_or_else(|| self.now());
        self.read_barrier_all()?;
        let ev = self.query.evaluate_rules(&self.rules, at)?;
        let evaluation = format!("rules@{}", hourcell_query::time::format_time(at));
        let mut created = 0;
        for chunk in ev.tasks.chunks(TASKS_PER_COMMAND) {
            let out = self.propose(&Command::RaiseTasks {
                at,
                evaluation: evaluation.clone(),
                suppress_secs: self.rules.suppress_days * 86_400,
                tasks: chunk.to_vec(),
            })?;
            created += out.task_ids.len() as u64;
            self.tasks_changed();
        }
        let summary = RunSummary {
            at,
            evaluation,
            proposed: ev.tasks.len() as u64,
            created,
            persons_scored: ev.persons_scored,
            departures_checked: ev.departures_checked,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            at = summary.at,
            proposed = summary.proposed,
            created = summary.created,
            seconds = summary.seconds,
            "rules evaluated"
        );
        Ok(summary)
    }

    /// Moves a task along its lifecycle; an illegal transition is
    /// `Invalid` with the reason.
    pub fn update_task(
        &self,
        id: u64,
        state: &str,
        outcome: &str,
        note: &str,
        by: &str,
    ) -> Result<TaskRecord, NodeError> {
        let state = TaskState::parse(state).ok_or_else(|| {
            NodeError::Invalid(format!(
                "invalid state {state:?}: expected in_progress or resolved"
            ))
        })?;
        let outcome = match outcome {
            "" => None,
            o => Some(Outcome::parse(o).ok_or_else(|| {
                NodeError::Invalid(format!(
                    "invalid outcome {o:?}: expected confirmed, rejected or not_found"
                ))
            })?),
        };
        // The shape of the request is checked here (bad input); whether the
        // task's current state allows it is decided in apply (refused).
        match (state, outcome) {
            (TaskState::Open, _) => {
                return Err(NodeError::Invalid(
                    "invalid state \"open\": a task cannot be reopened; expected in_progress or resolved".into(),
                ))
            }
            (TaskState::Resolved, None) => {
                return Err(NodeError::Invalid(
                    "invalid outcome \"\": resolving a task needs an outcome (confirmed, rejected or not_found)".into(),
                ))
            }
            (TaskState::InProgress, Some(o)) => {
                return Err(NodeError::Invalid(format!(
                    "invalid outcome {:?}: only a resolution carries an outcome",
                    o.as_str()
                )))
            }
            _ => {}
        }
        if by.trim().is_empty() {
            return Err(NodeError::Invalid(
                "invalid by \"\": say who made the change".into(),
            ));
        }
        if note.len() > 4096 {
            return Err(NodeError::Invalid(format!(
                "invalid note: {} bytes, at most 4096",
                note.len()
            )));
        }
        let out = self.propose(&Command::UpdateTask(TaskUpdate {
            id,
            state,
            outcome,
            note: note.to_string(),
            by: by.to_string(),
            at: self.now(),
        }))?;
        if let Some(why) = out.refused {
            return Err(NodeError::Refused(why));
        }
        self.tasks_changed();
        self.store
            .task(id)?
            .ok_or_else(|| NodeError::Refused(format!("no task with id {id}")))
    }
}
