use super::*;

/// `hourcell query ARGS...` as parsed by clap.
fn parse(args: &[&str]) -> std::result::Result<QueryCommand, clap::Error> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Q {
        #[command(subcommand)]
        q: QueryCommand,
    }
    Q::try_parse_from(std::iter::once("query").chain(args.iter().copied())).map(|q| q.q)
}

/// A request from `hourcell query KIND ARGS... --purpose .. --case ..`.
fn request(args: &[&str], now: i64) -> Result<QueryRequest> {
    let mut all = args.to_vec();
    if args[0] != "occupancy" && args[0] != "grid" {
        all.extend(["--purpose", "generated test", "--case", "T-1"]);
    }
    build_request(&parse(&all).map_err(|e| anyhow!("{e}"))?, now)
}

fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn cluster_status_shows_roles_and_lag() {
    let peers: Vec<v1::RaftPeer> = (1..=3)
        .map(|id| v1::RaftPeer {
            id,
            addr: format!("127.0.0.1:74{id:02}"),
        })
        .collect();
    let st = |leader: u64, is_leader: bool, commit: u64, applied: u64| {
        Some(v1::RaftStatus {
            leader,
            is_leader,
            term: 4,
            commit,
            applied,
            ..Default::default()
        })
    };
    let rows = cluster_rows(&peers, &[st(2, false, 90, 80), st(2, true, 100, 100), None]);
    assert_eq!(
        rows.iter()
            .map(|r| (r.role.as_str(), r.lag))
            .collect::<Vec<_>>(),
        vec![
            ("follower", Some(20)),
            ("leader", Some(0)),
            ("unreachable", None)
        ]
    );
    let t = render_cluster(&rows, Format::Table).unwrap();
    assert!(t.contains("2 of 3 nodes reachable; node 2 leads"), "{t}");
    let j: serde_json::Value =
        serde_json::from_str(&render_cluster(&rows, Format::Json).unwrap()).unwrap();
    assert_eq!(j["nodes"][0]["lag"], 20);
}

#[test]
fn servers_get_a_scheme() {
    assert_eq!(normalize_server("127.0.0.1:7420"), "http://127.0.0.1:7420");
    assert_eq!(normalize_server("http://h:1/"), "http://h:1");
    assert_eq!(normalize_server("https://h:1"), "https://h:1");
}

#[test]
fn rect_orders_latitudes_and_keeps_longitudes() {
    let r = parse_rect("--rect", "30.3, 120.2,30.1,120.1").unwrap();
    assert_eq!(
        r,
        v1::Rect {
            lat_lo: 30.1,
            lng_lo: 120.2,
            lat_hi: 30.3,
            lng_hi: 120.1
        }
    );
    let e = err(parse_rect("--rect", "1,2,3"));
    assert!(e.contains("--rect") && e.contains("\"1,2,3\""), "{e}");
    let e = err(parse_rect("--rect", "1,2,x,4"));
    assert!(
        e.contains("--rect") && e.contains("LAT2") && e.contains("\"x\""),
        "{e}"
    );
    assert!(parse_rect("--rect", "1,2,nan,4").is_err());
}

#[test]
fn circle_and_lists_parse() {
    let c = parse_circle("--circle", "30.27,120.15,1000").unwrap();
    assert_eq!((c.lat, c.lng, c.radius_m), (30.27, 120.15, 1000.0));
    let e = err(parse_circle("--circle", "30.27,120.15,1km"));
    assert!(
        e.contains("--circle") && e.contains("METRES") && e.contains("1km"),
        "{e}"
    );
    assert_eq!(parse_list("--cells", " a, b,,").unwrap(), vec!["a", "b"]);
    assert!(err(parse_list("--addresses", " , ")).contains("--addresses"));
}

#[test]
fn exactly_one_region_flag() {
    use v1::region::Kind;
    assert_eq!(region_from_flags(&RegionFlags::default()).unwrap(), None);
    let f = RegionFlags {
        area: Some(" A017 "),
        ..Default::default()
    };
    assert_eq!(
        region_from_flags(&f).unwrap().unwrap().kind,
        Some(Kind::Area("A017".into()))
    );
    let f = RegionFlags {
        cells: Some("89c25,89c27"),
        ..Default::default()
    };
    assert_eq!(
        region_from_flags(&f).unwrap().unwrap().kind,
        Some(Kind::Cells(v1::CellList {
            tokens: vec!["89c25".into(), "89c27".into()]
        }))
    );
    let f = RegionFlags {
        rect: Some("1,2,3,4"),
        area: Some("A1"),
        ..Default::default()
    };
    let e = err(region_from_flags(&f));
    assert!(e.contains("--rect") && e.contains("--area"), "{e}");
}

