//! A deterministic synthetic town: generated addresses, a population
//! registry, presence events from several sources and the ground truth
//! behind them.
//!
//! Everything here is *generated* data. Person ids are pseudonymous random
//! numbers, address codes and labels are generic ("home 123"); nothing
//! refers to a real person or place beyond the configured town centre.
//!
//! The generator is built to scale: the town (addresses and one compact plan
//! per person) is created up front, while events are produced one day at a
//! time from a per-person, per-day RNG seeded from `(seed, person index,
//! day)`. Any day can therefore be generated independently, in any order,
//! and the output is fully determined by the [`TownConfig`].
//!
//! Time model: the routine runs in local time UTC+8. With `start_unix` at
//! UTC midnight a generated "day" `d` covers UTC `[start + d·86400,
//! start + (d+1)·86400)`, i.e. local 08:00 to 08:00 the next morning, so a
//! whole local night (20:00–07:00) falls inside a single day.

use std::ops::Range;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// Local time zone of the routine (UTC+8).
const LOCAL_OFFSET: i64 = 8 * HOUR;
const MINUTES_PER_DAY: i32 = 1_440;
const METRES_PER_DEG_LAT: f64 = 111_320.0;

/// Salt for the per-person plan RNG (days use salts `0..u32::MAX`).
const SALT_PLAN: u64 = u64::MAX;
/// Salt for the per-home "has a smart meter" draw.
const SALT_METER: u64 = u64::MAX - 1;
/// Salt for the address-generation RNG.
const SALT_ADDRESSES: u64 = u64::MAX - 2;
/// Share of households whose utility meter reports.
const METER_SHARE_PER_MILLE: u64 = 850;

/// Parameters of a synthetic town.
#[derive(Debug, Clone, PartialEq)]
pub struct TownConfig {
    pub seed: u64,
    pub persons: u64,
    pub days: u32,
    /// UTC midnight of the first day (unix seconds).
    pub start_unix: i64,
    pub center_lat: f64,
    pub center_lng: f64,
}

impl Default for TownConfig {
    fn default() -> Self {
        TownConfig {
            seed: 1,
            persons: 2000,
            days: 14,
            // 2026-11-01T00:00:00Z
            start_unix: 1_793_491_200,
            center_lat: 30.2741,
            center_lng: 120.1551,
        }
    }
}

/// A generated address.
#[derive(Debug, Clone, PartialEq)]
pub struct GenAddress {
    /// `H…` home, `W…` workplace, `S…` school, `M…` shop, `V…` virtual,
    /// `P…` point.
    pub code: String,
    pub lat: f64,
    pub lng: f64,
    /// `standard`, `nonstandard`, `virtual` or `point`.
    pub kind: &'static str,
    /// Area (community) code like `A017`.
    pub area: String,
    /// Generic label like `home 123`.
    pub label: String,
}

/// A registry entry (registration of a person at an address).
#[derive(Debug, Clone, PartialEq)]
pub struct GenRegistration {
    pub person: u64,
    pub address: String,
    /// `permanent` or `temporary`.
    pub kind: &'static str,
    pub valid_from: i64,
    pub valid_until: Option<i64>,
}

/// A presence event. Carries a point (`lat`+`lng`), an address code, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    pub person: u64,
    /// Unix seconds (whole minutes).
    pub time: i64,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub address: Option<String>,
    /// `utility`, `access`, `rental` or `service`.
    pub source: &'static str,
}

/// The ground truth about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct GenTruth {
    pub person: u64,
    /// `resident`, `newcomer`, `away`, `temporary`, `temporary_left` or
    /// `visitor`.
    pub situation: &'static str,
    /// Where the person actually sleeps (a home, or a point for some
    /// visitors).
    pub home: Option<String>,
    /// Address of the person's current registration, if any.
    pub registered: Option<String>,
    /// When the person moved in / arrived, if known.
    pub arrived: Option<i64>,
    /// When the person left the town, if they did.
    pub left: Option<i64>,
    /// The sources that can see the person at home at night, by address
    /// code (`utility` if the home has a meter, `rental` for renters) or by
    /// location (`access`). A person with no address-carrying night source
    /// is invisible to the should-register rule however long they stay.
    pub night_sources: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Situation {
    Resident,
    Newcomer,
    Away,
    Temporary,
    TemporaryLeft,
    Visitor,
}

