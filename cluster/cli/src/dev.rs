//! `hourcell dev`: a single node with a generated demo town, for trying
//! hourcell out. Plaintext on loopback; nothing here is for production.

use std::sync::Arc;

use hourcell_query::time::{format_time, now};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::DevArgs;
use hourcell_node::config::NodeConfig;
use hourcell_node::node::{system_clock, Node};
use hourcell_town::{Town, TownConfig};

/// What was loaded, for the summary and the example queries.
pub struct Loaded {
    pub town: Town,
    pub events: u64,
    pub rejected: u64,
    /// A task raised by the first rule run, for the examples.
    pub first_task: Option<u64>,
}

/// Loads a town straight into a node (no network), with a progress bar.
pub fn load_town(node: &Node, town: Town, progress: bool) -> anyhow::Result<Loaded> {
    let addrs = town.raw_addresses();
    for chunk in addrs.chunks(50_000) {
        let (_, bad) = node.put_addresses(chunk)?;
        anyhow::ensure!(
            bad.is_empty(),
            "generated addresses rejected: {:?}",
            &bad[..bad.len().min(3)]
        );
    }
    let regs = town.raw_registrations();
    for chunk in regs.chunks(50_000) {
        let (_, bad) = node.put_registrations(chunk)?;
        anyhow::ensure!(
            bad.is_empty(),
            "generated registrations rejected: {:?}",
            &bad[..bad.len().min(3)]
        );
    }
    let days = town.config().days;
    let bar = if progress {
        let b = ProgressBar::new(days as u64);
        b.set_style(
            ProgressStyle::with_template("loading demo town {bar:40} day {pos}/{len} {msg}")
                .unwrap(),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let (mut events, mut rejected) = (0u64, 0u64);
    for d in 0..days {
        let day = town.raw_events(d);
        for chunk in day.chunks(20_000) {
            let (n, bad) = node.ingest(chunk)?;
            events += n;
            rejected += bad.len() as u64;
        }
        bar.set_message(format!("{events} events"));
        bar.inc(1);
    }
    bar.finish();
    Ok(Loaded {
        town,
        events,
        rejected,
        first_task: None,
    })
}

/// UTC midnight `days` days before today.
pub fn days_ago_midnight(days: u32) -> i64 {
    let today = now().div_euclid(86_400) * 86_400;
    today - days as i64 * 86_400
}

fn print_examples(l: &Loaded, listen: &str) {
    let town = &l.town;
    let cfg = town.config();
    let truth = town.truth();
    let end = cfg.start_unix + cfg.days as i64 * 86_400;
    let resident = truth.iter().find(|t| t.situation == "resident");
    let leaver = truth.iter().find(|t| t.situation == "temporary_left");
    let home = resident
        .and_then(|r| r.home.clone())
        .and_then(|h| town.addresses().iter().find(|a| a.code == h).cloned())
        .unwrap_or_else(|| town.addresses()[0].clone());
    let server = if listen == "127.0.0.1:7420" {
        String::new()
    } else {
        format!(" --server http://{listen}")
    };
    let day_from = format_time(end - 86_400);
    let day_to = format_time(end);
    println!();
    println!("Try these (times and ids exist in the demo town):");
    println!(
        "  hourcell query occupancy --addresses {} --from {day_from} --to {day_to}{server}",
        home.code
    );
    println!(
        "  hourcell query who-was-at --circle {:.5},{:.5},1000 --from {day_from} --to {day_to} --purpose 'demo' --case DEMO-1{server}",
        home.lat, home.lng
    );
    if let Some(r) = resident {
        println!(
            "  hourcell query where-was --person {} --from {} --to {day_to} --purpose 'demo' --case DEMO-1{server}",
            r.person,
            format_time(end - 2 * 86_400)
        );
    }
    println!(
        "  hourcell query who-was-at --area {} --from {day_from} --to {day_to} --format json --purpose 'demo' --case DEMO-1{server}",
        home.area
    );
    println!(
        "  hourcell query no-activity-since --since {} --as-of {day_to} --purpose 'demo' --case DEMO-1{server}",
        format_time(end - 7 * 86_400)
    );
    if let Some(p) = leaver {
        println!(
            "    (person {} is a temporary resident who left at {}; expect them there)",
            p.person,
            p.left.map(format_time).unwrap_or_default()
        );
    }
    println!(
        "  hourcell tasks list --kind REGISTER_NEWCOMER --purpose 'demo' --case DEMO-1{server}"
    );
    if let Some(id) = l.first_task {
        println!("  hourcell tasks show {id} --purpose 'demo'{server}    (the task is the case)");
    }
    println!(
        "  hourcell tasks run --at {}{server}    (again: nothing new while tasks are open)",
        format_time(end)
    );
    println!("  hourcell status{server}");
    println!(
        "  hourcell audit list{server}        (every person-level query above, with its purpose)"
    );
    println!("  hourcell audit verify{server}");
    println!("  grpcurl -plaintext {listen} list");
}

/// Starts `args.nodes` replicas of one raft group in this process, each
/// with its own data directory and gRPC port. Returns the nodes and their
/// listeners, node 1 first.
async fn start_cluster(
    args: &DevArgs,
    secret: &hourcell_node::config::Secret,
) -> anyhow::Result<Vec<(Arc<Node>, std::net::SocketAddr, tokio::net::TcpListener)>> {
    let addrs: Vec<std::net::SocketAddr> = (0..args.nodes)
        .map(|i| {
            let mut a = args.listen;
            a.set_port(args.listen.port() + i as u16);
            a
        })
        .collect();
    let peers: Vec<hourcell_node::config::PeerConfig> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| hourcell_node::config::PeerConfig {
            id: i as u64 + 1,
            addr: a.to_string(),
        })
        .collect();
    let mut out = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut cfg = dev_config(args.data_dir.join(format!("node{}", i + 1)), &args);
        cfg.listen = *a;
        cfg.security.cluster_secret = Some(secret.clone());
        cfg.cluster = Some(hourcell_node::config::ClusterConfig {
            node_id: i as u64 + 1,
            peers: peers.clone(),
            tick_ms: 100,
            join: false,
            cell_shards: args.shards.map_or(0, |s| s.0),
            person_shards: args.shards.map_or(0, |s| s.1),
            replicas: 3,
            ..Default::default()
        });
        let (addr, listener) = hourcell_server::server::bind(*a).await?;
        let node = hourcell_server::open_node(&cfg, system_clock())?;
        out.push((node, addr, listener));
    }
    Ok(out)
}

