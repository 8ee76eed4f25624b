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
        "this backup is of a sharded cluster: restore it into a cluster whose [cluster] \
         has the same person_shards ({persons}) and cell_shards"
    )]
    Sharded { persons: usize },
    #[error("the config has a sharded [cluster] (cell_shards/person_shards); restore an unsharded backup into an unsharded cluster")]
    ShardedConfig,
    #[error(
        "the backup's shards do not fit the config's layout (cell_shards = {cells}, \
         person_shards = {persons}): {why}"
    )]
    Layout {
        cells: u32,
        persons: u32,
        why: String,
    },
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

/// A sharded backup's data shards, for [`restore_data_dir`].
pub trait ShardImages {
    /// Each shard's raft group and the raft index its image is at.
    fn groups(&self) -> Vec<(u64, u64)>;
    /// Passes group `group`'s image to `put`, a chunk of pairs at a time.
    fn read(
        &mut self,
        group: u64,
        put: &mut dyn FnMut(Pairs) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError>;
}

/// Key-value pairs of an image, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Seeds the empty data directory of `cfg` with a metadata-store image
/// (`next_chunk` yields its key-value pairs, then `None`) taken at raft
/// index `applied_index`, and for a sharded backup (`shards`) with the data
/// shards the new cluster places on this node. With `[cluster]`, each
/// group's raft log starts as if a snapshot at its index had been applied,
/// with the new cluster's voters; every member of the new cluster must be
/// seeded from the same backup and started without `--join`.
///
/// Shards are placed on the config's peers the same way on every node (the
/// least loaded first, in group order), and the restored shard map says
/// so: the old cluster's node ids need not exist in the new one.
pub fn restore_data_dir(
    cfg: &NodeConfig,
    applied_index: u64,
    next_chunk: &mut dyn FnMut() -> Result<Option<Pairs>, RestoreError>,
    shards: Option<&mut dyn ShardImages>,
) -> Result<(), RestoreError> {
    let layout = match &cfg.cluster {
        Some(c) => c.layout()?,
        None => None,
    };
    let placement = match (layout, &shards) {
        (Some(_), None) => return Err(RestoreError::ShardedConfig),
        (None, Some(s)) => {
            let persons = s
                .groups()
                .iter()
                .filter(|(g, _)| *g < crate::shards::CELL_GROUP_BASE)
                .count();
            return Err(RestoreError::Sharded { persons });
        }
        (None, None) => Vec::new(),
        (Some(layout), Some(s)) => place_restored(cfg, layout, &s.groups())?,
    };
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
    if !placement.is_empty() {
        // The same change on every node of the new cluster: its map names
        // the new members.
        let shards = placement
            .iter()
            .map(|(id, _, _, r)| (*id, r.clone()))
            .collect();
        store.apply(&Command::PlaceShards { shards })?;
    }
    drop(store);
    let Some(c) = &cfg.cluster else {
        return Ok(());
    };
    let voters: Vec<u64> = c.peers.iter().map(|p| p.id).collect();
    replicated::seed_raft_log(cfg, DATA_GROUP, applied_index, &voters)?;
    let (Some(shards), false) = (shards, placement.is_empty()) else {
        return Ok(());
    };
    let dir = cfg.data_dir.join("shards");
    let engine = Arc::new(
        RocksEngine::open(&dir, &RocksConfig::default())
            .map_err(|source| OpenError::Engine { path: dir, source })?,
    );
    for (_, group, index, replicas) in &placement {
        if !replicas.contains(&c.node_id) {
            continue;
        }
        let store = hourcell_storage::ShardStore::open(
            hourcell_storage::PrefixedEngine::group(engine.clone(), *group),
            Some(cfg.slice_level),
        )?;
        store.begin_restore()?;
        shards.read(*group, &mut |pairs| {
            store.restore_chunk(pairs).map_err(RestoreError::from)
        })?;
        store.finish_restore()?;
        replicated::seed_raft_log(cfg, *group, *index, replicas)?;
    }
    Ok(())
}

/// Where the new cluster of `cfg` holds each shard of a backup: `(shard,
/// group, raft index, replicas)`, in group order, the same on every node.
fn place_restored(
    cfg: &NodeConfig,
    layout: hourcell_storage::shard::Layout,
    groups: &[(u64, u64)],
) -> Result<Vec<(hourcell_storage::shard::ShardId, u64, u64, Vec<u64>)>, RestoreError> {
    let bad = |why: String| RestoreError::Layout {
        cells: layout.cells,
        persons: layout.persons,
        why,
    };
    let Some(c) = &cfg.cluster else {
        return Err(RestoreError::ShardedConfig);
    };
    let mut voters: Vec<u64> = c.peers.iter().map(|p| p.id).collect();
    voters.sort_unstable();
    let mut sorted = groups.to_vec();
    sorted.sort_unstable();
    let mut load = std::collections::HashMap::new();
    let mut out = Vec::new();
    let mut persons = 0;
    let mut weeks: std::collections::BTreeMap<i64, usize> = Default::default();
    for (g, index) in sorted {
        let id = crate::shards::shard_of_group(g)
            .ok_or_else(|| bad(format!("group {g} is not a data shard")))?;
        match id.part {
            hourcell_storage::ShardPart::Persons => {
                if id.index >= layout.persons as usize {
                    return Err(bad(format!("it has person shard {}", id.index)));
                }
                persons += 1;
            }
            hourcell_storage::ShardPart::Cells => *weeks.entry(id.week).or_default() += 1,
        }
        let replicas = hourcell_storage::shard::place(&voters, &mut load, c.replicas as usize, &[]);
        out.push((id, g, index, replicas));
    }
    if persons != layout.persons as usize {
        return Err(bad(format!("it has {persons} person shards")));
    }
    if let Some((w, n)) = weeks.iter().find(|(_, n)| **n < layout.cells as usize) {
        return Err(bad(format!("week {w} has {n} cell shards")));
    }
    Ok(out)
}
