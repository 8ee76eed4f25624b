//! The peer transport over tonic: raft envelopes as bytes, batched per
//! destination, reconnecting with backoff.
//!
//! [`GrpcTransport::send`] is called from the raft thread and never blocks:
//! it queues each envelope for its destination. One task per peer drains
//! the queue into batches and sends them; when a peer is down the batch is
//! dropped (raft resends what matters) and the task reconnects with
//! exponential backoff up to one second.
//!
//! Snapshot images are pulled over `Raft.Snapshot`, a server stream of
//! chunks (see `hourcell_node::replication::snapshot`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use hourcell_proto::internal;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::auth::NodeIdentity;
use crate::channel::{NodeChannel, PeerDialer};

use hourcell_raft::snapshot::{Pairs, Snapshots};
use hourcell_raft::transport::{Envelope, Inbox, Transport};
use hourcell_raft::SnapshotError;

/// Envelopes per request, at most.
const MAX_BATCH: usize = 256;

struct Peer {
    url: String,
    tx: mpsc::UnboundedSender<Envelope>,
}

pub struct GrpcTransport {
    from: u64,
    rt: tokio::runtime::Handle,
    peers: RwLock<HashMap<u64, Peer>>,
    /// TLS with this node's certificate, or the cluster secret.
    dialer: PeerDialer,
}

impl GrpcTransport {
    /// Starts one sender task per peer (`id → http://host:port`) on the
    /// current tokio runtime.
    pub fn start(from: u64, peers: &HashMap<u64, String>, dialer: PeerDialer) -> Self {
        let t = GrpcTransport {
            from,
            rt: tokio::runtime::Handle::current(),
            peers: RwLock::new(HashMap::new()),
            dialer,
        };
        for (&id, url) in peers {
            t.set_peer(id, url);
        }
        t
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Envelope>) {
        let peers = self.peers.read();
        for env in msgs {
            if let Some(p) = peers.get(&env.msg.to) {
                let _ = p.tx.send(env);
            }
        }
    }

    fn set_peer(&self, id: u64, addr: &str) {
        if id == self.from {
            return;
        }
        let url = match self.dialer.url(addr) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(peer = id, %addr, error = %e, "refusing a peer address");
                return;
            }
        };
        let mut peers = self.peers.write();
        if peers.get(&id).is_some_and(|p| p.url == url) {
            return;
        }
        // Replacing the sender ends the old peer task.
        let (tx, rx) = mpsc::unbounded_channel();
        self.rt.spawn(peer_loop(
            self.from,
            id,
            url.clone(),
            self.dialer.clone(),
            rx,
        ));
        peers.insert(id, Peer { url, tx });
    }

    /// Called on the raft thread (not a runtime thread), so it may block on
    /// the runtime.
    fn fetch_snapshot(
        &self,
        from: u64,
        group: u64,
        index: u64,
        sink: &mut dyn FnMut(Pairs) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let transfer = SnapshotError::Transfer;
        let url = self
            .peers
            .read()
            .get(&from)
            .map(|p| p.url.clone())
            .ok_or_else(|| transfer(format!("no address for node {from}")))?;
        let dialer = self.dialer.clone();
        self.rt.block_on(async {
            let mut client = connect(&dialer, &url, Duration::from_secs(60))
                .await
                .map_err(|e| transfer(format!("cannot reach node {from} at {url}: {e}")))?;
            let mut stream = client
                .snapshot(internal::SnapshotRequest { group, index })
                .await
                .map_err(|e| transfer(e.message().to_string()))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| transfer(e.to_string()))?
            {
                if chunk.keys.len() != chunk.values.len() {
                    return Err(transfer(
                        "snapshot chunk has unpaired keys and values".into(),
                    ));
                }
                sink(chunk.keys.into_iter().zip(chunk.values).collect())?;
            }
            Ok(())
        })
    }
}

/// Introduces node `me` to every peer at once, on a thread of its own (the
/// node opens from sync code, possibly on a runtime thread). Peers that do
/// not answer within a second and a half are skipped.
pub fn introduce(
    dialer: &PeerDialer,
    me: u64,
    incarnation: u64,
    joining: bool,
    peers: &HashMap<u64, String>,
) -> hourcell_node::Introduction {
    let dialer = dialer.clone();
    let peers: Vec<(u64, String)> = peers
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let ask = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let calls = peers.iter().map(|(id, addr)| {
                let dialer = dialer.clone();
                async move {
                    let known = hello(&dialer, addr, me, incarnation, joining, 1_500).await?;
                    (known != 0).then_some((*id, known))
                }
            });
            futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .next()
        })
    };
    match std::thread::spawn(ask).join().ok().flatten() {
        Some((peer, known)) => hourcell_node::Introduction::Conflict { peer, known },
        None => hourcell_node::Introduction::Unknown,
    }
}

/// Introduces node `me` (as `incarnation`) to the peer at `addr`. The
/// incarnation it knew this node by if another (0 if none), or None if it
/// did not answer within `timeout_ms`.
pub async fn hello(
    dialer: &PeerDialer,
    addr: &str,
    me: u64,
    incarnation: u64,
    joining: bool,
    timeout_ms: u64,
) -> Option<u64> {
    let url = dialer.url(addr).ok()?;
    let mut c = connect(dialer, &url, Duration::from_millis(timeout_ms))
        .await
        .ok()?;
    let r = c
        .hello(internal::HelloRequest {
            node_id: me,
            incarnation,
            joining,
        })
        .await
        .ok()?;
    Some(r.into_inner().known_incarnation)
}

