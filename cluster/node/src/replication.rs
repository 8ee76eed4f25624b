//! The hourcell side of replication: every shard is a raft group of
//! `hourcell-raft`, whose state machine is a [`MetaStore`] that applies
//! [`Command`]s ([`StoreMachine`]), and whose log lives in a storage engine
//! adapted to the raft crate's [`LogEngine`] ([`KvLog`]).

use std::sync::Arc;

use hourcell_raft::snapshot::Pairs;
use hourcell_raft::{
    ApplyError, EngineError, LogBatch, LogEngine, MachineError, SnapshotView, StateMachine,
};
use hourcell_storage::{ApplyOutcome, Command, FrozenView, KvEngine, Role, Store, WriteBatch};

pub use hourcell_raft::transport::{self, Envelope, Inbox, Transport};
pub use hourcell_raft::{
    log_store, snapshot, ConfChange, ConfChangeType, GroupStatus, ProposeError, RaftError,
    RaftTiming,
};

/// Raft handles and nodes of hourcell groups: applying a command answers
/// with an [`ApplyOutcome`].
pub type RaftHandle = hourcell_raft::RaftHandle<ApplyOutcome>;
pub type RaftNode<E> = hourcell_raft::RaftNode<KvLog<E>, ApplyOutcome>;

/// A storage engine holding raft logs.
pub struct KvLog<E: KvEngine>(pub Arc<E>);

fn engine_err(e: hourcell_storage::StorageError) -> EngineError {
    EngineError(e.to_string())
}

impl<E: KvEngine> LogEngine for KvLog<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.0.get(key).map_err(engine_err)
    }

    fn write(&self, batch: LogBatch, sync: bool) -> Result<(), EngineError> {
        let mut b = WriteBatch::default();
        for op in batch.ops {
            match op {
                hourcell_raft::engine::LogOp::Put(k, v) => b.put(k, v),
                hourcell_raft::engine::LogOp::Delete(k) => b.delete(k),
                hourcell_raft::engine::LogOp::DeleteRange(s, e) => b.delete_range(s, e),
            }
        }
        self.0.write(b, sync).map_err(engine_err)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        self.0.scan(start, end, f).map_err(engine_err)
    }

    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        self.0.scan_rev(start, end, f).map_err(engine_err)
    }
}

/// A frozen store image as a raft snapshot view.
struct FrozenImage(Arc<dyn FrozenView>);

impl SnapshotView for FrozenImage {
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        self.0.scan(start, end, f).map_err(engine_err)
    }
}

/// A group's replica: applies committed commands to its [`Store`] (the
/// metadata store, or a data shard's).
pub struct StoreMachine<E: KvEngine, R: Role> {
    pub store: Arc<Store<E, R>>,
    pub apply_latency: prometheus_client::metrics::histogram::Histogram,
}

impl<E: KvEngine, R: Role> StoreMachine<E, R> {
    pub fn new(store: Arc<Store<E, R>>) -> Self {
        Self {
            store,
            apply_latency: crate::metrics::latency_histogram(),
        }
    }
}

fn machine_err(e: hourcell_storage::StorageError) -> MachineError {
    MachineError(e.to_string())
}

impl<E: KvEngine, R: Role> StateMachine<ApplyOutcome> for StoreMachine<E, R> {
    fn apply(&self, index: u64, data: &[u8]) -> Result<ApplyOutcome, ApplyError> {
        let cmd = Command::decode(data)
            .map_err(|e| ApplyError::Fatal(format!("entry {index} does not decode: {e}")))?;
        let t0 = std::time::Instant::now();
        // Not synced: the raft log is the durable copy (see
        // `StateMachine::durable_applied`).
        let r = self.store.apply_at(&cmd, index, false);
        self.apply_latency.observe(t0.elapsed().as_secs_f64());
        r.map_err(|e| {
            if e.is_fatal() {
                ApplyError::Fatal(e.to_string())
            } else {
                ApplyError::Rejected(e.to_string())
            }
        })
    }

    fn freeze(&self) -> Result<Arc<dyn SnapshotView>, MachineError> {
        let view = self.store.freeze().map_err(machine_err)?;
        Ok(Arc::new(FrozenImage(view)))
    }

    fn begin_restore(&self) -> Result<(), MachineError> {
        self.store.begin_restore().map_err(machine_err)
    }

    fn restore_chunk(&self, pairs: Pairs) -> Result<(), MachineError> {
        self.store.restore_chunk(pairs).map_err(machine_err)
    }

    fn finish_restore(&self) -> Result<(), MachineError> {
        self.store.finish_restore().map_err(machine_err)
    }

    fn durable_applied(&self) -> Option<u64> {
        self.store.durable_applied().ok().flatten()
    }

    fn sync_applied(&self, index: u64) -> Result<(), MachineError> {
        self.store.sync_applied(index).map_err(machine_err)
    }
}
