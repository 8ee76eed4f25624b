//! `hourcell import` from Parquet: the columns of the CSV header, by name
//! (case-insensitive), each in any of a few Parquet/Arrow types
//! (docs/FORMATS.md has the table):
//!
//! - `person`: any integer type, or utf8 digits
//! - `time`, `valid_from`, `valid_until`: a timestamp (any unit; without a
//!   time zone it is read as UTC), an integer of unix seconds, or utf8
//!   (RFC 3339 or unix seconds)
//! - `lat`, `lng`: float64 or float32 (or utf8); for events and addresses a
//!   GeoParquet point column (`geometry`, or the file's `geo` metadata's
//!   primary column) in WKB may stand in for both
//! - every other column: utf8 (integers are taken as their digits)
//!
//! A column of another type fails the file before any row is sent; a bad
//! value rejects its row, reported by its 1-based row number.

use std::sync::Arc;

use arrow_array::cast::AsArray as _;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::ChunkReader;

use super::import_rows::{
    all_columns, float_field, required_columns, row_err, Batch, Item, Parsed, RowError,
};
use super::{v1, ImportKind};
use hourcell_query::time::parse_time;

/// Why a Parquet file cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ParquetImportError {
    #[error("not a readable Parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("reading Parquet rows: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("missing column(s) {missing} (expected {expected}{geo})")]
    Missing {
        missing: String,
        expected: &'static str,
        geo: &'static str,
    },
    #[error("column {column} is {found}; expected {expected}")]
    Type {
        column: String,
        found: DataType,
        expected: &'static str,
    },
}

/// The kinds of value a column may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Id,
    Time,
    Float,
    Text,
    Wkb,
}

