//! How a sharded cluster splits its data (see docs/ARCHITECTURE.md,
//! "Sharding").
//!
//! One metadata store holds the dictionaries (person ids, source labels),
//! the address table, the registry, tasks and the audit log, and is the only
//! place ids are assigned ([`Command::AssignIds`]). Data shards hold slices:
//! a **cell shard** keeps the cell and address slices of the events whose
//! slice cell it owns, a **person shard** keeps the person index and the
//! all-persons hour slices of the persons it owns. Because every shard
//! uses the metadata store's ids, the bitmaps of different shards can be
//! unioned.
//!
//! Cell shards are per **time partition**: a week (Monday to Sunday, UTC)
//! has its own `cells` cell shards, created ahead of time and dropped whole
//! once retention has passed the week. Within a week, cells are placed by
//! their level-15 ancestor (about 300 m across), hashed: neighbouring events
//! stay together, and a town spreads over every cell shard instead of
//! landing in one range. Persons are placed by internal id modulo the
//! number of person shards, for all time.

use std::collections::HashMap;

use crate::catalog::AddressRecord;
use crate::command::{ShardIngest, ShardPart, SliceEvent};
use crate::kv::KvEngine;
use crate::store::SliceStore;
use crate::{Result, StorageError};

/// The level whose cells are placed together.
pub const PLACEMENT_LEVEL: u32 = 15;
/// At most this many shards of each kind.
pub const MAX_SHARDS: u32 = 256;

/// The week (time partition) of UTC day `day`: weeks start on Mondays
/// (1970-01-05 begins week 1).
pub fn week_of_day(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// The week of hour `hour`.
pub fn week_of_hour(hour: i64) -> i64 {
    week_of_day(hour.div_euclid(24))
}

/// The first hour of week `week` (its end is the next week's first hour).
pub fn week_start_hour(week: i64) -> i64 {
    (week * 7 - 3) * 24
}

/// The number of cell shards per week and of person shards, fixed when a
/// cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub cells: u32,
    pub persons: u32,
}

/// One data shard: a person shard (`week` 0) or a week's cell shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId {
    pub part: ShardPart,
    pub week: i64,
    pub index: usize,
}

/// Something a shard may or may not hold yet.
#[derive(Debug, Clone, Copy)]
pub enum Known<'a> {
    Person(u64),
    Source(&'a str),
    Address(&'a str),
}

impl Layout {
    pub fn new(cells: u32, persons: u32) -> std::result::Result<Self, String> {
        for (n, what) in [(cells, "cell"), (persons, "person")] {
            if n == 0 || n > MAX_SHARDS {
                return Err(format!("{what} shards must be 1..={MAX_SHARDS}, not {n}"));
            }
        }
        Ok(Self { cells, persons })
    }

    /// The cell shard that owns slice cell `cell`.
    pub fn cell_shard(&self, cell: u64) -> usize {
        // Face (3 bits) and position down to PLACEMENT_LEVEL (2 bits a level).
        let top = cell >> (64 - 3 - 2 * PLACEMENT_LEVEL);
        let h = top.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((h >> 32) % u64::from(self.cells)) as usize
    }

    /// The person shard that owns internal id `id`.
    pub fn person_shard(&self, id: u32) -> usize {
        (id % self.persons) as usize
    }

    /// Ids the metadata store must assign before `events` can be split:
    /// persons and source labels it has not seen, in first-seen order.
    pub fn missing_ids<E: KvEngine>(
        meta: &SliceStore<E>,
        events: &[SliceEvent],
    ) -> (Vec<u64>, Vec<String>) {
        let mut persons = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut sources: Vec<String> = Vec::new();
        for e in events {
            if seen.insert(e.person) && meta.internal_id(e.person).is_none() {
                persons.push(e.person);
            }
            if !sources.contains(&e.source) && meta.source_id(&e.source).is_none() {
                sources.push(e.source.clone());
            }
        }
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
    /// the ids from `meta` (which must already have assigned them). A shard
    /// is `(part, week, index)`; the week is 0 for person shards. A
    /// dictionary entry, label or address is carried unless `knows(shard,
    /// what)` says that shard already holds it: a replica that holds it
    /// applied it from an earlier entry of the same log, so every replica
    /// will have it before this command. Returns `(shard, command)`.
    pub fn split<E: KvEngine>(
        &self,
        meta: &SliceStore<E>,
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
        let mut addr_cache: HashMap<String, Option<std::sync::Arc<AddressRecord>>> = HashMap::new();
        let labels = meta.source_labels();
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
                        let a = meta.address(code).map(std::sync::Arc::new);
                        addr_cache.insert(code.clone(), a.clone());
                        a
                    }
                },
                None => None,
            };
            let cells = ShardId {
                part: ShardPart::Cells,
                week: week_of_hour(e.hour),
                index: self.cell_shard(e.cell),
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
            };
            // The cell part: resolved here, nothing for the shard to learn.
            parts
                .entry(cells)
                .or_default()
                .cmd
                .get_or_insert_with(|| new_part(ShardPart::Cells))
                .cell_events
                .push((id, e.hour, e.cell, addr.as_ref().map_or(0, |a| a.id)));
            {
                let shard = persons;
                let part = shard.part;
                let p = parts.entry(shard).or_default();
                let cmd = p.cmd.get_or_insert_with(|| new_part(part));
                if p.persons.insert(e.person) && !knows(shard, Known::Person(e.person)) {
                    cmd.persons.push((e.person, id));
                }
                if p.sources.insert(src) && !knows(shard, Known::Source(&e.source)) {
                    cmd.sources.push((src, labels[src as usize].clone()));
                }
                if let Some(a) = &addr {
                    if p.addresses.insert(a.id) && !knows(shard, Known::Address(&a.code)) {
                        cmd.addresses.push(AddressRecord::clone(a));
                    }
                }
                cmd.events.push(e);
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
