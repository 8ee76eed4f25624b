//! [`Store`]: population slices and the tables around them over a
//! [`KvEngine`], as a [`MetaStore`] or a [`ShardStore`] (see `role`).
//!
//! The type is spread over this module's files, one concern each: this one
//! holds the struct, open and recovery, restore and the apply entry points;
//! `role` the two roles and the commands each applies; `meta` the tasks,
//! audit log and shard map (metadata store only); `catalog` the id
//! dictionary, sources, addresses and registry; `ingest` the ingest
//! commands; `held` the ingest slices held in memory before they are
//! written; `expire` retention; `read` the slice reads.

use std::collections::{BTreeMap, HashMap};

use parking_lot::{Mutex, RwLock};

use crate::catalog::{AddressRecord, RegistrationRecord};
use crate::command::{ApplyOutcome, Command};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, TryScan, WriteBatch};

mod catalog;
mod expire;
mod held;
mod ingest;
mod meta;
mod read;
mod role;

pub use held::DEFAULT_DEFER_EVENTS;
use held::{Deferred, HeldSpan};
pub use role::{Meta, MetaStore, Role, Shard, ShardStore};

/// One place a person was during an hour, as returned by where-was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaceEntry {
    pub cell: u64,
    pub address: Option<String>,
    pub source: String,
}

/// One place entry of the person index with ids instead of strings, for
/// bulk readers (the rule layer): the hour, the slice cell, the address id
/// (0 = none; see [`Store::address_code`]) and the source id (see
/// [`Store::source_labels`]).
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
    /// In a data shard `int_to_ext` has holes (filled with [`NO_PERSON`]),
    /// so an entry counts only if `ext_to_int` maps it back to its id.
    int_to_ext: Vec<u64>,
    /// Sharded clusters, metadata group: id → the last week it was seen in
    /// ([`NEVER_SEEN`] when not recorded). See [`keys::LAST_SEEN`].
    last_seen: Vec<i64>,
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

/// A store in role `R` (see `role`): [`MetaStore`] or [`ShardStore`].
///
/// Readers take the state lock with `read_recursive`: a query may call back
/// into the store while it holds a read guard (no-activity-since walks the
/// registry and looks up ids), and a plain fair read would deadlock behind a
/// queued writer.
///
/// Writes go through [`Store::apply`] only, one command at a time (a
/// mutex serialises them, which is also what makes id assignment follow the
/// command order). Reads run concurrently with writes.
pub struct Store<E: KvEngine, R: Role> {
    role: std::marker::PhantomData<R>,
    engine: E,
    level: u8,
    apply_lock: Mutex<()>,
    state: RwLock<State>,
    /// Set while a raft snapshot replaces the contents: reads must not be
    /// served from a half-written store.
    restoring: std::sync::atomic::AtomicBool,
    /// While a replicated command applies: its log index (recorded with
    /// its writes) and whether to sync them. See [`Store::apply_at`].
    tag: Mutex<Option<(u64, bool)>>,
    /// Slices of ingest commands not yet written to the engine (see
    /// [`Deferred`]); `has_deferred` says whether it holds anything,
    /// so that reads check without taking the lock.
    deferred: Mutex<Deferred>,
    has_deferred: std::sync::atomic::AtomicBool,
    /// The hours held rows cover (see [`HeldSpan`]).
    held_span: HeldSpan,
    /// Events held in [`Deferred`] before they are written (0: none are
    /// held, every command writes its own batch).
    defer_events: std::sync::atomic::AtomicUsize,
    /// Set when a deferred write failed: what it held is lost from memory,
    /// so the store refuses everything until the node restarts and replays
    /// its raft log.
    broken: std::sync::atomic::AtomicBool,
    /// Events applied since the store was opened (a shard's write rate).
    events_applied: std::sync::atomic::AtomicU64,
}

