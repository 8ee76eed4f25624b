//! Three real `hourcell node` processes replicating over gRPC on
//! 127.0.0.1: writes through any node, kill -9 of the leader (writes resume
//! through the others within the failover budget), the killed node restarts
//! from its data directory and catches up, and every acknowledged event is
//! then answered by every node.
//!
//! `faults_under_continuous_ingest` keeps writing while it partitions the
//! leader away (through per-link TCP proxies), kills it with -9, restarts
//! all three at once, and wipes a follower's data directory and lets it
//! rejoin by snapshot; a checker then asserts that every acknowledged event
//! is answered by every node and nothing that was never sent appears.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hourcell_proto::v1;
use tonic::transport::Channel;

/// 2026-11-01T00:00:00Z
const T0: i64 = 1_793_491_200;

struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The runtime of a test that drives processes from a plain thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn write_config(dir: &Path, id: usize, ports: &[u16], metrics: u16) -> std::path::PathBuf {
    write_config_tick(dir, id, ports, metrics, 50)
}

fn write_config_tick(
    dir: &Path,
    id: usize,
    ports: &[u16],
    metrics: u16,
    tick_ms: u64,
) -> std::path::PathBuf {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
        .collect();
    let cfg = dir.join(format!("node{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\nblock_cache_mb = 16\nlog = \"warn\"\n\n[security]\ninsecure = true\nanonymous_roles = [\"all\"]\nretention_days = 36500\n\n[rules]\nhourly = false\n\n[cluster]\nnode_id = {id}\ntick_ms = {tick_ms}\npeers = [{}]\n",
            dir.join(format!("node{id}")),
            ports[id - 1],
            peers.join(", ")
        ),
    )
    .unwrap();
    cfg
}

fn spawn(cfg: &Path) -> Proc {
    spawn_args(cfg, &[])
}