impl Situation {
    fn name(self) -> &'static str {
        match self {
            Situation::Resident => "resident",
            Situation::Newcomer => "newcomer",
            Situation::Away => "away",
            Situation::Temporary => "temporary",
            Situation::TemporaryLeft => "temporary_left",
            Situation::Visitor => "visitor",
        }
    }

    /// Draws a situation with the target mix.
    fn draw(u: f64) -> Situation {
        const MIX: [(f64, Situation); 5] = [
            (0.80, Situation::Resident),
            (0.85, Situation::Newcomer),
            (0.89, Situation::Away),
            (0.94, Situation::Temporary),
            (0.97, Situation::TemporaryLeft),
        ];
        MIX.iter()
            .find(|(p, _)| u < *p)
            .map_or(Situation::Visitor, |(_, s)| *s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Adult with a workplace.
    Worker,
    /// Child with a school.
    Pupil,
    /// Neither (retired, at home, visitor…).
    Home,
}

/// Compact per-person plan; events are derived from it day by day.
#[derive(Debug, Clone)]
struct Plan {
    id: u64,
    situation: Situation,
    role: Role,
    access: bool,
    renter: bool,
    rental_phase: u8,
    /// Address index where the person sleeps.
    home: u32,
    /// Address index of the workplace or school.
    day_place: Option<u32>,
    /// Address index of the current registration.
    registered: Option<u32>,
    reg_temporary: bool,
    valid_from: i64,
    valid_until: Option<i64>,
    arrived: Option<i64>,
    left: Option<i64>,
}

impl Plan {
    /// Presence window `[from, until)`.
    fn window(&self) -> (i64, i64) {
        (
            self.arrived.unwrap_or(i64::MIN),
            self.left.unwrap_or(i64::MAX),
        )
    }
}

/// Index ranges of the address kinds inside `Town::addresses`.
#[derive(Debug, Clone)]
struct Layout {
    homes: Range<u32>,
    workplaces: Range<u32>,
    schools: Range<u32>,
    shops: Range<u32>,
    virtuals: Range<u32>,
    points: Range<u32>,
}

/// A deterministic synthetic town.
#[derive(Debug, Clone)]
pub struct Town {
    cfg: TownConfig,
    addresses: Vec<GenAddress>,
    layout: Layout,
    plans: Vec<Plan>,
    extent_m: f64,
}

// ---------------------------------------------------------------------------
// Hashing and small helpers
// ---------------------------------------------------------------------------

/// SplitMix64 finaliser: a bijection on u64 with good avalanche.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix3(a: u64, b: u64, c: u64) -> u64 {
    splitmix(splitmix(splitmix(a) ^ b) ^ c)
}

fn rng_for(seed: u64, index: u64, salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix3(seed, index, salt))
}

