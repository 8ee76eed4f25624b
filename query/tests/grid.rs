//! The occupancy grid against a brute-force count of the events that built
//! it: random persons at random points and hours around a centre, a grid
//! over random circles and levels, per hour and over the window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hourcell_query::{QueryEngine, Region};
use hourcell_storage::cell::{self, cell_at};
use hourcell_storage::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CENTRE: (f64, f64) = (30.27, 120.15);
/// 2026-11-01T00:00:00Z as an hour.
const H0: i64 = 1_793_491_200 / 3600;

/// (person, hour, lat, lng) of every event.
type Events = Vec<(u64, i64, f64, f64)>;

fn town(seed: u64) -> (QueryEngine, Events) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let store = Arc::new(MetaStore::open(MemEngine::new(), None).unwrap());
    let events: Events = (0..600)
        .map(|_| {
            (
                rng.gen_range(1..80u64),
                H0 + rng.gen_range(0..48),
                CENTRE.0 + rng.gen_range(-0.03..0.03),
                CENTRE.1 + rng.gen_range(-0.03..0.03),
            )
        })
        .collect();
    let evs = events
        .iter()
        .map(|&(person, hour, lat, lng)| SliceEvent {
            person,
            hour,
            cell: cell_at(lat, lng, 16),
            address: None,
            source: "utility".into(),
        })
        .collect();
    store.apply(&Command::Ingest(evs)).unwrap();
    (QueryEngine::new(store), events)
}

/// Distinct persons per (grid cell, hour or none) over hours [from, to),
/// for grid cells that `meets` accepts: counted from the events.
fn brute(
    events: &Events,
    level: u8,
    from: i64,
    to: i64,
    hourly: bool,
    meets: impl Fn(u64) -> bool,
) -> BTreeMap<(u64, Option<i64>), usize> {
    let mut sets: BTreeMap<(u64, Option<i64>), BTreeSet<u64>> = BTreeMap::new();
    for &(p, h, lat, lng) in events {
        let g = cell_at(lat, lng, level);
        if (from..to).contains(&h) && meets(g) {
            sets.entry((g, hourly.then_some(h))).or_default().insert(p);
        }
    }
    sets.into_iter().map(|(k, v)| (k, v.len())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_grid_counts_whole_cells_as_the_events_do(
        seed in 0u64..4,
        dlat in -0.02f64..0.02, dlng in -0.02f64..0.02, r in 100.0f64..2500.0,
        level in 10u8..=16, from in 0i64..30, span in 1i64..30, hourly in any::<bool>(),
    ) {
        let (q, events) = town(seed);
        let (lat, lng) = (CENTRE.0 + dlat, CENTRE.1 + dlng);
        let region = Region::Circle { lat, lng, radius_m: r };
        let (f, t) = (H0 + from, H0 + from + span);
        let ans = q
            .occupancy_grid(&region, f * 3600, t * 3600, t * 3600, level, hourly)
            .unwrap();
        let got: BTreeMap<(u64, Option<i64>), usize> = ans
            .cells
            .iter()
            .map(|c| ((c.cell, c.hour), c.distinct as usize))
            .collect();
        // A grid cell meets the circle when the distance from the centre to
        // the cell is within the radius: checked on the cell's corners and
        // centre against a slightly smaller and larger circle, so that
        // cells at the edge need not be decided here.
        let dist = |(a, b): (f64, f64)| {
            let (p1, p2) = (lat.to_radians(), a.to_radians());
            let h = ((p2 - p1) / 2.0).sin().powi(2)
                + p1.cos() * p2.cos() * ((b - lng).to_radians() / 2.0).sin().powi(2);
            2.0 * 6_371_010.0 * h.sqrt().asin()
        };
        let surely_in = |g: u64| dist(cell::center(g)) < r * 0.99;
        let surely_out = |g: u64| {
            let size = cell::corners(g).iter().map(|&c| dist(c)).fold(0.0, f64::max)
                - dist(cell::center(g));
            dist(cell::center(g)) - size.abs() * 2.0 > r * 1.01
        };
        let want_in = brute(&events, level, f, t, hourly, surely_in);
        for (k, n) in &want_in {
            prop_assert_eq!(got.get(k), Some(n), "cell {} hour {:?}", cell::token(k.0), k.1);
        }
        let all = brute(&events, level, f, t, hourly, |_| true);
        for (k, n) in &got {
            prop_assert!(!surely_out(k.0), "cell {} is outside the circle", cell::token(k.0));
            // Whole cells: the count is the cell's, not the circle's part.
            prop_assert_eq!(all.get(k), Some(n), "cell {} hour {:?}", cell::token(k.0), k.1);
        }
        prop_assert!(ans.cells.iter().all(|c| cell::level(c.cell) == level));
    }
}

#[test]
fn a_grid_cell_counts_what_occupancy_of_that_cell_counts() {
    let (q, _) = town(7);
    let region = Region::Circle {
        lat: CENTRE.0,
        lng: CENTRE.1,
        radius_m: 2_000.0,
    };
    let (f, t) = (H0 * 3600, (H0 + 48) * 3600);
    let grid = q.occupancy_grid(&region, f, t, t, 14, false).unwrap();
    assert!(grid.cells.len() > 3, "{}", grid.cells.len());
    let hourly = q.occupancy_grid(&region, f, t, t, 14, true).unwrap();
    for c in &grid.cells {
        let occ = q.occupancy(&Region::Cells(vec![c.cell]), f, t, t).unwrap();
        assert_eq!(c.distinct, occ.distinct, "{}", cell::token(c.cell));
        for h in occ.hours.iter().filter(|h| h.distinct > 0) {
            let g = hourly
                .cells
                .iter()
                .find(|x| x.cell == c.cell && x.hour == Some(h.hour))
                .unwrap();
            assert_eq!(g.distinct, h.distinct);
        }
    }
}

#[test]
fn bad_levels_and_regions_are_refused_naming_the_field() {
    let (q, _) = town(1);
    let c = Region::Circle {
        lat: CENTRE.0,
        lng: CENTRE.1,
        radius_m: 500.0,
    };
    let (f, t) = (H0 * 3600, (H0 + 24) * 3600);
    for level in [0, 17, 30] {
        let e = q.occupancy_grid(&c, f, t, t, level, false).unwrap_err();
        assert!(e.to_string().contains("level"), "{e}");
    }
    let e = q
        .occupancy_grid(&Region::Area("A1".into()), f, t, t, 14, false)
        .unwrap_err();
    assert!(e.to_string().contains("region"), "{e}");
}
