//! Commands: the unit of change a store applies. A raft log entry
//! carries exactly one command (a batch, never a single event). Applying a
//! command reads nothing but the store and the command itself, so every
//! replica that applies the same commands in the same order holds the same
//! bytes.

use serde::{Deserialize, Serialize};

use crate::catalog::{AddressRecord, RegistrationRecord};
use crate::tasks::{TaskDraft, TaskUpdate};

/// A validated event, already placed: its hour, its slice cell and the
/// address it names (if any). Validation happens before proposing, so apply
/// never rejects an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceEvent {
    pub person: u64,
    pub hour: i64,
    /// Slice-level S2 cell id.
    pub cell: u64,
    /// Address code, if the event carried one.
    pub address: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Ingest(Vec<SliceEvent>),
    PutAddresses(Vec<AddressRecord>),
    PutRegistrations(Vec<RegistrationRecord>),
    /// Tasks from one rule evaluation. A draft whose subject (kind, person,
    /// address) already has an open task, or whose subject was rejected
    /// less than `suppress_secs` before `at`, is skipped: evaluating twice
    /// creates nothing new.
    RaiseTasks {
        /// Unix seconds the evaluation ran for (its `now`).
        at: i64,
        evaluation: String,
        suppress_secs: i64,
        tasks: Vec<TaskDraft>,
    },
    /// A staff state change; refused (deterministically, in the outcome) if
    /// the task's current state does not allow it.
    UpdateTask(TaskUpdate),
    /// Audit records, appended to the hash chain in order.
    Audit(Vec<crate::audit::AuditEntry>),
    /// Retention: removes every hour before `cutoff_hour` (whole days by
    /// range deletes, the boundary day's earlier hours from their masks)
    /// and records the removal in the audit log. The cut-off travels in the
    /// command, so every replica removes exactly the same hours whatever
    /// its clock says.
    Expire {
        cutoff_hour: i64,
        audit: crate::audit::AuditEntry,
    },
    /// Sharded clusters, metadata group: gives every person and source
    /// label that has none its internal id, in the order listed. The only
    /// place ids are assigned, so every data shard uses the same ids.
    AssignIds {
        persons: Vec<u64>,
        sources: Vec<String>,
    },
    /// Sharded clusters, data shard: one shard's part of an ingest batch,
    /// with the ids the metadata group assigned. Never assigns an id.
    IngestShard(ShardIngest),
    /// Sharded clusters, metadata group: adds time partitions (weeks) to
    /// the shard map, each with the replica set of each of its cell shards
    /// (by index). A week already in the map is left as it is.
    CreatePartitions {
        weeks: Vec<(i64, Vec<Vec<u64>>)>,
    },
    /// Sharded clusters, metadata group: sets the replica sets of shards
    /// already in the map (the person shards' first placement, or a move
    /// away from a removed node). Entries for weeks no longer in the map
    /// are ignored.
    PlaceShards {
        shards: Vec<(crate::shard::ShardId, Vec<u64>)>,
    },
    /// Sharded clusters, metadata group: removes weeks from the shard map
    /// (retention dropped their cell shards whole).
    DropPartitions {
        weeks: Vec<i64>,
    },
    /// Sharded clusters, metadata group: [`Command::AssignIds`] that also
    /// records, for each person, the latest week of the batch it is in
    /// (raising the last week the person was seen in), before the batch's
    /// parts reach the shards. Retention then forgets a person whose last
    /// week lies wholly before its cut-off. Listed are the persons without
    /// an id or whose recorded week is older.
    AssignIdsSeen {
        persons: Vec<(u64, i64)>,
        sources: Vec<String>,
    },
    /// Sharded clusters, metadata group: [`Command::CreatePartitions`]
    /// whose weeks start with the cell shard splits of the week they
    /// follow (one replica set per shard, the split children after the
    /// original shards, and the splits as [`crate::shard::CellSplit`]s).
    CreateSplitPartitions {
        weeks: Vec<(i64, Vec<Vec<u64>>, Vec<crate::shard::CellSplit>)>,
    },
    /// Sharded clusters, metadata group: splits cell shard `parent` of
    /// week `week` and of every later week in the map: a new shard (the
    /// next index of each week) on `replicas` takes over the half of the
    /// parent's cells whose next split bit is set. Writes follow the new
    /// map; what the parent already holds stays there and is read with
    /// the rest of the week.
    SplitShard {
        week: i64,
        parent: usize,
        /// The week's shard count the split was asked of: a week with
        /// another count (split already, by a repeat of this command) is
        /// left as it is.
        shards: usize,
        replicas: Vec<u64>,
    },
}

pub use crate::shard::ShardPart;

/// A data shard's part of an ingest batch. `persons`, `sources` and
/// `addresses` carry the dictionary entries and address records its events
/// use that the shard may not know yet (ids as the metadata group assigned
/// them); applying one the shard already holds is a no-op, so a retried or
/// repeated part is harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIngest {
    pub part: ShardPart,
    pub persons: Vec<(u64, u32)>,
    pub sources: Vec<(u16, String)>,
    pub addresses: Vec<AddressRecord>,
    pub events: Vec<SliceEvent>,
    /// A cell shard's events, fully resolved by the proposer: (internal
    /// id, hour, slice cell, address id or 0). A cell shard needs no
    /// dictionary, labels or addresses of its own.
    pub cell_events: Vec<(u32, i64, u64, u32)>,
    /// A person shard's events, resolved by the proposer: (internal id,
    /// hour, compact cell as the person index stores it, address id or 0,
    /// source id). The shard still learns the persons, labels and
    /// addresses the part carries, for reading its index back.
    pub person_events: Vec<(u32, i64, u64, u32, u16)>,
}

impl Command {
    /// The command's kind, as messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ingest(_) => "Ingest",
            Command::PutAddresses(_) => "PutAddresses",
            Command::PutRegistrations(_) => "PutRegistrations",
            Command::RaiseTasks { .. } => "RaiseTasks",
            Command::UpdateTask(_) => "UpdateTask",
            Command::Audit(_) => "Audit",
            Command::Expire { .. } => "Expire",
            Command::AssignIds { .. } => "AssignIds",
            Command::IngestShard(_) => "IngestShard",
            Command::CreatePartitions { .. } => "CreatePartitions",
            Command::PlaceShards { .. } => "PlaceShards",
            Command::DropPartitions { .. } => "DropPartitions",
            Command::AssignIdsSeen { .. } => "AssignIdsSeen",
            Command::CreateSplitPartitions { .. } => "CreateSplitPartitions",
            Command::SplitShard { .. } => "SplitShard",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("commands always encode")
    }

    pub fn decode(b: &[u8]) -> crate::Result<Self> {
        bincode::serde::decode_from_slice(b, crate::bincode_limits())
            .map(|(c, _)| c)
            .map_err(|e| crate::StorageError::Decode {
                what: "command",
                reason: e.to_string(),
            })
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u64,
    pub new_persons: u64,
    /// Tasks created (RaiseTasks) or changed (UpdateTask).
    pub task_ids: Vec<u64>,
    /// Why an UpdateTask was refused (the same on every replica).
    pub refused: Option<String>,
    /// Expire: whether anything was old enough to remove.
    pub expired: bool,
}
