//! The data shards a node hosts in a sharded cluster (see
//! `hourcell_storage::shard` and docs/ARCHITECTURE.md, "Sharding"): the
//! person shards, fixed at creation, and each week's cell shards, which
//! come and go with the shard map in the metadata group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hourcell_storage::shard::{Layout, ShardId};
use hourcell_storage::{RocksConfig, RocksEngine, ShardPart, SliceStore};
use parking_lot::RwLock;

use crate::node::Store;

/// Raft group of person shard `i`: `PERSON_GROUP_BASE + i`. Group 1 is the
/// metadata group.
pub const PERSON_GROUP_BASE: u64 = 0x200;
/// Raft groups of the weeks' cell shards start here (see [`cell_group`]).
pub const CELL_GROUP_BASE: u64 = 1 << 40;

/// The raft group of cell shard `index` of week `week`.
pub fn cell_group(week: i64, index: usize) -> u64 {
    CELL_GROUP_BASE + (((week + (1 << 24)) as u64) << 8) + index as u64
}

pub struct Shards {
    pub layout: Layout,
    /// Person shard `i`: its raft group and store.
    pub persons: Vec<(u64, Arc<Store>)>,
    /// Each hosted week's cell shards, by index: raft group and store.
    weeks: RwLock<BTreeMap<i64, Vec<(u64, Arc<Store>)>>>,
    /// The shard map version the hosted weeks follow.
    pub synced_version: RwLock<u64>,
    dir: PathBuf,
    rocks: RocksConfig,
    level: u8,
}

impl Shards {
    /// Opens the person shards under `dir` (a directory per group).
    pub fn open(
        layout: Layout,
        dir: PathBuf,
        rocks: RocksConfig,
        level: u8,
    ) -> anyhow::Result<Shards> {
        let mut s = Shards {
            layout,
            persons: Vec::new(),
            weeks: RwLock::new(BTreeMap::new()),
            synced_version: RwLock::new(0),
            dir,
            rocks,
            level,
        };
        s.persons = (0..u64::from(layout.persons))
            .map(|i| s.open_store(PERSON_GROUP_BASE + i))
            .collect::<anyhow::Result<_>>()?;
        Ok(s)
    }

    fn store_dir(&self, group: u64) -> PathBuf {
        self.dir.join(group.to_string())
    }

    fn open_store(&self, group: u64) -> anyhow::Result<(u64, Arc<Store>)> {
        let dir = self.store_dir(group);
        let e = RocksEngine::open(&dir, &self.rocks)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
        Ok((group, Arc::new(SliceStore::open(e, Some(self.level))?)))
    }

    /// Opens (creating if new) the stores of week `week`'s cell shards and
    /// hosts them. Returns them; the caller starts their raft groups.
    pub fn open_week(&self, week: i64) -> anyhow::Result<Vec<(u64, Arc<Store>)>> {
        if let Some(v) = self.weeks.read().get(&week) {
            return Ok(v.clone());
        }
        let v: Vec<(u64, Arc<Store>)> = (0..self.layout.cells as usize)
            .map(|i| self.open_store(cell_group(week, i)))
            .collect::<anyhow::Result<_>>()?;
        self.weeks.write().insert(week, v.clone());
        Ok(v)
    }

    /// Stops hosting week `week` and deletes its stores' directories (after
    /// the caller removed their raft groups).
    pub fn drop_week(&self, week: i64) -> anyhow::Result<()> {
        let Some(v) = self.weeks.write().remove(&week) else {
            return Ok(());
        };
        let dirs: Vec<PathBuf> = v.iter().map(|(g, _)| self.store_dir(*g)).collect();
        // The engines close when the last reference (a query still
        // running) goes; the files are removed now, as Unix allows.
        drop(v);
        for d in dirs {
            std::fs::remove_dir_all(&d)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", d.display()))?;
        }
        Ok(())
    }

    /// The weeks hosted here.
    pub fn weeks(&self) -> Vec<i64> {
        self.weeks.read().keys().copied().collect()
    }

    /// Week `week`'s cell shard stores (empty if not hosted).
    pub fn week(&self, week: i64) -> Vec<(u64, Arc<Store>)> {
        self.weeks.read().get(&week).cloned().unwrap_or_default()
    }

    /// Every data shard hosted here: (group, store), person shards first.
    pub fn all(&self) -> Vec<(u64, Arc<Store>)> {
        let mut v = self.persons.clone();
        for w in self.weeks.read().values() {
            v.extend(w.iter().cloned());
        }
        v
    }

    /// The group and store of one shard, if hosted here.
    pub fn get(&self, id: ShardId) -> Option<(u64, Arc<Store>)> {
        match id.part {
            ShardPart::Persons => self.persons.get(id.index).cloned(),
            ShardPart::Cells => self.weeks.read().get(&id.week)?.get(id.index).cloned(),
        }
    }

    /// A name for group `g` in status output.
    pub fn describe(&self, g: u64) -> String {
        if let Some(i) = self.persons.iter().position(|(x, _)| *x == g) {
            return format!("persons {i}");
        }
        for (w, v) in self.weeks.read().iter() {
            if let Some(i) = v.iter().position(|(x, _)| *x == g) {
                let monday = hourcell_storage::shard::week_start_hour(*w) * 3600;
                let day = hourcell_query::time::format_time(monday);
                return format!("cells {i}, week of {}", &day[..10]);
            }
        }
        "meta".into()
    }
}
