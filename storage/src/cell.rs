//! S2 cell helpers: the mapping from a point to its slice cell, and tokens.

use s2::cellid::CellID;
use s2::latlng::LatLng;

/// The S2 cell at `level` that contains the point. Callers validate the
/// coordinates first (finite, |lat| <= 90, |lng| <= 180).
pub fn cell_at(lat: f64, lng: f64, level: u8) -> u64 {
    let leaf = CellID::from(LatLng::from_degrees(lat, lng));
    leaf.parent(level as u64).0
}

/// Parses a cell token (hex id without trailing zeros), at any level.
pub fn parse_token(token: &str) -> Option<u64> {
    let t = token.trim();
    if t.is_empty() || t.len() > 16 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let id = CellID::from_token(t).0;
    valid_id(id).then_some(id)
}

/// S2's validity rule (a face below 6, the lowest set bit at an even
/// position), computed without the s2 crate's `is_valid`, which negates
/// the id as an i64 and overflows on hostile input like `8`.
pub fn valid_id(id: u64) -> bool {
    let lsb = id & id.wrapping_neg();
    (id >> 61) < 6 && lsb & 0x1555_5555_5555_5555 != 0
}

pub fn token(cell: u64) -> String {
    CellID(cell).to_token()
}

/// The cell's centre, (lat, lng) in degrees.
pub fn center(cell: u64) -> (f64, f64) {
    let c = LatLng::from(CellID(cell));
    (c.lat.deg(), c.lng.deg())
}

/// The cell's four corners, (lat, lng) in degrees, counter-clockwise.
pub fn corners(cell: u64) -> [(f64, f64); 4] {
    let c = s2::cell::Cell::from(CellID(cell));
    [0, 1, 2, 3].map(|k| {
        let v = LatLng::from(c.vertex(k));
        (v.lat.deg(), v.lng.deg())
    })
}

pub fn level(cell: u64) -> u8 {
    CellID(cell).level() as u8
}

/// The inclusive range of leaf-level ids a cell covers; every descendant of
/// the cell, at any level, lies inside it.
pub fn range(cell: u64) -> (u64, u64) {
    let c = CellID(cell);
    (c.range_min().0, c.range_max().0)
}

/// Shift that turns a slice-level cell id into its compact stored form.
pub fn compact_shift(level: u8) -> u32 {
    2 * (30 - level as u32)
}

/// Whether lat/lng are usable coordinates.
pub fn valid_coordinates(lat: f64, lng: f64) -> bool {
    lat.is_finite()
        && lng.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && (-180.0..=180.0).contains(&lng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = cell_at(30.2741, 120.1551, 16);
        assert_eq!(level(c), 16);
        assert_eq!(parse_token(&token(c)), Some(c));
        assert_eq!(parse_token("zz"), None);
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token("0"), None);
    }

    #[test]
    fn compact_form_is_reversible() {
        let c = cell_at(-33.9, 18.4, 16);
        let s = compact_shift(16);
        assert_eq!((c >> s) << s, c);
    }
}
