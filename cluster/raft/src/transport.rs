//! How raft messages travel between nodes.
//!
//! A message is wrapped in an [`Envelope`] naming its group (raft-rs
//! messages do not know about groups). [`Transport`] is what a
//! [`crate::node::RaftNode`] sends through; [`SimNetwork`] is the in-process
//! implementation for tests, with composable filters that drop, partition
//! and isolate (after TiKV's `transport_simulate.rs`). The gRPC transport
//! carries the same envelopes as bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::error::SnapshotError;
use crate::snapshot::{Pairs, Snapshots};

/// Where a node's incoming raft messages go (its raft loop); `deliver`
/// says false once the loop has exited. Cheap to clone.
#[derive(Clone)]
pub struct Inbox(Arc<dyn Fn(Envelope) -> bool + Send + Sync>);

impl Inbox {
    pub fn new(f: impl Fn(Envelope) -> bool + Send + Sync + 'static) -> Self {
        Inbox(Arc::new(f))
    }

    /// Hands `env` to the raft loop.
    pub fn deliver(&self, env: Envelope) -> bool {
        (self.0)(env)
    }
}

/// An envelope that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes is too short")]
    TooShort(usize),
    #[error("bad raft message: {0}")]
    Message(String),
}

/// A raft message for one group.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub group: u64,
    pub msg: Message,
}

impl Envelope {
    /// `group` (8 bytes, big-endian) then the protobuf message: what the
    /// gRPC transport carries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.group.to_be_bytes().to_vec();
        out.extend(
            self.msg
                .write_to_bytes()
                .expect("raft messages always encode"),
        );
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, EnvelopeError> {
        if b.len() < 8 {
            return Err(EnvelopeError::TooShort(b.len()));
        }
        let group = u64::from_be_bytes(b[..8].try_into().unwrap());
        let msg = Message::parse_from_bytes(&b[8..])
            .map_err(|e| EnvelopeError::Message(e.to_string()))?;
        Ok(Self { group, msg })
    }
}

/// Sends raft messages to other nodes. Best effort: raft retries what is
/// lost, so `send` never blocks on a slow peer and never fails the caller.
pub trait Transport: Send + Sync {
    fn send(&self, msgs: Vec<Envelope>);

    /// Pulls the snapshot image that node `from` offered for `group` at
    /// `index`, handing it to `sink` chunk by chunk. Blocks until the
    /// stream ends.
    fn fetch_snapshot(
        &self,
        from: u64,
        group: u64,
        index: u64,
        sink: &mut dyn FnMut(Pairs) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError>;

    /// Learns (or changes) node `id`'s address, from a membership change.
    fn set_peer(&self, _id: u64, _addr: &str) {}
}

/// A rule that may drop a message in the simulated network.
pub trait Filter: Send + Sync {
    /// Whether `env` (from `env.msg.from` to `env.msg.to`) gets through.
    fn allow(&self, env: &Envelope) -> bool;
}

/// Drops every message to or from the isolated nodes.
pub struct Isolate(pub HashSet<u64>);

impl Filter for Isolate {
    fn allow(&self, env: &Envelope) -> bool {
        !self.0.contains(&env.msg.from) && !self.0.contains(&env.msg.to)
    }
}

/// Splits the nodes in two sides that cannot talk to each other.
pub struct Partition(pub HashSet<u64>, pub HashSet<u64>);

impl Filter for Partition {
    fn allow(&self, env: &Envelope) -> bool {
        let (f, t) = (env.msg.from, env.msg.to);
        !((self.0.contains(&f) && self.1.contains(&t))
            || (self.1.contains(&f) && self.0.contains(&t)))
    }
}

/// Drops a pseudo-random share of messages, deterministically from a seed.
pub struct DropRate {
    pub per_mille: u64,
    pub seed: u64,
    pub counter: std::sync::atomic::AtomicU64,
}

impl Filter for DropRate {
    fn allow(&self, _env: &Envelope) -> bool {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut x = (n ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 31;
        x % 1000 >= self.per_mille
    }
}

/// The in-process network of a test cluster.
#[derive(Default, Clone)]
pub struct SimNetwork {
    inboxes: Arc<RwLock<HashMap<u64, Inbox>>>,
    snapshots: Arc<RwLock<HashMap<u64, Arc<Snapshots>>>>,
    filters: Arc<RwLock<Vec<Box<dyn Filter>>>>,
    /// Milliseconds each snapshot fetch waits before streaming (a slow
    /// link), for tests.
    snapshot_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SimNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a started node: its inbox and the snapshots it offers.
    pub fn register(&self, node: u64, inbox: Inbox, snapshots: Arc<Snapshots>) {
        self.inboxes.write().insert(node, inbox);
        self.snapshots.write().insert(node, snapshots);
    }

    /// A node that is down: nothing reaches it.
    pub fn unregister(&self, node: u64) {
        self.inboxes.write().remove(&node);
        self.snapshots.write().remove(&node);
    }

    pub fn add_filter(&self, f: Box<dyn Filter>) {
        self.filters.write().push(f);
    }

    pub fn clear_filters(&self) {
        self.filters.write().clear();
    }

    /// Makes every snapshot fetch wait `ms` first.
    pub fn set_snapshot_delay(&self, ms: u64) {
        self.snapshot_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Transport for SimNetwork {
    fn send(&self, msgs: Vec<Envelope>) {
        let inboxes = self.inboxes.read();
        let filters = self.filters.read();
        for env in msgs {
            if !filters.iter().all(|f| f.allow(&env)) {
                continue;
            }
            if let Some(inbox) = inboxes.get(&env.msg.to) {
                inbox.deliver(env);
            }
        }
    }

    fn fetch_snapshot(
        &self,
        from: u64,
        group: u64,
        index: u64,
        sink: &mut dyn FnMut(Pairs) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let snaps = self
            .snapshots
            .read()
            .get(&from)
            .cloned()
            .ok_or_else(|| SnapshotError::Transfer(format!("node {from} is down")))?;
        let delay = self
            .snapshot_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        snaps.stream(group, index, sink)
    }
}
