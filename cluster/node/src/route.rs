//! Routing in a sharded cluster whose shards live on some nodes only (see
//! docs/ARCHITECTURE.md, "Placement").
//!
//! The shard map (in the metadata group, on every node) says which nodes
//! hold a replica of each shard. A node that holds none of a shard sends
//! its part of a write, or a read of it, to one that does, over the
//! `Shard` gRPC service, naming the map version it routed by. The receiver
//! first catches up with that version if it is behind; if it still holds no
//! replica it answers FAILED_PRECONDITION, and the sender refreshes its own
//! map (a linearizable read of the metadata group) and routes again. A
//! stale router is told, never silently wrong.
//!
//! Reads keep their consistency across the hop: the first read of a shard
//! in a linearizable query asks the serving node to take a ReadIndex on
//! the shard first; later reads of the same shard in that query go to the
//! same node, whose applied state only moves forward.
//!
//! The reads of a query's fan-out ([`RoutedBatch`]) travel together: the
//! shards one node serves in one request ([`Router::read_many`]), each
//! with its own barrier flag, the nodes at the same time.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hourcell_query::{
    BatchReads, DayKeys, HourStep, QueryError, SliceAnswer, SliceRead, SliceReader,
};
use hourcell_storage::shard::ShardId;
use hourcell_storage::{ApplyOutcome, DaySet, PlaceEntry, PlaceIds};
use parking_lot::Mutex;
use roaring::RoaringBitmap;
use serde::Deserialize;

use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::shard_read::{
    bitmap_from, decode, decode_answer, from_wire, ReadOp, WireHours, WireSlices,
};
use crate::shards::{ReadGate, Shards};
use crate::types::{ShardMembers, Store};

/// Why a call to another node failed, by what the router does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The node holds no replica at the map version named: refresh the
    /// map and route again.
    #[error("{0}")]
    StaleMap(String),
    /// The node refused the request itself: another replica would too.
    #[error("{0}")]
    Refused(String),
    /// Unreachable, timed out or failed there: try another replica.
    #[error("{0}")]
    Failed(String),
}

/// Reads of shards on another node, the same op on each: one request.
#[derive(Debug, Clone)]
pub struct ShardRead {
    pub map_version: u64,
    /// The shards to read, in order; one reply each.
    pub parts: Vec<ReadPart>,
    /// A bincode [`ReadOp`].
    pub op: Vec<u8>,
}

/// One shard of a [`ShardRead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPart {
    pub group: u64,
    /// Take a ReadIndex on the shard before reading.
    pub barrier: bool,
}

/// Commands for shards on another node: (group, encoded command).
#[derive(Debug, Clone)]
pub struct ShardProposal {
    pub map_version: u64,
    pub commands: Vec<(u64, Vec<u8>)>,
}

/// Calls to other nodes' shard service. The server crate implements it
/// over gRPC; the router runs the futures on its runtime.
pub trait PeerClient: Send + Sync + 'static {
    /// Runs `req` on node `node` (at `addr`) and returns its reply bytes,
    /// one per part, in order.
    fn read(
        &self,
        node: u64,
        addr: String,
        req: ShardRead,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, PeerError>>;

    /// Proposes `req`'s commands there; one outcome per command, in order,
    /// once each is committed and applied.
    fn propose(
        &self,
        node: u64,
        addr: String,
        req: ShardProposal,
    ) -> BoxFuture<'static, Result<Vec<ApplyOutcome>, PeerError>>;

    /// The node's id and its data groups as it sees them; `None` when it
    /// cannot be reached.
    fn members(
        &self,
        node: u64,
        addr: String,
    ) -> BoxFuture<'static, Option<(u64, Vec<ShardMembers>)>>;

    /// Drops what is cached for `node` (a connection) after a failure.
    fn forget(&self, node: u64);
}

/// What the router needs from its node: where shards are placed, how to
/// reach nodes, a fresh map when its own is stale. The node implements it;
/// the router holds it weakly (the node owns the router).
pub trait Placement: Send + Sync {
    /// The map version and the nodes that hold a replica of shard `id`.
    fn shard_replicas(&self, id: ShardId) -> (u64, Vec<u64>);
    /// Every node's gRPC address.
    fn peers(&self) -> HashMap<u64, String>;
    /// Catches up with the newest shard map (a linearizable read).
    fn refresh_map(&self) -> Result<(), NodeError>;
    /// Starts the shard groups the map places here and not yet started.
    fn sync_shards(&self) -> Result<(), NodeError>;
    /// This node's data groups and their members as it sees them.
    fn shard_members(&self) -> Vec<ShardMembers>;
    fn metrics(&self) -> &Metrics;
}