impl Class {
    fn of(column: &str) -> Class {
        match column {
            "person" => Class::Id,
            "time" | "valid_from" | "valid_until" => Class::Time,
            "lat" | "lng" => Class::Float,
            _ => Class::Text,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Class::Id => "an integer or utf8",
            Class::Time => "a timestamp, an integer of unix seconds, or utf8 (RFC 3339)",
            Class::Float => "float64, float32 or utf8",
            Class::Text => "utf8 (or an integer)",
            Class::Wkb => "binary WKB points",
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        let text = matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        let int = t.is_integer();
        match self {
            Class::Id | Class::Text => text || int || *t == DataType::Null,
            Class::Time => {
                text || int || matches!(t, DataType::Timestamp(..)) || *t == DataType::Null
            }
            Class::Float => {
                text || matches!(t, DataType::Float64 | DataType::Float32) || *t == DataType::Null
            }
            Class::Wkb => matches!(
                t,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            ),
        }
    }
}

/// One value of a row, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Null,
    Int(i128),
    Float(f64),
    Text(&'a str),
    /// Unix seconds.
    Time(i64),
    Bytes(&'a [u8]),
}

fn val(a: &dyn Array, i: usize) -> Val<'_> {
    if a.is_null(i) {
        return Val::Null;
    }
    let secs = |v: i64, per: i64| Val::Time(v.div_euclid(per));
    match a.data_type() {
        DataType::Int8 => Val::Int(a.as_primitive::<Int8Type>().value(i).into()),
        DataType::Int16 => Val::Int(a.as_primitive::<Int16Type>().value(i).into()),
        DataType::Int32 => Val::Int(a.as_primitive::<Int32Type>().value(i).into()),
        DataType::Int64 => Val::Int(a.as_primitive::<Int64Type>().value(i).into()),
        DataType::UInt8 => Val::Int(a.as_primitive::<UInt8Type>().value(i).into()),
        DataType::UInt16 => Val::Int(a.as_primitive::<UInt16Type>().value(i).into()),
        DataType::UInt32 => Val::Int(a.as_primitive::<UInt32Type>().value(i).into()),
        DataType::UInt64 => Val::Int(a.as_primitive::<UInt64Type>().value(i).into()),
        DataType::Float32 => Val::Float(a.as_primitive::<Float32Type>().value(i).into()),
        DataType::Float64 => Val::Float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Val::Text(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Val::Text(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Val::Text(a.as_string_view().value(i)),
        DataType::Binary => Val::Bytes(a.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Val::Bytes(a.as_binary::<i64>().value(i)),
        DataType::BinaryView => Val::Bytes(a.as_binary_view().value(i)),
        DataType::Timestamp(TimeUnit::Second, _) => {
            Val::Time(a.as_primitive::<TimestampSecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            secs(a.as_primitive::<TimestampMillisecondType>().value(i), 1_000)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => secs(
            a.as_primitive::<TimestampMicrosecondType>().value(i),
            1_000_000,
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => secs(
            a.as_primitive::<TimestampNanosecondType>().value(i),
            1_000_000_000,
        ),
        // Types are checked before the first row (`Class::accepts`).
        _ => Val::Null,
    }
}

/// Column positions by (lowercase) name, and the GeoParquet point column.
struct Columns {
    index: Vec<(String, usize)>,
    geometry: Option<usize>,
}

impl Columns {
    fn new(kind: ImportKind, schema: &Schema) -> Result<Self, ParquetImportError> {
        let index: Vec<(String, usize)> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().trim().to_ascii_lowercase(), i))
            .collect();
        let geo_name = geo_primary_column(schema).unwrap_or_else(|| "geometry".to_string());
        let geometry = index
            .iter()
            .find(|(n, _)| *n == geo_name.to_ascii_lowercase())
            .map(|&(_, i)| i)
            .filter(|_| kind != ImportKind::Registry);
        let mut cols = Columns { index, geometry };
        if let Some(g) = cols.geometry {
            let t = schema.field(g).data_type();
            if !Class::Wkb.accepts(t) {
                // A column called geometry that is not WKB: not ours to read.
                cols.geometry = None;
            }
        }
        let has_point = cols.geometry.is_some();
        let missing: Vec<&str> = required_columns(kind)
            .iter()
            .copied()
            .filter(|c| cols.get(c).is_none())
            .filter(|c| !(has_point && matches!(*c, "lat" | "lng")))
            .collect();
        if !missing.is_empty() {
            return Err(ParquetImportError::Missing {
                missing: missing.join(", "),
                expected: all_columns(kind),
                geo: if kind == ImportKind::Registry {
                    ""
                } else {
                    "; lat and lng may instead be a GeoParquet WKB point column"
                },
            });
        }
        for (name, i) in &cols.index {
            let class = Class::of(name);
            let known = all_columns(kind).split(',').any(|c| c == name);
            let t = schema.field(*i).data_type();
            if known && !class.accepts(t) {
                return Err(ParquetImportError::Type {
                    column: name.clone(),
                    found: t.clone(),
                    expected: class.expected(),
                });
            }
        }
        Ok(cols)
    }

    fn get(&self, name: &str) -> Option<usize> {
        self.index.iter().find(|(n, _)| n == name).map(|&(_, i)| i)
    }
}

/// GeoParquet's `geo` file metadata names the primary geometry column.
fn geo_primary_column(schema: &Schema) -> Option<String> {
    let geo: serde_json::Value = serde_json::from_str(schema.metadata().get("geo")?).ok()?;
    Some(geo.get("primary_column")?.as_str()?.to_string())
}

/// A WKB (or EWKB) point as (lat, lng); `None` for an empty point.
pub(crate) fn wkb_point(b: &[u8]) -> Result<Option<(f64, f64)>, String> {
    let le = match b.first() {
        Some(1) => true,
        Some(0) => false,
        _ => return Err("not WKB (bad byte order)".into()),
    };
    let u32_at = |o: usize| -> Option<u32> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    };
    let f64_at = |o: usize| -> Option<f64> {
        let s: [u8; 8] = b.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            f64::from_le_bytes(s)
        } else {
            f64::from_be_bytes(s)
        })
    };
    let t = u32_at(1).ok_or("truncated WKB")?;
    // EWKB flags (SRID, Z, M) in the high bits; ISO WKB Z/M as +1000s.
    let offset = if t & 0x2000_0000 != 0 { 9 } else { 5 };
    if (t & 0x0fff_ffff) % 1000 != 1 {
        return Err(format!("WKB geometry type {t} is not a Point"));
    }
    let (x, y) = (f64_at(offset), f64_at(offset + 8));
    let (Some(lng), Some(lat)) = (x, y) else {
        return Err("truncated WKB point".into());
    };
    if lng.is_nan() && lat.is_nan() {
        return Ok(None);
    }
    Ok(Some((lat, lng)))
}

/// One row's values by column name.
struct Row<'a> {
    cols: &'a Columns,
    batch: &'a RecordBatch,
    i: usize,
}

/// A time cell: unix seconds, or text that is neither RFC 3339 nor unix
/// seconds (kept to show in the row's rejection).
enum TimeValue {
    Unix(i64),
    Unparsed(String),
}

impl<'a> Row<'a> {
    fn get(&self, name: &str) -> Val<'a> {
        match self.cols.get(name) {
            Some(c) => val(self.batch.column(c).as_ref(), self.i),
            None => Val::Null,
        }
    }

