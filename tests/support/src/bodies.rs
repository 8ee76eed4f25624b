//! Test bodies shared by the in-process cluster (`tests/tests/raft_sim.rs`,
//! simulated network) and real processes over gRPC
//! (`cluster/cli/tests/cluster_faults.rs`): the same steps and the same
//! checks, whatever carries the messages.

use std::time::{Duration, Instant};

/// What a test body may do to a three-node cluster.
pub trait TestCluster {
    /// Node ids.
    fn ids(&self) -> Vec<u64>;
    /// The node that leads, among `among`, waiting up to `deadline`.
    fn leader(&mut self, among: &[u64], deadline: Duration) -> u64;
    /// Writes persons `first..first + n` at `hour` through node `via`,
    /// retrying until `deadline`; whether it was acknowledged.
    fn write(&mut self, via: u64, first: u64, n: u64, hour: i64, deadline: Duration) -> bool;
    /// Whether a linearizable read through `via` sees every person.
    fn sees(&mut self, via: u64, persons: &[u64]) -> bool;
    /// Cuts node `id` off from the others (both ways).
    fn isolate(&mut self, id: u64);
    /// Undoes every cut.
    fn heal(&mut self);
    /// Stops node `id` abruptly (its disk stays).
    fn kill(&mut self, id: u64);
    /// Starts node `id` again on its disk.
    fn restart(&mut self, id: u64);
}

/// Polls `f` until it holds or `deadline` passes.
fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes through every node, read-your-writes through every other node,
/// the leader cut off (a new one takes writes within 3 s, the old one takes
/// none), a follower killed and restarted: afterwards every node returns
/// every acknowledged person.
pub fn acknowledged_writes_survive_failures(c: &mut dyn TestCluster) {
    let ids = c.ids();
    let s5 = Duration::from_secs(5);
    // Writes right after a partition or a kill: the new leader may still
    // be settling its followers' logs on a loaded machine (seen once in CI
    // past 5 s); they are asked again until acknowledged.
    let s15 = Duration::from_secs(15);
    let _ = c.leader(&ids, Duration::from_secs(20));
    let mut acked: Vec<u64> = Vec::new();
    // Writes through every node; followers forward to the leader.
    for (k, &via) in ids.iter().enumerate() {
        let first = 700_000 + k as u64 * 100;
        assert!(c.write(via, first, 10, 1, s5), "write via node {via}");
        acked.extend(first..first + 10);
    }
    // A write acknowledged by one node is seen at once through another.
    for (k, &w) in ids.iter().enumerate() {
        let r = ids[(k + 1) % ids.len()];
        let first = 710_000 + k as u64 * 100;
        assert!(c.write(w, first, 3, 1, s5));
        acked.extend(first..first + 3);
        assert!(
            c.sees(r, &[first, first + 2]),
            "write via node {w} not seen through node {r}"
        );
    }
    // The leader is cut off: the others elect a new one within the
    // failover budget and take writes; the old one acknowledges none.
    let old = c.leader(&ids, s5);
    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != old).collect();
    let cut = Instant::now();
    c.isolate(old);
    let new = c.leader(&others, Duration::from_secs(3));
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "failover took {:?}",
        cut.elapsed()
    );
    assert_ne!(new, old);
    assert!(c.write(others[0], 720_000, 10, 2, s15));
    acked.extend(720_000..720_010);
    assert!(
        !c.write(old, 729_000, 5, 2, Duration::from_millis(800)),
        "the isolated node got a write acknowledged"
    );
    c.heal();
    // A follower is killed; writes go on; it restarts from its disk and
    // catches up.
    let l = c.leader(&ids, s5);
    let f = ids.iter().copied().find(|&i| i != l).unwrap();
    c.kill(f);
    let up: Vec<u64> = ids.iter().copied().filter(|&i| i != f).collect();
    assert!(c.write(up[0], 730_000, 10, 3, s15));
    acked.extend(730_000..730_010);
    c.restart(f);
    for &id in &ids {
        assert!(
            eventually(Duration::from_secs(20), || c.sees(id, &acked)),
            "node {id} does not return every acknowledged person"
        );
    }
}
