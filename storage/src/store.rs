//! [`SliceStore`]: one shard's population slices over a [`KvEngine`].

use std::collections::{BTreeMap, HashMap};

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;

use crate::catalog::{AddressRecord, RegistrationRecord};
use crate::cell;
use crate::codec::{self, DaySet, RawPlace};
use crate::command::{ApplyOutcome, Command, ShardPart, SliceEvent};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, WriteBatch};
use crate::tasks::{
    self, Outcome, SubjectState, TaskChange, TaskDraft, TaskRecord, TaskState, TaskUpdate,
};

/// One place a person was during an hour, as returned by where-was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaceEntry {
    pub cell: u64,
    pub address: Option<String>,
    pub source: String,
}

/// One place entry of the person index with ids instead of strings, for
/// bulk readers (the rule layer): the hour, the slice cell, the address id
/// (0 = none; see [`SliceStore::address_code`]) and the source id (see
/// [`SliceStore::source_labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaceIds {
    pub hour: i64,
    pub cell: u64,
    pub address: u32,
    pub source: u16,
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

/// Hasher for person-id keys, address codes and source labels. Person ids
/// are already pseudonymous, uniformly spread u64s chosen upstream, so a
/// multiplicative mix is enough and SipHash's per-lookup cost (a third of
/// no-activity-since's time on a 0.5M registry) buys nothing. Codes and
/// labels come only from authenticated ingest and registry writers.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A multiply only carries entropy upwards, and hash tables index by
        // the low bits: fold the well-mixed high bits down. Without this,
        // codes that differ only in their last bytes (H0000123, H0000124)
        // landed in a few dozen buckets and address lookups went linear.
        let h = self.0 ^ (self.0 >> 32);
        let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        // Eight bytes at a time: address codes and source labels are hashed
        // for every ingested event (validation and apply).
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap()));
        }
        for &b in chunks.remainder() {
            self.write_u64(b as u64);
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
    /// A data shard: `int_to_ext` has holes (filled with [`NO_PERSON`]),
    /// so an entry counts only if `ext_to_int` maps it back to its id.
    partial: bool,
    addresses: HashMap<String, AddressRecord, IdHash>,
    /// Index `id - 1` holds the code of address `id` (0 means "none").
    address_codes: Vec<String>,
    /// Index `id - 1` holds the slice cell of address `id`'s point.
    address_cells: Vec<u64>,
    areas: BTreeMap<String, Vec<u32>>,
    registrations: HashMap<u64, RegistrationRecord, IdHash>,
    source_ids: HashMap<String, u16, IdHash>,
    sources: Vec<String>,
    /// Next task id and next change-log sequence number (both from 1).
    next_task: u64,
    next_change: u64,
    /// Next audit sequence number and the hash of the last record.
    next_audit: u64,
    last_audit_hash: [u8; 32],
    /// Sharded clusters, metadata group: the shard map (which nodes hold
    /// each shard of each time partition, and each person shard); its
    /// version counts its changes.
    map: crate::shard::ShardMap,
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
    /// Set while a raft snapshot replaces the contents: reads must not be
    /// served from a half-written store.
    restoring: std::sync::atomic::AtomicBool,
    /// While a replicated command applies: its log index (recorded with
    /// its writes) and whether to sync them. See [`SliceStore::apply_at`].
    tag: Mutex<Option<(u64, bool)>>,
    /// Slices of ingest commands not yet written to the engine (see
    /// [`Deferred`]); `has_deferred` says whether it holds anything,
    /// so that reads check without taking the lock.
    deferred: Mutex<Deferred>,
    has_deferred: std::sync::atomic::AtomicBool,
    /// Events held in [`Deferred`] before they are written (0: none are
    /// held, every command writes its own batch).
    defer_events: std::sync::atomic::AtomicUsize,
    /// Set when a deferred write failed: what it held is lost from memory,
    /// so the store refuses everything until the node restarts and replays
    /// its raft log.
    broken: std::sync::atomic::AtomicBool,
}

/// Events whose slices a store holds in memory by default before writing
/// them (see [`Deferred`]): about 90 MiB of rows at most.
pub const DEFAULT_DEFER_EVENTS: usize = 1 << 20;

/// The slice rows of ingested events, before they are folded into merge
/// operands: (day, cell, id, hour bit), (day, address, id, hour bit), one
/// bitmap per hour, and (id, day, place) for the person index.
#[derive(Default)]
struct Slices {
    cells: Vec<(i64, u64, u32, u32)>,
    addrs: Vec<(i64, u32, u32, u32)>,
    hours: BTreeMap<i64, RoaringBitmap>,
    places: Vec<(u32, i64, RawPlace)>,
}

impl Slices {
    /// A cell (and address, if any) day-set row of person `id` in `hour`.
    fn add_cell(&mut self, id: u32, hour: i64, cell: u64, addr: u32) {
        let day = hour.div_euclid(24);
        let bit = 1u32 << hour.rem_euclid(24);
        self.cells.push((day, cell, id, bit));
        if addr != 0 {
            self.addrs.push((day, addr, id, bit));
        }
    }

    /// An hour-slice member and a person-index place (`compact`: the cell
    /// shifted, or 0 for the address's cell).
    fn add_place(&mut self, id: u32, hour: i64, compact: u64, addr: u32, src: u16) {
        self.hours.entry(hour).or_default().insert(id);
        let place = (hour.rem_euclid(24) as u8, compact, addr, src);
        self.places.push((id, hour.div_euclid(24), place));
    }

    fn append(&mut self, mut other: Slices) {
        self.cells.append(&mut other.cells);
        self.addrs.append(&mut other.addrs);
        self.places.append(&mut other.places);
        for (h, b) in other.hours {
            *self.hours.entry(h).or_default() |= b;
        }
    }

    /// One merge operand per slice key, in key order: the memtable
    /// skiplist then inserts each key next to the previous one (a splice
    /// hint) instead of searching from the top.
    fn into_merges(mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut merges = Vec::with_capacity(
            self.cells.len() / 4 + self.addrs.len() / 4 + self.hours.len() + self.places.len() / 2,
        );
        day_set_merges(&mut self.cells, keys::cell_day, &mut merges);
        day_set_merges(&mut self.addrs, keys::address_day, &mut merges);
        person_merges(self.hours, &mut self.places, &mut merges);
        merges.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        merges
    }
}

/// Writes of replicated ingest commands held back and written together.
///
/// Ingest was bound by RocksDB memtable inserts: each command wrote one
/// merge operand per cell-day, address-day and person-day it touched,
/// about 2.5 per event, because a batch of 20,000 events covers less than
/// an hour and every key of it is new to the batch. A day's events share
/// far fewer keys, so the rows of many commands are gathered here and
/// folded into one operand per key when written.
///
/// Nothing is lost on a crash: a replicated command is durable in the raft
/// log before it applies, and the store's applied index (written with each
/// flush, see [`SliceStore::durable_applied`]) moves only when the held
/// writes reach the engine, so a restart replays the commands after it.
/// Replaying is safe because slice merges are set unions and the puts held
/// here (new ids, sources, addresses) are the same on every replay.
///
/// An unreplicated store (one node without `[cluster]`) has no raft log:
/// each held batch writes its new ids and its resolved rows (26 bytes per
/// event, one key) synced before it is acknowledged, and the flush that
/// writes the slices deletes those rows in the same atomic batch. Opening
/// the store writes whatever rows are still logged.
///
/// Reads flush first, so they see every applied command; so do every
/// other command and [`SliceStore::sync_applied`], before the raft log
/// lets go of entries.
#[derive(Default)]
struct Deferred {
    puts: Vec<crate::kv::Op>,
    slices: Slices,
    /// The raft index of the last command held (a replicated store).
    index: Option<u64>,
    /// An unreplicated store: whether rows held here are logged under
    /// [`keys::HELD`], and the next log key.
    logged: bool,
    log_seq: u64,
    events: usize,
}

