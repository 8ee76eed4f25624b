//! What the planner reads: slices through [`SliceReader`], names through
//! [`Catalog`]. A single node's store is both; the node's shard sources
//! are readers that route, over the metadata store's catalog.

use hourcell_storage::shard::ShardId;
use hourcell_storage::{
    AddressRecord, DaySet, KvEngine, PlaceEntry, PlaceIds, RegistrationRecord, Role, Store,
};
use roaring::RoaringBitmap;

use crate::error::Result;

/// Read access to population slices.
///
/// Contract: ids in bitmaps are the internal ids of one shared dictionary
/// (`external_ids` maps them back); each read sees every write acknowledged
/// before the read started.
pub trait SliceReader: Send + Sync {
    /// Each non-empty cell slice of UTC day `day` with a cell id in
    /// `[lo, hi]`: the cell and its (internal id, hour mask) pairs.
    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()>;
    /// Like `cell_days` over several inclusive, sorted, non-overlapping
    /// ranges, visiting only the cells `keep` accepts (the others are not
    /// decoded).
    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()>;
    /// The (internal id, hour mask) pairs of one address on UTC day `day`.
    fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>>;
    fn hour_slices(&self, from: i64, to: i64, f: &mut dyn FnMut(i64, RoaringBitmap)) -> Result<()>;
    /// The all-persons slices of hours before `before`, latest first, until
    /// `f` returns false.
    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> Result<()>;
    fn person_hours(&self, person: u64, from: i64, to: i64) -> Result<Vec<(i64, Vec<PlaceEntry>)>>;
    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> Result<Option<i64>>;
    /// Every person's places in UTC days `[from_day, to_day)`, person by
    /// person (`f(internal id, places sorted by hour)`): the bulk read of
    /// the rule layer.
    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]) -> Result<()>,
    ) -> Result<()>;

    /// Whether a read costs a round trip to another node (a shard held
    /// elsewhere): [`crate::ShardedSource`] runs such reads of several
    /// shards at the same time rather than one after another.
    fn remote(&self) -> bool {
        false
    }

    /// The cluster shard this reader reads, if it is one: the remote reads
    /// of shards that name theirs go through [`crate::BatchReads`], one
    /// request per node that holds some.
    fn shard(&self) -> Option<ShardId> {
        None
    }

    /// The day sets of several UTC days (`days` ascending) in one read:
    /// with [`DayKeys::Cells`], each cell slice of the ranges that `keep`
    /// accepts, as `f(day, cell, set)`; with [`DayKeys::Addresses`], each
    /// address's slice, as `f(day, address id, set)` (`keep` is not
    /// asked). `f` gets every set of a day before any of a later day's; a
    /// key may come more than once in a day (parts of it on several
    /// shards). A reader on another node answers all the days in one
    /// round trip.
    fn day_sets(
        &self,
        days: &[i64],
        keys: &DayKeys,
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(i64, u64, &[(u32, u32)]),
    ) -> Result<()> {
        day_sets_by_day(self, days, keys, keep, f)
    }

    /// One step of a walk backwards: the all-persons slices of the hours
    /// in `[from, before)`, latest first, and whether any hour before
    /// `from` holds one. A reader on another node answers it in one round
    /// trip.
    fn hour_slices_step(&self, before: i64, from: i64) -> Result<HourStep> {
        let mut got = Vec::new();
        let mut earlier = false;
        self.hour_slices_rev(before, &mut |h, b| {
            if h < from {
                earlier = true;
                return false;
            }
            got.push((h, b));
            true
        })?;
        Ok((got, earlier))
    }
}

/// What a read of several days ([`SliceReader::day_sets`]) reads of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayKeys {
    /// The cell slices of these inclusive, sorted, non-overlapping ranges
    /// (those the caller's `keep` accepts).
    Cells(Vec<(u64, u64)>),
    /// These addresses' slices.
    Addresses(Vec<u32>),
}

/// [`SliceReader::day_sets`] a day at a time, through `cell_days_in` and
/// `address_day`: every reader's default, and what a cluster falls back
/// to when a node does not serve reads of several days.
pub fn day_sets_by_day(
    s: &(impl SliceReader + ?Sized),
    days: &[i64],
    keys: &DayKeys,
    keep: &mut dyn FnMut(u64) -> bool,
    f: &mut dyn FnMut(i64, u64, &[(u32, u32)]),
) -> Result<()> {
    for &day in days {
        match keys {
            DayKeys::Cells(ranges) => {
                s.cell_days_in(day, ranges, keep, &mut |c, set| f(day, c, set))?
            }
            DayKeys::Addresses(ids) => {
                for &id in ids {
                    if let Some(set) = s.address_day(day, id)? {
                        f(day, u64::from(id), &set);
                    }
                }
            }
        }
    }
    Ok(())
}

