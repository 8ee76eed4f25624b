//! `hourcell bench --params FILE`: the peer comparison's parameter sets
//! (`benches/peers`, written by `peers.py params`) sent to a running node
//! from Rust, at each `--clients` figure, so the harness can tell the
//! node's time from its Python client's.
//!
//! The file names, under `kinds`, the query kind of each parameter set it
//! holds (`"circle": "who-was-at"`, `"occ_area": "occupancy"`, ...); each
//! entry of a set carries the fields its kind reads: a region (`lat`, `lng`,
//! `r` for a circle; `lat1`, `lng1`, `lat2`, `lng2` for a rectangle;
//! `address` for one address code), a window (`from`, `to`), `person`,
//! `since`, or a grid's `level` and `hourly`. Unknown fields (the peers'
//! cell lists) are ignored. Every request passes the file's `as_of`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hourcell_proto::v1;
use serde::{Deserialize, Serialize};

use crate::bench::{percentile, QueryStats};
use crate::cli::BenchArgs;
use crate::client::{self, QueryRequest};

/// What is wrong with a parameter file.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("reading the parameter file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing the parameter file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("parameter set {set:?} has kind {kind:?}; known kinds: who-was-at, where-was, occupancy, no-activity-since, grid")]
    UnknownKind { set: String, kind: String },
    #[error("parameter set {set:?} is named in `kinds` but not in the file")]
    MissingSet { set: String },
    #[error("parameter set {set:?}, entry {index}: {kind} needs {what}")]
    MissingField {
        set: String,
        index: usize,
        kind: &'static str,
        what: &'static str,
    },
}

/// One entry of a parameter set; which fields matter depends on the kind.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ParamEntry {
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub r: Option<f64>,
    pub lat1: Option<f64>,
    pub lng1: Option<f64>,
    pub lat2: Option<f64>,
    pub lng2: Option<f64>,
    pub address: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub person: Option<u64>,
    pub since: Option<i64>,
    pub level: Option<u32>,
    pub hourly: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ParamFile {
    as_of: i64,
    #[serde(default)]
    kinds: BTreeMap<String, String>,
    #[serde(flatten)]
    sets: BTreeMap<String, serde_json::Value>,
}

/// A parameter set turned into requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSet {
    pub name: String,
    pub kind: &'static str,
    pub requests: Vec<QueryRequest>,
}

/// Why and for which case person-level queries are asked (audited).
#[derive(Debug, Clone)]
pub struct Why {
    pub purpose: String,
    pub case_ref: String,
}

fn kind_of(set: &str, kind: &str) -> Result<&'static str, ParamsError> {
    Ok(match kind {
        "who-was-at" => "who-was-at",
        "where-was" => "where-was",
        "occupancy" => "occupancy",
        "no-activity-since" => "no-activity-since",
        "grid" => "grid",
        _ => {
            return Err(ParamsError::UnknownKind {
                set: set.to_string(),
                kind: kind.to_string(),
            })
        }
    })
}

/// The region of an entry: a circle, a rectangle or one address code.
fn region(e: &ParamEntry) -> Option<v1::Region> {
    let kind = if let (Some(lat), Some(lng), Some(r)) = (e.lat, e.lng, e.r) {
        v1::region::Kind::Circle(v1::Circle {
            lat,
            lng,
            radius_m: r,
        })
    } else if let (Some(a), Some(b), Some(c), Some(d)) = (e.lat1, e.lng1, e.lat2, e.lng2) {
        v1::region::Kind::Rect(v1::Rect {
            lat_lo: a.min(c),
            lng_lo: b.min(d),
            lat_hi: a.max(c),
            lng_hi: b.max(d),
        })
    } else {
        v1::region::Kind::Addresses(v1::AddressList {
            codes: vec![e.address.clone()?],
        })
    };
    Some(v1::Region { kind: Some(kind) })
}

fn request(
    kind: &'static str,
    e: &ParamEntry,
    as_of: i64,
    why: &Why,
) -> Result<QueryRequest, &'static str> {
    let window = || match (e.from, e.to) {
        (Some(start), Some(end)) => Ok(v1::Window {
            start,
            end,
            as_of: Some(as_of),
        }),
        _ => Err("from and to"),
    };
    let region =
        || region(e).ok_or("a circle (lat, lng, r), a rectangle (lat1..lng2) or an address");
    Ok(match kind {
        "who-was-at" => QueryRequest::WhoWasAt(v1::WhoWasAtRequest {
            purpose: why.purpose.clone(),
            case_ref: why.case_ref.clone(),
            max_staleness_ms: None,
            region: Some(region()?),
            window: Some(window()?),
        }),
        "where-was" => QueryRequest::WhereWas(v1::WhereWasRequest {
            purpose: why.purpose.clone(),
            case_ref: why.case_ref.clone(),
            max_staleness_ms: None,
            person: e.person.ok_or("person")?,
            window: Some(window()?),
        }),
        "occupancy" => QueryRequest::Occupancy(v1::OccupancyRequest {
            max_staleness_ms: None,
            region: Some(region()?),
            window: Some(window()?),
        }),
        "grid" => QueryRequest::Grid(v1::OccupancyGridRequest {
            region: Some(region()?),
            window: Some(window()?),
            level: e.level.unwrap_or(0),
            hourly: e.hourly.unwrap_or(false),
            max_staleness_ms: None,
        }),
        _ => QueryRequest::NoActivitySince(v1::NoActivitySinceRequest {
            purpose: why.purpose.clone(),
            case_ref: why.case_ref.clone(),
            max_staleness_ms: None,
            since: e.since.ok_or("since")?,
            as_of: Some(as_of),
            scope: None,
            local: None,
        }),
    })
}

