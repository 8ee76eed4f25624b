//! Every query against a naive model of the same events, over random
//! worlds, regions and windows, on both engines.

use std::sync::Arc;

use hourcell_query::validate::{check_addresses, check_registrations, place_events};
use hourcell_query::{QueryEngine, Region, ShardedSource, SliceReader};
use hourcell_storage::cell::cell_at;
use hourcell_storage::shard::Layout;
use hourcell_storage::{Command, KvEngine, MemEngine, MetaStore, RocksConfig, RocksEngine};
use hourcell_tests::{World, CENTER, LEVEL};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn load<E: KvEngine>(engine: E, w: &World, seed: u64) -> Arc<MetaStore<E>> {
    let s = Arc::new(MetaStore::open(engine, Some(LEVEL)).unwrap());
    let (a, bad) = check_addresses(s.as_ref(), &w.addresses);
    assert!(bad.is_empty());
    s.apply(&Command::PutAddresses(a)).unwrap();
    let (r, bad) = check_registrations(s.as_ref(), &w.registrations);
    assert!(bad.is_empty(), "{bad:?}");
    s.apply(&Command::PutRegistrations(r)).unwrap();
    // Random batch boundaries, and one batch sent twice: ingest is
    // idempotent, so the model (which has each event once) must still match.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let now = w.hours.1 * 3600;
    let mut i = 0;
    while i < w.events.len() {
        let n = rng.gen_range(1..=60).min(w.events.len() - i);
        let (ok, bad) = place_events(s.as_ref(), &w.events[i..i + n], now);
        assert!(bad.is_empty(), "{bad:?}");
        s.apply(&Command::Ingest(ok.clone())).unwrap();
        if rng.gen_bool(0.2) {
            s.apply(&Command::Ingest(ok)).unwrap();
        }
        i += n;
    }
    s
}

/// The same world in a sharded layout: a metadata store that assigns ids
/// and `layout`'s data shards, written as a sharded cluster writes them
/// (ids first, then one part per shard, some parts applied twice).
fn load_sharded(w: &World, seed: u64, layout: Layout) -> QueryEngine {
    use hourcell_storage::shard::ShardId;
    use hourcell_storage::ShardPart;
    use std::collections::HashMap;
    type Store = hourcell_storage::ShardStore<MemEngine>;
    let open = || Arc::new(Store::open(MemEngine::new(), Some(LEVEL)).unwrap());
    let meta = Arc::new(MetaStore::open(MemEngine::new(), Some(LEVEL)).unwrap());
    // Cell shards per week, opened as the events reach a week.
    let weeks: Arc<std::sync::Mutex<HashMap<i64, Vec<Arc<Store>>>>> = Arc::default();
    let persons: Vec<Arc<Store>> = (0..layout.persons).map(|_| open()).collect();
    let (a, _) = check_addresses(meta.as_ref(), &w.addresses);
    meta.apply(&Command::PutAddresses(a)).unwrap();
    let (r, _) = check_registrations(meta.as_ref(), &w.registrations);
    meta.apply(&Command::PutRegistrations(r)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d);
    let now = w.hours.1 * 3600;
    let mut i = 0;
    while i < w.events.len() {
        let n = rng.gen_range(1..=60).min(w.events.len() - i);
        let (ok, bad) = place_events(meta.as_ref(), &w.events[i..i + n], now);
        assert!(bad.is_empty(), "{bad:?}");
        let (ps, ss) = Layout::ids_to_record(meta.as_ref(), &ok);
        if !ps.is_empty() || !ss.is_empty() {
            meta.apply(&Command::AssignIdsSeen {
                persons: ps,
                sources: ss,
            })
            .unwrap();
        }
        for wk in Layout::weeks(&ok) {
            weeks
                .lock()
                .unwrap()
                .entry(wk)
                .or_insert_with(|| (0..layout.cells).map(|_| open()).collect());
        }
        let store = |id: ShardId| match id.part {
            ShardPart::Cells => weeks.lock().unwrap()[&id.week][id.index].clone(),
            ShardPart::Persons => persons[id.index].clone(),
        };
        let parts = layout
            .split(meta.as_ref(), ok, &|id, k| store(id).knows(k))
            .unwrap();
        for (id, cmd) in parts {
            let cmd = Command::IngestShard(cmd);
            store(id).apply(&cmd).unwrap();
            if rng.gen_bool(0.2) {
                store(id).apply(&cmd).unwrap();
            }
        }
        i += n;
    }
    // Some shards (by the seed's bits) pose as held on another node, so
    // that `ShardedSource` reads them at the same time as the others.
    let dyns = move |v: Vec<Arc<Store>>, bits: u64| {
        v.into_iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s as Arc<dyn SliceReader>;
                if (bits >> (i % 32)) & 1 == 1 {
                    Arc::new(Remote(s)) as Arc<dyn SliceReader>
                } else {
                    s
                }
            })
            .collect()
    };
    let cells: hourcell_query::CellShards = Arc::new(move |wk| {
        weeks
            .lock()
            .unwrap()
            .get(&wk)
            .map(|v| dyns(v.clone(), seed))
            .unwrap_or_default()
    });
    let sharded = ShardedSource::new(layout, meta.clone(), cells, dyns(persons, seed >> 32));
    QueryEngine::with_parts(meta, Arc::new(sharded))
}

