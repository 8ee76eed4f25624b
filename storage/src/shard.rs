//! How a sharded cluster splits its data (see docs/ARCHITECTURE.md,
//! "Sharding").
//!
//! One metadata store holds the dictionaries (person ids, source labels),
//! the address table, the registry, tasks and the audit log, and is the only
//! place ids are assigned ([`Command::AssignIds`]). Data shards hold slices:
//! a **cell shard** keeps the cell and address slices of the events whose
//! slice cell it owns, a **person shard** keeps the person index and the
//! all-persons hour slices of the persons it owns. Because every shard
//! uses the metadata store's ids, the bitmaps of different shards can be
//! unioned.
//!
//! Cell shards are per **time partition**: a week (Monday to Sunday, UTC)
//! has its own `cells` cell shards, created ahead of time and dropped whole
//! once retention has passed the week. Within a week, cells are placed by
//! their level-15 ancestor (about 300 m across), hashed: neighbouring events
//! stay together, and a town spreads over every cell shard instead of
//! landing in one range. Persons are placed by internal id modulo the
//! number of person shards, for all time.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The level whose cells are placed together.
pub const PLACEMENT_LEVEL: u32 = 15;
/// At most this many shards of each kind.
pub const MAX_SHARDS: u32 = 256;

/// The week (time partition) of UTC day `day`: weeks start on Mondays
/// (1970-01-05 begins week 1).
pub fn week_of_day(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// The week of hour `hour`.
pub fn week_of_hour(hour: i64) -> i64 {
    week_of_day(hour.div_euclid(24))
}

/// The first hour of week `week` (its end is the next week's first hour).
pub fn week_start_hour(week: i64) -> i64 {
    (week * 7 - 3) * 24
}

/// The number of cell shards per week and of person shards, fixed when a
/// cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub cells: u32,
    pub persons: u32,
}

/// One data shard: a person shard (`week` 0) or a week's cell shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ShardId {
    pub part: ShardPart,
    pub week: i64,
    pub index: usize,
}

/// A sharded cluster's shard map, kept by the metadata group: which nodes
/// hold a replica of each shard. Every change bumps `version`; a node that
/// routes a request to another names the version it routed by, and is told
/// to refresh when the receiver knows a newer one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    pub version: u64,
    /// Each time partition (week): its cell shards' replica sets, by index.
    pub weeks: BTreeMap<i64, Vec<Vec<u64>>>,
    /// Each week's cell shards' first replica sets, as created: only these
    /// nodes start a new shard's raft group as voters; a node a shard moves
    /// to later starts empty and is added as a learner.
    pub founders: BTreeMap<i64, Vec<Vec<u64>>>,
    /// The person shards' replica sets, by index; empty until the
    /// metadata group records them (nodes then place person shards on the
    /// configured peers, see [`ShardMap::default_persons`]).
    pub persons: Vec<Vec<u64>>,
    /// Each week's cell shard splits, in the order they were made (see
    /// [`CellSplit`]); a week without splits has no entry.
    pub splits: BTreeMap<i64, Vec<CellSplit>>,
}

/// One split of a week's cell shard: of the cells that reach shard
/// `parent` at split depth `depth`, those whose split bit `depth` is set
/// (see [`split_bit`]) go to the new shard `child` from then on. The cells
/// of one placement-level cell stay together, so a split falls on a cell
/// id boundary. Shards form a binary trie over the split bits: a parent
/// splits at depths `d, d+1, ...` (where `d` is 0 for an original shard
/// and one past its own split for a child), so `(parent, depth)` names at
/// most one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSplit {
    pub parent: usize,
    pub depth: u8,
    pub child: usize,
}

/// Splits deeper than this are refused (a shard's cells have 32 bits of
/// split hash).
pub const MAX_SPLIT_DEPTH: u8 = 31;

/// The placement-level cell of slice cell `cell` (face and position down
/// to [`PLACEMENT_LEVEL`]).
fn placement_top(cell: u64) -> u64 {
    cell >> (64 - 3 - 2 * PLACEMENT_LEVEL)
}

/// Split bit `depth` of slice cell `cell`: from a hash independent of the
/// one that places the cell among the original shards, so every split
/// halves a shard's cells (and its load) about evenly.
pub fn split_bit(cell: u64, depth: u8) -> bool {
    // splitmix64's finaliser over the placement-level cell.
    let mut z = placement_top(cell).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> (63 - u32::from(depth))) & 1 == 1
}