/// Starts a node; its log goes (appended, across restarts) to the file
/// beside its config with the extension `log`.
fn spawn_args(cfg: &Path, extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_extension("log"))
        .unwrap();
    Proc(Some(
        Command::new(env!("CARGO_BIN_EXE_hourcell"))
            .args(["node", "--config"])
            .arg(cfg)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

/// Prints the end of every node log of `cfgs` when the test is failing:
/// the processes' side of the story for CI's output.
struct LogsOnFailure<'a>(&'a [std::path::PathBuf]);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for cfg in self.0 {
            let log = cfg.with_extension("log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {} ---", log.display());
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Waits until the node's overall gRPC health status is `want`
/// (1 = SERVING, 2 = NOT_SERVING).
async fn wait_health(port: u16, want: i32, deadline: Duration) {
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

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A channel for queries: on a busy machine (every test's processes share
/// two cores) a query routed over several nodes can take seconds.
async fn patient(port: u16) -> Option<Channel> {
    channel(port, Duration::from_secs(20)).await
}

async fn connect(port: u16) -> Option<Channel> {
    channel(port, Duration::from_secs(5)).await
}

/// A plaintext channel to a node on 127.0.0.1 whose requests time out
/// after `timeout`.
async fn channel(port: u16, timeout: Duration) -> Option<Channel> {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .timeout(timeout)
        .connect()
        .await
        .ok()
}

async fn raft_status(port: u16) -> Option<v1::RaftStatus> {
    let ch = connect(port).await?;
    v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .ok()?
        .into_inner()
        .raft
}

async fn leader(ports: &[u16], among: &[usize], deadline: Duration) -> usize {
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

fn events(first: u64, n: u64, hour: i64) -> Vec<v1::Event> {
    (0..n)
        .map(|i| v1::Event {
            person: first + i,
            time: Some(v1::event::Time::UnixSeconds(T0 + hour * 3600 + 60)),
            lat: Some(30.27 + i as f64 * 1e-4),
            lng: Some(120.15),
            address: String::new(),
            source: "access".into(),
        })
        .collect()
}

/// Ingests through `port`; true once acknowledged.
async fn ingest(port: u16, evs: Vec<v1::Event>) -> bool {
    let Some(ch) = connect(port).await else {
        return false;
    };
    v1::ingest_client::IngestClient::new(ch)
        .ingest(v1::IngestRequest { events: evs })
        .await
        .is_ok_and(|r| r.into_inner().accepted > 0)
}

/// The circle and two days every test writes into.
fn circle_region() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Circle(v1::Circle {
            lat: 30.27,
            lng: 120.15,
            radius_m: 5_000.0,
        })),
    })
}

fn two_days() -> Option<v1::Window> {
    Some(v1::Window {
        from: T0,
        to: T0 + 48 * 3600,
        as_of: Some(T0 + 48 * 3600),
    })
}

/// who-was-at over [`circle_region`] and [`two_days`].
fn who_request(max_staleness_ms: Option<u32>) -> v1::WhoWasAtRequest {
    v1::WhoWasAtRequest {
        purpose: "generated test".into(),
        case_ref: "T-1".into(),
        max_staleness_ms,
        region: circle_region(),
        window: two_days(),
    }
}

async fn persons_on(port: u16) -> Vec<u64> {
    persons_on_stale(port, None).await.0
}

/// who-was-at through `port`, optionally accepting a bounded-stale
/// follower read; returns the persons and the staleness the node reported.
async fn persons_on_stale(port: u16, max_staleness_ms: Option<u32>) -> (Vec<u64>, u64) {
    let ch = patient(port).await.expect("node reachable");
    let mut s = v1::query_client::QueryClient::new(ch)
        .who_was_at(who_request(max_staleness_ms))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let mut stale = 0;
    while let Some(m) = s.message().await.unwrap() {
        stale = stale.max(m.staleness_ms);
        out.extend(m.persons);
    }
    (out, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_replicate_and_survive_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(6);
    let (ports, metrics) = all_ports.split_at(3);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config(dir.path(), i, ports, metrics[i - 1]))
        .collect();
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let all = [0usize, 1, 2];
    let first = leader(&ports, &all, Duration::from_secs(20)).await;

    // Writes through every node.
    let mut acked: Vec<u64> = Vec::new();
    for (k, i) in [0usize, 1, 2].into_iter().enumerate() {
        let base = 1_000 + k as u64 * 100;
        assert!(
            ingest(ports[i], events(base, 20, 1)).await,
            "write via node {}",
            i + 1
        );
        acked.extend(base..base + 20);
    }

    // Linearizable reads: a write acknowledged by one node is seen at once
    // by a read through any other node (ReadIndex, no waiting).
    for (k, (w, r)) in [(0usize, 1usize), (1, 2), (2, 0)].into_iter().enumerate() {
        let base = 3_000 + k as u64 * 100;
        assert!(ingest(ports[w], events(base, 5, 1)).await);
        acked.extend(base..base + 5);
        let seen = persons_on(ports[r]).await;
        assert!(
            seen.contains(&(base + 4)),
            "write via node {} not seen via node {}",
            w + 1,
            r + 1
        );
    }

    // An address put through one node is known at once to validation on
    // another (writes validate behind a read barrier too).
    let ch = connect(ports[0]).await.unwrap();
    let put = v1::registry_client::RegistryClient::new(ch)
        .put_addresses(v1::PutAddressesRequest {
            addresses: vec![v1::Address {
                code: "NEW-1".into(),
                lat: 30.2705,
                lng: 120.1505,
                kind: "standard".into(),
                area: "A9".into(),
                label: "generated".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.accepted, 1);
    let mut e = events(4_000, 1, 1);
    e[0].lat = None;
    e[0].lng = None;
    e[0].address = "NEW-1".into();
    let ch = connect(ports[2]).await.unwrap();
    let r = v1::ingest_client::IngestClient::new(ch)
        .ingest(v1::IngestRequest { events: e })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.rejected.len()), (1, 0), "{r:?}");
    acked.push(4_000);

    // kill -9 the leader; the others elect a new one and take writes.
    procs[first].kill();
    let killed = Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    let mut resumed = None;
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if ingest(ports[rest[0]], events(5_000, 20, 2)).await {
            resumed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = resumed.expect("writes resume after the leader is killed");
    acked.extend(5_000..5_020);
    // The product promises 3 s on the default 100 ms tick; this cluster
    // ticks every 50 ms, so it must do at least as well.
    assert!(
        resumed < Duration::from_secs(3),
        "writes resumed after {resumed:?}"
    );
    assert!(ingest(ports[rest[1]], events(6_000, 20, 3)).await);
    acked.extend(6_000..6_020);

    // A lone survivor cannot serve: its health turns NOT_SERVING within a
    // few seconds, and back to SERVING once a quorum returns.
    procs[rest[1]].kill();
    let lone = rest[0];
    wait_health(ports[lone], 2, Duration::from_secs(15)).await; // NOT_SERVING
    procs[rest[1]] = spawn(&cfgs[rest[1]]);
    wait_health(ports[lone], 1, Duration::from_secs(15)).await; // SERVING

    // The killed node restarts from its data directory and catches up.
    procs[first] = spawn(&cfgs[first]);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let st: Vec<_> = futures::future::join_all(ports.iter().map(|&p| raft_status(p))).await;
        let applied: Vec<Option<u64>> = st.iter().map(|s| s.as_ref().map(|s| s.applied)).collect();
        let max_commit = st.iter().flatten().map(|s| s.commit).max().unwrap_or(0);
        if applied.iter().all(|a| *a == Some(max_commit)) {
            break;
        }
        assert!(Instant::now() < end, "replicas did not converge: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator's view: every node reachable, one leader, no lag.
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "status", "--format", "json", "--server"])
        .arg(format!("http://127.0.0.1:{}", ports[rest[0]]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{v}"
    );
    assert!(nodes.iter().all(|n| n["lag"] == 0), "{v}");

    // Every node serves Prometheus metrics with its raft role.
    let mut leaders = 0;
    for &m in metrics {
        let body = http_get(m, "/metrics");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("hourcell_proposals_total"), "{body}");
        assert!(body.contains("hourcell_commit_seconds_bucket"), "{body}");
        assert!(
            body.contains("hourcell_raft_apply_lag{group=\"1\"}"),
            "{body}"
        );
        assert!(
            body.contains("hourcell_raft_members{group=\"1\",kind=\"voter\"} 3"),
            "{body}"
        );
        assert!(
            body.contains("hourcell_raft_log_entries{group=\"1\"}"),
            "{body}"
        );
        assert!(body.contains("hourcell_audit_records "), "{body}");
        leaders += body
            .matches("hourcell_raft_is_leader{group=\"1\"} 1")
            .count();
    }
    assert_eq!(leaders, 1);
    assert!(http_get(metrics[0], "/other").starts_with("HTTP/1.1 404"));

    acked.sort_unstable();
    // Bounded-staleness reads from a follower skip the ReadIndex round
    // trip and say how stale they may be; default reads say 0.
    let follower = all
        .iter()
        .copied()
        .find(|&i| futures::executor::block_on(raft_status(ports[i])).is_some_and(|s| !s.is_leader))
        .unwrap();
    let (got, stale) = persons_on_stale(ports[follower], Some(10_000)).await;
    assert_eq!(got, acked);
    assert!(stale <= 10_000, "staleness {stale} ms");
    assert_eq!(persons_on_stale(ports[follower], None).await.1, 0);
    for (i, &p) in ports.iter().enumerate() {
        let got = persons_on(p).await;
        assert_eq!(got, acked, "node {} answers differently", i + 1);
    }
}

/// Failover time on the default settings (100 ms tick): kill -9 the leader,
/// time until a write through another node is acknowledged, restart, repeat.
/// A benchmark, not run by default (it takes about a minute):
/// `HOURCELL_FAILOVER_TRIALS=20 cargo test --workspace --all-targets -- --ignored failover`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; set HOURCELL_FAILOVER_TRIALS and run with --ignored"]
async fn failover_benchmark() {
    let trials: usize = std::env::var("HOURCELL_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(6);
    let (ports, metrics) = all_ports.split_at(3);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config_tick(dir.path(), i, ports, metrics[i - 1], 100))
        .collect();
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let all = [0usize, 1, 2];
    let mut times = Vec::new();
    for t in 0..trials {
        let l = leader(ports, &all, Duration::from_secs(20)).await;
        assert!(ingest(ports[l], events(100_000 + t as u64 * 10, 5, 4)).await);
        procs[l].kill();
        let killed = Instant::now();
        let other = all.iter().copied().find(|&i| i != l).unwrap();
        loop {
            if ingest(ports[other], events(200_000 + t as u64 * 10, 5, 5)).await {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
        }
        times.push(killed.elapsed());
        procs[l] = spawn(&cfgs[l]);
        // Let the restarted node catch up before the next trial.
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let st: Vec<_> = futures::future::join_all(ports.iter().map(|&p| raft_status(p))).await;
            let c = st.iter().flatten().map(|s| s.commit).max().unwrap_or(0);
            if st
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.applied == c))
            {
                break;
            }
            assert!(Instant::now() < end, "no catch-up: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = *times.last().unwrap();
    println!(
        "failover over {trials} trials (kill -9 leader -> write acknowledged via another node, 100 ms tick): p50 {:.2} s, max {:.2} s",
        p50.as_secs_f64(),
        max.as_secs_f64()
    );
    assert!(max < Duration::from_secs(3), "max failover {max:?}");
}

/// A one-way TCP link from a node to a peer (raft traffic, and snapshot
/// streams), which a test can cut: open connections are shut down and new
/// ones closed at once, like a network partition.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    fn to(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for a in l.incoming() {
                let Ok(a) = a else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = a.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(b) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = a.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                let _ = (a.set_nodelay(true), b.set_nodelay(true));
                {
                    let mut v = cs.lock().unwrap();
                    v.push(a.try_clone().unwrap());
                    v.push(b.try_clone().unwrap());
                }
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Link { port, cut, conns }
    }

    fn set_cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Three node configs whose peers reach each other only through [`Link`]s,
/// so a test can partition them.
struct Linked {
    ports: Vec<u16>,
    /// `links[i][j]`: node i+1's way to node j+1.
    links: Vec<Vec<Option<Link>>>,
    cfgs: Vec<std::path::PathBuf>,
}

impl Linked {
    fn new(dir: &Path) -> Linked {
        let all_ports = free_ports(6);
        let (ports, metrics) = all_ports.split_at(3);
        let links: Vec<Vec<Option<Link>>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| (i != j).then(|| Link::to(ports[j])))
                    .collect()
            })
            .collect();
        let cfgs = (1..=3)
            .map(|id| {
                let via: Vec<u16> = (0..3)
                    .map(|j| links[id - 1][j].as_ref().map_or(ports[j], |l| l.port))
                    .collect();
                let cfg = write_config(dir, id, &via, metrics[id - 1]);
                // The node listens on its own port; peers are reached
                // through the links.
                let text = std::fs::read_to_string(&cfg).unwrap().replacen(
                    &format!("listen = \"127.0.0.1:{}\"", via[id - 1]),
                    &format!("listen = \"127.0.0.1:{}\"", ports[id - 1]),
                    1,
                );
                std::fs::write(&cfg, text).unwrap();
                cfg
            })
            .collect();
        Linked {
            ports: ports.to_vec(),
            links,
            cfgs,
        }
    }

    /// Cuts (or restores) every link to and from node index `i`.
    fn cut(&self, i: usize, on: bool) {
        for j in 0..3 {
            if let Some(x) = &self.links[i][j] {
                x.set_cut(on);
            }
            if let Some(x) = &self.links[j][i] {
                x.set_cut(on);
            }
        }
    }
}

