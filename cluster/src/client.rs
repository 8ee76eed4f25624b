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

use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use hourcell_proto::v1;
use hourcell_query::time::{format_time, parse_time};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::cli::{Format, ImportArgs, ImportKind, QueryArgs, QueryKind, ServerArg};

/// Largest gRPC message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How many rejections an import lists at the end.
const SHOW_REJECTIONS: usize = 10;

// ---------------------------------------------------------------- connect

/// `127.0.0.1:7420` → `http://127.0.0.1:7420`; URLs with a scheme are kept.
pub fn normalize_server(server: &str) -> String {
    let s = server.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// A connection that sends the caller's credentials with every request.
pub type Ch = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// The `authorization: Bearer TOKEN` header of every request: the token
/// comes from `HOURCELL_TOKEN`, or the file named by `HOURCELL_TOKEN_FILE`
/// (`hourcell token issue` makes one). Without either, requests carry no
/// credentials, which a `hourcell dev` node accepts as the local user.
#[derive(Clone, Default)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Credentials {
    pub fn bearer(token: &str) -> Result<Self> {
        let v = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow!("the token is not printable ASCII"))?;
        Ok(Credentials(Some(v)))
    }

    pub fn from_env() -> Result<Self> {
        if let Ok(t) = std::env::var("HOURCELL_TOKEN") {
            if !t.trim().is_empty() {
                return Self::bearer(&t);
            }
        }
        if let Ok(f) = std::env::var("HOURCELL_TOKEN_FILE") {
            let t = std::fs::read_to_string(&f)
                .map_err(|e| anyhow!("cannot read HOURCELL_TOKEN_FILE {f}: {e}"))?;
            return Self::bearer(&t);
        }
        Ok(Credentials(None))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connects to a node with the caller's credentials (see [`Credentials`]).
pub async fn channel(server: &str) -> Result<Ch> {
    channel_as(server, Credentials::from_env()?).await
}

/// Connects to a node with the given credentials, with a clear error naming
/// the server if it is not reachable. TLS as `HOURCELL_CA`, `HOURCELL_CERT`
/// and `HOURCELL_KEY` say.
pub async fn channel_as(server: &str, creds: Credentials) -> Result<Ch> {
    channel_with(server, creds, &crate::tls::ClientTls::from_env()).await
}

/// Connects with the given credentials and TLS files.
pub async fn channel_with(
    server: &str,
    creds: Credentials,
    tls: &crate::tls::ClientTls,
) -> Result<Ch> {
    Ok(tonic::service::interceptor::InterceptedService::new(
        plain_channel(server, tls).await?,
        creds,
    ))
}

/// `host:port` → `https://host:port` when TLS is configured, else
/// `http://`; URLs with a scheme are kept.
pub fn server_url(server: &str, tls: bool) -> String {
    let u = normalize_server(server);
    if tls && !server.contains("://") {
        u.replacen("http://", "https://", 1)
    } else {
        u
    }
}

async fn plain_channel(server: &str, tls: &crate::tls::ClientTls) -> Result<Channel> {
    let url = server_url(server, tls.enabled());
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow!("invalid --server {server:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        if !tls.enabled() {
            return Err(anyhow!(
                "{url} is TLS: set HOURCELL_CA to the CA certificate (and HOURCELL_CERT and \
                 HOURCELL_KEY for a client certificate)"
            ));
        }
        endpoint = endpoint.tls_config(tls.config()?)?;
    }
    endpoint.connect().await.map_err(|e| {
        anyhow!(
            "cannot reach hourcell at {url}: is `hourcell dev` running? ({})",
            root_cause(&e)
        )
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A gRPC status as a plain user-facing error: the server's message
/// (which names the field and value for bad input), nothing else.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let msg = if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    match s.code() {
        Code::ResourceExhausted | Code::OutOfRange if msg.contains("message") => {
            anyhow!("{msg} (try a smaller --batch)")
        }
        _ => anyhow!("{msg}"),
    }
}

pub fn query_client(ch: Ch) -> v1::query_client::QueryClient<Ch> {
    v1::query_client::QueryClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn ingest_client(ch: Ch) -> v1::ingest_client::IngestClient<Ch> {
    v1::ingest_client::IngestClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn registry_client(ch: Ch) -> v1::registry_client::RegistryClient<Ch> {
    v1::registry_client::RegistryClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn admin_client(ch: Ch) -> v1::admin_client::AdminClient<Ch> {
    v1::admin_client::AdminClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
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
}

impl<'a> RegionFlags<'a> {
    pub fn of(a: &'a QueryArgs) -> Self {
        RegionFlags {
            rect: a.rect.as_deref(),
            circle: a.circle.as_deref(),
            cells: a.cells.as_deref(),
            addresses: a.addresses.as_deref(),
            area: a.area.as_deref(),
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
        ]
        .into_iter()
        .filter_map(|(n, g)| g.then_some(n))
        .collect()
    }
}

const REGION_HELP: &str = "--rect LAT1,LNG1,LAT2,LNG2, --circle LAT,LNG,METRES, \
--cells T1,T2, --addresses C1,C2 or --area CODE";

/// Parses exactly `names.len()` comma-separated finite numbers.
fn parse_numbers(flag: &str, value: &str, names: &[&str]) -> Result<Vec<f64>> {
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
    }
}

/// A request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryRequest {
    WhoWasAt(v1::WhoWasAtRequest),
    WhereWas(v1::WhereWasRequest),
    Occupancy(v1::OccupancyRequest),
    NoActivitySince(v1::NoActivitySinceRequest),
}

fn flag_time(flag: &'static str, v: &str) -> Result<i64> {
    parse_time(flag, v).map_err(|e| anyhow!("{e}"))
}

fn opt_time(flag: &'static str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|v| flag_time(flag, v)).transpose()
}

/// `--from` (required), `--to` (default `--as-of`, else now), `--as-of`
/// (passed through; absent means the server's now).
fn window(a: &QueryArgs, now: i64) -> Result<v1::Window> {
    let kind = kind_name(a.kind);
    let from = a
        .from
        .as_deref()
        .ok_or_else(|| anyhow!("{kind} needs --from (RFC 3339 or unix seconds)"))?;
    let from = flag_time("--from", from)?;
    let as_of = opt_time("--as-of", a.as_of.as_deref())?;
    let to = opt_time("--to", a.to.as_deref())?.or(as_of).unwrap_or(now);
    Ok(v1::Window { from, to, as_of })
}

/// Fails naming the first flag that was given but does not apply.
fn reject_flags(kind: QueryKind, flags: &[(&str, bool)]) -> Result<()> {
    if let Some((name, _)) = flags.iter().find(|(_, given)| *given) {
        bail!("{name} does not apply to {}", kind_name(kind));
    }
    Ok(())
}

/// `--purpose` and `--case`, which person-level queries need.
fn purpose_flags(a: &QueryArgs) -> Result<(String, String)> {
    match (a.purpose.as_deref(), a.case.as_deref()) {
        (Some(p), Some(c)) if !p.trim().is_empty() && !c.trim().is_empty() => {
            Ok((p.to_string(), c.to_string()))
        }
        _ => Err(anyhow!(
            "{} returns persons, so it needs --purpose TEXT and --case REF (both are written \
             to the audit log before any result is returned)",
            kind_name(a.kind)
        )),
    }
}

/// Turns the command line into a request; `now` is the default `--to`.
pub fn build_request(a: &QueryArgs, now: i64) -> Result<QueryRequest> {
    let flags = RegionFlags::of(a);
    let kind = kind_name(a.kind);
    Ok(match a.kind {
        QueryKind::WhoWasAt | QueryKind::Occupancy => {
            reject_flags(
                a.kind,
                &[
                    ("--person", a.person.is_some()),
                    ("--since", a.since.is_some()),
                    ("--local-rect", a.local_rect.is_some()),
                ],
            )?;
            let region = region_from_flags(&flags)?
                .ok_or_else(|| anyhow!("{kind} needs a region: one of {REGION_HELP}"))?;
            let window = window(a, now)?;
            if a.kind == QueryKind::WhoWasAt {
                let (purpose, case_ref) = purpose_flags(a)?;
                QueryRequest::WhoWasAt(v1::WhoWasAtRequest {
                    purpose,
                    case_ref,
                    max_staleness_ms: None,
                    region: Some(region),
                    window: Some(window),
                })
            } else {
                QueryRequest::Occupancy(v1::OccupancyRequest {
                    max_staleness_ms: None,
                    region: Some(region),
                    window: Some(window),
                })
            }
        }
        QueryKind::WhereWas => {
            let mut bad: Vec<(&str, bool)> = flags.given().into_iter().map(|n| (n, true)).collect();
            bad.push(("--since", a.since.is_some()));
            bad.push(("--local-rect", a.local_rect.is_some()));
            reject_flags(a.kind, &bad)?;
            let person = a
                .person
                .ok_or_else(|| anyhow!("where-was needs --person (a person id)"))?;
            let (purpose, case_ref) = purpose_flags(a)?;
            QueryRequest::WhereWas(v1::WhereWasRequest {
                purpose,
                case_ref,
                max_staleness_ms: None,
                person,
                window: Some(window(a, now)?),
            })
        }
        QueryKind::NoActivitySince => {
            reject_flags(
                a.kind,
                &[
                    ("--from", a.from.is_some()),
                    ("--to", a.to.is_some()),
                    ("--person", a.person.is_some()),
                ],
            )?;
            let since = a.since.as_deref().ok_or_else(|| {
                anyhow!("no-activity-since needs --since (RFC 3339 or unix seconds)")
            })?;
            let since = flag_time("--since", since)?;
            let as_of = opt_time("--as-of", a.as_of.as_deref())?;
            let scope = region_from_flags(&flags)?;
            let local = a
                .local_rect
                .as_deref()
                .map(|v| parse_rect("--local-rect", v))
                .transpose()?
                .map(|r| v1::Region {
                    kind: Some(v1::region::Kind::Rect(r)),
                });
            let (purpose, case_ref) = purpose_flags(a)?;
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
                        from: since,
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

// --------------------------------------------------------------- rendering

#[derive(Serialize)]
struct WhoWasAtJson<'a> {
    from: String,
    to: String,
    persons: &'a [u64],
}

#[derive(Serialize)]
struct HourPlacesJson<'a> {
    hour: String,
    cells: &'a [String],
    addresses: &'a [String],
    sources: &'a [String],
}

#[derive(Serialize)]
struct WhereWasJson<'a> {
    person: u64,
    hours: Vec<HourPlacesJson<'a>>,
}

/// A suppressed count is `null` with `"suppressed": true`.
#[derive(Serialize)]
struct HourCountJson {
    hour: String,
    distinct: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suppressed: bool,
}

#[derive(Serialize)]
struct OccupancyJson {
    from: String,
    to: String,
    distinct: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suppressed: bool,
    hours: Vec<HourCountJson>,
}

/// A count as shown: `<k` when suppressed.
fn count_text(v: u64, suppressed: bool, k: u64) -> String {
    if suppressed {
        format!("<{k}")
    } else {
        v.to_string()
    }
}

#[derive(Serialize)]
struct InactiveJson {
    person: u64,
    last_seen: Option<String>,
}

#[derive(Serialize)]
struct NoActivityJson {
    since: String,
    persons: Vec<InactiveJson>,
}

fn json_string<T: Serialize>(v: &T, pretty: bool) -> Result<String> {
    Ok(if pretty {
        serde_json::to_string_pretty(v)?
    } else {
        serde_json::to_string(v)?
    })
}

/// The JSON document of an answer (see the CLI docs for the shapes); keys
/// in the documented order.
pub fn to_json(out: &QueryOutput, pretty: bool) -> Result<String> {
    match out {
        QueryOutput::WhoWasAt(r) => json_string(
            &WhoWasAtJson {
                from: format_time(r.window.from),
                to: format_time(r.window.to),
                persons: &r.persons,
            },
            pretty,
        ),
        QueryOutput::WhereWas(r) => json_string(
            &WhereWasJson {
                person: r.person,
                hours: r
                    .hours
                    .iter()
                    .map(|h| HourPlacesJson {
                        hour: format_time(h.hour),
                        cells: &h.cells,
                        addresses: &h.addresses,
                        sources: &h.sources,
                    })
                    .collect(),
            },
            pretty,
        ),
        QueryOutput::Occupancy(r) => {
            let w = r.window.unwrap_or_default();
            json_string(
                &OccupancyJson {
                    from: format_time(w.from),
                    to: format_time(w.to),
                    distinct: (!r.distinct_suppressed).then_some(r.distinct),
                    suppressed: r.distinct_suppressed,
                    hours: r
                        .hours
                        .iter()
                        .map(|h| HourCountJson {
                            hour: format_time(h.hour),
                            distinct: (!h.suppressed).then_some(h.distinct),
                            suppressed: h.suppressed,
                        })
                        .collect(),
                },
                pretty,
            )
        }
        QueryOutput::NoActivitySince(r) => json_string(
            &NoActivityJson {
                since: format_time(r.window.from),
                persons: r
                    .persons
                    .iter()
                    .map(|p| InactiveJson {
                        person: p.person,
                        last_seen: p.last_seen.map(format_time),
                    })
                    .collect(),
            },
            pretty,
        ),
    }
}

/// Column headers and rows of an answer (times RFC 3339, lists joined
/// with `sep`).
fn rows(out: &QueryOutput, sep: &str, missing: &str) -> (Vec<&'static str>, Vec<Vec<String>>) {
    match out {
        QueryOutput::WhoWasAt(r) => (
            vec!["person"],
            r.persons.iter().map(|p| vec![p.to_string()]).collect(),
        ),
        QueryOutput::WhereWas(r) => (
            vec!["hour", "cells", "addresses", "sources"],
            r.hours
                .iter()
                .map(|h| {
                    vec![
                        format_time(h.hour),
                        h.cells.join(sep),
                        h.addresses.join(sep),
                        h.sources.join(sep),
                    ]
                })
                .collect(),
        ),
        QueryOutput::Occupancy(r) => (
            vec!["hour", "distinct"],
            r.hours
                .iter()
                .map(|h| {
                    vec![
                        format_time(h.hour),
                        count_text(h.distinct, h.suppressed, r.suppressed_below),
                    ]
                })
                .collect(),
        ),
        QueryOutput::NoActivitySince(r) => (
            vec!["person", "last_seen"],
            r.persons
                .iter()
                .map(|p| {
                    vec![
                        p.person.to_string(),
                        p.last_seen
                            .map(format_time)
                            .unwrap_or_else(|| missing.to_string()),
                    ]
                })
                .collect(),
        ),
    }
}

pub fn to_csv(out: &QueryOutput) -> Result<String> {
    let (header, rows) = rows(out, ";", "");
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    for r in &rows {
        w.write_record(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow!("{e}"))?;
    Ok(String::from_utf8(bytes)?)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Left-aligned columns separated by two spaces; the last column is not
/// padded.
pub fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            if i + 1 < width.len() {
                let pad = width[i].saturating_sub(c.chars().count());
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    s
}

fn window_text(w: &v1::EffectiveWindow) -> String {
    format!("window {} .. {}", format_time(w.from), format_time(w.to))
}

pub fn to_table(out: &QueryOutput) -> String {
    let (header, rows) = rows(out, ",", "-");
    let summary = match out {
        QueryOutput::WhoWasAt(r) => format!(
            "{}, {}",
            plural(r.persons.len() as u64, "person", "persons"),
            window_text(&r.window)
        ),
        QueryOutput::WhereWas(r) => format!(
            "person {}: {} with activity, {}",
            r.person,
            plural(r.hours.len() as u64, "hour", "hours"),
            window_text(&r.window.unwrap_or_default())
        ),
        QueryOutput::Occupancy(r) if r.distinct_suppressed => format!(
            "fewer than {} distinct persons (suppressed) over {}, {}",
            r.suppressed_below,
            plural(r.hours.len() as u64, "hour", "hours"),
            window_text(&r.window.unwrap_or_default())
        ),
        QueryOutput::Occupancy(r) => format!(
            "{} over {}, {}",
            plural(r.distinct, "distinct person", "distinct persons"),
            plural(r.hours.len() as u64, "hour", "hours"),
            window_text(&r.window.unwrap_or_default())
        ),
        QueryOutput::NoActivitySince(r) => format!(
            "{} with no activity since {} (as of {})",
            plural(
                r.persons.len() as u64,
                "registered person",
                "registered persons"
            ),
            format_time(r.window.from),
            format_time(r.window.as_of)
        ),
    };
    if rows.is_empty() {
        format!("{summary}\n")
    } else {
        format!("{}{summary}\n", aligned(&header, &rows))
    }
}

pub fn render(out: &QueryOutput, format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => to_table(out),
        Format::Csv => to_csv(out)?,
        Format::Json => {
            let mut s = to_json(out, true)?;
            s.push('\n');
            s
        }
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

pub async fn run_query(args: QueryArgs) -> Result<()> {
    let req = build_request(&args, hourcell_query::time::now())?;
    let ch = channel(&args.server).await?;
    let out = execute(ch, req).await?;
    print_stdout(&render(&out, args.format)?)
}

// ------------------------------------------------------------------ status

pub fn format_status(s: &v1::StatusResponse) -> String {
    let opt_time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), format_time);
    let mut rows: Vec<(&str, String)> = vec![
        ("version", s.version.clone()),
        ("data_dir", s.data_dir.clone()),
        ("slice_level", s.slice_level.to_string()),
        ("persons", s.persons.to_string()),
        ("addresses", s.addresses.to_string()),
        ("registrations", s.registrations.to_string()),
        ("events_accepted", s.events_accepted.to_string()),
        (
            "postings",
            if s.postings == 0 {
                "not counted (see hourcell bench)".to_string()
            } else {
                s.postings.to_string()
            },
        ),
        (
            "disk_bytes",
            format!("{} ({})", s.disk_bytes, human_bytes(s.disk_bytes)),
        ),
        ("first_hour", opt_time(s.first_hour)),
        ("last_hour", opt_time(s.last_hour)),
    ];
    if let Some(r) = &s.raft {
        rows.push((
            "raft",
            format!(
                "node {} of group {}: {}, term {}, commit {}, applied {}",
                r.node_id,
                r.group,
                if r.is_leader {
                    "leader".to_string()
                } else if r.leader == 0 {
                    "no leader known".to_string()
                } else {
                    format!("follower of node {}", r.leader)
                },
                r.term,
                r.commit,
                r.applied
            ),
        ));
    }
    if !s.shards.is_empty() {
        let me = s.raft.as_ref().map_or(0, |r| r.node_id);
        let leads = s.shards.iter().filter(|x| x.leader == me).count();
        let leaderless = s.shards.iter().filter(|x| x.leader == 0).count();
        rows.push((
            "shards",
            format!(
                "{} cell and {} person shards, shard map version {}; this node leads {leads}, \
                 {leaderless} without a leader (hourcell cluster status lists them)",
                s.shards
                    .iter()
                    .filter(|x| x.shard.starts_with("cells"))
                    .count(),
                s.shards
                    .iter()
                    .filter(|x| x.shard.starts_with("persons"))
                    .count(),
                s.shard_map_version,
            ),
        ));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<16} {v}\n"));
    }
    out
}

/// One row of `hourcell cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterRow {
    pub id: u64,
    pub addr: String,
    /// voter, learner, or removed (known but no longer a member).
    pub member: String,
    /// leader, follower, candidate (no leader known) or unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    /// Entries behind the leader's commit index.
    pub lag: Option<u64>,
}

pub fn cluster_rows(peers: &[v1::RaftPeer], st: &[Option<v1::RaftStatus>]) -> Vec<ClusterRow> {
    let leader_commit = st
        .iter()
        .flatten()
        .filter(|s| s.is_leader)
        .map(|s| s.commit)
        .max()
        .or_else(|| st.iter().flatten().map(|s| s.commit).max());
    // Membership as the leader sees it (else the most advanced replica).
    let view = st
        .iter()
        .flatten()
        .find(|s| s.is_leader)
        .or_else(|| st.iter().flatten().max_by_key(|s| s.applied));
    peers
        .iter()
        .zip(st)
        .map(|(p, s)| ClusterRow {
            id: p.id,
            addr: p.addr.clone(),
            member: match view {
                Some(v) if v.learners.contains(&p.id) => "learner".into(),
                Some(v) if v.voters.contains(&p.id) || v.voters.is_empty() => "voter".into(),
                Some(_) => "removed".into(),
                None => "-".into(),
            },
            role: match s {
                None => "unreachable".into(),
                Some(s) if s.is_leader => "leader".into(),
                Some(s) if s.leader == 0 => "candidate".into(),
                Some(_) => "follower".into(),
            },
            term: s.as_ref().map(|s| s.term),
            commit: s.as_ref().map(|s| s.commit),
            applied: s.as_ref().map(|s| s.applied),
            lag: s
                .as_ref()
                .zip(leader_commit)
                .map(|(s, c)| c.saturating_sub(s.applied)),
        })
        .collect()
}

pub fn render_cluster(rows: &[ClusterRow], format: Format) -> Result<String> {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.addr.clone(),
                r.member.clone(),
                r.role.clone(),
                opt(r.term),
                opt(r.commit),
                opt(r.applied),
                opt(r.lag),
            ]
        })
        .collect();
    Ok(match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "nodes": rows }))?
        ),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "id", "addr", "member", "role", "term", "commit", "applied", "lag",
            ])?;
            for c in &cells {
                w.write_record(c)?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => {
            let healthy = rows.iter().filter(|r| r.role != "unreachable").count();
            format!(
                "{}{healthy} of {} nodes reachable; {}\n",
                aligned(
                    &["node", "addr", "member", "role", "term", "commit", "applied", "lag"],
                    &cells
                ),
                rows.len(),
                match rows.iter().find(|r| r.role == "leader") {
                    Some(l) => format!("node {} leads", l.id),
                    None => "no leader".to_string(),
                }
            )
        }
    })
}

