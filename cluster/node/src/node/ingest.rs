//! Writes: ingest (with group commit), addresses and registrations.

use super::*;

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
    /// events (see [`super::group`]); returns once they are durable.
    pub(super) fn ingest_grouped(
        &self,
        events: Vec<hourcell_storage::SliceEvent>,
    ) -> Result<(), NodeError> {
        // Consecutive batches share many slice keys (a quarter of the
        // address-day keys and a tenth of the person-day keys of two
        // 20,000-event batches of the generated town), so one command
        // writes fewer merge operands into the memtable than two, and
        // syncs once.
        self.ingest_group
            .submit(events, self.max_batch, &mut |all| match &self.shards {
                Some(sh) => self.ingest_sharded(sh, all),
                None => self.propose(&Command::Ingest(all)).map(|_| ()),
            })
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
