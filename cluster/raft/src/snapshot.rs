//! Raft snapshots, streamed in chunks.
//!
//! A raft snapshot message carries only metadata (index, term, membership).
//! The state-machine image behind it is a frozen, point-in-time copy of the
//! state machine ([`StateMachine::freeze`](crate::node::StateMachine::freeze):
//! for hourcell a RocksDB checkpoint of hard-linked files) that the leader registers in [`Snapshots`]. The
//! receiving replica pulls it over `Raft.Snapshot` as a stream of ~1 MiB
//! chunks of key-value pairs and writes each chunk as it arrives, so neither
//! side ever holds the image whole in memory.
//!
//! The leader keeps the latest image per group and reuses it for every
//! replica that needs one while the log still holds the entries after it
//! and the membership has not changed since.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::ConfState;

use crate::engine::SnapshotView;
use crate::error::SnapshotError;

/// Bytes of keys and values per chunk, roughly.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A frozen image of a group's state machine as of `index`.
pub struct Frozen {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    pub view: Arc<dyn SnapshotView>,
}

/// The images this node offers, by group.
#[derive(Default)]
pub struct Snapshots {
    latest: Mutex<HashMap<u64, Arc<Frozen>>>,
}

/// Key-value pairs of one chunk.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

impl Snapshots {
    pub fn latest(&self, group: u64) -> Option<Arc<Frozen>> {
        self.latest.lock().get(&group).cloned()
    }

    /// Makes `f` the image offered for `group`; the previous one is dropped
    /// once no stream is reading it.
    pub fn offer(&self, group: u64, f: Frozen) -> Arc<Frozen> {
        let f = Arc::new(f);
        self.latest.lock().insert(group, f.clone());
        f
    }

    /// Calls `sink` with the image of `group` at `index`, chunk by chunk.
    pub fn stream(
        &self,
        group: u64,
        index: u64,
        sink: &mut dyn FnMut(Pairs) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let f = self
            .latest(group)
            .filter(|f| f.index == index)
            .ok_or(SnapshotError::Gone { group, index })?;
        stream_view(f.view.as_ref(), sink)
    }
}

/// Scans a whole view into chunks of about [`CHUNK_BYTES`].
pub fn stream_view(
    view: &dyn SnapshotView,
    sink: &mut dyn FnMut(Pairs) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    let mut err = None;
    view.scan(&[0x00], &[0xff; 16], &mut |k, v| {
        bytes += k.len() + v.len();
        chunk.push((k.to_vec(), v.to_vec()));
        if bytes >= CHUNK_BYTES {
            bytes = 0;
            if let Err(e) = sink(std::mem::take(&mut chunk)) {
                err = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if !chunk.is_empty() {
        sink(chunk)?;
    }
    Ok(())
}