/// What [`SliceReader::hour_slices_step`] returns: `(hour, slice)` latest
/// first, and whether earlier hours hold any.
pub type HourStep = (Vec<(i64, RoaringBitmap)>, bool);

/// The metadata a query resolves names with: the person-id dictionary,
/// source labels, addresses, areas and the registry. In a sharded cluster
/// it is the metadata group's store; slices come from elsewhere.
pub trait Catalog: Send + Sync {
    fn slice_level(&self) -> u8;
    fn internal_id(&self, person: u64) -> Option<u32>;
    fn external_id(&self, id: u32) -> Option<u64>;
    fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64>;
    /// External ids of sorted, deduplicated internal ids, ascending.
    fn external_ids_of(&self, ids: &[u32]) -> Vec<u64>;
    /// Source labels by source id.
    fn source_labels(&self) -> Vec<String>;
    /// Calls `f` with every address (unordered).
    fn for_each_address(&self, f: &mut dyn FnMut(&AddressRecord));
    fn address(&self, code: &str) -> Option<AddressRecord>;
    /// `(id, lat, lng, slice cell)` of an address, without copying its
    /// record (validation does this for most events).
    fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)>;
    fn area_addresses(&self, area: &str) -> Vec<u32>;
    fn area_exists(&self, area: &str) -> bool;
    /// Calls `f` with each registration (unordered) and the person's
    /// internal id (if the person was ever seen); with `with_address` also
    /// the registered address's record, otherwise `None` (the lookup costs a
    /// string hash per registration).
    fn for_each_registration(
        &self,
        with_address: bool,
        f: &mut dyn FnMut(&RegistrationRecord, Option<&AddressRecord>, Option<u32>),
    );
}

/// A store that holds both its catalog and its slices (a single node's,
/// or one shard read directly).
pub trait SliceSource: Catalog + SliceReader {}

impl<T: Catalog + SliceReader + ?Sized> SliceSource for T {}

impl<E: KvEngine, R: Role> SliceReader for Store<E, R> {
    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        Ok(Store::cell_days(self, day, lo, hi, f)?)
    }
    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        Ok(Store::cell_days_in(self, day, ranges, keep, f)?)
    }
    fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
        Ok(Store::address_day(self, day, address_id)?)
    }
    fn hour_slices(&self, from: i64, to: i64, f: &mut dyn FnMut(i64, RoaringBitmap)) -> Result<()> {
        Ok(Store::hour_slices(self, from, to, f)?)
    }
    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> Result<()> {
        Ok(Store::hour_slices_rev(self, before, f)?)
    }
    fn person_hours(&self, person: u64, from: i64, to: i64) -> Result<Vec<(i64, Vec<PlaceEntry>)>> {
        match Store::internal_id(self, person) {
            Some(id) => Ok(Store::person_hours(self, id, from, to)?),
            None => Ok(Vec::new()),
        }
    }
    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> Result<Option<i64>> {
        Ok(Store::last_active_before(
            self,
            id,
            hourcell_storage::keys::MIN_HOUR,
            before,
            keep,
        )?)
    }
    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]) -> Result<()>,
    ) -> Result<()> {
        Ok(Store::scan_person_days(self, from_day, to_day, f)?)
    }
}

impl<E: KvEngine, R: Role> Catalog for Store<E, R> {
    fn slice_level(&self) -> u8 {
        Store::slice_level(self)
    }
    fn internal_id(&self, person: u64) -> Option<u32> {
        Store::internal_id(self, person)
    }
    fn external_id(&self, id: u32) -> Option<u64> {
        Store::external_id(self, id)
    }
    fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64> {
        Store::external_ids(self, b)
    }
    fn external_ids_of(&self, ids: &[u32]) -> Vec<u64> {
        Store::external_ids_of(self, ids)
    }
    fn source_labels(&self) -> Vec<String> {
        Store::source_labels(self)
    }
    fn for_each_address(&self, f: &mut dyn FnMut(&AddressRecord)) {
        self.with_addresses(|m| m.values().for_each(|a| f(a)))
    }
    fn address(&self, code: &str) -> Option<AddressRecord> {
        Store::address(self, code)
    }
    fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)> {
        Store::address_point(self, code)
    }
    fn area_addresses(&self, area: &str) -> Vec<u32> {
        Store::area_addresses(self, area)
    }
    fn area_exists(&self, area: &str) -> bool {
        Store::area_exists(self, area)
    }
    fn for_each_registration(
        &self,
        with_address: bool,
        f: &mut dyn FnMut(&RegistrationRecord, Option<&AddressRecord>, Option<u32>),
    ) {
        self.with_registry(|regs, addrs, ids| {
            for r in regs.values() {
                let a = if with_address {
                    addrs.get(&r.address)
                } else {
                    None
                };
                f(r, a, ids.get(&r.person).copied());
            }
        })
    }
}
