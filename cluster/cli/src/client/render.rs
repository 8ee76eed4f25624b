//! Query answers as a table, CSV or JSON.
//!
//! In JSON, person ids are strings, as in the proto3 JSON mapping of a
//! 64-bit integer: JavaScript (and jq before 1.7) parse numbers as
//! doubles and silently round ids past 2^53.

use super::*;

/// A person id as a JSON string.
fn id_string<S: serde::Serializer>(id: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Person ids as JSON strings.
fn id_strings<S: serde::Serializer>(ids: &&[u64], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(u64::to_string))
}

#[derive(Serialize)]
pub(crate) struct WhoWasAtJson<'a> {
    from: String,
    to: String,
    #[serde(serialize_with = "id_strings")]
    persons: &'a [u64],
}

#[derive(Serialize)]
pub(crate) struct HourPlacesJson<'a> {
    hour: String,
    cells: &'a [String],
    addresses: &'a [String],
    sources: &'a [String],
}

#[derive(Serialize)]
pub(crate) struct WhereWasJson<'a> {
    #[serde(serialize_with = "id_string")]
    person: u64,
    hours: Vec<HourPlacesJson<'a>>,
}

/// A suppressed count is `null` with `"suppressed": true`.
#[derive(Serialize)]
pub(crate) struct HourCountJson {
    hour: String,
    distinct: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suppressed: bool,
}

#[derive(Serialize)]
pub(crate) struct OccupancyJson {
    from: String,
    to: String,
    distinct: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suppressed: bool,
    hours: Vec<HourCountJson>,
}

/// A count as shown: `<k` when suppressed.
pub(crate) fn count_text(v: u64, suppressed: bool, k: u64) -> String {
    if suppressed {
        format!("<{k}")
    } else {
        v.to_string()
    }
}

#[derive(Serialize)]
pub(crate) struct InactiveJson {
    #[serde(serialize_with = "id_string")]
    person: u64,
    last_seen: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct NoActivityJson {
    since: String,
    persons: Vec<InactiveJson>,
}

pub(crate) fn json_string<T: Serialize>(v: &T, pretty: bool) -> Result<String> {
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
        QueryOutput::Grid(r) => super::grid::to_json(r, pretty),
        QueryOutput::WhoWasAt(r) => json_string(
            &WhoWasAtJson {
                from: format_time(r.window.start),
                to: format_time(r.window.end),
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
                    from: format_time(w.start),
                    to: format_time(w.end),
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
                since: format_time(r.window.start),
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
pub(crate) fn rows(
    out: &QueryOutput,
    sep: &str,
    missing: &str,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    match out {
        QueryOutput::Grid(r) => super::grid::rows(r, missing),
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

pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
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

pub(crate) fn window_text(w: &v1::EffectiveWindow) -> String {
    format!("window {} .. {}", format_time(w.start), format_time(w.end))
}

pub fn to_table(out: &QueryOutput) -> String {
    let (header, rows) = rows(out, ",", "-");
    let summary = match out {
        QueryOutput::Grid(r) => super::grid::summary(r),
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
            format_time(r.window.start),
            format_time(r.window.as_of)
        ),
    };
    if rows.is_empty() {
        format!("{summary}\n")
    } else {
        format!("{}{summary}\n", aligned(&header, &rows))
    }
}

/// An answer as text; the binary formats are [`encode`]'s.
pub fn render(out: &QueryOutput, format: QueryFormat) -> Result<String> {
    Ok(match format {
        QueryFormat::Table => to_table(out),
        QueryFormat::Csv => to_csv(out)?,
        QueryFormat::Json => {
            let mut s = to_json(out, true)?;
            s.push('\n');
            s
        }
        QueryFormat::Geojson => match out {
            QueryOutput::Grid(r) => super::grid::to_geojson(r)?,
            _ => return Err(crate::cli::grid_only()),
        },
        // Files, not text: see `run_query`.
        QueryFormat::Png => return Err(crate::cli::grid_only()),
        QueryFormat::Parquet | QueryFormat::Arrow => {
            bail!("--format {format:?} is binary, not text")
        }
    })
}

/// An answer as the bytes of `format`: Parquet, an Arrow IPC stream, or
/// the text of the others.
pub fn encode(out: &QueryOutput, format: QueryFormat) -> Result<Vec<u8>> {
    Ok(match format {
        QueryFormat::Parquet => super::columnar::to_parquet(out)?,
        QueryFormat::Arrow => super::columnar::to_arrow_ipc(out)?,
        text => render(out, text)?.into_bytes(),
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

/// Writes an answer to `--out` (a file, or stdout for `-` or none).
pub(crate) fn write_out(bytes: &[u8], out: Option<&Path>) -> Result<()> {
    match out {
        Some(p) if p != Path::new("-") => {
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
        }
        _ => {
            let mut so = std::io::stdout().lock();
            match so.write_all(bytes).and_then(|_| so.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("writing to stdout"),
            }
        }
    }
}

pub async fn run_query(args: QueryArgs) -> Result<()> {
    let q = args.kind;
    let req = build_request(&q, hourcell_query::time::now())
        .map_err(|e| crate::exit::Failure::new(crate::exit::USAGE, format!("{e:#}")))?;
    let (output, server) = q.output();
    let to_stdout = output.out.as_deref().is_none_or(|p| p == Path::new("-"));
    // Checked before asking: a person-level query is audited even if its
    // answer then cannot be written.
    if output.format.is_binary() && to_stdout && std::io::stdout().is_terminal() {
        return Err(crate::exit::Failure::new(
            crate::exit::USAGE,
            format!(
                "--format {} is binary: give --out FILE, or redirect stdout to a file or pipe",
                format!("{:?}", output.format).to_lowercase()
            ),
        ));
    }
    if output.format == QueryFormat::Png && (q.kind() != QueryKind::Grid || output.out.is_none()) {
        return Err(crate::exit::Failure::new(
            crate::exit::USAGE,
            "--format png is for `query grid` and needs --out FILE (a directory with --hourly)",
        ));
    }
    let ch = channel(&server.server).await?;
    let out = execute(ch, req).await?;
    if let (QueryOutput::Grid(r), Some(path)) = (&out, &output.out) {
        if output.format == QueryFormat::Png {
            let files = super::png::write_png(r, path)?;
            return print_stdout(&format!(
                "wrote {} PNG file(s) to {}\n",
                files.len(),
                path.display()
            ));
        }
    }
    write_out(&encode(&out, output.format)?, output.out.as_deref())
}