/// One resolved event: internal id, hour, slice cell, address id (0:
/// none), source id.
type Row = (u32, i64, u64, u32, u16);
const ROW_BYTES: usize = 4 + 8 + 8 + 4 + 2;

fn encode_rows(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * ROW_BYTES);
    for &(id, hour, cell, addr, src) in rows {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&hour.to_le_bytes());
        out.extend_from_slice(&cell.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&src.to_le_bytes());
    }
    out
}

fn decode_rows(key: &[u8], v: &[u8]) -> Result<Vec<Row>> {
    if v.len() % ROW_BYTES != 0 {
        return Err(StorageError::corrupt(
            key,
            "logged rows have a ragged length",
        ));
    }
    Ok(v.chunks_exact(ROW_BYTES)
        .map(|c| {
            (
                u32::from_le_bytes(c[0..4].try_into().unwrap()),
                i64::from_le_bytes(c[4..12].try_into().unwrap()),
                u64::from_le_bytes(c[12..20].try_into().unwrap()),
                u32::from_le_bytes(c[20..24].try_into().unwrap()),
                u16::from_le_bytes(c[24..26].try_into().unwrap()),
            )
        })
        .collect())
}

/// The slice rows of resolved events: cell and address day sets if
/// `cells`, hour slices and the person index if `persons`.
/// `address_cells[a - 1]` is address `a`'s slice cell.
fn slices_of(
    rows: &[Row],
    address_cells: &[u64],
    shift: u32,
    cells: bool,
    persons: bool,
) -> Slices {
    let mut s = Slices::default();
    if cells {
        s.cells.reserve(rows.len());
        s.addrs.reserve(rows.len());
    }
    if persons {
        s.places.reserve(rows.len());
    }
    for &(id, hour, cell, addr, src) in rows {
        if cells {
            s.add_cell(id, hour, cell, addr);
        }
        if persons {
            // Most events sit at their address's point: store cell 0 ("the
            // address's cell") instead of repeating it.
            let at_address = addr != 0 && address_cells.get(addr as usize - 1) == Some(&cell);
            let compact = if at_address { 0 } else { cell >> shift };
            s.add_place(id, hour, compact, addr, src);
        }
    }
    s
}

const META_LEVEL: &str = "slice_level";
/// Version of the key layout and value encodings. Bumped when a data
/// directory written by an older build can no longer be read; such a
/// directory is refused with a message instead of being misread.
const META_FORMAT: &str = "format";
const FORMAT: u8 = 2;
/// Present while a snapshot is being installed; a store that opens with it
/// holds a partial copy.
const META_RESTORING: &str = "restoring";
/// The raft log index of the last command whose writes are in this store.
const META_APPLIED: &str = "raft_applied";
/// Internal ids are u32; keep the top value free as a sentinel.
const MAX_PERSONS: u64 = u32::MAX as u64;
/// Present in a data shard of a sharded cluster: its dictionary and
/// address table hold only the entries its events use, so they have holes.
const META_SHARD: &str = "data_shard";
/// Changes made to the shard map (see [`SliceStore::shard_map`]).
const META_MAP_VERSION: &str = "shard_map_version";
/// The person shards' replica sets (see [`crate::shard::ShardMap`]).
const META_PERSON_PLACEMENT: &str = "person_placement";
/// Fills a hole in a data shard's id dictionary (see [`State::partial`]).
const NO_PERSON: u64 = 0;

