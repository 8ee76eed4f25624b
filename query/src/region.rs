//! Regions: what "where" means in a query.
//!
//! A slice cell matches a spatial region when the cell *intersects* it
//! (S2's exact `intersects_cell`). A region is planned as a few contiguous
//! cell-id ranges (an S2 covering at levels up to the slice level), scanned
//! per hour; each cell found is then tested exactly, so the covering's
//! looseness never leaks into answers.
//!
//! A polygon region (a GeoJSON Polygon or MultiPolygon, holes included;
//! [`crate::polygon`]) follows the same rule with a planar reading of
//! "intersects": the polygon is a planar area in (lng, lat) degrees (RFC
//! 7946 draws its edges as straight lines there), and a cell is the
//! quadrilateral of its 4 vertices, also joined by straight lines in
//! (lng, lat). A cell matches when the two closed areas share a point: a
//! vertex of either lies inside the other, or edges cross or touch. Holes
//! must lie inside their outer ring (one that does not is refused), a
//! polygon may not span more than 180 degrees of longitude (split one that
//! crosses the antimeridian into a MultiPolygon), and rings may not meet.
//! The scan is planned from the polygon's bounding box (an S2 Rect, widened
//! by two cell diameters so that no matching cell is left out), then each
//! cell is tested exactly.

use std::collections::HashMap;

use hourcell_storage::cell::{self, valid_coordinates};
use parking_lot::Mutex;
use s2::cap::Cap;
use s2::cell::Cell;
use s2::cellid::CellID;
use s2::latlng::LatLng;
use s2::point::Point;
use s2::rect::Rect;
use s2::region::{Region as _, RegionCoverer};
use s2::s1::angle::{Angle, Rad};

use crate::error::{QueryError, Result};
use crate::polygon::{MultiPolygon, Prepared};

/// Mean Earth radius used for circle radii, in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_010.0;

/// The largest circle accepted, in metres (a quarter of the way round).
pub const MAX_RADIUS_M: f64 = 10_000_000.0;

/// Most items accepted in a cell or address list.
pub const MAX_LIST: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Region {
    Rect {
        lat_lo: f64,
        lng_lo: f64,
        lat_hi: f64,
        lng_hi: f64,
    },
    Circle {
        lat: f64,
        lng: f64,
        radius_m: f64,
    },
    /// S2 cell ids (any level).
    Cells(Vec<u64>),
    Addresses(Vec<String>),
    Area(String),
    /// A GeoJSON Polygon or MultiPolygon (planar in lng/lat; see the
    /// module doc).
    Polygon(MultiPolygon),
}

impl Region {
    /// Validates coordinates and sizes; the error names the field.
    pub fn validate(&self, field: &'static str) -> Result<()> {
        match self {
            Region::Rect {
                lat_lo,
                lng_lo,
                lat_hi,
                lng_hi,
            } => {
                let v = format!("{lat_lo},{lng_lo},{lat_hi},{lng_hi}");
                if !valid_coordinates(*lat_lo, *lng_lo) || !valid_coordinates(*lat_hi, *lng_hi) {
                    return Err(QueryError::invalid(
                        field,
                        v,
                        "latitudes must be in [-90, 90] and longitudes in [-180, 180]",
                    ));
                }
                if lat_lo > lat_hi {
                    return Err(QueryError::invalid(
                        field,
                        v,
                        "first latitude must not exceed the second",
                    ));
                }
                Ok(())
            }
            Region::Circle { lat, lng, radius_m } => {
                let v = format!("{lat},{lng},{radius_m}");
                if !valid_coordinates(*lat, *lng) {
                    return Err(QueryError::invalid(
                        field,
                        v,
                        "centre latitude must be in [-90, 90] and longitude in [-180, 180]",
                    ));
                }
                if !(radius_m.is_finite() && *radius_m > 0.0 && *radius_m <= MAX_RADIUS_M) {
                    return Err(QueryError::invalid(
                        field,
                        v,
                        format!("radius must be in (0, {MAX_RADIUS_M}] metres"),
                    ));
                }
                Ok(())
            }
            Region::Cells(c) => {
                if c.is_empty() || c.len() > MAX_LIST {
                    return Err(QueryError::invalid(
                        field,
                        c.len(),
                        format!("give 1 to {MAX_LIST} cell tokens"),
                    ));
                }
                Ok(())
            }
            Region::Addresses(a) => {
                if a.is_empty() || a.len() > MAX_LIST {
                    return Err(QueryError::invalid(
                        field,
                        a.len(),
                        format!("give 1 to {MAX_LIST} address codes"),
                    ));
                }
                Ok(())
            }
            Region::Area(a) => {
                if a.is_empty() {
                    return Err(QueryError::invalid(field, a, "area code is empty"));
                }
                Ok(())
            }
            Region::Polygon(p) => p.validate(field),
        }
    }

    pub fn is_spatial(&self) -> bool {
        matches!(
            self,
            Region::Rect { .. } | Region::Circle { .. } | Region::Cells(_) | Region::Polygon(_)
        )
    }
}

enum Shape {
    Rect(Rect),
    Cap(Cap),
    Cells,
    Polygon(Box<Prepared>),
}

/// A spatial region planned for one slice level: the cell ranges to scan
/// and an exact, memoised test for each slice cell found.
pub struct SpatialPlan {
    shape: Shape,
    /// Inclusive, sorted, non-overlapping ranges of slice-level cell ids.
    pub ranges: Vec<(u64, u64)>,
    memo: Mutex<HashMap<u64, bool, CellHash>>,
}

/// Hashes slice cell ids for the memo: SipHash (the default) was a third
/// of `matches`. A cell id's low bits are the same for every cell of a
/// level, so the mixing starts from the high ones.
#[derive(Default, Clone, Copy)]
struct CellHasher(u64);

