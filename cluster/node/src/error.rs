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

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {source}")]
    Parse {
        path: std::path::PathBuf,
        source: Box<ConfigError>,
    },
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// A value out of range or inconsistent with another; `field` is its
    /// dotted name in the TOML file.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Why a node could not start: every case is fixed by the operator
/// (config, disk, or the data directory), not by retrying.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// An engine (RocksDB) at `path` could not be opened or read.
    #[error("cannot open {path}: {source}")]
    Engine {
        path: std::path::PathBuf,
        source: hourcell_storage::StorageError,
    },
    #[error(
        "this data directory belongs to a cluster created {stored}, but the config says \
         {configured}; the layout is fixed when a cluster is created"
    )]
    LayoutChanged { stored: String, configured: String },
    #[error("the data directory's {what} is damaged")]
    Damaged { what: &'static str },
    #[error("cannot start raft group {group}: {source}")]
    Raft {
        group: u64,
        source: hourcell_raft::RaftError,
    },
    #[error("cannot delete shard group {group}: {source}")]
    DropShard {
        group: u64,
        source: hourcell_storage::StorageError,
    },
    #[error(
        "node {node} starts with a new data directory (incarnation {incarnation:016x}), but \
         node {peer} knew node {node} as incarnation {known:016x}: this node's data was lost, \
         and a node that lost its log must not vote as if it still had it. Restart it with \
         --join (hourcell node --config FILE --join) to rejoin as a new member"
    )]
    Wiped {
        node: u64,
        peer: u64,
        incarnation: u64,
        known: u64,
    },
    #[error(transparent)]
    Storage(#[from] hourcell_storage::StorageError),
}
