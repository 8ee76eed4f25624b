//! `hourcell gen --peers`: the peer comparison's event rows (`benches/peers`),
//! written by the generator itself instead of a Python pass over
//! `events.csv` (minutes at 46M events).
//!
//! Each event's point is its own lat/lng, else its address's, both as
//! written to the CSV (six decimals) and read back, so the slice cell here
//! is the one the node computes when it imports that CSV. Rows, one file
//! per day (`events_DDD.csv`, no header), as `schema.sql` takes them:
//! `person` (a u64 as the signed bigint with the same bits), `ts` (RFC
//! 3339), `hour` (unix hours), `geom` (EWKT point), `address`, `source`,
//! `cell` (the level-16 cell id, signed). `prep.json` says how many events,
//! the part files, the persons with events and the events per address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hourcell_storage::cell::cell_at;
use hourcell_town::{rfc3339, GenEvent, Town};
use serde::Serialize;

/// The slice level the comparison's nodes run at (the default).
pub const PEER_LEVEL: u8 = hourcell_storage::DEFAULT_SLICE_LEVEL;

/// Why the peer rows could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenPeersError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "event of person {person} at {time} has neither a point nor a known address ({address:?})"
    )]
    NoPoint {
        person: u64,
        time: i64,
        address: Option<String>,
    },
    #[error("encoding prep.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a writer thread panicked")]
    Panicked,
}

/// What `prep.json` holds (the shape `peers.py prep` writes).
#[derive(Debug, Serialize)]
pub struct PeerPrep {
    pub events: u64,
    pub seconds: f64,
    pub parts: Vec<String>,
    pub persons: Vec<u64>,
    pub addresses: BTreeMap<String, u64>,
}

/// A coordinate as the CSV writes it and an importer reads it back.
fn six(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

/// The row of one event; `points` maps address codes to their CSV points.
pub fn peer_row(
    e: &GenEvent,
    points: &HashMap<&str, (f64, f64)>,
    out: &mut String,
) -> Result<(), GenPeersError> {
    let (lat, lng) = match (e.lat, e.lng) {
        (Some(lat), Some(lng)) => (six(lat), six(lng)),
        _ => *e
            .address
            .as_deref()
            .and_then(|a| points.get(a))
            .ok_or_else(|| GenPeersError::NoPoint {
                person: e.person,
                time: e.time,
                address: e.address.clone(),
            })?,
    };
    let cell = cell_at(lat, lng, PEER_LEVEL) as i64;
    let _ = writeln!(
        out,
        "{},{},{},SRID=4326;POINT({lng:.6} {lat:.6}),{},{},{cell}",
        e.person as i64,
        rfc3339(e.time),
        e.time.div_euclid(3600),
        e.address.as_deref().unwrap_or(""),
        e.source,
    );
    Ok(())
}

struct DayOut {
    events: u64,
    persons: BTreeSet<u64>,
    addresses: HashMap<String, u64>,
}

fn write_day(
    town: &Town,
    day: u32,
    path: &Path,
    points: &HashMap<&str, (f64, f64)>,
) -> Result<DayOut, GenPeersError> {
    let io = |source| GenPeersError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut w =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).map_err(io)?);
    let mut out = DayOut {
        events: 0,
        persons: BTreeSet::new(),
        addresses: HashMap::new(),
    };
    let mut row = String::with_capacity(160);
    for e in town.events_for_day(day) {
        row.clear();
        peer_row(&e, points, &mut row)?;
        w.write_all(row.as_bytes()).map_err(io)?;
        out.events += 1;
        out.persons.insert(e.person);
        if let Some(a) = e.address {
            *out.addresses.entry(a).or_default() += 1;
        }
    }
    w.flush().map_err(io)?;
    Ok(out)
}

/// Writes `dir/events_DDD.csv` for every day and `dir/prep.json`, on
/// `workers` threads (days taken in turn).
pub fn write_peer_rows(town: &Town, dir: &Path, workers: usize) -> Result<PeerPrep, GenPeersError> {
    let t0 = Instant::now();
    let io = |source| GenPeersError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let dir = dir.canonicalize().map_err(io)?;
    let points: HashMap<&str, (f64, f64)> = town
        .addresses()
        .iter()
        .map(|a| (a.code.as_str(), (six(a.lat), six(a.lng))))
        .collect();
    let days = town.config().days;
    let parts: Vec<PathBuf> = (0..days)
        .map(|d| dir.join(format!("events_{d:03}.csv")))
        .collect();
    let next = std::sync::atomic::AtomicU32::new(0);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let d = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if d >= days {
                            return Ok(mine);
                        }
                        mine.push(write_day(town, d, &parts[d as usize], &points)?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| GenPeersError::Panicked)?)
            .collect::<Result<Vec<Vec<DayOut>>, GenPeersError>>()
    })?;
    let mut prep = PeerPrep {
        events: 0,
        seconds: 0.0,
        parts: parts.iter().map(|p| p.display().to_string()).collect(),
        persons: Vec::new(),
        addresses: BTreeMap::new(),
    };
    let mut persons = BTreeSet::new();
    for day in results.into_iter().flatten() {
        prep.events += day.events;
        persons.extend(day.persons);
        for (a, n) in day.addresses {
            *prep.addresses.entry(a).or_default() += n;
        }
    }
    prep.persons = persons.into_iter().collect();
    prep.seconds = t0.elapsed().as_secs_f64();
    let path = dir.join("prep.json");
    std::fs::write(&path, serde_json::to_vec(&prep)?)
        .map_err(|source| GenPeersError::Write { path, source })?;
    Ok(prep)
}
