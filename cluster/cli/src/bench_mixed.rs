//! `hourcell bench --ingest-during RATE`: the queries run while a writer
//! ingests at a steady rate, so their latency is measured the way a
//! real-time population store is used: queried while it ingests.
//!
//! What the writer sends ([`IngestHours`]):
//! - `present`: the town's last day moved one day on, to today, up to
//!   now, sent again and again: a store ingesting the present while it is
//!   asked about the past (the queries' windows end at the town's end);
//! - `past`: the town's own events again, day after day from the first:
//!   every query's hours are being written while it reads them.
//!
//! Either way the answers stay exactly those of the settled run (slices
//! are set unions and the queries pass the town's end as `as_of`), while
//! the node does all the work of ingest: resolving rows, merge operands,
//! held slices, flushes and compactions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use hourcell_proto::v1;
use hourcell_town::Town;

pub use crate::bench_args::IngestHours;
use crate::client::{self, Ch as Channel};

const DAY: i64 = 86_400;
/// How far past now the present's events may go (the node accepts up to
/// an hour ahead).
const AHEAD: i64 = 3_000;

/// A generated event as the ingest API takes it.
pub fn event_to_proto(e: hourcell_town::GenEvent) -> v1::Event {
    v1::Event {
        person: e.person,
        time: Some(v1::event::Time::UnixSeconds(e.time)),
        lat: e.lat,
        lng: e.lng,
        address: e.address.unwrap_or_default(),
        source: e.source.to_string(),
    }
}

/// What the writer did while the queries ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestDone {
    pub events: u64,
    pub seconds: f64,
}