impl std::hash::Hasher for CellHasher {
    fn finish(&self) -> u64 {
        let m = (self.0 ^ (self.0 >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        m ^ (m >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | self.0 >> 56) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type CellHash = std::hash::BuildHasherDefault<CellHasher>;

/// Memo entries reserved up front: a 1 km circle meets a few hundred slice
/// cells in its ranges, so the table is not regrown while it fills.
const MEMO_CELLS: usize = 512;

/// How many cells the covering may use: more cells, tighter ranges, more
/// seeks. 16 keeps a 1 km circle at level 16 to a handful of seeks per hour.
const COVERING_CELLS: usize = 16;

fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl SpatialPlan {
    /// Plans a spatial region (rect, circle, cells or polygon) for `level`.
    pub fn new(region: &Region, level: u8) -> Option<Self> {
        let coverer = RegionCoverer {
            min_level: 0,
            max_level: level,
            level_mod: 1,
            max_cells: COVERING_CELLS,
        };
        let (shape, covering): (Shape, Vec<u64>) = match region {
            Region::Rect {
                lat_lo,
                lng_lo,
                lat_hi,
                lng_hi,
            } => {
                let r = Rect::from_degrees(*lat_lo, *lng_lo, *lat_hi, *lng_hi);
                let cov = coverer.covering(&r).0.into_iter().map(|c| c.0).collect();
                (Shape::Rect(r), cov)
            }
            Region::Circle { lat, lng, radius_m } => {
                let centre = Point::from(LatLng::from_degrees(*lat, *lng));
                let angle: Angle = Rad(radius_m / EARTH_RADIUS_M).into();
                let c = Cap::from_center_angle(&centre, &angle);
                let cov = coverer.covering(&c).0.into_iter().map(|c| c.0).collect();
                (Shape::Cap(c), cov)
            }
            Region::Cells(ids) => {
                // A slice cell intersects a listed cell exactly when one
                // contains the other: finer cells map to their slice-level
                // parent, coarser ones to all slice cells under them.
                let cov = ids
                    .iter()
                    .map(|&id| {
                        let c = CellID(id);
                        if c.level() > level as u64 {
                            c.parent(level as u64).0
                        } else {
                            id
                        }
                    })
                    .collect();
                (Shape::Cells, cov)
            }
            Region::Polygon(mp) => {
                let p = Prepared::new(mp);
                let cov = coverer
                    .covering(&p.covering_rect(level))
                    .0
                    .into_iter()
                    .map(|c| c.0)
                    .collect();
                (Shape::Polygon(Box::new(p)), cov)
            }
            _ => return None,
        };
        let ranges = merge_ranges(covering.into_iter().map(cell::range).collect());
        Some(Self {
            shape,
            ranges,
            memo: Mutex::new(HashMap::with_capacity_and_hasher(
                MEMO_CELLS,
                CellHash::default(),
            )),
        })
    }

    /// Whether the slice cell intersects the region.
    pub fn matches(&self, slice_cell: u64) -> bool {
        match &self.shape {
            // Ranges are exact for cell lists.
            Shape::Cells => self
                .ranges
                .iter()
                .any(|&(lo, hi)| lo <= slice_cell && slice_cell <= hi),
            Shape::Rect(r) => *self
                .memo
                .lock()
                .entry(slice_cell)
                .or_insert_with(|| r.intersects_cell(&Cell::from(CellID(slice_cell)))),
            Shape::Cap(c) => *self
                .memo
                .lock()
                .entry(slice_cell)
                .or_insert_with(|| c.intersects_cell(&Cell::from(CellID(slice_cell)))),
            Shape::Polygon(p) => *self
                .memo
                .lock()
                .entry(slice_cell)
                .or_insert_with(|| p.intersects_cell(slice_cell)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourcell_storage::cell::cell_at;

    #[test]
    fn circle_plan_contains_the_centre_cell_and_excludes_far_cells() {
        let r = Region::Circle {
            lat: 30.27,
            lng: 120.15,
            radius_m: 1000.0,
        };
        let p = SpatialPlan::new(&r, 16).unwrap();
        let c = cell_at(30.27, 120.15, 16);
        assert!(p.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi));
        assert!(p.matches(c));
        assert!(
            !p.matches(cell_at(30.30, 120.15, 16)),
            "3 km north is outside"
        );
        assert!(
            p.matches(cell_at(30.2785, 120.15, 16)),
            "~950 m north is inside"
        );
    }

    #[test]
    fn cell_tokens_of_any_level_match_by_containment() {
        let fine = cell_at(30.27, 120.15, 20);
        let coarse = cell_at(30.27, 120.15, 10);
        let p = SpatialPlan::new(&Region::Cells(vec![fine]), 16).unwrap();
        assert!(p.matches(cell_at(30.27, 120.15, 16)));
        let p = SpatialPlan::new(&Region::Cells(vec![coarse]), 16).unwrap();
        assert!(p.matches(cell_at(30.27, 120.15, 16)));
        assert!(!p.matches(cell_at(-30.27, 120.15, 16)));
    }

    #[test]
    fn validation_names_the_field() {
        let e = Region::Circle {
            lat: 95.0,
            lng: 0.0,
            radius_m: 10.0,
        }
        .validate("circle")
        .unwrap_err()
        .to_string();
        assert!(e.contains("circle") && e.contains("95"), "{e}");
        assert!(Region::Rect {
            lat_lo: 1.0,
            lng_lo: 0.0,
            lat_hi: 0.0,
            lng_hi: 1.0
        }
        .validate("rect")
        .is_err());
        assert!(Region::Circle {
            lat: 0.0,
            lng: 0.0,
            radius_m: -1.0
        }
        .validate("circle")
        .is_err());
    }
}
