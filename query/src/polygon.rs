//! Polygon regions: GeoJSON (RFC 7946) Polygons and MultiPolygons, holes
//! included, and the exact test of a slice cell against them.
//!
//! # What "intersects" means
//!
//! GeoJSON draws a polygon's edges as straight lines in (longitude,
//! latitude); an S2 cell's edges are geodesics. The two are reconciled by
//! doing all polygon geometry in the plane of (lng, lat) degrees:
//!
//! - A polygon is the planar area of its rings by the even-odd rule: a
//!   point is in it when it is inside the outer ring and inside none of its
//!   holes (validation makes the two rules the same, below). Ring winding is
//!   ignored (RFC 7946 asks parsers not to reject the other winding). A
//!   MultiPolygon is the union of its polygons, which may touch or overlap.
//! - A cell is its boundary quadrilateral: its 4 vertices in (lng, lat)
//!   degrees joined by straight lines, with longitudes unwrapped when the
//!   cell straddles the antimeridian (it is then tested on both sides).
//! - A cell intersects the polygon when the two closed areas share a point:
//!   a vertex of either is inside the other, or an edge of one crosses or
//!   touches an edge of the other. A point exactly on a polygon's edge is
//!   therefore "in" for cells, as for rect and circle.
//!
//! The difference between a cell's geodesic edges and its quadrilateral is
//! below a millimetre for a level-16 cell; it matters only in that the
//! answer is defined by the quadrilateral.
//!
//! # What is refused
//!
//! [`MultiPolygon::validate`]: no polygons; more than [`MAX_VERTICES`]
//! positions in all; a polygon without rings; coordinates that are not
//! finite or out of range; a ring of fewer than 4 positions (or fewer than
//! 4 once repeated consecutive positions are dropped); a ring that is not
//! closed (first position differs from the last); a polygon whose
//! positions span more than 180 degrees of longitude (it crosses the
//! antimeridian: split it at ±180 into a MultiPolygon); a ring that
//! intersects itself or another ring of its polygon (any two edges that
//! meet, other than consecutive edges at their shared vertex — so rings
//! may not touch either); a hole that is not inside its outer ring; a hole
//! inside another hole.
//!
//! # Speed
//!
//! Edges are precomputed once per query and bucketed into horizontal bands
//! of the polygon's bounding box ([`Prepared`]): a point is tested against
//! the edges of its band only (a ray cast east), a cell against the edges
//! of the bands its quadrilateral spans. A town-sized polygon of 10,000
//! vertices costs a cell a few dozen edge tests, not 10,000.

use s2::cell::Cell;
use s2::cellid::CellID;
use s2::latlng::LatLng;
use s2::rect::Rect;

use crate::error::{QueryError, Result};

/// Most positions accepted in one polygon region (all rings of all
/// polygons, closing positions included).
pub const MAX_VERTICES: usize = 10_000;

/// A position in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vertex {
    pub lat: f64,
    pub lng: f64,
}

/// A polygon: its first ring is the outer boundary, the others are holes.
/// Each ring is closed (its last position repeats the first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Polygon {
    pub rings: Vec<Vec<Vertex>>,
}

/// The union of its polygons. A GeoJSON Polygon is a MultiPolygon of one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiPolygon {
    pub polygons: Vec<Polygon>,
}

/// A bounding box in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub lat_lo: f64,
    pub lat_hi: f64,
    pub lng_lo: f64,
    pub lng_hi: f64,
}

impl Bounds {
    fn of<'a>(points: impl IntoIterator<Item = &'a Vertex>) -> Option<Bounds> {
        let mut b: Option<Bounds> = None;
        for p in points {
            let x = b.get_or_insert(Bounds {
                lat_lo: p.lat,
                lat_hi: p.lat,
                lng_lo: p.lng,
                lng_hi: p.lng,
            });
            x.lat_lo = x.lat_lo.min(p.lat);
            x.lat_hi = x.lat_hi.max(p.lat);
            x.lng_lo = x.lng_lo.min(p.lng);
            x.lng_hi = x.lng_hi.max(p.lng);
        }
        b
    }
}