async fn raft_status_of(server: &str) -> Option<(v1::RaftStatus, Vec<v1::ShardStatus>)> {
    let ch = tokio::time::timeout(Duration::from_secs(2), channel(server))
        .await
        .ok()?
        .ok()?;
    let r = v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .ok()?
        .into_inner();
    Some((r.raft?, r.shards))
}

/// One data shard of a sharded cluster, across the nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardRow {
    pub shard: String,
    pub group: u64,
    pub leader: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The nodes the shard map places the shard on (the voters once a
    /// move has finished).
    pub replicas: Vec<u64>,
    /// Entries the furthest-behind reachable replica has yet to apply.
    pub max_lag: u64,
}

/// One row per data shard held by any reachable node (each node reports
/// the shards it holds a replica of).
pub fn shard_rows(st: &[Option<Vec<v1::ShardStatus>>]) -> Vec<ShardRow> {
    let mut rows: Vec<ShardRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let all: Vec<&v1::ShardStatus> = st
        .iter()
        .flatten()
        .flat_map(|v| v.iter())
        .filter(|x| seen.insert(x.group))
        .collect();
    for sh in all {
        let views: Vec<&v1::ShardStatus> = st
            .iter()
            .flatten()
            .filter_map(|v| v.iter().find(|x| x.group == sh.group))
            .collect();
        let commit = views.iter().map(|v| v.commit).max().unwrap_or(0);
        let leader = views
            .iter()
            .filter(|v| v.leader != 0)
            .max_by_key(|v| v.term)
            .map_or(0, |v| v.leader);
        let view = views
            .iter()
            .max_by_key(|v| (v.term, v.applied))
            .copied()
            .unwrap_or(sh);
        rows.push(ShardRow {
            shard: sh.shard.clone(),
            group: sh.group,
            leader,
            voters: view.voters.clone(),
            learners: view.learners.clone(),
            // From the newest shard map any node reported.
            replicas: views
                .iter()
                .max_by_key(|v| v.map_version)
                .map_or_else(Vec::new, |v| v.replicas.clone()),
            max_lag: views
                .iter()
                .map(|v| commit.saturating_sub(v.applied))
                .max()
                .unwrap_or(0),
        });
    }
    rows.sort_by_key(|r| r.group);
    rows
}

