//! Splitting an ingest batch over the shards of a [`Layout`]: the ids the
//! metadata store must assign first, the weeks a batch touches, and one
//! command per shard. Separate from `shard` (placement and the map), which
//! knows neither the store nor commands.

use std::collections::HashMap;

use crate::catalog::AddressRecord;
use crate::command::{ShardIngest, SliceEvent};
use crate::kv::KvEngine;
use crate::shard::{week_of_hour, Known, Layout, ShardId, ShardPart};
use crate::store::MetaStore;
use crate::{Result, StorageError};

impl Layout {
    /// What the metadata store must record before `events` can be split
    /// ([`crate::Command::AssignIdsSeen`]): each person without an id, or
    /// whose recorded last week is older than the latest week they have in
    /// `events`, with that week; and the source labels without an id. In
    /// first-seen order.
    pub fn ids_to_record<E: KvEngine>(
        meta: &MetaStore<E>,
        events: &[SliceEvent],
    ) -> (Vec<(u64, i64)>, Vec<String>) {
        let mut latest: HashMap<u64, i64> = HashMap::new();
        let mut order = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        for e in events {
            let w = week_of_hour(e.hour);
            match latest.entry(e.person) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if *o.get() < w {
                        o.insert(w);
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(w);
                    order.push(e.person);
                }
            }
            if !sources.contains(&e.source) && meta.source_id(&e.source).is_none() {
                sources.push(e.source.clone());
            }
        }
        let persons = order
            .into_iter()
            .filter_map(|p| {
                let w = latest[&p];
                let recorded = meta.internal_id(p).and_then(|id| meta.last_seen_week(id));
                recorded.is_none_or(|r| r < w).then_some((p, w))
            })
            .collect();
        (persons, sources)
    }

    /// The weeks `events` fall in, ascending.
    pub fn weeks(events: &[SliceEvent]) -> Vec<i64> {
        let mut w: Vec<i64> = events.iter().map(|e| week_of_hour(e.hour)).collect();
        w.sort_unstable();
        w.dedup();
        w
    }

    /// Splits placed events into one command per shard they touch, with
    /// the ids from `meta` (which must already have assigned them) and its
    /// map's cell shard splits. A shard
    /// is `(part, week, index)`; the week is 0 for person shards. A
    /// dictionary entry, label or address is carried unless `knows(shard,
    /// what)` says that shard already holds it: a replica that holds it
    /// applied it from an earlier entry of the same log, so every replica
    /// will have it before this command. Returns `(shard, command)`.
    pub fn split<E: KvEngine>(
        &self,
        meta: &MetaStore<E>,
        events: Vec<SliceEvent>,
        knows: &dyn Fn(ShardId, Known<'_>) -> bool,
    ) -> Result<Vec<(ShardId, ShardIngest)>> {
        #[derive(Default)]
        struct Part {
            cmd: Option<ShardIngest>,
            persons: std::collections::HashSet<u64>,
            sources: std::collections::HashSet<u16>,
            addresses: std::collections::HashSet<u32>,
        }
        let mut parts: HashMap<ShardId, Part> = HashMap::new();
        // Each address code's record and slice cell, looked up once.
        type Addr = Option<(std::sync::Arc<AddressRecord>, u64)>;
        let mut addr_cache: HashMap<String, Addr> = HashMap::new();
        let shift = crate::cell::compact_shift(meta.slice_level());
        let labels = meta.source_labels();
        let splits = meta.cell_splits();
        let mut ids: HashMap<u64, u32> = HashMap::new();
        for e in events {
            let id = match ids.get(&e.person) {
                Some(&id) => id,
                None => {
                    let id = meta.internal_id(e.person).ok_or_else(|| {
                        StorageError::Invalid(format!("person {} has no id yet", e.person))
                    })?;
                    ids.insert(e.person, id);
                    id
                }
            };
            let src = meta.source_id(&e.source).ok_or_else(|| {
                StorageError::Invalid(format!("source {:?} has no id yet", e.source))
            })?;
            let addr = match &e.address {
                Some(code) => match addr_cache.get(code.as_str()) {
                    Some(a) => a.clone(),
                    None => {
                        let a = meta.address(code).and_then(|a| {
                            let (_, _, _, cell) = meta.address_point(code)?;
                            Some((std::sync::Arc::new(a), cell))
                        });
                        addr_cache.insert(code.clone(), a.clone());
                        a
                    }
                },
                None => None,
            };
            let week = week_of_hour(e.hour);
            let week_splits = splits.get(&week).map_or(&[][..], |v| v.as_slice());
            let cells = ShardId {
                part: ShardPart::Cells,
                week,
                index: crate::shard::route_cell(*self, week_splits, e.cell),
            };
            let persons = ShardId {
                part: ShardPart::Persons,
                week: 0,
                index: self.person_shard(id),
            };
            let new_part = |part| ShardIngest {
                part,
                persons: Vec::new(),
                sources: Vec::new(),
                addresses: Vec::new(),
                events: Vec::new(),
                cell_events: Vec::new(),
                person_events: Vec::new(),
            };
            let addr_id = addr.as_ref().map_or(0, |(a, _)| a.id);
            // The cell part: resolved here, nothing for the shard to learn.
            parts
                .entry(cells)
                .or_default()
                .cmd
                .get_or_insert_with(|| new_part(ShardPart::Cells))
                .cell_events
                .push((id, e.hour, e.cell, addr_id));
            {
                let shard = persons;
                let part = shard.part;
                let p = parts.entry(shard).or_default();
                let cmd = p.cmd.get_or_insert_with(|| new_part(part));
                // Every person's entry, known there or not: a person shard
                // forgets the persons retention removed, and a part
                // proposed just before it did must let it learn them again.
                if p.persons.insert(e.person) {
                    cmd.persons.push((e.person, id));
                }
                if p.sources.insert(src) && !knows(shard, Known::Source(&e.source)) {
                    cmd.sources.push((src, labels[src as usize].clone()));
                }
                // Most events sit at their address's point: the person
                // index stores cell 0 ("the address's cell") for them.
                let compact_cell = match &addr {
                    Some((a, cell)) => {
                        if p.addresses.insert(a.id) && !knows(shard, Known::Address(&a.code)) {
                            cmd.addresses.push(AddressRecord::clone(a));
                        }
                        if *cell == e.cell {
                            0
                        } else {
                            e.cell >> shift
                        }
                    }
                    None => e.cell >> shift,
                };
                cmd.person_events
                    .push((id, e.hour, compact_cell, addr_id, src));
            }
        }
        let mut out: Vec<_> = parts
            .into_iter()
            .filter_map(|(id, c)| c.cmd.map(|c| (id, c)))
            .collect();
        out.sort_by_key(|(id, _)| (id.part == ShardPart::Persons, id.week, id.index));
        Ok(out)
    }
}