/// Pseudonymous person id: a keyed bijection of the index, so ids are unique
/// and nonzero by construction.
fn person_id(seed: u64, index: u64) -> u64 {
    let k1 = splitmix(seed ^ 0x5EED_0000_0000_0001);
    let k2 = splitmix(seed ^ 0x5EED_0000_0000_0002);
    let f = |x: u64| splitmix(splitmix(x ^ k1) ^ k2);
    let id = f(index + 1);
    if id != 0 {
        id
    } else {
        // f is a bijection: exactly one input maps to 0, and u64::MAX is
        // never one of the inputs above (indices are far smaller), so this
        // is nonzero and distinct from every other id.
        f(u64::MAX)
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn push_rfc3339(t: i64, out: &mut String) {
    use std::fmt::Write as _;
    let (y, mo, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / HOUR,
        (s % HOUR) / 60,
        s % 60
    );
}

/// Formats unix seconds as RFC 3339 UTC, e.g. `2026-11-01T20:15:00Z`.
pub fn rfc3339(t: i64) -> String {
    let mut s = String::with_capacity(20);
    push_rfc3339(t, &mut s);
    s
}

/// Triangular-ish offset in `[-half, half]`, concentrated towards 0, with a
/// uniform share so the edges are populated too.
fn spread(rng: &mut ChaCha8Rng, half: f64, uniform_share: f64) -> f64 {
    if rng.gen_bool(uniform_share) {
        (rng.gen::<f64>() * 2.0 - 1.0) * half
    } else {
        (rng.gen::<f64>() + rng.gen::<f64>() - 1.0) * half
    }
}

/// Roughly normal jitter with standard deviation `sd`.
fn jitter(rng: &mut ChaCha8Rng, sd: f64) -> f64 {
    (rng.gen::<f64>() + rng.gen::<f64>() + rng.gen::<f64>() - 1.5) * 2.0 * sd
}

fn pick(rng: &mut ChaCha8Rng, r: &Range<u32>) -> u32 {
    rng.gen_range(r.clone())
}

// ---------------------------------------------------------------------------
// Town construction
// ---------------------------------------------------------------------------

struct Geo {
    lat0: f64,
    lng0: f64,
    m_per_deg_lng: f64,
    half: f64,
    grid: u32,
    cell: f64,
}

impl Geo {
    fn to_latlng(&self, x: f64, y: f64) -> (f64, f64) {
        (
            round6(self.lat0 + y / METRES_PER_DEG_LAT),
            round6(self.lng0 + x / self.m_per_deg_lng),
        )
    }

    fn area(&self, x: f64, y: f64) -> u32 {
        let max = f64::from(self.grid - 1);
        let col = ((x + self.half) / self.cell).floor().clamp(0.0, max) as u32;
        let row = ((y + self.half) / self.cell).floor().clamp(0.0, max) as u32;
        row * self.grid + col
    }

    fn area_centre(&self, area: u32) -> (f64, f64) {
        let row = area / self.grid;
        let col = area % self.grid;
        (
            -self.half + (f64::from(col) + 0.5) * self.cell,
            -self.half + (f64::from(row) + 0.5) * self.cell,
        )
    }
}

fn area_code(a: u32) -> String {
    format!("A{a:03}")
}

fn build_addresses(cfg: &TownConfig) -> (Vec<GenAddress>, Layout, f64) {
    let n = cfg.persons;
    // ~3 km across for 2,000 persons, ~30 km for 500,000.
    let extent_km = 1.2 + 0.04 * (n as f64).sqrt();
    let extent_m = extent_km * 1000.0;
    let grid = (extent_km.round() as u32).max(2);
    let geo = Geo {
        lat0: cfg.center_lat,
        lng0: cfg.center_lng,
        m_per_deg_lng: METRES_PER_DEG_LAT * cfg.center_lat.to_radians().cos().max(0.01),
        half: extent_m / 2.0,
        grid,
        cell: extent_m / f64::from(grid),
    };

    let homes = ((n as f64 / 2.5).round() as u64).max(1);
    let workplaces = (n / 30).max(3);
    let schools = (n / 600).max(1);
    let shops = (n / 80).max(3);
    let virtuals = (n / 10_000).clamp(2, 50);
    let points = (n / 1_000).max(3);
    let total = homes + workplaces + schools + shops + virtuals + points;
    assert!(total < u64::from(u32::MAX), "town too large");

    let mut rng = rng_for(cfg.seed, 0, SALT_ADDRESSES);
    let mut out = Vec::with_capacity(total as usize);
    let mut add = |rng: &mut ChaCha8Rng,
                   prefix: char,
                   noun: &str,
                   count: u64,
                   centre_pull: f64,
                   uniform_share: f64,
                   fixed_kind: Option<&'static str>|
     -> Range<u32> {
        let first = out.len() as u32;
        for i in 0..count {
            let (x, y) = if fixed_kind == Some("virtual") {
                // Virtual addresses sit at the centre of an area (a service
                // office that hosts registrations).
                geo.area_centre(rng.gen_range(0..grid * grid))
            } else {
                (
                    spread(rng, geo.half * centre_pull, uniform_share),
                    spread(rng, geo.half * centre_pull, uniform_share),
                )
            };
            let (lat, lng) = geo.to_latlng(x, y);
            let kind = fixed_kind.unwrap_or_else(|| {
                if rng.gen_bool(0.05) {
                    "nonstandard"
                } else {
                    "standard"
                }
            });
            out.push(GenAddress {
                code: format!("{prefix}{:07}", i + 1),
                lat,
                lng,
                kind,
                area: area_code(geo.area(x, y)),
                label: format!("{noun} {}", i + 1),
            });
        }
        first..out.len() as u32
    };
    let homes = add(&mut rng, 'H', "home", homes, 1.0, 0.3, None);
    let workplaces = add(&mut rng, 'W', "workplace", workplaces, 0.8, 0.2, None);
    let schools = add(&mut rng, 'S', "school", schools, 1.0, 0.5, None);
    let shops = add(&mut rng, 'M', "shop", shops, 0.9, 0.3, None);
    let virtuals = add(
        &mut rng,
        'V',
        "virtual address",
        virtuals,
        1.0,
        1.0,
        Some("virtual"),
    );
    let points = add(&mut rng, 'P', "point", points, 1.0, 1.0, Some("point"));
    let layout = Layout {
        homes,
        workplaces,
        schools,
        shops,
        virtuals,
        points,
    };
    (out, layout, extent_m)
}

impl Town {
    /// Generates the town (addresses and one plan per person).
    pub fn new(cfg: TownConfig) -> Town {
        let (addresses, layout, extent_m) = build_addresses(&cfg);
        let mut town = Town {
            cfg,
            addresses,
            layout,
            plans: Vec::new(),
            extent_m,
        };
        let plans = (0..town.cfg.persons).map(|i| town.plan(i)).collect();
        town.plans = plans;
        town
    }

    fn period_start(&self) -> i64 {
        self.cfg.start_unix
    }

    fn period_end(&self) -> i64 {
        self.cfg.start_unix + i64::from(self.cfg.days) * DAY
    }

    /// Nearest of `k` random candidates from `range` to address `from`.
    fn pick_near(&self, rng: &mut ChaCha8Rng, range: &Range<u32>, from: u32, k: usize) -> u32 {
        let f = &self.addresses[from as usize];
        let cos = f.lat.to_radians().cos();
        let mut best = pick(rng, range);
        let dist = |a: u32| {
            let a = &self.addresses[a as usize];
            let dy = a.lat - f.lat;
            let dx = (a.lng - f.lng) * cos;
            dx * dx + dy * dy
        };
        let mut best_d = dist(best);
        for _ in 1..k {
            let c = pick(rng, range);
            let d = dist(c);
            if d < best_d {
                best = c;
                best_d = d;
            }
        }
        best
    }

    /// A time at local office hours (10:00–18:00) on day `day` relative to
    /// the period start (may be negative).
    fn office_time(&self, rng: &mut ChaCha8Rng, day: i64) -> i64 {
        let day_start = self.period_start() + day * DAY;
        let lo = local_minute_of(day_start);
        let local = 10 * 60 + rng.gen_range(0..8 * 60);
        day_start + i64::from(to_day_minute(local, lo)) * 60
    }

    fn plan(&self, index: u64) -> Plan {
        let mut rng = rng_for(self.cfg.seed, index, SALT_PLAN);
        let days = i64::from(self.cfg.days.max(1));
        let start = self.period_start();
        let end = self.period_end().max(start + DAY);
        let l = &self.layout;

        let situation = Situation::draw(rng.gen());
        let home = if situation == Situation::Visitor && rng.gen_bool(0.3) {
            pick(&mut rng, &l.points)
        } else {
            pick(&mut rng, &l.homes)
        };
        let role = if situation == Situation::Visitor {
            Role::Home
        } else {
            let u: f64 = rng.gen();
            if u < 0.15 {
                Role::Pupil
            } else if u < 0.60 {
                Role::Worker
            } else {
                Role::Home
            }
        };
        let day_place = match role {
            Role::Pupil => Some(self.pick_near(&mut rng, &l.schools, home, 3)),
            Role::Worker => Some(pick(&mut rng, &l.workplaces)),
            Role::Home => None,
        };
        let access = rng.gen_bool(0.70);
        let renter = match situation {
            Situation::Newcomer | Situation::Temporary | Situation::TemporaryLeft => true,
            _ => rng.gen_bool(0.30),
        };
        let rental_phase = rng.gen_range(0..3u8);

        let mut plan = Plan {
            id: person_id(self.cfg.seed, index),
            situation,
            role,
            access,
            renter,
            rental_phase,
            home,
            day_place,
            registered: None,
            reg_temporary: false,
            valid_from: 0,
            valid_until: None,
            arrived: None,
            left: None,
        };

        match situation {
            Situation::Resident => {
                plan.registered = Some(home);
                let ago = rng.gen_range(30..30 * 365);
                plan.valid_from = self.office_time(&mut rng, -ago);
            }
            Situation::Away => {
                let other_home = l.homes.len() > 1 && rng.gen_bool(0.8);
                let a = if other_home {
                    loop {
                        let a = pick(&mut rng, &l.homes);
                        if a != home {
                            break a;
                        }
                    }
                } else {
                    pick(&mut rng, &l.virtuals)
                };
                plan.registered = Some(a);
                let ago = rng.gen_range(180..30 * 365);
                plan.valid_from = self.office_time(&mut rng, -ago);
            }
            Situation::Newcomer => {
                let day = if rng.gen_bool(0.5) {
                    rng.gen_range(0..days)
                } else {
                    -rng.gen_range(1..=90)
                };
                plan.arrived = Some(self.office_time(&mut rng, day));
            }
            Situation::Temporary | Situation::TemporaryLeft => {
                let leaves = situation == Situation::TemporaryLeft;
                plan.registered = Some(home);
                plan.reg_temporary = true;
                if !leaves && days >= 2 && rng.gen_bool(0.2) {
                    // Arrived during the period, registered a few days later.
                    let day = rng.gen_range(0..days);
                    let arrived = self.office_time(&mut rng, day);
                    plan.arrived = Some(arrived);
                    plan.valid_from = arrived + rng.gen_range(0..3 * 1440) * 60;
                } else {
                    let ago = rng.gen_range(10..365);
                    plan.valid_from = self.office_time(&mut rng, -ago);
                    plan.arrived = Some(plan.valid_from - rng.gen_range(0..8 * 1440) * 60);
                }
                plan.valid_until = Some(if leaves {
                    end + rng.gen_range(10..=80) * DAY
                } else {
                    end + rng.gen_range(10..=400) * DAY
                });
                if leaves {
                    let half = (days / 2).max(1);
                    plan.left =
                        Some(start + rng.gen_range(0..half) * DAY + rng.gen_range(1..1440) * 60);
                }
            }
            Situation::Visitor => {
                let dur = rng.gen_range(1..=4i64).min(days);
                let first = rng.gen_range(0..=days - dur);
                let arrived = self.office_time(&mut rng, first);
                plan.arrived = Some(arrived);
                plan.left = Some(arrived + dur * DAY - rng.gen_range(0..6 * 60) * 60);
            }
        }
        plan
    }

    /// The configuration this town was generated from.
    pub fn config(&self) -> &TownConfig {
        &self.cfg
    }

    /// All addresses (homes, workplaces, schools, shops, virtual, points).
    pub fn addresses(&self) -> &[GenAddress] {
        &self.addresses
    }

    /// Approximate extent (side of the square) of the town in metres.
    pub fn extent_m(&self) -> f64 {
        self.extent_m
    }

    /// End of the period (exclusive), unix seconds.
    pub fn end_unix(&self) -> i64 {
        self.period_end()
    }

    fn code(&self, a: u32) -> &str {
        &self.addresses[a as usize].code
    }

    /// The population registry: one current registration per registered
    /// person (residents and away persons permanent, temporary residents
    /// temporary; newcomers and visitors are not registered).
    pub fn registry(&self) -> Vec<GenRegistration> {
        self.plans
            .iter()
            .filter_map(|p| {
                let a = p.registered?;
                Some(GenRegistration {
                    person: p.id,
                    address: self.code(a).to_string(),
                    kind: if p.reg_temporary {
                        "temporary"
                    } else {
                        "permanent"
                    },
                    valid_from: p.valid_from,
                    valid_until: p.valid_until,
                })
            })
            .collect()
    }

    /// Ground truth, one row per person, in person-index order.
    pub fn truth(&self) -> Vec<GenTruth> {
        self.plans
            .iter()
            .map(|p| GenTruth {
                person: p.id,
                situation: p.situation.name(),
                home: Some(self.code(p.home).to_string()),
                registered: p.registered.map(|a| self.code(a).to_string()),
                arrived: p.arrived,
                left: p.left,
                night_sources: {
                    let mut v = Vec::new();
                    if self.layout.homes.contains(&p.home) && self.home_has_meter(p.home) {
                        v.push("utility");
                    }
                    if p.renter {
                        v.push("rental");
                    }
                    if p.access {
                        v.push("access");
                    }
                    v
                },
            })
            .collect()
    }

    /// Pseudonymous person ids, in person-index order.
    pub fn persons(&self) -> Vec<u64> {
        self.plans.iter().map(|p| p.id).collect()
    }

    fn home_has_meter(&self, home: u32) -> bool {
        mix3(self.cfg.seed, u64::from(home), SALT_METER) % 1000 < METER_SHARE_PER_MILLE
    }
}

mod day;
mod output;
#[cfg(test)]
mod tests;

use day::{local_minute_of, to_day_minute};
