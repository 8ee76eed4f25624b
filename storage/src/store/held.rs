//! Ingest slices held in memory and written together (see [`Deferred`]).

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use super::{Role, Store, META_APPLIED};
use crate::cell;
use crate::codec::{self, DaySet, RawPlace};
use crate::command::ApplyOutcome;
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, WriteBatch};

/// Events whose slices a store holds in memory by default before writing
/// them (see [`Deferred`]): about 90 MiB of rows at most.
pub const DEFAULT_DEFER_EVENTS: usize = 1 << 20;

/// The slice rows of ingested events, before they are folded into merge
/// operands: (day, cell, id, hour bit), (day, address, id, hour bit), one
/// bitmap per hour, and (id, day, place) for the person index.
#[derive(Default)]
pub(super) struct Slices {
    pub(super) cells: Vec<(i64, u64, u32, u32)>,
    addrs: Vec<(i64, u32, u32, u32)>,
    pub(super) hours: BTreeMap<i64, RoaringBitmap>,
    pub(super) places: Vec<(u32, i64, RawPlace)>,
    /// The first and last hour of any row here.
    span: Option<(i64, i64)>,
}

impl Slices {
    /// A cell (and address, if any) day-set row of person `id` in `hour`.
    pub(super) fn add_cell(&mut self, id: u32, hour: i64, cell: u64, addr: u32) {
        self.cover(hour);
        let day = hour.div_euclid(24);
        let bit = 1u32 << hour.rem_euclid(24);
        self.cells.push((day, cell, id, bit));
        if addr != 0 {
            self.addrs.push((day, addr, id, bit));
        }
    }

    /// An hour-slice member and a person-index place (`compact`: the cell
    /// shifted, or 0 for the address's cell).
    pub(super) fn add_place(&mut self, id: u32, hour: i64, compact: u64, addr: u32, src: u16) {
        self.cover(hour);
        self.hours.entry(hour).or_default().insert(id);
        let place = (hour.rem_euclid(24) as u8, compact, addr, src);
        self.places.push((id, hour.div_euclid(24), place));
    }

    fn cover(&mut self, hour: i64) {
        self.span = Some(match self.span {
            Some((a, b)) => (a.min(hour), b.max(hour)),
            None => (hour, hour),
        });
    }

    fn append(&mut self, mut other: Slices) {
        if let Some((a, b)) = other.span {
            self.cover(a);
            self.cover(b);
        }
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
/// flush, see [`Store::durable_applied`]) moves only when the held
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
/// other command and [`Store::sync_applied`], before the raft log
/// lets go of entries.
#[derive(Default)]
pub(super) struct Deferred {
    puts: Vec<crate::kv::Op>,
    pub(super) slices: Slices,
    /// The raft index of the last command held (a replicated store).
    index: Option<u64>,
    /// An unreplicated store: whether rows held here are logged under
    /// [`keys::HELD`], and the next log key.
    logged: bool,
    log_seq: u64,
    events: usize,
    /// When the last rows were held.
    last: Option<std::time::Instant>,
}

/// The hours that held rows cover, readable without the [`Deferred`]
/// lock (a flush holds that lock while it writes): a read whose window
/// misses them needs no flush. Set before `has_deferred` when rows are
/// held, widened only while they are, and emptied only after the flush
/// that wrote them, so a reader that sees rows held sees their hours, and
/// one that sees the span emptied finds its rows in the engine.
pub(super) struct HeldSpan {
    first: std::sync::atomic::AtomicI64,
    last: std::sync::atomic::AtomicI64,
}

impl Default for HeldSpan {
    fn default() -> Self {
        HeldSpan {
            first: std::sync::atomic::AtomicI64::new(i64::MAX),
            last: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }
}

impl HeldSpan {
    fn widen(&self, (first, last): (i64, i64)) {
        use std::sync::atomic::Ordering::SeqCst;
        self.first.fetch_min(first, SeqCst);
        self.last.fetch_max(last, SeqCst);
    }

    fn clear(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.first.store(i64::MAX, SeqCst);
        self.last.store(i64::MIN, SeqCst);
    }

    /// Whether held rows may fall in the hours `[from, to)`.
    fn meets(&self, from: i64, to: i64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let first = self.first.load(SeqCst);
        let last = self.last.load(SeqCst);
        first <= last && first < to && from <= last
    }
}

/// One resolved event: internal id, hour, slice cell, address id (0:
/// none), source id.
pub(super) type Row = (u32, i64, u64, u32, u16);
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
pub(super) fn slices_of(
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

impl<E: KvEngine, R: Role> Store<E, R> {
    /// Writes the slices of `events` events with `batch`: at once, or held
    /// in [`Deferred`]. A replicated command applying unsynced is held as
    /// it is (the raft log has it); an unreplicated plain ingest (`log`:
    /// its resolved rows) is held once its rows are durably logged.
    pub(super) fn write_slices(
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
                        // replays (see [`Store::replay_held`]).
                        let rows = log.as_deref().unwrap_or_default();
                        batch.put(keys::held(d.log_seq), encode_rows(rows));
                        self.engine.write(batch, true)?;
                        d.log_seq += 1;
                        d.logged = true;
                    }
                }
                if let Some(span) = slices.span {
                    self.held_span.widen(span);
                }
                d.slices.append(slices);
                d.events += events as usize;
                d.last = Some(std::time::Instant::now());
                self.has_deferred
                    .store(true, std::sync::atomic::Ordering::SeqCst);
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
    pub(super) fn replay_held(&self) -> Result<()> {
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
        self.held_span.clear();
        self.has_deferred.store(false, Ordering::SeqCst);
        tracing::debug!(events, merges, elapsed = ?t0.elapsed(), "wrote held ingest slices");
        r
    }

    /// Writes what is held if nothing was held for `idle`: when ingest
    /// pauses (a bulk load has ended), the next read does not pay for the
    /// write. Returns whether it wrote.
    pub fn flush_idle(&self, idle: std::time::Duration) -> Result<bool> {
        if !self.has_deferred.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let quiet = match self.deferred.try_lock() {
            Some(d) => d.last.is_some_and(|t| t.elapsed() >= idle),
            // A flush or an apply holds it: not idle.
            None => false,
        };
        if quiet {
            self.flush()?;
        }
        Ok(quiet)
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
    pub(super) fn drop_held(&self) {
        let mut d = self.deferred.lock();
        *d = Deferred::default();
        self.held_span.clear();
        self.has_deferred
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The engine, with every applied command's writes in it.
    pub(super) fn settled(&self) -> Result<&E> {
        self.flush()?;
        Ok(&self.engine)
    }

    /// The engine, with every applied command's writes to the hours
    /// `[from, to)` in it: held rows are written first only when some fall
    /// in those hours. A store that ingests the present hours is then read
    /// for past windows without paying for the write of what it holds.
    pub(super) fn settled_for(&self, from: i64, to: i64) -> Result<&E> {
        if self.has_deferred.load(std::sync::atomic::Ordering::SeqCst)
            && self.held_span.meets(from, to)
        {
            self.flush()?;
        }
        Ok(&self.engine)
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