#[test]
fn who_was_at_request() {
    let e = err(request(&["who-was-at"], 100));
    assert!(e.contains("region"), "{e}");
    let e = err(request(&["who-was-at", "--circle", "30,120,500"], 100));
    assert!(e.contains("--from"), "{e}");
    let base = [
        "who-was-at",
        "--circle",
        "30,120,500",
        "--from",
        "2026-11-01T00:00:00Z",
    ];
    let QueryRequest::WhoWasAt(r) = request(&base, 1_793_600_000).unwrap() else {
        panic!("not who-was-at")
    };
    assert_eq!(
        r.window,
        Some(v1::Window {
            start: 1_793_491_200,
            end: 1_793_600_000,
            as_of: None
        })
    );
    // --to defaults to --as-of.
    let with = |extra: &[&'static str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let QueryRequest::WhoWasAt(r) = request(&with(&["--as-of", "1793500000"]), 5).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.window,
        Some(v1::Window {
            start: 1_793_491_200,
            end: 1_793_500_000,
            as_of: Some(1_793_500_000)
        })
    );
    let e = err(request(&with(&["--to", "yesterday"]), 5));
    assert!(e.contains("--to") && e.contains("yesterday"), "{e}");
    // Flags of other kinds are not this kind's: clap refuses them.
    let e = parse(&with(&["--person", "3"])).unwrap_err().to_string();
    assert!(e.contains("--person"), "{e}");
    // Without a purpose and a case, nothing is asked.
    let e = err(build_request(&parse(&base).unwrap(), 5));
    assert!(e.contains("--purpose") && e.contains("--case"), "{e}");
}

