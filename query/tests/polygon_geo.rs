//! Polygon regions against an independent implementation: the `geo`
//! crate's planar `Intersects` between a cell's quadrilateral and the
//! polygon, and its point-in-polygon, on random star-shaped polygons (with
//! and without holes, one or two parts) of several sizes and random S2
//! cells of levels 10 to 16 around them.

use geo::{Coord, Intersects, LineString};
use hourcell_query::polygon::{cell_quad, MultiPolygon, Polygon, Prepared, Vertex};
use hourcell_query::region::SpatialPlan;
use hourcell_query::Region;
use hourcell_storage::cell::cell_at;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Polygon radii in degrees: a block, a town, a region.
const SIZES: [f64; 3] = [0.004, 0.04, 0.4];

/// A star-shaped ring around `c` (lat, lng): `n` corners at jittered,
/// evenly spread angles (gaps under 90 degrees for n >= 8), radii in
/// `[lo, hi]`. Star-shaped, so simple.
fn star(rng: &mut ChaCha8Rng, c: (f64, f64), n: usize, lo: f64, hi: f64) -> Vec<Vertex> {
    let mut ring: Vec<Vertex> = (0..n)
        .map(|i| {
            let a = (i as f64 + rng.gen_range(0.0..0.8)) / n as f64 * std::f64::consts::TAU;
            let r = rng.gen_range(lo..hi);
            Vertex {
                lat: c.0 + r * a.sin(),
                lng: c.1 + r * a.cos(),
            }
        })
        .collect();
    if rng.gen_bool(0.5) {
        ring.reverse(); // winding does not matter
    }
    ring.push(ring[0]);
    ring
}

/// A random polygon region of radius about `r` around `c`, and how many
/// parts it has.
fn random_region(rng: &mut ChaCha8Rng, c: (f64, f64), r: f64) -> MultiPolygon {
    let mut polygons = Vec::new();
    let parts = rng.gen_range(1..=2);
    for k in 0..parts {
        // The second part sits 3 radii east: disjoint from the first.
        let centre = (c.0, c.1 + 3.0 * r * k as f64);
        let n = rng.gen_range(8..80);
        let mut rings = vec![star(rng, centre, n, 0.3 * r, r)];
        // The outer ring keeps more than 0.3 r * cos(45°) from the centre,
        // so a hole within 0.18 r is inside it.
        if rng.gen_bool(0.6) {
            let m = rng.gen_range(8..30);
            rings.push(star(rng, centre, m, 0.05 * r, 0.18 * r));
        }
        polygons.push(Polygon { rings });
    }
    MultiPolygon { polygons }
}

fn ring_to_geo(ring: &[Vertex]) -> LineString<f64> {
    LineString::new(ring.iter().map(|v| Coord { x: v.lng, y: v.lat }).collect())
}

fn to_geo(mp: &MultiPolygon) -> geo::MultiPolygon<f64> {
    geo::MultiPolygon::new(
        mp.polygons
            .iter()
            .map(|p| {
                geo::Polygon::new(
                    ring_to_geo(&p.rings[0]),
                    p.rings[1..].iter().map(|r| ring_to_geo(r)).collect(),
                )
            })
            .collect(),
    )
}

