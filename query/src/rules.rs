//! The rule layer: turns population slices into work for field staff.
//!
//! Two rules, evaluated at a time `now` (see `docs/rules.md` for the prose
//! version and the precision/recall measured against generated towns):
//!
//! - **Should register.** Local nights run 20:00–06:00 in a fixed UTC
//!   offset; the nights counted are the `nights` (14) most recent that
//!   ended at or before `now`. Per person, address and source, a night
//!   counts 1 if the source saw the person at the address (an event with
//!   that address code), else ½ if it saw the person that night only by
//!   location (an event without an address code) in the slice cell of the
//!   address's point. `score = min(1, Σ_s weight(s) × Σ_nights e / 7)`. The
//!   candidate is the address with the highest score, ties to the lowest
//!   code. At or above the threshold: no valid registration gives
//!   `REGISTER_NEWCOMER`, a registration elsewhere `RESIDENCE_MISMATCH`.
//! - **Verify departure.** A temporary registration ending in
//!   `(now, now + 90 days]` whose person has no event inside the
//!   jurisdiction in the hours `[hour(now) − 168, hour(now))`.
//!
//! Scores are compared in integers (weights and threshold in thousandths,
//! nights in halves), so a score exactly at the threshold is never lost to
//! floating-point rounding.
//!
//! The rules read only through [`QueryEngine`], its [`Catalog`] and slices; they
//! keep no copy of the data. They produce [`TaskDraft`]s; storing them (and
//! not raising the same task twice) is the store's `RaiseTasks` command.

use std::collections::{BTreeMap, HashMap};

use hourcell_storage::{
    AddressRecord, PlaceIds, RegistrationKind, RegistrationRecord, SourceEvidence, TaskDraft,
    TaskKind,
};

use crate::engine::QueryEngine;
use crate::error::{QueryError, Result};
use crate::region::Region;
use crate::source::Catalog;
use crate::time::hour_floor;

/// Rule settings. Defaults are the ones the product specifies.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    /// Local time zone as a whole-hour offset from UTC (data is kept by UTC
    /// hour, so a night can only start on an hour boundary).
    pub utc_offset_hours: i32,
    /// Credibility weight per source label, in `[0, 1]`, at most three
    /// decimals.
    pub weights: BTreeMap<String, f64>,
    /// Weight of a source label not in `weights`.
    pub unknown_weight: f64,
    /// Score at or above which a should-register task is raised.
    pub threshold: f64,
    /// Nights counted.
    pub nights: u32,
    /// Departure: registrations ending within this many days.
    pub departure_days: i64,
    /// Departure: hours without local activity.
    pub inactivity_hours: i64,
    /// Where "local" activity counts for departures: any of these regions
    /// (e.g. areas); `None` = everywhere.
    pub jurisdiction: Option<Vec<Region>>,
    /// A rejected task's subject is not raised again for this many days.
    pub suppress_days: i64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            utc_offset_hours: 8,
            weights: [
                ("rental", 1.0),
                ("service", 0.8),
                ("utility", 0.6),
                ("access", 0.4),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            unknown_weight: 0.2,
            threshold: 0.8,
            nights: 14,
            departure_days: 90,
            inactivity_hours: 168,
            jurisdiction: None,
            suppress_days: 30,
        }
    }
}

/// `x` in thousandths, exactly; more than three decimals is an error.
fn milli(field: &'static str, x: f64) -> Result<i64> {
    let m = (x * 1000.0).round();
    if !x.is_finite() || !(0.0..=1.0).contains(&x) || (x * 1000.0 - m).abs() > 1e-6 {
        return Err(QueryError::invalid(
            field,
            x,
            "must be between 0 and 1 with at most three decimals",
        ));
    }
    Ok(m as i64)
}

impl RuleConfig {
    pub fn validate(&self) -> Result<()> {
        self.compiled().map(|_| ())
    }

    fn compiled(&self) -> Result<Compiled> {
        if !(-12..=14).contains(&self.utc_offset_hours) {
            return Err(QueryError::invalid(
                "utc_offset_hours",
                self.utc_offset_hours,
                "must be between -12 and 14",
            ));
        }
        if !(1..=31).contains(&self.nights) {
            return Err(QueryError::invalid("nights", self.nights, "must be 1..=31"));
        }
        if self.departure_days < 1 || self.inactivity_hours < 1 || self.suppress_days < 0 {
            return Err(QueryError::invalid(
                "departure_days/inactivity_hours/suppress_days",
                format!(
                    "{}/{}/{}",
                    self.departure_days, self.inactivity_hours, self.suppress_days
                ),
                "must be positive",
            ));
        }
        let mut weights = HashMap::new();
        for (k, v) in &self.weights {
            weights.insert(k.clone(), milli("weights", *v)?);
        }
        let threshold = milli("threshold", self.threshold)?;
        if threshold == 0 {
            return Err(QueryError::invalid(
                "threshold",
                self.threshold,
                "must be above 0",
            ));
        }
        if let Some(j) = &self.jurisdiction {
            for r in j {
                r.validate("jurisdiction")?;
            }
        }
        Ok(Compiled {
            weights,
            unknown: milli("unknown_weight", self.unknown_weight)?,
            threshold,
        })
    }
}