pub fn render_shards(rows: &[ShardRow], format: Format) -> Result<String> {
    if rows.is_empty() {
        return Ok(String::new());
    }
    let list = |v: &[u64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.shard.clone(),
                r.group.to_string(),
                if r.leader == 0 {
                    "none".into()
                } else {
                    r.leader.to_string()
                },
                list(&r.voters),
                list(&r.learners),
                list(&r.replicas),
                r.max_lag.to_string(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "shards": rows }))?
        ),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "shard", "group", "leader", "voters", "learners", "placed", "max_lag",
            ])?;
            for c in &cells {
                w.write_record(c)?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => format!(
            "\n{}{} data shards; {} without a leader\n",
            aligned(
                &["shard", "group", "leader", "voters", "learners", "placed", "max lag"],
                &cells
            ),
            rows.len(),
            rows.iter().filter(|r| r.leader == 0).count()
        ),
    })
}

pub async fn run_cluster(cmd: crate::cli::ClusterCommand) -> Result<()> {
    match cmd {
        crate::cli::ClusterCommand::Status(a) => {
            let (first, _) = raft_status_of(&a.server).await.ok_or_else(|| {
                anyhow!(
                    "{} is unreachable or is a single node without [cluster]",
                    normalize_server(&a.server)
                )
            })?;
            let mut st = Vec::new();
            let mut shards = Vec::new();
            for p in &first.peers {
                let r = raft_status_of(&p.addr).await;
                shards.push(r.as_ref().map(|r| r.1.clone()));
                st.push(r.map(|r| r.0));
            }
            let rows = cluster_rows(&first.peers, &st);
            let srows = shard_rows(&shards);
            let out = if matches!(a.format, Format::Json) && !srows.is_empty() {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "nodes": rows, "shards": srows })
                    )?
                )
            } else {
                render_cluster(&rows, a.format)? + &render_shards(&srows, a.format)?
            };
            print_stdout(&out)
        }
        crate::cli::ClusterCommand::AddNode(a) => {
            let r = admin_client(channel(&a.server).await?)
                .add_node(v1::AddNodeRequest {
                    id: a.id,
                    addr: a.addr.clone(),
                    replace: a.replace,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&format!(
                "node {} added as a learner at {}; it becomes a voter once caught up\n{}",
                a.id,
                a.addr,
                membership_line(&r)
            ))
        }
        crate::cli::ClusterCommand::RemoveNode(a) => {
            let r = admin_client(channel(&a.server).await?)
                .remove_node(v1::RemoveNodeRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&format!("node {} removed\n{}", a.id, membership_line(&r)))
        }
    }
}

