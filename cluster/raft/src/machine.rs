//! The contract of a replicated state machine.

use std::sync::Arc;

use crate::engine::SnapshotView;
use crate::error::{ApplyError, MachineError};
use crate::snapshot::Pairs;

/// The replicated state machine of a group. `apply` must be deterministic
/// (no clock, no randomness: the same entries give the same bytes on every
/// replica) and idempotent (an entry may be applied again after a crash
/// between the state machine's write and the apply index's).
///
/// `O` is what applying a command tells the node that proposed it.
pub trait StateMachine<O>: Send + Sync {
    /// Applies one committed command.
    fn apply(&self, index: u64, data: &[u8]) -> Result<O, ApplyError>;

    /// A point-in-time image of everything applied so far (for a snapshot).
    fn freeze(&self) -> Result<Arc<dyn SnapshotView>, MachineError>;

    /// Replacing the contents with a snapshot image: clear and mark, write
    /// the chunks, then check, unmark and reload. A crash in between leaves
    /// the mark, and the replica refuses to open rather than serve a
    /// partial copy.
    fn begin_restore(&self) -> Result<(), MachineError>;
    fn restore_chunk(&self, pairs: Pairs) -> Result<(), MachineError>;
    fn finish_restore(&self) -> Result<(), MachineError>;

    /// Applies need not be synced: the raft log holds the commands. The
    /// state machine remembers, in the same writes, the index of the last
    /// command it holds; after a power loss it may be behind the recorded
    /// apply index, and the log is replayed from there.
    fn durable_applied(&self) -> Option<u64>;

    /// Makes everything applied up to `index` durable (before the log
    /// drops those entries, and after a snapshot is installed).
    fn sync_applied(&self, index: u64) -> Result<(), MachineError>;
}

/// What a proposer gets back once its command is applied: the state
/// machine's answer, or its default for entries raft applies itself
/// (membership changes, log compaction).
pub trait Outcome: Default + Send + 'static {}

impl<T: Default + Send + 'static> Outcome for T {}
