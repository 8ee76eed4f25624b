//! [`RaftHandle`]: how the rest of the node talks to the raft loop, from
//! any thread: proposals, membership changes, read barriers, status.

use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::ConfChange;

use crate::error::{ProposeError, RaftError, SnapshotError};
use crate::machine::{Outcome, StateMachine};
use crate::snapshot::Snapshots;
use crate::transport::{Envelope, Inbox};

pub enum Input<O> {
    Message(Envelope),
    Propose {
        group: u64,
        data: Vec<u8>,
        reply: SyncSender<Result<O, ProposeError>>,
    },
    /// Reports the group's role and leader to `reply`.
    Status {
        group: u64,
        reply: SyncSender<Option<GroupStatus>>,
    },
    /// Reports the leader each of `groups` knows of (0: none known, or a
    /// group not hosted here), in order: one round for many groups.
    Leaders {
        groups: Vec<u64>,
        reply: SyncSender<Vec<u64>>,
    },
    /// A linearizable read barrier (ReadIndex): replies once this replica
    /// has applied everything committed when the read arrived at the
    /// leader.
    ReadIndex {
        group: u64,
        reply: SyncSender<Result<(), ProposeError>>,
    },
    /// Proposes a membership change; replies once it is applied here.
    ConfChange {
        group: u64,
        cc: ConfChange,
        reply: SyncSender<Result<O, ProposeError>>,
    },
    /// Asks the leader of `group` (this node) to hand over to `to`.
    TransferLeader {
        group: u64,
        to: u64,
    },
    Campaign(u64),
    /// Starts hosting a group while the loop runs (a new shard), with the
    /// log in the engine of the groups added before `spawn`. A group this
    /// node already hosts is left as it is.
    AddGroup {
        group: u64,
        voters: Vec<u64>,
        sm: Arc<dyn StateMachine<O>>,
        reply: SyncSender<Result<(), RaftError>>,
    },
    /// Stops hosting a group and deletes its raft state (a dropped shard).
    RemoveGroup {
        group: u64,
        reply: SyncSender<Result<(), RaftError>>,
    },
    /// A snapshot fetched off the raft thread was installed into the state
    /// machine (or failed); `env` is the leader's MsgSnapshot, to step now.
    SnapshotDone {
        env: Box<Envelope>,
        result: Result<(), SnapshotError>,
    },
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
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On the leader: the highest index known replicated on each member.
    pub matched: Vec<(u64, u64)>,
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
    /// matched by every member.
    pub compact_after: u64,
    /// A member further behind than this many entries no longer holds
    /// compaction back: it will catch up from a snapshot. This bounds the
    /// log (and its disk) while a replica is down.
    pub max_lag: u64,
    /// A group quiet this long ticks only every [`IDLE_TICK_EVERY`]th
    /// round (see [`Group::active`]).
    pub idle_after: Duration,
    /// Whether a leader answers read barriers from its lease (see
    /// [`crate::lease`]); off, every read barrier takes a heartbeat round.
    pub read_lease: bool,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            compact_after: 1_000,
            max_lag: 10_000,
            idle_after: Duration::from_secs(30),
            read_lease: true,
        }
    }
}

/// A handle to a running [`RaftNode`]: cheap to clone, usable from any
/// thread.
pub struct RaftHandle<O> {
    pub(crate) id: u64,
    pub(crate) tx: Sender<Input<O>>,
    pub(crate) snapshots: Arc<Snapshots>,
}