fn membership_line(r: &v1::MembershipResponse) -> String {
    let list = |v: &[u64]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "voters: {}; learners: {}\n",
        list(&r.voters),
        list(&r.learners)
    )
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn run_status(args: ServerArg) -> Result<()> {
    let ch = channel(&args.server).await?;
    let st = admin_client(ch)
        .status(v1::StatusRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    print_stdout(&format!(
        "{:<16} {}\n{}",
        "server",
        normalize_server(&args.server),
        format_status(&st)
    ))
}

// ------------------------------------------------------------------ import

/// A row that could not be parsed locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub field: String,
    pub reason: String,
}

fn row_err(field: &str, reason: impl Into<String>) -> RowError {
    RowError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Column positions, by header name.
#[derive(Debug, Clone)]
pub struct Columns {
    names: Vec<String>,
}

impl Columns {
    /// Checks that the header holds every required column of `kind`.
    pub fn new(kind: ImportKind, header: &csv::StringRecord) -> Result<Self> {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        let missing: Vec<&str> = required_columns(kind)
            .iter()
            .copied()
            .filter(|c| !names.iter().any(|n| n == c))
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing column(s) {} in the header (expected {})",
                missing.join(", "),
                all_columns(kind)
            );
        }
        Ok(Columns { names })
    }

    /// The trimmed value of column `name` (empty if absent).
    fn get<'r>(&self, rec: &'r csv::StringRecord, name: &str) -> &'r str {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| rec.get(i))
            .map_or("", str::trim)
    }
}