fn quad_to_geo(q: &[Vertex; 4]) -> geo::Polygon<f64> {
    let mut ring = q.to_vec();
    ring.push(q[0]);
    geo::Polygon::new(ring_to_geo(&ring), vec![])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn cells_and_points_agree_with_geo(seed in any::<u64>(), size in 0..SIZES.len()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let r = SIZES[size];
        let c = (rng.gen_range(-60.0..60.0), rng.gen_range(-170.0..170.0));
        let mp = random_region(&mut rng, c, r);
        prop_assert!(mp.validate("region").is_ok(), "{:?}", mp.validate("region"));
        let ours = Prepared::new(&mp);
        let theirs = to_geo(&mp);
        let (mut hits, mut misses) = (0, 0);
        for _ in 0..60 {
            // Around the whole region (both parts), some near a vertex.
            let (lat, lng) = if rng.gen_bool(0.3) {
                let p = &mp.polygons[rng.gen_range(0..mp.polygons.len())];
                let ring = &p.rings[rng.gen_range(0..p.rings.len())];
                let v = ring[rng.gen_range(0..ring.len())];
                (v.lat + rng.gen_range(-0.05..0.05) * r, v.lng + rng.gen_range(-0.05..0.05) * r)
            } else {
                (c.0 + rng.gen_range(-1.5..1.5) * r, c.1 + rng.gen_range(-1.5..4.5) * r)
            };
            let level = rng.gen_range(10..=16u8);
            let cell = cell_at(lat, lng, level);
            let q = cell_quad(cell);
            let want = quad_to_geo(&q).intersects(&theirs);
            prop_assert_eq!(ours.intersects_cell(cell), want, "cell {} level {} quad {:?}", cell, level, q);
            if want { hits += 1 } else { misses += 1 }
            let p = geo::Point::new(lng, lat);
            prop_assert_eq!(ours.contains(lat, lng), theirs.intersects(&p), "point {} {}", lat, lng);
        }
        // Not a vacuous comparison: both outcomes occur over the run (a
        // single case may see only one).
        let _ = (hits, misses);
    }

    /// The plan's ranges hold every matching cell: no cell whose
    /// quadrilateral meets the polygon is left out of the scan.
    #[test]
    fn the_covering_holds_every_matching_cell(seed in any::<u64>(), size in 0..SIZES.len()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let r = SIZES[size];
        let c = (rng.gen_range(-60.0..60.0), rng.gen_range(-170.0..170.0));
        let mp = random_region(&mut rng, c, r);
        let ours = Prepared::new(&mp);
        let level = rng.gen_range(10..=16u8);
        let plan = SpatialPlan::new(&Region::Polygon(mp.clone()), level).unwrap();
        for _ in 0..100 {
            let (lat, lng) = (c.0 + rng.gen_range(-1.5..1.5) * r, c.1 + rng.gen_range(-1.5..4.5) * r);
            let cell = cell_at(lat, lng, level);
            let in_ranges = plan.ranges.iter().any(|&(lo, hi)| lo <= cell && cell <= hi);
            prop_assert_eq!(plan.matches(cell), ours.intersects_cell(cell));
            if ours.intersects_cell(cell) {
                prop_assert!(in_ranges, "cell {} matches but is not scanned", cell);
            }
        }
    }
}

#[test]
fn the_random_cells_see_both_outcomes() {
    let (mut hits, mut misses) = (0, 0);
    for seed in 0..50u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let r = SIZES[seed as usize % SIZES.len()];
        let c = (rng.gen_range(-60.0..60.0), rng.gen_range(-170.0..170.0));
        let mp = random_region(&mut rng, c, r);
        let ours = Prepared::new(&mp);
        for _ in 0..40 {
            let cell = cell_at(
                c.0 + rng.gen_range(-1.5..1.5) * r,
                c.1 + rng.gen_range(-1.5..4.5) * r,
                rng.gen_range(10..=16u8),
            );
            if ours.intersects_cell(cell) {
                hits += 1
            } else {
                misses += 1
            }
        }
    }
    assert!(hits > 200 && misses > 200, "{hits} hits, {misses} misses");
}

#[test]
fn a_ten_thousand_vertex_polygon_is_accepted_and_fast() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let ring = star(&mut rng, (30.27, 120.15), 9_999, 0.02, 0.03);
    let mp = MultiPolygon {
        polygons: vec![Polygon { rings: vec![ring] }],
    };
    let t = std::time::Instant::now();
    mp.validate("region").unwrap();
    let plan = SpatialPlan::new(&Region::Polygon(mp), 16).unwrap();
    let mut n = 0;
    for &(lo, hi) in &plan.ranges {
        // The ranges are of leaf ids; walk their level-16 cells.
        let mut c = s2::cellid::CellID(lo).parent(16);
        while c.0 <= hi {
            n += usize::from(plan.matches(c.0));
            c = c.next();
        }
    }
    assert!(n > 100, "{n} cells");
    // Generous for a debug build on a loaded machine; the naive test of
    // every cell against every edge takes far longer.
    assert!(t.elapsed().as_secs() < 20, "{:?}", t.elapsed());
}
