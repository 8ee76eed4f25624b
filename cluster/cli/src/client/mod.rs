//! The client side of the `hourcell` binary: `query`, `import` and `status`
//! against a node over gRPC.
//!
//! Everything that can be done without a server (turning flags into proto
//! requests, rendering responses as table / CSV / JSON, parsing CSV rows)
//! is a pure function here and unit-tested; the `run_*` functions only glue
//! those to the network.
//!
//! Errors are returned as `anyhow` errors whose message is meant to be shown
//! to the user as is (`error: {e:#}`): flag errors name the flag and the
//! value, server errors carry the gRPC status message plainly.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use hourcell_proto::v1;
use hourcell_query::time::{format_time, parse_time};
use serde::Serialize;

use crate::cli::{
    CellRegionArgs, Format, ImportArgs, ImportKind, QueryArgs, QueryCommand, QueryFormat,
    QueryKind, RegionArgs, ServerFormatArgs, WhyArgs, WindowArgs,
};

/// How many rejections an import lists at the end.
pub(crate) const SHOW_REJECTIONS: usize = 10;

pub use hourcell_server::channel::{
    admin_client, channel, channel_as, channel_with, ingest_client, normalize_server, query_client,
    registry_client, server_url, shown_server, Ch, Credentials, MAX_MESSAGE_BYTES,
};

/// A gRPC status as a plain user-facing error: the server's message
/// (which names the field and value for bad input), nothing else.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let msg = if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    let code = crate::exit::of_status(s.code());
    match s.code() {
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange if msg.contains("message") => {
            crate::exit::Failure::new(code, format!("{msg} (try a smaller --batch)"))
        }
        _ => crate::exit::Failure::new(code, msg),
    }
}

// ------------------------------------------------------------ region flags

/// The region flags of a command line, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegionFlags<'a> {
    pub rect: Option<&'a str>,
    pub circle: Option<&'a str>,
    pub cells: Option<&'a str>,
    pub addresses: Option<&'a str>,
    pub area: Option<&'a str>,
    /// A GeoJSON file, `-` (stdin) or inline JSON.
    pub polygon: Option<&'a str>,
}

impl<'a> RegionFlags<'a> {
    /// Regions of cells only (the grid's).
    pub fn of_cells(a: &'a CellRegionArgs) -> Self {
        RegionFlags {
            rect: a.rect.as_deref(),
            circle: a.circle.as_deref(),
            cells: a.cells.as_deref(),
            polygon: a.polygon.as_deref(),
            ..Default::default()
        }
    }

    pub fn of(a: &'a RegionArgs) -> Self {
        RegionFlags {
            addresses: a.addresses.as_deref(),
            area: a.area.as_deref(),
            ..Self::of_cells(&a.cells)
        }
    }

    /// Names of the flags that were given.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--rect", self.rect.is_some()),
            ("--circle", self.circle.is_some()),
            ("--cells", self.cells.is_some()),
            ("--addresses", self.addresses.is_some()),
            ("--area", self.area.is_some()),
            ("--polygon", self.polygon.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, g)| g.then_some(n))
        .collect()
    }
}

pub(crate) const REGION_HELP: &str = "--rect LAT1,LNG1,LAT2,LNG2, --circle LAT,LNG,METRES, \
--cells T1,T2, --addresses C1,C2, --area CODE or --polygon GEOJSON";

/// Parses exactly `names.len()` comma-separated finite numbers.
pub(crate) fn parse_numbers(flag: &str, value: &str, names: &[&str]) -> Result<Vec<f64>> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    if parts.len() != names.len() {
        bail!(
            "invalid {flag} {value:?}: expected {} comma-separated numbers {}",
            names.len(),
            names.join(",")
        );
    }
    parts
        .iter()
        .zip(names)
        .map(|(p, name)| match p.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(anyhow!(
                "invalid {flag} {value:?}: {name} {p:?} is not a number"
            )),
        })
        .collect()
}

/// `LAT1,LNG1,LAT2,LNG2`: latitudes are ordered, longitudes are kept as
/// given (west edge first, so a rectangle may cross the antimeridian).
pub fn parse_rect(flag: &str, value: &str) -> Result<v1::Rect> {
    let v = parse_numbers(flag, value, &["LAT1", "LNG1", "LAT2", "LNG2"])?;
    Ok(v1::Rect {
        lat_lo: v[0].min(v[2]),
        lng_lo: v[1],
        lat_hi: v[0].max(v[2]),
        lng_hi: v[3],
    })
}

/// `LAT,LNG,METRES`.
pub fn parse_circle(flag: &str, value: &str) -> Result<v1::Circle> {
    let v = parse_numbers(flag, value, &["LAT", "LNG", "METRES"])?;
    Ok(v1::Circle {
        lat: v[0],
        lng: v[1],
        radius_m: v[2],
    })
}

/// A comma-separated list of non-empty items.
pub fn parse_list(flag: &str, value: &str) -> Result<Vec<String>> {
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.is_empty() {
        bail!("invalid {flag} {value:?}: expected a comma-separated list");
    }
    Ok(items)
}

