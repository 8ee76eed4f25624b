//! `/metrics` in the Prometheus text format, served on its own port
//! (`metrics_listen`), so that scrapers need no gRPC. Counters and
//! histograms come from the node's [`Metrics`]; gauges (raft state, sizes)
//! are read when scraped.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hourcell_node::node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// The scrape body.
pub fn render(node: &Node) -> String {
    let m = node.metrics();
    let mut out = String::new();
    counter(
        &mut out,
        "hourcell_ingest_events_total",
        "Events accepted by ingest on this node.",
        node.events_accepted(),
    );
    counter(
        &mut out,
        "hourcell_proposals_total",
        "Commands proposed by this node.",
        m.proposals.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hourcell_proposal_failures_total",
        "Proposals that were not applied (timeout, no leader, refused).",
        m.proposal_failures.load(Ordering::Relaxed),
    );
    for (name, help, v) in [
        (
            "hourcell_routed_reads_total",
            "Reads of shards held elsewhere, routed to a node that holds them.",
            &m.routed_reads,
        ),
        (
            "hourcell_routed_parts_total",
            "Write parts for shards held elsewhere, routed to a node that holds them.",
            &m.routed_parts,
        ),
        (
            "hourcell_routed_failures_total",
            "Routed requests that failed on a node and were retried on another replica.",
            &m.routed_failures,
        ),
        (
            "hourcell_stale_map_refusals_total",
            "Routed requests refused as routed by a stale shard map (the map was refreshed).",
            &m.stale_map_refusals,
        ),
    ] {
        counter(&mut out, name, help, v.load(Ordering::Relaxed));
    }
    m.commit_latency.render(
        "hourcell_commit_seconds",
        "Time from proposing a command to its being applied on this node.",
        &mut out,
    );
    m.apply_latency.render(
        "hourcell_apply_seconds",
        "Time to apply one command to the store.",
        &mut out,
    );
    gauge(
        &mut out,
        "hourcell_healthy",
        "1 while the node can serve, 0 after a storage or replication failure.",
        if node.healthy() { 1.0 } else { 0.0 },
    );
    if let Ok(st) = node.stats() {
        gauge(
            &mut out,
            "hourcell_rocksdb_disk_bytes",
            "Live SST and memtable bytes of the data store.",
            st.disk_bytes as f64,
        );
        gauge(
            &mut out,
            "hourcell_persons",
            "Persons in the id dictionary.",
            st.persons as f64,
        );
    }
    gauge(
        &mut out,
        "hourcell_audit_records",
        "Records in the hash-chained audit log.",
        node.store().audit_len() as f64,
    );
    let (seq, hash) = node.store().audit_head();
    out.push_str(&format!(
        "# HELP hourcell_audit_head_info The audit log's head (last record's seq and hash).\n\
         # TYPE hourcell_audit_head_info gauge\n\
         hourcell_audit_head_info{{seq=\"{seq}\",hash=\"{}\"}} 1\n",
        hourcell_storage::audit::hex(&hash)
    ));
    if let Some(r) = node.replication() {
        let st: Vec<(u64, hourcell_node::replication::GroupStatus)> = r
            .groups()
            .into_iter()
            .filter_map(|g| r.handle.status(g).map(|s| (g, s)))
            .collect();
        type Get = fn(&hourcell_node::replication::GroupStatus) -> u64;
        let families: [(&str, &str, Get); 5] = [
            ("hourcell_raft_term", "Raft term per group.", |s| s.term),
            (
                "hourcell_raft_is_leader",
                "1 if this node leads the group.",
                |s| u64::from(s.is_leader),
            ),
            (
                "hourcell_raft_leader",
                "Node id of the group's leader (0 = none known).",
                |s| s.leader,
            ),
            (
                "hourcell_raft_apply_lag",
                "Committed entries not yet applied here.",
                |s| s.commit.saturating_sub(s.applied),
            ),
            (
                "hourcell_raft_log_entries",
                "Entries kept in the raft log (bounded by compaction).",
                |s| s.commit.saturating_sub(s.first_index.saturating_sub(1)),
            ),
        ];
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (g, s) in &st {
                let _ = writeln!(out, "{name}{{group=\"{g}\"}} {}", get(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP hourcell_raft_members Voters and learners of the group.\n# TYPE hourcell_raft_members gauge"
        );
        for (g, s) in &st {
            let _ = writeln!(
                out,
                "hourcell_raft_members{{group=\"{g}\",kind=\"voter\"}} {}\nhourcell_raft_members{{group=\"{g}\",kind=\"learner\"}} {}",
                s.voters.len(),
                s.learners.len()
            );
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (a scrape is one small GET).
            while n < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                let node = node.clone();
                let body = tokio::task::spawn_blocking(move || render(&node))
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