fn required_columns(kind: ImportKind) -> &'static [&'static str] {
    match kind {
        ImportKind::Events => &["person", "time"],
        ImportKind::Addresses => &["code", "lat", "lng", "kind"],
        ImportKind::Registry => &["person", "address", "kind", "valid_from"],
    }
}

fn all_columns(kind: ImportKind) -> &'static str {
    match kind {
        ImportKind::Events => "person,time,lat,lng,address,source",
        ImportKind::Addresses => "code,lat,lng,kind,area,label",
        ImportKind::Registry => "person,address,kind,valid_from,valid_until",
    }
}

fn need<'r>(cols: &Columns, rec: &'r csv::StringRecord, name: &str) -> Result<&'r str, RowError> {
    let v = cols.get(rec, name);
    if v.is_empty() {
        Err(row_err(name, "missing"))
    } else {
        Ok(v)
    }
}

fn person_field(cols: &Columns, rec: &csv::StringRecord) -> Result<u64, RowError> {
    let v = need(cols, rec, "person")?;
    v.parse::<u64>()
        .map_err(|_| row_err("person", format!("{v:?} is not an unsigned integer")))
}

fn float_field(name: &str, v: &str) -> Result<f64, RowError> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(row_err(name, format!("{v:?} is not a number"))),
    }
}

fn time_field(name: &'static str, v: &str) -> Result<i64, RowError> {
    parse_time(name, v).map_err(|_| row_err(name, format!("{v:?} is not RFC 3339 or unix seconds")))
}

/// One parsed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(v1::Event),
    Address(v1::Address),
    Registration(v1::Registration),
}

pub fn parse_row(
    kind: ImportKind,
    cols: &Columns,
    rec: &csv::StringRecord,
) -> Result<Item, RowError> {
    match kind {
        ImportKind::Events => {
            let person = person_field(cols, rec)?;
            let t = need(cols, rec, "time")?;
            // Parsed here with the node's own parser, so the node does not
            // parse 9 million timestamps on its one apply path; a time it
            // cannot parse goes as text and the node rejects it with its
            // usual message.
            let time = match parse_time("time", t) {
                Ok(s) => v1::event::Time::UnixSeconds(s),
                Err(_) => v1::event::Time::Rfc3339(t.to_string()),
            };
            let (lat, lng) = (cols.get(rec, "lat"), cols.get(rec, "lng"));
            let (lat, lng) = match (lat.is_empty(), lng.is_empty()) {
                (true, true) => (None, None),
                (false, false) => (
                    Some(float_field("lat", lat)?),
                    Some(float_field("lng", lng)?),
                ),
                (true, false) => return Err(row_err("lat", "missing while lng is given")),
                (false, true) => return Err(row_err("lng", "missing while lat is given")),
            };
            Ok(Item::Event(v1::Event {
                person,
                time: Some(time),
                lat,
                lng,
                address: cols.get(rec, "address").to_string(),
                source: cols.get(rec, "source").to_string(),
            }))
        }
        ImportKind::Addresses => Ok(Item::Address(v1::Address {
            code: need(cols, rec, "code")?.to_string(),
            lat: float_field("lat", need(cols, rec, "lat")?)?,
            lng: float_field("lng", need(cols, rec, "lng")?)?,
            kind: need(cols, rec, "kind")?.to_string(),
            area: cols.get(rec, "area").to_string(),
            label: cols.get(rec, "label").to_string(),
        })),
        ImportKind::Registry => {
            let person = person_field(cols, rec)?;
            let valid_until = match cols.get(rec, "valid_until") {
                "" => None,
                v => Some(time_field("valid_until", v)?),
            };
            Ok(Item::Registration(v1::Registration {
                person,
                address: need(cols, rec, "address")?.to_string(),
                kind: need(cols, rec, "kind")?.to_string(),
                valid_from: time_field("valid_from", need(cols, rec, "valid_from")?)?,
                valid_until,
            }))
        }
    }
}

/// One rejected row: file line (1-based, the header is line 1), field and
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: Option<u64>,
    pub field: String,
    pub reason: String,
}

/// Running totals of an import; keeps only the first rejections by line.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub accepted: u64,
    pub rejected: u64,
    first: Vec<RejectedRow>,
}

impl ImportReport {
    pub fn reject(
        &mut self,
        line: Option<u64>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.rejected += 1;
        self.first.push(RejectedRow {
            line,
            field: field.into(),
            reason: reason.into(),
        });
        if self.first.len() >= 4 * SHOW_REJECTIONS {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.first
            .sort_by_key(|r| (r.line.is_none(), r.line.unwrap_or(0)));
        self.first.truncate(SHOW_REJECTIONS);
    }

    /// Server rejections of a batch: `index` into the batch → file line.
    pub fn server_rejections(&mut self, lines: &[u64], rejected: Vec<v1::Rejection>) {
        for r in rejected {
            let line = lines.get(r.index as usize).copied();
            self.reject(line, r.field, r.reason);
        }
    }

    /// The first rejections by line.
    pub fn first(&mut self) -> &[RejectedRow] {
        self.trim();
        &self.first
    }

    pub fn summary(&mut self) -> String {
        let mut s = format!("accepted {}, rejected {}\n", self.accepted, self.rejected);
        let total = self.rejected;
        let shown = self.first().to_vec();
        for r in &shown {
            let line = r.line.map_or_else(|| "?".to_string(), |l| l.to_string());
            s.push_str(&format!("  line {line}: {}: {}\n", r.field, r.reason));
        }
        if total > shown.len() as u64 {
            s.push_str(&format!("  ... and {} more\n", total - shown.len() as u64));
        }
        s
    }
}

/// The rows of one request and their file lines.
struct Batch {
    lines: Vec<u64>,
    items: Vec<Item>,
}

async fn send_batch(
    ch: &Ch,
    kind: ImportKind,
    batch: Batch,
) -> Result<(u64, Vec<u64>, Vec<v1::Rejection>)> {
    let Batch { lines, items } = batch;
    let resp = match kind {
        ImportKind::Events => {
            let events = items
                .into_iter()
                .filter_map(|i| match i {
                    Item::Event(e) => Some(e),
                    _ => None,
                })
                .collect();
            let r = ingest_client(ch.clone())
                .ingest(v1::IngestRequest { events })
                .await
                .map_err(status_error)?
                .into_inner();
            (r.accepted, r.rejected)
        }
        ImportKind::Addresses => {
            let addresses = items
                .into_iter()
                .filter_map(|i| match i {
                    Item::Address(a) => Some(a),
                    _ => None,
                })
                .collect();
            let r = registry_client(ch.clone())
                .put_addresses(v1::PutAddressesRequest { addresses })
                .await
                .map_err(status_error)?
                .into_inner();
            (r.accepted, r.rejected)
        }
        ImportKind::Registry => {
            let registrations = items
                .into_iter()
                .filter_map(|i| match i {
                    Item::Registration(r) => Some(r),
                    _ => None,
                })
                .collect();
            let r = registry_client(ch.clone())
                .put_registrations(v1::PutRegistrationsRequest { registrations })
                .await
                .map_err(status_error)?
                .into_inner();
            (r.accepted, r.rejected)
        }
    };
    Ok((resp.0, lines, resp.1))
}

fn import_bar(bytes: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// What the CSV reader hands to the sender: a full batch (with the byte
/// offset after it, for the progress bar) or a row it could not parse.
enum Parsed {
    Batch(Batch, u64),
    Rejected(Option<u64>, String, String),
}

/// Reads and parses the CSV on a thread of its own and hands full batches
/// to `tx`, so that parsing the next batch overlaps the sending of the
/// previous ones. Stops early (without an error) when the receiver is gone.
fn read_batches(
    mut rdr: csv::Reader<BufReader<File>>,
    kind: ImportKind,
    cols: Columns,
    batch_size: usize,
    tx: tokio::sync::mpsc::Sender<Parsed>,
) -> Result<()> {
    let new_batch = || Batch {
        lines: Vec::with_capacity(batch_size),
        items: Vec::with_capacity(batch_size),
    };
    let mut batch = new_batch();
    let mut rec = csv::StringRecord::new();
    let mut last_line = 1u64;
    loop {
        let more = match rdr.read_record(&mut rec) {
            Ok(false) => false,
            Ok(true) => {
                let line = rec.position().map_or(last_line + 1, |p| p.line());
                last_line = line;
                match parse_row(kind, &cols, &rec) {
                    Ok(item) => {
                        batch.lines.push(line);
                        batch.items.push(item);
                    }
                    Err(e) => {
                        if tx
                            .blocking_send(Parsed::Rejected(Some(line), e.field, e.reason))
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                }
                true
            }
            Err(e) => {
                let line = e.position().map(|p| p.line());
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(anyhow!("{e}"));
                }
                if let Some(l) = line {
                    last_line = l;
                }
                if tx
                    .blocking_send(Parsed::Rejected(line, "row".into(), e.to_string()))
                    .is_err()
                {
                    return Ok(());
                }
                true
            }
        };
        if batch.items.len() >= batch_size || (!more && !batch.items.is_empty()) {
            let full = std::mem::replace(&mut batch, new_batch());
            if tx
                .blocking_send(Parsed::Batch(full, rdr.position().byte()))
                .is_err()
            {
                return Ok(());
            }
        }
        if !more {
            return Ok(());
        }
    }
}

/// Requests an import keeps in flight. Events may be sent out of order:
/// ingest is a set union per slice, so the stored data and every answer are
/// the same in any order, and each batch is still synced before it is
/// acknowledged. Addresses and registrations go one batch at a time, in
/// file order, so that a code or person listed twice keeps its last row.
fn in_flight(kind: ImportKind, asked: usize) -> usize {
    match kind {
        ImportKind::Events => asked.max(1),
        ImportKind::Addresses | ImportKind::Registry => 1,
    }
}

pub async fn run_import(args: ImportArgs) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt as _};

