//! Reads of data shards as they travel between nodes: [`ReadOp`] names
//! the read (one op for every shard of a request), [`serve_read`] runs it
//! on a replica held here, and the reply is bincode that the asking side
//! decodes ([`decode_answer`] for the reads of a query's fan-out, a
//! [`SliceRead`] on the asking side).

use hourcell_query::{DayKeys, QueryError, SliceAnswer, SliceRead, SliceReader};
use hourcell_storage::shard::week_of_day;
use hourcell_storage::{DaySet, PlaceEntry};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::types::ShardStore;

/// A read of one data shard, served by a node that holds a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadOp {
    CellDays {
        day: i64,
        lo: u64,
        hi: u64,
    },
    CellDaysIn {
        day: i64,
        ranges: Vec<(u64, u64)>,
    },
    AddressDay {
        day: i64,
        address_id: u32,
    },
    HourSlices {
        from: i64,
        to: i64,
    },
    /// The hour slices in `from..before`, latest first, and whether the
    /// shard holds any hour before `from`.
    HourSlicesRev {
        before: i64,
        from: i64,
    },
    PersonHours {
        person: u64,
        from: i64,
        to: i64,
    },
    /// At most `limit` hours of person `id`'s entries before `before`,
    /// latest first, and whether there are more.
    PersonHoursRev {
        id: u32,
        before: i64,
        limit: u32,
    },
    ScanPersonDays {
        from_day: i64,
        to_day: i64,
    },
    /// The cell slices of `ranges` on each of `days` (ascending); a cell
    /// shard reads only the days of its week.
    CellDaysMany {
        days: Vec<i64>,
        ranges: Vec<(u64, u64)>,
    },
    /// The slices of addresses `ids` on each of `days`, as `CellDaysMany`.
    AddressDays {
        days: Vec<i64>,
        ids: Vec<u32>,
    },
}

/// How a node says it cannot decode a read op: a newer node asked it for
/// a read it does not know. The asker falls back to older reads.
pub const UNKNOWN_OP: &str = "unknown shard read op";

/// What releases before [`UNKNOWN_OP`] said in its place.
const UNKNOWN_OP_BEFORE: &str = "bad reply from a shard replica";

/// Whether a node's refusal says it does not know the op it was sent.
pub fn is_unknown_op(refusal: &str) -> bool {
    refusal.contains(UNKNOWN_OP) || refusal.contains(UNKNOWN_OP_BEFORE)
}

/// Decodes an op as sent in `ShardReadRequest.op`: an op this release does
/// not know is refused with [`UNKNOWN_OP`].
pub fn decode_op(v: &[u8]) -> Result<ReadOp, QueryError> {
    bincode::serde::decode_from_slice(v, bincode::config::standard())
        .map(|(x, _)| x)
        .map_err(|e| {
            QueryError::UnknownRead(format!(
                "{UNKNOWN_OP} (is this node older than the sender?): {e}"
            ))
        })
}

impl ReadOp {
    /// The op as sent in `ShardReadRequest.op` (and `ShardReadManyRequest.op`).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The op as a cell shard of week `week` runs it: a read of several
    /// days keeps only the days of that week (the others are another
    /// shard's).
    pub fn for_week(&self, week: i64) -> std::borrow::Cow<'_, ReadOp> {
        use std::borrow::Cow;
        let keep = |days: &[i64]| -> Vec<i64> {
            days.iter()
                .copied()
                .filter(|&d| week_of_day(d) == week)
                .collect()
        };
        match self {
            ReadOp::CellDaysMany { days, ranges } => Cow::Owned(ReadOp::CellDaysMany {
                days: keep(days),
                ranges: ranges.clone(),
            }),
            ReadOp::AddressDays { days, ids } => Cow::Owned(ReadOp::AddressDays {
                days: keep(days),
                ids: ids.clone(),
            }),
            other => Cow::Borrowed(other),
        }
    }
}

impl From<&SliceRead> for ReadOp {
    fn from(r: &SliceRead) -> Self {
        match r {
            SliceRead::CellDays { day, lo, hi } => ReadOp::CellDays {
                day: *day,
                lo: *lo,
                hi: *hi,
            },
            SliceRead::CellDaysIn { day, ranges } => ReadOp::CellDaysIn {
                day: *day,
                ranges: ranges.clone(),
            },
            SliceRead::AddressDay { day, address_id } => ReadOp::AddressDay {
                day: *day,
                address_id: *address_id,
            },
            SliceRead::HourSlices { from, to } => ReadOp::HourSlices {
                from: *from,
                to: *to,
            },
            SliceRead::HourSlicesStep { before, from } => ReadOp::HourSlicesRev {
                before: *before,
                from: *from,
            },
            SliceRead::DaySets { days, keys } => match keys {
                DayKeys::Cells(ranges) => ReadOp::CellDaysMany {
                    days: days.clone(),
                    ranges: ranges.clone(),
                },
                DayKeys::Addresses(ids) => ReadOp::AddressDays {
                    days: days.clone(),
                    ids: ids.clone(),
                },
            },
        }
    }
}

