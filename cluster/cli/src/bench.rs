//! `hourcell bench`: loads a generated town into a node over gRPC and
//! measures ingest throughput and query latency (p50/p99/max).
//!
//! The town ends at today's UTC midnight and every query passes that end as
//! `as_of`, so the answers (and the work the node does) are the same on
//! every run against the same data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Ch as Channel;
use anyhow::{anyhow, Context as _, Result};
use hourcell_proto::v1;
use hourcell_query::time::format_time;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bench_mixed::{event_to_proto, PacedIngest};
use crate::cli::BenchArgs;
use crate::client::{self, QueryRequest};
use hourcell_town::{Town, TownConfig};

const DAY: i64 = 86_400;
/// Addresses and registrations per request.
const REGISTRY_BATCH: usize = 5_000;
/// Radius of the who-was-at circle.
const CIRCLE_M: f64 = 1_000.0;
/// Radius of the week-long who-was-at's circle.
const WEEK_CIRCLE_M: f64 = 3_000.0;
/// Side of the grid's square.
const GRID_SIDE_M: f64 = 10_000.0;

/// Index of the `per_mille`‰ percentile in a sorted sample of `n`:
/// `ceil(p·n) - 1` (so p99 of 200 runs is the 198th value).
pub fn percentile_index(n: usize, per_mille: usize) -> usize {
    (per_mille * n)
        .div_ceil(1000)
        .saturating_sub(1)
        .min(n.saturating_sub(1))
}

/// The `per_mille`‰ percentile of sorted durations (zero when empty).
pub fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[percentile_index(sorted.len(), per_mille)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Latencies and result sizes of one query kind.
#[derive(Debug, Clone)]
pub struct QueryStats {
    pub name: &'static str,
    /// What the result size counts.
    pub unit: &'static str,
    pub durations: Vec<Duration>,
    pub result_total: u64,
}

impl QueryStats {
    pub fn new(name: &'static str, unit: &'static str) -> Self {
        QueryStats {
            name,
            unit,
            durations: Vec::new(),
            result_total: 0,
        }
    }

    /// `(p50, p99, max)`.
    pub fn summary(&self) -> (Duration, Duration, Duration) {
        let mut d = self.durations.clone();
        d.sort_unstable();
        (
            percentile(&d, 500),
            percentile(&d, 990),
            d.last().copied().unwrap_or_default(),
        )
    }

    pub fn mean_result(&self) -> f64 {
        if self.durations.is_empty() {
            0.0
        } else {
            self.result_total as f64 / self.durations.len() as f64
        }
    }

    pub fn line(&self) -> String {
        let (p50, p99, max) = self.summary();
        format!(
            "{:<34} runs {:>5}  p50 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms  mean result {:.1} {}",
            self.name,
            self.durations.len(),
            ms(p50),
            ms(p99),
            ms(max),
            self.mean_result(),
            self.unit
        )
    }
}

/// The markdown table for docs/benchmarks.md.
pub fn markdown_table(stats: &[QueryStats]) -> String {
    let mut s =
        String::from("| query | runs | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    for q in stats {
        let (p50, p99, max) = q.summary();
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
            q.name,
            q.durations.len(),
            ms(p50),
            ms(p99),
            ms(max)
        ));
    }
    s
}

