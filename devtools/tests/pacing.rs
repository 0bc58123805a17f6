//! Pacing, fairness and the memory bound (SPEC "Delivery"), against a real Envoy with the real
//! `.wasm`: a slow receiver gets every event at its own pace, a consumer whose endpoints hang
//! does not hold back another's, and a receiver that keeps failing fills the queue only up to
//! `max_queue_bytes`. Every test counts what was lost: events detected = delivered + dropped
//! (+ still held).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use devtools::hostile::{HostilePeer, Misbehaviour};
use devtools::paced::{Pace, PacedReceiver};
use devtools::receiver::describe;
use devtools::{Envoy, Receiver, Reply, Stack};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn subscription(id: &str, consumer: &str, url: &str) -> Value {
    json!({"id": id, "consumer": consumer, "url": url, "events": ["*"], "secret": SECRET})
}

fn config(subscriptions: Vec<Value>, delivery: Value) -> Value {
    let mut settings = json!({"allow_insecure_destinations": true});
    if let (Some(base), Some(extra)) = (settings.as_object_mut(), delivery.as_object()) {
        base.extend(extra.clone());
    }
    // The API's writes carry no key: the events are for every consumer.
    json!({"audience": "all", "subscriptions": subscriptions, "delivery": settings})
}

/// Events `from..to`, `parallel` at a time.
async fn produce_many(
    stack: &Stack,
    from: usize,
    to: usize,
    parallel: usize,
    pad: usize,
) -> Result<()> {
    stream::iter(from..to)
        .map(|n| stack.produce_with(json!({ "n": n, "pad": "x".repeat(pad) })))
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn rss_bytes(envoy: &Envoy) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy.pid()))?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kb * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_receiver_gets_every_event_once_at_its_own_pace() -> Result<()> {
    const EVENTS: usize = 20_000;
    // ~1,000 requests/s, a small backlog, 48 connections at most: the old fixed 256 attempts
    // at once overran it and lost events.
    let pace = Pace {
        rate: 1000,
        max_connections: 48,
        backlog: 16,
    };
    let slow = PacedReceiver::start(pace).await?;
    let url = slow.url("/hook");
    let stack = Stack::start(|_| {
        config(
            vec![subscription("sub_slow", "tests", &url)],
            json!({"timeout": "5s", "retry_schedule": ["0s", "1s", "2s", "5s", "10s", "30s"]}),
        )
    })
    .await?;

    let started = Instant::now();
    produce_many(&stack, 0, EVENTS, 64, 0).await?;
    let produced_in = started.elapsed();
    stack
        .envoy
        .wait_for_counter(
            "webhooks_deliveries_succeeded",
            EVENTS as u64,
            Duration::from_secs(120),
        )
        .await?;
    let delivered_in = started.elapsed();

    let detected = stack.envoy.counter("webhooks_events_detected").await?;
    let dropped = stack.envoy.counter("webhooks_events_dropped").await?;
    let failed = stack.envoy.counter("webhooks_deliveries_failed").await?;
    let books = slow.delivered();
    let twice = books.values().filter(|n| **n > 1).count();
    eprintln!(
        "slow receiver: {EVENTS} events produced in {produced_in:?}, all delivered after \
         {delivered_in:?} ({:.0}/s), {failed} failed attempts, {dropped} dropped, {} connections \
         refused by the receiver",
        EVENTS as f64 / delivered_in.as_secs_f64(),
        slow.refused_connections()
    );
    ensure!(detected == EVENTS as u64, "{detected} events detected");
    ensure!(dropped == 0, "{dropped} events dropped");
    ensure!(
        books.len() == EVENTS && twice == 0,
        "{} webhook-ids delivered, {twice} of them more than once",
        books.len()
    );
    ensure!(
        failed as f64 <= 0.02 * EVENTS as f64,
        "{failed} failed attempts for {EVENTS} deliveries (more than 2%)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_whose_endpoints_hang_does_not_hold_back_another() -> Result<()> {
    const EVENTS: usize = 60;
    let hang = HostilePeer::start(Misbehaviour::Hang).await?;
    let stack = Stack::start(|rx| {
        let mut subs: Vec<Value> = (0..20)
            .map(|i| subscription(&format!("sub_a{i}"), "a", &hang.url(&format!("/hook{i}"))))
            .collect();
        subs.push(subscription("sub_b", "b", &rx.url("/hook")));
        config(
            subs,
            json!({"timeout": "10s", "retry_schedule": ["0s", "10s"]}),
        )
    })
    .await?;

    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    let last_produced = Instant::now();
    let hooks = stack.webhooks(EVENTS, Duration::from_secs(3)).await?;
    let last_arrival = hooks.iter().map(|h| h.at).max().unwrap_or(last_produced);
    eprintln!(
        "fairness: consumer b got all {EVENTS} events {:?} after the last was produced; \
         {} attempts hanging at consumer a's endpoint",
        last_arrival.saturating_duration_since(last_produced),
        hang.requests()
    );
    ensure!(hooks.len() == EVENTS, "b got {}", describe(&hooks));
    for hook in &hooks {
        hook.verify(SECRET)?;
    }
    ensure!(hang.requests() > 0, "consumer a's endpoint saw no attempt");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_fills_the_queue_only_up_to_max_queue_bytes() -> Result<()> {
    const MAX_BYTES: u64 = 2 * 1024 * 1024;
    const PAD: usize = 8 * 1024;
    const HALF: usize = 400;
    let failing = Receiver::start().await?;
    failing.set_default(Reply::status(503));
    let failing_url = failing.url("/hook");
    let stack = Stack::start(|rx| {
        config(
            vec![
                subscription("sub_failing", "a", &failing_url),
                subscription("sub_healthy", "b", &rx.url("/hook")),
            ],
            json!({"retry_schedule": ["0s", "1h"], "max_queue_bytes": MAX_BYTES}),
        )
    })
    .await?;

    produce_many(&stack, 0, HALF, 16, PAD).await?;
    stack.webhooks(HALF, Duration::from_secs(20)).await?;
    let after_half = rss_bytes(&stack.envoy)?;
    produce_many(&stack, HALF, 2 * HALF, 16, PAD).await?;
    // New events still flow: the healthy subscription gets every one.
    let hooks = stack.webhooks(2 * HALF, Duration::from_secs(20)).await?;
    let after_all = rss_bytes(&stack.envoy)?;

    let bytes = stack.envoy.gauge("webhooks_queue_bytes").await?;
    let depth = stack.envoy.gauge("webhooks_queue_depth").await?;
    let dropped = stack.envoy.counter("webhooks_events_dropped").await?;
    let succeeded = stack.envoy.counter("webhooks_deliveries_succeeded").await?;
    let detected = stack.envoy.counter("webhooks_events_detected").await?;
    let growth = after_all.saturating_sub(after_half);
    eprintln!(
        "memory bound: {} events of ~{PAD} bytes, queue {bytes} bytes in {depth} messages \
         (max {MAX_BYTES}), {dropped} dropped, RSS {after_half} → {after_all} (+{growth})",
        2 * HALF
    );
    ensure!(hooks.len() == 2 * HALF, "healthy got {}", hooks.len());
    ensure!(
        bytes <= MAX_BYTES,
        "queue holds {bytes} bytes, more than {MAX_BYTES}"
    );
    ensure!(
        dropped > 0,
        "nothing was dropped: the bound was never reached"
    );
    // Two messages per event: delivered, dropped, or still held (the failing one's retries).
    ensure!(
        2 * detected == succeeded + dropped + depth,
        "{detected} events: {succeeded} delivered + {dropped} dropped + {depth} held"
    );
    // The second half alone would add HALF × PAD ≈ 3.3 MB if it were all held.
    ensure!(
        growth < (HALF * PAD / 2) as u64,
        "RSS grew by {growth} bytes while the queue was full"
    );
    Ok(())
}
