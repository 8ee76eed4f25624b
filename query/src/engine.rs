//! The four queries, planned over a [`Catalog`] and a [`SliceReader`].

use std::collections::HashSet;
use std::sync::Arc;

use hourcell_storage::cell;
use roaring::RoaringBitmap;

use crate::error::{QueryError, Result};
use crate::masks::MaskMerger;
use crate::region::{Region, SpatialPlan};
use crate::source::{Catalog, DayKeys, SliceReader, SliceSource};
use crate::time::{format_time, hour_ceil, hour_floor, Window};

/// The window's hours grouped by UTC day: `(day, mask)` with bit `h` set
/// for hour `day * 24 + h` inside the window, days ascending.
pub(crate) fn day_masks(w: &Window) -> Vec<(i64, u32)> {
    let mut out: Vec<(i64, u32)> = Vec::new();
    for h in w.hours() {
        let (day, bit) = (h.div_euclid(24), 1u32 << h.rem_euclid(24));
        match out.last_mut() {
            Some((d, m)) if *d == day => *m |= bit,
            _ => out.push((day, bit)),
        }
    }
    out
}

/// Counts the persons gathered in `masks` for `day` (its window hours
/// `mask`) into `counts` (one per hour of `w`) and `all`, and empties it.
fn count_day(
    masks: &mut MaskMerger,
    day: i64,
    mask: u32,
    w: &Window,
    all: &mut Vec<u32>,
    counts: &mut [u64],
) {
    // Per hour of the day, one lane each: the compiler turns this into a
    // few vector adds a person, with no chain of increments of the same
    // counter through memory.
    let mut day_counts = [0u32; 24];
    masks.merge(&mut |id, x| {
        all.push(id);
        for (b, c) in day_counts.iter_mut().enumerate() {
            *c += (x >> b) & 1;
        }
    });
    let first = day * 24 - w.from_hour;
    for (b, &c) in day_counts.iter().enumerate() {
        if mask & (1 << b) != 0 {
            counts[(first + b as i64) as usize] += u64::from(c);
        }
    }
}

