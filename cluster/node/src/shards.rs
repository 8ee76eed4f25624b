//! The data shards a node hosts in a sharded cluster (see
//! `hourcell_storage::shard` and docs/ARCHITECTURE.md, "Sharding"): the
//! person shards, fixed at creation, and each week's cell shards, which
//! come and go with the shard map in the metadata group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hourcell_storage::shard::{Layout, ShardId};
use hourcell_storage::{KvEngine, PrefixedEngine, RocksConfig, RocksEngine, ShardPart};
use parking_lot::RwLock;

use crate::error::{NodeError, OpenError};
use crate::types::ShardStore;

/// Raft group of person shard `i`: `PERSON_GROUP_BASE + i`. Group 1 is the
/// metadata group.
pub const PERSON_GROUP_BASE: u64 = 0x200;
/// Raft groups of the weeks' cell shards start here (see [`cell_group`]).
pub const CELL_GROUP_BASE: u64 = 1 << 40;

/// The raft group of cell shard `index` of week `week`.
pub fn cell_group(week: i64, index: usize) -> u64 {
    CELL_GROUP_BASE + (((week + (1 << 24)) as u64) << 8) + index as u64
}

/// The raft group of shard `id`.
pub fn group_of(id: ShardId) -> u64 {
    match id.part {
        ShardPart::Persons => PERSON_GROUP_BASE + id.index as u64,
        ShardPart::Cells => cell_group(id.week, id.index),
    }
}

/// The data shard behind raft group `g` ([`group_of`] inverted), if `g` is
/// one.
pub fn shard_of_group(g: u64) -> Option<ShardId> {
    if g >= CELL_GROUP_BASE {
        let rest = g - CELL_GROUP_BASE;
        return Some(ShardId {
            part: ShardPart::Cells,
            week: (rest >> 8) as i64 - (1 << 24),
            index: (rest & 0xff) as usize,
        });
    }
    (PERSON_GROUP_BASE..PERSON_GROUP_BASE + u64::from(hourcell_storage::shard::MAX_SHARDS))
        .contains(&g)
        .then(|| ShardId {
            part: ShardPart::Persons,
            week: 0,
            index: (g - PERSON_GROUP_BASE) as usize,
        })
}

pub struct Shards {
    pub layout: Layout,
    /// Person shard `i`: its raft group and store (an empty store if this
    /// node holds no replica).
    persons: RwLock<Vec<(u64, Arc<ShardStore>)>>,
    /// Each hosted week's cell shards, by index: raft group and store.
    weeks: RwLock<BTreeMap<i64, Vec<(u64, Arc<ShardStore>)>>>,
    /// The shard map version the hosted weeks follow.
    pub synced_version: RwLock<u64>,
    /// The groups this node holds a replica of (raft group running).
    hosted: RwLock<std::collections::HashSet<u64>>,
    /// One engine for every data shard, each under its group's prefix.
    engine: Arc<RocksEngine>,
    level: u8,
    /// Events each shard store holds before writing (see
    /// `NodeConfig::hold_events`).
    hold_events: usize,
}

impl Shards {
    /// Opens the shared shard engine in `dir` and the person shards.
    pub fn open(
        layout: Layout,
        dir: PathBuf,
        rocks: RocksConfig,
        level: u8,
        hold_events: usize,
    ) -> Result<Shards, OpenError> {
        let engine = RocksEngine::open(&dir, &rocks).map_err(|source| OpenError::Engine {
            path: dir.clone(),
            source,
        })?;
        let mut s = Shards {
            layout,
            persons: RwLock::new(Vec::new()),
            weeks: RwLock::new(BTreeMap::new()),
            synced_version: RwLock::new(0),
            hosted: RwLock::new(std::collections::HashSet::new()),
            engine: Arc::new(engine),
            level,
            hold_events,
        };
        let persons = (0..u64::from(layout.persons))
            .map(|i| s.open_store(PERSON_GROUP_BASE + i))
            .collect::<Result<_, OpenError>>()?;
        s.persons = RwLock::new(persons);
        Ok(s)
    }

