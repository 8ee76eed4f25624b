//! Query.OccupancyGrid through gRPC with roles: investigators get any level
//! and window with exact counts; analysts only published units (level 14,
//! one whole past UTC day), counts below the threshold suppressed, and
//! their queries logged; bad levels and regions name the field.

use hourcell_proto::v1;
use hourcell_server::auth::Role;
use hourcell_test_support::data::{addr, ev};
use hourcell_test_support::secure::{audit, req, start_with, token, Harness, T0};
use tonic::Code;
use tonic_types::StatusExt;

const EXP: i64 = T0 + 10 * 86_400;

fn circle(radius_m: f64) -> Option<v1::Region> {
    Some(v1::Region {
        kind: Some(v1::region::Kind::Circle(v1::Circle {
            lat: 30.2741,
            lng: 120.1551,
            radius_m,
        })),
    })
}

async fn grid(
    h: &Harness,
    t: &str,
    level: u32,
    hourly: bool,
    (start, end): (i64, i64),
) -> Result<v1::OccupancyGridResponse, tonic::Status> {
    v1::query_client::QueryClient::new(h.channel.clone())
        .occupancy_grid(req(
            v1::OccupancyGridRequest {
                region: circle(800.0),
                window: Some(v1::Window {
                    start,
                    end,
                    as_of: None,
                }),
                level,
                hourly,
                max_staleness_ms: None,
            },
            t,
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_get_published_units_and_investigators_exact_cells() {
    let h = start_with(90, 0, |_| {}).await;
    let ingest = token("ingest-1", &[Role::Ingest], EXP);
    v1::registry_client::RegistryClient::new(h.channel.clone())
        .put_addresses(req(
            v1::PutAddressesRequest {
                addresses: vec![
                    addr("H1", 30.2741, 120.1551, "A1"),
                    addr("H2", 30.2760, 120.1570, "A1"),
                ],
            },
            &ingest,
        ))
        .await
        .unwrap();
    // Day 1: eight persons at H1 at 10:00, two at H2 at 11:00.
    let day = T0 + 86_400;
    let mut events: Vec<v1::Event> = (1..=8)
        .map(|p| ev(p, day + 10 * 3600, "H1", "access"))
        .collect();
    events.extend((11..=12).map(|p| ev(p, day + 11 * 3600, "H2", "access")));
    v1::ingest_client::IngestClient::new(h.channel.clone())
        .ingest(req(v1::IngestRequest { events }, &ingest))
        .await
        .unwrap();
    let whole_day = (day, day + 86_400);

    let inv = token("investigator-1", &[Role::Investigator], EXP);
    let g = grid(&h, &inv, 16, false, whole_day).await.unwrap();
    assert_eq!(g.suppressed_below, 0);
    let counts: Vec<u64> = g.cells.iter().map(|c| c.distinct).collect();
    assert_eq!(counts.iter().sum::<u64>(), 10, "{counts:?}");
    assert!(g.cells.iter().all(|c| c.hour.is_none() && !c.suppressed));
    // Hourly: the hours at which they were there.
    let g = grid(&h, &inv, 16, true, whole_day).await.unwrap();
    let hours: std::collections::BTreeSet<i64> = g.cells.iter().filter_map(|c| c.hour).collect();
    assert_eq!(hours, [day + 10 * 3600, day + 11 * 3600].into());
    // Level 0 means the default, 14.
    assert_eq!(grid(&h, &inv, 0, false, whole_day).await.unwrap().level, 14);

    let an = token("analyst-1", &[Role::Analyst], EXP);
    let before = audit(&h).await.len();
    let g = grid(&h, &an, 14, true, whole_day).await.unwrap();
    assert_eq!(g.suppressed_below, 5);
    for c in &g.cells {
        let want_suppressed = c.hour == Some(day + 11 * 3600);
        assert_eq!(c.suppressed, want_suppressed, "{c:?}");
        assert_eq!(c.distinct, if want_suppressed { 0 } else { 8 }, "{c:?}");
    }
    // Logged (not synced before the answer).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = audit(&h).await;
        if records.len() > before {
            let last = records.last().unwrap();
            assert_eq!(
                (last.rpc.as_str(), last.principal.as_str()),
                ("Query.OccupancyGrid", "analyst-1")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the analyst's grid was not logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Not a published unit: another level, part of a day, a day not over.
    for (level, window) in [
        (13, whole_day),
        (15, whole_day),
        (14, (day, day + 12 * 3600)),
        (14, (day + 3600, day + 86_400 + 3600)),
        (14, (T0 + 3 * 86_400, T0 + 4 * 86_400)),
    ] {
        let e = grid(&h, &an, level, false, window).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{level} {window:?}: {e:?}");
        assert!(e.message().contains("published unit"), "{e:?}");
    }

    // A level past the slice level, or an area: the field is named.
    let e = grid(&h, &inv, 17, false, whole_day).await.unwrap_err();
    let bad = e.get_details_bad_request().expect("field violation");
    assert_eq!(bad.field_violations[0].field, "level");
    let e = v1::query_client::QueryClient::new(h.channel.clone())
        .occupancy_grid(req(
            v1::OccupancyGridRequest {
                region: Some(v1::Region {
                    kind: Some(v1::region::Kind::Area("A1".into())),
                }),
                window: Some(v1::Window {
                    start: day,
                    end: day + 86_400,
                    as_of: None,
                }),
                ..Default::default()
            },
            &inv,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("region"), "{e:?}");
}
