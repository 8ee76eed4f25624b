//! The peer comparison's Rust side (`benches/peers`): `hourcell gen
//! --peers` rows and `hourcell bench --params`, as functions and end to
//! end against a node.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use hourcell_cli::bench_params::{cycled, parse_params, ParamsError, Why};
use hourcell_cli::client::QueryRequest;
use hourcell_cli::gen_peers::{peer_row, write_peer_rows, GenPeersError};
use hourcell_proto::v1;
use hourcell_storage::cell::cell_at;
use hourcell_test_support::cli::{self, json};
use hourcell_test_support::procs::free_port;
use hourcell_town::{GenEvent, Town, TownConfig};

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

fn why() -> Why {
    Why {
        purpose: "p".into(),
        case_ref: "c".into(),
    }
}

const FILE: &str = r#"{
  "as_of": 1000000,
  "kinds": {"circle": "who-was-at", "occ": "occupancy", "where": "where-was",
            "nas": "no-activity-since", "grid": "grid", "area": "occupancy"},
  "circle": [{"lat": 30.1, "lng": 120.2, "r": 3000.0, "from": 3600, "to": 7200, "cells": [1, 2]}],
  "occ": [{"address": "H1", "from": 0, "to": 3600}],
  "where": [{"person": 18000000000000000000, "from": 0, "to": 3600}],
  "nas": [{"since": 500}],
  "grid": [{"lat1": 30.2, "lng1": 120.3, "lat2": 30.1, "lng2": 120.2, "from": 0, "to": 3600, "level": 16, "hourly": true}],
  "area": [{"lat1": 30.1, "lng1": 120.2, "lat2": 30.2, "lng2": 120.3, "from": 0, "to": 86400}],
  "cover_ms": {"circle": 1.0}
}"#;

#[test]
fn every_kind_of_a_params_file_becomes_its_request_with_the_files_as_of() {
    let sets = parse_params(Path::new("p.json"), FILE, &[], &why()).unwrap();
    let names: Vec<_> = sets.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    assert_eq!(
        names,
        [
            ("area", "occupancy"),
            ("circle", "who-was-at"),
            ("grid", "grid"),
            ("nas", "no-activity-since"),
            ("occ", "occupancy"),
            ("where", "where-was")
        ]
    );
    let QueryRequest::WhoWasAt(w) = &sets[1].requests[0] else {
        panic!("{:?}", sets[1])
    };
    assert_eq!((w.purpose.as_str(), w.case_ref.as_str()), ("p", "c"));
    assert_eq!(w.window.unwrap().as_of, Some(1_000_000));
    assert!(matches!(
        w.region.as_ref().unwrap().kind,
        Some(v1::region::Kind::Circle(v1::Circle { radius_m, .. })) if radius_m == 3000.0
    ));
    let QueryRequest::Grid(g) = &sets[2].requests[0] else {
        panic!()
    };
    assert_eq!((g.level, g.hourly), (16, true));
    // corners in either order make the same rectangle
    assert_eq!(
        g.region.as_ref().unwrap().kind,
        Some(v1::region::Kind::Rect(v1::Rect {
            lat_lo: 30.1,
            lng_lo: 120.2,
            lat_hi: 30.2,
            lng_hi: 120.3
        }))
    );
    let QueryRequest::NoActivitySince(n) = &sets[3].requests[0] else {
        panic!()
    };
    assert_eq!((n.since, n.as_of), (500, Some(1_000_000)));
    let QueryRequest::Occupancy(o) = &sets[4].requests[0] else {
        panic!()
    };
    assert_eq!(
        o.region.as_ref().unwrap().kind,
        Some(v1::region::Kind::Addresses(v1::AddressList {
            codes: vec!["H1".into()]
        }))
    );
    let QueryRequest::WhereWas(w) = &sets[5].requests[0] else {
        panic!()
    };
    assert_eq!(w.person, 18_000_000_000_000_000_000);
}

#[test]
fn only_keeps_named_sets_and_a_bad_params_file_says_what_is_wrong() {
    let sets = parse_params(Path::new("p"), FILE, &["nas".into()], &why()).unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        cycled(&sets[0].requests, 3),
        vec![sets[0].requests[0].clone(); 3]
    );
    assert_eq!(cycled(&sets[0].requests, 0).len(), 1);
    let e = parse_params(
        Path::new("p"),
        r#"{"as_of": 1, "kinds": {"x": "who-is-where"}, "x": []}"#,
        &[],
        &why(),
    )
    .unwrap_err();
    assert!(matches!(e, ParamsError::UnknownKind { .. }), "{e}");
    let e = parse_params(
        Path::new("p"),
        r#"{"as_of": 1, "kinds": {"x": "where-was"}, "x": [{"from": 0, "to": 1}]}"#,
        &[],
        &why(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameter set \"x\", entry 0: where-was needs person"
    );
    let e = parse_params(
        Path::new("p"),
        r#"{"as_of": 1, "kinds": {"x": "grid"}}"#,
        &[],
        &why(),
    )
    .unwrap_err();
    assert!(matches!(e, ParamsError::MissingSet { .. }), "{e}");
}

