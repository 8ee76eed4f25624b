//! Value encodings and the merge function shared by every engine.

use roaring::RoaringBitmap;

use crate::error::{Result, StorageError};
use crate::keys;

/// Tag of the small-set encoding. Roaring's portable format starts with a
/// cookie whose first byte is 0x3A or 0x3B, so the two never collide.
const SMALL_SET: u8 = 0x01;

/// Sets up to this size are stored as delta-coded varints: most cell-hour
/// and address-hour slices hold a handful of persons, and roaring's
/// container headers would cost more than the ids themselves.
pub const SMALL_SET_MAX: u64 = 48;

pub fn encode_bitmap(b: &RoaringBitmap) -> Vec<u8> {
    if b.len() <= SMALL_SET_MAX {
        let mut out = Vec::with_capacity(2 + b.len() as usize * 3);
        out.push(SMALL_SET);
        put_varint(&mut out, b.len());
        let mut prev = 0u32;
        for (i, id) in b.iter().enumerate() {
            put_varint(&mut out, if i == 0 { id } else { id - prev } as u64);
            prev = id;
        }
        return out;
    }
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

pub fn decode_bitmap(key: &[u8], v: &[u8]) -> Result<RoaringBitmap> {
    if v.first() == Some(&SMALL_SET) {
        let bad = || StorageError::corrupt(key, "truncated small set");
        let mut pos = 1;
        let n = get_varint(v, &mut pos).ok_or_else(bad)?;
        let mut ids = Vec::with_capacity(n.min(SMALL_SET_MAX) as usize);
        let mut prev = 0u64;
        for i in 0..n {
            let d = get_varint(v, &mut pos).ok_or_else(bad)?;
            let id = if i == 0 { d } else { prev + d };
            if id > u32::MAX as u64 {
                return Err(StorageError::corrupt(key, "id out of range in small set"));
            }
            ids.push(id as u32);
            prev = id;
        }
        return RoaringBitmap::from_sorted_iter(ids)
            .map_err(|e| StorageError::corrupt(key, format!("small set not ascending: {e}")));
    }
    RoaringBitmap::deserialize_from(v).map_err(|e| StorageError::corrupt(key, e))
}

/// One place a person was during an hour, as stored in the person index
/// (one key per person and day): the hour within the day (0..24), the slice
/// cell shifted right by `2 * (30 - level)` (the cell's lowest set bit
/// stays, so the shift is reversible; 0 means "the address's cell"), the
/// address id (0 = none) and the source id.
pub type RawPlace = (u8, u64, u32, u16);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if shift > 63 {
            return None;
        }
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a sorted, deduplicated place set. Cells are zigzag delta-coded
/// against the previous entry: a person's cells within a day repeat or sit
/// close together, so most deltas take one byte.
pub fn encode_places(places: &[RawPlace]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + places.len() * 6);
    put_varint(&mut out, places.len() as u64);
    let mut prev = 0u64;
    for &(hour, cell, addr, src) in places {
        out.push(hour);
        put_varint(&mut out, zigzag(cell.wrapping_sub(prev) as i64));
        prev = cell;
        put_varint(&mut out, addr as u64);
        put_varint(&mut out, src as u64);
    }
    out
}

pub fn decode_places(key: &[u8], b: &[u8]) -> Result<Vec<RawPlace>> {
    let bad = || StorageError::corrupt(key, "truncated place set");
    let mut pos = 0;
    let n = get_varint(b, &mut pos).ok_or_else(bad)? as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    let mut prev = 0u64;
    for _ in 0..n {
        let hour = *b.get(pos).ok_or_else(bad)?;
        pos += 1;
        if hour >= 24 {
            return Err(StorageError::corrupt(key, "hour of day out of range"));
        }
        let cell = prev.wrapping_add(unzigzag(get_varint(b, &mut pos).ok_or_else(bad)?) as u64);
        prev = cell;
        let addr = get_varint(b, &mut pos).ok_or_else(bad)? as u32;
        let src = get_varint(b, &mut pos).ok_or_else(bad)? as u16;
        out.push((hour, cell, addr, src));
    }
    Ok(out)
}