/// UTC midnight of the day containing `t`.
pub fn utc_midnight(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

fn first_rejection(r: &[v1::Rejection]) -> String {
    r.first()
        .map(|r| format!(" (first: #{} {}: {})", r.index, r.field, r.reason))
        .unwrap_or_default()
}

async fn load_registry(ch: &Channel, town: &Town) -> Result<()> {
    let mut reg = client::registry_client(ch.clone());
    let t0 = Instant::now();
    let (mut accepted, mut rejected, mut first) = (0u64, 0usize, String::new());
    for chunk in town.addresses().chunks(REGISTRY_BATCH) {
        let addresses = chunk
            .iter()
            .map(|a| v1::Address {
                code: a.code.clone(),
                lat: a.lat,
                lng: a.lng,
                kind: a.kind.to_string(),
                area: a.area.clone(),
                label: a.label.clone(),
            })
            .collect();
        let r = reg
            .put_addresses(v1::PutAddressesRequest { addresses })
            .await
            .map_err(client::status_error)
            .context("putting addresses")?
            .into_inner();
        accepted += r.accepted;
        rejected += r.rejected.len();
        if first.is_empty() {
            first = first_rejection(&r.rejected);
        }
    }
    println!(
        "addresses: {accepted} accepted, {rejected} rejected{first} in {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let (mut accepted, mut rejected, mut first) = (0u64, 0usize, String::new());
    for chunk in town.registry().chunks(REGISTRY_BATCH) {
        let registrations = chunk
            .iter()
            .map(|r| v1::Registration {
                person: r.person,
                address: r.address.clone(),
                kind: r.kind.to_string(),
                valid_from: r.valid_from,
                valid_until: r.valid_until,
            })
            .collect();
        let r = reg
            .put_registrations(v1::PutRegistrationsRequest { registrations })
            .await
            .map_err(client::status_error)
            .context("putting registrations")?
            .into_inner();
        accepted += r.accepted;
        rejected += r.rejected.len();
        if first.is_empty() {
            first = first_rejection(&r.rejected);
        }
    }
    println!(
        "registrations: {accepted} accepted, {rejected} rejected{first} in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

type IngestOutcome = (usize, Result<v1::IngestResponse, tonic::Status>);

/// Streams every day's events to the node, `batch` events per request and
/// `concurrency` requests in flight, generating the next day while the
/// current one is sent.
async fn load_events(
    ch: &Channel,
    town: Arc<Town>,
    batch: usize,
    concurrency: usize,
) -> Result<()> {
    let batch = batch.max(1);
    let concurrency = concurrency.max(1);
    let days = town.config().days;

    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {human_pos}/{human_len} events ({per_sec}, {elapsed}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<v1::Event>>(concurrency * 2);
    let gen_bar = bar.clone();
    let gen_town = town.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut generated = 0u64;
        for d in 0..days {
            let events = gen_town.events_for_day(d);
            gen_bar.inc_length(events.len() as u64);
            gen_bar.set_message(format!("day {}/{days}", d + 1));
            generated += events.len() as u64;
            let mut it = events.into_iter().map(event_to_proto);
            loop {
                let chunk: Vec<v1::Event> = it.by_ref().take(batch).collect();
                if chunk.is_empty() {
                    break;
                }
                if tx.blocking_send(chunk).is_err() {
                    // The sender gave up (an error); stop generating.
                    return generated;
                }
            }
        }
        generated
    });

    let ingest = client::ingest_client(ch.clone());
    let t0 = Instant::now();
    let mut inflight: tokio::task::JoinSet<IngestOutcome> = tokio::task::JoinSet::new();
    let (mut accepted, mut rejected, mut first) = (0u64, 0u64, String::new());
    let mut handle = |r: Result<IngestOutcome, tokio::task::JoinError>| -> Result<()> {
        let (n, resp) = r.map_err(|e| anyhow!("ingest task failed: {e}"))?;
        let resp = resp
            .map_err(client::status_error)
            .context("ingesting events")?;
        accepted += resp.accepted;
        rejected += resp.rejected.len() as u64;
        if first.is_empty() {
            first = first_rejection(&resp.rejected);
        }
        bar.inc(n as u64);
        Ok(())
    };
    while let Some(chunk) = rx.recv().await {
        while inflight.len() >= concurrency {
            if let Some(r) = inflight.join_next().await {
                if let Err(e) = handle(r) {
                    bar.abandon();
                    return Err(e);
                }
            }
        }
        let mut c = ingest.clone();
        inflight.spawn(async move {
            let n = chunk.len();
            (
                n,
                c.ingest(v1::IngestRequest { events: chunk })
                    .await
                    .map(|r| r.into_inner()),
            )
        });
    }
    while let Some(r) = inflight.join_next().await {
        if let Err(e) = handle(r) {
            bar.abandon();
            return Err(e);
        }
    }
    let generated = producer
        .await
        .map_err(|e| anyhow!("event generator failed: {e}"))?;
    let elapsed = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    println!(
        "events: {generated} generated, {accepted} accepted, {rejected} rejected{first} in {elapsed:.2} s \
         ({:.0} events/s, batch {batch}, {concurrency} in flight)",
        generated as f64 / elapsed.max(1e-9)
    );
    Ok(())
}

/// The requests of the benchmark, drawn from the town with a seeded RNG.
pub fn bench_requests(town: &Town, seed: u64, runs: usize) -> Vec<(QueryStats, Vec<QueryRequest>)> {
    let cfg = town.config();
    let start = cfg.start_unix;
    let end = town.end_unix();
    let days = i64::from(cfg.days.max(1));
    let as_of = Some(end);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xBE4C_4000_0000_0001);
    let addresses = town.addresses();
    let physical: Vec<_> = addresses.iter().filter(|a| a.kind != "virtual").collect();
    let persons = town.persons();
    let day_window = |rng: &mut ChaCha8Rng| {
        let d = rng.gen_range(0..days);
        let from = start + d * DAY;
        v1::Window {
            start: from,
            end: from + DAY,
            as_of,
        }
    };
    // Seven days (or the whole town, if shorter) from a random day.
    let week_window = |rng: &mut ChaCha8Rng| {
        let span = days.min(7);
        let d = rng.gen_range(0..=(days - span));
        let from = start + d * DAY;
        v1::Window {
            start: from,
            end: from + span * DAY,
            as_of,
        }
    };
    // A circle around a random address point (the town's centre if none).
    let circle = |rng: &mut ChaCha8Rng, radius_m: f64| {
        let a = physical.choose(rng).copied();
        let (lat, lng) = a.map_or((cfg.center_lat, cfg.center_lng), |a| (a.lat, a.lng));
        v1::Region {
            kind: Some(v1::region::Kind::Circle(v1::Circle { lat, lng, radius_m })),
        }
    };

    let mut out = Vec::new();
    if !addresses.is_empty() {
        let reqs = (0..runs)
            .map(|_| {
                let a = addresses
                    .choose(&mut rng)
                    .map(|a| a.code.clone())
                    .unwrap_or_default();
                QueryRequest::Occupancy(v1::OccupancyRequest {
                    max_staleness_ms: None,
                    region: Some(v1::Region {
                        kind: Some(v1::region::Kind::Addresses(v1::AddressList {
                            codes: vec![a],
                        })),
                    }),
                    window: Some(day_window(&mut rng)),
                })
            })
            .collect();
        out.push((
            QueryStats::new("occupancy (1 address, 24 h)", "distinct persons"),
            reqs,
        ));
    }
    if !physical.is_empty() {
        let reqs = (0..runs)
            .map(|_| {
                let region = circle(&mut rng, CIRCLE_M);
                QueryRequest::WhoWasAt(v1::WhoWasAtRequest {
                    purpose: "load benchmark on a generated town".into(),
                    case_ref: "BENCH".into(),
                    max_staleness_ms: None,
                    region: Some(region),
                    window: Some(day_window(&mut rng)),
                })
            })
            .collect();
        out.push((
            QueryStats::new("who-was-at (1 km circle, 24 h)", "persons"),
            reqs,
        ));
        // The heavier question: a week around a site (on a cluster, every
        // day of it from every cell shard).
        let reqs = (0..runs)
            .map(|_| {
                let region = circle(&mut rng, WEEK_CIRCLE_M);
                QueryRequest::WhoWasAt(v1::WhoWasAtRequest {
                    purpose: "load benchmark on a generated town".into(),
                    case_ref: "BENCH".into(),
                    max_staleness_ms: None,
                    region: Some(region),
                    window: Some(week_window(&mut rng)),
                })
            })
            .collect();
        out.push((
            QueryStats::new("who-was-at-week (3 km circle, 7 days)", "persons"),
            reqs,
        ));
    }
    if !persons.is_empty() {
        let reqs = (0..runs)
            .map(|_| {
                let person = *persons.choose(&mut rng).unwrap_or(&0);
                QueryRequest::WhereWas(v1::WhereWasRequest {
                    purpose: "load benchmark on a generated town".into(),
                    case_ref: "BENCH".into(),
                    max_staleness_ms: None,
                    person,
                    window: Some(week_window(&mut rng)),
                })
            })
            .collect();
        out.push((
            QueryStats::new("where-was (1 person, 7 days)", "hours"),
            reqs,
        ));
    }
    let reqs = (0..runs)
        .map(|_| {
            QueryRequest::NoActivitySince(v1::NoActivitySinceRequest {
                purpose: "load benchmark on a generated town".into(),
                case_ref: "BENCH".into(),
                max_staleness_ms: None,
                // Clamped for towns shorter than a week.
                since: (end - 7 * DAY).max(start),
                as_of,
                scope: None,
                local: None,
            })
        })
        .collect();
    out.push((
        QueryStats::new("no-activity-since (all, 7 days)", "persons"),
        reqs,
    ));
    // The heat map: a 10 km square around the town's centre, one day,
    // per hour, at level 14.
    let (dlat, dlng) = (
        GRID_SIDE_M / 2.0 / 111_195.0,
        GRID_SIDE_M / 2.0 / (111_195.0 * cfg.center_lat.to_radians().cos()),
    );
    let reqs = (0..runs)
        .map(|_| {
            QueryRequest::Grid(v1::OccupancyGridRequest {
                region: Some(v1::Region {
                    kind: Some(v1::region::Kind::Rect(v1::Rect {
                        lat_lo: cfg.center_lat - dlat,
                        lng_lo: cfg.center_lng - dlng,
                        lat_hi: cfg.center_lat + dlat,
                        lng_hi: cfg.center_lng + dlng,
                    })),
                }),
                window: Some(day_window(&mut rng)),
                level: 14,
                hourly: true,
                max_staleness_ms: None,
            })
        })
        .collect();
    out.push((
        QueryStats::new("grid (10 km square, 24 h, level 14, hourly)", "cells"),
        reqs,
    ));
    out
}

/// Whether the query kind named `name` (as in [`QueryStats::name`]) is
/// selected by `only` (empty: every kind).
fn selected(name: &str, only: &[String]) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|k| name.split(' ').next() == Some(k.trim()))
}

