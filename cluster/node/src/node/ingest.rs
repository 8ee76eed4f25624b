//! Writes: ingest with group commit, addresses and registrations.

use super::*;

/// Group commit of ingest batches. Requests validate their events in
/// parallel, then queue them; whichever request finds no apply running
/// takes everything queued (up to `max_batch` events) and proposes it as one
/// `Ingest` command, and every request returns once the command holding its
/// events is durable. Consecutive batches share many slice keys (a quarter
/// of the address-day keys and a tenth of the person-day keys of two
/// 20,000-event batches of the generated town), so one command writes fewer
/// merge operands into the memtable than two, and syncs once.
#[derive(Default)]
pub(super) struct IngestGroup {
    state: std::sync::Mutex<GroupState>,
    applied: std::sync::Condvar,
}

#[derive(Default)]
pub(super) struct GroupState {
    next_ticket: u64,
    queue: std::collections::VecDeque<(u64, Vec<hourcell_storage::SliceEvent>)>,
    applying: bool,
    /// Outcome per ticket whose events were proposed, until its request
    /// collects it: `Ok` or the error, as a copy for the requests that did
    /// not propose.
    done: std::collections::HashMap<u64, Result<(), NodeError>>,
}

/// Ends a group whose proposal panicked: every request in it gets an
/// error, and the next waiting request proposes.
pub(super) struct GroupGuard<'a> {
    group: &'a IngestGroup,
    tickets: Option<Vec<u64>>,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if let Some(tickets) = self.tickets.take() {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                st.done.insert(
                    t,
                    Err(NodeError::Unavailable(
                        "the write failed on this node; retry it".into(),
                    )),
                );
            }
            self.group.applied.notify_all();
        }
    }
}

/// A copy of an error for the other requests of a failed group: the same
/// kind where it is only a message, otherwise unavailable with its text.
pub(super) fn shared_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::Invalid(m) => NodeError::Invalid(m.clone()),
        NodeError::Refused(m) => NodeError::Refused(m.clone()),
        other => NodeError::Unavailable(other.to_string()),
    }
}

impl Node {
    pub(super) fn check_batch(&self, n: usize, what: &str) -> Result<(), NodeError> {
        if n > self.max_batch {
            return Err(NodeError::Invalid(format!(
                "{what}: {n} items in one request, at most {} allowed",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// Validates, places and durably applies events. Bad events are
    /// rejected one by one; their good neighbours are applied.
    pub fn ingest(&self, raw: &[RawEvent]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.ingest_owned(raw.to_vec())
    }

    /// [`Node::ingest`] of events the caller gives away: their strings move
    /// into the command instead of being copied.
    pub fn ingest_owned(&self, raw: Vec<RawEvent>) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "events")?;
        // Validation reads the address table: on a replica it must see
        // every address acknowledged anywhere before this request.
        self.read_barrier()?;
        let now = self.now();
        let sources = SourceTally::of(&raw);
        let (ok, bad) = validate::place_events_owned(
            self.store.as_ref(),
            raw,
            now,
            Some(self.retained_from(now)),
        );
        let n = ok.len() as u64;
        let newest = sources.newest(&ok);
        if !ok.is_empty() {
            self.ingest_grouped(ok)?;
        }
        self.events_accepted.fetch_add(n, Ordering::Relaxed);
        sources.record(&self.metrics.sources, &newest, &bad);
        Ok((n, bad))
    }

    /// Proposes `events`, possibly in one command with other requests'
    /// events (see [`IngestGroup`]); returns once they are durable.
    pub(super) fn ingest_grouped(
        &self,
        events: Vec<hourcell_storage::SliceEvent>,
    ) -> Result<(), NodeError> {
        let g = &self.ingest_group;
        let mut st = g.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back((ticket, events));
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r;
            }
            if st.applying {
                st = g.applied.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Take the queue in order, at least one batch, at most
            // max_batch events in all.
            st.applying = true;
            let mut tickets = Vec::new();
            let mut all: Vec<hourcell_storage::SliceEvent> = Vec::new();
            while let Some((_, ev)) = st.queue.front() {
                if !all.is_empty() && all.len() + ev.len() > self.max_batch {
                    break;
                }
                let (t, ev) = st.queue.pop_front().expect("front exists");
                tickets.push(t);
                if all.is_empty() {
                    all = ev;
                } else {
                    all.extend(ev);
                }
            }
            drop(st);
            // Should the proposal panic, the group's requests get an error
            // and the next one in line proposes.
            let mut guard = GroupGuard {
                group: g,
                tickets: Some(tickets.clone()),
            };
            let r = match &self.shards {
                Some(sh) => self.ingest_sharded(sh, all),
                None => self.propose(&Command::Ingest(all)).map(|_| ()),
            };
            guard.tickets = None;
            st = g.state.lock().unwrap_or_else(|p| p.into_inner());
            st.applying = false;
            for t in tickets {
                let copy = match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(shared_error(e)),
                };
                st.done.insert(t, copy);
            }
            if let Err(e) = r {
                // If our own events were in this group, hand back the
                // original error rather than the copy.
                if st.done.remove(&ticket).is_some() {
                    g.applied.notify_all();
                    return Err(e);
                }
            }
            g.applied.notify_all();
        }
    }

    pub fn put_addresses(&self, raw: &[RawAddress]) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "addresses")?;
        self.read_barrier()?;
        let (ok, bad) = validate::check_addresses(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutAddresses(ok))?;
        }
        Ok((n, bad))
    }

    pub fn put_registrations(
        &self,
        raw: &[RawRegistration],
    ) -> Result<(u64, Vec<Rejection>), NodeError> {
        self.check_batch(raw.len(), "registrations")?;
        self.read_barrier()?;
        let (ok, bad) = validate::check_registrations(self.store.as_ref(), raw);
        let n = ok.len() as u64;
        if !ok.is_empty() {
            self.propose(&Command::PutRegistrations(ok))?;
        }
        Ok((n, bad))
    }

    // ------------------------------------------------- security and audit
}

