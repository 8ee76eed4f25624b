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

    /// All events of day `d` (0-based), sorted by `(time, person)`. Memory
    /// is bounded by one day of events.
    pub fn events_for_day(&self, d: u32) -> Vec<GenEvent> {
        if d >= self.cfg.days {
            return Vec::new();
        }
        let ctx = DayCtx::new(self, d);
        let n = self.plans.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(16);
        let parts = if n < 16_384 { 1 } else { threads };
        let mut out = if parts <= 1 {
            self.events_range(&ctx, 0..n)
        } else {
            let chunk = n.div_ceil(parts);
            let pieces: Vec<Vec<GenEvent>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..parts)
                    .map(|k| {
                        let ctx = &ctx;
                        let r = (k * chunk).min(n)..((k + 1) * chunk).min(n);
                        s.spawn(move || self.events_range(ctx, r))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("town generator thread panicked"))
                    .collect()
            });
            let total: usize = pieces.iter().map(Vec::len).sum();
            let mut pieces = pieces.into_iter();
            let mut out = pieces.next().unwrap_or_default();
            out.reserve_exact(total - out.len());
            for p in pieces {
                out.extend(p);
            }
            out
        };
        // Each piece is already sorted; the stable sort merges the runs.
        // Keys are unique (distinct minutes per person), so the order is
        // fully determined.
        out.sort_by_key(|e| (e.time, e.person));
        out
    }

    /// Events of the persons with indices in `range`, sorted.
    fn events_range(&self, ctx: &DayCtx, range: Range<usize>) -> Vec<GenEvent> {
        let mut out = Vec::with_capacity(range.len() * 8);
        let mut scratch = Vec::with_capacity(32);
        for i in range {
            self.person_day(i, ctx, &mut scratch, &mut out);
        }
        out.sort_unstable_by_key(|e| (e.time, e.person));
        out
    }

    fn person_day(
        &self,
        index: usize,
        ctx: &DayCtx,
        cands: &mut Vec<Cand>,
        out: &mut Vec<GenEvent>,
    ) {
        let p = &self.plans[index];
        let (from, until) = p.window();
        if until <= ctx.start || from >= ctx.start + DAY {
            return;
        }
        let mut rng = rng_for(self.cfg.seed, index as u64, u64::from(ctx.day));
        cands.clear();
        let home = p.home;
        let at_home = self.layout.homes.contains(&home);
        let hm = |h: i32, m: i32| h * 60 + m;
        let mut push = |local: i32, kind: Kind| cands.push(Cand { local, kind });

        let works = match p.role {
            Role::Worker => {
                if ctx.weekend {
                    rng.gen_bool(0.15)
                } else {
                    rng.gen_bool(0.92)
                }
            }
            Role::Pupil => !ctx.weekend && rng.gen_bool(0.95),
            Role::Home => false,
        };

        // Day part (local 08:00–20:00).
        if let (true, Some(place)) = (works, p.day_place) {
            let pupil = p.role == Role::Pupil;
            let leave = hm(8, 0) + rng.gen_range(0..60);
            let arrive = leave + rng.gen_range(15..45);
            let out_t = if pupil {
                hm(15, 30) + rng.gen_range(0..90)
            } else {
                hm(16, 45) + rng.gen_range(0..120)
            };
            let mut back = out_t + rng.gen_range(20..60);
            if p.access {
                push(leave, Kind::Access(home));
                push(arrive, Kind::Access(place));
                push(out_t, Kind::Access(place));
                if !pupil && rng.gen_bool(0.5) {
                    let lunch = hm(11, 45) + rng.gen_range(0..60);
                    push(lunch, Kind::Access(place));
                    push(lunch + rng.gen_range(25..60), Kind::Access(place));
                }
            }
            if pupil && rng.gen_bool(0.6) {
                push(hm(11, 30) + rng.gen_range(0..90), Kind::Service(place));
            }
            if rng.gen_bool(0.25) {
                let shop = self.pick_near(&mut rng, &self.layout.shops, home, 3);
                let t = out_t + rng.gen_range(15..40);
                push(t, Kind::Service(shop));
                back = t + rng.gen_range(15..45);
            }
            if p.access {
                push(back, Kind::Access(home));
            }
        } else {
            if rng.gen_bool(0.6) {
                let out_t = hm(9, 0) + rng.gen_range(0..300);
                let back = out_t + rng.gen_range(30..240);
                if p.access {
                    push(out_t, Kind::Access(home));
                    push(back, Kind::Access(home));
                }
                if rng.gen_bool(0.55) {
                    let shop = self.pick_near(&mut rng, &self.layout.shops, home, 3);
                    push(out_t + (back - out_t) / 2, Kind::Service(shop));
                }
            }
            if at_home {
                if rng.gen_bool(0.12) {
                    // Delivery or repair visit at home.
                    push(hm(9, 0) + rng.gen_range(0..600), Kind::Service(home));
                }
            } else if rng.gen_bool(0.5) {
                // Check-in at the point where a visitor stays.
                push(hm(18, 0) + rng.gen_range(0..180), Kind::Service(home));
            }
        }

        // Night (local 20:00–07:00).
        if p.access && rng.gen_bool(0.45) {
            push(hm(20, 0) + rng.gen_range(0..180), Kind::Access(home));
        }
        if at_home && self.home_has_meter(home) && rng.gen_bool(0.92) {
            for _ in 0..rng.gen_range(4..=7) {
                push(hm(20, 0) + rng.gen_range(0..600), Kind::Utility(home));
            }
        }
        if p.renter && (ctx.day + u32::from(p.rental_phase)).is_multiple_of(3) && rng.gen_bool(0.9)
        {
            push(hm(21, 0) + rng.gen_range(0..300), Kind::Rental(home));
        }

        // Emit with distinct minutes inside the presence window.
        let mut used = [0u64; (MINUTES_PER_DAY as usize).div_ceil(64)];
        for c in cands.iter() {
            let mut m = to_day_minute(c.local, ctx.local_minute) as usize;
            while used[m / 64] & (1 << (m % 64)) != 0 {
                m = (m + 1) % MINUTES_PER_DAY as usize;
            }
            used[m / 64] |= 1 << (m % 64);
            let time = ctx.start + m as i64 * 60;
            if time < from || time >= until {
                continue;
            }
            let a = &self.addresses[c.kind.address() as usize];
            let (lat, lng, address, source) = match c.kind {
                Kind::Utility(_) => (Some(a.lat), Some(a.lng), Some(a.code.clone()), "utility"),
                Kind::Service(_) => (Some(a.lat), Some(a.lng), Some(a.code.clone()), "service"),
                Kind::Rental(_) => (None, None, Some(a.code.clone()), "rental"),
                Kind::Access(_) => {
                    let dy = jitter(&mut rng, 20.0);
                    let dx = jitter(&mut rng, 20.0);
                    let lat = round6(a.lat + dy / METRES_PER_DEG_LAT);
                    let lng = round6(a.lng + dx / (METRES_PER_DEG_LAT * a.lat.to_radians().cos()));
                    (Some(lat), Some(lng), None, "access")
                }
            };
            out.push(GenEvent {
                person: p.id,
                time,
                lat,
                lng,
                address,
                source,
            });
        }
    }

    /// Writes `addresses.csv`, `registry.csv`, `events.csv` and `truth.csv`
    /// into `dir` (created if missing). Shows a progress bar over days when
    /// `progress` is true. Returns the number of events written.
    pub fn write_csv(&self, dir: &Path, progress: bool) -> anyhow::Result<u64> {
        use anyhow::Context as _;
        use std::fmt::Write as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let open = |name: &str| -> anyhow::Result<csv::Writer<std::fs::File>> {
            let path = dir.join(name);
            csv::Writer::from_path(&path).with_context(|| format!("creating {}", path.display()))
        };
        let mut time_buf = String::new();
        let mut time2_buf = String::new();
        let fmt_opt_time = |t: Option<i64>, buf: &mut String| {
            buf.clear();
            if let Some(t) = t {
                push_rfc3339(t, buf);
            }
        };

        let mut w = open("addresses.csv")?;
        w.write_record(["code", "lat", "lng", "kind", "area", "label"])?;
        for a in &self.addresses {
            w.write_record([
                a.code.as_str(),
                &format!("{:.6}", a.lat),
                &format!("{:.6}", a.lng),
                a.kind,
                &a.area,
                &a.label,
            ])?;
        }
        w.flush()?;

        let mut w = open("registry.csv")?;
        w.write_record(["person", "address", "kind", "valid_from", "valid_until"])?;
        for r in self.registry() {
            fmt_opt_time(Some(r.valid_from), &mut time_buf);
            fmt_opt_time(r.valid_until, &mut time2_buf);
            w.write_record([
                r.person.to_string().as_str(),
                &r.address,
                r.kind,
                &time_buf,
                &time2_buf,
            ])?;
        }
        w.flush()?;

        let mut w = open("truth.csv")?;
        w.write_record([
            "person",
            "situation",
            "home",
            "registered",
            "arrived",
            "left",
            "night_sources",
        ])?;
        for t in self.truth() {
            fmt_opt_time(t.arrived, &mut time_buf);
            fmt_opt_time(t.left, &mut time2_buf);
            w.write_record([
                t.person.to_string().as_str(),
                t.situation,
                t.home.as_deref().unwrap_or(""),
                t.registered.as_deref().unwrap_or(""),
                &time_buf,
                &time2_buf,
                &t.night_sources.join(";"),
            ])?;
        }
        w.flush()?;

        let bar = if progress {
            let bar = indicatif::ProgressBar::new(u64::from(self.cfg.days));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>18} [{bar:40}] {pos}/{len} days, {elapsed_precise} (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message("events");
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut w = open("events.csv")?;
        w.write_record(["person", "time", "lat", "lng", "address", "source"])?;
        let (mut person_buf, mut lat_buf, mut lng_buf) =
            (String::new(), String::new(), String::new());
        let mut written = 0u64;
        for d in 0..self.cfg.days {
            for e in self.events_for_day(d) {
                person_buf.clear();
                let _ = write!(person_buf, "{}", e.person);
                time_buf.clear();
                push_rfc3339(e.time, &mut time_buf);
                lat_buf.clear();
                lng_buf.clear();
                if let (Some(lat), Some(lng)) = (e.lat, e.lng) {
                    let _ = write!(lat_buf, "{lat:.6}");
                    let _ = write!(lng_buf, "{lng:.6}");
                }
                w.write_record([
                    person_buf.as_str(),
                    &time_buf,
                    &lat_buf,
                    &lng_buf,
                    e.address.as_deref().unwrap_or(""),
                    e.source,
                ])?;
                written += 1;
            }
            bar.inc(1);
            bar.set_message(format!("{written} events"));
        }
        w.flush()?;
        bar.finish();
        Ok(written)
    }
}