    fn open_store(&self, group: u64) -> Result<(u64, Arc<ShardStore>), OpenError> {
        let e = PrefixedEngine::group(self.engine.clone(), group);
        let store = hourcell_storage::ShardStore::open(e, Some(self.level))?;
        // The node's budget is split over a week's shards of each kind
        // (they fill together), so holding costs about the same memory
        // sharded or not.
        let ways = if group < CELL_GROUP_BASE {
            self.layout.persons
        } else {
            self.layout.cells
        };
        store.set_defer_events(self.hold_events / ways.max(1) as usize)?;
        Ok((group, Arc::new(store)))
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

    /// The shared engine's RocksDB figures.
    pub fn engine_figures(&self) -> hourcell_storage::EngineFigures {
        self.engine.figures()
    }

    /// The shared engine's size on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.engine.disk_bytes()
    }

    /// Compacts the shared engine.
    pub fn compact(&self) -> hourcell_storage::Result<()> {
        self.engine.compact()
    }

    /// Opens (creating if new) the stores of week `week`'s first `n` cell
    /// shards (more after a split) and lists the week's shards. The caller
    /// starts the raft groups of those placed here.
    pub fn open_week(&self, week: i64, n: usize) -> Result<Vec<(u64, Arc<ShardStore>)>, OpenError> {
        let have = self.week_slots(week).len();
        if have >= n {
            return Ok(self.week_slots(week));
        }
        let more: Vec<(u64, Arc<ShardStore>)> = (have..n)
            .map(|i| self.open_store(cell_group(week, i)))
            .collect::<Result<_, OpenError>>()?;
        let mut weeks = self.weeks.write();
        let v = weeks.entry(week).or_default();
        // Another caller may have opened some meanwhile (the same groups).
        for (g, store) in more {
            if !v.iter().any(|(x, _)| *x == g) {
                v.push((g, store));
            }
        }
        Ok(v.clone())
    }

    /// Approximate bytes on disk of group `g`'s data.
    pub fn group_bytes(&self, g: u64) -> u64 {
        let p = hourcell_storage::prefixed::group_prefix(g);
        self.engine
            .approximate_size(&p, &hourcell_storage::keys::prefix_end(&p))
    }

    /// Stops hosting week `week` and deletes its shards' data from the
    /// shared engine (after the caller removed their raft groups).
    pub fn drop_week(&self, week: i64) -> Result<(), OpenError> {
        let Some(v) = self.weeks.write().remove(&week) else {
            return Ok(());
        };
        for (g, store) in v {
            self.hosted.write().remove(&g);
            store.discard_deferred();
            store
                .engine()
                .destroy()
                .map_err(|source| OpenError::DropShard { group: g, source })?;
        }
        Ok(())
    }

    /// The weeks opened here (whether or not this node holds a replica of
    /// any of their shards).
    pub fn weeks(&self) -> Vec<i64> {
        self.weeks.read().keys().copied().collect()
    }

    /// Week `week`'s cell shards by index, held here or not (empty if the
    /// week is not open).
    pub fn week_slots(&self, week: i64) -> Vec<(u64, Arc<ShardStore>)> {
        self.weeks.read().get(&week).cloned().unwrap_or_default()
    }

    /// Week `week`'s cell shards this node holds a replica of.
    pub fn week(&self, week: i64) -> Vec<(u64, Arc<ShardStore>)> {
        let mut v = self.week_slots(week);
        let hosted = self.hosted.read();
        v.retain(|(g, _)| hosted.contains(g));
        v
    }

    /// The person shards this node holds a replica of.
    pub fn persons(&self) -> Vec<(u64, Arc<ShardStore>)> {
        let mut v = self.persons.read().clone();
        let hosted = self.hosted.read();
        v.retain(|(g, _)| hosted.contains(g));
        v
    }

