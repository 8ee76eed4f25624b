//! Routed reads batched per node (issue 19): three sharded nodes in
//! process, over gRPC, each shard on one of them (so most of the shards a
//! query reads are on the other two, several on each). A query through
//! node 1 answers exactly as a single unsharded node loaded with the same
//! town, and its fan-out (every day of the window, of cell slices or of
//! addresses) sends one request to each other node that holds shards it
//! reads, carrying all of them, rather than one request per shard and day.
//! Peers that refuse reads of several days, as nodes of an older release
//! do, are read a day at a time, with the same answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hourcell_cli::dev::load_town;
use hourcell_node::config::{ClusterConfig, NodeConfig, PeerConfig};
use hourcell_node::node::{Clock, Node};
use hourcell_node::replication::transport::Transport;
use hourcell_node::route::{PeerClient, PeerError, ShardProposal, ShardRead};
use hourcell_node::shard_read::{decode, ReadOp};
use hourcell_node::types::ShardMembers;
use hourcell_node::{Introduction, Network};
use hourcell_query::Region;
use hourcell_server::network::GrpcNetwork;
use hourcell_storage::shard::{week_of_day, ShardId};
use hourcell_storage::{ApplyOutcome, ShardPart};
use hourcell_town::{Town, TownConfig};
use std::sync::Mutex;

const CELLS: u32 = 6;
const PERSONS: u32 = 3;

/// What the peer client's calls return (`futures::future::BoxFuture`).
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One routed read request as sent: the node it went to, the groups it
/// read and the op.
type Sent = (u64, Vec<u64>, ReadOp);

/// The node's peer client, recording every read request it sends. While
/// `old` is set, the peers refuse reads of several days with the words of
/// a node from before them (they could not decode the op).
struct Recording {
    inner: Arc<dyn PeerClient>,
    sent: Arc<Mutex<Vec<Sent>>>,
    old: Arc<AtomicBool>,
}

impl PeerClient for Recording {
    fn read(
        &self,
        node: u64,
        addr: String,
        req: ShardRead,
    ) -> BoxFuture<Result<Vec<Vec<u8>>, PeerError>> {
        let groups = req.parts.iter().map(|p| p.group).collect();
        let op: ReadOp = decode(&req.op).expect("a read op");
        let several = matches!(op, ReadOp::CellDaysMany { .. } | ReadOp::AddressDays { .. });
        self.sent.lock().unwrap().push((node, groups, op));
        if several && self.old.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(PeerError::Refused(
                    "bad reply from a shard replica: unexpected variant index: 8".into(),
                ))
            });
        }
        self.inner.read(node, addr, req)
    }

    fn propose(
        &self,
        node: u64,
        addr: String,
        req: ShardProposal,
    ) -> BoxFuture<Result<Vec<ApplyOutcome>, PeerError>> {
        self.inner.propose(node, addr, req)
    }

    fn members(&self, node: u64, addr: String) -> BoxFuture<Option<(u64, Vec<ShardMembers>)>> {
        self.inner.members(node, addr)
    }

    fn forget(&self, node: u64) {
        self.inner.forget(node)
    }
}

/// gRPC, with the shard reads recorded.
struct RecordingNetwork {
    grpc: GrpcNetwork,
    sent: Arc<Mutex<Vec<Sent>>>,
    old: Arc<AtomicBool>,
}

impl Network for RecordingNetwork {
    fn raft_transport(&self, me: u64, peers: &HashMap<u64, String>) -> Arc<dyn Transport> {
        self.grpc.raft_transport(me, peers)
    }

    fn peer_client(&self) -> Arc<dyn PeerClient> {
        Arc::new(Recording {
            inner: self.grpc.peer_client(),
            sent: self.sent.clone(),
            old: self.old.clone(),
        })
    }

    fn introduce(
        &self,
        me: u64,
        incarnation: u64,
        joining: bool,
        peers: &HashMap<u64, String>,
    ) -> Introduction {
        self.grpc.introduce(me, incarnation, joining, peers)
    }
}

fn config(dir: &std::path::Path, cluster: Option<(u64, &[u16])>) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir.to_path_buf());
    cfg.block_cache_mb = 16;
    cfg.security.insecure = true;
    cfg.security.anonymous_roles = vec!["all".into()];
    cfg.security.retention_days = 36_500;
    cfg.rules.hourly = false;
    if let Some((id, ports)) = cluster {
        cfg.security.cluster_secret = Some(hourcell_node::config::Secret(
            "routed-batch-test-cluster-secret-0123456789".into(),
        ));
        cfg.cluster = Some(ClusterConfig {
            node_id: id,
            peers: ports
                .iter()
                .enumerate()
                .map(|(i, p)| PeerConfig {
                    id: i as u64 + 1,
                    addr: format!("127.0.0.1:{p}"),
                })
                .collect(),
            tick_ms: 20,
            join: false,
            cell_shards: CELLS,
            person_shards: PERSONS,
            replicas: 1,
            ..Default::default()
        });
    }
    cfg
}

