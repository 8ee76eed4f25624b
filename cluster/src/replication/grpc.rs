//! The peer transport over tonic: raft envelopes as bytes, batched per
//! destination, reconnecting with backoff.
//!
//! [`GrpcTransport::send`] is called from the raft thread and never blocks:
//! it queues each envelope for its destination. One task per peer drains
//! the queue into batches and sends them; when a peer is down the batch is
//! dropped (raft resends what matters) and the task reconnects with
//! exponential backoff up to one second.

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::time::Duration;

use hourcell_proto::v1;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::node::Input;
use super::transport::{Envelope, Transport};

/// Envelopes per request, at most.
const MAX_BATCH: usize = 256;

pub struct GrpcTransport {
    peers: HashMap<u64, mpsc::UnboundedSender<Envelope>>,
}

impl GrpcTransport {
    /// Starts one sender task per peer (`id → http://host:port`) on the
    /// current tokio runtime.
    pub fn start(from: u64, peers: &HashMap<u64, String>) -> Self {
        let mut out = HashMap::new();
        for (&id, url) in peers {
            if id == from {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_loop(from, id, url.clone(), rx));
            out.insert(id, tx);
        }
        GrpcTransport { peers: out }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Envelope>) {
        for env in msgs {
            if let Some(tx) = self.peers.get(&env.msg.to) {
                let _ = tx.send(env);
            }
        }
    }
}

async fn connect(url: &str) -> Option<v1::raft_client::RaftClient<Channel>> {
    let ep = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    ep.connect()
        .await
        .ok()
        .map(|c| v1::raft_client::RaftClient::new(c).max_decoding_message_size(64 << 20))
}

async fn peer_loop(from: u64, to: u64, url: String, mut rx: mpsc::UnboundedReceiver<Envelope>) {
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
            client = connect(&url).await;
            if client.is_none() {
                tracing::debug!(peer = to, %url, "peer unreachable; dropping a batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            backoff = Duration::from_millis(50);
        }
        let req = v1::RaftBatch {
            from,
            envelopes: batch,
        };
        if let Err(e) = client.as_mut().unwrap().send(req).await {
            tracing::debug!(peer = to, error = %e, "raft send failed; reconnecting");
            client = None;
        }
    }
}

/// The receiving side: hands envelopes to the local raft loop.
pub struct RaftService {
    pub inbox: Sender<Input>,
}

#[tonic::async_trait]
impl v1::raft_server::Raft for RaftService {
    async fn send(&self, req: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        for b in req.into_inner().envelopes {
            let env = Envelope::decode(&b)
                .map_err(|e| Status::invalid_argument(format!("bad raft envelope: {e}")))?;
            self.inbox
                .send(Input::Message(env))
                .map_err(|_| Status::unavailable("raft loop stopped"))?;
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}
