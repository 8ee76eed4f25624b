//! A sharded node answers exactly as an unsharded one: the same generated
//! town loaded into a plain single node and into a one-node cluster with
//! cell and person shards (each its own raft group), then every query, the
//! rules, retention and a restart compared.

use std::sync::Arc;

use hourcell_cli::dev::load_town;
use hourcell_node::config::{ClusterConfig, NodeConfig, PeerConfig};
use hourcell_node::node::Node;
use hourcell_query::Region;
use hourcell_town::{Town, TownConfig};

fn config(dir: &std::path::Path, shards: Option<(u32, u32)>, retention_days: u32) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir.to_path_buf());
    cfg.block_cache_mb = 32;
    cfg.security.insecure = true;
    cfg.security.anonymous_roles = vec!["all".into()];
    cfg.security.retention_days = retention_days;
    cfg.rules.hourly = false;
    if let Some((c, p)) = shards {
        let port = hourcell_test_support::procs::free_port();
        cfg.security.cluster_secret = Some(hourcell_node::config::Secret(
            "sharded-test-cluster-secret-0123456789".into(),
        ));
        cfg.cluster = Some(ClusterConfig {
            node_id: 1,
            peers: vec![PeerConfig {
                id: 1,
                addr: format!("127.0.0.1:{port}"),
            }],
            tick_ms: 20,
            join: false,
            cell_shards: c,
            person_shards: p,
            replicas: 3,
            ..Default::default()
        });
    }
    cfg
}

fn town() -> Town {
    Town::new(TownConfig {
        seed: 11,
        persons: 400,
        days: 6,
        ..TownConfig::default()
    })
}

/// Waits until the node leads every one of its groups (a one-node
/// cluster elects itself).
fn wait_ready(node: &Node) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while node.read_barrier_all().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A polygon with a hole around a point: a jagged outer ring of 24
/// corners and a small square hole at its centre.
fn polygon_around(lat: f64, lng: f64, k: usize) -> Region {
    use hourcell_query::polygon::{MultiPolygon, Polygon, Vertex};
    let mut outer: Vec<Vertex> = (0..24)
        .map(|i| {
            let a = i as f64 / 24.0 * std::f64::consts::TAU;
            let r = if (i + k) % 3 == 0 { 0.003 } else { 0.006 };
            Vertex {
                lat: lat + r * a.sin(),
                lng: lng + r * a.cos(),
            }
        })
        .collect();
    outer.push(outer[0]);
    let d = 0.0008;
    let hole = [(-d, -d), (-d, d), (d, d), (d, -d), (-d, -d)]
        .iter()
        .map(|&(x, y)| Vertex {
            lat: lat + y,
            lng: lng + x,
        })
        .collect();
    Region::Polygon(MultiPolygon {
        polygons: vec![Polygon {
            rings: vec![outer, hole],
        }],
    })
}

/// Every answer both nodes give, as text, for one comparison.
fn answers(node: &Node, town: &Town) -> Vec<String> {
    let q = node.query();
    let start = town.config().start_unix;
    let end = town.end_unix();
    let mut out = Vec::new();
    let addrs = town.addresses();
    for (k, a) in addrs.iter().enumerate().step_by(addrs.len() / 12 + 1) {
        let day = start + (k as i64 % 6) * 86_400;
        for region in [
            Region::Circle {
                lat: a.lat,
                lng: a.lng,
                radius_m: 300.0 + 100.0 * k as f64 % 900.0,
            },
            Region::Rect {
                lat_lo: a.lat - 0.004,
                lng_lo: a.lng - 0.004,
                lat_hi: a.lat + 0.003,
                lng_hi: a.lng + 0.005,
            },
            Region::Addresses(vec![a.code.clone()]),
            Region::Area(a.area.clone()),
            polygon_around(a.lat, a.lng, k),
        ] {
            let who = q.who_was_at(&region, day, day + 86_400, end);
            // An error would compare equal too: make sure it is an answer.
            assert!(who.is_ok(), "{who:?}");
            out.push(format!("{who:?}"));
            out.push(format!(
                "{:?}",
                q.occupancy(&region, day, day + 86_400, end)
            ));
            // The grid reads cell slices through the same fan-out.
            out.push(format!(
                "{:?}",
                q.occupancy_grid(&region, day, day + 86_400, end, 14, true)
            ));
        }
    }
    for p in town.persons().iter().step_by(23) {
        out.push(format!("{:?}", q.where_was(*p, start, end, end)));
    }
    let area = Region::Area(addrs[0].area.clone());
    let poly = polygon_around(addrs[0].lat, addrs[0].lng, 1);
    for (since, scope, local) in [
        (end - 3 * 86_400, None, None),
        (end - 86_400, Some(&area), None),
        (end - 2 * 86_400, None, Some(&area)),
        (end - 86_400, Some(&poly), None),
        (end - 2 * 86_400, None, Some(&poly)),
    ] {
        out.push(format!(
            "{:?}",
            q.no_activity_since(since, end, scope, local)
        ));
    }
    let rules = hourcell_query::RuleConfig::default();
    let ev = q.evaluate_rules(&rules, end).unwrap();
    // The same drafts; their order follows the person index scan, which a
    // sharded node walks shard by shard.
    let mut drafts: Vec<String> = ev.tasks.iter().map(|t| format!("{t:?}")).collect();
    drafts.sort();
    out.push(drafts.join("\n"));
    let st = node.stats().unwrap();
    out.push(format!(
        "persons {} addresses {} registrations {} hours {:?}..{:?}",
        st.persons, st.addresses, st.registrations, st.first_hour, st.last_hour
    ));
    out
}

