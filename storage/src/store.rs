//! [`SliceStore`]: one shard's population slices over a [`KvEngine`].

use std::collections::{BTreeMap, HashMap};

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;

use crate::catalog::{AddressRecord, RegistrationRecord};
use crate::cell;
use crate::codec::{self, DaySet, RawPlace};
use crate::command::{ApplyOutcome, Command, SliceEvent};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, WriteBatch};

/// One place a person was during an hour, as returned by where-was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaceEntry {
    pub cell: u64,
    pub address: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub persons: u64,
    pub addresses: u64,
    pub registrations: u64,
    pub disk_bytes: u64,
    pub first_hour: Option<i64>,
    pub last_hour: Option<i64>,
}

/// Hasher for person-id keys. Person ids are already pseudonymous,
/// uniformly spread u64s chosen upstream, so a multiplicative mix is enough
/// and SipHash's per-lookup cost (a third of no-activity-since's time on a
/// 0.5M registry) buys nothing.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// In-memory views of the small tables. Rebuilt from the engine at open;
/// kept in step with every apply.
#[derive(Default)]
struct State {
    ext_to_int: HashMap<u64, u32, IdHash>,
    int_to_ext: Vec<u64>,
    addresses: HashMap<String, AddressRecord>,
    /// Index `id - 1` holds the code of address `id` (0 means "none").
    address_codes: Vec<String>,
    /// Index `id - 1` holds the slice cell of address `id`'s point.
    address_cells: Vec<u64>,
    areas: BTreeMap<String, Vec<u32>>,
    registrations: HashMap<u64, RegistrationRecord, IdHash>,
    source_ids: HashMap<String, u16>,
    sources: Vec<String>,
}

/// Population slices of one shard.
///
/// Readers take the state lock with `read_recursive`: a query may call back
/// into the store while it holds a read guard (no-activity-since walks the
/// registry and looks up ids), and a plain fair read would deadlock behind a
/// queued writer.
///
/// Writes go through [`SliceStore::apply`] only, one command at a time (a
/// mutex serialises them, which is also what makes id assignment follow the
/// command order). Reads run concurrently with writes.
pub struct SliceStore<E: KvEngine> {
    engine: E,
    level: u8,
    apply_lock: Mutex<()>,
    state: RwLock<State>,
}

const META_LEVEL: &str = "slice_level";
/// Version of the key layout and value encodings. Bumped when a data
/// directory written by an older build can no longer be read; such a
/// directory is refused with a message instead of being misread.
const META_FORMAT: &str = "format";
const FORMAT: u8 = 2;
/// Internal ids are u32; keep the top value free as a sentinel.
const MAX_PERSONS: u64 = u32::MAX as u64;