/// The source labels of an ingest request, for each label's health
/// metrics: a short list of labels and each event's place in it.
struct SourceTally {
    labels: Vec<String>,
    of_event: Vec<u16>,
}

impl SourceTally {
    fn of(raw: &[RawEvent]) -> Self {
        let mut labels: Vec<String> = Vec::new();
        let of_event = raw
            .iter()
            .map(|e| match labels.iter().position(|l| *l == e.source) {
                Some(i) => i as u16,
                None if labels.len() < crate::metrics::MAX_SOURCES => {
                    labels.push(e.source.clone());
                    (labels.len() - 1) as u16
                }
                None => crate::metrics::MAX_SOURCES as u16,
            })
            .collect();
        SourceTally { labels, of_event }
    }

    /// Each label's newest hour among the placed events `ok`.
    fn newest(&self, ok: &[hourcell_storage::SliceEvent]) -> Vec<Option<i64>> {
        let n = self.labels.len() + 1;
        let mut newest: Vec<Option<i64>> = vec![None; n];
        for e in ok {
            let i = self
                .labels
                .iter()
                .position(|l| *l == e.source)
                .unwrap_or(n - 1);
            newest[i] = Some(newest[i].map_or(e.hour, |h: i64| h.max(e.hour)));
        }
        newest
    }

    /// Counts each label's accepted and rejected events (refused: `bad`)
    /// and its newest accepted hour (from [`SourceTally::newest`]).
    fn record(&self, m: &crate::metrics::SourceHealth, newest: &[Option<i64>], bad: &[Rejection]) {
        let n = self.labels.len() + 1;
        let (mut total, mut rejected) = (vec![0u64; n], vec![0u64; n]);
        for &i in &self.of_event {
            total[i as usize] += 1;
        }
        for r in bad {
            if let Some(&i) = self.of_event.get(r.index as usize) {
                rejected[i as usize] += 1;
            }
        }
        for i in 0..n {
            if total[i] == 0 {
                continue;
            }
            let label = self
                .labels
                .get(i)
                .map_or(crate::metrics::OTHER_SOURCE, String::as_str);
            m.observe(
                label,
                total[i] - rejected[i],
                rejected[i],
                newest[i].map(|h| h * 3600),
            );
        }
    }
}
