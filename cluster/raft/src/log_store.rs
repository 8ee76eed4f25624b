//! Durable raft state for many groups in one key-value engine: log entries,
//! hard state, conf state, the truncation point and the apply index.
//!
//! Key layout (all big-endian, so byte order is numeric order):
//!
//! | key                              | value                                |
//! |----------------------------------|--------------------------------------|
//! | 0x01 group                       | HardState (protobuf)                 |
//! | 0x02 group                       | ConfState (protobuf)                 |
//! | 0x03 group                       | truncated (index u64, term u64)      |
//! | 0x04 group                       | applied index u64                    |
//! | 0x05 node                        | gRPC address of a node added later   |
//! | 0x10 group index                 | Entry (protobuf)                     |
//!
//! A new group starts as if entries up to [`INIT_INDEX`] (term
//! [`INIT_TERM`]) had been applied and compacted, with its initial voters
//! as the membership. A replica that joins later starts empty, so the log
//! it needs always begins below the leader's first index and it is sent a
//! snapshot, which carries the membership it would otherwise lack (TiKV
//! bootstraps regions the same way).
//!
//! Contract, as raft-rs asks of `Storage`: entries are contiguous from
//! `first_index` to `last_index` with no holes; an append that overlaps
//! existing entries replaces them and everything after; entries and hard
//! state of one `Ready` are written in one synced batch before the messages
//! that depend on them are sent; any engine error makes the node stop (the
//! group is then inoperable, never silently wrong).

use std::sync::Arc;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::engine::{LogBatch, LogEngine, SnapshotView};
use crate::error::MachineError;
use crate::snapshot::{Frozen, Snapshots};

/// Makes a point-in-time image of the group's state machine.
pub type Freeze = Arc<dyn Fn() -> Result<Arc<dyn SnapshotView>, MachineError> + Send + Sync>;

const HARD_STATE: u8 = 0x01;
const CONF_STATE: u8 = 0x02;
const TRUNCATED: u8 = 0x03;
const APPLIED: u8 = 0x04;
const PEER_ADDR: u8 = 0x05;
const ENTRY: u8 = 0x10;

/// Where the log of a bootstrapped group starts (see the module docs).
pub const INIT_INDEX: u64 = 5;
pub const INIT_TERM: u64 = 5;

fn meta_key(kind: u8, group: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&group.to_be_bytes());
    k
}

fn entry_key(group: u64, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(ENTRY);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

#[derive(Debug, Default, Clone)]
struct Cached {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry no longer in the log (0, 0 when
    /// nothing was ever truncated).
    truncated: (u64, u64),
    last_index: u64,
    applied: u64,
}

/// One group's raft log, backed by a shared engine. Clones share state.
pub struct RaftLogStore<E: LogEngine> {
    engine: Arc<E>,
    group: u64,
    cached: Arc<RwLock<Cached>>,
    /// The state machine to freeze and where to offer the image, when this
    /// replica leads and a follower needs a snapshot.
    snap: Option<(Freeze, Arc<Snapshots>)>,
}

impl<E: LogEngine> Clone for RaftLogStore<E> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            group: self.group,
            cached: self.cached.clone(),
            snap: self.snap.clone(),
        }
    }
}

