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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use hourcell_proto::v1;
use hourcell_query::{QueryError, SliceSource};
use hourcell_storage::shard::ShardId;
use hourcell_storage::{AddressRecord, DaySet, PlaceEntry, PlaceIds, RegistrationRecord};
use parking_lot::Mutex;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::node::{Node, NodeError, Store};
use crate::shards::{ReadGate, Shards};

/// A read of one data shard, served by a node that holds a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadOp {
    CellDays {
        day: i64,
        lo: u64,
        hi: u64,
    },
    CellDaysIn {
        day: i64,
        ranges: Vec<(u64, u64)>,
    },
    AddressDay {
        day: i64,
        address_id: u32,
    },
    HourSlices {
        from: i64,
        to: i64,
    },
    /// The hour slices in `from..before`, latest first, and whether the
    /// shard holds any hour before `from`.
    HourSlicesRev {
        before: i64,
        from: i64,
    },
    PersonHours {
        person: u64,
        from: i64,
        to: i64,
    },
    /// At most `limit` hours of person `id`'s entries before `before`,
    /// latest first, and whether there are more.
    PersonHoursRev {
        id: u32,
        before: i64,
        limit: u32,
    },
    ScanPersonDays {
        from_day: i64,
        to_day: i64,
    },
}

impl ReadOp {
    /// The op as sent in `ShardReadRequest.op`.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// A place entry on the wire: cell, address code, source label.
type WireEntry = (u64, Option<String>, String);
type WireHours = Vec<(i64, Vec<WireEntry>)>;
type WireSlices = Vec<(i64, Vec<u8>)>;

fn to_wire(entries: Vec<PlaceEntry>) -> Vec<WireEntry> {
    entries
        .into_iter()
        .map(|e| (e.cell, e.address, e.source))
        .collect()
}

fn from_wire(entries: Vec<WireEntry>) -> Vec<PlaceEntry> {
    entries
        .into_iter()
        .map(|(cell, address, source)| PlaceEntry {
            cell,
            address,
            source,
        })
        .collect()
}

fn bitmap_bytes(b: &RoaringBitmap) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut v).expect("writing to a Vec");
    v
}

