//! Polygon regions through gRPC against a node on 127.0.0.1: a polygon
//! that is a rectangle answers as the rectangle does, a hole keeps out
//! the persons seen only inside it, each bad polygon is INVALID_ARGUMENT
//! naming the problem, and the audit log records a polygon compactly.

use hourcell_proto::v1;
use hourcell_proto::v1::audit_client::AuditClient;
use hourcell_proto::v1::ingest_client::IngestClient;
use hourcell_proto::v1::query_client::QueryClient;
use hourcell_test_support::secure::{start_with, Harness};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// 2026-11-01T00:00:00Z
const T0: i64 = hourcell_test_support::secure::T0;

/// The rectangle (lat_lo, lng_lo, lat_hi, lng_hi) and the hole.
const RECT: (f64, f64, f64, f64) = (30.20, 120.10, 30.30, 120.20);
const HOLE: (f64, f64, f64, f64) = (30.24, 120.14, 30.26, 120.16);

/// A node on 127.0.0.1 serving every role to anonymous callers, its clock
/// three days after T0 (the shared harness, without tokens).
async fn start() -> Harness {
    start_with(90, 0, |cfg| {
        cfg.security.token_key_file = None;
        cfg.security.insecure = true;
        cfg.security.anonymous_roles = vec!["all".into()];
    })
    .await
}

fn at(person: u64, hour: i64, lat: f64, lng: f64) -> v1::Event {
    v1::Event {
        person,
        time: Some(v1::event::Time::UnixSeconds(T0 + hour * 3600 + 60)),
        lat: Some(lat),
        lng: Some(lng),
        address: String::new(),
        source: "access".into(),
    }
}

/// Persons 1..=121 on an 11 x 11 grid over and around the rectangle
/// (some inside, some outside, some within a cell of its edges); person
/// 200 only in the hole, 201 only in the ring, 202 in both.
async fn seed(h: &Harness) {
    let mut events = Vec::new();
    for i in 0..11 {
        for j in 0..11 {
            let person = 1 + i * 11 + j;
            let lat = 30.17 + i as f64 * 0.0155;
            let lng = 120.07 + j as f64 * 0.0153;
            events.push(at(person, (person % 20) as i64, lat, lng));
        }
    }
    events.push(at(200, 3, 30.25, 120.15));
    events.push(at(201, 4, 30.21, 120.11));
    events.push(at(202, 5, 30.251, 120.149));
    events.push(at(202, 6, 30.29, 120.19));
    let r = IngestClient::new(h.channel.clone())
        .ingest(v1::IngestRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 125, "{:?}", r.rejected);
}

fn ring(b: (f64, f64, f64, f64)) -> v1::Ring {
    let (lat_lo, lng_lo, lat_hi, lng_hi) = b;
    v1::Ring {
        points: [
            (lat_lo, lng_lo),
            (lat_lo, lng_hi),
            (lat_hi, lng_hi),
            (lat_hi, lng_lo),
            (lat_lo, lng_lo),
        ]
        .iter()
        .map(|&(lat, lng)| v1::LatLng { lat, lng })
        .collect(),
    }
}

fn polygon(rings: Vec<v1::Ring>) -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Multipolygon(v1::MultiPolygon {
            polygons: vec![v1::Polygon { rings }],
        })),
    })
}

fn rect() -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Rect(v1::Rect {
            lat_lo: RECT.0,
            lng_lo: RECT.1,
            lat_hi: RECT.2,
            lng_hi: RECT.3,
        })),
    })
}

fn window() -> Option<v1::Window> {
    Some(v1::Window {
        start: T0,
        end: T0 + 86_400,
        as_of: None,
    })
}