impl IngestDone {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// A writer running in the background until [`PacedIngest::stop`].
pub struct PacedIngest {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// When the `n`th event (counted from 0) may be sent at `rate` events per
/// second: the writer keeps this schedule, so it neither bursts after a
/// slow request nor drifts below the rate while the node keeps up.
pub fn due(n: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate.max(1e-9))
}

impl PacedIngest {
    /// Starts sending `town`'s events at `rate` events per second in
    /// requests of `batch`, at most `in_flight` at a time. The present's
    /// requests are built before it returns, so that generating them is
    /// not measured with the queries; the past is generated a day at a
    /// time as it is sent (all of it would not fit in memory).
    pub async fn start(
        ch: &Channel,
        town: Arc<Town>,
        hours: IngestHours,
        rate: f64,
        batch: usize,
        in_flight: usize,
    ) -> Result<Self> {
        let batch = batch.max(1);
        let prepared = match hours {
            IngestHours::Past => None,
            IngestHours::Present => {
                let t = town.clone();
                let now = hourcell_query::time::now();
                Some(
                    tokio::task::spawn_blocking(move || {
                        let day = t.config().days.max(1) - 1;
                        requests(present(t.events_for_day(day), now), batch)
                    })
                    .await
                    .map_err(|e| anyhow!("event generator failed: {e}"))?,
                )
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let task = tokio::spawn(run(
            Writer {
                ingest: client::ingest_client(ch.clone()),
                rate,
                in_flight: in_flight.max(1),
                stop: stop.clone(),
                sent: sent.clone(),
                started,
                inflight: tokio::task::JoinSet::new(),
                scheduled: 0,
            },
            town,
            prepared,
            batch,
        ));
        Ok(PacedIngest {
            stop,
            sent,
            started,
            task,
        })
    }

    /// Stops the writer after the requests in flight and reports what it
    /// sent; an ingest error is an error here.
    pub async fn stop(self) -> Result<IngestDone> {
        self.stop.store(true, Ordering::SeqCst);
        self.task
            .await
            .map_err(|e| anyhow!("ingest writer failed: {e}"))??;
        Ok(IngestDone {
            events: self.sent.load(Ordering::SeqCst),
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// `events` as ingest requests of `batch` events.
fn requests(events: Vec<hourcell_town::GenEvent>, batch: usize) -> Vec<Vec<v1::Event>> {
    let mut out = Vec::with_capacity(events.len().div_ceil(batch));
    let mut it = events.into_iter().map(event_to_proto).peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(batch).collect());
    }
    out
}

/// The sending side of a [`PacedIngest`].
struct Writer {
    ingest: v1::ingest_client::IngestClient<Channel>,
    rate: f64,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    inflight: tokio::task::JoinSet<Result<usize>>,
    scheduled: u64,
}

impl Writer {
    /// Sends one request when the schedule allows; false once stopped.
    async fn send(&mut self, events: Vec<v1::Event>) -> Result<bool> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let wait = due(self.scheduled, self.rate).saturating_sub(self.started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        while self.inflight.len() >= self.in_flight {
            self.settle_one().await?;
        }
        self.scheduled += events.len() as u64;
        let mut c = self.ingest.clone();
        self.inflight.spawn(async move {
            let n = events.len();
            c.ingest(v1::IngestRequest { events })
                .await
                .map_err(client::status_error)
                .context("ingesting events during the queries")?;
            Ok(n)
        });
        Ok(true)
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(r) = self.inflight.join_next().await {
            let n = r.map_err(|e| anyhow!("ingest task failed: {e}"))??;
            self.sent.fetch_add(n as u64, Ordering::SeqCst);
        }
        Ok(())
    }
}

async fn run(
    mut w: Writer,
    town: Arc<Town>,
    prepared: Option<Vec<Vec<v1::Event>>>,
    batch: usize,
) -> Result<()> {
    let days = town.config().days.max(1);
    let mut day = 0u32;
    'outer: while !w.stop.load(Ordering::SeqCst) {
        match &prepared {
            // Just past midnight with a quiet town: nothing to send.
            Some(p) if p.is_empty() => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(p) => {
                for r in p {
                    if !w.send(r.clone()).await? {
                        break 'outer;
                    }
                }
            }
            None => {
                let t = town.clone();
                let d = day % days;
                day += 1;
                let reqs =
                    tokio::task::spawn_blocking(move || requests(t.events_for_day(d), batch))
                        .await
                        .map_err(|e| anyhow!("event generator failed: {e}"))?;
                for r in reqs {
                    if !w.send(r).await? {
                        break 'outer;
                    }
                }
            }
        }
    }
    while !w.inflight.is_empty() {
        w.settle_one().await?;
    }
    Ok(())
}

/// A day's events moved one day on, keeping those before `now` (and up to
/// [`AHEAD`] after it).
pub fn present(events: Vec<hourcell_town::GenEvent>, now: i64) -> Vec<hourcell_town::GenEvent> {
    events
        .into_iter()
        .filter_map(|mut e| {
            e.time += DAY;
            (e.time < now + AHEAD).then_some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_present_is_the_last_day_moved_on_up_to_now() {
        let cfg = hourcell_town::TownConfig {
            seed: 5,
            persons: 200,
            days: 2,
            start_unix: 1_700_006_400 - 2 * DAY,
            ..hourcell_town::TownConfig::default()
        };
        let town = Town::new(cfg);
        let end = town.end_unix();
        let last = town.events_for_day(1);
        let now = end + 12 * 3600;
        let p = present(last.clone(), now);
        assert!(!p.is_empty() && p.len() < last.len());
        assert!(p.iter().all(|e| e.time >= end && e.time < now + AHEAD));
        let kept = last.iter().filter(|e| e.time + DAY < now + AHEAD).count();
        assert_eq!(p.len(), kept);
    }

    #[test]
    fn the_schedule_spreads_events_over_time_at_the_rate() {
        assert_eq!(due(0, 1000.0), Duration::ZERO);
        assert_eq!(due(20_000, 100_000.0), Duration::from_millis(200));
        assert_eq!(due(150_000, 150_000.0), Duration::from_secs(1));
        assert!(
            due(10, 0.0) > Duration::from_secs(3600),
            "a zero rate never sends"
        );
    }

    #[test]
    fn done_reports_its_rate() {
        let d = IngestDone {
            events: 300_000,
            seconds: 2.0,
        };
        assert_eq!(d.rate(), 150_000.0);
    }
}
