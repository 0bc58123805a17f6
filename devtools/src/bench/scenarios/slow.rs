//! Scenario 8: a burst of 10,000 events to a healthy but slow receiver.
//!
//! First the receiver's own capacity: the load generator straight at it (no Envoy) with as many
//! connections as the plugin's largest pacing window, timed from its first answer to its last.
//! Then the burst through Envoy to a fresh receiver of the same kind, as fast as Envoy takes
//! the requests, and the delivery rate over the interval in which the receiver is the
//! bottleneck: from its first answer to its last, timed the same way.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;

use super::ratio;
use crate::bench::load::{self, per_second, Load, Shape};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::{Pace, SlowReceiver, Upstream};
use crate::bench::sites::Site;

const SCENARIO: &str = "8 slow receiver burst (10,000 events)";
const EVENTS: u64 = 10_000;
/// The receiver of the issue that lost events: ~1,500 requests/s, a small accept backlog; and a
/// connection cap above the plugin's window (as in the pacing integration test).
const PACE: Pace = Pace {
    rate: 1_500,
    max_connections: 48,
    backlog: 16,
};
/// The plugin's default `max_in_flight_per_subscription`: the most connections it opens to one
/// subscription's receiver, so the load generator opens as many.
const WINDOW: usize = 32;
/// How long the load generator keeps the receiver busy on its own.
const ALONE: Duration = Duration::from_secs(3);
/// Client connections of the burst (as in scenario 2).
const BURST_CONNECTIONS: usize = 16;
/// How long the deliveries may take after the burst: 3× the receiver's time for them, + 30 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3 * EVENTS / PACE.rate as u64 + 30);
/// How often Envoy's drop counter is read while waiting (the receiver is polled every 1 ms).
const STATS_POLL: Duration = Duration::from_millis(250);

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    let alone = capacity_alone().await?;
    report.info(
        SCENARIO,
        "receiver alone (no Envoy)",
        format!(
            "{} answers/s, first → last answer ({} connections for {} s; set to {}/s, \
             backlog {}, at most {} connections)",
            thousands(alone),
            WINDOW,
            ALONE.as_secs(),
            thousands(f64::from(PACE.rate)),
            PACE.backlog,
            PACE.max_connections
        ),
    );
    let receiver = SlowReceiver::start(PACE).await?;
    let config = plugin::slow_receiver(receiver.url("/hook"));
    let site = Site::plugin_with("slow receiver", upstream.port(), config).await?;
    let cpu_before = site.cpu()?;
    let burst = burst(&site).await?;
    let settled = settle(&site, &receiver).await?;
    let cpu = site.cpu()? - cpu_before;
    add_rows(report, alone, &receiver, &burst, &settled);
    let (main, worker) = cpu.per(burst.sent);
    let (fast_main, fast_worker) = fast_control(upstream).await?;
    report.info(
        SCENARIO,
        "Envoy CPU per event (burst and deliveries)",
        format!(
            "worker {worker:.0} µs + main {main:.0} µs; the same burst to the lean (fast) \
             receiver: worker {fast_worker:.0} µs + main {fast_main:.0} µs"
        ),
    );
    Ok(())
}

/// Envoy's CPU per event (main, worker) for the same burst to the lean receiver, which keeps
/// up: what holding the slow receiver's backlog adds shows against it.
async fn fast_control(upstream: &Upstream) -> Result<(f64, f64)> {
    let site = Site::plugin("fast receiver", upstream.port(), |r| {
        plugin::slow_receiver(r.url("/hook"))
    })
    .await?;
    let before = site.cpu()?;
    let burst = burst(&site).await?;
    site.delivered_all(DRAIN_TIMEOUT).await?;
    Ok((site.cpu()? - before).per(burst.sent))
}

