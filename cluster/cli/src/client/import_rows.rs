//! What the import's readers (CSV in `import`, Parquet in
//! `import_parquet`) share: the parsed rows, their batches, the column
//! names of each kind, and the reasons a row is rejected.

use super::{parse_time, v1, ImportKind};

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

/// The rows of one request and their file lines (or Parquet rows).
pub(crate) struct Batch {
    pub(crate) lines: Vec<u64>,
    pub(crate) items: Vec<Item>,
}

/// What a reader hands to the sender: a full batch (with the position after
/// it, bytes or rows, for the progress bar) or a row it could not parse.
pub(crate) enum Parsed {
    Batch(Batch, u64),
    Rejected(Option<u64>, String, String),
}
