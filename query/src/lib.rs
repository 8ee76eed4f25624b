//! hourcell query: validation, regions, windows and the four queries.
//!
//! Main types:
//! - [`SliceReader`] and [`Catalog`]: what the planner reads (slices, and
//!   the names they are resolved with). The single-node store is both
//!   ([`SliceSource`]); a cluster reads slices by fanning out to shards
//!   over the metadata store's catalog, so this crate never needs the
//!   network to be tested.
//! - [`ShardedSource`]: that fan-out, reading the shards held on other
//!   nodes at the same time through a [`Fanout`] the node supplies, with
//!   one request per node through its [`BatchReads`] ([`batch`]).
//! - [`QueryEngine`]: who-was-at, where-was, occupancy and
//!   no-activity-since with exact, documented semantics.
//! - [`Region`], [`Window`]: the inputs, validated with errors that name the
//!   field and the value; polygon regions' geometry is in [`polygon`].
//! - [`rules`]: the should-register and verify-departure rules that turn
//!   slices into task drafts for field staff.
//! - [`validate`]: turns raw events, addresses and registrations into store
//!   commands, collecting per-item rejections.
//!
//! Imports storage and proto; never cluster, tonic services or raft.

pub mod batch;
pub mod engine;
pub mod error;
pub mod grid;
mod masks;
pub mod polygon;
pub mod region;
pub mod rules;
pub mod sharded;
pub mod source;
pub mod time;
pub mod validate;

pub use batch::{BatchReads, SliceAnswer, SliceRead};
pub use engine::{
    HourCount, HourPlaces, Inactive, NoActivityAnswer, OccupancyAnswer, QueryEngine,
    WhereWasAnswer, WhoWasAtAnswer,
};
pub use error::{QueryError, Result};
pub use grid::{GridAnswer, GridCount, DEFAULT_GRID_LEVEL};
pub use region::Region;
pub use rules::{Evaluation, Nights, RuleConfig};
pub use sharded::{CellShards, Fanout, ScopedThreads, ShardedSource};
pub use source::{day_sets_by_day, Catalog, DayKeys, HourStep, SliceReader, SliceSource};
pub use time::Window;
