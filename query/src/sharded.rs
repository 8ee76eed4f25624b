//! [`ShardedSource`]: one [`SliceReader`] over the stores of a sharded
//! cluster (see `hourcell_storage::shard`). The query engine and the rules
//! run on it unchanged, with the metadata store as their [`Catalog`]
//! (dictionaries, addresses and the registry).
//!
//! - Cell slices of a day: every cell shard of the day's week is asked
//!   (cells are placed by hash, so any shard may hold part of a range); the
//!   engine folds ids into a bitmap, so the order does not matter.
//! - Address slices: an address's events are in the shard of each event's
//!   slice cell, usually one; the day sets of the week's cell shards are
//!   merged.
//! - Several days at once ([`SliceReader::day_sets`]): one read of every
//!   cell shard of every week the days fall in, up to eight days a read,
//!   so a week's query waits for one round trip rather than one a day. A
//!   node too old to serve it is read a day at a time.
//! - The person index and the all-persons hour slices: the person shard
//!   `id % persons`. Hour slices of different person shards hold disjoint
//!   persons and are unioned per hour.
//!
//! Shards held on other nodes ([`SliceReader::remote`]) are read at the
//! same time, through a [`Fanout`], while the shards held here are read
//! on the calling thread. With a [`BatchReads`], the remote shards that
//! name their cluster shard are read together: one request to each node
//! that holds some of them, the nodes at the same time, so a query waits
//! for about one round trip per day and pays one request per node rather
//! than one per remote shard. Their answers are handed to the caller's
//! callbacks on the calling thread once all have arrived, so the
//! callbacks need not be `Send`; every merge here is a set union, so
//! answers do not depend on the order.

use std::collections::BTreeMap;
use std::sync::Arc;

use hourcell_storage::shard::{week_of_day, Layout, ShardId};
use hourcell_storage::{DaySet, PlaceEntry, PlaceIds};
use roaring::RoaringBitmap;

use crate::batch::{BatchReads, SliceAnswer, SliceRead};
use crate::error::{QueryError, Result};
use crate::source::{day_sets_by_day, Catalog, DayKeys, SliceReader};

/// The cell shards of a week (none if the week has no partition).
pub type CellShards = Arc<dyn Fn(i64) -> Vec<Arc<dyn SliceReader>> + Send + Sync>;

/// Runs the reads of shards held on other nodes at the same time.
///
/// Contract: `run` runs every task to its end, each possibly on a thread
/// of its own, and `here` on the calling thread meanwhile, and returns
/// only when all have finished; a panic in a task reaches the caller. The
/// node's implementation carries the calling thread's per-query read state
/// into the tasks and back.
pub trait Fanout: Send + Sync {
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>, here: &mut dyn FnMut());
}

/// A [`Fanout`] on scoped threads, with no per-query state to carry.
pub struct ScopedThreads;

