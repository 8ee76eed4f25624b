//! hourcell server: a node on the network.
//!
//! Owns the tonic services of `hourcell.v1` ([`service`]), the one gate
//! every client RPC passes ([`gate`]: authentication, rate limit, roles,
//! audited refusals) and its rules ([`auth`]: tokens, the RPC table), TLS ([`tls`]),
//! the internal Raft and Shard services and the node's gRPC [`network`],
//! joining a cluster ([`join`]), the `/metrics` endpoint
//! ([`metrics`]), client connections ([`channel`], shared with the
//! CLI), conversions between proto and domain types ([`convert`]) and the
//! one place where errors become gRPC statuses ([`status`]).
//!
//! May import: `hourcell-node`, `hourcell-query`, `hourcell-storage`,
//! `hourcell-proto`, tonic. Must not import the CLI or the town generator.

pub mod answer;
pub mod auth;
pub mod backup;
pub mod channel;
pub mod convert;
pub mod error;
pub mod gate;
pub mod grid;
pub mod join;
pub mod limit;
pub mod metrics;
pub mod network;
pub mod raft_service;
pub mod release;
pub mod server;
pub mod service;
pub mod shard_service;
pub mod status;
pub mod tls;

pub use error::{ClientError, ServerError, TlsError};
pub use server::{open_node, run, serve};
