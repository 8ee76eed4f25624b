//! The data shards a node hosts in a sharded cluster (see
//! `hourcell_storage::shard` and docs/ARCHITECTURE.md, "Sharding"): the
//! person shards, fixed at creation, and each week's cell shards, which
//! come and go with the shard map in the metadata group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hourcell_storage::shard::{Layout, ShardId};
use hourcell_storage::{KvEngine, PrefixedEngine, RocksConfig, RocksEngine, ShardPart, SliceStore};
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
    /// One engine for every data shard, each under its group's prefix.
    engine: Arc<RocksEngine>,
    level: u8,
}

impl Shards {
    /// Opens the shared shard engine in `dir` and the person shards.
    pub fn open(
        layout: Layout,
        dir: PathBuf,
        rocks: RocksConfig,
        level: u8,
    ) -> anyhow::Result<Shards> {
        let engine = RocksEngine::open(&dir, &rocks)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
        let mut s = Shards {
            layout,
            persons: Vec::new(),
            weeks: RwLock::new(BTreeMap::new()),
            synced_version: RwLock::new(0),
            engine: Arc::new(engine),
            level,
        };
        s.persons = (0..u64::from(layout.persons))
            .map(|i| s.open_store(PERSON_GROUP_BASE + i))
            .collect::<anyhow::Result<_>>()?;
        Ok(s)
    }

    fn open_store(&self, group: u64) -> anyhow::Result<(u64, Arc<Store>)> {
        let e = PrefixedEngine::group(self.engine.clone(), group);
        Ok((group, Arc::new(SliceStore::open(e, Some(self.level))?)))
    }

    /// Whether the shared engine holds nothing of group `g` (a dropped
    /// shard leaves nothing behind).
    pub fn group_is_empty(&self, g: u64) -> bool {
        let p = hourcell_storage::prefixed::group_prefix(g);
        let mut any = false;
        let _ = self
            .engine
            .scan(&p, &hourcell_storage::keys::prefix_end(&p), &mut |_, _| {
                any = true;
                false
            });
        !any
    }

    /// The shared engine's size on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.engine.disk_bytes()
    }

    /// Compacts the shared engine.
    pub fn compact(&self) -> hourcell_storage::Result<()> {
        self.engine.compact()
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

    /// Stops hosting week `week` and deletes its shards' data from the
    /// shared engine (after the caller removed their raft groups).
    pub fn drop_week(&self, week: i64) -> anyhow::Result<()> {
        let Some(v) = self.weeks.write().remove(&week) else {
            return Ok(());
        };
        for (g, store) in v {
            store
                .engine()
                .destroy()
                .map_err(|e| anyhow::anyhow!("cannot delete shard group {g}: {e}"))?;
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
