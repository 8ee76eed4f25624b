//! Replication: every shard is a raft-rs group.
//!
//! - [`log_store::RaftLogStore`]: the durable raft state of many groups in
//!   one engine, written in the order raft-rs requires.
//! - [`node::RaftNode`]: one thread per node drives all its groups (no
//!   thread per group); [`node::RaftHandle`] proposes commands and waits
//!   for them to be applied.
//! - [`snapshot`]: frozen state-machine images offered to replicas that
//!   fell behind the compacted log or join fresh, pulled in chunks.
//! - [`transport`]: envelopes (group + raft message, carried as bytes on
//!   the wire) and the in-process [`transport::SimNetwork`] with fault
//!   filters for tests.
//! - [`StoreMachine`]: the hourcell state machine, a [`SliceStore`] that
//!   applies [`Command`]s.
//!
//! raft-rs speaks rust-protobuf 2; its messages stay inside this module and
//! travel as bytes inside our own tonic protocol.

pub mod grpc;
pub mod log_store;
pub mod node;
pub mod snapshot;
pub mod transport;

use std::sync::Arc;

use hourcell_storage::{ApplyOutcome, Command, FrozenView, KvEngine, SliceStore};

/// Membership changes, as raft-rs spells them.
pub use raft::eraftpb::{ConfChange, ConfChangeType};

pub use node::{
    ApplyError, GroupStatus, ProposeError, RaftHandle, RaftNode, RaftTiming, StateMachine,
};

/// A shard's replica: applies committed commands to its [`SliceStore`].
pub struct StoreMachine<E: KvEngine> {
    pub store: Arc<SliceStore<E>>,
    pub apply_latency: Arc<crate::metrics::Histogram>,
}

impl<E: KvEngine> StoreMachine<E> {
    pub fn new(store: Arc<SliceStore<E>>) -> Self {
        Self {
            store,
            apply_latency: Arc::default(),
        }
    }
}

impl<E: KvEngine> StateMachine for StoreMachine<E> {
    fn apply(&self, index: u64, data: &[u8]) -> Result<ApplyOutcome, ApplyError> {
        let cmd = Command::decode(data)
            .map_err(|e| ApplyError::Fatal(format!("entry {index} does not decode: {e}")))?;
        let t0 = std::time::Instant::now();
        // Not synced: the raft log is the durable copy (see
        // `StateMachine::durable_applied`).
        let r = self.store.apply_at(&cmd, index, false);
        self.apply_latency.observe(t0.elapsed());
        r.map_err(|e| {
            if e.is_fatal() {
                ApplyError::Fatal(e.to_string())
            } else {
                ApplyError::Rejected(e.to_string())
            }
        })
    }

    fn freeze(&self) -> Result<Arc<dyn FrozenView>, String> {
        self.store.freeze().map_err(|e| e.to_string())
    }

    fn begin_restore(&self) -> Result<(), String> {
        self.store.begin_restore().map_err(|e| e.to_string())
    }

    fn restore_chunk(&self, pairs: snapshot::Pairs) -> Result<(), String> {
        self.store.restore_chunk(pairs).map_err(|e| e.to_string())
    }

    fn finish_restore(&self) -> Result<(), String> {
        self.store.finish_restore().map_err(|e| e.to_string())
    }

    fn durable_applied(&self) -> Option<u64> {
        self.store.durable_applied().ok().flatten()
    }

    fn sync_applied(&self, index: u64) -> Result<(), String> {
        self.store.sync_applied(index).map_err(|e| e.to_string())
    }
}
