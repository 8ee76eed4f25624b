//! `hourcell query ... --format parquet|arrow` against a node holding a
//! generated town: every kind, both formats, read back with the same
//! crates (parquet, arrow-ipc) and compared row by row with the JSON answer.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray as _;
use arrow_array::types::{Float64Type, TimestampSecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use hourcell_query::time::format_time;
use hourcell_test_support::cli::{self, json, Killed};
use hourcell_test_support::procs::free_port;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

fn ok(args: &[&str]) -> String {
    cli::ok(BIN, args)
}

/// A generated town of `persons` over two days, imported into a new node.
pub fn town_node(dir: &Path, persons: &str) -> (Killed, String) {
    let town = dir.join("town");
    ok(&[
        "gen",
        "--seed",
        "5",
        "--persons",
        persons,
        "--days",
        "2",
        "--start",
        "2026-11-01T00:00:00Z",
        "--out",
        town.to_str().unwrap(),
    ]);
    let port = free_port();
    let node = cli::start_node(BIN, dir, port);
    let s = format!("http://127.0.0.1:{port}");
    for kind in ["addresses", "registry", "events"] {
        ok(&[
            "import",
            "--kind",
            kind,
            town.join(format!("{kind}.csv")).to_str().unwrap(),
            "--server",
            &s,
        ]);
    }
    (node, s)
}

/// The rows of a batch as JSON objects keyed by column, in the JSON
/// output's terms: times RFC 3339, person ids strings, nulls null.
fn rows_of(b: &RecordBatch) -> Vec<Value> {
    let schema = b.schema();
    (0..b.num_rows())
        .map(|i| {
            let mut row = serde_json::Map::new();
            for (f, col) in schema.fields().iter().zip(b.columns()) {
                let v = if col.is_null(i) {
                    Value::Null
                } else {
                    match f.data_type() {
                        DataType::UInt64 if f.name() == "person" => {
                            json!(col.as_primitive::<UInt64Type>().value(i).to_string())
                        }
                        DataType::UInt64 => json!(col.as_primitive::<UInt64Type>().value(i)),
                        DataType::Timestamp(..) => {
                            json!(format_time(
                                col.as_primitive::<TimestampSecondType>().value(i)
                            ))
                        }
                        DataType::Utf8 => json!(col.as_string::<i32>().value(i)),
                        DataType::Boolean => json!(col.as_boolean().value(i)),
                        DataType::Float64 => degrees(col.as_primitive::<Float64Type>().value(i)),
                        DataType::List(_) => {
                            let l = col.as_list::<i32>().value(i);
                            let s = l.as_string::<i32>();
                            json!((0..s.len()).map(|j| s.value(j)).collect::<Vec<_>>())
                        }
                        t => panic!("unexpected column type {t}"),
                    }
                };
                row.insert(f.name().clone(), v);
            }
            Value::Object(row)
        })
        .collect()
}

/// The schema (with the file's metadata) and the batches of a Parquet file.
fn read_parquet(path: &Path) -> (SchemaRef, Vec<RecordBatch>) {
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(path).unwrap(),
    )
    .unwrap();
    let schema = r.schema().clone();
    let batches = r.build().unwrap().collect::<Result<_, _>>().unwrap();
    (schema, batches)
}

fn read_arrow(r: impl std::io::Read) -> (SchemaRef, Vec<RecordBatch>) {
    let r = arrow_ipc::reader::StreamReader::try_new(r, None).unwrap();
    let schema = r.schema();
    (schema, r.collect::<Result<_, _>>().unwrap())
}

/// A cell centre to nine decimals (serde_json's default parsing may be one
/// ulp off the f64 that was printed).
fn degrees(v: f64) -> Value {
    json!(format!("{v:.9}"))
}

/// JSON rows with the keys the JSON output leaves out when false or
/// absent (`suppressed`, a grid cell's `hour`) filled in.
fn normalized(rows: &[Value], columns: &[&str]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut r = r.as_object().unwrap().clone();
            for c in ["lat", "lng"] {
                if let Some(v) = r.get(c).and_then(Value::as_f64) {
                    r.insert(c.to_string(), degrees(v));
                }
            }
            for c in columns {
                if !r.contains_key(*c) {
                    let v = if *c == "suppressed" {
                        json!(false)
                    } else {
                        Value::Null
                    };
                    r.insert(c.to_string(), v);
                }
            }
            Value::Object(r)
        })
        .collect()
}