/// A shard that says it is held on another node: the same reads.
struct Remote(Arc<dyn SliceReader>);

impl SliceReader for Remote {
    fn remote(&self) -> bool {
        true
    }
    fn cell_days(
        &self,
        day: i64,
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        SliceReader::cell_days(self.0.as_ref(), day, lo, hi, f)
    }
    fn cell_days_in(
        &self,
        day: i64,
        ranges: &[(u64, u64)],
        keep: &mut dyn FnMut(u64) -> bool,
        f: &mut dyn FnMut(u64, &[(u32, u32)]),
    ) -> hourcell_query::Result<()> {
        SliceReader::cell_days_in(self.0.as_ref(), day, ranges, keep, f)
    }
    fn address_day(
        &self,
        day: i64,
        address_id: u32,
    ) -> hourcell_query::Result<Option<hourcell_storage::DaySet>> {
        SliceReader::address_day(self.0.as_ref(), day, address_id)
    }
    fn hour_slices(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(i64, roaring::RoaringBitmap),
    ) -> hourcell_query::Result<()> {
        SliceReader::hour_slices(self.0.as_ref(), from, to, f)
    }
    fn hour_slices_rev(
        &self,
        before: i64,
        f: &mut dyn FnMut(i64, roaring::RoaringBitmap) -> bool,
    ) -> hourcell_query::Result<()> {
        SliceReader::hour_slices_rev(self.0.as_ref(), before, f)
    }
    fn person_hours(
        &self,
        person: u64,
        from: i64,
        to: i64,
    ) -> hourcell_query::Result<Vec<(i64, Vec<hourcell_storage::PlaceEntry>)>> {
        SliceReader::person_hours(self.0.as_ref(), person, from, to)
    }
    fn last_active_before(
        &self,
        id: u32,
        before: i64,
        keep: &mut dyn FnMut(&[hourcell_storage::PlaceEntry]) -> bool,
    ) -> hourcell_query::Result<Option<i64>> {
        SliceReader::last_active_before(self.0.as_ref(), id, before, keep)
    }
    fn scan_person_days(
        &self,
        from_day: i64,
        to_day: i64,
        f: &mut dyn FnMut(u32, &[hourcell_storage::PlaceIds]) -> hourcell_query::Result<()>,
    ) -> hourcell_query::Result<()> {
        SliceReader::scan_person_days(self.0.as_ref(), from_day, to_day, f)
    }
}

