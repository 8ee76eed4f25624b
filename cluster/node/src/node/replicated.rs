//! The raft side of a replicated node: its groups, membership changes,
//! and starting the raft loop.

use super::*;

/// The raft side of a replicated node.
pub struct Replication {
    pub handle: crate::replication::RaftHandle,
    /// Where the gRPC Raft service delivers peers' messages.
    pub inbox: crate::replication::Inbox,
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
    pub raft_engine: Arc<crate::replication::KvLog<RocksEngine>>,
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
        use hourcell_raft::{ConfChange, ConfChangeType};
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
        use hourcell_raft::{ConfChange, ConfChangeType};
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
    fn change(&self, g: u64, cc: hourcell_raft::ConfChange) -> Result<(), NodeError> {
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
    pub(crate) fn retry_dropped<T>(
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

/// Where the raft engine records the shard layout the cluster was created
/// with (cell shards and person shards, u32 big-endian each; 0 and 0 =
/// unsharded); a later start with another layout is refused.
pub(super) const LAYOUT_KEY: &[u8] = &[0x06];

/// Seeds raft group `group` in the empty raft log of `cfg`'s data
/// directory at `index` with `voters` (a restore; see `backup.rs`).
pub(super) fn seed_raft_log(
    cfg: &NodeConfig,
    group: u64,
    index: u64,
    voters: &[u64],
) -> Result<(), super::backup::RestoreError> {
    use super::backup::RestoreError;
    let raft_dir = cfg.data_dir.join("raft");
    let engine = RocksEngine::open(&raft_dir, &RocksConfig::default()).map_err(|source| {
        OpenError::Engine {
            path: raft_dir.clone(),
            source,
        }
    })?;
    let log = Arc::new(crate::replication::KvLog(Arc::new(engine)));
    crate::replication::log_store::RaftLogStore::seed(log, group, index, voters)
        .map_err(|e| RestoreError::Raft { why: e.to_string() })
}

pub(super) fn check_layout(
    engine: &RocksEngine,
    want: Option<hourcell_storage::shard::Layout>,
) -> Result<(), OpenError> {
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
    match engine.get(LAYOUT_KEY)? {
        Some(v) if v == enc => {}
        Some(v) if v.len() == 8 => {
            let hc = u32::from_be_bytes(v[0..4].try_into().unwrap());
            let hp = u32::from_be_bytes(v[4..8].try_into().unwrap());
            return Err(OpenError::LayoutChanged {
                stored: show(hc, hp),
                configured: show(c, p),
            });
        }
        Some(_) => {
            return Err(OpenError::Damaged {
                what: "shard layout",
            })
        }
        None => {
            let mut b = hourcell_storage::WriteBatch::default();
            b.put(LAYOUT_KEY.to_vec(), enc);
            engine.write(b, true)?;
        }
    }
    Ok(())
}

/// This node's incarnation: a random id made when its raft directory was
/// created. A node whose data directory was lost comes back with another.
pub(super) const INCARNATION_KEY: &[u8] = &[0x07];
/// The incarnation each other node introduced itself with (prefix, then
/// the node id, u64 big-endian).
const KNOWN_INCARNATION: u8 = 0x08;

/// This node's incarnation, made and recorded now if the raft engine is
/// new.
fn incarnation(engine: &RocksEngine) -> Result<u64, OpenError> {
    use hourcell_storage::KvEngine;
    match engine.get(INCARNATION_KEY)? {
        Some(v) => Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(
            |_| OpenError::Damaged {
                what: "incarnation",
            },
        )?)),
        None => {
            use rand::RngCore;
            let inc = rand::rngs::OsRng.next_u64() | 1;
            let mut b = hourcell_storage::WriteBatch::default();
            b.put(INCARNATION_KEY.to_vec(), inc.to_be_bytes().to_vec());
            engine.write(b, true)?;
            Ok(inc)
        }
    }
}

impl Replication {
    /// This node's incarnation.
    pub fn incarnation(&self) -> Result<u64, NodeError> {
        use hourcell_storage::KvEngine;
        let v = self.raft_engine.0.get(INCARNATION_KEY)?;
        v.and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .ok_or_else(|| NodeError::Unavailable("this node has no incarnation yet".into()))
    }

