//! `hourcell status` and `hourcell cluster`.

use super::*;

pub fn format_status(s: &v1::StatusResponse) -> String {
    let opt_time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), format_time);
    let mut rows: Vec<(&str, String)> = vec![
        ("version", s.version.clone()),
        ("data_dir", s.data_dir.clone()),
        ("slice_level", s.slice_level.to_string()),
        ("persons", s.persons.to_string()),
        ("addresses", s.addresses.to_string()),
        ("registrations", s.registrations.to_string()),
        ("events_accepted", s.events_accepted.to_string()),
        (
            "postings",
            if s.postings == 0 {
                "not counted (see hourcell bench)".to_string()
            } else {
                s.postings.to_string()
            },
        ),
        (
            "disk_bytes",
            format!("{} ({})", s.disk_bytes, human_bytes(s.disk_bytes)),
        ),
        ("first_hour", opt_time(s.first_hour)),
        ("last_hour", opt_time(s.last_hour)),
    ];
    if let Some(r) = &s.raft {
        rows.push((
            "raft",
            format!(
                "node {} of group {}: {}, term {}, commit {}, applied {}",
                r.node_id,
                r.group,
                if r.is_leader {
                    "leader".to_string()
                } else if r.leader == 0 {
                    "no leader known".to_string()
                } else {
                    format!("follower of node {}", r.leader)
                },
                r.term,
                r.commit,
                r.applied
            ),
        ));
    }
    if !s.shards.is_empty() {
        let me = s.raft.as_ref().map_or(0, |r| r.node_id);
        let leads = s.shards.iter().filter(|x| x.leader == me).count();
        let leaderless = s.shards.iter().filter(|x| x.leader == 0).count();
        rows.push((
            "shards",
            format!(
                "{} cell and {} person shards, shard map version {}; this node leads {leads}, \
                 {leaderless} without a leader (hourcell cluster status lists them)",
                s.shards
                    .iter()
                    .filter(|x| x.shard.starts_with("cells"))
                    .count(),
                s.shards
                    .iter()
                    .filter(|x| x.shard.starts_with("persons"))
                    .count(),
                s.shard_map_version,
            ),
        ));
    }
    if s.audit_head_seq > 0 {
        rows.push((
            "audit head",
            format!(
                "{}:{} (keep it elsewhere; audit verify --expect checks it)",
                s.audit_head_seq,
                hourcell_storage::audit::hex(&s.audit_head_hash)
            ),
        ));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<16} {v}\n"));
    }
    out
}

/// One row of `hourcell cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterRow {
    pub id: u64,
    pub addr: String,
    /// voter, learner, or removed (known but no longer a member).
    pub member: String,
    /// leader, follower, candidate (no leader known) or unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    /// Entries behind the leader's commit index.
    pub lag: Option<u64>,
}

pub fn cluster_rows(peers: &[v1::RaftPeer], st: &[Option<v1::RaftStatus>]) -> Vec<ClusterRow> {
    let leader_commit = st
        .iter()
        .flatten()
        .filter(|s| s.is_leader)
        .map(|s| s.commit)
        .max()
        .or_else(|| st.iter().flatten().map(|s| s.commit).max());
    // Membership as the leader sees it (else the most advanced replica).
    let view = st
        .iter()
        .flatten()
        .find(|s| s.is_leader)
        .or_else(|| st.iter().flatten().max_by_key(|s| s.applied));
    peers
        .iter()
        .zip(st)
        .map(|(p, s)| ClusterRow {
            id: p.id,
            addr: p.addr.clone(),
            member: match view {
                Some(v) if v.learners.contains(&p.id) => "learner".into(),
                Some(v) if v.voters.contains(&p.id) || v.voters.is_empty() => "voter".into(),
                Some(_) => "removed".into(),
                None => "-".into(),
            },
            role: match s {
                None => "unreachable".into(),
                Some(s) if s.is_leader => "leader".into(),
                Some(s) if s.leader == 0 => "candidate".into(),
                Some(_) => "follower".into(),
            },
            term: s.as_ref().map(|s| s.term),
            commit: s.as_ref().map(|s| s.commit),
            applied: s.as_ref().map(|s| s.applied),
            lag: s
                .as_ref()
                .zip(leader_commit)
                .map(|(s, c)| c.saturating_sub(s.applied)),
        })
        .collect()
}

