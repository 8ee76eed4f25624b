//! `hourcell import` from Parquet (plain columns and a GeoParquet point),
//! gzip'd CSV and stdin, answering as the CSV import does; and imports that
//! outlast a node that is not up yet or a cut connection.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_array::{TimestampSecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use hourcell_test_support::cli::{self, json};
use hourcell_test_support::links::Link;
use hourcell_test_support::procs::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

fn ok(args: &[&str]) -> String {
    cli::ok(BIN, args)
}

fn gen(dir: &Path, persons: &str, days: &str) -> PathBuf {
    let town = dir.join("town");
    ok(&[
        "gen",
        "--seed",
        "9",
        "--persons",
        persons,
        "--days",
        days,
        "--start",
        "2026-11-01T00:00:00Z",
        "--out",
        town.to_str().unwrap(),
    ]);
    town
}

/// The CSV's rows as records keyed by its header.
fn csv_rows(path: &Path) -> (Vec<String>, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    (header, r.records().map(Result::unwrap).collect())
}

fn col<'a>(header: &[String], rows: &'a [csv::StringRecord], name: &str) -> Vec<&'a str> {
    let i = header.iter().position(|h| h == name).unwrap();
    rows.iter().map(|r| r.get(i).unwrap()).collect()
}

fn opt_f64(v: &[&str]) -> ArrayRef {
    Arc::new(Float64Array::from_iter(
        v.iter().map(|s| s.parse::<f64>().ok()),
    ))
}

fn text(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v.iter().copied()))
}

fn unix(s: &str) -> i64 {
    hourcell_query::time::parse_time("t", s).unwrap()
}

