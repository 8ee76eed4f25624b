//! The ordered key-value interface that the store is written against.

use crate::error::Result;

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    /// Combine the operand with the current value through
    /// [`crate::codec::merge_values`] (set union for slices and the person
    /// index). Merges are associative and idempotent, which is what makes a
    /// re-sent or re-applied batch change nothing.
    Merge(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Removes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// An atomic group of writes: all of it becomes visible and durable, or none.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(key, value));
    }
    pub fn merge(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Merge(key, value));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete(key));
    }
    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(Op::DeleteRange(start, end));
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered byte-key store.
///
/// Contract (checked by the shared suite in `storage/tests/suite.rs`):
/// - `write` is atomic; with `sync = true` it returns only once the batch
///   survives a process kill or power loss.
/// - Reads see every write that returned before them.
/// - `Merge` operands are combined with [`crate::codec::merge_values`]; the
///   result must not depend on when the engine chooses to combine them.
/// - An `Err` from any method means the engine can no longer be trusted: the
///   caller stops serving rather than retrying.
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()>;

    /// Visits the keys in `[start, end)` in ascending order until `f`
    /// returns false.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool)
        -> Result<()>;

    /// Visits the keys of each range `[start, end)` in turn, in ascending
    /// order, until `f` returns false. `ranges` must be sorted and must not
    /// overlap. The same as one `scan` per range; an engine may do it with
    /// one cursor (who-was-at reads up to 16 ranges per day, and opening a
    /// RocksDB iterator per range cost more than reading the ranges).
    fn scan_ranges(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut go = true;
        for (start, end) in ranges {
            self.scan(start, end, &mut |k, v| {
                go = f(k, v);
                go
            })?;
            if !go {
                break;
            }
        }
        Ok(())
    }

    /// Visits the keys in `[start, end)` in descending order until `f`
    /// returns false.
    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// Bytes the data occupies on disk (live files), or an in-memory
    /// estimate.
    fn disk_bytes(&self) -> u64;

    /// Flushes memtables and compacts, so that size measurements are honest.
    fn compact(&self) -> Result<()>;

    /// Compacts `[start, end)`, so that deleted data leaves the disk.
    fn compact_range(&self, start: &[u8], end: &[u8]) -> Result<()>;

    /// A consistent point-in-time copy of every key, readable while writes
    /// go on: what a raft snapshot streams to a replica that fell behind.
    /// RocksDB makes a checkpoint (hard-linked files, removed when the view
    /// is dropped), so the copy costs little disk and no memory.
    fn freeze(&self) -> Result<std::sync::Arc<dyn FrozenView>>;
}

/// A visitor that may fail: `Ok(false)` stops the scan, `Err` stops it
/// and is returned.
pub type TryVisit<'a, Er> = dyn FnMut(&[u8], &[u8]) -> Result<bool, Er> + 'a;

/// Scans whose visitor can fail (most decode what they visit): the first
/// error stops the scan and is returned, so that callers propagate it with
/// `?` instead of smuggling it out through a captured variable.
pub trait TryScan {
    fn try_scan<Er: From<crate::StorageError>>(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er>;
    fn try_scan_rev<Er: From<crate::StorageError>>(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er>;
    fn try_scan_ranges<Er: From<crate::StorageError>>(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er>;
}

/// Runs `scan` with a visitor that stops at `f`'s first error, then
/// returns that error (the engine's own error first).
fn stop_at_error<Er: From<crate::StorageError>>(
    scan: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>,
    f: &mut TryVisit<Er>,
) -> Result<(), Er> {
    let mut failed = None;
    scan(&mut |k, v| match f(k, v) {
        Ok(go) => go,
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    failed.map_or(Ok(()), Err)
}

impl<E: KvEngine + ?Sized> TryScan for E {
    fn try_scan<Er: From<crate::StorageError>>(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er> {
        stop_at_error(|g| self.scan(start, end, g), f)
    }
    fn try_scan_rev<Er: From<crate::StorageError>>(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er> {
        stop_at_error(|g| self.scan_rev(start, end, g), f)
    }
    fn try_scan_ranges<Er: From<crate::StorageError>>(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        f: &mut TryVisit<Er>,
    ) -> Result<(), Er> {
        stop_at_error(|g| self.scan_ranges(ranges, g), f)
    }
}

/// A read-only, point-in-time view from [`KvEngine::freeze`].
pub trait FrozenView: Send + Sync {
    /// Visits the keys in `[start, end)` in ascending order until `f`
    /// returns false.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool)
        -> Result<()>;
}
