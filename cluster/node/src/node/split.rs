//! Splitting a week's cell shard while it serves (see
//! `hourcell_storage::shard::CellSplit`): on demand (`hourcell cluster
//! split`) or on its own, when the shard's leader sees its write rate or
//! its growth pass the configured thresholds.
//!
//! A split is one command in the metadata group: the week (and every later
//! week in the map) gets a new cell shard, placed like a new week's, that
//! owns half of the parent's placement-level cells from then on. Writes
//! follow the map version that has it (a node routing by an older map
//! still writes to the parent, which keeps serving those cells); reads ask
//! every cell shard of a week and union what they hold, so what the
//! parent held before the split is read where it is. Nothing is copied,
//! so a split takes a moment whatever the shard's size.

use std::time::{Duration, Instant};

use hourcell_storage::shard::ShardId;

use super::*;

/// When a cell shard splits on its own (0: never for that reason).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SplitThresholds {
    pub events_per_hour: u64,
    pub grown_bytes: u64,
}

impl SplitThresholds {
    pub(super) fn of(c: &crate::config::ClusterConfig) -> Self {
        Self {
            events_per_hour: c.split_events_per_hour,
            grown_bytes: c.split_grown_bytes,
        }
    }
}

/// A split made: the shard split, the new shard, its replicas and the map
/// version that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub parent: ShardId,
    pub child: ShardId,
    pub replicas: Vec<u64>,
    pub version: u64,
}

/// The window a shard's write rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// What a cell shard's leader remembers for deciding a split: events
/// applied and when, at the start of the current rate window, and the
/// shard's bytes when this node began leading it or last split it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitSample {
    applied: u64,
    at: Instant,
    base_bytes: u64,
}

impl SplitSample {
    /// A fresh sample of group `g`: `applied` events, its size now.
    fn now(sh: &Shards, g: u64, applied: u64) -> Self {
        SplitSample {
            applied,
            at: Instant::now(),
            base_bytes: sh.group_bytes(g),
        }
    }
}

impl Node {
    /// Splits cell shard `index` of week `week` (the week's Monday's
    /// `week_of_day` number) and of every later week in the map: a new
    /// shard on the least loaded members takes over half of its cells'
    /// later writes.
    pub fn split_shard(&self, week: i64, index: usize) -> Result<Split, NodeError> {
        let (Some(_), Some(r)) = (&self.shards, &self.replication) else {
            return Err(not_sharded());
        };
        // Decide on the current map.
        self.refresh_map()?;
        let map = self.store.shard_map();
        let n = map.week_shards(week);
        if n == 0 {
            return Err(NodeError::NotFound(format!(
                "the shard map has no cell shards for the week of {}",
                week_name(week)
            )));
        }
        if index >= n {
            return Err(NodeError::NotFound(format!(
                "the week of {} has cell shards 0..{n}, not {index}",
                week_name(week)
            )));
        }
        let (voters, _) = r
            .meta_members()
            .ok_or_else(|| NodeError::Unavailable("metadata group is not running".into()))?;
        let mut load = map.load();
        let replicas = hourcell_storage::shard::place(&voters, &mut load, self.replicas, &[]);
        self.propose(&Command::SplitShard {
            week,
            parent: index,
            shards: n,
            replicas: replicas.clone(),
        })?;
        let after = self.store.shard_map();
        if after.week_shards(week) <= n || after.replicas(cell(week, n)) != replicas {
            return Err(NodeError::Refused(format!(
                "the shard map changed while cell shard {index} of the week of {} was \
                 being split (another split or a move); see `hourcell cluster status` \
                 and split again if it is still wanted",
                week_name(week)
            )));
        }
        self.sync_shards()?;
        tracing::info!(
            week = %week_name(week),
            parent = index,
            child = n,
            replicas = ?replicas,
            version = after.version,
            "split a cell shard"
        );
        Ok(Split {
            parent: cell(week, index),
            child: cell(week, n),
            replicas,
            version: after.version,
        })
    }

    /// [`Node::split_shard`] of the cell shard behind raft group `group`.
    pub fn split_shard_group(&self, group: u64) -> Result<Split, NodeError> {
        let Some(sh) = &self.shards else {
            return Err(not_sharded());
        };
        if sh.shard_of(group).is_none() {
            // Perhaps a week this node has not opened yet.
            self.refresh_map()?;
        }
        match sh.shard_of(group) {
            Some(id) if id.part == hourcell_storage::ShardPart::Cells => {
                self.split_shard(id.week, id.index)
            }
            Some(_) => Err(NodeError::Invalid(format!(
                "group {group} is a person shard; only cell shards split"
            ))),
            None => Err(NodeError::NotFound(format!(
                "no cell shard has raft group {group}; `hourcell cluster status` lists them"
            ))),
        }
    }

