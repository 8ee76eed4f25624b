//! Query errors: bad input (names the field and the value) versus storage
//! failure (the node must stop serving).

use hourcell_storage::StorageError;
use thiserror::Error;

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidArgument {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what} {value:?} not found")]
    NotFound { what: &'static str, value: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A shard could not be read consistently now (no leader, a read
    /// barrier timed out); retry.
    #[error("{0}")]
    Unavailable(String),
    /// A node does not know a read this one asked of it (it runs an
    /// older release): the asker falls back to reads every node serves.
    #[error("{0}")]
    UnknownRead(String),
}

impl QueryError {
    pub fn invalid(field: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        QueryError::InvalidArgument {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