impl<E: KvEngine> SliceStore<E> {
    /// Opens a store. A new store records `level` as its slice level; an
    /// existing one keeps the level it was created with, and asking for a
    /// different one is an error rather than a silent re-interpretation.
    pub fn open(engine: E, level: Option<u8>) -> Result<Self> {
        let stored = engine.get(&keys::meta(META_LEVEL))?;
        let level = match (stored, level) {
            (Some(v), want) => {
                let have = *v
                    .first()
                    .ok_or_else(|| StorageError::corrupt(&keys::meta(META_LEVEL), "empty"))?;
                let format = engine.get(&keys::meta(META_FORMAT))?;
                if format.as_deref() != Some(&[FORMAT][..]) {
                    return Err(StorageError::Invalid(format!(
                        "this data directory uses storage format {} but this build reads format {FORMAT}; \
                         re-import it into an empty directory",
                        format.and_then(|f| f.first().copied()).unwrap_or(1)
                    )));
                }
                if let Some(w) = want {
                    if w != have {
                        return Err(StorageError::Invalid(format!(
                            "slice level {w} requested but this data directory was created with level {have}"
                        )));
                    }
                }
                have
            }
            (None, want) => {
                let l = want.unwrap_or(crate::DEFAULT_SLICE_LEVEL);
                if !(1..=30).contains(&l) {
                    return Err(StorageError::Invalid(format!(
                        "slice level {l} is outside 1..=30"
                    )));
                }
                let mut b = WriteBatch::default();
                b.put(keys::meta(META_LEVEL), vec![l]);
                b.put(keys::meta(META_FORMAT), vec![FORMAT]);
                engine.write(b, true)?;
                l
            }
        };
        let store = Self {
            engine,
            level,
            apply_lock: Mutex::new(()),
            state: RwLock::new(State::default()),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<()> {
        let mut st = State::default();
        let mut err = None;
        let start = [keys::DICT_INT];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let id = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                if v.len() != 8 || id as usize != st.int_to_ext.len() {
                    err = Some(StorageError::corrupt(k, "id dictionary has a hole"));
                    return false;
                }
                let ext = u64::from_be_bytes(v.try_into().unwrap());
                st.int_to_ext.push(ext);
                st.ext_to_int.insert(ext, id);
                true
            })?;
        let start = [keys::ADDRESS];
        let mut addrs = Vec::new();
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                match bincode::serde::decode_from_slice::<AddressRecord, _>(
                    v,
                    bincode::config::standard(),
                ) {
                    Ok((a, _)) => addrs.push(a),
                    Err(e) => {
                        err = Some(StorageError::corrupt(k, e));
                        return false;
                    }
                }
                true
            })?;
        addrs.sort_by_key(|a| a.id);
        for a in addrs {
            if a.id as usize != st.address_codes.len() + 1 {
                return Err(StorageError::corrupt(
                    &keys::address(&a.code),
                    "address ids have a hole",
                ));
            }
            st.address_codes.push(a.code.clone());
            st.address_cells
                .push(cell::cell_at(a.lat, a.lng, self.level));
            st.areas.entry(a.area.clone()).or_default().push(a.id);
            st.addresses.insert(a.code.clone(), a);
        }
        let start = [keys::REGISTRATION];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                match bincode::serde::decode_from_slice::<RegistrationRecord, _>(
                    v,
                    bincode::config::standard(),
                ) {
                    Ok((r, _)) => {
                        st.registrations.insert(r.person, r);
                    }
                    Err(e) => {
                        err = Some(StorageError::corrupt(k, e));
                        return false;
                    }
                }
                true
            })?;
        let start = [keys::SOURCE];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let label = String::from_utf8_lossy(v).into_owned();
                st.source_ids.insert(label.clone(), st.sources.len() as u16);
                st.sources.push(label);
                let _ = k;
                true
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        *self.state.write() = st;
        Ok(())
    }

    pub fn slice_level(&self) -> u8 {
        self.level
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Applies one command durably (the write is synced before this
    /// returns). Deterministic: the same commands in the same order give the
    /// same bytes.
    pub fn apply(&self, cmd: &Command) -> Result<ApplyOutcome> {
        let _guard = self.apply_lock.lock();
        match cmd {
            Command::Ingest(events) => self.apply_ingest(events),
            Command::PutAddresses(addrs) => self.apply_addresses(addrs),
            Command::PutRegistrations(regs) => self.apply_registrations(regs),
        }
    }

    fn apply_addresses(&self, addrs: &[AddressRecord]) -> Result<ApplyOutcome> {
        let mut st = self.state.write();
        let mut batch = WriteBatch::default();
        for a in addrs {
            let mut rec = a.clone();
            match st.addresses.get(&a.code) {
                Some(old) => {
                    rec.id = old.id;
                    // An address's point is fixed once stored: person-index
                    // entries refer to it (see `keys`). Callers reject a
                    // moved point before proposing; apply keeps the old one
                    // so that replicas stay identical regardless.
                    rec.lat = old.lat;
                    rec.lng = old.lng;
                    if old.area != rec.area {
                        let old_area = old.area.clone();
                        if let Some(v) = st.areas.get_mut(&old_area) {
                            v.retain(|&i| i != rec.id);
                        }
                        st.areas.entry(rec.area.clone()).or_default().push(rec.id);
                    }
                }
                None => {
                    rec.id = st.address_codes.len() as u32 + 1;
                    st.address_codes.push(rec.code.clone());
                    st.address_cells
                        .push(cell::cell_at(rec.lat, rec.lng, self.level));
                    st.areas.entry(rec.area.clone()).or_default().push(rec.id);
                }
            }
            let v = bincode::serde::encode_to_vec(&rec, bincode::config::standard())
                .expect("address records always encode");
            batch.put(keys::address(&rec.code), v);
            st.addresses.insert(rec.code.clone(), rec);
        }
        self.engine.write(batch, true)?;
        Ok(ApplyOutcome {
            applied: addrs.len() as u64,
            new_persons: 0,
        })
    }

    fn apply_registrations(&self, regs: &[RegistrationRecord]) -> Result<ApplyOutcome> {
        let mut st = self.state.write();
        let mut batch = WriteBatch::default();
        for r in regs {
            let v = bincode::serde::encode_to_vec(r, bincode::config::standard())
                .expect("registrations always encode");
            batch.put(keys::registration(r.person), v);
            st.registrations.insert(r.person, r.clone());
        }
        self.engine.write(batch, true)?;
        Ok(ApplyOutcome {
            applied: regs.len() as u64,
            new_persons: 0,
        })
    }

    fn apply_ingest(&self, events: &[SliceEvent]) -> Result<ApplyOutcome> {
        let shift = cell::compact_shift(self.level);
        let mut batch = WriteBatch::default();
        // (day, cell, id, hour bit) and (day, address, id, hour bit) rows,
        // sorted and folded into day sets below.
        let mut cells: Vec<(i64, u64, u32, u32)> = Vec::with_capacity(events.len());
        let mut addrs: Vec<(i64, u32, u32, u32)> = Vec::with_capacity(events.len());
        let mut hours: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
        let mut places: HashMap<(u32, i64), Vec<RawPlace>> = HashMap::new();
        let mut new_persons = 0;
        {
            // Ids are assigned under the state lock, in event order, so the
            // assignment is a pure function of the command sequence.
            if let Some(e) = events
                .iter()
                .find(|e| !(keys::MIN_HOUR..=keys::MAX_HOUR).contains(&e.hour))
            {
                return Err(StorageError::Invalid(format!(
                    "hour {} out of range",
                    e.hour
                )));
            }
            let mut st = self.state.write();
            for e in events {
                let id = match st.ext_to_int.get(&e.person) {
                    Some(&id) => id,
                    None => {
                        let n = st.int_to_ext.len() as u64;
                        if n >= MAX_PERSONS {
                            return Err(StorageError::IdSpaceExhausted(MAX_PERSONS));
                        }
                        let id = n as u32;
                        st.int_to_ext.push(e.person);
                        st.ext_to_int.insert(e.person, id);
                        batch.put(keys::dict_ext(e.person), id.to_be_bytes().to_vec());
                        batch.put(keys::dict_int(id), e.person.to_be_bytes().to_vec());
                        new_persons += 1;
                        id
                    }
                };
                let src = match st.source_ids.get(&e.source) {
                    Some(&s) => s,
                    None => {
                        let s = u16::try_from(st.sources.len()).map_err(|_| {
                            StorageError::Invalid("more than 65535 source labels".into())
                        })?;
                        st.sources.push(e.source.clone());
                        st.source_ids.insert(e.source.clone(), s);
                        batch.put(keys::source(s), e.source.as_bytes().to_vec());
                        s
                    }
                };
                // An address unknown at apply time is dropped from the event
                // rather than failing it; the same happens on every replica.
                let addr = e
                    .address
                    .as_ref()
                    .and_then(|c| st.addresses.get(c))
                    .map(|a| a.id)
                    .unwrap_or(0);
                // Most events sit at their address's point: store cell 0
                // ("the address's cell") instead of repeating it.
                let compact_cell = if addr != 0 && st.address_cells[addr as usize - 1] == e.cell {
                    0
                } else {
                    e.cell >> shift
                };
                let day = e.hour.div_euclid(24);
                let hour_of_day = e.hour.rem_euclid(24) as u8;
                let bit = 1u32 << hour_of_day;
                cells.push((day, e.cell, id, bit));
                if addr != 0 {
                    addrs.push((day, addr, id, bit));
                }
                hours.entry(e.hour).or_default().insert(id);
                places
                    .entry((id, day))
                    .or_default()
                    .push((hour_of_day, compact_cell, addr, src));
            }
        }
        // Merges go in key order: the memtable skiplist then inserts each
        // key next to the previous one (a splice hint) instead of searching
        // from the top, which was the largest cost of ingest.
        let mut merges: Vec<(Vec<u8>, Vec<u8>)> =
            Vec::with_capacity(cells.len() / 4 + addrs.len() / 4 + hours.len() + places.len());
        cells.sort_unstable();
        for group in cells.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let mut set: DaySet = group.iter().map(|r| (r.2, r.3)).collect();
            codec::fold_day_set(&mut set);
            merges.push((keys::cell_day(group[0].0, group[0].1), codec::encode_day_set(&set)));
        }
        addrs.sort_unstable();
        for group in addrs.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let mut set: DaySet = group.iter().map(|r| (r.2, r.3)).collect();
            codec::fold_day_set(&mut set);
            merges.push((
                keys::address_day(group[0].0, group[0].1),
                codec::encode_day_set(&set),
            ));
        }
        for (h, b) in hours {
            merges.push((keys::hour_slice(h), codec::encode_bitmap(&b)));
        }
        for ((id, day), mut p) in places {
            p.sort_unstable();
            p.dedup();
            merges.push((keys::person_day(id, day), codec::encode_places(&p)));
        }
        merges.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in merges {
            batch.merge(k, v);
        }
        self.engine.write(batch, true)?;
        Ok(ApplyOutcome {
            applied: events.len() as u64,
            new_persons,
        })
    }

    // ------------------------------------------------------------ catalog

    pub fn address(&self, code: &str) -> Option<AddressRecord> {
        self.state.read_recursive().addresses.get(code).cloned()
    }

    pub fn address_code(&self, id: u32) -> Option<String> {
        let st = self.state.read_recursive();
        id.checked_sub(1)
            .and_then(|i| st.address_codes.get(i as usize))
            .cloned()
    }

    /// Address ids in an area (empty if the area is unknown).
    pub fn area_addresses(&self, area: &str) -> Vec<u32> {
        self.state
            .read_recursive()
            .areas
            .get(area)
            .cloned()
            .unwrap_or_default()
    }

    pub fn area_exists(&self, area: &str) -> bool {
        self.state
            .read_recursive()
            .areas
            .get(area)
            .is_some_and(|v| !v.is_empty())
    }

    pub fn with_addresses<R>(&self, f: impl FnOnce(&HashMap<String, AddressRecord>) -> R) -> R {
        f(&self.state.read_recursive().addresses)
    }

    pub fn registration(&self, person: u64) -> Option<RegistrationRecord> {
        self.state
            .read_recursive()
            .registrations
            .get(&person)
            .cloned()
    }

    /// Runs `f` over the registry and the address table, under one read
    /// lock and without copying them.
    pub fn with_registry<R>(
        &self,
        f: impl FnOnce(
            &HashMap<u64, RegistrationRecord, IdHash>,
            &HashMap<String, AddressRecord>,
            &HashMap<u64, u32, IdHash>,
        ) -> R,
    ) -> R {
        let st = self.state.read_recursive();
        f(&st.registrations, &st.addresses, &st.ext_to_int)
    }

    /// Runs `f` over the registry without copying it.
    pub fn with_registrations<R>(
        &self,
        f: impl FnOnce(&HashMap<u64, RegistrationRecord, IdHash>) -> R,
    ) -> R {
        f(&self.state.read_recursive().registrations)
    }

    // -------------------------------------------------------- dictionary

    pub fn internal_id(&self, person: u64) -> Option<u32> {
        self.state.read_recursive().ext_to_int.get(&person).copied()
    }

    pub fn external_id(&self, id: u32) -> Option<u64> {
        self.state
            .read_recursive()
            .int_to_ext
            .get(id as usize)
            .copied()
    }

    /// External ids of a bitmap of internal ids, ascending.
    pub fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64> {
        let st = self.state.read_recursive();
        let mut out: Vec<u64> = b
            .iter()
            .filter_map(|id| st.int_to_ext.get(id as usize).copied())
            .collect();
        out.sort_unstable();
        out
    }

    // ------------------------------------------------------------ slices

    /// Visits every non-empty cell slice of UTC day `day` whose cell id lies
    /// in `[lo, hi]`, with its day set.
    pub fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> Result<()> {
        let start = keys::cell_day(day, lo);
        let mut end = keys::cell_day(day, hi);
        end.push(0);
        let mut err = None;
        self.engine.scan(&start, &end, &mut |k, v| {
            let c = u64::from_be_bytes(k[5..13].try_into().unwrap());
            match codec::decode_day_set(k, v) {
                Ok(set) => {
                    f(c, &set);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    /// The day set of one address on UTC day `day`, if anyone was there.
    pub fn address_day(&self, day: i64, address_id: u32) -> Result<Option<DaySet>> {
        let k = keys::address_day(day, address_id);
        match self.engine.get(&k)? {
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
        let mut err = None;
        self.engine.scan_rev(
            &keys::hour_slice(keys::MIN_HOUR),
            &keys::hour_slice(before),
            &mut |k, v| match codec::decode_bitmap(k, v) {
                Ok(b) => f(keys::hour_from(&k[1..5]), b),
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        err.map_or(Ok(()), Err)
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
        let mut err = None;
        self.engine.scan(
            &keys::hour_slice(from),
            &keys::hour_slice(to),
            &mut |k, v| match codec::decode_bitmap(k, v) {
                Ok(b) => {
                    f(keys::hour_from(&k[1..5]), b);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        err.map_or(Ok(()), Err)
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
        let mut err = None;
        self.engine.scan(
            &keys::person_day(id, from.div_euclid(24)),
            &keys::person_day(id, (to - 1).div_euclid(24) + 1),
            &mut |k, v| match codec::decode_places(k, v) {
                Ok(p) => {
                    raw.push((keys::hour_from(&k[5..9]), p));
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
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

    /// The last hour before `before` (and at or after `floor`) in which the
    /// person has a place accepted by `keep`, scanning backwards.
    pub fn last_active_before(
        &self,
        id: u32,
        floor: i64,
        before: i64,
        keep: &mut dyn FnMut(&[PlaceEntry]) -> bool,
    ) -> Result<Option<i64>> {
        if floor >= before {
            return Ok(None);
        }
        let mut found = None;
        let mut err = None;
        let st = self.state.read_recursive();
        self.engine.scan_rev(
            &keys::person_day(id, floor.div_euclid(24)),
            &keys::person_day(id, (before - 1).div_euclid(24) + 1),
            &mut |k, v| match codec::decode_places(k, v) {
                Ok(p) => {
                    let day = keys::hour_from(&k[5..9]);
                    for (h, places) in Self::split_day(day, &p).into_iter().rev() {
                        if h >= before || h < floor {
                            continue;
                        }
                        if keep(&self.decode_entries(&st, places)) {
                            found = Some(h);
                            return false;
                        }
                    }
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        err.map_or(Ok(found), Err)
    }

    // ------------------------------------------------------------- stats

    pub fn stats(&self) -> Result<StoreStats> {
        let (persons, addresses, registrations) = {
            let st = self.state.read_recursive();
            (
                st.int_to_ext.len() as u64,
                st.addresses.len() as u64,
                st.registrations.len() as u64,
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
        Ok(StoreStats {
            persons,
            addresses,
            registrations,
            disk_bytes: self.engine.disk_bytes(),
            first_hour,
            last_hour,
        })
    }

    /// Counts postings (ids held in cell and address slices) and place
    /// entries in the person index. A full scan: for reports, not for
    /// serving.
    pub fn count_postings(&self) -> Result<(u64, u64)> {
        let mut postings = 0u64;
        let mut err = None;
        for p in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let start = [p];
            self.engine
                .scan(
                    &start,
                    &keys::prefix_end(&start),
                    &mut |k, v| match codec::decode_day_set(k, v) {
                        Ok(set) => {
                            postings += set.iter().map(|e| e.1.count_ones() as u64).sum::<u64>();
                            true
                        }
                        Err(e) => {
                            err = Some(e);
                            false
                        }
                    },
                )?;
        }
        let mut places = 0u64;
        let start = [keys::PERSON];
        self.engine.scan(
            &start,
            &keys::prefix_end(&start),
            &mut |k, v| match codec::decode_places(k, v) {
                Ok(p) => {
                    places += p.len() as u64;
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        err.map_or(Ok((postings, places)), Err)
    }
}
