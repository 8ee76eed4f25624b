//! Read barriers: every rule about how fresh a read is, in one place.

use super::*;

/// The most staleness a bounded-stale read may accept.
pub const MAX_STALENESS_MS: u32 = 60_000;

impl Node {
    /// Makes the next local read linearizable: on a replicated node, waits
    /// until this replica has applied everything committed before the read
    /// (ReadIndex through the leader, retried across leader changes); on a
    /// single node, nothing to wait for.
    pub fn read_barrier(&self) -> Result<(), NodeError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        r.retry_dropped(|left| r.handle.read_index(r.group, left))
            .map_err(|e| {
                NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
            })?;
        self.check_restoring()
    }

    /// A read barrier on every group (the data shards as well as the
    /// metadata group), for queries.
    pub fn read_barrier_all(&self) -> Result<(), NodeError> {
        crate::shards::ReadGate::end();
        let Some(r) = &self.replication else {
            return Ok(());
        };
        if self.shards.is_none() {
            return self.read_barrier();
        }
        let unavailable = |e: crate::replication::ProposeError| {
            NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
        };
        r.read_index_all(&r.groups()).map_err(unavailable)?;
        // The metadata replica is now current: if its shard map has weeks
        // this node does not host yet, host them and wait for them too, or
        // a week created through another node would read as empty here.
        if let Some(sh) = &self.shards {
            if self.store.shard_map_version() != *sh.synced_version.read() {
                self.sync_shards()?;
                r.read_index_all(&r.groups()).map_err(unavailable)?;
            }
        }
        self.check_restoring()
    }

    pub(super) fn check_restoring(&self) -> Result<(), NodeError> {
        let restoring = self.store.is_restoring()
            || self
                .shards
                .as_ref()
                .is_some_and(|sh| sh.all().iter().any(|(_, s)| s.is_restoring()));
        if restoring {
            return Err(NodeError::Unavailable(
                "this replica is installing a snapshot; retry, or ask another node".into(),
            ));
        }
        Ok(())
    }

    /// A read barrier that may be relaxed: with `max_staleness_ms`, a
    /// follower that heard from the leader within that bound and has
    /// applied everything it knows to be committed answers from its own
    /// state. Returns how stale the answer may be (0 = linearizable).
    ///
    /// `window` (unix seconds, from..to) is what the query will read, if
    /// known: a sharded node then takes the ReadIndex of the weeks it
    /// spans in its first round.
    pub fn read_barrier_bounded(
        &self,
        max_staleness_ms: Option<u32>,
        window: Option<(i64, i64)>,
    ) -> Result<u64, NodeError> {
        crate::shards::ReadGate::end();
        if let Some(max) = max_staleness_ms.filter(|m| *m > MAX_STALENESS_MS) {
            return Err(NodeError::Invalid(format!(
                "invalid max_staleness_ms {max}: at most {MAX_STALENESS_MS} (a minute); a \
                 replica that has not heard from its leader for longer may have missed \
                 removals and corrections"
            )));
        }
        if let (Some(max), Some(r)) = (max_staleness_ms, &self.replication) {
            // Every group must be fresh enough; the answer is as stale as
            // the stalest of them.
            let mut worst = Some(0u64);
            for g in r.groups() {
                worst = match (worst, r.handle.status(g)) {
                    (Some(w), Some(s)) => match s.leader_contact_ms {
                        Some(ms)
                            if !s.is_leader && s.applied >= s.commit && ms <= u64::from(max) =>
                        {
                            Some(w.max(ms))
                        }
                        _ => None,
                    },
                    _ => None,
                };
            }
            if let Some(ms) = worst {
                self.check_restoring()?;
                crate::shards::ReadGate::begin_stale();
                return Ok(ms);
            }
        }
        self.read_barrier_query(window)?;
        Ok(0)
    }

    /// The barrier of a linearizable query: on a sharded node, a ReadIndex
    /// on the metadata group now and on each data group when the query
    /// first reads it (see [`crate::shards::ReadGate`]); otherwise
    /// [`Node::read_barrier_all`].
    pub fn read_barrier_query(&self, window: Option<(i64, i64)>) -> Result<(), NodeError> {
        if self.shards.is_none() || self.replication.is_none() {
            return self.read_barrier_all();
        }
        let started = std::time::Instant::now();
        let (Some(sh), Some(r), Some(gate)) = (&self.shards, &self.replication, &self.gate) else {
            return self.read_barrier_all();
        };
        // One round for the metadata group and, of the person shards, this
        // week's cell shards and those of the weeks the query's window
        // spans (what it will read), the ones held here with a leader;
        // other shards get theirs when first read, so a query never waits
        // for a shard it does not read (a week just created may still be
        // electing).
        use hourcell_storage::shard::week_of_hour;
        let this_week = week_of_hour(self.now().div_euclid(3600));
        let mut weeks = vec![this_week];
        if let Some((from, to)) = window {
            let (a, b) = (
                week_of_hour(from.div_euclid(3600)),
                week_of_hour((to - 1).div_euclid(3600)),
            );
            // A window of more than a year reads its weeks as it goes.
            if a <= b && b - a < 53 {
                weeks.extend((a..=b).filter(|w| *w != this_week));
            }
        }
        let held: Vec<u64> = sh
            .persons()
            .iter()
            .map(|(g, _)| *g)
            .chain(weeks.iter().flat_map(|w| sh.week(*w)).map(|(g, _)| g))
            .collect();
        // Which have a leader: one trip through the raft loop for all.
        let leaders = r.handle.leaders(&held);
        let mut first: Vec<u64> = vec![r.group];
        first.extend(
            held.into_iter()
                .zip(leaders)
                .filter(|(_, leader)| *leader != 0)
                .map(|(g, _)| g),
        );
        r.read_index_all(&first).map_err(|e| {
            NodeError::Unavailable(format!("cannot serve a linearizable read: {e}"))
        })?;
        self.metrics
            .query_barrier
            .observe(started.elapsed().as_secs_f64());
        gate.record(&first[1..], started);
        self.check_restoring()?;
        if self.store.shard_map_version() != *sh.synced_version.read() {
            self.sync_shards()?;
        }
        crate::shards::ReadGate::begin(started);
        Ok(())
    }
}
