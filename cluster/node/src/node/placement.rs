//! Shards in a sharded cluster: where each lives, routing parts of writes
//! and reads to their holders, following the shard map, and rebalancing.

use super::*;

impl Node {
    /// Ingest in a sharded cluster: the weeks' partitions, the ids and the
    /// persons' latest weeks from the metadata group first (only for weeks,
    /// persons and labels it has not seen, or persons seen only earlier),
    /// then one part per shard the events touch, all
    /// proposed at once (here for the shards this node holds, through
    /// their nodes for the others).
    pub(super) fn ingest_sharded(
        &self,
        sh: &Shards,
        events: Vec<hourcell_storage::SliceEvent>,
    ) -> Result<(), NodeError> {
        let weeks = hourcell_storage::shard::Layout::weeks(&events);
        self.ensure_weeks(&weeks)?;
        let (persons, sources) =
            hourcell_storage::shard::Layout::ids_to_record(&self.store, &events);
        if !persons.is_empty() || !sources.is_empty() {
            self.propose(&Command::AssignIdsSeen { persons, sources })?;
        }
        // A shard held elsewhere is sent every dictionary entry its part
        // needs (learning one twice is harmless).
        let parts = sh.layout.split(&self.store, events, &|id, k| {
            sh.get(id).is_some_and(|(_, store)| store.knows(k))
        })?;
        let items = parts
            .into_iter()
            .map(|(id, cmd)| (id, Command::IngestShard(cmd)))
            .collect();
        self.propose_parts(items).map(|_| ())
    }

    /// The shard map's version and the nodes that should hold shard `id`
    /// (the person shards' founding placement until the map records one).
    pub fn shard_replicas(&self, id: hourcell_storage::shard::ShardId) -> (u64, Vec<u64>) {
        let (v, r) = self.store.shard_replicas(id);
        if r.is_empty() && id.part == hourcell_storage::ShardPart::Persons {
            return (v, self.founding.get(id.index).cloned().unwrap_or_default());
        }
        (v, r)
    }

    /// Proposes one command per data shard at once: those this node holds
    /// through its own raft groups, the others through a node that holds
    /// them. Succeeds only when every one is applied; outcomes in order.
    pub(super) fn propose_parts(
        &self,
        parts: Vec<(hourcell_storage::shard::ShardId, Command)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        let (Some(sh), Some(router)) = (&self.shards, &self.router) else {
            return Err(NodeError::Invalid("sharding needs [cluster]".into()));
        };
        let mut local = Vec::new();
        let mut local_at = Vec::new();
        let mut remote = Vec::new();
        let mut remote_at = Vec::new();
        for (i, (id, cmd)) in parts.iter().enumerate() {
            match sh.get(*id) {
                Some((g, _)) => {
                    local.push((g, cmd.clone()));
                    local_at.push(i);
                }
                None => {
                    remote.push((*id, crate::shards::group_of(*id), cmd.encode()));
                    remote_at.push(i);
                }
            }
        }
        let mut out = vec![ApplyOutcome::default(); parts.len()];
        let routed = if remote.is_empty() {
            None
        } else {
            // The routed parts travel while this node proposes its own.
            let router = router.clone();
            Some(std::thread::spawn(move || router.propose(remote)))
        };
        let here = if local.is_empty() {
            Ok(Vec::new())
        } else {
            self.propose_local(local)
        };
        if let Some(t) = routed {
            let outs = t
                .join()
                .map_err(|_| NodeError::Unavailable("routing a write panicked".into()))??;
            for (i, o) in remote_at.into_iter().zip(outs) {
                out[i] = o;
            }
        }
        for (i, o) in local_at.into_iter().zip(here?) {
            out[i] = o;
        }
        Ok(out)
    }

    /// Proposes one command per `(group, command)` pair of groups this
    /// node holds, at once; succeeds only when every one is applied here.
    pub(super) fn propose_local(
        &self,
        parts: Vec<(u64, Command)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        use crate::replication::ProposeError;
        let Some(r) = &self.replication else {
            return Err(NodeError::Invalid("sharding needs [cluster]".into()));
        };
        let t0 = std::time::Instant::now();
        let n = parts.len() as u64;
        self.metrics.proposals.inc_by(n);
        let items = parts.into_iter().map(|(g, c)| (g, c.encode())).collect();
        match r.propose_all(items) {
            Ok(out) => {
                self.metrics
                    .commit_latency
                    .observe(t0.elapsed().as_secs_f64());
                Ok(out)
            }
            Err(e) => {
                self.metrics.proposal_failures.inc();
                Err(match e {
                    ProposeError::Apply(why) => NodeError::Invalid(why),
                    ProposeError::Stopped(why) => {
                        self.failed.store(true, Ordering::Relaxed);
                        NodeError::Unavailable(format!("replication stopped: {why}"))
                    }
                    other => NodeError::Unavailable(format!(
                        "not every shard committed this batch ({other}); retry it: \
                         a repeated batch is harmless"
                    )),
                })
            }
        }
    }