/// The hour mask of `day` in [`day_masks`]'s output (0 for a day not in
/// it).
pub(crate) fn mask_of(masks: &[(i64, u32)], day: i64) -> u32 {
    masks
        .binary_search_by_key(&day, |m| m.0)
        .map_or(0, |i| masks[i].1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct WhoWasAtAnswer {
    pub window: Window,
    /// External person ids, ascending.
    pub persons: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourPlaces {
    pub hour: i64,
    pub cells: Vec<String>,
    pub addresses: Vec<String>,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WhereWasAnswer {
    pub window: Window,
    pub person: u64,
    pub hours: Vec<HourPlaces>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourCount {
    pub hour: i64,
    pub distinct: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OccupancyAnswer {
    pub window: Window,
    pub distinct: u64,
    pub hours: Vec<HourCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inactive {
    pub person: u64,
    /// Last hour with activity (in the activity scope) before `since`.
    pub last_seen_hour: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoActivityAnswer {
    /// `[hour(since), hour containing as_of]`: the hours searched for
    /// activity.
    pub window: Window,
    pub persons: Vec<Inactive>,
}

/// A region resolved against the catalog: spatial plan or address ids.
enum Resolved {
    Spatial(SpatialPlan),
    Addresses(Vec<u32>),
}

/// The four queries over a catalog (names → ids) and a slice reader.
#[derive(Clone)]
pub struct QueryEngine {
    catalog: Arc<dyn Catalog>,
    slices: Arc<dyn SliceReader>,
}

impl QueryEngine {
    /// Queries over one store that holds both (a single node's).
    pub fn new<S: SliceSource + 'static>(source: Arc<S>) -> Self {
        Self {
            catalog: source.clone(),
            slices: source,
        }
    }

    /// Queries whose names resolve in `catalog` and whose slices come from
    /// `slices` (a sharded cluster: the metadata store and the shards).
    pub fn with_parts(catalog: Arc<dyn Catalog>, slices: Arc<dyn SliceReader>) -> Self {
        Self { catalog, slices }
    }

    pub fn catalog(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    pub fn slices(&self) -> &dyn SliceReader {
        self.slices.as_ref()
    }

    fn resolve(&self, region: &Region, field: &'static str) -> Result<Resolved> {
        region.validate(field)?;
        match region {
            Region::Addresses(codes) => {
                let mut ids = Vec::with_capacity(codes.len());
                for c in codes {
                    match self.catalog.address(c) {
                        Some(a) => ids.push(a.id),
                        None => return Err(QueryError::invalid(field, c, "unknown address code")),
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                Ok(Resolved::Addresses(ids))
            }
            Region::Area(a) => {
                if !self.catalog.area_exists(a) {
                    return Err(QueryError::invalid(field, a, "unknown area code"));
                }
                let mut ids = self.catalog.area_addresses(a);
                ids.sort_unstable();
                ids.dedup();
                Ok(Resolved::Addresses(ids))
            }
            _ => Ok(Resolved::Spatial(
                SpatialPlan::new(region, self.catalog.slice_level()).expect("spatial region"),
            )),
        }
    }

    /// Calls `f(day, entries)` with the (id, hour mask) entries of each
    /// day set of `days` (ascending) that matches the region: the cell
    /// slices of every covering range whose cell intersects the region, or
    /// the listed addresses' slices; every set of a day before a later
    /// day's. An id may come more than once in a day (several cells or
    /// addresses). Whole sets rather than one call per entry: the callers'
    /// loops then run inline. All the days are one read, so a sharded
    /// cluster asks each node once for the whole window.
    fn for_each_day_set(
        &self,
        r: &Resolved,
        days: &[i64],
        f: &mut dyn FnMut(i64, &[(u32, u32)]),
    ) -> Result<()> {
        match r {
            Resolved::Spatial(plan) => self.slices.day_sets(
                days,
                &DayKeys::Cells(plan.ranges.clone()),
                &mut |c| plan.matches(c),
                &mut |day, _, set| f(day, set),
            ),
            Resolved::Addresses(ids) => self.slices.day_sets(
                days,
                &DayKeys::Addresses(ids.clone()),
                &mut |_| true,
                &mut |day, _, set| f(day, set),
            ),
        }
    }

    /// Ids are gathered into a vector and turned into one bitmap at the end:
    /// OR-ing thousands of small slices into a growing array container one
    /// at a time is quadratic, and it was 30% of who-was-at's time.
    fn to_bitmap(mut ids: Vec<u32>) -> RoaringBitmap {
        hourcell_storage::radix::sort_dedup_u32(&mut ids);
        RoaringBitmap::from_sorted_iter(ids).expect("sorted and deduplicated")
    }

    /// Persons (internal ids) present in the resolved region during any
    /// hour of the window: per UTC day, the day-set entries whose hour mask
    /// meets the window's hours of that day.
    fn window_bitmap(&self, r: &Resolved, w: &Window) -> Result<RoaringBitmap> {
        Ok(Self::to_bitmap(self.window_ids(r, w)?))
    }

    /// The ids of [`Self::window_bitmap`], unsorted and possibly repeated.
    fn window_ids(&self, r: &Resolved, w: &Window) -> Result<Vec<u32>> {
        // A 1 km circle over a day gathers a few thousand: start there
        // rather than regrow a dozen times.
        let mut ids = Vec::with_capacity(4096);
        let masks = day_masks(w);
        let days: Vec<i64> = masks.iter().map(|m| m.0).collect();
        self.for_each_day_set(r, &days, &mut |day, set| {
            let mask = mask_of(&masks, day);
            ids.extend(set.iter().filter(|e| e.1 & mask != 0).map(|e| e.0));
        })?;
        Ok(ids)
    }

    /// Internal ids of the persons with an event in hours `[from_hour,
    /// to_hour)`: anywhere (`scope` = `None`) or inside any of the regions.
    pub(crate) fn active_ids(
        &self,
        from_hour: i64,
        to_hour: i64,
        scope: Option<&[Region]>,
    ) -> Result<RoaringBitmap> {
        let mut acc = RoaringBitmap::new();
        match scope {
            None => self
                .slices
                .hour_slices(from_hour, to_hour, &mut |_, b| acc |= b)?,
            Some(regions) => {
                let w = Window {
                    from_hour,
                    to_hour,
                    as_of: to_hour * 3600,
                };
                for r in regions {
                    let r = self.resolve(r, "jurisdiction")?;
                    acc |= self.window_bitmap(&r, &w)?;
                }
            }
        }
        Ok(acc)
    }

    /// The last hour before `before` in which person `id` had an event,
    /// anywhere or inside any of the regions.
    pub(crate) fn last_seen(
        &self,
        id: u32,
        before: i64,
        scope: Option<&[Region]>,
    ) -> Result<Option<i64>> {
        let resolved = match scope {
            None => None,
            Some(rs) => Some(
                rs.iter()
                    .map(|r| self.resolve(r, "jurisdiction"))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let mut keep = |entries: &[hourcell_storage::PlaceEntry]| match &resolved {
            None => true,
            Some(rs) => rs.iter().any(|r| match r {
                Resolved::Spatial(plan) => entries.iter().any(|e| plan.matches(e.cell)),
                Resolved::Addresses(ids) => entries.iter().any(|e| {
                    e.address
                        .as_deref()
                        .and_then(|c| self.catalog.address(c))
                        .is_some_and(|a| ids.binary_search(&a.id).is_ok())
                }),
            }),
        };
        self.slices.last_active_before(id, before, &mut keep)
    }

    /// Persons with at least one event in the window whose slice cell
    /// intersects the region (or whose address is listed / in the area).
    pub fn who_was_at(
        &self,
        region: &Region,
        from: i64,
        to: i64,
        as_of: i64,
    ) -> Result<WhoWasAtAnswer> {
        let w = Window::new(from, to, as_of)?;
        let r = self.resolve(region, "region")?;
        // The answer is a list, so no bitmap: sorting and deduplicating
        // the gathered ids (through a bitset, as they are dense) is cheaper
        // than building one and iterating it.
        let mut ids = self.window_ids(&r, &w)?;
        hourcell_storage::radix::sort_dedup_u32(&mut ids);
        Ok(WhoWasAtAnswer {
            window: w,
            persons: self.catalog.external_ids_of(&ids),
        })
    }

    /// For each hour with activity: the person's slice cells, address codes
    /// and source labels, each sorted and deduplicated.
    pub fn where_was(&self, person: u64, from: i64, to: i64, as_of: i64) -> Result<WhereWasAnswer> {
        if person == 0 {
            return Err(QueryError::invalid(
                "person",
                0,
                "person id must be non-zero",
            ));
        }
        let w = Window::new(from, to, as_of)?;
        let rows = self.slices.person_hours(person, w.from_hour, w.to_hour)?;
        let hours = rows
            .into_iter()
            .map(|(hour, entries)| {
                // Sorted, deduplicated vectors; the entries' strings are
                // moved, not copied.
                let mut cells: Vec<u64> = entries.iter().map(|e| e.cell).collect();
                cells.sort_unstable();
                cells.dedup();
                let mut addresses = Vec::with_capacity(entries.len());
                let mut sources = Vec::with_capacity(entries.len());
                for e in entries {
                    addresses.extend(e.address);
                    sources.push(e.source);
                }
                addresses.sort_unstable();
                addresses.dedup();
                sources.sort_unstable();
                sources.dedup();
                HourPlaces {
                    hour,
                    cells: cells.into_iter().map(cell::token).collect(),
                    addresses,
                    sources,
                }
            })
            .collect();
        Ok(WhereWasAnswer {
            window: w,
            person,
            hours,
        })
    }

    /// Distinct persons per hour (every hour of the window, zeros included)
    /// and over the whole window.
    pub fn occupancy(
        &self,
        region: &Region,
        from: i64,
        to: i64,
        as_of: i64,
    ) -> Result<OccupancyAnswer> {
        let w = Window::new(from, to, as_of)?;
        let r = self.resolve(region, "region")?;
        let n = (w.to_hour - w.from_hour).max(0) as usize;
        let mut counts = vec![0u64; n];
        let mut all = Vec::new();
        // A day's hours of each person, OR-ed over the region's cells, then
        // counted once per person and hour: no per-hour id lists to sort.
        let mut masks = MaskMerger::default();
        let dm = day_masks(&w);
        let days: Vec<i64> = dm.iter().map(|m| m.0).collect();
        // The day being gathered and its hours; a day is counted when the
        // next one starts (the reader hands them over in order).
        let mut current: Option<(i64, u32)> = None;
        let mut out_of_order = false;
        self.for_each_day_set(&r, &days, &mut |day, set| {
            let mask = match current {
                Some((d, m)) if d == day => m,
                _ => {
                    if let Some((d, m)) = current {
                        out_of_order |= day < d;
                        count_day(&mut masks, d, m, &w, &mut all, &mut counts);
                    }
                    let m = mask_of(&dm, day);
                    current = Some((day, m));
                    m
                }
            };
            for &(id, m) in set {
                masks.push(id, m & mask);
            }
        })?;
        if let Some((d, m)) = current {
            count_day(&mut masks, d, m, &w, &mut all, &mut counts);
        }
        if out_of_order {
            return Err(QueryError::Unavailable(
                "a slice reader handed over the days of a window out of order".into(),
            ));
        }
        let hours = counts
            .into_iter()
            .enumerate()
            .map(|(i, distinct)| HourCount {
                hour: w.from_hour + i as i64,
                distinct,
            })
            .collect();
        let all = Self::to_bitmap(all);
        Ok(OccupancyAnswer {
            window: w,
            distinct: all.len(),
            hours,
        })
    }

    /// Registered persons (registration valid at `as_of`, address in
    /// `scope`) with no event in `[hour(since), hour(as_of)]` — anywhere, or
    /// only inside `local` if given. `last_seen_hour` is the last hour before
    /// `hour(since)` with activity counted the same way.
    pub fn no_activity_since(
        &self,
        since: i64,
        as_of: i64,
        scope: Option<&Region>,
        local: Option<&Region>,
    ) -> Result<NoActivityAnswer> {
        if since > as_of {
            return Err(QueryError::invalid(
                "since",
                format_time(since),
                format!("is after as_of ({})", format_time(as_of)),
            ));
        }
        let w = Window::new(hour_floor(since) * 3600, hour_ceil(as_of + 1) * 3600, as_of)?;
        let scope = scope.map(|s| self.resolve(s, "scope")).transpose()?;
        let local = local.map(|l| self.resolve(l, "local")).transpose()?;

        // Who was active: one bitmap per hour for "anywhere", the region's
        // slices for "local".
        let active = match &local {
            None => {
                let mut acc = RoaringBitmap::new();
                self.slices
                    .hour_slices(w.from_hour, w.to_hour, &mut |_, b| acc |= b)?;
                acc
            }
            Some(r) => self.window_bitmap(r, &w)?,
        };

        let level = self.catalog.slice_level();
        let scope_ids: Option<HashSet<u32>> = match &scope {
            Some(Resolved::Addresses(ids)) => Some(ids.iter().copied().collect()),
            _ => None,
        };
        let mut candidates: Vec<(u64, Option<u32>)> = Vec::new();
        self.catalog
            .for_each_registration(scope.is_some(), &mut |reg, addr, id| {
                if !reg.valid_at(as_of) {
                    return;
                }
                let in_scope = match (&scope, addr) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(Resolved::Addresses(_)), Some(a)) => {
                        scope_ids.as_ref().is_some_and(|s| s.contains(&a.id))
                    }
                    (Some(Resolved::Spatial(plan)), Some(a)) => {
                        plan.matches(cell::cell_at(a.lat, a.lng, level))
                    }
                };
                if !in_scope {
                    return;
                }
                if id.is_some_and(|i| active.contains(i)) {
                    return;
                }
                candidates.push((reg.person, id));
            });
        candidates.sort_unstable_by_key(|c| c.0);

        // Last seen anywhere: walk the per-hour bitmaps backwards from
        // `since` and peel off candidates as they appear. One bitmap per
        // hour instead of one seek per person.
        let mut last_seen: std::collections::HashMap<u32, i64> = std::collections::HashMap::new();
        if local.is_none() {
            let mut pending: RoaringBitmap = candidates.iter().filter_map(|c| c.1).collect();
            if !pending.is_empty() {
                self.slices.hour_slices_rev(w.from_hour, &mut |h, b| {
                    let seen = &pending & &b;
                    for id in &seen {
                        last_seen.insert(id, h);
                    }
                    pending -= seen;
                    !pending.is_empty()
                })?;
            }
        }
        let mut persons = Vec::with_capacity(candidates.len());
        for (person, id) in candidates {
            let last = match id {
                None => None,
                Some(id) if local.is_none() => last_seen.get(&id).copied(),
                Some(id) => {
                    let mut keep = |entries: &[hourcell_storage::PlaceEntry]| match &local {
                        None => true,
                        Some(Resolved::Spatial(plan)) => {
                            entries.iter().any(|e| plan.matches(e.cell))
                        }
                        Some(Resolved::Addresses(ids)) => entries.iter().any(|e| {
                            e.address
                                .as_deref()
                                .and_then(|c| self.catalog.address(c))
                                .is_some_and(|a| ids.binary_search(&a.id).is_ok())
                        }),
                    };
                    self.slices.last_active_before(id, w.from_hour, &mut keep)?
                }
            };
            persons.push(Inactive {
                person,
                last_seen_hour: last,
            });
        }
        Ok(NoActivityAnswer { window: w, persons })
    }
}
