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

/// Linearizable reads of data shards, one group at a time: a query takes a
/// ReadIndex on the metadata group when it starts ([`ReadGate::begin`]),
/// and on each data group only when it first reads from it, unless that
/// group already had one issued after the query started. A query that
/// touches one week's shards does not wake every past week's group.
pub struct ReadGate {
    handle: crate::replication::RaftHandle,
    timeout: std::time::Duration,
    /// Group → when its last ReadIndex was issued.
    last: RwLock<std::collections::HashMap<u64, std::time::Instant>>,
}

thread_local! {
    /// When the query running on this thread started (set by
    /// [`ReadGate::begin`]); `None` outside a gated query.
    static READ_STARTED: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

impl ReadGate {
    pub fn new(handle: crate::replication::RaftHandle, timeout: std::time::Duration) -> Self {
        Self {
            handle,
            timeout,
            last: RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// Marks the start of a linearizable query on this thread (after the
    /// metadata group's ReadIndex).
    pub fn begin(at: std::time::Instant) {
        READ_STARTED.with(|c| c.set(Some(at)));
    }

    /// Ends the gated query on this thread: later reads are ungated (the
    /// caller took a full barrier, or reads stale on purpose).
    pub fn end() {
        READ_STARTED.with(|c| c.set(None));
    }

    /// Records a ReadIndex on `groups` issued at `issued` (taken by the
    /// caller in the query's first round).
    pub fn record(&self, groups: &[u64], issued: std::time::Instant) {
        let mut last = self.last.write();
        for g in groups {
            let t = last.entry(*g).or_insert(issued);
            if *t < issued {
                *t = issued;
            }
        }
    }

    /// [`ReadGate::ensure`] for several groups at once: one round of
    /// ReadIndex for those that need one (a week's cell shards are read
    /// together).
    pub fn ensure_all(&self, groups: &[u64]) -> Result<(), String> {
        let Some(started) = READ_STARTED.with(|c| c.get()) else {
            return Ok(());
        };
        let need: Vec<u64> = {
            let last = self.last.read();
            groups
                .iter()
                .copied()
                .filter(|g| !last.get(g).is_some_and(|t| *t >= started))
                .collect()
        };
        if need.len() < 2 {
            return need.first().map_or(Ok(()), |g| self.ensure(*g));
        }
        let issued = std::time::Instant::now();
        let results = self.handle.read_index_many(&need, self.timeout);
        let mut last = self.last.write();
        for (g, r) in need.iter().zip(results) {
            // A group that failed here is retried alone by `ensure`.
            if r.is_ok() {
                let t = last.entry(*g).or_insert(issued);
                if *t < issued {
                    *t = issued;
                }
            }
        }
        Ok(())
    }

    /// Before reading `group` in a gated query: a ReadIndex on it unless
    /// one was issued after the query started.
    pub fn ensure(&self, group: u64) -> Result<(), String> {
        let Some(started) = READ_STARTED.with(|c| c.get()) else {
            return Ok(());
        };
        if self.last.read().get(&group).is_some_and(|t| *t >= started) {
            return Ok(());
        }
        let issued = std::time::Instant::now();
        let deadline = issued + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.handle.read_index(group, left) {
                Ok(()) => break,
                Err(crate::replication::ProposeError::Dropped) if !left.is_zero() => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot serve a linearizable read of shard group {group}: {e}"
                    ))
                }
            }
        }
        let mut last = self.last.write();
        let t = last.entry(group).or_insert(issued);
        if *t < issued {
            *t = issued;
        }
        Ok(())
    }
}

/// A data shard's store behind a [`ReadGate`]: every read first makes sure
/// the shard is read linearizably.
pub struct Gated {
    pub store: Arc<Store>,
    pub group: u64,
    pub gate: Arc<ReadGate>,
}

impl Gated {
    fn check(&self) -> hourcell_query::Result<()> {
        self.gate
            .ensure(self.group)
            .map_err(hourcell_query::QueryError::Unavailable)
    }
}

impl hourcell_query::SliceSource for Gated {
    fn slice_level(&self) -> u8 {
        self.store.slice_level()
    }
    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        self.check()?;
        hourcell_query::SliceSource::cell_days(self.store.as_ref(), day, lo, hi, f)
    }
    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        self.check()?;
        hourcell_query::SliceSource::cell_days_in(self.store.as_ref(), day, ranges, keep, f)
    }
    fn address_day(
        &self,
        day: i64,
        address_id: u32,
    ) -> hourcell_query::Result<Option<hourcell_storage::DaySet>> {
        self.check()?;
        hourcell_query::SliceSource::address_day(self.store.as_ref(), day, address_id)
    }
    fn hour_slices(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(i64, roaring::RoaringBitmap),
    ) -> hourcell_query::Result<()> {
        self.check()?;
        hourcell_query::SliceSource::hour_slices(self.store.as_ref(), from, to, f)
    }
    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, roaring::RoaringBitmap) -> bool,
    ) -> hourcell_query::Result<()> {
        self.check()?;
        hourcell_query::SliceSource::hour_slices_rev(self.store.as_ref(), before, f)
    }
    fn person_hours(
        &self,
        person: u64,
        from: i64,
        to: i64,
    ) -> hourcell_query::Result<Vec<(i64, Vec<hourcell_storage::PlaceEntry>)>> {
        self.check()?;
        hourcell_query::SliceSource::person_hours(self.store.as_ref(), person, from, to)
    }
    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[hourcell_storage::PlaceEntry]) -> bool,
    ) -> hourcell_query::Result<Option<i64>> {
        self.check()?;
        hourcell_query::SliceSource::last_active_before(self.store.as_ref(), id, before, keep)
    }
    fn internal_id(&self, person: u64) -> Option<u32> {
        self.store.internal_id(person)
    }
    fn external_id(&self, id: u32) -> Option<u64> {
        self.store.external_id(id)
    }
    fn external_ids(&self, b: &roaring::RoaringBitmap) -> Vec<u64> {
        self.store.external_ids(b)
    }
    fn external_ids_of(&self, ids: &[u32]) -> Vec<u64> {
        self.store.external_ids_of(ids)
    }
    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[hourcell_storage::PlaceIds]),
    ) -> hourcell_query::Result<()> {
        self.check()?;
        hourcell_query::SliceSource::scan_person_days(self.store.as_ref(), from_day, to_day, f)
    }
    fn source_labels(&self) -> Vec<String> {
        self.store.source_labels()
    }
    fn for_each_address(&self, f: &mut dyn FnMut(&hourcell_storage::AddressRecord)) {
        hourcell_query::SliceSource::for_each_address(self.store.as_ref(), f)
    }
    fn address(&self, code: &str) -> Option<hourcell_storage::AddressRecord> {
        self.store.address(code)
    }
    fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)> {
        self.store.address_point(code)
    }
    fn area_addresses(&self, area: &str) -> Vec<u32> {
        self.store.area_addresses(area)
    }
    fn area_exists(&self, area: &str) -> bool {
        self.store.area_exists(area)
    }
    fn for_each_registration(
        &self,
        with_address: bool,
        f: &mut dyn FnMut(
            &hourcell_storage::RegistrationRecord,
            Option<&hourcell_storage::AddressRecord>,
            Option<u32>,
        ),
    ) {
        hourcell_query::SliceSource::for_each_registration(self.store.as_ref(), with_address, f)
    }
}