pub fn render_cluster(rows: &[ClusterRow], format: Format) -> Result<String> {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.addr.clone(),
                r.member.clone(),
                r.role.clone(),
                opt(r.term),
                opt(r.commit),
                opt(r.applied),
                opt(r.lag),
            ]
        })
        .collect();
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "nodes": rows }))?
        ),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "id", "addr", "member", "role", "term", "commit", "applied", "lag",
            ])?;
            for c in &cells {
                w.write_record(c)?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => {
            let healthy = rows.iter().filter(|r| r.role != "unreachable").count();
            format!(
                "{}{healthy} of {} nodes reachable; {}\n",
                aligned(
                    &["node", "addr", "member", "role", "term", "commit", "applied", "lag"],
                    &cells
                ),
                rows.len(),
                match rows.iter().find(|r| r.role == "leader") {
                    Some(l) => format!("node {} leads", l.id),
                    None => "no leader".to_string(),
                }
            )
        }
    })
}

pub(crate) async fn raft_status_of(server: &str) -> Option<(v1::RaftStatus, Vec<v1::ShardStatus>)> {
    let ch = tokio::time::timeout(Duration::from_secs(2), channel(server))
        .await
        .ok()?
        .ok()?;
    let r = v1::admin_client::AdminClient::new(ch)
        .status(v1::StatusRequest::default())
        .await
        .ok()?
        .into_inner();
    Some((r.raft?, r.shards))
}

/// One data shard of a sharded cluster, across the nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardRow {
    pub shard: String,
    pub group: u64,
    pub leader: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The nodes the shard map places the shard on (the voters once a
    /// move has finished).
    pub replicas: Vec<u64>,
    /// Entries the furthest-behind reachable replica has yet to apply.
    pub max_lag: u64,
}

/// One row per data shard held by any reachable node (each node reports
/// the shards it holds a replica of).
pub fn shard_rows(st: &[Option<Vec<v1::ShardStatus>>]) -> Vec<ShardRow> {
    let mut rows: Vec<ShardRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let all: Vec<&v1::ShardStatus> = st
        .iter()
        .flatten()
        .flat_map(|v| v.iter())
        .filter(|x| seen.insert(x.group))
        .collect();
    for sh in all {
        let views: Vec<&v1::ShardStatus> = st
            .iter()
            .flatten()
            .filter_map(|v| v.iter().find(|x| x.group == sh.group))
            .collect();
        let commit = views.iter().map(|v| v.commit).max().unwrap_or(0);
        let leader = views
            .iter()
            .filter(|v| v.leader != 0)
            .max_by_key(|v| v.term)
            .map_or(0, |v| v.leader);
        let view = views
            .iter()
            .max_by_key(|v| (v.term, v.applied))
            .copied()
            .unwrap_or(sh);
        rows.push(ShardRow {
            shard: sh.shard.clone(),
            group: sh.group,
            leader,
            voters: view.voters.clone(),
            learners: view.learners.clone(),
            // From the newest shard map any node reported.
            replicas: views
                .iter()
                .max_by_key(|v| v.map_version)
                .map_or_else(Vec::new, |v| v.replicas.clone()),
            max_lag: views
                .iter()
                .map(|v| commit.saturating_sub(v.applied))
                .max()
                .unwrap_or(0),
        });
    }
    rows.sort_by_key(|r| r.group);
    rows
}

pub fn render_shards(rows: &[ShardRow], format: Format) -> Result<String> {
    if rows.is_empty() {
        return Ok(String::new());
    }
    let list = |v: &[u64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.shard.clone(),
                r.group.to_string(),
                if r.leader == 0 {
                    "none".into()
                } else {
                    r.leader.to_string()
                },
                list(&r.voters),
                list(&r.learners),
                list(&r.replicas),
                r.max_lag.to_string(),
            ]
        })
        .collect();
    Ok(match format {
        Format::Geojson | Format::Png => return Err(crate::cli::grid_only()),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "shards": rows }))?
        ),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "shard", "group", "leader", "voters", "learners", "placed", "max_lag",
            ])?;
            for c in &cells {
                w.write_record(c)?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table => format!(
            "\n{}{} data shards; {} without a leader\n",
            aligned(
                &["shard", "group", "leader", "voters", "learners", "placed", "max lag"],
                &cells
            ),
            rows.len(),
            rows.iter().filter(|r| r.leader == 0).count()
        ),
    })
}

