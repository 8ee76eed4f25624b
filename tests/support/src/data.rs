//! The events, regions and queries process tests write and read.

use hourcell_proto::v1;

use crate::grpc::{connect, patient};

/// 2026-11-01T00:00:00Z
pub const T0: i64 = 1_793_491_200;

/// A standard address in `area` (label "generated CODE").
pub fn addr(code: &str, lat: f64, lng: f64, area: &str) -> v1::Address {
    v1::Address {
        code: code.into(),
        lat,
        lng,
        kind: "standard".into(),
        area: area.into(),
        label: format!("generated {code}"),
    }
}

/// An event of `person` at address `address` at unix second `t`.
pub fn ev(person: u64, t: i64, address: &str, source: &str) -> v1::Event {
    v1::Event {
        person,
        time: Some(v1::event::Time::UnixSeconds(t)),
        lat: None,
        lng: None,
        address: address.into(),
        source: source.into(),
    }
}

pub fn events(first: u64, n: u64, hour: i64) -> Vec<v1::Event> {
    (0..n)
        .map(|i| v1::Event {
            person: first + i,
            time: Some(v1::event::Time::UnixSeconds(T0 + hour * 3600 + 60)),
            lat: Some(30.27 + i as f64 * 1e-4),
            lng: Some(120.15),
            address: String::new(),
            source: "access".into(),
        })
        .collect()
}

/// Ingests through `port`; true once acknowledged.
pub async fn ingest(port: u16, evs: Vec<v1::Event>) -> bool {
    try_ingest(port, evs)
        .await
        .is_ok_and(|accepted| accepted > 0)
}

/// Ingests `evs` through `port` until it is acknowledged, asking again
/// (batches are idempotent) while the node answers that it cannot commit
/// now (a leader just elected or changing, a peer still starting), for
/// up to `within`; panics with the last refusal after that.
pub async fn ingest_within(port: u16, evs: Vec<v1::Event>, within: std::time::Duration) {
    let end = std::time::Instant::now() + within;
    loop {
        let r = try_ingest(port, evs.clone()).await;
        let retry = match &r {
            Ok(n) if *n > 0 => return,
            Ok(_) => false,
            Err(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
        };
        assert!(
            retry && std::time::Instant::now() < end,
            "ingest through :{port} not acknowledged: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Ingests `evs` through `port`: the count accepted, or why not (for a
/// failing test's message).
pub async fn try_ingest(port: u16, evs: Vec<v1::Event>) -> Result<u64, tonic::Status> {
    let Some(ch) = connect(port).await else {
        return Err(tonic::Status::unavailable(format!(
            "no connection to :{port}"
        )));
    };
    v1::ingest_client::IngestClient::new(ch)
        .ingest(v1::IngestRequest { events: evs })
        .await
        .map(|r| r.into_inner().accepted)
}

/// The circle and two days every test writes into.
pub fn circle_region() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Circle(v1::Circle {
            lat: 30.27,
            lng: 120.15,
            radius_m: 5_000.0,
        })),
    })
}

pub fn two_days() -> Option<v1::Window> {
    Some(v1::Window {
        start: T0,
        end: T0 + 48 * 3600,
        as_of: Some(T0 + 48 * 3600),
    })
}

/// who-was-at over [`circle_region`] and [`two_days`].
pub fn who_request(max_staleness_ms: Option<u32>) -> v1::WhoWasAtRequest {
    v1::WhoWasAtRequest {
        purpose: "generated test".into(),
        case_ref: "T-1".into(),
        max_staleness_ms,
        region: circle_region(),
        window: two_days(),
    }
}

pub async fn persons_on(port: u16) -> Vec<u64> {
    persons_on_stale(port, None).await.0
}

/// who-was-at through `port`, optionally accepting a bounded-stale
/// follower read; returns the persons and the staleness the node reported.
/// A read refused as UNAVAILABLE (a barrier not applied in time on a
/// loaded machine; the status says to retry) is asked again, up to three
/// times; callers still check the answer.
pub async fn persons_on_stale(port: u16, max_staleness_ms: Option<u32>) -> (Vec<u64>, u64) {
    let mut tries = 0;
    loop {
        tries += 1;
        match try_persons_on(port, max_staleness_ms).await {
            Err(e) if e.code() == tonic::Code::Unavailable && tries < 3 => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            r => return r.unwrap(),
        }
    }
}

async fn try_persons_on(
    port: u16,
    max_staleness_ms: Option<u32>,
) -> Result<(Vec<u64>, u64), tonic::Status> {
    let ch = patient(port).await.expect("node reachable");
    let mut s = v1::query_client::QueryClient::new(ch)
        .who_was_at(who_request(max_staleness_ms))
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut stale = 0;
    while let Some(m) = s.message().await? {
        stale = stale.max(m.staleness_ms);
        out.extend(m.persons);
    }
    Ok((out, stale))
}

/// What the writer sent and what was acknowledged.
#[derive(Default)]
pub struct Ledger {
    pub attempted: std::collections::BTreeSet<u64>,
    pub acked: std::collections::BTreeSet<u64>,
    pub failures: u64,
}

/// The registry and events from which the rules raise two tasks:
/// addresses H1 and H2, person 20 registered at H2, and nights of persons
/// 20 and 21 at H1 from three sources (local night hours, UTC+8).
pub struct TaskSeed {
    pub addresses: v1::PutAddressesRequest,
    pub registrations: v1::PutRegistrationsRequest,
    pub events: v1::IngestRequest,
}

pub fn task_seed() -> TaskSeed {
    let mut events = Vec::new();
    for d in 0..3 {
        for p in [20, 21] {
            events.push(ev(p, T0 + d * 86_400 + 14 * 3600, "H1", "rental"));
            events.push(ev(p, T0 + d * 86_400 + 15 * 3600, "H1", "utility"));
            if d < 2 {
                events.push(ev(p, T0 + d * 86_400 + 16 * 3600, "H1", "service"));
            }
        }
    }
    TaskSeed {
        addresses: v1::PutAddressesRequest {
            addresses: vec![
                addr("H1", 30.2741, 120.1551, "A1"),
                addr("H2", 30.2800, 120.1600, "A2"),
            ],
        },
        registrations: v1::PutRegistrationsRequest {
            registrations: vec![v1::Registration {
                person: 20,
                address: "H2".into(),
                kind: "permanent".into(),
                valid_from: T0 - 86_400,
                valid_until: None,
            }],
        },
        events: v1::IngestRequest { events },
    }
}
