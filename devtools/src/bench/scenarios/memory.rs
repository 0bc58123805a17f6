//! Scenario 6: Envoy's memory with 10,000 pending 1 KB messages, against the same Envoy idle.
//!
//! The receiver answers 503 and the retry schedule waits an hour after the first attempt, so
//! every message stays pending in the dispatcher for the whole measurement.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;

use crate::bench::load::{self, Load, Shape};
use crate::bench::plugin;
use crate::bench::report::{megabytes, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::{wait_for_count, Site};

const SCENARIO: &str = "6 memory (10,000 pending 1 KB messages)";
const MESSAGES: u64 = 10_000;
const BODY_BYTES: usize = 1024;
const BUDGET_BYTES: f64 = 64.0 * 1_048_576.0;
/// Issue 9's goal for what one pending 1 KB event costs Envoy (KB of 1,024 bytes).
const PER_MESSAGE_BUDGET_KB: f64 = 1.5;

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    let site = Site::plugin("backlog", upstream.port(), |r| {
        plugin::backlog(r, 2 * MESSAGES as usize)
    })
    .await?;
    let Some(receiver) = &site.receiver else {
        bail!("the memory scenario needs a plugin site");
    };
    receiver.set_status(503);
    // "Idle" is after some read traffic: the worker's connection pools exist on both readings.
    send(&site, Shape::Get("/orders/42"), 200).await?;
    let idle = site.rss_bytes()?;
    send(&site, Shape::Post("/orders", one_kb_order()), MESSAGES).await?;
    wait_for_count(receiver, MESSAGES, Duration::from_secs(60)).await?;
    let depth = wait_for_queue_depth(&site, MESSAGES, Duration::from_secs(10)).await?;
    let loaded = site.rss_bytes()?;
    let queue_bytes = site.envoy.gauge("webhooks_queue_bytes").await?;
    let added = loaded.saturating_sub(idle) as f64;
    let kb_per_message = added / MESSAGES as f64 / 1024.0;
    report.info(
        SCENARIO,
        "Envoy RSS idle → loaded",
        format!(
            "{} → {} (queue depth {depth})",
            megabytes(idle as f64),
            megabytes(loaded as f64)
        ),
    );
    report.check(
        SCENARIO,
        "RSS added",
        format!("{} ({kb_per_message:.1} KB per message)", megabytes(added)),
        "≤ 64 MB",
        added <= BUDGET_BYTES,
    );
    report.check(
        SCENARIO,
        "RSS added per pending message",
        format!("{kb_per_message:.2} KB"),
        "≤ 1.5 KB per message for a 1 KB event",
        kb_per_message <= PER_MESSAGE_BUDGET_KB,
    );
    report.info(
        SCENARIO,
        "`webhooks_queue_bytes`",
        format!(
            "{} ({:.2} KB per message: what the dispatcher counts against `max_queue_bytes`)",
            megabytes(queue_bytes as f64),
            queue_bytes as f64 / depth.max(1) as f64 / 1024.0
        ),
    );
    Ok(())
}

/// Exactly `n` requests over 16 connections; every one must succeed.
async fn send(site: &Site, shape: Shape, n: u64) -> Result<()> {
    let load = Load {
        budget: Some(n),
        ..Load::closed(16, Duration::from_secs(120))
    };
    let outcome = load::run(site.port(), &shape, &load).await?;
    if outcome.ok != n {
        bail!("{} of {n} requests succeeded", outcome.ok);
    }
    Ok(())
}

/// A JSON order of exactly 1 KB (the upstream echoes it, so it becomes `data.object`).
fn one_kb_order() -> Bytes {
    let pad = "x".repeat(BODY_BYTES - r#"{"pad":""}"#.len());
    Bytes::from(format!(r#"{{"pad":"{pad}"}}"#))
}

/// Polls the dispatcher's `webhooks_queue_depth` until it reaches `n`.
async fn wait_for_queue_depth(site: &Site, n: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let depth = site.envoy.gauge("webhooks_queue_depth").await?;
        if depth >= n {
            return Ok(depth);
        }
        if Instant::now() >= deadline {
            bail!("webhooks_queue_depth is {depth} after {timeout:?}, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