impl Fanout for ScopedThreads {
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>, here: &mut dyn FnMut()) {
        std::thread::scope(|s| {
            let running: Vec<_> = tasks.into_iter().map(|t| s.spawn(t)).collect();
            here();
            for r in running {
                if let Err(panic) = r.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
}

pub struct ShardedSource {
    layout: Layout,
    meta: Arc<dyn Catalog>,
    cells: CellShards,
    persons: Vec<Arc<dyn SliceReader>>,
    fanout: Arc<dyn Fanout>,
    batch: Option<Arc<dyn BatchReads>>,
}

/// Hours read per step when walking the hour slices backwards: the first
/// step, doubling up to the last (a walk that goes on is likely to go far,
/// and each step costs a round trip to a remote shard).
const REV_STEP_HOURS: i64 = 24;
const REV_STEP_MAX_HOURS: i64 = 7 * 24;

/// Most days in one read of several days: a week's window, wherever it
/// starts, is one read, and a long window's replies (and what is held
/// here until a read's days are handed on) stay a few days' worth.
const DAYS_PER_READ: usize = 8;

/// One shard's part in [`ShardedSource::each_shard`]: a shard to read on
/// this thread, or what a remote shard's read gathered.
enum Part<'s, T> {
    Here(&'s dyn SliceReader),
    Got(T),
}

impl ShardedSource {
    /// `cells(week)` gives the cell shards of a week; `persons[i]` must be
    /// person shard `i` of `layout`.
    pub fn new(
        layout: Layout,
        meta: Arc<dyn Catalog>,
        cells: CellShards,
        persons: Vec<Arc<dyn SliceReader>>,
    ) -> Self {
        assert_eq!(
            persons.len(),
            layout.persons as usize,
            "one store per person shard"
        );
        Self {
            layout,
            meta,
            cells,
            persons,
            fanout: Arc::new(ScopedThreads),
            batch: None,
        }
    }

    /// Runs the reads of remote shards through `fanout` (default:
    /// [`ScopedThreads`]).
    pub fn with_fanout(mut self, fanout: Arc<dyn Fanout>) -> Self {
        self.fanout = fanout;
        self
    }

    /// Reads the remote shards that name their cluster shard through
    /// `batch`, one request per node (default: each shard alone).
    pub fn with_batches(mut self, batch: Arc<dyn BatchReads>) -> Self {
        self.batch = Some(batch);
        self
    }

    fn person_store(&self, id: u32) -> &Arc<dyn SliceReader> {
        &self.persons[self.layout.person_shard(id)]
    }

    /// Reads `read` on every shard of `shards`: the remote ones all at the
    /// same time (those that name their cluster shard together, through
    /// the [`BatchReads`] if there is one; each other one alone), while
    /// `visit` gets [`Part::Here`] for each local one on this thread; then
    /// `visit` gets [`Part::Got`] with each remote answer, as `take`
    /// unpacks it. The first error is returned (after every read has
    /// finished).
    fn each_shard<T: Send>(
        &self,
        shards: &[Arc<dyn SliceReader>],
        read: &SliceRead,
        take: fn(SliceAnswer) -> Result<T>,
        visit: &mut dyn FnMut(Part<'_, T>) -> Result<()>,
    ) -> Result<()> {
        let fetch = |s: &dyn SliceReader| read.run(s).and_then(take);
        let (remote, local): (Vec<&Arc<dyn SliceReader>>, Vec<_>) =
            shards.iter().partition(|s| s.remote());
        let batch = self.batch.as_deref();
        let batched: Vec<(ShardId, &Arc<dyn SliceReader>)> = match batch {
            Some(_) => remote
                .iter()
                .filter_map(|s| s.shard().map(|id| (id, *s)))
                .collect(),
            None => Vec::new(),
        };
        let alone: Vec<&Arc<dyn SliceReader>> = remote
            .iter()
            .copied()
            .filter(|s| batch.is_none() || s.shard().is_none())
            .collect();
        if shards.len() <= 1 || remote.is_empty() {
            // Nothing to overlap: read in turn on this thread.
            for s in shards {
                if s.remote() {
                    visit(Part::Got(fetch(s.as_ref())?))?;
                } else {
                    visit(Part::Here(s.as_ref()))?;
                }
            }
            return Ok(());
        }
        let mut answers: Vec<Option<Result<T>>> = alone.iter().map(|_| None).collect();
        let mut together: Vec<Result<T>> = Vec::new();
        let mut tasks: Vec<Box<dyn FnOnce() + Send + '_>> = Vec::new();
        if let (Some(batch), false) = (batch, batched.is_empty()) {
            let (out, fetch, batched) = (&mut together, &fetch, &batched);
            tasks.push(Box::new(move || {
                let ids: Vec<ShardId> = batched.iter().map(|(id, _)| *id).collect();
                let mut got = batch.read_batch(&ids, read).into_iter();
                // A shard the batch left alone is read on its own.
                *out = batched
                    .iter()
                    .map(|(_, s)| match got.next().flatten() {
                        Some(r) => r.and_then(take),
                        None => fetch(s.as_ref()),
                    })
                    .collect();
            }));
        }
        for (s, slot) in alone.iter().zip(answers.iter_mut()) {
            let fetch = &fetch;
            tasks.push(Box::new(move || *slot = Some(fetch(s.as_ref()))));
        }
        let mut here = Ok(());
        self.fanout.run(tasks, &mut || {
            for s in &local {
                if let Err(e) = visit(Part::Here(s.as_ref())) {
                    here = Err(e);
                    return;
                }
            }
        });
        here?;
        if together.len() != batched.len() {
            return Err(QueryError::Unavailable(
                "a batch of shard reads did not run".into(),
            ));
        }
        for got in together {
            visit(Part::Got(got?))?;
        }
        for a in answers {
            let got = a.unwrap_or_else(|| {
                Err(QueryError::Unavailable("a shard read did not run".into()))
            })?;
            visit(Part::Got(got))?;
        }
        Ok(())
    }
}

impl SliceReader for ShardedSource {
    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        let shards = (self.cells)(week_of_day(day));
        self.each_shard(
            &shards,
            &SliceRead::CellDays { day, lo, hi },
            SliceAnswer::cells,
            &mut |part| match part {
                Part::Here(s) => s.cell_days(day, lo, hi, f),
                Part::Got(cells) => {
                    for (c, set) in cells {
                        f(c, &set);
                    }
                    Ok(())
                }
            },
        )
    }

    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        let shards = (self.cells)(week_of_day(day));
        self.each_shard(
            &shards,
            // A remote shard sends every cell of the ranges; `keep` is
            // asked here.
            &SliceRead::CellDaysIn {
                day,
                ranges: ranges.to_vec(),
            },
            SliceAnswer::cells,
            &mut |part| match part {
                Part::Here(s) => s.cell_days_in(day, ranges, keep, f),
                Part::Got(cells) => {
                    for (c, set) in cells {
                        if keep(c) {
                            f(c, &set);
                        }
                    }
                    Ok(())
                }
            },
        )
    }

    fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
        let mut found: Option<DaySet> = None;
        let mut merged = false;
        let shards = (self.cells)(week_of_day(day));
        self.each_shard(
            &shards,
            &SliceRead::AddressDay { day, address_id },
            SliceAnswer::day,
            &mut |part| {
                let got = match part {
                    Part::Here(s) => s.address_day(day, address_id)?,
                    Part::Got(got) => got,
                };
                if let Some(set) = got {
                    match &mut found {
                        None => found = Some(set),
                        Some(acc) => {
                            acc.extend(set);
                            merged = true;
                        }
                    }
                }
                Ok(())
            },
        )?;
        if merged {
            if let Some(acc) = &mut found {
                acc.sort_unstable();
                hourcell_storage::codec::fold_day_set(acc);
            }
        }
        Ok(found)
    }

    fn day_sets(
        &self,
        days: &[i64],
        keys: &DayKeys,
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(i64, u64, &[(u32, u32)]),
    ) -> Result<()> {
        if days.len() > DAYS_PER_READ {
            for chunk in days.chunks(DAYS_PER_READ) {
                self.day_sets(chunk, keys, keep, f)?;
            }
            return Ok(());
        }
        let mut weeks: Vec<i64> = days.iter().map(|&d| week_of_day(d)).collect();
        weeks.dedup();
        let shards: Vec<Arc<dyn SliceReader>> =
            weeks.iter().flat_map(|&w| (self.cells)(w)).collect();
        // Gathered by day, so that `f` gets a day's sets together.
        let mut by_day: BTreeMap<i64, Vec<(u64, DaySet)>> = BTreeMap::new();
        let cells = matches!(keys, DayKeys::Cells(_));
        let read = SliceRead::DaySets {
            days: days.to_vec(),
            keys: keys.clone(),
        };
        let got = self.each_shard(&shards, &read, SliceAnswer::day_sets, &mut |part| {
            match part {
                Part::Here(s) => {
                    // Only the days of the shard's own week.
                    let week = s.shard().map(|id| id.week);
                    let mine: Vec<i64> = days
                        .iter()
                        .copied()
                        .filter(|&d| week.is_none_or(|w| week_of_day(d) == w))
                        .collect();
                    s.day_sets(&mine, keys, keep, &mut |d, k, set| {
                        by_day.entry(d).or_default().push((k, set.to_vec()))
                    })?;
                }
                Part::Got(got) => {
                    for (d, k, set) in got {
                        if !cells || keep(k) {
                            by_day.entry(d).or_default().push((k, set));
                        }
                    }
                }
            }
            Ok(())
        });
        match got {
            Ok(()) => {
                for (d, sets) in by_day {
                    for (k, set) in sets {
                        f(d, k, &set);
                    }
                }
                Ok(())
            }
            // A node older than this read: a day at a time.
            Err(QueryError::UnknownRead(_)) => day_sets_by_day(self, days, keys, keep, f),
            Err(e) => Err(e),
        }
    }

    fn hour_slices(&self, from: i64, to: i64, f: &mut dyn FnMut(i64, RoaringBitmap)) -> Result<()> {
        if self.persons.len() == 1 {
            return self.persons[0].hour_slices(from, to, f);
        }
        let mut by_hour: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
        self.each_shard(
            &self.persons,
            &SliceRead::HourSlices { from, to },
            SliceAnswer::hours,
            &mut |part| {
                match part {
                    Part::Here(s) => {
                        s.hour_slices(from, to, &mut |h, b| *by_hour.entry(h).or_default() |= b)?
                    }
                    Part::Got(got) => {
                        for (h, b) in got {
                            *by_hour.entry(h).or_default() |= b;
                        }
                    }
                }
                Ok(())
            },
        )?;
        for (h, b) in by_hour {
            f(h, b);
        }
        Ok(())
    }

    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> Result<()> {
        if self.persons.len() == 1 {
            return self.persons[0].hour_slices_rev(before, f);
        }
        // A step at a time from every person shard at once, latest hour
        // first, until `f` has had enough or no shard holds anything
        // earlier.
        let mut upto = before;
        let mut step = REV_STEP_HOURS;
        loop {
            let from = upto - step;
            let mut by_hour: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
            let mut earlier = false;
            self.each_shard(
                &self.persons,
                &SliceRead::HourSlicesStep { before: upto, from },
                SliceAnswer::step,
                &mut |part| {
                    let (got, more) = match part {
                        Part::Here(s) => s.hour_slices_step(upto, from)?,
                        Part::Got(got) => got,
                    };
                    earlier |= more;
                    for (h, b) in got {
                        *by_hour.entry(h).or_default() |= b;
                    }
                    Ok(())
                },
            )?;
            for (h, b) in by_hour.into_iter().rev() {
                if !f(h, b) {
                    return Ok(());
                }
            }
            if !earlier {
                return Ok(());
            }
            upto = from;
            step = (step * 2).min(REV_STEP_MAX_HOURS);
        }
    }

    fn person_hours(&self, person: u64, from: i64, to: i64) -> Result<Vec<(i64, Vec<PlaceEntry>)>> {
        match self.meta.internal_id(person) {
            Some(id) => self.person_store(id).person_hours(person, from, to),
            None => Ok(Vec::new()),
        }
    }

    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> Result<Option<i64>> {
        self.person_store(id).last_active_before(id, before, keep)
    }

    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]) -> Result<()>,
    ) -> Result<()> {
        for s in &self.persons {
            s.scan_person_days(from_day, to_day, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourcell_storage::{MemEngine, MetaStore};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// A remote shard whose reads wait (up to 10 s) until `want` reads are
    /// in flight at once, then answer one cell or hour: read one after
    /// another, they would each wait the whole timeout.
    struct Rendezvous {
        cell: u64,
        want: usize,
        state: Arc<(Mutex<(usize, usize)>, Condvar)>,
    }

    impl Rendezvous {
        fn meet(&self) {
            let (m, cv) = &*self.state;
            let mut g = m.lock().unwrap();
            g.0 += 1;
            g.1 = g.1.max(g.0);
            cv.notify_all();
            let (mut g, _) = cv
                .wait_timeout_while(g, Duration::from_secs(10), |g| g.1 < self.want)
                .unwrap();
            g.0 -= 1;
        }
    }

    impl SliceReader for Rendezvous {
        fn remote(&self) -> bool {
            true
        }
        fn cell_days(
            &self,
            _: i64,
            _: u64,
            _: u64,
            f: &mut dyn FnMut(u64, &[(u32, u32)]),
        ) -> Result<()> {
            self.meet();
            f(self.cell, &[(self.cell as u32, 1)]);
            Ok(())
        }
        fn cell_days_in(
            &self,
            day: i64,
            _: &[(u64, u64)],
            keep: &mut dyn FnMut(u64) -> bool,
            f: &mut dyn FnMut(u64, &[(u32, u32)]),
        ) -> Result<()> {
            self.cell_days(day, 0, 0, &mut |c, s| {
                if keep(c) {
                    f(c, s)
                }
            })
        }
        fn address_day(&self, _: i64, _: u32) -> Result<Option<DaySet>> {
            self.meet();
            Ok(Some(vec![(self.cell as u32, 1)]))
        }
        fn hour_slices(&self, _: i64, _: i64, f: &mut dyn FnMut(i64, RoaringBitmap)) -> Result<()> {
            self.meet();
            f(1, [self.cell as u32].into_iter().collect());
            Ok(())
        }
        fn hour_slices_rev(
            &self,
            _: i64,
            _: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
        ) -> Result<()> {
            Ok(())
        }
        fn person_hours(&self, _: u64, _: i64, _: i64) -> Result<Vec<(i64, Vec<PlaceEntry>)>> {
            Ok(Vec::new())
        }
        fn last_active_before(
            &self,
            _: u32,
            _: i64,
            _: &mut dyn FnMut(&[PlaceEntry]) -> bool,
        ) -> Result<Option<i64>> {
            Ok(None)
        }
        fn scan_person_days(
            &self,
            _: i64,
            _: i64,
            _: &mut dyn FnMut(u32, &[PlaceIds]) -> Result<()>,
        ) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn remote_shards_are_read_at_the_same_time_and_merged_alike() {
        const CELLS: u32 = 4;
        let state = Arc::new((Mutex::new((0, 0)), Condvar::new()));
        let shards = |n: u32, state: &Arc<(Mutex<(usize, usize)>, Condvar)>| {
            (0..n)
                .map(|i| {
                    Arc::new(Rendezvous {
                        cell: u64::from(i) + 1,
                        want: n as usize,
                        state: state.clone(),
                    }) as Arc<dyn SliceReader>
                })
                .collect::<Vec<_>>()
        };
        let cells: Vec<Arc<dyn SliceReader>> = shards(CELLS, &state);
        let meta = Arc::new(MetaStore::open(MemEngine::new(), Some(16)).unwrap());
        let persons = shards(2, &Arc::new((Mutex::new((0, 0)), Condvar::new())));
        let s = ShardedSource::new(
            Layout::new(CELLS, 2).unwrap(),
            meta,
            Arc::new(move |_| cells.clone()),
            persons,
        );
        let mut got = Vec::new();
        s.cell_days_in(0, &[(0, u64::MAX)], &mut |c| c != 2, &mut |c, set| {
            got.push((c, set.to_vec()))
        })
        .unwrap();
        got.sort_unstable();
        assert_eq!(
            got,
            vec![(1, vec![(1, 1)]), (3, vec![(3, 1)]), (4, vec![(4, 1)])]
        );
        assert_eq!(
            s.address_day(0, 7).unwrap(),
            Some(vec![(1, 1), (2, 1), (3, 1), (4, 1)])
        );
        let mut hours = Vec::new();
        s.hour_slices(0, 2, &mut |h, b| {
            hours.push((h, b.iter().collect::<Vec<_>>()))
        })
        .unwrap();
        assert_eq!(hours, vec![(1, vec![1, 2])]);
        // Read in turn, each would have waited out its timeout alone.
        assert_eq!(
            state.0.lock().unwrap().1,
            CELLS as usize,
            "reads overlapped"
        );
    }
}
