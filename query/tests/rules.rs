//! The rule formula pinned on hand-built towns: thresholds (exactly at the
//! threshold included), ties, night boundaries in two time zones, the ½
//! location credit, and the departure rule's 90-day and 7-day edges.

use std::sync::Arc;

use hourcell_query::{QueryEngine, Region, RuleConfig};
use hourcell_storage::cell::cell_at;
use hourcell_storage::*;

/// 2026-11-28T00:00:00Z, 08:00 at UTC+8.
const NOW: i64 = 1_795_824_000;
const NOW_H: i64 = NOW / 3600;
/// At UTC+8 the latest night ended at 06:00 local = 22:00Z the day before.
const END: i64 = NOW_H - 2;

/// Night `i` (0 = latest), local hour `local` (20..=23 or 0..=5) at UTC+8,
/// as a UTC hour.
fn night_hour(i: i64, local: i64) -> i64 {
    let off = if local >= 20 { local - 20 } else { local + 4 };
    END - 24 * i - 10 + off
}

struct Town {
    store: Arc<MetaStore<MemEngine>>,
}

fn addr(code: &str, lat: f64, lng: f64, area: &str) -> AddressRecord {
    AddressRecord {
        code: code.into(),
        lat,
        lng,
        kind: AddressKind::Standard,
        area: area.into(),
        label: String::new(),
        id: 0,
    }
}

impl Town {
    fn new() -> Self {
        let store = Arc::new(MetaStore::open(MemEngine::new(), None).unwrap());
        store
            .apply(&Command::PutAddresses(vec![
                // A1 and A2 share one slice cell; B is elsewhere.
                addr("A2", 30.0, 120.0, "north"),
                addr("A1", 30.00001, 120.00001, "north"),
                addr("B", 30.1, 120.1, "south"),
            ]))
            .unwrap();
        assert_eq!(
            cell_at(30.0, 120.0, 16),
            cell_at(30.00001, 120.00001, 16),
            "A1 and A2 must share a cell"
        );
        Town { store }
    }

    /// An event carrying an address code, at the address's point.
    fn at(&self, person: u64, hour: i64, code: &str, source: &str) {
        let a = self.store.address(code).unwrap();
        self.store
            .apply(&Command::Ingest(vec![SliceEvent {
                person,
                hour,
                cell: cell_at(a.lat, a.lng, 16),
                address: Some(code.into()),
                source: source.into(),
            }]))
            .unwrap();
    }

    /// A location-only event.
    fn near(&self, person: u64, hour: i64, lat: f64, lng: f64, source: &str) {
        self.store
            .apply(&Command::Ingest(vec![SliceEvent {
                person,
                hour,
                cell: cell_at(lat, lng, 16),
                address: None,
                source: source.into(),
            }]))
            .unwrap();
    }

    fn register(&self, person: u64, code: &str, kind: RegistrationKind, until: Option<i64>) {
        self.store
            .apply(&Command::PutRegistrations(vec![RegistrationRecord {
                person,
                address: code.into(),
                kind,
                valid_from: NOW - 400 * 86_400,
                valid_until: until,
            }]))
            .unwrap();
    }

    fn eval(&self, cfg: &RuleConfig, now: i64) -> Vec<TaskDraft> {
        let q = QueryEngine::new(self.store.clone());
        let mut t = q.evaluate_rules(cfg, now).unwrap().tasks;
        t.sort_by(|a, b| (a.person, a.kind).cmp(&(b.person, b.kind)));
        t
    }
}

fn kinds(t: &[TaskDraft]) -> Vec<(u64, TaskKind, String)> {
    t.iter()
        .map(|d| (d.person, d.kind, d.address.clone()))
        .collect()
}

