//! Query answers as typed columns: one Arrow record batch per answer,
//! written as a Parquet file or an Arrow IPC stream (`--format parquet`,
//! `--format arrow`), so that pandas, polars, DuckDB and R read them with
//! their types and no parsing.
//!
//! The columns (docs/FORMATS.md holds the table):
//!
//! - who-was-at: `person` uint64
//! - where-was: `hour` timestamp, `cells`, `addresses`, `sources` list of
//!   utf8 — one row per hour, as in JSON: the server reports the places
//!   and sources of an hour as three sets, without saying which source saw
//!   which place, so a flat row per (cell, address, source) would claim
//!   pairings that were never recorded.
//! - occupancy: `hour` timestamp, `distinct` uint64 (null when
//!   suppressed), `suppressed` bool
//! - no-activity-since: `person` uint64, `last_seen` timestamp (null: never)
//! - grid: `cell` utf8, `hour` timestamp (null unless --hourly),
//!   `distinct` uint64 (null when suppressed), `suppressed` bool, `lat`,
//!   `lng` float64 (the cell's centre)
//!
//! Person ids are uint64 here, not strings as in JSON: Parquet and Arrow
//! keep 64-bit integers exactly. Times are `timestamp[s, UTC]` (Parquet has
//! no seconds unit: the file stores milliseconds, and Arrow readers get
//! seconds back from the embedded Arrow schema). The window and the
//! answer's totals travel as schema metadata under `hourcell.*` keys.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampSecondArray,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use super::{v1, QueryOutput};
use hourcell_query::time::format_time;

