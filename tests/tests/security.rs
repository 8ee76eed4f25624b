//! Security through the real gRPC API: every role against every RPC,
//! purpose-bound audited person queries, small-count suppression, and
//! retention that removes whole hours and gives the disk back. A node on
//! 127.0.0.1 with bearer tokens, no anonymous access, and an injected clock.

use std::sync::atomic::Ordering;

use hourcell_proto::v1;
use hourcell_server::auth::{issue_token, Claims, Role, Rpc, ALL_ROLES};
use hourcell_test_support::secure::{audit, req, start_with, token, Harness, T0};
use tonic::transport::Channel;
use tonic::{Code, Status};

async fn start(retention_days: u32) -> Harness {
    start_with(retention_days, 0, |_| {}).await
}

async fn start_limited(retention_days: u32, requests_per_sec: u32) -> Harness {
    start_with(retention_days, requests_per_sec, |_| {}).await
}

/// Bytes of the RocksDB table files under `dir` (what the data occupies
/// on disk; logs and the WAL aside).
fn sst_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            total += sst_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "sst") {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

fn circle() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Circle(v1::Circle {
            lat: 30.2741,
            lng: 120.1551,
            radius_m: 500.0,
        })),
    })
}

/// Area A1 (of address H1): a published unit of occupancy.
fn area_a1() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Area("A1".into())),
    })
}

fn window(from: i64, to: i64) -> Option<v1::Window> {
    Some(v1::Window {
        start: from,
        end: to,
        as_of: Some(to),
    })
}

