//! Reaching node processes over gRPC: channels, health, raft status, the
//! leader, convergence.

use std::time::{Duration, Instant};

use hourcell_proto::v1;
use tonic::transport::Channel;

/// Waits until the node's overall gRPC health status is `want`
/// (1 = SERVING, 2 = NOT_SERVING).
pub async fn wait_health(port: u16, want: i32, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        if let Some(ch) = connect(port).await {
            let got = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            if got.as_ref().is_ok_and(|s| *s == want) {
                return;
            }
        }
        assert!(
            Instant::now() < end,
            "health of :{port} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A channel for queries: on a busy machine (every test's processes share
/// two cores) a query routed over several nodes can take seconds.
pub async fn patient(port: u16) -> Option<Channel> {
    channel(port, Duration::from_secs(20)).await
}

pub async fn connect(port: u16) -> Option<Channel> {
    channel(port, Duration::from_secs(5)).await
}

/// A plaintext channel to a node on 127.0.0.1 whose requests time out
/// after `timeout`.
pub async fn channel(port: u16, timeout: Duration) -> Option<Channel> {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .timeout(timeout)
        .connect()
        .await
        .ok()
}

pub async fn raft_status(port: u16) -> Option<v1::RaftStatus> {
    let ch = connect(port).await?;
    v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .ok()?
        .into_inner()
        .raft
}

pub async fn leader(ports: &[u16], among: &[usize], deadline: Duration) -> usize {
    let end = Instant::now() + deadline;
    loop {
        for &i in among {
            if raft_status(ports[i]).await.is_some_and(|s| s.is_leader) {
                return i;
            }
        }
        assert!(Instant::now() < end, "no leader among {among:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every reachable node has applied the highest commit index
/// and `want` nodes answer.
pub async fn converge(ports: &[u16], want: usize, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let st: Vec<_> = futures::future::join_all(ports.iter().map(|&p| raft_status(p))).await;
        let up: Vec<_> = st.iter().flatten().collect();
        let c = up.iter().map(|s| s.commit).max().unwrap_or(0);
        if up.len() == want && up.iter().all(|s| s.applied == c && s.learners.is_empty()) {
            return;
        }
        assert!(Instant::now() < end, "no convergence: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
