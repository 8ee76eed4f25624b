//! hourcell raft: multi-raft mechanics over raft-rs, and nothing of what
//! the groups replicate.
//!
//! - [`node::RaftNode`]: one thread per node drives all its groups (no
//!   thread per group), following raft-rs's `five_mem_node` order in its
//!   Ready loop; [`node::RaftHandle`] proposes commands, changes
//!   membership, takes ReadIndex barriers and waits for applies.
//! - [`log_store::RaftLogStore`]: the durable raft state of many groups
//!   in one [`engine::LogEngine`], written in the order raft-rs requires.
//! - [`snapshot`]: frozen state-machine images ([`engine::SnapshotView`])
//!   offered to replicas that fell behind the compacted log or join fresh,
//!   pulled in chunks.
//! - [`transport`]: the [`transport::Transport`] trait, envelopes (group +
//!   raft message, carried as bytes on the wire) and the in-process
//!   [`transport::SimNetwork`] with fault filters for tests.
//! - [`lease`]: leader leases, which let a leader answer read barriers
//!   without a heartbeat round, and why that stays linearizable.
//! - [`node::StateMachine`]: the contract a replicated state machine
//!   meets (deterministic, idempotent apply).
//!
//! raft-rs speaks rust-protobuf 2; its messages stay inside this crate and
//! travel as bytes inside the server's tonic protocol.
//!
//! May import: raft-rs, protobuf 2, slog, parking_lot. Must not import the
//! storage, query, node or server crates, tonic or tokio.

pub mod engine;
pub mod error;
pub mod handle;
pub mod lease;
pub mod log_store;
pub mod machine;
pub mod node;
pub mod snapshot;
pub mod transport;

/// Membership changes, and the messages an [`transport::Envelope`] carries,
/// as raft-rs spells them.
pub use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};

pub use engine::{EngineError, LogBatch, LogEngine, MemLog, SnapshotView};
pub use error::{ApplyError, MachineError, ProposeError, RaftError, SnapshotError};
pub use handle::{GroupStatus, RaftHandle, RaftTiming};
pub use machine::{Outcome, StateMachine};
pub use node::RaftNode;