/// The region given by the flags: `None` when no region flag was given, an
/// error when several were or a value does not parse.
pub fn region_from_flags(f: &RegionFlags) -> Result<Option<v1::Region>> {
    use v1::region::Kind;
    let given = f.given();
    if given.len() > 1 {
        bail!(
            "give only one region, got {} (one of {REGION_HELP})",
            given.join(" and ")
        );
    }
    let kind = if let Some(v) = f.rect {
        Kind::Rect(parse_rect("--rect", v)?)
    } else if let Some(v) = f.circle {
        Kind::Circle(parse_circle("--circle", v)?)
    } else if let Some(v) = f.cells {
        Kind::Cells(v1::CellList {
            tokens: parse_list("--cells", v)?,
        })
    } else if let Some(v) = f.addresses {
        Kind::Addresses(v1::AddressList {
            codes: parse_list("--addresses", v)?,
        })
    } else if let Some(v) = f.area {
        let a = v.trim();
        if a.is_empty() {
            bail!("invalid --area {v:?}: expected an area code");
        }
        Kind::Area(a.to_string())
    } else if let Some(v) = f.polygon {
        Kind::Multipolygon(geojson::read_polygon("--polygon", v)?)
    } else {
        return Ok(None);
    };
    Ok(Some(v1::Region { kind: Some(kind) }))
}

// ----------------------------------------------------------- query request

pub fn kind_name(k: QueryKind) -> &'static str {
    match k {
        QueryKind::WhoWasAt => "who-was-at",
        QueryKind::WhereWas => "where-was",
        QueryKind::Occupancy => "occupancy",
        QueryKind::NoActivitySince => "no-activity-since",
        QueryKind::Grid => "grid",
    }
}

/// A request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryRequest {
    WhoWasAt(v1::WhoWasAtRequest),
    WhereWas(v1::WhereWasRequest),
    Occupancy(v1::OccupancyRequest),
    NoActivitySince(v1::NoActivitySinceRequest),
    Grid(v1::OccupancyGridRequest),
}

pub(crate) fn flag_time(flag: &'static str, v: &str) -> Result<i64> {
    parse_time(flag, v).map_err(|e| anyhow!("{e}"))
}

pub(crate) fn opt_time(flag: &'static str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|v| flag_time(flag, v)).transpose()
}

/// `--from` (required), `--to` (default `--as-of`, else now), `--as-of`
/// (passed through; absent means the server's now).
pub(crate) fn window(kind: QueryKind, a: &WindowArgs, now: i64) -> Result<v1::Window> {
    let kind = kind_name(kind);
    let from = a
        .from
        .as_deref()
        .ok_or_else(|| anyhow!("{kind} needs --from (RFC 3339 or unix seconds)"))?;
    let from = flag_time("--from", from)?;
    let as_of = opt_time("--as-of", a.as_of.as_of.as_deref())?;
    let to = opt_time("--to", a.to.as_deref())?.or(as_of).unwrap_or(now);
    Ok(v1::Window {
        start: from,
        end: to,
        as_of,
    })
}

/// `--purpose` and `--case`, which person-level queries need.
pub(crate) fn purpose_flags(kind: QueryKind, a: &WhyArgs) -> Result<(String, String)> {
    match (a.purpose.as_deref(), a.case.as_deref()) {
        (Some(p), Some(c)) if !p.trim().is_empty() && !c.trim().is_empty() => {
            Ok((p.to_string(), c.to_string()))
        }
        _ => Err(anyhow!(
            "{} returns persons, so it needs --purpose TEXT and --case REF (both are written \
             to the audit log before any result is returned)",
            kind_name(kind)
        )),
    }
}

/// The region a kind cannot do without.
fn needed_region(kind: QueryKind, flags: &RegionFlags) -> Result<v1::Region> {
    region_from_flags(flags)?
        .ok_or_else(|| anyhow!("{} needs a region: one of {REGION_HELP}", kind_name(kind)))
}