/// Parses a parameter file's text into its sets, in the order of their
/// names; `only` (empty: all) keeps the named sets.
pub fn parse_params(
    path: &Path,
    text: &str,
    only: &[String],
    why: &Why,
) -> Result<Vec<ParamSet>, ParamsError> {
    let file: ParamFile = serde_json::from_str(text).map_err(|source| ParamsError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (name, kind) in &file.kinds {
        if !only.is_empty() && !only.iter().any(|o| o.trim() == name) {
            continue;
        }
        let kind = kind_of(name, kind)?;
        let value = file
            .sets
            .get(name)
            .ok_or_else(|| ParamsError::MissingSet { set: name.clone() })?;
        let entries: Vec<ParamEntry> =
            serde_json::from_value(value.clone()).map_err(|source| ParamsError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let requests = entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                request(kind, e, file.as_of, why).map_err(|what| ParamsError::MissingField {
                    set: name.clone(),
                    index,
                    kind,
                    what,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(ParamSet {
            name: name.clone(),
            kind,
            requests,
        });
    }
    Ok(out)
}

/// Reads and parses a parameter file.
pub fn read_params(path: &Path, only: &[String], why: &Why) -> Result<Vec<ParamSet>, ParamsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParamsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_params(path, &text, only, why)
}

/// One figure: a set at one client count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figure {
    pub clients: usize,
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub qps: f64,
    /// Mean answer size (persons, hours, distinct persons or grid cells).
    pub mean_size: f64,
}

impl Figure {
    pub fn of(clients: usize, stats: &QueryStats, wall: Duration) -> Figure {
        let mut d = stats.durations.clone();
        d.sort_unstable();
        let ms = |x: Duration| x.as_secs_f64() * 1e3;
        Figure {
            clients,
            n: d.len(),
            p50_ms: ms(percentile(&d, 500)),
            p99_ms: ms(percentile(&d, 990)),
            max_ms: ms(d.last().copied().unwrap_or_default()),
            qps: d.len() as f64 / wall.as_secs_f64().max(1e-9),
            mean_size: stats.mean_result(),
        }
    }
}

/// What `--params` writes with `--json-out`.
#[derive(Debug, Serialize)]
pub struct ParamsReport {
    pub server: String,
    pub version: String,
    pub clients: Vec<usize>,
    /// Set name -> kind and one figure per client count.
    pub sets: BTreeMap<String, SetReport>,
}

#[derive(Debug, Serialize)]
pub struct SetReport {
    pub kind: &'static str,
    pub figures: Vec<Figure>,
}

/// `requests` cycled to `n` (0: as they are).
pub fn cycled(requests: &[QueryRequest], n: usize) -> Vec<QueryRequest> {
    if n == 0 || requests.is_empty() {
        return requests.to_vec();
    }
    requests.iter().cycle().take(n).cloned().collect()
}

/// Requests at `clients` concurrent clients: at least `queries`, the set
/// once, and with more than one client two per client (as the Python
/// harness does), so every client is busy for more than one answer.
pub fn requests_at(set_len: usize, queries: usize, clients: usize) -> usize {
    let per_client = if clients > 1 { 2 * clients } else { 0 };
    queries.max(set_len).max(per_client)
}

/// Runs every set of the file: one untimed pass, then at each client
/// count [`requests_at`] requests (the set cycled).
pub async fn run_params(args: &BenchArgs, path: &Path) -> Result<ParamsReport> {
    let why = Why {
        purpose: args.purpose.clone(),
        case_ref: args.case.clone(),
    };
    let sets = read_params(path, &args.only, &why)?;
    let ch = client::channel(&args.server).await?;
    let version = client::admin_client(ch.clone())
        .status(v1::StatusRequest {
            count_postings: false,
        })
        .await
        .map_err(client::status_error)
        .context("Admin.Status")?
        .into_inner()
        .version;
    let clients = if args.clients.is_empty() {
        vec![1]
    } else {
        args.clients.clone()
    };
    let mut report = ParamsReport {
        server: args.server.clone(),
        version,
        clients: clients.clone(),
        sets: BTreeMap::new(),
    };
    for set in sets {
        for req in &set.requests {
            client::execute(ch.clone(), req.clone())
                .await
                .with_context(|| format!("{} (warm-up) failed", set.name))?;
        }
        let mut figures = Vec::new();
        for &c in &clients {
            let n = requests_at(set.requests.len(), args.queries, c);
            let reqs = cycled(&set.requests, n);
            let fresh = QueryStats::new(set.kind, "");
            let (done, wall) =
                crate::bench::run_concurrent(&args.server, fresh, reqs, c, set.requests.first())
                    .await
                    .with_context(|| format!("{} at {c} clients", set.name))?;
            let f = Figure::of(c, &done, wall);
            println!(
                "{:<12} {:<18} clients {:>3}  runs {:>5}  {:>8.1} queries/s  p50 {:>9.3} ms  p99 {:>9.3} ms  mean answer {:.1}",
                set.name, set.kind, c, f.n, f.qps, f.p50_ms, f.p99_ms, f.mean_size
            );
            figures.push(f);
        }
        report.sets.insert(
            set.name.clone(),
            SetReport {
                kind: set.kind,
                figures,
            },
        );
    }
    if let Some(out) = &args.json_out {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}
