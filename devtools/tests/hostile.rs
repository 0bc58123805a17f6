//! Receivers that misbehave (SPEC "Delivery": any receiver behaviour is one failed attempt of
//! that message, nothing more), against a real Envoy with the real `.wasm`.
//!
//! One subscription per misbehaviour, all of consumer `hostile`, beside one healthy
//! subscription of consumer `healthy`: the healthy one gets every event, each hostile one logs
//! failed attempts with a reason, and the dispatcher never panics.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use devtools::hostile::{HostilePeer, Misbehaviour};
use devtools::receiver::describe;
use devtools::{poll_until, Stack};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// An API key and its SHA-256 (`printf test-key | sha256sum`), for consumer `hostile`.
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const WAIT: Duration = Duration::from_secs(15);

fn subscription(id: &str, consumer: &str, url: &str) -> Value {
    json!({"id": id, "consumer": consumer, "url": url, "events": ["*"], "secret": SECRET})
}

/// The hostile subscriptions: one per raw-socket misbehaviour, plus a TLS failure (https to a
/// plain-HTTP port) and a DNS failure (a name that cannot resolve).
fn hostile_subscriptions(peers: &[(Misbehaviour, HostilePeer)], plain_port: u16) -> Vec<Value> {
    let mut subs: Vec<Value> = peers
        .iter()
        .map(|(m, peer)| subscription(&format!("sub_{}", m.name()), "hostile", &peer.url("/hook")))
        .collect();
    subs.push(subscription(
        "sub_tls_failure",
        "hostile",
        &format!("https://127.0.0.1:{plain_port}/hook"),
    ));
    subs.push(subscription(
        "sub_dns_failure",
        "hostile",
        "http://no-such-host.invalid/hook",
    ));
    subs
}

/// The attempt log of a hostile subscription, through the API.
async fn attempt_log(stack: &Stack, id: &str) -> Result<Vec<Value>> {
    let response = stack
        .client
        .get(
            stack
                .envoy
                .url(&format!("/webhooks/subscriptions/{id}/deliveries")),
        )
        .header("x-api-key", TEST_KEY)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "deliveries of {id}: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(body["data"].as_array().cloned().unwrap_or_default())
}

