//! Backup and restore on real processes: a backup taken through the CLI
//! while writes continue, verified, and restored into a new three-node
//! cluster on other ports. Every event acknowledged before the backup
//! began is there, the audit chain verifies, the tasks are the same; a
//! damaged backup fails `verify` with exit code 6.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hourcell_proto::v1;
use hourcell_test_support::cli::{json, ok, run};
use hourcell_test_support::config::*;
use hourcell_test_support::data::*;
use hourcell_test_support::grpc::*;
use hourcell_test_support::procs::*;

const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

/// [`task_seed`] through `port`, then the rules as of three days later.
async fn seed_tasks(port: u16) {
    let ch = patient(port).await.unwrap();
    let seed = task_seed();
    let mut reg = v1::registry_client::RegistryClient::new(ch.clone());
    reg.put_addresses(seed.addresses).await.unwrap();
    reg.put_registrations(seed.registrations).await.unwrap();
    ingest_within(port, seed.events.events, Duration::from_secs(30)).await;
    // Asked again if a freshly started cluster cannot serve the rules'
    // linearizable read in time (running them again raises nothing new).
    let mut tries = 0;
    let r = loop {
        tries += 1;
        match v1::tasks_client::TasksClient::new(ch.clone())
            .run(v1::RunTasksRequest {
                at: Some(T0 + 3 * 86_400),
            })
            .await
        {
            Err(e) if e.code() == tonic::Code::Unavailable && tries < 3 => continue,
            r => break r.unwrap().into_inner(),
        }
    };
    // (The caller checks that tasks exist: a retried run may raise none.)
    let _ = r;
}

