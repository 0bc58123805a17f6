//! Scenarios 13 and 14: fleet mode's durable outbox.
//!
//! 13: deliveries/s of one Envoy in fleet mode (every message put into etcd before its first
//! attempt and deleted after it) against the same Envoy without `fleet` (memory only), in
//! interleaved rounds of the same closed-loop write load, each round counted only once every
//! detected event was delivered; and etcd's write proposals per message (from its `/metrics`).
//!
//! 14: failover. Three replicas, the receiver refusing (503); events detected by replica B
//! until etcd holds them all; B killed with SIGKILL, the receiver back: the time from the kill
//! until the receiver has every one of them (delivered by A or C once B's lease expired and one
//! of them claimed its messages). Goal: at most `lease_ttl` + 5 s.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::ratio;
use crate::bench::fleet::{Fleet, FleetOptions};
use crate::bench::load::{self, per_second, Load};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::{Receiver, Upstream};
use crate::bench::sites::{self, Site};
use crate::bench::Options;
use crate::envoy::Envoy;
use crate::util::http_client;

const THROUGHPUT: &str = "13 durable outbox (1 replica)";
const FAILOVER: &str = "14 fleet failover (3 replicas)";
/// How long the deliveries of one run may take after its load stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Events detected by the replica that is killed.
const FAILOVER_EVENTS: u64 = 500;
/// docs/fleet.md's `lease_ttl` (and the default).
const LEASE_TTL: Duration = Duration::from_secs(10);

