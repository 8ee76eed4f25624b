//! Reads of several remote shards at once: the read [`crate::ShardedSource`]
//! makes of every shard of a fan-out, as a value ([`SliceRead`]) that a
//! node can send once for all the shards another node holds, and each
//! shard's answer ([`SliceAnswer`]). [`BatchReads`] is what the node
//! supplies to send them: one request per node rather than one per shard.

use hourcell_storage::shard::ShardId;
use hourcell_storage::DaySet;
use roaring::RoaringBitmap;

use crate::error::{QueryError, Result};
use crate::source::{DayKeys, HourStep, SliceReader};

/// One read, the same on every shard of a fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceRead {
    /// [`SliceReader::cell_days`].
    CellDays { day: i64, lo: u64, hi: u64 },
    /// [`SliceReader::cell_days_in`], every cell of the ranges (the
    /// caller's `keep` is asked where the answers are merged).
    CellDaysIn { day: i64, ranges: Vec<(u64, u64)> },
    /// [`SliceReader::address_day`].
    AddressDay { day: i64, address_id: u32 },
    /// [`SliceReader::hour_slices`].
    HourSlices { from: i64, to: i64 },
    /// [`SliceReader::hour_slices_step`].
    HourSlicesStep { before: i64, from: i64 },
    /// [`SliceReader::day_sets`], every cell of the ranges (the caller's
    /// `keep` is asked where the answers are merged). Sent to the shards
    /// of every week the days fall in; each answers for the days it holds.
    DaySets { days: Vec<i64>, keys: DayKeys },
}

/// Cell slices as gathered from a shard: (cell, its day set).
pub type Cells = Vec<(u64, DaySet)>;

/// Day sets of several days as gathered from a shard: (day, cell or
/// address id, its day set), days ascending.
pub type DaySets = Vec<(i64, u64, DaySet)>;

/// One shard's answer to a [`SliceRead`], by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum SliceAnswer {
    /// To `CellDays` and `CellDaysIn`.
    Cells(Cells),
    /// To `AddressDay`.
    Day(Option<DaySet>),
    /// To `HourSlices`: (hour, slice), earliest first.
    Hours(Vec<(i64, RoaringBitmap)>),
    /// To `HourSlicesStep`.
    Step(HourStep),
    /// To `DaySets`.
    DaySets(DaySets),
}

impl SliceRead {
    /// Runs the read on one shard.
    pub fn run(&self, s: &dyn SliceReader) -> Result<SliceAnswer> {
        Ok(match self {
            SliceRead::CellDays { day, lo, hi } => {
                let mut out = Vec::new();
                s.cell_days(*day, *lo, *hi, &mut |c, set| out.push((c, set.to_vec())))?;
                SliceAnswer::Cells(out)
            }
            SliceRead::CellDaysIn { day, ranges } => {
                let mut out = Vec::new();
                s.cell_days_in(*day, ranges, &mut |_| true, &mut |c, set| {
                    out.push((c, set.to_vec()))
                })?;
                SliceAnswer::Cells(out)
            }
            SliceRead::AddressDay { day, address_id } => {
                SliceAnswer::Day(s.address_day(*day, *address_id)?)
            }
            SliceRead::HourSlices { from, to } => {
                let mut out = Vec::new();
                s.hour_slices(*from, *to, &mut |h, b| out.push((h, b)))?;
                SliceAnswer::Hours(out)
            }
            SliceRead::HourSlicesStep { before, from } => {
                SliceAnswer::Step(s.hour_slices_step(*before, *from)?)
            }
            SliceRead::DaySets { days, keys } => {
                let mut out = Vec::new();
                s.day_sets(days, keys, &mut |_| true, &mut |d, k, set| {
                    out.push((d, k, set.to_vec()))
                })?;
                SliceAnswer::DaySets(out)
            }
        })
    }
}

fn mismatch(want: &str, got: &SliceAnswer) -> QueryError {
    QueryError::Unavailable(format!(
        "a shard answered a read of {want} with {}",
        match got {
            SliceAnswer::Cells(_) => "cell slices",
            SliceAnswer::Day(_) => "an address day",
            SliceAnswer::Hours(_) => "hour slices",
            SliceAnswer::Step(_) => "a step of hour slices",
            SliceAnswer::DaySets(_) => "day sets of several days",
        }
    ))
}

impl SliceAnswer {
    pub fn cells(self) -> Result<Cells> {
        match self {
            SliceAnswer::Cells(c) => Ok(c),
            other => Err(mismatch("cell slices", &other)),
        }
    }

    pub fn day(self) -> Result<Option<DaySet>> {
        match self {
            SliceAnswer::Day(d) => Ok(d),
            other => Err(mismatch("an address day", &other)),
        }
    }

