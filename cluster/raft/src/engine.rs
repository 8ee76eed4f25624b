//! What the raft layer needs from a key-value engine, and what it streams
//! in a snapshot. The node adapts its storage engine to these traits; the
//! raft crate never sees a `MetaStore`.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

/// The engine failed. The node must stop: a raft log that cannot be read
/// or written can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("raft log engine: {0}")]
pub struct EngineError(pub String);

/// One operation of a [`LogBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes the keys in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Operations applied atomically by [`LogEngine::write`], in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBatch {
    pub ops: Vec<LogOp>,
}

impl LogBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(LogOp::Put(key, value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(LogOp::Delete(key));
    }

    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(LogOp::DeleteRange(start, end));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The ordered key-value engine the raft logs of a node's groups live in
/// (all groups share one; keys are prefixed per group).
///
/// Contract:
/// - `write` is atomic; with `sync = true` it returns only once the batch
///   survives a process kill or power loss. Raft's hard state and entries
///   are written with `sync = true` before messages that depend on them
///   are sent.
/// - Reads see every write that returned before them.
/// - An `Err` from any method means the engine can no longer be trusted:
///   the raft loop stops rather than retrying.
pub trait LogEngine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    fn write(&self, batch: LogBatch, sync: bool) -> Result<(), EngineError>;

    /// Visits the keys in `[start, end)` in ascending order until `f`
    /// returns false.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;

    /// Visits the keys in `[start, end)` in descending order until `f`
    /// returns false.
    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;
}

/// A read-only, point-in-time image of a state machine, streamed to a
/// replica that fell behind the compacted log. It must not change while it
/// is read, whatever the state machine applies meanwhile.
pub trait SnapshotView: Send + Sync {
    /// Visits the keys in `[start, end)` in ascending order until `f`
    /// returns false.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;
}

/// An in-memory [`LogEngine`] for tests: a sorted map under a lock.
#[derive(Default)]
pub struct MemLog {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl LogEngine for MemLog {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.map.read().get(key).cloned())
    }

    fn write(&self, batch: LogBatch, _sync: bool) -> Result<(), EngineError> {
        let mut m = self.map.write();
        for op in batch.ops {
            match op {
                LogOp::Put(k, v) => {
                    m.insert(k, v);
                }
                LogOp::Delete(k) => {
                    m.remove(&k);
                }
                LogOp::DeleteRange(s, e) => {
                    let doomed: Vec<Vec<u8>> = m
                        .range::<[u8], _>((Bound::Included(&s[..]), Bound::Excluded(&e[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        let m = self.map.read();
        for (k, v) in m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        let m = self.map.read();
        for (k, v) in m
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .rev()
        {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}