/// gRPC addresses of nodes added to the cluster after it started (from
/// membership changes), as recorded in `engine`.
pub fn stored_peer_addresses<E: LogEngine>(engine: &E) -> raft::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    engine
        .scan(&[PEER_ADDR], &[PEER_ADDR + 1], &mut |k, v| {
            if k.len() == 9 {
                out.push((
                    u64::from_be_bytes(k[1..9].try_into().unwrap()),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
            true
        })
        .map_err(store_err)?;
    Ok(out)
}

/// Records `addr` as node `id`'s gRPC address.
pub fn store_peer_address<E: LogEngine>(engine: &E, id: u64, addr: &str) -> raft::Result<()> {
    let mut b = LogBatch::default();
    b.put(meta_key(PEER_ADDR, id), addr.as_bytes().to_vec());
    engine.write(b, true).map_err(store_err)
}

impl<E: LogEngine> RaftLogStore<E> {
    /// Opens group `group`. A group with no stored state is created with
    /// `voters` as its initial configuration (every replica of a new group
    /// must be created with the same voters, which is what makes their
    /// logs agree), starting at [`INIT_INDEX`]. With no voters it is
    /// created empty: a replica joining an existing group, which waits for
    /// a snapshot.
    pub fn open(engine: Arc<E>, group: u64, voters: &[u64]) -> raft::Result<Self> {
        let mut c = Cached::default();
        let fresh = engine
            .get(&meta_key(CONF_STATE, group))
            .map_err(store_err)?
            .is_none();
        if fresh && !voters.is_empty() {
            let mut hs = HardState::default();
            hs.term = INIT_TERM;
            hs.commit = INIT_INDEX;
            let mut truncated = INIT_INDEX.to_be_bytes().to_vec();
            truncated.extend_from_slice(&INIT_TERM.to_be_bytes());
            let mut b = LogBatch::default();
            b.put(
                meta_key(HARD_STATE, group),
                hs.write_to_bytes().map_err(store_err)?,
            );
            b.put(meta_key(TRUNCATED, group), truncated);
            b.put(meta_key(APPLIED, group), INIT_INDEX.to_be_bytes().to_vec());
            // Written last: its presence marks the group as created.
            engine.write(b, true).map_err(store_err)?;
        }
        if let Some(v) = engine
            .get(&meta_key(HARD_STATE, group))
            .map_err(store_err)?
        {
            c.hard_state = HardState::parse_from_bytes(&v).map_err(store_err)?;
        }
        match engine
            .get(&meta_key(CONF_STATE, group))
            .map_err(store_err)?
        {
            Some(v) => c.conf_state = ConfState::parse_from_bytes(&v).map_err(store_err)?,
            None => {
                c.conf_state.set_voters(voters.to_vec());
                let mut b = LogBatch::default();
                b.put(
                    meta_key(CONF_STATE, group),
                    c.conf_state.write_to_bytes().map_err(store_err)?,
                );
                engine.write(b, true).map_err(store_err)?;
            }
        }
        if let Some(v) = engine.get(&meta_key(TRUNCATED, group)).map_err(store_err)? {
            if v.len() != 16 {
                return Err(store_err("truncated state is not 16 bytes"));
            }
            c.truncated = (
                u64::from_be_bytes(v[..8].try_into().unwrap()),
                u64::from_be_bytes(v[8..].try_into().unwrap()),
            );
        }
        if let Some(v) = engine.get(&meta_key(APPLIED, group)).map_err(store_err)? {
            c.applied = u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| store_err("applied index is not 8 bytes"))?,
            );
        }
        c.last_index = c.truncated.0;
        engine
            .scan_rev(
                &entry_key(group, 0),
                &entry_key(group, u64::MAX),
                &mut |k, _| {
                    c.last_index = u64::from_be_bytes(k[9..17].try_into().unwrap());
                    false
                },
            )
            .map_err(store_err)?;
        Ok(Self {
            engine,
            group,
            cached: Arc::new(RwLock::new(c)),
            snap: None,
        })
    }

    /// Lets this store answer raft's snapshot requests by freezing `sm` and
    /// offering the image in `snaps`.
    pub fn with_snapshots(mut self, freeze: Freeze, snaps: Arc<Snapshots>) -> Self {
        self.snap = Some((freeze, snaps));
        self
    }

    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }

    pub fn conf_state(&self) -> ConfState {
        self.cached.read().conf_state.clone()
    }

    /// Adopts a snapshot's metadata once its image is in the state machine:
    /// the whole log goes, the snapshot's index and term become the
    /// truncation point, its membership the conf state, and the replica
    /// counts as applied and committed up to it. One synced batch.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> raft::Result<()> {
        let meta = snap.get_metadata();
        let mut c = self.cached.write();
        let mut b = LogBatch::default();
        b.delete_range(entry_key(self.group, 0), entry_key(self.group, u64::MAX));
        let mut truncated = meta.index.to_be_bytes().to_vec();
        truncated.extend_from_slice(&meta.term.to_be_bytes());
        b.put(meta_key(TRUNCATED, self.group), truncated);
        b.put(
            meta_key(CONF_STATE, self.group),
            meta.get_conf_state().write_to_bytes().map_err(store_err)?,
        );
        let mut hs = c.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        b.put(
            meta_key(HARD_STATE, self.group),
            hs.write_to_bytes().map_err(store_err)?,
        );
        b.put(
            meta_key(APPLIED, self.group),
            meta.index.to_be_bytes().to_vec(),
        );
        self.engine.write(b, true).map_err(store_err)?;
        c.hard_state = hs;
        c.conf_state = meta.get_conf_state().clone();
        c.truncated = (meta.index, meta.term);
        c.last_index = meta.index;
        c.applied = meta.index;
        Ok(())
    }

    /// Starts group `group`, with no state yet in `engine`, as if a
    /// snapshot at `index` (at least [`INIT_INDEX`]) with `voters` had been
    /// applied: its state machine was restored from a backup taken at that
    /// index. Every replica of the new group must be seeded alike.
    pub fn seed(engine: Arc<E>, group: u64, index: u64, voters: &[u64]) -> raft::Result<()> {
        if engine
            .get(&meta_key(CONF_STATE, group))
            .map_err(store_err)?
            .is_some()
        {
            return Err(store_err("the group already has raft state"));
        }
        let store = Self::open(engine, group, &[])?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index.max(INIT_INDEX);
        meta.term = INIT_TERM;
        meta.mut_conf_state().set_voters(voters.to_vec());
        store.apply_snapshot(&snap)
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    /// The last index applied to the state machine, as last recorded.
    pub fn applied(&self) -> u64 {
        self.cached.read().applied
    }

    pub fn hard_state(&self) -> HardState {
        self.cached.read().hard_state.clone()
    }

    /// Persists a `Ready`'s entries (replacing any conflicting suffix) and
    /// hard state in one synced batch.
    pub fn persist(&self, entries: &[Entry], hs: Option<&HardState>) -> raft::Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut b = LogBatch::default();
        self.stage(entries, hs, &mut b)?;
        self.engine.write(b, true).map_err(store_err)
    }

    /// What [`RaftLogStore::persist`] writes, added to `b` instead of
    /// written: the raft loop writes every group's new entries in one
    /// synced batch. The cached view moves on now; `b` must be written
    /// (synced) before any of it is acknowledged.
    pub fn stage(
        &self,
        entries: &[Entry],
        hs: Option<&HardState>,
        b: &mut LogBatch,
    ) -> raft::Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut c = self.cached.write();
        if let Some(first) = entries.first() {
            if first.index <= c.truncated.0 {
                return Err(store_err(format!(
                    "append at {} is below the truncated index {}",
                    first.index, c.truncated.0
                )));
            }
            if first.index > c.last_index + 1 {
                return Err(store_err(format!(
                    "append at {} leaves a hole after {}",
                    first.index, c.last_index
                )));
            }
            // Entries past the new tail conflict with the leader: remove.
            let new_last = entries.last().unwrap().index;
            for i in new_last + 1..=c.last_index {
                b.delete(entry_key(self.group, i));
            }
            for e in entries {
                b.put(
                    entry_key(self.group, e.index),
                    e.write_to_bytes().map_err(store_err)?,
                );
            }
            c.last_index = new_last;
        }
        if let Some(hs) = hs {
            b.put(
                meta_key(HARD_STATE, self.group),
                hs.write_to_bytes().map_err(store_err)?,
            );
            c.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records the commit index from a `LightReady`.
    pub fn set_commit(&self, commit: u64) -> raft::Result<()> {
        let mut c = self.cached.write();
        c.hard_state.commit = commit;
        let mut b = LogBatch::default();
        b.put(
            meta_key(HARD_STATE, self.group),
            c.hard_state.write_to_bytes().map_err(store_err)?,
        );
        self.engine.write(b, true).map_err(store_err)
    }

    /// Drops the entries up to and including `to` (which must be applied),
    /// remembering `to`'s term for raft's log matching. Entries are removed
    /// in the same batch that records the new truncation point.
    pub fn compact(&self, to: u64) -> raft::Result<()> {
        let (first, applied) = {
            let c = self.cached.read();
            (c.truncated.0 + 1, c.applied)
        };
        if to < first {
            return Ok(());
        }
        if to > applied {
            return Err(store_err(format!(
                "cannot compact to {to}: only {applied} is applied"
            )));
        }
        let term = self.term(to)?;
        let mut b = LogBatch::default();
        for i in first..=to {
            b.delete(entry_key(self.group, i));
        }
        let mut v = to.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        b.put(meta_key(TRUNCATED, self.group), v);
        self.engine.write(b, true).map_err(store_err)?;
        self.cached.write().truncated = (to, term);
        Ok(())
    }

    pub fn set_conf_state(&self, cs: ConfState) -> raft::Result<()> {
        let mut b = LogBatch::default();
        b.put(
            meta_key(CONF_STATE, self.group),
            cs.write_to_bytes().map_err(store_err)?,
        );
        self.engine.write(b, true).map_err(store_err)?;
        self.cached.write().conf_state = cs;
        Ok(())
    }

    /// Records that entries up to `index` are applied. Written after the
    /// state machine's own (synced) write: a crash in between re-applies
    /// those entries, which is harmless because every command is
    /// idempotent (set-union merges, tasks raised once per subject).
    /// Deletes everything this group stored (its log and state): the
    /// group is dropped.
    pub fn destroy(&self) -> raft::Result<()> {
        let mut b = LogBatch::default();
        b.delete_range(entry_key(self.group, 0), entry_key(self.group, u64::MAX));
        for kind in [HARD_STATE, CONF_STATE, TRUNCATED, APPLIED] {
            b.delete(meta_key(kind, self.group));
        }
        self.engine.write(b, true).map_err(store_err)
    }

    pub fn set_applied(&self, index: u64) -> raft::Result<()> {
        let mut b = LogBatch::default();
        b.put(meta_key(APPLIED, self.group), index.to_be_bytes().to_vec());
        self.engine.write(b, false).map_err(store_err)?;
        self.cached.write().applied = index;
        Ok(())
    }
}

