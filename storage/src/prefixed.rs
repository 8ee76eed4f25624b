//! [`PrefixedEngine`]: one store's view of a shared engine. A sharded node
//! keeps every data shard (the person shards and every week's cell shards)
//! in one RocksDB, each under its own key prefix, so that hundreds of
//! shards share one WAL, one set of memtables and one block cache instead
//! of opening a database each. An empty prefix is the whole engine.

use std::sync::Arc;

use crate::error::Result;
use crate::kv::{FrozenView, KvEngine, Op, WriteBatch};

/// First byte of a prefixed key: no store key starts with it (see `keys`).
pub const PREFIXED: u8 = 0xF0;
/// Length of a group prefix: [`PREFIXED`] and the group id (u64).
pub const PREFIX_LEN: usize = 9;

/// The prefix of group `group` in a shared engine.
pub fn group_prefix(group: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PREFIX_LEN);
    p.push(PREFIXED);
    p.extend_from_slice(&group.to_be_bytes());
    p
}

/// The store key inside a prefixed key (the merge operator dispatches on
/// it); other keys come back unchanged.
pub fn strip(key: &[u8]) -> &[u8] {
    if key.len() >= PREFIX_LEN && key[0] == PREFIXED {
        &key[PREFIX_LEN..]
    } else {
        key
    }
}

pub struct PrefixedEngine<E: KvEngine> {
    inner: Arc<E>,
    prefix: Vec<u8>,
}

impl<E: KvEngine> PrefixedEngine<E> {
    /// The whole of `inner` (no prefix).
    pub fn whole(inner: Arc<E>) -> Self {
        Self {
            inner,
            prefix: Vec::new(),
        }
    }

    /// Group `group`'s part of `inner`.
    pub fn group(inner: Arc<E>, group: u64) -> Self {
        Self {
            inner,
            prefix: group_prefix(group),
        }
    }

    pub fn inner(&self) -> &Arc<E> {
        &self.inner
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.prefix.len() + k.len());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(k);
        v
    }

    /// Deletes everything under this prefix and gives the space back (a
    /// dropped shard). Not for the whole engine.
    pub fn destroy(&self) -> Result<()> {
        assert!(!self.prefix.is_empty(), "destroy needs a prefix");
        let end = crate::keys::prefix_end(&self.prefix);
        let mut b = WriteBatch::default();
        b.ops
            .push(Op::DeleteRange(self.prefix.clone(), end.clone()));
        self.inner.write(b, true)?;
        self.inner.compact_range(&self.prefix, &end)
    }
}

impl<E: KvEngine> KvEngine for PrefixedEngine<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.prefix.is_empty() {
            return self.inner.get(key);
        }
        self.inner.get(&self.key(key))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.write(batch, sync);
        }
        let ops = batch
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => Op::Put(self.key(&k), v),
                Op::Merge(k, v) => Op::Merge(self.key(&k), v),
                Op::Delete(k) => Op::Delete(self.key(&k)),
                Op::DeleteRange(a, b) => Op::DeleteRange(self.key(&a), self.key(&b)),
            })
            .collect();
        self.inner.write(WriteBatch { ops }, sync)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.scan(start, end, f);
        }
        let n = self.prefix.len();
        self.inner
            .scan(&self.key(start), &self.key(end), &mut |k, v| f(&k[n..], v))
    }

    fn scan_ranges(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.scan_ranges(ranges, f);
        }
        let n = self.prefix.len();
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = ranges
            .iter()
            .map(|(a, b)| (self.key(a), self.key(b)))
            .collect();
        self.inner.scan_ranges(&ranges, &mut |k, v| f(&k[n..], v))
    }

    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.scan_rev(start, end, f);
        }
        let n = self.prefix.len();
        self.inner
            .scan_rev(&self.key(start), &self.key(end), &mut |k, v| f(&k[n..], v))
    }

    /// The whole engine's size without a prefix; a prefixed view reports
    /// 0 (its share is not tracked; the node reports the shared engine
    /// once).
    fn disk_bytes(&self) -> u64 {
        if self.prefix.is_empty() {
            self.inner.disk_bytes()
        } else {
            0
        }
    }

    fn compact(&self) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.compact();
        }
        self.inner
            .compact_range(&self.prefix, &crate::keys::prefix_end(&self.prefix))
    }

    fn compact_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        if self.prefix.is_empty() {
            return self.inner.compact_range(start, end);
        }
        self.inner.compact_range(&self.key(start), &self.key(end))
    }

    fn freeze(&self) -> Result<Arc<dyn FrozenView>> {
        let view = self.inner.freeze()?;
        if self.prefix.is_empty() {
            return Ok(view);
        }
        Ok(Arc::new(PrefixedView {
            view,
            prefix: self.prefix.clone(),
        }))
    }
}

struct PrefixedView {
    view: Arc<dyn FrozenView>,
    prefix: Vec<u8>,
}

impl FrozenView for PrefixedView {
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let n = self.prefix.len();
        let key = |k: &[u8]| [self.prefix.as_slice(), k].concat();
        self.view
            .scan(&key(start), &key(end), &mut |k, v| f(&k[n..], v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemEngine;

    #[test]
    fn groups_do_not_see_each_other() {
        let inner = Arc::new(MemEngine::new());
        let a = PrefixedEngine::group(inner.clone(), 1);
        let b = PrefixedEngine::group(inner.clone(), 2);
        let mut w = WriteBatch::default();
        w.put(vec![0x10, 1], vec![1]);
        w.put(vec![0x10, 2], vec![2]);
        a.write(w, false).unwrap();
        let mut w = WriteBatch::default();
        w.put(vec![0x10, 1], vec![9]);
        b.write(w, false).unwrap();
        assert_eq!(a.get(&[0x10, 1]).unwrap(), Some(vec![1]));
        assert_eq!(b.get(&[0x10, 1]).unwrap(), Some(vec![9]));
        let mut seen = Vec::new();
        a.scan(&[0x00], &[0xff; 16], &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(vec![0x10, 1], vec![1]), (vec![0x10, 2], vec![2])]
        );
        // A range delete in one group leaves the other alone.
        let mut w = WriteBatch::default();
        w.delete_range(vec![0x00], vec![0xff; 16]);
        a.write(w, false).unwrap();
        assert_eq!(a.get(&[0x10, 2]).unwrap(), None);
        assert_eq!(b.get(&[0x10, 1]).unwrap(), Some(vec![9]));
        let f = b.freeze().unwrap();
        let mut n = 0;
        f.scan(&[0x00], &[0xff; 16], &mut |k, _| {
            assert_eq!(k, &[0x10, 1]);
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 1);
        b.destroy().unwrap();
        assert_eq!(b.get(&[0x10, 1]).unwrap(), None);
        assert_eq!(
            strip(&[group_prefix(7), vec![0x12, 3]].concat()),
            &[0x12, 3]
        );
    }
}
