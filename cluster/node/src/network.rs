//! How a node reaches the other nodes of its cluster. The node is written
//! against these traits; the server crate implements them over gRPC, and a
//! single node or an in-process test can hand in [`NoNetwork`] or its own.

use std::collections::HashMap;
use std::sync::Arc;

use crate::replication::transport::Transport;
use crate::route::PeerClient;

/// The raft transport and the client of other nodes' shard service.
pub trait Network: Send + Sync {
    /// The transport that carries raft messages of node `me` to `peers`
    /// (node id → gRPC address).
    fn raft_transport(&self, me: u64, peers: &HashMap<u64, String>) -> Arc<dyn Transport>;

    /// Routed reads and writes of shards held on other nodes.
    fn peer_client(&self) -> Arc<dyn PeerClient>;

    /// Tells the reachable `peers` that node `me` runs as `incarnation`
    /// (a `joining` node replaces the incarnation they knew), before its
    /// raft groups start. A peer that knew node `me` by another
    /// incarnation answers with it: this node's data was lost.
    fn introduce(
        &self,
        _me: u64,
        _incarnation: u64,
        _joining: bool,
        _peers: &HashMap<u64, String>,
    ) -> Introduction {
        Introduction::Unknown
    }
}

/// What the peers said to a node's introduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introduction {
    /// No peer objected (or none could be asked).
    Unknown,
    /// Peer `peer` knew this node by incarnation `known`.
    Conflict { peer: u64, known: u64 },
}

/// For a node without a `[cluster]` section: asking it for a transport is
/// a bug in the caller.
pub struct NoNetwork;

impl Network for NoNetwork {
    fn raft_transport(&self, me: u64, _: &HashMap<u64, String>) -> Arc<dyn Transport> {
        panic!("node {me} has a [cluster] section but was opened without a network")
    }

    fn peer_client(&self) -> Arc<dyn PeerClient> {
        panic!("a sharded node was opened without a network")
    }
}
