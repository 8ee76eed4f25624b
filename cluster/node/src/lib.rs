//! hourcell node: one member of a cluster, without its network.
//!
//! Owns the [`Node`](node::Node): ingest group commit, the metadata store
//! and the data shards it holds ([`shards`]), their raft groups
//! ([`replication`]), placement and rebalancing, routing of reads and
//! writes to other nodes through the [`route::PeerClient`] and
//! [`network::Network`] traits (never through tonic), read barriers, rules
//! scheduling, retention, configuration ([`config`]) and its metrics.
//!
//! May import: `hourcell-storage`, `hourcell-query`, raft-rs, tokio.
//! Must not import: proto, tonic, or the server and CLI crates; the
//! server implements [`network::Network`] and hands it in.

pub mod config;
pub mod error;
pub mod metrics;
pub mod network;
pub mod node;
pub mod replication;
pub mod roles;
pub mod route;
pub mod shard_read;
pub mod shards;
pub mod types;

pub use error::{ConfigError, NodeError, OpenError};
pub use network::{Introduction, Network, NoNetwork};
pub use node::Node;
