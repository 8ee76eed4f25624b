//! Field-staff tasks: the records the rule layer raises and staff work
//! through, stored next to the slices and changed only by commands, so a
//! replicated shard holds the same tasks on every replica.
//!
//! Three key families (see [`crate::keys`]):
//! - task by id: the current [`TaskRecord`];
//! - subject index by (kind, person, address): the open task for that
//!   subject, if any, and when a task for it was last rejected. This is what
//!   makes raising idempotent (one open task per subject) and what
//!   suppresses a rejected subject for a while;
//! - change log by sequence number: every creation and state change, in
//!   apply order, so a consumer can resume from a cursor with no gaps and no
//!   duplicates.

use serde::{Deserialize, Serialize};

use crate::catalog::RegistrationRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    RegisterNewcomer,
    ResidenceMismatch,
    VerifyDeparture,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [
        TaskKind::RegisterNewcomer,
        TaskKind::ResidenceMismatch,
        TaskKind::VerifyDeparture,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TaskKind::RegisterNewcomer => "REGISTER_NEWCOMER",
            TaskKind::ResidenceMismatch => "RESIDENCE_MISMATCH",
            TaskKind::VerifyDeparture => "VERIFY_DEPARTURE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    fn byte(&self) -> u8 {
        match self {
            TaskKind::RegisterNewcomer => 1,
            TaskKind::ResidenceMismatch => 2,
            TaskKind::VerifyDeparture => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Open,
    InProgress,
    Resolved,
}

impl TaskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Open => "open",
            TaskState::InProgress => "in_progress",
            TaskState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(TaskState::Open),
            "in_progress" => Some(TaskState::InProgress),
            "resolved" => Some(TaskState::Resolved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Confirmed,
    Rejected,
    NotFound,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Rejected => "rejected",
            Outcome::NotFound => "not_found",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "confirmed" => Some(Outcome::Confirmed),
            "rejected" => Some(Outcome::Rejected),
            "not_found" => Some(Outcome::NotFound),
            _ => None,
        }
    }
}

/// What one source contributed to a should-register score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEvidence {
    pub source: String,
    /// Nights the source saw the person at the address (by address code).
    pub nights_by_address: u32,
    /// Other nights the source saw the person only by location, in the
    /// slice cell of the address's point.
    pub nights_by_location: u32,
    pub weight: f64,
    /// `weight × (nights_by_address + 0.5 × nights_by_location) / 7`.
    pub contribution: f64,
}

/// A task as the rule layer proposes it; the store gives it an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDraft {
    pub kind: TaskKind,
    /// External person id.
    pub person: u64,
    pub address: String,
    pub area: String,
    /// Should-register score in `[0, 1]`; `None` for departures.
    pub score: Option<f64>,
    pub evidence: Vec<SourceEvidence>,
    /// The registration the task concerns (the mismatching or ending one).
    pub registration: Option<RegistrationRecord>,
    pub last_seen_hour: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: u64,
    pub draft: TaskDraft,
    pub state: TaskState,
    pub outcome: Option<Outcome>,
    pub note: String,
    /// Who moved the task to its current state (empty while open).
    pub updated_by: String,
    /// Unix seconds of the evaluation that raised the task.
    pub created_at: i64,
    /// The evaluation that raised it (its `at`, as an id).
    pub evaluation: String,
    /// Unix seconds of the last state change.
    pub updated_at: i64,
}

/// A state change requested by staff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdate {
    pub id: u64,
    pub state: TaskState,
    pub outcome: Option<Outcome>,
    pub note: String,
    pub by: String,
    /// Unix seconds, stamped by the node that proposes the update.
    pub at: i64,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskChange {
    pub seq: u64,
    pub task: TaskRecord,
}

/// Per subject (kind, person, address): the open task and the last
/// rejection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectState {
    pub open: Option<u64>,
    pub rejected_at: Option<i64>,
}

/// Checks that `from → to` is an allowed transition and that the outcome
/// fits: `open → in_progress → resolved` (open may also be resolved
/// directly, e.g. rejected at the desk), a resolution needs an outcome and
/// nothing else may carry one.
pub fn check_transition(
    from: TaskState,
    to: TaskState,
    outcome: Option<Outcome>,
) -> Result<(), TransitionError> {
    use TaskState::*;
    let ok = matches!(
        (from, to),
        (Open, InProgress) | (Open, Resolved) | (InProgress, Resolved)
    );
    if !ok {
        return Err(TransitionError::NotAllowed { from, to });
    }
    match (to, outcome) {
        (Resolved, None) => Err(TransitionError::NeedsOutcome),
        (Resolved, Some(_)) => Ok(()),
        (_, Some(o)) => Err(TransitionError::OutcomeWithoutResolving(o)),
        (_, None) => Ok(()),
    }
}

/// A task update that its state does not allow; the message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a task in state {} cannot move to {}", from.as_str(), to.as_str())]
    NotAllowed { from: TaskState, to: TaskState },
    #[error("resolving a task needs an outcome")]
    NeedsOutcome,
    #[error("outcome {} is only for resolving a task", .0.as_str())]
    OutcomeWithoutResolving(Outcome),
}

pub(crate) fn subject_suffix(kind: TaskKind, person: u64, address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + address.len());
    k.push(kind.byte());
    k.extend_from_slice(&person.to_be_bytes());
    k.extend_from_slice(address.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        use TaskState::*;
        assert!(check_transition(Open, InProgress, None).is_ok());
        assert!(check_transition(InProgress, Resolved, Some(Outcome::Confirmed)).is_ok());
        assert!(check_transition(Open, Resolved, Some(Outcome::Rejected)).is_ok());
        assert!(check_transition(Resolved, Open, None).is_err());
        assert!(check_transition(InProgress, InProgress, None).is_err());
        assert!(check_transition(Open, Resolved, None).is_err());
        assert!(check_transition(Open, InProgress, Some(Outcome::NotFound)).is_err());
    }

    #[test]
    fn kinds_parse_case_insensitively() {
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(&k.as_str().to_lowercase()), Some(k));
        }
        assert_eq!(TaskKind::parse("nope"), None);
    }
}
