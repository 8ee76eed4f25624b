//! `hourcell import`: CSV (plain or gzip'd) or Parquet rows to ingest and
//! registry requests, batched and sent with a bounded number in flight. A
//! batch that meets a transport failure (the node down, restarting, or a
//! connection cut) is sent again with backoff instead of ending the import:
//! every batch is idempotent on the node (ingest is a set union; a re-put
//! address or registration keeps the same row).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::import_rows::*;
use super::import_source::Source;

use super::*;

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

/// One rejected row: CSV file line (1-based, the header is line 1) or
/// Parquet row (1-based), field and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: Option<u64>,
    pub field: String,
    pub reason: String,
}

/// What a rejection's number counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A CSV file line (the header is line 1).
    #[default]
    Line,
    /// A Parquet row (the first is row 1).
    Row,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Line => "line",
            Unit::Row => "row",
        }
    }
}

/// Running totals of an import; keeps only the first rejections by line.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub accepted: u64,
    pub rejected: u64,
    pub(crate) first: Vec<RejectedRow>,
    pub unit: Unit,
    /// Batches sent again after a transport failure.
    pub retries: u64,
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
        let (accepted, rejected, unit) = (self.accepted, self.rejected, self.unit.name());
        let rows: Vec<serde_json::Value> = self
            .first()
            .iter()
            .map(|r| {
                let mut o = serde_json::json!({ "field": r.field, "reason": r.reason });
                o[unit] = serde_json::json!(r.line);
                o
            })
            .collect();
        serde_json::json!({
            "file": file,
            "accepted": accepted,
            "rejected": rejected,
            "retries": self.retries,
            "first_rejections": rows,
        })
    }

    pub fn summary(&mut self) -> String {
        let mut s = format!("accepted {}, rejected {}", self.accepted, self.rejected);
        if self.retries > 0 {
            s.push_str(&format!(
                " ({} after a transport failure)",
                plural(self.retries, "batch sent again", "batches sent again")
            ));
        }
        s.push('\n');
        let total = self.rejected;
        let shown = self.first().to_vec();
        for r in &shown {
            let line = r.line.map_or_else(|| "?".to_string(), |l| l.to_string());
            s.push_str(&format!(
                "  {} {line}: {}: {}\n",
                self.unit.name(),
                r.field,
                r.reason
            ));
        }
        if total > shown.len() as u64 {
            s.push_str(&format!("  ... and {} more\n", total - shown.len() as u64));
        }
        s
    }
}

/// One request, kept so that it can be sent again.
enum Request {
    Ingest(v1::IngestRequest),
    Addresses(v1::PutAddressesRequest),
    Registrations(v1::PutRegistrationsRequest),
}

fn request(items: Vec<Item>) -> Request {
    let mut events = Vec::new();
    let mut addresses = Vec::new();
    let mut registrations = Vec::new();
    for i in items {
        match i {
            Item::Event(e) => events.push(e),
            Item::Address(a) => addresses.push(a),
            Item::Registration(r) => registrations.push(r),
        }
    }
    if !addresses.is_empty() {
        Request::Addresses(v1::PutAddressesRequest { addresses })
    } else if !registrations.is_empty() {
        Request::Registrations(v1::PutRegistrationsRequest { registrations })
    } else {
        Request::Ingest(v1::IngestRequest { events })
    }
}

async fn send_once(
    ch: &Ch,
    req: &Request,
) -> std::result::Result<(u64, Vec<v1::Rejection>), tonic::Status> {
    Ok(match req {
        Request::Ingest(r) => {
            let r = ingest_client(ch.clone())
                .ingest(r.clone())
                .await?
                .into_inner();
            (r.accepted, r.rejected)
        }
        Request::Addresses(r) => {
            let r = registry_client(ch.clone())
                .put_addresses(r.clone())
                .await?
                .into_inner();
            (r.accepted, r.rejected)
        }
        Request::Registrations(r) => {
            let r = registry_client(ch.clone())
                .put_registrations(r.clone())
                .await?
                .into_inner();
            (r.accepted, r.rejected)
        }
    })
}

/// A failure of the way to the node rather than of the request: sending
/// the same batch again later may succeed.
pub(crate) fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    match s.code() {
        // The import never cancels its own requests: a cancelled one had
        // its connection dropped under it ("operation was canceled").
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown | Code::Internal => {
            let m = s.message().to_ascii_lowercase();
            [
                "transport",
                "connection",
                "reset",
                "broken pipe",
                "h2 protocol",
                "stream closed",
            ]
            .iter()
            .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// Exponential backoff: 0.2 s doubling to 5 s between tries, for at most
/// `budget` from the first failure.
pub(crate) struct Backoff {
    next: Duration,
    until: Instant,
}

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_millis(200);
    pub(crate) const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new(budget: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            until: Instant::now() + budget,
        }
    }

    /// How long to wait before the next try, or `None` when the budget
    /// is spent.
    pub(crate) fn delay(&mut self) -> Option<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let d = self.next.min(left);
        self.next = (self.next * 2).min(Self::MAX);
        Some(d)
    }
}

