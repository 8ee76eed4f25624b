//! The Python client example (`proto/python`) against a node: who-was-at
//! with a purpose and case through a bearer token, occupancy as a pandas
//! DataFrame. Runs when a Python with grpcio, grpcio-tools and pandas is
//! found (`HOURCELL_PYTHON`, else `python3`); says it skipped otherwise.

use std::process::Command;

use hourcell_proto::v1;
use hourcell_server::auth::Role;
use hourcell_test_support::data::{addr, ev};
use hourcell_test_support::secure::{audit, req, start_with, token, T0};

const EXP: i64 = T0 + 10 * 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_asks_with_a_purpose_and_reads_a_dataframe() {
    let py = std::env::var("HOURCELL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools, pandas"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "skipped: {py} lacks grpcio, grpcio-tools or pandas \
             (pip install -r proto/python/requirements.txt, or set HOURCELL_PYTHON)"
        );
        return;
    }
    let h = start_with(90, 0, |_| {}).await;
    let ingest = token("ingest-1", &[Role::Ingest], EXP);
    v1::registry_client::RegistryClient::new(h.channel.clone())
        .put_addresses(req(
            v1::PutAddressesRequest {
                addresses: vec![addr("H1", 30.2741, 120.1551, "A1")],
            },
            &ingest,
        ))
        .await
        .unwrap();
    // Person 31 + i at H1 in hours i..3 of T0 + 1 day, and person 2^63 + 5
    // (an id a double could not hold) in hour 0.
    let big = (1u64 << 63) + 5;
    let day = T0 + 86_400;
    let mut events: Vec<v1::Event> = (0..3)
        .flat_map(|i| (i..3).map(move |h| ev(31 + i as u64, day + h * 3600 + 60, "H1", "utility")))
        .collect();
    events.push(ev(big, day + 60, "H1", "utility"));
    let r = v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(v1::IngestRequest { events }, &ingest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 7, "{r:?}");

    let inv = token("investigator-1", &[Role::Investigator], EXP);
    let stubs = tempfile::tempdir().unwrap();
    let example = manifest_dir().join("../proto/python/example.py");
    let (start, end) = (day.to_string(), (day + 86_400).to_string());
    let server = h.addr.to_string();
    let out = tokio::task::spawn_blocking({
        let stubs = stubs.path().to_path_buf();
        move || {
            Command::new(py)
                .arg(example)
                .args(["--server", &server, "--token", &inv, "--addresses", "H1"])
                .args(["--start", &start, "--end", &end])
                .args(["--purpose", "generated check", "--case", "PY-1"])
                .args(["--grid-circle", "30.2741,120.1551,100"])
                .env("HOURCELL_PY_STUBS", stubs)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("who-was-at: 4 persons: 31 32 33 {big}")),
        "{stdout}"
    );
    // Hours 0, 1, 2 of the day hold 2, 2 and 3 persons.
    assert!(
        stdout.contains("occupancy: 24 hours, 3 with someone, peak 3"),
        "{stdout}"
    );
    // The grid as a DataFrame: the three hours in the address's cell.
    assert!(
        stdout.contains("grid: 3 cell-hours, 1 cells, peak 3"),
        "{stdout}"
    );
    // The query was audited with the purpose and case the client stated.
    let records = audit(&h).await;
    let asked = records
        .iter()
        .find(|r| r.rpc == "Query.WhoWasAt")
        .expect("audited");
    assert_eq!(
        (asked.purpose.as_str(), asked.case_ref.as_str()),
        ("generated check", "PY-1")
    );
}

/// This crate's directory as cargo gives it to the running test (a test
/// binary reused from a checkout at another path still reads this one's
/// files); the directory it was built in otherwise.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
