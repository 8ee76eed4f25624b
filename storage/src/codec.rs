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

/// Tag of the day-set encoding (cell-day and address-day slices).
const DAY_SET: u8 = 0x02;

/// The 24 hours of a UTC day as bits `0..24`.
pub const FULL_DAY: u32 = (1 << 24) - 1;

/// Who was in one cell (or at one address) during one UTC day: internal
/// ids, ascending and unique, each with the bit mask of the hours of the
/// day (bit `h` = hour `h`, 0..24) in which they were there.
///
/// One entry per person and day instead of one posting per person and
/// hour: people stay put for hours (home at night, work by day), so a
/// person-day in a cell costs an id delta and three mask bytes however many
/// hours it covers, and a day has one key where hourly slices had up to 24.
pub type DaySet = Vec<(u32, u32)>;

/// Encodes a day set. `set` must be sorted by id with unique ids and masks
/// inside [`FULL_DAY`].
pub fn encode_day_set(set: &[(u32, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + set.len() * 5);
    out.push(DAY_SET);
    put_varint(&mut out, set.len() as u64);
    let mut prev = 0u32;
    for (i, &(id, mask)) in set.iter().enumerate() {
        debug_assert!(i == 0 || id > prev, "day set ids must ascend");
        debug_assert!(mask != 0 && mask <= FULL_DAY);
        put_varint(&mut out, if i == 0 { id } else { id - prev } as u64);
        prev = id;
        out.extend_from_slice(&mask.to_le_bytes()[..3]);
    }
    out
}

pub fn decode_day_set(key: &[u8], v: &[u8]) -> Result<DaySet> {
    let mut out = Vec::new();
    decode_day_set_into(key, v, &mut out)?;
    Ok(out)
}

/// [`decode_day_set`] into `out` (cleared first), so that a reader of many
/// slices reuses one buffer.
pub fn decode_day_set_into(key: &[u8], v: &[u8], out: &mut DaySet) -> Result<()> {
    out.clear();
    let bad = || StorageError::corrupt(key, "truncated day set");
    if v.first() != Some(&DAY_SET) {
        return Err(StorageError::corrupt(key, "not a day set"));
    }
    let mut pos = 1;
    let n = get_varint(v, &mut pos).ok_or_else(bad)?;
    // Each entry takes at least four bytes; a count beyond that is garbage.
    if n > (v.len() as u64) / 4 + 1 {
        return Err(bad());
    }
    out.reserve(n as usize);
    let mut prev = 0u64;
    for i in 0..n {
        let d = get_varint(v, &mut pos).ok_or_else(bad)?;
        let id = if i == 0 { d } else { prev + d };
        if id > u32::MAX as u64 || (i > 0 && d == 0) {
            return Err(StorageError::corrupt(
                key,
                "day set ids out of order or range",
            ));
        }
        prev = id;
        let m = v.get(pos..pos + 3).ok_or_else(bad)?;
        pos += 3;
        let mask = u32::from_le_bytes([m[0], m[1], m[2], 0]);
        out.push((id as u32, mask));
    }
    Ok(())
}

/// Sorts `(key, hour mask)` pairs by key and ORs the masks of equal keys,
/// in place: the union of mask sets (day sets, person-day places).
fn fold_masks<K: Ord + Copy>(entries: &mut Vec<(K, u32)>) {
    entries.sort_unstable_by_key(|e| e.0);
    let mut w = 0;
    for r in 0..entries.len() {
        if w > 0 && entries[w - 1].0 == entries[r].0 {
            entries[w - 1].1 |= entries[r].1;
        } else {
            entries[w] = entries[r];
            w += 1;
        }
    }
    entries.truncate(w);
}

/// Sorts `(id, mask)` pairs by id and ORs the masks of equal ids: the union
/// of day sets, in place.
pub fn fold_day_set(entries: &mut DaySet) {
    fold_masks(entries);
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

/// A person-day's places grouped by (compact cell, address id, source
/// id), each with the mask of the hours of the day it covers. Sorted by the
/// triple, unique triples, masks non-zero.
type PlaceMasks = Vec<((u64, u32, u16), u32)>;

fn fold_place_masks(entries: &mut PlaceMasks) {
    fold_masks(entries);
}

fn encode_place_masks(masks: &[((u64, u32, u16), u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + masks.len() * 8);
    put_varint(&mut out, masks.len() as u64);
    let mut prev = 0u64;
    for &((cell, addr, src), mask) in masks {
        // Sorted by cell, so the delta is never negative.
        put_varint(&mut out, cell - prev);
        prev = cell;
        put_varint(&mut out, addr as u64);
        put_varint(&mut out, src as u64);
        out.extend_from_slice(&mask.to_le_bytes()[..3]);
    }
    out
}

fn decode_place_masks(key: &[u8], b: &[u8]) -> Result<PlaceMasks> {
    let bad = || StorageError::corrupt(key, "truncated place set");
    let mut pos = 0;
    let n = get_varint(b, &mut pos).ok_or_else(bad)?;
    if n > b.len() as u64 / 6 + 1 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut prev = 0u64;
    for _ in 0..n {
        let cell = prev
            .checked_add(get_varint(b, &mut pos).ok_or_else(bad)?)
            .ok_or_else(|| StorageError::corrupt(key, "cell out of range"))?;
        prev = cell;
        let addr = u32::try_from(get_varint(b, &mut pos).ok_or_else(bad)?)
            .map_err(|_| StorageError::corrupt(key, "address id out of range"))?;
        let src = u16::try_from(get_varint(b, &mut pos).ok_or_else(bad)?)
            .map_err(|_| StorageError::corrupt(key, "source id out of range"))?;
        let m = b.get(pos..pos + 3).ok_or_else(bad)?;
        pos += 3;
        let mask = u32::from_le_bytes([m[0], m[1], m[2], 0]);
        out.push(((cell, addr, src), mask));
    }
    Ok(out)
}

/// Encodes a person-day's places. Stored grouped by (cell, address,
/// source) with an hour mask each: a person spends many hours at the same
/// few places, so a day of ~7 entries shrinks to ~3 groups.
pub fn encode_places(places: &[RawPlace]) -> Vec<u8> {
    let mut masks: PlaceMasks = places
        .iter()
        .map(|&(h, c, a, s)| ((c, a, s), 1u32 << h))
        .collect();
    fold_place_masks(&mut masks);
    encode_place_masks(&masks)
}

/// Keeps only the hours in `keep` of a person-day's places; `None` if
/// nothing is left.
pub fn trim_places(key: &[u8], b: &[u8], keep: u32) -> Result<Option<Vec<u8>>> {
    let masks: PlaceMasks = decode_place_masks(key, b)?
        .into_iter()
        .filter_map(|(p, m)| (m & keep != 0).then_some((p, m & keep)))
        .collect();
    Ok((!masks.is_empty()).then(|| encode_place_masks(&masks)))
}

/// Decodes a person-day's places, sorted by (hour of day, cell, address,
/// source) and unique.
pub fn decode_places(key: &[u8], b: &[u8]) -> Result<Vec<RawPlace>> {
    let masks = decode_place_masks(key, b)?;
    let mut out = Vec::with_capacity(masks.len() * 2);
    for ((c, a, s), mask) in masks {
        if mask > FULL_DAY {
            return Err(StorageError::corrupt(key, "hour of day out of range"));
        }
        let mut m = mask;
        while m != 0 {
            let h = m.trailing_zeros();
            out.push((h as u8, c, a, s));
            m &= m - 1;
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Combines a stored value with merge operands. Slices and the person index
/// are sets (day sets union per id with their hour masks OR-ed), and the
/// merge is set union: associative, commutative and
/// idempotent, so it does not matter when or how often the engine combines
/// operands, and applying the same events twice changes nothing.
/// Any other key takes the last operand (a put).
pub fn merge_values<'a>(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>> {
    // A key of a shared engine's group: the store key follows the prefix.
    let key = crate::prefixed::strip(key);
    match key.first() {
        Some(&keys::CELL_DAY) | Some(&keys::ADDRESS_DAY) => {
            let mut acc = match existing {
                Some(v) => decode_day_set(key, v)?,
                None => Vec::new(),
            };
            for op in operands {
                acc.extend(decode_day_set(key, op)?);
            }
            fold_day_set(&mut acc);
            Ok(encode_day_set(&acc))
        }
        Some(&keys::HOUR_SLICE) => {
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
                Some(v) => decode_place_masks(key, v)?,
                None => Vec::new(),
            };
            for op in operands {
                acc.extend(decode_place_masks(key, op)?);
            }
            fold_place_masks(&mut acc);
            Ok(encode_place_masks(&acc))
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
        let k = keys::hour_slice(1);
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
        let k = keys::hour_slice(10);
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
    fn day_sets_round_trip_and_merge_per_id() {
        let k = keys::cell_day(3, 99);
        let a = vec![(1u32, 0b1), (7, FULL_DAY), (u32::MAX, 1 << 23)];
        assert_eq!(decode_day_set(&k, &encode_day_set(&a)).unwrap(), a);
        let b = vec![(1u32, 0b10), (8, 1)];
        let once = merge_values(&k, Some(&encode_day_set(&a)), [&encode_day_set(&b)[..]]).unwrap();
        let twice = merge_values(&k, Some(&once), [&encode_day_set(&a)[..]]).unwrap();
        assert_eq!(once, twice);
        assert_eq!(
            decode_day_set(&k, &once).unwrap(),
            vec![(1, 0b11), (7, FULL_DAY), (8, 1), (u32::MAX, 1 << 23)]
        );
        // A person-day in one place for 10 hours costs 4 bytes, not 10 ids.
        assert_eq!(encode_day_set(&[(5, 0b11_1111_1111)]).len(), 2 + 4);
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let k = keys::hour_slice(1);
        assert!(merge_values(&k, Some(&[1, 2, 3]), []).is_err());
        let ck = keys::cell_day(1, 1);
        assert!(merge_values(&ck, Some(&[2, 9, 1]), []).is_err());
        assert!(decode_day_set(&ck, &[2, 2, 1, 1, 0, 0, 0, 1, 0]).is_err());
        assert!(decode_day_set(&ck, &[1, 0]).is_err());
        let pk = keys::person_day(1, 1);
        assert!(decode_places(&pk, &[5, 1]).is_err());
    }
}
