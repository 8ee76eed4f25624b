//! The generator's properties: determinism, realistic shape, truth that
//! matches the events.

use super::day::DayCtx;
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