    fn text(&self, name: &str) -> String {
        match self.get(name) {
            Val::Text(s) => s.trim().to_string(),
            Val::Int(v) => v.to_string(),
            _ => String::new(),
        }
    }

    fn need_text(&self, name: &str) -> Result<String, RowError> {
        let v = self.text(name);
        if v.is_empty() {
            Err(row_err(name, "missing"))
        } else {
            Ok(v)
        }
    }

    fn person(&self) -> Result<u64, RowError> {
        match self.get("person") {
            Val::Int(v) => u64::try_from(v)
                .map_err(|_| row_err("person", format!("{v} is not an unsigned integer"))),
            Val::Text(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| row_err("person", format!("{s:?} is not an unsigned integer"))),
            _ => Err(row_err("person", "missing")),
        }
    }

    /// Unix seconds, or the text when it does not parse (events send it
    /// on, so that the node rejects it with its usual message).
    fn time(&self, name: &'static str) -> Result<Option<TimeValue>, RowError> {
        Ok(match self.get(name) {
            Val::Null => None,
            Val::Time(s) => Some(TimeValue::Unix(s)),
            Val::Int(v) => {
                Some(TimeValue::Unix(i64::try_from(v).map_err(|_| {
                    row_err(name, format!("{v} is out of range"))
                })?))
            }
            Val::Text(s) if s.trim().is_empty() => None,
            Val::Text(s) => Some(match parse_time(name, s.trim()) {
                Ok(t) => TimeValue::Unix(t),
                Err(_) => TimeValue::Unparsed(s.trim().to_string()),
            }),
            _ => None,
        })
    }

    fn need_time(&self, name: &'static str) -> Result<i64, RowError> {
        match self.time(name)? {
            Some(TimeValue::Unix(s)) => Ok(s),
            Some(TimeValue::Unparsed(t)) => Err(row_err(
                name,
                format!("{t:?} is not RFC 3339 or unix seconds"),
            )),
            None => Err(row_err(name, "missing")),
        }
    }

    fn float(&self, name: &str) -> Result<Option<f64>, RowError> {
        match self.get(name) {
            Val::Float(x) if x.is_finite() => Ok(Some(x)),
            Val::Float(x) => Err(row_err(name, format!("{x} is not a number"))),
            Val::Text(s) if s.trim().is_empty() => Ok(None),
            Val::Text(s) => float_field(name, s.trim()).map(Some),
            _ => Ok(None),
        }
    }

    /// lat and lng from their columns, else from the point column.
    fn position(&self) -> Result<(Option<f64>, Option<f64>), RowError> {
        let (lat, lng) = (self.float("lat")?, self.float("lng")?);
        match (lat, lng) {
            (Some(_), Some(_)) => return Ok((lat, lng)),
            (None, Some(_)) => return Err(row_err("lat", "missing while lng is given")),
            (Some(_), None) => return Err(row_err("lng", "missing while lat is given")),
            (None, None) => {}
        }
        let Some(g) = self.cols.geometry else {
            return Ok((None, None));
        };
        match val(self.batch.column(g).as_ref(), self.i) {
            Val::Bytes(b) => match wkb_point(b) {
                Ok(Some((lat, lng))) => Ok((Some(lat), Some(lng))),
                Ok(None) => Ok((None, None)),
                Err(why) => Err(row_err("geometry", why)),
            },
            _ => Ok((None, None)),
        }
    }
}