impl<E: KvEngine> SliceStore<E> {
    /// Opens a store. A new store records `level` as its slice level; an
    /// existing one keeps the level it was created with, and asking for a
    /// different one is an error rather than a silent re-interpretation.
    pub fn open(engine: E, level: Option<u8>) -> Result<Self> {
        if engine.get(&keys::meta(META_RESTORING))?.is_some() {
            return Err(StorageError::Invalid(
                "a raft snapshot was being installed into this data directory when the node \
                 stopped, so it holds a partial copy; empty the data directory and start the node \
                 with --join to fetch a fresh one"
                    .into(),
            ));
        }
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
            restoring: std::sync::atomic::AtomicBool::new(false),
            tag: Mutex::new(None),
            deferred: Mutex::new(Deferred::default()),
            has_deferred: std::sync::atomic::AtomicBool::new(false),
            defer_events: std::sync::atomic::AtomicUsize::new(DEFAULT_DEFER_EVENTS),
            broken: std::sync::atomic::AtomicBool::new(false),
        };
        store.load()?;
        store.replay_held()?;
        Ok(store)
    }

    fn load(&self) -> Result<()> {
        let mut st = State::default();
        let mut err = None;
        let shard = self.engine.get(&keys::meta(META_SHARD))?.is_some();
        st.partial = shard;
        let start = [keys::DICT_INT];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let id = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                if v.len() != 8 || (id as usize != st.int_to_ext.len() && !shard) {
                    err = Some(StorageError::corrupt(k, "id dictionary has a hole"));
                    return false;
                }
                let ext = u64::from_be_bytes(v.try_into().unwrap());
                if st.int_to_ext.len() <= id as usize {
                    st.int_to_ext.resize(id as usize + 1, NO_PERSON);
                }
                st.int_to_ext[id as usize] = ext;
                st.ext_to_int.insert(ext, id);
                true
            })?;
        let start = [keys::ADDRESS];
        let mut addrs = Vec::new();
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                match bincode::serde::decode_from_slice::<AddressRecord, _>(
                    v,
                    crate::bincode_limits(),
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
            if a.id as usize != st.address_codes.len() + 1 && !shard {
                return Err(StorageError::corrupt(
                    &keys::address(&a.code),
                    "address ids have a hole",
                ));
            }
            Self::learn_address(&mut st, a, self.level);
        }
        let start = [keys::REGISTRATION];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                match bincode::serde::decode_from_slice::<RegistrationRecord, _>(
                    v,
                    crate::bincode_limits(),
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
                match k.get(1..3) {
                    Some(b) => {
                        let id = u16::from_be_bytes([b[0], b[1]]);
                        Self::learn_source(&mut st, id, label);
                        true
                    }
                    None => {
                        err = Some(StorageError::corrupt(k, "short source key"));
                        false
                    }
                }
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        let start = [keys::PARTITION];
        self.engine
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                match bincode::serde::decode_from_slice::<(Vec<Vec<u64>>, Vec<Vec<u64>>), _>(
                    v,
                    crate::bincode_limits(),
                ) {
                    Ok(((founders, cells), _)) if k.len() == 5 => {
                        let w = keys::hour_from(&k[1..5]);
                        st.map.founders.insert(w, founders);
                        st.map.weeks.insert(w, cells);
                        true
                    }
                    Ok(_) => {
                        err = Some(StorageError::corrupt(k, "bad partition key"));
                        false
                    }
                    Err(e) => {
                        err = Some(StorageError::corrupt(k, e));
                        false
                    }
                }
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        st.map.version = self
            .engine
            .get(&keys::meta(META_MAP_VERSION))?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let pk = keys::meta(META_PERSON_PLACEMENT);
        if let Some(v) = self.engine.get(&pk)? {
            st.map.persons =
                bincode::serde::decode_from_slice::<Vec<Vec<u64>>, _>(&v, crate::bincode_limits())
                    .map_err(|e| StorageError::corrupt(&pk, e))?
                    .0;
        }
        // Ids continue after the last stored task and change.
        st.next_task = 1;
        st.next_change = 1;
        self.engine.scan_rev(
            &[keys::TASK],
            &keys::prefix_end(&[keys::TASK]),
            &mut |k, _| {
                st.next_task = u64::from_be_bytes(k[1..9].try_into().unwrap()) + 1;
                false
            },
        )?;
        self.engine.scan_rev(
            &[keys::TASK_CHANGE],
            &keys::prefix_end(&[keys::TASK_CHANGE]),
            &mut |k, _| {
                st.next_change = u64::from_be_bytes(k[1..9].try_into().unwrap()) + 1;
                false
            },
        )?;
        st.next_audit = 1;
        let mut last = None;
        self.engine.scan_rev(
            &[keys::AUDIT],
            &keys::prefix_end(&[keys::AUDIT]),
            &mut |k, v| {
                last = Some((k.to_vec(), v.to_vec()));
                false
            },
        )?;
        if let Some((k, v)) = last {
            let (r, _): (crate::audit::AuditRecord, _) =
                bincode::serde::decode_from_slice(&v, crate::bincode_limits())
                    .map_err(|e| StorageError::corrupt(&k, e))?;
            st.next_audit = r.seq + 1;
            st.last_audit_hash = r.hash;
        }
        *self.state.write() = st;
        Ok(())
    }

    pub fn slice_level(&self) -> u8 {
        self.level
    }

    /// A point-in-time copy of the whole store, for a raft snapshot. Taken
    /// under the apply lock, so it holds whole commands only.
    pub fn freeze(&self) -> Result<std::sync::Arc<dyn crate::FrozenView>> {
        let _guard = self.apply_lock.lock();
        self.settled()?.freeze()
    }

    /// Starts replacing the whole store with a snapshot's contents: clears
    /// every key and marks the store as restoring (durably, so a crash
    /// before [`SliceStore::finish_restore`] is detected at open).
    pub fn begin_restore(&self) -> Result<()> {
        let _guard = self.apply_lock.lock();
        // Held writes are of commands the snapshot already contains.
        self.drop_held();
        self.restoring
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut b = WriteBatch::default();
        b.delete_range(vec![0x00], vec![0xff; 16]);
        b.put(keys::meta(META_RESTORING), vec![1]);
        self.engine.write(b, true)
    }

    /// Writes one chunk of a snapshot's key-value pairs.
    pub fn restore_chunk(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let _guard = self.apply_lock.lock();
        let marker = keys::meta(META_RESTORING);
        let mut b = WriteBatch::default();
        for (k, v) in pairs {
            if k != marker {
                b.put(k, v);
            }
        }
        self.engine.write(b, false)
    }

    /// Ends a restore: checks the copy is of this build's format and slice
    /// level, syncs it, clears the mark and reloads the in-memory tables.
    pub fn finish_restore(&self) -> Result<()> {
        let _guard = self.apply_lock.lock();
        let level = self.engine.get(&keys::meta(META_LEVEL))?;
        let format = self.engine.get(&keys::meta(META_FORMAT))?;
        if format.as_deref() != Some(&[FORMAT][..]) || level.as_deref() != Some(&[self.level][..]) {
            return Err(StorageError::Invalid(format!(
                "snapshot has format {format:?} and slice level {level:?}; this replica needs \
                 format {FORMAT} and level {}",
                self.level
            )));
        }
        let mut b = WriteBatch::default();
        b.delete(keys::meta(META_RESTORING));
        self.engine.write(b, true)?;
        self.load()?;
        self.restoring
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Whether a snapshot is being installed (reads must wait or fail).
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Applies one command durably (the write is synced before this
    /// returns). Deterministic: the same commands in the same order give the
    /// same bytes.
    pub fn apply(&self, cmd: &Command) -> Result<ApplyOutcome> {
        let _guard = self.apply_lock.lock();
        self.apply_locked(cmd)
    }

    /// Applies the command at raft log index `index`, recording the index
    /// in the same write batch. With `sync = false` the write is not synced:
    /// the raft log already holds the command durably, and after a power
    /// loss the store comes back to a consistent prefix (its WAL is
    /// sequential) whose [`SliceStore::durable_applied`] says where to
    /// replay the log from.
    pub fn apply_at(&self, cmd: &Command, index: u64, sync: bool) -> Result<ApplyOutcome> {
        let _guard = self.apply_lock.lock();
        *self.tag.lock() = Some((index, sync));
        let r = self.apply_locked(cmd);
        *self.tag.lock() = None;
        r
    }

    /// Records that everything up to raft index `index` is in this store,
    /// synced (and with it every earlier unsynced write: the WAL is
    /// sequential). Called before the raft log drops entries.
    pub fn sync_applied(&self, index: u64) -> Result<()> {
        let _guard = self.apply_lock.lock();
        self.flush()?;
        let mut b = WriteBatch::default();
        b.put(keys::meta(META_APPLIED), index.to_be_bytes().to_vec());
        self.engine.write(b, true)
    }

    /// The raft index of the last command whose writes this store holds
    /// (`None` for a store written without raft).
    pub fn durable_applied(&self) -> Result<Option<u64>> {
        Ok(self
            .engine
            .get(&keys::meta(META_APPLIED))?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes)))
    }

    /// Writes an apply's batch: synced, unless a replicated command asked
    /// otherwise, and with that command's index.
    fn commit(&self, mut b: WriteBatch) -> Result<()> {
        let tag = *self.tag.lock();
        if let Some((index, _)) = tag {
            b.put(keys::meta(META_APPLIED), index.to_be_bytes().to_vec());
        }
        self.engine.write(b, tag.is_none_or(|(_, sync)| sync))
    }

    fn apply_locked(&self, cmd: &Command) -> Result<ApplyOutcome> {
        // Held ingest writes go first: every other command's writes carry
        // its raft index, which must not pass theirs, and some (expiry,
        // tasks) read slices.
        if !matches!(cmd, Command::Ingest(_) | Command::IngestShard(_)) {
            self.flush()?;
        }
        match cmd {
            Command::Ingest(events) => self.apply_ingest(events),
            Command::PutAddresses(addrs) => self.apply_addresses(addrs),
            Command::PutRegistrations(regs) => self.apply_registrations(regs),
            Command::RaiseTasks {
                at,
                evaluation,
                suppress_secs,
                tasks,
            } => self.apply_raise_tasks(*at, evaluation, *suppress_secs, tasks),
            Command::UpdateTask(u) => self.apply_update_task(u),
            Command::Audit(entries) => {
                let mut b = WriteBatch::default();
                self.chain_audit(&mut b, entries);
                self.commit(b)?;
                Ok(ApplyOutcome {
                    applied: entries.len() as u64,
                    ..ApplyOutcome::default()
                })
            }
            Command::Expire { cutoff_hour, audit } => self.apply_expire(*cutoff_hour, audit),
            Command::AssignIds { persons, sources } => self.apply_assign_ids(persons, sources),
            Command::IngestShard(part) => self.apply_shard_ingest(part),
            Command::CreatePartitions { weeks } => self.apply_create_partitions(weeks),
            Command::DropPartitions { weeks } => self.apply_drop_partitions(weeks),
            Command::PlaceShards { shards } => self.apply_place_shards(shards),
        }
    }

    /// Appends audit records to `b`, chained after the last one. The state
    /// moves on at once: callers write `b` before anything else is applied
    /// (the apply lock is held).
    fn chain_audit(&self, b: &mut WriteBatch, entries: &[crate::audit::AuditEntry]) {
        let mut st = self.state.write();
        for e in entries {
            let seq = st.next_audit;
            let hash = crate::audit::chain_hash(&st.last_audit_hash, seq, e);
            let r = crate::audit::AuditRecord {
                seq,
                entry: e.clone(),
                prev_hash: st.last_audit_hash,
                hash,
            };
            Self::put_bincode(b, keys::audit(seq), &r);
            st.next_audit += 1;
            st.last_audit_hash = hash;
        }
    }

    /// Audit records after `after_seq`, at most `limit`, in order.
    pub fn audit_records(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>> {
        self.scan_bincode(
            &keys::audit(after_seq.saturating_add(1)),
            &keys::prefix_end(&[keys::AUDIT]),
            limit,
            &mut |_| true,
        )
    }

    /// The number of audit records (the last sequence number).
    pub fn audit_len(&self) -> u64 {
        self.state.read_recursive().next_audit - 1
    }

    /// Removes every hour before `cutoff_hour`. Time-major slices go by
    /// range deletes up to the cut-off day; the boundary day's masks are
    /// trimmed; the person index is trimmed person by person (one seek
    /// each). Then the ranges are compacted so the disk space comes back.
    fn apply_expire(
        &self,
        cutoff_hour: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<ApplyOutcome> {
        use crate::codec::{decode_day_set, encode_day_set, FULL_DAY};
        let cutoff_hour = cutoff_hour.clamp(keys::MIN_HOUR, keys::MAX_HOUR);
        // Every hour with an event has an hourly bitmap (in a person shard)
        // or a cell slice of its day (in a cell shard): if the first one is
        // not before the cut-off, there is nothing to remove (the usual
        // case on a young store) and nothing is scanned, compacted or
        // audited.
        let mut first_hour = None;
        self.engine.scan(
            &keys::hour_slice(keys::MIN_HOUR),
            &keys::prefix_end(&[keys::HOUR_SLICE]),
            &mut |k, _| {
                first_hour = Some(keys::hour_from(&k[1..5]));
                false
            },
        )?;
        self.engine.scan(
            &[keys::CELL_DAY],
            &keys::prefix_end(&[keys::CELL_DAY]),
            &mut |k, _| {
                // The day's first hour: a cell slice may hold any of them.
                let h = keys::hour_from(&k[1..5]) * 24;
                first_hour = Some(first_hour.map_or(h, |f: i64| f.min(h)));
                false
            },
        )?;
        if first_hour.is_none_or(|f| f >= cutoff_hour) {
            return Ok(ApplyOutcome::default());
        }
        let day = cutoff_hour.div_euclid(24);
        let h = cutoff_hour.rem_euclid(24) as u32;
        // Hours of the boundary day that stay.
        let keep = FULL_DAY & !((1u32 << h) - 1);
        let mut b = WriteBatch::default();
        let mut removed = 0u64;
        for prefix in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let lo = vec![prefix];
            let mut cut = vec![prefix];
            cut.extend_from_slice(&keys::hour_bytes(day));
            b.delete_range(lo, cut.clone());
            if h > 0 {
                let mut err = None;
                self.engine.scan(
                    &cut,
                    &keys::prefix_end(&cut),
                    &mut |k, v| match decode_day_set(k, v) {
                        Ok(set) => {
                            let kept: Vec<(u32, u32)> = set
                                .into_iter()
                                .filter_map(|(id, m)| (m & keep != 0).then_some((id, m & keep)))
                                .collect();
                            if kept.is_empty() {
                                b.delete(k.to_vec());
                            } else {
                                b.put(k.to_vec(), encode_day_set(&kept));
                            }
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
            }
        }
        b.delete_range(vec![keys::HOUR_SLICE], keys::hour_slice(cutoff_hour));
        let persons = self.state.read_recursive().int_to_ext.len() as u32;
        for id in 0..persons {
            let from = keys::person_day(id, keys::MIN_HOUR);
            let to = keys::person_day(id, day + 1);
            let mut err = None;
            self.engine.scan(&from, &to, &mut |k, v| {
                let d = keys::hour_from(&k[5..9]);
                if d < day || h == 0 && d == day {
                    if d < day {
                        removed += 1;
                        b.delete(k.to_vec());
                    }
                    return true;
                }
                match crate::codec::trim_places(k, v, keep) {
                    Ok(Some(t)) => b.put(k.to_vec(), t),
                    Ok(None) => b.delete(k.to_vec()),
                    Err(e) => {
                        err = Some(e);
                        return false;
                    }
                }
                true
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        self.chain_audit(&mut b, std::slice::from_ref(audit));
        self.commit(b)?;
        // Give the space back: the time-major slices only over the removed
        // range; the person-major index (spread over every person) only
        // when whole person-days went, which is once a day.
        for prefix in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let mut cut = vec![prefix];
            cut.extend_from_slice(&keys::hour_bytes(day));
            self.engine.compact_range(&[prefix], &cut)?;
        }
        self.engine
            .compact_range(&[keys::HOUR_SLICE], &keys::hour_slice(cutoff_hour))?;
        if removed > 0 {
            self.engine
                .compact_range(&[keys::PERSON], &keys::prefix_end(&[keys::PERSON]))?;
        }
        Ok(ApplyOutcome {
            applied: removed,
            expired: true,
            ..ApplyOutcome::default()
        })
    }

    fn get_bincode<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.engine.get(key)? {
            None => Ok(None),
            Some(v) => bincode::serde::decode_from_slice(&v, crate::bincode_limits())
                .map(|(t, _)| Some(t))
                .map_err(|e| StorageError::corrupt(key, e)),
        }
    }

    fn put_bincode<T: serde::Serialize>(batch: &mut WriteBatch, key: Vec<u8>, v: &T) {
        batch.put(
            key,
            bincode::serde::encode_to_vec(v, bincode::config::standard())
                .expect("records always encode"),
        );
    }

    /// Writes a task and its change-log entry; returns the next sequence
    /// number.
    fn log_task(batch: &mut WriteBatch, seq: u64, task: &TaskRecord) -> u64 {
        Self::put_bincode(batch, keys::task(task.id), task);
        Self::put_bincode(
            batch,
            keys::task_change(seq),
            &TaskChange {
                seq,
                task: task.clone(),
            },
        );
        seq + 1
    }

    fn apply_raise_tasks(
        &self,
        at: i64,
        evaluation: &str,
        suppress_secs: i64,
        drafts: &[TaskDraft],
    ) -> Result<ApplyOutcome> {
        let mut batch = WriteBatch::default();
        let (mut next_task, mut next_change) = {
            let st = self.state.read_recursive();
            (st.next_task, st.next_change)
        };
        let mut subjects: HashMap<Vec<u8>, SubjectState> = HashMap::new();
        let mut created = Vec::new();
        for d in drafts {
            let suffix = tasks::subject_suffix(d.kind, d.person, &d.address);
            let key = keys::task_subject(&suffix);
            let subject = match subjects.get(&key) {
                Some(s) => s.clone(),
                None => self.get_bincode::<SubjectState>(&key)?.unwrap_or_default(),
            };
            let suppressed = subject
                .rejected_at
                .is_some_and(|r| at < r.saturating_add(suppress_secs));
            if subject.open.is_some() || suppressed {
                subjects.insert(key, subject);
                continue;
            }
            let task = TaskRecord {
                id: next_task,
                draft: d.clone(),
                state: TaskState::Open,
                outcome: None,
                note: String::new(),
                updated_by: String::new(),
                created_at: at,
                evaluation: evaluation.to_string(),
                updated_at: at,
            };
            next_task += 1;
            next_change = Self::log_task(&mut batch, next_change, &task);
            created.push(task.id);
            let subject = SubjectState {
                open: Some(task.id),
                ..subject
            };
            Self::put_bincode(&mut batch, key.clone(), &subject);
            subjects.insert(key, subject);
        }
        self.commit(batch)?;
        let mut st = self.state.write();
        st.next_task = next_task;
        st.next_change = next_change;
        Ok(ApplyOutcome {
            applied: created.len() as u64,
            task_ids: created,
            ..Default::default()
        })
    }

    fn apply_update_task(&self, u: &TaskUpdate) -> Result<ApplyOutcome> {
        let refuse = |msg: String| {
            Ok(ApplyOutcome {
                refused: Some(msg),
                ..Default::default()
            })
        };
        let Some(mut task) = self.get_bincode::<TaskRecord>(&keys::task(u.id))? else {
            return refuse(format!("no task with id {}", u.id));
        };
        if let Err(msg) = tasks::check_transition(task.state, u.state, u.outcome) {
            return refuse(msg);
        }
        task.state = u.state;
        task.outcome = u.outcome;
        task.note = u.note.clone();
        task.updated_by = u.by.clone();
        task.updated_at = u.at;
        let mut batch = WriteBatch::default();
        let next_change =
            Self::log_task(&mut batch, self.state.read_recursive().next_change, &task);
        if task.state == TaskState::Resolved {
            let key = keys::task_subject(&tasks::subject_suffix(
                task.draft.kind,
                task.draft.person,
                &task.draft.address,
            ));
            let mut subject = self.get_bincode::<SubjectState>(&key)?.unwrap_or_default();
            if subject.open == Some(task.id) {
                subject.open = None;
            }
            if task.outcome == Some(Outcome::Rejected) {
                subject.rejected_at = Some(u.at);
            }
            Self::put_bincode(&mut batch, key, &subject);
        }
        self.commit(batch)?;
        self.state.write().next_change = next_change;
        Ok(ApplyOutcome {
            applied: 1,
            task_ids: vec![task.id],
            ..Default::default()
        })
    }

    // ------------------------------------------------------------- tasks

    pub fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        self.get_bincode(&keys::task(id))
    }

    /// Decodes the bincode values of `[start, end)` in key order, keeping
    /// those `keep` accepts, until `limit` are kept.
    fn scan_bincode<T: serde::de::DeserializeOwned>(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keep: &mut dyn FnMut(&T) -> bool,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut err = None;
        if limit == 0 {
            return Ok(out);
        }
        self.engine.scan(
            start,
            end,
            &mut |k, v| match bincode::serde::decode_from_slice::<T, _>(v, crate::bincode_limits())
            {
                Ok((t, _)) => {
                    if keep(&t) {
                        out.push(t);
                    }
                    out.len() < limit
                }
                Err(e) => {
                    err = Some(StorageError::corrupt(k, e));
                    false
                }
            },
        )?;
        err.map_or(Ok(out), Err)
    }

    /// Tasks with id greater than `after`, ascending, that `keep` accepts,
    /// at most `limit` of them.
    pub fn tasks_after(
        &self,
        after: u64,
        limit: usize,
        keep: &mut dyn FnMut(&TaskRecord) -> bool,
    ) -> Result<Vec<TaskRecord>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.scan_bincode(
            &keys::task(after + 1),
            &keys::prefix_end(&[keys::TASK]),
            limit,
            keep,
        )
    }

    /// Change-log entries with sequence number greater than `after`,
    /// ascending, at most `limit`.
    pub fn task_changes(&self, after: u64, limit: usize) -> Result<Vec<TaskChange>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.scan_bincode(
            &keys::task_change(after + 1),
            &keys::prefix_end(&[keys::TASK_CHANGE]),
            limit,
            &mut |_| true,
        )
    }

    /// The sequence number of the latest task change (0 if none).
    pub fn last_task_change(&self) -> u64 {
        self.state.read_recursive().next_change.saturating_sub(1)
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
        self.commit(batch)?;
        Ok(ApplyOutcome {
            applied: addrs.len() as u64,
            new_persons: 0,
            ..Default::default()
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
        self.commit(batch)?;
        Ok(ApplyOutcome {
            applied: regs.len() as u64,
            new_persons: 0,
            ..Default::default()
        })
    }

    /// Adds (`voters` given) or removes weeks of the shard map; the
    /// version moves on if anything changed. `applied` counts the changes.
    fn check_week(w: i64) -> Result<()> {
        if !(keys::MIN_HOUR..=keys::MAX_HOUR).contains(&w) {
            return Err(StorageError::Invalid(format!("week {w} out of range")));
        }
        Ok(())
    }

    /// Writes a shard map change of `changed` entries (none: nothing).
    fn commit_map_change(
        &self,
        mut st: parking_lot::RwLockWriteGuard<'_, State>,
        mut b: WriteBatch,
        changed: u64,
    ) -> Result<ApplyOutcome> {
        if changed > 0 {
            st.map.version += 1;
            b.put(
                keys::meta(META_MAP_VERSION),
                st.map.version.to_be_bytes().to_vec(),
            );
        }
        drop(st);
        self.commit(b)?;
        Ok(ApplyOutcome {
            applied: changed,
            ..ApplyOutcome::default()
        })
    }

    fn apply_create_partitions(&self, weeks: &[(i64, Vec<Vec<u64>>)]) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        for (w, cells) in weeks {
            Self::check_week(*w)?;
            if !st.map.weeks.contains_key(w) {
                Self::put_bincode(&mut b, keys::partition(*w), &(cells, cells));
                st.map.weeks.insert(*w, cells.clone());
                st.map.founders.insert(*w, cells.clone());
                changed += 1;
            }
        }
        self.commit_map_change(st, b, changed)
    }

    fn apply_drop_partitions(&self, weeks: &[i64]) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        for &w in weeks {
            Self::check_week(w)?;
            st.map.founders.remove(&w);
            if st.map.weeks.remove(&w).is_some() {
                b.delete(keys::partition(w));
                changed += 1;
            }
        }
        self.commit_map_change(st, b, changed)
    }

    fn apply_place_shards(
        &self,
        shards: &[(crate::shard::ShardId, Vec<u64>)],
    ) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        let mut persons_changed = false;
        for (id, replicas) in shards {
            let slot = match id.part {
                ShardPart::Persons => {
                    if st.map.persons.len() <= id.index {
                        if id.index >= crate::shard::MAX_SHARDS as usize {
                            return Err(StorageError::Invalid(format!(
                                "person shard {} out of range",
                                id.index
                            )));
                        }
                        st.map.persons.resize(id.index + 1, Vec::new());
                    }
                    persons_changed = true;
                    &mut st.map.persons[id.index]
                }
                ShardPart::Cells => match st.map.weeks.get_mut(&id.week) {
                    Some(cells) if id.index < cells.len() => &mut cells[id.index],
                    _ => continue,
                },
            };
            if slot != replicas {
                *slot = replicas.clone();
                changed += 1;
            }
            if id.part == ShardPart::Cells {
                let cells = st.map.weeks[&id.week].clone();
                let founders = st.map.founders.get(&id.week).cloned().unwrap_or_default();
                Self::put_bincode(&mut b, keys::partition(id.week), &(founders, cells));
            }
        }
        if persons_changed {
            let persons = st.map.persons.clone();
            Self::put_bincode(&mut b, keys::meta(META_PERSON_PLACEMENT), &persons);
        }
        self.commit_map_change(st, b, changed)
    }

    /// The shard map of a sharded cluster's metadata group.
    pub fn shard_map(&self) -> crate::shard::ShardMap {
        self.state.read_recursive().map.clone()
    }

    /// Whether the shard map has week `week`.
    pub fn shard_map_has_week(&self, week: i64) -> bool {
        self.state.read_recursive().map.weeks.contains_key(&week)
    }

    /// The shard map's version and the nodes that should hold shard `id`.
    pub fn shard_replicas(&self, id: crate::shard::ShardId) -> (u64, Vec<u64>) {
        let st = self.state.read_recursive();
        (st.map.version, st.map.replicas(id).to_vec())
    }

    /// The shard map's version (cheaper than the whole map).
    pub fn shard_map_version(&self) -> u64 {
        self.state.read_recursive().map.version
    }

    /// Gives ids to the persons and source labels that have none (the
    /// metadata group of a sharded cluster).
    fn apply_assign_ids(&self, persons: &[u64], sources: &[String]) -> Result<ApplyOutcome> {
        let mut batch = WriteBatch::default();
        let mut new_persons = 0;
        {
            let mut st = self.state.write();
            for &p in persons {
                if !st.ext_to_int.contains_key(&p) {
                    Self::assign_person(&mut st, &mut batch, p)?;
                    new_persons += 1;
                }
            }
            for label in sources {
                if !st.source_ids.contains_key(label) {
                    Self::assign_source(&mut st, &mut batch, label)?;
                }
            }
        }
        self.commit(batch)?;
        Ok(ApplyOutcome {
            applied: persons.len() as u64,
            new_persons,
            ..Default::default()
        })
    }

    /// A data shard's part of an ingest batch: learns the ids and
    /// addresses it carries, then writes the part's slices.
    fn apply_shard_ingest(&self, part: &crate::command::ShardIngest) -> Result<ApplyOutcome> {
        if part.part == crate::command::ShardPart::Cells {
            return self.apply_cell_events(&part.cell_events);
        }
        let mut batch = WriteBatch::default();
        {
            let mut st = self.state.write();
            // Marks the store as a data shard, whose tables may have holes.
            batch.put(keys::meta(META_SHARD), vec![1]);
            st.partial = true;
            for &(ext, id) in &part.persons {
                match st.ext_to_int.get(&ext) {
                    Some(&have) if have == id => {}
                    Some(&have) => {
                        return Err(StorageError::Invalid(format!(
                            "person {ext} has id {have} in this shard but the command says {id}"
                        )))
                    }
                    None => {
                        if st.int_to_ext.len() <= id as usize {
                            st.int_to_ext.resize(id as usize + 1, NO_PERSON);
                        }
                        st.int_to_ext[id as usize] = ext;
                        st.ext_to_int.insert(ext, id);
                        batch.put(keys::dict_ext(ext), id.to_be_bytes().to_vec());
                        batch.put(keys::dict_int(id), ext.to_be_bytes().to_vec());
                    }
                }
            }
            for (id, label) in &part.sources {
                if !st.source_ids.contains_key(label) {
                    batch.put(keys::source(*id), label.as_bytes().to_vec());
                    Self::learn_source(&mut st, *id, label.clone());
                }
            }
            for a in &part.addresses {
                if a.id != 0 && !st.addresses.contains_key(&a.code) {
                    Self::put_bincode(&mut batch, keys::address(&a.code), a);
                    Self::learn_address(&mut st, a.clone(), self.level);
                }
            }
        }
        if part.person_events.is_empty() {
            return self.apply_ingest_into(&part.events, Some(part.part), batch);
        }
        self.apply_person_events(&part.person_events, batch)
    }

    /// Writes the slices of `events` events with `batch`: at once, or held
    /// in [`Deferred`]. A replicated command applying unsynced is held as
    /// it is (the raft log has it); an unreplicated plain ingest (`log`:
    /// its resolved rows) is held once its rows are durably logged.
    fn write_slices(
        &self,
        mut batch: WriteBatch,
        slices: Slices,
        events: u64,
        log: Option<Vec<Row>>,
    ) -> Result<ApplyOutcome> {
        let limit = self.defer_events.load(std::sync::atomic::Ordering::Relaxed);
        let outcome = ApplyOutcome {
            applied: events,
            ..Default::default()
        };
        let tag = *self.tag.lock();
        let hold = limit > 0
            && match tag {
                Some((_, sync)) => !sync,
                None => log.is_some(),
            };
        if hold {
            let full = {
                let mut d = self.deferred.lock();
                match tag {
                    Some((index, _)) => {
                        d.puts.extend(batch.ops);
                        d.index = Some(index);
                    }
                    None => {
                        // New ids and the rows, synced: what a restart
                        // replays (see [`SliceStore::replay_held`]).
                        let rows = log.as_deref().unwrap_or_default();
                        batch.put(keys::held(d.log_seq), encode_rows(rows));
                        self.engine.write(batch, true)?;
                        d.log_seq += 1;
                        d.logged = true;
                    }
                }
                d.slices.append(slices);
                d.events += events as usize;
                self.has_deferred
                    .store(true, std::sync::atomic::Ordering::Release);
                d.events >= limit
            };
            if full {
                self.flush()?;
            }
            return Ok(outcome);
        }
        self.flush()?;
        for (k, v) in slices.into_merges() {
            batch.merge(k, v);
        }
        self.commit(batch)?;
        Ok(outcome)
    }

    /// Writes the slices of the ingest batches an unreplicated store logged
    /// but had not written when it stopped, and drops the log.
    fn replay_held(&self) -> Result<()> {
        let start = [keys::HELD];
        let end = keys::prefix_end(&start);
        let mut logged = Vec::new();
        self.engine.scan(&start, &end, &mut |k, v| {
            logged.push((k.to_vec(), v.to_vec()));
            true
        })?;
        if logged.is_empty() {
            return Ok(());
        }
        let mut slices = Slices::default();
        {
            let st = self.state.read();
            for (k, v) in &logged {
                let rows = decode_rows(k, v)?;
                slices.append(slices_of(
                    &rows,
                    &st.address_cells,
                    cell::compact_shift(self.level),
                    true,
                    true,
                ));
            }
        }
        let mut b = WriteBatch::default();
        for (k, v) in slices.into_merges() {
            b.merge(k, v);
        }
        b.delete_range(start.to_vec(), end);
        self.engine.write(b, true)?;
        tracing::info!(
            batches = logged.len(),
            "wrote the slices of logged ingest batches"
        );
        Ok(())
    }

    /// Writes what [`Deferred`] holds, with the raft index of its last
    /// command. Readers call this first: it returns once every command
    /// applied before the call is in the engine.
    pub fn flush(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.broken.load(Ordering::Acquire) {
            return Err(StorageError::Engine(
                "an earlier write of held ingest slices failed; restart the node to replay its raft log"
                    .into(),
            ));
        }
        if !self.has_deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        // The lock is held through the write: a reader that finds nothing
        // held knows the last flush is already visible.
        let mut d = self.deferred.lock();
        if !self.has_deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        let log_seq = d.log_seq;
        let held = std::mem::replace(
            &mut *d,
            Deferred {
                log_seq,
                ..Deferred::default()
            },
        );
        let t0 = std::time::Instant::now();
        let events = held.events;
        let mut b = WriteBatch { ops: held.puts };
        for (k, v) in held.slices.into_merges() {
            b.merge(k, v);
        }
        let merges = b.len();
        if let Some(index) = held.index {
            b.put(keys::meta(META_APPLIED), index.to_be_bytes().to_vec());
        }
        if held.logged {
            // The rows are written as slices now: the log can go (in the
            // same atomic batch, so a crash keeps one or the other).
            b.delete_range(vec![keys::HELD], keys::prefix_end(&[keys::HELD]));
        }
        let r = self.engine.write(b, false);
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        self.has_deferred.store(false, Ordering::Release);
        tracing::debug!(events, merges, elapsed = ?t0.elapsed(), "wrote held ingest slices");
        r
    }

    /// Sets how many events' slices a store holds before writing
    /// them (see [`Deferred`]); 0 writes every command's slices at once.
    /// Anything held now is written first.
    pub fn set_defer_events(&self, events: usize) -> Result<()> {
        let _guard = self.apply_lock.lock();
        self.flush()?;
        self.defer_events
            .store(events, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Drops what [`Deferred`] holds without writing it: the store's data
    /// is about to be deleted (its shard moved away).
    pub fn discard_deferred(&self) {
        let _guard = self.apply_lock.lock();
        self.drop_held();
    }

    /// Forgets what [`Deferred`] holds (the caller holds the apply lock).
    fn drop_held(&self) {
        *self.deferred.lock() = Deferred::default();
        self.has_deferred
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The engine, with every applied command's writes in it.
    fn settled(&self) -> Result<&E> {
        self.flush()?;
        Ok(&self.engine)
    }

    /// A person shard's part: person index and hour slices of resolved
    /// events.
    fn apply_person_events(
        &self,
        events: &[(u32, i64, u64, u32, u16)],
        batch: WriteBatch,
    ) -> Result<ApplyOutcome> {
        check_hours(events.iter().map(|e| e.1))?;
        let mut slices = Slices::default();
        slices.places.reserve(events.len());
        for &(id, hour, cell, addr, src) in events {
            slices.add_place(id, hour, cell, addr, src);
        }
        self.write_slices(batch, slices, events.len() as u64, None)
    }

    /// A cell shard's part: cell and address slices of resolved events.
    fn apply_cell_events(&self, events: &[(u32, i64, u64, u32)]) -> Result<ApplyOutcome> {
        check_hours(events.iter().map(|e| e.1))?;
        let mut batch = WriteBatch::default();
        batch.put(keys::meta(META_SHARD), vec![1]);
        self.state.write().partial = true;
        let mut slices = Slices::default();
        slices.cells.reserve(events.len());
        for &(id, hour, cell, addr) in events {
            slices.add_cell(id, hour, cell, addr);
        }
        self.write_slices(batch, slices, events.len() as u64, None)
    }

    fn assign_person(st: &mut State, batch: &mut WriteBatch, person: u64) -> Result<u32> {
        let n = st.int_to_ext.len() as u64;
        if n >= MAX_PERSONS {
            return Err(StorageError::IdSpaceExhausted(MAX_PERSONS));
        }
        let id = n as u32;
        st.int_to_ext.push(person);
        st.ext_to_int.insert(person, id);
        batch.put(keys::dict_ext(person), id.to_be_bytes().to_vec());
        batch.put(keys::dict_int(id), person.to_be_bytes().to_vec());
        Ok(id)
    }

    fn assign_source(st: &mut State, batch: &mut WriteBatch, label: &str) -> Result<u16> {
        let s = u16::try_from(st.sources.len())
            .map_err(|_| StorageError::Invalid("more than 65535 source labels".into()))?;
        batch.put(keys::source(s), label.as_bytes().to_vec());
        Self::learn_source(st, s, label.to_string());
        Ok(s)
    }

    /// Records source label `id` (a data shard's table may have holes).
    fn learn_source(st: &mut State, id: u16, label: String) {
        if st.sources.len() <= id as usize {
            st.sources.resize(id as usize + 1, String::new());
        }
        st.sources[id as usize] = label.clone();
        st.source_ids.insert(label, id);
    }

    /// Records address `a` under its id (a data shard's table may have
    /// holes; they hold an empty code and cell 0).
    fn learn_address(st: &mut State, a: AddressRecord, level: u8) {
        let i = a.id as usize - 1;
        if st.address_codes.len() <= i {
            st.address_codes.resize(i + 1, String::new());
            st.address_cells.resize(i + 1, 0);
        }
        st.address_codes[i] = a.code.clone();
        st.address_cells[i] = cell::cell_at(a.lat, a.lng, level);
        st.areas.entry(a.area.clone()).or_default().push(a.id);
        st.addresses.insert(a.code.clone(), a);
    }

    fn apply_ingest(&self, events: &[SliceEvent]) -> Result<ApplyOutcome> {
        self.apply_ingest_into(events, None, WriteBatch::default())
    }

    /// Writes the slices of `events` into `batch` and commits it. With
    /// `part` (a data shard), only that part's slices, and every id must
    /// already be known; without, ids are assigned as needed and every
    /// slice is written.
    fn apply_ingest_into(
        &self,
        events: &[SliceEvent],
        part: Option<crate::command::ShardPart>,
        mut batch: WriteBatch,
    ) -> Result<ApplyOutcome> {
        use crate::command::ShardPart;
        let write_cells = part != Some(ShardPart::Persons);
        let write_persons = part != Some(ShardPart::Cells);
        let mut rows: Vec<Row> = Vec::with_capacity(events.len());
        let mut new_persons = 0;
        let slices = {
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
                    None if part.is_some() => {
                        return Err(StorageError::Invalid(format!(
                            "person {} has no id in this shard's command",
                            e.person
                        )))
                    }
                    None => {
                        new_persons += 1;
                        Self::assign_person(&mut st, &mut batch, e.person)?
                    }
                };
                let src = match st.source_ids.get(&e.source) {
                    Some(&s) => s,
                    // A cell shard keeps no sources (its events carry none).
                    None if part == Some(ShardPart::Cells) => 0,
                    None if part.is_some() => {
                        return Err(StorageError::Invalid(format!(
                            "source {:?} has no id in this shard's command",
                            e.source
                        )))
                    }
                    None => Self::assign_source(&mut st, &mut batch, &e.source)?,
                };
                // An address unknown at apply time is dropped from the event
                // rather than failing it; the same happens on every replica.
                let addr = e
                    .address
                    .as_ref()
                    .and_then(|c| st.addresses.get(c))
                    .map(|a| a.id)
                    .unwrap_or(0);
                rows.push((id, e.hour, e.cell, addr, src));
            }
            slices_of(
                &rows,
                &st.address_cells,
                cell::compact_shift(self.level),
                write_cells,
                write_persons,
            )
        };
        // An unreplicated store that holds slices logs the resolved rows
        // instead, durably, in place of the slices (see [`Deferred`]).
        let log = part.is_none().then_some(rows);
        let mut out = self.write_slices(batch, slices, events.len() as u64, log)?;
        out.new_persons = new_persons;
        Ok(out)
    }

    // ------------------------------------------------------------ catalog

    /// An address's id, point and slice cell, without copying its record:
    /// validation looks one up for most ingested events.
    pub fn address_point(&self, code: &str) -> Option<(u32, f64, f64, u64)> {
        let st = self.state.read_recursive();
        let a = st.addresses.get(code)?;
        Some((a.id, a.lat, a.lng, st.address_cells[a.id as usize - 1]))
    }

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

    pub fn with_addresses<R>(
        &self,
        f: impl FnOnce(&HashMap<String, AddressRecord, IdHash>) -> R,
    ) -> R {
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
            &HashMap<String, AddressRecord, IdHash>,
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
        let st = self.state.read_recursive();
        let ext = st.int_to_ext.get(id as usize).copied()?;
        (!st.partial || st.ext_to_int.get(&ext) == Some(&id)).then_some(ext)
    }

    /// External ids of internal ids, ascending.
    pub fn external_ids_of(&self, ids: &[u32]) -> Vec<u64> {
        self.externals_sorted(ids.iter().copied(), ids.len())
    }

    /// External ids of a bitmap of internal ids, ascending.
    pub fn external_ids(&self, b: &RoaringBitmap) -> Vec<u64> {
        self.externals_sorted(b.iter(), b.len() as usize)
    }

    /// The external ids of `ids` (about `n` of them) that this store
    /// knows, ascending.
    fn externals_sorted(&self, ids: impl Iterator<Item = u32>, n: usize) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::with_capacity(n);
        {
            let st = self.state.read_recursive();
            out.extend(ids.filter_map(|id| {
                let ext = st.int_to_ext.get(id as usize).copied()?;
                (!st.partial || st.ext_to_int.get(&ext) == Some(&id)).then_some(ext)
            }));
        }
        crate::radix::sort_u64(&mut out);
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
        let mut err = None;
        let mut set = DaySet::new();
        self.settled()?.scan_ranges(&keys, &mut |k, v| {
            let c = u64::from_be_bytes(k[5..13].try_into().unwrap());
            if !keep(c) {
                return true;
            }
            match codec::decode_day_set_into(k, v, &mut set) {
                Ok(()) => {
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
        match self.settled()?.get(&k)? {
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
        self.settled()?.scan_rev(
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
        self.settled()?.scan(
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
        self.settled()?.scan(
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

    /// Visits every person's places in the UTC days `[from_day, to_day)`,
    /// person by person in internal-id order: `f(id, places)` with the
    /// places sorted by hour. One pass over the person index (days outside
    /// the range are skipped by key, before decoding); for bulk readers
    /// such as the rule layer.
    pub fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[PlaceIds]),
    ) -> Result<()> {
        let shift = cell::compact_shift(self.level);
        // A copy, so that the scan does not hold the state lock (apply needs
        // it for every ingest batch).
        let address_cells = self.state.read_recursive().address_cells.clone();
        let mut err = None;
        let mut current: Option<u32> = None;
        let mut places: Vec<PlaceIds> = Vec::new();
        let start = [keys::PERSON];
        self.settled()?
            .scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let id = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                let day = keys::hour_from(&k[5..9]);
                if current != Some(id) {
                    if let Some(prev) = current {
                        if !places.is_empty() {
                            f(prev, &places);
                        }
                    }
                    places.clear();
                    current = Some(id);
                }
                if day < from_day || day >= to_day {
                    return true;
                }
                match codec::decode_places(k, v) {
                    Ok(raw) => {
                        for (h, c, a, s) in raw {
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
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        if let (Some(id), false) = (current, places.is_empty()) {
            f(id, &places);
        }
        Ok(())
    }

    /// The id of a source label, if it has one.
    pub fn source_id(&self, label: &str) -> Option<u16> {
        self.state.read_recursive().source_ids.get(label).copied()
    }

    /// Whether this store already holds dictionary entry, source label or
    /// address `k` (a data shard's tables hold only what its events used).
    pub fn knows(&self, k: crate::shard::Known<'_>) -> bool {
        let st = self.state.read_recursive();
        match k {
            crate::shard::Known::Person(p) => st.ext_to_int.contains_key(&p),
            crate::shard::Known::Source(l) => st.source_ids.contains_key(l),
            crate::shard::Known::Address(c) => st.addresses.contains_key(c),
        }
    }

    /// Source labels by source id.
    pub fn source_labels(&self) -> Vec<String> {
        self.state.read_recursive().sources.clone()
    }

    /// The slice cell of each address's point, by `address id - 1`.
    pub fn address_cells(&self) -> Vec<u64> {
        self.state.read_recursive().address_cells.clone()
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
        let mut err = None;
        let st = self.state.read_recursive();
        self.settled()?.scan_rev(
            &keys::person_day(id, floor.div_euclid(24)),
            &keys::person_day(id, (before - 1).div_euclid(24) + 1),
            &mut |k, v| match codec::decode_places(k, v) {
                Ok(p) => {
                    let day = keys::hour_from(&k[5..9]);
                    for (h, places) in Self::split_day(day, &p).into_iter().rev() {
                        if h >= before || h < floor {
                            continue;
                        }
                        if !f(h, self.decode_entries(&st, places)) {
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
        err.map_or(Ok(()), Err)
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
        let mut err = None;
        for p in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let start = [p];
            self.settled()?
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
        self.settled()?
            .scan(
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

/// Refuses a batch with an hour outside the key space.
fn check_hours(mut hours: impl Iterator<Item = i64>) -> Result<()> {
    match hours.find(|h| !(keys::MIN_HOUR..=keys::MAX_HOUR).contains(h)) {
        Some(h) => Err(StorageError::Invalid(format!("hour {h} out of range"))),
        None => Ok(()),
    }
}

/// The merges of a batch's hour slices and person-day places (`places`
/// is sorted here): one bitmap per hour, one place list per person-day.
fn person_merges(
    hours: BTreeMap<i64, RoaringBitmap>,
    places: &mut [(u32, i64, RawPlace)],
    merges: &mut Vec<(Vec<u8>, Vec<u8>)>,
) {
    for (h, b) in hours {
        merges.push((keys::hour_slice(h), codec::encode_bitmap(&b)));
    }
    places.sort_unstable();
    for group in places.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let p: Vec<RawPlace> = group.iter().map(|g| g.2).collect();
        merges.push((
            keys::person_day(group[0].0, group[0].1),
            codec::encode_places(&p),
        ));
    }
}

/// Folds `(day, slice key, internal id, hour bit)` rows into one day-set
/// merge operand per (day, key): cell slices and address slices alike.
fn day_set_merges<K: Ord + Copy>(
    rows: &mut [(i64, K, u32, u32)],
    key: fn(i64, K) -> Vec<u8>,
    merges: &mut Vec<(Vec<u8>, Vec<u8>)>,
) {
    rows.sort_unstable();
    for group in rows.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let mut set: DaySet = group.iter().map(|r| (r.2, r.3)).collect();
        codec::fold_day_set(&mut set);
        merges.push((key(group[0].0, group[0].1), codec::encode_day_set(&set)));
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::sync::Arc;

    use super::IdHash;
    use crate::command::{Command, ShardPart};
    use crate::shard::ShardId;

    #[test]
    fn the_shard_map_records_placement_and_moves_and_survives_a_reopen() {
        let mem = Arc::new(crate::mem::MemEngine::new());
        let open = || {
            super::SliceStore::open(crate::PrefixedEngine::whole(mem.clone()), Some(16)).unwrap()
        };
        let s = open();
        let cells = vec![vec![1, 2, 3], vec![2, 3, 4]];
        s.apply(&Command::CreatePartitions {
            weeks: vec![(7, cells.clone())],
        })
        .unwrap();
        let cell = |index| ShardId {
            part: ShardPart::Cells,
            week: 7,
            index,
        };
        let person = |index| ShardId {
            part: ShardPart::Persons,
            week: 0,
            index,
        };
        // A move keeps the founders; a week not in the map is ignored;
        // person placement is recorded.
        s.apply(&Command::PlaceShards {
            shards: vec![
                (cell(1), vec![2, 3, 5]),
                (cell(9), vec![1]),
                (person(1), vec![4, 5, 1]),
            ],
        })
        .unwrap();
        // Creating an existing week again changes nothing.
        let v = s.shard_map_version();
        s.apply(&Command::CreatePartitions {
            weeks: vec![(7, vec![vec![9, 9, 9]; 2])],
        })
        .unwrap();
        assert_eq!(s.shard_map_version(), v);
        drop(s);
        let s = open();
        let m = s.shard_map();
        assert_eq!(m.version, v);
        assert_eq!(m.replicas(cell(0)), &[1, 2, 3]);
        assert_eq!(m.replicas(cell(1)), &[2, 3, 5]);
        assert_eq!(m.founders(cell(1), &[]), &[2, 3, 4]);
        assert_eq!(m.persons, vec![vec![], vec![4, 5, 1]]);
        s.apply(&Command::DropPartitions { weeks: vec![7] })
            .unwrap();
        let m = s.shard_map();
        assert!(m.weeks.is_empty() && m.founders.is_empty());
        assert!(m.version > v);
    }

    #[test]
    fn id_hash_spreads_similar_codes_over_the_low_bits() {
        // Hash tables index by the low bits; sequential codes must not pile
        // up in a few buckets. A random hash fills ~2,589 of 4,096.
        let h = IdHash::default();
        let buckets: std::collections::HashSet<u64> = (0..4096)
            .map(|i| h.hash_one(format!("H{i:07}")) & 4095)
            .collect();
        assert!(buckets.len() > 2450, "{} of 4096 buckets", buckets.len());
        let ids: std::collections::HashSet<u64> =
            (0..4096u64).map(|i| h.hash_one(i * 7919) & 4095).collect();
        assert!(ids.len() > 2450, "{} of 4096 buckets", ids.len());
    }
}