pub async fn run_throughput(
    upstream: &Upstream,
    opts: &Options,
    report: &mut Report,
) -> Result<()> {
    let memory = Site::plugin("memory only", upstream.port(), plugin::one_subscriber).await?;
    let fleet = Fleet::start(upstream.port(), FleetOptions::replicas(1)).await?;
    let hook = json!({"url": fleet.receiver.url("/hook"), "events": ["*"]});
    fleet.create(0, hook).await?;
    fleet.wait_active(0, 1, Duration::from_secs(10)).await?;
    let durable = fleet.envoy(0)?;
    let memory_receiver = memory
        .receiver
        .as_ref()
        .context("the site has a receiver")?;
    let (mut memory_rate, mut durable_rate) = (Vec::new(), Vec::new());
    let (mut messages, mut proposals) = (0, 0);
    for round in 1..=opts.rounds {
        memory_rate.push(measure(&memory.envoy, memory_receiver, opts).await?.0);
        let before = etcd_proposals(&fleet).await?;
        let (rate, delivered) = measure(durable, &fleet.receiver, opts).await?;
        // Its deletes go out after the last delivery: count them too.
        wait_outbox_empty(durable).await?;
        proposals += etcd_proposals(&fleet).await? - before;
        messages += delivered;
        durable_rate.push(rate);
        eprintln!(
            "13 durable outbox, round {round}: {rate:.0} deliveries/s (memory only: {:.0})",
            memory_rate.last().copied().unwrap_or(0.0)
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (memory_mean, durable_mean) = (mean(&memory_rate), mean(&durable_rate));
    report.check(
        THROUGHPUT,
        "deliveries/s, durable outbox (etcd 3.4, one member, fsync per write)",
        format!("{durable_mean:.0}"),
        "≥ 3,000/s (moonshot 6,000)",
        durable_mean >= 3000.0,
    );
    report.info(
        THROUGHPUT,
        "durable ÷ memory only (same run, interleaved)",
        format!(
            "{:.2} ({durable_mean:.0} vs {memory_mean:.0} deliveries/s, {} rounds of {} s, {} connections)",
            ratio(durable_mean, memory_mean),
            opts.rounds,
            opts.duration.as_secs(),
            opts.connections
        ),
    );
    report.info(
        THROUGHPUT,
        "etcd write proposals per message (puts and deletes batched, up to 128 per txn)",
        format!(
            "{:.3} ({} proposals for {} messages)",
            ratio(proposals as f64, messages as f64),
            thousands(proposals as f64),
            thousands(messages as f64)
        ),
    );
    Ok(())
}

/// One warm-up and one measured closed-loop run: deliveries/s from the load's start until the
/// receiver had every detected event, and how many were delivered.
async fn measure(envoy: &Envoy, receiver: &Receiver, opts: &Options) -> Result<(f64, u64)> {
    let shape = plugin::order_request();
    let port = envoy.listener_port();
    load::run(port, &shape, &Load::closed(opts.connections, opts.warmup)).await?;
    delivered_all(envoy, receiver).await?;
    let before = receiver.count();
    let start = Instant::now();
    let outcome = load::run(port, &shape, &Load::closed(opts.connections, opts.duration)).await?;
    ensure!(outcome.ok > 0, "no request succeeded");
    let done = delivered_all(envoy, receiver).await?;
    let delivered = receiver.count() - before;
    Ok((per_second(delivered, done - start), delivered))
}

/// Until the receiver counted one delivery per event `envoy` detected.
async fn delivered_all(envoy: &Envoy, receiver: &Receiver) -> Result<Instant> {
    let events = envoy.counter("webhooks_events_detected").await?;
    sites::wait_for_count(receiver, events, DRAIN_TIMEOUT).await
}

async fn wait_outbox_empty(envoy: &Envoy) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while envoy.gauge("webhooks_fleet_outbox_size").await? > 0 {
        ensure!(Instant::now() < deadline, "the outbox did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// etcd's committed raft proposals: one per write request (txn, put, lease grant).
async fn etcd_proposals(fleet: &Fleet) -> Result<u64> {
    let text = http_client()
        .get(fleet.etcd.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("etcd_server_proposals_committed_total "))
        .context("etcd's /metrics has no etcd_server_proposals_committed_total")?;
    let value = line.split_whitespace().nth(1).context("no value")?;
    Ok(value.parse::<f64>()? as u64)
}

pub async fn run_failover(upstream: &Upstream, report: &mut Report) -> Result<()> {
    const B: usize = 1;
    let mut options = FleetOptions::replicas(3);
    options.lease_ttl = format!("{}s", LEASE_TTL.as_secs());
    // Retries that outlast the outage: nothing is exhausted before the receiver is back.
    options.plugin = json!({"delivery": {"timeout": "5s", "allow_insecure_destinations": true,
        "retry_schedule": ["0s", "1s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s",
                           "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s"],
        "disable_after": "1h"}});
    let mut fleet = Fleet::start(upstream.port(), options).await?;
    fleet.receiver.set_status(503);
    let hook = json!({"url": fleet.receiver.url("/failover"), "events": ["*"]});
    fleet.create(0, hook).await?;
    fleet.wait_active(B, 1, Duration::from_secs(10)).await?;
    let shape = plugin::order_request();
    let load = Load {
        budget: Some(FAILOVER_EVENTS),
        ..Load::closed(8, DRAIN_TIMEOUT)
    };
    load::run(fleet.port(B)?, &shape, &load).await?;
    let b = fleet.envoy(B)?;
    let detected = b.counter("webhooks_events_detected").await?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while b.gauge("webhooks_fleet_outbox_size").await? < detected {
        ensure!(
            Instant::now() < deadline,
            "B's messages did not all reach etcd"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = fleet.receiver.count();
    let killed = fleet.kill(B);
    fleet.receiver.set_status(200);
    let wanted = refused + detected;
    let done = sites::wait_for_count(&fleet.receiver, wanted, DRAIN_TIMEOUT)
        .await
        .context("the dead replica's messages were not all delivered")?;
    let took = done - killed;
    let goal = LEASE_TTL + Duration::from_secs(5);
    report.check(
        FAILOVER,
        "SIGKILL → last of the dead replica's messages delivered",
        format!(
            "{:.1} s ({detected} messages in etcd under B's lease, lease_ttl {} s)",
            took.as_secs_f64(),
            LEASE_TTL.as_secs()
        ),
        "≤ lease_ttl + 5 s",
        took <= goal,
    );
    let mut claims = 0;
    for i in [0, 2] {
        claims += fleet.envoy(i)?.counter("webhooks_fleet_claims").await?;
    }
    report.info(
        FAILOVER,
        "leases claimed by A and C / duplicates",
        format!(
            "{claims} / {} (deliveries beyond one per message)",
            fleet.receiver.count().saturating_sub(wanted)
        ),
    );
    Ok(())
}