impl MultiPolygon {
    /// Positions in all rings, closing positions included.
    pub fn vertex_count(&self) -> usize {
        self.polygons
            .iter()
            .flat_map(|p| &p.rings)
            .map(Vec::len)
            .sum()
    }

    pub fn bounds(&self) -> Option<Bounds> {
        Bounds::of(self.polygons.iter().flat_map(|p| &p.rings).flatten())
    }

    /// A short description for messages and the audit log: counts and the
    /// bounding box, never every position.
    pub fn summary(&self) -> String {
        let rings: usize = self.polygons.iter().map(|p| p.rings.len()).sum();
        let mut s = format!(
            "{} polygon(s), {rings} ring(s), {} position(s)",
            self.polygons.len(),
            self.vertex_count()
        );
        if let Some(b) = self.bounds() {
            s += &format!(
                ", lat {}..{}, lng {}..{}",
                b.lat_lo, b.lat_hi, b.lng_lo, b.lng_hi
            );
        }
        s
    }

    /// Checks the rules in the module doc; the error names `field`, the
    /// polygon and ring (counted from 1) and the problem.
    pub fn validate(&self, field: &'static str) -> Result<()> {
        let bad = |reason: String| Err(QueryError::invalid(field, self.summary(), reason));
        if self.polygons.is_empty() {
            return bad("give at least one polygon".into());
        }
        let n = self.vertex_count();
        if n > MAX_VERTICES {
            return bad(format!(
                "too many vertices: {n} positions, at most {MAX_VERTICES} are accepted"
            ));
        }
        for (pi, poly) in self.polygons.iter().enumerate() {
            let p = pi + 1;
            if poly.rings.is_empty() {
                return bad(format!("polygon {p} has no rings"));
            }
            for (ri, ring) in poly.rings.iter().enumerate() {
                let r = ri + 1;
                for (i, v) in ring.iter().enumerate() {
                    if !hourcell_storage::cell::valid_coordinates(v.lat, v.lng) {
                        return bad(format!(
                            "polygon {p} ring {r} position {}: [{}, {}] is out of range \
                             (longitude must be in [-180, 180] and latitude in [-90, 90])",
                            i + 1,
                            v.lng,
                            v.lat
                        ));
                    }
                }
                if ring.len() < 4 {
                    return bad(format!(
                        "polygon {p} ring {r} has {} position(s): a ring needs at least 4 \
                         (3 corners and the closing position)",
                        ring.len()
                    ));
                }
                let (first, last) = (ring[0], ring[ring.len() - 1]);
                if first != last {
                    return bad(format!(
                        "polygon {p} ring {r} is not closed: its first position [{}, {}] \
                         differs from its last [{}, {}]",
                        first.lng, first.lat, last.lng, last.lat
                    ));
                }
                if dedup(ring).len() < 4 {
                    return bad(format!(
                        "polygon {p} ring {r} has fewer than 3 distinct corners: a ring \
                         needs at least 4 positions besides repeats"
                    ));
                }
            }
            if let Some(b) = Bounds::of(poly.rings.iter().flatten()) {
                if b.lng_hi - b.lng_lo > 180.0 {
                    return bad(format!(
                        "polygon {p} spans {} degrees of longitude: polygons crossing the \
                         antimeridian are not supported (more than 180 degrees wide); split \
                         it at ±180 into a MultiPolygon",
                        b.lng_hi - b.lng_lo
                    ));
                }
            }
            check_simple(poly).map_err(|reason| {
                QueryError::invalid(field, self.summary(), format!("polygon {p}: {reason}"))
            })?;
        }
        Ok(())
    }
}

/// A ring without consecutive repeated positions (still closed).
fn dedup(ring: &[Vertex]) -> Vec<Vertex> {
    let mut out: Vec<Vertex> = Vec::with_capacity(ring.len());
    for v in ring {
        if out.last() != Some(v) {
            out.push(*v);
        }
    }
    out
}