impl<O> Clone for RaftHandle<O> {
    fn clone(&self) -> Self {
        RaftHandle {
            id: self.id,
            tx: self.tx.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

impl<O: Outcome> RaftHandle<O> {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the transport delivers this node's incoming raft messages.
    pub fn inbox(&self) -> Inbox {
        let tx = self.tx.clone();
        Inbox::new(move |env| tx.send(Input::Message(env)).is_ok())
    }

    /// The snapshot images this node offers to its peers.
    pub fn snapshots(&self) -> Arc<Snapshots> {
        self.snapshots.clone()
    }

    /// Proposes a membership change to `group` and waits until this node
    /// has applied it. An invalid change (removing the last voter, adding a
    /// voter as a learner) comes back as `Apply`.
    pub fn change_membership(
        &self,
        group: u64,
        cc: ConfChange,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        self.ask(|reply| Input::ConfChange { group, cc, reply }, timeout)
            .map(|_| ())
    }

    /// Asks this node, if it leads `group`, to hand leadership to `to`.
    pub fn transfer_leader(&self, group: u64, to: u64) {
        let _ = self.tx.send(Input::TransferLeader { group, to });
    }

    /// Sends the input `make` builds around a reply channel and waits for
    /// the answer.
    fn ask<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, ProposeError>>) -> Input<O>,
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

    /// Sends every request `make` builds, then waits for all replies (each
    /// until `timeout` from now): one round of several groups at once.
    fn ask_many<T, I>(
        &self,
        items: Vec<I>,
        make: impl Fn(I, SyncSender<Result<T, ProposeError>>) -> Input<O>,
        timeout: Duration,
    ) -> Vec<Result<T, ProposeError>> {
        let deadline = std::time::Instant::now() + timeout;
        let stopped = || ProposeError::Stopped("node loop has exited".into());
        let rxs: Vec<_> = items
            .into_iter()
            .map(|i| {
                let (reply, rx) = mpsc::sync_channel(1);
                self.tx
                    .send(make(i, reply))
                    .map(|_| rx)
                    .map_err(|_| stopped())
            })
            .collect();
        rxs.into_iter()
            .map(|rx| {
                let rx = rx?;
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => Err(ProposeError::Timeout(timeout)),
                    Err(RecvTimeoutError::Disconnected) => Err(stopped()),
                }
            })
            .collect()
    }

    /// [`RaftHandle::propose`] to several groups at once: `(group, data)`
    /// each, results in the same order.
    pub fn propose_many(
        &self,
        items: Vec<(u64, Vec<u8>)>,
        timeout: Duration,
    ) -> Vec<Result<O, ProposeError>> {
        self.ask_many(
            items,
            |(group, data), reply| Input::Propose { group, data, reply },
            timeout,
        )
    }

    /// [`RaftHandle::read_index`] on several groups at once.
    pub fn read_index_many(
        &self,
        groups: &[u64],
        timeout: Duration,
    ) -> Vec<Result<(), ProposeError>> {
        self.ask_many(
            groups.to_vec(),
            |group, reply| Input::ReadIndex { group, reply },
            timeout,
        )
    }

    /// Proposes `data` (an encoded command) to `group` and waits until this
    /// node has applied it.
    pub fn propose(&self, group: u64, data: Vec<u8>, timeout: Duration) -> Result<O, ProposeError> {
        self.ask(|reply| Input::Propose { group, data, reply }, timeout)
    }

    /// Waits until this replica may serve a linearizable read of `group`:
    /// the leader confirms its leadership with a quorum (ReadIndex), or
    /// answers from its lease (see [`crate::lease`]), and this replica
    /// applies up to the read index.
    pub fn read_index(&self, group: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.ask(|reply| Input::ReadIndex { group, reply }, timeout)
    }

    /// The leader each of `groups` knows of, in order (0: none known, or
    /// not hosted here); all zeros if the loop does not answer in 5 s.
    /// One trip through the loop, where [`RaftHandle::status`] takes one
    /// a group.
    pub fn leaders(&self, groups: &[u64]) -> Vec<u64> {
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = self.tx.send(Input::Leaders {
            groups: groups.to_vec(),
            reply,
        });
        sent.ok()
            .and_then(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
            .filter(|l| l.len() == groups.len())
            .unwrap_or_else(|| vec![0; groups.len()])
    }

    pub fn status(&self, group: u64) -> Option<GroupStatus> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(Input::Status { group, reply }).ok()?;
        rx.recv_timeout(Duration::from_secs(5)).ok().flatten()
    }

    /// Starts hosting `group` (see [`Input::AddGroup`]).
    pub fn add_group(
        &self,
        group: u64,
        voters: Vec<u64>,
        sm: Arc<dyn StateMachine<O>>,
        timeout: Duration,
    ) -> Result<(), RaftError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Input::AddGroup {
                group,
                voters,
                sm,
                reply,
            })
            .map_err(|_| RaftError::Stopped)?;
        rx.recv_timeout(timeout)
            .map_err(|_| RaftError::Timeout(timeout))?
    }

    /// Stops hosting `group` and deletes its raft state.
    pub fn remove_group(&self, group: u64, timeout: Duration) -> Result<(), RaftError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Input::RemoveGroup { group, reply })
            .map_err(|_| RaftError::Stopped)?;
        rx.recv_timeout(timeout)
            .map_err(|_| RaftError::Timeout(timeout))?
    }

    /// Starts an election in `group` now (tests, leader transfer).
    pub fn campaign(&self, group: u64) {
        let _ = self.tx.send(Input::Campaign(group));
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}