fn write_parquet(path: &Path, fields: Vec<Field>, columns: Vec<ArrayRef>, geo: Option<&str>) {
    let mut schema = Schema::new(fields);
    if let Some(g) = geo {
        let meta: std::collections::HashMap<String, String> =
            [("geo".to_string(), g.to_string())].into();
        schema = schema.with_metadata(meta);
    }
    let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// events.csv as Parquet: person uint64, time a UTC timestamp, lat/lng
/// float64 (null where the CSV is empty), address and source utf8.
pub fn events_parquet(town: &Path, out: &Path) -> usize {
    let (h, rows) = csv_rows(&town.join("events.csv"));
    let ts = Field::new(
        "time",
        DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
        false,
    );
    write_parquet(
        out,
        vec![
            Field::new("person", DataType::UInt64, false),
            ts,
            Field::new("lat", DataType::Float64, true),
            Field::new("lng", DataType::Float64, true),
            Field::new("address", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
        ],
        vec![
            Arc::new(UInt64Array::from_iter_values(
                col(&h, &rows, "person")
                    .iter()
                    .map(|p| p.parse::<u64>().unwrap()),
            )),
            Arc::new(
                TimestampSecondArray::from_iter_values(
                    col(&h, &rows, "time").iter().map(|t| unix(t)),
                )
                .with_timezone("UTC"),
            ),
            opt_f64(&col(&h, &rows, "lat")),
            opt_f64(&col(&h, &rows, "lng")),
            text(&col(&h, &rows, "address")),
            text(&col(&h, &rows, "source")),
        ],
        None,
    );
    rows.len()
}

/// WKB of a point, little-endian.
fn wkb(lat: f64, lng: f64) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend(1u32.to_le_bytes());
    b.extend(lng.to_le_bytes());
    b.extend(lat.to_le_bytes());
    b
}

/// addresses.csv as GeoParquet: a WKB point column `geom` named by the
/// `geo` metadata instead of lat/lng.
fn addresses_geoparquet(town: &Path, out: &Path) {
    let (h, rows) = csv_rows(&town.join("addresses.csv"));
    let (lat, lng) = (col(&h, &rows, "lat"), col(&h, &rows, "lng"));
    let points: Vec<Vec<u8>> = lat
        .iter()
        .zip(&lng)
        .map(|(a, b)| wkb(a.parse().unwrap(), b.parse().unwrap()))
        .collect();
    write_parquet(
        out,
        vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("geom", DataType::Binary, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("area", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
        ],
        vec![
            text(&col(&h, &rows, "code")),
            Arc::new(BinaryArray::from_iter_values(points.iter())),
            text(&col(&h, &rows, "kind")),
            text(&col(&h, &rows, "area")),
            text(&col(&h, &rows, "label")),
        ],
        Some(
            r#"{"version":"1.1.0","primary_column":"geom","columns":{"geom":{"encoding":"WKB","geometry_types":["Point"]}}}"#,
        ),
    );
}

/// registry.csv as Parquet: person uint64 named `Person`, valid_from int64 unix seconds,
/// valid_until utf8 RFC 3339 (null where empty).
fn registry_parquet(town: &Path, out: &Path) {
    let (h, rows) = csv_rows(&town.join("registry.csv"));
    let until: Vec<Option<&str>> = col(&h, &rows, "valid_until")
        .into_iter()
        .map(|s| (!s.is_empty()).then_some(s))
        .collect();
    write_parquet(
        out,
        vec![
            Field::new("Person", DataType::UInt64, false),
            Field::new("address", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("valid_from", DataType::Int64, false),
            Field::new("valid_until", DataType::Utf8, true),
        ],
        vec![
            Arc::new(UInt64Array::from_iter_values(
                col(&h, &rows, "person")
                    .iter()
                    .map(|p| p.parse::<u64>().unwrap()),
            )),
            text(&col(&h, &rows, "address")),
            text(&col(&h, &rows, "kind")),
            Arc::new(Int64Array::from_iter_values(
                col(&h, &rows, "valid_from").iter().map(|t| unix(t)),
            )),
            Arc::new(StringArray::from(until)),
        ],
        None,
    );
}

fn import_json(file: &str, kind: &str, s: &str) -> serde_json::Value {
    json(&ok(&[
        "import", "--kind", kind, file, "--format", "json", "--server", s,
    ]))
}

/// Answers that depend on every imported row kind.
fn answers(s: &str, town: &Path) -> Vec<serde_json::Value> {
    let (h, rows) = csv_rows(&town.join("addresses.csv"));
    let area = col(&h, &rows, "area")[0].to_string();
    let circle = format!(
        "{},{},1500",
        col(&h, &rows, "lat")[0],
        col(&h, &rows, "lng")[0]
    );
    let window = [
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-03T00:00:00Z",
        "--as-of",
        "2026-11-03T00:00:00Z",
    ];
    let why = ["--purpose", "generated test", "--case", "T-3"];
    let q = |args: Vec<&str>| {
        let mut a = vec!["query"];
        a.extend(args);
        a.extend(["--format", "json", "--server", s]);
        json(&ok(&a))
    };
    vec![
        q([&["occupancy", "--circle", &circle][..], &window].concat()),
        q([&["occupancy", "--area", &area][..], &window].concat()),
        q([&["who-was-at", "--circle", &circle][..], &window, &why].concat()),
        q([
            &["no-activity-since", "--since", "2026-11-02T00:00:00Z"][..],
            &["--as-of", "2026-11-03T00:00:00Z", "--area", &area],
            &why,
        ]
        .concat()),
    ]
}

#[test]
fn parquet_geoparquet_gzip_and_stdin_import_as_csv_does() {
    let dir = tempfile::tempdir().unwrap();
    let town = gen(dir.path(), "300", "2");
    let (csv_dir, pq_dir) = (dir.path().join("csv"), dir.path().join("pq"));
    std::fs::create_dir_all(&csv_dir).unwrap();
    std::fs::create_dir_all(&pq_dir).unwrap();
    let pa = free_port();
    let _a = cli::start_node(BIN, &csv_dir, pa);
    let pb = free_port();
    let _b = cli::start_node(BIN, &pq_dir, pb);
    let (sa, sb) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    for kind in ["addresses", "registry", "events"] {
        let f = town.join(format!("{kind}.csv"));
        import_json(f.to_str().unwrap(), kind, &sa);
    }

    let addresses = dir.path().join("addresses.parquet");
    addresses_geoparquet(&town, &addresses);
    let registry = dir.path().join("registry.data"); // no extension: by content
    registry_parquet(&town, &registry);
    let events = dir.path().join("events.parquet");
    let n = events_parquet(&town, &events);
    let rows = |k: &str| csv_rows(&town.join(format!("{k}.csv"))).1.len() as u64;
    let v = import_json(addresses.to_str().unwrap(), "addresses", &sb);
    assert_eq!(v["accepted"].as_u64(), Some(rows("addresses")), "{v}");
    let v = import_json(registry.to_str().unwrap(), "registry", &sb);
    assert_eq!(v["accepted"].as_u64(), Some(rows("registry")), "{v}");
    // Events through stdin, as Parquet.
    let out = Command::new(BIN)
        .args([
            "import", "--kind", "events", "-", "--format", "json", "--server", &sb,
        ])
        .stdin(File::open(&events).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["accepted"].as_u64(), Some(n as u64), "{v}");
    assert_eq!(answers(&sa, &town), answers(&sb, &town));

    // gzip'd CSV (by content; the name says nothing) is the CSV.
    let gz = dir.path().join("events.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
    enc.write_all(&std::fs::read(town.join("events.csv")).unwrap())
        .unwrap();
    enc.finish().unwrap();
    let v = import_json(gz.to_str().unwrap(), "events", &sb);
    assert_eq!(v["accepted"].as_u64(), Some(n as u64), "{v}");
    assert_eq!(answers(&sa, &town), answers(&sb, &town));

    // Bad rows are reported by row number and why; bad columns fail the file.
    let bad = dir.path().join("bad.parquet");
    write_parquet(
        &bad,
        vec![
            Field::new("person", DataType::Int64, true),
            Field::new("time", DataType::Utf8, false),
            Field::new("lat", DataType::Float64, true),
            Field::new("lng", DataType::Float64, true),
            Field::new("source", DataType::Utf8, false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(-3), Some(4)])),
            text(&[
                "2026-11-01T10:00:00Z",
                "2026-11-01T10:00:00Z",
                "0",
                "yesterday",
            ]),
            Arc::new(Float64Array::from(vec![
                Some(30.2),
                Some(30.2),
                Some(30.2),
                None,
            ])),
            Arc::new(Float64Array::from(vec![
                Some(120.1),
                Some(120.1),
                Some(120.1),
                None,
            ])),
            text(&["gps", "gps", "gps", "gps"]),
        ],
        None,
    );
    let v = import_json(bad.to_str().unwrap(), "events", &sb);
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(3)),
        "{v}"
    );
    let first = v["first_rejections"].as_array().unwrap();
    let at = |row: u64| {
        first
            .iter()
            .find(|r| r["row"] == row)
            .unwrap_or_else(|| panic!("no rejection at row {row}: {v}"))
    };
    assert_eq!(
        (at(2)["field"].as_str(), at(3)["field"].as_str()),
        (Some("person"), Some("person"))
    );
    assert_eq!(at(4)["field"], "time", "{v}");
    write_parquet(
        &bad,
        vec![
            Field::new("person", DataType::UInt64, false),
            Field::new("time", DataType::Float64, false),
        ],
        vec![
            Arc::new(UInt64Array::from(vec![1])),
            Arc::new(Float64Array::from(vec![1.5])),
        ],
        None,
    );
    let out = cli::run(
        BIN,
        &[
            "import",
            "--kind",
            "events",
            bad.to_str().unwrap(),
            "--server",
            &sb,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column time is Float64"), "{err}");
}

/// An import started before its node waits for it, and a connection cut
/// in the middle of an import costs a retry, not the import.
#[test]
fn import_outlasts_a_late_node_and_a_cut_connection() {
    let dir = tempfile::tempdir().unwrap();
    let town = gen(dir.path(), "400", "3");
    let events = town.join("events.csv");
    let n = csv_rows(&events).1.len() as u64;
    let addresses = town.join("addresses.csv");
    let n_addresses = csv_rows(&addresses).1.len() as u64;
    let port = free_port();
    let s = format!("http://127.0.0.1:{port}");
    // Not killed on a failure below: it gives up by itself (--retry-for).
    let import = Command::new(BIN)
        .args(["import", "--kind", "addresses", addresses.to_str().unwrap()])
        .args([
            "--batch",
            "50",
            "--retry-for",
            "60",
            "--format",
            "json",
            "--server",
            &s,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the import time to find no node (the node then takes longer
    // than this to come up anyway).
    std::thread::sleep(Duration::from_millis(500));
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let _node = cli::start_node(BIN, &node_dir, port);
    let out = import.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("trying again"), "{err}");
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["accepted"].as_u64(), Some(n_addresses), "{v}");
    let registry = town.join("registry.csv");
    ok(&[
        "import",
        "--kind",
        "registry",
        registry.to_str().unwrap(),
        "--server",
        &s,
    ]);

    // Through a link that is cut for a second while batches are in flight.
    let link = Link::to(port);
    let via = format!("http://127.0.0.1:{}", link.port);
    let child = Command::new(BIN)
        .args(["import", "--kind", "events", events.to_str().unwrap()])
        .args([
            "--batch",
            "10",
            "--in-flight",
            "1",
            "--format",
            "json",
            "--server",
            &via,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hundreds of small batches: the import is still sending when cut.
    std::thread::sleep(Duration::from_millis(200));
    link.set_cut(true);
    std::thread::sleep(Duration::from_millis(1000));
    link.set_cut(false);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = json(&String::from_utf8_lossy(&out.stdout));
    // Sent twice or not, each event is stored once: all are accepted.
    assert_eq!(v["accepted"].as_u64(), Some(n), "{v}");
    assert!(v["retries"].as_u64() >= Some(1), "the cut was not met: {v}");
    assert!(err.contains("sending it again"), "{err}");
}

/// Debug-build import speed of the same events as CSV and as Parquet
/// (`cargo test ... import_rate -- --ignored --nocapture`).
#[test]
#[ignore]
fn import_rate_csv_vs_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let town = gen(dir.path(), "3000", "14");
    let events = town.join("events.csv");
    let pq = dir.path().join("events.parquet");
    let n = events_parquet(&town, &pq);
    let others = [
        ("addresses", town.join("addresses.csv")),
        ("registry", town.join("registry.csv")),
    ];
    for (name, file) in [
        ("csv", &events),
        ("parquet", &pq),
        ("csv", &events),
        ("parquet", &pq),
    ] {
        let node_dir = dir.path().join(format!("node-{name}-{}", free_port()));
        std::fs::create_dir_all(&node_dir).unwrap();
        let port = free_port();
        let _node = cli::start_node(BIN, &node_dir, port);
        let s = format!("http://127.0.0.1:{port}");
        for (kind, f) in &others {
            import_json(f.to_str().unwrap(), kind, &s);
        }
        let t = Instant::now();
        let v = import_json(file.to_str().unwrap(), "events", &s);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(v["accepted"].as_u64(), Some(n as u64));
        println!(
            "{name}: {n} events in {secs:.2} s = {:.0} events/s ({} bytes)",
            n as f64 / secs,
            std::fs::metadata(file).unwrap().len()
        );
    }
}
