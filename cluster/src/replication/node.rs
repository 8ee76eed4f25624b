//! [`RaftNode`]: one thread that drives every raft group hosted on a node.
//!
//! Hundreds of groups per node must be cheap, so there is no thread per
//! group: one loop receives inputs (raft messages, proposals), ticks every
//! group on a fixed interval and handles the `Ready` of each group that has
//! one. Proposals are tagged with (node id, sequence) in the entry context;
//! the node that proposed replies when it applies the entry, whichever node
//! led the group at the time.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hourcell_storage::{ApplyOutcome, KvEngine};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{Config, RawNode, StateRole, Storage as _};

use super::log_store::RaftLogStore;
use super::transport::{Envelope, Transport};

/// The replicated state machine of a group. `apply` must be deterministic
/// (no clock, no randomness: the same entries give the same bytes on every
/// replica) and idempotent (an entry may be applied again after a crash
/// between the state machine's write and the apply index's).
pub trait StateMachine: Send + Sync {
    /// Applies one committed command.
    fn apply(&self, index: u64, data: &[u8]) -> Result<ApplyOutcome, ApplyError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The command was refused the same way on every replica (bad input
    /// that validation let through); the proposer is told, the group goes
    /// on.
    #[error("{0}")]
    Rejected(String),
    /// The replica can no longer be trusted (storage failure, undecodable
    /// entry): the node stops.
    #[error("{0}")]
    Fatal(String),
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no such raft group {0}")]
    NoGroup(u64),
    #[error("proposal dropped (no leader known yet); retry")]
    Dropped,
    #[error("not applied within {0:?}; it may still be, so retry (commands are idempotent)")]
    Timeout(Duration),
    #[error("raft node stopped: {0}")]
    Stopped(String),
    #[error("apply failed: {0}")]
    Apply(String),
}

pub enum Input {
    Message(Envelope),
    Propose {
        group: u64,
        data: Vec<u8>,
        reply: SyncSender<Result<ApplyOutcome, ProposeError>>,
    },
    /// Reports the group's role and leader to `reply`.
    Status {
        group: u64,
        reply: SyncSender<Option<GroupStatus>>,
    },
    /// A linearizable read barrier (ReadIndex): replies once this replica
    /// has applied everything committed when the read arrived at the
    /// leader.
    ReadIndex {
        group: u64,
        reply: SyncSender<Result<(), ProposeError>>,
    },
    Campaign(u64),
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub leader: u64,
    pub term: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
    /// First index still in the log (raises as the log is compacted).
    pub first_index: u64,
    /// Milliseconds since this replica last heard from the leader (0 on
    /// the leader; `None` if it never did).
    pub leader_contact_ms: Option<u64>,
}

/// Timing. Election timeout is `election_tick × tick` (randomised up to
/// twice that by raft-rs); with the defaults a dead leader is replaced in
/// 1–2 s, inside the 3 s the product promises.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// The leader compacts the log once this many applied entries are
    /// matched by every voter.
    pub compact_after: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            compact_after: 1_000,
        }
    }
}

/// Entry data of a raft-layer log compaction (never a bincode command,
/// whose first byte is a small enum tag).
const COMPACT_MAGIC: &[u8; 8] = b"\xffCOMPACT";

fn compact_entry(to: u64) -> Vec<u8> {
    let mut v = COMPACT_MAGIC.to_vec();
    v.extend_from_slice(&to.to_be_bytes());
    v
}

struct Group<E: KvEngine> {
    /// When a message from the current leader last arrived.
    leader_contact: Option<Instant>,
    raw: RawNode<RaftLogStore<E>>,
    store: RaftLogStore<E>,
    sm: Arc<dyn StateMachine>,
}

/// A handle to a running [`RaftNode`]: cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub struct RaftHandle {
    id: u64,
    tx: Sender<Input>,
}