struct Compiled {
    weights: HashMap<String, i64>,
    unknown: i64,
    threshold: i64,
}

/// The nights of one evaluation: night `i` (0 = the latest) covers the UTC
/// hours `[end_hour − 24 i − 10, end_hour − 24 i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nights {
    /// The UTC hour at which the latest counted night ended (local 06:00).
    pub end_hour: i64,
    pub count: u32,
}

impl Nights {
    /// The `count` most recent nights that ended at or before `now`.
    pub fn at(now: i64, utc_offset_hours: i32, count: u32) -> Self {
        let h = hour_floor(now);
        let end_hour = h - (h + utc_offset_hours as i64 - 6).rem_euclid(24);
        Self { end_hour, count }
    }

    /// Which night (0 = latest) the UTC hour `hour` belongs to, if any.
    pub fn night_of(&self, hour: i64) -> Option<u32> {
        let r = self.end_hour - 1 - hour;
        if r < 0 {
            return None;
        }
        let (i, off) = (r / 24, r % 24);
        (off < 10 && i < self.count as i64).then_some(i as u32)
    }

    /// First UTC hour of the earliest night.
    pub fn first_hour(&self) -> i64 {
        self.end_hour - 24 * (self.count as i64 - 1) - 10
    }
}

/// What one evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub now: i64,
    pub nights: Nights,
    pub tasks: Vec<TaskDraft>,
    /// Persons with any presence in the nights counted.
    pub persons_scored: u64,
    pub departures_checked: u64,
}

/// Per person, source and address (or cell): a bit per night.
#[derive(Default)]
struct PersonNights {
    /// (address id, source id) → nights seen there by address code.
    direct: Vec<(u32, u16, u32)>,
    /// (slice cell, source id) → nights seen there only by location.
    located: Vec<(u64, u16, u32)>,
    last_hour: Option<i64>,
}

fn fold<K: Ord + Copy>(v: &mut Vec<K>, merge: impl Fn(&mut K, &K) -> bool) {
    v.sort_unstable();
    let mut w = 0;
    for r in 0..v.len() {
        if w > 0 {
            let cur = v[r];
            if merge(&mut v[w - 1], &cur) {
                continue;
            }
        }
        v[w] = v[r];
        w += 1;
    }
    v.truncate(w);
}

/// Everything about the address table the scorer needs, by address id.
struct AddressBook {
    /// Index `id - 1`.
    codes: Vec<String>,
    areas: Vec<String>,
    cells: Vec<u64>,
    /// Slice cell → the address with the lowest code in it.
    lowest_in_cell: HashMap<u64, u32>,
}

impl AddressBook {
    fn load(source: &dyn Catalog) -> Self {
        let level = source.slice_level();
        let mut all: Vec<(u32, String, String, u64)> = Vec::new();
        source.for_each_address(&mut |a: &AddressRecord| {
            all.push((
                a.id,
                a.code.clone(),
                a.area.clone(),
                hourcell_storage::cell::cell_at(a.lat, a.lng, level),
            ))
        });
        all.sort_unstable_by_key(|a| a.0);
        let mut book = AddressBook {
            codes: Vec::with_capacity(all.len()),
            areas: Vec::with_capacity(all.len()),
            cells: Vec::with_capacity(all.len()),
            lowest_in_cell: HashMap::new(),
        };
        for (id, code, area, cell) in all {
            // Ids are dense from 1; a gap would be a store bug, and the
            // lookups below would then simply miss.
            debug_assert_eq!(id as usize, book.codes.len() + 1);
            match book.lowest_in_cell.get(&cell) {
                Some(&other) if book.codes[other as usize - 1] <= code => {}
                _ => {
                    book.lowest_in_cell.insert(cell, id);
                }
            }
            book.codes.push(code);
            book.areas.push(area);
            book.cells.push(cell);
        }
        book
    }

    fn code(&self, id: u32) -> &str {
        &self.codes[id as usize - 1]
    }
}

/// The best address of one person and its evidence.
struct Best {
    address: u32,
    units: i64,
    evidence: Vec<SourceEvidence>,
}