pub async fn run_cluster(cmd: crate::cli::ClusterCommand) -> Result<()> {
    match cmd {
        crate::cli::ClusterCommand::Status(a) => {
            let (first, _) = raft_status_of(&a.server).await.ok_or_else(|| {
                anyhow!(
                    "{} is unreachable or is a single node without [cluster]",
                    shown_server(&a.server)
                )
            })?;
            let mut st = Vec::new();
            let mut shards = Vec::new();
            for p in &first.peers {
                let r = raft_status_of(&p.addr).await;
                shards.push(r.as_ref().map(|r| r.1.clone()));
                st.push(r.map(|r| r.0));
            }
            let rows = cluster_rows(&first.peers, &st);
            let srows = shard_rows(&shards);
            let out = if matches!(a.format, Format::Json) && !srows.is_empty() {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "nodes": rows, "shards": srows })
                    )?
                )
            } else {
                render_cluster(&rows, a.format)? + &render_shards(&srows, a.format)?
            };
            print_stdout(&out)
        }
        crate::cli::ClusterCommand::AddNode(a) => {
            let r = admin_client(channel(&a.server).await?)
                .add_node(v1::AddNodeRequest {
                    id: a.id,
                    addr: a.addr.clone(),
                    replace: a.replace,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&format!(
                "node {} added as a learner at {}; it becomes a voter once caught up\n{}",
                a.id,
                a.addr,
                membership_line(&r)
            ))
        }
        crate::cli::ClusterCommand::RemoveNode(a) => {
            let r = admin_client(channel(&a.server).await?)
                .remove_node(v1::RemoveNodeRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_stdout(&format!("node {} removed\n{}", a.id, membership_line(&r)))
        }
        crate::cli::ClusterCommand::Split(a) => {
            let r = admin_client(channel(&a.server).await?)
                .split_shard(v1::SplitShardRequest { group: a.group })
                .await
                .map_err(status_error)?
                .into_inner();
            let out = if matches!(a.format, Format::Json) {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "split": a.group,
                        "group": r.group,
                        "shard": r.shard,
                        "replicas": r.replicas,
                        "map_version": r.map_version,
                    }))?
                )
            } else {
                format!(
                    "shard group {} split: new shard group {} ({}) on nodes {}, shard map version {}\n",
                    a.group,
                    r.group,
                    r.shard,
                    r.replicas
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.map_version
                )
            };
            print_stdout(&out)
        }
    }
}

pub(crate) fn membership_line(r: &v1::MembershipResponse) -> String {
    let list = |v: &[u64]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "voters: {}; learners: {}\n",
        list(&r.voters),
        list(&r.learners)
    )
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A node's status as one JSON object (times RFC 3339, null when unknown).
pub fn status_json(server: &str, s: &v1::StatusResponse) -> serde_json::Value {
    let time = |t: Option<i64>| t.map(format_time);
    serde_json::json!({
        "server": shown_server(server),
        "version": s.version,
        "data_dir": s.data_dir,
        "slice_level": s.slice_level,
        "persons": s.persons,
        "addresses": s.addresses,
        "registrations": s.registrations,
        "events_accepted": s.events_accepted,
        "postings": s.postings,
        "disk_bytes": s.disk_bytes,
        "first_hour": time(s.first_hour),
        "last_hour": time(s.last_hour),
        "raft": s.raft.as_ref().map(|r| serde_json::json!({
            "node_id": r.node_id,
            "group": r.group,
            "leader": r.leader,
            "is_leader": r.is_leader,
            "term": r.term,
            "commit": r.commit,
            "applied": r.applied,
            "voters": r.voters,
        })),
        "shards": s.shards.len(),
        "shard_map_version": s.shard_map_version,
        "audit_head": {
            "seq": s.audit_head_seq,
            "hash": hourcell_storage::audit::hex(&s.audit_head_hash),
        },
    })
}

pub async fn run_status(args: ServerFormatArgs) -> Result<()> {
    let ch = channel(&args.server).await?;
    let st = admin_client(ch)
        .status(v1::StatusRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    if args.format == Format::Json {
        return print_stdout(&format!("{}\n", status_json(&args.server, &st)));
    }
    print_stdout(&format!(
        "{:<16} {}\n{}",
        "server",
        shown_server(&args.server),
        format_status(&st)
    ))
}
