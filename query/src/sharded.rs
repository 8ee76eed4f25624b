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
//! - The person index and the all-persons hour slices: the person shard
//!   `id % persons`. Hour slices of different person shards hold disjoint
//!   persons and are unioned per hour.

use std::collections::BTreeMap;
use std::sync::Arc;

use hourcell_storage::shard::{week_of_day, Layout};
use hourcell_storage::{DaySet, PlaceEntry, PlaceIds};
use roaring::RoaringBitmap;

use crate::error::Result;
use crate::source::{Catalog, SliceReader};

/// The cell shards of a week (none if the week has no partition).
pub type CellShards = Arc<dyn Fn(i64) -> Vec<Arc<dyn SliceReader>> + Send + Sync>;

pub struct ShardedSource {
    layout: Layout,
    meta: Arc<dyn Catalog>,
    cells: CellShards,
    persons: Vec<Arc<dyn SliceReader>>,
}

/// Hours read per step when walking the hour slices backwards.
const REV_STEP_HOURS: i64 = 24;

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
        }
    }

    fn person_store(&self, id: u32) -> &Arc<dyn SliceReader> {
        &self.persons[self.layout.person_shard(id)]
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
        for s in (self.cells)(week_of_day(day)) {
            s.cell_days(day, lo, hi, f)?;
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
        for s in (self.cells)(week_of_day(day)) {
            s.cell_days_in(day, ranges, keep, f)?;
        }
        Ok(())
    }

    fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
        let mut found: Option<DaySet> = None;
        let mut merged = false;
        for s in (self.cells)(week_of_day(day)) {
            if let Some(set) = s.address_day(day, address_id)? {
                match &mut found {
                    None => found = Some(set),
                    Some(acc) => {
                        acc.extend(set);
                        merged = true;
                    }
                }
            }
        }
        if merged {
            if let Some(acc) = &mut found {
                acc.sort_unstable();
                hourcell_storage::codec::fold_day_set(acc);
            }
        }
        Ok(found)
    }

    fn hour_slices(&self, from: i64, to: i64, f: &mut dyn FnMut(i64, RoaringBitmap)) -> Result<()> {
        if self.persons.len() == 1 {
            return self.persons[0].hour_slices(from, to, f);
        }
        let mut by_hour: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
        for s in &self.persons {
            s.hour_slices(from, to, &mut |h, b| *by_hour.entry(h).or_default() |= b)?;
        }
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
        // A day at a time from every person shard, latest hour first, until
        // `f` has had enough or no shard holds anything earlier.
        let mut upto = before;
        loop {
            let from = upto - REV_STEP_HOURS;
            let mut by_hour: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
            let mut earlier = false;
            for s in &self.persons {
                s.hour_slices_rev(upto, &mut |h, b| {
                    if h < from {
                        earlier = true;
                        return false;
                    }
                    *by_hour.entry(h).or_default() |= b;
                    true
                })?;
            }
            for (h, b) in by_hour.into_iter().rev() {
                if !f(h, b) {
                    return Ok(());
                }
            }
            if !earlier {
                return Ok(());
            }
            upto = from;
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