/// The depth at which cell shard `shard` splits next, given its week's
/// `splits`.
pub fn next_split_depth(splits: &[CellSplit], shard: usize) -> u8 {
    let born = splits
        .iter()
        .find(|s| s.child == shard)
        .map_or(0, |s| s.depth + 1);
    let own = splits.iter().filter(|s| s.parent == shard).count() as u8;
    born + own
}

/// The cell shard that owns slice cell `cell` in a week with `splits`:
/// its original shard (see [`Layout::cell_shard`]), then down the splits.
pub fn route_cell(layout: Layout, splits: &[CellSplit], cell: u64) -> usize {
    let mut shard = layout.cell_shard(cell);
    if splits.is_empty() {
        return shard;
    }
    let mut depth = 0u8;
    while let Some(s) = splits
        .iter()
        .find(|s| s.parent == shard && s.depth == depth)
    {
        if split_bit(cell, depth) {
            shard = s.child;
        }
        depth += 1;
    }
    shard
}

impl ShardMap {
    /// The nodes that should hold shard `id` (empty if the map has no such
    /// shard).
    pub fn replicas(&self, id: ShardId) -> &[u64] {
        let v = match id.part {
            ShardPart::Persons => self.persons.get(id.index),
            ShardPart::Cells => self.weeks.get(&id.week).and_then(|w| w.get(id.index)),
        };
        v.map_or(&[], |v| v.as_slice())
    }

    /// The nodes that created shard `id` as its first voters (for person
    /// shards, `persons` as placed when the cluster was created).
    pub fn founders<'a>(&'a self, id: ShardId, persons: &'a [Vec<u64>]) -> &'a [u64] {
        let v = match id.part {
            ShardPart::Persons => persons.get(id.index),
            ShardPart::Cells => self.founders.get(&id.week).and_then(|w| w.get(id.index)),
        };
        v.map_or(&[], |v| v.as_slice())
    }

    /// Every shard in the map with its replica set.
    pub fn shards(&self) -> Vec<(ShardId, &[u64])> {
        let mut out: Vec<(ShardId, &[u64])> = self
            .persons
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let id = ShardId {
                    part: ShardPart::Persons,
                    week: 0,
                    index,
                };
                (id, r.as_slice())
            })
            .collect();
        for (&week, cells) in &self.weeks {
            for (index, r) in cells.iter().enumerate() {
                let id = ShardId {
                    part: ShardPart::Cells,
                    week,
                    index,
                };
                out.push((id, r.as_slice()));
            }
        }
        out
    }

    /// The cell shard that owns slice cell `cell` in week `week`.
    pub fn cell_shard(&self, layout: Layout, week: i64, cell: u64) -> usize {
        let splits = self.splits.get(&week).map_or(&[][..], |v| v.as_slice());
        route_cell(layout, splits, cell)
    }

    /// The number of cell shards of week `week` (0 if it is not in the map).
    pub fn week_shards(&self, week: i64) -> usize {
        self.weeks.get(&week).map_or(0, |w| w.len())
    }

    /// Replicas per node in the map.
    pub fn load(&self) -> HashMap<u64, usize> {
        let mut load = HashMap::new();
        for (_, r) in self.shards() {
            for n in r {
                *load.entry(*n).or_insert(0) += 1;
            }
        }
        load
    }

    /// Where the person shards are before the metadata group records their
    /// placement: shard `i` on `replicas` consecutive nodes of the sorted
    /// initial members, starting at the `i`-th. Every node of a new
    /// cluster computes the same from its configured peers.
    pub fn default_persons(layout: Layout, members: &[u64], replicas: usize) -> Vec<Vec<u64>> {
        let mut m = members.to_vec();
        m.sort_unstable();
        m.dedup();
        if m.is_empty() {
            return vec![Vec::new(); layout.persons as usize];
        }
        let k = replicas.clamp(1, m.len());
        (0..layout.persons as usize)
            .map(|i| (0..k).map(|j| m[(i + j) % m.len()]).collect())
            .collect()
    }
}

/// Chooses `replicas` distinct nodes of `nodes` for a shard, none of
/// `exclude`: the least loaded first, ties to the lower id, counting each
/// pick in `load` so that consecutive calls spread shards evenly. Fewer if
/// there are not enough nodes.
pub fn place(
    nodes: &[u64],
    load: &mut HashMap<u64, usize>,
    replicas: usize,
    exclude: &[u64],
) -> Vec<u64> {
    let mut cand: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|n| !exclude.contains(n))
        .collect();
    cand.sort_unstable();
    cand.dedup();
    let mut out = Vec::with_capacity(replicas);
    while out.len() < replicas {
        let Some((i, &n)) = cand
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| (load.get(n).copied().unwrap_or(0), **n))
        else {
            break;
        };
        cand.remove(i);
        *load.entry(n).or_insert(0) += 1;
        out.push(n);
    }
    out
}

