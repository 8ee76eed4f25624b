//! Online cell shard splits on real processes: one forced through `hourcell
//! cluster split` while writes and reads go on through every node, and one
//! a hot shard makes on its own. A checker holds every acknowledged write
//! and every read made meanwhile to account.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hourcell_proto::v1;
use hourcell_test_support::cli::{json, ok};
use hourcell_test_support::config::*;
use hourcell_test_support::data::*;
use hourcell_test_support::grpc::*;
use hourcell_test_support::procs::*;
use hourcell_test_support::status::*;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

/// 2026-11-02 00:00 UTC, a Monday: every event falls in its week.
const MONDAY: i64 = T0 + 86_400;
const WEEK: &str = "week of 2026-11-02";

/// Person `p`'s one event: on a grid of 20 × 20 points about 400 m apart
/// (so over many placement-level cells, which a split divides), at hour
/// `p % 24` of the Monday.
fn event(p: u64) -> v1::Event {
    v1::Event {
        person: p,
        time: Some(v1::event::Time::UnixSeconds(
            MONDAY + (p % 24) as i64 * 3600 + 60,
        )),
        lat: Some(30.20 + (p % 20) as f64 * 0.004),
        lng: Some(120.10 + ((p / 20) % 20) as f64 * 0.004),
        address: String::new(),
        source: "access".into(),
    }
}

fn region() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Rect(v1::Rect {
            lat_lo: 30.19,
            lng_lo: 120.09,
            lat_hi: 30.29,
            lng_hi: 120.19,
        })),
    })
}

fn monday() -> Option<v1::Window> {
    Some(v1::Window {
        start: MONDAY,
        end: MONDAY + 86_400,
        as_of: Some(MONDAY + 86_400),
    })
}

/// who-was-at over the grid and the Monday, through `port`.
async fn who(port: u16) -> Result<Vec<u64>, tonic::Status> {
    let Some(ch) = patient(port).await else {
        return Err(tonic::Status::unavailable("no connection"));
    };
    let mut s = v1::query_client::QueryClient::new(ch)
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-SPLIT".into(),
            max_staleness_ms: None,
            region: region(),
            window: monday(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.persons);
    }
    Ok(out)
}

/// Distinct persons over the grid and the Monday, through `port`.
async fn occupancy(port: u16) -> Result<u64, tonic::Status> {
    let Some(ch) = connect(port).await else {
        return Err(tonic::Status::unavailable("no connection"));
    };
    v1::query_client::QueryClient::new(ch)
        .occupancy(v1::OccupancyRequest {
            region: region(),
            window: monday(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().distinct)
}

/// Each data group's commit index as node `port` sees it.
async fn commits(port: u16) -> Vec<(u64, String, u64)> {
    let Some(ch) = connect(port).await else {
        return Vec::new();
    };
    v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .shards
                .into_iter()
                .map(|s| (s.group, s.shard, s.commit))
                .collect()
        })
        .unwrap_or_default()
}

/// What the writer and the readers saw.
#[derive(Default)]
struct Checker {
    attempted: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    reads: u64,
    /// Each read: when it began and how long it took.
    took: Vec<(Instant, Duration)>,
    /// Each acknowledged write: when it began and how long it took
    /// (retries included).
    wrote: Vec<(Instant, Duration)>,
    problems: Vec<String>,
}

