//! The node's errors, by what a caller can do about them: fix the input
//! (`Invalid`, `NotFound`), wait and retry (`Unavailable`), or accept a
//! refusal of the current state (`Refused`). The server maps each variant
//! to one gRPC status in one place.

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The caller sent bad input; the message names the field and value.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// A role name that is not one of the roles.
    #[error("unknown role {name:?}; roles are {known}")]
    UnknownRole { name: String, known: String },
    #[error(transparent)]
    Query(#[from] hourcell_query::QueryError),
    #[error(transparent)]
    Storage(#[from] hourcell_storage::StorageError),
    /// The request was well-formed but the current state does not allow it.
    #[error("{0}")]
    Refused(String),
    /// Not now: no raft leader, or the write did not commit in time.
    #[error("{0}")]
    Unavailable(String),
}
