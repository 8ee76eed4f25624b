//! The node's [`Network`] over gRPC: raft messages through
//! [`GrpcTransport`], routed shard calls through [`GrpcPeers`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hourcell_node::replication::transport::Transport;
use hourcell_node::route::PeerClient;
use hourcell_node::Network;

use crate::raft_service::GrpcTransport;
use crate::shard_service::GrpcPeers;
use crate::tls::ClientTls;

/// Mutual TLS to peers when `tls` is set (this node's certificate and the
/// cluster CA).
pub struct GrpcNetwork {
    pub tls: Option<ClientTls>,
}

impl Network for GrpcNetwork {
    fn raft_transport(&self, me: u64, peers: &HashMap<u64, String>) -> Arc<dyn Transport> {
        Arc::new(GrpcTransport::start(me, peers, self.tls.clone()))
    }

    fn peer_client(&self) -> Arc<dyn PeerClient> {
        GrpcPeers::new(self.tls.clone(), Duration::from_secs(10))
    }
}
