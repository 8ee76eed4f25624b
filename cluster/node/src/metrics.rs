//! The node's counters and latency histograms (prometheus-client types,
//! updated on the write path) and each source label's ingest health. The
//! server registers them, with gauges read when scraped, and serves them.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A latency histogram with [`BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Most source labels given a series of their own; events of later labels
/// count under [`OTHER_SOURCE`] (labels are a short list of feeds, but
/// rejected events may carry any string).
pub const MAX_SOURCES: usize = 64;

/// The label of the events whose source is past [`MAX_SOURCES`].
pub const OTHER_SOURCE: &str = "(other)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// Ingest health per source label: is a feed late, missing or dirty?
#[derive(Default)]
pub struct SourceHealth {
    accepted: Family<SourceLabel, Counter>,
    rejected: Family<SourceLabel, Counter>,
    /// Unix seconds of the newest event accepted from the source.
    newest: Family<SourceLabel, Gauge>,
    /// The labels with a series of their own.
    known: Mutex<Vec<String>>,
}

impl SourceHealth {
    fn label(&self, source: &str) -> SourceLabel {
        let mut known = self.known.lock();
        let source = if known.iter().any(|s| s == source) {
            source
        } else if known.len() < MAX_SOURCES {
            known.push(source.to_string());
            source
        } else {
            OTHER_SOURCE
        };
        SourceLabel {
            source: source.to_string(),
        }
    }

    /// Counts `accepted` events from `source`, the newest at `newest`
    /// (unix seconds), and `rejected` ones.
    pub fn observe(&self, source: &str, accepted: u64, rejected: u64, newest: Option<i64>) {
        let l = self.label(source);
        if accepted > 0 {
            self.accepted.get_or_create(&l).inc_by(accepted);
        }
        if rejected > 0 {
            self.rejected.get_or_create(&l).inc_by(rejected);
        }
        if let Some(t) = newest {
            let g = self.newest.get_or_create(&l);
            if g.get() < t {
                g.set(t);
            }
        }
    }
}

