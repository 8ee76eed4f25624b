//! `hourcell import`: CSV rows to ingest and registry requests, batched
//! and sent with a bounded number in flight.

use super::*;

/// A row that could not be parsed locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn row_err(field: &str, reason: impl Into<String>) -> RowError {
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

pub(crate) fn required_columns(kind: ImportKind) -> &'static [&'static str] {
    match kind {
        ImportKind::Events => &["person", "time"],
        ImportKind::Addresses => &["code", "lat", "lng", "kind"],
        ImportKind::Registry => &["person", "address", "kind", "valid_from"],
    }
}

pub(crate) fn all_columns(kind: ImportKind) -> &'static str {
    match kind {
        ImportKind::Events => "person,time,lat,lng,address,source",
        ImportKind::Addresses => "code,lat,lng,kind,area,label",
        ImportKind::Registry => "person,address,kind,valid_from,valid_until",
    }
}

pub(crate) fn need<'r>(
    cols: &Columns,
    rec: &'r csv::StringRecord,
    name: &str,
) -> Result<&'r str, RowError> {
    let v = cols.get(rec, name);
    if v.is_empty() {
        Err(row_err(name, "missing"))
    } else {
        Ok(v)
    }
}

pub(crate) fn person_field(cols: &Columns, rec: &csv::StringRecord) -> Result<u64, RowError> {
    let v = need(cols, rec, "person")?;
    v.parse::<u64>()
        .map_err(|_| row_err("person", format!("{v:?} is not an unsigned integer")))
}

pub(crate) fn float_field(name: &str, v: &str) -> Result<f64, RowError> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(row_err(name, format!("{v:?} is not a number"))),
    }
}

pub(crate) fn time_field(name: &'static str, v: &str) -> Result<i64, RowError> {
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
    pub(crate) first: Vec<RejectedRow>,
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

    /// The report as one JSON object (the first rejections only).
    pub fn json(&mut self, file: &str) -> serde_json::Value {
        let (accepted, rejected) = (self.accepted, self.rejected);
        let rows: Vec<serde_json::Value> = self
            .first()
            .iter()
            .map(|r| serde_json::json!({ "line": r.line, "field": r.field, "reason": r.reason }))
            .collect();
        serde_json::json!({
            "file": file,
            "accepted": accepted,
            "rejected": rejected,
            "first_rejections": rows,
        })
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
pub(crate) struct Batch {
    lines: Vec<u64>,
    items: Vec<Item>,
}

pub(crate) async fn send_batch(
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

pub(crate) fn import_bar(bytes: u64) -> indicatif::ProgressBar {
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
pub(crate) enum Parsed {
    Batch(Batch, u64),
    Rejected(Option<u64>, String, String),
}

/// Reads and parses the CSV on a thread of its own and hands full batches
/// to `tx`, so that parsing the next batch overlaps the sending of the
/// previous ones. Stops early (without an error) when the receiver is gone.
pub(crate) fn read_batches(
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
pub(crate) fn in_flight(kind: ImportKind, asked: usize) -> usize {
    match kind {
        ImportKind::Events => asked.max(1),
        ImportKind::Addresses | ImportKind::Registry => 1,
    }
}

pub async fn run_import(args: ImportArgs) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt as _};

    let path: &Path = &args.file;
    let shown = path.display().to_string();
    let format = args.format;
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
    if format == Format::Json {
        return print_stdout(&format!("{}\n", report.json(&shown)));
    }
    print_stdout(&format!("{shown}: {}", report.summary()))
}
