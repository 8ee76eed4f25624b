//! The gRPC API through a real tonic client against a node on 127.0.0.1,
//! with an injected clock.

use std::sync::Arc;

use hourcell_node::config::NodeConfig;
use hourcell_proto::v1;
use hourcell_proto::v1::admin_client::AdminClient;
use hourcell_proto::v1::ingest_client::IngestClient;
use hourcell_proto::v1::query_client::QueryClient;
use hourcell_proto::v1::registry_client::RegistryClient;
use hourcell_server::server;
use hourcell_test_support::data::{addr, ev};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// 2026-11-01T00:00:00Z
const T0: i64 = 1_793_491_200;
const NOW: i64 = T0 + 3 * 86_400;

struct Harness {
    channel: Channel,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 16;
    cfg.security.insecure = true;
    cfg.security.anonymous_roles = vec!["all".into()];
    let node = hourcell_server::open_node(&cfg, Arc::new(|| NOW)).unwrap();
    let (addr, listener) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        node,
        cfg.security.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Harness {
        channel,
        _dir: dir,
        stop: Some(tx),
    }
}

fn window(from: i64, to: i64) -> Option<v1::Window> {
    Some(v1::Window {
        start: from,
        end: to,
        as_of: None,
    })
}

async fn seed(h: &Harness) {
    let mut reg = RegistryClient::new(h.channel.clone());
    let r = reg
        .put_addresses(v1::PutAddressesRequest {
            addresses: vec![
                addr("H1", 30.2741, 120.1551, "A1"),
                addr("H2", 30.2800, 120.1600, "A1"),
                addr("W1", 30.3000, 120.2000, "A2"),
                addr("", 1.0, 1.0, "A1"),
                addr("BAD", 91.0, 1.0, "A1"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 3);
    assert_eq!(
        r.rejected
            .iter()
            .map(|x| (x.index, x.field.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, "code"), (4, "lat,lng")]
    );
    // Re-putting an address is fine; moving its point is not.
    let r = reg
        .put_addresses(v1::PutAddressesRequest {
            addresses: vec![
                addr("H1", 30.2741, 120.1551, "A1"),
                addr("H2", 31.0, 120.0, "A1"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    assert_eq!(
        (r.rejected[0].index, r.rejected[0].field.as_str()),
        (1, "lat,lng")
    );
    assert!(
        r.rejected[0].reason.contains("cannot move"),
        "{:?}",
        r.rejected[0]
    );
    let r = reg
        .put_registrations(v1::PutRegistrationsRequest {
            registrations: vec![
                v1::Registration {
                    person: 10,
                    address: "H1".into(),
                    kind: "permanent".into(),
                    valid_from: T0 - 86_400,
                    valid_until: None,
                },
                v1::Registration {
                    person: 20,
                    address: "H2".into(),
                    kind: "temporary".into(),
                    valid_from: T0 - 86_400,
                    valid_until: Some(T0 + 60 * 86_400),
                },
                v1::Registration {
                    person: 30,
                    address: "H2".into(),
                    kind: "temporary".into(),
                    valid_from: T0,
                    valid_until: None,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 2);
    assert_eq!(r.rejected[0].field, "valid_until");
}

#[tokio::test]
async fn ingest_validates_per_event_and_is_idempotent() {
    let h = start().await;
    seed(&h).await;
    let mut ingest = IngestClient::new(h.channel.clone());
    let mut batch = vec![
        ev(10, T0 + 3600, "H1", "utility"),
        ev(0, T0, "H1", "utility"),
        ev(10, T0, "NOPE", "utility"),
        ev(10, NOW + 2 * 3600, "H1", "utility"),
        ev(20, T0 + 2 * 3600, "H2", "rental"),
    ];
    batch.push(v1::Event {
        lat: Some(30.2741),
        lng: Some(500.0),
        ..ev(20, T0, "", "access")
    });
    batch.push(v1::Event {
        time: Some(v1::event::Time::Rfc3339("2026-11-01T13:30:00+08:00".into())),
        lat: Some(30.3),
        lng: Some(120.2),
        ..ev(20, 0, "", "access")
    });
    let r = ingest
        .ingest(v1::IngestRequest {
            events: batch.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 3);
    let why: Vec<(u32, String)> = r
        .rejected
        .iter()
        .map(|x| (x.index, x.field.clone()))
        .collect();
    assert_eq!(
        why,
        vec![
            (1, "person".into()),
            (2, "address".into()),
            (3, "time".into()),
            (5, "lat,lng".into())
        ]
    );
    assert!(
        r.rejected[2].reason.contains("future"),
        "{:?}",
        r.rejected[2]
    );

    let mut q = QueryClient::new(h.channel.clone());
    let occ = || v1::OccupancyRequest {
        max_staleness_ms: None,
        region: Some(v1::Region {
            kind: Some(v1::region::Kind::Area("A1".into())),
        }),
        window: window(T0, T0 + 4 * 3600),
    };
    let before = q.occupancy(occ()).await.unwrap().into_inner();
    // The same batch again changes nothing.
    ingest
        .ingest(v1::IngestRequest { events: batch })
        .await
        .unwrap();
    let after = q.occupancy(occ()).await.unwrap().into_inner();
    assert_eq!(before, after);
    assert_eq!(after.distinct, 2);
    assert_eq!(
        after.hours.iter().map(|h| h.distinct).collect::<Vec<_>>(),
        vec![0, 1, 1, 0]
    );
    let w = after.window.unwrap();
    assert_eq!((w.start, w.end, w.as_of), (T0, T0 + 4 * 3600, NOW));

    // who-was-at streams ascending ids; the window is in the first message.
    let mut s = q
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            region: Some(v1::Region {
                kind: Some(v1::region::Kind::Circle(v1::Circle {
                    lat: 30.2741,
                    lng: 120.1551,
                    radius_m: 1500.0,
                })),
            }),
            window: window(T0 + 10, T0 + 3 * 3600 - 10),
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.window.unwrap().start, T0);
    assert_eq!(first.persons, vec![10, 20]);

    let ww = q
        .where_was(v1::WhereWasRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            person: 20,
            window: window(T0, T0 + 86_400),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ww.hours.len(), 2);
    assert_eq!(ww.hours[0].hour, T0 + 2 * 3600);
    assert_eq!(ww.hours[0].addresses, vec!["H2".to_string()]);
    assert_eq!(ww.hours[1].sources, vec!["access".to_string()]);
    assert!(ww.hours[1].addresses.is_empty());

    // Person 10 was last seen at T0+1h; person 20 was active at T0+5h.
    let mut s = q
        .no_activity_since(v1::NoActivitySinceRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            since: T0 + 3 * 3600,
            as_of: None,
            scope: None,
            local: None,
        })
        .await
        .unwrap()
        .into_inner();
    let m = s.next().await.unwrap().unwrap();
    let rows: Vec<(u64, Option<i64>)> = m.persons.iter().map(|p| (p.person, p.last_seen)).collect();
    assert_eq!(rows, vec![(10, Some(T0 + 3600))]);

    let st = AdminClient::new(h.channel.clone())
        .status(v1::StatusRequest {
            count_postings: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.persons, 2);
    assert_eq!(st.addresses, 3);
    assert!(st.postings >= 5);
}

#[tokio::test]
async fn bad_queries_are_invalid_argument_naming_field_and_value() {
    let h = start().await;
    seed(&h).await;
    let mut q = QueryClient::new(h.channel.clone());
    let e = q
        .occupancy(v1::OccupancyRequest {
            max_staleness_ms: None,
            region: Some(v1::Region {
                kind: Some(v1::region::Kind::Circle(v1::Circle {
                    lat: 95.0,
                    lng: 0.0,
                    radius_m: 100.0,
                })),
            }),
            window: window(T0, T0 + 3600),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("region") && e.message().contains("95"),
        "{}",
        e.message()
    );

    let e = q
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            region: Some(v1::Region {
                kind: Some(v1::region::Kind::Cells(v1::CellList {
                    tokens: vec!["xyz".into()],
                })),
            }),
            window: window(T0, T0 + 3600),
        })
        .await
        .err()
        .expect("bad token rejected");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("xyz"), "{}", e.message());

    let e = q
        .where_was(v1::WhereWasRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            person: 10,
            window: window(T0 + 10, T0),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("to"), "{}", e.message());

    let e = q
        .occupancy(v1::OccupancyRequest {
            max_staleness_ms: None,
            region: None,
            window: window(T0, T0 + 3600),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("region"));
    // The field also travels as a google.rpc.BadRequest violation.
    use tonic_types::StatusExt;
    let bad = e.get_details_bad_request().expect("BadRequest details");
    assert_eq!(bad.field_violations.len(), 1);
    assert_eq!(bad.field_violations[0].field, "region");
    assert!(bad.field_violations[0].description.contains("required"));
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let h = start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hourcell.v1.Query".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Reflection, as v1 and as v1alpha, lists the public services and
    // never the node-to-node ones.
    let want = [
        "grpc.health.v1.Health",
        "hourcell.v1.Admin",
        "hourcell.v1.Audit",
        "hourcell.v1.Ingest",
        "hourcell.v1.Query",
        "hourcell.v1.Registry",
        "hourcell.v1.Tasks",
    ];
    // The two versions are distinct generated types of the same shape.
    macro_rules! services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                server_reflection_client::ServerReflectionClient as C,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut s = C::new(h.channel.clone())
                .server_reflection_info(tokio_stream::iter([req]))
                .await
                .unwrap()
                .into_inner();
            let Some(MessageResponse::ListServicesResponse(l)) =
                s.message().await.unwrap().unwrap().message_response
            else {
                panic!("not a list of services")
            };
            let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names.retain(|n| !n.starts_with("grpc.reflection"));
            names
        }};
    }
    assert_eq!(services!(v1), want, "v1");
    assert_eq!(services!(v1alpha), want, "v1alpha");
}

/// Tasks through the API: run twice (no duplicates), list with pages, get,
/// refused transitions, resolve, and a watch that resumes from its cursor
/// with no gaps and no duplicates across a disconnect.
#[tokio::test]
async fn tasks_run_list_update_and_watch_resume() {
    use hourcell_proto::v1::tasks_client::TasksClient;
    let h = start().await;
    let mut reg = RegistryClient::new(h.channel.clone());
    reg.put_addresses(v1::PutAddressesRequest {
        addresses: vec![
            addr("H1", 30.2741, 120.1551, "A1"),
            addr("H2", 30.2800, 120.1600, "A2"),
        ],
    })
    .await
    .unwrap();
    // Person 20 is registered at H2 but sleeps at H1; persons 21 and 22
    // sleep at H1 unregistered. Rental nights at 22:00 local (UTC+8 = 14:00Z)
    // on each of the three days before NOW.
    reg.put_registrations(v1::PutRegistrationsRequest {
        registrations: vec![v1::Registration {
            person: 20,
            address: "H2".into(),
            kind: "permanent".into(),
            valid_from: T0 - 86_400,
            valid_until: None,
        }],
    })
    .await
    .unwrap();
    let mut events = Vec::new();
    for d in 0..3 {
        for p in [20, 21, 22] {
            events.push(ev(p, T0 + d * 86_400 + 14 * 3600, "H1", "rental"));
            events.push(ev(p, T0 + d * 86_400 + 15 * 3600, "H1", "utility"));
        }
    }
    let mut ing = IngestClient::new(h.channel.clone());
    assert_eq!(
        ing.ingest(v1::IngestRequest { events })
            .await
            .unwrap()
            .into_inner()
            .accepted,
        18
    );
    let mut tasks = TasksClient::new(h.channel.clone());
    // 3 nights × (1.0 + 0.6) / 7 ≈ 0.69 < 0.8: nothing yet.
    let r = tasks
        .run(v1::RunTasksRequest { at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.at, r.created), (NOW, 0));
    // Two more nights of service visits at H1 lift them over 0.8.
    let more: Vec<_> = [20, 21, 22]
        .iter()
        .flat_map(|&p| (0..2).map(move |d| ev(p, T0 + d * 86_400 + 16 * 3600, "H1", "service")))
        .collect();
    ing.ingest(v1::IngestRequest { events: more })
        .await
        .unwrap();

    // A watcher from the beginning, started before the tasks exist.
    let mut watch = tasks
        .watch(v1::WatchTasksRequest {
            cursor: 0,
            purpose: "test".into(),
            case_ref: "T-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = tasks
        .run(v1::RunTasksRequest { at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.proposed, r.created), (3, 3));
    let again = tasks
        .run(v1::RunTasksRequest { at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.proposed, again.created), (3, 0));

    // List: filters and pages of one.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = tasks
            .list(v1::ListTasksRequest {
                purpose: "test".into(),
                case_ref: "T-1".into(),
                area: "A1".into(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tasks.len() <= 1);
        seen.extend(page.tasks.iter().map(|t| (t.person, t.kind.clone())));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![
            (20, "RESIDENCE_MISMATCH".to_string()),
            (21, "REGISTER_NEWCOMER".to_string()),
            (22, "REGISTER_NEWCOMER".to_string())
        ]
    );
    let mismatch = tasks
        .list(v1::ListTasksRequest {
            purpose: "test".into(),
            case_ref: "T-1".into(),
            kind: "residence_mismatch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(mismatch.len(), 1);
    let bad = tasks
        .list(v1::ListTasksRequest {
            purpose: "test".into(),
            case_ref: "T-1".into(),
            state: "done".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("state"), "{}", bad.message());

    // Get with evidence.
    let t = tasks
        .get(v1::GetTaskRequest {
            id: mismatch[0].id,
            purpose: "test".into(),
            case_ref: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.address, "H1");
    assert_eq!(t.registration.as_ref().unwrap().address, "H2");
    let sources: Vec<_> = t.evidence.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    let score = t.score.unwrap();
    assert!(
        (score - (3.0 * 1.0 + 3.0 * 0.6 + 2.0 * 0.8) / 7.0).abs() < 1e-9,
        "{score}"
    );
    assert_eq!(
        tasks
            .get(v1::GetTaskRequest {
                id: 999,
                purpose: "test".into(),
                case_ref: "T-1".into(),
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Read the three creations, then disconnect.
    let mut last = 0;
    for _ in 0..3 {
        let c = watch.message().await.unwrap().unwrap();
        assert_eq!(c.seq, last + 1);
        last = c.seq;
    }
    drop(watch);

    // Changes while disconnected.
    let up = |id: u64, state: &str, outcome: &str| v1::UpdateTaskRequest {
        id,
        state: state.into(),
        outcome: outcome.into(),
        note: "visited".into(),
        by: "field-1".into(),
        purpose: "test".into(),
        case_ref: String::new(),
    };
    let e = tasks.update(up(t.id, "resolved", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("outcome"), "{}", e.message());
    tasks.update(up(t.id, "in_progress", "")).await.unwrap();
    let e = tasks.update(up(t.id, "in_progress", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let done = tasks
        .update(up(t.id, "resolved", "rejected"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (done.state.as_str(), done.outcome.as_str()),
        ("resolved", "rejected")
    );
    assert_eq!(done.updated_by, "anonymous (for field-1)");
    // Rejected: not raised again by the next run.
    let r = tasks
        .run(v1::RunTasksRequest { at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.created, 0);

    // Resume: exactly the two changes made while away, in order.
    let mut watch = tasks
        .watch(v1::WatchTasksRequest {
            cursor: last,
            purpose: "test".into(),
            case_ref: "T-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let a = watch.message().await.unwrap().unwrap();
    let b = watch.message().await.unwrap().unwrap();
    assert_eq!((a.seq, b.seq), (last + 1, last + 2));
    assert_eq!(a.task.unwrap().state, "in_progress");
    assert_eq!(b.task.unwrap().state, "resolved");
    // A live change arrives on the open stream.
    let other = seen_id(&mut tasks, 21).await;
    tasks.update(up(other, "in_progress", "")).await.unwrap();
    let c = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("live change within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(c.seq, last + 3);
    assert_eq!(c.task.unwrap().person, 21);
}

async fn seen_id(
    tasks: &mut hourcell_proto::v1::tasks_client::TasksClient<Channel>,
    person: u64,
) -> u64 {
    tasks
        .list(v1::ListTasksRequest {
            purpose: "test".into(),
            case_ref: "T-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .find(|t| t.person == person)
        .unwrap()
        .id
}