#[test]
fn a_score_exactly_at_the_threshold_raises_a_task() {
    let town = Town::new();
    // 0.7 × 8 / 7 is 0.7999999999999999 in floating point; in thousandths
    // and half-nights it is exactly 0.8.
    let mut cfg = RuleConfig::default();
    cfg.weights.insert("meter".into(), 0.7);
    for i in 0..8 {
        town.at(1, night_hour(i, 23), "B", "meter");
    }
    for i in 0..7 {
        town.at(2, night_hour(i, 23), "B", "meter");
    }
    // Default weights: service 0.8 on 7 nights is exactly 0.8 too.
    for i in 0..7 {
        town.at(3, night_hour(i, 2), "B", "service");
    }
    let t = town.eval(&cfg, NOW);
    assert_eq!(
        kinds(&t),
        vec![
            (1, TaskKind::RegisterNewcomer, "B".into()),
            (3, TaskKind::RegisterNewcomer, "B".into())
        ]
    );
    assert_eq!(t[0].score, Some(0.8));
    assert_eq!(t[0].area, "south");
    let ev = &t[0].evidence[0];
    assert_eq!(
        (
            ev.source.as_str(),
            ev.nights_by_address,
            ev.nights_by_location
        ),
        ("meter", 8, 0)
    );
    assert!((ev.contribution - 0.8).abs() < 1e-9);
    // A higher threshold drops them; scores cap at 1.
    cfg.threshold = 0.801;
    assert!(town.eval(&cfg, NOW).is_empty());
}

#[test]
fn the_same_night_counts_once_per_source_and_sources_add_up() {
    let town = Town::new();
    // Three events in one night from one source: one night.
    for h in [20, 23, 3] {
        town.at(1, night_hour(0, h), "B", "rental");
    }
    assert!(town.eval(&RuleConfig::default(), NOW).is_empty());
    // rental 4 nights (4/7) + utility 3 nights (1.8/7) = 5.8/7 ≈ 0.83.
    for i in 1..4 {
        town.at(1, night_hour(i, 22), "B", "rental");
    }
    for i in 0..3 {
        town.at(1, night_hour(i, 1), "B", "utility");
    }
    let t = town.eval(&RuleConfig::default(), NOW);
    assert_eq!(kinds(&t), vec![(1, TaskKind::RegisterNewcomer, "B".into())]);
    assert!((t[0].score.unwrap() - 5.8 / 7.0).abs() < 1e-9);
    assert_eq!(t[0].evidence.len(), 2);
}

#[test]
fn night_boundaries_follow_the_time_zone() {
    let town = Town::new();
    // Person 1: always at local 19:00 and 06:00 (outside the night) → nothing.
    for i in 0..14 {
        town.at(1, night_hour(i, 20) - 1, "B", "rental");
        town.at(1, night_hour(i, 5) + 1, "B", "rental");
    }
    // Person 2: first and last hour of each night (20:00 and 05:00 local).
    for i in 0..7 {
        town.at(2, night_hour(i, 20), "B", "rental");
        town.at(2, night_hour(i + 7, 5), "B", "rental");
    }
    let t = town.eval(&RuleConfig::default(), NOW);
    assert_eq!(kinds(&t), vec![(2, TaskKind::RegisterNewcomer, "B".into())]);
    assert_eq!(t[0].score, Some(1.0));

    // The same UTC hours read at UTC−5 fall outside that zone's nights
    // (20:00 local at UTC+8 is 07:00 at UTC−5).
    let utc_minus_5 = RuleConfig {
        utc_offset_hours: -5,
        ..RuleConfig::default()
    };
    assert!(town.eval(&utc_minus_5, NOW).is_empty());

    // Only nights that ended at or before `now` count: evaluated one second
    // before the latest night ended, that night is not counted yet and the
    // 14 nights reach one day further back.
    let town = Town::new();
    for i in 0..7 {
        town.at(5, night_hour(i, 23), "B", "service");
    }
    let t = town.eval(&RuleConfig::default(), END * 3600);
    assert_eq!(kinds(&t), vec![(5, TaskKind::RegisterNewcomer, "B".into())]);
    assert!(town.eval(&RuleConfig::default(), END * 3600 - 1).is_empty());
}

