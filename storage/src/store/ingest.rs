//! The ingest commands: events resolved to ids and rows, then their slices
//! written or held (see `held`).

use super::held::{slices_of, Row, Slices};
use super::{Meta, Role, Shard, Store, NO_PERSON};
use crate::cell;
use crate::command::{ApplyOutcome, SliceEvent};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, WriteBatch};

impl<E: KvEngine> Store<E, Meta> {
    /// An unsharded node's ingest: ids assigned as needed, every slice
    /// written.
    pub(super) fn apply_ingest(&self, events: &[SliceEvent]) -> Result<ApplyOutcome> {
        self.apply_ingest_into(events, None, WriteBatch::default())
    }
}

impl<E: KvEngine, R: Role> Store<E, R> {
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
}

impl<E: KvEngine> Store<E, Shard> {
    /// A data shard's part of an ingest batch: learns the ids and
    /// addresses it carries, then writes the part's slices.
    /// Cell events applied since the store was opened (see
    /// `apply_cell_events`): a cell shard's write rate.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn apply_shard_ingest(
        &self,
        part: &crate::command::ShardIngest,
    ) -> Result<ApplyOutcome> {
        if part.part == crate::command::ShardPart::Cells {
            return self.apply_cell_events(&part.cell_events);
        }
        let mut batch = WriteBatch::default();
        {
            let mut st = self.state.write();
            for &(ext, id) in &part.persons {
                match st.ext_to_int.get(&ext).copied() {
                    // Known, or a part proposed before the metadata group
                    // forgot this person and gave them a new id (ids only
                    // grow): the newer id stays.
                    Some(have) if have >= id => {}
                    have => {
                        // A newer id: the old one's entry goes (its hours,
                        // all before the cut-off that forgot it, go with
                        // the next expiry).
                        if let Some(old) = have {
                            st.int_to_ext[old as usize] = NO_PERSON;
                            batch.put(keys::dict_int(old), NO_PERSON.to_be_bytes().to_vec());
                        }
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
        self.events_applied
            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let batch = WriteBatch::default();
        let mut slices = Slices::default();
        slices.cells.reserve(events.len());
        for &(id, hour, cell, addr) in events {
            slices.add_cell(id, hour, cell, addr);
        }
        self.write_slices(batch, slices, events.len() as u64, None)
    }
}

/// Refuses a batch with an hour outside the key space.
fn check_hours(mut hours: impl Iterator<Item = i64>) -> Result<()> {
    match hours.find(|h| !(keys::MIN_HOUR..=keys::MAX_HOUR).contains(h)) {
        Some(h) => Err(StorageError::Invalid(format!("hour {h} out of range"))),
        None => Ok(()),
    }
}
