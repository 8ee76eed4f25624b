//! Replication: every shard is a raft-rs group.
//!
//! - [`log_store::RaftLogStore`]: the durable raft state of many groups in
//!   one engine, written in the order raft-rs requires.
//! - [`node::RaftNode`]: one thread per node drives all its groups (no
//!   thread per group); [`node::RaftHandle`] proposes commands and waits
//!   for them to be applied.
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
pub mod transport;

use std::sync::Arc;

use hourcell_storage::{ApplyOutcome, Command, KvEngine, SliceStore};

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
        let r = self.store.apply(&cmd);
        self.apply_latency.observe(t0.elapsed());
        r.map_err(|e| {
            if e.is_fatal() {
                ApplyError::Fatal(e.to_string())
            } else {
                ApplyError::Rejected(e.to_string())
            }
        })
    }
}
