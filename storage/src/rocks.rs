//! The RocksDB [`KvEngine`]. This is the only module that names `rocksdb`.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, MergeOperands, Options, ReadOptions, WriteOptions,
    DB,
};

use crate::codec::merge_values;
use crate::error::{Result, StorageError};
use crate::kv::{FrozenView, KvEngine, Op, WriteBatch};

/// Tuning knobs; the defaults suit one county on a 2-core machine.
#[derive(Debug, Clone)]
pub struct RocksConfig {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    pub background_jobs: i32,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 512 << 20,
            write_buffer_bytes: 64 << 20,
            background_jobs: 2,
        }
    }
}

pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

fn engine_err(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.to_string())
}

/// RocksDB calls this both for full merges (with the stored value) and for
/// partial merges of operands; set union is associative so one function
/// serves both. A decode failure cannot be reported through the callback:
/// returning `None` makes RocksDB fail the read or compaction with a
/// corruption error, which stops the node (the contract of `KvEngine`).
fn merge_op(key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    match merge_values(key, existing, operands.iter()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "merge failed");
            None
        }
    }
}

/// RocksDB's own figures for an operator: size, compaction debt and
/// whether writes are being slowed or stopped now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFigures {
    /// Every SST file, live or awaiting deletion (`rocksdb.total-sst-files-size`).
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
    /// Bytes compaction must rewrite to settle the LSM tree.
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    /// Writes are stopped (a write stall), until compaction catches up.
    pub write_stopped: bool,
    /// Bytes per second writes are slowed to; 0 when they are not.
    pub delayed_write_rate: u64,
}

impl RocksEngine {
    /// The engine's figures, read now from RocksDB's properties.
    pub fn figures(&self) -> EngineFigures {
        let p = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineFigures {
            sst_bytes: p("rocksdb.total-sst-files-size"),
            memtable_bytes: p("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: p("rocksdb.estimate-pending-compaction-bytes"),
            running_compactions: p("rocksdb.num-running-compactions"),
            write_stopped: p("rocksdb.is-write-stopped") != 0,
            delayed_write_rate: p("rocksdb.actual-delayed-write-rate"),
        }
    }

    /// Approximate bytes the SST files hold of keys in `start..end`.
    pub fn approximate_size(&self, start: &[u8], end: &[u8]) -> u64 {
        self.db
            .get_approximate_sizes(&[rocksdb::Range::new(start, end)])
            .first()
            .copied()
            .unwrap_or(0)
    }

    pub fn open(path: &Path, cfg: &RocksConfig) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_merge_operator_associative("hourcell-union", merge_op);
        opts.set_write_buffer_size(cfg.write_buffer_bytes);
        opts.set_max_background_jobs(cfg.background_jobs);
        opts.set_level_compaction_dynamic_level_bytes(true);
        // Bitmaps are already dense; lz4 is cheap on the upper levels and
        // zstd squeezes the bottom level, where almost all bytes live.
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        // No `max_successive_merges`: with day-keyed slices every hourly
        // batch adds an operand to the same keys, and counting the run on
        // each insert (`CountSuccessiveMergeEntries`) was 15% of ingest.
        // Flushes fold the operands instead.
        let mut table = BlockBasedOptions::default();
        let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
        table.set_block_cache(&cache);
        table.set_block_size(16 << 10);
        table.set_cache_index_and_filter_blocks(true);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(engine_err)?;
        // Frozen views do not outlive the process: checkpoints left by a
        // crash are garbage.
        let _ = std::fs::remove_dir_all(frozen_dir(path));
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Visits keys from `start` (up to `ro`'s upper bound) until `f` says stop.
fn scan_forward(
    db: &DB,
    ro: ReadOptions,
    start: &[u8],
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let mut it = db.raw_iterator_opt(ro);
    it.seek(start);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !f(k, v) {
            return Ok(());
        }
        it.next();
    }
    it.status().map_err(engine_err)
}

impl KvEngine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(engine_err)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => wb.put(k, v),
                Op::Merge(k, v) => wb.merge(k, v),
                Op::Delete(k) => wb.delete(k),
                Op::DeleteRange(start, end) => wb.delete_range(start, end),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(engine_err)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        scan_forward(&self.db, ro, start, f)
    }

    fn scan_ranges(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(());
        };
        // One iterator (one snapshot) for every range, bounded by the last
        // range's end; each range is a seek.
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(first.0.clone());
        ro.set_iterate_upper_bound(last.1.clone());
        let mut it = self.db.raw_iterator_opt(ro);
        for (start, end) in ranges {
            it.seek(start);
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if k >= end.as_slice() {
                    break;
                }
                if !f(k, v) {
                    return Ok(());
                }
                it.next();
            }
            it.status().map_err(engine_err)?;
        }
        Ok(())
    }

    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek_to_last();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !f(k, v) {
                return Ok(());
            }
            it.prev();
        }
        it.status().map_err(engine_err)
    }

    fn disk_bytes(&self) -> u64 {
        let sst = self
            .db
            .property_int_value("rocksdb.live-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0);
        let mem = self
            .db
            .property_int_value("rocksdb.cur-size-all-mem-tables")
            .ok()
            .flatten()
            .unwrap_or(0);
        sst + mem
    }

    fn compact(&self) -> Result<()> {
        self.db.flush().map_err(engine_err)?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    fn compact_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        self.db.flush().map_err(engine_err)?;
        self.db.compact_range(Some(start), Some(end));
        Ok(())
    }

    fn freeze(&self) -> Result<std::sync::Arc<dyn FrozenView>> {
        // Checkpoints live beside the database (same filesystem, so the
        // SST files are hard links) and are removed when the view drops.
        let dir = frozen_dir(&self.path);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::Engine(format!("cannot create {}: {e}", dir.display())))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let at = dir.join(format!("{nanos}"));
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&at))
            .map_err(engine_err)?;
        let mut opts = Options::default();
        opts.set_merge_operator_associative("hourcell-union", merge_op);
        let db = DB::open_for_read_only(&opts, &at, false).map_err(engine_err)?;
        Ok(std::sync::Arc::new(RocksFrozen { db: Some(db), at }))
    }
}

/// Where the checkpoints of the database at `path` go: beside it (same
/// filesystem, so SST files are hard links).
fn frozen_dir(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    parent.join(format!("{name}.frozen"))
}

/// A checkpoint opened read-only; the directory goes with the view.
struct RocksFrozen {
    db: Option<DB>,
    at: PathBuf,
}

impl Drop for RocksFrozen {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.at);
    }
}

impl FrozenView for RocksFrozen {
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let db = self.db.as_ref().expect("open until dropped");
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        // A one-off full scan: do not churn the block cache.
        ro.fill_cache(false);
        scan_forward(db, ro, start, f)
    }
}