impl<E: LogEngine> Storage for RaftLogStore<E> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cached.read();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let (first, last) = {
            let c = self.cached.read();
            (c.truncated.0 + 1, c.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            panic!("entries [{low}, {high}) beyond the last index {last}");
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut err = None;
        self.engine
            .scan(
                &entry_key(self.group, low),
                &entry_key(self.group, high),
                &mut |_, v| match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += v.len() as u64;
                        // At least one entry, then stop at the size limit.
                        if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                            return false;
                        }
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        err = Some(store_err(e));
                        false
                    }
                },
            )
            .map_err(store_err)?;
        if let Some(e) = err {
            return Err(e);
        }
        if out.first().is_some_and(|e| e.index != low) {
            return Err(store_err(format!("log hole at {low}")));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (truncated, last) = {
            let c = self.cached.read();
            (c.truncated, c.last_index)
        };
        if idx == truncated.0 {
            return Ok(truncated.1);
        }
        if idx < truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .engine
            .get(&entry_key(self.group, idx))
            .map_err(store_err)?
        {
            Some(v) => Ok(Entry::parse_from_bytes(&v).map_err(store_err)?.term),
            None => Err(store_err(format!("log hole at {idx}"))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cached.read().truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cached.read().last_index)
    }

    /// Called on the leader's raft thread (so the state machine is exactly
    /// at the applied index) when a replica needs entries that are gone.
    /// Reuses the latest image while the log still continues it and the
    /// membership is unchanged; otherwise freezes a new one.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let Some((freeze, snaps)) = &self.snap else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let (applied, first, cs) = {
            let c = self.cached.read();
            (c.applied, c.truncated.0 + 1, c.conf_state.clone())
        };
        let reuse = snaps
            .latest(self.group)
            .filter(|f| f.index + 1 >= first && f.index >= request_index && f.conf_state == cs);
        let f = match reuse {
            Some(f) => f,
            None => {
                let view = freeze().map_err(store_err)?;
                let term = self.term(applied)?;
                snaps.offer(
                    self.group,
                    Frozen {
                        index: applied,
                        term,
                        conf_state: cs,
                        view,
                    },
                )
            }
        };
        let mut s = Snapshot::default();
        let m = s.mut_metadata();
        m.index = f.index;
        m.term = f.term;
        m.set_conf_state(f.conf_state.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemLog;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 3].into();
        e
    }

    #[test]
    fn appends_replace_conflicting_suffixes_and_survive_reopen() {
        const B: u64 = INIT_INDEX;
        let engine = Arc::new(MemLog::default());
        let s = RaftLogStore::open(engine.clone(), 7, &[1, 2, 3]).unwrap();
        let init = s.initial_state().unwrap();
        assert_eq!(init.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            (init.hard_state.term, init.hard_state.commit),
            (INIT_TERM, B)
        );
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (B + 1, B)
        );
        assert_eq!(s.term(B).unwrap(), INIT_TERM);
        assert_eq!(s.applied(), B);
        s.persist(&[entry(B + 1, 6), entry(B + 2, 6), entry(B + 3, 6)], None)
            .unwrap();
        // A new leader overwrites B+2..: B+3 must go.
        let mut hs = HardState::default();
        hs.term = 7;
        hs.commit = B + 1;
        s.persist(&[entry(B + 2, 7)], Some(&hs)).unwrap();
        assert_eq!(s.last_index().unwrap(), B + 2);
        assert_eq!(s.term(B + 2).unwrap(), 7);
        assert!(
            s.persist(&[entry(B + 5, 7)], None).is_err(),
            "a hole is refused"
        );
        s.set_applied(B + 1).unwrap();

        let r = RaftLogStore::open(engine.clone(), 7, &[9]).unwrap();
        assert_eq!(r.last_index().unwrap(), B + 2);
        assert_eq!(r.initial_state().unwrap().hard_state.term, 7);
        assert_eq!(r.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert_eq!(r.applied(), B + 1);
        let es = r
            .entries(B + 1, B + 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            es.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(B + 1, 6), (B + 2, 7)]
        );
        let one = r
            .entries(B + 1, B + 3, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1, "a size limit still returns one entry");
        // Compaction drops applied entries and keeps the boundary's term.
        assert!(r.compact(B + 2).is_err(), "B+2 is not applied yet");
        r.compact(B + 1).unwrap();
        assert_eq!(r.first_index().unwrap(), B + 2);
        assert_eq!(r.term(B + 1).unwrap(), 6);
        assert!(r
            .entries(B + 1, B + 3, None, GetEntriesContext::empty(false))
            .is_err());
        let again = RaftLogStore::open(engine.clone(), 7, &[9]).unwrap();
        assert_eq!(
            (again.first_index().unwrap(), again.last_index().unwrap()),
            (B + 2, B + 2)
        );
        // A snapshot replaces the log and the membership.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = B + 40;
        snap.mut_metadata().term = 9;
        snap.mut_metadata().mut_conf_state().set_voters(vec![1, 2]);
        snap.mut_metadata().mut_conf_state().set_learners(vec![4]);
        again.apply_snapshot(&snap).unwrap();
        let after = RaftLogStore::open(engine.clone(), 7, &[9]).unwrap();
        assert_eq!(
            (after.first_index().unwrap(), after.last_index().unwrap()),
            (B + 41, B + 40)
        );
        assert_eq!(after.term(B + 40).unwrap(), 9);
        assert_eq!(after.applied(), B + 40);
        let st = after.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, B + 40);
        assert_eq!(st.conf_state.learners, vec![4]);
        // Groups do not see each other's logs; a joining replica starts
        // empty, with no members, waiting for a snapshot.
        let other = RaftLogStore::open(engine.clone(), 8, &[]).unwrap();
        assert_eq!(
            (other.first_index().unwrap(), other.last_index().unwrap()),
            (1, 0)
        );
        assert!(other.initial_state().unwrap().conf_state.voters.is_empty());
        // Peer addresses survive.
        store_peer_address(engine.as_ref(), 4, "http://127.0.0.1:9").unwrap();
        assert_eq!(
            stored_peer_addresses(engine.as_ref()).unwrap(),
            vec![(4, "http://127.0.0.1:9".to_string())]
        );
    }
}
