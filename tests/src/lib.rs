//! Shared fixtures for hourcell's integration tests: a random small world
//! and a naive in-memory model of the four queries, written as plainly as
//! possible so that it is obviously right.

use std::collections::{BTreeMap, BTreeSet};

use hourcell_query::validate::{EventTime, RawAddress, RawEvent, RawRegistration};
use hourcell_query::Region;
use hourcell_storage::cell::cell_at;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s2::cap::Cap;
use s2::cell::Cell;
use s2::cellid::CellID;
use s2::latlng::LatLng;
use s2::point::Point;
use s2::rect::Rect;
use s2::region::Region as _;
use s2::s1::angle::{Angle, Rad};

pub const LEVEL: u8 = 16;
pub const CENTER: (f64, f64) = (30.2741, 120.1551);

#[derive(Debug, Clone)]
pub struct World {
    pub addresses: Vec<RawAddress>,
    pub registrations: Vec<RawRegistration>,
    pub events: Vec<RawEvent>,
    /// First and one-past-last hour with events.
    pub hours: (i64, i64),
}

impl World {
    /// A random world: a few dozen persons and addresses within ~2 km,
    /// events over two days starting at `base_hour` (may be negative).
    pub fn random(seed: u64, base_hour: i64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_addr = rng.gen_range(5..30);
        let areas = ["A1", "A2", "A3"];
        let addresses: Vec<RawAddress> = (0..n_addr)
            .map(|i| RawAddress {
                code: format!("H{i:03}"),
                lat: CENTER.0 + rng.gen_range(-0.02..0.02),
                lng: CENTER.1 + rng.gen_range(-0.02..0.02),
                kind: "standard".into(),
                area: areas[rng.gen_range(0..areas.len())].into(),
                label: format!("test address {i}"),
            })
            .collect();
        let n_persons = rng.gen_range(3..40);
        let persons: Vec<u64> = (0..n_persons).map(|_| rng.gen_range(1..u64::MAX)).collect();
        let n_events = rng.gen_range(1..400);
        let sources = ["rental", "utility", "access", "service"];
        let events = (0..n_events)
            .map(|_| {
                let person = persons[rng.gen_range(0..persons.len())];
                let t = base_hour * 3600 + rng.gen_range(0..48 * 3600);
                let with_addr = rng.gen_bool(0.6);
                let a = &addresses[rng.gen_range(0..addresses.len())];
                let (lat, lng) = if with_addr && rng.gen_bool(0.5) {
                    (None, None)
                } else if with_addr {
                    (Some(a.lat), Some(a.lng))
                } else {
                    (
                        Some(CENTER.0 + rng.gen_range(-0.025..0.025)),
                        Some(CENTER.1 + rng.gen_range(-0.025..0.025)),
                    )
                };
                RawEvent {
                    person,
                    time: EventTime::Unix(t),
                    lat,
                    lng,
                    address: with_addr.then(|| a.code.clone()),
                    source: sources[rng.gen_range(0..sources.len())].into(),
                }
            })
            .collect();
        let registered: Vec<u64> = persons
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.7))
            .collect();
        let registrations = registered
            .into_iter()
            .map(|p| {
                let temporary = rng.gen_bool(0.3);
                let from = base_hour * 3600 - rng.gen_range(0..100 * 3600);
                RawRegistration {
                    person: p,
                    address: addresses[rng.gen_range(0..addresses.len())].code.clone(),
                    kind: if temporary { "temporary" } else { "permanent" }.into(),
                    valid_from: from,
                    valid_until: temporary.then(|| base_hour * 3600 + rng.gen_range(1..60 * 3600)),
                }
            })
            .collect();
        World {
            addresses,
            registrations,
            events,
            hours: (base_hour, base_hour + 48),
        }
    }

    fn address(&self, code: &str) -> &RawAddress {
        self.addresses.iter().find(|a| a.code == code).unwrap()
    }

    /// Each event as (person, hour, slice cell, address).
    pub fn placed(&self) -> Vec<(u64, i64, u64, Option<String>, String)> {
        self.events
            .iter()
            .map(|e| {
                let t = match e.time {
                    EventTime::Unix(t) => t,
                    _ => unreachable!(),
                };
                let (lat, lng) = match (e.lat, e.lng) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        let a = self.address(e.address.as_deref().unwrap());
                        (a.lat, a.lng)
                    }
                };
                (
                    e.person,
                    t.div_euclid(3600),
                    cell_at(lat, lng, LEVEL),
                    e.address.clone(),
                    e.source.clone(),
                )
            })
            .collect()
    }

    /// The naive meaning of "the event's slice cell or address is in the
    /// region".
    pub fn event_in(&self, region: &Region, cell: u64, addr: Option<&str>) -> bool {
        match region {
            Region::Rect {
                lat_lo,
                lng_lo,
                lat_hi,
                lng_hi,
            } => Rect::from_degrees(*lat_lo, *lng_lo, *lat_hi, *lng_hi)
                .intersects_cell(&Cell::from(CellID(cell))),
            Region::Circle { lat, lng, radius_m } => {
                let angle: Angle = Rad(radius_m / 6_371_010.0).into();
                Cap::from_center_angle(&Point::from(LatLng::from_degrees(*lat, *lng)), &angle)
                    .intersects_cell(&Cell::from(CellID(cell)))
            }
            Region::Cells(ids) => ids.iter().any(|&c| {
                let (a, b) = (CellID(c), CellID(cell));
                a.contains(&b) || b.contains(&a)
            }),
            Region::Addresses(codes) => addr.is_some_and(|a| codes.iter().any(|c| c == a)),
            Region::Area(area) => addr.is_some_and(|a| self.address(a).area == *area),
            Region::Polygon(mp) => naive_polygon_meets_cell(mp, cell),
        }
    }

    pub fn who_was_at(&self, region: &Region, from_h: i64, to_h: i64) -> Vec<u64> {
        let set: BTreeSet<u64> = self
            .placed()
            .into_iter()
            .filter(|(_, h, c, a, _)| {
                (from_h..to_h).contains(h) && self.event_in(region, *c, a.as_deref())
            })
            .map(|e| e.0)
            .collect();
        set.into_iter().collect()
    }

    pub fn occupancy(&self, region: &Region, from_h: i64, to_h: i64) -> (u64, Vec<(i64, u64)>) {
        let hours = (from_h..to_h)
            .map(|h| (h, self.who_was_at(region, h, h + 1).len() as u64))
            .collect();
        (self.who_was_at(region, from_h, to_h).len() as u64, hours)
    }

    /// hour -> (cell tokens, addresses, sources)
    pub fn where_was(
        &self,
        person: u64,
        from_h: i64,
        to_h: i64,
    ) -> BTreeMap<i64, (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)> {
        let mut out: BTreeMap<i64, (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)> =
            BTreeMap::new();
        for (p, h, c, a, s) in self.placed() {
            if p == person && (from_h..to_h).contains(&h) {
                let e = out.entry(h).or_default();
                e.0.insert(CellID(c).to_token());
                if let Some(a) = a {
                    e.1.insert(a);
                }
                e.2.insert(s);
            }
        }
        out
    }

    pub fn no_activity_since(
        &self,
        since_h: i64,
        as_of: i64,
        scope: Option<&Region>,
        local: Option<&Region>,
    ) -> Vec<(u64, Option<i64>)> {
        let end_h = as_of.div_euclid(3600) + 1;
        let placed = self.placed();
        let counts = |c: u64, a: Option<&str>| local.is_none_or(|l| self.event_in(l, c, a));
        let mut out: Vec<(u64, Option<i64>)> = self
            .registrations
            .iter()
            .filter(|r| r.valid_from <= as_of && r.valid_until.is_none_or(|u| as_of < u))
            .filter(|r| {
                let a = self.address(&r.address);
                scope.is_none_or(|s| self.event_in(s, cell_at(a.lat, a.lng, LEVEL), Some(&a.code)))
            })
            .filter(|r| {
                !placed.iter().any(|(p, h, c, a, _)| {
                    *p == r.person && (since_h..end_h).contains(h) && counts(*c, a.as_deref())
                })
            })
            .map(|r| {
                let last = placed
                    .iter()
                    .filter(|(p, h, c, a, _)| {
                        *p == r.person && *h < since_h && counts(*c, a.as_deref())
                    })
                    .map(|e| e.1)
                    .max();
                (r.person, last)
            })
            .collect();
        out.sort();
        out
    }
}