const META_LEVEL: &str = "slice_level";
/// Version of the key layout and value encodings. Bumped when a data
/// directory written by an older build can no longer be read; such a
/// directory is refused with a message instead of being misread.
const META_FORMAT: &str = "format";
/// 3: audit records chain the hash of their parameters (redactable).
const FORMAT: u8 = 3;
/// Present while a snapshot is being installed; a store that opens with it
/// holds a partial copy.
const META_RESTORING: &str = "restoring";
/// The raft log index of the last command whose writes are in this store.
const META_APPLIED: &str = "raft_applied";
/// Internal ids are u32; keep the top value free as a sentinel.
const MAX_PERSONS: u64 = u32::MAX as u64;
/// Present in a data shard ([`Shard`]), written when it is created.
const META_SHARD: &str = "data_shard";
/// Changes made to the shard map (see [`Store::shard_map`]).
const META_MAP_VERSION: &str = "shard_map_version";
/// The person shards' replica sets (see [`crate::shard::ShardMap`]).
const META_PERSON_PLACEMENT: &str = "person_placement";
/// Fills a hole in a data shard's id dictionary (see [`State::int_to_ext`]),
/// and marks an id whose person retention forgot.
const NO_PERSON: u64 = 0;

/// The `last_seen` week of an id with none recorded (assigned before weeks
/// were recorded, or in an unsharded store): retention never forgets it
/// by week.
const NEVER_SEEN: i64 = i64::MIN;
/// Audit records up to this sequence number are redacted or newer than
/// every cut-off so far (see [`Store::redact_audit`]).
const META_AUDIT_REDACTED: &str = "audit_redacted";