/// Sends shard reads and writes to the nodes that hold the shards.
pub struct Router {
    me: u64,
    /// The runtime routed requests run on (none outside one: routing then
    /// fails as unavailable).
    rt: Option<tokio::runtime::Handle>,
    peers: Arc<dyn PeerClient>,
    node: OnceLock<Weak<dyn Placement>>,
    /// Group → the node that last served it, tried first.
    preferred: Mutex<HashMap<u64, u64>>,
    timeout: Duration,
}

/// Hours of a person fetched per round when walking back.
const REV_PERSON_HOURS: u32 = 256;

impl Router {
    pub fn new(me: u64, peers: Arc<dyn PeerClient>, timeout: Duration) -> Arc<Router> {
        Arc::new(Router {
            me,
            rt: tokio::runtime::Handle::try_current().ok(),
            peers,
            node: OnceLock::new(),
            preferred: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// Ties the router to its node (once the node exists).
    pub fn attach(&self, node: Weak<dyn Placement>) {
        let _ = self.node.set(node);
    }

    fn node(&self) -> Result<Arc<dyn Placement>, NodeError> {
        self.node
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| NodeError::Unavailable("the node is shutting down".into()))
    }

    /// Runs `f` on the runtime and waits for it from this (blocking)
    /// thread.
    fn run<F, T>(&self, f: F) -> Result<T, PeerError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(PeerError::Failed(
                "no async runtime to route requests on".into(),
            ));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        let wait = move || {
            rx.recv()
                .map_err(|_| PeerError::Failed("routing task ended without an answer".into()))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// The nodes to try for shard `id`, the preferred one first, and the
    /// map version they come from.
    fn candidates(
        &self,
        node: &dyn Placement,
        peers: &HashMap<u64, String>,
        id: ShardId,
        group: u64,
    ) -> (u64, Vec<(u64, String)>) {
        let (version, replicas) = node.shard_replicas(id);
        let mut ids: Vec<u64> = replicas.iter().copied().filter(|n| *n != self.me).collect();
        if let Some(p) = self.preferred.lock().get(&group) {
            if let Some(i) = ids.iter().position(|x| x == p) {
                ids[..=i].rotate_right(1);
            }
        }
        let out = ids
            .into_iter()
            .filter_map(|n| peers.get(&n).map(|a| (n, a.clone())))
            .collect();
        (version, out)
    }

    /// Reads shard `id` (raft group `group`) on a node that holds it.
    pub fn read(
        self: &Arc<Self>,
        id: ShardId,
        group: u64,
        op: &ReadOp,
    ) -> Result<Vec<u8>, QueryError> {
        self.read_many(&[(id, group)], op)
            .pop()
            .unwrap_or_else(|| Err(QueryError::Unavailable("a routed read did not run".into())))
    }

    /// Reads `op` on each of `shards` ((shard, raft group), none held
    /// here) on nodes that hold them: the shards one node serves in one
    /// request, the nodes at the same time. One result per shard, in
    /// order. A shard whose node failed is read again on its next
    /// replica, and after every replica failed (or one said this node's
    /// map was stale) the map is refreshed and the shard routed again,
    /// until the deadline; a node that refuses ends that shard's read.
    /// Each part asks for a ReadIndex unless its node took one on the
    /// shard earlier in the query running on this thread.
    pub fn read_many(
        self: &Arc<Self>,
        shards: &[(ShardId, u64)],
        op: &ReadOp,
    ) -> Vec<Result<Vec<u8>, QueryError>> {
        let mut out: Vec<Option<Result<Vec<u8>, QueryError>>> =
            shards.iter().map(|_| None).collect();
        let node = match self.node() {
            Ok(n) => n,
            Err(e) => {
                return shards
                    .iter()
                    .map(|_| Err(QueryError::Unavailable(e.to_string())))
                    .collect()
            }
        };
        let op_bytes = op.encode();
        let m = node.metrics();
        m.routed_reads.inc_by(shards.len() as u64);
        let deadline = Instant::now() + self.timeout;
        let mut pending: Vec<usize> = (0..shards.len()).collect();
        // Per shard: which of its candidates to try next, and why its
        // last try failed.
        let mut tries = vec![0usize; shards.len()];
        let mut last_err = vec![String::new(); shards.len()];
        let mut refreshed = false;
        while !pending.is_empty() {
            let peers = node.peers();
            let mut by_node: HashMap<u64, (String, u64, Vec<usize>)> = HashMap::new();
            // Some shard has no node left to try before the map is read
            // again.
            let mut exhausted = false;
            for &i in &pending {
                let (id, group) = shards[i];
                let (version, cands) = self.candidates(node.as_ref(), &peers, id, group);
                if tries[i] >= cands.len() {
                    exhausted = true;
                    tries[i] = 0;
                    if cands.is_empty() {
                        last_err[i] = format!("no reachable node holds shard group {group}");
                    }
                    continue;
                }
                let (n, addr) = &cands[tries[i]];
                by_node
                    .entry(*n)
                    .or_insert_with(|| (addr.clone(), version, Vec::new()))
                    .2
                    .push(i);
            }
            let mut calls = Vec::new();
            let mut sent = Vec::new();
            for (n, (addr, version, idx)) in by_node {
                let parts: Vec<ReadPart> = idx
                    .iter()
                    .map(|&i| ReadPart {
                        group: shards[i].1,
                        barrier: ReadGate::remote_barrier_needed(shards[i].1, n),
                    })
                    .collect();
                let req = ShardRead {
                    map_version: version,
                    parts: parts.clone(),
                    op: op_bytes.clone(),
                };
                calls.push(self.peers.read(n, addr, req));
                sent.push((n, idx, parts));
            }
            m.routed_read_requests.inc_by(calls.len() as u64);
            let results: Vec<Result<Vec<Vec<u8>>, PeerError>> = if calls.is_empty() {
                Vec::new()
            } else {
                self.run(futures::future::join_all(calls))
                    .unwrap_or_else(|e| sent.iter().map(|_| Err(e.clone())).collect())
            };
            let mut stale = false;
            for ((n, idx, parts), r) in sent.into_iter().zip(results) {
                let r = r.and_then(|replies| {
                    if replies.len() == idx.len() {
                        Ok(replies)
                    } else {
                        Err(PeerError::Failed(format!(
                            "{} replies to {} reads",
                            replies.len(),
                            idx.len()
                        )))
                    }
                });
                match r {
                    Ok(replies) => {
                        let mut preferred = self.preferred.lock();
                        for ((&i, part), reply) in idx.iter().zip(&parts).zip(replies) {
                            if part.barrier {
                                ReadGate::remote_barrier_done(part.group, n);
                            }
                            preferred.insert(part.group, n);
                            out[i] = Some(Ok(reply));
                        }
                    }
                    Err(PeerError::Refused(s)) => {
                        let unknown = crate::shard_read::is_unknown_op(&s);
                        for &i in &idx {
                            let m = format!(
                                "node {n} refused a read of shard group {}: {s}",
                                shards[i].1
                            );
                            out[i] = Some(Err(if unknown {
                                QueryError::UnknownRead(m)
                            } else {
                                QueryError::Unavailable(m)
                            }));
                        }
                    }
                    Err(e) => {
                        if let PeerError::StaleMap(_) = e {
                            m.stale_map_refusals.inc();
                            stale = true;
                        } else {
                            m.routed_failures.inc();
                            self.peers.forget(n);
                        }
                        for &i in &idx {
                            last_err[i] = format!("node {n}: {e}");
                            tries[i] += 1;
                        }
                    }
                }
            }
            pending.retain(|&i| out[i].is_none());
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for &i in &pending {
                    out[i] = Some(Err(QueryError::Unavailable(format!(
                        "cannot read shard group {} on any node that holds it: {}",
                        shards[i].1, last_err[i]
                    ))));
                }
                break;
            }
            if stale || (exhausted && !refreshed) {
                if let Err(e) = node.refresh_map() {
                    for &i in &pending {
                        out[i] = Some(Err(QueryError::Unavailable(e.to_string())));
                    }
                    break;
                }
                refreshed = true;
                // Routed again by the new map, from its first choice.
                for &i in &pending {
                    tries[i] = 0;
                }
            }
            if exhausted || stale {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(QueryError::Unavailable("a routed read did not run".into()))
                })
            })
            .collect()
    }

