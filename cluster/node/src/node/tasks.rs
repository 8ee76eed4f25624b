//! Field tasks: rule runs and task updates.

use super::*;

/// Drafts per `RaiseTasks` command: a log entry carries a batch.
pub(super) const TASKS_PER_COMMAND: usize = 5_000;

impl Node {
    pub fn rules_hourly(&self) -> bool {
        self.rules_hourly
    }

    /// Follows the task change log: the receiver sees the latest sequence
    /// number whenever tasks change.
    pub fn watch_tasks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.task_seq.subscribe()
    }

    pub(super) fn tasks_changed(&self) {
        self.task_seq.send_replace(self.store.last_task_change());
    }

    /// Runs the rules as of `at` (default: now) and stores the tasks they
    /// call for. Safe to run twice: a subject with an open task (or a recent
    /// rejection) is not raised again.
    pub fn run_tasks(&self, at: Option<i64>) -> Result<RunSummary, NodeError> {
        let _one_at_a_time = self.rules_running.lock();
        let started = std::time::Instant::now();
        let now = self.now();
        let at = at.unwrap_or(now);
        // A replay evaluates the rules as of a past time the data still
        // covers; evaluating at any other time would compute departures
        // (an unaudited no-activity-since) for hours the rules never see.
        let earliest = self.retained_from(now) * 3600;
        if at > now || at < earliest {
            return Err(NodeError::Invalid(format!(
                "invalid at {at}: the rules run as of a time between {} (the retention limit) \
                 and now ({})",
                hourcell_query::time::format_time(earliest),
                hourcell_query::time::format_time(now)
            )));
        }
        self.read_barrier_all()?;
        let ev = self.query.evaluate_rules(&self.rules, at)?;
        let evaluation = format!("rules@{}", hourcell_query::time::format_time(at));
        let mut created = 0;
        for chunk in ev.tasks.chunks(TASKS_PER_COMMAND) {
            let out = self.propose(&Command::RaiseTasks {
                at,
                evaluation: evaluation.clone(),
                suppress_secs: self.rules.suppress_days * 86_400,
                tasks: chunk.to_vec(),
            })?;
            created += out.task_ids.len() as u64;
            self.tasks_changed();
        }
        let summary = RunSummary {
            at,
            evaluation,
            proposed: ev.tasks.len() as u64,
            created,
            persons_scored: ev.persons_scored,
            departures_checked: ev.departures_checked,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            at = summary.at,
            proposed = summary.proposed,
            created = summary.created,
            seconds = summary.seconds,
            "rules evaluated"
        );
        Ok(summary)
    }

    /// Moves a task along its lifecycle; an illegal transition is
    /// `Invalid` with the reason.
    pub fn update_task(
        &self,
        id: u64,
        state: &str,
        outcome: &str,
        note: &str,
        by: &str,
    ) -> Result<TaskRecord, NodeError> {
        let state = TaskState::parse(state).ok_or_else(|| {
            NodeError::Invalid(format!(
                "invalid state {state:?}: expected in_progress or resolved"
            ))
        })?;
        let outcome = match outcome {
            "" => None,
            o => Some(Outcome::parse(o).ok_or_else(|| {
                NodeError::Invalid(format!(
                    "invalid outcome {o:?}: expected confirmed, rejected or not_found"
                ))
            })?),
        };
        // The shape of the request is checked here (bad input); whether the
        // task's current state allows it is decided in apply (refused).
        match (state, outcome) {
            (TaskState::Open, _) => {
                return Err(NodeError::Invalid(
                    "invalid state \"open\": a task cannot be reopened; expected in_progress or resolved".into(),
                ))
            }
            (TaskState::Resolved, None) => {
                return Err(NodeError::Invalid(
                    "invalid outcome \"\": resolving a task needs an outcome (confirmed, rejected or not_found)".into(),
                ))
            }
            (TaskState::InProgress, Some(o)) => {
                return Err(NodeError::Invalid(format!(
                    "invalid outcome {:?}: only a resolution carries an outcome",
                    o.as_str()
                )))
            }
            _ => {}
        }
        if by.trim().is_empty() {
            return Err(NodeError::Invalid(
                "invalid by \"\": say who made the change".into(),
            ));
        }
        if note.len() > 4096 {
            return Err(NodeError::Invalid(format!(
                "invalid note: {} bytes, at most 4096",
                note.len()
            )));
        }
        let out = self.propose(&Command::UpdateTask(TaskUpdate {
            id,
            state,
            outcome,
            note: note.to_string(),
            by: by.to_string(),
            at: self.now(),
        }))?;
        if let Some(why) = out.refused {
            return Err(NodeError::Refused(why));
        }
        self.tasks_changed();
        self.store
            .task(id)?
            .ok_or_else(|| NodeError::NotFound(format!("no task with id {id}")))
    }
}
