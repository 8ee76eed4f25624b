//! An in-memory [`KvEngine`], the twin of the RocksDB engine used by tests.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use crate::codec::merge_values;
use crate::error::Result;
use crate::kv::{FrozenView, KvEngine, Op, WriteBatch};

fn scan_map(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: &[u8],
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    for (k, v) in map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
        if !f(k, v) {
            break;
        }
    }
}

#[derive(Default)]
pub struct MemEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<()> {
        let mut map = self.map.write();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
                Op::DeleteRange(start, end) => {
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
                Op::Merge(k, v) => {
                    let merged = merge_values(&k, map.get(&k).map(|v| v.as_slice()), [&v[..]])?;
                    map.insert(k, merged);
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
    ) -> Result<()> {
        scan_map(&self.map.read(), start, end, f);
        Ok(())
    }

    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let map = self.map.read();
        for (k, v) in map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .rev()
        {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    fn compact(&self) -> Result<()> {
        Ok(())
    }

    fn compact_range(&self, _start: &[u8], _end: &[u8]) -> Result<()> {
        Ok(())
    }

    fn freeze(&self) -> Result<std::sync::Arc<dyn FrozenView>> {
        Ok(std::sync::Arc::new(MemFrozen(self.map.read().clone())))
    }
}

struct MemFrozen(BTreeMap<Vec<u8>, Vec<u8>>);

impl FrozenView for MemFrozen {
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        scan_map(&self.0, start, end, f);
        Ok(())
    }
}
