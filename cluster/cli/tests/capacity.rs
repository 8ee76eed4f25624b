//! Checks 2 and 4 of `docs/capacity.md` on this machine: does the cost of
//! an event, and the latency of a routed query, stay put when a cluster
//! has many shards? The same generated town is loaded into clusters of
//! real `hourcell node` processes with different layouts; for each, the
//! ingest rate, the CPU the nodes spent per event (their utime + stime
//! from `/proc`), their CPU while idle after the load (what the quiet
//! groups cost), their resident memory, and who-was-at and occupancy
//! p50/p99 through node 1. A benchmark, not run by default:
//!
//! ```sh
//! HOURCELL_CAPACITY_BIN=target/release/hourcell cargo test --workspace \
//!   --test capacity -- --ignored --nocapture
//! ```
//!
//! `HOURCELL_CAPACITY_LAYOUTS` (default `3x4x2,5x100x16`: nodes × cell
//! shards a week × person shards), `_REPLICAS` (default 3), `_PERSONS`
//! (default 20000), `_DAYS` (default 7), `_QUERIES` (default 300).

use std::time::{Duration, Instant};

use hourcell_test_support::cli::ok;
use hourcell_test_support::config::*;
use hourcell_test_support::grpc::*;
use hourcell_test_support::procs::*;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // CLK_TCK is 100 on Linux.
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn many_shards_cost_per_event_and_routed_latency() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let bin = env("HOURCELL_CAPACITY_BIN", BIN);
    let bin = bin.as_str();
    let persons = env("HOURCELL_CAPACITY_PERSONS", "20000");
    let days = env("HOURCELL_CAPACITY_DAYS", "7");
    let queries = env("HOURCELL_CAPACITY_QUERIES", "300");
    let replicas: usize = env("HOURCELL_CAPACITY_REPLICAS", "3").parse().unwrap();
    for layout in env("HOURCELL_CAPACITY_LAYOUTS", "3x4x2,5x100x16").split(',') {
        let p: Vec<u32> = layout
            .split('x')
            .map(|n| n.trim().parse().unwrap())
            .collect();
        let (nodes, cells, person_shards) = (p[0] as usize, p[1], p[2]);
        let dir = tempfile::tempdir().unwrap();
        let all_ports = free_ports(nodes * 2);
        let (ports, metrics) = all_ports.split_at(nodes);
        let cfgs: Vec<_> = (1..=nodes)
            .map(|i| {
                let c = write_config(dir.path(), i, ports, metrics[i - 1]);
                shard_as(&c, cells, person_shards);
                let text = std::fs::read_to_string(&c).unwrap();
                std::fs::write(&c, format!("{text}replicas = {}\n", replicas.min(nodes))).unwrap();
                c
            })
            .collect();
        let _logs = LogsOnFailure(&cfgs);
        let procs: Vec<Proc> = cfgs.iter().map(|c| spawn(bin, c)).collect();
        let pids: Vec<u32> = procs.iter().map(|p| p.0.as_ref().unwrap().id()).collect();
        let all: Vec<usize> = (0..nodes).collect();
        let started = Instant::now();
        leader(ports, &all, Duration::from_secs(60)).await;
        let server = format!("127.0.0.1:{}", ports[0]);
        let bench = |extra: &[&str]| {
            let base = ["bench", "--server", &server, "--persons", &persons];
            let more = ["--days", &days, "--no-compact"];
            ok(bin, &[&base[..], &more[..], extra].concat())
        };
        let total = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        println!(
            "=== {nodes} nodes, {cells} cell shards a week, {person_shards} person shards, \
             replicas {}, {persons} persons x {days} days (leader after {:.1} s, load {})",
            replicas.min(nodes),
            started.elapsed().as_secs_f64(),
            std::fs::read_to_string("/proc/loadavg").unwrap().trim()
        );
        let cpu0 = total(&pids);
        let t0 = Instant::now();
        let load = bench(&["--queries", "0"]);
        let load_s = t0.elapsed().as_secs_f64();
        let cpu1 = total(&pids);
        println!("{}", load.trim_end());
        let events: f64 = load
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix("events: ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(f64::NAN);
        println!(
            "node CPU during the load: {:.1} s for {events} events = {:.2} core-us an event \
             (all replicas; the load took {load_s:.1} s)",
            cpu1 - cpu0,
            (cpu1 - cpu0) * 1e6 / events
        );
        // What the groups cost when nothing is written or read.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle0 = total(&pids);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle1 = total(&pids);
        println!(
            "idle CPU after the load: {:.3} cores over 10 s; RSS per node MiB: {:?}",
            (idle1 - idle0) / 10.0,
            pids.iter().map(|&p| rss_mib(p).round()).collect::<Vec<_>>()
        );
        let only = ["--skip-load", "--only", "who-was-at,occupancy"];
        bench(&[&only[..], &["--queries", "50"]].concat());
        println!(
            "{}",
            bench(&[&only[..], &["--queries", &queries]].concat()).trim_end()
        );
    }
}