fn town() -> Town {
    Town::new(TownConfig {
        seed: 19,
        persons: 300,
        days: 3,
        ..TownConfig::default()
    })
}

/// The queries compared, each as (what, run it on a node, the days it
/// reads): who-was-at and occupancy over spatial regions (a day of cell
/// slices per step) and over addresses (an address's day per step).
fn queries(town: &Town) -> Vec<(String, Region, i64, i64)> {
    let start = town.config().start_unix;
    let addrs = town.addresses();
    let mut out = Vec::new();
    for (k, a) in addrs.iter().enumerate().step_by(addrs.len() / 5 + 1) {
        let day = start + (k as i64 % 3) * 86_400;
        out.push((
            format!("1 km around {}", a.code),
            Region::Circle {
                lat: a.lat,
                lng: a.lng,
                radius_m: 1_000.0,
            },
            day,
            day + 86_400,
        ));
        out.push((
            format!("two days around {}", a.code),
            Region::Rect {
                lat_lo: a.lat - 0.004,
                lng_lo: a.lng - 0.004,
                lat_hi: a.lat + 0.003,
                lng_hi: a.lng + 0.005,
            },
            start,
            start + 2 * 86_400,
        ));
        out.push((
            format!("address {}", a.code),
            Region::Addresses(vec![a.code.clone()]),
            day,
            day + 86_400,
        ));
    }
    out
}

/// A query's answers as text, after the read barrier a client query takes.
fn ask(node: &Node, region: &Region, from: i64, to: i64, as_of: i64) -> String {
    node.read_barrier_query(Some((from, to))).unwrap();
    let q = node.query();
    let who = q.who_was_at(region, from, to, as_of);
    assert!(who.is_ok(), "{who:?}");
    node.read_barrier_query(Some((from, to))).unwrap();
    let occ = q.occupancy(region, from, to, as_of);
    assert!(occ.is_ok(), "{occ:?}");
    format!("{who:?}\n{occ:?}")
}

