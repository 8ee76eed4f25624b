//! Leader leases: a leader that a quorum has recently confirmed answers a
//! read barrier (ReadIndex) from its own commit index, without a heartbeat
//! round.
//!
//! # Why it is safe
//!
//! Check-quorum is on, so a voter that has heard from a leader refuses to
//! vote (or pre-vote) for anyone else until `election_tick` of its own
//! ticks have passed (raft-rs's `in_lease`, which only a transfer campaign
//! bypasses). Its loop ticks at most once per `tick`, so it refuses for at
//! least `(election_tick - 1) × tick` of real time after it received the
//! leader's heartbeat. When a ReadIndex that this leader issued at instant
//! `t` completes, a quorum acknowledged a heartbeat sent after `t`; every
//! possible new leader needs a vote from one of them, so none can be
//! elected before `t + (election_tick - 1) × tick`. The lease is held until
//! `t + (election_tick - 2) × tick` ([`lease_duration`]): one tick of
//! margin, which covers clocks whose rates differ by up to 6 % with the
//! default ten-tick election (real monotonic clocks differ by parts per
//! million). Until then no other leader exists, so this leader's commit
//! index covers every acknowledged write, and it is the read index.
//!
//! What would break that argument, and what is done about it:
//! - a leader transfer: the transferee campaigns with the transfer flag,
//!   which voters grant inside their lease. Sending `MsgTimeoutNow`
//!   revokes the lease for the rest of the term ([`Lease::revoke`]).
//! - a membership change: the quorum that confirmed the lease was a quorum
//!   of the old voters. Applying a change fences the lease: only a
//!   ReadIndex issued after it renews it ([`Lease::fence`]).
//! - a voter that restarts forgets whom it heard from and would vote at
//!   once. A replica that had been in an elected term refuses votes for a
//!   whole election timeout after it starts (see `RaftNode::add_group`),
//!   by which time any lease its last acknowledgement supported is over.
//! - a leader that has not yet committed an entry of its own term may not
//!   know the last commit index: no lease until it has (raft-rs refuses
//!   the ReadIndex too).
//! - a deposed leader: a lease is for one term and only while the replica
//!   is leader of it; check-quorum makes an isolated leader step down, and
//!   its lease has expired before anyone else can be elected.
//!
//! Only the monotonic clock is read (`Instant`); the wall clock may jump.

use std::time::{Duration, Instant};

use crate::handle::RaftTiming;

/// How long a leader may serve reads after issuing a ReadIndex that a
/// quorum confirmed: `(election_tick - 2) × tick`, one tick less than the
/// shortest time a voter that confirmed it refuses other candidates. Zero
/// (no lease) for an election of two ticks or fewer, or with
/// `read_lease` off.
pub fn lease_duration(t: &RaftTiming) -> Duration {
    if !t.read_lease {
        return Duration::ZERO;
    }
    t.tick * (t.election_tick.saturating_sub(2) as u32)
}

/// A group's leader lease on this replica.
#[derive(Debug, Default, Clone)]
pub struct Lease {
    /// The term the lease was granted in.
    term: u64,
    /// Reads may be served before this instant.
    until: Option<Instant>,
    /// Only a ReadIndex issued at or after this instant renews the lease
    /// (set when the membership changes).
    fence: Option<Instant>,
    /// A term in which this replica handed its leadership away: no lease
    /// for the rest of it.
    revoked: u64,
    /// When a read last asked for the lease (renewed ahead of expiry only
    /// while reads keep coming).
    pub last_read: Option<Instant>,
    /// The renewal in flight, if any: (its read sequence, when issued,
    /// in which term).
    pub renewing: Option<(u64, Instant, u64)>,
}

impl Lease {
    /// Whether a read arriving `now` in `term` may be served from the
    /// lease (the caller also checks that this replica is the leader of
    /// `term` and has committed an entry of it, and that no transfer is
    /// under way).
    pub fn valid(&self, term: u64, now: Instant) -> bool {
        self.term == term && self.revoked != term && self.until.is_some_and(|u| now < u)
    }

    /// A ReadIndex this leader issued at `issued` in `term` was confirmed
    /// by a quorum: the lease runs to `issued + duration`.
    pub fn renew(&mut self, term: u64, issued: Instant, duration: Duration) {
        if self.revoked == term || self.fence.is_some_and(|f| issued < f) || duration.is_zero() {
            return;
        }
        let until = issued + duration;
        if self.term != term {
            self.term = term;
            self.until = Some(until);
        } else if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// Leadership of `term` is being handed to another replica.
    pub fn revoke(&mut self, term: u64) {
        self.revoked = term;
        self.until = None;
    }

    /// The membership changed at `now`: confirmations by the old voters
    /// no longer count.
    pub fn fence(&mut self, now: Instant) {
        self.until = None;
        self.fence = Some(now);
    }

    /// How long the lease has left at `now` in `term` (zero if none).
    pub fn remaining(&self, term: u64, now: Instant) -> Duration {
        if !self.valid(term, now) {
            return Duration::ZERO;
        }
        self.until.map_or(Duration::ZERO, |u| u - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(400);

    #[test]
    fn a_lease_lasts_from_the_confirmed_read_and_not_after() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        assert!(!l.valid(7, t0));
        l.renew(7, t0, D);
        assert!(l.valid(7, t0 + D - Duration::from_millis(1)));
        assert!(!l.valid(7, t0 + D));
        // Another term: the lease of term 7 says nothing about it.
        assert!(!l.valid(8, t0));
        // An older confirmation does not shorten it.
        l.renew(7, t0 - Duration::from_millis(100), D);
        assert!(l.valid(7, t0 + D - Duration::from_millis(1)));
    }

    #[test]
    fn a_transfer_revokes_the_term_and_a_membership_change_fences_older_reads() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.renew(3, t0, D);
        l.revoke(3);
        assert!(!l.valid(3, t0));
        l.renew(3, t0 + Duration::from_millis(10), D);
        assert!(
            !l.valid(3, t0 + Duration::from_millis(20)),
            "renewed in a revoked term"
        );
        l.renew(4, t0, D);
        assert!(
            l.valid(4, t0 + Duration::from_millis(1)),
            "a later term may lease again"
        );

        let mut l = Lease::default();
        l.renew(5, t0, D);
        let change = t0 + Duration::from_millis(50);
        l.fence(change);
        assert!(!l.valid(5, change));
        l.renew(5, t0 + Duration::from_millis(40), D);
        assert!(
            !l.valid(5, change),
            "a read issued before the change renewed it"
        );
        l.renew(5, change, D);
        assert!(l.valid(5, change + Duration::from_millis(1)));
    }

    #[test]
    fn the_lease_keeps_a_tick_of_margin_inside_the_election_timeout() {
        let t = RaftTiming::default();
        assert_eq!(lease_duration(&t), t.tick * 8);
        let short = RaftTiming {
            election_tick: 2,
            ..RaftTiming::default()
        };
        assert_eq!(lease_duration(&short), Duration::ZERO);
        let off = RaftTiming {
            read_lease: false,
            ..RaftTiming::default()
        };
        assert_eq!(lease_duration(&off), Duration::ZERO);
        let mut l = Lease::default();
        let t0 = Instant::now();
        l.renew(1, t0, lease_duration(&short));
        assert!(!l.valid(1, t0), "a zero lease must never be valid");
    }
}
