//! A three-replica raft group of hourcell stores, in process, over the
//! simulated network: replication, failover after the leader is isolated,
//! a restarted replica catching up, and random message loss plus
//! partitions over several seeds. After each run every replica must hold
//! the same data, and every acknowledged write must be there.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hourcell_node::replication::{
    ConfChange, ConfChangeType, KvLog, ProposeError, RaftHandle, RaftNode, RaftTiming, StoreMachine,
};
use hourcell_raft::transport::{DropRate, Isolate, Partition, SimNetwork};
use hourcell_storage::cell::cell_at;
use hourcell_storage::{
    AddressKind, AddressRecord, Command, KvEngine, MemEngine, MetaStore, SliceEvent,
};

#[path = "raft_sim/lease.rs"]
mod lease;

const GROUP: u64 = 1;
const VOTERS: [u64; 3] = [1, 2, 3];

fn timing() -> RaftTiming {
    RaftTiming {
        tick: Duration::from_millis(10),
        election_tick: 10,
        heartbeat_tick: 2,
        compact_after: 8,
        max_lag: 40,
        idle_after: Duration::from_secs(30),
        read_lease: true,
    }
}

struct Replica {
    id: u64,
    raft_engine: Arc<KvLog<MemEngine>>,
    store: Arc<MetaStore<MemEngine>>,
    handle: Option<RaftHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Joins a running group (starts with no members) instead of being
    /// one of its initial voters.
    join: bool,
    timing: RaftTiming,
}

impl Replica {
    fn new(id: u64, join: bool) -> Self {
        Replica {
            id,
            raft_engine: Arc::new(KvLog(Arc::new(MemEngine::new()))),
            store: Arc::new(MetaStore::open(MemEngine::new(), None).unwrap()),
            handle: None,
            thread: None,
            join,
            timing: timing(),
        }
    }

    /// Loses everything on disk; the replica must rejoin.
    fn wipe(&mut self) {
        let t = self.timing.clone();
        *self = Replica::new(self.id, true);
        self.timing = t;
    }

    fn start(&mut self, net: &SimNetwork) {
        let (mut node, handle) = RaftNode::new(self.id, self.timing.clone(), Arc::new(net.clone()));
        node.add_group(
            GROUP,
            self.raft_engine.clone(),
            if self.join { &[] } else { &VOTERS },
            Arc::new(StoreMachine::new(self.store.clone())),
        )
        .unwrap();
        net.register(self.id, handle.inbox(), handle.snapshots());
        self.thread = Some(node.spawn());
        self.handle = Some(handle);
    }