/// A failed attempt with a reason: an error, or a receiver status that is no success.
fn failed_with_reason(entry: &Value) -> bool {
    let state_failed = matches!(
        entry["state"].as_str(),
        Some("retrying" | "failed" | "exhausted")
    );
    let error = entry["error"].as_str().is_some_and(|e| !e.is_empty());
    let status = entry["response_status"]
        .as_u64()
        .is_some_and(|s| !(200..300).contains(&s));
    state_failed && (error || status)
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_receivers_fail_attempts_and_never_stop_delivery() -> Result<()> {
    let mut peers = Vec::new();
    for m in Misbehaviour::ALL {
        peers.push((m, HostilePeer::start(m).await?));
    }
    let stack = Stack::start(|rx| {
        let mut subs = hostile_subscriptions(&peers, rx.port());
        subs.push(subscription("sub_healthy", "healthy", &rx.url("/hook")));
        json!({
            "audience": "all",
            "api": {"keys": [{"consumer": "hostile", "sha256": TEST_KEY_SHA256}]},
            "subscriptions": subs,
            "delivery": {"timeout": "1s", "retry_schedule": ["0s", "200ms"], "jitter": 0,
                         "allow_insecure_destinations": true}
        })
    })
    .await?;

    const EVENTS: usize = 5;
    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    let hooks = stack.webhooks(EVENTS, WAIT).await?;
    for hook in &hooks {
        hook.verify(SECRET)?;
    }

    // Every hostile subscription logs failed attempts, each with a reason.
    let mut ids: Vec<String> = peers
        .iter()
        .map(|(m, _)| format!("sub_{}", m.name()))
        .collect();
    ids.extend(["sub_tls_failure".to_string(), "sub_dns_failure".to_string()]);
    let deadline = Instant::now() + WAIT;
    for id in &ids {
        loop {
            let log = attempt_log(&stack, id).await?;
            if log.iter().any(failed_with_reason) {
                eprintln!("{id}: {}", log.first().cloned().unwrap_or_default());
                break;
            }
            if Instant::now() >= deadline {
                bail!("{id} has no failed attempt with a reason: {log:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (m, peer) in &peers {
        ensure!(peer.requests() >= 1, "{} saw no request", m.name());
    }

    // Still delivering once every hostile attempt has been answered or timed out.
    stack
        .envoy
        .wait_for_counter(
            "webhooks_deliveries_exhausted",
            (EVENTS * ids.len()) as u64,
            WAIT,
        )
        .await?;
    stack.produce(EVENTS).await?;
    let hooks = stack.webhooks(EVENTS + 1, WAIT).await?;
    ensure!(
        hooks.len() == EVENTS + 1,
        "healthy got {}",
        describe(&hooks)
    );
    // The workers' watchdogs see the dispatcher's heartbeat (they look once a second).
    poll_until(WAIT, "webhooks_dispatcher_alive 1", async || {
        stack.envoy.gauge("webhooks_dispatcher_alive").await.ok() == Some(1)
    })
    .await?;
    let log = stack.envoy.log_contents();
    ensure!(
        !log.contains("panicked") && !log.contains("the dispatcher has not run"),
        "the plugin panicked:\n{}",
        stack.envoy.log_tail(40)
    );
    ensure!(
        stack.envoy.counter("webhooks_events_detected").await? == EVENTS as u64 + 1,
        "events detected"
    );
    ensure!(
        stack.envoy.counter("webhooks_events_dropped").await? == 0,
        "events dropped"
    );
    Ok(())
}

/// The endless-body test: `max_in_flight`, and endless subscriptions enough to fill it even
/// once each one's pacing window has shrunk to one (every reset halves it).
const MAX_IN_FLIGHT: usize = 128;
const ENDLESS_CONSUMERS: usize = 4;
const ENDLESS_PER_CONSUMER: usize = 40;
/// Envoy's RSS may grow at most this much while they stream.
const RSS_GROWTH_MAX: u64 = 64 << 20;
/// What the delivery log says when Envoy resets an answer over its buffer limit.
const RESET_OR_TOO_LARGE: &str = "connection reset, or an answer larger than 262144 bytes";

/// A healthy subscription (consumer `healthy`) beside `ENDLESS_CONSUMERS` consumers whose
/// subscriptions all answer `200` and stream an endless body; the first of them, `endless0`,
/// holds the test API key.
async fn endless_stack(peer: &HostilePeer, answer_limit: bool) -> Result<Stack> {
    Stack::start_with(
        |rx| {
            let mut subs = vec![subscription("sub_healthy", "healthy", &rx.url("/hook"))];
            for c in 0..ENDLESS_CONSUMERS {
                for s in 0..ENDLESS_PER_CONSUMER {
                    let url = peer.url(&format!("/hook/{c}/{s}"));
                    subs.push(subscription(
                        &format!("sub_endless_{c}_{s}"),
                        &format!("endless{c}"),
                        &url,
                    ));
                }
            }
            json!({
                "audience": "all",
                "api": {"keys": [{"consumer": "endless0", "sha256": TEST_KEY_SHA256}]},
                "subscriptions": subs,
                "delivery": {"timeout": "2s", "retry_schedule": ["0s", "100ms"], "jitter": 0,
                             "max_in_flight": MAX_IN_FLIGHT, "allow_insecure_destinations": true}
            })
        },
        |cfg| {
            if answer_limit {
                cfg
            } else {
                cfg.without_answer_limit()
            }
        },
    )
    .await
}

/// Samples Envoy's RSS every 20 ms until `done` (polled every 100 ms) or `timeout`; returns
/// the largest growth over `baseline` seen.
async fn peak_growth<F>(stack: &Stack, baseline: u64, timeout: Duration, mut done: F) -> Result<u64>
where
    F: AsyncFnMut(u64) -> Result<bool>,
{
    let deadline = Instant::now() + timeout;
    let mut peak = 0;
    let mut n = 0u32;
    loop {
        let growth = stack.envoy.rss_bytes()?.saturating_sub(baseline);
        peak = peak.max(growth);
        if n.is_multiple_of(5) && done(peak).await? {
            return Ok(peak);
        }
        if Instant::now() >= deadline {
            bail!(
                "not done within {timeout:?}; RSS grew by {} MB at most",
                peak >> 20
            );
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_answers_hold_little_memory_and_fail_their_attempts() -> Result<()> {
    const EVENTS: usize = 10;
    let peer = HostilePeer::start(Misbehaviour::EndlessBody).await?;
    let stack = endless_stack(&peer, true).await?;
    let baseline = stack.envoy.rss_bytes()?;
    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    // Every endless message uses up its two attempts, as many at once as max_in_flight allows.
    let endless = (EVENTS * ENDLESS_CONSUMERS * ENDLESS_PER_CONSUMER) as u64;
    let peak = peak_growth(&stack, baseline, Duration::from_secs(60), async |_| {
        Ok(stack.envoy.counter("webhooks_deliveries_exhausted").await? >= endless)
    })
    .await?;
    eprintln!(
        "RSS {} MB at start, grew by {:.1} MB at most; {} endless answers at once at most, {} in all",
        baseline >> 20,
        peak as f64 / f64::from(1 << 20),
        peer.peak_open(),
        peer.requests()
    );
    ensure!(
        peer.peak_open() >= MAX_IN_FLIGHT * 3 / 4,
        "only {} endless answers at once: the test did not fill max_in_flight",
        peer.peak_open()
    );
    ensure!(
        peak <= RSS_GROWTH_MAX,
        "Envoy's RSS grew by {} MB (at most {} MB)",
        peak >> 20,
        RSS_GROWTH_MAX >> 20
    );
    // The healthy consumer got every event: detected = delivered + dropped, none dropped.
    let hooks = stack.webhooks(EVENTS, WAIT).await?;
    ensure!(hooks.len() == EVENTS, "healthy got {}", describe(&hooks));
    ensure!(stack.envoy.counter("webhooks_events_detected").await? == EVENTS as u64);
    ensure!(stack.envoy.counter("webhooks_events_dropped").await? == 0);
    // Each endless attempt failed, saying why (besides them, the log says which exhausted
    // messages are no longer kept for replay: 400 of endless0's against 200 kept).
    let log = attempt_log(&stack, "sub_endless_0_0").await?;
    let attempts: Vec<&Value> = log.iter().filter(|e| e["state"] != "expired").collect();
    ensure!(
        attempts.len() == 2 * EVENTS && attempts.iter().all(|e| e["error"] == RESET_OR_TOO_LARGE),
        "{log:?}"
    );
    Ok(())
}

/// The control: without `http.async_response_buffer_limit` the same receivers make Envoy
/// hold far more (stopped as soon as it passes the bound the test above holds it to).
#[tokio::test(flavor = "multi_thread")]
async fn without_the_answer_limit_endless_answers_hold_much_more() -> Result<()> {
    let peer = HostilePeer::start(Misbehaviour::EndlessBody).await?;
    let stack = endless_stack(&peer, false).await?;
    let baseline = stack.envoy.rss_bytes()?;
    for n in 0..2 {
        stack.produce(n).await?;
    }
    let peak = peak_growth(&stack, baseline, Duration::from_secs(20), async |peak| {
        Ok(peak > RSS_GROWTH_MAX)
    })
    .await?;
    eprintln!("without the limit RSS grew by {} MB", peak >> 20);
    Ok(())
}
