//! Helpers shared by the process and cluster tests: free ports, spawning
//! `hourcell node` processes and printing their logs when a test fails,
//! channels, waiting for a leader or for convergence, cuttable links
//! between nodes, and the test bodies that run both over the in-process
//! simulated network and over real processes ([`bodies`]), and the
//! secured in-process node of the security tests ([`secure`]), and the
//! `hourcell` binary run as a command ([`cli`]).

pub mod bodies;
pub mod cli;
pub mod config;
pub mod data;
pub mod grpc;
pub mod links;
pub mod procs;
pub mod secure;
pub mod status;
