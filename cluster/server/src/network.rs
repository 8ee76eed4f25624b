//! The node's [`Network`] over gRPC: raft messages through
//! [`GrpcTransport`], routed shard calls through [`GrpcPeers`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hourcell_node::replication::transport::Transport;
use hourcell_node::route::PeerClient;
use hourcell_node::Network;

use crate::channel::PeerDialer;
use crate::raft_service::GrpcTransport;
use crate::shard_service::GrpcPeers;

/// Mutual TLS to peers when the dialer has TLS (this node's certificate
/// and the cluster CA), else the cluster secret.
pub struct GrpcNetwork {
    pub dialer: PeerDialer,
}

impl Network for GrpcNetwork {
    fn raft_transport(&self, me: u64, peers: &HashMap<u64, String>) -> Arc<dyn Transport> {
        Arc::new(GrpcTransport::start(me, peers, self.dialer.clone()))
    }

    fn peer_client(&self) -> Arc<dyn PeerClient> {
        GrpcPeers::new(self.dialer.clone(), Duration::from_secs(10))
    }

    fn introduce(
        &self,
        me: u64,
        incarnation: u64,
        joining: bool,
        peers: &HashMap<u64, String>,
    ) -> hourcell_node::Introduction {
        crate::raft_service::introduce(&self.dialer, me, incarnation, joining, peers)
    }
}