/// Combines a stored value with merge operands. Slices and the person index
/// are sets, and the merge is set union: associative, commutative and
/// idempotent, so it does not matter when or how often the engine combines
/// operands, and applying the same events twice changes nothing.
/// Any other key takes the last operand (a put).
pub fn merge_values<'a>(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>> {
    match key.first() {
        Some(&keys::CELL_SLICE) | Some(&keys::ADDRESS_SLICE) | Some(&keys::HOUR_SLICE) => {
            let mut acc = match existing {
                Some(v) => decode_bitmap(key, v)?,
                None => RoaringBitmap::new(),
            };
            for op in operands {
                acc |= decode_bitmap(key, op)?;
            }
            Ok(encode_bitmap(&acc))
        }
        Some(&keys::PERSON) => {
            let mut acc = match existing {
                Some(v) => decode_places(key, v)?,
                None => Vec::new(),
            };
            for op in operands {
                acc.extend(decode_places(key, op)?);
            }
            acc.sort_unstable();
            acc.dedup();
            Ok(encode_places(&acc))
        }
        _ => {
            let mut last = existing.map(|v| v.to_vec());
            for op in operands {
                last = Some(op.to_vec());
            }
            Ok(last.unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_round_trip_in_both_encodings() {
        let k = keys::cell_slice(1, 1);
        for b in [
            RoaringBitmap::new(),
            RoaringBitmap::from_iter([0u32, 7, u32::MAX]),
            RoaringBitmap::from_iter(0..SMALL_SET_MAX as u32),
            RoaringBitmap::from_iter(0..SMALL_SET_MAX as u32 + 1),
            RoaringBitmap::from_iter((0..100_000u32).step_by(3)),
        ] {
            let e = encode_bitmap(&b);
            assert_eq!(e[0] == SMALL_SET, b.len() <= SMALL_SET_MAX);
            assert_eq!(decode_bitmap(&k, &e).unwrap(), b);
        }
        let small = encode_bitmap(&RoaringBitmap::from_iter([1000u32, 1001, 1002]));
        assert!(small.len() <= 6, "{} bytes", small.len());
    }

    #[test]
    fn places_round_trip() {
        let p = vec![
            (0, 5, 0, 1),
            (0, 5, 3, 2),
            (3, 900_000_000_001, 7, 0),
            (23, 0, 9, 1),
        ];
        let k = keys::person_day(1, 2);
        assert_eq!(decode_places(&k, &encode_places(&p)).unwrap(), p);
    }

    #[test]
    fn merge_is_union_and_idempotent() {
        let k = keys::cell_slice(10, 99);
        let a = encode_bitmap(&RoaringBitmap::from_iter([1u32, 2]));
        let b = encode_bitmap(&RoaringBitmap::from_iter([2u32, 3]));
        let once = merge_values(&k, Some(&a), [&b[..]]).unwrap();
        let twice = merge_values(&k, Some(&once), [&b[..], &a[..]]).unwrap();
        assert_eq!(once, twice);
        assert_eq!(
            decode_bitmap(&k, &once).unwrap(),
            RoaringBitmap::from_iter([1u32, 2, 3])
        );
        let pk = keys::person_day(1, 10);
        let x = encode_places(&[(1, 4, 0, 1)]);
        let y = encode_places(&[(0, 2, 1, 1), (1, 4, 0, 1)]);
        let m = merge_values(&pk, Some(&x), [&y[..], &x[..]]).unwrap();
        assert_eq!(
            decode_places(&pk, &m).unwrap(),
            vec![(0, 2, 1, 1), (1, 4, 0, 1)]
        );
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let k = keys::cell_slice(1, 1);
        assert!(merge_values(&k, Some(&[1, 2, 3]), []).is_err());
        let pk = keys::person_day(1, 1);
        assert!(decode_places(&pk, &[5, 1]).is_err());
    }
}
