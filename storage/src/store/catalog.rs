//! The catalog: the id dictionary, source labels, addresses, areas and the
//! registry (their commands and their reads).

use std::collections::HashMap;

use roaring::RoaringBitmap;

use super::{IdHash, Meta, Role, State, Store, MAX_PERSONS, NEVER_SEEN, NO_PERSON};
use crate::catalog::{AddressRecord, RegistrationRecord};
use crate::cell;
use crate::command::ApplyOutcome;
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, WriteBatch};

/// The catalog's commands: only the metadata store takes them (a data
/// shard learns its entries from the ingest parts it applies).
impl<E: KvEngine> Store<E, Meta> {
    pub(super) fn apply_addresses(&self, addrs: &[AddressRecord]) -> Result<ApplyOutcome> {
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

    pub(super) fn apply_registrations(&self, regs: &[RegistrationRecord]) -> Result<ApplyOutcome> {
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

    /// Gives ids to the persons and source labels that have none (the
    /// metadata group of a sharded cluster).
    pub(super) fn apply_assign_ids(
        &self,
        persons: &[u64],
        sources: &[String],
    ) -> Result<ApplyOutcome> {
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
}

impl<E: KvEngine> Store<E, Meta> {
    /// [`Store::apply_assign_ids`], and each person's last week seen raised
    /// to the one listed.
    pub(super) fn apply_assign_ids_seen(
        &self,
        persons: &[(u64, i64)],
        sources: &[String],
    ) -> Result<ApplyOutcome> {
        let mut batch = WriteBatch::default();
        let mut new_persons = 0;
        {
            let mut st = self.state.write();
            let weeks = crate::shard::week_of_hour(keys::MIN_HOUR)
                ..=crate::shard::week_of_hour(keys::MAX_HOUR);
            for &(p, week) in persons {
                let week = week.clamp(*weeks.start(), *weeks.end());
                let id = match st.ext_to_int.get(&p) {
                    Some(&id) => id,
                    None => {
                        new_persons += 1;
                        Self::assign_person(&mut st, &mut batch, p)?
                    }
                };
                let i = id as usize;
                if st.last_seen.len() <= i {
                    st.last_seen.resize(i + 1, NEVER_SEEN);
                }
                if st.last_seen[i] < week {
                    st.last_seen[i] = week;
                    batch.put(keys::last_seen(id), week.to_be_bytes().to_vec());
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

    /// The last week person `id` was seen in, if recorded (sharded
    /// clusters' metadata store).
    pub fn last_seen_week(&self, id: u32) -> Option<i64> {
        let st = self.state.read_recursive();
        st.last_seen
            .get(id as usize)
            .copied()
            .filter(|w| *w != NEVER_SEEN)
    }

    /// Retention in a sharded cluster's metadata store: forgets every
    /// person whose last recorded week ends at or before `cutoff_hour` and
    /// who holds no registration (the shards removed all their hours; a
    /// batch naming them again records a later week first). Returns how
    /// many were forgotten.
    pub(super) fn forget_unseen(&self, cutoff_hour: i64) -> Result<u64> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        {
            let mut st = self.state.write();
            let old: Vec<u32> = st
                .last_seen
                .iter()
                .enumerate()
                .filter(|(_, &w)| {
                    w != NEVER_SEEN && crate::shard::week_start_hour(w + 1) <= cutoff_hour
                })
                .map(|(id, _)| id as u32)
                .collect();
            for id in old {
                if Self::forget_person(&mut st, &mut batch, id) {
                    st.last_seen[id as usize] = NEVER_SEEN;
                    batch.delete(keys::last_seen(id));
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.commit(batch)?;
        }
        Ok(n)
    }
}

impl<E: KvEngine, R: Role> Store<E, R> {
    pub(super) fn assign_person(
        st: &mut State,
        batch: &mut WriteBatch,
        person: u64,
    ) -> Result<u32> {
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

    /// Forgets the person behind internal id `id`: retention removed
    /// every hour they were seen and they hold no registration. The id is
    /// never given out again (its slot keeps a [`NO_PERSON`] mark, so the
    /// dictionary has no hole); the person, if seen again, gets a new one.
    pub(super) fn forget_person(st: &mut State, batch: &mut WriteBatch, id: u32) -> bool {
        let Some(ext) = st.int_to_ext.get(id as usize).copied() else {
            return false;
        };
        if ext == NO_PERSON
            || st.ext_to_int.get(&ext) != Some(&id)
            || st.registrations.contains_key(&ext)
        {
            return false;
        }
        st.ext_to_int.remove(&ext);
        st.int_to_ext[id as usize] = NO_PERSON;
        batch.delete(keys::dict_ext(ext));
        batch.put(keys::dict_int(id), NO_PERSON.to_be_bytes().to_vec());
        true
    }

    pub(super) fn assign_source(
        st: &mut State,
        batch: &mut WriteBatch,
        label: &str,
    ) -> Result<u16> {
        let s = u16::try_from(st.sources.len())
            .map_err(|_| StorageError::Invalid("more than 65535 source labels".into()))?;
        batch.put(keys::source(s), label.as_bytes().to_vec());
        Self::learn_source(st, s, label.to_string());
        Ok(s)
    }

    /// Records source label `id` (a data shard's table may have holes).
    pub(super) fn learn_source(st: &mut State, id: u16, label: String) {
        if st.sources.len() <= id as usize {
            st.sources.resize(id as usize + 1, String::new());
        }
        st.sources[id as usize] = label.clone();
        st.source_ids.insert(label, id);
    }

    /// Records address `a` under its id (a data shard's table may have
    /// holes; they hold an empty code and cell 0).
    pub(super) fn learn_address(st: &mut State, a: AddressRecord, level: u8) {
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

    pub fn with_addresses<T>(
        &self,
        f: impl FnOnce(&HashMap<String, AddressRecord, IdHash>) -> T,
    ) -> T {
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
    pub fn with_registry<T>(
        &self,
        f: impl FnOnce(
            &HashMap<u64, RegistrationRecord, IdHash>,
            &HashMap<String, AddressRecord, IdHash>,
            &HashMap<u64, u32, IdHash>,
        ) -> T,
    ) -> T {
        let st = self.state.read_recursive();
        f(&st.registrations, &st.addresses, &st.ext_to_int)
    }

    /// Runs `f` over the registry without copying it.
    pub fn with_registrations<T>(
        &self,
        f: impl FnOnce(&HashMap<u64, RegistrationRecord, IdHash>) -> T,
    ) -> T {
        f(&self.state.read_recursive().registrations)
    }

    // -------------------------------------------------------- dictionary

    pub fn internal_id(&self, person: u64) -> Option<u32> {
        self.state.read_recursive().ext_to_int.get(&person).copied()
    }

    pub fn external_id(&self, id: u32) -> Option<u64> {
        let st = self.state.read_recursive();
        let ext = st.int_to_ext.get(id as usize).copied()?;
        (ext != NO_PERSON && (!R::SHARD || st.ext_to_int.get(&ext) == Some(&id))).then_some(ext)
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
                (ext != NO_PERSON && (!R::SHARD || st.ext_to_int.get(&ext) == Some(&id)))
                    .then_some(ext)
            }));
        }
        crate::radix::sort_u64(&mut out);
        out
    }

    /// The id of a source label, if it has one.
    pub fn source_id(&self, label: &str) -> Option<u16> {
        self.state.read_recursive().source_ids.get(label).copied()
    }

    /// Whether this store already holds source label or address `k` (a data shard's tables hold only what its events used).
    pub fn knows(&self, k: crate::shard::Known<'_>) -> bool {
        let st = self.state.read_recursive();
        match k {
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
}