/// One move that evens out the replicas per node, if the most and least
/// loaded of `nodes` differ by more than one: a replica of the first shard
/// (of `shards`, with their replica sets) that the most loaded node holds
/// and the least loaded does not, given to the least loaded. Ties go to
/// the higher id for the most loaded and the lower id for the least.
pub fn rebalance_move(
    shards: &[(ShardId, Vec<u64>)],
    nodes: &[u64],
) -> Option<(ShardId, Vec<u64>)> {
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for (_, r) in shards {
        for n in r {
            if let Some(l) = load.get_mut(n) {
                *l += 1;
            }
        }
    }
    let (&most, &hi) = load.iter().max_by_key(|(n, l)| (**l, **n))?;
    let (&least, &lo) = load.iter().min_by_key(|(n, l)| (**l, **n))?;
    if hi <= lo + 1 {
        return None;
    }
    shards
        .iter()
        .find(|(_, r)| r.contains(&most) && !r.contains(&least))
        .map(|(id, r)| {
            let moved = r
                .iter()
                .map(|n| if *n == most { least } else { *n })
                .collect();
            (*id, moved)
        })
}

/// Which slices a data shard keeps for the events it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShardPart {
    /// Cell slices and address slices (a spatial shard).
    Cells,
    /// The person index and the all-persons hour slices (a person shard).
    Persons,
}