// ---------------------------------------------------------------- geometry

/// (x, y) = (lng, lat) in degrees.
type Pt = (f64, f64);

fn pt(v: &Vertex) -> Pt {
    (v.lng, v.lat)
}

fn orient(a: Pt, b: Pt, c: Pt) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

/// Whether `c`, collinear with `a`-`b`, lies on the closed segment.
fn within(a: Pt, b: Pt, c: Pt) -> bool {
    a.0.min(b.0) <= c.0 && c.0 <= a.0.max(b.0) && a.1.min(b.1) <= c.1 && c.1 <= a.1.max(b.1)
}

/// Whether the closed segments `p1`-`p2` and `q1`-`q2` share a point.
fn segments_meet(p1: Pt, p2: Pt, q1: Pt, q2: Pt) -> bool {
    let d1 = orient(q1, q2, p1);
    let d2 = orient(q1, q2, p2);
    let d3 = orient(p1, p2, q1);
    let d4 = orient(p1, p2, q2);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && within(q1, q2, p1))
        || (d2 == 0.0 && within(q1, q2, p2))
        || (d3 == 0.0 && within(p1, p2, q1))
        || (d4 == 0.0 && within(p1, p2, q2))
}

/// Whether the edge `a`-`b` crosses the ray east from `p` (half-open in y,
/// so a ray through a vertex counts it once).
fn crosses_ray(a: Pt, b: Pt, p: Pt) -> bool {
    (a.1 > p.1) != (b.1 > p.1) && p.0 < a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1)
}

/// Even-odd point in a closed ring (boundary points may go either way).
fn in_ring(ring: &[Pt], p: Pt) -> bool {
    let mut odd = false;
    for w in ring.windows(2) {
        if crosses_ray(w[0], w[1], p) {
            odd = !odd;
        }
    }
    odd
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    a: Pt,
    b: Pt,
    poly: u32,
    ring: u32,
    /// Index within its ring (after dropping repeated positions).
    idx: u32,
    /// Edges in its ring.
    of: u32,
}

impl Edge {
    fn y_range(&self) -> (f64, f64) {
        (self.a.1.min(self.b.1), self.a.1.max(self.b.1))
    }

    fn x_range(&self) -> (f64, f64) {
        (self.a.0.min(self.b.0), self.a.0.max(self.b.0))
    }
}

/// Edges bucketed into horizontal bands of equal height (CSR layout): an
/// edge is in every band its y-range meets.
#[derive(Debug)]
struct Bands {
    y0: f64,
    height: f64,
    offsets: Vec<u32>,
    items: Vec<u32>,
}

/// Bucket entries allowed per edge before the bands are made coarser (an
/// edge spanning many bands is listed in each).
const BAND_ENTRIES_PER_EDGE: usize = 8;

impl Bands {
    fn new(edges: &[Edge], y0: f64, y1: f64) -> Bands {
        // About 4 edges per band for a polygon of short edges.
        let mut n = (edges.len() / 4).clamp(1, 4096);
        loop {
            let b = Bands::with(edges, y0, y1, n);
            if n == 1 || b.items.len() <= BAND_ENTRIES_PER_EDGE * edges.len() {
                return b;
            }
            n /= 2;
        }
    }

    fn with(edges: &[Edge], y0: f64, y1: f64, n: usize) -> Bands {
        let span = y1 - y0;
        let height = if span > 0.0 { span / n as f64 } else { 1.0 };
        let mut b = Bands {
            y0,
            height,
            offsets: vec![0; n + 1],
            items: Vec::new(),
        };
        for e in edges {
            let (lo, hi) = e.y_range();
            for k in b.band(lo)..=b.band(hi) {
                b.offsets[k + 1] += 1;
            }
        }
        for k in 0..n {
            b.offsets[k + 1] += b.offsets[k];
        }
        let mut fill = b.offsets.clone();
        b.items = vec![0; b.offsets[n] as usize];
        for (i, e) in edges.iter().enumerate() {
            let (lo, hi) = e.y_range();
            for k in b.band(lo)..=b.band(hi) {
                b.items[fill[k] as usize] = i as u32;
                fill[k] += 1;
            }
        }
        b
    }

