//! [`ShardedSource`]: one [`SliceSource`] over the stores of a sharded
//! cluster (see `hourcell_storage::shard`). The query engine and the rules
//! run on it unchanged.
//!
//! - Dictionaries, addresses and the registry come from the metadata store.
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
use hourcell_storage::{AddressRecord, DaySet, PlaceEntry, PlaceIds, RegistrationRecord};
use roaring::RoaringBitmap;

use crate::error::Result;
use crate::source::SliceSource;

/// The cell shards of a week (none if the week has no partition).
pub type CellShards = Arc<dyn Fn(i64) -> Vec<Arc<dyn SliceSource>> + Send + Sync>;

pub struct ShardedSource {
    layout: Layout,
    meta: Arc<dyn SliceSource>,
    cells: CellShards,
    persons: Vec<Arc<dyn SliceSource>>,
}

/// Hours read per step when walking the hour slices backwards.
const REV_STEP_HOURS: i64 = 24;

impl ShardedSource {
    /// `cells(week)` gives the cell shards of a week; `persons[i]` must be
    /// person shard `i` of `layout`.
    pub fn new(
        layout: Layout,
        meta: Arc<dyn SliceSource>,
        cells: CellShards,
        persons: Vec<Arc<dyn SliceSource>>,
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

    fn person_store(&self, id: u32) -> &Arc<dyn SliceSource> {
        &self.persons[self.layout.person_shard(id)]
    }
}

impl SliceSource for ShardedSource {
    fn slice_level(&self) -> u8 {
        self.meta.slice_level()
    }

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

    fn internal_id(&self, person: u64) -> Option<u32> {
        self.meta.internal_id(person)
    }

    fn external_id(&self, id: u32) -> Option<u64> {
        self.meta.external_id(id)
    }

    fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64> {
        self.meta.external_ids(b)
    }

    fn external_ids_of(&self, ids: &[u32]) -> Vec<u64> {
        self.meta.external_ids_of(ids)
    }

    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]),
    ) -> Result<()> {
        for s in &self.persons {
            s.scan_person_days(from_day, to_day, f)?;
        }
        Ok(())
    }

    fn source_labels(&self) -> Vec<String> {
        self.meta.source_labels()
    }

    fn for_each_address(&self, f: &mut dyn FnMut(&AddressRecord)) {
        self.meta.for_each_address(f)
    }

    fn address(&self, code: &str) -> Option<AddressRecord> {
        self.meta.address(code)
    }

    fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)> {
        self.meta.address_point(code)
    }

    fn area_addresses(&self, area: &str) -> Vec<u32> {
        self.meta.area_addresses(area)
    }

    fn area_exists(&self, area: &str) -> bool {
        self.meta.area_exists(area)
    }

    fn for_each_registration(
        &self,
        with_address: bool,
        f: &mut dyn FnMut(&RegistrationRecord, Option<&AddressRecord>, Option<u32>),
    ) {
        self.meta.for_each_registration(with_address, f)
    }
}