/// Something a shard may or may not hold yet.
#[derive(Debug, Clone, Copy)]
pub enum Known<'a> {
    Source(&'a str),
    Address(&'a str),
}

impl Layout {
    pub fn new(cells: u32, persons: u32) -> crate::Result<Self> {
        for (n, what) in [(cells, "cell"), (persons, "person")] {
            if n == 0 || n > MAX_SHARDS {
                return Err(crate::StorageError::Invalid(format!(
                    "{what} shards must be 1..={MAX_SHARDS}, not {n}"
                )));
            }
        }
        Ok(Self { cells, persons })
    }

    /// The original cell shard of slice cell `cell` (before any split; see
    /// [`route_cell`]).
    pub fn cell_shard(&self, cell: u64) -> usize {
        let h = placement_top(cell).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((h >> 32) % u64::from(self.cells)) as usize
    }

    /// The person shard that owns internal id `id`.
    pub fn person_shard(&self, id: u32) -> usize {
        (id % self.persons) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_evenly_over_distinct_nodes() {
        let nodes = [1, 2, 3, 4, 5];
        let mut load = HashMap::new();
        let picks: Vec<Vec<u64>> = (0..10).map(|_| place(&nodes, &mut load, 3, &[])).collect();
        for p in &picks {
            let mut d = p.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3, "{p:?} repeats a node");
        }
        // 30 replicas over 5 nodes: 6 each.
        assert!(nodes.iter().all(|n| load[n] == 6), "{load:?}");
        // A replacement avoids the nodes already holding the shard and
        // goes to the least loaded of the rest.
        load.insert(4, 0);
        assert_eq!(place(&nodes, &mut load, 1, &[1, 2]), vec![4]);
        // Fewer nodes than replicas: as many as there are.
        assert_eq!(place(&[7], &mut HashMap::new(), 3, &[]), vec![7]);
        assert!(place(&[7], &mut HashMap::new(), 3, &[7]).is_empty());
    }

    #[test]
    fn rebalancing_moves_one_replica_from_the_most_to_the_least_loaded() {
        let cell = |index| ShardId {
            part: ShardPart::Cells,
            week: 1,
            index,
        };
        // Four shards on nodes 1-3; node 4 just joined.
        let mut shards: Vec<(ShardId, Vec<u64>)> =
            (0..4).map(|i| (cell(i), vec![1, 2, 3])).collect();
        let mut moves = 0;
        while let Some((id, r)) = rebalance_move(&shards, &[1, 2, 3, 4]) {
            let slot = shards.iter_mut().find(|(x, _)| *x == id).unwrap();
            assert_eq!(r.len(), 3);
            assert!(r.contains(&4) && !slot.1.contains(&4));
            slot.1 = r;
            moves += 1;
            assert!(moves < 10, "rebalancing does not settle: {shards:?}");
        }
        // 12 replicas over 4 nodes: 3 each, after 3 moves.
        assert_eq!(moves, 3);
        for n in 1..=4 {
            assert_eq!(shards.iter().filter(|(_, r)| r.contains(&n)).count(), 3);
        }
        // Balanced within one: nothing to do.
        assert!(rebalance_move(&[(cell(0), vec![1, 2, 3])], &[1, 2, 3, 4]).is_none());
    }

    #[test]
    fn founding_person_placement_is_the_same_from_any_peer_order() {
        let l = Layout::new(2, 4).unwrap();
        let a = ShardMap::default_persons(l, &[3, 1, 2, 4], 3);
        let b = ShardMap::default_persons(l, &[4, 2, 3, 1], 3);
        assert_eq!(a, b);
        assert_eq!(
            a,
            vec![vec![1, 2, 3], vec![2, 3, 4], vec![3, 4, 1], vec![4, 1, 2]]
        );
        assert_eq!(ShardMap::default_persons(l, &[9], 3), vec![vec![9]; 4]);
    }

    #[test]
    fn splits_halve_a_shards_cells_and_leave_the_others_alone() {
        let l = Layout::new(4, 1).unwrap();
        // Level-15 cells spread over the sphere (the lowest bit marks a
        // leaf; 13 + 2 * 15 = 43 bits below the placement-level cell).
        let cells: Vec<u64> = (0..20_000u64)
            .map(|i| (i.wrapping_mul(0x2545_f491_4f6c_dd1d) & !((1 << 30) - 1)) | (1 << 29))
            .collect();
        let mut splits = vec![CellSplit {
            parent: 1,
            depth: next_split_depth(&[], 1),
            child: 4,
        }];
        let count = |splits: &[CellSplit], s: usize| {
            cells
                .iter()
                .filter(|c| route_cell(l, splits, **c) == s)
                .count()
        };
        let before: Vec<usize> = (0..4).map(|s| count(&[], s)).collect();
        let (kept, moved) = (count(&splits, 1), count(&splits, 4));
        assert_eq!(kept + moved, before[1]);
        assert!(
            moved * 10 > before[1] * 4 && kept * 10 > before[1] * 4,
            "{kept}/{moved}"
        );
        for s in [0, 2, 3] {
            assert_eq!(count(&splits, s), before[s]);
            for c in &cells {
                if l.cell_shard(*c) == s {
                    assert_eq!(route_cell(l, &splits, *c), s);
                }
            }
        }
        // The parent splits again at the next depth, the child at its own.
        assert_eq!(next_split_depth(&splits, 1), 1);
        assert_eq!(next_split_depth(&splits, 4), 1);
        splits.push(CellSplit {
            parent: 1,
            depth: 1,
            child: 5,
        });
        splits.push(CellSplit {
            parent: 4,
            depth: 1,
            child: 6,
        });
        assert_eq!(next_split_depth(&splits, 1), 2);
        assert_eq!(next_split_depth(&splits, 6), 2);
        let quarters: Vec<usize> = [1, 5, 4, 6].iter().map(|s| count(&splits, *s)).collect();
        assert_eq!(quarters.iter().sum::<usize>(), before[1]);
        assert!(quarters.iter().all(|q| q * 8 > before[1]), "{quarters:?}");
        // Cells of one placement-level cell stay together.
        let c = cells[7];
        let sibling = c ^ (1 << 30) ^ (1 << 29) ^ (1 << 28);
        assert_eq!(route_cell(l, &splits, c), route_cell(l, &splits, sibling));
    }

    #[test]
    fn a_map_names_each_shards_replicas() {
        let mut m = ShardMap::default();
        m.weeks.insert(5, vec![vec![1, 2, 3], vec![2, 3, 4]]);
        m.persons = vec![vec![4, 5, 1]];
        let cell = |index| ShardId {
            part: ShardPart::Cells,
            week: 5,
            index,
        };
        assert_eq!(m.replicas(cell(1)), &[2, 3, 4]);
        assert!(m.replicas(cell(2)).is_empty());
        assert!(m
            .replicas(ShardId {
                part: ShardPart::Cells,
                week: 6,
                index: 0
            })
            .is_empty());
        let load = m.load();
        assert_eq!((load[&1], load[&2], load[&4], load[&5]), (2, 2, 2, 1));
        assert_eq!(m.shards().len(), 3);
    }
}