/// Answers per second of a fresh receiver kept busy by the load generator alone.
async fn capacity_alone() -> Result<f64> {
    let receiver = SlowReceiver::start(PACE).await?;
    let body = Bytes::from_static(br#"{"type":"order.created","data":{"object":{"id":42}}}"#);
    let outcome = load::run(
        receiver.port(),
        &Shape::Post("/hook", body),
        &Load::closed(WINDOW, ALONE),
    )
    .await?;
    if outcome.errors > 0 {
        bail!(
            "the receiver alone failed {} of {} requests",
            outcome.errors,
            outcome.errors + outcome.ok
        );
    }
    Ok(receiver.busy_rate())
}

/// The burst as Envoy took it.
struct Burst {
    sent: u64,
    elapsed: Duration,
    ended: Instant,
}

async fn burst(site: &Site) -> Result<Burst> {
    let load = Load {
        budget: Some(EVENTS),
        ..Load::closed(BURST_CONNECTIONS, Duration::from_secs(120))
    };
    let outcome = load::run(site.port(), &plugin::order_request(), &load).await?;
    let ended = Instant::now();
    if outcome.ok != EVENTS {
        bail!("{} of {EVENTS} requests of the burst succeeded", outcome.ok);
    }
    Ok(Burst {
        sent: outcome.ok,
        elapsed: outcome.elapsed,
        ended,
    })
}

/// Envoy's counts once every detected event was delivered or dropped.
struct Settled {
    detected: u64,
    dropped: u64,
    succeeded: u64,
    failed: u64,
    attempts: u64,
    /// When the receiver had the last of them.
    at: Instant,
}

/// Waits until the receiver has answered one distinct message per detected event not dropped.
async fn settle(site: &Site, receiver: &SlowReceiver) -> Result<Settled> {
    let envoy = &site.envoy;
    let detected = envoy.counter("webhooks_events_detected").await?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut dropped = envoy.counter("webhooks_events_dropped").await?;
    let mut next_stats = Instant::now() + STATS_POLL;
    loop {
        // Cheap first: the answered count is an atomic, the set of ids takes a lock.
        if receiver.answered() + dropped >= detected && receiver.distinct() + dropped >= detected {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "after {DRAIN_TIMEOUT:?} the receiver had {} of {detected} events ({dropped} dropped)",
                receiver.distinct()
            );
        }
        if now >= next_stats {
            dropped = envoy.counter("webhooks_events_dropped").await?;
            next_stats = now + STATS_POLL;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at = Instant::now();
    // Envoy counts a success when the answer reached it, a moment after the receiver sent it.
    let succeeded = envoy
        .wait_for_counter(
            "webhooks_deliveries_succeeded",
            detected.saturating_sub(dropped),
            Duration::from_secs(10),
        )
        .await?;
    Ok(Settled {
        detected,
        dropped: envoy.counter("webhooks_events_dropped").await?,
        succeeded,
        failed: envoy.counter("webhooks_deliveries_failed").await?,
        attempts: envoy.counter("webhooks_delivery_attempts").await?,
        at,
    })
}

fn add_rows(
    report: &mut Report,
    alone: f64,
    receiver: &SlowReceiver,
    burst: &Burst,
    settled: &Settled,
) {
    report.info(
        SCENARIO,
        "burst through Envoy",
        format!(
            "{} events in {:.2} s ({} /s, {} connections); the last delivered {:.1} s after",
            thousands(burst.sent as f64),
            burst.elapsed.as_secs_f64(),
            thousands(per_second(burst.sent, burst.elapsed)),
            BURST_CONNECTIONS,
            settled
                .at
                .saturating_duration_since(burst.ended)
                .as_secs_f64()
        ),
    );
    let rate = receiver.busy_rate();
    let share = ratio(rate, alone);
    report.check(
        SCENARIO,
        "deliveries/s ÷ receiver alone",
        format!(
            "{share:.3} ({} /s over {:.1} s, first → last delivery, vs {} /s)",
            thousands(rate),
            receiver.busy_span().as_secs_f64(),
            thousands(alone)
        ),
        "≥ 0.9",
        share >= 0.9,
    );
    report.info(
        SCENARIO,
        "failed attempts",
        format!(
            "{} (`webhooks_deliveries_failed`; {} attempts in all; the receiver refused {} \
             connections)",
            thousands(settled.failed as f64),
            thousands(settled.attempts as f64),
            receiver.refused_connections()
        ),
    );
    report.check(
        SCENARIO,
        "dropped",
        format!("{} (`webhooks_events_dropped`)", settled.dropped),
        "0",
        settled.dropped == 0,
    );
    let repeated = receiver.answered().saturating_sub(receiver.distinct());
    report.check(
        SCENARIO,
        "detected = delivered + dropped",
        format!(
            "{} = {} + {} (delivered: `webhooks_deliveries_succeeded`; the receiver answered {} \
             distinct webhook-ids, {repeated} more than once)",
            thousands(settled.detected as f64),
            thousands(settled.succeeded as f64),
            thousands(settled.dropped as f64),
            thousands(receiver.distinct() as f64)
        ),
        "equal",
        settled.detected == settled.succeeded + settled.dropped,
    );
}