/// Calls `rpc` with a small valid request; the status if it failed.
async fn call(ch: &Channel, rpc: Rpc, t: &str) -> Result<(), Status> {
    use v1::admin_client::AdminClient as A;
    use v1::audit_client::AuditClient as Au;
    use v1::ingest_client::IngestClient as I;
    use v1::query_client::QueryClient as Q;
    use v1::registry_client::RegistryClient as R;
    use v1::tasks_client::TasksClient as T;
    let c = ch.clone();
    let w = window(T0, T0 + 86_400);
    match rpc {
        Rpc::Ingest => I::new(c)
            .ingest(req(
                v1::IngestRequest {
                    events: vec![v1::Event {
                        person: 9_999,
                        time: Some(v1::event::Time::UnixSeconds(T0 + 600)),
                        lat: None,
                        lng: None,
                        address: "H1".into(),
                        source: "access".into(),
                    }],
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::PutAddresses => R::new(c)
            .put_addresses(req(v1::PutAddressesRequest { addresses: vec![] }, t))
            .await
            .map(|_| ()),
        Rpc::PutRegistrations => R::new(c)
            .put_registrations(req(
                v1::PutRegistrationsRequest {
                    registrations: vec![],
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::GetAddress => R::new(c)
            .get_address(req(v1::GetAddressRequest { code: "H1".into() }, t))
            .await
            .map(|_| ()),
        Rpc::GetRegistration => R::new(c)
            .get_registration(req(
                v1::GetRegistrationRequest {
                    person: 1,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::WhoWasAt => Q::new(c)
            .who_was_at(req(
                v1::WhoWasAtRequest {
                    region: circle(),
                    window: w,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::WhereWas => Q::new(c)
            .where_was(req(
                v1::WhereWasRequest {
                    person: 1,
                    window: w,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::Occupancy => Q::new(c)
            .occupancy(req(
                v1::OccupancyRequest {
                    region: area_a1(),
                    window: w,
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::OccupancyGrid => Q::new(c)
            .occupancy_grid(req(
                v1::OccupancyGridRequest {
                    region: circle(),
                    window: w,
                    level: 14,
                    hourly: false,
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::NoActivitySince => Q::new(c)
            .no_activity_since(req(
                v1::NoActivitySinceRequest {
                    since: T0,
                    as_of: Some(T0 + 86_400),
                    scope: None,
                    local: None,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::Status => A::new(c)
            .status(req(v1::StatusRequest::default(), t))
            .await
            .map(|_| ()),
        Rpc::Compact => A::new(c)
            .compact(req(v1::CompactRequest {}, t))
            .await
            .map(|_| ()),
        Rpc::AddNode => A::new(c)
            .add_node(req(
                v1::AddNodeRequest {
                    id: 7,
                    addr: "127.0.0.1:1".into(),
                    replace: false,
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::RemoveNode => A::new(c)
            .remove_node(req(v1::RemoveNodeRequest { id: 7 }, t))
            .await
            .map(|_| ()),
        Rpc::SplitShard => A::new(c)
            .split_shard(req(v1::SplitShardRequest { group: 7 }, t))
            .await
            .map(|_| ()),
        Rpc::Expire => A::new(c)
            .expire(req(v1::ExpireRequest {}, t))
            .await
            .map(|_| ()),
        Rpc::Backup => {
            let mut s = A::new(c)
                .backup(req(
                    v1::BackupRequest {
                        group: 1,
                        purpose: "matrix".into(),
                        case_ref: "M-1".into(),
                        unchanged_since: 0,
                    },
                    t,
                ))
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        Rpc::TasksRun => T::new(c)
            .run(req(
                v1::RunTasksRequest {
                    at: Some(T0 + 86_400),
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::TasksList => T::new(c)
            .list(req(
                v1::ListTasksRequest {
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::TasksGet => T::new(c)
            .get(req(
                v1::GetTaskRequest {
                    id: 1,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::TasksUpdate => T::new(c)
            .update(req(
                v1::UpdateTaskRequest {
                    id: 1,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::TasksWatch => T::new(c)
            .watch(req(
                v1::WatchTasksRequest {
                    cursor: 0,
                    purpose: "matrix".into(),
                    case_ref: "M-1".into(),
                },
                t,
            ))
            .await
            .map(|_| ()),
        Rpc::AuditList => Au::new(c)
            .list(req(v1::ListAuditRequest::default(), t))
            .await
            .map(|_| ()),
    }
}

fn denied(r: &Result<(), Status>) -> bool {
    matches!(r, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

/// Puts address H1 (the centre of [`circle`]).
async fn put_h1(h: &Harness, t: &str) {
    let r = v1::registry_client::RegistryClient::new(h.channel.clone())
        .put_addresses(req(
            v1::PutAddressesRequest {
                addresses: vec![v1::Address {
                    code: "H1".into(),
                    lat: 30.2741,
                    lng: 120.1551,
                    kind: "standard".into(),
                    area: "A1".into(),
                    label: "generated".into(),
                }],
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
}

/// Ingests `(person, time)` events at address H1 with token `t`.
async fn ingest_at_h1(h: &Harness, t: &str, events: &[(u64, i64)]) -> v1::IngestResponse {
    v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(
            v1::IngestRequest {
                events: events
                    .iter()
                    .map(|&(person, time)| v1::Event {
                        person,
                        time: Some(v1::event::Time::UnixSeconds(time)),
                        lat: None,
                        lng: None,
                        address: "H1".into(),
                        source: "access".into(),
                    })
                    .collect(),
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn seed(h: &Harness) {
    let t = token("loader", &[Role::Ingest], T0 + 10 * 86_400);
    put_h1(h, &t).await;
    // Persons 1..=7 at H1 during hour 2 of day 0, persons 1..=3 during
    // hour 3, and person 1 every hour of days 0..3.
    let mut events = Vec::new();
    for p in 1..=7u64 {
        events.push((p, T0 + 2 * 3600 + 60));
    }
    for p in 1..=3u64 {
        events.push((p, T0 + 3 * 3600 + 60));
    }
    for h in 0..72 {
        events.push((1, T0 + h * 3600 + 120));
    }
    let r = ingest_at_h1(h, &t, &events).await;
    assert_eq!(r.accepted, 82, "{:?}", r.rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_rpc() {
    let h = start(90).await;
    seed(&h).await;
    let exp = T0 + 10 * 86_400;
    let mut expected_denials = 0;
    for role in ALL_ROLES {
        let t = token(&format!("{}-1", role.name()), &[role], exp);
        for rpc in Rpc::ALL {
            let r = call(&h.channel, rpc, &t).await;
            let allowed = rpc.roles().contains(&role);
            if allowed {
                assert!(!denied(&r), "{role:?} must be allowed {rpc:?}: {r:?}");
            } else {
                assert!(denied(&r), "{role:?} must be denied {rpc:?}: {r:?}");
                assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
                expected_denials += 1;
            }
        }
    }
    // No credentials (no anonymous roles on this node), an expired token,
    // a token signed with another key, and a malformed header: every RPC
    // is refused.
    let expired = token("late", &ALL_ROLES, T0);
    let forged = issue_token(
        b"not-the-node-key-0123456789abcdef",
        &Claims {
            sub: "forger".into(),
            roles: vec!["investigator".into()],
            exp,
        },
    );
    for (what, t) in [
        ("none", String::new()),
        ("expired", expired),
        ("forged", forged),
        ("garbage", "x.y.z".to_string()),
    ] {
        for rpc in Rpc::ALL {
            let r = call(&h.channel, rpc, &t).await;
            assert!(
                denied(&r),
                "{what} credentials must be denied {rpc:?}: {r:?}"
            );
            expected_denials += 1;
        }
    }
    // Every refusal was audited, naming the RPC.
    let records = audit(&h).await;
    let refusals: Vec<_> = records
        .iter()
        .filter(|r| r.outcome.starts_with("denied"))
        .collect();
    assert_eq!(refusals.len(), expected_denials);
    assert!(refusals
        .iter()
        .any(|r| r.principal == "analyst-1" && r.rpc == "Query.WhoWasAt"));
    assert!(refusals
        .iter()
        .any(|r| r.principal == "unauthenticated" && r.outcome.contains("expired")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_queries_are_audited_once_with_their_purpose_and_small_counts_suppressed() {
    let h = start(90).await;
    seed(&h).await;
    let inv = token("inspector-4", &[Role::Investigator], T0 + 10 * 86_400);
    let q = || v1::query_client::QueryClient::new(h.channel.clone());
    // Without a purpose or a case: refused, nothing returned or audited.
    let r = q()
        .where_was(req(
            v1::WhereWasRequest {
                person: 1,
                window: window(T0, T0 + 86_400),
                purpose: String::new(),
                case_ref: "C-1".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    assert!(audit(&h).await.is_empty());

    let mut s = q()
        .who_was_at(req(
            v1::WhoWasAtRequest {
                region: circle(),
                window: window(T0, T0 + 86_400),
                purpose: "suspected unregistered residence".into(),
                case_ref: "CASE-17".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut persons = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        persons.extend(m.persons);
    }
    assert_eq!(persons, (1..=7).collect::<Vec<u64>>());
    let ww = q()
        .where_was(req(
            v1::WhereWasRequest {
                person: 1,
                window: window(T0, T0 + 86_400),
                purpose: "verify departure".into(),
                case_ref: "CASE-18".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ww.hours.len(), 24);
    let mut s = q()
        .no_activity_since(req(
            v1::NoActivitySinceRequest {
                since: T0 + 86_400,
                as_of: Some(T0 + 3 * 86_400),
                scope: None,
                local: None,
                purpose: "register review".into(),
                case_ref: "CASE-19".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}

    let records = audit(&h).await;
    let got: Vec<(&str, &str, &str, &str, u64)> = records
        .iter()
        .map(|r| {
            (
                r.principal.as_str(),
                r.rpc.as_str(),
                r.purpose.as_str(),
                r.case_ref.as_str(),
                r.persons_returned,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "inspector-4",
                "Query.WhoWasAt",
                "suspected unregistered residence",
                "CASE-17",
                7
            ),
            (
                "inspector-4",
                "Query.WhereWas",
                "verify departure",
                "CASE-18",
                1
            ),
            (
                "inspector-4",
                "Query.NoActivitySince",
                "register review",
                "CASE-19",
                0
            ),
        ]
    );
    // The parameters name persons and places: withheld from a plain
    // listing, released to an auditor who states why (and audited).
    assert!(records[0].withheld && records[0].parameters.is_empty());
    let auditor = token("auditor-9", &[Role::Auditor], T0 + 10 * 86_400);
    let full = v1::audit_client::AuditClient::new(h.channel.clone())
        .list(req(
            v1::ListAuditRequest {
                after_seq: 0,
                limit: 3,
                parameters: true,
                purpose: "review".into(),
                case_ref: "AUD-3".into(),
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        full[0].parameters.contains("Circle"),
        "{}",
        full[0].parameters
    );
    let stored: Vec<_> = records
        .iter()
        .map(|r| hourcell_server::convert::audit_from_proto(r).unwrap())
        .collect();
    assert_eq!(hourcell_storage::audit::verify_chain(&stored), Ok(3));

    // Occupancy: the analyst sees counts below 5 suppressed, the
    // investigator sees them all (by area and whole day: see
    // side_doors.rs for why the analyst may ask nothing else).
    let occ = |t: String| {
        let mut c = q();
        async move {
            c.occupancy(req(
                v1::OccupancyRequest {
                    region: area_a1(),
                    window: window(T0, T0 + 86_400),
                    max_staleness_ms: None,
                },
                &t,
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let a = occ(token("analyst-2", &[Role::Analyst], T0 + 10 * 86_400)).await;
    let shown: Vec<(u64, bool)> = a.hours[..6]
        .iter()
        .map(|h| (h.distinct, h.suppressed))
        .collect();
    assert!(a.hours[6..]
        .iter()
        .all(|h| (h.distinct, h.suppressed) == (0, true)));
    // Hours 0..6: 1 person, 1, 7, 3, 1, 1.
    assert_eq!(
        shown,
        vec![
            (0, true),
            (0, true),
            (7, false),
            (0, true),
            (0, true),
            (0, true)
        ]
    );
    assert_eq!(
        (a.distinct, a.distinct_suppressed, a.suppressed_below),
        (7, false, 5)
    );
    let i = occ(inv.clone()).await;
    let shown: Vec<u64> = i.hours[..6].iter().map(|h| h.distinct).collect();
    assert_eq!(shown, vec![1, 1, 7, 3, 1, 1]);
    assert!(i.hours.iter().all(|h| !h.suppressed) && i.suppressed_below == 0);
    // Aggregates are not person-level: the analyst's query is logged after
    // its answer (not synced first), and the chain still verifies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records = loop {
        let r = audit(&h).await;
        if r.len() >= 5 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The three queries, the auditor's listing of their parameters, the
    // analyst's occupancy.
    assert_eq!(records.len(), 5, "{records:?}");
    assert_eq!(
        (records[3].principal.as_str(), records[3].rpc.as_str()),
        ("auditor-9", "Audit.List")
    );
    assert_eq!(
        (records[4].principal.as_str(), records[4].rpc.as_str()),
        ("analyst-2", "Query.Occupancy")
    );
    assert_eq!(records[4].persons_returned, 0);
}

/// Group commit of audit records: 32 clients ask person-level questions
/// at once, each on its own connection. Each answer must find its own
/// record (by its case) already in the store when it arrives, the chain
/// must verify, and fewer audit commands than queries were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_person_queries_share_audit_commits_and_each_waits_for_its_record() {
    const CLIENTS: usize = 32;
    let h = start(90).await;
    seed(&h).await;
    let inv = token("inspector-9", &[Role::Investigator], T0 + 10 * 86_400);
    let commits_before = h.node.metrics().audit_commits.get();
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let ch = Channel::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (go, node, inv) = (go.clone(), h.node.clone(), inv.clone());
        tasks.spawn(async move {
            let case = format!("GROUP-{i}");
            let mut q = v1::query_client::QueryClient::new(ch);
            go.wait().await;
            let persons = if i % 2 == 0 {
                let r = q
                    .where_was(req(
                        v1::WhereWasRequest {
                            person: 1,
                            window: window(T0, T0 + 86_400),
                            purpose: "group commit".into(),
                            case_ref: case.clone(),
                            max_staleness_ms: None,
                        },
                        &inv,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.person, 1);
                u64::from(!r.hours.is_empty())
            } else {
                let mut s = q
                    .who_was_at(req(
                        v1::WhoWasAtRequest {
                            region: circle(),
                            window: window(T0, T0 + 86_400),
                            purpose: "group commit".into(),
                            case_ref: case.clone(),
                            max_staleness_ms: None,
                        },
                        &inv,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                // The first message is the answer's first byte.
                let first = s.message().await.unwrap().unwrap();
                assert_eq!(first.persons, (1..=7).collect::<Vec<u64>>());
                7
            };
            // The answer is here: its record must be committed already.
            let records = node.store().audit_records(0, 10_000).unwrap();
            let mine: Vec<_> = records
                .iter()
                .filter(|r| r.entry.case_ref == case)
                .collect();
            assert_eq!(mine.len(), 1, "{case}: its record is not in the log yet");
            assert_eq!(mine[0].entry.persons_returned, persons);
            assert_eq!(mine[0].entry.principal, "inspector-9");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let stored = h.node.store().audit_records(0, 10_000).unwrap();
    assert_eq!(stored.len(), CLIENTS);
    assert_eq!(
        hourcell_storage::audit::verify_chain(&stored),
        Ok(CLIENTS as u64)
    );
    let mut cases: Vec<&str> = stored.iter().map(|r| r.entry.case_ref.as_str()).collect();
    cases.sort_unstable();
    cases.dedup();
    assert_eq!(cases.len(), CLIENTS, "one record per query");
    let commits = h.node.metrics().audit_commits.get() - commits_before;
    assert!(
        commits < CLIENTS as u64,
        "{commits} audit commits for {CLIENTS} concurrent queries: none were shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_hours_and_gives_the_disk_back() {
    let h = start(2).await;
    let t = token("loader", &[Role::Ingest], T0 + 100 * 86_400);
    let op = token("sre-1", &[Role::Operator], T0 + 100 * 86_400);
    let inv = token("inspector-4", &[Role::Investigator], T0 + 100 * 86_400);
    // Now is T0 + 3 days: a 2-day limit keeps hours from T0 + 1 day.
    put_h1(&h, &t).await;
    // Events before the limit are refused at ingest.
    let r = ingest_at_h1(&h, &t, &[(50, T0 + 600)]).await;
    assert_eq!(r.accepted, 0);
    assert!(
        r.rejected[0].reason.contains("retention"),
        "{:?}",
        r.rejected
    );
    // Person 1 at H1 every hour of days 1 and 2, and lots of others on
    // day 1, so that removing them shows on disk.
    let day1 = T0 + 86_400;
    let hours: Vec<(u64, i64)> = (0..48).map(|i| (1, day1 + i * 3600 + 60)).collect();
    let r = ingest_at_h1(&h, &t, &hours).await;
    assert_eq!(r.accepted, 48, "{:?}", r.rejected);
    for chunk in 0..10u64 {
        let events: Vec<v1::Event> = (0..5_000u64)
            .map(|i| v1::Event {
                person: 1_000 + chunk * 5_000 + i,
                time: Some(v1::event::Time::UnixSeconds(
                    day1 + (i % 24) as i64 * 3600 + 30,
                )),
                lat: Some(30.27 + (i % 97) as f64 * 1e-4),
                lng: Some(120.15 + (i % 89) as f64 * 1e-4),
                address: String::new(),
                source: "access".into(),
            })
            .collect();
        let r = v1::ingest_client::IngestClient::new(h.channel.clone())
            .ingest(req(v1::IngestRequest { events }, &t))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 5_000);
    }
    let admin = || v1::admin_client::AdminClient::new(h.channel.clone());
    let before = admin()
        .compact(req(v1::CompactRequest {}, &op))
        .await
        .unwrap()
        .into_inner()
        .disk_bytes_after;
    let dir_before = sst_bytes(&h.dir.path().join("node"));
    // Two days on, day 1 falls out of the window (cut-off T0 + 3 d).
    h.clock.store(T0 + 5 * 86_400 + 1_800, Ordering::SeqCst);
    // The cut-off never passes the newest data minus the limit (a clock
    // far ahead cannot expire kept hours): the data moves on too.
    let r = ingest_at_h1(&h, &t, &[(99, T0 + 5 * 86_400 + 60)]).await;
    assert_eq!(r.accepted, 1, "{:?}", r.rejected);
    let r = admin()
        .expire(req(v1::ExpireRequest {}, &op))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.cutoff, T0 + 3 * 86_400);
    let after = {
        use hourcell_storage::KvEngine;
        h.node.store().engine().disk_bytes()
    };
    assert!(
        after * 2 < before,
        "disk did not shrink: {before} bytes before, {after} after"
    );
    let dir_after = sst_bytes(&h.dir.path().join("node"));
    assert!(
        dir_after * 2 < dir_before,
        "the data directory's table files did not shrink: {dir_before} bytes before, {dir_after} after"
    );
    // Gone from every query.
    let mut s = v1::query_client::QueryClient::new(h.channel.clone())
        .who_was_at(req(
            v1::WhoWasAtRequest {
                region: circle(),
                window: window(T0, T0 + 3 * 86_400),
                purpose: "retention check".into(),
                case_ref: "R-1".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut persons = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        persons.extend(m.persons);
    }
    assert!(persons.is_empty(), "{persons:?}");
    let ww = v1::query_client::QueryClient::new(h.channel.clone())
        .where_was(req(
            v1::WhereWasRequest {
                person: 1,
                window: window(T0, T0 + 5 * 86_400),
                purpose: "retention check".into(),
                case_ref: "R-1".into(),
                max_staleness_ms: None,
            },
            &inv,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ww.hours.is_empty(), "{:?}", ww.hours);
    // The removal is in the audit log.
    let records = audit(&h).await;
    assert!(records.iter().any(|r| r.rpc == "Retention"
        && r.principal == "sre-1"
        && r.outcome.starts_with("retention")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_is_rate_limited() {
    let h = start_limited(90, 5).await;
    put_h1(&h, &token("loader", &[Role::Ingest], T0 + 10 * 86_400)).await;
    let a = token("analyst-1", &[Role::Analyst], T0 + 10 * 86_400);
    let b = token("analyst-2", &[Role::Analyst], T0 + 10 * 86_400);
    let mut refused = 0;
    for _ in 0..30 {
        if let Err(s) = call(&h.channel, Rpc::Occupancy, &a).await {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(s.message().contains("rate limit"));
            refused += 1;
        }
    }
    assert!(refused >= 15, "only {refused} of 30 refused at 5/s");
    assert!(
        call(&h.channel, Rpc::Occupancy, &b).await.is_ok(),
        "another principal is not affected"
    );
    // Bad credentials are limited too (per client address), before they
    // are audited: the audit log cannot be flooded.
    let mut limited = 0;
    for _ in 0..30 {
        if let Err(s) = call(&h.channel, Rpc::Occupancy, "x.y.z").await {
            if s.code() == Code::ResourceExhausted {
                limited += 1;
            }
        }
    }
    assert!(
        limited >= 15,
        "only {limited} of 30 bad logins limited at 5/s"
    );
    let denials = audit(&h)
        .await
        .iter()
        .filter(|r| r.principal == "unauthenticated")
        .count();
    assert!(denials <= 15, "{denials} bad logins audited");
}
