//! The `hourcell` binary end to end: dev on a fresh directory, gen, import
//! into a node, and every query's JSON shape through the CLI.

use std::path::Path;
use std::process::Output;

use hourcell_test_support::cli::{self, json, Killed};
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

#[test]
fn dev_loads_a_demo_town_once_and_prints_queries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dev");
    let d = d.to_str().unwrap();
    let out = ok(&[
        "dev",
        "--data-dir",
        d,
        "--persons",
        "300",
        "--days",
        "3",
        "--no-serve",
    ]);
    assert!(out.contains("loaded"), "{out}");
    assert!(out.contains("hourcell query who-was-at --circle"), "{out}");
    assert!(out.contains("field tasks raised"), "{out}");
    assert!(out.contains("hourcell tasks list"), "{out}");
    assert!(out.contains("hourcell query where-was --person"), "{out}");
    let again = ok(&["dev", "--data-dir", d, "--no-serve"]);
    assert!(again.contains("using existing data"), "{again}");
}

#[test]
fn gen_import_and_query_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let town = dir.path().join("town");
    let t = town.to_str().unwrap();
    ok(&[
        "gen",
        "--seed",
        "3",
        "--persons",
        "300",
        "--days",
        "2",
        "--start",
        "2026-11-01T00:00:00Z",
        "--out",
        t,
    ]);
    for (f, header) in [
        ("addresses.csv", "code,lat,lng,kind,area,label"),
        ("registry.csv", "person,address,kind,valid_from,valid_until"),
        ("events.csv", "person,time,lat,lng,address,source"),
        ("truth.csv", "person,situation"),
    ] {
        let text = std::fs::read_to_string(town.join(f)).unwrap();
        assert!(
            text.starts_with(header),
            "{f}: {}",
            &text[..80.min(text.len())]
        );
    }
    // Deterministic: the same seed gives the same files.
    let t2 = dir.path().join("town2");
    ok(&[
        "gen",
        "--seed",
        "3",
        "--persons",
        "300",
        "--days",
        "2",
        "--start",
        "2026-11-01T00:00:00Z",
        "--out",
        t2.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(town.join("events.csv")).unwrap(),
        std::fs::read(t2.join("events.csv")).unwrap()
    );

    let port = free_port();
    let _node = start_node(dir.path(), port);
    let server = format!("http://127.0.0.1:{port}");
    let s = server.as_str();
    for (kind, file) in [
        ("addresses", "addresses.csv"),
        ("registry", "registry.csv"),
        ("events", "events.csv"),
    ] {
        let out = ok(&[
            "import",
            "--kind",
            kind,
            town.join(file).to_str().unwrap(),
            "--server",
            s,
        ]);
        assert!(out.to_lowercase().contains("accepted"), "{out}");
    }
    // The summary as JSON: the addresses again (a re-put is accepted).
    let addresses = town.join("addresses.csv");
    let v = json(&ok(&[
        "import",
        "--kind",
        "addresses",
        addresses.to_str().unwrap(),
        "--format",
        "json",
        "--server",
        s,
    ]));
    let rows = std::fs::read_to_string(&addresses).unwrap().lines().count() as u64 - 1;
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(rows), Some(0)),
        "{v}"
    );
    assert!(v["first_rejections"].as_array().unwrap().is_empty());
    let events = std::fs::read_to_string(town.join("events.csv")).unwrap();
    let first: Vec<&str> = events.lines().nth(1).unwrap().split(',').collect();
    let person = first[0];
    let addr_line = std::fs::read_to_string(town.join("addresses.csv")).unwrap();
    let a: Vec<&str> = addr_line.lines().nth(1).unwrap().split(',').collect();
    let circle = format!("{},{},1000", a[1], a[2]);
    let (from, to) = ("2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z");
    let as_of = "2026-11-03T00:00:00Z";

    let v = json(&ok(&[
        "query",
        "who-was-at",
        "--purpose",
        "generated test",
        "--case",
        "T-1",
        "--circle",
        &circle,
        "--from",
        from,
        "--to",
        to,
        "--as-of",
        as_of,
        "--format",
        "json",
        "--server",
        s,
    ]));
    assert_eq!(v["from"], "2026-11-01T00:00:00Z");
    assert_eq!(v["to"], "2026-11-03T00:00:00Z");
    let persons = v["persons"].as_array().unwrap();
    assert!(!persons.is_empty());
    // Person ids are strings in JSON (JavaScript rounds big numbers).
    let ids: Vec<u64> = persons
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let v = json(&ok(&[
        "query",
        "where-was",
        "--purpose",
        "generated test",
        "--case",
        "T-1",
        "--person",
        person,
        "--from",
        from,
        "--to",
        to,
        "--as-of",
        as_of,
        "--format",
        "json",
        "--server",
        s,
    ]));
    assert_eq!(v["person"].as_str().unwrap(), person);
    let h = &v["hours"][0];
    assert!(h["hour"].as_str().unwrap().ends_with('Z'));
    assert!(h["cells"].is_array() && h["addresses"].is_array() && h["sources"].is_array());

    let v = json(&ok(&[
        "query",
        "occupancy",
        "--circle",
        &circle,
        "--from",
        from,
        "--to",
        to,
        "--as-of",
        as_of,
        "--format",
        "json",
        "--server",
        s,
    ]));
    assert_eq!(v["hours"].as_array().unwrap().len(), 48);
    let max_hour = v["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["distinct"].as_u64().unwrap())
        .max()
        .unwrap();
    let distinct = v["distinct"].as_u64().unwrap();
    assert!(distinct >= max_hour && distinct as usize == ids.len());

    // --polygon from a file and inline: a GeoJSON rectangle around the
    // first address answers as --rect over the same box.
    let (lat, lng): (f64, f64) = (a[1].parse().unwrap(), a[2].parse().unwrap());
    let (s_, w_, n_, e_) = (lat - 0.01, lng - 0.012, lat + 0.008, lng + 0.01);
    let rect = format!("{s_},{w_},{n_},{e_}");
    let geometry = format!(
        r#"{{"type":"Polygon","coordinates":[[[{w_},{s_}],[{e_},{s_}],[{e_},{n_}],[{w_},{n_}],[{w_},{s_}]]]}}"#
    );
    let feature = format!(
        r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{}},"geometry":{geometry}}}]}}"#
    );
    let file = dir.path().join("district.geojson");
    std::fs::write(&file, &feature).unwrap();
    let who = |flag: &str, value: &str| {
        json(&ok(&[
            "query",
            "who-was-at",
            "--purpose",
            "generated test",
            "--case",
            "T-1",
            flag,
            value,
            "--from",
            from,
            "--to",
            to,
            "--as-of",
            as_of,
            "--format",
            "json",
            "--server",
            s,
        ]))["persons"]
            .clone()
    };
    let by_rect = who("--rect", &rect);
    assert!(!by_rect.as_array().unwrap().is_empty());
    assert_eq!(who("--polygon", file.to_str().unwrap()), by_rect);
    assert_eq!(who("--polygon", &geometry), by_rect);
    let occ = |flag: &str, value: &str| {
        json(&ok(&[
            "query",
            "occupancy",
            flag,
            value,
            "--from",
            from,
            "--to",
            to,
            "--as-of",
            as_of,
            "--format",
            "json",
            "--server",
            s,
        ]))["distinct"]
            .clone()
    };
    assert_eq!(occ("--polygon", &geometry), occ("--rect", &rect));
    // A bad polygon: the server's reason, non-zero exit.
    let out = hourcell(&[
        "query",
        "occupancy",
        "--polygon",
        r#"{"type":"Polygon","coordinates":[[[120,30],[120.1,30],[120,30]]]}"#,
        "--from",
        from,
        "--server",
        s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 4"), "{err}");

    // The grid over the same circle and window, as GeoJSON: closed cell
    // polygons around their cells, whole cells counted, so that together
    // they hold at least everyone in the circle.
    let g = json(&ok(&[
        "query", "grid", "--circle", &circle, "--level", "14", "--from", from, "--to", to,
        "--as-of", as_of, "--format", "geojson", "--server", s,
    ]));
    assert_eq!(g["type"], "FeatureCollection");
    let features = g["features"].as_array().unwrap();
    assert!(!features.is_empty());
    let mut sum = 0;
    for f in features {
        assert_eq!(f["geometry"]["type"], "Polygon");
        let ring = f["geometry"]["coordinates"][0].as_array().unwrap();
        assert_eq!((ring.len(), &ring[0]), (5, &ring[4]), "an open ring");
        let token = f["properties"]["cell"].as_str().unwrap();
        let id = hourcell_storage::cell::parse_token(token).unwrap();
        assert_eq!(hourcell_storage::cell::level(id), 14);
        let (lat, lng) = hourcell_storage::cell::center(id);
        let (lngs, lats): (Vec<f64>, Vec<f64>) = ring
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .unzip();
        let within = |x: f64, v: &[f64]| {
            v.iter().cloned().fold(f64::MAX, f64::min) < x
                && x < v.iter().cloned().fold(f64::MIN, f64::max)
        };
        assert!(within(lat, &lats) && within(lng, &lngs), "{token}");
        sum += f["properties"]["distinct"].as_u64().unwrap();
    }
    assert!(sum >= distinct, "{sum} < {distinct}");
    // PNG frames, one per hour with someone in it; --out is required.
    let frames = dir.path().join("frames");
    ok(&[
        "query",
        "grid",
        "--circle",
        &circle,
        "--hourly",
        "--from",
        from,
        "--to",
        to,
        "--as-of",
        as_of,
        "--format",
        "png",
        "--out",
        frames.to_str().unwrap(),
        "--server",
        s,
    ]);
    let n = std::fs::read_dir(&frames).unwrap().count();
    assert!((1..=48).contains(&n), "{n} frames");
    let out = hourcell(&[
        "query", "grid", "--circle", &circle, "--from", from, "--format", "png", "--server", s,
    ]);
    assert_eq!(out.status.code(), Some(2), "--format png without --out");
    // A region of addresses has no cells to draw.
    let out = hourcell(&[
        "query",
        "grid",
        "--addresses",
        a[0],
        "--from",
        from,
        "--server",
        s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--addresses"));

    let v = json(&ok(&[
        "query",
        "no-activity-since",
        "--purpose",
        "generated test",
        "--case",
        "T-1",
        "--since",
        "2026-11-02T12:00:00Z",
        "--as-of",
        as_of,
        "--format",
        "json",
        "--server",
        s,
    ]));
    assert_eq!(v["since"], "2026-11-02T12:00:00Z");
    for p in v["persons"].as_array().unwrap() {
        assert!(p["person"].as_str().unwrap().parse::<u64>().is_ok());
        assert!(p["last_seen"].is_null() || p["last_seen"].as_str().unwrap().ends_with('Z'));
    }

    // Bad input: a clear message naming the flag, non-zero exit.
    let out = hourcell(&[
        "query",
        "who-was-at",
        "--purpose",
        "generated test",
        "--case",
        "T-1",
        "--circle",
        "95,1,100",
        "--from",
        from,
        "--server",
        s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("95"), "{err}");
    let out = hourcell(&["query", "occupancy", "--from", from, "--server", s]);
    assert!(!out.status.success());
}

#[test]
fn tasks_run_list_show_resolve_and_watch_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let town = dir.path().join("town");
    ok(&[
        "gen",
        "--seed",
        "4",
        "--persons",
        "600",
        "--days",
        "14",
        "--start",
        "2026-11-01T00:00:00Z",
        "--out",
        town.to_str().unwrap(),
    ]);
    let port = free_port();
    let _node = start_node(dir.path(), port);
    let server = format!("http://127.0.0.1:{port}");
    let s = server.as_str();
    for (kind, file) in [
        ("addresses", "addresses.csv"),
        ("registry", "registry.csv"),
        ("events", "events.csv"),
    ] {
        ok(&[
            "import",
            "--kind",
            kind,
            town.join(file).to_str().unwrap(),
            "--server",
            s,
        ]);
    }
    let at = "2026-11-15T00:00:00Z";
    let run = json(&ok(&[
        "tasks", "run", "--at", at, "--format", "json", "--server", s,
    ]));
    assert_eq!(run["at"], at);
    let created = run["created"].as_u64().unwrap();
    assert!(created > 0, "{run}");
    let again = json(&ok(&[
        "tasks", "run", "--at", at, "--format", "json", "--server", s,
    ]));
    assert_eq!(again["created"], 0);

    // list follows the pages itself.
    // Tasks name persons: without a purpose and a case they are refused.
    let out = hourcell(&["tasks", "list", "--server", s]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--purpose") && err.contains("--case"), "{err}");
    let list = json(&ok(&[
        "tasks",
        "list",
        "--purpose",
        "rounds",
        "--case",
        "R-1",
        "--page-size",
        "3",
        "--format",
        "json",
        "--server",
        s,
    ]));
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len() as u64, created);
    for t in tasks {
        for k in ["id", "kind", "person", "address", "area", "score", "state"] {
            assert!(t.get(k).is_some(), "missing {k}: {t}");
        }
        match t["kind"].as_str().unwrap() {
            "VERIFY_DEPARTURE" => assert!(t["score"].is_null()),
            _ => assert!(t["score"].as_f64().unwrap() >= 0.8),
        }
    }
    let table = ok(&[
        "tasks",
        "list",
        "--state",
        "open",
        "--purpose",
        "rounds",
        "--case",
        "R-1",
        "--server",
        s,
    ]);
    assert!(table.contains(&format!("{created} tasks")), "{table}");
    let csv = ok(&[
        "tasks",
        "list",
        "--purpose",
        "rounds",
        "--case",
        "R-1",
        "--kind",
        "VERIFY_DEPARTURE",
        "--format",
        "csv",
        "--server",
        s,
    ]);
    assert!(csv.starts_with("id,kind,person"), "{csv}");

    let id = tasks[0]["id"].as_u64().unwrap().to_string();
    let shown = json(&ok(&[
        "tasks",
        "show",
        &id,
        "--purpose",
        "visit",
        "--format",
        "json",
        "--server",
        s,
    ]));
    assert_eq!(shown["id"], tasks[0]["id"]);
    assert!(shown["evidence"].is_array());
    ok(&[
        "tasks",
        "start",
        &id,
        "--by",
        "field-3",
        "--purpose",
        "visit",
        "--server",
        s,
    ]);
    let resolved = ok(&[
        "tasks",
        "resolve",
        &id,
        "--outcome",
        "confirmed",
        "--by",
        "field-3",
        "--note",
        "registered on site",
        "--purpose",
        "visit",
        "--server",
        s,
    ]);
    assert!(resolved.contains("resolved (confirmed)"), "{resolved}");
    // Resolving twice is refused with a reason, non-zero exit.
    let out = hourcell(&[
        "tasks",
        "resolve",
        &id,
        "--outcome",
        "confirmed",
        "--by",
        "x",
        "--purpose",
        "visit",
        "--server",
        s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot move"));

    // The change log: every creation, then the two updates.
    let n = (created + 2).to_string();
    let watched = ok(&[
        "tasks",
        "watch",
        "--limit",
        &n,
        "--purpose",
        "sync",
        "--case",
        "S-1",
        "--format",
        "json",
        "--server",
        s,
    ]);
    let lines: Vec<serde_json::Value> = watched.lines().map(json).collect();
    assert_eq!(lines.len() as u64, created + 2);
    assert_eq!(lines.last().unwrap()["task"]["state"], "resolved");
    let tail = ok(&[
        "tasks",
        "watch",
        "--cursor",
        &(created + 1).to_string(),
        "--limit",
        "1",
        "--purpose",
        "sync",
        "--case",
        "S-1",
        "--format",
        "json",
        "--server",
        s,
    ]);
    assert_eq!(json(tail.trim())["seq"], created + 2);
}

#[test]
fn dev_starts_a_three_node_raft_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dev3");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Consecutive ports are needed; find a base whose next two are free.
    let base = (20_000..60_000)
        .step_by(7)
        .find(|&p| (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .unwrap_or(ports[0]);
    let listen = format!("127.0.0.1:{base}");
    let out = ok(&[
        "dev",
        "--nodes",
        "3",
        "--data-dir",
        d.to_str().unwrap(),
        "--listen",
        &listen,
        "--persons",
        "300",
        "--days",
        "3",
        "--no-serve",
    ]);
    assert!(out.contains("raft group of 3 nodes up"), "{out}");
    assert!(out.contains("replicated to 3 nodes"), "{out}");
    assert!(out.contains("field tasks raised through raft"), "{out}");
    assert!(
        out.contains(&format!("node 3 serving gRPC on 127.0.0.1:{}", base + 2)),
        "{out}"
    );
    for i in 1..=3 {
        assert!(d.join(format!("node{i}")).join("raft").exists());
    }
    let bad = hourcell(&["dev", "--nodes", "9", "--no-serve"]);
    assert!(!bad.status.success());
}

/// Person queries through the CLI are listed by `hourcell audit list`, and
/// `hourcell audit verify` catches an edited, a deleted and a reordered
/// record, naming the first bad one.
#[test]
fn audit_verify_catches_edited_deleted_and_reordered_records() {
    use hourcell_storage::audit::{decode_record, encode_record};
    use hourcell_storage::{keys, KvEngine, RocksConfig, RocksEngine, WriteBatch};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = format!("http://127.0.0.1:{port}");
    let mut node = start_node(dir.path(), port);
    for (i, case) in ["C-1", "C-2", "C-3"].iter().enumerate() {
        ok(&[
            "query",
            "where-was",
            "--person",
            &(i + 1).to_string(),
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-02T00:00:00Z",
            "--purpose",
            "generated check",
            "--case",
            case,
            "--server",
            &s,
        ]);
    }
    // Without --purpose and --case the CLI refuses before asking.
    let out = hourcell(&["query", "where-was", "--person", "1", "--server", &s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--purpose"));
    let v = json(&ok(&["audit", "list", "--format", "json", "--server", &s]));
    let cases: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases, ["C-1", "C-2", "C-3"]);
    assert!(ok(&["audit", "verify", "--server", &s]).contains("3 records, hash chain intact"));
    let v = json(&ok(&[
        "audit", "verify", "--format", "json", "--server", &s,
    ]));
    assert_eq!(
        (v["verified"].as_bool(), v["records"].as_u64()),
        (Some(true), Some(3))
    );
    let v = json(&ok(&[
        "audit",
        "checkpoint",
        "--format",
        "json",
        "--server",
        &s,
    ]));
    assert_eq!(v["seq"].as_u64(), Some(3));
    assert!(v["checkpoint"].as_str().unwrap().starts_with("3:"));
    // A checkpoint kept outside the cluster.
    let checkpoint = ok(&["audit", "checkpoint", "--server", &s])
        .trim()
        .to_string();
    assert!(checkpoint.starts_with("3:"), "{checkpoint}");
    assert!(
        ok(&["audit", "verify", "--expect", &checkpoint, "--server", &s])
            .contains("1 checkpoint(s) match")
    );
    let out = hourcell(&["audit", "verify", "--expect", "3:zz", "--server", &s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --expect"));
    drop(node);

    let db = dir.path().join("data").join("db");
    let read = |seq: u64| {
        let e = RocksEngine::open(&db, &RocksConfig::default()).unwrap();
        e.get(&keys::audit(seq)).unwrap().unwrap()
    };
    let (r2, r3) = (read(2), read(3));
    let write = |ops: Vec<(u64, Option<Vec<u8>>)>| {
        let e = RocksEngine::open(&db, &RocksConfig::default()).unwrap();
        let mut b = WriteBatch::default();
        for (seq, v) in ops {
            match v {
                Some(v) => b.put(keys::audit(seq), v),
                None => b.delete(keys::audit(seq)),
            }
        }
        e.write(b, true).unwrap();
    };
    let mut edited = decode_record(&r2).unwrap();
    edited.entry.case_ref = "C-9".into();
    for (what, tamper, bad) in [
        (
            "edited",
            vec![(2, Some(encode_record(&edited)))],
            "audit record 2",
        ),
        ("deleted", vec![(2, None)], "audit record 3"),
        (
            "reordered",
            vec![(2, Some(r3.clone())), (3, Some(r2.clone()))],
            "audit record 3",
        ),
    ] {
        write(tamper);
        node = start_node(dir.path(), port);
        let out = hourcell(&["audit", "verify", "--server", &s]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: verify passed");
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: the verification exit code"
        );
        assert!(err.contains(bad), "{what}: {err}");
        drop(node);
        write(vec![(2, Some(r2.clone())), (3, Some(r3.clone()))]);
    }
    // Tampering that leaves a valid chain: the tail cut off, or every
    // record from 2 on rewritten and rehashed. Only the checkpoint tells.
    let rehash = |from: &[u8]| {
        let mut prev = decode_record(from).unwrap().hash;
        let mut out = Vec::new();
        for (seq, raw) in [(2, &r2), (3, &r3)] {
            let mut r = decode_record(raw).unwrap();
            r.entry.case_ref = format!("C-{}", seq + 6);
            r.prev_hash = prev;
            r.hash = hourcell_storage::audit::chain_hash(&prev, seq, &r.entry, &r.parameters_hash);
            prev = r.hash;
            out.push((seq, Some(encode_record(&r))));
        }
        out
    };
    let r1 = read(1);
    for (what, tamper, bad) in [
        ("truncated", vec![(3, None)], "removed from its end"),
        ("rehashed", rehash(&r1), "rewritten"),
    ] {
        write(tamper);
        node = start_node(dir.path(), port);
        assert!(
            ok(&["audit", "verify", "--server", &s]).contains("hash chain intact"),
            "{what}: the chain alone should still verify"
        );
        let out = hourcell(&["audit", "verify", "--expect", &checkpoint, "--server", &s]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: verify --expect passed");
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: the verification exit code"
        );
        assert!(err.contains(bad), "{what}: {err}");
        drop(node);
        write(vec![(2, Some(r2.clone())), (3, Some(r3.clone()))]);
    }
    let _node = start_node(dir.path(), port);
    assert!(ok(&["audit", "verify", "--server", &s]).contains("hash chain intact"));
    assert!(
        ok(&["audit", "verify", "--expect", &checkpoint, "--server", &s])
            .contains("checkpoint(s) match")
    );
    // The records' parameters name persons: withheld unless the auditor
    // states a purpose and a case, and then the listing is audited too.
    let v = json(&ok(&["audit", "list", "--format", "json", "--server", &s]));
    let r = &v.as_array().unwrap()[0];
    assert_eq!(
        (r["parameters"].as_str(), r["withheld"].as_bool()),
        (Some(""), Some(true))
    );
    let out = hourcell(&["audit", "list", "--purpose", "review", "--server", &s]);
    assert!(!out.status.success(), "--purpose without --case");
    let v = json(&ok(&[
        "audit",
        "list",
        "--format",
        "json",
        "--purpose",
        "review",
        "--case",
        "AUD-1",
        "--server",
        &s,
    ]));
    let r = &v.as_array().unwrap()[0];
    assert!(r["parameters"].as_str().unwrap().contains("person"), "{r}");
    let v = json(&ok(&["audit", "list", "--format", "json", "--server", &s]));
    let last = v.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["rpc"].as_str(), last["case"].as_str()),
        (Some("Audit.List"), Some("AUD-1"))
    );
    assert!(ok(&["audit", "verify", "--server", &s]).contains("hash chain intact"));
}

#[test]
fn node_refuses_plaintext_unless_insecure_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = hourcell(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure = true"), "{err}");
    // Anonymous roles are refused on a node that is not insecure.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[security]\nanonymous_roles = [\"all\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = hourcell(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed with insecure"));
    // Plaintext on a network address, or with bearer tokens that would
    // travel in clear: refused unless explicitly accepted.
    let key = dir.path().join("token.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    for (listen, extra, want) in [
        ("0.0.0.0:0", "", "non-loopback"),
        (
            "127.0.0.1:0",
            &*format!("token_key_file = {key:?}\n"),
            "token_key_file",
        ),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nlisten = {listen:?}\n[security]\ninsecure = true\n{extra}",
                dir.path().join("data")
            ),
        )
        .unwrap();
        let out = hourcell(&["node", "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success(), "{listen} {extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.contains("allow_insecure_network"),
            "{err}"
        );
    }
    // `hourcell dev` serves every role without credentials: loopback only.
    let out = hourcell(&[
        "dev",
        "--listen",
        "0.0.0.0:7999",
        "--data-dir",
        dir.path().join("dev").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}
