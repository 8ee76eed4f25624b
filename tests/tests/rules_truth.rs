//! The rules against the generator's ground truth: on a 14-day town, the
//! tasks raised at the end of the period are compared with `truth.csv`'s
//! situations, per task kind, and the test fails below 0.9 precision or
//! recall. `docs/rules.md` explains which persons count as expected and
//! records the figures for a 100k-person town:
//!
//! ```sh
//! HOURCELL_RULES_PERSONS=100000 cargo test --release -p hourcell-tests \
//!     --test rules_truth -- --nocapture
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hourcell_node::config::NodeConfig;
use hourcell_storage::TaskKind;
use hourcell_town::{GenTruth, Town, TownConfig};

/// Nights a newcomer must have lived at home before the evaluation to be
/// expected to get a task: with the town's sources, fewer nights rarely
/// add up to the threshold (see docs/rules.md).
const NEWCOMER_MIN_NIGHTS: i64 = 12;

/// Whether the town's sources are expected to reach the threshold for this
/// person: a utility meter at home reports on ~92% of nights (0.6 × 12.9 /
/// 7 ≈ 1.1 over 14 nights). Without one, the rental record every third
/// night (≈ 0.6), location-only access events (≤ 0.2 a night, on 45% of
/// nights) and rare service visits average below 0.8, so such persons are
/// reported separately (docs/rules.md) rather than required.
fn observable(t: &GenTruth) -> bool {
    t.night_sources.contains(&"utility")
}

struct Score {
    /// Every person whose situation calls for this kind, observable or not.
    situation: usize,
    situation_found: usize,
    expected: usize,
    raised: usize,
    correct: usize,
    found: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        if self.raised == 0 {
            1.0
        } else {
            self.correct as f64 / self.raised as f64
        }
    }
    fn recall(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.found as f64 / self.expected as f64
        }
    }
}

/// The task a person should get, if any: (kind, address).
fn expected(t: &GenTruth, now: i64) -> Option<(TaskKind, String)> {
    let home = t.home.clone()?;
    match t.situation {
        "newcomer" => {
            let settled = t
                .arrived
                .is_none_or(|a| a <= now - NEWCOMER_MIN_NIGHTS * 86_400);
            (settled && observable(t)).then_some((TaskKind::RegisterNewcomer, home))
        }
        "away" => observable(t).then_some((TaskKind::ResidenceMismatch, home)),
        "temporary_left" => Some((TaskKind::VerifyDeparture, t.registered.clone()?)),
        _ => None,
    }
}

/// Whether a raised task is right: the person's situation calls for that
/// kind at that address (a newcomer who arrived recently still counts as
/// correct; they just are not required).
fn correct(t: &GenTruth, kind: TaskKind, address: &str) -> bool {
    match (kind, t.situation) {
        (TaskKind::RegisterNewcomer, "newcomer") => t.home.as_deref() == Some(address),
        (TaskKind::ResidenceMismatch, "away") => t.home.as_deref() == Some(address),
        (TaskKind::VerifyDeparture, "temporary_left") => t.registered.as_deref() == Some(address),
        _ => false,
    }
}

#[test]
fn tasks_match_the_towns_ground_truth() {
    let persons: u64 = std::env::var("HOURCELL_RULES_PERSONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000);
    let town = Town::new(TownConfig {
        seed: 5,
        persons,
        days: 14,
        ..TownConfig::default()
    });
    let now = town.end_unix();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 64;
    let node = hourcell_server::open_node(&cfg, Arc::new(move || now)).unwrap();
    for chunk in town.raw_addresses().chunks(50_000) {
        assert!(node.put_addresses(chunk).unwrap().1.is_empty());
    }
    for chunk in town.raw_registrations().chunks(50_000) {
        assert!(node.put_registrations(chunk).unwrap().1.is_empty());
    }
    for day in 0..14 {
        for chunk in town.raw_events(day).chunks(50_000) {
            let (_, bad) = node.ingest(chunk).unwrap();
            assert!(bad.is_empty(), "{:?}", &bad[..1]);
        }
    }

    let run = node.run_tasks(Some(now)).unwrap();
    assert!(run.created > 0);
    // Running again raises nothing new.
    assert_eq!(node.run_tasks(Some(now)).unwrap().created, 0);

    let tasks = node
        .store()
        .tasks_after(0, usize::MAX, &mut |_| true)
        .unwrap();
    let truth: HashMap<u64, GenTruth> = town.truth().into_iter().map(|t| (t.person, t)).collect();
    let raised: HashSet<(u64, TaskKind, String)> = tasks
        .iter()
        .map(|t| (t.draft.person, t.draft.kind, t.draft.address.clone()))
        .collect();
    assert_eq!(raised.len(), tasks.len(), "one task per subject");

    let mut report = String::new();
    let mut failures = Vec::new();
    for kind in TaskKind::ALL {
        let mut s = Score {
            situation: 0,
            situation_found: 0,
            expected: 0,
            raised: 0,
            correct: 0,
            found: 0,
        };
        for t in truth.values() {
            let target = match (kind, t.situation) {
                (TaskKind::RegisterNewcomer, "newcomer")
                | (TaskKind::ResidenceMismatch, "away") => t.home.clone(),
                (TaskKind::VerifyDeparture, "temporary_left") => t.registered.clone(),
                _ => None,
            };
            if let Some(a) = target {
                s.situation += 1;
                if raised.contains(&(t.person, kind, a)) {
                    s.situation_found += 1;
                }
            }
            if let Some((k, a)) = expected(t, now) {
                if k == kind {
                    s.expected += 1;
                    if raised.contains(&(t.person, k, a)) {
                        s.found += 1;
                    }
                }
            }
        }
        for (person, k, a) in &raised {
            if *k == kind {
                s.raised += 1;
                if correct(&truth[person], *k, a) {
                    s.correct += 1;
                }
            }
        }
        report.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |\n",
            kind.as_str(),
            s.situation,
            s.expected,
            s.raised,
            s.precision(),
            s.recall(),
            s.situation_found as f64 / s.situation.max(1) as f64,
        ));
        if s.precision() < 0.9 || s.recall() < 0.9 {
            failures.push(kind.as_str());
        }
    }
    println!(
        "{persons} persons, 14 days, evaluated at the end ({:.2} s):\n| kind | in situation | expected | raised | precision | recall | recall over all in situation |\n|---|---:|---:|---:|---:|---:|---:|\n{report}",
        run.seconds
    );
    assert!(failures.is_empty(), "below 0.9: {failures:?}\n{report}");
}