/// Score units of `address`: `Σ_s weight_milli(s) × Σ_nights e2`, with e2
/// = 2 for a night by address code and 1 for a night by location only.
/// `score = units / 14000`.
fn score_address(
    p: &PersonNights,
    address: u32,
    cell: u64,
    weight: &[i64],
    labels: &[String],
    weights_f: &[f64],
) -> (i64, Vec<SourceEvidence>) {
    // source → (nights by address, nights by location)
    let mut per_source: Vec<(u16, u32, u32)> = Vec::new();
    for &(a, s, m) in &p.direct {
        if a == address {
            per_source.push((s, m, 0));
        }
    }
    for &(c, s, m) in &p.located {
        if c == cell {
            per_source.push((s, 0, m));
        }
    }
    fold(&mut per_source, |a, b| {
        if a.0 == b.0 {
            a.1 |= b.1;
            a.2 |= b.2;
            true
        } else {
            false
        }
    });
    let mut units = 0;
    let mut evidence = Vec::with_capacity(per_source.len());
    for (s, d, l) in per_source {
        let by_addr = d.count_ones();
        let by_loc = (l & !d).count_ones();
        let w = weight[s as usize];
        units += w * (2 * by_addr + by_loc) as i64;
        let wf = weights_f[s as usize];
        evidence.push(SourceEvidence {
            source: labels[s as usize].clone(),
            nights_by_address: by_addr,
            nights_by_location: by_loc,
            weight: wf,
            contribution: wf * (by_addr as f64 + 0.5 * by_loc as f64) / 7.0,
        });
    }
    (units, evidence)
}

fn best_address(
    p: &PersonNights,
    book: &AddressBook,
    weight: &[i64],
    labels: &[String],
    weights_f: &[f64],
) -> Option<Best> {
    let mut cands: Vec<u32> = p.direct.iter().map(|d| d.0).collect();
    cands.extend(
        p.located
            .iter()
            .filter_map(|l| book.lowest_in_cell.get(&l.0).copied()),
    );
    cands.sort_unstable();
    cands.dedup();
    let mut best: Option<Best> = None;
    for a in cands {
        let (units, evidence) =
            score_address(p, a, book.cells[a as usize - 1], weight, labels, weights_f);
        let better = match &best {
            None => true,
            Some(b) => units > b.units || (units == b.units && book.code(a) < book.code(b.address)),
        };
        if better {
            best = Some(Best {
                address: a,
                units,
                evidence,
            });
        }
    }
    best
}