/// Dials a peer; with TLS, the node's certificate files are read now, so
/// a reconnect picks up rotated ones.
async fn connect(
    dialer: &PeerDialer,
    url: &str,
    timeout: Duration,
) -> Result<internal::raft_client::RaftClient<NodeChannel>, crate::error::ClientError> {
    let ch = dialer.connect(url, timeout).await?;
    Ok(internal::raft_client::RaftClient::new(ch).max_decoding_message_size(64 << 20))
}

async fn peer_loop(
    from: u64,
    to: u64,
    url: String,
    dialer: PeerDialer,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
) {
    let mut client = None;
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first.encode()];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e.encode()),
                Err(_) => break,
            }
        }
        if client.is_none() {
            client = connect(&dialer, &url, Duration::from_secs(5)).await.ok();
            if client.is_none() {
                tracing::debug!(peer = to, %url, "peer unreachable; dropping a batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            backoff = Duration::from_millis(50);
        }
        let req = internal::RaftBatch {
            from,
            envelopes: batch,
        };
        if let Err(e) = client.as_mut().unwrap().send(req).await {
            tracing::debug!(peer = to, error = %e, "raft send failed; reconnecting");
            client = None;
        }
    }
}

/// The receiving side: hands envelopes to the local raft loop, and serves
/// the snapshot images this node offers. Only cluster nodes reach it (the
/// gate admits them: [`crate::auth::NodeAuth`]).
pub struct RaftService {
    pub inbox: Inbox,
    pub snapshots: Arc<Snapshots>,
    pub node: Arc<hourcell_node::Node>,
}

/// The node the gate admitted, or a refusal if the request did not pass
/// the gate (fail closed).
fn node_identity<T>(req: &Request<T>) -> Result<NodeIdentity, Status> {
    req.extensions()
        .get::<NodeIdentity>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("internal services admit cluster nodes only"))
}

type ChunkStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<internal::SnapshotChunk, Status>> + Send>,
>;

#[tonic::async_trait]
impl internal::raft_server::Raft for RaftService {
    type SnapshotStream = ChunkStream;

    async fn snapshot(
        &self,
        req: Request<internal::SnapshotRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        node_identity(&req)?;
        let internal::SnapshotRequest { group, index } = req.into_inner();
        if self
            .snapshots
            .latest(group)
            .is_none_or(|f| f.index != index)
        {
            return Err(Status::not_found(format!(
                "no snapshot of group {group} at index {index} here (superseded?)"
            )));
        }
        // A few chunks in flight: the scan waits for a slow receiver
        // instead of buffering the image.
        let (tx, rx) = mpsc::channel(4);
        let snaps = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let r = snaps.stream(group, index, &mut |pairs| {
                let (keys, values) = pairs.into_iter().unzip();
                tx.blocking_send(Ok(internal::SnapshotChunk { keys, values }))
                    .map_err(|_| SnapshotError::Transfer("receiver went away".into()))
            });
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(Status::aborted(e.to_string())));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn hello(
        &self,
        req: Request<internal::HelloRequest>,
    ) -> Result<Response<internal::HelloResponse>, Status> {
        let NodeIdentity(sender) = node_identity(&req)?;
        let r = req.into_inner();
        if sender.is_some_and(|id| id != r.node_id) {
            return Err(Status::permission_denied(format!(
                "node-{} may not introduce itself as node {}",
                sender.unwrap_or(0),
                r.node_id
            )));
        }
        let node = self.node.clone();
        let known = tokio::task::spawn_blocking(move || {
            let rep = node
                .replication()
                .ok_or_else(|| hourcell_node::NodeError::Refused("not a cluster node".into()))?;
            Ok::<_, hourcell_node::NodeError>((
                rep.handle.id(),
                rep.meet(r.node_id, r.incarnation, r.joining)?,
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(crate::status::to_status)?;
        Ok(Response::new(internal::HelloResponse {
            node_id: known.0,
            known_incarnation: known.1.unwrap_or(0),
        }))
    }

    async fn send(
        &self,
        req: Request<internal::RaftBatch>,
    ) -> Result<Response<internal::RaftAck>, Status> {
        let NodeIdentity(sender) = node_identity(&req)?;
        let batch = req.into_inner();
        // A node certificate says which node sends: it may only speak for
        // itself.
        if sender.is_some_and(|id| id != batch.from) {
            return Err(Status::permission_denied(format!(
                "node-{} may not send raft messages as node {}",
                sender.unwrap_or(0),
                batch.from
            )));
        }
        for b in batch.envelopes {
            let env = Envelope::decode(&b)
                .map_err(|e| Status::invalid_argument(format!("bad raft envelope: {e}")))?;
            if sender.is_some_and(|id| id != env.msg.from) {
                return Err(Status::permission_denied(format!(
                    "node-{} may not send raft messages from node {}",
                    sender.unwrap_or(0),
                    env.msg.from
                )));
            }
            if !self.inbox.deliver(env) {
                return Err(Status::unavailable("raft loop stopped"));
            }
        }
        Ok(Response::new(internal::RaftAck {}))
    }
}
