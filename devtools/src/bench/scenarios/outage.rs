//! Scenario 15: proxied traffic while etcd is down. One Envoy in fleet mode with one
//! subscription takes the same open-loop write load (every request an event) in interleaved
//! rounds with etcd running and with etcd stopped (SIGTERM; started again after the round).
//! The API's clients must see no difference: every request answered by the upstream, latency
//! within the noise of the rounds with etcd up. Every event detected during an outage is
//! delivered once etcd is back (detected = delivered, nothing dropped). The same Envoy without
//! `fleet` (memory only) takes the same load in the same rounds: what etcd's work costs the
//! API's writes when etcd is up.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::json;

use super::ratio;
use crate::bench::fleet::{Fleet, FleetOptions};
use crate::bench::load::{self, Load, Outcome};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::{self, Site};
use crate::bench::Options;

const OUTAGE: &str = "15 etcd down (1 replica)";
/// Requests per second of the open-loop load: well within what one Envoy delivers, so the
/// latency is each request's own cost, not a queue's.
const RATE: f64 = 1000.0;
const CONNECTIONS: usize = 16;
/// How long the deliveries of the outage's events may take once etcd is back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(upstream: &Upstream, opts: &Options, report: &mut Report) -> Result<()> {
    let memory = Site::plugin("memory only", upstream.port(), plugin::one_subscriber).await?;
    let mut fleet = Fleet::start(upstream.port(), FleetOptions::replicas(1)).await?;
    let hook = json!({"url": fleet.receiver.url("/hook"), "events": ["*"]});
    fleet.create(0, hook).await?;
    fleet.wait_active(0, 1, Duration::from_secs(10)).await?;
    let port = fleet.port(0)?;
    let shape = plugin::order_request();
    let load = Load {
        rate: Some(RATE),
        ..Load::closed(CONNECTIONS, opts.duration)
    };
    let memory_port = memory.envoy.listener_port();
    for port in [port, memory_port] {
        load::run(port, &shape, &Load::closed(CONNECTIONS, opts.warmup)).await?;
    }
    let (mut up, mut down, mut alone) = (Outcome::empty(), Outcome::empty(), Outcome::empty());
    let mut drained = Vec::new();
    for round in 1..=opts.rounds {
        alone.absorb(&load::run(memory_port, &shape, &load).await?);
        up.absorb(&load::run(port, &shape, &load).await?);
        fleet.etcd.stop().await?;
        down.absorb(&load::run(port, &shape, &load).await?);
        ensure!(!fleet.etcd.is_running(), "etcd came back during the round");
        fleet.etcd.start_again().await?;
        let back = Instant::now();
        drained.push(delivered_all(&fleet).await? - back);
        eprintln!(
            "15 etcd down, round {round}: p99 {:.2} ms with etcd up, {:.2} ms with it down",
            up.quantile_ms(0.99),
            down.quantile_ms(0.99)
        );
    }
    let envoy = fleet.envoy(0)?;
    let detected = envoy.counter("webhooks_events_detected").await?;
    let dropped = envoy.counter("webhooks_events_dropped").await?
        + envoy.counter("webhooks_deliveries_exhausted").await?;
    let delivered = fleet.receiver.count();
    report.check(
        OUTAGE,
        "proxied writes answered by the upstream (2xx), etcd up / down",
        format!(
            "{} of {} / {} of {} ({RATE:.0} req/s open loop, {} rounds of {} s per side)",
            thousands(up.ok as f64),
            thousands((up.ok + up.errors) as f64),
            thousands(down.ok as f64),
            thousands((down.ok + down.errors) as f64),
            opts.rounds,
            opts.duration.as_secs()
        ),
        "no error",
        up.errors == 0 && down.errors == 0,
    );
    // The p50 is the figure that carries: the p99 of a few-millisecond request on two cores
    // shared with the load, the upstream, the receiver and etcd is noise (it varies 2x
    // between runs of the same side).
    let p50 = ratio(down.quantile_ms(0.5), up.quantile_ms(0.5));
    report.check(
        OUTAGE,
        "latency p50, etcd down ÷ up",
        format!(
            "{p50:.2} ({:.2} vs {:.2} ms)",
            down.quantile_ms(0.5),
            up.quantile_ms(0.5)
        ),
        "≤ 1.10 (within noise)",
        p50 <= 1.1,
    );
    report.info(
        OUTAGE,
        "latency p99: etcd down / up / memory only (no `fleet`)",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            down.quantile_ms(0.99),
            up.quantile_ms(0.99),
            alone.quantile_ms(0.99)
        ),
    );
    report.info(
        OUTAGE,
        "latency p50, etcd up ÷ memory only (what etcd's work costs the API's writes here)",
        format!(
            "{:.2} ({:.2} vs {:.2} ms; {} errors without fleet)",
            ratio(up.quantile_ms(0.5), alone.quantile_ms(0.5)),
            up.quantile_ms(0.5),
            alone.quantile_ms(0.5),
            alone.errors
        ),
    );
    let slowest = drained.iter().max().copied().unwrap_or_default();
    report.check(
        OUTAGE,
        "events detected = delivered + dropped, dropped",
        format!(
            "{} = {} + {dropped}; the outage's all delivered at most {:.1} s after etcd was back",
            thousands(detected as f64),
            thousands(delivered as f64),
            slowest.as_secs_f64()
        ),
        "dropped 0",
        detected == delivered + dropped && dropped == 0,
    );
    Ok(())
}

/// Until the receiver counted one delivery per event detected and etcd's outbox is empty again.
async fn delivered_all(fleet: &Fleet) -> Result<Instant> {
    let envoy = fleet.envoy(0)?;
    let events = envoy.counter("webhooks_events_detected").await?;
    let done = sites::wait_for_count(&fleet.receiver, events, DRAIN_TIMEOUT).await?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while envoy.gauge("webhooks_fleet_outbox_size").await? > 0 {
        ensure!(Instant::now() < deadline, "the outbox did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(done)
}