fn random_region(rng: &mut ChaCha8Rng, w: &World) -> Region {
    match rng.gen_range(0..6) {
        0 => {
            let (a, b) = (rng.gen_range(-0.03..0.03), rng.gen_range(-0.03..0.03));
            let (c, d) = (rng.gen_range(-0.03..0.03), rng.gen_range(-0.03..0.03));
            Region::Rect {
                lat_lo: CENTER.0 + f64::min(a, b),
                lng_lo: CENTER.1 + f64::min(c, d),
                lat_hi: CENTER.0 + f64::max(a, b),
                lng_hi: CENTER.1 + f64::max(c, d),
            }
        }
        1 => Region::Circle {
            lat: CENTER.0 + rng.gen_range(-0.02..0.02),
            lng: CENTER.1 + rng.gen_range(-0.02..0.02),
            radius_m: rng.gen_range(50.0..3000.0),
        },
        2 => {
            let n = rng.gen_range(1..5);
            Region::Cells(
                (0..n)
                    .map(|_| {
                        let level = rng.gen_range(8..=22);
                        cell_at(
                            CENTER.0 + rng.gen_range(-0.02..0.02),
                            CENTER.1 + rng.gen_range(-0.02..0.02),
                            level,
                        )
                    })
                    .collect(),
            )
        }
        3 => {
            let n = rng.gen_range(1..4);
            Region::Addresses(
                (0..n)
                    .map(|_| {
                        w.addresses[rng.gen_range(0..w.addresses.len())]
                            .code
                            .clone()
                    })
                    .collect(),
            )
        }
        4 => Region::Area(
            w.addresses[rng.gen_range(0..w.addresses.len())]
                .area
                .clone(),
        ),
        _ => {
            // A star-shaped polygon (so simple), sometimes with a hole.
            use hourcell_query::polygon::{MultiPolygon, Polygon, Vertex};
            let c = (
                CENTER.0 + rng.gen_range(-0.01..0.01),
                CENTER.1 + rng.gen_range(-0.01..0.01),
            );
            let r = rng.gen_range(0.002..0.03);
            let star = |rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64| {
                let mut ring: Vec<Vertex> = (0..n)
                    .map(|i| {
                        let a =
                            (i as f64 + rng.gen_range(0.0..0.8)) / n as f64 * std::f64::consts::TAU;
                        let d = rng.gen_range(lo..hi);
                        Vertex {
                            lat: c.0 + d * a.sin(),
                            lng: c.1 + d * a.cos(),
                        }
                    })
                    .collect();
                ring.push(ring[0]);
                ring
            };
            let n = rng.gen_range(8..40);
            let mut rings = vec![star(rng, n, 0.3 * r, r)];
            if rng.gen_bool(0.5) {
                rings.push(star(rng, 8, 0.05 * r, 0.18 * r));
            }
            Region::Polygon(MultiPolygon {
                polygons: vec![Polygon { rings }],
            })
        }
    }
}

fn check_world<E: KvEngine>(engine: E, seed: u64, base_hour: i64) {
    let w = World::random(seed, base_hour);
    let store = load(engine, &w, seed);
    check_queries(&w, seed, QueryEngine::new(store));
}