#[test]
fn a_peer_row_has_the_signed_person_the_hour_and_the_slice_cell_of_the_csv_point() {
    let points = HashMap::from([("H1", (30.123457, 120.5))]);
    let e = GenEvent {
        person: u64::MAX,
        time: 1_793_491_200 + 3 * 3600 + 59 * 60,
        lat: None,
        lng: None,
        address: Some("H1".into()),
        source: "utility",
    };
    let mut row = String::new();
    peer_row(&e, &points, &mut row).unwrap();
    let cell = cell_at(30.123457, 120.5, 16) as i64;
    assert_eq!(
        row,
        format!(
            "-1,2026-11-01T03:59:00Z,{},SRID=4326;POINT(120.500000 30.123457),H1,utility,{cell}\n",
            1_793_491_200 / 3600 + 3
        )
    );
    // an own point wins over the address, rounded as the CSV writes it
    let e = GenEvent {
        lat: Some(30.000_000_4),
        lng: Some(120.000_000_6),
        address: None,
        ..e
    };
    row.clear();
    peer_row(&e, &points, &mut row).unwrap();
    assert!(
        row.ends_with(&format!(
            ",SRID=4326;POINT(120.000001 30.000000),,utility,{}\n",
            cell_at(30.0, 120.000001, 16) as i64
        )),
        "{row}"
    );
    let e = GenEvent {
        lat: None,
        address: Some("nowhere".into()),
        ..e
    };
    assert!(matches!(
        peer_row(&e, &points, &mut row),
        Err(GenPeersError::NoPoint { .. })
    ));
}

#[test]
fn peer_rows_match_the_towns_events_one_file_per_day() {
    let town = Town::new(TownConfig {
        persons: 80,
        days: 3,
        ..TownConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let prep = write_peer_rows(&town, dir.path(), 2).unwrap();
    assert_eq!(prep.parts.len(), 3);
    let (mut total, mut persons) = (0u64, BTreeSet::new());
    for d in 0..3u32 {
        let text = std::fs::read_to_string(&prep.parts[d as usize]).unwrap();
        let events = town.events_for_day(d);
        assert_eq!(text.lines().count(), events.len());
        for (line, e) in text.lines().zip(&events) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 7, "{line}");
            assert_eq!(f[0].parse::<i64>().unwrap() as u64, e.person);
            assert_eq!(f[2].parse::<i64>().unwrap(), e.time.div_euclid(3600));
            assert_eq!(f[4], e.address.as_deref().unwrap_or(""));
            persons.insert(e.person);
        }
        total += events.len() as u64;
    }
    assert_eq!(prep.events, total);
    assert_eq!(prep.persons, persons.into_iter().collect::<Vec<_>>());
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("prep.json")).unwrap()).unwrap();
    assert_eq!(j["events"], total);
}