/// A replica's reply to `read` (sent as the [`ReadOp`] it converts to).
pub fn decode_answer(read: &SliceRead, reply: &[u8]) -> Result<SliceAnswer, QueryError> {
    Ok(match read {
        SliceRead::CellDays { .. } | SliceRead::CellDaysIn { .. } => {
            SliceAnswer::Cells(decode::<Vec<(u64, DaySet)>>(reply)?)
        }
        SliceRead::AddressDay { .. } => SliceAnswer::Day(decode(reply)?),
        SliceRead::HourSlices { .. } => SliceAnswer::Hours(bitmaps(decode(reply)?)?),
        SliceRead::HourSlicesStep { .. } => {
            let (got, earlier): (WireSlices, bool) = decode(reply)?;
            SliceAnswer::Step((bitmaps(got)?, earlier))
        }
        SliceRead::DaySets { .. } => SliceAnswer::DaySets(decode(reply)?),
    })
}

fn bitmaps(got: WireSlices) -> Result<Vec<(i64, RoaringBitmap)>, QueryError> {
    got.into_iter()
        .map(|(h, b)| Ok((h, bitmap_from(&b)?)))
        .collect()
}

/// A place entry on the wire: cell, address code, source label.
pub(crate) type WireEntry = (u64, Option<String>, String);
pub(crate) type WireHours = Vec<(i64, Vec<WireEntry>)>;
pub(crate) type WireSlices = Vec<(i64, Vec<u8>)>;

fn to_wire(entries: Vec<PlaceEntry>) -> Vec<WireEntry> {
    entries
        .into_iter()
        .map(|e| (e.cell, e.address, e.source))
        .collect()
}

pub(crate) fn from_wire(entries: Vec<WireEntry>) -> Vec<PlaceEntry> {
    entries
        .into_iter()
        .map(|(cell, address, source)| PlaceEntry {
            cell,
            address,
            source,
        })
        .collect()
}

fn bitmap_bytes(b: &RoaringBitmap) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut v).expect("writing to a Vec");
    v
}

pub(crate) fn bitmap_from(v: &[u8]) -> Result<RoaringBitmap, QueryError> {
    RoaringBitmap::deserialize_from(v)
        .map_err(|e| QueryError::Unavailable(format!("bad bitmap from a shard replica: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding to a Vec")
}

pub fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, QueryError> {
    bincode::serde::decode_from_slice(v, bincode::config::standard())
        .map(|(x, _)| x)
        .map_err(|e| QueryError::Unavailable(format!("bad reply from a shard replica: {e}")))
}

/// Runs a read on a replica held here (the serving side).
pub fn serve_read(store: &ShardStore, op: &ReadOp) -> Result<Vec<u8>, QueryError> {
    let s: &dyn SliceReader = store;
    Ok(match *op {
        ReadOp::CellDays { day, lo, hi } => {
            let mut out: Vec<(u64, DaySet)> = Vec::new();
            s.cell_days(day, lo, hi, &mut |c, set| out.push((c, set.to_vec())))?;
            encode(&out)
        }
        ReadOp::CellDaysIn { day, ref ranges } => {
            let mut out: Vec<(u64, DaySet)> = Vec::new();
            s.cell_days_in(day, ranges, &mut |_| true, &mut |c, set| {
                out.push((c, set.to_vec()))
            })?;
            encode(&out)
        }
        ReadOp::AddressDay { day, address_id } => encode(&s.address_day(day, address_id)?),
        ReadOp::HourSlices { from, to } => {
            let mut out: WireSlices = Vec::new();
            s.hour_slices(from, to, &mut |h, b| out.push((h, bitmap_bytes(&b))))?;
            encode(&out)
        }
        ReadOp::HourSlicesRev { before, from } => {
            let mut out: WireSlices = Vec::new();
            let mut earlier = false;
            s.hour_slices_rev(before, &mut |h, b| {
                if h < from {
                    earlier = true;
                    return false;
                }
                out.push((h, bitmap_bytes(&b)));
                true
            })?;
            encode(&(out, earlier))
        }
        ReadOp::PersonHours { person, from, to } => {
            let out: WireHours = s
                .person_hours(person, from, to)?
                .into_iter()
                .map(|(h, e)| (h, to_wire(e)))
                .collect();
            encode(&out)
        }
        ReadOp::PersonHoursRev { id, before, limit } => {
            let mut out: WireHours = Vec::new();
            let mut more = false;
            store.person_hours_rev(id, hourcell_storage::keys::MIN_HOUR, before, &mut |h, e| {
                if out.len() >= limit as usize {
                    more = true;
                    return false;
                }
                out.push((h, to_wire(e)));
                true
            })?;
            encode(&(out, more))
        }
        ReadOp::CellDaysMany {
            ref days,
            ref ranges,
        } => day_sets(s, days, &DayKeys::Cells(ranges.clone()))?,
        ReadOp::AddressDays { ref days, ref ids } => {
            day_sets(s, days, &DayKeys::Addresses(ids.clone()))?
        }
        ReadOp::ScanPersonDays { from_day, to_day } => {
            let mut out: Vec<(u32, Vec<(i64, u64, u32, u16)>)> = Vec::new();
            s.scan_person_days(from_day, to_day, &mut |id, places| {
                out.push((
                    id,
                    places
                        .iter()
                        .map(|p| (p.hour, p.cell, p.address, p.source))
                        .collect(),
                ));
                Ok(())
            })?;
            encode(&out)
        }
    })
}

fn day_sets(s: &dyn SliceReader, days: &[i64], keys: &DayKeys) -> Result<Vec<u8>, QueryError> {
    let mut out: hourcell_query::batch::DaySets = Vec::new();
    s.day_sets(days, keys, &mut |_| true, &mut |d, k, set| {
        out.push((d, k, set.to_vec()))
    })?;
    Ok(encode(&out))
}
