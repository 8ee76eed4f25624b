//! hourcell storage: population slices on a key-value engine.
//!
//! The main types:
//! - [`KvEngine`]: the minimal ordered key-value interface the rest of the
//!   crate is written against, with [`MemEngine`] (tests) and [`RocksEngine`]
//!   (production; the only module that names `rocksdb`).
//! - [`Store`]: population slices and the tables around them, in one of
//!   two roles fixed at creation: a [`MetaStore`] (a node's own store: the
//!   id dictionary, the address and registry catalog, tasks, the audit log
//!   and the shard map; on an unsharded node every slice too) or a
//!   [`ShardStore`] (one data shard's slices, with the dictionary entries
//!   its events use). Slices are per-day sets of (person, hour mask) per S2
//!   cell and per address, a roaring bitmap of everyone per hour, and the
//!   per-person index. A store applies the [`Command`]s its role takes, the
//!   unit that a raft log entry carries, deterministically: no wall clock,
//!   no randomness.
//! - [`keys`] documents the key layout; [`cell`] the S2 helpers.
//!
//! This crate is a leaf: it must not import proto, tonic, raft or any query
//! or cluster code.

pub mod audit;
pub mod catalog;
pub mod cell;
pub mod codec;
pub mod command;
pub mod error;
pub mod keys;
pub mod kv;
pub mod mem;
pub mod prefixed;
pub mod radix;
pub mod rocks;
pub mod shard;
pub mod sharding;
pub mod store;
pub mod tasks;

pub use audit::{AuditEntry, AuditRecord};
pub use catalog::{AddressKind, AddressRecord, RegistrationKind, RegistrationRecord};
pub use codec::DaySet;
pub use command::{ApplyOutcome, Command, ShardIngest, ShardPart, SliceEvent};
pub use error::{Result, StorageError};
pub use kv::{FrozenView, KvEngine, TryScan, WriteBatch};
pub use mem::MemEngine;
pub use prefixed::PrefixedEngine;
pub use rocks::{EngineFigures, RocksConfig, RocksEngine};
pub use store::{
    Meta, MetaStore, PlaceEntry, PlaceIds, Role, Shard, ShardStore, Store, StoreStats,
};
pub use tasks::{
    Outcome, SourceEvidence, TaskChange, TaskDraft, TaskKind, TaskRecord, TaskState, TaskUpdate,
};

/// Hours are UTC epoch hours: `floor(unix_seconds / 3600)`, computed with
/// `div_euclid` so that times before 1970 land in the right hour.
pub fn hour_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(3600)
}

/// The default S2 level of a slice cell (about 150 m across).
pub const DEFAULT_SLICE_LEVEL: u8 = 16;

/// Decoding limits for bincode values read from disk or the log: a length
/// prefix claiming more than this fails the decode instead of attempting
/// the allocation (hostile or corrupt bytes must never abort the process).
pub fn bincode_limits() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 256 << 20 }>()
}
