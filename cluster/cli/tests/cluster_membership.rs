//! Membership through the CLI (join, leave, return) and placement on five
//! nodes (each shard on three, the rest routed), on real processes.

use std::process::Command;
use std::time::{Duration, Instant};

use hourcell_proto::{internal, v1};
use hourcell_test_support::config::*;
use hourcell_test_support::data::*;
use hourcell_test_support::grpc::*;
use hourcell_test_support::procs::*;
use hourcell_test_support::status::*;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_hourcell");

/// Membership through the CLI: a fourth node started with `--join` becomes
/// a voter; `hourcell cluster remove-node` takes it out and `add-node`
/// puts it back; every node then answers every acknowledged write.
#[test]
fn nodes_join_leave_and_return_through_the_cli() {
    join_body(false)
}

/// The same on a sharded cluster: the node joins and leaves the metadata
/// group, every shard stays on the three nodes the map places it on, and
/// writes and reads through the new node are routed to them.
#[test]
fn nodes_join_leave_and_return_through_the_cli_sharded() {
    join_body(true)
}

fn join_body(sharded: bool) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(8);
    let (ports, metrics) = all_ports.split_at(4);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config(dir.path(), i, &ports[..3], metrics[i - 1]))
        .collect();
    if sharded {
        cfgs.iter().for_each(|c| shard(c));
    }
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    let _ = rt.block_on(leader(&ports[..3], &[0, 1, 2], Duration::from_secs(20)));
    rt.block_on(ingest_within(
        ports[0],
        events(800_000, 10, 1),
        Duration::from_secs(30),
    ));
    let status = |port: u16| status_json(BIN, port);
    let member_of = |v: &serde_json::Value, id: u64| -> String {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map_or("absent".to_string(), |n| {
                format!("{}/{}", n["member"].as_str().unwrap(), n["lag"])
            })
    };
    // In a sharded cluster, every data shard must be where the shard map
    // places it (three of the nodes), settled; a removed node in none.
    let shards_agree = |v: &serde_json::Value, id: u64, want: &str| -> bool {
        let Some(shards) = v["shards"].as_array() else {
            return true;
        };
        shards.iter().all(|sh| {
            let has = |k: &str| {
                sh[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x.as_u64() == Some(id))
            };
            let settled = ids_of(&sh["voters"]) == ids_of(&sh["replicas"])
                && sh["learners"].as_array().unwrap().is_empty()
                && sh["max_lag"] == 0;
            match want {
                "voter/0" => settled,
                _ => !has("voters") && !has("learners") && !has("replicas"),
            }
        })
    };
    let wait_member = |id: u64, want: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = status(ports[0]);
            // A removed node stops hearing the group, so its lag is
            // whatever it was when it was cut off.
            let m = member_of(&v, id);
            let member = m == want || (want.starts_with("removed/") && m.starts_with("removed/"));
            if member && shards_agree(&v, id, want) {
                return;
            }
            assert!(Instant::now() < end, "node {id} never became {want}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Node 4 knows the cluster from its config and asks to join.
    let cfg4 = write_config(dir.path(), 4, ports, metrics[3]);
    if sharded {
        shard(&cfg4);
        // Two person shards, and cell shards for each week written or
        // created ahead.
        assert!(status(ports[0])["shards"].as_array().unwrap().len() >= 4);
    }
    procs.push(spawn_args(BIN, &cfg4, &["--join"]));
    wait_member(4, "voter/0");
    if sharded {
        // Rebalancing gives the new node its share of the replicas, one
        // move at a time, until no node holds two more than another.
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let v = status(ports[0]);
            let shards = v["shards"].as_array().unwrap();
            let held: Vec<usize> = (1..=4u64)
                .map(|n| {
                    shards
                        .iter()
                        .filter(|sh| ids_of(&sh["voters"]).contains(&n))
                        .count()
                })
                .collect();
            let (lo, hi) = (held.iter().min().unwrap(), held.iter().max().unwrap());
            if *lo > 0 && hi - lo <= 1 && shards_agree(&v, 4, "voter/0") {
                break;
            }
            assert!(
                Instant::now() < end,
                "replicas never spread to node 4: {held:?} {v}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    rt.block_on(ingest_within(
        ports[3],
        events(810_000, 10, 1),
        Duration::from_secs(30),
    ));

    let cli = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let s1 = format!("127.0.0.1:{}", ports[0]);
    let out = cli(&["cluster", "remove-node", "--id", "4", "--server", &s1]);
    assert!(
        out.contains("node 4 removed") && out.contains("voters: 1, 2, 3"),
        "{out}"
    );
    wait_member(4, "removed/0");
    // Adding it again without --replace while it is a member is refused;
    // after the removal it is accepted and the node catches up.
    let addr4 = format!("127.0.0.1:{}", ports[3]);
    let s2 = format!("127.0.0.1:{}", ports[1]);
    let out = cli(&[
        "cluster", "add-node", "--id", "4", "--addr", &addr4, "--server", &s2,
    ]);
    assert!(out.contains("learner"), "{out}");
    wait_member(4, "voter/0");
    let bad = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args([
            "cluster", "add-node", "--id", "4", "--addr", &addr4, "--server", &s2,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("already a member"));
    rt.block_on(ingest_within(
        ports[1],
        events(820_000, 10, 1),
        Duration::from_secs(30),
    ));
    let want: Vec<u64> = (800_000..800_010)
        .chain(810_000..810_010)
        .chain(820_000..820_010)
        .collect();
    for &p in ports {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let got = rt.block_on(persons_on(p));
            if want.iter().all(|w| got.contains(w)) {
                break;
            }
            assert!(Instant::now() < end, "node on {p} misses writes: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `hourcell cluster status --format json` through `port`.
/// where-was for `person` over [`two_days`] through `port`: the hours with
/// places.
async fn hours_of(port: u16, person: u64) -> Option<usize> {
    // A read refused as UNAVAILABLE (its barrier not applied in time on a
    // loaded machine) is asked again, up to three times.
    for _ in 0..3 {
        let ch = patient(port).await?;
        let r = v1::query_client::QueryClient::new(ch)
            .where_was(v1::WhereWasRequest {
                person,
                window: two_days(),
                purpose: "generated test".into(),
                case_ref: "T-1".into(),
                max_staleness_ms: None,
            })
            .await;
        match r {
            Ok(r) => return Some(r.into_inner().hours.len()),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(_) => return None,
        }
    }
    None
}

/// Five nodes, three replicas per shard: each shard's raft group lives on
/// three nodes only, so most nodes hold only part of the data. Any node
/// still answers every query (routing reads of shards it does not hold)
/// and accepts any write (routing the parts); after a node is removed, its
/// replicas move to the others and nothing is lost.
#[test]
fn five_nodes_place_each_shard_on_three_and_route_the_rest() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(10);
    let (ports, metrics) = all_ports.split_at(5);
    let cfgs: Vec<_> = (1..=5)
        .map(|i| write_config(dir.path(), i, ports, metrics[i - 1]))
        .collect();
    cfgs.iter().for_each(|c| shard_as(c, 3, 2));
    let _logs = LogsOnFailure(&cfgs);
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    let _ = rt.block_on(leader(ports, &[0, 1, 2, 3, 4], Duration::from_secs(30)));
    // Writes through every node, each routed to the shards' nodes.
    let mut want: Vec<u64> = Vec::new();
    for (i, &p) in ports.iter().enumerate() {
        let first = 900_000 + i as u64 * 100;
        rt.block_on(ingest_within(
            p,
            events(first, 20, 1 + i as i64),
            Duration::from_secs(30),
        ));
        want.extend(first..first + 20);
    }
    // Two person shards and three cell shards per week, each on three of
    // the five nodes.
    let end = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = status_json(BIN, ports[0]);
        if placed_and_settled(&v, &[], 5) {
            break v;
        }
        assert!(
            Instant::now() < end,
            "shards never settled on three nodes: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let shards = v["shards"].as_array().unwrap();
    for n in 1..=5u64 {
        let held = shards
            .iter()
            .filter(|sh| ids_of(&sh["voters"]).contains(&n))
            .count();
        assert!(
            held < shards.len(),
            "node {n} holds every shard; placement did not spread them: {v}"
        );
    }
    // A node that holds no replica of a shard refuses a read routed to it
    // by an old map, saying so (the router then refreshes and routes
    // again); a node that holds one serves it.
    let sh = shards
        .iter()
        .find(|sh| !ids_of(&sh["voters"]).contains(&1))
        .unwrap();
    let group = sh["group"].as_u64().unwrap();
    let read = |port: u16| {
        rt.block_on(async {
            let ch = connect(port).await.unwrap();
            // A node's call: with the cluster secret.
            let mut r = tonic::Request::new(internal::ShardReadRequest {
                map_version: 1,
                group,
                barrier: true,
                op: hourcell_node::shard_read::ReadOp::HourSlices { from: 0, to: 1 }.encode(),
            });
            r.metadata_mut().insert(
                hourcell_server::auth::NODE_SECRET_HEADER,
                hourcell_test_support::config::SECRET.parse().unwrap(),
            );
            internal::shard_client::ShardClient::new(ch).read(r).await
        })
    };
    let err = read(ports[0]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("stale shard map"), "{err:?}");
    let holder = ids_of(&sh["voters"])[0] as usize;
    assert!(read(ports[holder - 1]).is_ok());
    // Every node answers for all of it, linearizably, right after the
    // writes were acknowledged.
    for &p in ports.iter() {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p}");
        // A bounded-staleness read routes too; its routed parts are read
        // with a barrier, so they are never staler than this node.
        let mut got = rt.block_on(persons_on_stale(p, Some(60_000))).0;
        got.sort_unstable();
        assert_eq!(got, want, "bounded-stale who-was-at through :{p}");
        for &person in [want[0], want[want.len() - 1]].iter() {
            assert_eq!(
                rt.block_on(hours_of(p, person)),
                Some(1),
                "where-was {person} via :{p}"
            );
        }
    }
    // no-activity-since walks the person shards' hour slices backwards,
    // routed where a node holds none: every node gives the same answer.
    // Registered: the persons active only at hours 1 and 2, those active
    // at hour 5, and two never seen; inactive since hour 3: the first and
    // the last two.
    rt.block_on(async {
        let ch = connect(ports[0]).await.unwrap();
        v1::registry_client::RegistryClient::new(ch.clone())
            .put_addresses(v1::PutAddressesRequest {
                addresses: vec![v1::Address {
                    code: "H1".into(),
                    lat: 30.27,
                    lng: 120.15,
                    kind: "standard".into(),
                    area: "A1".into(),
                    label: "generated".into(),
                }],
            })
            .await
            .unwrap();
        let registered: Vec<u64> = want[..40]
            .iter()
            .chain(&want[80..])
            .copied()
            .chain([777_000, 777_001])
            .collect();
        v1::registry_client::RegistryClient::new(ch)
            .put_registrations(v1::PutRegistrationsRequest {
                registrations: registered
                    .iter()
                    .map(|&person| v1::Registration {
                        person,
                        address: "H1".into(),
                        kind: "permanent".into(),
                        valid_from: T0 - 86_400,
                        valid_until: None,
                    })
                    .collect(),
            })
            .await
            .unwrap();
    });
    let mut inactive_want: Vec<u64> = want[..40].to_vec();
    inactive_want.extend([777_000, 777_001]);
    inactive_want.sort_unstable();
    for &p in ports.iter() {
        let got = rt.block_on(async {
            let ch = patient(p).await.unwrap();
            let mut s = v1::query_client::QueryClient::new(ch)
                .no_activity_since(v1::NoActivitySinceRequest {
                    since: T0 + 3 * 3600,
                    as_of: Some(T0 + 48 * 3600),
                    purpose: "generated test".into(),
                    case_ref: "T-1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                out.extend(m.persons.into_iter().map(|x| x.person));
            }
            out.sort_unstable();
            out
        });
        assert_eq!(got, inactive_want, "no-activity-since through :{p}");
    }
    // Every node read some shards through others, and says so.
    for (i, &m) in metrics.iter().enumerate() {
        let body = http_get(m, "/metrics");
        let routed: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("hourcell_routed_reads_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(routed > 0, "node {} routed no read: {body}", i + 1);
    }
    // Remove node 5: its replicas move to the other four, then it leaves
    // every group.
    let s1 = format!("127.0.0.1:{}", ports[0]);
    let out = Command::new(env!("CARGO_BIN_EXE_hourcell"))
        .args(["cluster", "remove-node", "--id", "5", "--server", &s1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Decommissioned: stopped at once, so its replicas are rebuilt from
    // the others.
    procs[4].kill();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = status_json(BIN, ports[0]);
        if placed_and_settled(&v, &[5], 5) {
            break;
        }
        assert!(Instant::now() < end, "node 5's replicas never moved: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    rt.block_on(ingest_within(
        ports[3],
        events(990_000, 20, 30),
        Duration::from_secs(30),
    ));
    want.extend(990_000..990_020);
    want.sort_unstable();
    for &p in &ports[..4] {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p} after node 5 left");
    }
    // kill -9 node 4 without removing it: every shard keeps two of its
    // three replicas, so writes and reads through the others go on, routed
    // past the dead node.
    procs[3].kill();
    let end = Instant::now() + Duration::from_secs(30);
    while !rt.block_on(ingest(ports[0], events(995_000, 20, 31))) {
        assert!(Instant::now() < end, "no write after node 4 died");
        std::thread::sleep(Duration::from_millis(200));
    }
    want.extend(995_000..995_020);
    want.sort_unstable();
    for &p in &ports[..3] {
        let mut got = rt.block_on(persons_on(p));
        got.sort_unstable();
        assert_eq!(got, want, "who-was-at through :{p} with node 4 dead");
    }
}

/// A follower whose data directory is lost does not come back as a voter
/// with an empty log: restarted without `--join` it refuses, naming
/// `--join`, because its peers knew its earlier incarnation. The leader is
/// then killed and restarted, and no acknowledged event is lost; the wiped
/// node rejoins with `--join` and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_refuses_to_vote_until_it_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let all_ports = free_ports(6);
    let (ports, metrics) = all_ports.split_at(3);
    let cfgs: Vec<_> = (1..=3)
        .map(|i| write_config(dir.path(), i, ports, metrics[i - 1]))
        .collect();
    let mut procs: Vec<Proc> = cfgs.iter().map(|c| spawn(BIN, c)).collect();
    let all = [0usize, 1, 2];
    let ldr = leader(ports, &all, Duration::from_secs(20)).await;
    ingest_within(ports[ldr], events(1_000, 50, 1), Duration::from_secs(30)).await;
    let acked: Vec<u64> = (1_000..1_050).collect();
    converge(ports, 3, Duration::from_secs(20)).await;
    // Nodes introduce themselves in the background until every peer has
    // answered (the first try is a second after serving starts).
    tokio::time::sleep(Duration::from_secs(4)).await;

    let f = all.into_iter().find(|&i| i != ldr).unwrap();
    let other = all.into_iter().find(|&i| i != ldr && i != f).unwrap();
    // Retention is decided by the leader only: a follower asked refuses,
    // naming the leader.
    let e = v1::admin_client::AdminClient::new(connect(ports[f]).await.unwrap())
        .expire(v1::ExpireRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("send this to node {}", ldr + 1)),
        "{e:?}"
    );
    procs[f].kill();
    std::fs::remove_dir_all(dir.path().join(format!("node{}", f + 1))).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["node", "--config", cfgs[f].to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the wiped node started without --join and kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("--join") && err.contains("data was lost"),
        "{err}"
    );

    // The leader dies and comes back: the two nodes that kept their logs
    // elect a leader, and every acknowledged event is there.
    procs[ldr].kill();
    procs[ldr] = spawn(BIN, &cfgs[ldr]);
    leader(ports, &[ldr, other], Duration::from_secs(30)).await;
    let seen = persons_on(ports[other]).await;
    for p in &acked {
        assert!(seen.contains(p), "acknowledged person {p} lost");
    }
    // The wiped node rejoins as a new member and catches up.
    procs[f] = spawn_args(BIN, &cfgs[f], &["--join"]);
    converge(ports, 3, Duration::from_secs(60)).await;
    let seen = persons_on(ports[f]).await;
    for p in &acked {
        assert!(seen.contains(p), "person {p} missing on the rejoined node");
    }
}