    /// Catches up with the shard map: a linearizable read of the metadata
    /// group, then hosting what it places here (after a routed request
    /// named a newer map, or a node said this one is stale).
    pub fn refresh_map(&self) -> Result<(), NodeError> {
        self.read_barrier()?;
        self.sync_shards()
    }

    /// The data groups this node holds, with their members as it sees
    /// them (for status and for membership changes).
    pub fn shard_members(&self) -> Vec<ShardMembers> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Vec::new();
        };
        sh.all()
            .into_iter()
            .map(|(g, store)| {
                let s = r.handle.status(g);
                ShardMembers {
                    group: g,
                    shard: sh.describe(g),
                    leader: s.as_ref().map_or(0, |s| s.leader),
                    term: s.as_ref().map_or(0, |s| s.term),
                    commit: s.as_ref().map_or(0, |s| s.commit),
                    applied: s.as_ref().map_or(0, |s| s.applied),
                    voters: s.as_ref().map_or(Vec::new(), |s| s.voters.clone()),
                    learners: s.as_ref().map_or(Vec::new(), |s| s.learners.clone()),
                    first_index: s.as_ref().map_or(0, |s| s.first_index),
                    replicas: sh
                        .shard_of(g)
                        .map_or(Vec::new(), |id| self.shard_replicas(id).1),
                    map_version: self.store.shard_map_version(),
                    disk_bytes: {
                        use hourcell_storage::KvEngine;
                        store.engine().disk_bytes()
                    },
                }
            })
            .collect()
    }

    /// Adds node `id` (see [`Replication::add_node`]). In a sharded
    /// cluster with `replace` (a node that lost its data rejoining), the
    /// node's old replicas are first taken out of every data group: the
    /// shard map stops placing anything on it, and this waits until no
    /// group's leader lists it, so that no group counts a replica that
    /// forgot its log. The map then places shards on it again as on any
    /// new member, and it receives them by snapshot.
    pub fn add_node(&self, id: u64, addr: &str, replace: bool) -> Result<(), NodeError> {
        let r = self.replication.as_ref().ok_or_else(|| {
            NodeError::Refused(
                "this is a single node without [cluster]: there is no membership".into(),
            )
        })?;
        if self.shards.is_none() || !replace {
            return r.add_node(id, addr, replace);
        }
        if id == 0 || addr.trim().is_empty() {
            return Err(NodeError::Invalid(
                "add-node needs a non-zero --id and the node's --addr".into(),
            ));
        }
        let (voters, learners) = r
            .meta_members()
            .ok_or_else(|| NodeError::Unavailable("metadata group is not running".into()))?;
        if voters.contains(&id) || learners.contains(&id) {
            r.remove_node(id)?;
        }
        self.evict(id)?;
        r.add_node(id, addr, false)
    }

    /// Takes node `id` out of every data shard: out of the shard map's
    /// placement, then waits until no data group's leader lists it.
    pub(super) fn evict(&self, id: u64) -> Result<(), NodeError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        self.read_barrier()?;
        let map = self.store.shard_map();
        let moves: Vec<_> = placed_shards(&map, &self.founding)
            .into_iter()
            .filter(|(_, r)| r.contains(&id))
            .map(|(sid, r)| (sid, r.into_iter().filter(|n| *n != id).collect()))
            .collect();
        if !moves.is_empty() {
            self.propose(&Command::PlaceShards { shards: moves })?;
        }
        // Under the server's 60 s request timeout, so the caller gets this
        // error rather than a cancelled call (a joining node asks again).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
        loop {
            let _ = self.sync_shards();
            let views = router.members_everywhere();
            let mut led = std::collections::HashSet::new();
            let mut still = Vec::new();
            for (n, groups) in &views {
                for g in groups {
                    if g.leader == *n {
                        led.insert(g.group);
                        if g.voters.contains(&id) || g.learners.contains(&id) {
                            still.push(g.group);
                        }
                    }
                }
            }
            let all: std::collections::HashSet<u64> = views
                .iter()
                .flat_map(|(_, gs)| gs.iter().map(|g| g.group))
                .collect();
            let leaderless: Vec<u64> = all.difference(&led).copied().collect();
            if still.is_empty() && leaderless.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(NodeError::Unavailable(format!(
                    "node {id}'s old replicas are still members of shard groups {still:?} \
                     (groups without a reachable leader: {leaderless:?}); retry"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// Checks that this node holds `group` for a request routed by shard
    /// map `version`, catching up first if the sender knew a newer map.
    pub(super) fn check_routed(
        &self,
        version: u64,
        group: u64,
    ) -> Result<Arc<crate::types::ShardStore>, NodeError> {
        let Some(sh) = &self.shards else {
            return Err(NodeError::Invalid("this node is not sharded".into()));
        };
        if version > self.store.shard_map_version() || !sh.hosts(group) {
            self.refresh_map()?;
        }
        let mine = self.store.shard_map_version();
        match sh.shard_of(group).and_then(|id| sh.get(id)) {
            Some((_, store)) => Ok(store),
            None => Err(NodeError::Refused(format!(
                "stale shard map: node {} holds no replica of shard group {group} \
                 (its shard map is at version {mine}, the request was routed by {version}); \
                 refresh the map and route again",
                self.replication.as_ref().map_or(0, |r| r.handle.id()),
            ))),
        }
    }

    /// Serves a write routed here by another node: every command must be
    /// for a group this node holds.
    pub fn serve_propose(
        &self,
        version: u64,
        items: Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, NodeError> {
        let mut parts = Vec::with_capacity(items.len());
        for (g, bytes) in items {
            self.check_routed(version, g)?;
            let cmd = Command::decode(&bytes)
                .map_err(|e| NodeError::Invalid(format!("bad routed command: {e}")))?;
            parts.push((g, cmd));
        }
        self.propose_local(parts)
    }

    /// Serves a read of group `group` routed here by another node; with
    /// `barrier`, after a ReadIndex on the group.
    pub fn serve_read(
        &self,
        version: u64,
        group: u64,
        barrier: bool,
        op: crate::shard_read::ReadOp,
    ) -> Result<(Vec<u8>, u64), NodeError> {
        let part = crate::route::ReadPart { group, barrier };
        let (mut replies, v) = self.serve_read_many(version, &[part], &op)?;
        let reply = replies
            .pop()
            .ok_or_else(|| NodeError::Unavailable("a routed read did not run".into()))?;
        Ok((reply, v))
    }

    /// Serves `op` on each group of `parts` routed here by another node
    /// (every one must be held here), one reply per part, in order: one
    /// round of ReadIndex first on the groups whose part asks for a
    /// barrier.
    pub fn serve_read_many(
        &self,
        version: u64,
        parts: &[crate::route::ReadPart],
        op: &crate::shard_read::ReadOp,
    ) -> Result<(Vec<Vec<u8>>, u64), NodeError> {
        let stores = parts
            .iter()
            .map(|p| self.check_routed(version, p.group))
            .collect::<Result<Vec<_>, _>>()?;
        let barriers: Vec<u64> = parts
            .iter()
            .filter(|p| p.barrier)
            .map(|p| p.group)
            .collect();
        if !barriers.is_empty() {
            let r = self
                .replication
                .as_ref()
                .ok_or_else(|| NodeError::Invalid("sharding needs [cluster]".into()))?;
            let t0 = std::time::Instant::now();
            r.read_index_all(&barriers).map_err(|e| {
                NodeError::Unavailable(format!(
                    "cannot serve a linearizable read of shard groups {barriers:?}: {e}"
                ))
            })?;
            self.metrics
                .routed_barrier
                .observe(t0.elapsed().as_secs_f64());
        }
        if stores.iter().any(|s| s.is_restoring()) {
            return Err(NodeError::Unavailable(
                "this replica is installing a snapshot; retry, or ask another node".into(),
            ));
        }
        let replies = stores
            .iter()
            .zip(parts)
            .map(|(store, p)| match crate::shards::shard_of_group(p.group) {
                Some(id) if id.part == hourcell_storage::ShardPart::Cells => {
                    crate::shard_read::serve_read(store, &op.for_week(id.week))
                }
                _ => crate::shard_read::serve_read(store, op),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((replies, self.store.shard_map_version()))
    }

    /// Makes sure the shard map has `weeks` and this node hosts what the
    /// map places here of their cell shards: a week not in the map is
    /// added through the metadata group, each cell shard on the least
    /// loaded `replicas` members; the other nodes follow within a moment
    /// (see [`Node::sync_shards`]).
    pub fn ensure_weeks(&self, weeks: &[i64]) -> Result<(), NodeError> {
        let Some(sh) = &self.shards else {
            return Ok(());
        };
        let missing: Vec<i64> = weeks
            .iter()
            .copied()
            .filter(|w| !self.store.shard_map_has_week(*w))
            .collect();
        if !missing.is_empty() {
            let r = self
                .replication
                .as_ref()
                .ok_or_else(|| NodeError::Invalid("sharding needs [cluster]".into()))?;
            let (voters, _) = r
                .meta_members()
                .ok_or_else(|| NodeError::Unavailable("metadata group is not running".into()))?;
            let map = self.store.shard_map();
            let mut load = map.load();
            // A new week starts with the splits of the week before it.
            let weeks = missing
                .into_iter()
                .map(|w| {
                    let splits = map
                        .weeks
                        .range(..w)
                        .next_back()
                        .and_then(|(prev, _)| map.splits.get(prev).cloned())
                        .unwrap_or_default();
                    let n = sh.layout.cells as usize + splits.len();
                    let cells = (0..n)
                        .map(|_| {
                            hourcell_storage::shard::place(&voters, &mut load, self.replicas, &[])
                        })
                        .collect();
                    (w, cells, splits)
                })
                .collect();
            self.propose(&Command::CreateSplitPartitions { weeks })?;
        }
        if weeks
            .iter()
            .any(|w| sh.week_slots(*w).len() < self.store.week_shards(*w))
        {
            self.sync_shards()?;
        }
        Ok(())
    }

    /// Brings the shards this node holds in line with its replica of the
    /// shard map: starts the raft groups of shards placed here (as voters
    /// if this node founded the shard, else empty, to be added and sent a
    /// snapshot), lets go of shards moved away once their new replicas
    /// vote, and removes the groups and files of dropped weeks. Cheap when
    /// nothing changed.
    pub fn sync_shards(&self) -> Result<(), NodeError> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Ok(());
        };
        let _one = self.shard_sync.lock();
        let map = self.store.shard_map();
        let me = r.handle.id();
        let moving = sh.all().iter().any(|(g, _)| {
            sh.shard_of(*g)
                .is_some_and(|id| !self.shard_replicas(id).1.contains(&me))
        });
        if *sh.synced_version.read() == map.version
            && sh.weeks().len() == map.weeks.len()
            && !moving
        {
            return Ok(());
        }
        let timeout = std::time::Duration::from_secs(10);
        let fail = |e: String| NodeError::Unavailable(e);
        for (week, cells) in &map.weeks {
            if sh.week_slots(*week).len() < cells.len() {
                sh.open_week(*week, cells.len())
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        for (id, replicas) in placed_shards(&map, &self.founding) {
            let Some((g, store)) = sh.slot(id) else {
                continue;
            };
            let hosted = sh.hosts(g);
            if replicas.contains(&me) && !hosted {
                let start = start_voters(&map, id, &replicas, me, &self.founding, self.joining);
                let first_founder = start.first() == Some(&me);
                r.handle
                    .add_group(
                        g,
                        start,
                        Arc::new(crate::replication::StoreMachine {
                            store,
                            apply_latency: self.metrics.apply_latency.clone(),
                        }),
                        timeout,
                    )
                    .map_err(|e| fail(e.to_string()))?;
                sh.host(g);
                {
                    let mut gs = r.groups.write();
                    if !gs.contains(&g) {
                        gs.push(g);
                    }
                }
                // A brand-new shard (a new week's, a split's): its first
                // founder stands for election at once instead of after an
                // election timeout, during which its writes would wait.
                let fresh = r
                    .handle
                    .status(g)
                    .is_some_and(|s| s.commit == 0 && s.leader == 0);
                if fresh && first_founder {
                    r.handle.campaign(g);
                }
                tracing::info!(group = g, shard = %sh.describe(g), "holding a replica of a shard");
            } else if !replicas.contains(&me) && hosted {
                // Moved away: let go once this replica is out of the group,
                // or every replica the map names votes (the leader then
                // removes this one) and the group keeps a quorum without
                // it. In a group of two (a shard of one replica being
                // moved) the new replica cannot commit the removal alone:
                // stay until removed, or until the new leader, which stops
                // talking to a removed replica that may never hear of its
                // removal, has been silent for two seconds.
                let done = r.handle.status(g).is_none_or(|s| {
                    let others = s.voters.iter().filter(|v| **v != me).count();
                    let quorum_without_me = others > s.voters.len() / 2;
                    let left_behind = s.leader != me
                        && replicas.contains(&s.leader)
                        && s.leader_contact_ms.is_some_and(|ms| ms > 2_000);
                    (!s.voters.contains(&me) && !s.learners.contains(&me))
                        || (replicas.iter().all(|n| s.voters.contains(n))
                            && (quorum_without_me || left_behind))
                });
                if done {
                    r.handle
                        .remove_group(g, timeout)
                        .map_err(|e| fail(e.to_string()))?;
                    r.groups.write().retain(|x| *x != g);
                    sh.release(id).map_err(|e| fail(e.to_string()))?;
                    tracing::info!(group = g, "let go of a shard moved to other nodes");
                }
            }
        }
        for week in sh.weeks() {
            if map.weeks.contains_key(&week) {
                continue;
            }
            for (g, _) in sh.week_slots(week) {
                if sh.hosts(g) {
                    r.handle
                        .remove_group(g, timeout)
                        .map_err(|e| fail(e.to_string()))?;
                }
                r.groups.write().retain(|x| *x != g);
            }
            sh.drop_week(week).map_err(|e| fail(e.to_string()))?;
            tracing::info!(week, "dropped the cell shards of a week past retention");
        }
        *sh.synced_version.write() = map.version;
        Ok(())
    }

    /// Whether the shard map moved on since this node last followed it
    /// (cheap: the keeper asks often, and follows at once).
    pub fn shard_map_moved(&self) -> bool {
        self.shards
            .as_ref()
            .is_some_and(|sh| *sh.synced_version.read() != self.store.shard_map_version())
    }

    /// Cluster chores of a sharded cluster, run every half second: follow
    /// the shard map; on the metadata group's leader, create the current
    /// and next week ahead of ingest, record the person shards' placement
    /// and move replicas off nodes that left the cluster; on each data
    /// group's leader, make the group's members what the map says.
    pub fn shard_chores(&self, now: i64) -> Result<(), NodeError> {
        let (Some(sh), Some(r)) = (&self.shards, &self.replication) else {
            return Ok(());
        };
        self.sync_shards()?;
        if self.leads() {
            let week = hourcell_storage::shard::week_of_hour(now.div_euclid(3600));
            let retained = hourcell_storage::shard::week_of_hour(self.retained_from(now));
            let ahead: Vec<i64> = [week, week + 1]
                .into_iter()
                .filter(|w| *w >= retained && !self.store.shard_map_has_week(*w))
                .collect();
            if !ahead.is_empty() {
                self.ensure_weeks(&ahead)?;
            }
            self.place_chores()?;
        }
        let peers: std::collections::HashMap<u64, String> = r.known_peers().into_iter().collect();
        let me = r.handle.id();
        let led: Vec<(u64, crate::replication::GroupStatus)> = sh
            .all()
            .into_iter()
            .filter_map(|(g, _)| r.handle.status(g).map(|s| (g, s)))
            .filter(|(_, s)| s.is_leader)
            .collect();
        if led.is_empty() {
            return Ok(());
        }
        self.split_chores(sh, &led)?;
        // A leader acts on the current shard map only: a linearizable read
        // of the metadata group first. A node that keeps failing it (one
        // removed from the cluster, which no longer hears the metadata
        // group and holds an old map) hands its leaderships over, so that
        // members with the current map finish the moves.
        if r.handle
            .read_index(r.group, std::time::Duration::from_secs(1))
            .is_err()
        {
            let fails = {
                let mut f = self.map_read_failures.lock();
                *f += 1;
                *f
            };
            if fails >= 4 {
                for (g, s) in &led {
                    if let Some(to) = s.voters.iter().copied().find(|v| *v != me) {
                        r.handle.transfer_leader(*g, to);
                    }
                }
                tracing::warn!(
                    groups = led.len(),
                    "cannot read the current shard map: handing shard leaderships over"
                );
            }
            return Ok(());
        }
        *self.map_read_failures.lock() = 0;
        for (g, s) in led {
            let Some(id) = sh.shard_of(g) else {
                continue;
            };
            let target = self.shard_replicas(id).1;
            if target.is_empty() {
                continue;
            }
            use hourcell_raft::{ConfChange, ConfChangeType};
            let t = std::time::Duration::from_secs(5);
            for id in &target {
                if !s.voters.contains(id) && !s.learners.contains(id) {
                    let mut cc = ConfChange::default();
                    cc.set_change_type(ConfChangeType::AddLearnerNode);
                    cc.node_id = *id;
                    cc.context = peers
                        .get(id)
                        .cloned()
                        .unwrap_or_default()
                        .into_bytes()
                        .into();
                    let _ = r.handle.change_membership(g, cc, t);
                    tracing::info!(group = g, node = id, "adding a replica to a shard");
                }
            }
            // Members the map no longer names leave once every replica it
            // names votes, so the group never shrinks below its size.
            if !target.iter().all(|n| s.voters.contains(n)) {
                continue;
            }
            for id in s.voters.iter().chain(&s.learners) {
                if target.contains(id) {
                    continue;
                }
                if *id == me {
                    // Hand the lead to a replica that stays; the new
                    // leader removes this one.
                    r.handle.transfer_leader(g, target[0]);
                    break;
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
                let _ = r.handle.change_membership(g, cc, t);
                tracing::info!(group = g, node = id, "removing a replica moved elsewhere");
            }
        }
        Ok(())
    }

    /// The metadata leader's part of placement: records the person shards'
    /// placement once, and gives every shard with a replica on a node that
    /// is no longer a member (or with fewer replicas than wanted) a
    /// replacement on the least loaded member.
    pub(super) fn place_chores(&self) -> Result<(), NodeError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        let Some((voters, learners)) = r.meta_members() else {
            return Ok(());
        };
        let map = self.store.shard_map();
        let mut load = map.load();
        let mut moves = Vec::new();
        for (id, replicas) in placed_shards(&map, &self.founding) {
            let mut keep: Vec<u64> = replicas
                .iter()
                .copied()
                .filter(|n| voters.contains(n) || learners.contains(n))
                .collect();
            let recorded =
                !(id.part == hourcell_storage::ShardPart::Persons && map.persons.is_empty());
            if keep.len() < self.replicas.min(voters.len()) {
                let more = hourcell_storage::shard::place(
                    &voters,
                    &mut load,
                    self.replicas - keep.len(),
                    &keep,
                );
                keep.extend(more);
            }
            if keep != replicas || !recorded {
                moves.push((id, keep));
            }
        }
        if !moves.is_empty() {
            tracing::info!(shards = moves.len(), "placing shard replicas");
            self.propose(&Command::PlaceShards { shards: moves })?;
            return Ok(());
        }
        self.rebalance(&voters)
    }

    /// Evens out replicas per node (a node just added holds none): at most
    /// one move every few seconds, and only while no shard is mid-move, so
    /// a group never has more than one replica catching up.
    pub(super) fn rebalance(&self, voters: &[u64]) -> Result<(), NodeError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        {
            let mut last = self.last_rebalance.lock();
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3)) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let map = self.store.shard_map();
        let shards = placed_shards(&map, &self.founding);
        let Some((id, moved)) = hourcell_storage::shard::rebalance_move(&shards, voters) else {
            return Ok(());
        };
        // Every shard settled: its leader (reachable) sees exactly the
        // placed replicas as voters and no learners.
        let views = router.members_everywhere();
        let settled = shards.iter().all(|(sid, replicas)| {
            let g = crate::shards::group_of(*sid);
            let mut want = replicas.clone();
            want.sort_unstable();
            views.iter().any(|(n, gs)| {
                gs.iter().any(|s| {
                    let mut v = s.voters.clone();
                    v.sort_unstable();
                    s.group == g && s.leader == *n && v == want && s.learners.is_empty()
                })
            })
        });
        if !settled {
            return Ok(());
        }
        tracing::info!(
            group = crate::shards::group_of(id),
            to = ?moved,
            "moving a shard replica to even out the nodes"
        );
        self.propose(&Command::PlaceShards {
            shards: vec![(id, moved)],
        })?;
        Ok(())
    }
}
