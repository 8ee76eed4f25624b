//! Retention: removing every hour before a cut-off.

use super::{Meta, Role, Shard, Store};
use crate::command::ApplyOutcome;
use crate::error::Result;
use crate::keys;
use crate::kv::{KvEngine, TryScan, WriteBatch};

impl<E: KvEngine> Store<E, Meta> {
    /// Retention on the metadata store: tasks and their history, the
    /// parameters of audit records, the persons no longer seen (in a
    /// sharded cluster by the last week recorded for them), and on an
    /// unsharded node the hours; a removal of hours is audited.
    pub(super) fn apply_expire(
        &self,
        cutoff_hour: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<ApplyOutcome> {
        let cutoff_hour = cutoff_hour.clamp(keys::MIN_HOUR, keys::MAX_HOUR);
        self.expire_tasks(cutoff_hour * 3600)?;
        self.redact_audit(cutoff_hour * 3600)?;
        self.forget_unseen(cutoff_hour)?;
        let Some((mut b, removed)) = self.expire_hours(cutoff_hour)? else {
            return Ok(ApplyOutcome::default());
        };
        self.chain_audit(&mut b, std::slice::from_ref(audit));
        self.finish_expire(b, cutoff_hour, removed)
    }
}

impl<E: KvEngine> Store<E, Shard> {
    /// Retention on a data shard: its hours only. It keeps no audit chain
    /// of its own: the node records the removal once in the metadata
    /// group's log, so that there is one chain and `audit list` shows all
    /// of it.
    pub(super) fn apply_shard_expire(&self, cutoff_hour: i64) -> Result<ApplyOutcome> {
        let cutoff_hour = cutoff_hour.clamp(keys::MIN_HOUR, keys::MAX_HOUR);
        match self.expire_hours(cutoff_hour)? {
            Some((b, removed)) => self.finish_expire(b, cutoff_hour, removed),
            None => Ok(ApplyOutcome::default()),
        }
    }
}

impl<E: KvEngine, R: Role> Store<E, R> {
    /// The removal of every hour before `cutoff_hour`, as a batch to
    /// write, and the person-days it removes; `None` when nothing is that
    /// old. Time-major slices go by range deletes up to the cut-off day;
    /// the boundary day's masks are trimmed; the person index is trimmed
    /// person by person (one seek each).
    fn expire_hours(&self, cutoff_hour: i64) -> Result<Option<(WriteBatch, u64)>> {
        use crate::codec::{decode_day_set, encode_day_set, FULL_DAY};
        let partial = R::SHARD;
        // Every hour with an event has an hourly bitmap (in a person shard)
        // or a cell slice of its day (in a cell shard): if the first one is
        // not before the cut-off, there is nothing to remove (the usual
        // case on a young store) and nothing is scanned, compacted or
        // audited.
        let mut first_hour = None;
        self.engine.scan(
            &keys::hour_slice(keys::MIN_HOUR),
            &keys::prefix_end(&[keys::HOUR_SLICE]),
            &mut |k, _| {
                first_hour = Some(keys::hour_from(&k[1..5]));
                false
            },
        )?;
        self.engine.scan(
            &[keys::CELL_DAY],
            &keys::prefix_end(&[keys::CELL_DAY]),
            &mut |k, _| {
                // The day's first hour: a cell slice may hold any of them.
                let h = keys::hour_from(&k[1..5]) * 24;
                first_hour = Some(first_hour.map_or(h, |f: i64| f.min(h)));
                false
            },
        )?;
        if first_hour.is_none_or(|f| f >= cutoff_hour) {
            return Ok(None);
        }
        let day = cutoff_hour.div_euclid(24);
        let h = cutoff_hour.rem_euclid(24) as u32;
        // Hours of the boundary day that stay.
        let keep = FULL_DAY & !((1u32 << h) - 1);
        let mut b = WriteBatch::default();
        let mut removed = 0u64;
        for prefix in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let lo = vec![prefix];
            let mut cut = vec![prefix];
            cut.extend_from_slice(&keys::hour_bytes(day));
            b.delete_range(lo, cut.clone());
            if h > 0 {
                self.engine
                    .try_scan(&cut, &keys::prefix_end(&cut), &mut |k, v| {
                        let kept: Vec<(u32, u32)> = decode_day_set(k, v)?
                            .into_iter()
                            .filter_map(|(id, m)| (m & keep != 0).then_some((id, m & keep)))
                            .collect();
                        if kept.is_empty() {
                            b.delete(k.to_vec());
                        } else {
                            b.put(k.to_vec(), encode_day_set(&kept));
                        }
                        Ok(true)
                    })?;
            }
        }
        b.delete_range(vec![keys::HOUR_SLICE], keys::hour_slice(cutoff_hour));
        // A person whose every hour is gone, and who holds no
        // registration, leaves the dictionary too: here, where the
        // dictionary and the person index are one store (an unsharded
        // node, or a person shard, whose ingest parts carry every entry
        // they use, so a forgotten one is learnt again). A cell shard keeps
        // no dictionary; a sharded metadata store forgets by the weeks it
        // recorded (`forget_unseen`).
        let mut forgotten = Vec::new();
        let persons = self.state.read_recursive().int_to_ext.len() as u32;
        for id in 0..persons {
            let from = keys::person_day(id, keys::MIN_HOUR);
            let to = if partial {
                keys::person_day(id, day + 1)
            } else {
                keys::prefix_end(&keys::person_day(id, keys::MIN_HOUR)[..5])
            };
            let (mut gone, mut kept) = (false, false);
            self.engine.try_scan(&from, &to, &mut |k, v| {
                let d = keys::hour_from(&k[5..9]);
                if d > day || h == 0 && d == day {
                    kept = true;
                    return Ok(false);
                }
                if d < day {
                    removed += 1;
                    gone = true;
                    b.delete(k.to_vec());
                    return Ok(true);
                }
                match crate::codec::trim_places(k, v, keep)? {
                    Some(t) => {
                        kept = true;
                        b.put(k.to_vec(), t)
                    }
                    None => {
                        gone = true;
                        b.delete(k.to_vec())
                    }
                }
                Ok(true)
            })?;
            if gone && !kept && partial {
                // A shard scanned only up to the cut-off day: any later?
                let to = keys::prefix_end(&keys::person_day(id, keys::MIN_HOUR)[..5]);
                self.engine
                    .scan(&keys::person_day(id, day + 1), &to, &mut |_, _| {
                        kept = true;
                        false
                    })?;
            }
            if gone && !kept {
                forgotten.push(id);
            }
        }
        if !forgotten.is_empty() {
            let mut st = self.state.write();
            for id in forgotten {
                Self::forget_person(&mut st, &mut b, id);
            }
        }
        Ok(Some((b, removed)))
    }

    /// Writes an expiry's batch, then compacts the removed ranges so the
    /// disk space comes back.
    fn finish_expire(&self, b: WriteBatch, cutoff_hour: i64, removed: u64) -> Result<ApplyOutcome> {
        self.commit(b)?;
        let day = cutoff_hour.div_euclid(24);
        // Give the space back: the time-major slices only over the removed
        // range; the person-major index (spread over every person) only
        // when whole person-days went, which is once a day.
        for prefix in [keys::CELL_DAY, keys::ADDRESS_DAY] {
            let mut cut = vec![prefix];
            cut.extend_from_slice(&keys::hour_bytes(day));
            self.engine.compact_range(&[prefix], &cut)?;
        }
        self.engine
            .compact_range(&[keys::HOUR_SLICE], &keys::hour_slice(cutoff_hour))?;
        if removed > 0 {
            self.engine
                .compact_range(&[keys::PERSON], &keys::prefix_end(&[keys::PERSON]))?;
        }
        Ok(ApplyOutcome {
            applied: removed,
            expired: true,
            ..ApplyOutcome::default()
        })
    }
}
