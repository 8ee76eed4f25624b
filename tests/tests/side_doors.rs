//! No side doors: every probe an attacker would try, through the real
//! gRPC API of a node on 127.0.0.1 (bearer tokens, no anonymous access,
//! an injected clock).
//!
//! - Every RPC of the public proto whose answer names a person is
//!   person-level in the RPC table, and each one refuses a caller without
//!   a purpose and a case and writes one audit record before it answers.
//! - The internal Raft and Shard services answer no one but a node: not a
//!   caller without credentials, not one with the wrong cluster secret,
//!   not a client holding every role.
//! - Task updates record the authenticated caller, not the name sent.
//! - The rules cannot be run as of arbitrary times.

use std::collections::{BTreeMap, BTreeSet};

use hourcell_node::config::{ClusterConfig, PeerConfig, Secret};
use hourcell_proto::{internal, v1};
use hourcell_server::auth::{Role, Rpc, ALL_ROLES, NODE_SECRET_HEADER};
use hourcell_test_support::data::{addr, ev};
use hourcell_test_support::secure::{audit, req, start_with, token, Harness, T0};
use prost::Message;
use tonic::{Code, Request, Status};

const NOW: i64 = T0 + 3 * 86_400;
const EXP: i64 = T0 + 10 * 86_400;
const SECRET: &str = "side-door-test-cluster-secret-0123456789";

// ------------------------------------------------------------ the proto

/// Message name → its fields (name, repeated, message type if any).
type Messages = BTreeMap<String, Vec<(String, bool, Option<String>)>>;

fn descriptors() -> (Messages, Vec<(String, String)>) {
    let set = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = Messages::new();
    let mut methods = Vec::new();
    fn walk(prefix: &str, m: &prost_types::DescriptorProto, out: &mut Messages) {
        let name = format!("{prefix}.{}", m.name());
        let fields = m
            .field
            .iter()
            .map(|f| {
                let ty = (f.r#type() == prost_types::field_descriptor_proto::Type::Message)
                    .then(|| f.type_name().trim_start_matches('.').to_string());
                let repeated = f.label() == prost_types::field_descriptor_proto::Label::Repeated;
                (f.name().to_string(), repeated, ty)
            })
            .collect();
        out.insert(name.clone(), fields);
        for n in &m.nested_type {
            walk(&name, n, out);
        }
    }
    for f in &set.file {
        for m in &f.message_type {
            walk(f.package(), m, &mut messages);
        }
        for s in &f.service {
            for m in &s.method {
                methods.push((
                    format!("{}.{}", s.name(), m.name()),
                    m.output_type().trim_start_matches('.').to_string(),
                ));
            }
        }
    }
    (messages, methods)
}

/// Whether a message, or any message inside it, has a field that names a
/// person: `person`, or a repeated `persons` (a plain `persons` is a
/// count).
fn names_persons(msg: &str, messages: &Messages, seen: &mut BTreeSet<String>) -> bool {
    if !seen.insert(msg.to_string()) {
        return false;
    }
    messages.get(msg).is_some_and(|fields| {
        fields.iter().any(|(name, repeated, ty)| {
            name == "person"
                || (name == "persons" && *repeated)
                // An audit record's parameters: the person of a where-was,
                // the place of a who-was-at.
                || name == "parameters"
                // A store's image (a backup): everyone's data.
                || name == "image"
                || ty
                    .as_deref()
                    .is_some_and(|t| names_persons(t, messages, seen))
        })
    })
}

#[test]
fn every_rpc_whose_answer_names_a_person_is_person_level() {
    let (messages, methods) = descriptors();
    assert!(methods.len() >= Rpc::ALL.len(), "{methods:?}");
    let mut bearing = BTreeSet::new();
    for (method, output) in &methods {
        let rpc = Rpc::ALL.iter().find(|r| r.name() == method);
        let rpc = rpc.unwrap_or_else(|| panic!("{method} is not in the RPC table"));
        if names_persons(output, &messages, &mut BTreeSet::new()) {
            bearing.insert(method.as_str());
            assert!(
                rpc.person_level(),
                "{method} returns person ids but bypasses the release gate"
            );
        }
    }
    // The table marks nothing person-level that does not name persons,
    // and the walk found the ones we know of.
    for rpc in Rpc::ALL {
        assert_eq!(rpc.person_level(), bearing.contains(rpc.name()), "{rpc:?}");
    }
    for known in [
        "Query.WhereWas",
        "Registry.GetRegistration",
        "Tasks.Watch",
        "Admin.Backup",
    ] {
        assert!(bearing.contains(known), "{known}");
    }
}

// ----------------------------------------------------- the release gate

/// Addresses H1 and H2, person 20 registered at H2, and five nights of
/// persons 20 and 21 at H1: the rules raise two tasks.
async fn seed_tasks(h: &Harness) {
    let ingest = token("ingest-1", &[Role::Ingest], EXP);
    let seed = hourcell_test_support::data::task_seed();
    let mut reg = v1::registry_client::RegistryClient::new(h.channel.clone());
    reg.put_addresses(req(seed.addresses, &ingest))
        .await
        .unwrap();
    reg.put_registrations(req(seed.registrations, &ingest))
        .await
        .unwrap();
    v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(seed.events, &ingest))
        .await
        .unwrap();
    let op = token("operator-1", &[Role::Operator], EXP);
    let r = v1::tasks_client::TasksClient::new(h.channel.clone())
        .run(req(v1::RunTasksRequest { at: None }, &op))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.created, 2, "{r:?}");
}