    let path: &Path = &args.file;
    let shown = path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let header = rdr
        .headers()
        .with_context(|| format!("cannot read the header row of {shown}"))?
        .clone();
    let cols = Columns::new(args.kind, &header).with_context(|| shown.clone())?;
    let ch = channel(&args.server).await?;
    let batch_size = args.batch.max(1);
    let window = in_flight(args.kind, args.in_flight);

    let bar = import_bar(size);
    let mut report = ImportReport::default();
    // One parsed batch waits beside those in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel(window + 1);
    let kind = args.kind;
    let reader = tokio::task::spawn_blocking(move || read_batches(rdr, kind, cols, batch_size, tx));
    let mut sending = FuturesUnordered::new();
    let mut eof = false;
    loop {
        // Take parsed batches while the window has room, and collect
        // answers meanwhile; both are polled, so a slow reader never holds
        // up the requests already in flight.
        let room = !eof && sending.len() < window;
        tokio::select! {
            msg = rx.recv(), if room => match msg {
                Some(Parsed::Batch(batch, pos)) => {
                    let first_line = batch.lines.first().copied().unwrap_or(0);
                    let ch = &ch;
                    sending.push(async move {
                        (send_batch(ch, kind, batch).await, first_line, pos)
                    });
                }
                Some(Parsed::Rejected(line, field, reason)) => report.reject(line, field, reason),
                None => eof = true,
            },
            Some((res, first_line, pos)) = sending.next(), if !sending.is_empty() => {
                match res {
                    Ok((accepted, lines, rejected)) => {
                        report.accepted += accepted;
                        report.server_rejections(&lines, rejected);
                    }
                    Err(e) => {
                        bar.abandon();
                        eprint!("{}", report.summary());
                        let others = if window > 1 {
                            " (batches sent beside it may have been stored; importing the file again is safe)"
                        } else {
                            ""
                        };
                        return Err(e.context(format!(
                            "import of {shown} stopped at the batch starting at line {first_line}{others}"
                        )));
                    }
                }
                bar.set_position(pos);
                bar.set_message(format!(
                    "accepted {}, rejected {}",
                    report.accepted, report.rejected
                ));
            }
            else => break,
        }
    }
    drop(rx);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            bar.abandon();
            eprint!("{}", report.summary());
            return Err(anyhow!("reading {shown}: {e}"));
        }
        Err(e) => return Err(anyhow!("the CSV reader failed: {e}")),
    }
    bar.finish_and_clear();
    print_stdout(&format!("{shown}: {}", report.summary()))
}