/// Sends a batch, again after transport failures until `retry_for` is
/// spent; returns the answer and how many times it was sent again.
pub(crate) async fn send_batch(
    ch: &Ch,
    batch: Batch,
    retry_for: Duration,
    bar: &indicatif::ProgressBar,
    unit: Unit,
) -> Result<(u64, Vec<u64>, Vec<v1::Rejection>, u64)> {
    let Batch { lines, items } = batch;
    let req = request(items);
    let mut backoff = Backoff::new(retry_for);
    let mut retries = 0;
    loop {
        match send_once(ch, &req).await {
            Ok((accepted, rejected)) => return Ok((accepted, lines, rejected, retries)),
            Err(s) if transient(&s) => match backoff.delay() {
                Some(d) => {
                    retries += 1;
                    bar.suspend(|| {
                        eprintln!(
                            "the batch at {} {} failed ({}: {}); sending it again in {:.1} s",
                            unit.name(),
                            lines.first().copied().unwrap_or(0),
                            s.code().description(),
                            s.message(),
                            d.as_secs_f64()
                        )
                    });
                    tokio::time::sleep(d).await;
                }
                None => {
                    return Err(status_error(s).context(format!(
                        "still failing after {} s of retries",
                        retry_for.as_secs()
                    )))
                }
            },
            Err(s) => return Err(status_error(s)),
        }
    }
}

/// Connects, waiting with backoff for a node that is not up yet.
async fn connect(server: &str, retry_for: Duration) -> Result<Ch> {
    let mut backoff = Backoff::new(retry_for);
    loop {
        match channel(server).await {
            Ok(ch) => return Ok(ch),
            Err(e @ hourcell_server::error::ClientError::Unreachable { .. }) => {
                match backoff.delay() {
                    Some(d) => {
                        eprintln!("{e}; trying again in {:.1} s", d.as_secs_f64());
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn import_bar(len: u64, unit: Unit) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let template = match unit {
        Unit::Line => "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        Unit::Row => "{bar:40} {human_pos}/{human_len} rows ({per_sec}, eta {eta}) {msg}",
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Reads and parses the CSV on a thread of its own and hands full batches
/// to `tx`, so that parsing the next batch overlaps the sending of the
/// previous ones. Stops early (without an error) when the receiver is gone.
pub(crate) fn read_batches(
    mut rdr: csv::Reader<Box<dyn Read + Send>>,
    read: Arc<AtomicU64>,
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
                .blocking_send(Parsed::Batch(full, read.load(Ordering::Relaxed)))
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

/// The reader thread of an import.
type Reader = tokio::task::JoinHandle<Result<()>>;

fn spawn_parquet(
    opened: std::result::Result<
        (u64, super::import_parquet::ParquetRows),
        super::import_parquet::ParquetImportError,
    >,
    shown: &str,
    tx: tokio::sync::mpsc::Sender<Parsed>,
) -> Result<(u64, Unit, Reader)> {
    let (n, rows) = opened.with_context(|| shown.to_string())?;
    let reader =
        tokio::task::spawn_blocking(move || Ok(super::import_parquet::read_batches(rows, tx)?));
    Ok((n, Unit::Row, reader))
}

/// Opens the input and starts reading it into `tx`; returns the progress
/// bar's length and unit, and the reading thread.
fn start_reading(
    args: &ImportArgs,
    shown: &str,
    tx: tokio::sync::mpsc::Sender<Parsed>,
) -> Result<(u64, Unit, Reader)> {
    let kind = args.kind;
    let batch_size = args.batch.max(1);
    match super::import_source::open(&args.file)? {
        Source::ParquetFile(f) => {
            spawn_parquet(super::import_parquet::open(kind, f, batch_size), shown, tx)
        }
        Source::ParquetBytes(b) => {
            spawn_parquet(super::import_parquet::open(kind, b, batch_size), shown, tx)
        }
        Source::Csv { reader, read, size } => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(reader);
            let header = rdr
                .headers()
                .with_context(|| format!("cannot read the header row of {shown}"))?
                .clone();
            let cols = Columns::new(kind, &header).with_context(|| shown.to_string())?;
            let reader = tokio::task::spawn_blocking(move || {
                read_batches(rdr, read, kind, cols, batch_size, tx)
            });
            Ok((size.unwrap_or(0), Unit::Line, reader))
        }
    }
}

pub async fn run_import(args: ImportArgs) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt as _};

    let shown = if args.file == Path::new("-") {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    let format = args.format;
    let retry_for = Duration::from_secs(args.retry_for);
    let window = in_flight(args.kind, args.in_flight);
    // One parsed batch waits beside those in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel(window + 1);
    let (len, unit, reader) = start_reading(&args, &shown, tx)?;
    let ch = connect(&args.server, retry_for).await?;

    let bar = import_bar(len, unit);
    if len == 0 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut report = ImportReport {
        unit,
        ..Default::default()
    };
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
                    let (ch, bar) = (&ch, &bar);
                    sending.push(async move {
                        (send_batch(ch, batch, retry_for, bar, unit).await, first_line, pos)
                    });
                }
                Some(Parsed::Rejected(line, field, reason)) => report.reject(line, field, reason),
                None => eof = true,
            },
            Some((res, first_line, pos)) = sending.next(), if !sending.is_empty() => {
                match res {
                    Ok((accepted, lines, rejected, retries)) => {
                        report.accepted += accepted;
                        report.retries += retries;
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
                            "import of {shown} stopped at the batch starting at {} {first_line}{others}",
                            unit.name()
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
            return Err(anyhow!("reading {shown}: {e:#}"));
        }
        Err(e) => return Err(anyhow!("the {} reader failed: {e}", unit.name())),
    }
    bar.finish_and_clear();
    if format == Format::Json {
        return print_stdout(&format!("{}\n", report.json(&shown)));
    }
    print_stdout(&format!("{shown}: {}", report.summary()))
}