/// Runs `reqs` through `clients` concurrent clients, each on its own
/// connection taking the next request in turn; returns the stats and the
/// wall time from the first request to the last answer. With `warm`, each
/// connection first sends that request untimed, so no figure holds a
/// connection's setup.
pub(crate) async fn run_concurrent(
    server: &str,
    mut stats: QueryStats,
    reqs: Vec<QueryRequest>,
    clients: usize,
    warm: Option<&QueryRequest>,
) -> Result<(QueryStats, Duration)> {
    let clients = clients.max(1);
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        let ch = client::channel(server).await?;
        if let Some(req) = warm {
            client::execute(ch.clone(), req.clone())
                .await
                .with_context(|| format!("{} (warm-up) failed", stats.name))?;
        }
        channels.push(ch);
    }
    let reqs = Arc::new(reqs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for ch in channels {
        let (reqs, next) = (reqs.clone(), next.clone());
        tasks.spawn(async move {
            let mut got: Vec<(Duration, u64)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(req) = reqs.get(i) else {
                    return Ok::<_, anyhow::Error>(got);
                };
                let t = Instant::now();
                let out = client::execute(ch.clone(), req.clone()).await?;
                got.push((t.elapsed(), out.size()));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        let got = r
            .map_err(|e| anyhow!("client task failed: {e}"))?
            .with_context(|| format!("{} failed", stats.name))?;
        for (d, n) in got {
            stats.durations.push(d);
            stats.result_total += n;
        }
    }
    Ok((stats, t0.elapsed()))
}

async fn run_queries(ch: &Channel, town: &Town, args: &BenchArgs) -> Result<Vec<QueryStats>> {
    let (seed, runs, only) = (args.seed, args.queries, &args.only);
    let mut all = Vec::new();
    for (mut stats, reqs) in bench_requests(town, seed, runs) {
        if !selected(stats.name, only) {
            continue;
        }
        if !args.clients.is_empty() {
            for &c in &args.clients {
                let fresh = QueryStats::new(stats.name, stats.unit);
                let (done, wall) =
                    run_concurrent(&args.server, fresh, reqs.clone(), c, None).await?;
                let (p50, p99, _) = done.summary();
                println!(
                    "{:<34} clients {:>3}  runs {:>5}  {:>8.1} queries/s  p50 {:>9.3} ms  p99 {:>9.3} ms",
                    done.name,
                    c,
                    done.durations.len(),
                    done.durations.len() as f64 / wall.as_secs_f64().max(1e-9),
                    ms(p50),
                    ms(p99)
                );
            }
            continue;
        }
        let bar = indicatif::ProgressBar::new(reqs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(stats.name);
        for req in reqs {
            let t0 = Instant::now();
            let out = client::execute(ch.clone(), req)
                .await
                .with_context(|| format!("{} failed", stats.name))?;
            stats.durations.push(t0.elapsed());
            stats.result_total += out.size();
            bar.inc(1);
        }
        bar.finish_and_clear();
        println!("{}", stats.line());
        all.push(stats);
    }
    Ok(all)
}

/// Evaluates the rules once as of `at`, then times `runs` Tasks.List
/// calls for the first page of 100 tasks: a person-level answer through
/// the release gate, audited before it is sent.
async fn run_tasks_list(ch: &Channel, at: i64, runs: usize) -> Result<QueryStats> {
    let mut c = v1::tasks_client::TasksClient::new(ch.clone());
    let r = c
        .run(v1::RunTasksRequest { at: Some(at) })
        .await
        .map_err(client::status_error)
        .context("Tasks.Run")?
        .into_inner();
    println!(
        "rules as of {}: {} tasks called for, {} new, in {:.2} s",
        format_time(r.at),
        r.proposed,
        r.created,
        r.seconds
    );
    let mut stats = QueryStats::new("tasks list (first page of 100)", "tasks");
    for i in 0..runs {
        let req = v1::ListTasksRequest {
            page_size: 100,
            purpose: "benchmark".into(),
            case_ref: format!("BENCH-{i}"),
            ..Default::default()
        };
        let t0 = Instant::now();
        let page = c
            .list(req)
            .await
            .map_err(client::status_error)
            .context("Tasks.List")?
            .into_inner();
        stats.durations.push(t0.elapsed());
        stats.result_total += page.tasks.len() as u64;
    }
    println!("{}", stats.line());
    Ok(stats)
}

/// The node's status; `count_postings` scans every posting (seconds on a
/// big node), so it is only asked for in the final report.
async fn status(ch: &Channel, count_postings: bool) -> Result<v1::StatusResponse> {
    Ok(client::admin_client(ch.clone())
        .status(v1::StatusRequest { count_postings })
        .await
        .map_err(client::status_error)
        .context("Admin.Status")?
        .into_inner())
}

pub async fn run_bench(args: BenchArgs) -> Result<()> {
    let ch = client::channel(&args.server).await?;
    let mut start = utc_midnight(hourcell_query::time::now()) - i64::from(args.days) * DAY;
    if args.skip_load {
        // The town was loaded on some earlier day: line it up with the data.
        if let Some(first) = status(&ch, false).await?.first_hour {
            let data_start = utc_midnight(first);
            if data_start != start {
                println!(
                    "note: the node's data starts {}; using it as the town start",
                    format_time(data_start)
                );
                start = data_start;
            }
        }
    }
    let cfg = TownConfig {
        seed: args.seed,
        persons: args.persons,
        days: args.days,
        start_unix: start,
        ..TownConfig::default()
    };
    let t0 = Instant::now();
    let town = Arc::new(
        tokio::task::spawn_blocking(move || Town::new(cfg))
            .await
            .map_err(|e| anyhow!("town generator failed: {e}"))?,
    );
    println!(
        "town: seed {}, {} persons, {} addresses, {} days {} .. {} (built in {:.2} s)",
        args.seed,
        args.persons,
        town.addresses().len(),
        args.days,
        format_time(start),
        format_time(town.end_unix()),
        t0.elapsed().as_secs_f64()
    );

    if !args.skip_load {
        load_registry(&ch, &town).await?;
        load_events(&ch, town.clone(), args.batch, args.concurrency).await?;
    }

    let stats = if args.queries > 0 && args.days > 0 {
        println!(
            "\nqueries ({} runs each, as_of {}):",
            args.queries,
            format_time(town.end_unix())
        );
        let writer = match args.ingest_during {
            Some(rate) => {
                println!(
                    "ingesting {:?} hours at {rate:.0} events/s while the queries run",
                    args.ingest_hours
                );
                Some(
                    PacedIngest::start(
                        &ch,
                        town.clone(),
                        args.ingest_hours,
                        rate,
                        args.batch,
                        args.concurrency,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mut stats = run_queries(&ch, &town, &args).await?;
        if let Some(w) = writer {
            let done = w.stop().await?;
            println!(
                "ingest during the queries: {} events in {:.1} s ({:.0} events/s)",
                done.events,
                done.seconds,
                done.rate()
            );
        }
        if selected("tasks", &args.only) && args.clients.is_empty() {
            stats.push(run_tasks_list(&ch, town.end_unix(), args.queries).await?);
        }
        stats
    } else {
        Vec::new()
    };
    if args.no_compact {
        if !stats.is_empty() {
            println!("\n{}", markdown_table(&stats));
        }
        return Ok(());
    }

    // Fold merge operands and apply compression before measuring size.
    let started = Instant::now();
    let c = client::admin_client(ch.clone())
        .compact(v1::CompactRequest {})
        .await
        .map_err(client::status_error)
        .context("Admin.Compact")?
        .into_inner();
    println!(
        "\ncompaction: {} -> {} in {:.1} s",
        client::human_bytes(c.disk_bytes_before),
        client::human_bytes(c.disk_bytes_after),
        started.elapsed().as_secs_f64()
    );
    let st = status(&ch, true).await?;
    println!("\nnode:");
    println!("  persons          {}", st.persons);
    println!(
        "  disk bytes       {} ({})",
        st.disk_bytes,
        client::human_bytes(st.disk_bytes)
    );
    println!("  postings         {}", st.postings);
    if st.postings > 0 {
        println!(
            "  bytes/posting    {:.2}",
            st.disk_bytes as f64 / st.postings as f64
        );
    } else {
        println!("  bytes/posting    -");
    }

    if !stats.is_empty() {
        println!("\n{}", markdown_table(&stats));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_vec(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_use_ceil_minus_one() {
        assert_eq!(percentile_index(200, 990), 197);
        assert_eq!(percentile_index(100, 990), 98);
        assert_eq!(percentile_index(100, 500), 49);
        assert_eq!(percentile_index(1, 990), 0);
        assert_eq!(percentile_index(3, 500), 1);
        assert_eq!(percentile_index(0, 990), 0);
        let d = ms_vec(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&d, 990), Duration::from_millis(99));
        assert_eq!(percentile(&d, 500), Duration::from_millis(50));
        assert_eq!(percentile(&[], 500), Duration::ZERO);
    }

    #[test]
    fn stats_and_table() {
        let mut q = QueryStats::new("occupancy (1 address, 24 h)", "distinct persons");
        q.durations = ms_vec(&[5, 1, 3, 2, 4]);
        q.result_total = 10;
        let (p50, p99, max) = q.summary();
        assert_eq!(
            (p50, p99, max),
            (
                Duration::from_millis(3),
                Duration::from_millis(5),
                Duration::from_millis(5)
            )
        );
        assert_eq!(q.mean_result(), 2.0);
        assert_eq!(
            markdown_table(&[q]),
            "| query | runs | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n\
             | occupancy (1 address, 24 h) | 5 | 3.00 | 5.00 | 5.00 |\n"
        );
    }

    #[test]
    fn only_selects_by_first_word() {
        assert!(selected("where-was (1 person, 7 days)", &[]));
        let only = vec!["occupancy".to_string(), " where-was".to_string()];
        assert!(selected("where-was (1 person, 7 days)", &only));
        assert!(selected("occupancy (1 address, 24 h)", &only));
        assert!(!selected("who-was-at (1 km circle, 24 h)", &only));
        // The week-long who-was-at is a kind of its own.
        let who = vec!["who-was-at".to_string()];
        assert!(!selected("who-was-at-week (3 km circle, 7 days)", &who));
        let week = vec!["who-was-at-week".to_string()];
        assert!(selected("who-was-at-week (3 km circle, 7 days)", &week));
        assert!(!selected("who-was-at (1 km circle, 24 h)", &week));
    }

    #[test]
    fn midnight() {
        assert_eq!(utc_midnight(1_793_491_200 + 5), 1_793_491_200);
        assert_eq!(utc_midnight(-1), -DAY);
    }

    #[test]
    fn requests_are_reproducible_and_pass_as_of() {
        let town = Town::new(TownConfig {
            persons: 50,
            days: 3,
            ..TownConfig::default()
        });
        let a = bench_requests(&town, 5, 4);
        let b = bench_requests(&town, 5, 4);
        assert_eq!(a.len(), 6);
        for ((sa, ra), (_, rb)) in a.iter().zip(&b) {
            assert_eq!(ra, rb, "{}", sa.name);
            assert_eq!(ra.len(), 4);
        }
        let end = town.end_unix();
        for (_, reqs) in &a {
            for r in reqs {
                let (as_of, from, to) = match r {
                    QueryRequest::Occupancy(r) => {
                        let w = r.window.unwrap();
                        (w.as_of, w.start, w.end)
                    }
                    QueryRequest::WhoWasAt(r) => {
                        let w = r.window.unwrap();
                        (w.as_of, w.start, w.end)
                    }
                    QueryRequest::WhereWas(r) => {
                        let w = r.window.unwrap();
                        (w.as_of, w.start, w.end)
                    }
                    QueryRequest::NoActivitySince(r) => (r.as_of, r.since, end),
                    QueryRequest::Grid(r) => {
                        let w = r.window.unwrap();
                        (w.as_of, w.start, w.end)
                    }
                };
                assert_eq!(as_of, Some(end));
                assert!(from >= town.config().start_unix && to <= end && from < to);
            }
        }
    }
}
