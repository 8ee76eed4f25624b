//! Backups: a consistent image of one raft group's store, taken on a
//! running node, and a new node's data directory seeded from a backup
//! (the restore), as `etcdutl snapshot restore` does: every member of the
//! new cluster is seeded with the same image at the same raft index, with
//! the new cluster's voters, and they start from there.

use super::*;

/// Which store an image is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRole {
    /// The metadata store (and on an unsharded node, every slice).
    Meta,
    /// A data shard.
    Shard,
}

/// A point-in-time image of one group's store, linearizable: it holds
/// every write acknowledged anywhere before it was asked for.
pub struct GroupImage {
    pub group: u64,
    pub role: ImageRole,
    /// The raft index the image is at (0 on a node without `[cluster]`).
    pub applied_index: u64,
    /// Persons in the id dictionary (of the metadata store).
    pub persons: u64,
    pub view: Arc<dyn hourcell_storage::FrozenView>,
}

/// Why a data directory could not be seeded from a backup.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path} already holds data: restore only into an empty data directory")]
    NotEmpty { path: PathBuf },
    #[error(
        "this backup is of a sharded cluster; restoring one is not implemented yet \
         (restore an unsharded backup, or see docs/OPERATIONS.md)"
    )]
    Sharded,
    #[error("the config has a sharded [cluster] (cell_shards/person_shards); restore an unsharded backup into an unsharded cluster")]
    ShardedConfig,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Storage(#[from] hourcell_storage::StorageError),
    #[error("the raft log could not be seeded: {why}")]
    Raft { why: String },
    #[error("reading the backup: {why}")]
    Source { why: String },
}

/// The raft index recorded in a store image, if any.
fn applied_in(view: &dyn hourcell_storage::FrozenView) -> Result<u64, NodeError> {
    let key = hourcell_storage::keys::meta("raft_applied");
    let mut end = key.clone();
    end.push(0);
    let mut applied = 0;
    view.scan(&key, &end, &mut |_, v| {
        if let Ok(b) = <[u8; 8]>::try_from(v) {
            applied = u64::from_be_bytes(b);
        }
        false
    })?;
    Ok(applied)
}

impl Node {
    /// A consistent image of group `group` as this node holds it: after a
    /// ReadIndex on the group, so that it holds every write acknowledged
    /// before the call, frozen at an applied index.
    pub fn backup_image(&self, group: u64) -> Result<GroupImage, NodeError> {
        if group == DATA_GROUP {
            self.read_barrier()?;
            let view = self.store.freeze()?;
            let applied_index = applied_in(view.as_ref())?;
            return Ok(GroupImage {
                group,
                role: ImageRole::Meta,
                applied_index,
                persons: self.store.stats()?.persons,
                view,
            });
        }
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Err(NodeError::NotFound(format!(
                "group {group}: this node has only the metadata group (1)"
            )));
        };
        let store = sh
            .all()
            .into_iter()
            .find(|(g, _)| *g == group)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                NodeError::NotFound(format!(
                    "group {group} has no replica on this node (cluster status lists where each shard is)"
                ))
            })?;
        r.handle
            .read_index(group, std::time::Duration::from_secs(10))
            .map_err(|e| NodeError::Unavailable(format!("group {group}: {e}; retry")))?;
        let view = store.freeze()?;
        let applied_index = applied_in(view.as_ref())?;
        Ok(GroupImage {
            group,
            role: ImageRole::Shard,
            applied_index,
            persons: 0,
            view,
        })
    }
}

/// Seeds the empty data directory of `cfg` with a metadata-store image
/// (`next_chunk` yields its key-value pairs, then `None`) taken at raft
/// index `applied_index`. With `[cluster]`, the node's raft log starts as
/// if a snapshot at that index had been applied, with the config's peers
/// as voters; every member of the new cluster must be seeded the same way
/// and started without `--join`.
pub fn restore_data_dir(
    cfg: &NodeConfig,
    applied_index: u64,
    next_chunk: &mut dyn FnMut() -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, RestoreError>,
) -> Result<(), RestoreError> {
    if let Some(c) = &cfg.cluster {
        if c.layout()?.is_some() {
            return Err(RestoreError::ShardedConfig);
        }
    }
    if std::fs::read_dir(&cfg.data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::NotEmpty {
            path: cfg.data_dir.clone(),
        });
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| OpenError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let db = cfg.data_dir.join("db");
    let engine = RocksEngine::open(&db, &RocksConfig::default())
        .map_err(|source| OpenError::Engine { path: db, source })?;
    let store = MetaStore::open(
        hourcell_storage::PrefixedEngine::whole(Arc::new(engine)),
        Some(cfg.slice_level),
    )?;
    store.begin_restore()?;
    while let Some(pairs) = next_chunk()? {
        store.restore_chunk(pairs)?;
    }
    store.finish_restore()?;
    drop(store);
    if let Some(c) = &cfg.cluster {
        let voters: Vec<u64> = c.peers.iter().map(|p| p.id).collect();
        replicated::seed_raft_log(cfg, DATA_GROUP, applied_index, &voters)?;
    }
    Ok(())
}