impl QueryEngine {
    /// Runs both rules at `now` and returns the tasks they call for (the
    /// caller stores them; the store skips subjects that already have an
    /// open task or were rejected recently).
    pub fn evaluate_rules(&self, cfg: &RuleConfig, now: i64) -> Result<Evaluation> {
        let c = cfg.compiled()?;
        let source = self.catalog();
        let book = AddressBook::load(source);
        let labels = source.source_labels();
        let weight: Vec<i64> = labels
            .iter()
            .map(|l| c.weights.get(l).copied().unwrap_or(c.unknown))
            .collect();
        let weights_f: Vec<f64> = weight.iter().map(|&w| w as f64 / 1000.0).collect();
        let nights = Nights::at(now, cfg.utc_offset_hours, cfg.nights);
        let now_hour = hour_floor(now);

        // Registrations valid now, by internal id.
        let mut regs: HashMap<u32, RegistrationRecord> = HashMap::new();
        let mut temporaries: Vec<(RegistrationRecord, Option<u32>)> = Vec::new();
        let horizon = now.saturating_add(cfg.departure_days * 86_400);
        source.for_each_registration(false, &mut |r, _, id| {
            if let Some(id) = id {
                if r.valid_at(now) {
                    regs.insert(id, r.clone());
                }
            }
            if r.kind == RegistrationKind::Temporary
                && r.valid_until.is_some_and(|u| u > now && u <= horizon)
            {
                temporaries.push((r.clone(), id));
            }
        });

        // Should register: one pass over the person index.
        let mut tasks = Vec::new();
        let mut persons_scored = 0u64;
        let mut p = PersonNights::default();
        self.slices().scan_person_days(
            nights.first_hour().div_euclid(24),
            now_hour.div_euclid(24) + 1,
            &mut |id, places: &[PlaceIds]| {
                p.direct.clear();
                p.located.clear();
                p.last_hour = None;
                for e in places {
                    if e.hour > now_hour {
                        break;
                    }
                    p.last_hour = Some(e.hour);
                    let Some(n) = nights.night_of(e.hour) else {
                        continue;
                    };
                    if e.address != 0 {
                        p.direct.push((e.address, e.source, 1 << n));
                    } else {
                        p.located.push((e.cell, e.source, 1 << n));
                    }
                }
                if p.direct.is_empty() && p.located.is_empty() {
                    return Ok(());
                }
                persons_scored += 1;
                let merge3 = |a: &mut (u32, u16, u32), b: &(u32, u16, u32)| {
                    if (a.0, a.1) == (b.0, b.1) {
                        a.2 |= b.2;
                        true
                    } else {
                        false
                    }
                };
                fold(&mut p.direct, merge3);
                fold(&mut p.located, |a, b| {
                    if (a.0, a.1) == (b.0, b.1) {
                        a.2 |= b.2;
                        true
                    } else {
                        false
                    }
                });
                let Some(best) = best_address(&p, &book, &weight, &labels, &weights_f) else {
                    return Ok(());
                };
                if best.units < c.threshold * 14 {
                    return Ok(());
                }
                let code = book.code(best.address);
                let reg = regs.get(&id);
                let kind = match reg {
                    None => TaskKind::RegisterNewcomer,
                    Some(r) if r.address != code => TaskKind::ResidenceMismatch,
                    Some(_) => return Ok(()),
                };
                let Some(person) = source.external_id(id) else {
                    return Err(QueryError::Storage(hourcell_storage::StorageError::Engine(
                        format!("internal id {id} has no external id"),
                    )));
                };
                tasks.push(TaskDraft {
                    kind,
                    person,
                    address: code.to_string(),
                    area: book.areas[best.address as usize - 1].clone(),
                    score: Some((best.units as f64 / 14_000.0).min(1.0)),
                    evidence: best.evidence,
                    registration: reg.cloned(),
                    last_seen_hour: p.last_hour,
                });
                Ok(())
            },
        )?;

        // Verify departure.
        let scope = cfg.jurisdiction.as_deref();
        let from = now_hour - cfg.inactivity_hours;
        let active = self.active_ids(from, now_hour, scope)?;
        let departures_checked = temporaries.len() as u64;
        temporaries.sort_unstable_by_key(|t| t.0.person);
        for (r, id) in temporaries {
            if id.is_some_and(|i| active.contains(i)) {
                continue;
            }
            let last_seen = match id {
                Some(i) => self.last_seen(i, from, scope)?,
                None => None,
            };
            let area = source
                .address(&r.address)
                .map(|a| a.area)
                .unwrap_or_default();
            tasks.push(TaskDraft {
                kind: TaskKind::VerifyDeparture,
                person: r.person,
                address: r.address.clone(),
                area,
                score: None,
                evidence: Vec::new(),
                registration: Some(r),
                last_seen_hour: last_seen,
            });
        }
        Ok(Evaluation {
            now,
            nights,
            tasks,
            persons_scored,
            departures_checked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nights_end_at_local_six_at_or_before_now() {
        // 2026-11-28T00:00Z is 08:00 at UTC+8: the latest night ended at
        // 06:00 local = 22:00Z the day before.
        let now = 1_795_824_000; // 2026-11-28T00:00:00Z
        let n = Nights::at(now, 8, 14);
        assert_eq!(n.end_hour * 3600, now - 2 * 3600);
        // Exactly at 06:00 local the night that just ended counts.
        let at_six = n.end_hour * 3600;
        assert_eq!(Nights::at(at_six, 8, 14).end_hour, n.end_hour);
        // One second before, it has not ended yet.
        assert_eq!(Nights::at(at_six - 1, 8, 14).end_hour, n.end_hour - 24);
        // Night 0 is local 20:00–06:00: UTC hours end-10 .. end-1.
        assert_eq!(n.night_of(n.end_hour - 10), Some(0));
        assert_eq!(n.night_of(n.end_hour - 1), Some(0));
        assert_eq!(n.night_of(n.end_hour), None);
        assert_eq!(n.night_of(n.end_hour - 11), None);
        assert_eq!(n.night_of(n.end_hour - 24 - 1), Some(1));
        assert_eq!(n.night_of(n.first_hour()), Some(13));
        assert_eq!(n.night_of(n.first_hour() - 1), None);
        // UTC-5: local 06:00 is 11:00Z.
        let w = Nights::at(now, -5, 14);
        assert_eq!((w.end_hour - 5 - 6).rem_euclid(24), 0);
        assert!(w.end_hour * 3600 <= now && now - w.end_hour * 3600 < 86_400);
    }

    #[test]
    fn weights_need_at_most_three_decimals() {
        assert_eq!(milli("w", 0.6).unwrap(), 600);
        assert_eq!(milli("w", 0.8).unwrap(), 800);
        assert!(milli("w", 0.0005).is_err());
        assert!(milli("w", 1.5).is_err());
        assert!(milli("w", f64::NAN).is_err());
        let bad = RuleConfig {
            utc_offset_hours: 20,
            ..RuleConfig::default()
        };
        assert!(bad.validate().is_err());
        RuleConfig::default().validate().unwrap();
    }
}