impl RaftHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn inbox(&self) -> Sender<Input> {
        self.tx.clone()
    }

    /// Sends the input `make` builds around a reply channel and waits for
    /// the answer.
    fn ask<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, ProposeError>>) -> Input,
        timeout: Duration,
    ) -> Result<T, ProposeError> {
        let stopped = || ProposeError::Stopped("node loop has exited".into());
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| stopped())?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ProposeError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }

    /// Proposes `data` (an encoded command) to `group` and waits until this
    /// node has applied it.
    pub fn propose(
        &self,
        group: u64,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<ApplyOutcome, ProposeError> {
        self.ask(|reply| Input::Propose { group, data, reply }, timeout)
    }

    /// Waits until this replica may serve a linearizable read of `group`:
    /// the leader confirms its leadership with a quorum (ReadIndex, not a
    /// lease) and this replica applies up to the read index.
    pub fn read_index(&self, group: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.ask(|reply| Input::ReadIndex { group, reply }, timeout)
    }

    pub fn status(&self, group: u64) -> Option<GroupStatus> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(Input::Status { group, reply }).ok()?;
        rx.recv_timeout(Duration::from_secs(5)).ok().flatten()
    }

    /// Starts an election in `group` now (tests, leader transfer).
    pub fn campaign(&self, group: u64) {
        let _ = self.tx.send(Input::Campaign(group));
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// Removes the waiters `(group, term, reply)` registered in a term older
/// than their group's current one, returning their replies.
fn take_stale<T>(waiting: &mut HashMap<u64, (u64, u64, T)>, terms: &HashMap<u64, u64>) -> Vec<T> {
    let stale: Vec<u64> = waiting
        .iter()
        .filter(|(_, (g, t, _))| terms.get(g).is_some_and(|now| now > t))
        .map(|(seq, _)| *seq)
        .collect();
    stale
        .into_iter()
        .filter_map(|seq| waiting.remove(&seq).map(|w| w.2))
        .collect()
}

/// Drives the raft groups of one node.
pub struct RaftNode<E: KvEngine> {
    id: u64,
    timing: RaftTiming,
    groups: HashMap<u64, Group<E>>,
    transport: Arc<dyn Transport>,
    rx: Receiver<Input>,
    next_seq: u64,
    /// Proposals waiting for their entry to be applied here: sequence →
    /// (group, term when proposed, reply).
    pending: HashMap<u64, (u64, u64, SyncSender<Result<ApplyOutcome, ProposeError>>)>,
    /// Read barriers sent to the leader: sequence → (group, term, reply).
    reads: HashMap<u64, (u64, u64, SyncSender<Result<(), ProposeError>>)>,
    /// Read barriers with a known read index, waiting for apply.
    reads_ready: Vec<(u64, u64, SyncSender<Result<(), ProposeError>>)>,
    logger: slog::Logger,
}

fn config(id: u64, applied: u64, t: &RaftTiming) -> Config {
    Config {
        id,
        election_tick: t.election_tick,
        heartbeat_tick: t.heartbeat_tick,
        applied,
        // A dead leader steps down and a partitioned node cannot disrupt
        // the group when it comes back.
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 4 << 20,
        max_inflight_msgs: 64,
        ..Default::default()
    }
}

impl<E: KvEngine> RaftNode<E> {
    /// Creates the node; call [`RaftNode::add_group`] for each hosted group,
    /// then [`RaftNode::spawn`].
    pub fn new(id: u64, timing: RaftTiming, transport: Arc<dyn Transport>) -> (Self, RaftHandle) {
        let (tx, rx) = mpsc::channel();
        let node = RaftNode {
            id,
            timing,
            groups: HashMap::new(),
            transport,
            rx,
            // Sequence numbers start from the clock so that a restarted
            // node never reuses the tag of a proposal still in some log.
            next_seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            pending: HashMap::new(),
            reads: HashMap::new(),
            reads_ready: Vec::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        };
        (node, RaftHandle { id, tx })
    }

    /// Hosts `group` with this node's replica of it, backed by `engine`.
    pub fn add_group(
        &mut self,
        group: u64,
        engine: Arc<E>,
        voters: &[u64],
        sm: Arc<dyn StateMachine>,
    ) -> raft::Result<()> {
        let store = RaftLogStore::open(engine, group, voters)?;
        let cfg = config(self.id, store.applied(), &self.timing);
        let raw = RawNode::new(&cfg, store.clone(), &self.logger)?;
        self.groups.insert(
            group,
            Group {
                leader_contact: None,
                raw,
                store,
                sm,
            },
        );
        Ok(())
    }

    /// Runs the loop on its own thread until `stop`.
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("raft-{}", self.id))
            .spawn(move || self.run())
            .expect("spawn raft thread")
    }

    fn run(mut self) {
        let mut last_tick = Instant::now();
        let mut ticks = 0u64;
        loop {
            let wait = self.timing.tick.saturating_sub(last_tick.elapsed());
            match self.rx.recv_timeout(wait) {
                Ok(Input::Stop) => break,
                Ok(input) => {
                    if !self.handle(input) {
                        break;
                    }
                    // Drain what is queued so one Ready covers a batch.
                    let mut stop = false;
                    while let Ok(input) = self.rx.try_recv() {
                        if matches!(input, Input::Stop) || !self.handle(input) {
                            stop = true;
                            break;
                        }
                    }
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= self.timing.tick {
                for g in self.groups.values_mut() {
                    g.raw.tick();
                }
                last_tick = Instant::now();
                ticks += 1;
                if ticks % 20 == 0 {
                    self.maybe_compact();
                }
            }
            let ids: Vec<u64> = self.groups.keys().copied().collect();
            for gid in ids {
                if let Err(e) = self.on_ready(gid) {
                    self.fail(&format!("group {gid}: {e}"));
                    return;
                }
            }
            self.drop_stale_proposals();
            self.release_reads();
        }
        self.fail("stopped");
    }

    /// On groups this node leads: once every voter has matched (and this
    /// node applied) `compact_after` entries past the log's start, propose a
    /// compaction to that index. It goes through the log, so every replica
    /// compacts at the same index; since every voter already has those
    /// entries, none will need a snapshot to catch up. A voter that is down
    /// holds compaction back until it returns (snapshots, which lift that
    /// limit, are not implemented yet).
    fn maybe_compact(&mut self) {
        let every = self.timing.compact_after;
        for g in self.groups.values_mut() {
            if g.raw.raft.state != StateRole::Leader {
                continue;
            }
            let min_matched = g
                .raw
                .raft
                .prs()
                .iter()
                .map(|(_, p)| p.matched)
                .min()
                .unwrap_or(0);
            let to = min_matched.min(g.store.applied());
            let first = g.store.first_index().unwrap_or(1);
            if to >= first + every {
                let _ = g.raw.propose(Vec::new(), compact_entry(to));
            }
        }
    }

    /// A proposal made in an older term may have been lost with its
    /// leader (a follower forwards proposals to the leader it knows, which
    /// may be dead). Tell the proposer to retry now rather than time out:
    /// commands are idempotent, so a proposal that does commit after all is
    /// harmless.
    fn drop_stale_proposals(&mut self) {
        if self.pending.is_empty() && self.reads.is_empty() {
            return;
        }
        let terms: HashMap<u64, u64> = self
            .groups
            .iter()
            .map(|(id, g)| (*id, g.raw.raft.term))
            .collect();
        for reply in take_stale(&mut self.pending, &terms) {
            let _ = reply.send(Err(ProposeError::Dropped));
        }
        for reply in take_stale(&mut self.reads, &terms) {
            let _ = reply.send(Err(ProposeError::Dropped));
        }
    }

    /// Answers the read barriers whose index this replica has applied.
    fn release_reads(&mut self) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied: HashMap<u64, u64> = self
            .groups
            .iter()
            .map(|(id, g)| (*id, g.store.applied()))
            .collect();
        self.reads_ready.retain(|(g, index, reply)| {
            if applied.get(g).is_some_and(|a| a >= index) {
                let _ = reply.send(Ok(()));
                false
            } else {
                true
            }
        });
    }

    fn fail(&mut self, why: &str) {
        for (_, (_, _, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
        for (_, (_, _, reply)) in self.reads.drain() {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
        for (_, _, reply) in self.reads_ready.drain(..) {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
    }

    /// Returns false if the node must stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Message(env) => {
                if let Some(g) = self.groups.get_mut(&env.group) {
                    let from = env.msg.from;
                    // Stale or unexpected messages are raft's to ignore.
                    let _ = g.raw.step(env.msg);
                    if from != 0 && from == g.raw.raft.leader_id {
                        g.leader_contact = Some(Instant::now());
                    }
                }
            }
            Input::Propose { group, data, reply } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    let _ = reply.send(Err(ProposeError::NoGroup(group)));
                    return true;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let mut ctx = self.id.to_be_bytes().to_vec();
                ctx.extend_from_slice(&seq.to_be_bytes());
                let term = g.raw.raft.term;
                match g.raw.propose(ctx, data) {
                    Ok(()) => {
                        self.pending.insert(seq, (group, term, reply));
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(ProposeError::Dropped));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Stopped(e.to_string())));
                    }
                }
            }
            Input::Status { group, reply } => {
                let s = self.groups.get(&group).map(|g| GroupStatus {
                    leader: g.raw.raft.leader_id,
                    term: g.raw.raft.term,
                    is_leader: g.raw.raft.state == StateRole::Leader,
                    commit: g.raw.raft.raft_log.committed,
                    applied: g.store.applied(),
                    first_index: g.store.first_index().unwrap_or(0),
                    leader_contact_ms: if g.raw.raft.state == StateRole::Leader {
                        Some(0)
                    } else {
                        g.leader_contact.map(|t| t.elapsed().as_millis() as u64)
                    },
                });
                let _ = reply.send(s);
            }
            Input::ReadIndex { group, reply } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    let _ = reply.send(Err(ProposeError::NoGroup(group)));
                    return true;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let term = g.raw.raft.term;
                g.raw.read_index(seq.to_be_bytes().to_vec());
                self.reads.insert(seq, (group, term, reply));
            }
            Input::Campaign(group) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    let _ = g.raw.campaign();
                }
            }
            Input::Stop => return false,
        }
        true
    }

    fn send(&self, group: u64, msgs: Vec<raft::eraftpb::Message>) {
        if msgs.is_empty() {
            return;
        }
        self.transport.send(
            msgs.into_iter()
                .map(|msg| Envelope { group, msg })
                .collect(),
        );
    }

    /// Handles one group's `Ready` in the order raft-rs's `five_mem_node`
    /// example gives: send messages, apply the snapshot, apply committed
    /// entries, append entries, persist the hard state, send persisted
    /// messages, advance, then the light ready (commit index, messages,
    /// committed entries) and advance_apply.
    fn on_ready(&mut self, gid: u64) -> Result<(), String> {
        let g = self.groups.get_mut(&gid).expect("group exists");
        if !g.raw.has_ready() {
            return Ok(());
        }
        let mut ready = g.raw.ready();
        for rs in ready.take_read_states() {
            if rs.request_ctx.len() == 8 {
                let seq = u64::from_be_bytes(rs.request_ctx[..8].try_into().unwrap());
                if let Some((group, _, reply)) = self.reads.remove(&seq) {
                    self.reads_ready.push((group, rs.index, reply));
                }
            }
        }
        let msgs = ready.take_messages();
        let snap_empty = ready.snapshot().get_metadata().index == 0;
        let committed = ready.take_committed_entries();
        let entries = ready.entries().clone();
        let hs = ready.hs().cloned();
        let persisted = ready.take_persisted_messages();
        self.send(gid, msgs);
        if !snap_empty {
            return Err("snapshots are not supported yet".into());
        }
        self.apply(gid, committed)?;
        let g = self.groups.get_mut(&gid).expect("group exists");
        g.store
            .persist(&entries, hs.as_ref())
            .map_err(|e| e.to_string())?;
        self.send(gid, persisted);
        let g = self.groups.get_mut(&gid).expect("group exists");
        let mut light = g.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            g.store.set_commit(commit).map_err(|e| e.to_string())?;
        }
        let msgs = light.take_messages();
        let committed = light.take_committed_entries();
        self.send(gid, msgs);
        self.apply(gid, committed)?;
        let g = self.groups.get_mut(&gid).expect("group exists");
        g.raw.advance_apply();
        Ok(())
    }

    fn apply(&mut self, gid: u64, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in entries {
            let g = self.groups.get_mut(&gid).expect("group exists");
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal
                    if e.data.len() == 16 && e.data[..8] == COMPACT_MAGIC[..] =>
                {
                    let to = u64::from_be_bytes(e.data[8..].try_into().unwrap());
                    // Entries up to `to` were applied before this one.
                    g.store
                        .set_applied(e.index - 1)
                        .map_err(|e| e.to_string())?;
                    g.store.compact(to).map_err(|e| e.to_string())?;
                    None
                }
                EntryType::EntryNormal => Some(g.sm.apply(e.index, &e.data)),
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
                    let cs = g.raw.apply_conf_change(&cc).map_err(|e| e.to_string())?;
                    g.store.set_conf_state(cs).map_err(|e| e.to_string())?;
                    None
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
                    let cs = g.raw.apply_conf_change(&cc).map_err(|e| e.to_string())?;
                    g.store.set_conf_state(cs).map_err(|e| e.to_string())?;
                    None
                }
            };
            if let Some(Err(ApplyError::Fatal(why))) = &result {
                // A state machine that cannot apply a committed entry must
                // not go on: replicas would diverge.
                return Err(format!("apply of entry {} failed: {why}", e.index));
            }
            if e.context.len() == 16 {
                let node = u64::from_be_bytes(e.context[..8].try_into().unwrap());
                let seq = u64::from_be_bytes(e.context[8..].try_into().unwrap());
                if node == self.id {
                    if let Some((_, _, reply)) = self.pending.remove(&seq) {
                        let _ = reply.send(match result {
                            Some(Ok(out)) => Ok(out),
                            Some(Err(why)) => Err(ProposeError::Apply(why.to_string())),
                            None => Ok(ApplyOutcome::default()),
                        });
                    }
                }
            }
        }
        let g = self.groups.get_mut(&gid).expect("group exists");
        g.store.set_applied(last).map_err(|e| e.to_string())
    }
}