    /// Every data shard this node holds a replica of: (group, store),
    /// person shards first.
    pub fn all(&self) -> Vec<(u64, Arc<ShardStore>)> {
        let mut v = self.persons.read().clone();
        for w in self.weeks.read().values() {
            v.extend(w.iter().cloned());
        }
        let hosted = self.hosted.read();
        v.retain(|(g, _)| hosted.contains(g));
        v
    }

    /// The group and store of one shard, held here or not.
    pub fn slot(&self, id: ShardId) -> Option<(u64, Arc<ShardStore>)> {
        match id.part {
            ShardPart::Persons => self.persons.read().get(id.index).cloned(),
            ShardPart::Cells => self.weeks.read().get(&id.week)?.get(id.index).cloned(),
        }
    }

    /// The group and store of one shard, if this node holds a replica.
    pub fn get(&self, id: ShardId) -> Option<(u64, Arc<ShardStore>)> {
        self.slot(id).filter(|(g, _)| self.hosts(*g))
    }

    /// Whether this node holds a replica of group `g`.
    pub fn hosts(&self, g: u64) -> bool {
        self.hosted.read().contains(&g)
    }

    /// Marks group `g` as held here (its raft group runs).
    pub fn host(&self, g: u64) {
        self.hosted.write().insert(g);
    }

    /// Stops holding shard `id` (its raft group already removed): deletes
    /// its data and leaves an empty store in its place, so that a later
    /// replica here starts clean.
    pub fn release(&self, id: ShardId) -> Result<(), OpenError> {
        let Some((g, store)) = self.slot(id) else {
            return Ok(());
        };
        self.hosted.write().remove(&g);
        store.discard_deferred();
        store
            .engine()
            .destroy()
            .map_err(|source| OpenError::DropShard { group: g, source })?;
        let fresh = self.open_store(g)?;
        match id.part {
            ShardPart::Persons => self.persons.write()[id.index] = fresh,
            ShardPart::Cells => {
                if let Some(v) = self.weeks.write().get_mut(&id.week) {
                    v[id.index] = fresh;
                }
            }
        }
        Ok(())
    }

    /// The shard behind group `g`, if it is a person shard or an open
    /// week's cell shard.
    pub fn shard_of(&self, g: u64) -> Option<ShardId> {
        if let Some(index) = self.persons.read().iter().position(|(x, _)| *x == g) {
            return Some(ShardId {
                part: ShardPart::Persons,
                week: 0,
                index,
            });
        }
        for (w, v) in self.weeks.read().iter() {
            if let Some(index) = v.iter().position(|(x, _)| *x == g) {
                return Some(ShardId {
                    part: ShardPart::Cells,
                    week: *w,
                    index,
                });
            }
        }
        None
    }