/// `gen --peers` rows carry the cells the node computes on import, and
/// `bench --params` runs a params file's sets at each client count and
/// writes their figures, answer sizes included.
#[test]
fn gen_peers_cells_agree_with_the_node_and_bench_params_reports_each_set() {
    let dir = tempfile::tempdir().unwrap();
    let town = dir.path().join("town");
    let peers = dir.path().join("peers");
    cli::ok(
        BIN,
        &[
            "gen",
            "--seed",
            "4",
            "--persons",
            "200",
            "--days",
            "2",
            "--start",
            "2026-11-01T00:00:00Z",
            "--out",
            town.to_str().unwrap(),
            "--peers",
            peers.to_str().unwrap(),
        ],
    );
    let prep = json(&std::fs::read_to_string(peers.join("prep.json")).unwrap());
    let port = free_port();
    let _node = cli::start_node(BIN, dir.path(), port);
    let server = format!("http://127.0.0.1:{port}");
    for kind in ["addresses", "registry", "events"] {
        let file = town.join(format!("{kind}.csv"));
        cli::ok(
            BIN,
            &[
                "import",
                "--kind",
                kind,
                file.to_str().unwrap(),
                "--server",
                &server,
            ],
        );
    }
    // One person's cells by hour, from the rows and from the node.
    let person = prep["persons"][0].as_u64().unwrap();
    let mut from_rows: BTreeSet<(i64, String)> = BTreeSet::new();
    for part in prep["parts"].as_array().unwrap() {
        for line in std::fs::read_to_string(part.as_str().unwrap())
            .unwrap()
            .lines()
        {
            let f: Vec<&str> = line.split(',').collect();
            if f[0].parse::<i64>().unwrap() as u64 == person {
                let cell = f[6].parse::<i64>().unwrap() as u64;
                let token = format!("{cell:016x}").trim_end_matches('0').to_string();
                from_rows.insert((f[2].parse::<i64>().unwrap() * 3600, token));
            }
        }
    }
    let (start, end) = (1_793_491_200i64, 1_793_491_200i64 + 2 * 86_400);
    let w = json(&cli::ok(
        BIN,
        &[
            "query",
            "where-was",
            "--person",
            &person.to_string(),
            "--from",
            &start.to_string(),
            "--to",
            &end.to_string(),
            "--as-of",
            &end.to_string(),
            "--purpose",
            "test",
            "--case",
            "T-1",
            "--format",
            "json",
            "--server",
            &server,
        ],
    ));
    let mut from_node: BTreeSet<(i64, String)> = BTreeSet::new();
    for h in w["hours"].as_array().unwrap() {
        let hour = hourcell_query::time::parse_time("hour", h["hour"].as_str().unwrap()).unwrap();
        for c in h["cells"].as_array().unwrap() {
            from_node.insert((hour, c.as_str().unwrap().to_string()));
        }
    }
    assert!(!from_rows.is_empty());
    assert_eq!(from_rows, from_node);

    let params = dir.path().join("params.json");
    let code = std::fs::read_to_string(town.join("addresses.csv"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        &params,
        serde_json::json!({
            "as_of": end,
            "kinds": {"who": "who-was-at", "occ": "occupancy", "where": "where-was",
                      "nas": "no-activity-since", "grid": "grid"},
            "who": [{"lat": 30.2741, "lng": 120.1551, "r": 3000.0, "from": start, "to": end, "cells": [1]}],
            "occ": [{"address": code, "from": start, "to": start + 86_400}],
            "where": [{"person": person, "from": start, "to": end}],
            "nas": [{"since": start + 86_400}],
            "grid": [{"lat1": 30.26, "lng1": 120.14, "lat2": 30.29, "lng2": 120.17,
                      "from": start, "to": start + 86_400, "level": 16, "hourly": true}],
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.path().join("rust.json");
    let printed = cli::ok(
        BIN,
        &[
            "bench",
            "--server",
            &server,
            "--params",
            params.to_str().unwrap(),
            "--clients",
            "1,4",
            "--queries",
            "0",
            "--purpose",
            "peer comparison test",
            "--case",
            "T-2",
            "--json-out",
            out.to_str().unwrap(),
        ],
    );
    assert!(printed.contains("queries/s"), "{printed}");
    let r = json(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(r["clients"], serde_json::json!([1, 4]));
    for (set, kind) in [
        ("who", "who-was-at"),
        ("occ", "occupancy"),
        ("where", "where-was"),
        ("nas", "no-activity-since"),
        ("grid", "grid"),
    ] {
        let s = &r["sets"][set];
        assert_eq!(s["kind"], kind, "{r}");
        let figs = s["figures"].as_array().unwrap();
        assert_eq!(figs.len(), 2, "{s}");
        assert_eq!(figs[0]["clients"], 1);
        assert_eq!(figs[0]["n"], 1, "one client: the set once");
        assert_eq!(figs[1]["n"], 8, "two requests per client");
        for f in figs {
            assert!(f["qps"].as_f64().unwrap() > 0.0, "{f}");
            assert!(f["p99_ms"].as_f64().unwrap() >= f["p50_ms"].as_f64().unwrap());
        }
    }
    // The answers are real: the 3 km circle holds most of the 200-person
    // town, and where-was finds the hours the rows have.
    assert!(
        r["sets"]["who"]["figures"][0]["mean_size"]
            .as_f64()
            .unwrap()
            > 50.0
    );
    let hours: BTreeSet<i64> = from_rows.iter().map(|(h, _)| *h).collect();
    assert_eq!(
        r["sets"]["where"]["figures"][0]["mean_size"]
            .as_f64()
            .unwrap(),
        hours.len() as f64
    );
    // each person-level request was audited with the given purpose
    let audit = cli::ok(
        BIN,
        &["audit", "list", "--format", "json", "--server", &server],
    );
    assert!(audit.contains("peer comparison test"), "{audit}");
}

#[test]
fn requests_per_figure_cover_the_set_and_two_per_client() {
    use hourcell_cli::bench_params::requests_at;
    assert_eq!(requests_at(20, 0, 1), 20);
    assert_eq!(requests_at(20, 0, 8), 20);
    assert_eq!(requests_at(20, 0, 32), 64);
    assert_eq!(requests_at(20, 100, 32), 100);
}
