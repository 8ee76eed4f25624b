//! Micro-benchmarks of the hot paths: placing events (S2 cell mapping),
//! applying an ingest batch, the bitmap merge, and the four queries (and
//! region occupancy) on a small generated town held in RocksDB.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use hourcell_query::polygon::{MultiPolygon, Polygon, Vertex};
use hourcell_query::validate::{check_addresses, check_registrations, place_events, RawEvent};
use hourcell_query::{QueryEngine, Region};
use hourcell_storage::cell::cell_at;
use hourcell_storage::codec::{encode_bitmap, encode_day_set, merge_values};
use hourcell_storage::{keys, Command, KvEngine, MetaStore, RocksConfig, RocksEngine};
use hourcell_town::{Town, TownConfig};
use roaring::RoaringBitmap;

fn loaded(town: &Town, dir: &std::path::Path) -> Arc<MetaStore<RocksEngine>> {
    let s = Arc::new(
        MetaStore::open(
            RocksEngine::open(dir, &RocksConfig::default()).unwrap(),
            Some(16),
        )
        .unwrap(),
    );
    let addrs = town.raw_addresses();
    s.apply(&Command::PutAddresses(
        check_addresses(s.as_ref(), &addrs).0,
    ))
    .unwrap();
    let regs = town.raw_registrations();
    s.apply(&Command::PutRegistrations(
        check_registrations(s.as_ref(), &regs).0,
    ))
    .unwrap();
    for d in 0..town.config().days {
        let ev = town.raw_events(d);
        for chunk in ev.chunks(20_000) {
            let (ok, _) = place_events(s.as_ref(), chunk, i64::MAX / 2);
            s.apply(&Command::Ingest(ok)).unwrap();
        }
    }
    s.engine().compact().unwrap();
    s
}

fn benches(c: &mut Criterion) {
    c.bench_function("cell_at level 16", |b| {
        b.iter(|| cell_at(black_box(30.2741), black_box(120.1551), 16))
    });

    let k = keys::hour_slice(1);
    let a = encode_bitmap(&RoaringBitmap::from_iter((0..20_000u32).step_by(3)));
    let o = encode_bitmap(&RoaringBitmap::from_iter((0..20_000u32).step_by(7)));
    c.bench_function("merge hour bitmaps (7k + 3k ids)", |b| {
        b.iter(|| merge_values(&k, Some(&a), [&o[..]]).unwrap())
    });

    // A busy cell-day: 400 persons stored, one hour's batch of 60 arriving.
    let k = keys::cell_day(1, 1);
    let stored: Vec<(u32, u32)> = (0..400u32).map(|i| (i * 97, 0x00f0_00ff)).collect();
    let batch: Vec<(u32, u32)> = (0..60u32).map(|i| (i * 601, 1 << 9)).collect();
    let (a, o) = (encode_day_set(&stored), encode_day_set(&batch));
    c.bench_function("merge cell-day sets (400 + 60 persons)", |b| {
        b.iter(|| merge_values(&k, Some(&a), [&o[..]]).unwrap())
    });

    let town = Town::new(TownConfig {
        persons: 5_000,
        days: 3,
        ..TownConfig::default()
    });
    let day0 = town.raw_events(0);
    let batch: Vec<RawEvent> = day0.iter().take(10_000).cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    let store = loaded(&town, dir.path());

    c.bench_function("place 10k events", |b| {
        b.iter(|| place_events(store.as_ref(), black_box(&batch), i64::MAX / 2))
    });

    let (placed, _) = place_events(store.as_ref(), &batch, i64::MAX / 2);
    let cmd = Command::Ingest(placed);
    // Held (the default): the batch's rows are logged synced and its
    // slices written with those of ~100 other batches; the write of held
    // slices is amortised over the iterations.
    c.bench_function("apply 10k-event batch (synced, RocksDB)", |b| {
        b.iter_batched(
            || cmd.clone(),
            |cmd| store.apply(&cmd).unwrap(),
            BatchSize::SmallInput,
        )
    });
    store.set_defer_events(0).unwrap();
    c.bench_function(
        "apply 10k-event batch (synced, RocksDB, hold_events = 0)",
        |b| {
            b.iter_batched(
                || cmd.clone(),
                |cmd| store.apply(&cmd).unwrap(),
                BatchSize::SmallInput,
            )
        },
    );

    let q = QueryEngine::new(store.clone());
    let cfg = town.config();
    let end = cfg.start_unix + cfg.days as i64 * 86_400;
    let home = &town.addresses()[0];
    let person = town.persons()[0];
    let circle = Region::Circle {
        lat: home.lat,
        lng: home.lng,
        radius_m: 1000.0,
    };
    let addr = Region::Addresses(vec![home.code.clone()]);
    c.bench_function("occupancy one address 24h", |b| {
        b.iter(|| q.occupancy(&addr, end - 86_400, end, end).unwrap())
    });
    c.bench_function("who-was-at 1 km circle 24h", |b| {
        b.iter(|| q.who_was_at(&circle, end - 86_400, end, end).unwrap())
    });
    // Region occupancy (distinct persons per hour and over the window):
    // the per-day OR of each person's hours (query/src/masks.rs).
    c.bench_function("occupancy 1 km circle 24h", |b| {
        b.iter(|| q.occupancy(&circle, end - 86_400, end, end).unwrap())
    });
    let (dlat, dlng) = (
        1_000.0 / 111_000.0,
        1_000.0 / 111_000.0 / home.lat.to_radians().cos(),
    );
    let square = Region::Rect {
        lat_lo: home.lat - dlat,
        lng_lo: home.lng - dlng,
        lat_hi: home.lat + dlat,
        lng_hi: home.lng + dlng,
    };
    c.bench_function("occupancy 2 km square, all 3 days", |b| {
        b.iter(|| q.occupancy(&square, cfg.start_unix, end, end).unwrap())
    });
    // A district as drawn on a map: 1,000 corners round the same point,
    // its radius wandering between about 0.75 and 1.05 km, with a 200 m
    // hole.
    let ring = |n: usize, r: &dyn Fn(f64) -> f64| {
        let mut ring: Vec<Vertex> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                let d = r(a) / 111_000.0;
                Vertex {
                    lat: home.lat + d * a.sin(),
                    lng: home.lng + d * a.cos() / home.lat.to_radians().cos(),
                }
            })
            .collect();
        ring.push(ring[0]);
        ring
    };
    let outer = ring(1_000, &|a| {
        900.0 + 110.0 * (3.0 * a).sin() + 40.0 * (17.0 * a).cos() + 5.0 * (301.0 * a).sin()
    });
    let district = Region::Polygon(MultiPolygon {
        polygons: vec![Polygon {
            rings: vec![outer, ring(8, &|_| 200.0)],
        }],
    });
    c.bench_function("who-was-at 1,000-vertex polygon 24h", |b| {
        b.iter(|| q.who_was_at(&district, end - 86_400, end, end).unwrap())
    });
    c.bench_function("where-was 3 days", |b| {
        b.iter(|| q.where_was(person, cfg.start_unix, end, end).unwrap())
    });
    c.bench_function("no-activity-since all registered", |b| {
        b.iter(|| q.no_activity_since(end - 86_400, end, None, None).unwrap())
    });
}

criterion_group! {
    name = hot;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(hot);