/// What the writer sent and what was acknowledged.
#[derive(Default)]
struct Ledger {
    attempted: std::collections::BTreeSet<u64>,
    acked: std::collections::BTreeSet<u64>,
    failures: u64,
}

/// Waits until every reachable node has applied the highest commit index
/// and `want` nodes answer.
async fn converge(ports: &[u16], want: usize, deadline: Duration) {
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

/// Makes a node config sharded: two cell shards and two person shards.
fn shard(cfg: &Path) {
    shard_as(cfg, 2, 2)
}

/// Makes a node config sharded with `cells` cell and `persons` person shards.
fn shard_as(cfg: &Path, cells: u32, persons: u32) {
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        format!("{text}cell_shards = {cells}\nperson_shards = {persons}\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_continuous_ingest() {
    faults_body(false).await
}

/// The same faults on a sharded cluster: five raft groups per node, whose
/// leaders move independently; a write is acknowledged only when all its
/// parts are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_continuous_ingest_sharded() {
    faults_body(true).await
}

async fn faults_body(sharded: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let linked = Linked::new(dir.path());
    if sharded {
        linked.cfgs.iter().for_each(|c| shard(c));
    }
    let (ports, cfgs) = (&linked.ports[..], &linked.cfgs);
    let _logs = LogsOnFailure(cfgs);
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let all = [0usize, 1, 2];
    let _ = leader(ports, &all, Duration::from_secs(20)).await;

    // One writer, round robin over the nodes, 20 new persons per batch,
    // each request bounded to 3 s (a timed-out write may still commit:
    // it counts as attempted, not acknowledged). Like any client with
    // more than one address, it passes over a node for 2 s after a write
    // through it failed, so an unreachable node costs one timeout per
    // 2 s rather than one in three writes.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ledger, stop, ports) = (ledger.clone(), stop.clone(), ports.to_vec());
        tokio::spawn(async move {
            let mut next = 1_000_000u64;
            let mut k = 0usize;
            let mut shunned = [Instant::now(); 3];
            while !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                let to = (0..3)
                    .map(|d| (k + d) % 3)
                    .find(|&i| shunned[i] <= now)
                    .unwrap_or_else(|| (0..3).min_by_key(|&i| shunned[i]).unwrap());
                let first = next;
                next += 20;
                ledger.lock().unwrap().attempted.extend(first..first + 20);
                let ok = tokio::time::timeout(
                    Duration::from_secs(3),
                    ingest(ports[to], events(first, 20, (k % 40) as i64)),
                )
                .await
                .unwrap_or(false);
                {
                    let mut l = ledger.lock().unwrap();
                    if ok {
                        l.acked.extend(first..first + 20);
                    } else {
                        l.failures += 1;
                        shunned[to] = Instant::now() + Duration::from_secs(2);
                    }
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acked_now = |l: &Arc<Mutex<Ledger>>| l.lock().unwrap().acked.len();
    async fn progress(l: &Arc<Mutex<Ledger>>, from: usize, what: &str) {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(15);
        while l.lock().unwrap().acked.len() < from + 100 {
            let failures = l.lock().unwrap().failures;
            assert!(
                Instant::now() < end,
                "writes did not resume after {what} ({failures} failed writes so far)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("writes resumed after {what} in {:?}", t0.elapsed());
    }
    progress(&ledger, 0, "start").await;

    // 1. Partition the leader away from the other two.
    let l = leader(ports, &all, Duration::from_secs(20)).await;
    linked.cut(l, true);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    let new = leader(ports, &rest, Duration::from_secs(20)).await;
    assert_ne!(new, l);
    progress(
        &ledger,
        acked_now(&ledger),
        "the leader was partitioned away",
    )
    .await;
    for i in all {
        linked.cut(i, false);
    }
    converge(ports, 3, Duration::from_secs(20)).await;

    // 2. kill -9 the leader, then bring it back.
    let l = leader(ports, &all, Duration::from_secs(20)).await;
    procs[l].kill();
    progress(&ledger, acked_now(&ledger), "the leader was killed").await;
    procs[l] = spawn(&cfgs[l]);
    converge(ports, 3, Duration::from_secs(20)).await;

    // 3. Restart all three at once.
    for p in &mut procs {
        p.kill();
    }
    for (i, c) in cfgs.iter().enumerate() {
        procs[i] = spawn(c);
    }
    let _ = leader(ports, &all, Duration::from_secs(20)).await;
    progress(&ledger, acked_now(&ledger), "all three restarted").await;

    // 4. kill -9 a follower, wipe its data directory, and start it with
    // --join: it is re-added, catches up from a snapshot and votes again.
    let l = leader(ports, &all, Duration::from_secs(20)).await;
    let f = all.iter().copied().find(|&i| i != l).unwrap();
    procs[f].kill();
    std::fs::remove_dir_all(dir.path().join(format!("node{}", f + 1))).unwrap();
    procs[f] = spawn_args(&cfgs[f], &["--join"]);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = raft_status(ports[f]).await;
        if s.as_ref().is_some_and(|s| {
            s.voters.contains(&(f as u64 + 1)) && s.learners.is_empty() && s.first_index > 6
        }) {
            break;
        }
        assert!(Instant::now() < end, "wiped node did not rejoin: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(&ledger, acked_now(&ledger), "a follower was wiped").await;

    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    converge(ports, 3, Duration::from_secs(30)).await;
    if sharded {
        // The wiped node was taken out of every shard and placed back:
        // wait until each shard has its three replicas voting again.
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let v = status_json(ports[0]);
            if placed_and_settled(&v, &[], 3) {
                break;
            }
            assert!(
                Instant::now() < end,
                "shards never settled after the faults: {v}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // The checker: every acknowledged event is answered by every node, and
    // nothing appears that was never sent.
    let l = ledger.lock().unwrap();
    assert!(
        l.acked.len() >= 500,
        "only {} persons acknowledged",
        l.acked.len()
    );
    for (i, &p) in ports.iter().enumerate() {
        let got: std::collections::BTreeSet<u64> = persons_on(p).await.into_iter().collect();
        let missing: Vec<_> = l.acked.difference(&got).take(5).collect();
        assert!(
            missing.is_empty(),
            "node {} lost acknowledged persons {missing:?}",
            i + 1
        );
        let phantom: Vec<_> = got.difference(&l.attempted).take(5).collect();
        assert!(
            phantom.is_empty(),
            "node {} answers persons never sent {phantom:?}",
            i + 1
        );
    }
    println!(
        "faults: {} persons acknowledged, {} requests failed or timed out during faults",
        l.acked.len(),
        l.failures
    );
    drop(l);

    // A person-level answer needs its audit record committed first. Leave
    // one follower alone: it may still answer a bounded-stale aggregate
    // from its own state, but a who-was-at cannot be audited without a
    // quorum, so it returns no data at all.
    let ldr = leader(ports, &all, Duration::from_secs(20)).await;
    let lone = all.iter().copied().find(|&i| i != ldr).unwrap();
    for i in all {
        if i != lone {
            procs[i].kill();
        }
    }
    let ch = connect(ports[lone]).await.unwrap();
    let occ = v1::query_client::QueryClient::new(ch)
        .occupancy(v1::OccupancyRequest {
            max_staleness_ms: Some(600_000),
            region: circle_region(),
            window: two_days(),
        })
        .await
        .expect("a bounded-stale aggregate is served without a quorum")
        .into_inner();
    assert!(occ.distinct > 0);
    // The node tries to commit the audit record for its propose timeout
    // (10 s) before giving up; wait longer than that.
    let patient = Channel::from_shared(format!("http://127.0.0.1:{}", ports[lone]))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let r = v1::query_client::QueryClient::new(patient)
        .who_was_at(who_request(Some(600_000)))
        .await;
    let err = match r {
        Ok(_) => {
            panic!("who-was-at returned data although its audit record could not be committed")
        }
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("audit"), "{err:?}");
}

/// Three nodes with TLS from `hourcell certs init`: raft runs over mutual
/// TLS (each node presents its node-<id> certificate), a write through one
/// node is read through another by the admin's client certificate, and
/// `hourcell cluster status` works over TLS with HOURCELL_CA/CERT/KEY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tls_nodes_replicate_over_mutual_tls() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["certs", "init"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all_ports = free_ports(6);
    let (ports, metrics) = all_ports.split_at(3);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| {
            let cfg = write_config(dir.path(), i, ports, metrics[i - 1]);
            let text = std::fs::read_to_string(&cfg).unwrap().replace(
                "[security]\ninsecure = true\nanonymous_roles = [\"all\"]\nretention_days = 36500\n",
                &format!(
                    "[security]\nretention_days = 36500\ntoken_key_file = {:?}\n[security.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[security.cert_roles]\nadmin = [\"all\"]\n",
                    certs.join("token.key"),
                    certs.join(format!("node-{i}.pem")),
                    certs.join(format!("node-{i}.key")),
                    certs.join("ca.pem"),
                ),
            );
            assert!(text.contains("[security.tls]"));
            std::fs::write(&cfg, text).unwrap();
            cfg
        })
        .collect();
    let _procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
    let connect_tls = |port: u16| {
        let tls = tls.clone();
        async move {
            Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .ok()
        }
    };
    // A leader is elected over mutual TLS.
    let end = Instant::now() + Duration::from_secs(30);
    let leader_port = loop {
        let mut found = None;
        for &p in ports {
            if let Some(ch) = connect_tls(p).await {
                if let Ok(r) = v1::admin_client::AdminClient::new(ch)
                    .status(v1::StatusRequest::default())
                    .await
                {
                    if r.into_inner().raft.is_some_and(|r| r.is_leader) {
                        found = Some(p);
                    }
                }
            }
        }
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < end, "no leader over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let other = *ports.iter().find(|&&p| p != leader_port).unwrap();
    let r = v1::ingest_client::IngestClient::new(connect_tls(other).await.unwrap())
        .ingest(v1::IngestRequest {
            events: events(70_000, 10, 1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 10);
    let third = *ports
        .iter()
        .find(|&&p| p != leader_port && p != other)
        .unwrap();
    let mut s = v1::query_client::QueryClient::new(connect_tls(third).await.unwrap())
        .who_was_at(who_request(None))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.extend(m.persons);
    }
    assert_eq!(got, (70_000..70_010).collect::<Vec<u64>>());
    // Plaintext is refused by a TLS node.
    assert!(
        ingest(third, events(80_000, 1, 1)).await.eq(&false),
        "a plaintext client got a write in"
    );
    // The CLI speaks TLS from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "status", "--format", "json", "--server"])
        .arg(format!("127.0.0.1:{third}"))
        .env("HOURCELL_CA", certs.join("ca.pem"))
        .env("HOURCELL_CERT", certs.join("admin.pem"))
        .env("HOURCELL_KEY", certs.join("admin.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == "leader")
            .count(),
        1,
        "{v}"
    );
}

#[path = "../../tests/common/bodies.rs"]
mod bodies;

/// The shared test body over three real processes and their links.
struct ProcCluster {
    rt: tokio::runtime::Runtime,
    linked: Linked,
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl bodies::TestCluster for ProcCluster {
    fn ids(&self) -> Vec<u64> {
        vec![1, 2, 3]
    }

    fn leader(&mut self, among: &[u64], deadline: Duration) -> u64 {
        let idx: Vec<usize> = among.iter().map(|&i| i as usize - 1).collect();
        self.rt.block_on(leader(&self.linked.ports, &idx, deadline)) as u64 + 1
    }

    fn write(&mut self, via: u64, first: u64, n: u64, hour: i64, deadline: Duration) -> bool {
        let port = self.linked.ports[via as usize - 1];
        self.rt.block_on(async {
            let end = Instant::now() + deadline;
            while Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                if let Ok(true) =
                    tokio::time::timeout(left, ingest(port, events(first, n, hour))).await
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    }

    fn sees(&mut self, via: u64, persons: &[u64]) -> bool {
        let port = self.linked.ports[via as usize - 1];
        self.rt.block_on(async {
            let Some(ch) = connect(port).await else {
                return false;
            };
            let r = match v1::query_client::QueryClient::new(ch)
                .who_was_at(who_request(None))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("who-was-at via node {via} failed: {e}");
                    return false;
                }
            };
            let mut s = r.into_inner();
            let mut got = std::collections::HashSet::new();
            while let Ok(Some(m)) = s.message().await {
                got.extend(m.persons);
            }
            persons.iter().all(|p| got.contains(p))
        })
    }

    fn isolate(&mut self, id: u64) {
        self.linked.cut(id as usize - 1, true);
    }

    fn heal(&mut self) {
        for i in 0..3 {
            self.linked.cut(i, false);
        }
    }

    fn kill(&mut self, id: u64) {
        self.procs[id as usize - 1].kill();
    }

    fn restart(&mut self, id: u64) {
        self.procs[id as usize - 1] = spawn(&self.linked.cfgs[id as usize - 1]);
    }
}

/// The same body as `raft_sim::the_shared_body_over_the_simulated_network`,
/// over three `hourcell node` processes whose links a proxy can cut.
#[test]
fn the_shared_body_over_real_processes() {
    let mut c = ProcCluster::start(None);
    bodies::acknowledged_writes_survive_failures(&mut c);
}

impl ProcCluster {
    /// Three linked processes, sharded as `(cells, persons)` if given.
    fn start(shards: Option<(u32, u32)>) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let linked = Linked::new(dir.path());
        if let Some((cells, persons)) = shards {
            linked.cfgs.iter().for_each(|c| shard_as(c, cells, persons));
        }
        let procs = linked.cfgs.iter().map(|c| spawn(c)).collect();
        ProcCluster {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            linked,
            procs,
            _dir: dir,
        }
    }
}

/// The same body over a sharded cluster: three cell shards and two person
/// shards beside the metadata group, six raft groups on each of the three
/// processes, whose leaders land on different nodes. A write is
/// acknowledged only once every shard it touches has committed it.
#[test]
fn the_shared_body_over_a_sharded_cluster() {
    let mut c = ProcCluster::start(Some((3, 2)));
    bodies::acknowledged_writes_survive_failures(&mut c);
    // Every node hosts every shard, and `cluster status` lists them.
    let port = c.linked.ports[0];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "status", "--format", "json", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shards = v["shards"].as_array().unwrap();
    let named = |prefix: &str| {
        shards
            .iter()
            .filter(|s| s["shard"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    assert_eq!(named("persons "), 2, "{v}");
    // Three cell shards for each week: the written one, and this week and
    // the next, created ahead of ingest by the metadata group's leader.
    let week = |t: i64| {
        let w = hourcell_storage::shard::week_of_hour(t.div_euclid(3600));
        let monday = hourcell_storage::shard::week_start_hour(w) * 3600;
        format!(
            "week of {}",
            &hourcell_query::time::format_time(monday)[..10]
        )
    };
    let now = hourcell_query::time::now();
    for w in [week(now), week(now + 7 * 86_400)] {
        let n = shards
            .iter()
            .filter(|s| s["shard"].as_str().unwrap().ends_with(&w))
            .count();
        assert_eq!(n, 3, "{w}: {v}");
    }
    assert_eq!(named("cells ") % 3, 0, "{v}");
    for sh in shards {
        assert_eq!(sh["voters"].as_array().unwrap().len(), 3, "{v}");
        assert_ne!(sh["leader"], 0, "{v}");
    }
}

/// Membership through the CLI: a fourth node started with `--join` becomes
/// a voter; `hourcell cluster remove-node` takes it out and `add-node`
/// puts it back; every node then answers every acknowledged write.
#[test]
fn nodes_join_leave_and_return_through_the_cli() {
    join_body(false)
}

/// The same on a sharded cluster: the node joins and leaves the metadata
/// group, every shard stays on the three nodes the map places it on, and
/// writes and reads through the new node are routed to them.
#[test]
fn nodes_join_leave_and_return_through_the_cli_sharded() {
    join_body(true)
}

fn join_body(sharded: bool) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(8);
    let (ports, metrics) = all_ports.split_at(4);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config(dir.path(), i, &ports[..3], metrics[i - 1]))
        .collect();
    if sharded {
        cfgs.iter().for_each(|c| shard(c));
    }
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let _ = rt.block_on(leader(&ports[..3], &[0, 1, 2], Duration::from_secs(20)));
    assert!(rt.block_on(ingest(ports[0], events(800_000, 10, 1))));
    let status = status_json;
    let member_of = |v: &serde_json::Value, id: u64| -> String {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map_or("absent".to_string(), |n| {
                format!("{}/{}", n["member"].as_str().unwrap(), n["lag"])
            })
    };
    // In a sharded cluster, every data shard must be where the shard map
    // places it (three of the nodes), settled; a removed node in none.
    let shards_agree = |v: &serde_json::Value, id: u64, want: &str| -> bool {
        let Some(shards) = v["shards"].as_array() else {
            return true;
        };
        shards.iter().all(|sh| {
            let has = |k: &str| {
                sh[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x.as_u64() == Some(id))
            };
            let settled = ids_of(&sh["voters"]) == ids_of(&sh["replicas"])
                && sh["learners"].as_array().unwrap().is_empty()
                && sh["max_lag"] == 0;
            match want {
                "voter/0" => settled,
                _ => !has("voters") && !has("learners") && !has("replicas"),
            }
        })
    };
    let wait_member = |id: u64, want: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = status(ports[0]);
            // A removed node stops hearing the group, so its lag is
            // whatever it was when it was cut off.
            let m = member_of(&v, id);
            let member = m == want || (want.starts_with("removed/") && m.starts_with("removed/"));
            if member && shards_agree(&v, id, want) {
                return;
            }
            assert!(Instant::now() < end, "node {id} never became {want}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Node 4 knows the cluster from its config and asks to join.
    let cfg4 = write_config(dir.path(), 4, ports, metrics[3]);
    if sharded {
        shard(&cfg4);
        // Two person shards, and cell shards for each week written or
        // created ahead.
        assert!(status(ports[0])["shards"].as_array().unwrap().len() >= 4);
    }
    procs.push(spawn_args(&cfg4, &["--join"]));
    wait_member(4, "voter/0");
    if sharded {
        // Rebalancing gives the new node its share of the replicas, one
        // move at a time, until no node holds two more than another.
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let v = status(ports[0]);
            let shards = v["shards"].as_array().unwrap();
            let held: Vec<usize> = (1..=4u64)
                .map(|n| {
                    shards
                        .iter()
                        .filter(|sh| ids_of(&sh["voters"]).contains(&n))
                        .count()
                })
                .collect();
            let (lo, hi) = (held.iter().min().unwrap(), held.iter().max().unwrap());
            if *lo > 0 && hi - lo <= 1 && shards_agree(&v, 4, "voter/0") {
                break;
            }
            assert!(
                Instant::now() < end,
                "replicas never spread to node 4: {held:?} {v}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(rt.block_on(ingest(ports[3], events(810_000, 10, 1))));

    let cli = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let s1 = format!("127.0.0.1:{}", ports[0]);
    let out = cli(&["cluster", "remove-node", "--id", "4", "--server", &s1]);
    assert!(
        out.contains("node 4 removed") && out.contains("voters: 1, 2, 3"),
        "{out}"
    );
    wait_member(4, "removed/0");
    // Adding it again without --replace while it is a member is refused;
    // after the removal it is accepted and the node catches up.
    let addr4 = format!("127.0.0.1:{}", ports[3]);
    let s2 = format!("127.0.0.1:{}", ports[1]);
    let out = cli(&[
        "cluster", "add-node", "--id", "4", "--addr", &addr4, "--server", &s2,
    ]);
    assert!(out.contains("learner"), "{out}");
    wait_member(4, "voter/0");
    let bad = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args([
            "cluster", "add-node", "--id", "4", "--addr", &addr4, "--server", &s2,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("already a member"));
    assert!(rt.block_on(ingest(ports[1], events(820_000, 10, 1))));
    let want: Vec<u64> = (800_000..800_010)
        .chain(810_000..810_010)
        .chain(820_000..820_010)
        .collect();
    for &p in ports {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let got = rt.block_on(persons_on(p));
            if want.iter().all(|w| got.contains(w)) {
                break;
            }
            assert!(Instant::now() < end, "node on {p} misses writes: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `hourcell cluster status --format json` through `port`.
fn status_json(port: u16) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "status", "--format", "json", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether every data shard's voters are exactly the nodes the shard map
/// places it on (three, none of `absent`), with no learners and no lag.
fn placed_and_settled(v: &serde_json::Value, absent: &[u64], min_shards: usize) -> bool {
    let Some(shards) = v["shards"].as_array() else {
        return false;
    };
    shards.len() >= min_shards
        && shards.iter().all(|sh| {
            let voters = ids_of(&sh["voters"]);
            let replicas = ids_of(&sh["replicas"]);
            voters == replicas
                && voters.len() == 3
                && !voters.iter().any(|n| absent.contains(n))
                && sh["learners"].as_array().unwrap().is_empty()
                && sh["max_lag"] == 0
        })
}

/// where-was for `person` over [`two_days`] through `port`: the hours with
/// places.
async fn hours_of(port: u16, person: u64) -> Option<usize> {
    let ch = patient(port).await?;
    let r = v1::query_client::QueryClient::new(ch)
        .where_was(v1::WhereWasRequest {
            person,
            window: two_days(),
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
        })
        .await
        .ok()?
        .into_inner();
    Some(r.hours.len())
}

/// Five nodes, three replicas per shard: each shard's raft group lives on
/// three nodes only, so most nodes hold only part of the data. Any node
/// still answers every query (routing reads of shards it does not hold)
/// and accepts any write (routing the parts); after a node is removed, its
/// replicas move to the others and nothing is lost.
#[test]
fn five_nodes_place_each_shard_on_three_and_route_the_rest() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(10);
    let (ports, metrics) = all_ports.split_at(5);
    let cfgs: Vec<_> = (1..=5)
        .map(|i| write_config(dir.path(), i, ports, metrics[i - 1]))
        .collect();
    cfgs.iter().for_each(|c| shard_as(c, 3, 2));
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let _ = rt.block_on(leader(ports, &[0, 1, 2, 3, 4], Duration::from_secs(30)));
    // Writes through every node, each routed to the shards' nodes.
    let mut want: Vec<u64> = Vec::new();
    for (i, &p) in ports.iter().enumerate() {
        let first = 900_000 + i as u64 * 100;
        let end = Instant::now() + Duration::from_secs(30);
        while !rt.block_on(ingest(p, events(first, 20, 1 + i as i64))) {
            assert!(Instant::now() < end, "node {} never took a write", i + 1);
            std::thread::sleep(Duration::from_millis(200));
        }
        want.extend(first..first + 20);
    }
    // Two person shards and three cell shards per week, each on three of
    // the five nodes.
    let end = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = status_json(ports[0]);
        if placed_and_settled(&v, &[], 5) {
            break v;
        }
        assert!(
            Instant::now() < end,
            "shards never settled on three nodes: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let shards = v["shards"].as_array().unwrap();
    for n in 1..=5u64 {
        let held = shards
            .iter()
            .filter(|sh| ids_of(&sh["voters"]).contains(&n))
            .count();
        assert!(
            held < shards.len(),
            "node {n} holds every shard; placement did not spread them: {v}"
        );
    }
    // A node that holds no replica of a shard refuses a read routed to it
    // by an old map, saying so (the router then refreshes and routes
    // again); a node that holds one serves it.
    let sh = shards
        .iter()
        .find(|sh| !ids_of(&sh["voters"]).contains(&1))
        .unwrap();
    let group = sh["group"].as_u64().unwrap();
    let read = |port: u16| {
        rt.block_on(async {
            let ch = connect(port).await.unwrap();
            v1::shard_client::ShardClient::new(ch)
                .read(v1::ShardReadRequest {
                    map_version: 1,
                    group,
                    barrier: true,
                    op: hourcell_cluster::route::ReadOp::HourSlices { from: 0, to: 1 }.encode(),
                })
                .await
        })
    };
    let err = read(ports[0]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("stale shard map"), "{err:?}");
    let holder = ids_of(&sh["voters"])[0] as usize;
    assert!(read(ports[holder - 1]).is_ok());
    // Every node answers for all of it, linearizably, right after the
    // writes were acknowledged.
    for &p in ports.iter() {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p}");
        // A bounded-staleness read routes too; its routed parts are read
        // with a barrier, so they are never staler than this node.
        let mut got = rt.block_on(persons_on_stale(p, Some(60_000))).0;
        got.sort_unstable();
        assert_eq!(got, want, "bounded-stale who-was-at through :{p}");
        for &person in [want[0], want[want.len() - 1]].iter() {
            assert_eq!(
                rt.block_on(hours_of(p, person)),
                Some(1),
                "where-was {person} via :{p}"
            );
        }
    }
    // no-activity-since walks the person shards' hour slices backwards,
    // routed where a node holds none: every node gives the same answer.
    // Registered: the persons active only at hours 1 and 2, those active
    // at hour 5, and two never seen; inactive since hour 3: the first and
    // the last two.
    rt.block_on(async {
        let ch = connect(ports[0]).await.unwrap();
        v1::registry_client::RegistryClient::new(ch.clone())
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
        let registered: Vec<u64> = want[..40]
            .iter()
            .chain(&want[80..])
            .copied()
            .chain([777_000, 777_001])
            .collect();
        v1::registry_client::RegistryClient::new(ch)
            .put_registrations(v1::PutRegistrationsRequest {
                registrations: registered
                    .iter()
                    .map(|&person| v1::Registration {
                        person,
                        address: "H1".into(),
                        kind: "permanent".into(),
                        valid_from: T0 - 86_400,
                        valid_until: None,
                    })
                    .collect(),
            })
            .await
            .unwrap();
    });
    let mut inactive_want: Vec<u64> = want[..40].to_vec();
    inactive_want.extend([777_000, 777_001]);
    inactive_want.sort_unstable();
    for &p in ports.iter() {
        let got = rt.block_on(async {
            let ch = patient(p).await.unwrap();
            let mut s = v1::query_client::QueryClient::new(ch)
                .no_activity_since(v1::NoActivitySinceRequest {
                    since: T0 + 3 * 3600,
                    as_of: Some(T0 + 48 * 3600),
                    purpose: "generated test".into(),
                    case_ref: "T-1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                out.extend(m.persons.into_iter().map(|x| x.person));
            }
            out.sort_unstable();
            out
        });
        assert_eq!(got, inactive_want, "no-activity-since through :{p}");
    }
    // Every node read some shards through others, and says so.
    for (i, &m) in metrics.iter().enumerate() {
        let body = http_get(m, "/metrics");
        let routed: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("hourcell_routed_reads_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(routed > 0, "node {} routed no read: {body}", i + 1);
    }
    // Remove node 5: its replicas move to the other four, then it leaves
    // every group.
    let s1 = format!("127.0.0.1:{}", ports[0]);
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "remove-node", "--id", "5", "--server", &s1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Decommissioned: stopped at once, so its replicas are rebuilt from
    // the others.
    procs[4].kill();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = status_json(ports[0]);
        if placed_and_settled(&v, &[5], 5) {
            break;
        }
        assert!(Instant::now() < end, "node 5's replicas never moved: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(rt.block_on(ingest(ports[3], events(990_000, 20, 30))));
    want.extend(990_000..990_020);
    want.sort_unstable();
    for &p in &ports[..4] {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p} after node 5 left");
    }
    // kill -9 node 4 without removing it: every shard keeps two of its
    // three replicas, so writes and reads through the others go on, routed
    // past the dead node.
    procs[3].kill();
    let end = Instant::now() + Duration::from_secs(30);
    while !rt.block_on(ingest(ports[0], events(995_000, 20, 31))) {
        assert!(Instant::now() < end, "no write after node 4 died");
        std::thread::sleep(Duration::from_millis(200));
    }
    want.extend(995_000..995_020);
    want.sort_unstable();
    for &p in &ports[..3] {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p} with node 4 dead");
    }
}
