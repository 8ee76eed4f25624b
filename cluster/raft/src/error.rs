//! The raft layer's errors, by what the caller does: a proposal that was
//! not applied can be retried ([`ProposeError`]); a refused command is the
//! proposer's to report ([`ApplyError::Rejected`]); anything that makes a
//! replica untrustworthy stops the raft loop ([`RaftError`]).

use std::time::Duration;

use crate::engine::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The command was refused the same way on every replica (bad input
    /// that validation let through); the proposer is told, the group goes
    /// on.
    #[error("{0}")]
    Rejected(String),
    /// The replica can no longer be trusted (storage failure, undecodable
    /// entry): the node stops.
    #[error("{0}")]
    Fatal(String),
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no such raft group {0}")]
    NoGroup(u64),
    #[error("proposal dropped (no leader known yet); retry")]
    Dropped,
    #[error("not applied within {0:?}; it may still be, so retry (commands are idempotent)")]
    Timeout(Duration),
    #[error("raft node stopped: {0}")]
    Stopped(String),
    #[error("apply failed: {0}")]
    Apply(String),
}

/// A state machine could not freeze, restore or sync itself. The replica
/// can no longer be trusted: the raft loop stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state machine: {0}")]
pub struct MachineError(pub String);

/// Streaming a snapshot image failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The image asked for is not offered here (a newer one replaced it).
    #[error("no snapshot of group {group} at index {index} here (superseded?)")]
    Gone { group: u64, index: u64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The stream between the nodes broke or refused a chunk.
    #[error("snapshot transfer: {0}")]
    Transfer(String),
}

/// Why the raft loop, or a request to it, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// raft-rs or a stored raft message refused (a log hole, a bad entry).
    #[error("raft group {group}: {why}")]
    Group { group: u64, why: String },
    /// An entry could not be applied; the replica stops.
    #[error("apply of entry {index} failed: {why}")]
    Apply { index: u64, why: String },
    #[error("raft loop has exited")]
    Stopped,
    #[error("raft loop did not answer within {0:?}")]
    Timeout(Duration),
}