    fn stop(&mut self, net: &SimNetwork) {
        net.unregister(self.id);
        if let Some(h) = self.handle.take() {
            h.stop();
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

struct Cluster {
    net: SimNetwork,
    replicas: Vec<Replica>,
}

impl Cluster {
    fn new() -> Self {
        Self::with_timing(timing())
    }

    fn with_timing(t: RaftTiming) -> Self {
        let net = SimNetwork::new();
        let mut replicas: Vec<Replica> = VOTERS
            .iter()
            .map(|&id| Replica {
                timing: t.clone(),
                ..Replica::new(id, false)
            })
            .collect();
        for r in &mut replicas {
            r.start(&net);
        }
        Cluster { net, replicas }
    }

    fn replica(&self, id: u64) -> &Replica {
        self.replicas.iter().find(|r| r.id == id).unwrap()
    }

    fn handle(&self, id: u64) -> &RaftHandle {
        self.replica(id).handle.as_ref().unwrap()
    }

    fn leader(&self, among: &[u64], deadline: Duration) -> u64 {
        let end = Instant::now() + deadline;
        loop {
            for &id in among {
                if let Some(h) = &self.replica(id).handle {
                    if h.status(GROUP).is_some_and(|s| s.is_leader) {
                        return id;
                    }
                }
            }
            assert!(
                Instant::now() < end,
                "no leader among {among:?} within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Proposes through `via`, retrying drops and timeouts until `deadline`
    /// (commands are idempotent, so a retry of an applied command is
    /// harmless). Returns whether it was acknowledged.
    fn propose(&self, via: u64, cmd: &Command, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            match self
                .handle(via)
                .propose(GROUP, cmd.encode(), Duration::from_millis(500))
            {
                Ok(_) => return true,
                Err(ProposeError::Dropped) | Err(ProposeError::Timeout(_)) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("proposal failed: {e}"),
            }
        }
        false
    }

    /// Proposes a membership change through `via` until it is applied
    /// there (another change may be pending: the leader promotes learners
    /// on its own).
    fn change(&self, via: u64, kind: ConfChangeType, id: u64) {
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .handle(via)
                .change_membership(GROUP, cc.clone(), Duration::from_secs(2))
            {
                Ok(()) => return,
                Err(e) => assert!(Instant::now() < end, "{kind:?} {id} failed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `via` sees exactly these voters and learners.
    fn members(&self, via: u64, voters: &[u64], learners: &[u64], deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let s = self.handle(via).status(GROUP).unwrap();
            let (mut v, mut l) = (s.voters.clone(), s.learners.clone());
            v.sort_unstable();
            l.sort_unstable();
            if v == voters && l == learners {
                return;
            }
            assert!(
                Instant::now() < end,
                "node {via} sees voters {v:?} learners {l:?}, expected {voters:?} {learners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the running replicas have applied the same index, then
    /// checks that their stores hold the same persons and postings.
    fn converged(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let st: Vec<_> = self
                .replicas
                .iter()
                .filter_map(|r| r.handle.as_ref()?.status(GROUP))
                .collect();
            let applied: BTreeSet<u64> = st.iter().map(|s| s.applied).collect();
            let commit = st.iter().map(|s| s.commit).max().unwrap_or(0);
            if applied.len() == 1 && applied.first() == Some(&commit) {
                break;
            }
            assert!(Instant::now() < end, "replicas did not converge: {st:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let views: Vec<_> = self
            .replicas
            .iter()
            .map(|r| {
                (
                    r.store.stats().unwrap().persons,
                    r.store.count_postings().unwrap(),
                )
            })
            .collect();
        assert!(
            views.windows(2).all(|w| w[0] == w[1]),
            "replicas differ: {views:?}"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.stop(&self.net);
        }
    }
}

fn addresses() -> Command {
    Command::PutAddresses(vec![AddressRecord {
        code: "H1".into(),
        lat: 30.0,
        lng: 120.0,
        kind: AddressKind::Standard,
        area: "A1".into(),
        label: String::new(),
        id: 0,
    }])
}

fn batch(first_person: u64, n: u64, hour: i64) -> Command {
    Command::Ingest(
        (0..n)
            .map(|i| SliceEvent {
                person: first_person + i,
                hour,
                cell: cell_at(30.0 + i as f64 * 1e-3, 120.0, 16),
                address: (i % 2 == 0).then(|| "H1".to_string()),
                source: "access".into(),
            })
            .collect(),
    )
}

/// A new engine holding every key `scan` visits: a store's disk after a
/// power loss.
fn engine_of(
    scan: &mut dyn FnMut(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> hourcell_storage::Result<()>,
) -> MemEngine {
    let engine = MemEngine::new();
    let mut b = hourcell_storage::WriteBatch::default();
    scan(&mut |k, v| {
        b.put(k.to_vec(), v.to_vec());
        true
    })
    .unwrap();
    engine.write(b, true).unwrap();
    engine
}

fn has_person(s: &MetaStore<MemEngine>, p: u64) -> bool {
    s.internal_id(p).is_some()
}

#[test]
fn replicates_fails_over_and_catches_up() {
    let mut c = Cluster::new();
    let leader = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(leader, &addresses(), Duration::from_secs(5)));
    // Writes through every node, followers forward to the leader.
    for (i, via) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
        assert!(c.propose(
            via,
            &batch(1_000 + i as u64 * 100, 50, 500 + i as i64),
            Duration::from_secs(5)
        ));
    }
    // A read barrier on another replica sees an acknowledged write at once.
    for (w, r) in [(1u64, 3u64), (3, 2), (2, 1)] {
        let first = 2_000 + w * 10;
        assert!(c.propose(w, &batch(first, 3, 550), Duration::from_secs(5)));
        c.handle(r)
            .read_index(GROUP, Duration::from_secs(5))
            .expect("read barrier");
        assert!(
            has_person(&c.replicas[r as usize - 1].store, first + 2),
            "write via {w} not visible on {r} after its read barrier"
        );
    }
    c.converged(Duration::from_secs(5));
    // Every replica knows the leader, asked for many groups in one trip:
    // a group not hosted answers 0.
    let leader_now = c.leader(&VOTERS, Duration::from_secs(5));
    for &id in &VOTERS {
        let got = c.handle(id).leaders(&[GROUP, 999, GROUP]);
        assert_eq!(got, vec![leader_now, 0, leader_now], "replica {id}");
    }
    for r in &c.replicas {
        assert!(has_person(&r.store, 1_000) && has_person(&r.store, 1_549));
    }

    // Isolate the leader: the other two elect a new one within the
    // failover budget (pre-vote and check-quorum make the old one step
    // down) and keep accepting writes.
    let old = c.leader(&VOTERS, Duration::from_secs(5));
    let others: Vec<u64> = VOTERS.iter().copied().filter(|&i| i != old).collect();
    let cut = Instant::now();
    c.net
        .add_filter(Box::new(Isolate([old].into_iter().collect())));
    let new = c.leader(&others, Duration::from_secs(3));
    let failover = cut.elapsed();
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    assert!(c.propose(others[0], &batch(5_000, 20, 600), Duration::from_secs(5)));
    // The isolated node cannot get a write acknowledged.
    assert!(!c.propose(old, &batch(9_000, 5, 601), Duration::from_millis(800)));
    c.net.clear_filters();
    c.converged(Duration::from_secs(10));
    assert_ne!(new, 0);
    for r in &c.replicas {
        assert!(
            has_person(&r.store, 5_019),
            "replica {} misses an acknowledged write",
            r.id
        );
    }

    // A stopped replica misses writes, restarts from its durable raft log
    // and catches up.
    let down = others[1];
    c.replicas[down as usize - 1].stop(&c.net);
    let up: Vec<u64> = VOTERS.iter().copied().filter(|&i| i != down).collect();
    let _ = c.leader(&up, Duration::from_secs(3));
    assert!(c.propose(up[0], &batch(7_000, 30, 700), Duration::from_secs(5)));
    let net = c.net.clone();
    c.replicas[down as usize - 1].start(&net);
    c.converged(Duration::from_secs(10));
    assert!(has_person(&c.replicas[down as usize - 1].store, 7_029));
}

#[test]
fn acknowledged_writes_survive_loss_and_partitions_over_seeds() {
    for seed in 0..4u64 {
        let c = Cluster::new();
        let _ = c.leader(&VOTERS, Duration::from_secs(5));
        assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
        c.net.add_filter(Box::new(DropRate {
            per_mille: 150,
            seed,
            counter: AtomicU64::new(0),
        }));
        let mut acked = Vec::new();
        for i in 0..12u64 {
            if i == 4 {
                // Cut one node off from the other two for a while.
                let lone = 1 + (seed % 3);
                let rest: std::collections::HashSet<u64> =
                    VOTERS.iter().copied().filter(|&v| v != lone).collect();
                c.net
                    .add_filter(Box::new(Partition([lone].into_iter().collect(), rest)));
            }
            if i == 8 {
                c.net.clear_filters();
            }
            let via = 1 + (seed + i) % 3;
            let first = 10_000 * (seed + 1) + i * 10;
            if c.propose(
                via,
                &batch(first, 10, 800 + i as i64),
                Duration::from_secs(3),
            ) {
                acked.push(first + 9);
            }
        }
        c.net.clear_filters();
        c.converged(Duration::from_secs(10));
        assert!(
            acked.len() >= 6,
            "seed {seed}: only {} of 12 writes acknowledged",
            acked.len()
        );
        for r in &c.replicas {
            for p in &acked {
                assert!(
                    has_person(&r.store, *p),
                    "seed {seed}: replica {} lost {p}",
                    r.id
                );
            }
        }
    }
}

#[test]
fn the_log_is_compacted_everywhere_and_restarts_still_work() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    for i in 0..30u64 {
        assert!(c.propose(
            1 + i % 3,
            &batch(50_000 + i * 10, 10, 900),
            Duration::from_secs(5)
        ));
    }
    // Every replica drops the entries all voters hold (compact_after = 8).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let firsts: Vec<u64> = VOTERS
            .iter()
            .map(|&id| c.handle(id).status(GROUP).unwrap().first_index)
            .collect();
        if firsts.iter().all(|&f| f > 9) {
            break;
        }
        assert!(
            Instant::now() < end,
            "log not compacted: first indexes {firsts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A replica restarted on a compacted log replays nothing it lacks and
    // keeps up with new writes.
    let net = c.net.clone();
    c.replicas[1].stop(&net);
    assert!(c.propose(1, &batch(60_000, 10, 901), Duration::from_secs(5)));
    c.replicas[1].start(&net);
    assert!(c.propose(3, &batch(61_000, 10, 902), Duration::from_secs(5)));
    c.converged(Duration::from_secs(10));
    for r in &c.replicas {
        for p in [50_009u64, 50_299, 60_009, 61_009] {
            assert!(has_person(&r.store, p), "replica {} misses {p}", r.id);
        }
    }
}

/// Writes `n` batches through the live nodes in turn.
fn write_many(c: &Cluster, via: &[u64], first: u64, n: u64) -> Vec<u64> {
    let mut last = Vec::new();
    for i in 0..n {
        let p = first + i * 10;
        assert!(c.propose(
            via[(i % via.len() as u64) as usize],
            &batch(p, 10, 1_000 + (i % 48) as i64),
            Duration::from_secs(5)
        ));
        last.push(p + 9);
    }
    last
}

#[test]
fn a_replica_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    let net = c.net.clone();
    c.replicas[2].stop(&net);
    // More than max_lag (40) entries while replica 3 is down: it no longer
    // holds compaction back, and the log moves past what it has.
    let acked = write_many(&c, &[1, 2], 100_000, 90);
    let behind = c.replicas[2].raft_engine.clone();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let first = c.handle(1).status(GROUP).unwrap().first_index;
        if first > 60 {
            break;
        }
        assert!(
            Instant::now() < end,
            "log not compacted past the down replica: {first}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.replicas[2].start(&net);
    c.converged(Duration::from_secs(10));
    for p in &acked {
        assert!(has_person(&c.replicas[2].store, *p), "replica 3 misses {p}");
    }
    let s3 = c.handle(3).status(GROUP).unwrap();
    assert!(
        s3.first_index > 60,
        "replica 3 caught up from entries, not a snapshot: {s3:?}"
    );
    // It keeps replicating normally, and survives a restart on top of the
    // installed snapshot.
    assert!(c.propose(3, &batch(200_000, 10, 1_100), Duration::from_secs(5)));
    c.replicas[2].stop(&net);
    c.replicas[2].start(&net);
    assert!(c.propose(1, &batch(201_000, 10, 1_101), Duration::from_secs(5)));
    c.converged(Duration::from_secs(10));
    assert!(has_person(&c.replicas[2].store, 201_009));
    drop(behind);
}

#[test]
fn a_wiped_replica_rejoins_and_membership_grows_and_shrinks() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    let before = write_many(&c, &[1, 2, 3], 300_000, 12);
    let net = c.net.clone();

    // Replica 3 loses its disk. It comes back empty, asking to join; it is
    // removed and re-added as a learner, gets a snapshot, and the leader
    // promotes it once it has caught up.
    c.replicas[2].stop(&net);
    c.replicas[2].wipe();
    c.replicas[2].start(&net);
    let _ = c.leader(&[1, 2], Duration::from_secs(5));
    c.change(1, ConfChangeType::RemoveNode, 3);
    c.change(2, ConfChangeType::AddLearnerNode, 3);
    c.members(1, &[1, 2, 3], &[], Duration::from_secs(10));
    c.members(3, &[1, 2, 3], &[], Duration::from_secs(10));
    let during = write_many(&c, &[3, 1], 310_000, 6);
    c.converged(Duration::from_secs(10));
    for p in before.iter().chain(&during) {
        assert!(
            has_person(&c.replicas[2].store, *p),
            "rejoined replica misses {p}"
        );
    }

    // A fourth node joins the same way and becomes a voter.
    c.replicas.push(Replica::new(4, true));
    c.replicas[3].start(&net);
    c.change(2, ConfChangeType::AddLearnerNode, 4);
    c.members(1, &[1, 2, 3, 4], &[], Duration::from_secs(10));
    c.converged(Duration::from_secs(10));
    assert!(has_person(&c.replicas[3].store, before[0]));

    // Remove node 1 (handing leadership over first if it leads): the
    // remaining three keep committing, and node 4 votes.
    if c.handle(1).status(GROUP).unwrap().is_leader {
        c.handle(1).transfer_leader(GROUP, 2);
        let _ = c.leader(&[2, 3, 4], Duration::from_secs(5));
    }
    c.change(2, ConfChangeType::RemoveNode, 1);
    c.members(2, &[2, 3, 4], &[], Duration::from_secs(10));
    c.replicas[0].stop(&net);
    // Stop another: 2 of the 3 remaining voters still make a quorum only
    // if node 4 is a real voter.
    c.replicas[1].stop(&net);
    let _ = c.leader(&[3, 4], Duration::from_secs(5));
    assert!(c.propose(4, &batch(320_000, 10, 1_200), Duration::from_secs(5)));
    c.replicas[1].start(&net);
    c.replicas.remove(0);
    c.converged(Duration::from_secs(10));
    for r in &c.replicas {
        assert!(
            has_person(&r.store, 320_009),
            "replica {} misses the last write",
            r.id
        );
    }
}

#[test]
fn retention_removes_the_same_hours_on_every_replica() {
    let c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    // Persons at hours 900..960 (days 37..40).
    for h in 900..960i64 {
        assert!(c.propose(
            1 + (h as u64 % 3),
            &batch(400_000 + h as u64, 3, h),
            Duration::from_secs(5)
        ));
    }
    // The cut-off travels in the command: every replica removes exactly
    // the hours before 931, whatever its own clock says.
    let expire = Command::Expire {
        cutoff_hour: 931,
        audit: hourcell_storage::AuditEntry {
            time: 931 * 3600,
            principal: "retention".into(),
            outcome: "retention: removed every hour before 931".into(),
            ..Default::default()
        },
    };
    assert!(c.propose(2, &expire, Duration::from_secs(5)));
    c.converged(Duration::from_secs(10));
    for r in &c.replicas {
        let s = &r.store;
        let mut hours = Vec::new();
        s.hour_slices(0, 2_000, &mut |h, _| hours.push(h)).unwrap();
        assert_eq!(hours, (931..960).collect::<Vec<_>>(), "replica {}", r.id);
        // Person 400_000 + h is seen at hours h - 2 ..= h: those whose
        // every hour went are forgotten, on every replica alike.
        for p in [400_902u64, 400_930] {
            assert_eq!(s.internal_id(p), None, "replica {} keeps {p}", r.id);
        }
        assert_eq!(
            s.stats().unwrap().persons,
            c.replicas[0].store.stats().unwrap().persons
        );
        let id = s.internal_id(400_931).unwrap();
        assert_eq!(s.person_hours(id, 0, 2_000).unwrap().len(), 1);
        let audit = s.audit_records(0, 10).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            audit[0].hash,
            c.replicas[0].store.audit_records(0, 10).unwrap()[0].hash
        );
    }
}

/// A power loss can take the state machine's unsynced writes (applies are
/// not synced; the raft log is the durable copy). Simulate it: roll one
/// replica's store back to an earlier image, keep its raft log and apply
/// index, restart it. It replays the log from what the store holds and
/// ends up with everything.
#[test]
fn a_store_behind_its_apply_index_replays_the_log() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    assert!(c.propose(2, &batch(500_000, 5, 1_300), Duration::from_secs(5)));
    c.converged(Duration::from_secs(5));
    let image = c.replicas[2].store.freeze().unwrap();
    let held = c.replicas[2].store.durable_applied().unwrap().unwrap();
    for i in 0..3u64 {
        assert!(c.propose(
            1,
            &batch(500_100 + i * 10, 5, 1_301),
            Duration::from_secs(5)
        ));
    }
    c.converged(Duration::from_secs(5));
    let net = c.net.clone();
    c.replicas[2].stop(&net);
    assert!(
        c.replicas[2]
            .raft_engine
            .0
            .get(&[0x04, 0, 0, 0, 0, 0, 0, 0, 1])
            .unwrap()
            .is_some(),
        "the raft log keeps its apply index"
    );
    // The store as a power loss would leave it: only what the image holds.
    let engine = engine_of(&mut |f| image.scan(&[0x00], &[0xff; 16], f));
    let store = Arc::new(MetaStore::open(engine, None).unwrap());
    assert_eq!(store.durable_applied().unwrap(), Some(held));
    assert!(!has_person(&store, 500_124));
    c.replicas[2].store = store;
    c.replicas[2].start(&net);
    c.converged(Duration::from_secs(10));
    for p in [500_004u64, 500_104, 500_124] {
        assert!(
            has_person(&c.replicas[2].store, p),
            "replayed store misses {p}"
        );
    }
}

/// Applies are held in memory and written in bulk (`store::Deferred`): a
/// replica that loses power before it ever wrote them has no applied index
/// in its store at all, and must replay the whole log, not trust the raft
/// log's own apply mark.
#[test]
fn a_store_that_never_wrote_its_held_applies_replays_the_whole_log() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    for i in 0..3u64 {
        assert!(c.propose(
            1,
            &batch(600_000 + i * 10, 5, 1_300),
            Duration::from_secs(5)
        ));
    }
    // Wait for replica 3 to apply everything, without reading its store
    // (a read would write what it holds).
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let st = c.replicas[2]
            .handle
            .as_ref()
            .unwrap()
            .status(GROUP)
            .unwrap();
        if st.applied >= 9 && st.applied == st.commit {
            break;
        }
        assert!(Instant::now() < end, "replica 3 did not apply: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let net = c.net.clone();
    c.replicas[2].stop(&net);
    // Power loss: the engine keeps what was written, memory is gone.
    let old = c.replicas[2].store.clone();
    let engine = engine_of(&mut |f| old.engine().scan(&[0x00], &[0xff; 16], f));
    let store = Arc::new(MetaStore::open(engine, None).unwrap());
    assert_eq!(
        store.durable_applied().unwrap(),
        None,
        "nothing was written"
    );
    assert!(!has_person(&store, 600_000));
    c.replicas[2].store = store;
    c.replicas[2].start(&net);
    c.converged(Duration::from_secs(10));
    let s = &c.replicas[2].store;
    for p in [600_000u64, 600_014, 600_024] {
        let id = s
            .internal_id(p)
            .unwrap_or_else(|| panic!("replayed store misses {p}"));
        assert_eq!(s.person_hours(id, 0, 2_000).unwrap().len(), 1, "person {p}");
    }
}

use hourcell_test_support::bodies;

impl bodies::TestCluster for Cluster {
    fn ids(&self) -> Vec<u64> {
        VOTERS.to_vec()
    }

    fn leader(&mut self, among: &[u64], deadline: Duration) -> u64 {
        Cluster::leader(self, among, deadline)
    }

    fn write(&mut self, via: u64, first: u64, n: u64, hour: i64, deadline: Duration) -> bool {
        self.propose(via, &batch(first, n, hour), deadline)
    }

    fn sees(&mut self, via: u64, persons: &[u64]) -> bool {
        let r = self.replica(via);
        let Some(h) = &r.handle else {
            return false;
        };
        h.read_index(GROUP, Duration::from_secs(2)).is_ok()
            && persons.iter().all(|&p| has_person(&r.store, p))
    }

    fn isolate(&mut self, id: u64) {
        self.net
            .add_filter(Box::new(Isolate([id].into_iter().collect())));
    }

    fn heal(&mut self) {
        self.net.clear_filters();
    }

    fn kill(&mut self, id: u64) {
        let net = self.net.clone();
        self.replicas[id as usize - 1].stop(&net);
    }

    fn restart(&mut self, id: u64) {
        let net = self.net.clone();
        self.replicas[id as usize - 1].start(&net);
    }
}

/// The shared body (`tests/common/bodies.rs`) over the simulated network;
/// `cluster_procs::the_shared_body_over_real_processes` runs it over gRPC.
#[test]
fn the_shared_body_over_the_simulated_network() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    bodies::acknowledged_writes_survive_failures(&mut c);
}

/// Counts the messages that cross the simulated network.
struct Count(Arc<std::sync::atomic::AtomicU64>);

impl hourcell_raft::transport::Filter for Count {
    fn allow(&self, _env: &hourcell_raft::transport::Envelope) -> bool {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

/// A quiet group ticks slowly: its heartbeats drop to a fraction, it still
/// takes writes, and a proposal after its leader died wakes it into an
/// election.
#[test]
fn quiet_groups_tick_slowly_and_wake_on_demand() {
    let mut c = Cluster::with_timing(RaftTiming {
        idle_after: Duration::from_millis(300),
        ..timing()
    });
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    c.net.add_filter(Box::new(Count(sent.clone())));
    let leader = c.leader(&VOTERS, Duration::from_secs(5));
    let rate = |busy: bool| {
        let t0 = Instant::now();
        let n0 = sent.load(std::sync::atomic::Ordering::Relaxed);
        let mut k = 0;
        while t0.elapsed() < Duration::from_secs(1) {
            if busy {
                k += 1;
                assert!(c.propose(leader, &batch(800_000 + k, 1, 1), Duration::from_secs(2)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = sent.load(std::sync::atomic::Ordering::Relaxed) - n0;
        // Messages of the proposals themselves aside: 4 per write
        // (append and response to two followers), plus the commit notice.
        n.saturating_sub(if busy { 6 * k } else { 0 })
    };
    let busy = rate(true);
    std::thread::sleep(Duration::from_millis(600));
    let quiet = rate(false);
    assert!(
        quiet * 4 < busy,
        "a quiet group sent {quiet} messages a second, a busy one {busy}"
    );
    // Still takes writes.
    assert!(c.propose(leader, &batch(810_000, 1, 1), Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(600));
    // Its leader dies while it is quiet: a proposal through another node
    // wakes the group, which elects a new leader and takes the write.
    let net = c.net.clone();
    c.replicas
        .iter_mut()
        .find(|r| r.id == leader)
        .unwrap()
        .stop(&net);
    let other = VOTERS.iter().copied().find(|&i| i != leader).unwrap();
    let t0 = Instant::now();
    assert!(c.propose(other, &batch(820_000, 1, 1), Duration::from_secs(10)));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a quiet group took {:?} to elect a leader and commit",
        t0.elapsed()
    );
}

/// A snapshot is fetched and installed off the raft thread: while a slow
/// install runs, the replica's raft loop still answers at once (its other
/// groups keep ticking, heartbeating and applying).
#[test]
fn a_slow_snapshot_install_does_not_block_the_raft_loop() {
    let mut c = Cluster::new();
    let _ = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(1, &addresses(), Duration::from_secs(5)));
    let net = c.net.clone();
    c.replicas[2].stop(&net);
    let acked = write_many(&c, &[1, 2], 400_000, 90);
    let end = Instant::now() + Duration::from_secs(10);
    while c.handle(1).status(GROUP).unwrap().first_index <= 60 {
        assert!(Instant::now() < end, "log not compacted");
        std::thread::sleep(Duration::from_millis(20));
    }
    net.set_snapshot_delay(1_500);
    c.replicas[2].start(&net);
    // Wait until the install is under way.
    let end = Instant::now() + Duration::from_secs(5);
    while !c.replicas[2].store.is_restoring() {
        assert!(Instant::now() < end, "no snapshot install started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    let s = c.handle(3).status(GROUP);
    assert!(s.is_some());
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "the raft loop was blocked for {:?} during a snapshot install",
        t0.elapsed()
    );
    assert!(
        c.replicas[2].store.is_restoring(),
        "the install ended before the loop was asked"
    );
    net.set_snapshot_delay(0);
    c.converged(Duration::from_secs(15));
    for p in &acked {
        assert!(has_person(&c.replicas[2].store, *p), "replica 3 misses {p}");
    }
}

/// Drops the first `n` read requests (MsgReadIndex) a follower forwards.
struct DropReads(AtomicU64);

impl hourcell_raft::transport::Filter for DropReads {
    fn allow(&self, env: &hourcell_raft::transport::Envelope) -> bool {
        if env.msg.get_msg_type() != hourcell_raft::MessageType::MsgReadIndex {
            return true;
        }
        self.0
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            )
            .is_err()
    }
}

/// A read request lost on its way to the leader (raft-rs also drops one
/// without a word while a new leader has committed nothing of its term) is
/// sent again: the read barrier completes in well under its timeout.
#[test]
fn a_lost_read_request_is_sent_again() {
    let c = Cluster::new();
    let leader = c.leader(&VOTERS, Duration::from_secs(5));
    assert!(c.propose(leader, &addresses(), Duration::from_secs(5)));
    let follower = *VOTERS.iter().find(|v| **v != leader).unwrap();
    c.net.add_filter(Box::new(DropReads(AtomicU64::new(2))));
    let t0 = Instant::now();
    c.handle(follower)
        .read_index(GROUP, Duration::from_secs(5))
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the read barrier took {took:?}"
    );
}
