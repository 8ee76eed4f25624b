//! Faults on real `hourcell node` processes: partitions through per-link
//! TCP proxies, kill -9, restarts of all three at once, a wiped follower
//! rejoining by snapshot, all while a writer keeps ingesting; a checker
//! then asserts that every acknowledged event is answered by every node and
//! nothing that was never sent appears. Also the shared test body of
//! `tests/tests/raft_sim.rs`, over processes.

use std::time::{Duration, Instant};

use hourcell_proto::v1;
use hourcell_test_support::bodies;
use hourcell_test_support::config::*;
use hourcell_test_support::data::*;
use hourcell_test_support::grpc::*;
use hourcell_test_support::links::*;
use hourcell_test_support::procs::*;
use hourcell_test_support::status::*;
use tonic::transport::Channel;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

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
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
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
    procs[l] = spawn(BIN, &cfgs[l]);
    converge(ports, 3, Duration::from_secs(20)).await;

    // 3. Restart all three at once.
    for p in &mut procs {
        p.kill();
    }
    for (i, c) in cfgs.iter().enumerate() {
        procs[i] = spawn(BIN, c);
    }
    let _ = leader(ports, &all, Duration::from_secs(20)).await;
    progress(&ledger, acked_now(&ledger), "all three restarted").await;

    // 4. kill -9 a follower, wipe its data directory, and start it with
    // --join: it is re-added, catches up from a snapshot and votes again.
    let l = leader(ports, &all, Duration::from_secs(20)).await;
    let f = all.iter().copied().find(|&i| i != l).unwrap();
    procs[f].kill();
    std::fs::remove_dir_all(dir.path().join(format!("node{}", f + 1))).unwrap();
    procs[f] = spawn_args(BIN, &cfgs[f], &["--join"]);
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
            let v = status_json(BIN, ports[0]);
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
            max_staleness_ms: Some(60_000),
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
        .who_was_at(who_request(Some(60_000)))
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
            // A read that fails (a timeout on a loaded machine) says nothing
            // about what the node would answer: ask again, a few times. A
            // read that answers without the persons fails the check at once.
            let mut tries = 0;
            let r = loop {
                tries += 1;
                let Some(ch) = connect(port).await else {
                    return false;
                };
                match v1::query_client::QueryClient::new(ch)
                    .who_was_at(who_request(None))
                    .await
                {
                    Ok(r) => break r,
                    Err(e) if tries < 3 => {
                        eprintln!("who-was-at via node {via} failed (try {tries}): {e}")
                    }
                    Err(e) => {
                        eprintln!("who-was-at via node {via} failed: {e}");
                        return false;
                    }
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
        self.procs[id as usize - 1] = spawn(BIN, &self.linked.cfgs[id as usize - 1]);
    }
}

/// The same body as `raft_sim::the_shared_body_over_the_simulated_network`,
/// over three `hourcell node` processes whose links a proxy can cut.
#[test]
fn the_shared_body_over_real_processes() {
    let mut c = ProcCluster::start(None);
    bodies::acknowledged_writes_survive_failures(&mut c);
}

impl Drop for ProcCluster {
    /// The nodes' side of a failing test, for CI's output.
    fn drop(&mut self) {
        let _ = LogsOnFailure(&self.linked.cfgs);
    }
}

impl ProcCluster {
    /// Three linked processes, sharded as `(cells, persons)` if given.
    fn start(shards: Option<(u32, u32)>) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let linked = Linked::new(dir.path());
        if let Some((cells, persons)) = shards {
            linked.cfgs.iter().for_each(|c| shard_as(c, cells, persons));
        }
        let procs = linked.cfgs.iter().map(|c| spawn(BIN, c)).collect();
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
