//! Retention and the audit log.

use super::*;

/// Most audit records in one command: a group of a few kilobytes each
/// stays far below a raft entry's size.
const MAX_AUDIT_GROUP: usize = 256;

impl Node {
    /// The first hour the retention limit keeps at `now`.
    pub fn retained_from(&self, now: i64) -> i64 {
        now.div_euclid(3600) - i64::from(self.retention_days) * 24
    }

    /// The retention cut-off hour at `now`: the clock's, but at most the
    /// newest stored hour minus the retention period.
    pub fn cutoff(&self, now: i64) -> Result<i64, NodeError> {
        let by_clock = self.retained_from(now);
        let newest = self.stats()?.last_hour;
        Ok(match newest {
            Some(h) => by_clock.min(h + 1 - i64::from(self.retention_days) * 24),
            None => by_clock,
        })
    }

    /// Commits audit records through the log (on every replica) and
    /// returns once they are applied here. A person-level answer is only
    /// sent after this succeeds. Records of concurrent calls share one
    /// command (one synced write, or one raft round), chained in the
    /// order they arrived; each call still returns only once its own
    /// records are committed.
    pub fn audit(&self, entries: Vec<hourcell_storage::AuditEntry>) -> Result<(), NodeError> {
        let t0 = std::time::Instant::now();
        let r = self
            .audit_group
            .submit(entries, MAX_AUDIT_GROUP, &mut |all| {
                self.propose(&Command::Audit(all))?;
                self.metrics.audit_commits.inc();
                Ok(())
            });
        self.metrics.audit_wait.observe(t0.elapsed().as_secs_f64());
        r
    }

    /// Applies the retention limit as of `now`: every replica removes the
    /// hours before the cut-off this command carries, and the removal is
    /// audited. Returns the cut-off hour and the person-days removed.
    pub fn expire(&self, now: i64, principal: &str) -> Result<(i64, u64), NodeError> {
        // The cut-off is decided once, by the leader of the metadata group
        // (its clock, bounded by its data), not by whichever node is asked.
        if !self.leads() {
            let leader = self
                .replication
                .as_ref()
                .and_then(|r| r.handle.status(r.group))
                .map_or(0, |s| s.leader);
            return Err(NodeError::Refused(if leader == 0 {
                "retention is decided by the leader, and no leader is known now; retry".into()
            } else {
                format!("retention is decided by the leader: send this to node {leader}")
            }));
        }
        // Bounded by the data: never past the newest stored hour minus the
        // retention period, so that a clock far ahead (of whichever node
        // serves this) cannot remove hours the limit still keeps.
        let cutoff = self.cutoff(now)?;
        let at = hourcell_query::time::format_time(cutoff * 3600);
        let cmd = Command::Expire {
            cutoff_hour: cutoff,
            audit: hourcell_storage::AuditEntry {
                time: now,
                principal: principal.to_string(),
                roles: String::new(),
                rpc: "Retention".into(),
                parameters: format!(
                    "{{\"cutoff\":\"{at}\",\"retention_days\":{}}}",
                    self.retention_days
                ),
                purpose: "retention limit".into(),
                case_ref: String::new(),
                persons_returned: 0,
                outcome: format!("retention: removed every hour before {at}"),
            },
        };
        if self.shards.is_none() {
            let out = self.propose(&cmd)?;
            return Ok((cutoff, out.applied));
        }
        // Sharded: the metadata group expires its tasks and redacts its
        // audit parameters (it holds no hours, so it records nothing
        // itself); weeks wholly before the cut-off are dropped from the
        // shard map (every node then deletes their shards); the rest, and
        // the person shards, remove their old hours; then, if anything was
        // removed, the metadata group's audit log records it.
        self.propose(&cmd)?;
        let map = self.store.shard_map();
        let old: Vec<i64> = map
            .weeks
            .keys()
            .copied()
            .filter(|w| hourcell_storage::shard::week_start_hour(w + 1) <= cutoff)
            .collect();
        let dropped = !old.is_empty();
        if dropped {
            self.propose(&Command::DropPartitions { weeks: old.clone() })?;
            self.sync_shards()?;
        }
        // Every remaining shard, wherever it is held.
        let outs = self.propose_parts(
            placed_shards(&map, &self.founding)
                .into_iter()
                .filter(|(id, _)| {
                    id.part == hourcell_storage::ShardPart::Persons || !old.contains(&id.week)
                })
                .map(|(id, _)| (id, cmd.clone()))
                .collect(),
        )?;
        if dropped || outs.iter().any(|o| o.expired) {
            let Command::Expire { audit, .. } = cmd else {
                unreachable!()
            };
            self.audit(vec![audit])?;
        }
        Ok((cutoff, outs.iter().map(|o| o.applied).sum()))
    }

    // ------------------------------------------------------------- tasks
}
