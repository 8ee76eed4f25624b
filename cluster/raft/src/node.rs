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

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage as _};

use crate::engine::{LogBatch, LogEngine};
use crate::error::{ApplyError, ProposeError, RaftError, SnapshotError};
pub use crate::handle::{GroupStatus, Input, RaftHandle, RaftTiming};
use crate::lease::Lease;
use crate::log_store::{store_peer_address, RaftLogStore};
pub use crate::machine::{Outcome, StateMachine};
use crate::snapshot::Snapshots;
use crate::transport::{Envelope, Transport};

mod reads;

/// Wraps a raft-rs or protobuf error of `group`'s log as fatal.
fn group_err<T: std::fmt::Display>(group: u64) -> impl Fn(T) -> RaftError {
    move |e| RaftError::Group {
        group,
        why: e.to_string(),
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

struct Group<E: LogEngine, O> {
    /// When a message from the current leader last arrived.
    leader_contact: Option<Instant>,
    /// When the group last did something (its log grew, a proposal or read
    /// came in, an election message arrived). A group quiet for
    /// `RaftTiming::idle_after` ticks only every [`IDLE_TICK_EVERY`]th
    /// round: past weeks' shards cost little.
    active: Instant,
    /// The last log index seen, to notice growth.
    seen_index: u64,
    raw: RawNode<RaftLogStore<E>>,
    store: RaftLogStore<E>,
    sm: Arc<dyn StateMachine<O>>,
    /// This replica's leader lease (see [`crate::lease`]).
    lease: Lease,
    /// A replica restarted in an elected term grants no vote before this
    /// instant (see [`RaftNode::add_group`]).
    votes_held_until: Option<Instant>,
}

/// A read barrier waiting for its read index.
struct ReadWaiter {
    reply: SyncSender<Result<(), ProposeError>>,
    /// When it was first asked for (a resend keeps it): a quorum's answer
    /// renews this leader's lease from then.
    issued: Instant,
    /// Whether this replica led the group when it asked: only then is the
    /// read state its own quorum's confirmation.
    as_leader: bool,
}

/// A quiet group ticks once in this many rounds: its heartbeats and its
/// election timeout stretch by the same factor on every replica (they all
/// see the same log, so they quiet down together), and any proposal, read
/// or election message wakes it.
pub const IDLE_TICK_EVERY: u64 = 10;

/// Pulls the snapshot of `group` at `index` from node `from` into `sm`,
/// retrying a few times. Runs on its own thread.
fn fetch_snapshot<O>(
    transport: &dyn Transport,
    sm: &dyn StateMachine<O>,
    group: u64,
    index: u64,
    from: u64,
) -> Result<(), SnapshotError> {
    let t0 = Instant::now();
    let mut last_err = SnapshotError::Transfer("no attempt".into());
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        let mut bytes = 0u64;
        let r = sm
            .begin_restore()
            .map_err(SnapshotError::from)
            .and_then(|()| {
                transport.fetch_snapshot(from, group, index, &mut |pairs| {
                    bytes += pairs
                        .iter()
                        .map(|(k, v)| (k.len() + v.len()) as u64)
                        .sum::<u64>();
                    sm.restore_chunk(pairs).map_err(SnapshotError::from)
                })
            });
        match r
            .and_then(|()| sm.finish_restore().map_err(SnapshotError::from))
            .and_then(|()| sm.sync_applied(index).map_err(SnapshotError::from))
        {
            Ok(()) => {
                tracing::info!(group, index, from, bytes, elapsed = ?t0.elapsed(), "installed snapshot");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(group, index, from, attempt, error = %e, "snapshot fetch failed");
                last_err = e;
            }
        }
    }
    Err(SnapshotError::Transfer(format!(
        "group {group}: could not install the snapshot at {index} from node {from}: {last_err}"
    )))
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
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

/// How long a read barrier waits for its read index before it is sent
/// again (see `RaftNode::resend_reads` in `node/reads.rs`).
const READ_RESEND: Duration = Duration::from_millis(300);

/// Drives the raft groups of one node.
pub struct RaftNode<E: LogEngine, O> {
    id: u64,
    timing: RaftTiming,
    groups: HashMap<u64, Group<E, O>>,
    transport: Arc<dyn Transport>,
    rx: Receiver<Input<O>>,
    next_seq: u64,
    /// Proposals waiting for their entry to be applied here: sequence →
    /// (group, term when proposed, reply).
    pending: HashMap<u64, (u64, u64, SyncSender<Result<O, ProposeError>>)>,
    /// Read barriers sent to the leader: sequence → (group, term, waiter).
    reads: HashMap<u64, (u64, u64, ReadWaiter)>,
    /// When each read barrier in `reads` was last sent (see
    /// [`READ_RESEND`]).
    read_sent: HashMap<u64, Instant>,
    /// Read barriers with a known read index, waiting for apply.
    reads_ready: Vec<(u64, u64, SyncSender<Result<(), ProposeError>>)>,
    snapshots: Arc<Snapshots>,
    logger: slog::Logger,
    /// The engine of the groups added so far; groups added while running
    /// keep their logs there too.
    log_engine: Option<Arc<E>>,
    /// This loop's own inbox, for work finished on other threads.
    tx: Sender<Input<O>>,
    /// Groups whose snapshot is being fetched and installed on another
    /// thread: group → snapshot index. Their Ready is not processed
    /// meanwhile (the state machine is being replaced); other groups run on.
    installing: HashMap<u64, u64>,
    /// Snapshots installed and waiting for their MsgSnapshot to be stepped.
    installed: HashMap<u64, u64>,
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

impl<E: LogEngine, O: Outcome> RaftNode<E, O> {
    /// Creates the node; call [`RaftNode::add_group`] for each hosted group,
    /// then [`RaftNode::spawn`].
    pub fn new(
        id: u64,
        timing: RaftTiming,
        transport: Arc<dyn Transport>,
    ) -> (Self, RaftHandle<O>) {
        let (tx, rx) = mpsc::channel();
        let snapshots = Arc::new(Snapshots::default());
        let node = RaftNode {
            snapshots: snapshots.clone(),
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
            read_sent: HashMap::new(),
            reads_ready: Vec::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            log_engine: None,
            tx: tx.clone(),
            installing: HashMap::new(),
            installed: HashMap::new(),
        };
        (node, RaftHandle { id, tx, snapshots })
    }

    /// Hosts `group` with this node's replica of it, backed by `engine`.
    /// `voters` is the initial membership of a new group; an empty list
    /// makes a replica that joins an existing group (it waits to be added
    /// and sent a snapshot).
    pub fn add_group(
        &mut self,
        group: u64,
        engine: Arc<E>,
        voters: &[u64],
        sm: Arc<dyn StateMachine<O>>,
    ) -> raft::Result<()> {
        self.log_engine.get_or_insert_with(|| engine.clone());
        let freeze = {
            let sm = sm.clone();
            Arc::new(move || sm.freeze())
        };
        let store = RaftLogStore::open(engine, group, voters)?
            .with_snapshots(freeze, self.snapshots.clone());
        // The state machine syncs lazily: resume applying from what it
        // durably holds, which the log still has (it is made durable
        // before every compaction).
        // A store that has never written an applied index holds nothing
        // of the log yet (its applies may all have been held in memory
        // when the node stopped): replay the whole log. Its compaction
        // always writes the index first, so the log is whole then.
        {
            let durable = match sm.durable_applied() {
                Some(d) => d,
                None => store.first_index()? - 1,
            };
            if durable < store.applied() {
                let first = store.first_index()?;
                if durable + 1 < first {
                    return Err(raft::Error::Store(raft::StorageError::Other(
                        format!(
                            "group {group}: the store holds entries up to {durable} but the log starts at {first}; \
                             empty the data directory and rejoin with --join"
                        )
                        .into(),
                    )));
                }
                store.set_applied(durable)?;
            }
        }
        let cfg = config(self.id, store.applied(), &self.timing);
        // A replica that was in an elected term before it stopped may have
        // confirmed a leader's lease just before: it forgot whom it heard
        // from, so it refuses votes for a whole election timeout, by which
        // time that lease has run out (see `crate::lease`).
        let elected_before = store.hard_state().term > crate::log_store::INIT_TERM;
        let votes_held_until = elected_before
            .then(|| Instant::now() + self.timing.tick * self.timing.election_tick as u32);
        let raw = RawNode::new(&cfg, store.clone(), &self.logger)?;
        self.groups.insert(
            group,
            Group {
                leader_contact: None,
                active: Instant::now(),
                seen_index: 0,
                raw,
                store,
                sm,
                lease: Lease::default(),
                votes_held_until,
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
                let now = Instant::now();
                let idle_after = self.timing.idle_after;
                for g in self.groups.values_mut() {
                    let last = g.raw.raft.raft_log.last_index();
                    if last != g.seen_index {
                        g.seen_index = last;
                        g.active = now;
                    }
                    if now.duration_since(g.active) < idle_after || ticks % IDLE_TICK_EVERY == 0 {
                        g.raw.tick();
                    }
                }
                last_tick = Instant::now();
                ticks += 1;
                self.resend_reads(now);
                self.renew_leases(now);
                if ticks % 20 == 0 {
                    self.maintain();
                }
            }
            let ids: Vec<u64> = self.groups.keys().copied().collect();
            if let Err(e) = self.on_ready_all(&ids) {
                self.fail(&e);
                return;
            }
            self.drop_stale_proposals();
            self.release_reads();
        }
        self.fail(&"stopped");
    }

    /// Periodic leader duties on each group this node leads.
    ///
    /// Compaction: once every member has matched (and this node applied)
    /// `compact_after` entries past the log's start, propose a compaction
    /// to that index. It goes through the log, so every replica compacts
    /// at the same index. A member more than `max_lag` entries behind (down,
    /// or just added) does not hold it back; it gets a snapshot instead.
    ///
    /// Promotion: a learner whose log has caught up with the commit index
    /// is proposed as a voter (one membership change at a time).
    fn maintain(&mut self) {
        let every = self.timing.compact_after;
        let max_lag = self.timing.max_lag;
        for g in self.groups.values_mut() {
            if g.raw.raft.state != StateRole::Leader {
                continue;
            }
            let applied = g.store.applied();
            let committed = g.raw.raft.raft_log.committed;
            let min_matched = g
                .raw
                .raft
                .prs()
                .iter()
                .map(|(_, p)| p.matched)
                .filter(|m| m + max_lag >= applied)
                .min()
                .unwrap_or(applied);
            let to = min_matched.min(applied);
            let first = g.store.first_index().unwrap_or(1);
            if to >= first + every {
                let _ = g.raw.propose(Vec::new(), compact_entry(to));
            }
            if g.raw.raft.has_pending_conf() {
                continue;
            }
            let learners: Vec<u64> = g.store.conf_state().learners.clone();
            for id in learners {
                let caught_up = g
                    .raw
                    .raft
                    .prs()
                    .get(id)
                    .is_some_and(|p| p.matched + 10 >= committed && p.matched > 0);
                if caught_up {
                    let mut cc = ConfChange::default();
                    cc.set_change_type(ConfChangeType::AddNode);
                    cc.node_id = id;
                    let _ = g.raw.propose_conf_change(Vec::new(), cc);
                    break;
                }
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
        for w in take_stale(&mut self.reads, &terms) {
            let _ = w.reply.send(Err(ProposeError::Dropped));
        }
    }

    fn fail(&mut self, why: &dyn std::fmt::Display) {
        for (_, (_, _, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
        for (_, (_, _, w)) in self.reads.drain() {
            let _ = w.reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
        for (_, _, reply) in self.reads_ready.drain(..) {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_string())));
        }
    }

    /// Marks a group active (it ticks at full rate again).
    fn wake(&mut self, group: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.active = Instant::now();
        }
    }

    /// Returns false if the node must stop.
    fn handle(&mut self, input: Input<O>) -> bool {
        match input {
            Input::Message(mut env) => {
                if env.msg.get_msg_type() == MessageType::MsgSnapshot && !self.snapshot_ready(&env)
                {
                    // Being fetched on another thread; stepped when done.
                    return true;
                }
                if self.vote_held(&env) || self.answer_read_from_lease(&env) {
                    return true;
                }
                if let Some(g) = self.groups.get_mut(&env.group) {
                    if !matches!(
                        env.msg.get_msg_type(),
                        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
                    ) {
                        g.active = Instant::now();
                    }
                    if env.msg.get_msg_type() == MessageType::MsgHeartbeat {
                        // A heartbeat commits at most what the leader knows
                        // we have. More means this replica lost data it had
                        // acknowledged (a wiped directory restarted without
                        // --join); do not let raft panic over it.
                        let last = g.raw.raft.raft_log.last_index();
                        if env.msg.commit > last {
                            tracing::error!(
                                group = env.group,
                                commit = env.msg.commit,
                                last,
                                "the leader believes this replica has entries it does not: \
                                 its data was lost; empty the data directory and restart with --join"
                            );
                            env.msg.commit = last;
                        }
                    }
                    let from = env.msg.from;
                    // Stale or unexpected messages are raft's to ignore.
                    let _ = g.raw.step(env.msg);
                    if from != 0 && from == g.raw.raft.leader_id {
                        g.leader_contact = Some(Instant::now());
                    }
                }
            }
            Input::Propose { group, data, reply } => {
                self.wake(group);
                self.propose_tagged(group, reply, |raw, ctx| {
                    raw.propose(ctx, data).map_err(|e| match e {
                        raft::Error::ProposalDropped => ProposeError::Dropped,
                        e => ProposeError::Stopped(e.to_string()),
                    })
                });
            }
            Input::Leaders { groups, reply } => {
                let leaders = groups
                    .iter()
                    .map(|g| self.groups.get(g).map_or(0, |g| g.raw.raft.leader_id))
                    .collect();
                let _ = reply.send(leaders);
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
                    voters: sorted(&g.store.conf_state().voters),
                    learners: sorted(&g.store.conf_state().learners),
                    matched: if g.raw.raft.state == StateRole::Leader {
                        let mut m: Vec<(u64, u64)> = g
                            .raw
                            .raft
                            .prs()
                            .iter()
                            .map(|(id, p)| (*id, p.matched))
                            .collect();
                        m.sort_unstable();
                        m
                    } else {
                        Vec::new()
                    },
                });
                let _ = reply.send(s);
            }
            Input::ReadIndex { group, reply } => {
                self.wake(group);
                let Some(g) = self.groups.get_mut(&group) else {
                    let _ = reply.send(Err(ProposeError::NoGroup(group)));
                    return true;
                };
                // raft-rs drops a read request silently while no leader is
                // known (a group just created, an election under way): say
                // so now, so that the caller retries instead of waiting out
                // its timeout.
                if g.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ProposeError::Dropped));
                    return true;
                }
                if let Some(index) = self.lease_read_index(group) {
                    self.reads_ready.push((group, index, reply));
                    return true;
                }
                let Some(g) = self.groups.get_mut(&group) else {
                    return true;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let term = g.raw.raft.term;
                let now = Instant::now();
                let as_leader = g.raw.raft.state == StateRole::Leader;
                g.raw.read_index(seq.to_be_bytes().to_vec());
                let w = ReadWaiter {
                    reply,
                    issued: now,
                    as_leader,
                };
                self.reads.insert(seq, (group, term, w));
                self.read_sent.insert(seq, now);
            }
            Input::ConfChange { group, cc, reply } => {
                self.wake(group);
                self.propose_tagged(group, reply, |raw, ctx| {
                    // One membership change at a time: retry once the
                    // pending one is applied.
                    if raw.raft.has_pending_conf() {
                        return Err(ProposeError::Dropped);
                    }
                    raw.propose_conf_change(ctx, cc).map_err(|e| match e {
                        raft::Error::ProposalDropped => ProposeError::Dropped,
                        e => ProposeError::Apply(e.to_string()),
                    })
                });
            }
            Input::TransferLeader { group, to } => {
                self.wake(group);
                if let Some(g) = self.groups.get_mut(&group) {
                    g.raw.transfer_leader(to);
                }
            }
            Input::Campaign(group) => {
                self.wake(group);
                if let Some(g) = self.groups.get_mut(&group) {
                    let _ = g.raw.campaign();
                }
            }
            Input::AddGroup {
                group,
                voters,
                sm,
                reply,
            } => {
                let r = if self.groups.contains_key(&group) {
                    Ok(())
                } else {
                    match self.log_engine.clone() {
                        Some(e) => {
                            self.add_group(group, e, &voters, sm)
                                .map_err(|e| RaftError::Group {
                                    group,
                                    why: format!("cannot start: {e}"),
                                })
                        }
                        None => Err(RaftError::Group {
                            group,
                            why: "no raft log engine yet".into(),
                        }),
                    }
                };
                let _ = reply.send(r);
            }
            Input::RemoveGroup { group, reply } => {
                let r = match self.groups.remove(&group) {
                    None => Ok(()),
                    Some(g) => {
                        // Waiters of the group get an answer now.
                        let pending: Vec<u64> = self
                            .pending
                            .iter()
                            .filter(|(_, w)| w.0 == group)
                            .map(|(k, _)| *k)
                            .collect();
                        for k in pending {
                            if let Some((_, _, reply)) = self.pending.remove(&k) {
                                let _ = reply.send(Err(ProposeError::NoGroup(group)));
                            }
                        }
                        g.store.destroy().map_err(|e| RaftError::Group {
                            group,
                            why: format!("cannot delete: {e}"),
                        })
                    }
                };
                let _ = reply.send(r);
            }
            Input::SnapshotDone { env, result } => {
                self.installing.remove(&env.group);
                match result {
                    Ok(()) => {
                        let index = env.msg.get_snapshot().get_metadata().index;
                        self.installed.insert(env.group, index);
                        return self.handle(Input::Message(*env));
                    }
                    Err(e) => {
                        // The state machine may be half-replaced: stop
                        // rather than serve it (it refuses to reopen
                        // until emptied and rejoined).
                        self.fail(&e);
                        return false;
                    }
                }
            }
            Input::Stop => return false,
        }
        true
    }

    /// Whether a MsgSnapshot can be stepped now: true if it needs no data
    /// (stale, this replica not a member of it, or the log already holds
    /// its last entry) or its data is installed; otherwise starts pulling
    /// the image from the sender into the state machine on another thread
    /// (once) and returns false. A failed fetch is retried a few times; if
    /// it still fails, the error stops the node, because the state machine
    /// was already cleared.
    fn snapshot_ready(&mut self, env: &Envelope) -> bool {
        let Some(g) = self.groups.get(&env.group) else {
            return true;
        };
        let meta = env.msg.get_snapshot().get_metadata();
        let cs = meta.get_conf_state();
        let member = cs.voters.contains(&self.id) || cs.learners.contains(&self.id);
        if !member
            || env.msg.term < g.raw.raft.term
            || meta.index <= g.raw.raft.raft_log.committed
            || g.raw.raft.raft_log.match_term(meta.index, meta.term)
        {
            return true;
        }
        if self.installed.get(&env.group) == Some(&meta.index) {
            self.installed.remove(&env.group);
            return true;
        }
        if self.installing.contains_key(&env.group) {
            return false;
        }
        let (group, index, from) = (env.group, meta.index, env.msg.from);
        self.installing.insert(group, index);
        let sm = g.sm.clone();
        let transport = self.transport.clone();
        let tx = self.tx.clone();
        let env = Box::new(env.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-{group}"))
            .spawn(move || {
                let result = fetch_snapshot(&*transport, &*sm, group, index, from);
                let _ = tx.send(Input::SnapshotDone { env, result });
            });
        if let Err(e) = spawned {
            self.installing.remove(&group);
            tracing::warn!(group, error = %e, "cannot start a snapshot fetch; will retry");
        }
        false
    }

    /// Proposes through `propose` with a context tagging the entry as this
    /// node's (id, sequence), and remembers `reply` until that entry is
    /// applied here (or the term moves on).
    fn propose_tagged(
        &mut self,
        group: u64,
        reply: SyncSender<Result<O, ProposeError>>,
        propose: impl FnOnce(&mut RawNode<RaftLogStore<E>>, Vec<u8>) -> Result<(), ProposeError>,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            let _ = reply.send(Err(ProposeError::NoGroup(group)));
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ctx = self.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&seq.to_be_bytes());
        let term = g.raw.raft.term;
        match propose(&mut g.raw, ctx) {
            Ok(()) => {
                self.pending.insert(seq, (group, term, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn send(&mut self, group: u64, msgs: Vec<raft::eraftpb::Message>) {
        if msgs.is_empty() {
            return;
        }
        // The receiver pulls a snapshot's image itself. Report it as sent
        // at once: raft then probes the follower, which either accepts the
        // next entries (installed) or rejects them and is offered a
        // snapshot again.
        let snap_to: Vec<u64> = msgs
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow)
        {
            // The transferee may now be elected inside the voters' lease.
            if let Some(g) = self.groups.get_mut(&group) {
                let term = g.raw.raft.term;
                g.lease.revoke(term);
            }
        }
        self.transport.send(
            msgs.into_iter()
                .map(|msg| Envelope { group, msg })
                .collect(),
        );
        if let Some(g) = self.groups.get_mut(&group) {
            for to in snap_to {
                g.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    /// Handles the `Ready` of every group in `ids`, in raft-rs's
    /// `examples/five_mem_node` order: send messages, apply the snapshot,
    /// apply committed entries, append entries and persist the hard state
    /// (one synced batch per engine for all groups), send the persisted
    /// messages, advance, handle the light ready, advance the apply index.
    fn on_ready_all(&mut self, ids: &[u64]) -> Result<(), RaftError> {
        let mut staged: Vec<(u64, raft::Ready)> = Vec::new();
        let mut batches: Vec<(Arc<E>, LogBatch)> = Vec::new();
        for &gid in ids {
            if self.installing.contains_key(&gid) {
                // Its state machine is being replaced on another thread.
                continue;
            }
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            if !g.raw.has_ready() {
                continue;
            }
            let mut ready = g.raw.ready();
            for rs in ready.take_read_states() {
                if rs.request_ctx.len() == 8 {
                    let seq = u64::from_be_bytes(rs.request_ctx[..8].try_into().unwrap());
                    self.read_confirmed(gid, seq, rs.index);
                }
            }
            let msgs = ready.take_messages();
            let snap_empty = ready.snapshot().get_metadata().index == 0;
            let snapshot = ready.snapshot().clone();
            let committed = ready.take_committed_entries();
            self.send(gid, msgs);
            if !snap_empty {
                // The image is already in the state machine (fetched before
                // the message was stepped); adopt its metadata.
                let g = self.groups.get_mut(&gid).expect("group exists");
                g.store.apply_snapshot(&snapshot).map_err(group_err(gid))?;
            }
            self.apply(gid, committed)?;
            let g = self.groups.get_mut(&gid).expect("group exists");
            let engine = g.store.engine().clone();
            let i = match batches.iter().position(|(e, _)| Arc::ptr_eq(e, &engine)) {
                Some(i) => i,
                None => {
                    batches.push((engine, LogBatch::default()));
                    batches.len() - 1
                }
            };
            g.store
                .stage(ready.entries(), ready.hs(), &mut batches[i].1)
                .map_err(group_err(gid))?;
            staged.push((gid, ready));
        }
        for (engine, b) in batches {
            if !b.is_empty() {
                engine.write(b, true)?;
            }
        }
        for (gid, mut ready) in staged {
            let persisted = ready.take_persisted_messages();
            self.send(gid, persisted);
            let g = self.groups.get_mut(&gid).expect("group exists");
            let mut light = g.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                g.store.set_commit(commit).map_err(group_err(gid))?;
            }
            let msgs = light.take_messages();
            let committed = light.take_committed_entries();
            self.send(gid, msgs);
            self.apply(gid, committed)?;
            let g = self.groups.get_mut(&gid).expect("group exists");
            g.raw.advance_apply();
        }
        Ok(())
    }

    fn apply(&mut self, gid: u64, entries: Vec<Entry>) -> Result<(), RaftError> {
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
                    // Entries up to `to` were applied before this one; make
                    // them durable in the store before the log lets go.
                    g.sm.sync_applied(e.index - 1)?;
                    g.store.set_applied(e.index - 1).map_err(group_err(gid))?;
                    g.store.compact(to).map_err(group_err(gid))?;
                    None
                }
                EntryType::EntryNormal => Some(g.sm.apply(e.index, &e.data)),
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).map_err(group_err(gid))?;
                    // The context of an addition is the node's address.
                    if cc.get_change_type() != ConfChangeType::RemoveNode && !cc.context.is_empty()
                    {
                        let addr = String::from_utf8_lossy(&cc.context).into_owned();
                        store_peer_address(g.store.engine().as_ref(), cc.node_id, &addr)
                            .map_err(group_err(gid))?;
                        self.transport.set_peer(cc.node_id, &addr);
                    }
                    // An invalid change is refused the same way on every
                    // replica; the membership stays as it was.
                    g.lease.fence(Instant::now());
                    match g.raw.apply_conf_change(&cc) {
                        Ok(cs) => {
                            g.store.set_conf_state(cs).map_err(group_err(gid))?;
                            None
                        }
                        Err(err) => Some(Err(ApplyError::Rejected(err.to_string()))),
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data).map_err(group_err(gid))?;
                    g.lease.fence(Instant::now());
                    match g.raw.apply_conf_change(&cc) {
                        Ok(cs) => {
                            g.store.set_conf_state(cs).map_err(group_err(gid))?;
                            None
                        }
                        Err(err) => Some(Err(ApplyError::Rejected(err.to_string()))),
                    }
                }
            };
            if let Some(Err(ApplyError::Fatal(why))) = &result {
                // A state machine that cannot apply a committed entry must
                // not go on: replicas would diverge.
                return Err(RaftError::Apply {
                    index: e.index,
                    why: why.clone(),
                });
            }
            if e.context.len() == 16 {
                let node = u64::from_be_bytes(e.context[..8].try_into().unwrap());
                let seq = u64::from_be_bytes(e.context[8..].try_into().unwrap());
                if node == self.id {
                    if let Some((_, _, reply)) = self.pending.remove(&seq) {
                        let _ = reply.send(match result {
                            Some(Ok(out)) => Ok(out),
                            Some(Err(why)) => Err(ProposeError::Apply(why.to_string())),
                            None => Ok(O::default()),
                        });
                    }
                }
            }
        }
        let g = self.groups.get_mut(&gid).expect("group exists");
        g.store.set_applied(last).map_err(group_err(gid))
    }
}
