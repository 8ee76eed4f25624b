//! The metadata store's own tables: tasks and their change log, the audit
//! log and the shard map (their commands and their reads). A data shard
//! has none of them.

use std::collections::HashMap;

use super::{Meta, State, Store, META_AUDIT_REDACTED, META_MAP_VERSION, META_PERSON_PLACEMENT};
use crate::command::{ApplyOutcome, ShardPart};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::kv::{KvEngine, TryScan, WriteBatch};
use crate::shard::CellSplit;
use crate::tasks::{
    self, Outcome, SubjectState, TaskChange, TaskDraft, TaskRecord, TaskState, TaskUpdate,
};

impl<E: KvEngine> Store<E, Meta> {
    // ------------------------------------------------------------- audit

    pub(super) fn apply_audit(&self, entries: &[crate::audit::AuditEntry]) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        self.chain_audit(&mut b, entries);
        self.commit(b)?;
        Ok(ApplyOutcome {
            applied: entries.len() as u64,
            ..ApplyOutcome::default()
        })
    }

    /// Appends audit records to `b`, chained after the last one. The state
    /// moves on at once: callers write `b` before anything else is applied
    /// (the apply lock is held).
    pub(super) fn chain_audit(&self, b: &mut WriteBatch, entries: &[crate::audit::AuditEntry]) {
        let mut st = self.state.write();
        for e in entries {
            let seq = st.next_audit;
            let r = crate::audit::AuditRecord::new(seq, e.clone(), st.last_audit_hash);
            Self::put_bincode(b, keys::audit(seq), &r);
            st.next_audit += 1;
            st.last_audit_hash = r.hash;
        }
    }

    /// Audit records after `after_seq`, at most `limit`, in order.
    pub fn audit_records(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>> {
        self.scan_bincode(
            &keys::audit(after_seq.saturating_add(1)),
            &keys::prefix_end(&[keys::AUDIT]),
            limit,
            &mut |_| true,
        )
    }

    /// The last audit record's sequence number and hash (0 and zeros when
    /// the log is empty).
    pub fn audit_head(&self) -> (u64, [u8; 32]) {
        let st = self.state.read_recursive();
        (st.next_audit - 1, st.last_audit_hash)
    }

    /// Redacts the parameters of audit records from before `cut` (unix
    /// seconds): they name persons and places of hours that retention
    /// removed. Records are scanned from the last watermark and the scan
    /// stops at the first record from `cut` on; proposers' clocks differ
    /// by seconds, so a straggler just behind it is redacted by a later
    /// cut-off. Returns the records redacted.
    pub(super) fn redact_audit(&self, cut: i64) -> Result<u64> {
        let mark = keys::meta(META_AUDIT_REDACTED);
        let from = self
            .engine
            .get(&mark)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let mut b = WriteBatch::default();
        let mut done = from;
        let mut n = 0;
        self.engine.try_scan(
            &keys::audit(from.saturating_add(1)),
            &keys::prefix_end(&[keys::AUDIT]),
            &mut |k, v| {
                let mut r = crate::audit::decode_record(v)
                    .map_err(|_| StorageError::corrupt(k, "undecodable audit record"))?;
                if r.entry.time >= cut {
                    return Ok(false);
                }
                if !r.redacted {
                    r.redact();
                    Self::put_bincode(&mut b, k.to_vec(), &r);
                    n += 1;
                }
                done = r.seq;
                Ok(true)
            },
        )?;
        if done != from {
            b.put(mark, done.to_be_bytes().to_vec());
            self.commit(b)?;
        }
        Ok(n)
    }

    /// The number of audit records (the last sequence number).
    pub fn audit_len(&self) -> u64 {
        self.state.read_recursive().next_audit - 1
    }

    // ------------------------------------------------------------- tasks

    /// Writes a task and its change-log entry; returns the next sequence
    /// number.
    fn log_task(batch: &mut WriteBatch, seq: u64, task: &TaskRecord) -> u64 {
        Self::put_bincode(batch, keys::task(task.id), task);
        Self::put_bincode(
            batch,
            keys::task_change(seq),
            &TaskChange {
                seq,
                task: task.clone(),
            },
        );
        seq + 1
    }

    /// Removes tasks untouched since before `cut` (unix seconds), their
    /// subjects (unless a later task or rejection still needs them) and
    /// every change-log entry from before `cut`: task history names
    /// persons and expires with the hours. Returns the tasks removed.
    pub(super) fn expire_tasks(&self, cut: i64) -> Result<u64> {
        let decode = |k: &[u8], v: &[u8]| -> Result<TaskRecord> {
            bincode::serde::decode_from_slice::<TaskRecord, _>(v, crate::bincode_limits())
                .map(|(t, _)| t)
                .map_err(|e| StorageError::corrupt(k, e))
        };
        let mut b = WriteBatch::default();
        let mut gone = Vec::new();
        let start = [keys::TASK];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let t = decode(k, v)?;
                if t.updated_at < cut {
                    b.delete(k.to_vec());
                    gone.push(t);
                }
                Ok(true)
            })?;
        for t in &gone {
            let key = keys::task_subject(&tasks::subject_suffix(
                t.draft.kind,
                t.draft.person,
                &t.draft.address,
            ));
            if let Some(s) = self.get_bincode::<SubjectState>(&key)? {
                let open_other = s.open.is_some_and(|o| o != t.id);
                let recent_rejection = s.rejected_at.is_some_and(|r| r >= cut);
                if !open_other && !recent_rejection {
                    b.delete(key);
                }
            }
        }
        let start = [keys::TASK_CHANGE];
        self.engine
            .try_scan(&start, &keys::prefix_end(&start), &mut |k, v| {
                let (c, _) =
                    bincode::serde::decode_from_slice::<TaskChange, _>(v, crate::bincode_limits())
                        .map_err(|e| StorageError::corrupt(k, e))?;
                if c.task.updated_at < cut {
                    b.delete(k.to_vec());
                }
                Ok(true)
            })?;
        if !b.is_empty() {
            self.commit(b)?;
        }
        Ok(gone.len() as u64)
    }

    pub(super) fn apply_raise_tasks(
        &self,
        at: i64,
        evaluation: &str,
        suppress_secs: i64,
        drafts: &[TaskDraft],
    ) -> Result<ApplyOutcome> {
        let mut batch = WriteBatch::default();
        let (mut next_task, mut next_change) = {
            let st = self.state.read_recursive();
            (st.next_task, st.next_change)
        };
        let mut subjects: HashMap<Vec<u8>, SubjectState> = HashMap::new();
        let mut created = Vec::new();
        for d in drafts {
            let suffix = tasks::subject_suffix(d.kind, d.person, &d.address);
            let key = keys::task_subject(&suffix);
            let subject = match subjects.get(&key) {
                Some(s) => s.clone(),
                None => self.get_bincode::<SubjectState>(&key)?.unwrap_or_default(),
            };
            let suppressed = subject
                .rejected_at
                .is_some_and(|r| at < r.saturating_add(suppress_secs));
            if subject.open.is_some() || suppressed {
                subjects.insert(key, subject);
                continue;
            }
            let task = TaskRecord {
                id: next_task,
                draft: d.clone(),
                state: TaskState::Open,
                outcome: None,
                note: String::new(),
                updated_by: String::new(),
                created_at: at,
                evaluation: evaluation.to_string(),
                updated_at: at,
            };
            next_task += 1;
            next_change = Self::log_task(&mut batch, next_change, &task);
            created.push(task.id);
            let subject = SubjectState {
                open: Some(task.id),
                ..subject
            };
            Self::put_bincode(&mut batch, key.clone(), &subject);
            subjects.insert(key, subject);
        }
        self.commit(batch)?;
        let mut st = self.state.write();
        st.next_task = next_task;
        st.next_change = next_change;
        Ok(ApplyOutcome {
            applied: created.len() as u64,
            task_ids: created,
            ..Default::default()
        })
    }

    pub(super) fn apply_update_task(&self, u: &TaskUpdate) -> Result<ApplyOutcome> {
        let refuse = |msg: String| {
            Ok(ApplyOutcome {
                refused: Some(msg),
                ..Default::default()
            })
        };
        let Some(mut task) = self.get_bincode::<TaskRecord>(&keys::task(u.id))? else {
            return refuse(format!("no task with id {}", u.id));
        };
        if let Err(e) = tasks::check_transition(task.state, u.state, u.outcome) {
            return refuse(e.to_string());
        }
        task.state = u.state;
        task.outcome = u.outcome;
        task.note = u.note.clone();
        task.updated_by = u.by.clone();
        task.updated_at = u.at;
        let mut batch = WriteBatch::default();
        let next_change =
            Self::log_task(&mut batch, self.state.read_recursive().next_change, &task);
        if task.state == TaskState::Resolved {
            let key = keys::task_subject(&tasks::subject_suffix(
                task.draft.kind,
                task.draft.person,
                &task.draft.address,
            ));
            let mut subject = self.get_bincode::<SubjectState>(&key)?.unwrap_or_default();
            if subject.open == Some(task.id) {
                subject.open = None;
            }
            if task.outcome == Some(Outcome::Rejected) {
                subject.rejected_at = Some(u.at);
            }
            Self::put_bincode(&mut batch, key, &subject);
        }
        self.commit(batch)?;
        self.state.write().next_change = next_change;
        Ok(ApplyOutcome {
            applied: 1,
            task_ids: vec![task.id],
            ..Default::default()
        })
    }

    pub fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        self.get_bincode(&keys::task(id))
    }

    /// Decodes the bincode values of `[start, end)` in key order, keeping
    /// those `keep` accepts, until `limit` are kept.
    fn scan_bincode<T: serde::de::DeserializeOwned>(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keep: &mut dyn FnMut(&T) -> bool,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine.try_scan(start, end, &mut |k, v| {
            let (t, _) = bincode::serde::decode_from_slice::<T, _>(v, crate::bincode_limits())
                .map_err(|e| StorageError::corrupt(k, e))?;
            if keep(&t) {
                out.push(t);
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Tasks with id greater than `after`, ascending, that `keep` accepts,
    /// at most `limit` of them.
    pub fn tasks_after(
        &self,
        after: u64,
        limit: usize,
        keep: &mut dyn FnMut(&TaskRecord) -> bool,
    ) -> Result<Vec<TaskRecord>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.scan_bincode(
            &keys::task(after + 1),
            &keys::prefix_end(&[keys::TASK]),
            limit,
            keep,
        )
    }

    /// Change-log entries with sequence number greater than `after`,
    /// ascending, at most `limit`.
    pub fn task_changes(&self, after: u64, limit: usize) -> Result<Vec<TaskChange>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.scan_bincode(
            &keys::task_change(after + 1),
            &keys::prefix_end(&[keys::TASK_CHANGE]),
            limit,
            &mut |_| true,
        )
    }

    /// The sequence number of the latest task change (0 if none).
    pub fn last_task_change(&self) -> u64 {
        self.state.read_recursive().next_change.saturating_sub(1)
    }

    // --------------------------------------------------------- shard map

    /// Refuses a week outside the key space.
    fn check_week(w: i64) -> Result<()> {
        if !(keys::MIN_HOUR..=keys::MAX_HOUR).contains(&w) {
            return Err(StorageError::Invalid(format!("week {w} out of range")));
        }
        Ok(())
    }

    /// Writes a shard map change of `changed` entries (none: nothing).
    fn commit_map_change(
        &self,
        mut st: parking_lot::RwLockWriteGuard<'_, State>,
        mut b: WriteBatch,
        changed: u64,
    ) -> Result<ApplyOutcome> {
        if changed > 0 {
            st.map.version += 1;
            b.put(
                keys::meta(META_MAP_VERSION),
                st.map.version.to_be_bytes().to_vec(),
            );
        }
        drop(st);
        self.commit(b)?;
        Ok(ApplyOutcome {
            applied: changed,
            ..ApplyOutcome::default()
        })
    }

    pub(super) fn apply_create_partitions(
        &self,
        weeks: &[(i64, Vec<Vec<u64>>, Vec<CellSplit>)],
    ) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        for (w, cells, splits) in weeks {
            Self::check_week(*w)?;
            Self::check_splits(cells.len(), splits)?;
            if !st.map.weeks.contains_key(w) {
                st.map.weeks.insert(*w, cells.clone());
                st.map.founders.insert(*w, cells.clone());
                if !splits.is_empty() {
                    st.map.splits.insert(*w, splits.clone());
                }
                Self::put_partition(&mut b, &st.map, *w);
                changed += 1;
            }
        }
        self.commit_map_change(st, b, changed)
    }

    /// Refuses splits that do not describe a trie over `shards` shards:
    /// each child one of the shards after the originals, born once, of a
    /// parent that exists before it, at the parent's next depth.
    fn check_splits(shards: usize, splits: &[CellSplit]) -> Result<()> {
        let originals = shards.checked_sub(splits.len()).filter(|n| *n > 0);
        let Some(originals) = originals else {
            return Err(StorageError::Invalid(format!(
                "{} splits of {shards} cell shards",
                splits.len()
            )));
        };
        for (i, s) in splits.iter().enumerate() {
            let ok = s.child == originals + i
                && s.parent < s.child
                && s.depth <= crate::shard::MAX_SPLIT_DEPTH
                && s.depth == crate::shard::next_split_depth(&splits[..i], s.parent);
            if !ok {
                return Err(StorageError::Invalid(format!("bad cell shard split {s:?}")));
            }
        }
        Ok(())
    }

    /// Writes week `w`'s partition record: founders, replica sets, splits.
    fn put_partition(b: &mut WriteBatch, map: &crate::shard::ShardMap, w: i64) {
        let founders = map.founders.get(&w).cloned().unwrap_or_default();
        let cells = map.weeks.get(&w).cloned().unwrap_or_default();
        let splits = map.splits.get(&w).cloned().unwrap_or_default();
        Self::put_bincode(b, keys::partition(w), &(founders, cells, splits));
    }

    pub(super) fn apply_split_shard(
        &self,
        week: i64,
        parent: usize,
        shards: usize,
        replicas: &[u64],
    ) -> Result<ApplyOutcome> {
        Self::check_week(week)?;
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        if !st.map.weeks.contains_key(&week) {
            return Err(StorageError::Invalid(format!(
                "week {week} has no cell shards to split"
            )));
        }
        if st.map.week_shards(week) != shards {
            // Already split (a repeated proposal), or asked of another map.
            return self.commit_map_change(st, b, 0);
        }
        let mut plan = Vec::new();
        for (&w, cells) in st.map.weeks.range(week..) {
            let n = cells.len();
            let splits = st.map.splits.get(&w).map_or(&[][..], |v| v.as_slice());
            let depth = crate::shard::next_split_depth(splits, parent);
            if parent >= n {
                return Err(StorageError::Invalid(format!(
                    "week {w} has no cell shard {parent} (it has {n})"
                )));
            }
            if n >= crate::shard::MAX_SHARDS as usize || depth > crate::shard::MAX_SPLIT_DEPTH {
                return Err(StorageError::Invalid(format!(
                    "cell shard {parent} of week {w} cannot split again \
                     ({n} shards, split depth {depth})"
                )));
            }
            let child = n;
            plan.push((
                w,
                CellSplit {
                    parent,
                    depth,
                    child,
                },
            ));
        }
        let changed = plan.len() as u64;
        for (w, split) in plan {
            st.map.weeks.entry(w).or_default().push(replicas.to_vec());
            st.map
                .founders
                .entry(w)
                .or_default()
                .push(replicas.to_vec());
            st.map.splits.entry(w).or_default().push(split);
            Self::put_partition(&mut b, &st.map, w);
        }
        self.commit_map_change(st, b, changed)
    }

    pub(super) fn apply_drop_partitions(&self, weeks: &[i64]) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        for &w in weeks {
            Self::check_week(w)?;
            st.map.founders.remove(&w);
            st.map.splits.remove(&w);
            if st.map.weeks.remove(&w).is_some() {
                b.delete(keys::partition(w));
                changed += 1;
            }
        }
        self.commit_map_change(st, b, changed)
    }

    pub(super) fn apply_place_shards(
        &self,
        shards: &[(crate::shard::ShardId, Vec<u64>)],
    ) -> Result<ApplyOutcome> {
        let mut b = WriteBatch::default();
        let mut st = self.state.write();
        let mut changed = 0;
        let mut persons_changed = false;
        for (id, replicas) in shards {
            let slot = match id.part {
                ShardPart::Persons => {
                    if st.map.persons.len() <= id.index {
                        if id.index >= crate::shard::MAX_SHARDS as usize {
                            return Err(StorageError::Invalid(format!(
                                "person shard {} out of range",
                                id.index
                            )));
                        }
                        st.map.persons.resize(id.index + 1, Vec::new());
                    }
                    persons_changed = true;
                    &mut st.map.persons[id.index]
                }
                ShardPart::Cells => match st.map.weeks.get_mut(&id.week) {
                    Some(cells) if id.index < cells.len() => &mut cells[id.index],
                    _ => continue,
                },
            };
            if slot != replicas {
                *slot = replicas.clone();
                changed += 1;
            }
            if id.part == ShardPart::Cells {
                Self::put_partition(&mut b, &st.map, id.week);
            }
        }
        if persons_changed {
            let persons = st.map.persons.clone();
            Self::put_bincode(&mut b, keys::meta(META_PERSON_PLACEMENT), &persons);
        }
        self.commit_map_change(st, b, changed)
    }

    /// The shard map of a sharded cluster's metadata group.
    pub fn shard_map(&self) -> crate::shard::ShardMap {
        self.state.read_recursive().map.clone()
    }

    /// Whether the shard map has week `week`.
    pub fn shard_map_has_week(&self, week: i64) -> bool {
        self.state.read_recursive().map.weeks.contains_key(&week)
    }

    /// The shard map's version and the nodes that should hold shard `id`.
    pub fn shard_replicas(&self, id: crate::shard::ShardId) -> (u64, Vec<u64>) {
        let st = self.state.read_recursive();
        (st.map.version, st.map.replicas(id).to_vec())
    }

    /// Each week's cell shard splits (cheaper than the whole map).
    pub fn cell_splits(&self) -> std::collections::BTreeMap<i64, Vec<CellSplit>> {
        self.state.read_recursive().map.splits.clone()
    }

    /// The number of cell shards of week `week` (0 if it is not in the map).
    pub fn week_shards(&self, week: i64) -> usize {
        self.state.read_recursive().map.week_shards(week)
    }

    /// The shard map's version (cheaper than the whole map).
    pub fn shard_map_version(&self) -> u64 {
        self.state.read_recursive().map.version
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::command::{Command, ShardPart};
    use crate::keys;
    use crate::shard::ShardId;

    #[test]
    fn tasks_and_their_history_expire_with_the_hours() {
        use crate::tasks::{TaskDraft, TaskKind};
        let mem = Arc::new(crate::mem::MemEngine::new());
        let s =
            crate::MetaStore::open(crate::PrefixedEngine::whole(mem.clone()), Some(16)).unwrap();
        let draft = |person: u64| TaskDraft {
            kind: TaskKind::RegisterNewcomer,
            person,
            address: "H1".into(),
            area: "A1".into(),
            score: Some(0.9),
            evidence: vec![],
            registration: None,
            last_seen_hour: Some(5),
        };
        let raise = |at: i64, p: u64| {
            s.apply(&Command::RaiseTasks {
                at,
                evaluation: format!("eval-{at}"),
                suppress_secs: 30 * 86_400,
                tasks: vec![draft(p)],
            })
            .unwrap()
            .task_ids
        };
        let day = 86_400;
        let t0 = 1_000 * day;
        assert_eq!(raise(t0, 1), vec![1]);
        assert_eq!(raise(t0 + 10 * day, 2), vec![2]);
        // Hours before t0 + 5 days expire: task 1 (person 1) goes with its
        // history; task 2 stays.
        s.apply(&Command::Expire {
            cutoff_hour: (t0 + 5 * day) / 3600,
            audit: Default::default(),
        })
        .unwrap();
        assert!(s.task(1).unwrap().is_none());
        assert_eq!(s.task(2).unwrap().unwrap().draft.person, 2);
        let changes = s.task_changes(0, 100).unwrap();
        assert!(
            changes.iter().all(|c| c.task.draft.person != 1),
            "{changes:?}"
        );
        assert_eq!(changes.len(), 1);
        // Person 1's subject went too: the rules may raise it afresh.
        assert_eq!(raise(t0 + 11 * day, 1), vec![3]);
        // Nothing of person 1 before the cut-off is left under any task key.
        let mut left = 0;
        for p in [keys::TASK, keys::TASK_SUBJECT, keys::TASK_CHANGE] {
            crate::KvEngine::scan(&*mem, &[p], &keys::prefix_end(&[p]), &mut |_, _| {
                left += 1;
                true
            })
            .unwrap();
        }
        // Tasks 2 and 3, their subjects and their creations.
        assert_eq!(left, 6);
    }

    #[test]
    fn the_shard_map_records_placement_and_moves_and_survives_a_reopen() {
        let mem = Arc::new(crate::mem::MemEngine::new());
        let open =
            || crate::MetaStore::open(crate::PrefixedEngine::whole(mem.clone()), Some(16)).unwrap();
        let s = open();
        let cells = vec![vec![1, 2, 3], vec![2, 3, 4]];
        s.apply(&Command::CreatePartitions {
            weeks: vec![(7, cells.clone())],
        })
        .unwrap();
        let cell = |index| ShardId {
            part: ShardPart::Cells,
            week: 7,
            index,
        };
        let person = |index| ShardId {
            part: ShardPart::Persons,
            week: 0,
            index,
        };
        // A move keeps the founders; a week not in the map is ignored;
        // person placement is recorded.
        s.apply(&Command::PlaceShards {
            shards: vec![
                (cell(1), vec![2, 3, 5]),
                (cell(9), vec![1]),
                (person(1), vec![4, 5, 1]),
            ],
        })
        .unwrap();
        // Creating an existing week again changes nothing.
        let v = s.shard_map_version();
        s.apply(&Command::CreatePartitions {
            weeks: vec![(7, vec![vec![9, 9, 9]; 2])],
        })
        .unwrap();
        assert_eq!(s.shard_map_version(), v);
        drop(s);
        let s = open();
        let m = s.shard_map();
        assert_eq!(m.version, v);
        assert_eq!(m.replicas(cell(0)), &[1, 2, 3]);
        assert_eq!(m.replicas(cell(1)), &[2, 3, 5]);
        assert_eq!(m.founders(cell(1), &[]), &[2, 3, 4]);
        assert_eq!(m.persons, vec![vec![], vec![4, 5, 1]]);
        s.apply(&Command::DropPartitions { weeks: vec![7] })
            .unwrap();
        let m = s.shard_map();
        assert!(m.weeks.is_empty() && m.founders.is_empty());
        assert!(m.version > v);
    }

    #[test]
    fn a_split_adds_a_shard_to_its_week_and_the_later_ones_once() {
        use crate::shard::CellSplit;
        let mem = Arc::new(crate::mem::MemEngine::new());
        let open =
            || crate::MetaStore::open(crate::PrefixedEngine::whole(mem.clone()), Some(16)).unwrap();
        let s = open();
        s.apply(&Command::CreatePartitions {
            weeks: vec![
                (6, vec![vec![1]; 2]),
                (7, vec![vec![1]; 2]),
                (8, vec![vec![1]; 2]),
            ],
        })
        .unwrap();
        let split = |week, parent, shards| Command::SplitShard {
            week,
            parent,
            shards,
            replicas: vec![2, 3],
        };
        s.apply(&split(7, 1, 2)).unwrap();
        let v = s.shard_map_version();
        // A repeat (the week has 3 shards now) changes nothing.
        s.apply(&split(7, 1, 2)).unwrap();
        assert_eq!(s.shard_map_version(), v);
        // The child splits too, at its own next depth.
        s.apply(&split(8, 2, 3)).unwrap();
        for bad in [split(5, 0, 0), split(7, 9, 3)] {
            assert!(s.apply(&bad).is_err(), "{bad:?}");
        }
        drop(s);
        let s = open();
        let m = s.shard_map();
        let first = CellSplit {
            parent: 1,
            depth: 0,
            child: 2,
        };
        assert!(!m.splits.contains_key(&6));
        assert_eq!(m.splits[&7], vec![first]);
        assert_eq!(
            m.splits[&8],
            vec![
                first,
                CellSplit {
                    parent: 2,
                    depth: 1,
                    child: 3
                }
            ]
        );
        assert_eq!(m.weeks[&8], vec![vec![1], vec![1], vec![2, 3], vec![2, 3]]);
        assert_eq!(m.founders[&8][3], vec![2, 3]);
        // A new week can start with its predecessor's splits; splits that
        // do not describe its shards are refused.
        let with = |week, shards, splits| Command::CreateSplitPartitions {
            weeks: vec![(week, vec![vec![1]; shards], splits)],
        };
        s.apply(&with(9, 4, m.splits[&8].clone())).unwrap();
        assert_eq!(s.shard_map().splits[&9], m.splits[&8]);
        assert!(s.apply(&with(10, 3, m.splits[&8].clone())).is_err());
        let skip = CellSplit {
            parent: 1,
            depth: 1,
            child: 2,
        };
        assert!(s.apply(&with(10, 3, vec![skip])).is_err());
        s.apply(&Command::DropPartitions { weeks: vec![8] })
            .unwrap();
        assert!(!s.shard_map().splits.contains_key(&8));
    }
}
