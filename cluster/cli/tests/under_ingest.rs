//! The `hourcell` binary while it ingests: `bench --ingest-during`
//! measures queries under a steady writer, and a node writes held ingest
//! once ingest pauses.

use std::path::Path;
use std::process::Output;

use hourcell_test_support::cli::{self, Killed};
use hourcell_test_support::procs::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

fn hourcell(args: &[&str]) -> Output {
    cli::run(BIN, args)
}

fn ok(args: &[&str]) -> String {
    cli::ok(BIN, args)
}

fn start_node(dir: &Path, port: u16) -> Killed {
    cli::start_node(BIN, dir, port)
}

/// The `name → mean result` of each query line `hourcell bench` printed.
fn bench_results(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (name, _) = l.split_once(" runs ")?;
            let (_, mean) = l.split_once("mean result ")?;
            Some((name.trim().to_string(), mean.trim().to_string()))
        })
        .collect()
}

#[test]
fn bench_queries_while_it_ingests_and_the_answers_stay_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _node = start_node(dir.path(), port);
    let server = format!("http://127.0.0.1:{port}");
    let base = [
        "bench",
        "--server",
        server.as_str(),
        "--persons",
        "300",
        "--days",
        "2",
        "--queries",
        "30",
        "--no-compact",
        "--only",
        "occupancy,who-was-at,where-was",
    ];
    let settled = ok(&base);
    let before = bench_results(&settled);
    assert_eq!(before.len(), 3, "{settled}");

    let sent = |out: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with("ingest during the queries: "))
            .unwrap_or_else(|| panic!("no ingest line: {out}"));
        line["ingest during the queries: ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The town's own days again: slices are unions, so every answer is
    // what it was without the writer.
    let past = [&base[..], &["--skip-load", "--ingest-during", "50000"]].concat();
    let mixed = ok(&[&past[..], &["--ingest-hours", "past"]].concat());
    assert!(sent(&mixed) >= 1_000, "the writer sent too little: {mixed}");
    assert_eq!(bench_results(&mixed), before, "{mixed}");
    // Today up to now: after the town's end, outside every query's window
    // (how much there is depends on the time of day).
    let mixed = ok(&past);
    assert!(mixed.contains("ingesting Present hours"), "{mixed}");
    sent(&mixed);
    assert_eq!(bench_results(&mixed), before, "{mixed}");

    let bad = hourcell(&["bench", "--ingest-during", "0"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a positive number"), "{err}");
}

/// Ingest held in memory is written once ingest pauses, without waiting
/// for a read to write it.
#[test]
fn a_node_writes_held_ingest_once_ingest_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let town = dir.path().join("town");
    ok(&[
        "gen",
        "--persons",
        "200",
        "--days",
        "1",
        "--out",
        town.to_str().unwrap(),
    ]);
    let port = free_port();
    let log = dir.path().join("node.log");
    let _node = cli::start_node_with(BIN, dir.path(), port, "log = \"debug\"", Some(&log));
    let s = format!("http://127.0.0.1:{port}");
    for (kind, file) in [("addresses", "addresses.csv"), ("events", "events.csv")] {
        ok(&[
            "import",
            "--kind",
            kind,
            town.join(file).to_str().unwrap(),
            "--server",
            &s,
        ]);
    }
    let written = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("wrote held ingest after a pause")
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !written() {
        assert!(
            std::time::Instant::now() < end,
            "held ingest not written within 10 s of the last batch"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