/// Opens node `id` of the cluster and serves it on its port.
async fn start(
    dir: &std::path::Path,
    id: u64,
    ports: &[u16],
    clock: Clock,
    sent: Arc<Mutex<Vec<Sent>>>,
    old: Arc<AtomicBool>,
) -> Arc<Node> {
    let cfg = config(dir, Some((id, ports)));
    let network = RecordingNetwork {
        grpc: GrpcNetwork {
            dialer: hourcell_server::channel::PeerDialer::of_node(&cfg.security).unwrap(),
        },
        sent,
        old,
    };
    let node = Node::open(&cfg, clock, &network).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", ports[id as usize - 1]))
        .await
        .unwrap();
    tokio::spawn(hourcell_server::serve(
        node.clone(),
        cfg.security.clone(),
        listener,
        std::future::pending(),
    ));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_step_sends_one_read_per_node_and_answers_as_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let town_end = town().end_unix();
    let clock: Clock = Arc::new(move || town_end);
    let plain = hourcell_server::open_node(&config(&dir.path().join("plain"), None), clock.clone())
        .unwrap();
    let ports = hourcell_test_support::procs::free_ports(3);
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let old: Arc<AtomicBool> = Arc::default();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let d = dir.path().join(format!("n{id}"));
        nodes.push(start(&d, id, &ports, clock.clone(), sent.clone(), old.clone()).await);
    }
    let n1 = nodes[0].clone();
    let p = plain.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while n1.read_barrier_all().is_err() {
            assert!(Instant::now() < deadline, "no leader within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        load_town(&p, town(), false).unwrap();
        // Routed writes may meet shards still electing: a repeated load
        // is harmless.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = load_town(&n1, town(), false) {
            assert!(Instant::now() < deadline, "cannot load the town: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let t = town();
        let mut steps = 0;
        let mut found = 0;
        for (what, region, from, to) in queries(&t) {
            let want = ask(&p, &region, from, to, town_end);
            sent.lock().unwrap().clear();
            let got = ask(&n1, &region, from, to, town_end);
            assert_eq!(got, want, "{what}: the cluster answers as one node");
            if !want.contains("persons: []") {
                found += 1;
            }
            // Where the cell shards of the days read are: those on the
            // other nodes, by day and node.
            let days: Vec<i64> = (from..to)
                .step_by(86_400)
                .map(|t| t.div_euclid(86_400))
                .collect();
            let mut remote: BTreeMap<i64, BTreeMap<u64, BTreeSet<u64>>> = BTreeMap::new();
            for &day in &days {
                let w = week_of_day(day);
                for index in 0..CELLS as usize {
                    let id = ShardId {
                        part: ShardPart::Cells,
                        week: w,
                        index,
                    };
                    let (_, held) = n1.shard_replicas(id);
                    assert_eq!(held.len(), 1, "{what}: one replica of {id:?}");
                    if held[0] != 1 {
                        remote
                            .entry(day)
                            .or_default()
                            .entry(held[0])
                            .or_default()
                            .insert(hourcell_node::shards::group_of(id));
                    }
                }
            }
            // The groups of every day, by node.
            let mut by_node: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
            for m in remote.values() {
                for (n, groups) in m {
                    by_node.entry(*n).or_default().extend(groups);
                }
            }
            // Every read of the query's cell shards: one request per query
            // and node for all the days, carrying every shard of those days
            // that node holds.
            let reads: Vec<Sent> = sent
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, op)| {
                    matches!(
                        op,
                        ReadOp::CellDaysMany { .. }
                            | ReadOp::AddressDays { .. }
                            | ReadOp::CellDaysIn { .. }
                            | ReadOp::AddressDay { .. }
                    )
                })
                .cloned()
                .collect();
            assert!(!reads.is_empty(), "{what}: nothing routed");
            let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
            for (node, groups, op) in &reads {
                let asked = match op {
                    ReadOp::CellDaysMany { days, .. } | ReadOp::AddressDays { days, .. } => days,
                    _ => panic!("{what}: a read of one day: {op:?}"),
                };
                assert_eq!(asked, &days, "{what}: the days of the window");
                let want: Vec<u64> = by_node[node].iter().copied().collect();
                let mut got = groups.clone();
                got.sort_unstable();
                assert_eq!(got, want, "{what}: a request to node {node}");
                *per_node.entry(*node).or_default() += 1;
            }
            // Who-was-at and occupancy each ask each node once.
            assert_eq!(
                per_node.keys().collect::<Vec<_>>(),
                by_node.keys().collect::<Vec<_>>(),
                "{what}"
            );
            assert!(
                per_node.values().all(|n| *n == 2),
                "{what}: one request per node from each query: {per_node:?}"
            );
            steps += per_node.len();
        }
        // Peers of an older release refuse the read of several days: the
        // query is read a day at a time and answers alike.
        old.store(true, Ordering::SeqCst);
        for (what, region, from, to) in queries(&t) {
            let want = ask(&p, &region, from, to, town_end);
            sent.lock().unwrap().clear();
            let got = ask(&n1, &region, from, to, town_end);
            assert_eq!(got, want, "{what}: older peers, the same answers");
            let ops: Vec<ReadOp> = sent.lock().unwrap().iter().map(|s| s.2.clone()).collect();
            assert!(
                ops.iter()
                    .any(|op| matches!(op, ReadOp::CellDaysIn { .. } | ReadOp::AddressDay { .. })),
                "{what}: read a day at a time after the refusal: {ops:?}"
            );
        }
        old.store(false, Ordering::SeqCst);
        // The layout puts several cell shards on each node: batching
        // saved requests.
        let held: usize = nodes_of_week(&n1, &t).values().map(|s| s.len()).sum();
        assert!(held > 2, "several remote shards per node: {held}");
        println!(
            "{steps} (step, node) requests; remote shards of week 1 by node: {:?}",
            nodes_of_week(&n1, &t)
        );
        assert!(steps > 0);
        assert!(found > 0, "every answer is empty");
    })
    .await
    .unwrap();
    for n in &nodes {
        n.shutdown();
    }
    plain.shutdown();
}

/// The other nodes' cell shards of the town's first week, by node.
fn nodes_of_week(n1: &Node, town: &Town) -> BTreeMap<u64, BTreeSet<usize>> {
    let w = week_of_day(town.config().start_unix.div_euclid(86_400));
    let mut out: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for index in 0..CELLS as usize {
        let (_, held) = n1.shard_replicas(ShardId {
            part: ShardPart::Cells,
            week: w,
            index,
        });
        if let Some(&n) = held.first().filter(|n| **n != 1) {
            out.entry(n).or_default().insert(index);
        }
    }
    out
}
