//! hourcell CLI: the `hourcell` binary's commands. Flags ([`cli`]), the
//! gRPC client commands (query, import, status, cluster, tasks, audit,
//! token, certs, retention), rendering as table / CSV / JSON, the load
//! bench ([`bench`]; [`bench_params`] sends the peer comparison's
//! parameter sets, [`gen_peers`] writes its event rows) and the embedded demo ([`dev`]). `main.rs` only parses
//! flags and calls in here.
//!
//! May import: `hourcell-server` (channels, conversions, serving a node),
//! `hourcell-node` (config), `hourcell-town`, `hourcell-proto`,
//! `hourcell-query`, `hourcell-storage`. Nothing imports this crate.

pub mod backup_cli;
pub mod bench;
pub mod bench_args;
pub mod bench_mixed;
pub mod bench_params;
pub mod cli;
pub mod client;
pub mod defaults;
pub mod dev;
pub mod docs;
pub mod exit;
pub mod gen_peers;
pub mod security_cli;
pub mod tasks_cli;