async fn who(q: &mut QueryClient<Channel>, region: Option<v1::Region>) -> Vec<u64> {
    let mut s = q
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            region,
            window: window(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut persons = Vec::new();
    while let Some(m) = s.next().await {
        persons.extend(m.unwrap().persons);
    }
    persons
}

async fn occupancy(
    q: &mut QueryClient<Channel>,
    region: Option<v1::Region>,
) -> Result<v1::OccupancyResponse, tonic::Status> {
    q.occupancy(v1::OccupancyRequest {
        max_staleness_ms: None,
        region,
        window: window(),
    })
    .await
    .map(|r| {
        let mut r = r.into_inner();
        r.staleness_ms = 0;
        r
    })
}

#[tokio::test]
async fn a_rectangle_polygon_answers_as_the_rectangle_and_a_hole_keeps_out() {
    let h = start().await;
    seed(&h).await;
    let mut q = QueryClient::new(h.channel.clone());

    let by_rect = who(&mut q, rect()).await;
    let by_polygon = who(&mut q, polygon(vec![ring(RECT)])).await;
    assert_eq!(by_polygon, by_rect);
    assert!(
        by_rect.len() > 20 && by_rect.len() < 110,
        "some in, some out: {by_rect:?}"
    );
    assert_eq!(
        occupancy(&mut q, polygon(vec![ring(RECT)])).await.unwrap(),
        occupancy(&mut q, rect()).await.unwrap()
    );

    // With the hole: 200 (only in the hole) is out, 201 and 202 are in.
    let holed = who(&mut q, polygon(vec![ring(RECT), ring(HOLE)])).await;
    assert!(by_polygon.contains(&200));
    assert!(!holed.contains(&200), "{holed:?}");
    assert!(holed.contains(&201) && holed.contains(&202), "{holed:?}");
    let o = occupancy(&mut q, polygon(vec![ring(RECT), ring(HOLE)]))
        .await
        .unwrap();
    assert_eq!(o.distinct, holed.len() as u64);

    // The hole's own polygon holds 200 and 202 only of the three.
    let inside = who(&mut q, polygon(vec![ring(HOLE)])).await;
    assert!(inside.contains(&200) && inside.contains(&202) && !inside.contains(&201));

    // The audit log shows the polygon by counts, box and hash.
    let records = AuditClient::new(h.channel.clone())
        .list(v1::ListAuditRequest {
            parameters: true,
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let p = records
        .iter()
        .map(|r| r.parameters.as_str())
        .find(|p| p.contains("2 ring(s)"))
        .expect("the polygon with a hole in the audit log");
    assert!(
        p.contains("MultiPolygon { 1 polygon(s), 2 ring(s), 10 position(s), lat 30.2..30.3")
            && p.contains("sha256")
            && !p.contains("LatLng"),
        "{p}"
    );
}

#[tokio::test]
async fn each_bad_polygon_is_invalid_argument_naming_the_problem() {
    let h = start().await;
    let mut q = QueryClient::new(h.channel.clone());
    let pts = |v: &[(f64, f64)]| v1::Ring {
        points: v
            .iter()
            .map(|&(lng, lat)| v1::LatLng { lat, lng })
            .collect(),
    };
    let big = v1::Ring {
        points: (0..=10_000)
            .map(|i| {
                let a = f64::from(i) / 10_000.0 * std::f64::consts::TAU;
                v1::LatLng {
                    lat: 30.0 + 0.01 * a.sin(),
                    lng: 120.0 + 0.01 * a.cos(),
                }
            })
            .chain([v1::LatLng {
                lat: 30.0,
                lng: 120.01,
            }])
            .collect(),
    };
    let cases: Vec<(&str, Option<v1::Region>, &str)> = vec![
        (
            "no polygons",
            Some(v1::Region {
                kind: Some(v1::region::Kind::Multipolygon(v1::MultiPolygon {
                    polygons: vec![],
                })),
            }),
            "at least one polygon",
        ),
        (
            "too few positions",
            polygon(vec![pts(&[(120.0, 30.0), (120.1, 30.0), (120.0, 30.0)])]),
            "at least 4",
        ),
        (
            "unclosed",
            polygon(vec![pts(&[
                (120.0, 30.0),
                (120.1, 30.0),
                (120.1, 30.1),
                (120.0, 30.1),
            ])]),
            "not closed",
        ),
        (
            "not finite",
            polygon(vec![pts(&[
                (120.0, 30.0),
                (f64::NAN, 30.0),
                (120.1, 30.1),
                (120.0, 30.0),
            ])]),
            "out of range",
        ),
        (
            "out of range",
            polygon(vec![pts(&[
                (120.0, 30.0),
                (120.1, 95.0),
                (120.1, 30.1),
                (120.0, 30.0),
            ])]),
            "out of range",
        ),
        (
            "self-intersecting",
            polygon(vec![pts(&[
                (120.0, 30.0),
                (120.1, 30.1),
                (120.1, 30.0),
                (120.0, 30.1),
                (120.0, 30.0),
            ])]),
            "self-intersecting",
        ),
        ("too many vertices", polygon(vec![big]), "too many vertices"),
        (
            "antimeridian",
            polygon(vec![pts(&[
                (-179.0, 0.0),
                (179.0, 0.0),
                (179.0, 1.0),
                (-179.0, 1.0),
                (-179.0, 0.0),
            ])]),
            "antimeridian",
        ),
        (
            "hole outside",
            polygon(vec![ring(RECT), ring((31.0, 121.0, 31.1, 121.1))]),
            "not inside the outer ring",
        ),
    ];
    use tonic_types::StatusExt;
    for (name, region, want) in cases {
        let e = occupancy(&mut q, region.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(
            e.message().contains(want) && e.message().contains("region"),
            "{name}: {}",
            e.message()
        );
        let bad = e.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, "region", "{name}");
        assert!(bad.field_violations[0].description.contains(want), "{name}");
        // A message about a 10,000-position polygon stays short.
        assert!(e.message().len() < 600, "{name}: {}", e.message());
    }
    // who-was-at refuses the same way.
    let e = q
        .who_was_at(v1::WhoWasAtRequest {
            purpose: "generated test".into(),
            case_ref: "T-1".into(),
            max_staleness_ms: None,
            region: polygon(vec![pts(&[(120.0, 30.0), (120.1, 30.0), (120.0, 30.0)])]),
            window: window(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at least 4"), "{}", e.message());
}
