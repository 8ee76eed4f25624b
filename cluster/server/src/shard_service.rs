//! The Shard service (internal): the receiving side of routed shard reads
//! and writes, and [`GrpcPeers`], the sending side, which implements the
//! node's [`PeerClient`] over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hourcell_node::node::Node;
use hourcell_node::route::{PeerClient, PeerError, ShardProposal, ShardRead};
use hourcell_node::shard_read::{decode_op, ReadOp};
use hourcell_node::types::ShardMembers;
use hourcell_proto::internal;
use hourcell_storage::ApplyOutcome;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::auth::NodeIdentity;
use crate::channel::{NodeChannel, PeerDialer};
use crate::convert::{
    read_parts_from_proto, read_parts_to_proto, shard_members_from_proto, shard_members_to_proto,
};

/// The receiving side of routed shard reads and writes. Only cluster
/// nodes reach it (the gate admits them: [`crate::auth::NodeAuth`]).
pub struct ShardService {
    pub node: Arc<Node>,
}

impl ShardService {
    /// Refuses a request that did not pass the gate (fail closed).
    fn check_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        req.extensions()
            .get::<NodeIdentity>()
            .map(|_| ())
            .ok_or_else(|| Status::unauthenticated("internal services admit cluster nodes only"))
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
        let op: ReadOp = decode_op(&r.op).map_err(|e| Status::invalid_argument(e.to_string()))?;
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

    async fn read_many(
        &self,
        req: Request<internal::ShardReadManyRequest>,
    ) -> Result<Response<internal::ShardReadManyResponse>, Status> {
        self.check_peer(&req)?;
        let r = req.into_inner();
        let node = self.node.clone();
        let op: ReadOp = decode_op(&r.op).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let parts = read_parts_from_proto(r.parts);
        let (replies, map_version) =
            tokio::task::spawn_blocking(move || node.serve_read_many(r.map_version, &parts, &op))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::status::to_status)?;
        Ok(Response::new(internal::ShardReadManyResponse {
            replies,
            map_version,
        }))
    }
}

/// Routed calls to other nodes' Shard service over gRPC, one cached
/// connection per node.
pub struct GrpcPeers {
    dialer: PeerDialer,
    timeout: Duration,
    /// Node id → (url, client).
    clients: Arc<Mutex<HashMap<u64, (String, ShardClient)>>>,
}

type ShardClient = internal::shard_client::ShardClient<NodeChannel>;

impl GrpcPeers {
    pub fn new(dialer: PeerDialer, timeout: Duration) -> Arc<GrpcPeers> {
        Arc::new(GrpcPeers {
            dialer,
            timeout,
            clients: Arc::default(),
        })
    }

    fn client(
        &self,
        id: u64,
        addr: &str,
    ) -> impl std::future::Future<Output = Result<ShardClient, PeerError>> + Send + 'static {
        let url = self.dialer.url(addr);
        let cached = url.as_ref().ok().and_then(|url| {
            self.clients
                .lock()
                .get(&id)
                .filter(|(u, _)| u == url)
                .map(|(_, c)| c.clone())
        });
        let (dialer, timeout, clients) = (self.dialer.clone(), self.timeout, self.clients.clone());
        async move {
            if let Some(c) = cached {
                return Ok(c);
            }
            let failed = |e: crate::error::ClientError| PeerError::Failed(e.to_string());
            let url = url.map_err(failed)?;
            let ch = dialer.connect(&url, timeout).await.map_err(failed)?;
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
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, PeerError>> {
        let client = self.client(node, &addr);
        Box::pin(async move {
            let mut c = client.await?;
            // One shard: the plain Read (which every node serves).
            if let [part] = req.parts[..] {
                let r = c
                    .read(internal::ShardReadRequest {
                        map_version: req.map_version,
                        group: part.group,
                        barrier: part.barrier,
                        op: req.op,
                    })
                    .await
                    .map_err(peer_error)?;
                return Ok(vec![r.into_inner().reply]);
            }
            let many = c
                .read_many(internal::ShardReadManyRequest {
                    map_version: req.map_version,
                    parts: read_parts_to_proto(&req.parts),
                    op: req.op.clone(),
                })
                .await;
            match many {
                Ok(r) => Ok(r.into_inner().replies),
                // A node from before ReadMany: one Read per shard, at the
                // same time.
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    let reads = req.parts.iter().map(|p| {
                        let mut c = c.clone();
                        let r = internal::ShardReadRequest {
                            map_version: req.map_version,
                            group: p.group,
                            barrier: p.barrier,
                            op: req.op.clone(),
                        };
                        async move { c.read(r).await.map(|r| r.into_inner().reply) }
                    });
                    futures::future::join_all(reads)
                        .await
                        .into_iter()
                        .map(|r| r.map_err(peer_error))
                        .collect()
                }
                Err(s) => Err(peer_error(s)),
            }
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