    fn count(&self) -> usize {
        self.offsets.len() - 1
    }

    fn band(&self, y: f64) -> usize {
        let k = ((y - self.y0) / self.height).floor();
        if k.is_nan() || k < 0.0 {
            0
        } else {
            (k as usize).min(self.count() - 1)
        }
    }

    fn items(&self, k: usize) -> &[u32] {
        &self.items[self.offsets[k] as usize..self.offsets[k + 1] as usize]
    }
}

/// A polygon region ready to test cells and points against: its edges,
/// bucketed by band. Built from any input; meaningful for a valid one.
#[derive(Debug)]
pub struct Prepared {
    edges: Vec<Edge>,
    bands: Bands,
    bounds: Option<Bounds>,
}

impl Prepared {
    pub fn new(mp: &MultiPolygon) -> Prepared {
        Prepared::from_polygons(mp.polygons.iter())
    }

    fn from_polygons<'a>(polys: impl Iterator<Item = &'a Polygon>) -> Prepared {
        let mut edges = Vec::new();
        for (pi, poly) in polys.enumerate() {
            for (ri, ring) in poly.rings.iter().enumerate() {
                let ring = dedup(ring);
                let of = ring.len().saturating_sub(1) as u32;
                for (k, w) in ring.windows(2).enumerate() {
                    edges.push(Edge {
                        a: pt(&w[0]),
                        b: pt(&w[1]),
                        poly: pi as u32,
                        ring: ri as u32,
                        idx: k as u32,
                        of,
                    });
                }
            }
        }
        let bounds = Bounds::of(
            edges
                .iter()
                .flat_map(|e| [e.a, e.b])
                .map(|(lng, lat)| Vertex { lat, lng })
                .collect::<Vec<_>>()
                .iter(),
        );
        let (y0, y1) = bounds.map_or((0.0, 1.0), |b| (b.lat_lo, b.lat_hi));
        Prepared {
            bands: Bands::new(&edges, y0, y1),
            edges,
            bounds,
        }
    }

    fn in_bounds(&self, p: Pt) -> bool {
        self.bounds.is_some_and(|b| {
            b.lng_lo <= p.0 && p.0 <= b.lng_hi && b.lat_lo <= p.1 && p.1 <= b.lat_hi
        })
    }

    /// Whether the point is inside the region (even-odd per polygon, any
    /// polygon). Points exactly on an edge may go either way.
    pub fn contains(&self, lat: f64, lng: f64) -> bool {
        self.contains_pt((lng, lat))
    }

    fn contains_pt(&self, p: Pt) -> bool {
        if !self.in_bounds(p) {
            return false;
        }
        // A band lists its edges in order, so each polygon's edges come
        // together: its parity is known when the next polygon starts.
        let (mut poly, mut odd) = (u32::MAX, false);
        for &i in self.bands.items(self.bands.band(p.1)) {
            let e = &self.edges[i as usize];
            if e.poly != poly {
                if odd {
                    return true;
                }
                (poly, odd) = (e.poly, false);
            }
            if crosses_ray(e.a, e.b, p) {
                odd = !odd;
            }
        }
        odd
    }

    /// Whether the closed quadrilateral (any simple polygon of 4 vertices,
    /// straight edges in lng/lat, no unwrapping) meets the region.
    pub fn intersects_quad(&self, quad: &[Vertex; 4]) -> bool {
        let q: [Pt; 5] = [
            pt(&quad[0]),
            pt(&quad[1]),
            pt(&quad[2]),
            pt(&quad[3]),
            pt(&quad[0]),
        ];
        let Some(qb) = Bounds::of(quad.iter()) else {
            return false;
        };
        let Some(b) = self.bounds else {
            return false;
        };
        if qb.lng_hi < b.lng_lo
            || qb.lng_lo > b.lng_hi
            || qb.lat_hi < b.lat_lo
            || qb.lat_lo > b.lat_hi
        {
            return false;
        }
        for k in self.bands.band(qb.lat_lo)..=self.bands.band(qb.lat_hi) {
            for &i in self.bands.items(k) {
                let e = &self.edges[i as usize];
                let (xl, xh) = e.x_range();
                let (yl, yh) = e.y_range();
                if xh < qb.lng_lo || xl > qb.lng_hi || yh < qb.lat_lo || yl > qb.lat_hi {
                    continue;
                }
                // Every vertex starts one edge: a polygon vertex inside the
                // quad is found here.
                if in_ring(&q, e.a) {
                    return true;
                }
                if q.windows(2).any(|w| segments_meet(w[0], w[1], e.a, e.b)) {
                    return true;
                }
            }
        }
        // No boundaries meet: the quad is wholly inside or wholly outside.
        self.contains_pt(q[0])
    }

    /// Whether the S2 cell meets the region (see the module doc).
    pub fn intersects_cell(&self, cell: u64) -> bool {
        let q = cell_quad(cell);
        let lo = q.iter().map(|v| v.lng).fold(f64::INFINITY, f64::min);
        let hi = q.iter().map(|v| v.lng).fold(f64::NEG_INFINITY, f64::max);
        if hi - lo <= 180.0 {
            return self.intersects_quad(&q);
        }
        // Straddles the antimeridian: its east and its west copy.
        let shift = |d: f64, neg: bool| {
            q.map(|v| Vertex {
                lat: v.lat,
                lng: if (v.lng < 0.0) == neg {
                    v.lng + d
                } else {
                    v.lng
                },
            })
        };
        self.intersects_quad(&shift(360.0, true)) || self.intersects_quad(&shift(-360.0, false))
    }

    /// The rectangle whose S2 covering plans the scan at `level`: the
    /// bounding box, widened so that every cell of `level` whose
    /// quadrilateral meets the box is covered (a quadrilateral may bulge
    /// past its geodesic cell by a little; twice a cell's diameter of margin
    /// in latitude, and that over the cosine of the latitude in longitude).
    pub fn covering_rect(&self, level: u8) -> Rect {
        let Some(b) = self.bounds else {
            return Rect::empty();
        };
        let diag = s2::metric::MAX_DIAGMETRIC.value(level);
        let lat_m = 2.0 * diag;
        let far = b.lat_lo.abs().max(b.lat_hi.abs()).to_radians() + lat_m;
        let cos = far.cos();
        let lng_m = if far >= std::f64::consts::FRAC_PI_2 - 1e-3 || cos < 1e-3 {
            std::f64::consts::PI
        } else {
            (4.0 * diag / cos).min(std::f64::consts::PI)
        };
        Rect::from_degrees(b.lat_lo, b.lng_lo, b.lat_hi, b.lng_hi)
            .expanded(&LatLng::from_radians(lat_m, lng_m))
    }
}

