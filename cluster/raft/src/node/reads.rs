//! Read barriers (ReadIndex): resending those raft-rs dropped, releasing
//! them once applied, and serving them from the leader lease (see
//! [`crate::lease`] for why that is safe). The leader answers its own read
//! barriers, and the read requests its followers forward, from its commit
//! index while the lease holds; it renews the lease ahead of expiry while
//! reads keep coming, so a steady stream of reads costs no heartbeat
//! round each.

use std::collections::HashMap;
use std::time::Instant;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::{RaftNode, READ_RESEND};
use crate::engine::LogEngine;
use crate::lease::lease_duration;
use crate::machine::Outcome;
use crate::transport::Envelope;

impl<E: LogEngine, O: Outcome> RaftNode<E, O> {
    /// Sends again the read barriers that got no read index within
    /// [`READ_RESEND`]: raft-rs drops a read request without a word when
    /// the leader has not yet committed an entry of its term (one just
    /// elected) or when the message is lost, and the caller would wait out
    /// its whole timeout. The leader ignores a request it already holds,
    /// and a second answer finds no waiter.
    pub(super) fn resend_reads(&mut self, now: Instant) {
        if self.reads.is_empty() {
            self.read_sent.clear();
            return;
        }
        let reads = &self.reads;
        self.read_sent.retain(|seq, _| reads.contains_key(seq));
        for (seq, (group, _, _)) in &self.reads {
            let sent = self.read_sent.entry(*seq).or_insert(now);
            if now.duration_since(*sent) < READ_RESEND {
                continue;
            }
            if let Some(g) = self.groups.get_mut(group) {
                if g.raw.raft.leader_id != raft::INVALID_ID {
                    *sent = now;
                    g.raw.read_index(seq.to_be_bytes().to_vec());
                }
            }
        }
    }

    /// Answers the read barriers whose index this replica has applied.
    pub(super) fn release_reads(&mut self) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied: HashMap<u64, u64> = self
            .groups
            .iter()
            .map(|(id, g)| (*id, g.store.applied()))
            .collect();
        self.reads_ready.retain(|(g, index, reply)| {
            if applied.get(g).is_some_and(|a| a >= index) {
                let _ = reply.send(Ok(()));
                false
            } else {
                true
            }
        });
    }

    /// The read index of a read of `group` arriving now, if this replica
    /// may answer it from its lease: it leads the group, has committed an
    /// entry of its term (so its commit index is the group's), hands the
    /// lead to no one, and holds an unexpired lease of the term.
    pub(super) fn lease_read_index(&mut self, group: u64) -> Option<u64> {
        let g = self.groups.get_mut(&group)?;
        let r = &g.raw.raft;
        if r.state != StateRole::Leader
            || r.lead_transferee.is_some()
            || !r.commit_to_current_term()
        {
            return None;
        }
        let now = Instant::now();
        g.lease.last_read = Some(now);
        g.lease.valid(r.term, now).then_some(r.raft_log.committed)
    }

    /// Answers a follower's forwarded read request from the lease (as
    /// raft-rs would after a heartbeat round); false if it must go through
    /// raft.
    pub(super) fn answer_read_from_lease(&mut self, env: &Envelope) -> bool {
        let m = &env.msg;
        if m.get_msg_type() != MessageType::MsgReadIndex
            || m.from == 0
            || m.from == self.id
            || m.entries.len() != 1
        {
            return false;
        }
        let Some(index) = self.lease_read_index(env.group) else {
            return false;
        };
        let Some(g) = self.groups.get_mut(&env.group) else {
            return false;
        };
        g.active = Instant::now();
        let mut resp = Message::default();
        resp.set_msg_type(MessageType::MsgReadIndexResp);
        resp.to = m.from;
        resp.from = self.id;
        resp.term = g.raw.raft.term;
        resp.index = index;
        resp.set_entries(m.entries.clone());
        self.send(env.group, vec![resp]);
        true
    }

    /// Whether `env` asks for a vote this replica holds back: it restarted
    /// within an election timeout after being in an elected term, and may
    /// have confirmed a lease it no longer remembers. A transfer campaign
    /// is let through: only a leader that gave up its lease starts one.
    pub(super) fn vote_held(&mut self, env: &Envelope) -> bool {
        if !matches!(
            env.msg.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) || env.msg.context.as_ref() == raft::CAMPAIGN_TRANSFER
        {
            return false;
        }
        let Some(g) = self.groups.get_mut(&env.group) else {
            return false;
        };
        match g.votes_held_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                g.votes_held_until = None;
                false
            }
            None => false,
        }
    }

    /// The read barrier `seq` of `gid` got its read index: wake its waiter
    /// once applied, and renew the lease when it is this leader's own
    /// confirmation by a quorum (a read it issued as leader in this term,
    /// or a renewal).
    pub(super) fn read_confirmed(&mut self, gid: u64, seq: u64, index: u64) {
        let duration = lease_duration(&self.timing);
        if let Some((group, term, w)) = self.reads.remove(&seq) {
            if let Some(g) = self.groups.get_mut(&group) {
                let r = &g.raw.raft;
                if w.as_leader && r.state == StateRole::Leader && r.term == term {
                    g.lease.renew(term, w.issued, duration);
                }
            }
            self.reads_ready.push((group, index, w.reply));
            return;
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some((s, issued, term)) = g.lease.renewing {
            if s == seq {
                g.lease.renewing = None;
                let r = &g.raw.raft;
                if r.state == StateRole::Leader && r.term == term {
                    g.lease.renew(term, issued, duration);
                }
            }
        }
    }

    /// On each tick: a leader whose lease is past half its time, and that
    /// served or was asked for a read within the last lease, asks its
    /// quorum again (a ReadIndex of its own) so that reads keep finding a
    /// valid lease. Groups nobody reads send nothing more than heartbeats.
    pub(super) fn renew_leases(&mut self, now: Instant) {
        let duration = lease_duration(&self.timing);
        if duration.is_zero() {
            return;
        }
        for g in self.groups.values_mut() {
            let r = &g.raw.raft;
            if r.state != StateRole::Leader
                || r.lead_transferee.is_some()
                || !r.commit_to_current_term()
                || !g
                    .lease
                    .last_read
                    .is_some_and(|t| now.duration_since(t) < duration)
                || g.lease.remaining(r.term, now) > duration / 2
                || g.lease.renewing.is_some_and(|(_, t, term)| {
                    term == r.term && now.duration_since(t) < READ_RESEND
                })
            {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let term = r.term;
            g.raw.read_index(seq.to_be_bytes().to_vec());
            g.lease.renewing = Some((seq, now, term));
        }
    }
}