/// Writes batches of new persons through every node in turn until `stop`.
async fn writer(ports: Vec<u16>, check: Arc<Mutex<Checker>>, stop: Arc<AtomicBool>) {
    let mut next = 1u64;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<u64> = (next..next + 40).collect();
        next += 40;
        check.lock().unwrap().attempted.extend(&batch);
        let port = ports[i % ports.len()];
        i += 1;
        // A refused batch is asked again (batches are idempotent) until
        // acknowledged, so the persons written stay contiguous.
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(20);
        loop {
            match try_ingest(port, batch.iter().map(|p| event(*p)).collect()).await {
                Ok(n) if n > 0 => {
                    let mut c = check.lock().unwrap();
                    c.acked.extend(&batch);
                    c.wrote.push((t0, t0.elapsed()));
                    break;
                }
                r if Instant::now() > end => {
                    check
                        .lock()
                        .unwrap()
                        .problems
                        .push(format!("a batch through :{port} never acknowledged: {r:?}"));
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Reads through every node in turn until `stop`: each answer must hold
/// every person acknowledged before the read began, once, and nothing
/// never written.
async fn reader(ports: Vec<u16>, check: Arc<Mutex<Checker>>, stop: Arc<AtomicBool>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let port = ports[i % ports.len()];
        i += 1;
        let before = check.lock().unwrap().acked.clone();
        let t0 = Instant::now();
        let answer = match who(port).await {
            Ok(a) => a,
            // A read may be refused while a leader changes; it must not
            // be wrong.
            Err(e) if e.code() == tonic::Code::Unavailable => continue,
            Err(e) => {
                check
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("read through :{port}: {e}"));
                continue;
            }
        };
        let mut c = check.lock().unwrap();
        c.reads += 1;
        c.took.push((t0, t0.elapsed()));
        if answer.windows(2).any(|w| w[0] >= w[1]) {
            c.problems.push(format!(
                "read through :{port}: not ascending or a duplicate"
            ));
        }
        let got: BTreeSet<u64> = answer.iter().copied().collect();
        let missing: Vec<u64> = before.difference(&got).take(5).copied().collect();
        if !missing.is_empty() {
            c.problems.push(format!(
                "read through :{port} lacks acknowledged persons, e.g. {missing:?}"
            ));
        }
        if let Some(x) = got.iter().find(|p| !c.attempted.contains(p)) {
            c.problems.push(format!(
                "read through :{port} has person {x}, never written"
            ));
        }
    }
}

/// Latency (p50, p99, max, count) of the calls in `calls` that began in
/// `from..to`.
fn latency(calls: &[(Instant, Duration)], from: Instant, to: Instant) -> String {
    let mut v: Vec<Duration> = calls
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, d)| *d)
        .collect();
    v.sort_unstable();
    if v.is_empty() {
        return "none".into();
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:?} p99 {:?} max {:?} ({})",
        at(0.5),
        at(0.99),
        v[v.len() - 1],
        v.len()
    )
}

/// Waits until at least `n` persons are acknowledged (or the writer gave
/// up).
fn wait_acked(check: &Mutex<Checker>, n: usize) {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let c = check.lock().unwrap();
            assert!(c.problems.is_empty(), "{:?}", c.problems);
            if c.acked.len() >= n {
                return;
            }
        }
        assert!(Instant::now() < end, "fewer than {n} writes in 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the writer stopped: every node answers exactly the acknowledged
/// persons (plus any whose batch was written but not acknowledged), once
/// each, and occupancy counts as many.
fn check_final(rt: &tokio::runtime::Runtime, ports: &[u16], check: &Checker) {
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    for &p in ports {
        let answer = rt.block_on(async {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                match who(p).await {
                    Ok(a) => break a,
                    Err(e) if Instant::now() < end => {
                        eprintln!("read through :{p}: {e}; asking again");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => panic!("read through :{p}: {e}"),
                }
            }
        });
        assert!(
            answer.windows(2).all(|w| w[0] < w[1]),
            "duplicates through :{p}"
        );
        let got: BTreeSet<u64> = answer.iter().copied().collect();
        let lost: Vec<u64> = check.acked.difference(&got).take(10).copied().collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost through :{p}: {lost:?}"
        );
        assert!(
            got.is_subset(&check.attempted),
            "persons never written through :{p}"
        );
        let total = rt.block_on(occupancy(p)).unwrap();
        assert_eq!(total, got.len() as u64, "occupancy through :{p}");
    }
}

fn start(dir: &std::path::Path, n: usize, extra: &str) -> (Vec<u16>, Vec<std::path::PathBuf>) {
    let all = free_ports(2 * n);
    let (ports, metrics) = all.split_at(n);
    let cfgs: Vec<_> = (1..=n)
        .map(|i| {
            let c = write_config(dir, i, ports, metrics[i - 1]);
            shard_as(&c, 2, 2);
            let text = std::fs::read_to_string(&c).unwrap();
            std::fs::write(&c, format!("{text}{extra}")).unwrap();
            c
        })
        .collect();
    (ports.to_vec(), cfgs)
}