#[test]
fn parquet_and_arrow_answers_equal_the_json_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, s) = town_node(dir.path(), "300");
    let events = std::fs::read_to_string(dir.path().join("town/events.csv")).unwrap();
    let person = events.lines().nth(1).unwrap().split(',').next().unwrap();
    let addresses = std::fs::read_to_string(dir.path().join("town/addresses.csv")).unwrap();
    let a: Vec<&str> = addresses.lines().nth(1).unwrap().split(',').collect();
    let circle = format!("{},{},1500", a[1], a[2]);
    let window = [
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-11-03T00:00:00Z",
        "--as-of",
        "2026-11-03T00:00:00Z",
    ];
    let why = ["--purpose", "generated test", "--case", "T-9"];
    // (kind, its flags, the JSON key holding the rows, or none for who-was-at)
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "who-was-at",
            [&["--circle", circle.as_str()][..], &window, &why].concat(),
            "persons",
        ),
        (
            "where-was",
            [&["--person", person][..], &window, &why].concat(),
            "hours",
        ),
        (
            "occupancy",
            [&["--circle", circle.as_str()][..], &window].concat(),
            "hours",
        ),
        (
            "no-activity-since",
            [
                &["--since", "2026-11-02T12:00:00Z"][..],
                &["--as-of", "2026-11-03T00:00:00Z"],
                &why,
            ]
            .concat(),
            "persons",
        ),
        (
            "grid",
            [&["--circle", circle.as_str(), "--level", "14"][..], &window].concat(),
            "cells",
        ),
        (
            "grid",
            [
                &["--circle", circle.as_str(), "--level", "14", "--hourly"][..],
                &window,
            ]
            .concat(),
            "cells",
        ),
    ];
    for (kind, flags, key) in cases {
        let run = |format: &str, out: &str| {
            let mut args = vec!["query", kind];
            args.extend(&flags);
            args.extend(["--format", format, "--out", out, "--server", &s]);
            ok(&args)
        };
        let v = json(&run("json", "-"));
        let json_rows: Vec<Value> = match kind {
            "who-was-at" => v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| json!({ "person": p }))
                .collect(),
            _ => v[key].as_array().unwrap().clone(),
        };
        assert!(!json_rows.is_empty(), "{kind}: no rows to compare");
        let pq = dir.path().join(format!("{kind}.parquet"));
        run("parquet", pq.to_str().unwrap());
        let from_parquet = read_parquet(&pq);
        let ipc = dir.path().join(format!("{kind}.arrow"));
        run("arrow", ipc.to_str().unwrap());
        let from_arrow = read_arrow(File::open(&ipc).unwrap());
        // `--out -`: the stream on stdout, when that is a pipe.
        let mut args = vec!["query", kind];
        args.extend(&flags);
        args.extend(["--format", "arrow", "--out", "-", "--server", &s]);
        let piped = cli::run(BIN, &args);
        assert!(piped.status.success());
        let from_pipe = read_arrow(std::io::Cursor::new(piped.stdout));
        for (how, (schema, batches)) in [
            ("parquet", &from_parquet),
            ("arrow", &from_arrow),
            ("arrow on stdout", &from_pipe),
        ] {
            assert_eq!(schema.metadata()["hourcell.kind"], kind, "{how}");
            let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let rows: Vec<Value> = batches.iter().flat_map(rows_of).collect();
            assert_eq!(
                rows,
                normalized(&json_rows, &columns),
                "{kind} as {how} differs from its JSON"
            );
        }
        if kind == "who-was-at" || kind == "no-activity-since" {
            assert_eq!(
                from_parquet.0.field(0).data_type(),
                &DataType::UInt64,
                "person ids are uint64"
            );
        }
        if kind == "occupancy" {
            let meta = from_parquet.0.metadata().clone();
            assert_eq!(meta["hourcell.distinct"], v["distinct"].to_string());
            assert_eq!(meta["hourcell.from"], "2026-11-01T00:00:00Z");
        }
    }
}

/// Binary answers are not written to a terminal: refused as usage (exit
/// 2) before any node is asked. The terminal is util-linux's `script`;
/// without it the test says so and passes.
#[test]
fn binary_formats_refuse_a_terminal() {
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        eprintln!("skipped: no `script` to give the command a terminal");
        return;
    }
    // No node listens here: the refusal must come first.
    let down = format!("http://127.0.0.1:{}", free_port());
    for format in ["parquet", "arrow"] {
        let cmd =
            format!("{BIN} query occupancy --area A1 --from 0 --format {format} --server {down}");
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("is binary") && text.contains("--out"),
            "{text}"
        );
    }
}