    /// Proposes `(shard, group, encoded command)` parts on nodes that hold
    /// the shards, and returns once each is committed and applied there.
    /// Parts that fail are sent again (to another replica, after refreshing
    /// the map if a node said it was stale) until the deadline: commands
    /// are idempotent.
    pub fn propose(
        self: &Arc<Self>,
        parts: Vec<(ShardId, u64, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        let mut out = vec![ApplyOutcome::default(); parts.len()];
        if parts.is_empty() {
            return Ok(out);
        }
        let node = self.node()?;
        let m = node.metrics();
        m.routed_parts.inc_by(parts.len() as u64);
        let deadline = Instant::now() + self.timeout;
        let mut pending = parts;
        // Each pending part's place in `out`, and how many times it was
        // tried: the next try goes to the next replica.
        let mut slots: Vec<usize> = (0..pending.len()).collect();
        let mut tries: Vec<usize> = vec![0; pending.len()];
        loop {
            let mut by_node: HashMap<u64, (String, u64, Vec<usize>)> = HashMap::new();
            let mut unroutable = Vec::new();
            let peers = node.peers();
            for (i, (id, group, _)) in pending.iter().enumerate() {
                let (version, cands) = self.candidates(node.as_ref(), &peers, *id, *group);
                if cands.is_empty() {
                    unroutable.push(i);
                    continue;
                }
                let (n, addr) = &cands[tries[i] % cands.len()];
                by_node
                    .entry(*n)
                    .or_insert_with(|| (addr.clone(), version, Vec::new()))
                    .2
                    .push(i);
            }
            let mut calls = Vec::new();
            for (n, (addr, version, idx)) in by_node {
                let req = ShardProposal {
                    map_version: version,
                    commands: idx
                        .iter()
                        .map(|&i| (pending[i].1, pending[i].2.clone()))
                        .collect(),
                };
                calls.push((n, idx, self.peers.propose(n, addr, req)));
            }
            let (meta, futs): (Vec<_>, Vec<_>) =
                calls.into_iter().map(|(n, idx, f)| ((n, idx), f)).unzip();
            let results: Vec<Result<Vec<ApplyOutcome>, PeerError>> = self
                .run(futures::future::join_all(futs))
                .unwrap_or_else(|e| meta.iter().map(|_| Err(e.clone())).collect());
            let mut again: Vec<usize> = unroutable;
            let mut last_err = String::from("no node holds the shard");
            let mut stale = false;
            for ((n, idx), r) in meta.into_iter().zip(results) {
                match r {
                    Ok(reply) => {
                        for (k, &i) in idx.iter().enumerate() {
                            self.preferred.lock().insert(pending[i].1, n);
                            if let Some(o) = reply.get(k) {
                                out[slots[i]] = o.clone();
                            }
                        }
                    }
                    Err(PeerError::Refused(s)) => {
                        return Err(NodeError::Invalid(s));
                    }
                    Err(e) => {
                        if let PeerError::StaleMap(_) = e {
                            m.stale_map_refusals.inc();
                            stale = true;
                        } else {
                            m.routed_failures.inc();
                            self.peers.forget(n);
                        }
                        last_err = format!("node {n}: {e}");
                        again.extend(idx);
                    }
                }
            }
            if again.is_empty() {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "not every shard committed this batch ({last_err}); retry it: \
                     a repeated batch is harmless"
                )));
            }
            if stale {
                node.refresh_map()?;
            }
            again.sort_unstable();
            let mut next = Vec::with_capacity(again.len());
            let mut next_tries = Vec::with_capacity(again.len());
            let mut next_slots = Vec::with_capacity(again.len());
            for i in again {
                next.push(pending[i].clone());
                next_tries.push(tries[i] + 1);
                next_slots.push(slots[i]);
            }
            pending = next;
            tries = next_tries;
            slots = next_slots;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Router {
    /// Every reachable node's data groups and their members as it sees
    /// them: (node, its groups).
    pub fn members_everywhere(self: &Arc<Self>) -> Vec<(u64, Vec<ShardMembers>)> {
        let Ok(node) = self.node() else {
            return Vec::new();
        };
        let mut out = vec![(self.me, node.shard_members())];
        let peers: Vec<(u64, String)> = node
            .peers()
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .collect();
        let calls: Vec<_> = peers
            .into_iter()
            .map(|(id, addr)| self.peers.members(id, addr))
            .collect();
        let got = self
            .run(futures::future::join_all(calls))
            .unwrap_or_default();
        out.extend(got.into_iter().flatten());
        out
    }
}

/// One data shard as a query source: read here when this node holds a
/// replica (after a ReadIndex on it in a linearizable query), else on a
/// node that does.
pub struct ShardSource {
    pub id: ShardId,
    pub group: u64,
    pub shards: Arc<Shards>,
    pub gate: Arc<ReadGate>,
    pub router: Arc<Router>,
    /// The metadata store: dictionaries, addresses and the registry.
    pub meta: Arc<Store>,
}

impl ShardSource {
    /// This node's replica, made safe to read, or `None` to read remotely.
    fn local(&self) -> hourcell_query::Result<Option<Arc<crate::types::ShardStore>>> {
        // Placed here but not started yet (the map moved a moment ago):
        // start it now rather than look for it elsewhere.
        let held = self.shards.get(self.id).or_else(|| {
            let node = self.router.node().ok()?;
            if !node.shard_replicas(self.id).1.contains(&self.router.me) {
                return None;
            }
            node.sync_shards().ok()?;
            self.shards.get(self.id)
        });
        match held {
            Some((g, store)) => {
                self.gate
                    .ensure(g)
                    .map_err(|e| QueryError::Unavailable(e.to_string()))?;
                Ok(Some(store))
            }
            None => Ok(None),
        }
    }

