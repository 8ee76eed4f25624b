//! The Shard service (internal): the receiving side of routed shard reads
//! and writes, and [`GrpcPeers`], the sending side, which implements the
//! node's [`PeerClient`] over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hourcell_node::node::Node;
use hourcell_node::route::{PeerClient, PeerError, ShardProposal, ShardRead};
use hourcell_node::shard_read::{decode, ReadOp};
use hourcell_node::types::ShardMembers;
use hourcell_proto::internal;
use hourcell_storage::ApplyOutcome;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::convert::{shard_members_from_proto, shard_members_to_proto};
use crate::tls::ClientTls;

/// The receiving side of routed shard reads and writes.
pub struct ShardService {
    pub node: Arc<Node>,
    /// With TLS, only cluster nodes (a client certificate named
    /// `node-<id>`) may route to this node.
    pub require_node_cert: bool,
}

impl ShardService {
    fn check_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        crate::raft_service::check_node_cert(req, self.require_node_cert, "shard routing")
    }
}

#[tonic::async_trait]
impl internal::shard_server::Shard for ShardService {
    async fn propose(
        &self,
        req: Request<internal::ShardProposeRequest>,
    ) -> Result<Response<internal::ShardProposeResponse>, Status> {
        self.check_peer(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let items: Vec<(u64, Vec<u8>)> = r
            .commands
            .into_iter()
            .map(|c| (c.group, c.command))
            .collect();
        let outs = tokio::task::spawn_blocking(move || node.serve_propose(r.map_version, items))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::status::to_status)?;
        Ok(Response::new(internal::ShardProposeResponse {
            applied: outs.iter().map(|o| o.applied).collect(),
            expired: outs.iter().map(|o| o.expired).collect(),
        }))
    }

    async fn members(
        &self,
        req: Request<internal::ShardMembersRequest>,
    ) -> Result<Response<internal::ShardMembersResponse>, Status> {
        self.check_peer(&req)?;
        let node = self.node.clone();
        let (node_id, groups) = tokio::task::spawn_blocking(move || {
            let id = node.replication().map_or(0, |r| r.handle.id());
            (id, shard_members_to_proto(node.shard_members()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(internal::ShardMembersResponse {
            node_id,
            groups,
        }))
    }

    async fn read(
        &self,
        req: Request<internal::ShardReadRequest>,
    ) -> Result<Response<internal::ShardReadResponse>, Status> {
        self.check_peer(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let op: ReadOp = decode(&r.op).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (reply, map_version) = tokio::task::spawn_blocking(move || {
            node.serve_read(r.map_version, r.group, r.barrier, op)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(crate::status::to_status)?;
        Ok(Response::new(internal::ShardReadResponse {
            reply,
            map_version,
        }))
    }
}

/// Routed calls to other nodes' Shard service over gRPC, one cached
/// connection per node.
pub struct GrpcPeers {
    tls: Option<ClientTls>,
    timeout: Duration,
    /// Node id → (url, client).
    clients: Arc<Mutex<HashMap<u64, (String, internal::shard_client::ShardClient<Channel>)>>>,
}

impl GrpcPeers {
    pub fn new(tls: Option<ClientTls>, timeout: Duration) -> Arc<GrpcPeers> {
        Arc::new(GrpcPeers {
            tls,
            timeout,
            clients: Arc::default(),
        })
    }

    fn client(
        &self,
        id: u64,
        addr: &str,
    ) -> impl std::future::Future<
        Output = Result<internal::shard_client::ShardClient<Channel>, PeerError>,
    > + Send
           + 'static {
        let url = crate::channel::server_url(addr, self.tls.is_some());
        let cached = self
            .clients
            .lock()
            .get(&id)
            .filter(|(u, _)| *u == url)
            .map(|(_, c)| c.clone());
        let (tls, timeout, clients) = (self.tls.clone(), self.timeout, self.clients.clone());
        async move {
            if let Some(c) = cached {
                return Ok(c);
            }
            let failed = |e: String| PeerError::Failed(e);
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| failed(e.to_string()))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(timeout)
                .tcp_nodelay(true);
            if let Some(t) = &tls {
                ep = ep
                    .tls_config(t.config().map_err(|e| failed(format!("{e:#}")))?)
                    .map_err(|e| failed(e.to_string()))?;
            }
            let ch = ep.connect().await.map_err(|e| failed(e.to_string()))?;
            let c = internal::shard_client::ShardClient::new(ch)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
            clients.lock().insert(id, (url, c.clone()));
            Ok(c)
        }
    }
}

/// A routed call's status, by what the router does next.
fn peer_error(s: Status) -> PeerError {
    match s.code() {
        tonic::Code::FailedPrecondition => PeerError::StaleMap(s.message().to_string()),
        tonic::Code::InvalidArgument => PeerError::Refused(s.message().to_string()),
        _ => PeerError::Failed(s.message().to_string()),
    }
}

impl PeerClient for GrpcPeers {
    fn read(
        &self,
        node: u64,
        addr: String,
        req: ShardRead,
    ) -> BoxFuture<'static, Result<Vec<u8>, PeerError>> {
        let client = self.client(node, &addr);
        Box::pin(async move {
            let mut c = client.await?;
            let r = c
                .read(internal::ShardReadRequest {
                    map_version: req.map_version,
                    group: req.group,
                    barrier: req.barrier,
                    op: req.op,
                })
                .await
                .map_err(peer_error)?;
            Ok(r.into_inner().reply)
        })
    }

    fn propose(
        &self,
        node: u64,
        addr: String,
        req: ShardProposal,
    ) -> BoxFuture<'static, Result<Vec<ApplyOutcome>, PeerError>> {
        let client = self.client(node, &addr);
        Box::pin(async move {
            let mut c = client.await?;
            let n = req.commands.len();
            let r = c
                .propose(internal::ShardProposeRequest {
                    map_version: req.map_version,
                    commands: req
                        .commands
                        .into_iter()
                        .map(|(group, command)| internal::ShardCommand { group, command })
                        .collect(),
                })
                .await
                .map_err(peer_error)?
                .into_inner();
            Ok((0..n)
                .map(|k| ApplyOutcome {
                    applied: r.applied.get(k).copied().unwrap_or(0),
                    expired: r.expired.get(k).copied().unwrap_or(false),
                    ..ApplyOutcome::default()
                })
                .collect())
        })
    }

    fn members(
        &self,
        node: u64,
        addr: String,
    ) -> BoxFuture<'static, Option<(u64, Vec<ShardMembers>)>> {
        let client = self.client(node, &addr);
        Box::pin(async move {
            let mut c = client.await.ok()?;
            let r = c.members(internal::ShardMembersRequest {}).await.ok()?;
            let r = r.into_inner();
            Some((r.node_id, shard_members_from_proto(r.groups)))
        })
    }

    fn forget(&self, node: u64) {
        self.clients.lock().remove(&node);
    }
}