/// A cell's 4 vertices in degrees, in S2's order (counter-clockwise).
pub fn cell_quad(cell: u64) -> [Vertex; 4] {
    Cell::from(CellID(cell)).vertices().map(|p| {
        let ll = LatLng::from(p);
        Vertex {
            lat: ll.lat.deg(),
            lng: ll.lng.deg(),
        }
    })
}

/// Why a polygon's rings are not a simple polygon with holes.
#[derive(Debug, thiserror::Error)]
enum NotSimple {
    #[error("self-intersecting: {0} meets {1}")]
    Crossing(String, String),
    #[error("ring {0} is a hole that is not inside the outer ring")]
    HoleOutside(usize),
    #[error("ring {0} is a hole inside another hole (ring {1})")]
    NestedHole(usize, usize),
}

/// Refuses rings that meet themselves or each other (other than
/// consecutive edges at their shared vertex), holes outside the outer
/// ring, and nested holes.
fn check_simple(poly: &Polygon) -> std::result::Result<(), NotSimple> {
    let prep = Prepared::from_polygons(std::iter::once(poly));
    let edges = &prep.edges;
    for k in 0..prep.bands.count() {
        let items = prep.bands.items(k);
        for (x, &i) in items.iter().enumerate() {
            let e = &edges[i as usize];
            let (exl, exh) = e.x_range();
            for &j in &items[x + 1..] {
                let f = &edges[j as usize];
                let (fxl, fxh) = f.x_range();
                if fxh < exl || fxl > exh {
                    continue;
                }
                if edges_conflict(e, f) {
                    let where_ = |e: &Edge| {
                        format!(
                            "ring {} edge {} from [{}, {}]",
                            e.ring + 1,
                            e.idx + 1,
                            e.a.0,
                            e.a.1
                        )
                    };
                    return Err(NotSimple::Crossing(where_(e), where_(f)));
                }
            }
        }
    }
    // No rings meet, so one position of a hole tells where all of it is.
    let outer: Vec<Pt> = dedup(&poly.rings[0]).iter().map(pt).collect();
    let holes: Vec<Vec<Pt>> = poly.rings[1..]
        .iter()
        .map(|r| dedup(r).iter().map(pt).collect())
        .collect();
    for (h, hole) in holes.iter().enumerate() {
        if !in_ring(&outer, hole[0]) {
            return Err(NotSimple::HoleOutside(h + 2));
        }
        for (g, other) in holes.iter().enumerate() {
            if g != h && in_ring(other, hole[0]) {
                return Err(NotSimple::NestedHole(h + 2, g + 2));
            }
        }
    }
    Ok(())
}