    fn read_remote<T: for<'de> Deserialize<'de>>(&self, op: ReadOp) -> hourcell_query::Result<T> {
        decode(&self.router.read(self.id, self.group, &op)?)
    }

    /// A read of the query's fan-out, of this shard alone.
    fn read_slices(&self, read: &SliceRead) -> hourcell_query::Result<SliceAnswer> {
        decode_answer(read, &self.router.read(self.id, self.group, &read.into())?)
    }
}

/// The reads of a query's fan-out of the shards held on other nodes: the
/// shards one node serves in one request ([`Router::read_many`]). A shard
/// the map places here is left to its [`ShardSource`], which starts it and
/// reads it here.
pub struct RoutedBatch {
    pub shards: Arc<Shards>,
    pub router: Arc<Router>,
}

impl BatchReads for RoutedBatch {
    fn read_batch(
        &self,
        ids: &[ShardId],
        read: &SliceRead,
    ) -> Vec<Option<hourcell_query::Result<SliceAnswer>>> {
        let placed_here = |id: ShardId| {
            self.shards.get(id).is_some()
                || self
                    .router
                    .node()
                    .is_ok_and(|n| n.shard_replicas(id).1.contains(&self.router.me))
        };
        let routed: Vec<usize> = (0..ids.len()).filter(|&i| !placed_here(ids[i])).collect();
        let parts: Vec<(ShardId, u64)> = routed
            .iter()
            .map(|&i| (ids[i], crate::shards::group_of(ids[i])))
            .collect();
        let mut out: Vec<Option<hourcell_query::Result<SliceAnswer>>> =
            ids.iter().map(|_| None).collect();
        let replies = self.router.read_many(&parts, &ReadOp::from(read));
        for (i, reply) in routed.into_iter().zip(replies) {
            out[i] = Some(reply.and_then(|b| decode_answer(read, &b)));
        }
        out
    }
}

impl SliceReader for ShardSource {
    fn remote(&self) -> bool {
        self.shards.get(self.id).is_none()
    }

