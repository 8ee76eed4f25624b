//! kill -9 a real node process mid-ingest: every acknowledged event must be
//! there after restart.

use std::time::{Duration, Instant};

use hourcell_proto::v1;
use hourcell_proto::v1::ingest_client::IngestClient;
use hourcell_proto::v1::query_client::QueryClient;
use hourcell_proto::v1::registry_client::RegistryClient;
use hourcell_test_support::procs::{free_port, spawn, Proc};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn spawn_node(config: &std::path::Path) -> Proc {
    spawn(env!("CARGO_BIN_EXE_hourcell"), config)
}

async fn connect(url: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("node did not come up at {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

const PER_BATCH: u64 = 400;

fn batch(n: u64, t: i64) -> v1::IngestRequest {
    v1::IngestRequest {
        events: (0..PER_BATCH)
            .map(|i| v1::Event {
                person: n * 10_000 + i + 1,
                time: Some(v1::event::Time::UnixSeconds(t + (i as i64 % 7) * 3600)),
                lat: Some(30.27 + (i % 13) as f64 * 0.001),
                lng: Some(120.15),
                address: if i % 2 == 0 {
                    "H1".into()
                } else {
                    String::new()
                },
                source: "access".into(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nblock_cache_mb = 16\nlog = \"warn\"\n\n[security]\ninsecure = true\nanonymous_roles = [\"all\"]\nretention_days = 36500\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let t = hourcell_query::time::now() - 10 * 3600;

    let mut child = spawn_node(&cfg);
    let ch = connect(&url).await;
    RegistryClient::new(ch.clone())
        .put_addresses(v1::PutAddressesRequest {
            addresses: vec![v1::Address {
                code: "H1".into(),
                lat: 30.27,
                lng: 120.15,
                kind: "standard".into(),
                area: "A1".into(),
                label: "generated".into(),
            }],
        })
        .await
        .unwrap();

    // Two writers ingest continuously; the node is killed while requests
    // are in flight.
    let acked = std::sync::Arc::new(acks::AckLog::default());
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let ch = ch.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = IngestClient::new(ch);
            for n in 0.. {
                let id = n * 2 + w;
                match c.ingest(batch(id, t)).await {
                    Ok(r) => {
                        assert_eq!(r.into_inner().accepted, PER_BATCH);
                        acked.push(id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < 20 {
        assert!(Instant::now() < deadline, "ingest made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill(); // SIGKILL, then reaped
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.take();
    assert!(acked.len() >= 20);

    let mut child = spawn_node(&cfg);
    let ch = connect(&url).await;
    let mut q = QueryClient::new(ch);
    let mut s = q
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            region: Some(v1::Region {
                kind: Some(v1::region::Kind::Rect(v1::Rect {
                    lat_lo: 30.0,
                    lng_lo: 120.0,
                    lat_hi: 30.5,
                    lng_hi: 120.5,
                })),
            }),
            window: Some(v1::Window {
                start: t - 3600,
                end: t + 10 * 3600,
                as_of: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(m) = s.next().await {
        seen.extend(m.unwrap().persons);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ids ascend, no duplicates"
    );
    let seen: std::collections::HashSet<u64> = seen.into_iter().collect();
    let mut missing = 0;
    for id in &acked {
        for i in 0..PER_BATCH {
            if !seen.contains(&(id * 10_000 + i + 1)) {
                missing += 1;
            }
        }
    }
    child.kill();
    assert_eq!(
        missing,
        0,
        "{missing} acknowledged events lost after kill -9 ({} batches acked)",
        acked.len()
    );
}

/// A tiny shared log of acknowledged batch ids.
mod acks {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct AckLog(Mutex<Vec<u64>>);

    impl AckLog {
        pub fn push(&self, id: u64) {
            self.0.lock().unwrap().push(id);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn take(&self) -> Vec<u64> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}
