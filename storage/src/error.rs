//! Storage errors. Everything here means "the node cannot go on safely"
//! except [`StorageError::Invalid`], which is the caller's bad input.

use thiserror::Error;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum StorageError {
    /// The engine failed (I/O, corruption). The node must stop serving.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// Stored bytes could not be decoded. The node must stop serving.
    #[error("corrupt value under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Bytes from the log or the network that do not decode as `what`.
    #[error("{what} does not decode: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The caller asked for something that cannot be done.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Too many distinct persons for the u32 id space of one store.
    #[error("id space exhausted: more than {0} distinct persons")]
    IdSpaceExhausted(u64),
}

impl StorageError {
    /// Whether the error means the node must stop (as opposed to bad input).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StorageError::Invalid(_))
    }

    pub(crate) fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> Self {
        StorageError::Corrupt {
            key: crate::keys::describe(key),
            reason: reason.to_string(),
        }
    }
}