/// Turns the command line into a request; `now` is the default `--to`.
/// Each kind's flags are its own (clap refuses the others), so only
/// values and combinations are checked here.
pub fn build_request(q: &QueryCommand, now: i64) -> Result<QueryRequest> {
    let kind = q.kind();
    Ok(match q {
        QueryCommand::WhoWasAt(a) => {
            let region = needed_region(kind, &RegionFlags::of(&a.region))?;
            let window = window(kind, &a.window, now)?;
            let (purpose, case_ref) = purpose_flags(kind, &a.why)?;
            QueryRequest::WhoWasAt(v1::WhoWasAtRequest {
                purpose,
                case_ref,
                max_staleness_ms: None,
                region: Some(region),
                window: Some(window),
            })
        }
        QueryCommand::Occupancy(a) => {
            let region = needed_region(kind, &RegionFlags::of(&a.region))?;
            QueryRequest::Occupancy(v1::OccupancyRequest {
                max_staleness_ms: None,
                region: Some(region),
                window: Some(window(kind, &a.window, now)?),
            })
        }
        QueryCommand::Grid(a) => {
            let region =
                region_from_flags(&RegionFlags::of_cells(&a.region))?.ok_or_else(|| {
                    anyhow!("grid needs a region: one of --rect, --circle, --cells or --polygon")
                })?;
            QueryRequest::Grid(v1::OccupancyGridRequest {
                region: Some(region),
                window: Some(window(kind, &a.window, now)?),
                level: a.level.map_or(0, u32::from),
                hourly: a.hourly,
                max_staleness_ms: None,
            })
        }
        QueryCommand::WhereWas(a) => {
            let (purpose, case_ref) = purpose_flags(kind, &a.why)?;
            let window = window(kind, &a.window, now)?;
            QueryRequest::WhereWas(v1::WhereWasRequest {
                purpose,
                case_ref,
                max_staleness_ms: None,
                person: a.person,
                window: Some(window),
            })
        }
        QueryCommand::NoActivitySince(a) => {
            let since = a.since.as_deref().ok_or_else(|| {
                anyhow!("no-activity-since needs --since (RFC 3339 or unix seconds)")
            })?;
            let since = flag_time("--since", since)?;
            let as_of = opt_time("--as-of", a.as_of.as_of.as_deref())?;
            let scope = region_from_flags(&RegionFlags::of(&a.scope))?;
            let local = match (a.local_rect.as_deref(), a.local_polygon.as_deref()) {
                (Some(v), _) => Some(v1::region::Kind::Rect(parse_rect("--local-rect", v)?)),
                (None, Some(v)) => Some(v1::region::Kind::Multipolygon(geojson::read_polygon(
                    "--local-polygon",
                    v,
                )?)),
                (None, None) => None,
            }
            .map(|k| v1::Region { kind: Some(k) });
            let (purpose, case_ref) = purpose_flags(kind, &a.why)?;
            QueryRequest::NoActivitySince(v1::NoActivitySinceRequest {
                purpose,
                case_ref,
                max_staleness_ms: None,
                since,
                as_of,
                scope,
                local,
            })
        }
    })
}

// --------------------------------------------------------- query execution

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WhoWasAtResult {
    pub window: v1::EffectiveWindow,
    pub persons: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NoActivityResult {
    pub window: v1::EffectiveWindow,
    pub persons: Vec<v1::InactivePerson>,
}

/// A complete answer (streams collected).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutput {
    WhoWasAt(WhoWasAtResult),
    WhereWas(v1::WhereWasResponse),
    Occupancy(v1::OccupancyResponse),
    NoActivitySince(NoActivityResult),
    Grid(v1::OccupancyGridResponse),
}

impl QueryOutput {
    /// Size of the result: persons, hours with activity, or distinct
    /// persons.
    pub fn size(&self) -> u64 {
        match self {
            QueryOutput::WhoWasAt(r) => r.persons.len() as u64,
            QueryOutput::WhereWas(r) => r.hours.len() as u64,
            QueryOutput::Occupancy(r) => r.distinct,
            QueryOutput::NoActivitySince(r) => r.persons.len() as u64,
            QueryOutput::Grid(r) => r.cells.len() as u64,
        }
    }
}

/// Sends a request and collects the answer; server errors become plain
/// errors carrying the status message.
pub async fn execute(ch: Ch, req: QueryRequest) -> Result<QueryOutput> {
    let mut c = query_client(ch);
    Ok(match req {
        QueryRequest::WhoWasAt(r) => {
            let mut stream = c.who_was_at(r).await.map_err(status_error)?.into_inner();
            let mut out = WhoWasAtResult::default();
            let mut first = true;
            while let Some(m) = stream.message().await.map_err(status_error)? {
                if first {
                    out.window = m.window.unwrap_or_default();
                    first = false;
                }
                out.persons.extend(m.persons);
            }
            QueryOutput::WhoWasAt(out)
        }
        QueryRequest::WhereWas(r) => {
            QueryOutput::WhereWas(c.where_was(r).await.map_err(status_error)?.into_inner())
        }
        QueryRequest::Occupancy(r) => {
            QueryOutput::Occupancy(c.occupancy(r).await.map_err(status_error)?.into_inner())
        }
        QueryRequest::Grid(r) => QueryOutput::Grid(
            c.occupancy_grid(r)
                .await
                .map_err(status_error)?
                .into_inner(),
        ),
        QueryRequest::NoActivitySince(r) => {
            let since = r.since;
            let mut stream = c
                .no_activity_since(r)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out = NoActivityResult::default();
            let mut first = true;
            while let Some(m) = stream.message().await.map_err(status_error)? {
                if first {
                    out.window = m.window.unwrap_or(v1::EffectiveWindow {
                        start: since,
                        ..Default::default()
                    });
                    first = false;
                }
                out.persons.extend(m.persons);
            }
            QueryOutput::NoActivitySince(out)
        }
    })
}

pub mod columnar;
pub mod geojson;
mod grid;
mod import;
mod import_parquet;
mod import_rows;
mod import_source;
mod png;
mod render;
mod status;
#[cfg(test)]
mod tests;

pub use import::*;
#[cfg(test)]
use import_rows::row_err;
pub use import_rows::{Item, RowError};
pub use render::*;
pub use status::*;