#[test]
fn location_only_nights_earn_half_credit_for_the_addresses_of_their_cell() {
    let town = Town::new();
    // 14 nights of rental seen only by location in A1/A2's cell: 1.0 × 7 / 7
    // = 1.0. A1 and A2 tie; the lowest code wins.
    for i in 0..14 {
        town.near(1, night_hour(i, 22), 30.000005, 120.000005, "rental");
    }
    let t = town.eval(&RuleConfig::default(), NOW);
    assert_eq!(
        kinds(&t),
        vec![(1, TaskKind::RegisterNewcomer, "A1".into())]
    );
    assert_eq!(t[0].evidence[0].nights_by_location, 14);
    assert_eq!(t[0].evidence[0].nights_by_address, 0);
    // 13 nights by location is 6.5/7 < 0.8? No: 0.93 ≥ 0.8. 11 nights is
    // 5.5/7 ≈ 0.786 < 0.8.
    let town = Town::new();
    for i in 0..11 {
        town.near(2, night_hour(i, 22), 30.000005, 120.000005, "rental");
    }
    assert!(town.eval(&RuleConfig::default(), NOW).is_empty());
    // A night seen both by address and by location counts once, at 1.
    for i in 0..11 {
        town.at(2, night_hour(i, 23), "A2", "rental");
    }
    let t = town.eval(&RuleConfig::default(), NOW);
    assert_eq!(
        kinds(&t),
        vec![(2, TaskKind::RegisterNewcomer, "A2".into())]
    );
    assert_eq!(t[0].score, Some(1.0));
    let ev = &t[0].evidence[0];
    assert_eq!((ev.nights_by_address, ev.nights_by_location), (11, 0));
    // Location in another cell earns nothing for B.
    let town = Town::new();
    for i in 0..14 {
        town.near(3, night_hour(i, 22), 30.05, 120.05, "rental");
    }
    let t = town.eval(&RuleConfig::default(), NOW);
    assert!(t.iter().all(|d| d.address != "B"), "{t:?}");
}

#[test]
fn ties_go_to_the_lowest_code_and_registration_decides_the_kind() {
    let town = Town::new();
    // Person 1 equally at B and A2 (direct): A2 < B.
    for i in 0..7 {
        town.at(1, night_hour(i, 21), "B", "service");
        town.at(1, night_hour(i, 2), "A2", "service");
    }
    // Person 2 registered at B and living at B: nothing.
    // Person 3 registered at B, living at A1: mismatch.
    for i in 0..14 {
        town.at(2, night_hour(i, 21), "B", "rental");
        town.at(3, night_hour(i, 21), "A1", "rental");
    }
    town.register(2, "B", RegistrationKind::Permanent, None);
    town.register(3, "B", RegistrationKind::Permanent, None);
    let t = town.eval(&RuleConfig::default(), NOW);
    assert_eq!(
        kinds(&t),
        vec![
            (1, TaskKind::RegisterNewcomer, "A2".into()),
            (3, TaskKind::ResidenceMismatch, "A1".into()),
        ]
    );
    assert_eq!(t[1].registration.as_ref().unwrap().address, "B");
    assert_eq!(t[1].last_seen_hour, Some(night_hour(0, 21)));
}

#[test]
fn departures_use_the_90_day_and_168_hour_edges() {
    let town = Town::new();
    let day = 86_400;
    let temp = RegistrationKind::Temporary;
    // Ends exactly at now + 90 days, no activity: task.
    town.register(1, "B", temp, Some(NOW + 90 * day));
    // Ends one second later: outside the horizon.
    town.register(2, "B", temp, Some(NOW + 90 * day + 1));
    // Ends exactly now: not in (now, now + 90 d].
    town.register(3, "B", temp, Some(NOW));
    // Active at hour(now) − 168 (the first hour counted): no task.
    town.register(4, "B", temp, Some(NOW + day));
    town.at(4, NOW_H - 168, "B", "access");
    // Active only at hour(now) − 169 and in the current hour: task, last
    // seen at − 169.
    town.register(5, "B", temp, Some(NOW + day));
    town.at(5, NOW_H - 169, "B", "access");
    town.at(5, NOW_H, "B", "access");
    // Permanent registrations never get a departure task.
    town.register(6, "B", RegistrationKind::Permanent, None);
    let t = town.eval(&RuleConfig::default(), NOW);
    let dep: Vec<_> = t
        .iter()
        .filter(|d| d.kind == TaskKind::VerifyDeparture)
        .map(|d| (d.person, d.last_seen_hour))
        .collect();
    assert_eq!(dep, vec![(1, None), (5, Some(NOW_H - 169))]);
    assert!(t
        .iter()
        .all(|d| d.kind != TaskKind::VerifyDeparture || d.score.is_none()));

    // With a jurisdiction, only activity inside it counts: person 4 was
    // active at B (area south), which is outside "north".
    let cfg = RuleConfig {
        jurisdiction: Some(vec![Region::Area("north".into())]),
        ..RuleConfig::default()
    };
    let dep: Vec<_> = town
        .eval(&cfg, NOW)
        .into_iter()
        .filter(|d| d.kind == TaskKind::VerifyDeparture)
        .map(|d| d.person)
        .collect();
    assert_eq!(dep, vec![1, 4, 5]);
}