    pub fn hours(self) -> Result<Vec<(i64, RoaringBitmap)>> {
        match self {
            SliceAnswer::Hours(h) => Ok(h),
            other => Err(mismatch("hour slices", &other)),
        }
    }

    pub fn day_sets(self) -> Result<DaySets> {
        match self {
            SliceAnswer::DaySets(d) => Ok(d),
            other => Err(mismatch("day sets of several days", &other)),
        }
    }

    pub fn step(self) -> Result<HourStep> {
        match self {
            SliceAnswer::Step(s) => Ok(s),
            other => Err(mismatch("a step of hour slices", &other)),
        }
    }
}

/// Reads of shards held on other nodes, batched per node.
///
/// Contract: `read_batch` reads `read` on every shard of `shards` (each
/// one that [`SliceReader::remote`] said is held elsewhere, named by
/// [`SliceReader::shard`]), with one request to each node that serves
/// some of them, the nodes at the same time, and returns one entry per
/// shard, in order: its answer or the error that ended its read, or
/// `None` for a shard the batch leaves alone (the caller then reads it
/// through its own [`SliceReader`]). It runs on the thread of a
/// [`crate::Fanout`] task, so it sees the query's per-thread read state.
pub trait BatchReads: Send + Sync {
    fn read_batch(&self, shards: &[ShardId], read: &SliceRead) -> Vec<Option<Result<SliceAnswer>>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardedSource;
    use hourcell_storage::shard::Layout;
    use hourcell_storage::{MemEngine, MetaStore, PlaceEntry, PlaceIds, ShardPart};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A shard holding cell `k` and person `k` at hour `k` (`k` = its
    /// number), held here or elsewhere, counting the reads made of it.
    struct Fixed {
        id: ShardId,
        k: u32,
        remote: bool,
        reads: AtomicUsize,
    }

    impl Fixed {
        /// Whether the day is of the shard's week (a cell shard holds no
        /// other).
        fn holds(&self, day: i64) -> bool {
            self.id.part == ShardPart::Persons
                || hourcell_storage::shard::week_of_day(day) == self.id.week
        }
    }

    impl SliceReader for Fixed {
        fn remote(&self) -> bool {
            self.remote
        }
        fn shard(&self) -> Option<ShardId> {
            Some(self.id)
        }
        fn cell_days(
            &self,
            day: i64,
            lo: u64,
            hi: u64,
            f: &mut dyn FnMut(u64, &[(u32, u32)]),
        ) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let c = u64::from(self.k);
            if (lo..=hi).contains(&c) && self.holds(day) {
                f(c, &[(self.k, 1 << (self.k % 24))]);
            }
            Ok(())
        }
        fn cell_days_in(
            &self,
            day: i64,
            ranges: &[(u64, u64)],
            keep: &mut dyn FnMut(u64) -> bool,
            f: &mut dyn FnMut(u64, &[(u32, u32)]),
        ) -> Result<()> {
            for &(lo, hi) in ranges {
                self.cell_days(day, lo, hi, &mut |c, s| {
                    if keep(c) {
                        f(c, s)
                    }
                })?;
            }
            Ok(())
        }
        fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok((address_id == 7 && self.holds(day)).then(|| vec![(self.k, 1)]))
        }
        fn hour_slices(
            &self,
            from: i64,
            to: i64,
            f: &mut dyn FnMut(i64, RoaringBitmap),
        ) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let h = i64::from(self.k);
            if (from..to).contains(&h) {
                f(h, [self.k, 100].into_iter().collect());
            }
            Ok(())
        }
        fn hour_slices_rev(
            &self,
            before: i64,
            f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
        ) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let h = i64::from(self.k) * 40;
            if h < before {
                f(h, [self.k].into_iter().collect());
            }
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

    /// Answers a batch from the shards themselves, recording each batch;
    /// leaves `skip` alone. With `old`, refuses reads of several days as a
    /// node from before them does.
    struct Recording {
        shards: HashMap<ShardId, Arc<Fixed>>,
        skip: Option<ShardId>,
        old: bool,
        batches: Mutex<Vec<Vec<ShardId>>>,
    }

    impl BatchReads for Recording {
        fn read_batch(
            &self,
            shards: &[ShardId],
            read: &SliceRead,
        ) -> Vec<Option<Result<SliceAnswer>>> {
            self.batches.lock().unwrap().push(shards.to_vec());
            if self.old && matches!(read, SliceRead::DaySets { .. }) {
                return shards
                    .iter()
                    .map(|_| Some(Err(QueryError::UnknownRead("unknown shard read op".into()))))
                    .collect();
            }
            shards
                .iter()
                .map(|id| (Some(*id) != self.skip).then(|| read.run(self.shards[id].as_ref())))
                .collect()
        }
    }

    fn id(part: ShardPart, index: usize) -> ShardId {
        ShardId {
            part,
            week: 0,
            index,
        }
    }

    /// Every answer a source gives, as text.
    fn answers(s: &ShardedSource) -> Vec<String> {
        let mut out = Vec::new();
        let mut cells = Vec::new();
        s.cell_days(0, 0, 100, &mut |c, set| cells.push((c, set.to_vec())))
            .unwrap();
        cells.sort_unstable();
        out.push(format!("{cells:?}"));
        let mut cells = Vec::new();
        s.cell_days_in(0, &[(1, 3), (5, 100)], &mut |c| c != 2, &mut |c, set| {
            cells.push((c, set.to_vec()))
        })
        .unwrap();
        cells.sort_unstable();
        out.push(format!("{cells:?}"));
        out.push(format!("{:?}", s.address_day(0, 7).unwrap()));
        out.push(format!("{:?}", s.address_day(0, 8).unwrap()));
        // Three days of one week, in one read.
        for keys in [
            DayKeys::Cells(vec![(1, 3), (5, 100)]),
            DayKeys::Addresses(vec![7, 8]),
        ] {
            let mut sets = Vec::new();
            let mut last_day = i64::MIN;
            s.day_sets(&[0, 1, 2], &keys, &mut |c| c != 2, &mut |d, k, set| {
                assert!(d >= last_day, "days in order");
                last_day = d;
                sets.push((d, k, set.to_vec()))
            })
            .unwrap();
            sets.sort_unstable();
            out.push(format!("{sets:?}"));
        }
        let mut hours = Vec::new();
        s.hour_slices(0, 100, &mut |h, b| {
            hours.push((h, b.iter().collect::<Vec<_>>()))
        })
        .unwrap();
        out.push(format!("{hours:?}"));
        let mut rev = Vec::new();
        s.hour_slices_rev(1_000, &mut |h, b| {
            rev.push((h, b.iter().collect::<Vec<_>>()));
            true
        })
        .unwrap();
        out.push(format!("{rev:?}"));
        out
    }

    #[test]
    fn remote_shards_are_read_in_one_batch_and_answer_alike() {
        // Six cell shards, two held here; three person shards, one here.
        let cells: Vec<Arc<Fixed>> = (0..6)
            .map(|i| {
                Arc::new(Fixed {
                    id: id(ShardPart::Cells, i),
                    k: i as u32 + 1,
                    remote: i % 3 != 0,
                    reads: AtomicUsize::new(0),
                })
            })
            .collect();
        let persons: Vec<Arc<Fixed>> = (0..3)
            .map(|i| {
                Arc::new(Fixed {
                    id: id(ShardPart::Persons, i),
                    k: i as u32 + 10,
                    remote: i != 1,
                    reads: AtomicUsize::new(0),
                })
            })
            .collect();
        let source = || {
            let meta = Arc::new(MetaStore::open(MemEngine::new(), Some(16)).unwrap());
            let c: Vec<Arc<dyn SliceReader>> = cells
                .iter()
                .map(|s| s.clone() as Arc<dyn SliceReader>)
                .collect();
            ShardedSource::new(
                Layout::new(6, 3).unwrap(),
                meta,
                Arc::new(move |_| c.clone()),
                persons
                    .iter()
                    .map(|s| s.clone() as Arc<dyn SliceReader>)
                    .collect(),
            )
        };
        let reads_of = |i: usize| cells[i].reads.load(Ordering::SeqCst);
        let alone = answers(&source());
        let alone_reads = reads_of(4);
        let remote_cells: Vec<ShardId> = cells.iter().filter(|s| s.remote).map(|s| s.id).collect();
        let remote_persons: Vec<ShardId> =
            persons.iter().filter(|s| s.remote).map(|s| s.id).collect();
        // The batch leaves cell shard 4 to be read alone.
        let skip = id(ShardPart::Cells, 4);
        let batch = Arc::new(Recording {
            shards: cells
                .iter()
                .chain(&persons)
                .map(|s| (s.id, s.clone()))
                .collect(),
            skip: Some(skip),
            old: false,
            batches: Mutex::new(Vec::new()),
        });
        let batched = answers(&source().with_batches(batch.clone()));
        assert_eq!(batched, alone, "the same answers, read in batches");
        // One batch per step (cell_days, cell_days_in, two address days,
        // three days of cells and three of addresses, hour slices, and the
        // walk back: one step reaches hour 0), each holding every remote
        // shard and no local one.
        let got = batch.batches.lock().unwrap().clone();
        let want: Vec<Vec<ShardId>> = [&remote_cells; 6]
            .into_iter()
            .chain([&remote_persons; 2])
            .cloned()
            .collect();
        // The walk back steps 24 hours, then 48, 96... down to hour 0.
        assert_eq!(got[..8], want[..], "{got:?}");
        assert!(got[8..].iter().all(|b| *b == remote_persons), "{got:?}");
        // The shard the batch left alone was read through its own reader,
        // as often as without a batch.
        assert_eq!(reads_of(4) - alone_reads, alone_reads);
    }

    #[test]
    fn reads_of_several_days_fall_back_to_one_day_each_on_an_older_node() {
        // Four cell shards in each of weeks 0 and 1.
        let cells: Vec<Arc<Fixed>> = (0..8)
            .map(|i| {
                Arc::new(Fixed {
                    id: ShardId {
                        part: ShardPart::Cells,
                        week: (i / 4) as i64,
                        index: i % 4,
                    },
                    k: i as u32 + 1,
                    remote: i % 4 != 0,
                    reads: AtomicUsize::new(0),
                })
            })
            .collect();
        let source = |old: bool| {
            let meta = Arc::new(MetaStore::open(MemEngine::new(), Some(16)).unwrap());
            let c: Vec<Arc<dyn SliceReader>> = cells
                .iter()
                .map(|s| s.clone() as Arc<dyn SliceReader>)
                .collect();
            let of_week = move |w: i64| c[w as usize * 4..w as usize * 4 + 4].to_vec();
            let batch = Arc::new(Recording {
                shards: cells.iter().map(|s| (s.id, s.clone())).collect(),
                skip: None,
                old,
                batches: Mutex::new(Vec::new()),
            });
            let persons = vec![cells[0].clone() as Arc<dyn SliceReader>];
            let s =
                ShardedSource::new(Layout::new(4, 1).unwrap(), meta, Arc::new(of_week), persons)
                    .with_batches(batch.clone());
            (s, batch)
        };
        // A key's parts on several shards may come apart or merged: its
        // entries per day are what must agree.
        let read = |s: &ShardedSource, keys: &DayKeys| {
            let mut out: std::collections::BTreeMap<(i64, u64), Vec<(u32, u32)>> =
                Default::default();
            s.day_sets(&[3, 4, 5], keys, &mut |c| c != 3, &mut |d, k, set| {
                out.entry((d, k)).or_default().extend_from_slice(set)
            })
            .unwrap();
            out.values_mut().for_each(|v| v.sort_unstable());
            out
        };
        for keys in [DayKeys::Cells(vec![(0, 100)]), DayKeys::Addresses(vec![7])] {
            let (new, new_batches) = source(false);
            let (old, old_batches) = source(true);
            let want = read(&new, &keys);
            assert!(!want.is_empty());
            assert_eq!(read(&old, &keys), want, "{keys:?}");
            // Days 3 and 4 are of two weeks: the shards of both weeks in
            // one batch; the older node then gets one batch a day.
            assert_eq!(new_batches.batches.lock().unwrap().len(), 1);
            assert_eq!(old_batches.batches.lock().unwrap().len(), 1 + 3);
        }
    }

    #[test]
    fn a_long_window_is_read_a_few_days_at_a_time() {
        let shard = Arc::new(Fixed {
            id: id(ShardPart::Cells, 1),
            k: 1,
            remote: true,
            reads: AtomicUsize::new(0),
        });
        let batch = Arc::new(Recording {
            shards: [(shard.id, shard.clone())].into_iter().collect(),
            skip: None,
            old: false,
            batches: Mutex::new(Vec::new()),
        });
        let meta = Arc::new(MetaStore::open(MemEngine::new(), Some(16)).unwrap());
        let c: Vec<Arc<dyn SliceReader>> = vec![shard.clone(), shard.clone()];
        let persons = vec![shard.clone() as Arc<dyn SliceReader>];
        let s = ShardedSource::new(
            Layout::new(2, 1).unwrap(),
            meta,
            Arc::new(move |_| c.clone()),
            persons,
        )
        .with_batches(batch.clone());
        let days: Vec<i64> = (0..20).collect();
        let mut seen = Vec::new();
        s.day_sets(
            &days,
            &DayKeys::Addresses(vec![7]),
            &mut |_| true,
            &mut |d, _, _| seen.push(d),
        )
        .unwrap();
        // 20 days: reads of 8, 8 and 4 days, handed on in order.
        assert_eq!(batch.batches.lock().unwrap().len(), 3);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        // The shard holds week 0 (days 0 to 3), asked twice a read.
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }
}