// ------------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: QueryKind) -> QueryArgs {
        QueryArgs {
            kind,
            rect: None,
            circle: None,
            cells: None,
            addresses: None,
            area: None,
            person: None,
            from: None,
            to: None,
            since: None,
            as_of: None,
            local_rect: None,
            purpose: Some("generated test".into()),
            case: Some("T-1".into()),
            format: Format::Table,
            server: crate::cli::DEFAULT_SERVER.to_string(),
        }
    }

    fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn cluster_status_shows_roles_and_lag() {
        let peers: Vec<v1::RaftPeer> = (1..=3)
            .map(|id| v1::RaftPeer {
                id,
                addr: format!("127.0.0.1:74{id:02}"),
            })
            .collect();
        let st = |leader: u64, is_leader: bool, commit: u64, applied: u64| {
            Some(v1::RaftStatus {
                leader,
                is_leader,
                term: 4,
                commit,
                applied,
                ..Default::default()
            })
        };
        let rows = cluster_rows(&peers, &[st(2, false, 90, 80), st(2, true, 100, 100), None]);
        assert_eq!(
            rows.iter()
                .map(|r| (r.role.as_str(), r.lag))
                .collect::<Vec<_>>(),
            vec![
                ("follower", Some(20)),
                ("leader", Some(0)),
                ("unreachable", None)
            ]
        );
        let t = render_cluster(&rows, Format::Table).unwrap();
        assert!(t.contains("2 of 3 nodes reachable; node 2 leads"), "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render_cluster(&rows, Format::Json).unwrap()).unwrap();
        assert_eq!(j["nodes"][0]["lag"], 20);
    }

    #[test]
    fn servers_get_a_scheme() {
        assert_eq!(normalize_server("127.0.0.1:7420"), "http://127.0.0.1:7420");
        assert_eq!(normalize_server("http://h:1/"), "http://h:1");
        assert_eq!(normalize_server("https://h:1"), "https://h:1");
    }

    #[test]
    fn rect_orders_latitudes_and_keeps_longitudes() {
        let r = parse_rect("--rect", "30.3, 120.2,30.1,120.1").unwrap();
        assert_eq!(
            r,
            v1::Rect {
                lat_lo: 30.1,
                lng_lo: 120.2,
                lat_hi: 30.3,
                lng_hi: 120.1
            }
        );
        let e = err(parse_rect("--rect", "1,2,3"));
        assert!(e.contains("--rect") && e.contains("\"1,2,3\""), "{e}");
        let e = err(parse_rect("--rect", "1,2,x,4"));
        assert!(
            e.contains("--rect") && e.contains("LAT2") && e.contains("\"x\""),
            "{e}"
        );
        assert!(parse_rect("--rect", "1,2,nan,4").is_err());
    }

    #[test]
    fn circle_and_lists_parse() {
        let c = parse_circle("--circle", "30.27,120.15,1000").unwrap();
        assert_eq!((c.lat, c.lng, c.radius_m), (30.27, 120.15, 1000.0));
        let e = err(parse_circle("--circle", "30.27,120.15,1km"));
        assert!(
            e.contains("--circle") && e.contains("METRES") && e.contains("1km"),
            "{e}"
        );
        assert_eq!(parse_list("--cells", " a, b,,").unwrap(), vec!["a", "b"]);
        assert!(err(parse_list("--addresses", " , ")).contains("--addresses"));
    }

    #[test]
    fn exactly_one_region_flag() {
        use v1::region::Kind;
        assert_eq!(region_from_flags(&RegionFlags::default()).unwrap(), None);
        let f = RegionFlags {
            area: Some(" A017 "),
            ..Default::default()
        };
        assert_eq!(
            region_from_flags(&f).unwrap().unwrap().kind,
            Some(Kind::Area("A017".into()))
        );
        let f = RegionFlags {
            cells: Some("89c25,89c27"),
            ..Default::default()
        };
        assert_eq!(
            region_from_flags(&f).unwrap().unwrap().kind,
            Some(Kind::Cells(v1::CellList {
                tokens: vec!["89c25".into(), "89c27".into()]
            }))
        );
        let f = RegionFlags {
            rect: Some("1,2,3,4"),
            area: Some("A1"),
            ..Default::default()
        };
        let e = err(region_from_flags(&f));
        assert!(e.contains("--rect") && e.contains("--area"), "{e}");
    }

    #[test]
    fn who_was_at_request() {
        let mut a = args(QueryKind::WhoWasAt);
        let e = err(build_request(&a, 100));
        assert!(e.contains("region"), "{e}");
        a.circle = Some("30,120,500".into());
        let e = err(build_request(&a, 100));
        assert!(e.contains("--from"), "{e}");
        a.from = Some("2026-11-01T00:00:00Z".into());
        let r = build_request(&a, 1_793_600_000).unwrap();
        let QueryRequest::WhoWasAt(r) = r else {
            panic!("not who-was-at")
        };
        assert_eq!(
            r.window,
            Some(v1::Window {
                from: 1_793_491_200,
                to: 1_793_600_000,
                as_of: None
            })
        );
        // --to defaults to --as-of.
        a.as_of = Some("1793500000".into());
        let QueryRequest::WhoWasAt(r) = build_request(&a, 5).unwrap() else {
            panic!()
        };
        assert_eq!(
            r.window,
            Some(v1::Window {
                from: 1_793_491_200,
                to: 1_793_500_000,
                as_of: Some(1_793_500_000)
            })
        );
        a.to = Some("yesterday".into());
        let e = err(build_request(&a, 5));
        assert!(e.contains("--to") && e.contains("yesterday"), "{e}");
        a.to = None;
        a.person = Some(3);
        assert!(err(build_request(&a, 5)).contains("--person"));
    }

    #[test]
    fn where_was_and_no_activity_requests() {
        let mut a = args(QueryKind::WhereWas);
        a.from = Some("0".into());
        assert!(err(build_request(&a, 10)).contains("--person"));
        a.person = Some(42);
        let QueryRequest::WhereWas(r) = build_request(&a, 10).unwrap() else {
            panic!()
        };
        assert_eq!(r.person, 42);
        a.area = Some("A1".into());
        assert!(err(build_request(&a, 10)).contains("--area"));

        let mut a = args(QueryKind::NoActivitySince);
        assert!(err(build_request(&a, 10)).contains("--since"));
        a.since = Some("2026-11-01T00:00:00Z".into());
        a.local_rect = Some("30.3,120.1,30.2,120.2".into());
        a.addresses = Some("H1,H2".into());
        let QueryRequest::NoActivitySince(r) = build_request(&a, 10).unwrap() else {
            panic!()
        };
        assert_eq!(r.since, 1_793_491_200);
        assert_eq!(r.as_of, None);
        assert!(matches!(
            r.scope.and_then(|s| s.kind),
            Some(v1::region::Kind::Addresses(_))
        ));
        let Some(v1::region::Kind::Rect(l)) = r.local.and_then(|s| s.kind) else {
            panic!()
        };
        assert_eq!((l.lat_lo, l.lat_hi), (30.2, 30.3));
        a.from = Some("0".into());
        assert!(err(build_request(&a, 10)).contains("--from"));
    }

    fn ew(from: i64, to: i64) -> v1::EffectiveWindow {
        v1::EffectiveWindow {
            from,
            to,
            as_of: to,
        }
    }

    #[test]
    fn json_shapes() {
        let out = QueryOutput::WhoWasAt(WhoWasAtResult {
            window: ew(1_793_491_200, 1_793_577_600),
            persons: vec![3, 18_000_000_000_000_000_000],
        });
        assert_eq!(
            to_json(&out, false).unwrap(),
            r#"{"from":"2026-11-01T00:00:00Z","to":"2026-11-02T00:00:00Z","persons":[3,18000000000000000000]}"#
        );
        let out = QueryOutput::WhereWas(v1::WhereWasResponse {
            staleness_ms: 0,
            window: Some(ew(0, 7200)),
            person: 9,
            hours: vec![v1::HourPlaces {
                hour: 3600,
                cells: vec!["c1".into()],
                addresses: vec![],
                sources: vec!["utility".into(), "access".into()],
            }],
        });
        assert_eq!(
            to_json(&out, false).unwrap(),
            r#"{"person":9,"hours":[{"hour":"1970-01-01T01:00:00Z","cells":["c1"],"addresses":[],"sources":["utility","access"]}]}"#
        );
        let out = QueryOutput::Occupancy(v1::OccupancyResponse {
            staleness_ms: 0,
            window: Some(ew(0, 7200)),
            distinct: 6,
            distinct_suppressed: false,
            suppressed_below: 5,
            hours: vec![
                v1::HourCount {
                    hour: 0,
                    distinct: 6,
                    suppressed: false,
                },
                v1::HourCount {
                    hour: 3600,
                    distinct: 0,
                    suppressed: true,
                },
            ],
        });
        assert_eq!(
            to_json(&out, false).unwrap(),
            r#"{"from":"1970-01-01T00:00:00Z","to":"1970-01-01T02:00:00Z","distinct":6,"hours":[{"hour":"1970-01-01T00:00:00Z","distinct":6},{"hour":"1970-01-01T01:00:00Z","distinct":null,"suppressed":true}]}"#
        );
        let csv = render(&out, Format::Csv).unwrap();
        assert!(csv.contains("1970-01-01T01:00:00Z,<5"), "{csv}");
        let out = QueryOutput::NoActivitySince(NoActivityResult {
            window: ew(7200, 10800),
            persons: vec![
                v1::InactivePerson {
                    person: 1,
                    last_seen: Some(3600),
                },
                v1::InactivePerson {
                    person: 2,
                    last_seen: None,
                },
            ],
        });
        assert_eq!(
            to_json(&out, false).unwrap(),
            r#"{"since":"1970-01-01T02:00:00Z","persons":[{"person":1,"last_seen":"1970-01-01T01:00:00Z"},{"person":2,"last_seen":null}]}"#
        );
        assert_eq!(
            to_csv(&out).unwrap(),
            "person,last_seen\n1,1970-01-01T01:00:00Z\n2,\n"
        );
        let t = to_table(&out);
        assert!(t.contains("\n2       -\n"), "{t}");
        assert!(t.ends_with("2 registered persons with no activity since 1970-01-01T02:00:00Z (as of 1970-01-01T03:00:00Z)\n"), "{t}");
    }

    #[test]
    fn csv_and_table_outputs() {
        let out = QueryOutput::WhereWas(v1::WhereWasResponse {
            staleness_ms: 0,
            window: Some(ew(0, 7200)),
            person: 9,
            hours: vec![v1::HourPlaces {
                hour: 0,
                cells: vec!["c1".into(), "c2".into()],
                addresses: vec!["H1".into()],
                sources: vec!["utility".into()],
            }],
        });
        assert_eq!(
            to_csv(&out).unwrap(),
            "hour,cells,addresses,sources\n1970-01-01T00:00:00Z,c1;c2,H1,utility\n"
        );
        let out = QueryOutput::WhoWasAt(WhoWasAtResult {
            window: ew(1_793_491_200, 1_793_577_600),
            persons: vec![7, 12345],
        });
        assert_eq!(to_csv(&out).unwrap(), "person\n7\n12345\n");
        assert_eq!(
            to_table(&out),
            "person\n7\n12345\n2 persons, window 2026-11-01T00:00:00Z .. 2026-11-02T00:00:00Z\n"
        );
        assert_eq!(
            aligned(&["hour", "distinct"], &[vec!["a".into(), "1".into()]]),
            "hour  distinct\na     1\n"
        );
    }

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn event_rows_parse() {
        let cols = Columns::new(
            ImportKind::Events,
            &record(&["person", "time", "lat", "lng", "address", "source"]),
        )
        .unwrap();
        let r = parse_row(
            ImportKind::Events,
            &cols,
            &record(&["5", "1700000000", "", "", "H1", "utility"]),
        )
        .unwrap();
        assert_eq!(
            r,
            Item::Event(v1::Event {
                person: 5,
                time: Some(v1::event::Time::UnixSeconds(1_700_000_000)),
                lat: None,
                lng: None,
                address: "H1".into(),
                source: "utility".into()
            })
        );
        let Item::Event(e) = parse_row(
            ImportKind::Events,
            &cols,
            &record(&["5", "2026-11-01T00:00:00Z", "30.1", "120.2", "", "access"]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.time, Some(v1::event::Time::UnixSeconds(1_793_491_200)));
        let Item::Event(e) = parse_row(
            ImportKind::Events,
            &cols,
            &record(&["5", "yesterday", "30.1", "120.2", "", "access"]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.time, Some(v1::event::Time::Rfc3339("yesterday".into())));
        assert_eq!((e.lat, e.lng), (Some(30.1), Some(120.2)));
        let bad = parse_row(
            ImportKind::Events,
            &cols,
            &record(&["x", "1", "", "", "H1", "u"]),
        );
        assert_eq!(bad.unwrap_err().field, "person");
        let bad = parse_row(
            ImportKind::Events,
            &cols,
            &record(&["1", "1", "30", "", "", "u"]),
        );
        assert_eq!(bad.unwrap_err().field, "lng");
        // A short row (flexible reader) misses the time.
        let bad = parse_row(ImportKind::Events, &cols, &record(&["1"]));
        assert_eq!(bad.unwrap_err(), row_err("time", "missing"));
        assert!(Columns::new(ImportKind::Events, &record(&["person", "lat"])).is_err());
    }

    #[test]
    fn registry_and_address_rows_parse() {
        let cols = Columns::new(
            ImportKind::Registry,
            &record(&["person", "address", "kind", "valid_from", "valid_until"]),
        )
        .unwrap();
        let r = parse_row(
            ImportKind::Registry,
            &cols,
            &record(&["7", "H1", "temporary", "2026-11-01T00:00:00Z", "1800000000"]),
        )
        .unwrap();
        assert_eq!(
            r,
            Item::Registration(v1::Registration {
                person: 7,
                address: "H1".into(),
                kind: "temporary".into(),
                valid_from: 1_793_491_200,
                valid_until: Some(1_800_000_000)
            })
        );
        let bad = parse_row(
            ImportKind::Registry,
            &cols,
            &record(&["7", "H1", "permanent", "soon", ""]),
        );
        assert_eq!(bad.unwrap_err().field, "valid_from");

        let cols = Columns::new(
            ImportKind::Addresses,
            &record(&["code", "lat", "lng", "kind", "area", "label"]),
        )
        .unwrap();
        let Item::Address(a) = parse_row(
            ImportKind::Addresses,
            &cols,
            &record(&["H1", "30.5", "120.5", "standard", "A001", "home 1"]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.code.as_str(), a.lat, a.area.as_str()),
            ("H1", 30.5, "A001")
        );
    }

    #[test]
    fn rejections_map_to_lines_and_keep_the_first() {
        let mut rep = ImportReport {
            accepted: 5,
            ..Default::default()
        };
        for l in (100..150).rev() {
            rep.reject(Some(l), "time", "bad");
        }
        rep.server_rejections(
            &[2, 3, 5],
            vec![v1::Rejection {
                index: 2,
                field: "lat".into(),
                reason: "out of range".into(),
            }],
        );
        let first = rep.first().to_vec();
        assert_eq!(first.len(), SHOW_REJECTIONS);
        assert_eq!(first[0].line, Some(5));
        assert_eq!(first[1].line, Some(100));
        let s = rep.summary();
        assert!(
            s.starts_with("accepted 5, rejected 51\n  line 5: lat: out of range\n"),
            "{s}"
        );
        assert!(s.contains("... and 41 more"), "{s}");
    }

    #[test]
    fn status_lines() {
        let s = format_status(&v1::StatusResponse {
            version: "0.1.0".into(),
            persons: 3,
            disk_bytes: 2048,
            first_hour: Some(1_793_491_200),
            ..Default::default()
        });
        assert!(s.contains("persons          3\n"), "{s}");
        assert!(s.contains("disk_bytes       2048 (2.0 KiB)\n"), "{s}");
        assert!(s.contains("first_hour       2026-11-01T00:00:00Z\n"), "{s}");
        assert!(s.contains("last_hour        -\n"), "{s}");
    }
}
