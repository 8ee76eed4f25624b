//! Small types shared by the node's modules: the store type, the clock,
//! and what a node reports about the shard groups it holds.

use std::sync::Arc;

use hourcell_storage::{MetaStore, PrefixedEngine, RocksEngine};

/// The node's own store on RocksDB, the whole of its engine: a single
/// node's, or a sharded cluster's metadata group's.
pub type Store = MetaStore<PrefixedEngine<RocksEngine>>;

/// A data shard's store: its part of the node's shared shard engine.
pub type ShardStore = hourcell_storage::ShardStore<PrefixedEngine<RocksEngine>>;

/// A source of "now" in unix seconds; tests inject a fixed clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(hourcell_query::time::now)
}

/// The group that holds the dictionaries, catalog, tasks and audit log:
/// the only group of an unsharded cluster, the metadata group of a
/// sharded one.
pub const DATA_GROUP: u64 = 1;

/// One data group a node holds, with its members as that node sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMembers {
    pub group: u64,
    /// "cells 0", "persons 1", ...
    pub shard: String,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub first_index: u64,
    pub disk_bytes: u64,
    /// The nodes the shard map places this shard on.
    pub replicas: Vec<u64>,
    pub map_version: u64,
}
