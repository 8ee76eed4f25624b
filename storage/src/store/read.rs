//! Slice reads: cell and address day sets, hour slices, the person index,
//! and the store's statistics.

use roaring::RoaringBitmap;

use super::{PlaceEntry, PlaceIds, Role, State, Store, StoreStats};
use crate::cell;
use crate::codec::{self, DaySet, RawPlace};
use crate::error::Result;
use crate::keys;
use crate::kv::{KvEngine, TryScan};

impl<E: KvEngine, R: Role> Store<E, R> {
    /// Visits every non-empty cell slice of UTC day `day` whose cell id lies
    /// in `[lo, hi]`, with its day set.
    pub fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        self.cell_days_in(day, &[(lo, hi)], &mut |_| true, f)
    }

    /// Visits every non-empty cell slice of UTC day `day` whose cell id lies
    /// in one of `ranges` (inclusive, sorted, not overlapping) and passes
    /// `keep`, with its day set. Slices that `keep` refuses are not
    /// decoded.
    pub fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        let keys: Vec<(Vec<u8>, Vec<u8>)> = ranges
            .iter()
            .map(|&(lo, hi)| {
                let mut end = keys::cell_day(day, hi);
                end.push(0);
                (keys::cell_day(day, lo), end)
            })
            .collect();
        let mut set = DaySet::new();
        self.settled_for(day * 24, day * 24 + 24)?
            .try_scan_ranges(&keys, &mut |k, v| {
                let c = u64::from_be_bytes(k[5..13].try_into().unwrap());
                if keep(c) {
                    codec::decode_day_set_into(k, v, &mut set)?;
                    f(c, &set);
                }
                Ok(true)
            })
    }

    /// The day set of one address on UTC day `day`, if anyone was there.
    pub fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
        let k = keys::address_day(day, address_id);
        match self.settled_for(day * 24, day * 24 + 24)?.get(&k)? {
            Some(v) => Ok(Some(codec::decode_day_set(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Visits the all-persons slices of hours before `before`, latest
    /// first, until `f` returns false.
    pub fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap) -> bool,
    ) -> Result<()> {
        self.settled_for(i64::MIN, before)?.try_scan_rev(
            &keys::hour_slice(keys::MIN_HOUR),
            &keys::hour_slice(before),
            &mut |k, v| Ok(f(keys::hour_from(&k[1..5]), codec::decode_bitmap(k, v)?)),
        )
    }

    /// Visits the all-persons slice of each hour in `[from, to)` that has
    /// any activity.
    pub fn hour_slices(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(i64, RoaringBitmap),
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        self.settled_for(from, to)?.try_scan(
            &keys::hour_slice(from),
            &keys::hour_slice(to),
            &mut |k, v| {
                f(keys::hour_from(&k[1..5]), codec::decode_bitmap(k, v)?);
                Ok(true)
            },
        )
    }

    fn decode_entries(&self, st: &State, raw: &[RawPlace]) -> Vec<PlaceEntry> {
        let shift = cell::compact_shift(self.level);
        raw.iter()
            .map(|&(_, c, a, s)| PlaceEntry {
                cell: if c == 0 {
                    a.checked_sub(1)
                        .and_then(|i| st.address_cells.get(i as usize))
                        .copied()
                        .unwrap_or(0)
                } else {
                    c << shift
                },
                address: a
                    .checked_sub(1)
                    .and_then(|i| st.address_codes.get(i as usize))
                    .cloned(),
                source: st
                    .sources
                    .get(s as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("source#{s}")),
            })
            .collect()
    }

    /// Splits one person-day's sorted places into hours: `(hour, places)`.
    fn split_day(day: i64, places: &[RawPlace]) -> Vec<(i64, &[RawPlace])> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < places.len() {
            let off = places[i].0;
            let j = i + places[i..].iter().take_while(|p| p.0 == off).count();
            out.push((day * 24 + off as i64, &places[i..j]));
            i = j;
        }
        out
    }

    /// The person's places per hour in `[from, to)`, ascending by hour.
    pub fn person_hours(&self, id: u32, from: i64, to: i64) -> Result<Vec<(i64, Vec<PlaceEntry>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut raw = Vec::new();
        self.settled_for(from, to)?.try_scan(
            &keys::person_day(id, from.div_euclid(24)),
            &keys::person_day(id, (to - 1).div_euclid(24) + 1),
            &mut |k, v| {
                raw.push((keys::hour_from(&k[5..9]), codec::decode_places(k, v)?));
                Ok(true)
            },
        )?;
        let st = self.state.read_recursive();
        let mut out = Vec::new();
        for (day, p) in &raw {
            for (h, places) in Self::split_day(*day, p) {
                if (from..to).contains(&h) {
                    out.push((h, self.decode_entries(&st, places)));
                }
            }
        }
        Ok(out)
    }

    /// Visits every person's places in the UTC days `[from_day, to_day)`,
    /// person by person in internal-id order: `f(id, places)` with the
    /// places sorted by hour. One pass over the person index (days outside
    /// the range are skipped by key, before decoding); for bulk readers
    /// such as the rule layer.
    pub fn scan_person_days<Er: From<crate::StorageError>>(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]) -> Result<(), Er>,
    ) -> Result<(), Er> {
        let shift = cell::compact_shift(self.level);
        // A copy, so that the scan does not hold the state lock (apply needs
        // it for every ingest batch).
        let address_cells = self.state.read_recursive().address_cells.clone();
        let mut current: Option<u32> = None;
        let mut places: Vec<PlaceIds> = Vec::new();
        let start = [keys::PERSON];
        self.settled_for(from_day.saturating_mul(24), to_day.saturating_mul(24))?
            .try_scan::<Er>(&start, &keys::prefix_end(&start), &mut |k, v| {
                let id = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                let day = keys::hour_from(&k[5..9]);
                if current != Some(id) {
                    if let Some(prev) = current {
                        if !places.is_empty() {
                            f(prev, &places)?;
                        }
                    }
                    places.clear();
                    current = Some(id);
                }
                if day < from_day || day >= to_day {
                    return Ok(true);
                }
                for (h, c, a, s) in codec::decode_places(k, v)? {
                    let cell = if c == 0 {
                        a.checked_sub(1)
                            .and_then(|i| address_cells.get(i as usize))
                            .copied()
                            .unwrap_or(0)
                    } else {
                        c << shift
                    };
                    places.push(PlaceIds {
                        hour: day * 24 + h as i64,
                        cell,
                        address: a,
                        source: s,
                    });
                }
                Ok(true)
            })?;
        if let (Some(id), false) = (current, places.is_empty()) {
            f(id, &places)?;
        }
        Ok(())
    }

    /// The last hour in `floor..before` at which person `id` has entries
    /// that `keep` accepts (for no-activity-since with a source filter).
    pub fn last_active_before(
        &self,
        id: u32,
        floor: i64,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> Result<Option<i64>> {
        let mut found = None;
        self.person_hours_rev(id, floor, before, &mut |h, entries| {
            if keep(&entries) {
                found = Some(h);
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Person `id`'s entries hour by hour in `floor..before`, latest first,
    /// until `f` returns false.
    pub fn person_hours_rev(
        &self,
        id: u32,
        floor: i64,
        before: i64,
        f: &mut dyn FnMut(i64, Vec<PlaceEntry>) -> bool,
    ) -> Result<()> {
        if floor >= before {
            return Ok(());
        }
        let st = self.state.read_recursive();
        self.settled_for(floor, before)?.try_scan_rev(
            &keys::person_day(id, floor.div_euclid(24)),
            &keys::person_day(id, (before - 1).div_euclid(24) + 1),
            &mut |k, v| {
                let p = codec::decode_places(k, v)?;
                let day = keys::hour_from(&k[5..9]);
                for (h, places) in Self::split_day(day, &p).into_iter().rev() {
                    if h >= before || h < floor {
                        continue;
                    }
                    if !f(h, self.decode_entries(&st, places)) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
    }

    // ------------------------------------------------------------- stats

    pub fn stats(&self) -> Result<StoreStats> {
        let (persons, addresses, registrations) = {
            let st = self.state.read_recursive();
            (
                st.ext_to_int.len() as u64,
                st.addresses.len() as u64,
                st.registrations.len() as u64,
            )
        };
        // Monitoring calls this often (metrics, readiness probes): it reads
        // held hours from memory rather than writing them out.
        let (held_first, held_last) = {
            let d = self.deferred.lock();
            let hours = &d.slices.hours;
            (
                hours.keys().next().copied(),
                hours.keys().next_back().copied(),
            )
        };
        let start = [keys::HOUR_SLICE];
        let end = keys::prefix_end(&start);
        let mut first_hour = None;
        self.engine.scan(&start, &end, &mut |k, _| {
            first_hour = Some(keys::hour_from(&k[1..5]));
            false
        })?;
        let mut last_hour = None;
        self.engine.scan_rev(&start, &end, &mut |k, _| {
            last_hour = Some(keys::hour_from(&k[1..5]));
            false
        })?;
        let first_hour = match (first_hour, held_first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(StoreStats {
            persons,
            addresses,
            registrations,
            disk_bytes: self.engine.disk_bytes(),
            first_hour,
            last_hour: last_hour.max(held_last),
        })
    }

    /// Counts postings (ids held in cell and address slices) and place
    /// entries in the person index. A full scan: for reports, not for
    /// serving.
    pub fn count_postings(&self) -> Result<(u64, u64)> {
        let mut postings = 0u64;
        for p in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let start = [p];
            self.settled()?
                .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                    let set = codec::decode_day_set(k, v)?;
                    postings += set.iter().map(|e| e.1.count_ones() as u64).sum::<u64>();
                    Ok(true)
                })?;
        }
        let mut places = 0u64;
        let start = [keys::PERSON];
        self.settled()?
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                places += codec::decode_places(k, v)?.len() as u64;
                Ok(true)
            })?;
        Ok((postings, places))
    }
}