fn check_queries(w: &World, seed: u64, q: QueryEngine) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let as_of_far = (w.hours.1 + 100) * 3600;
    for _ in 0..12 {
        let region = random_region(&mut rng, w);
        // Windows in seconds, not aligned to hours: they must widen.
        let from = w.hours.0 * 3600 + rng.gen_range(-3 * 3600..40 * 3600);
        let to = from + rng.gen_range(1..30 * 3600);
        let from_h = from.div_euclid(3600);
        let to_h = -((-to).div_euclid(3600));
        let who = q.who_was_at(&region, from, to, as_of_far).unwrap();
        assert_eq!((who.window.from_hour, who.window.to_hour), (from_h, to_h));
        assert_eq!(
            who.persons,
            w.who_was_at(&region, from_h, to_h),
            "who-was-at {region:?} [{from_h},{to_h})"
        );

        // as_of caps the window at the hour containing it.
        let as_of = from + rng.gen_range(0..20 * 3600);
        let capped_to = to_h.min(as_of.div_euclid(3600) + 1);
        let who = q.who_was_at(&region, from, to, as_of).unwrap();
        assert_eq!(
            who.persons,
            w.who_was_at(&region, from_h, capped_to.max(from_h))
        );

        let occ = q.occupancy(&region, from, to, as_of_far).unwrap();
        let (distinct, hours) = w.occupancy(&region, from_h, to_h);
        assert_eq!(occ.distinct, distinct, "occupancy distinct {region:?}");
        let got: Vec<(i64, u64)> = occ.hours.iter().map(|h| (h.hour, h.distinct)).collect();
        assert_eq!(got, hours);

        let person = w.events[rng.gen_range(0..w.events.len())].person;
        let ww = q.where_was(person, from, to, as_of_far).unwrap();
        let model = w.where_was(person, from_h, to_h);
        assert_eq!(ww.hours.len(), model.len());
        for h in &ww.hours {
            let (cells, addrs, srcs) = &model[&h.hour];
            assert_eq!(h.cells, cells.iter().cloned().collect::<Vec<_>>());
            assert_eq!(h.addresses, addrs.iter().cloned().collect::<Vec<_>>());
            assert_eq!(h.sources, srcs.iter().cloned().collect::<Vec<_>>());
        }

        let since = w.hours.0 * 3600 + rng.gen_range(0..48 * 3600);
        let as_of = since + rng.gen_range(0..30 * 3600);
        let scope = rng.gen_bool(0.5).then(|| random_region(&mut rng, w));
        let local = rng.gen_bool(0.4).then(|| random_region(&mut rng, w));
        let na = q
            .no_activity_since(since, as_of, scope.as_ref(), local.as_ref())
            .unwrap();
        let got: Vec<(u64, Option<i64>)> = na
            .persons
            .iter()
            .map(|p| (p.person, p.last_seen_hour))
            .collect();
        assert_eq!(
            got,
            w.no_activity_since(
                since.div_euclid(3600),
                as_of,
                scope.as_ref(),
                local.as_ref()
            ),
            "no-activity-since scope {scope:?} local {local:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn queries_match_the_model_in_memory(seed in any::<u64>(), negative in any::<bool>()) {
        // Some worlds sit before 1970, where hour arithmetic must still floor.
        let base = if negative { -30 } else { 493_000 };
        check_world(MemEngine::new(), seed, base);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// The same queries over a sharded layout (a metadata store and data
    /// shards, composed by `ShardedSource`) give the model's answers.
    #[test]
    fn queries_match_the_model_when_sharded(
        seed in any::<u64>(),
        negative in any::<bool>(),
        cells in 1u32..6,
        persons in 1u32..4,
    ) {
        let base = if negative { -30 } else { 493_000 };
        let w = World::random(seed, base);
        let layout = Layout::new(cells, persons).unwrap();
        check_queries(&w, seed, load_sharded(&w, seed, layout));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn queries_match_the_model_on_rocksdb(seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(dir.path(), &RocksConfig { block_cache_bytes: 8 << 20, ..RocksConfig::default() }).unwrap();
        check_world(e, seed, 493_000);
    }
}

#[test]
fn unknown_address_and_area_are_named_errors() {
    let w = World::random(1, 493_000);
    let q = QueryEngine::new(load(MemEngine::new(), &w, 1));
    let e = q
        .who_was_at(&Region::Addresses(vec!["NOPE".into()]), 0, 3600, 7200)
        .unwrap_err()
        .to_string();
    assert!(e.contains("NOPE") && e.contains("region"), "{e}");
    let e = q
        .occupancy(&Region::Area("Z9".into()), 0, 3600, 7200)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Z9"), "{e}");
    let e = q
        .no_activity_since(100, 50, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("since"), "{e}");
}