fn assert_same(a: &[String], b: &[String], when: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x, y, "{when}: answer {i} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_node_answers_as_an_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let plain_dir = dir.path().join("plain");
    let sharded_dir = dir.path().join("sharded");
    let town_end = town().end_unix();
    let clock: hourcell_node::node::Clock = Arc::new(move || town_end);

    let plain =
        hourcell_server::open_node(&config(&plain_dir, None, 36_500), clock.clone()).unwrap();
    let sharded =
        hourcell_server::open_node(&config(&sharded_dir, Some((4, 3)), 36_500), clock.clone())
            .unwrap();
    let (p, s) = (plain.clone(), sharded.clone());
    let (a, b) = tokio::task::spawn_blocking(move || {
        wait_ready(&s);
        load_town(&p, town(), false).unwrap();
        load_town(&s, town(), false).unwrap();
        let t = town();
        (answers(&p, &t), answers(&s, &t))
    })
    .await
    .unwrap();
    assert_same(&a, &b, "after loading");
    // Non-trivial answers: persons found, grid cells counted, tasks raised.
    assert!(a.iter().any(|x| x.contains("GridCount")));
    assert!(a
        .iter()
        .any(|x| x.contains("persons: [") && !x.contains("persons: []")));
    assert!(
        a[a.len() - 2].contains("TaskDraft"),
        "the rules raised no task"
    );

    // Every data shard holds data (the layout spreads the town), all in one
    // shared engine beside the metadata store and the raft log.
    let mut dirs: Vec<String> = std::fs::read_dir(&sharded_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".frozen"))
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["db", "raft", "shards"]);
    {
        let sh = sharded.shards().expect("sharded");
        for (g, store) in sh.all() {
            let (postings, places) = store.count_postings().unwrap();
            assert!(postings + places > 0, "shard group {g} is empty");
        }
    }

    // The shards' dictionaries have holes; a restart must read them back.
    sharded.shutdown();
    drop(sharded);
    let sharded = tokio::task::spawn_blocking({
        let dir = sharded_dir.clone();
        let clock = clock.clone();
        move || {
            let n = hourcell_server::open_node(&config(&dir, Some((4, 3)), 36_500), clock).unwrap();
            wait_ready(&n);
            n
        }
    })
    .await
    .unwrap();
    let s = sharded.clone();
    let b = tokio::task::spawn_blocking(move || answers(&s, &town()))
        .await
        .unwrap();
    assert_same(&a, &b, "after a restart");

    // Tasks raised, and a person-level query audited, three days before
    // the town's end: both go with the hours below, sharded or not.
    // Besides the town, a visitor seen only on its first day, a Sunday:
    // the last day of a week that retention removes whole.
    let early = town().end_unix() - 3 * 86_400;
    let visitor = 4_242_424_242u64;
    for n in [&plain, &sharded] {
        let seen = [hourcell_query::validate::RawEvent {
            person: visitor,
            time: hourcell_query::validate::EventTime::Unix(town().config().start_unix + 12 * 3600),
            lat: None,
            lng: None,
            address: Some(town().addresses()[1].code.clone()),
            source: "access".into(),
        }];
        let (n, seen) = (n.clone(), seen.to_vec());
        let took = tokio::task::spawn_blocking(move || n.ingest(&seen).unwrap())
            .await
            .unwrap();
        assert_eq!(took.0, 1, "{:?}", took.1);
    }
    for n in [&plain, &sharded] {
        let raised = n.run_tasks(Some(early)).unwrap();
        assert!(raised.created > 0, "the rules raised no task as of {early}");
        n.audit(vec![hourcell_storage::AuditEntry {
            time: early,
            principal: "inspector".into(),
            rpc: "Query.WhereWas".into(),
            parameters: "{\"person\":17}".into(),
            outcome: "ok".into(),
            ..Default::default()
        }])
        .unwrap();
    }

    // Retention removes the same hours from every shard: both reopen
    // with a two-day limit and expire.
    plain.shutdown();
    sharded.shutdown();
    drop(plain);
    drop(sharded);
    let plain = hourcell_server::open_node(&config(&plain_dir, None, 2), clock.clone()).unwrap();
    let sharded = tokio::task::spawn_blocking({
        let dir = sharded_dir.clone();
        let clock = clock.clone();
        move || {
            let n = hourcell_server::open_node(&config(&dir, Some((4, 3)), 2), clock).unwrap();
            wait_ready(&n);
            n
        }
    })
    .await
    .unwrap();
    let weeks_before = sharded.shards().unwrap().weeks();
    let version_before = sharded.store().shard_map_version();
    assert_eq!(
        weeks_before.len(),
        2,
        "the town spans two weeks: {weeks_before:?}"
    );
    // Each person's last hour and whether they are registered, before
    // retention (the unsharded node's answer, which the sharded one
    // agreed with above).
    let (p, s, t) = (plain.clone(), sharded.clone(), town());
    let last_hour: Vec<(u64, Option<i64>, bool, Option<u32>)> =
        tokio::task::spawn_blocking(move || {
            let (start, end) = (t.config().start_unix, t.end_unix());
            let registered: std::collections::HashSet<u64> =
                t.registry().iter().map(|r| r.person).collect();
            t.persons()
                .into_iter()
                .chain([visitor])
                .map(|person| {
                    let w = p.query().where_was(person, start, end, end).unwrap();
                    let last = w.hours.iter().map(|h| h.hour).max();
                    let id = s.store().internal_id(person);
                    (person, last, registered.contains(&person), id)
                })
                .collect()
        })
        .await
        .unwrap();
    let (p, s) = (plain.clone(), sharded.clone());
    let (a, b, cut_p, cut_s) = tokio::task::spawn_blocking(move || {
        let cut_p = p.expire(town_end, "test").unwrap();
        let cut_s = s.expire(town_end, "test").unwrap();
        let t = town();
        (answers(&p, &t), answers(&s, &t), cut_p, cut_s)
    })
    .await
    .unwrap();
    assert_eq!(cut_p.0, cut_s.0, "the same cut-off");
    assert!(cut_p.1 > 0, "retention removed nothing");
    // The town's first week lies wholly before the cut-off: its cell
    // shards are gone, groups and files, and the shard map moved on.
    let sh = sharded.shards().unwrap();
    let weeks = sh.weeks();
    assert_eq!(
        weeks_before.len(),
        weeks.len() + 1,
        "{weeks_before:?} -> {weeks:?}"
    );
    let gone = weeks_before[0];
    assert!(!weeks.contains(&gone));
    for i in 0..4 {
        let g = hourcell_node::shards::cell_group(gone, i);
        assert!(sh.group_is_empty(g), "group {g} left data behind");
        assert!(sharded.replication().unwrap().handle.status(g).is_none());
    }
    assert!(sharded.store().shard_map_version() > version_before);
    // An unsharded node forgets the persons whose every hour went and who
    // hold no registration. A sharded one forgets them in each person
    // shard by the hour, and in the metadata group (the dictionary queries
    // answer with) by the last week recorded for them: those whose last
    // week lies wholly before the cut-off. The answers agree but for the
    // count of persons.
    let sh = sharded.shards().unwrap();
    let person_shards: Vec<_> = (0..sh.layout.persons as usize)
        .map(|index| {
            let id = hourcell_storage::shard::ShardId {
                part: hourcell_storage::ShardPart::Persons,
                week: 0,
                index,
            };
            sh.slot(id).unwrap().1
        })
        .collect();
    let cut = cut_s.0;
    let (mut by_hour, mut by_week) = (0, 0);
    for &(person, last, registered, _) in &last_hour {
        let Some(last) = last else { continue };
        let gone = last < cut;
        let week_gone = hourcell_storage::shard::week_start_hour(
            hourcell_storage::shard::week_of_hour(last) + 1,
        ) <= cut;
        by_hour += usize::from(gone && !registered);
        by_week += usize::from(week_gone && !registered);
        assert_eq!(
            plain.store().internal_id(person).is_none(),
            gone && !registered,
            "unsharded: person {person}, last hour {last}, cut-off {cut}"
        );
        assert_eq!(
            sharded.store().internal_id(person).is_none(),
            week_gone && !registered,
            "sharded metadata: person {person}, last hour {last}, cut-off {cut}"
        );
        let holders = person_shards
            .iter()
            .filter(|s| s.internal_id(person).is_some())
            .count();
        assert!(
            holders == usize::from(!gone),
            "person shards: person {person}, last hour {last}, cut-off {cut}"
        );
    }
    assert!(
        by_week > 0 && by_hour > by_week,
        "forgotten by hour {by_hour}, by week {by_week}: the town should have both kinds"
    );
    let persons = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|x| match x.strip_prefix("persons ") {
                Some(rest) => rest.split_once(' ').unwrap().1.to_string(),
                None => x.clone(),
            })
            .collect()
    };
    assert_same(&persons(&a), &persons(&b), "after retention");
    assert!(
        plain.stats().unwrap().persons < sharded.stats().unwrap().persons,
        "the unsharded node forgot nobody"
    );
    // A forgotten person seen again gets a new id, and where-was finds
    // the new hour through the person shard that forgot them.
    let (back, old_id) = last_hour
        .iter()
        .find(|(p, last, _, _)| last.is_some() && sharded.store().internal_id(*p).is_none())
        .map(|&(p, _, _, id)| (p, id.unwrap()))
        .unwrap();
    let at = (town_end / 3600 - 1) * 3600;
    let s = sharded.clone();
    let a0 = town().addresses()[0].clone();
    let hours = tokio::task::spawn_blocking(move || {
        let (n, bad) = s
            .ingest(&[hourcell_query::validate::RawEvent {
                person: back,
                time: hourcell_query::validate::EventTime::Unix(at),
                lat: None,
                lng: None,
                address: Some(a0.code.clone()),
                source: "utility".into(),
            }])
            .unwrap();
        assert_eq!((n, bad.len()), (1, 0), "{bad:?}");
        s.query()
            .where_was(back, at, at + 3600, at + 3600)
            .unwrap()
            .hours
    })
    .await
    .unwrap();
    assert_eq!(hours.len(), 1, "{hours:?}");
    let new_id = sharded.store().internal_id(back).unwrap();
    assert!(new_id > old_id, "{old_id} -> {new_id}");
    assert!(person_shards
        .iter()
        .any(|s| s.internal_id(back) == Some(new_id)));
    let st = sharded.stats().unwrap();
    assert!(
        st.first_hour.unwrap() >= cut_s.0,
        "hours before the cut-off remain: {st:?}"
    );
    // The removal is in the metadata group's audit log, as on one node.
    let last = |n: &Node| {
        let recs = n.store().audit_records(0, 10_000).unwrap();
        recs.last().map(|r| r.entry.rpc.clone())
    };
    assert_eq!(last(&sharded).as_deref(), Some("Retention"));
    assert_eq!(last(&plain).as_deref(), Some("Retention"));
    // The metadata group's tasks and audit parameters expired too.
    for (what, n) in [("plain", &plain), ("sharded", &sharded)] {
        let tasks = n.store().tasks_after(0, 100_000, &mut |_| true).unwrap();
        assert!(
            tasks.is_empty(),
            "{what}: {} tasks outlived the hours",
            tasks.len()
        );
        let recs = n.store().audit_records(0, 10_000).unwrap();
        assert_eq!(
            hourcell_storage::audit::verify_chain(&recs),
            Ok(recs.len() as u64)
        );
        let old = recs.iter().find(|r| r.entry.time == early).unwrap();
        assert!(
            old.redacted && old.entry.parameters.is_empty(),
            "{what}: {old:?}"
        );
    }
    // Data shards keep no audit chain of their own: there is one chain,
    // and `audit list` shows all of it.
    let mut stores: Vec<_> = weeks
        .iter()
        .flat_map(|w| sh.week_slots(*w))
        .map(|(_, s)| s)
        .collect();
    for index in 0..sh.layout.persons as usize {
        let id = hourcell_storage::shard::ShardId {
            part: hourcell_storage::ShardPart::Persons,
            week: 0,
            index,
        };
        stores.push(sh.slot(id).unwrap().1);
    }
    assert!(!stores.is_empty());
    for s in stores {
        // A shard store has no audit log to ask for (its type has none);
        // its engine holds no audit record either.
        use hourcell_storage::{keys, KvEngine as _};
        let mut records = 0;
        s.engine()
            .scan(
                &[keys::AUDIT],
                &keys::prefix_end(&[keys::AUDIT]),
                &mut |_, _| {
                    records += 1;
                    true
                },
            )
            .unwrap();
        assert_eq!(records, 0, "a data shard chained an audit record");
    }
    drop(person_shards);
    sharded.shutdown();
    drop(sharded);

    // The layout is fixed when the cluster is created.
    let err = hourcell_server::open_node(&config(&sharded_dir, Some((2, 2)), 2), clock.clone())
        .err()
        .expect("a different layout is refused")
        .to_string();
    assert!(
        err.contains("cell_shards = 4, person_shards = 3") && err.contains("fixed"),
        "{err}"
    );
}
