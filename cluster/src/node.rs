//! A single node: one shard (the whole data set) on RocksDB, the query
//! engine over it, and an injectable clock.
//!
//! Writes reach the store as [`Command`]s through [`Node::propose`]. On one
//! node that applies directly; when shards become raft groups, `propose`
//! becomes "append to the group's log and wait for apply", and nothing above
//! it changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hourcell_query::validate::{self, RawAddress, RawEvent, RawRegistration, Rejection};
use hourcell_query::QueryEngine;
use hourcell_storage::{ApplyOutcome, Command, RocksConfig, RocksEngine, SliceStore};

use crate::config::NodeConfig;

pub type Store = SliceStore<RocksEngine>;

/// A source of "now" in unix seconds; tests inject a fixed clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(hourcell_query::time::now)
}

pub struct Node {
    store: Arc<Store>,
    query: QueryEngine<Store>,
    data_dir: PathBuf,
    clock: Clock,
    max_batch: usize,
    events_accepted: AtomicU64,
    /// Set once a storage error made the node unable to serve safely.
    failed: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Query(#[from] hourcell_query::QueryError),
    #[error(transparent)]
    Storage(#[from] hourcell_storage::StorageError),
}

impl Node {
    pub fn open(cfg: &NodeConfig, clock: Clock) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", cfg.data_dir.display())
        })?;
        let rc = RocksConfig {
            block_cache_bytes: cfg.block_cache_mb << 20,
            write_buffer_bytes: cfg.write_buffer_mb << 20,
            ..RocksConfig::default()
        };
        let engine = RocksEngine::open(&cfg.data_dir.join("db"), &rc)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.data_dir.display()))?;
        let store = Arc::new(SliceStore::open(engine, Some(cfg.slice_level))?);
        Ok(Arc::new(Node {
            query: QueryEngine::new(store.clone()),
            store,
            data_dir: cfg.data_dir.clone(),
            clock,
            max_batch: cfg.max_batch,
            events_accepted: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn query(&self) -> &QueryEngine<Store> {
        &self.query
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    pub fn events_accepted(&self) -> u64 {
        self.events_accepted.load(Ordering::Relaxed)
    }

    /// Makes a command durable and applied. Returns only after the write is
    /// synced. A storage error marks the node failed.
    pub fn propose(&self, cmd: &Command) -> Result<ApplyOutcome, NodeError> {
        if !self.healthy() {
            return Err(NodeError::Storage(hourcell_storage::StorageError::Engine(
                "node stopped serving after an earlier storage failure".into(),
            )));
        }
        self.store.apply(cmd).map_err(|e| {
            if e.is_fatal() {
                tracing::error!(error = %e, "storage failure: node stops serving");
                self.failed.store(true, Ordering::Relaxed);
            }
            NodeError::Storage(e)
        })
    }

    fn check_batch(&self, n: usize, what: &str) -> Result<(), NodeError> {
        if n > self.max_batch {
            return Err(NodeError::Invalid(format!(
                "{what}: {n} items in one request, at most {} allowed",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// Validates, places and durably applies events. Bad events are
    /// rejected one by one; their good neighbours are applied.
    pub fn ingest(&self, raw: &[RawEvent]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "events")?;
        let (ok, bad) = validate::place_events(self.store.as_ref(), raw, self.now());
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::Ingest(ok))?;
        }
        self.events_accepted.fetch_add(n, Ordering::Relaxed);
        Ok((n, bad))
    }

    pub fn put_addresses(&self, raw: &[RawAddress]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "addresses")?;
        let (ok, bad) = validate::check_addresses(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutAddresses(ok))?;
        }
        Ok((n, bad))
    }

    pub fn put_registrations(
        &self,
        raw: &[RawRegistration],
    ) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "registrations")?;
        let (ok, bad) = validate::check_registrations(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutRegistrations(ok))?;
        }
        Ok((n, bad))
    }
}
