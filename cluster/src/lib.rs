//! hourcell cluster: wiring. The node (store + query engine), the gRPC
//! services and server, configuration, the demo (`dev`), the synthetic town
//! generator, and the client commands behind the `hourcell` binary.
//!
//! Main types: [`node::Node`], [`service::Services`], [`config::NodeConfig`].
//! This is the only crate that wires tonic servers; storage and query know
//! nothing of it.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod route;
pub mod security_cli;
pub mod server;
pub mod service;
pub mod shards;
pub mod tasks_cli;
pub mod tls;
pub mod town;