/// Generates the demo town into an empty node, then evaluates the rules
/// once as of the end of the town so that field tasks are there to look at.
/// Returns what was loaded, the load time in seconds and the rule run.
async fn load_demo(
    node: &Arc<Node>,
    args: &DevArgs,
    how: &str,
) -> anyhow::Result<(Loaded, f64, hourcell_node::node::RunSummary)> {
    let town_cfg = TownConfig {
        seed: args.seed,
        persons: args.persons,
        days: args.days,
        start_unix: days_ago_midnight(args.days),
        ..TownConfig::default()
    };
    println!(
        "empty data directory {}: generating a demo town of {} persons over {} days (seed {}){how}",
        args.data_dir.display(),
        args.persons,
        args.days,
        args.seed
    );
    let started = std::time::Instant::now();
    let n = node.clone();
    let mut l =
        tokio::task::spawn_blocking(move || load_town(&n, Town::new(town_cfg), true)).await??;
    let secs = started.elapsed().as_secs_f64();
    let n = node.clone();
    let end = l.town.end_unix();
    let run = tokio::task::spawn_blocking(move || n.run_tasks(Some(end))).await??;
    l.first_task = node
        .store()
        .tasks_after(0, 1, &mut |_| true)?
        .first()
        .map(|t| t.id);
    Ok((l, secs, run))
}

/// Serves `/metrics` on the gRPC port + 1000 if that port is free; the
/// gate's metrics to count into.
async fn serve_metrics(
    node: &Arc<Node>,
    grpc: std::net::SocketAddr,
) -> Arc<hourcell_server::metrics::ServerMetrics> {
    let mut m = grpc;
    m.set_port(grpc.port().wrapping_add(1000));
    match tokio::net::TcpListener::bind(m).await {
        Ok(l) => {
            println!("node metrics: http://{m}/metrics");
            hourcell_server::metrics::start(node.clone(), l)
        }
        Err(e) => {
            println!("(not serving /metrics on {m}: {e})");
            Arc::default()
        }
    }
}

