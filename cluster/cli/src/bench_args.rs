//! The arguments of `hourcell bench` (parsing only; see `bench`,
//! `bench_mixed` and `bench_params`).

use std::path::PathBuf;

use clap::Args;

use crate::defaults::DEFAULT_SERVER;

/// Which hours the writer of `--ingest-during` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IngestHours {
    /// Today up to now: the town's last day moved one day on.
    Present,
    /// The town's own days again, from the first.
    Past,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Persons in the generated town.
    #[arg(long, default_value_t = 20_000)]
    pub persons: u64,
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// Events per ingest request.
    #[arg(long, default_value_t = 20_000)]
    pub batch: usize,
    /// Concurrent ingest requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Runs of each query.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Skip loading (the town with this seed is already in the node).
    #[arg(long)]
    pub skip_load: bool,
    /// Run only these query kinds (comma-separated: occupancy, who-was-at,
    /// where-was, no-activity-since, grid, tasks), e.g. to profile one of them
    /// alone. `tasks` evaluates the rules once, then lists the first page
    /// of tasks.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Do not compact and count postings after the queries (a profile of
    /// the queries then holds nothing else).
    #[arg(long)]
    pub no_compact: bool,
    /// Concurrent clients, e.g. `1,8,32`: each query kind then runs once
    /// per figure, its --queries requests shared by that many clients
    /// (each on its own connection), and prints queries per second with
    /// p50/p99. Without it the queries run one after another.
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Events per second to ingest while the queries run: query latency
    /// under ingest. Use about half the rate the load reached. The answers
    /// do not change (see --ingest-hours).
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = positive_rate)]
    pub ingest_during: Option<f64>,
    /// What --ingest-during sends: `present` (the town's last day moved to
    /// today, up to now: the past is queried while the present is
    /// ingested) or `past` (the town's own days again: the hours every
    /// query reads are being written).
    #[arg(long, value_enum, default_value = "present")]
    pub ingest_hours: IngestHours,
    /// Instead of generating and loading a town, send the parameter sets
    /// of this file (written by `benches/peers/peers.py params`) to the
    /// running node: one untimed pass, then at each --clients figure
    /// at least --queries requests per set (the set repeated; at least
    /// once, and two per client above one). --only then names sets of
    /// the file.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// With --params: also write the figures (p50/p99/max ms, queries/s,
    /// mean answer size per set and client count) as JSON to this file.
    #[arg(long, requires = "params")]
    pub json_out: Option<PathBuf>,
    /// With --params: why person-level queries are asked (audited).
    #[arg(long, default_value = "load benchmark on a generated town")]
    pub purpose: String,
    /// With --params: the case person-level queries are asked for.
    #[arg(long, default_value = "BENCH")]
    pub case: String,
}

/// A `--ingest-during` rate that is not a positive number.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a positive number of events per second")]
pub struct RateArgError(String);

fn positive_rate(s: &str) -> Result<f64, RateArgError> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(RateArgError(s.to_string())),
    }
}