#[test]
fn where_was_and_no_activity_requests() {
    let e = parse(&["where-was", "--from", "0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--person"), "{e}");
    let QueryRequest::WhereWas(r) =
        request(&["where-was", "--from", "0", "--person", "42"], 10).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.person, 42);
    let e = parse(&["where-was", "--person", "42", "--area", "A1"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--area"), "{e}");

    assert!(err(request(&["no-activity-since"], 10)).contains("--since"));
    let QueryRequest::NoActivitySince(r) = request(
        &[
            "no-activity-since",
            "--since",
            "2026-11-01T00:00:00Z",
            "--local-rect",
            "30.3,120.1,30.2,120.2",
            "--addresses",
            "H1,H2",
        ],
        10,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(r.since, 1_793_491_200);
    assert_eq!(r.as_of, None);
    assert!(matches!(
        r.scope.and_then(|s| s.kind),
        Some(v1::region::Kind::Addresses(_))
    ));
    let Some(v1::region::Kind::Rect(l)) = r.local.and_then(|s| s.kind) else {
        panic!()
    };
    assert_eq!((l.lat_lo, l.lat_hi), (30.2, 30.3));
    // The local region as a polygon, inline; not together with a rectangle.
    let square = r#"{"type":"Polygon","coordinates":[[[120.1,30.2],[120.2,30.2],[120.2,30.3],[120.1,30.3],[120.1,30.2]]]}"#;
    let QueryRequest::NoActivitySince(r) = request(
        &[
            "no-activity-since",
            "--since",
            "2026-11-01T00:00:00Z",
            "--local-polygon",
            square,
        ],
        10,
    )
    .unwrap() else {
        panic!()
    };
    let Some(v1::region::Kind::Multipolygon(m)) = r.local.and_then(|s| s.kind) else {
        panic!()
    };
    assert_eq!(m.polygons[0].rings[0].points.len(), 5);
    assert!(parse(&[
        "no-activity-since",
        "--since",
        "0",
        "--local-rect",
        "30.3,120.1,30.2,120.2",
        "--local-polygon",
        square
    ])
    .is_err());
    let e = parse(&["no-activity-since", "--since", "0", "--from", "0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--from"), "{e}");
}

fn ew(from: i64, to: i64) -> v1::EffectiveWindow {
    v1::EffectiveWindow {
        start: from,
        end: to,
        as_of: to,
    }
}

#[test]
fn json_shapes() {
    let out = QueryOutput::WhoWasAt(WhoWasAtResult {
        window: ew(1_793_491_200, 1_793_577_600),
        persons: vec![3, 18_000_000_000_000_000_000],
    });
    assert_eq!(
        to_json(&out, false).unwrap(),
        r#"{"from":"2026-11-01T00:00:00Z","to":"2026-11-02T00:00:00Z","persons":["3","18000000000000000000"]}"#
    );
    let out = QueryOutput::WhereWas(v1::WhereWasResponse {
        staleness_ms: 0,
        window: Some(ew(0, 7200)),
        person: 9,
        hours: vec![v1::HourPlaces {
            hour: 3600,
            cells: vec!["c1".into()],
            addresses: vec![],
            sources: vec!["utility".into(), "access".into()],
        }],
    });
    assert_eq!(
        to_json(&out, false).unwrap(),
        r#"{"person":"9","hours":[{"hour":"1970-01-01T01:00:00Z","cells":["c1"],"addresses":[],"sources":["utility","access"]}]}"#
    );
    let out = QueryOutput::Occupancy(v1::OccupancyResponse {
        staleness_ms: 0,
        window: Some(ew(0, 7200)),
        distinct: 6,
        distinct_suppressed: false,
        suppressed_below: 5,
        hours: vec![
            v1::HourCount {
                hour: 0,
                distinct: 6,
                suppressed: false,
            },
            v1::HourCount {
                hour: 3600,
                distinct: 0,
                suppressed: true,
            },
        ],
    });
    assert_eq!(
        to_json(&out, false).unwrap(),
        r#"{"from":"1970-01-01T00:00:00Z","to":"1970-01-01T02:00:00Z","distinct":6,"hours":[{"hour":"1970-01-01T00:00:00Z","distinct":6},{"hour":"1970-01-01T01:00:00Z","distinct":null,"suppressed":true}]}"#
    );
    let csv = render(&out, QueryFormat::Csv).unwrap();
    assert!(csv.contains("1970-01-01T01:00:00Z,<5"), "{csv}");
    let out = QueryOutput::NoActivitySince(NoActivityResult {
        window: ew(7200, 10800),
        persons: vec![
            v1::InactivePerson {
                person: 1,
                last_seen: Some(3600),
            },
            v1::InactivePerson {
                person: 2,
                last_seen: None,
            },
        ],
    });
    assert_eq!(
        to_json(&out, false).unwrap(),
        r#"{"since":"1970-01-01T02:00:00Z","persons":[{"person":"1","last_seen":"1970-01-01T01:00:00Z"},{"person":"2","last_seen":null}]}"#
    );
    assert_eq!(
        to_csv(&out).unwrap(),
        "person,last_seen\n1,1970-01-01T01:00:00Z\n2,\n"
    );
    let t = to_table(&out);
    assert!(t.contains("\n2       -\n"), "{t}");
    assert!(t.ends_with("2 registered persons with no activity since 1970-01-01T02:00:00Z (as of 1970-01-01T03:00:00Z)\n"), "{t}");
}

#[test]
fn csv_and_table_outputs() {
    let out = QueryOutput::WhereWas(v1::WhereWasResponse {
        staleness_ms: 0,
        window: Some(ew(0, 7200)),
        person: 9,
        hours: vec![v1::HourPlaces {
            hour: 0,
            cells: vec!["c1".into(), "c2".into()],
            addresses: vec!["H1".into()],
            sources: vec!["utility".into()],
        }],
    });
    assert_eq!(
        to_csv(&out).unwrap(),
        "hour,cells,addresses,sources\n1970-01-01T00:00:00Z,c1;c2,H1,utility\n"
    );
    let out = QueryOutput::WhoWasAt(WhoWasAtResult {
        window: ew(1_793_491_200, 1_793_577_600),
        persons: vec![7, 12345],
    });
    assert_eq!(to_csv(&out).unwrap(), "person\n7\n12345\n");
    assert_eq!(
        to_table(&out),
        "person\n7\n12345\n2 persons, window 2026-11-01T00:00:00Z .. 2026-11-02T00:00:00Z\n"
    );
    assert_eq!(
        aligned(&["hour", "distinct"], &[vec!["a".into(), "1".into()]]),
        "hour  distinct\na     1\n"
    );
}

fn record(fields: &[&str]) -> csv::StringRecord {
    csv::StringRecord::from(fields.to_vec())
}

#[test]
fn event_rows_parse() {
    let cols = Columns::new(
        ImportKind::Events,
        &record(&["person", "time", "lat", "lng", "address", "source"]),
    )
    .unwrap();
    let r = parse_row(
        ImportKind::Events,
        &cols,
        &record(&["5", "1700000000", "", "", "H1", "utility"]),
    )
    .unwrap();
    assert_eq!(
        r,
        Item::Event(v1::Event {
            person: 5,
            time: Some(v1::event::Time::UnixSeconds(1_700_000_000)),
            lat: None,
            lng: None,
            address: "H1".into(),
            source: "utility".into()
        })
    );
    let Item::Event(e) = parse_row(
        ImportKind::Events,
        &cols,
        &record(&["5", "2026-11-01T00:00:00Z", "30.1", "120.2", "", "access"]),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(e.time, Some(v1::event::Time::UnixSeconds(1_793_491_200)));
    let Item::Event(e) = parse_row(
        ImportKind::Events,
        &cols,
        &record(&["5", "yesterday", "30.1", "120.2", "", "access"]),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(e.time, Some(v1::event::Time::Rfc3339("yesterday".into())));
    assert_eq!((e.lat, e.lng), (Some(30.1), Some(120.2)));
    let bad = parse_row(
        ImportKind::Events,
        &cols,
        &record(&["x", "1", "", "", "H1", "u"]),
    );
    assert_eq!(bad.unwrap_err().field, "person");
    let bad = parse_row(
        ImportKind::Events,
        &cols,
        &record(&["1", "1", "30", "", "", "u"]),
    );
    assert_eq!(bad.unwrap_err().field, "lng");
    // A short row (flexible reader) misses the time.
    let bad = parse_row(ImportKind::Events, &cols, &record(&["1"]));
    assert_eq!(bad.unwrap_err(), row_err("time", "missing"));
    assert!(Columns::new(ImportKind::Events, &record(&["person", "lat"])).is_err());
}

#[test]
fn registry_and_address_rows_parse() {
    let cols = Columns::new(
        ImportKind::Registry,
        &record(&["person", "address", "kind", "valid_from", "valid_until"]),
    )
    .unwrap();
    let r = parse_row(
        ImportKind::Registry,
        &cols,
        &record(&["7", "H1", "temporary", "2026-11-01T00:00:00Z", "1800000000"]),
    )
    .unwrap();
    assert_eq!(
        r,
        Item::Registration(v1::Registration {
            person: 7,
            address: "H1".into(),
            kind: "temporary".into(),
            valid_from: 1_793_491_200,
            valid_until: Some(1_800_000_000)
        })
    );
    let bad = parse_row(
        ImportKind::Registry,
        &cols,
        &record(&["7", "H1", "permanent", "soon", ""]),
    );
    assert_eq!(bad.unwrap_err().field, "valid_from");

    let cols = Columns::new(
        ImportKind::Addresses,
        &record(&["code", "lat", "lng", "kind", "area", "label"]),
    )
    .unwrap();
    let Item::Address(a) = parse_row(
        ImportKind::Addresses,
        &cols,
        &record(&["H1", "30.5", "120.5", "standard", "A001", "home 1"]),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (a.code.as_str(), a.lat, a.area.as_str()),
        ("H1", 30.5, "A001")
    );
}

#[test]
fn rejections_map_to_lines_and_keep_the_first() {
    let mut rep = ImportReport {
        accepted: 5,
        ..Default::default()
    };
    for l in (100..150).rev() {
        rep.reject(Some(l), "time", "bad");
    }
    rep.server_rejections(
        &[2, 3, 5],
        vec![v1::Rejection {
            index: 2,
            field: "lat".into(),
            reason: "out of range".into(),
        }],
    );
    let first = rep.first().to_vec();
    assert_eq!(first.len(), SHOW_REJECTIONS);
    assert_eq!(first[0].line, Some(5));
    assert_eq!(first[1].line, Some(100));
    let s = rep.summary();
    assert!(
        s.starts_with("accepted 5, rejected 51\n  line 5: lat: out of range\n"),
        "{s}"
    );
    assert!(s.contains("... and 41 more"), "{s}");
}

#[test]
fn status_lines() {
    let s = format_status(&v1::StatusResponse {
        version: "0.1.0".into(),
        persons: 3,
        disk_bytes: 2048,
        first_hour: Some(1_793_491_200),
        ..Default::default()
    });
    assert!(s.contains("persons          3\n"), "{s}");
    assert!(s.contains("disk_bytes       2048 (2.0 KiB)\n"), "{s}");
    assert!(s.contains("first_hour       2026-11-01T00:00:00Z\n"), "{s}");
    assert!(s.contains("last_hour        -\n"), "{s}");
}

#[test]
fn grid_requests_and_geojson() {
    let grid = [
        "grid",
        "--circle",
        "30.27,120.15,900",
        "--from",
        "1793491200",
        "--to",
        "1793577600",
        "--level",
        "13",
        "--hourly",
    ];
    let QueryRequest::Grid(r) = request(&grid, 1_793_600_000).unwrap() else {
        panic!()
    };
    assert_eq!((r.level, r.hourly), (13, true));
    let e = parse(&["grid", "--area", "A1"]).unwrap_err().to_string();
    assert!(e.contains("--area"), "{e}");
    let cell = hourcell_storage::cell::cell_at(30.27, 120.15, 13);
    let (lat, lng) = hourcell_storage::cell::center(cell);
    let out = QueryOutput::Grid(v1::OccupancyGridResponse {
        window: Some(ew(0, 7200)),
        level: 13,
        cells: vec![
            v1::GridCell {
                token: hourcell_storage::cell::token(cell),
                hour: Some(3600),
                distinct: 7,
                suppressed: false,
                lat,
                lng,
            },
            v1::GridCell {
                token: hourcell_storage::cell::token(cell),
                hour: Some(0),
                distinct: 0,
                suppressed: true,
                lat,
                lng,
            },
        ],
        suppressed_below: 5,
        staleness_ms: 0,
    });
    let g: serde_json::Value =
        serde_json::from_str(&render(&out, QueryFormat::Geojson).unwrap()).unwrap();
    assert_eq!(g["type"], "FeatureCollection");
    let f = &g["features"][0];
    let ring = f["geometry"]["coordinates"][0].as_array().unwrap();
    assert_eq!(ring.len(), 5);
    assert_eq!(ring[0], ring[4]);
    assert_eq!(f["properties"]["distinct"], 7);
    assert_eq!(f["properties"]["hour"], "1970-01-01T01:00:00Z");
    let s = &g["features"][1]["properties"];
    assert!(s["distinct"].is_null() && s["suppressed"] == true);
    let table = render(&out, QueryFormat::Table).unwrap();
    assert!(table.contains("<5"), "{table}");
    assert!(table.contains("counts below 5 suppressed"), "{table}");
    // GeoJSON is the grid's alone.
    let occ = QueryOutput::WhoWasAt(WhoWasAtResult::default());
    assert!(render(&occ, QueryFormat::Geojson).is_err());
}

#[test]
fn grid_png_frames_have_a_legend_colours_and_one_file_per_hour() {
    let cell = |lat: f64, lng: f64| hourcell_storage::cell::cell_at(lat, lng, 13);
    let gc = |c: u64, hour: i64, distinct: u64, suppressed: bool| {
        let (lat, lng) = hourcell_storage::cell::center(c);
        v1::GridCell {
            token: hourcell_storage::cell::token(c),
            hour: Some(hour),
            distinct,
            suppressed,
            lat,
            lng,
        }
    };
    let (a, b) = (cell(30.27, 120.15), cell(30.30, 120.19));
    let r = v1::OccupancyGridResponse {
        window: Some(ew(0, 7200)),
        level: 13,
        cells: vec![
            gc(a, 0, 40, false),
            gc(b, 0, 0, true),
            gc(a, 3600, 7, false),
        ],
        suppressed_below: 5,
        staleness_ms: 0,
    };
    let dir = tempfile::tempdir().unwrap();
    let files = super::png::write_png(&r, &dir.path().join("frames")).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let img = image::open(&files[0]).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1000, 860));
    let count = |want: [u8; 3]| img.pixels().filter(|p| p.0 == want).count();
    // The busiest cell in the top colour of the scale, the suppressed one
    // in grey, and the legend's bar: both colours also in the legend.
    assert!(
        count([254, 232, 37]) > 500,
        "no cell at the top of the scale"
    );
    assert!(count([200, 200, 200]) > 500, "no suppressed cell");
    let purple = img
        .pixels()
        .filter(|p| p.0[0] < 80 && p.0[1] < 30 && p.0[2] > 70)
        .count();
    assert!(purple > 10, "no bottom of the colour bar");
    if let Some(keep) = std::env::var_os("HOURCELL_KEEP_PNG") {
        std::fs::copy(&files[0], keep).unwrap();
    }
    assert!(
        img.pixels().filter(|p| p.0 == [0, 0, 0]).count() > 50,
        "no text or scale bar"
    );
}