    /// A name for raft group `group` ("cells 4, week of 2026-11-30").
    pub fn describe_group(&self, group: u64) -> String {
        self.shards
            .as_ref()
            .map_or_else(|| "meta".into(), |sh| sh.describe(group))
    }

    /// On each cell shard this node leads: split it if its write rate or
    /// its growth since this node began leading it (or last split it)
    /// passes a threshold (a week written to no more, such as a past one,
    /// never does). At most one split a round.
    pub(super) fn split_chores(
        &self,
        sh: &Shards,
        led: &[(u64, crate::replication::GroupStatus)],
    ) -> Result<(), NodeError> {
        let at = self.split_at;
        if at.events_per_hour == 0 && at.grown_bytes == 0 {
            return Ok(());
        }
        // One split on its own per window from this node: the load moves
        // and is measured again before another.
        if self
            .last_auto_split
            .lock()
            .is_some_and(|t| t.elapsed() < RATE_WINDOW)
        {
            return Ok(());
        }
        let mut hot = None;
        {
            let mut samples = self.split_samples.lock();
            samples.retain(|g, _| led.iter().any(|(x, _)| x == g));
            let t = Instant::now();
            for (g, _) in led {
                let Some(id) = sh.shard_of(*g) else {
                    continue;
                };
                if id.part != hourcell_storage::ShardPart::Cells {
                    continue;
                }
                let Some((_, store)) = sh.get(id) else {
                    continue;
                };
                let applied = store.events_applied();
                let s = match samples.entry(*g) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        // First sight: the baseline to measure against.
                        v.insert(SplitSample::now(sh, *g, applied));
                        continue;
                    }
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                };
                // Over the window's allowance already: the window's rate
                // passes the threshold whatever comes next.
                let allowance = at.events_per_hour as f64 * RATE_WINDOW.as_secs_f64() / 3600.0;
                let took = t.duration_since(s.at);
                let events = applied.saturating_sub(s.applied);
                if at.events_per_hour > 0 && events as f64 > allowance {
                    let rate = events as f64 * 3600.0 / took.max(RATE_WINDOW).as_secs_f64();
                    hot = Some((id, format!("at least {rate:.0} events an hour")));
                    break;
                }
                if took >= RATE_WINDOW {
                    // Growth once a window: a group's size comes from
                    // RocksDB's index blocks, not free every half second.
                    let grown = sh.group_bytes(*g).saturating_sub(s.base_bytes);
                    if at.grown_bytes > 0 && grown > at.grown_bytes {
                        hot = Some((id, format!("grew by {grown} bytes")));
                        break;
                    }
                    s.applied = applied;
                    s.at = t;
                }
            }
        }
        let Some((id, why)) = hot else {
            return Ok(());
        };
        tracing::info!(shard = %sh.describe(crate::shards::group_of(id)), why, "cell shard passed a split threshold");
        *self.last_auto_split.lock() = Some(Instant::now());
        match self.split_shard(id.week, id.index) {
            Ok(_) => {
                let g = crate::shards::group_of(id);
                let applied = sh.get(id).map_or(0, |(_, s)| s.events_applied());
                self.split_samples
                    .lock()
                    .insert(g, SplitSample::now(sh, g, applied));
                Ok(())
            }
            // Another node's split or a move got there first: the next
            // round looks again.
            Err(NodeError::Refused(why)) => {
                tracing::info!(why, "cell shard split not made");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn not_sharded() -> NodeError {
    NodeError::Invalid(
        "this cluster is not sharded: only the cell shards of a sharded \
         cluster ([cluster] cell_shards > 0) split"
            .into(),
    )
}

fn cell(week: i64, index: usize) -> ShardId {
    ShardId {
        part: hourcell_storage::ShardPart::Cells,
        week,
        index,
    }
}

/// A week as its Monday's date.
fn week_name(week: i64) -> String {
    let monday = hourcell_storage::shard::week_start_hour(week) * 3600;
    hourcell_query::time::format_time(monday)[..10].to_string()
}