/// Why an answer could not be written as columns.
#[derive(Debug, thiserror::Error)]
pub enum ColumnarError {
    #[error("building the Arrow columns: {0}")]
    Arrow(#[from] ArrowError),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// `timestamp[s, UTC]`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Second, Some("UTC".into()))
}

fn timestamps(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampSecondArray::from(v).with_timezone("UTC"))
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn list_of_strings<'a>(rows: impl Iterator<Item = &'a [String]>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for s in row {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn list_field(name: &str) -> Field {
    Field::new_list(name, Field::new_list_field(DataType::Utf8, true), false)
}

fn window_meta(w: &v1::EffectiveWindow) -> Vec<(&'static str, String)> {
    vec![
        ("hourcell.from", format_time(w.start)),
        ("hourcell.to", format_time(w.end)),
        ("hourcell.as_of", format_time(w.as_of)),
    ]
}

/// The answer as one record batch; see the module doc for the columns.
pub fn to_batch(out: &QueryOutput) -> Result<RecordBatch, ColumnarError> {
    let kind;
    let mut meta: Vec<(&'static str, String)>;
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match out {
        QueryOutput::WhoWasAt(r) => {
            kind = "who-was-at";
            meta = window_meta(&r.window);
            (
                vec![Field::new("person", DataType::UInt64, false)],
                vec![Arc::new(UInt64Array::from(r.persons.clone()))],
            )
        }
        QueryOutput::WhereWas(r) => {
            kind = "where-was";
            meta = window_meta(&r.window.unwrap_or_default());
            meta.push(("hourcell.person", r.person.to_string()));
            (
                vec![
                    Field::new("hour", timestamp_type(), false),
                    list_field("cells"),
                    list_field("addresses"),
                    list_field("sources"),
                ],
                vec![
                    timestamps(r.hours.iter().map(|h| Some(h.hour)).collect()),
                    list_of_strings(r.hours.iter().map(|h| h.cells.as_slice())),
                    list_of_strings(r.hours.iter().map(|h| h.addresses.as_slice())),
                    list_of_strings(r.hours.iter().map(|h| h.sources.as_slice())),
                ],
            )
        }
        QueryOutput::Occupancy(r) => {
            kind = "occupancy";
            meta = window_meta(&r.window.unwrap_or_default());
            // The window's distinct persons (not the sum of the hours).
            meta.push((
                "hourcell.distinct",
                if r.distinct_suppressed {
                    String::new()
                } else {
                    r.distinct.to_string()
                },
            ));
            meta.push((
                "hourcell.distinct_suppressed",
                r.distinct_suppressed.to_string(),
            ));
            meta.push(("hourcell.suppressed_below", r.suppressed_below.to_string()));
            (
                vec![
                    Field::new("hour", timestamp_type(), false),
                    Field::new("distinct", DataType::UInt64, true),
                    Field::new("suppressed", DataType::Boolean, false),
                ],
                vec![
                    timestamps(r.hours.iter().map(|h| Some(h.hour)).collect()),
                    Arc::new(UInt64Array::from_iter(
                        r.hours
                            .iter()
                            .map(|h| (!h.suppressed).then_some(h.distinct)),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        r.hours.iter().map(|h| Some(h.suppressed)),
                    )),
                ],
            )
        }
        QueryOutput::NoActivitySince(r) => {
            kind = "no-activity-since";
            meta = vec![
                ("hourcell.since", format_time(r.window.start)),
                ("hourcell.as_of", format_time(r.window.as_of)),
            ];
            (
                vec![
                    Field::new("person", DataType::UInt64, false),
                    Field::new("last_seen", timestamp_type(), true),
                ],
                vec![
                    Arc::new(UInt64Array::from_iter_values(
                        r.persons.iter().map(|p| p.person),
                    )),
                    timestamps(r.persons.iter().map(|p| p.last_seen).collect()),
                ],
            )
        }
        QueryOutput::Grid(r) => {
            kind = "grid";
            meta = window_meta(&r.window.unwrap_or_default());
            meta.push(("hourcell.level", r.level.to_string()));
            meta.push(("hourcell.suppressed_below", r.suppressed_below.to_string()));
            (
                vec![
                    Field::new("cell", DataType::Utf8, false),
                    Field::new("hour", timestamp_type(), true),
                    Field::new("distinct", DataType::UInt64, true),
                    Field::new("suppressed", DataType::Boolean, false),
                    Field::new("lat", DataType::Float64, false),
                    Field::new("lng", DataType::Float64, false),
                ],
                vec![
                    strings(r.cells.iter().map(|c| c.token.as_str())),
                    timestamps(r.cells.iter().map(|c| c.hour).collect()),
                    Arc::new(UInt64Array::from_iter(
                        r.cells
                            .iter()
                            .map(|c| (!c.suppressed).then_some(c.distinct)),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        r.cells.iter().map(|c| Some(c.suppressed)),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        r.cells.iter().map(|c| c.lat),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        r.cells.iter().map(|c| c.lng),
                    )),
                ],
            )
        }
    };
    meta.push(("hourcell.kind", kind.to_string()));
    let meta: HashMap<String, String> = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let schema = Schema::new(fields).with_metadata(meta);
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

/// The answer as a Parquet file (snappy-compressed columns).
pub fn to_parquet(out: &QueryOutput) -> Result<Vec<u8>, ColumnarError> {
    let batch = to_batch(out)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(buf)
}

/// The answer as an Arrow IPC stream (schema, one batch, end marker).
pub fn to_arrow_ipc(out: &QueryOutput) -> Result<Vec<u8>, ColumnarError> {
    let batch = to_batch(out)?;
    let mut buf = Vec::new();
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray as _;
    use arrow_array::types::{TimestampSecondType, UInt64Type};
    use arrow_array::Array as _;

    fn grid() -> QueryOutput {
        QueryOutput::Grid(v1::OccupancyGridResponse {
            window: Some(v1::EffectiveWindow {
                start: 0,
                end: 7200,
                as_of: 7200,
            }),
            level: 14,
            cells: vec![
                v1::GridCell {
                    token: "89c25".into(),
                    hour: Some(3600),
                    distinct: 7,
                    suppressed: false,
                    lat: 30.5,
                    lng: 120.25,
                },
                v1::GridCell {
                    token: "89c27".into(),
                    hour: None,
                    distinct: 0,
                    suppressed: true,
                    lat: -1.0,
                    lng: 2.0,
                },
            ],
            suppressed_below: 5,
            staleness_ms: 0,
        })
    }

    /// Both encodings read back to the batch they were written from, and a
    /// suppressed count is null with `suppressed` true.
    #[test]
    fn parquet_and_arrow_read_back_with_types_and_nulls() {
        let out = grid();
        let want = to_batch(&out).unwrap();
        let mut pq = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut pq, &to_parquet(&out).unwrap()).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq).unwrap();
        // The file's metadata is on the reader's schema (not each batch's).
        assert_eq!(reader.schema().metadata()["hourcell.level"], "14");
        let got: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].columns(), want.columns());
        assert_eq!(got[0].schema().field(1).data_type(), &timestamp_type());
        let ipc = to_arrow_ipc(&out).unwrap();
        let r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
        let got: Vec<RecordBatch> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![want.clone()]);

        let distinct = want.column(2).as_primitive::<UInt64Type>();
        assert_eq!((distinct.value(0), distinct.is_null(1)), (7, true));
        assert!(want.column(3).as_boolean().value(1));
        let hour = want.column(1).as_primitive::<TimestampSecondType>();
        assert_eq!((hour.value(0), hour.is_null(1)), (3600, true));
    }
}
