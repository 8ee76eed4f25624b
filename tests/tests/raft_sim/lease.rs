//! Leader leases under attack: a leader cut off from its group, one that
//! hands its leadership over without hearing about it, and a voter that
//! restarts and would otherwise vote for anyone at once. In each, a read
//! barrier that completes on the old leader after a newer leader
//! acknowledged a write would be a stale (non-linearizable) read.

use super::*;

use hourcell_raft::lease::lease_duration;
use hourcell_raft::transport::Filter;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ticks of 50 ms: a 400 ms lease and elections after 0.5–1 s, long
/// enough that a loaded machine does not blur the windows checked.
fn slow_timing() -> RaftTiming {
    RaftTiming {
        tick: Duration::from_millis(50),
        ..timing()
    }
}

fn read(c: &Cluster, via: u64, timeout: Duration) -> bool {
    c.handle(via).read_index(GROUP, timeout).is_ok()
}

/// Heals the network; the old leader then follows the new one, reads
/// through it again and holds `person`'s write.
fn heal_and_read(c: &Cluster, old: u64, person: u64) {
    c.net.clear_filters();
    let end = Instant::now() + Duration::from_secs(10);
    while !read(c, old, Duration::from_millis(500)) {
        assert!(
            Instant::now() < end,
            "no read on the old leader after healing"
        );
    }
    assert!(has_person(&c.replica(old).store, person));
}

/// The leader, once it has committed an entry of its term (before that it
/// can serve no read at all), with its lease warmed by a read.
fn settled_leader(c: &Cluster) -> u64 {
    let l = c.leader(&VOTERS, Duration::from_secs(10));
    assert!(c.propose(l, &addresses(), Duration::from_secs(10)));
    let end = Instant::now() + Duration::from_secs(5);
    while !read(c, l, Duration::from_millis(500)) {
        assert!(Instant::now() < end, "no read on the leader");
    }
    l
}

#[test]
fn an_isolated_leader_serves_reads_only_until_its_lease_ends() {
    let t = slow_timing();
    let lease = lease_duration(&t);
    let c = Cluster::with_timing(t);
    let old = settled_leader(&c);
    // A read just before the cut renews the lease from its own start.
    assert!(read(&c, old, Duration::from_secs(1)));
    c.net
        .add_filter(Box::new(Isolate([old].into_iter().collect())));
    let cut = Instant::now();

    // No heartbeat can reach anyone now, so only the lease answers.
    let first = Instant::now();
    assert!(
        read(&c, old, Duration::from_millis(100)),
        "a read right after the cut ({:?} after it) was not served from the lease",
        first - cut
    );
    let mut served_after_lease = Vec::new();
    let mut refused = 0;
    while cut.elapsed() < lease * 3 {
        let asked = Instant::now();
        if read(&c, old, Duration::from_millis(30)) {
            if asked >= cut + lease {
                served_after_lease.push(asked - cut);
            }
        } else {
            refused += 1;
        }
    }
    assert!(
        served_after_lease.is_empty(),
        "reads asked this long after the cut were served: {served_after_lease:?} (lease {lease:?})"
    );
    assert!(refused > 0, "the isolated leader never refused a read");

    // The others elect a leader and commit a write the old one cannot see.
    let others: Vec<u64> = VOTERS.iter().copied().filter(|v| *v != old).collect();
    let new = c.leader(&others, Duration::from_secs(10));
    assert!(c.propose(new, &batch(900, 5, 10), Duration::from_secs(10)));
    for _ in 0..5 {
        let ok = read(&c, old, Duration::from_millis(100));
        assert!(
            !ok || has_person(&c.replica(old).store, 904),
            "the deposed leader served a stale read"
        );
        assert!(!ok, "an isolated replica completed a read barrier");
    }

    // Healed, it follows the new leader and reads through it again.
    heal_and_read(&c, old, 904);
}

/// Drops every message to `leader` once it has sent `MsgTimeoutNow`: it
/// hands over but never hears of the new term.
struct DeafAfterHandover {
    leader: u64,
    deaf: AtomicBool,
}

impl Filter for DeafAfterHandover {
    fn allow(&self, env: &hourcell_raft::transport::Envelope) -> bool {
        if env.msg.from == self.leader
            && env.msg.get_msg_type() == hourcell_raft::MessageType::MsgTimeoutNow
        {
            self.deaf.store(true, Ordering::SeqCst);
        }
        !(env.msg.to == self.leader && self.deaf.load(Ordering::SeqCst))
    }
}

#[test]
fn a_leader_that_hands_over_stops_serving_from_its_lease() {
    let c = Cluster::with_timing(slow_timing());
    let old = settled_leader(&c);
    let to = *VOTERS.iter().find(|v| **v != old).unwrap();
    c.net.add_filter(Box::new(DeafAfterHandover {
        leader: old,
        deaf: AtomicBool::new(false),
    }));
    assert!(read(&c, old, Duration::from_secs(1)));
    let warm = Instant::now();
    c.handle(old).transfer_leader(GROUP, to);
    let new = c.leader(&[to], Duration::from_secs(5));
    assert!(c.propose(new, &batch(700, 5, 10), Duration::from_secs(5)));
    // The transferee won with a vote that the lease did not hold back,
    // and the old leader never heard of it.
    let written = warm.elapsed();
    let ok = read(&c, old, Duration::from_millis(200));
    assert!(
        !ok || has_person(&c.replica(old).store, 704),
        "stale read on the leader that handed over ({written:?} after its last lease renewal)"
    );
    assert!(!ok, "a leader that hears nobody completed a read barrier");

    heal_and_read(&c, old, 704);
}

#[test]
fn a_restarted_voter_grants_no_vote_within_an_election_timeout() {
    let t = slow_timing();
    let hold = t.tick * t.election_tick as u32;
    let mut c = Cluster::with_timing(t);
    let old = settled_leader(&c);
    let others: Vec<u64> = VOTERS.iter().copied().filter(|v| *v != old).collect();
    let (restarted, candidate) = (others[0], others[1]);
    // The leader goes silent; one follower restarts and forgets it.
    c.net
        .add_filter(Box::new(Isolate([old].into_iter().collect())));
    let i = c.replicas.iter().position(|r| r.id == restarted).unwrap();
    c.replicas[i].stop(&c.net);
    let net = c.net.clone();
    c.replicas[i].start(&net);
    let started = Instant::now();
    c.handle(candidate).campaign(GROUP);
    // The candidate needs the restarted voter's vote, which must wait.
    while started.elapsed() < hold - Duration::from_millis(100) {
        let led = others
            .iter()
            .any(|id| c.handle(*id).status(GROUP).is_some_and(|s| s.is_leader));
        assert!(
            !led,
            "a leader was elected {:?} after a voter restarted (hold {hold:?})",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Afterwards the two elect a leader as usual, and it takes writes.
    let new = c.leader(&others, Duration::from_secs(10));
    assert!(c.propose(new, &batch(500, 3, 10), Duration::from_secs(10)));
}