fn bitmap_from(v: &[u8]) -> Result<RoaringBitmap, QueryError> {
    RoaringBitmap::deserialize_from(v)
        .map_err(|e| QueryError::Unavailable(format!("bad bitmap from a shard replica: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding to a Vec")
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, QueryError> {
    bincode::serde::decode_from_slice(v, bincode::config::standard())
        .map(|(x, _)| x)
        .map_err(|e| QueryError::Unavailable(format!("bad reply from a shard replica: {e}")))
}

/// Runs a read on a replica held here (the serving side).
pub fn serve_read(store: &Store, op: ReadOp) -> Result<Vec<u8>, QueryError> {
    let s: &dyn SliceSource = store;
    Ok(match op {
        ReadOp::CellDays { day, lo, hi } => {
            let mut out: Vec<(u64, DaySet)> = Vec::new();
            s.cell_days(day, lo, hi, &mut |c, set| out.push((c, set.to_vec())))?;
            encode(&out)
        }
        ReadOp::CellDaysIn { day, ranges } => {
            let mut out: Vec<(u64, DaySet)> = Vec::new();
            s.cell_days_in(day, &ranges, &mut |_| true, &mut |c, set| {
                out.push((c, set.to_vec()))
            })?;
            encode(&out)
        }
        ReadOp::AddressDay { day, address_id } => encode(&s.address_day(day, address_id)?),
        ReadOp::HourSlices { from, to } => {
            let mut out: WireSlices = Vec::new();
            s.hour_slices(from, to, &mut |h, b| out.push((h, bitmap_bytes(&b))))?;
            encode(&out)
        }
        ReadOp::HourSlicesRev { before, from } => {
            let mut out: WireSlices = Vec::new();
            let mut earlier = false;
            s.hour_slices_rev(before, &mut |h, b| {
                if h < from {
                    earlier = true;
                    return false;
                }
                out.push((h, bitmap_bytes(&b)));
                true
            })?;
            encode(&(out, earlier))
        }
        ReadOp::PersonHours { person, from, to } => {
            let out: WireHours = s
                .person_hours(person, from, to)?
                .into_iter()
                .map(|(h, e)| (h, to_wire(e)))
                .collect();
            encode(&out)
        }
        ReadOp::PersonHoursRev { id, before, limit } => {
            let mut out: WireHours = Vec::new();
            let mut more = false;
            store.person_hours_rev(id, hourcell_storage::keys::MIN_HOUR, before, &mut |h, e| {
                if out.len() >= limit as usize {
                    more = true;
                    return false;
                }
                out.push((h, to_wire(e)));
                true
            })?;
            encode(&(out, more))
        }
        ReadOp::ScanPersonDays { from_day, to_day } => {
            let mut out: Vec<(u32, Vec<(i64, u64, u32, u16)>)> = Vec::new();
            s.scan_person_days(from_day, to_day, &mut |id, places| {
                out.push((
                    id,
                    places
                        .iter()
                        .map(|p| (p.hour, p.cell, p.address, p.source))
                        .collect(),
                ))
            })?;
            encode(&out)
        }
    })
}

/// Sends shard reads and writes to the nodes that hold the shards.
pub struct Router {
    me: u64,
    /// The runtime routed requests run on (none outside one: routing then
    /// fails as unavailable).
    rt: Option<tokio::runtime::Handle>,
    tls: Option<crate::tls::ClientTls>,
    node: OnceLock<Weak<Node>>,
    /// Node id → (url, client).
    clients: Mutex<HashMap<u64, (String, v1::shard_client::ShardClient<Channel>)>>,
    /// Group → the node that last served it, tried first.
    preferred: Mutex<HashMap<u64, u64>>,
    timeout: Duration,
}

/// Hours of a person fetched per round when walking back.
const REV_PERSON_HOURS: u32 = 256;

impl Router {
    pub fn new(me: u64, tls: Option<crate::tls::ClientTls>, timeout: Duration) -> Arc<Router> {
        Arc::new(Router {
            me,
            rt: tokio::runtime::Handle::try_current().ok(),
            tls,
            node: OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            preferred: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// Ties the router to its node (once the node exists).
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn node(&self) -> Result<Arc<Node>, String> {
        self.node
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "the node is shutting down".to_string())
    }

    /// Runs `f` on the runtime and waits for it from this (blocking)
    /// thread.
    fn run<F, T>(&self, f: F) -> Result<T, Status>
    where
        F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(Status::unavailable("no async runtime to route requests on"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        let wait = move || {
            rx.recv()
                .unwrap_or_else(|_| Err(Status::internal("routing task ended without an answer")))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    async fn client(
        self: &Arc<Self>,
        id: u64,
        addr: &str,
    ) -> Result<v1::shard_client::ShardClient<Channel>, String> {
        let url = crate::client::server_url(addr, self.tls.is_some());
        if let Some((u, c)) = self.clients.lock().get(&id) {
            if *u == url {
                return Ok(c.clone());
            }
        }
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(t) = &self.tls {
            ep = ep
                .tls_config(t.config().map_err(|e| format!("{e:#}"))?)
                .map_err(|e| e.to_string())?;
        }
        let ch = ep.connect().await.map_err(|e| e.to_string())?;
        let c = v1::shard_client::ShardClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        self.clients.lock().insert(id, (url, c.clone()));
        Ok(c)
    }

    /// The nodes to try for shard `id`, the preferred one first, and the
    /// map version they come from.
    fn candidates(
        &self,
        node: &Node,
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

    /// Every node's gRPC address (read from the raft engine: once per
    /// routing round, not per part).
    fn peers(node: &Node) -> HashMap<u64, String> {
        node.replication()
            .map(|r| r.known_peers().into_iter().collect())
            .unwrap_or_default()
    }

    /// Reads shard `id` (raft group `group`) on a node that holds it.
    pub fn read(
        self: &Arc<Self>,
        id: ShardId,
        group: u64,
        op: &ReadOp,
    ) -> Result<Vec<u8>, QueryError> {
        let node = self.node().map_err(QueryError::Unavailable)?;
        let op_bytes = encode(op);
        let m = node.metrics();
        m.routed_reads.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let mut last_err = String::new();
        let mut refreshed = false;
        loop {
            let (version, cands) = self.candidates(&node, &Self::peers(&node), id, group);
            if cands.is_empty() {
                last_err = format!("no reachable node holds shard group {group}");
            }
            let mut stale = false;
            for (n, addr) in cands {
                let barrier = ReadGate::remote_barrier_needed(group, n);
                let req = v1::ShardReadRequest {
                    map_version: version,
                    group,
                    barrier,
                    op: op_bytes.clone(),
                };
                let me = self.clone();
                let r = self.run(async move {
                    let mut c = me.client(n, &addr).await.map_err(Status::unavailable)?;
                    c.read(req).await.map(|r| r.into_inner())
                });
                match r {
                    Ok(reply) => {
                        if barrier {
                            ReadGate::remote_barrier_done(group, n);
                        }
                        self.preferred.lock().insert(group, n);
                        return Ok(reply.reply);
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        m.stale_map_refusals.fetch_add(1, Ordering::Relaxed);
                        last_err = format!("node {n}: {}", s.message());
                        stale = true;
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        return Err(QueryError::Unavailable(format!(
                            "node {n} refused a read of shard group {group}: {}",
                            s.message()
                        )));
                    }
                    Err(s) => {
                        m.routed_failures.fetch_add(1, Ordering::Relaxed);
                        self.clients.lock().remove(&n);
                        last_err = format!("node {n}: {}", s.message());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(QueryError::Unavailable(format!(
                    "cannot read shard group {group} on any node that holds it: {last_err}"
                )));
            }
            if stale || !refreshed {
                node.refresh_map()
                    .map_err(|e| QueryError::Unavailable(e.to_string()))?;
                refreshed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Proposes `(shard, group, encoded command)` parts on nodes that hold
    /// the shards, and returns once each is committed and applied there.
    /// Parts that fail are sent again (to another replica, after refreshing
    /// the map if a node said it was stale) until the deadline: commands
    /// are idempotent.
    pub fn propose(
        self: &Arc<Self>,
        parts: Vec<(ShardId, u64, Vec<u8>)>,
    ) -> Result<Vec<hourcell_storage::ApplyOutcome>, NodeError> {
        let mut out = vec![hourcell_storage::ApplyOutcome::default(); parts.len()];
        if parts.is_empty() {
            return Ok(out);
        }
        let node = self.node().map_err(NodeError::Unavailable)?;
        let m = node.metrics();
        m.routed_parts
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let mut pending = parts;
        // Each pending part's place in `out`, and how many times it was
        // tried: the next try goes to the next replica.
        let mut slots: Vec<usize> = (0..pending.len()).collect();
        let mut tries: Vec<usize> = vec![0; pending.len()];
        loop {
            let mut by_node: HashMap<u64, (String, u64, Vec<usize>)> = HashMap::new();
            let mut unroutable = Vec::new();
            let peers = Self::peers(&node);
            for (i, (id, group, _)) in pending.iter().enumerate() {
                let (version, cands) = self.candidates(&node, &peers, *id, *group);
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
                let req = v1::ShardProposeRequest {
                    map_version: version,
                    commands: idx
                        .iter()
                        .map(|&i| v1::ShardCommand {
                            group: pending[i].1,
                            command: pending[i].2.clone(),
                        })
                        .collect(),
                };
                let me = self.clone();
                calls.push((n, idx, async move {
                    let mut c = me.client(n, &addr).await.map_err(Status::unavailable)?;
                    c.propose(req).await.map(|r| r.into_inner())
                }));
            }
            let (meta, futs): (Vec<_>, Vec<_>) =
                calls.into_iter().map(|(n, idx, f)| ((n, idx), f)).unzip();
            let results: Vec<Result<v1::ShardProposeResponse, Status>> = self
                .run(async move { Ok(futures::future::join_all(futs).await) })
                .unwrap_or_else(|e| meta.iter().map(|_| Err(e.clone())).collect());
            let mut again: Vec<usize> = unroutable;
            let mut last_err = String::from("no node holds the shard");
            let mut stale = false;
            for ((n, idx), r) in meta.into_iter().zip(results) {
                match r {
                    Ok(reply) => {
                        for (k, &i) in idx.iter().enumerate() {
                            self.preferred.lock().insert(pending[i].1, n);
                            let o = &mut out[slots[i]];
                            o.applied = reply.applied.get(k).copied().unwrap_or(0);
                            o.expired = reply.expired.get(k).copied().unwrap_or(false);
                        }
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        return Err(NodeError::Invalid(s.message().to_string()));
                    }
                    Err(s) => {
                        if s.code() == tonic::Code::FailedPrecondition {
                            m.stale_map_refusals.fetch_add(1, Ordering::Relaxed);
                            stale = true;
                        } else {
                            m.routed_failures.fetch_add(1, Ordering::Relaxed);
                            self.clients.lock().remove(&n);
                        }
                        last_err = format!("node {n}: {}", s.message());
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
    pub fn members_everywhere(self: &Arc<Self>) -> Vec<(u64, Vec<v1::ShardStatus>)> {
        let Ok(node) = self.node() else {
            return Vec::new();
        };
        let mut out = vec![(self.me, node.shard_members())];
        let peers: Vec<(u64, String)> = Self::peers(&node)
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .collect();
        let me = self.clone();
        let got = self
            .run(async move {
                let calls = peers.into_iter().map(|(id, addr)| {
                    let me = me.clone();
                    async move {
                        let mut c = me.client(id, &addr).await.ok()?;
                        let r = c.members(v1::ShardMembersRequest {}).await.ok()?;
                        let r = r.into_inner();
                        Some((r.node_id, r.groups))
                    }
                });
                Ok(futures::future::join_all(calls).await)
            })
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
    fn local(&self) -> hourcell_query::Result<Option<Arc<Store>>> {
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
                self.gate.ensure(g).map_err(QueryError::Unavailable)?;
                Ok(Some(store))
            }
            None => Ok(None),
        }
    }

    fn remote<T: for<'de> Deserialize<'de>>(&self, op: ReadOp) -> hourcell_query::Result<T> {
        decode(&self.router.read(self.id, self.group, &op)?)
    }
}

impl SliceSource for ShardSource {
    fn slice_level(&self) -> u8 {
        self.meta.slice_level()
    }

    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceSource::cell_days(s.as_ref(), day, lo, hi, f);
        }
        let got: Vec<(u64, DaySet)> = self.remote(ReadOp::CellDays { day, lo, hi })?;
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
            return SliceSource::cell_days_in(s.as_ref(), day, ranges, keep, f);
        }
        let got: Vec<(u64, DaySet)> = self.remote(ReadOp::CellDaysIn {
            day,
            ranges: ranges.to_vec(),
        })?;
        for (c, set) in got {
            if keep(c) {
                f(c, &set);
            }
        }
        Ok(())
    }

    fn address_day(&self, day: i64, address_id: u32) -> hourcell_query::Result<Option<DaySet>> {
        if let Some(s) = self.local()? {
            return SliceSource::address_day(s.as_ref(), day, address_id);
        }
        self.remote(ReadOp::AddressDay { day, address_id })
    }

    fn hour_slices(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceSource::hour_slices(s.as_ref(), from, to, f);
        }
        let got: WireSlices = self.remote(ReadOp::HourSlices { from, to })?;
        for (h, b) in got {
            f(h, bitmap_from(&b)?);
        }
        Ok(())
    }

    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceSource::hour_slices_rev(s.as_ref(), before, f);
        }
        // A day at a time, latest first (the step `ShardedSource` walks
        // in, so a step costs one round trip and no unused bitmaps), until
        // `f` has had enough or the shard holds nothing earlier.
        let mut upto = before;
        loop {
            let from = upto - 24;
            let (got, earlier): (WireSlices, bool) =
                self.remote(ReadOp::HourSlicesRev { before: upto, from })?;
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
            return SliceSource::person_hours(s.as_ref(), person, from, to);
        }
        let got: WireHours = self.remote(ReadOp::PersonHours { person, from, to })?;
        Ok(got.into_iter().map(|(h, e)| (h, from_wire(e))).collect())
    }

    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> hourcell_query::Result<Option<i64>> {
        if let Some(s) = self.local()? {
            return SliceSource::last_active_before(s.as_ref(), id, before, keep);
        }
        let mut upto = before;
        loop {
            let (got, more): (WireHours, bool) = self.remote(ReadOp::PersonHoursRev {
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

    fn internal_id(&self, person: u64) -> Option<u32> {
        self.meta.internal_id(person)
    }
    fn external_id(&self, id: u32) -> Option<u64> {
        self.meta.external_id(id)
    }
    fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64> {
        self.meta.external_ids(b)
    }
    fn external_ids_of(&self, ids: &[u32]) -> Vec<u64> {
        self.meta.external_ids_of(ids)
    }

    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]),
    ) -> hourcell_query::Result<()> {
        if let Some(s) = self.local()? {
            return SliceSource::scan_person_days(s.as_ref(), from_day, to_day, f);
        }
        let got: Vec<(u32, Vec<(i64, u64, u32, u16)>)> =
            self.remote(ReadOp::ScanPersonDays { from_day, to_day })?;
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
            f(id, &places);
        }
        Ok(())
    }

    fn source_labels(&self) -> Vec<String> {
        self.meta.source_labels()
    }
    fn for_each_address(&self, f: &mut dyn FnMut(&AddressRecord)) {
        SliceSource::for_each_address(self.meta.as_ref(), f)
    }
    fn address(&self, code: &str) -> Option<AddressRecord> {
        self.meta.address(code)
    }
    fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)> {
        self.meta.address_point(code)
    }
    fn area_addresses(&self, area: &str) -> Vec<u32> {
        self.meta.area_addresses(area)
    }
    fn area_exists(&self, area: &str) -> bool {
        self.meta.area_exists(area)
    }
    fn for_each_registration(
        &self,
        with_address: bool,
        f: &mut dyn FnMut(&RegistrationRecord, Option<&AddressRecord>, Option<u32>),
    ) {
        SliceSource::for_each_registration(self.meta.as_ref(), with_address, f)
    }
}

/// The receiving side of routed shard reads and writes.
pub struct ShardService {
    pub node: Arc<Node>,
    /// With TLS, only cluster nodes (a client certificate named
    /// `node-<id>`) may route to this node.
    pub require_node_cert: bool,
}

impl ShardService {
    fn check_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        crate::replication::grpc::check_node_cert(req, self.require_node_cert, "shard routing")
    }
}

#[tonic::async_trait]
impl v1::shard_server::Shard for ShardService {
    async fn propose(
        &self,
        req: Request<v1::ShardProposeRequest>,
    ) -> Result<Response<v1::ShardProposeResponse>, Status> {
        self.check_peer(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let items: Vec<(u64, Vec<u8>)> = r
            .commands
            .into_iter()
            .map(|c| (c.group, c.command))
            .collect();
        let outs = tokio::task::spawn_blocking(move || node.serve_propose(r.map_version, items))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::service::to_status)?;
        Ok(Response::new(v1::ShardProposeResponse {
            applied: outs.iter().map(|o| o.applied).collect(),
            expired: outs.iter().map(|o| o.expired).collect(),
        }))
    }

    async fn members(
        &self,
        req: Request<v1::ShardMembersRequest>,
    ) -> Result<Response<v1::ShardMembersResponse>, Status> {
        self.check_peer(&req)?;
        let node = self.node.clone();
        let (node_id, groups) = tokio::task::spawn_blocking(move || {
            let id = node.replication().map_or(0, |r| r.handle.id());
            (id, node.shard_members())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::ShardMembersResponse { node_id, groups }))
    }

    async fn read(
        &self,
        req: Request<v1::ShardReadRequest>,
    ) -> Result<Response<v1::ShardReadResponse>, Status> {
        self.check_peer(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let op: ReadOp = decode(&r.op).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (reply, map_version) = tokio::task::spawn_blocking(move || {
            node.serve_read(r.map_version, r.group, r.barrier, op)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(crate::service::to_status)?;
        Ok(Response::new(v1::ShardReadResponse { reply, map_version }))
    }
}