/// Every task as (id, kind, state, person), read through `port`.
async fn tasks_of(port: u16) -> Vec<String> {
    let ch = patient(port).await.unwrap();
    let r = v1::tasks_client::TasksClient::new(ch)
        .list(v1::ListTasksRequest {
            page_size: 1000,
            purpose: "backup test".into(),
            case_ref: "B-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut v: Vec<String> = r
        .tasks
        .iter()
        .map(|t| format!("{} {} {} {}", t.id, t.kind, t.state, t.person))
        .collect();
    v.sort();
    v
}

#[test]
fn a_backup_under_ingest_restores_into_a_new_cluster() {
    backup_body(false)
}

/// The same for a sharded cluster (2 cell and 2 person shards on three
/// nodes), restored into a new cluster of four: every shard's image, the
/// metadata store's last, and the shard map placed anew on the new nodes.
#[test]
fn a_sharded_backup_restores_into_a_bigger_cluster() {
    backup_body(true)
}

fn backup_body(sharded: bool) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let n2 = if sharded { 4 } else { 3 };
    let all_ports = free_ports(6 + 2 * n2);
    let (ports, rest) = all_ports.split_at(3);
    let (metrics, rest) = rest.split_at(3);
    let (ports2, metrics2) = rest.split_at(n2);
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config(&old, i, ports, metrics[i - 1]))
        .collect();
    if sharded {
        cfgs.iter().for_each(|c| shard_as(c, 2, 2));
    }
    let _logs = LogsOnFailure(&cfgs);
    let procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    rt.block_on(leader(ports, &[0, 1, 2], Duration::from_secs(30)));
    rt.block_on(seed_tasks(ports[0]));
    let tasks = rt.block_on(tasks_of(ports[0]));
    assert!(!tasks.is_empty());

    // Writes continue through every node while the backup is taken; each
    // batch is recorded with when it was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let writer = {
        let (stop, acked, ports) = (stop.clone(), acked.clone(), ports.to_vec());
        std::thread::spawn(move || {
            let rt = runtime();
            let mut first = 1_000_000u64;
            while !stop.load(Ordering::SeqCst) {
                let p = ports[(first / 10 % 3) as usize];
                if rt.block_on(ingest(p, events(first, 10, 20))) {
                    let now = Instant::now();
                    acked
                        .lock()
                        .unwrap()
                        .extend((first..first + 10).map(|x| (now, x)));
                    first += 10;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    let backup = dir.path().join("backup");
    let server = format!("127.0.0.1:{}", ports[1]);
    // A backup names every person: it needs a purpose and a case.
    let refused = run(
        BIN,
        &[
            "backup",
            "create",
            "--server",
            &server,
            "--to",
            backup.to_str().unwrap(),
            "--purpose",
            "",
            "--case",
            "",
        ],
    );
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let out = ok(
        BIN,
        &[
            "backup",
            "create",
            "--server",
            &server,
            "--to",
            backup.to_str().unwrap(),
            "--purpose",
            "nightly backup",
            "--case",
            "CHG-1",
            "--format",
            "json",
        ],
    );
    let manifest = json(&out)["manifest"].clone();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    if sharded {
        incremental(&server, dir.path());
    }
    let before: Vec<u64> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t < began)
        .map(|(_, p)| *p)
        .collect();
    assert!(
        before.len() >= 10,
        "no write was acknowledged before the backup"
    );
    let groups = manifest["groups"].as_array().unwrap();
    // The metadata store's image comes last; a sharded backup has every
    // shard's before it (2 person shards, 2 cell shards of each week).
    let g = groups.last().unwrap();
    assert_eq!(g["role"], "meta", "{manifest}");
    assert!(g["applied_index"].as_u64().unwrap() > 5, "{manifest}");
    if sharded {
        assert!(groups.len() >= 7, "{manifest}");
        // (A shard never written to has recorded no raft index: 0.)
        let shards = &groups[..groups.len() - 1];
        assert!(shards.iter().all(|s| s["role"] == "shard"), "{manifest}");
        assert!(
            shards
                .iter()
                .filter(|s| s["applied_index"].as_u64().unwrap() > 5)
                .count()
                >= 3,
            "{manifest}"
        );
    } else {
        assert_eq!(groups.len(), 1, "{manifest}");
    }
    assert!(!backup.with_extension("partial").exists());

    // The backup is in the audit log, with its purpose and case.
    let audit = json(&ok(
        BIN,
        &["audit", "list", "--server", &server, "--format", "json"],
    ));
    let recs = audit.as_array().unwrap();
    assert!(
        recs.iter().any(|r| r["rpc"] == "Admin.Backup"
            && r["purpose"] == "nightly backup"
            && r["case"] == "CHG-1"),
        "{audit}"
    );

    let verified = verify_json(&backup);
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["verified"]["audit_records"].as_u64().unwrap() > 0);
    drop(procs);

    // A new cluster on other ports, every node restored from the backup.
    let cfgs2: Vec<_> = (1..=n2)
        .map(|i| write_config(&new, i, ports2, metrics2[i - 1]))
        .collect();
    if sharded {
        cfgs2.iter().for_each(|c| shard_as(c, 2, 2));
    }
    for c in &cfgs2 {
        ok(
            BIN,
            &[
                "backup",
                "restore",
                "--from",
                backup.to_str().unwrap(),
                "--config",
                c.to_str().unwrap(),
            ],
        );
    }
    // A second restore into a data directory that now holds data: refused.
    let again = run(
        BIN,
        &[
            "backup",
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--config",
            cfgs2[0].to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty data directory"));
    let _logs2 = LogsOnFailure(&cfgs2);
    let _procs2: Vec<Proc> = cfgs2.iter().map(|c| spawn(BIN, c)).collect();
    let all: Vec<usize> = (0..n2).collect();
    rt.block_on(leader(ports2, &all, Duration::from_secs(30)));
    // Every event acknowledged before the backup began, through every
    // new node; the tasks as they were; the audit chain intact.
    for &p in ports2 {
        let hours: Vec<u64> = rt.block_on(persons_in_hour_20(p));
        let missing: Vec<&u64> = before.iter().filter(|x| !hours.contains(x)).collect();
        assert!(missing.is_empty(), "lost through :{p}: {missing:?}");
        assert_eq!(rt.block_on(tasks_of(p)), tasks, "tasks through :{p}");
    }
    if sharded {
        // Each restored shard runs on the three of the four new nodes
        // that the restored map names, with nothing left to move.
        hourcell_test_support::status::wait_settled(BIN, ports2[3], &[], 10, "restored");
    }
    let server2 = format!("127.0.0.1:{}", ports2[0]);
    let v = json(&ok(
        BIN,
        &["audit", "verify", "--server", &server2, "--format", "json"],
    ));
    assert_eq!(v["verified"], true, "{v}");
    // The new cluster takes writes.
    rt.block_on(ingest_within(
        ports2[2],
        events(5_000_000, 5, 21),
        Duration::from_secs(30),
    ));

    // A damaged image fails verification with exit code 6.
    let img = backup.join(g["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&img, bytes).unwrap();
    let bad = run(BIN, &["backup", "verify", backup.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(6), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SHA-256"));
}

/// With writes stopped, a backup and then an incremental one on top of it:
/// the second takes over every shard image whose store applied nothing
/// since (here all that hold data) and fetches the metadata store again
/// (it records each backup in its audit log); it verifies on its own.
fn incremental(server: &str, dir: &std::path::Path) {
    let create = |to: &std::path::Path, base: Option<&std::path::Path>| {
        let mut args = vec![
            "backup",
            "create",
            "--server",
            server,
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "nightly backup",
            "--case",
            "CHG-2",
            "--format",
            "json",
        ];
        if let Some(b) = base {
            args.extend(["--base", b.to_str().unwrap()]);
        }
        json(&ok(BIN, &args))["manifest"]["groups"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (full, inc) = (dir.join("full"), dir.join("incremental"));
    let first = create(&full, None);
    let second = create(&inc, Some(&full));
    let with_data: Vec<u64> = first
        .iter()
        .filter(|g| g["role"] == "shard" && g["applied_index"].as_u64().unwrap() > 0)
        .map(|g| g["group"].as_u64().unwrap())
        .collect();
    let reused: Vec<u64> = second
        .iter()
        .filter(|g| g["reused"] == true)
        .map(|g| g["group"].as_u64().unwrap())
        .collect();
    assert!(with_data.len() >= 3, "{first:?}");
    assert_eq!(reused, with_data, "{second:?}");
    let meta = second.last().unwrap();
    assert_eq!(meta["reused"], false, "{meta}");
    let v = verify_json(&inc);
    assert_eq!(v["ok"], true, "{v}");
    // A --base that is no whole backup is refused before anything is sent.
    let bad = run(
        BIN,
        &[
            "backup",
            "create",
            "--server",
            server,
            "--to",
            dir.join("x").to_str().unwrap(),
            "--purpose",
            "p",
            "--case",
            "c",
            "--base",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(bad.status.code(), Some(6), "{bad:?}");
}

/// `hourcell backup verify DIR --format json`, which must succeed.
fn verify_json(dir: &std::path::Path) -> serde_json::Value {
    json(&ok(
        BIN,
        &[
            "backup",
            "verify",
            dir.to_str().unwrap(),
            "--format",
            "json",
        ],
    ))
}

/// who-was-at over the test circle in hour 20 (where the writer writes).
async fn persons_in_hour_20(port: u16) -> Vec<u64> {
    let ch = patient(port).await.unwrap();
    let mut r = who_request(None);
    r.window = Some(v1::Window {
        start: T0 + 20 * 3600,
        end: T0 + 21 * 3600,
        as_of: Some(T0 + 21 * 3600),
    });
    let mut s = v1::query_client::QueryClient::new(ch)
        .who_was_at(r)
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.extend(m.persons);
    }
    out
}