/// Waits until some node leads the data group.
async fn wait_for_leader(nodes: &[Arc<Node>]) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for n in nodes {
            let n2 = n.clone();
            if tokio::task::spawn_blocking(move || n2.leads()).await? {
                return Ok(n.replication().map_or(1, |r| r.handle.id()));
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no raft leader elected within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A dev node: plaintext on loopback, and every role for requests without
/// credentials (the local user), so the CLI works without setup; retention
/// covers the demo town.
fn dev_config(dir: std::path::PathBuf, args: &crate::cli::DevArgs) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir);
    cfg.security.insecure = true;
    cfg.security.anonymous_roles = vec!["all".into()];
    cfg.security.retention_days = cfg.security.retention_days.max(args.days + 2);
    // The local user runs `hourcell bench` against this node.
    cfg.security.requests_per_sec = 0;
    cfg
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "hourcell dev gives every role to callers without credentials, in plaintext, so it \
             listens on loopback addresses only (got --listen {}); to serve a network, run \
             hourcell node with [security.tls] (see docs/SECURITY.md)",
            args.listen
        );
    }
    if args.nodes > 1 {
        return run_cluster(args).await;
    }
    if args.shards.is_some() {
        anyhow::bail!("--shards needs a cluster: add --nodes 3");
    }
    let mut cfg = dev_config(args.data_dir.clone(), &args);
    cfg.listen = args.listen;
    let node: Arc<Node> = hourcell_server::open_node(&cfg, system_clock())?;
    let stats = node.stats()?;
    let loaded = if stats.addresses == 0 {
        let (l, secs, run) = load_demo(&node, &args, "").await?;
        let st = node.stats()?;
        println!(
            "loaded {} addresses, {} registrations, {} events ({} rejected) for {} persons in {secs:.1} s ({:.0} events/s)",
            st.addresses,
            st.registrations,
            l.events,
            l.rejected,
            st.persons,
            l.events as f64 / secs.max(1e-9)
        );
        println!(
            "rules as of {}: {} field tasks raised in {:.1} s ({} persons scored, {} temporary registrations checked)",
            format_time(run.at),
            run.created,
            run.seconds,
            run.persons_scored,
            run.departures_checked
        );
        Some(l)
    } else {
        println!(
            "using existing data in {}: {} persons, {} addresses, {} registrations, hours {} .. {}",
            args.data_dir.display(),
            stats.persons,
            stats.addresses,
            stats.registrations,
            stats
                .first_hour
                .map(|h| format_time(h * 3600))
                .unwrap_or_default(),
            stats
                .last_hour
                .map(|h| format_time(h * 3600 + 3600))
                .unwrap_or_default()
        );
        None
    };
    if let Some(l) = &loaded {
        print_examples(l, &args.listen.to_string());
    } else {
        println!(
            "(delete {} to regenerate the demo town)",
            args.data_dir.display()
        );
    }
    if args.no_serve {
        return Ok(());
    }
    let (addr, listener) = hourcell_server::server::bind(args.listen).await?;
    let metrics = serve_metrics(&node, addr).await;
    println!();
    println!(
        "hourcell dev node serving gRPC on {addr} (plaintext, loopback only, all roles for the local user; not for production). Ctrl-C to stop."
    );
    hourcell_server::server::serve_with_metrics(
        node,
        cfg.security.clone(),
        listener,
        hourcell_server::server::shutdown_signal(),
        metrics,
    )
    .await?;
    Ok(())
}

/// `hourcell dev --nodes N`: N replicas in one process, the demo town
/// written through raft (node 1 proposes; followers forward to the leader).
async fn run_cluster(args: DevArgs) -> anyhow::Result<()> {
    // The nodes of this run show each other a secret made for it: their
    // internal services answer no one else.
    let secret = hourcell_node::config::Secret::generate();
    let started = start_cluster(&args, &secret).await?;
    let nodes: Vec<Arc<Node>> = started.iter().map(|s| s.0.clone()).collect();
    let mut security = dev_config(args.data_dir.clone(), &args).security;
    security.cluster_secret = Some(secret);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    for (node, addr, listener) in started {
        let metrics = serve_metrics(&node, addr).await;
        let mut rx = stop_tx.subscribe();
        servers.push((
            addr,
            tokio::spawn(hourcell_server::server::serve_with_metrics(
                node,
                security.clone(),
                listener,
                async move {
                    let _ = rx.recv().await;
                },
                metrics,
            )),
        ));
    }
    let leader = wait_for_leader(&nodes).await?;
    let groups = match args.shards {
        Some((c, p)) => format!(
            "{} raft groups (metadata, {c} cell shards, {p} person shards)",
            1 + c + p
        ),
        None => "raft group".to_string(),
    };
    println!(
        "{groups} of {} nodes up, node {leader} leads the metadata group (plaintext, loopback only, all roles for the local user; not for production)",
        nodes.len()
    );
    let first = nodes[0].clone();
    let stats = first.stats()?;
    if stats.addresses == 0 {
        let (l, secs, run) = load_demo(&first, &args, ", written through raft").await?;
        println!(
            "loaded {} events ({} rejected) in {secs:.1} s ({:.0} events/s, replicated to {})",
            l.events,
            l.rejected,
            l.events as f64 / secs.max(1e-9),
            if args.shards.is_some() && nodes.len() > 3 {
                format!("3 of the {} nodes per shard", nodes.len())
            } else {
                format!("{} nodes", nodes.len())
            }
        );
        println!(
            "rules as of {}: {} field tasks raised through raft",
            format_time(run.at),
            run.created
        );
        print_examples(&l, &args.listen.to_string());
    } else {
        println!(
            "using existing data in {} ({} persons)",
            args.data_dir.display(),
            stats.persons
        );
    }
    println!();
    for (i, (addr, _)) in servers.iter().enumerate() {
        println!(
            "node {} serving gRPC on {addr} (data in {}); e.g. hourcell status --server http://{addr}",
            i + 1,
            args.data_dir.join(format!("node{}", i + 1)).display()
        );
    }
    if args.shards.is_some() {
        println!("any node accepts any request: it proposes and reads the shards it holds itself and routes the rest to their nodes. Ctrl-C to stop.");
    } else {
        println!("any node accepts writes (followers forward them to the leader); reads are served by the node asked. Ctrl-C to stop.");
    }
    if args.no_serve {
        let _ = stop_tx.send(());
    } else {
        hourcell_server::server::shutdown_signal().await;
        let _ = stop_tx.send(());
    }
    for (_, s) in servers {
        let _ = s.await;
    }
    for n in &nodes {
        n.shutdown();
    }
    Ok(())
}