    fn shard(&self) -> Option<ShardId> {
        Some(self.id)
    }

    fn hour_slices_step(&self, before: i64, from: i64) -> hourcell_query::Result<HourStep> {
        if let Some(s) = self.local()? {
            return SliceReader::hour_slices_step(s.as_ref(), before, from);
        }
        self.read_slices(&SliceRead::HourSlicesStep { before, from })?
            .step()
    }

    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::cell_days(s.as_ref(), day, lo, hi, f);
        }
        let got = self
            .read_slices(&SliceRead::CellDays { day, lo, hi })?
            .cells()?;
        for (c, set) in got {
            f(c, &set);
        }
        Ok(())
    }

    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::cell_days_in(s.as_ref(), day, ranges, keep, f);
        }
        let got = self
            .read_slices(&SliceRead::CellDaysIn {
                day,
                ranges: ranges.to_vec(),
            })?
            .cells()?;
        for (c, set) in got {
            if keep(c) {
                f(c, &set);
            }
        }
        Ok(())
    }

    fn day_sets(
        &self,
        days: &[i64],
        keys: &DayKeys,
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(i64, u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::day_sets(s.as_ref(), days, keys, keep, f);
        }
        let cells = matches!(keys, DayKeys::Cells(_));
        let got = self
            .read_slices(&SliceRead::DaySets {
                days: days.to_vec(),
                keys: keys.clone(),
            })?
            .day_sets()?;
        for (d, k, set) in got {
            if !cells || keep(k) {
                f(d, k, &set);
            }
        }
        Ok(())
    }

    fn address_day(&self, day: i64, address_id: u32) -> hourcell_query::Result<Option<DaySet>> {
        if let Some(s) = self.local()? {
            return SliceReader::address_day(s.as_ref(), day, address_id);
        }
        self.read_slices(&SliceRead::AddressDay { day, address_id })?
            .day()
    }

    fn hour_slices(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::hour_slices(s.as_ref(), from, to, f);
        }
        let got = self
            .read_slices(&SliceRead::HourSlices { from, to })?
            .hours()?;
        for (h, b) in got {
            f(h, b);
        }
        Ok(())
    }

    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::hour_slices_rev(s.as_ref(), before, f);
        }
        // A day at a time, latest first (the step `ShardedSource` walks
        // in, so a step costs one round trip and no unused bitmaps), until
        // `f` has had enough or the shard holds nothing earlier.
        let mut upto = before;
        loop {
            let from = upto - 24;
            let (got, earlier): (WireSlices, bool) =
                self.read_remote(ReadOp::HourSlicesRev { before: upto, from })?;
            for (h, b) in got {
                if !f(h, bitmap_from(&b)?) {
                    return Ok(());
                }
            }
            if !earlier {
                return Ok(());
            }
            upto = from;
        }
    }

    fn person_hours(
        &self,
        person: u64,
        from: i64,
        to: i64,
    ) -> hourcell_query::Result<Vec<(i64, Vec<PlaceEntry>)>> {
        if let Some(s) = self.local()? {
            return SliceReader::person_hours(s.as_ref(), person, from, to);
        }
        let got: WireHours = self.read_remote(ReadOp::PersonHours { person, from, to })?;
        Ok(got.into_iter().map(|(h, e)| (h, from_wire(e))).collect())
    }

    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> hourcell_query::Result<Option<i64>> {
        if let Some(s) = self.local()? {
            return SliceReader::last_active_before(s.as_ref(), id, before, keep);
        }
        let mut upto = before;
        loop {
            let (got, more): (WireHours, bool) = self.read_remote(ReadOp::PersonHoursRev {
                id,
                before: upto,
                limit: REV_PERSON_HOURS,
            })?;
            for (h, e) in got {
                if keep(&from_wire(e)) {
                    return Ok(Some(h));
                }
                upto = h;
            }
            if !more {
                return Ok(None);
            }
        }
    }

    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]) -> hourcell_query::Result<()>,
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceReader::scan_person_days(s.as_ref(), from_day, to_day, f);
        }
        let got: Vec<(u32, Vec<(i64, u64, u32, u16)>)> =
            self.read_remote(ReadOp::ScanPersonDays { from_day, to_day })?;
        for (id, places) in got {
            let places: Vec<PlaceIds> = places
                .into_iter()
                .map(|(hour, cell, address, source)| PlaceIds {
                    hour,
                    cell,
                    address,
                    source,
                })
                .collect();
            f(id, &places)?;
        }
        Ok(())
    }
}