/// `hourcell cluster split` on a four-node cluster (three replicas a
/// shard) while a writer and a reader go through every node: the new
/// shard is placed on three nodes and takes writes; no read during the
/// split misses an acknowledged write or repeats one; afterwards every
/// node answers every acknowledged write exactly once.
#[test]
fn a_forced_split_under_ingest_loses_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (ports, cfgs) = start(
        dir.path(),
        4,
        "split_events_per_hour = 0\nsplit_grown_bytes = 0\n",
    );
    let _logs = LogsOnFailure(&cfgs);
    let _procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    let _ = rt.block_on(leader(&ports, &[0, 1, 2, 3], Duration::from_secs(30)));

    let check = Arc::new(Mutex::new(Checker::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = rt.spawn(writer(ports.clone(), check.clone(), stop.clone()));
    let r = rt.spawn(reader(ports.clone(), check.clone(), stop.clone()));
    // Past the start (elections, first weeks), so the figures show the split.
    wait_acked(&check, 4_000);

    // Cell shard 0 of the Monday's week.
    let v = status_json(BIN, ports[0]);
    let parent = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == format!("cells 0, {WEEK}"))
        .unwrap_or_else(|| panic!("no cell shard 0 of the {WEEK}: {v}"))["group"]
        .as_u64()
        .unwrap();
    let began = Instant::now();
    let out = ok(
        BIN,
        &[
            "cluster",
            "split",
            "--shard",
            &parent.to_string(),
            "--format",
            "json",
            "--server",
            &format!("127.0.0.1:{}", ports[1]),
        ],
    );
    let split = json(&out);
    let split_took = began.elapsed();
    let child = split["group"].as_u64().unwrap();
    assert_eq!(split["shard"], format!("cells 2, {WEEK}"), "{split}");
    assert_eq!(split["replicas"].as_array().unwrap().len(), 3, "{split}");
    // Splitting a group that is no cell shard is refused, saying why.
    let bad = hourcell_test_support::cli::run(
        BIN,
        &[
            "cluster",
            "split",
            "--shard",
            "1",
            "--server",
            &format!("127.0.0.1:{}", ports[0]),
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no cell shard has raft group 1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Go on until 4,000 more writes and 5 more reads are done.
    let (at_split, reads) = {
        let c = check.lock().unwrap();
        (c.acked.len(), c.reads)
    };
    wait_acked(&check, at_split + 4_000);
    let end = Instant::now() + Duration::from_secs(60);
    while check.lock().unwrap().reads < reads + 5 {
        assert!(
            Instant::now() < end,
            "fewer than 5 reads in 60 s after the split"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        w.await.unwrap();
        r.await.unwrap();
    });

    // The new shard is held by three nodes, as the map says, and took
    // writes: its log grew well past its first entries.
    let v = wait_settled(BIN, ports[0], &[], 8, "after the split");
    let row = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"] == child)
        .unwrap_or_else(|| panic!("the new shard is not in the status: {v}"));
    // (Where the split put it, or where rebalancing moved it since.)
    assert_eq!(ids_of(&row["voters"]).len(), 3, "{row}");
    let commit = ports
        .iter()
        .flat_map(|p| rt.block_on(commits(*p)))
        .filter(|(g, _, _)| *g == child)
        .map(|(_, _, c)| c)
        .max()
        .unwrap_or(0);
    assert!(
        commit > 10,
        "the new shard took no writes (commit {commit})"
    );

    let c = check.lock().unwrap();
    let settled = began + split_took + Duration::from_secs(2);
    let (first, now) = (began - Duration::from_secs(600), Instant::now());
    for (what, calls) in [("who-was-at", &c.took), ("ingest of 40", &c.wrote)] {
        eprintln!(
            "split took {split_took:?}; {what} before: {}; during and 2 s after: {}; later: {}",
            latency(calls, first, began),
            latency(calls, began, settled),
            latency(calls, settled, now),
        );
    }
    check_final(&rt, &ports, &c);
}

/// A shard whose write rate passes `split_events_per_hour` splits on its
/// own, and nothing acknowledged is lost.
#[test]
fn a_hot_shard_splits_on_its_own() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // 3,600 events an hour: more than 30 in half a minute.
    let (ports, cfgs) = start(dir.path(), 3, "split_events_per_hour = 3600\n");
    let _logs = LogsOnFailure(&cfgs);
    let _procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    let _ = rt.block_on(leader(&ports, &[0, 1, 2], Duration::from_secs(30)));

    let check = Arc::new(Mutex::new(Checker::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = rt.spawn(writer(ports.clone(), check.clone(), stop.clone()));
    let end = Instant::now() + Duration::from_secs(60);
    let split = loop {
        let v = status_json(BIN, ports[0]);
        let weeks = v["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["shard"].as_str().is_some_and(|n| n.ends_with(WEEK)))
            .count();
        if weeks > 2 {
            break v;
        }
        assert!(
            Instant::now() < end,
            "no shard split on its own in 60 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let at_split = check.lock().unwrap().acked.len();
    wait_acked(&check, at_split + 400);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(w).unwrap();
    eprintln!("after the split: {split}");
    check_final(&rt, &ports, &check.lock().unwrap());
}