    /// A name for group `g` in status output.
    pub fn describe(&self, g: u64) -> String {
        if let Some(i) = self.persons.read().iter().position(|(x, _)| *x == g) {
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

thread_local! {
    /// Routed reads of the query running on this thread: group → the node
    /// that took a ReadIndex on it for this query (see [`crate::route`]).
    static REMOTE_BARRIERS: std::cell::RefCell<std::collections::HashMap<u64, u64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    /// Whether a query (linearizable or bounded-stale) is running on this
    /// thread, so that [`REMOTE_BARRIERS`] may be reused within it.
    static QUERY_SCOPE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl ReadGate {
    /// Whether a routed read of `group` served by node `node` must take a
    /// ReadIndex first: yes, unless `node` already did for the query
    /// running on this thread. A bounded-staleness query's routed reads
    /// take one too (its reported staleness is this node's, so the remote
    /// part must be fresher), and outside a query (the rules, whose full
    /// barrier covers only the groups held here) every routed read takes
    /// one: a routed read is never staler than a local one.
    pub fn remote_barrier_needed(group: u64, node: u64) -> bool {
        !QUERY_SCOPE.with(|c| c.get())
            || REMOTE_BARRIERS.with(|m| m.borrow().get(&group) != Some(&node))
    }

    /// Marks the start of a bounded-staleness query on this thread (after
    /// [`ReadGate::end`]): its routed reads take one ReadIndex per shard
    /// and serving node, as a linearizable query's do.
    pub fn begin_stale() {
        QUERY_SCOPE.with(|c| c.set(true));
        REMOTE_BARRIERS.with(|m| m.borrow_mut().clear());
    }

    /// Records that node `node` took a ReadIndex on `group` for the query
    /// running on this thread.
    pub fn remote_barrier_done(group: u64, node: u64) {
        REMOTE_BARRIERS.with(|m| m.borrow_mut().insert(group, node));
    }

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
        QUERY_SCOPE.with(|c| c.set(true));
        REMOTE_BARRIERS.with(|m| m.borrow_mut().clear());
    }

    /// Ends the gated query on this thread: later reads are ungated (the
    /// caller took a full barrier, or reads stale on purpose).
    pub fn end() {
        READ_STARTED.with(|c| c.set(None));
        QUERY_SCOPE.with(|c| c.set(false));
        REMOTE_BARRIERS.with(|m| m.borrow_mut().clear());
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
    pub fn ensure_all(&self, groups: &[u64]) -> Result<(), NodeError> {
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
    pub fn ensure(&self, group: u64) -> Result<(), NodeError> {
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
                    return Err(NodeError::Unavailable(format!(
                        "cannot serve a linearizable read of shard group {group}: {e}"
                    )))
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

/// The read state of the query running on a thread (see [`ReadGate`]),
/// to carry into the threads that read its remote shards.
#[derive(Clone)]
struct QueryState {
    started: Option<std::time::Instant>,
    scope: bool,
    barriers: std::collections::HashMap<u64, u64>,
}

impl QueryState {
    fn current() -> Self {
        QueryState {
            started: READ_STARTED.with(|c| c.get()),
            scope: QUERY_SCOPE.with(|c| c.get()),
            barriers: REMOTE_BARRIERS.with(|m| m.borrow().clone()),
        }
    }

    fn enter(self) {
        READ_STARTED.with(|c| c.set(self.started));
        QUERY_SCOPE.with(|c| c.set(self.scope));
        REMOTE_BARRIERS.with(|m| *m.borrow_mut() = self.barriers);
    }
}

/// Runs the reads of a query's remote shards on scoped threads, each
/// inside the calling thread's query: the same start (so a local replica
/// read there takes its ReadIndex as the query would) and the remote
/// barriers already taken. The barriers the threads take are handed back
/// to the calling thread, so the query's later reads of those shards go
/// to the same nodes without another ReadIndex.
pub struct QueryFanout;

impl hourcell_query::Fanout for QueryFanout {
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>, here: &mut dyn FnMut()) {
        let state = QueryState::current();
        let taken = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let running: Vec<_> = tasks
                .into_iter()
                .map(|task| {
                    let (state, taken) = (state.clone(), &taken);
                    s.spawn(move || {
                        state.enter();
                        task();
                        let mine = REMOTE_BARRIERS.with(|m| std::mem::take(&mut *m.borrow_mut()));
                        taken.lock().extend(mine);
                    })
                })
                .collect();
            here();
            for r in running {
                if let Err(panic) = r.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        if state.scope {
            REMOTE_BARRIERS.with(|m| m.borrow_mut().extend(taken.into_inner()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_names_its_shard_back() {
        for id in [
            ShardId {
                part: ShardPart::Persons,
                week: 0,
                index: 3,
            },
            ShardId {
                part: ShardPart::Cells,
                week: 2921,
                index: 255,
            },
            ShardId {
                part: ShardPart::Cells,
                week: -5,
                index: 0,
            },
        ] {
            assert_eq!(shard_of_group(group_of(id)), Some(id));
        }
        assert_eq!(shard_of_group(1), None);
        assert_eq!(shard_of_group(PERSON_GROUP_BASE + 256), None);
    }
}
