//! One generated day: the events of every person, from a per-person,
//! per-day RNG, so any day can be generated on its own.

use super::*;

impl Town {
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
    pub(crate) fn events_range(&self, ctx: &DayCtx, range: Range<usize>) -> Vec<GenEvent> {
        let mut out = Vec::with_capacity(range.len() * 8);
        let mut scratch = Vec::with_capacity(32);
        for i in range {
            self.person_day(i, ctx, &mut scratch, &mut out);
        }
        out.sort_unstable_by_key(|e| (e.time, e.person));
        out
    }

    pub(crate) fn person_day(
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
}

/// Local minute of day (UTC+8) at unix time `t`.
pub(crate) fn local_minute_of(t: i64) -> i32 {
    ((t + LOCAL_OFFSET).rem_euclid(DAY) / 60) as i32
}

/// Minute offset inside a generated day for a local minute of day (values
/// past midnight, e.g. 26:00, wrap).
pub(crate) fn to_day_minute(local: i32, day_start_local: i32) -> u16 {
    (local - day_start_local).rem_euclid(MINUTES_PER_DAY) as u16
}

/// Per-day constants shared by all persons.
pub(crate) struct DayCtx {
    day: u32,
    start: i64,
    /// Local minute of day at `start`.
    local_minute: i32,
    weekend: bool,
}

impl DayCtx {
    pub(crate) fn new(town: &Town, day: u32) -> DayCtx {
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
pub(crate) enum Kind {
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
pub(crate) struct Cand {
    /// Local minute of day (may exceed 1440 for after-midnight times).
    local: i32,
    kind: Kind,
}
