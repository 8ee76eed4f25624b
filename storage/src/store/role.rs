//! Stores by role. A [`Store`] is opened as one of two roles, fixed when
//! it is created and recorded in it:
//!
//! - [`Meta`] ([`MetaStore`]): a node's own store. The whole id
//!   dictionary, source labels, addresses and registry (`catalog`), tasks,
//!   the audit log and the shard map (`meta`); on an unsharded node also
//!   every slice. In a sharded cluster it is the metadata group's, and
//!   holds no slices.
//! - [`Shard`] ([`ShardStore`]): one data shard of a sharded cluster: its
//!   cell or person slices and held writes (`read`, `held`), with only
//!   the dictionary entries, labels and addresses its events use (so its
//!   tables have holes). No tasks, audit log or shard map: the compiler
//!   refuses to ask it for them, and it refuses every command but its own.
//!
//! The role decides which commands apply ([`Role::apply`]); reads of
//! slices and of the catalog are common to both.

use super::Store;
use crate::command::{ApplyOutcome, Command};
use crate::error::{Result, StorageError};
use crate::kv::KvEngine;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Meta {}
    impl Sealed for super::Shard {}
}

/// A store's role; see the module documentation.
pub trait Role: sealed::Sealed + Send + Sync + Sized + 'static {
    /// A data shard: its dictionary and address table hold only what its
    /// events use.
    const SHARD: bool;
    /// As error messages name it.
    const NAME: &'static str;

    /// Applies one command a store of this role takes.
    fn apply<E: KvEngine>(s: &Store<E, Self>, cmd: &Command) -> Result<ApplyOutcome>;
}

/// A node's own store (see the module documentation).
pub struct Meta;

/// A data shard of a sharded cluster (see the module documentation).
pub struct Shard;

pub type MetaStore<E> = Store<E, Meta>;
pub type ShardStore<E> = Store<E, Shard>;

fn wrong_role(cmd: &Command, store: &str) -> StorageError {
    StorageError::Invalid(format!("a {} command cannot apply to {store}", cmd.name()))
}

impl Role for Meta {
    const SHARD: bool = false;
    const NAME: &'static str = "the metadata store";

    fn apply<E: KvEngine>(s: &MetaStore<E>, cmd: &Command) -> Result<ApplyOutcome> {
        match cmd {
            Command::Ingest(events) => s.apply_ingest(events),
            Command::PutAddresses(addrs) => s.apply_addresses(addrs),
            Command::PutRegistrations(regs) => s.apply_registrations(regs),
            Command::RaiseTasks {
                at,
                evaluation,
                suppress_secs,
                tasks,
            } => s.apply_raise_tasks(*at, evaluation, *suppress_secs, tasks),
            Command::UpdateTask(u) => s.apply_update_task(u),
            Command::Audit(entries) => s.apply_audit(entries),
            Command::Expire { cutoff_hour, audit } => s.apply_expire(*cutoff_hour, audit),
            Command::AssignIds { persons, sources } => s.apply_assign_ids(persons, sources),
            Command::AssignIdsSeen { persons, sources } => {
                s.apply_assign_ids_seen(persons, sources)
            }
            Command::CreatePartitions { weeks } => {
                let weeks: Vec<_> = weeks
                    .iter()
                    .map(|(w, c)| (*w, c.clone(), Vec::new()))
                    .collect();
                s.apply_create_partitions(&weeks)
            }
            Command::CreateSplitPartitions { weeks } => s.apply_create_partitions(weeks),
            Command::SplitShard {
                week,
                parent,
                shards,
                replicas,
            } => s.apply_split_shard(*week, *parent, *shards, replicas),
            Command::DropPartitions { weeks } => s.apply_drop_partitions(weeks),
            Command::PlaceShards { shards } => s.apply_place_shards(shards),
            Command::IngestShard(_) => Err(wrong_role(cmd, Self::NAME)),
        }
    }
}

impl Role for Shard {
    const SHARD: bool = true;
    const NAME: &'static str = "a data shard";

    fn apply<E: KvEngine>(s: &ShardStore<E>, cmd: &Command) -> Result<ApplyOutcome> {
        match cmd {
            Command::IngestShard(part) => s.apply_shard_ingest(part),
            Command::Expire { cutoff_hour, .. } => s.apply_shard_expire(*cutoff_hour),
            _ => Err(wrong_role(cmd, Self::NAME)),
        }
    }
}