/// Whether two edges of one polygon meet where they may not.
fn edges_conflict(e: &Edge, f: &Edge) -> bool {
    if e.ring == f.ring && e.of >= 3 {
        let (lo, hi) = (e.idx.min(f.idx), e.idx.max(f.idx));
        let (first, second) = if e.idx == lo { (e, f) } else { (f, e) };
        if hi == lo + 1 {
            // first.b == second.a: consecutive edges may not fold back.
            return within(first.a, first.b, second.b) && orient(first.a, first.b, second.b) == 0.0
                || within(second.a, second.b, first.a)
                    && orient(second.a, second.b, first.a) == 0.0;
        }
        if lo == 0 && hi == e.of - 1 {
            // The closing edge ends where the first starts.
            return within(second.a, second.b, first.b)
                && orient(second.a, second.b, first.b) == 0.0
                || within(first.a, first.b, second.a) && orient(first.a, first.b, second.a) == 0.0;
        }
    }
    segments_meet(e.a, e.b, f.a, f.b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(pts: &[(f64, f64)]) -> Vec<Vertex> {
        pts.iter().map(|&(lng, lat)| Vertex { lat, lng }).collect()
    }

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Vertex> {
        ring(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
    }

    fn one(rings: Vec<Vec<Vertex>>) -> MultiPolygon {
        MultiPolygon {
            polygons: vec![Polygon { rings }],
        }
    }

    #[test]
    fn a_square_with_a_hole_contains_its_ring_not_the_hole() {
        let mp = one(vec![
            square(0.0, 0.0, 10.0, 10.0),
            square(4.0, 4.0, 6.0, 6.0),
        ]);
        mp.validate("region").unwrap();
        let p = Prepared::new(&mp);
        assert!(p.contains(1.0, 1.0));
        assert!(!p.contains(5.0, 5.0), "in the hole");
        assert!(!p.contains(11.0, 5.0));
        // A quad inside the hole does not meet it; one across its edge does.
        let q = |x0: f64, y0: f64, x1: f64, y1: f64| {
            let r = square(x0, y0, x1, y1);
            [r[0], r[1], r[2], r[3]]
        };
        assert!(!p.intersects_quad(&q(4.5, 4.5, 5.5, 5.5)));
        assert!(p.intersects_quad(&q(3.5, 4.5, 4.5, 5.5)));
        assert!(
            p.intersects_quad(&q(-1.0, -1.0, 11.0, 11.0)),
            "around it all"
        );
        assert!(p.intersects_quad(&q(10.0, 2.0, 11.0, 3.0)), "touching");
        assert!(!p.intersects_quad(&q(10.5, 2.0, 11.0, 3.0)));
    }

    #[test]
    fn every_bad_polygon_is_refused_naming_the_problem() {
        let cases: Vec<(MultiPolygon, &str)> = vec![
            (MultiPolygon::default(), "at least one polygon"),
            (one(vec![]), "no rings"),
            (
                one(vec![ring(&[(0.0, 0.0), (1.0, 0.0), (0.0, 0.0)])]),
                "at least 4",
            ),
            (
                one(vec![ring(&[
                    (0.0, 0.0),
                    (1.0, 0.0),
                    (1.0, 1.0),
                    (0.0, 1.0),
                ])]),
                "not closed",
            ),
            (
                one(vec![ring(&[
                    (0.0, 0.0),
                    (1.0, 0.0),
                    (1.0, 0.0),
                    (0.0, 0.0),
                ])]),
                "distinct",
            ),
            (one(vec![square(0.0, 0.0, 1.0, f64::NAN)]), "out of range"),
            (one(vec![square(0.0, 0.0, 1.0, 91.0)]), "out of range"),
            (
                one(vec![ring(&[
                    (0.0, 0.0),
                    (1.0, 1.0),
                    (1.0, 0.0),
                    (0.0, 1.0),
                    (0.0, 0.0),
                ])]),
                "self-intersecting",
            ),
            (one(vec![square(-170.0, 0.0, 170.0, 1.0)]), "antimeridian"),
            (
                one(vec![
                    square(0.0, 0.0, 10.0, 10.0),
                    square(20.0, 0.0, 21.0, 1.0),
                ]),
                "not inside the outer ring",
            ),
            (
                one(vec![
                    square(0.0, 0.0, 10.0, 10.0),
                    square(5.0, 5.0, 11.0, 6.0),
                ]),
                "self-intersecting",
            ),
            (
                one(vec![
                    square(0.0, 0.0, 10.0, 10.0),
                    square(2.0, 2.0, 8.0, 8.0),
                    square(4.0, 4.0, 5.0, 5.0),
                ]),
                "inside another hole",
            ),
        ];
        for (mp, want) in cases {
            let e = mp.validate("region").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("region"), "{want}: {e}");
        }
        let many: Vec<(f64, f64)> = (0..=MAX_VERTICES)
            .map(|i| {
                let a = i as f64 / MAX_VERTICES as f64 * std::f64::consts::TAU;
                (a.cos(), a.sin())
            })
            .chain([(1.0, 0.0)])
            .collect();
        let e = one(vec![ring(&many)]).validate("region").unwrap_err();
        assert!(e.to_string().contains("too many vertices"), "{e}");
    }

    #[test]
    fn a_multipolygon_split_at_the_antimeridian_is_accepted() {
        let mp = MultiPolygon {
            polygons: vec![
                Polygon {
                    rings: vec![square(170.0, 0.0, 180.0, 1.0)],
                },
                Polygon {
                    rings: vec![square(-180.0, 0.0, -170.0, 1.0)],
                },
            ],
        };
        mp.validate("region").unwrap();
        let p = Prepared::new(&mp);
        assert!(p.contains(0.5, 175.0) && p.contains(0.5, -175.0));
        // A level-12 cell straddling lng 180 at lat 0.5 meets it.
        let c = hourcell_storage::cell::cell_at(0.5, 179.9999, 12);
        assert!(p.intersects_cell(c));
    }
}