/// Everything the node counts.
pub struct Metrics {
    pub proposals: Counter,
    pub proposal_failures: Counter,
    /// From proposing a command to its being applied on this node
    /// (replicated: committed by a majority and applied).
    pub commit_latency: Histogram,
    /// Applying one command to the store (shared with every state
    /// machine: clones of a histogram count into it).
    pub apply_latency: Histogram,
    /// Sharded: reads of shards held elsewhere, sent to their nodes.
    pub routed_reads: Counter,
    /// Sharded: requests that carried those reads (the reads of the
    /// shards a node holds go to it together, in one request).
    pub routed_read_requests: Counter,
    /// Sharded: write parts for shards held elsewhere, sent to their nodes.
    pub routed_parts: Counter,
    /// Routed requests a node failed (unreachable, no leader, timeout);
    /// each is retried on another replica until the deadline.
    pub routed_failures: Counter,
    /// Routed requests refused because this node's shard map was stale
    /// (it refreshed the map and routed again).
    pub stale_map_refusals: Counter,
    /// Commands that committed audit records (each one synced write or
    /// raft round, holding the records of every request that waited).
    pub audit_commits: Counter,
    /// How long a person-level answer waited for its audit records to be
    /// committed (one synced write, or a raft round of the metadata group;
    /// shared with concurrent answers).
    pub audit_wait: Histogram,
    /// Sharded: the first-round read barrier of a linearizable query (a
    /// ReadIndex on the metadata group and the shards it will read).
    pub query_barrier: Histogram,
    /// Sharded: the read barrier taken when serving a read routed here.
    pub routed_barrier: Histogram,
    pub sources: SourceHealth,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            proposals: Counter::default(),
            proposal_failures: Counter::default(),
            commit_latency: latency_histogram(),
            apply_latency: latency_histogram(),
            routed_reads: Counter::default(),
            routed_read_requests: Counter::default(),
            routed_parts: Counter::default(),
            routed_failures: Counter::default(),
            stale_map_refusals: Counter::default(),
            audit_commits: Counter::default(),
            audit_wait: latency_histogram(),
            query_barrier: latency_histogram(),
            routed_barrier: latency_histogram(),
            sources: SourceHealth::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `hourcell_` (the registry's prefix).
    /// The metric objects are shared: updates after this show in scrapes.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "proposals",
            "Commands proposed by this node",
            self.proposals.clone(),
        );
        r.register(
            "proposal_failures",
            "Proposals that were not applied (timeout, no leader, refused)",
            self.proposal_failures.clone(),
        );
        r.register_with_unit(
            "commit",
            "Time from proposing a command to its being applied on this node",
            Unit::Seconds,
            self.commit_latency.clone(),
        );
        r.register_with_unit(
            "apply",
            "Time to apply one command to the store",
            Unit::Seconds,
            self.apply_latency.clone(),
        );
        r.register_with_unit(
            "audit_wait",
            "Time a person-level answer waited for its audit records to be committed",
            Unit::Seconds,
            self.audit_wait.clone(),
        );
        r.register_with_unit(
            "query_barrier",
            "Sharded: the first read barrier of a linearizable query (metadata group and the shards it reads)",
            Unit::Seconds,
            self.query_barrier.clone(),
        );
        r.register_with_unit(
            "routed_barrier",
            "Sharded: the read barrier taken before serving a read routed here",
            Unit::Seconds,
            self.routed_barrier.clone(),
        );
        for (name, help, c) in [
            (
                "routed_reads",
                "Reads of shards held elsewhere, routed to a node that holds them",
                &self.routed_reads,
            ),
            (
                "routed_read_requests",
                "Requests that carried the routed reads: one per node a query step reads from, holding the reads of every shard it holds there",
                &self.routed_read_requests,
            ),
            (
                "routed_parts",
                "Write parts for shards held elsewhere, routed to a node that holds them",
                &self.routed_parts,
            ),
            (
                "routed_failures",
                "Routed requests that failed on a node and were retried on another replica",
                &self.routed_failures,
            ),
            (
                "stale_map_refusals",
                "Routed requests refused as routed by a stale shard map (the map was refreshed)",
                &self.stale_map_refusals,
            ),
            (
                "audit_commits",
                "Commands that committed audit records, each holding the records of every request waiting for one (hourcell_audit_records counts the records)",
                &self.audit_commits,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        r.register(
            "source_events_accepted",
            "Events accepted by ingest on this node, per source label",
            self.sources.accepted.clone(),
        );
        r.register(
            "source_events_rejected",
            "Events rejected by ingest on this node (bad time, place, label), per source label",
            self.sources.rejected.clone(),
        );
        r.register(
            "source_newest_event_seconds",
            "Unix time of the newest event accepted on this node, per source label",
            self.sources.newest.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        let mut r = Registry::with_prefix("hourcell");
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for d in [500, 30_000, 9_000_000] {
            m.commit_latency.observe(d as f64 / 1e6);
        }
        let out = scrape(&m);
        assert!(
            out.contains("hourcell_commit_seconds_bucket{le=\"0.0005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("hourcell_commit_seconds_bucket{le=\"0.05\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("hourcell_commit_seconds_bucket{le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(out.contains("hourcell_commit_seconds_count 3"), "{out}");
    }

    #[test]
    fn sources_get_series_up_to_a_cap() {
        let m = Metrics::default();
        m.sources.observe("utility", 5, 1, Some(1_000));
        m.sources.observe("utility", 2, 0, Some(900));
        for i in 0..MAX_SOURCES + 3 {
            m.sources.observe(&format!("junk{i}"), 0, 1, None);
        }
        let out = scrape(&m);
        assert!(
            out.contains("hourcell_source_events_accepted_total{source=\"utility\"} 7"),
            "{out}"
        );
        assert!(
            out.contains("hourcell_source_newest_event_seconds{source=\"utility\"} 1000"),
            "{out}"
        );
        assert!(
            out.contains("hourcell_source_events_rejected_total{source=\"(other)\"} 4"),
            "{out}"
        );
        assert_eq!(
            out.matches("hourcell_source_events_rejected_total{")
                .count(),
            MAX_SOURCES + 1
        );
    }
}