/// Calls person-level `rpc` as `t` with `purpose` and `case`; how many
/// persons the answer named.
async fn call_person_level(
    h: &Harness,
    rpc: Rpc,
    t: &str,
    purpose: &str,
    case: &str,
) -> Result<usize, Status> {
    let c = h.channel.clone();
    let (purpose, case_ref) = (purpose.to_string(), case.to_string());
    let window = Some(v1::Window {
        start: T0,
        end: NOW,
        as_of: Some(NOW),
    });
    match rpc {
        Rpc::WhoWasAt => {
            let mut s = v1::query_client::QueryClient::new(c)
                .who_was_at(req(
                    v1::WhoWasAtRequest {
                        region: Some(v1::Region {
                            kind: Some(v1::region::Kind::Addresses(v1::AddressList {
                                codes: vec!["H1".into()],
                            })),
                        }),
                        window,
                        purpose,
                        case_ref,
                        max_staleness_ms: None,
                    },
                    t,
                ))
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(m) = s.message().await? {
                n += m.persons.len();
            }
            Ok(n)
        }
        Rpc::WhereWas => v1::query_client::QueryClient::new(c)
            .where_was(req(
                v1::WhereWasRequest {
                    person: 21,
                    window,
                    purpose,
                    case_ref,
                    max_staleness_ms: None,
                },
                t,
            ))
            .await
            .map(|r| usize::from(!r.into_inner().hours.is_empty())),
        Rpc::NoActivitySince => {
            let mut s = v1::query_client::QueryClient::new(c)
                .no_activity_since(req(
                    v1::NoActivitySinceRequest {
                        since: NOW - 3600,
                        as_of: Some(NOW),
                        scope: None,
                        local: None,
                        purpose,
                        case_ref,
                        max_staleness_ms: None,
                    },
                    t,
                ))
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(m) = s.message().await? {
                n += m.persons.len();
            }
            Ok(n)
        }
        Rpc::GetRegistration => v1::registry_client::RegistryClient::new(c)
            .get_registration(req(
                v1::GetRegistrationRequest {
                    person: 20,
                    purpose,
                    case_ref,
                },
                t,
            ))
            .await
            .map(|_| 1),
        Rpc::TasksList => v1::tasks_client::TasksClient::new(c)
            .list(req(
                v1::ListTasksRequest {
                    purpose,
                    case_ref,
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(|r| r.into_inner().tasks.len()),
        Rpc::TasksGet => v1::tasks_client::TasksClient::new(c)
            .get(req(
                v1::GetTaskRequest {
                    id: 1,
                    purpose,
                    case_ref,
                },
                t,
            ))
            .await
            .map(|_| 1),
        Rpc::TasksUpdate => v1::tasks_client::TasksClient::new(c)
            .update(req(
                v1::UpdateTaskRequest {
                    // The task-is-the-case call (no case) starts task 1.
                    id: if case_ref.is_empty() { 1 } else { 2 },
                    state: "in_progress".into(),
                    by: "field-7".into(),
                    purpose,
                    case_ref,
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(|_| 1),
        Rpc::TasksWatch => {
            let mut s = v1::tasks_client::TasksClient::new(c)
                .watch(req(
                    v1::WatchTasksRequest {
                        cursor: 0,
                        purpose,
                        case_ref,
                    },
                    t,
                ))
                .await?
                .into_inner();
            // The first change is enough: it was audited before it left.
            s.message().await.map(|m| usize::from(m.is_some()))
        }
        // With the parameters: the records that still carry them.
        Rpc::AuditList => v1::audit_client::AuditClient::new(c)
            .list(req(
                v1::ListAuditRequest {
                    after_seq: 0,
                    limit: 1_000,
                    parameters: true,
                    purpose,
                    case_ref,
                },
                t,
            ))
            .await
            .map(|r| {
                let r = r.into_inner().records;
                assert!(r.iter().all(|x| !x.withheld));
                r.iter().filter(|x| !x.parameters.is_empty()).count()
            }),
        Rpc::Backup => {
            let mut s = v1::admin_client::AdminClient::new(c)
                .backup(req(
                    v1::BackupRequest {
                        group: 1,
                        purpose,
                        case_ref,
                        unchanged_since: 0,
                    },
                    t,
                ))
                .await?
                .into_inner();
            // The persons the image holds, as its first chunk says.
            let mut persons = 0;
            while let Some(chunk) = s.message().await? {
                persons = persons.max(chunk.persons as usize);
            }
            Ok(persons)
        }
        other => panic!("{other:?} is not person-level"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_person_level_rpc_needs_a_purpose_and_is_audited_before_it_answers() {
    let h = start_with(90, 0, |_| {}).await;
    seed_tasks(&h).await;
    for rpc in Rpc::ALL.into_iter().filter(|r| r.person_level()) {
        let role = rpc.roles()[0];
        let t = token(&format!("{}-1", role.name()), &[role], EXP);
        let before = audit(&h).await.len();
        // No purpose, no case: refused, and nothing is released.
        for (purpose, case) in [("", ""), ("", "C-1"), ("  ", "C-1")] {
            let e = call_person_level(&h, rpc, &t, purpose, case)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{rpc:?}: {e:?}");
            assert!(e.message().contains("purpose"), "{rpc:?}: {e:?}");
        }
        // An investigator must also name a case; field staff may do
        // without one only when the request names a task.
        let no_case = call_person_level(&h, rpc, &t, "checking", "").await;
        let task_is_case =
            role == Role::Fieldwork && matches!(rpc, Rpc::TasksGet | Rpc::TasksUpdate);
        assert_eq!(no_case.is_ok(), task_is_case, "{rpc:?}: {no_case:?}");
        let records = audit(&h).await;
        assert_eq!(
            records.len(),
            before + usize::from(task_is_case),
            "{rpc:?}: a refused call wrote an audit record"
        );
        // With both: answered, and audited first with the purpose, case
        // and the count of persons it named.
        let n = call_person_level(&h, rpc, &t, "checking", "C-1")
            .await
            .unwrap_or_else(|e| panic!("{rpc:?}: {e:?}"));
        let records = audit(&h).await;
        let last = records.last().unwrap();
        assert_eq!(last.rpc, rpc.name());
        assert_eq!(last.principal, format!("{}-1", role.name()));
        assert_eq!(
            (last.purpose.as_str(), last.case_ref.as_str()),
            ("checking", "C-1")
        );
        if rpc == Rpc::TasksWatch {
            // A watch audits each batch it reads from the log before
            // streaming it; the test read only the first change of it.
            assert!(last.persons_returned >= n as u64, "{rpc:?}");
        } else {
            assert_eq!(last.persons_returned, n as u64, "{rpc:?}");
        }
        assert!(
            n > 0,
            "{rpc:?} named no one: the seed is too small to test it"
        );
    }
    // Every other role is refused every person-level RPC (the gate's role
    // check comes before the release gate).
    for role in ALL_ROLES {
        let t = token("other", &[role], EXP);
        for rpc in Rpc::ALL.into_iter().filter(|r| r.person_level()) {
            if rpc.roles().contains(&role) {
                continue;
            }
            let e = call_person_level(&h, rpc, &t, "p", "c").await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{role:?} {rpc:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_history_names_the_authenticated_caller_not_the_claimed_one() {
    let h = start_with(90, 0, |_| {}).await;
    seed_tasks(&h).await;
    let t = token("field-3", &[Role::Fieldwork], EXP);
    let mut tasks = v1::tasks_client::TasksClient::new(h.channel.clone());
    let up = |id: u64, state: &str, outcome: &str, by: &str| v1::UpdateTaskRequest {
        id,
        state: state.into(),
        outcome: outcome.into(),
        note: String::new(),
        by: by.into(),
        purpose: "visit".into(),
        case_ref: String::new(),
    };
    let started = tasks
        .update(req(up(1, "in_progress", "", "supervisor-1"), &t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.updated_by, "field-3 (for supervisor-1)");
    let done = tasks
        .update(req(up(1, "resolved", "confirmed", ""), &t))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.updated_by, "field-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_run_only_as_of_times_the_data_covers() {
    let h = start_with(90, 0, |_| {}).await;
    seed_tasks(&h).await;
    let op = token("operator-1", &[Role::Operator], EXP);
    let mut tasks = v1::tasks_client::TasksClient::new(h.channel.clone());
    for at in [
        i64::MAX,
        i64::MIN,
        0,
        NOW + 3600,
        NOW - 91 * 86_400,
        4_102_444_800,
    ] {
        let e = tasks
            .run(req(v1::RunTasksRequest { at: Some(at) }, &op))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "at {at}: {e:?}");
        assert!(e.message().contains("retention"), "{e:?}");
    }
    // A replay inside the window is fine.
    tasks
        .run(req(
            v1::RunTasksRequest {
                at: Some(NOW - 86_400),
            },
            &op,
        ))
        .await
        .unwrap();
}

// ---------------------------------------------------- internal services

/// A one-node sharded cluster whose nodes show each other `SECRET`.
async fn start_cluster() -> Harness {
    let port = hourcell_test_support::procs::free_port();
    let h = start_with(90, 0, |cfg| {
        cfg.security.cluster_secret = Some(Secret(SECRET.into()));
        cfg.cluster = Some(ClusterConfig {
            node_id: 1,
            peers: vec![PeerConfig {
                id: 1,
                addr: format!("127.0.0.1:{port}"),
            }],
            tick_ms: 20,
            join: false,
            cell_shards: 2,
            person_shards: 2,
            replicas: 1,
            ..Default::default()
        });
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let n = h.node.clone();
    while tokio::task::spawn_blocking({
        let n = n.clone();
        move || n.read_barrier_all().is_err()
    })
    .await
    .unwrap()
    {
        assert!(std::time::Instant::now() < deadline, "no leader in 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    h
}

/// `msg` with the given credentials: a cluster secret and/or a bearer token.
fn creds<T>(msg: T, secret: Option<&str>, bearer: Option<&str>) -> Request<T> {
    let mut r = req(msg, bearer.unwrap_or(""));
    if let Some(s) = secret {
        r.metadata_mut()
            .insert(NODE_SECRET_HEADER, s.parse().unwrap());
    }
    r
}

/// Every internal RPC with the given credentials: the status of each.
async fn probe_internal(
    h: &Harness,
    secret: Option<&str>,
    bearer: Option<&str>,
) -> Vec<(&'static str, Result<(), Status>)> {
    let mut shard = internal::shard_client::ShardClient::new(h.channel.clone());
    let mut raft = internal::raft_client::RaftClient::new(h.channel.clone());
    let read = shard
        .read(creds(
            internal::ShardReadRequest {
                map_version: 0,
                group: 0,
                barrier: false,
                op: vec![0; 64],
            },
            secret,
            bearer,
        ))
        .await
        .map(|_| ());
    // The batched read a query's fan-out sends one node: day sets of
    // person ids, like Read.
    let read_many = shard
        .read_many(creds(
            internal::ShardReadManyRequest {
                map_version: 0,
                parts: vec![internal::ShardReadPart {
                    group: 0,
                    barrier: false,
                }],
                op: vec![0; 64],
            },
            secret,
            bearer,
        ))
        .await
        .map(|_| ());
    // A command that would wipe data if it were applied.
    let propose = shard
        .propose(creds(
            internal::ShardProposeRequest {
                map_version: 0,
                commands: vec![internal::ShardCommand {
                    group: 0,
                    command: vec![0xff; 1 << 20],
                }],
            },
            secret,
            bearer,
        ))
        .await
        .map(|_| ());
    let members = shard
        .members(creds(internal::ShardMembersRequest {}, secret, bearer))
        .await
        .map(|_| ());
    let send = raft
        .send(creds(
            internal::RaftBatch {
                from: 2,
                envelopes: vec![],
            },
            secret,
            bearer,
        ))
        .await
        .map(|_| ());
    let snapshot = raft
        .snapshot(creds(
            internal::SnapshotRequest { group: 0, index: 1 },
            secret,
            bearer,
        ))
        .await
        .map(|_| ());
    vec![
        ("Shard.Read", read),
        ("Shard.ReadMany", read_many),
        ("Shard.Propose", propose),
        ("Shard.Members", members),
        ("Raft.Send", send),
        ("Raft.Snapshot", snapshot),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_answer_only_nodes() {
    let h = start_cluster().await;
    let admin = token("admin", &ALL_ROLES, EXP);
    let audited = audit(&h).await.len();
    for (who, secret, bearer) in [
        ("no credentials", None, None),
        ("a client with every role", None, Some(admin.as_str())),
        (
            "a wrong secret",
            Some("side-door-test-cluster-secret-0123456780"),
            None,
        ),
        ("a short secret", Some("side-door"), None),
        ("an empty secret", Some(""), None),
    ] {
        for (rpc, r) in probe_internal(&h, secret, bearer).await {
            let e = r.expect_err(&format!("{who} reached {rpc}"));
            assert_eq!(e.code(), Code::Unauthenticated, "{who} → {rpc}: {e:?}");
        }
    }
    // Refusals of internal calls cost no raft write.
    assert_eq!(audit(&h).await.len(), audited);
    // The node's own secret opens them (a malformed op or command is then
    // refused as bad input, after authentication).
    let results = probe_internal(&h, Some(SECRET), None).await;
    let by: BTreeMap<_, _> = results.into_iter().collect();
    assert!(by["Shard.Members"].is_ok(), "{:?}", by["Shard.Members"]);
    assert!(by["Raft.Send"].is_ok(), "{:?}", by["Raft.Send"]);
    for rpc in ["Shard.Read", "Shard.ReadMany", "Shard.Propose"] {
        if let Err(e) = &by[rpc] {
            assert_ne!(e.code(), Code::Unauthenticated, "{rpc}: {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_stale_reads_accept_at_most_a_minute() {
    let h = start_with(90, 0, |_| {}).await;
    let t = token("investigator-1", &[Role::Investigator], EXP);
    let occupancy = |ms: u32| {
        let c = h.channel.clone();
        let t = t.clone();
        async move {
            v1::query_client::QueryClient::new(c)
                .occupancy(req(
                    v1::OccupancyRequest {
                        region: Some(v1::Region {
                            kind: Some(v1::region::Kind::Circle(v1::Circle {
                                lat: 30.2741,
                                lng: 120.1551,
                                radius_m: 500.0,
                            })),
                        }),
                        window: Some(v1::Window {
                            start: T0,
                            end: NOW,
                            as_of: Some(NOW),
                        }),
                        max_staleness_ms: Some(ms),
                    },
                    &t,
                ))
                .await
        }
    };
    for ms in [60_001, 4_233_600_000, u32::MAX] {
        let e = occupancy(ms).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{ms}: {e:?}");
        assert!(e.message().contains("max_staleness_ms"), "{e:?}");
    }
    occupancy(60_000).await.unwrap();
}

// ------------------------------------------------- aggregate differencing

/// Ten busy houses B1..B10 (10 persons each) and a target T1 with two,
/// all in area Z1, on day T0 (ended: the clock is at T0 + 3 days).
async fn seed_houses(h: &Harness) {
    let ingest = token("ingest-1", &[Role::Ingest], EXP);
    let mut addresses: Vec<v1::Address> = (1..=10)
        .map(|i| addr(&format!("B{i}"), 30.27 + f64::from(i) * 0.001, 120.15, "Z1"))
        .collect();
    addresses.push(addr("T1", 30.29, 120.15, "Z1"));
    v1::registry_client::RegistryClient::new(h.channel.clone())
        .put_addresses(req(v1::PutAddressesRequest { addresses }, &ingest))
        .await
        .unwrap();
    let mut events = Vec::new();
    for i in 1..=10u64 {
        for p in 0..10 {
            events.push(ev(100 * i + p, T0 + 14 * 3600, &format!("B{i}"), "access"));
        }
    }
    events.push(ev(5_000, T0 + 15 * 3600, "T1", "access"));
    events.push(ev(5_001, T0 + 15 * 3600 + 60, "T1", "access"));
    let r = v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(v1::IngestRequest { events }, &ingest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 102);
}

fn houses(with_target: bool) -> Option<v1::Region> {
    let mut codes: Vec<String> = (1..=10).map(|i| format!("B{i}")).collect();
    if with_target {
        codes.push("T1".into());
    }
    Some(v1::Region {
        kind: Some(v1::region::Kind::Addresses(v1::AddressList { codes })),
    })
}

fn area_z1() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Area("Z1".into())),
    })
}

async fn occupancy(
    h: &Harness,
    t: &str,
    region: Option<v1::Region>,
    from: i64,
    to: i64,
    as_of: Option<i64>,
) -> Result<v1::OccupancyResponse, Status> {
    v1::query_client::QueryClient::new(h.channel.clone())
        .occupancy(req(
            v1::OccupancyRequest {
                region,
                window: Some(v1::Window {
                    start: from,
                    end: to,
                    as_of,
                }),
                max_staleness_ms: None,
            },
            t,
        ))
        .await
        .map(|r| r.into_inner())
}

/// The exact count two answers give away by difference, if both came back
/// unsuppressed.
fn difference(
    a: &Result<v1::OccupancyResponse, Status>,
    b: &Result<v1::OccupancyResponse, Status>,
) -> Option<u64> {
    match (a, b) {
        (Ok(a), Ok(b)) if !a.distinct_suppressed && !b.distinct_suppressed => {
            Some(a.distinct.abs_diff(b.distinct))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_cannot_be_differenced_into_small_counts() {
    let h = start_with(90, 0, |_| {}).await;
    seed_houses(&h).await;
    let day = T0 + 86_400;
    // (what, first query, second query): the attacks of the issue, and
    // the same day read as of two times.
    let attacks = |t: String| {
        let h = &h;
        async move {
            vec![
                (
                    "houses with and without the target",
                    occupancy(h, &t, houses(true), T0, day, None).await,
                    occupancy(h, &t, houses(false), T0, day, None).await,
                ),
                (
                    "a window with and without its last hour",
                    occupancy(h, &t, area_z1(), T0, T0 + 16 * 3600, None).await,
                    occupancy(h, &t, area_z1(), T0, T0 + 15 * 3600, None).await,
                ),
                (
                    "one day as of two times",
                    occupancy(h, &t, area_z1(), T0, day, Some(T0 + 16 * 3600)).await,
                    occupancy(h, &t, area_z1(), T0, day, Some(T0 + 14 * 3600)).await,
                ),
            ]
        }
    };
    // An investigator sees exact counts: each attack would give away the
    // target's two persons.
    let inv = token("investigator-1", &[Role::Investigator], EXP);
    for (what, a, b) in attacks(inv).await {
        assert_eq!(difference(&a, &b), Some(2), "{what}: {a:?} {b:?}");
    }
    // An analyst gets nothing to subtract.
    let analyst = token("analyst-1", &[Role::Analyst], EXP);
    for (what, a, b) in attacks(analyst.clone()).await {
        if let Some(d) = difference(&a, &b) {
            assert!(
                d == 0 || d >= 5,
                "{what} revealed an exact count of {d} below the threshold"
            );
        }
        for r in [&a, &b] {
            if let Err(e) = r {
                assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
                assert!(e.message().contains("published unit"), "{e:?}");
            }
        }
    }
    // What an analyst may ask: an area over a whole day that has ended.
    let ok = occupancy(&h, &analyst, area_z1(), T0, day, None)
        .await
        .unwrap();
    assert_eq!((ok.distinct, ok.distinct_suppressed), (102, false));
    // The target's hour on its own is suppressed (2 < 5).
    let target_hour = ok.hours.iter().find(|x| x.hour == T0 + 15 * 3600).unwrap();
    assert!(target_hour.suppressed && target_hour.distinct == 0);
    // A day that has not ended, or two days at once, is refused.
    for (from, to) in [(NOW, NOW + 86_400), (T0, T0 + 2 * 86_400)] {
        let e = occupancy(&h, &analyst, area_z1(), from, to, None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}

// ------------------------------------------------------------ retention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_far_ahead_cannot_expire_hours_the_limit_keeps() {
    // A 2-day limit; the clock is at T0 + 3 days.
    let h = start_with(2, 0, |_| {}).await;
    let ingest = token("ingest-1", &[Role::Ingest], EXP);
    v1::registry_client::RegistryClient::new(h.channel.clone())
        .put_addresses(req(
            v1::PutAddressesRequest {
                addresses: vec![addr("H1", 30.2741, 120.1551, "A1")],
            },
            &ingest,
        ))
        .await
        .unwrap();
    let recent = NOW - 3 * 3600;
    v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(
            v1::IngestRequest {
                events: vec![ev(77, recent, "H1", "access")],
            },
            &ingest,
        ))
        .await
        .unwrap();
    // The serving node's clock jumps to 2100.
    h.clock
        .store(4_102_444_800, std::sync::atomic::Ordering::SeqCst);
    let op = token("operator-1", &[Role::Operator], 4_102_444_800 + 86_400);
    let r = v1::admin_client::AdminClient::new(h.channel.clone())
        .expire(req(v1::ExpireRequest {}, &op))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.cutoff <= recent - 2 * 86_400 + 3600,
        "the cut-off {} passed the newest hour minus the limit",
        r.cutoff
    );
    assert_eq!(r.person_days_removed, 0);
    let stats = h.node.stats().unwrap();
    assert_eq!(stats.last_hour, Some(recent.div_euclid(3600)));
}

// ---------------------------------------------------------- connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_unread() {
    // The harness holds one connection; the cap allows one more.
    let h = start_with(90, 0, |cfg| cfg.security.max_connections = 2).await;
    let t = token("operator-1", &[Role::Operator], EXP);
    let status = |ch: tonic::transport::Channel| {
        let t = t.clone();
        async move {
            v1::admin_client::AdminClient::new(ch)
                .status(req(v1::StatusRequest::default(), &t))
                .await
        }
    };
    let url = format!("http://{}", h.addr);
    let open = || async {
        tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(2))
            .connect()
            .await
    };
    status(h.channel.clone()).await.unwrap();
    let second = open().await.unwrap();
    status(second.clone()).await.unwrap();
    // A third is closed before a byte is read: it never gets an answer.
    let third = match open().await {
        Ok(ch) => status(ch).await.map(|_| ()),
        Err(e) => Err(Status::unavailable(e.to_string())),
    };
    assert!(third.is_err(), "a connection past the cap was served");
    // Once one closes, a new one is served.
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(ch) = open().await {
            if status(ch).await.is_ok() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection served after one closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The audit log names persons in its records' parameters: an auditor
/// listing it without a purpose and case gets every record but no
/// parameters (the chain still verifies by their hashes); with them, the
/// parameters, and the listing is audited first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_parameters_leave_only_through_the_gate() {
    let h = start_with(90, 0, |_| {}).await;
    seed_tasks(&h).await;
    let inv = token("investigator-1", &[Role::Investigator], EXP);
    call_person_level(&h, Rpc::WhereWas, &inv, "checking", "C-9")
        .await
        .unwrap();
    let plain = audit(&h).await;
    let asked = plain.iter().find(|r| r.rpc == "Query.WhereWas").unwrap();
    assert!(asked.withheld && asked.parameters.is_empty(), "{asked:?}");
    assert!(plain.iter().all(|r| r.parameters.is_empty()));
    let stored: Vec<_> = plain
        .iter()
        .map(|r| hourcell_server::convert::audit_from_proto(r).unwrap())
        .collect();
    assert_eq!(
        hourcell_storage::audit::verify_chain(&stored),
        Ok(plain.len() as u64)
    );
    let auditor = token("auditor-2", &[Role::Auditor], EXP);
    let n = call_person_level(&h, Rpc::AuditList, &auditor, "review", "AUD-1")
        .await
        .unwrap();
    assert!(n > 0);
    let after = audit(&h).await;
    let last = after.last().unwrap();
    assert_eq!(
        (
            last.rpc.as_str(),
            last.principal.as_str(),
            last.case_ref.as_str()
        ),
        ("Audit.List", "auditor-2", "AUD-1")
    );
    // And the parameters, once released, are the ones recorded.
    let full = v1::audit_client::AuditClient::new(h.channel.clone())
        .list(req(
            v1::ListAuditRequest {
                after_seq: 0,
                limit: 1_000,
                parameters: true,
                purpose: "review".into(),
                case_ref: "AUD-1".into(),
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    let asked = full.iter().find(|r| r.rpc == "Query.WhereWas").unwrap();
    assert!(asked.parameters.contains("21"), "{asked:?}");
    let stored: Vec<_> = full
        .iter()
        .map(|r| hourcell_server::convert::audit_from_proto(r).unwrap())
        .collect();
    assert!(hourcell_storage::audit::verify_chain(&stored).is_ok());
}
