//! Scenario 17: what FIFO ordering costs. One site has a `fifo` subscription and a concurrent
//! one (`none`), each at its own fast receiver; another has the concurrent one alone.
//!
//! - Burst: each site gets the same burst of events (a closed loop of 8 connections), and each
//!   subscription's deliveries per second are measured from the first request of the burst
//!   until its receiver counted the last delivery: can FIFO keep up with the API's writes?
//! - Backlog: the receivers first refuse (503) a burst with a one-attempt schedule, so every
//!   message is exhausted and kept; then they accept, and one `recover` per subscription queues
//!   the whole backlog at once: the drain rate is each subscription's ceiling (FIFO: one round
//!   trip per delivery; concurrent: its pacing window).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::ratio;
use crate::bench::load::{self, Load};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::{Receiver, Upstream};
use crate::bench::sites::{wait_for_count, Site};

const SCENARIO: &str = "17 FIFO ordering (fast receivers)";
const EVENTS: u64 = 3_000;
/// The backlog per subscription (kept for replay: `max_replay` is raised to hold it).
const BACKLOG: u64 = 2_000;
const DEADLINE: Duration = Duration::from_secs(120);
/// A concurrent subscription beside a FIFO one should keep at least this share of its rate
/// beside another concurrent one (the dispatcher then does the same work per event).
const MIN_BESIDE_RATIO: f64 = 0.8;

/// How a phase loads a site and times its subscriptions.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Burst,
    Backlog,
}

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    report.info(
        SCENARIO,
        "load",
        format!(
            "burst: {} events as fast as 8 connections send them; backlog: {} events refused \
             once each, then recovered at once; per site (fifo + concurrent, concurrent + \
             concurrent, concurrent alone)",
            thousands(EVENTS as f64),
            thousands(BACKLOG as f64)
        ),
    );
    for phase in [Phase::Burst, Phase::Backlog] {
        measure(upstream, phase, report).await?;
    }
    Ok(())
}

/// One phase on three sites, one after the other.
async fn measure(upstream: &Upstream, phase: Phase, report: &mut Report) -> Result<()> {
    let name = match phase {
        Phase::Burst => "burst",
        Phase::Backlog => "backlog",
    };
    let with_fifo = site_rates(upstream, phase, &[true, false]).await?;
    let with_plain = site_rates(upstream, phase, &[false, false]).await?;
    let alone = site_rates(upstream, phase, &[false]).await?;
    let (fifo, beside_fifo, beside_plain, alone) =
        (with_fifo[0], with_fifo[1], with_plain[1], alone[0]);
    report.info(
        SCENARIO,
        &format!("{name}: deliveries / s: fifo, concurrent beside it; concurrent beside a concurrent one; concurrent alone"),
        format!(
            "{} / {}; {}; {}",
            thousands(fifo),
            thousands(beside_fifo),
            thousands(beside_plain),
            thousands(alone)
        ),
    );
    report.info(
        SCENARIO,
        &format!("{name}: fifo ÷ concurrent beside it (same site, same run)"),
        format!("{:.2}", ratio(fifo, beside_fifo)),
    );
    report.info(
        SCENARIO,
        &format!("{name}: concurrent beside fifo ÷ concurrent alone"),
        format!("{:.2}", ratio(beside_fifo, alone)),
    );
    let beside_ratio = ratio(beside_fifo, beside_plain);
    report.check(
        SCENARIO,
        &format!("{name}: concurrent beside fifo ÷ concurrent beside a concurrent one"),
        format!("{beside_ratio:.2}"),
        "≥ 0.8",
        beside_ratio >= MIN_BESIDE_RATIO,
    );
    Ok(())
}

/// A site with one subscription per entry (`fifo` or not), each at its own receiver; their
/// rates in the phase.
async fn site_rates(upstream: &Upstream, phase: Phase, fifo: &[bool]) -> Result<Vec<f64>> {
    let mut receivers = Vec::new();
    for _ in fifo {
        receivers.push(Receiver::start().await?);
    }
    let subs: Vec<(&Receiver, bool)> = receivers.iter().zip(fifo.iter().copied()).collect();
    let config = plugin::ordered(&subs, phase == Phase::Backlog);
    let site = Site::plugin_with("fifo", upstream.port(), config).await?;
    let refs: Vec<&Receiver> = receivers.iter().collect();
    match phase {
        Phase::Burst => burst(&site, &refs).await,
        Phase::Backlog => drain(&site, &refs).await,
    }
}

/// [`BACKLOG`] events refused once each (exhausted, kept), then recovered at once per
/// subscription (`sub_bench_<i>`, in `receivers`' order); each one's drain rate, from the
/// recover calls until its receiver counted the backlog again.
async fn drain(site: &Site, receivers: &[&Receiver]) -> Result<Vec<f64>> {
    for receiver in receivers {
        receiver.set_status(503);
    }
    let since =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let load = Load {
        budget: Some(BACKLOG),
        ..Load::closed(8, DEADLINE)
    };
    let outcome = load::run(site.port(), &plugin::order_request(), &load).await?;
    ensure!(
        outcome.ok == BACKLOG,
        "{} of {BACKLOG} events made",
        outcome.ok
    );
    let all = BACKLOG * receivers.len() as u64;
    site.envoy
        .wait_for_counter("webhooks_deliveries_exhausted", all, DEADLINE)
        .await?;
    // What recover counts is written at the dispatcher's next tick (100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for receiver in receivers {
        receiver.set_status(204);
    }
    let started = Instant::now();
    for i in 0..receivers.len() {
        let path = format!("/webhooks/subscriptions/sub_bench_{i}/recover");
        let body = serde_json::json!({ "since": since });
        let (status, answer) =
            crate::api(&site.envoy, plugin::API_KEY, "POST", &path, Some(body)).await?;
        ensure!(
            status == 202 && answer["count"] == BACKLOG,
            "recover answered {status}: {answer}"
        );
    }
    rates_since(started, receivers, 2 * BACKLOG, BACKLOG).await
}

/// Each receiver's rate of `n` deliveries from `started` until it counted `total`, all
/// watched at once (so one that finishes first is timed when it does).
async fn rates_since(
    started: Instant,
    receivers: &[&Receiver],
    total: u64,
    n: u64,
) -> Result<Vec<f64>> {
    let waits = receivers.iter().map(|r| wait_for_count(r, total, DEADLINE));
    let mut rates = Vec::new();
    for done in futures_util::future::join_all(waits).await {
        let elapsed = done?.duration_since(started).as_secs_f64().max(1e-9);
        rates.push(n as f64 / elapsed);
    }
    Ok(rates)
}

/// One burst of [`EVENTS`] events; each receiver's deliveries per second, from the first
/// request until it counted them all.
async fn burst(site: &Site, receivers: &[&Receiver]) -> Result<Vec<f64>> {
    let load = Load {
        budget: Some(EVENTS),
        ..Load::closed(8, DEADLINE)
    };
    let started = Instant::now();
    let outcome = load::run(site.port(), &plugin::order_request(), &load).await?;
    ensure!(
        outcome.ok == EVENTS,
        "{} of {EVENTS} events made",
        outcome.ok
    );
    let rates = rates_since(started, receivers, EVENTS, EVENTS).await?;
    let dropped = site.envoy.counter("webhooks_events_dropped").await?;
    ensure!(dropped == 0, "{dropped} events dropped");
    Ok(rates)
}