/// Local minute of day (UTC+8) at unix time `t`.
fn local_minute_of(t: i64) -> i32 {
    ((t + LOCAL_OFFSET).rem_euclid(DAY) / 60) as i32
}

/// Minute offset inside a generated day for a local minute of day (values
/// past midnight, e.g. 26:00, wrap).
fn to_day_minute(local: i32, day_start_local: i32) -> u16 {
    (local - day_start_local).rem_euclid(MINUTES_PER_DAY) as u16
}

/// Per-day constants shared by all persons.
struct DayCtx {
    day: u32,
    start: i64,
    /// Local minute of day at `start`.
    local_minute: i32,
    weekend: bool,
}

impl DayCtx {
    fn new(town: &Town, day: u32) -> DayCtx {
        let start = town.period_start() + i64::from(day) * DAY;
        let local_minute = local_minute_of(start);
        // Weekday of the local date at local noon within this day.
        let noon = start + i64::from(to_day_minute(12 * 60, local_minute)) * 60;
        let weekday_mon0 = ((noon + LOCAL_OFFSET).div_euclid(DAY) + 3).rem_euclid(7);
        DayCtx {
            day,
            start,
            local_minute,
            weekend: weekday_mon0 >= 5,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Utility(u32),
    Access(u32),
    Rental(u32),
    Service(u32),
}

impl Kind {
    fn address(self) -> u32 {
        match self {
            Kind::Utility(a) | Kind::Access(a) | Kind::Rental(a) | Kind::Service(a) => a,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    /// Local minute of day (may exceed 1440 for after-midnight times).
    local: i32,
    kind: Kind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn small(seed: u64) -> Town {
        Town::new(TownConfig {
            seed,
            persons: 1500,
            days: 5,
            ..TownConfig::default()
        })
    }

    fn all_events(t: &Town) -> Vec<GenEvent> {
        (0..t.config().days)
            .flat_map(|d| t.events_for_day(d))
            .collect()
    }

    #[test]
    fn default_start_is_2026_11_01() {
        assert_eq!(
            rfc3339(TownConfig::default().start_unix),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(rfc3339(1_793_537_700), "2026-11-01T12:55:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for t in [-86_401i64, 1_000_000_000, 1_709_164_800, 4_102_444_799] {
            let c = chrono::DateTime::from_timestamp(t, 0).unwrap();
            assert_eq!(rfc3339(t), c.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a = small(7);
        let b = small(7);
        assert_eq!(a.addresses(), b.addresses());
        assert_eq!(a.registry(), b.registry());
        assert_eq!(a.truth(), b.truth());
        assert_eq!(a.persons(), b.persons());
        for d in 0..a.config().days {
            assert_eq!(a.events_for_day(d), b.events_for_day(d));
        }
        // Days are independent: generating out of order gives the same.
        assert_eq!(a.events_for_day(3), small(7).events_for_day(3));

        let c = small(8);
        assert_ne!(a.persons(), c.persons());
        assert_ne!(a.events_for_day(0), c.events_for_day(0));
        assert_ne!(a.addresses(), c.addresses());
    }

    #[test]
    fn parallel_generation_matches_sequential() {
        let t = Town::new(TownConfig {
            seed: 3,
            persons: 20_000,
            days: 2,
            ..TownConfig::default()
        });
        let ctx = DayCtx::new(&t, 1);
        let seq = t.events_range(&ctx, 0..20_000);
        assert_eq!(seq, t.events_for_day(1));
    }

    #[test]
    fn addresses_are_well_formed() {
        let t = small(1);
        let mut codes = HashSet::new();
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for a in t.addresses() {
            assert!(a.code.len() <= 64 && !a.code.is_empty());
            assert!(codes.insert(a.code.clone()), "duplicate {}", a.code);
            assert!(a.area.starts_with('A') && a.area.len() >= 4);
            *kinds.entry(a.kind).or_default() += 1;
            assert!((a.lat - 30.2741).abs() < 0.05 && (a.lng - 120.1551).abs() < 0.05);
        }
        let homes = t
            .addresses()
            .iter()
            .filter(|a| a.code.starts_with('H'))
            .count();
        assert_eq!(homes, 600);
        for k in ["standard", "nonstandard", "virtual", "point"] {
            assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k} addresses");
        }
        let ns = kinds["nonstandard"] as f64 / t.addresses().len() as f64;
        assert!((0.02..0.09).contains(&ns), "nonstandard share {ns}");
        // Extent ~3 km for 2,000 persons, ~30 km for 500,000.
        let ext = |n| {
            Town::new(TownConfig {
                persons: n,
                days: 1,
                ..TownConfig::default()
            })
            .extent_m()
        };
        assert!((2_800.0..3_200.0).contains(&ext(2000)));
    }

    #[test]
    fn every_event_refers_to_known_address_and_has_a_location() {
        let t = small(2);
        let codes: HashSet<&str> = t.addresses().iter().map(|a| a.code.as_str()).collect();
        let persons: HashSet<u64> = t.persons().into_iter().collect();
        let start = t.config().start_unix;
        let end = t.end_unix();
        let events = all_events(&t);
        assert!(!events.is_empty());
        let mut sources: HashMap<&str, usize> = HashMap::new();
        for e in &events {
            assert!(persons.contains(&e.person));
            assert!(e.time >= start && e.time < end);
            assert_eq!(e.time % 60, 0);
            assert_eq!(e.lat.is_some(), e.lng.is_some());
            assert!(e.lat.is_some() || e.address.is_some());
            if let Some(a) = &e.address {
                assert!(codes.contains(a.as_str()), "unknown address {a}");
            }
            match e.source {
                "utility" | "service" => assert!(e.lat.is_some() && e.address.is_some()),
                "access" => assert!(e.lat.is_some() && e.address.is_none()),
                "rental" => assert!(e.lat.is_none() && e.address.is_some()),
                s => panic!("unknown source {s}"),
            }
            *sources.entry(e.source).or_default() += 1;
        }
        assert_eq!(sources.len(), 4, "{sources:?}");
    }

    #[test]
    fn events_sorted_with_distinct_minutes() {
        let t = small(3);
        for d in 0..t.config().days {
            let ev = t.events_for_day(d);
            for w in ev.windows(2) {
                assert!((w[0].time, w[0].person) < (w[1].time, w[1].person));
            }
        }
        assert!(t.events_for_day(t.config().days).is_empty());
    }

    #[test]
    fn presence_windows_respected() {
        let t = small(4);
        let truth: HashMap<u64, GenTruth> = t.truth().into_iter().map(|g| (g.person, g)).collect();
        let mut seen_leaver = false;
        for e in all_events(&t) {
            let g = &truth[&e.person];
            if let Some(l) = g.left {
                assert!(e.time < l, "{} event after leaving", g.situation);
            }
            if let Some(a) = g.arrived {
                assert!(e.time >= a, "{} event before arrival", g.situation);
            }
            seen_leaver |= g.situation == "temporary_left";
        }
        assert!(seen_leaver);
        let end = t.end_unix();
        let half = t.config().start_unix + i64::from(t.config().days.div_ceil(2)) * DAY;
        for g in truth.values() {
            match g.situation {
                "temporary_left" => {
                    let l = g.left.unwrap();
                    assert!(l > t.config().start_unix && l <= half);
                }
                "visitor" => {
                    let (a, l) = (g.arrived.unwrap(), g.left.unwrap());
                    assert!(a >= t.config().start_unix && a < end);
                    assert!(l > a && l - a <= 4 * DAY);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn registry_matches_situations() {
        let t = small(5);
        let reg: HashMap<u64, GenRegistration> =
            t.registry().into_iter().map(|r| (r.person, r)).collect();
        let codes: HashSet<&str> = t.addresses().iter().map(|a| a.code.as_str()).collect();
        let end = t.end_unix();
        for g in t.truth() {
            let r = reg.get(&g.person);
            match g.situation {
                "visitor" | "newcomer" => {
                    assert!(r.is_none());
                    assert!(g.registered.is_none());
                }
                "resident" => {
                    let r = r.unwrap();
                    assert_eq!(r.kind, "permanent");
                    assert!(r.valid_until.is_none());
                    assert_eq!(Some(&r.address), g.home.as_ref());
                    assert!(r.valid_from < t.config().start_unix);
                }
                "away" => {
                    let r = r.unwrap();
                    assert_eq!(r.kind, "permanent");
                    assert_ne!(Some(&r.address), g.home.as_ref());
                }
                "temporary" => {
                    let r = r.unwrap();
                    assert_eq!(r.kind, "temporary");
                    let u = r.valid_until.unwrap();
                    assert!(u >= end + 10 * DAY && u <= end + 400 * DAY);
                }
                "temporary_left" => {
                    let r = r.unwrap();
                    assert_eq!(r.kind, "temporary");
                    let u = r.valid_until.unwrap();
                    assert!(u >= end + 10 * DAY && u <= end + 80 * DAY);
                    assert!(r.valid_from < t.config().start_unix);
                }
                s => panic!("unknown situation {s}"),
            }
            if let Some(r) = r {
                assert!(codes.contains(r.address.as_str()));
                assert_eq!(g.registered.as_ref(), Some(&r.address));
            }
        }
    }

    #[test]
    fn person_ids_unique_and_nonzero() {
        let t = small(6);
        let ids = t.persons();
        assert_eq!(ids.len(), 1500);
        assert!(ids.iter().all(|&i| i != 0));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }

    #[test]
    fn situation_mix_and_scaling() {
        let n = 20_000u64;
        let t = Town::new(TownConfig {
            seed: 11,
            persons: n,
            days: 1,
            ..TownConfig::default()
        });
        let mut mix: HashMap<&str, f64> = HashMap::new();
        for g in t.truth() {
            *mix.entry(g.situation).or_default() += 1.0 / n as f64;
        }
        for (s, want) in [
            ("resident", 0.80),
            ("newcomer", 0.05),
            ("away", 0.04),
            ("temporary", 0.05),
            ("temporary_left", 0.03),
            ("visitor", 0.03),
        ] {
            let got = mix.get(s).copied().unwrap_or(0.0);
            assert!((got - want).abs() < 0.015, "{s}: {got} vs {want}");
        }
        let ev = t.events_for_day(0);
        let per_person = ev.len() as f64 / n as f64;
        assert!(
            (4.0..14.0).contains(&per_person),
            "{per_person} events/person/day"
        );
    }

    #[test]
    fn write_csv_files() {
        let t = Town::new(TownConfig {
            persons: 200,
            days: 2,
            ..TownConfig::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("town");
        let n = t.write_csv(&out, false).unwrap();
        let expected: usize = (0..2).map(|d| t.events_for_day(d).len()).sum();
        assert_eq!(n as usize, expected);
        let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
        let events = read("events.csv");
        let mut lines = events.lines();
        assert_eq!(lines.next(), Some("person,time,lat,lng,address,source"));
        assert_eq!(lines.count(), expected);
        assert!(events.contains("2026-11-01T"));
        let addresses = read("addresses.csv");
        assert!(addresses.starts_with("code,lat,lng,kind,area,label\n"));
        assert_eq!(addresses.lines().count(), t.addresses().len() + 1);
        let registry = read("registry.csv");
        assert!(registry.starts_with("person,address,kind,valid_from,valid_until\n"));
        assert_eq!(registry.lines().count(), t.registry().len() + 1);
        let truth = read("truth.csv");
        assert!(truth.starts_with("person,situation,home,registered,arrived,left,night_sources\n"));
        assert_eq!(truth.lines().count(), 201);
    }
}

/// The town as the inputs a node validates: what `dev`, the criterion
/// benches and tests load without going through CSV or gRPC.
impl Town {
    pub fn raw_addresses(&self) -> Vec<hourcell_query::validate::RawAddress> {
        self.addresses()
            .iter()
            .map(|a| hourcell_query::validate::RawAddress {
                code: a.code.clone(),
                lat: a.lat,
                lng: a.lng,
                kind: a.kind.to_string(),
                area: a.area.clone(),
                label: a.label.clone(),
            })
            .collect()
    }

    pub fn raw_registrations(&self) -> Vec<hourcell_query::validate::RawRegistration> {
        self.registry()
            .into_iter()
            .map(|r| hourcell_query::validate::RawRegistration {
                person: r.person,
                address: r.address,
                kind: r.kind.to_string(),
                valid_from: r.valid_from,
                valid_until: r.valid_until,
            })
            .collect()
    }

    pub fn raw_events(&self, day: u32) -> Vec<hourcell_query::validate::RawEvent> {
        self.events_for_day(day)
            .into_iter()
            .map(|e| hourcell_query::validate::RawEvent {
                person: e.person,
                time: hourcell_query::validate::EventTime::Unix(e.time),
                lat: e.lat,
                lng: e.lng,
                address: e.address,
                source: e.source.to_string(),
            })
            .collect()
    }
}