impl<E: KvEngine, R: Role> Store<E, R> {
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
                let shard = engine.get(&keys::meta(META_SHARD))?.is_some();
                if shard != R::SHARD {
                    return Err(StorageError::Invalid(format!(
                        "this data directory holds {}, not {}",
                        if shard { Shard::NAME } else { Meta::NAME },
                        R::NAME
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
                if R::SHARD {
                    b.put(keys::meta(META_SHARD), vec![1]);
                }
                engine.write(b, true)?;
                l
            }
        };
        let store = Self {
            role: std::marker::PhantomData,
            engine,
            level,
            apply_lock: Mutex::new(()),
            state: RwLock::new(State::default()),
            restoring: std::sync::atomic::AtomicBool::new(false),
            tag: Mutex::new(None),
            deferred: Mutex::new(Deferred::default()),
            has_deferred: std::sync::atomic::AtomicBool::new(false),
            held_span: HeldSpan::default(),
            defer_events: std::sync::atomic::AtomicUsize::new(DEFAULT_DEFER_EVENTS),
            broken: std::sync::atomic::AtomicBool::new(false),
            events_applied: std::sync::atomic::AtomicU64::new(0),
        };
        store.load()?;
        store.replay_held()?;
        Ok(store)
    }

    fn load(&self) -> Result<()> {
        let mut st = State::default();
        let shard = R::SHARD;
        let start = [keys::DICT_INT];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let id = k
                    .get(1..5)
                    .filter(|_| k.len() == 5)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                    .ok_or_else(|| StorageError::corrupt(k, "bad id dictionary key"))?;
                if v.len() != 8 || (id as usize != st.int_to_ext.len() && !shard) {
                    return Err(StorageError::corrupt(k, "id dictionary has a hole"));
                }
                let ext = u64::from_be_bytes(v.try_into().unwrap());
                if st.int_to_ext.len() <= id as usize {
                    st.int_to_ext.resize(id as usize + 1, NO_PERSON);
                }
                st.int_to_ext[id as usize] = ext;
                if ext != NO_PERSON {
                    st.ext_to_int.insert(ext, id);
                }
                Ok(true)
            })?;
        let start = [keys::LAST_SEEN];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let (Some(id), Ok(w)) = (
                    k.get(1..5)
                        .filter(|_| k.len() == 5)
                        .map(|b| u32::from_be_bytes(b.try_into().unwrap())),
                    <[u8; 8]>::try_from(v),
                ) else {
                    return Err(StorageError::corrupt(k, "bad last-seen entry"));
                };
                if st.last_seen.len() <= id as usize {
                    st.last_seen.resize(id as usize + 1, NEVER_SEEN);
                }
                st.last_seen[id as usize] = i64::from_be_bytes(w);
                Ok(true)
            })?;
        let start = [keys::ADDRESS];
        let mut addrs = Vec::new();
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let (a, _) = bincode::serde::decode_from_slice::<AddressRecord, _>(
                    v,
                    crate::bincode_limits(),
                )
                .map_err(|e| StorageError::corrupt(k, e))?;
                addrs.push(a);
                Ok(true)
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
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let (r, _) = bincode::serde::decode_from_slice::<RegistrationRecord, _>(
                    v,
                    crate::bincode_limits(),
                )
                .map_err(|e| StorageError::corrupt(k, e))?;
                st.registrations.insert(r.person, r);
                Ok(true)
            })?;
        let start = [keys::SOURCE];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let label = String::from_utf8_lossy(v).into_owned();
                let b = k
                    .get(1..3)
                    .ok_or_else(|| StorageError::corrupt(k, "short source key"))?;
                Self::learn_source(&mut st, u16::from_be_bytes([b[0], b[1]]), label);
                Ok(true)
            })?;
        let start = [keys::PARTITION];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                // (founders, cells, splits); before splits, (founders, cells).
                type Partition = (Vec<Vec<u64>>, Vec<Vec<u64>>, Vec<crate::shard::CellSplit>);
                let limits = crate::bincode_limits();
                let (founders, cells, splits) =
                    match bincode::serde::decode_from_slice::<Partition, _>(v, limits) {
                        Ok((p, _)) => p,
                        Err(_) => {
                            let ((f, c), _) = bincode::serde::decode_from_slice::<
                                (Vec<Vec<u64>>, Vec<Vec<u64>>),
                                _,
                            >(v, limits)
                            .map_err(|e| StorageError::corrupt(k, e))?;
                            (f, c, Vec::new())
                        }
                    };
                if k.len() != 5 {
                    return Err(StorageError::corrupt(k, "bad partition key"));
                }
                let w = keys::hour_from(&k[1..5]);
                st.map.founders.insert(w, founders);
                if !splits.is_empty() {
                    st.map.splits.insert(w, splits);
                }
                st.map.weeks.insert(w, cells);
                Ok(true)
            })?;
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
        let last_id = |prefix: u8| -> Result<u64> {
            let mut last = 0;
            self.engine
                .try_scan_rev(&[prefix], &keys::prefix_end(&[prefix]), &mut |k, _| {
                    let id = k
                        .get(1..9)
                        .filter(|_| k.len() == 9)
                        .ok_or_else(|| StorageError::corrupt(k, "bad task key"))?;
                    last = u64::from_be_bytes(id.try_into().unwrap());
                    Ok(false)
                })?;
            Ok(last)
        };
        st.next_task = last_id(keys::TASK)? + 1;
        st.next_change = last_id(keys::TASK_CHANGE)? + 1;
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
    /// before [`Store::finish_restore`] is detected at open).
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

    /// Writes one chunk of a snapshot's key-value pairs. A key outside
    /// the layout fails the restore (readers slice keys by their widths).
    pub fn restore_chunk(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let _guard = self.apply_lock.lock();
        let marker = keys::meta(META_RESTORING);
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !keys::well_formed(k)) {
            return Err(StorageError::corrupt(k, "not a key of this store's layout"));
        }
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
        let shard = self.engine.get(&keys::meta(META_SHARD))?.is_some();
        if format.as_deref() != Some(&[FORMAT][..])
            || level.as_deref() != Some(&[self.level][..])
            || shard != R::SHARD
        {
            return Err(StorageError::Invalid(format!(
                "snapshot has format {format:?}, slice level {level:?} and is {}; this replica \
                 needs format {FORMAT}, level {} and is {}",
                if shard { Shard::NAME } else { Meta::NAME },
                self.level,
                R::NAME
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
    /// sequential) whose [`Store::durable_applied`] says where to
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
        // tasks) read slices. Audit records read no slices, and an
        // unreplicated store has no index to keep in order (its held rows
        // are logged durably on their own): there the record of a
        // person-level answer does not wait for the write of a million
        // held events.
        let independent = matches!(cmd, Command::Audit(_)) && self.tag.lock().is_none();
        if !independent && !matches!(cmd, Command::Ingest(_) | Command::IngestShard(_)) {
            self.flush()?;
        }
        R::apply(self, cmd)
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
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::IdHash;

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