/// The planar meaning of "a cell meets a polygon region", by brute force
/// over every edge: the cell's quadrilateral (its vertices in lng/lat, no
/// cell here straddles the antimeridian) and the polygon share a point.
pub fn naive_polygon_meets_cell(mp: &hourcell_query::polygon::MultiPolygon, cell: u64) -> bool {
    type P = (f64, f64);
    let quad: Vec<P> = Cell::from(CellID(cell))
        .vertices()
        .iter()
        .map(|v| {
            let ll = LatLng::from(v);
            (ll.lng.deg(), ll.lat.deg())
        })
        .collect();
    let cross = |a: P, b: P, c: P| (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
    let on = |a: P, b: P, c: P| {
        cross(a, b, c) == 0.0
            && a.0.min(b.0) <= c.0
            && c.0 <= a.0.max(b.0)
            && a.1.min(b.1) <= c.1
            && c.1 <= a.1.max(b.1)
    };
    let meet = |a: P, b: P, c: P, d: P| {
        let (d1, d2, d3, d4) = (
            cross(c, d, a),
            cross(c, d, b),
            cross(a, b, c),
            cross(a, b, d),
        );
        (d1 * d2 < 0.0 && d3 * d4 < 0.0) || on(c, d, a) || on(c, d, b) || on(a, b, c) || on(a, b, d)
    };
    let inside = |edges: &[(P, P)], p: P| {
        edges
            .iter()
            .filter(|(a, b)| {
                (a.1 > p.1) != (b.1 > p.1) && p.0 < a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1)
            })
            .count()
            % 2
            == 1
    };
    let quad_edges: Vec<(P, P)> = (0..4).map(|i| (quad[i], quad[(i + 1) % 4])).collect();
    mp.polygons.iter().any(|poly| {
        let edges: Vec<(P, P)> = poly
            .rings
            .iter()
            .flat_map(|r| {
                r.windows(2)
                    .map(|w| ((w[0].lng, w[0].lat), (w[1].lng, w[1].lat)))
            })
            .collect();
        inside(&edges, quad[0])
            || edges.iter().any(|&(a, _)| inside(&quad_edges, a))
            || edges
                .iter()
                .any(|&(a, b)| quad_edges.iter().any(|&(c, d)| meet(a, b, c, d)))
    })
}