fn parse(kind: ImportKind, row: &Row) -> Result<Item, RowError> {
    match kind {
        ImportKind::Events => {
            let person = row.person()?;
            let time = match row.time("time")? {
                Some(TimeValue::Unix(s)) => v1::event::Time::UnixSeconds(s),
                Some(TimeValue::Unparsed(text)) => v1::event::Time::Rfc3339(text),
                None => return Err(row_err("time", "missing")),
            };
            let (lat, lng) = row.position()?;
            Ok(Item::Event(v1::Event {
                person,
                time: Some(time),
                lat,
                lng,
                address: row.text("address"),
                source: row.text("source"),
            }))
        }
        ImportKind::Addresses => {
            let code = row.need_text("code")?;
            let (lat, lng) = match row.position()? {
                (Some(lat), Some(lng)) => (lat, lng),
                _ => return Err(row_err("lat", "missing")),
            };
            Ok(Item::Address(v1::Address {
                code,
                lat,
                lng,
                kind: row.need_text("kind")?,
                area: row.text("area"),
                label: row.text("label"),
            }))
        }
        ImportKind::Registry => {
            let person = row.person()?;
            let valid_until = match row.time("valid_until")? {
                None => None,
                Some(TimeValue::Unix(s)) => Some(s),
                Some(TimeValue::Unparsed(t)) => {
                    return Err(row_err(
                        "valid_until",
                        format!("{t:?} is not RFC 3339 or unix seconds"),
                    ))
                }
            };
            Ok(Item::Registration(v1::Registration {
                person,
                address: row.need_text("address")?,
                kind: row.need_text("kind")?,
                valid_from: row.need_time("valid_from")?,
                valid_until,
            }))
        }
    }
}

/// Opens a Parquet file and checks its columns; returns the row count
/// (for the progress bar) and the reader of `batch_size` rows at a time.
pub(crate) fn open<R: ChunkReader + 'static>(
    kind: ImportKind,
    input: R,
    batch_size: usize,
) -> Result<(u64, ParquetRows), ParquetImportError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input)?.with_batch_size(batch_size);
    let cols = Columns::new(kind, builder.schema())?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let reader = builder.build()?;
    Ok((
        rows,
        ParquetRows {
            kind,
            cols: Arc::new(cols),
            reader,
            batch_size,
        },
    ))
}

pub(crate) struct ParquetRows {
    kind: ImportKind,
    cols: Arc<Columns>,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch_size: usize,
}

/// Reads the rows on a thread of its own and hands full batches to `tx`
/// (the position is rows read, 1-based row numbers as "lines"), like the
/// CSV reader. Stops early, without an error, when the receiver is gone.
pub(crate) fn read_batches(
    rows: ParquetRows,
    tx: tokio::sync::mpsc::Sender<Parsed>,
) -> Result<(), ParquetImportError> {
    let ParquetRows {
        kind,
        cols,
        reader,
        batch_size,
    } = rows;
    let new_batch = || Batch {
        lines: Vec::with_capacity(batch_size),
        items: Vec::with_capacity(batch_size),
    };
    let mut batch = new_batch();
    let mut n = 0u64;
    for rb in reader {
        let rb = rb?;
        for i in 0..rb.num_rows() {
            n += 1;
            let row = Row {
                cols: &cols,
                batch: &rb,
                i,
            };
            match parse(kind, &row) {
                Ok(item) => {
                    batch.lines.push(n);
                    batch.items.push(item);
                }
                Err(e) => {
                    if tx
                        .blocking_send(Parsed::Rejected(Some(n), e.field, e.reason))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if batch.items.len() >= batch_size {
                let full = std::mem::replace(&mut batch, new_batch());
                if tx.blocking_send(Parsed::Batch(full, n)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    if !batch.items.is_empty() {
        let _ = tx.blocking_send(Parsed::Batch(batch, n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(le: bool, t: u32, srid: Option<u32>, x: f64, y: f64) -> Vec<u8> {
        let mut b = vec![u8::from(le)];
        let w32 = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let w64 = |v: f64| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        b.extend(w32(t));
        if let Some(s) = srid {
            b.extend(w32(s));
        }
        b.extend(w64(x));
        b.extend(w64(y));
        b
    }

    #[test]
    fn wkb_points_in_both_byte_orders_with_and_without_srid() {
        assert_eq!(
            wkb_point(&point(true, 1, None, 120.15, 30.27)),
            Ok(Some((30.27, 120.15)))
        );
        assert_eq!(
            wkb_point(&point(false, 1, None, 120.15, 30.27)),
            Ok(Some((30.27, 120.15)))
        );
        assert_eq!(
            wkb_point(&point(true, 0x2000_0001, Some(4326), -1.5, 2.5)),
            Ok(Some((2.5, -1.5)))
        );
        assert_eq!(
            wkb_point(&point(true, 1, None, f64::NAN, f64::NAN)),
            Ok(None)
        );
        assert!(wkb_point(&point(true, 3, None, 0.0, 0.0))
            .unwrap_err()
            .contains("Point"));
        assert!(wkb_point(&[1, 1, 0]).is_err());
        assert!(wkb_point(&[]).is_err());
    }
}
