//! `/metrics` and `/health` of a node (a one-node cluster, with tokens):
//! per-RPC counts by status code, refusals, each source's ingest health,
//! RocksDB and process figures; and every metric the shipped Grafana
//! dashboard and Prometheus alert rules (`deploy/monitoring`) name is
//! exported.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hourcell_node::config::{ClusterConfig, NodeConfig, PeerConfig, Secret};
use hourcell_proto::v1;
use hourcell_server::auth::Role;
use hourcell_server::server;
use hourcell_test_support::data::{ev, events, who_request, T0};
use hourcell_test_support::procs::{free_port, http_get};
use hourcell_test_support::secure::{req, token, KEY};

fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// The metric names an expression or a file refers to: `hourcell_*` and
/// `process_*` identifiers.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let at_start = i == 0 || !ident(b[i - 1]);
        if at_start && (text[i..].starts_with("hourcell_") || text[i..].starts_with("process_")) {
            let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
            out.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_rpcs_sources_refusals_and_what_the_dashboard_and_alerts_use() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("token.key");
    std::fs::write(&key, KEY).unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("node"));
    cfg.block_cache_mb = 16;
    cfg.security.token_key_file = Some(key);
    cfg.security.retention_days = 36_500;
    cfg.security.requests_per_sec = 5;
    cfg.security.cluster_secret = Some(Secret("metrics-test-cluster-secret-0123456789".into()));
    cfg.rules.hourly = false;
    let port = free_port();
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.cluster = Some(ClusterConfig {
        node_id: 1,
        peers: vec![PeerConfig {
            id: 1,
            addr: format!("127.0.0.1:{port}"),
        }],
        tick_ms: 20,
        join: false,
        cell_shards: 0,
        person_shards: 0,
        replicas: 3,
        ..Default::default()
    });
    let clock = T0 + 3 * 86_400;
    let node = hourcell_server::open_node(&cfg, Arc::new(move || clock)).unwrap();
    let (_, listener) = server::bind(cfg.listen).await.unwrap();
    let (maddr, ml) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gate_metrics = hourcell_server::metrics::start(node.clone(), ml);
    tokio::spawn(server::serve_with_metrics(
        node.clone(),
        cfg.security.clone(),
        listener,
        std::future::pending::<()>(),
        gate_metrics,
    ));
    let ch = hourcell_test_support::grpc::patient(port).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !node.leads() {
        assert!(tokio::time::Instant::now() < until, "the node never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let far = T0 + 100 * 86_400;
    let (ingest, inv, analyst) = (
        token("feed-1", &[Role::Ingest], far),
        token("inspector-1", &[Role::Investigator], far),
        token("analyst-1", &[Role::Analyst], far),
    );
    // 20 events from "access" at hour 2, 3 from "utility" at hour 5 of
    // which one is refused (an unknown address).
    let mut evs = events(700_000, 20, 2);
    evs.push(ev(800_001, T0 + 5 * 3600 + 10, "", "utility"));
    evs.push(ev(800_002, T0 + 5 * 3600 + 20, "", "utility"));
    evs.push(ev(800_003, T0 + 5 * 3600 + 30, "NOWHERE", "utility"));
    evs[20].lat = Some(30.27);
    evs[20].lng = Some(120.15);
    evs[21].lat = Some(30.27);
    evs[21].lng = Some(120.15);
    let r = v1::ingest_client::IngestClient::new(ch.clone())
        .ingest(req(v1::IngestRequest { events: evs }, &ingest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 22, "{r:?}");
    let mut q = v1::query_client::QueryClient::new(ch.clone());
    let mut s = q
        .who_was_at(req(who_request(None), &inv))
        .await
        .unwrap()
        .into_inner();
    while tokio_stream::StreamExt::next(&mut s).await.is_some() {}
    // Refused: bad credentials, the wrong role, and a burst past the rate.
    let e = q
        .who_was_at(req(who_request(None), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = q
        .who_was_at(req(who_request(None), &analyst))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let burst = token("burst-1", &[Role::Operator], far);
    let mut admin = v1::admin_client::AdminClient::new(ch.clone());
    let mut limited = 0;
    for _ in 0..30 {
        if let Err(e) = admin
            .status(req(v1::StatusRequest::default(), &burst))
            .await
        {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            limited += 1;
        }
    }
    assert!(limited > 0, "30 requests at once never hit 5 per second");

    let m = maddr.port();
    let (body, health) =
        tokio::task::spawn_blocking(move || (http_get(m, "/metrics"), http_get(m, "/health")))
            .await
            .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let body = body.split_once("\r\n\r\n").unwrap().1.to_string();
    if std::env::var_os("HOURCELL_SHOW_METRICS").is_some() {
        eprintln!("{body}");
    }

    // Each source's health.
    for (series, want) in [
        (
            "hourcell_source_events_accepted_total{source=\"access\"}",
            20.0,
        ),
        (
            "hourcell_source_events_accepted_total{source=\"utility\"}",
            2.0,
        ),
        (
            "hourcell_source_events_rejected_total{source=\"utility\"}",
            1.0,
        ),
        (
            "hourcell_source_newest_event_seconds{source=\"access\"}",
            (T0 + 2 * 3600) as f64,
        ),
        (
            "hourcell_source_newest_event_seconds{source=\"utility\"}",
            (T0 + 5 * 3600) as f64,
        ),
        ("hourcell_ingest_events_total", 22.0),
        (
            "hourcell_rpc_requests_total{rpc=\"Ingest.Ingest\",code=\"OK\"}",
            1.0,
        ),
        (
            "hourcell_rpc_requests_total{rpc=\"Query.WhoWasAt\",code=\"OK\"}",
            1.0,
        ),
        (
            "hourcell_auth_refusals_total{reason=\"unauthenticated\"}",
            1.0,
        ),
        (
            "hourcell_auth_refusals_total{reason=\"permission_denied\"}",
            1.0,
        ),
        (
            "hourcell_rate_limit_refusals_total{limit=\"principal\"}",
            limited as f64,
        ),
        ("hourcell_healthy", 1.0),
        ("hourcell_raft_is_leader{group=\"1\"}", 1.0),
    ] {
        assert_eq!(sample(&body, series), Some(want), "{series} in:\n{body}");
    }
    assert!(
        body.contains(
            "hourcell_rpc_seconds_bucket{le=\"+Inf\",rpc=\"Query.WhoWasAt\",code=\"OK\"} 1"
        ) || body.contains(
            "hourcell_rpc_seconds_bucket{rpc=\"Query.WhoWasAt\",code=\"OK\",le=\"+Inf\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "hourcell_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    for db in ["meta", "raft"] {
        let sst = sample(&body, &format!("hourcell_rocksdb_sst_bytes{{db=\"{db}\"}}"));
        assert!(sst.is_some(), "no SST figure for {db}: {body}");
    }
    assert!(sample(&body, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&body, "hourcell_data_dir_free_bytes").unwrap() > 0.0);
    // Never a person id: no number in the exposition is one of them.
    let ids: Vec<String> = (700_000..700_020)
        .chain(800_001..800_004)
        .map(|p: u64| p.to_string())
        .collect();
    assert!(
        !body
            .split(|c: char| !c.is_ascii_digit())
            .any(|n| ids.iter().any(|id| id == n)),
        "{body}"
    );

    // Every metric the shipped dashboard and alerts use is exported.
    let mon = manifest_dir().join("../deploy/monitoring");
    let alerts = std::fs::read_to_string(mon.join("alerts.yml")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mon.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let mut exprs = vec![alerts];
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs.push(
        dash["templating"]["list"][1]["definition"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| names_in(e)).collect();
    assert!(used.len() > 20, "{used:?}");
    let exported: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{body}"
    );
}