    /// Another node introduces itself as `incarnation`. The first one
    /// seen for a node is kept (a `joining` node replaces it). Returns
    /// the incarnation known before if it differs: that node lost its
    /// data and must rejoin.
    pub fn meet(
        &self,
        node: u64,
        incarnation: u64,
        joining: bool,
    ) -> Result<Option<u64>, NodeError> {
        use hourcell_storage::KvEngine;
        let mut key = vec![KNOWN_INCARNATION];
        key.extend_from_slice(&node.to_be_bytes());
        let known = self
            .raft_engine
            .0
            .get(&key)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes));
        match known {
            Some(k) if k == incarnation => Ok(None),
            Some(k) if !joining => Ok(Some(k)),
            _ => {
                let mut b = hourcell_storage::WriteBatch::default();
                b.put(key, incarnation.to_be_bytes().to_vec());
                self.raft_engine.0.write(b, true)?;
                Ok(None)
            }
        }
    }
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
pub(super) fn start_replication(
    cfg: &NodeConfig,
    c: &crate::config::ClusterConfig,
    groups: Vec<(u64, Arc<dyn StateMachine<ApplyOutcome>>, Vec<u64>)>,
    network: &dyn Network,
) -> Result<Replication, OpenError> {
    use crate::replication::{RaftNode, RaftTiming};
    let raft_dir = cfg.data_dir.join("raft");
    let engine = RocksEngine::open(
        &raft_dir,
        &RocksConfig {
            block_cache_bytes: 16 << 20,
            write_buffer_bytes: 16 << 20,
            ..RocksConfig::default()
        },
    )
    .map_err(|source| OpenError::Engine {
        path: raft_dir.clone(),
        source,
    })?;
    check_layout(&engine, c.layout()?)?;
    let raw = Arc::new(engine);
    let engine = Arc::new(crate::replication::KvLog(raw.clone()));
    let mut peers: std::collections::HashMap<u64, String> =
        c.peers.iter().map(|p| (p.id, p.addr.clone())).collect();
    // Nodes added by membership changes since the cluster started.
    peers.extend(
        crate::replication::log_store::stored_peer_addresses(engine.as_ref()).map_err(|_| {
            OpenError::Damaged {
                what: "list of peer addresses",
            }
        })?,
    );
    // A node whose data directory was lost must not vote as if it still
    // had its log: the peers that knew its earlier incarnation say so,
    // and it refuses to start (a joining node replaces its membership and
    // catches up from a snapshot instead).
    let me = incarnation(&raw)?;
    if let Introduction::Conflict { peer, known } = network.introduce(c.node_id, me, c.join, &peers)
    {
        return Err(OpenError::Wiped {
            node: c.node_id,
            peer,
            incarnation: me,
            known,
        });
    }
    let transport = network.raft_transport(c.node_id, &peers);
    let timing = RaftTiming {
        tick: std::time::Duration::from_millis(c.tick_ms),
        read_lease: c.read_lease,
        ..RaftTiming::default()
    };
    // (compact_after: the default 1,000 entries of up to 100,000 events.)
    let (mut raft, handle) = RaftNode::new(c.node_id, timing, transport);
    let ids: Vec<u64> = groups.iter().map(|g| g.0).collect();
    for (g, machine, voters) in groups {
        raft.add_group(g, engine.clone(), &voters, machine)
            .map_err(|e| OpenError::Raft {
                group: g,
                source: hourcell_raft::RaftError::Group {
                    group: g,
                    why: e.to_string(),
                },
            })?;
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
        sharded: c.layout()?.is_some(),
        peers: c.peers.iter().map(|p| (p.id, p.addr.clone())).collect(),
        raft_engine: engine,
    };
    Ok(r)
}
