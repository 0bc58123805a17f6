//! Delivery that survives failing receivers (SPEC.md, "Delivery" and "Observability"), against a
//! real Envoy with the real `.wasm`.
//!
//! Schedules are short (hundreds of milliseconds) so the file runs in seconds. Attempt spacing is
//! measured with the receiver's arrival instants: the lower bound is the schedule minus jitter
//! (minus 20 ms of measuring noise), the upper bound adds generous slack for the dispatcher's
//! 100 ms tick and a busy CI machine. Nothing sleeps to wait for an event; the few sleeps there
//! are *make* a timed condition (a receiver that is down for 2 s, a retry window that must pass
//! before "nothing more arrived" means anything).
//!
//! The subscription API is used where the contract needs it: the attempt log, re-enabling a
//! disabled subscription, replay, and secret rotation.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use devtools::receiver::describe;
use devtools::{api, free_port, Envoy, Received, Receiver, Reply, Stack};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
/// How long a webhook or a counter may take to arrive.
const WAIT: Duration = Duration::from_secs(10);
/// The default test schedule and jitter (see [`config`]).
const SCHEDULE_MS: [u64; 3] = [0, 300, 600];
const JITTER: f64 = 0.2;
/// Above the schedule: the dispatcher looks at due retries every 100 ms, plus CI noise.
const SLACK: Duration = Duration::from_millis(300);

fn subscription(id: &str, url: &str) -> Value {
    json!({"id": id, "consumer": "tests", "url": url, "events": ["*"], "secret": SECRET})
}

/// A plugin configuration with these static subscriptions, events inferred from the API's
/// responses (`POST /orders` is `orders.created`), a short schedule, and `delivery` fields
/// overriding the defaults of this file.
fn config(subscriptions: Value, delivery: Value) -> Value {
    let mut settings = json!({
        "timeout": "1s",
        "retry_schedule": ["0s", "300ms", "600ms"],
        "jitter": JITTER,
        "allow_insecure_destinations": true
    });
    if let (Some(base), Some(extra)) = (settings.as_object_mut(), delivery.as_object()) {
        base.extend(extra.clone());
    }
    json!({
        // Events from key-less writes go to every subscription (audiences: subscriptions.rs).
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "subscriptions": subscriptions,
        "delivery": settings
    })
}

/// One subscription (`sub_rx`) at the stack's receiver.
fn to_receiver(rx: &Receiver, delivery: Value) -> Value {
    config(json!([subscription("sub_rx", &rx.url("/hook"))]), delivery)
}

/// The `n` of an event produced by `Stack::produce`.
fn event_n(hook: &Received) -> Option<u64> {
    hook.json().ok()?["data"]["object"]["n"].as_u64()
}

fn webhook_id(hook: &Received) -> String {
    hook.header("webhook-id").unwrap_or_default().to_string()
}

/// Every request is the same message: one webhook-id, one body, a valid signature.
fn same_message(hooks: &[Received]) -> Result<()> {
    let first = hooks.first().context("no webhooks")?;
    for hook in hooks {
        hook.verify(SECRET).context("signature")?;
        ensure!(
            webhook_id(hook) == webhook_id(first) && hook.body == first.body,
            "not one message: {}",
            describe(hooks)
        );
    }
    Ok(())
}

/// The time between two arrivals is `delay` ± jitter (+ [`SLACK`] above); returns it.
fn check_gap(from: &Received, to: &Received, delay_ms: u64) -> Result<Duration> {
    let gap = to.at.duration_since(from.at);
    let delay = delay_ms as f64;
    let min = Duration::from_millis((delay * (1.0 - JITTER)) as u64).saturating_sub(ms(20));
    let max = Duration::from_millis((delay * (1.0 + JITTER)) as u64) + SLACK;
    ensure!(
        gap >= min && gap <= max,
        "attempts {gap:?} apart, expected {min:?}..={max:?} for a {delay_ms} ms delay ± {JITTER}"
    );
    Ok(gap)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls a gauge until it equals `want`.
async fn wait_for_gauge(envoy: &Envoy, name: &str, want: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = envoy.gauge(name).await?;
        if value == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("gauge {name} is {value} after {WAIT:?}, expected {want}");
        }
        tokio::time::sleep(ms(20)).await;
    }
}

/// Exact counter values.
async fn check_counters(envoy: &Envoy, expected: &[(&str, u64)]) -> Result<()> {
    for (name, want) in expected {
        let value = envoy.counter(name).await?;
        ensure!(value == *want, "{name} is {value}, expected {want}");
    }
    Ok(())
}

/// Polls the subscription's attempt log until its latest entry for `webhook_id` has `state`.
async fn wait_for_logged_state(
    stack: &Stack,
    subscription: &str,
    webhook_id: &str,
    state: &str,
) -> Result<()> {
    let path = format!("/webhooks/subscriptions/{subscription}/deliveries");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api(&stack.envoy, TEST_KEY, "GET", &path, None).await?;
        ensure!(status == 200, "{path} answered {status}: {body}");
        let latest = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["webhook_id"] == webhook_id);
        if latest.is_some_and(|e| e["state"] == state) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{webhook_id} not {state} in the attempt log after {WAIT:?}: {body}");
        }
        tokio::time::sleep(ms(20)).await;
    }
}

/// Sleeps until `at` (to let a window pass, never to wait for an event).
async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

// 1 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_on_schedule_as_one_message() -> Result<()> {
    let stack = Stack::start(|rx| to_receiver(rx, json!({}))).await?;
    stack
        .receiver
        .push_replies([Reply::status(500), Reply::status(500), Reply::status(200)]);
    stack.produce(1).await?;

    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    // After the success nothing is left to retry: these are all the attempts there will be.
    let hooks = stack.receiver.received();
    ensure!(
        hooks.len() == 3,
        "expected 3 attempts: {}",
        describe(&hooks)
    );
    same_message(&hooks)?;
    let first = check_gap(&hooks[0], &hooks[1], SCHEDULE_MS[1])?;
    let second = check_gap(&hooks[1], &hooks[2], SCHEDULE_MS[2])?;
    eprintln!("500, 500, 200: attempts {first:?} and {second:?} apart");
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_deliveries_succeeded", 1),
            ("webhooks_deliveries_failed", 2),
            ("webhooks_delivery_attempts", 3),
            ("webhooks_deliveries_exhausted", 0),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_log_lists_every_attempt() -> Result<()> {
    let stack = Stack::start(|rx| to_receiver(rx, json!({}))).await?;
    stack
        .receiver
        .push_replies([Reply::status(500), Reply::status(500), Reply::status(200)]);
    stack.produce(1).await?;
    let hooks = stack.webhooks(3, WAIT).await?;
    let id = webhook_id(&hooks[0]);

    // The log is written on the dispatcher's next tick: poll for it.
    let deadline = Instant::now() + WAIT;
    let entries = loop {
        let (status, body) = api(
            &stack.envoy,
            TEST_KEY,
            "GET",
            "/webhooks/subscriptions/sub_rx/deliveries",
            None,
        )
        .await?;
        ensure!(status == 200, "deliveries answered {status}: {body}");
        let entries: Vec<Value> = body["data"]
            .as_array()
            .or_else(|| body.as_array())
            .cloned()
            .unwrap_or_default();
        if entries.len() >= 3 {
            break entries;
        }
        if Instant::now() >= deadline {
            bail!("attempt log after {WAIT:?}: {body}");
        }
        tokio::time::sleep(ms(50)).await;
    };
    let mut seen: Vec<(u64, u64)> = entries
        .iter()
        .map(|e| {
            ensure!(e["webhook_id"] == id.as_str(), "{e}");
            ensure!(e["event_type"] == "orders.created", "{e}");
            Ok((
                e["attempt"].as_u64().unwrap_or(0),
                e["response_status"].as_u64().unwrap_or(0),
            ))
        })
        .collect::<Result<_>>()?;
    seen.sort();
    ensure!(seen == [(1, 500), (2, 500), (3, 200)], "{entries:?}");
    Ok(())
}

// 2 ------------------------------------------------------------------------------------------

/// A receiver answering 410 and a healthy one, each with its own subscription to everything.
async fn gone_and_live() -> Result<(Receiver, Stack)> {
    let gone = Receiver::start().await?;
    gone.set_default(Reply::status(410));
    let gone_url = gone.url("/hook");
    let stack = Stack::start(|rx| {
        let subs = json!([
            subscription("sub_gone", &gone_url),
            subscription("sub_live", &rx.url("/hook"))
        ]);
        config(subs, json!({}))
    })
    .await?;
    wait_for_gauge(&stack.envoy, "webhooks_subscriptions_active", 2).await?;
    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_subscriptions_disabled", 1, WAIT)
        .await?;
    wait_for_gauge(&stack.envoy, "webhooks_subscriptions_active", 1).await?;
    stack.webhooks(1, WAIT).await?;
    Ok((gone, stack))
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_disables_the_subscription_without_retrying() -> Result<()> {
    let (gone, stack) = gone_and_live().await?;
    stack.produce(2).await?;
    let live = stack.webhooks(2, WAIT).await?;
    let mut ns: Vec<_> = live.iter().filter_map(event_n).collect();
    ns.sort();
    ensure!(
        ns == [1, 2],
        "the live subscription got {}",
        describe(&live)
    );

    // Had the 410 been retried, the retry would have come 300 ms ± 20 % after it: let that
    // window pass before concluding that nothing more came.
    let first = gone
        .received()
        .first()
        .cloned()
        .context("sub_gone got nothing")?;
    sleep_until(first.at + ms(360) + SLACK).await;
    let got = gone.received();
    ensure!(
        got.len() == 1 && event_n(&got[0]) == Some(1),
        "the gone receiver should have seen event 1 once and nothing after: {}",
        describe(&got)
    );
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_subscriptions_disabled", 1),
            ("webhooks_delivery_attempts", 3),
            ("webhooks_deliveries_failed", 1),
            ("webhooks_deliveries_succeeded", 2),
            ("webhooks_deliveries_exhausted", 0),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_subscription_can_be_re_enabled() -> Result<()> {
    // Static subscriptions belong to the configuration (PATCH answers 409): use an API one.
    let gone = Receiver::start().await?;
    gone.set_default(Reply::status(410));
    let stack = Stack::start(|_| config(json!([]), json!({}))).await?;
    let create = json!({"url": gone.url("/hook"), "events": ["*"]});
    let (status, created) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(create),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let id = created["id"].as_str().context("no id")?.to_string();
    let secret = created["secret"].as_str().context("no secret")?.to_string();
    let path = format!("/webhooks/subscriptions/{id}");

    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_subscriptions_disabled", 1, WAIT)
        .await?;
    let (status, body) = api(&stack.envoy, TEST_KEY, "GET", &path, None).await?;
    ensure!(status == 200, "GET answered {status}: {body}");
    ensure!(body["status"] == "disabled", "{body}");
    ensure!(body["disabled_reason"] == "gone", "{body}");

    gone.set_default(Reply::status(204));
    let patch = json!({"status": "active"});
    let (status, body) = api(&stack.envoy, TEST_KEY, "PATCH", &path, Some(patch)).await?;
    ensure!(status == 200, "PATCH answered {status}: {body}");
    ensure!(body["status"] == "active", "{body}");

    stack.produce(2).await?;
    let got = gone.wait_for(2, WAIT).await?;
    ensure!(got.len() == 2, "{}", describe(&got));
    ensure!(
        event_n(&got[1]) == Some(2) && got[1].replied == 204,
        "{}",
        describe(&got)
    );
    got[1].verify(&secret)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_failing_for_disable_after_is_disabled() -> Result<()> {
    let failing = Receiver::start().await?;
    failing.set_default(Reply::status(500));
    let delivery = json!({
        "disable_after": "1s",
        "jitter": 0,
        "retry_schedule": ["0s", "400ms", "400ms", "400ms", "400ms", "400ms", "400ms"]
    });
    let stack = Stack::start(|_| config(json!([]), delivery)).await?;
    let create = json!({"url": failing.url("/hook"), "events": ["*"]});
    let (status, created) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(create),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let path = format!(
        "/webhooks/subscriptions/{}",
        created["id"].as_str().context("id")?
    );

    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_subscriptions_disabled", 1, WAIT)
        .await?;
    let (_, body) = api(&stack.envoy, TEST_KEY, "GET", &path, None).await?;
    ensure!(body["disabled_reason"] == "failing", "{body}");
    let attempts = failing.received();
    let span = attempts.last().context("no attempt")?.at - attempts[0].at;
    // Disabled at the first failure that ends 1 s or more after the first attempt began: with
    // attempts 400 ms apart (plus up to a 100 ms tick each) that is the third or the fourth.
    ensure!(
        (3..=4).contains(&attempts.len()) && span >= ms(900),
        "disabled after {span:?}: {}",
        describe(&attempts)
    );

    // Re-enabled, it gets the whole disable_after again: one more failure does not disable it.
    let (status, body) = api(
        &stack.envoy,
        TEST_KEY,
        "PATCH",
        &path,
        Some(json!({"status": "active"})),
    )
    .await?;
    ensure!(
        status == 200 && body["status"] == "active",
        "{status}: {body}"
    );
    stack.produce(2).await?;
    failing.wait_for(5, WAIT).await?;
    // The dispatcher has judged that fifth attempt once it counted it as failed.
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_failed", 5, WAIT)
        .await?;
    let (_, body) = api(&stack.envoy, TEST_KEY, "GET", &path, None).await?;
    ensure!(body["status"] == "active", "disabled again at once: {body}");
    Ok(())
}

// 3 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_longer_than_the_schedule_is_honoured() -> Result<()> {
    let schedule = json!({"retry_schedule": ["0s", "100ms", "100ms"]});
    let stack = Stack::start(|rx| to_receiver(rx, schedule)).await?;
    stack
        .receiver
        .push_replies([Reply::status(429).retry_after("2")]);
    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    let hooks = stack.receiver.received();
    ensure!(hooks.len() == 2, "{}", describe(&hooks));
    same_message(&hooks)?;
    let gap = hooks[1].at.duration_since(hooks[0].at);
    eprintln!("429 Retry-After: 2 on a 100 ms schedule: next attempt {gap:?} later");
    ensure!(
        gap >= ms(2000),
        "retried {gap:?} after a 429 asking for 2 s"
    );
    ensure!(gap <= ms(2000 + 120) + SLACK, "retried only {gap:?} later");
    Ok(())
}

// 4 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_receiver_times_out_and_is_retried() -> Result<()> {
    const HANG: Duration = Duration::from_secs(3);
    let stack = Stack::start(|rx| to_receiver(rx, json!({"timeout": "1s"}))).await?;
    stack
        .receiver
        .push_replies([Reply::status(204).delay(HANG)]);
    stack.produce(1).await?;
    let first = stack.webhooks(1, WAIT).await?.remove(0);

    // While the receiver hangs, the API answers as fast as ever, events included.
    let started = Instant::now();
    let read = stack.send("GET", "/orders", &[]).await?;
    ensure!(read.status == 200);
    let get_took = started.elapsed();
    stack.produce(2).await?;
    let both_took = started.elapsed();
    ensure!(
        first.at.elapsed() < ms(1000),
        "the API calls ended after the delivery timed out: they prove nothing"
    );
    eprintln!("while the receiver hangs: GET {get_took:?}, GET + POST {both_took:?}");
    ensure!(
        both_took < ms(500),
        "API calls took {both_took:?} while the receiver hangs"
    );

    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 2, WAIT)
        .await?;
    let hooks = stack.receiver.received();
    let ones: Vec<Received> = hooks
        .iter()
        .filter(|h| event_n(h) == Some(1))
        .cloned()
        .collect();
    ensure!(ones.len() == 2, "event 1: {}", describe(&hooks));
    same_message(&ones)?;
    // The retry comes a timeout after the first attempt, plus the schedule's second delay.
    let gap = ones[1].at.duration_since(ones[0].at);
    let min = ms(1000 + (300.0 * (1.0 - JITTER)) as u64 - 20);
    let max = ms(1000 + (300.0 * (1.0 + JITTER)) as u64) + SLACK;
    eprintln!("hanging receiver: retried {gap:?} after the first attempt");
    ensure!(
        gap >= min && gap <= max,
        "retried {gap:?} later, expected {min:?}..={max:?}"
    );
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_deliveries_failed", 1),
            ("webhooks_deliveries_succeeded", 2),
            ("webhooks_delivery_attempts", 3),
        ],
    )
    .await?;
    let log = stack.envoy.log_contents();
    let line = format!("webhook-id {}, attempt 1, timeout", webhook_id(&first));
    ensure!(log.contains(&line), "no log line with {line:?}");
    Ok(())
}

// 5 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_failures_and_not_followed() -> Result<()> {
    let target = Receiver::start().await?;
    let stack = Stack::start(|rx| to_receiver(rx, json!({}))).await?;
    stack
        .receiver
        .push_replies([Reply::status(302).location(&target.url("/moved"))]);
    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    let hooks = stack.receiver.received();
    ensure!(hooks.len() == 2, "{}", describe(&hooks));
    ensure!(hooks[0].replied == 302 && hooks[1].replied == 204);
    same_message(&hooks)?;
    check_gap(&hooks[0], &hooks[1], SCHEDULE_MS[1])?;
    // A followed redirect would have reached the target right after the 302, long before the
    // retry arrived.
    let moved = target.received();
    ensure!(
        moved.is_empty(),
        "the redirect was followed: {}",
        describe(&moved)
    );
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_deliveries_failed", 1),
            ("webhooks_deliveries_succeeded", 1),
            ("webhooks_delivery_attempts", 2),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connections_are_retried_until_exhausted() -> Result<()> {
    let closed = format!("http://127.0.0.1:{}/hook", free_port()?);
    let stack = Stack::start(|rx| {
        let subs = json!([
            subscription("sub_rx", &rx.url("/hook")),
            subscription("sub_closed", &closed)
        ]);
        config(subs, json!({}))
    })
    .await?;
    stack.produce(1).await?;
    stack.webhooks(1, WAIT).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_exhausted", 1, WAIT)
        .await?;
    // One attempt at the receiver, the whole schedule at the closed port.
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_delivery_attempts", 1 + SCHEDULE_MS.len() as u64),
            ("webhooks_deliveries_failed", SCHEDULE_MS.len() as u64),
            ("webhooks_deliveries_succeeded", 1),
            ("webhooks_deliveries_exhausted", 1),
        ],
    )
    .await?;
    let log = stack.envoy.log_contents();
    let refused = log
        .lines()
        .filter(|l| l.contains("subscription sub_closed") && l.contains("connection failed"))
        .count();
    ensure!(
        refused == SCHEDULE_MS.len(),
        "{refused} 'connection failed' log lines for sub_closed:\n{}",
        stack.envoy.log_tail(20)
    );
    ensure!(stack.receiver.received().len() == 1);
    Ok(())
}

// 6 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_message_is_replayed_unchanged() -> Result<()> {
    let schedule = json!({"retry_schedule": ["0s", "100ms"]});
    let stack = Stack::start(|rx| to_receiver(rx, schedule)).await?;
    stack.receiver.set_default(Reply::status(500));
    stack.produce(1).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_exhausted", 1, WAIT)
        .await?;
    let failed = stack.receiver.received();
    ensure!(failed.len() == 2, "{}", describe(&failed));
    same_message(&failed)?;

    let id = webhook_id(&failed[0]);
    // The attempt log (which the API consults) is written on the dispatcher's next tick.
    wait_for_logged_state(&stack, "sub_rx", &id, "exhausted").await?;
    stack.receiver.set_default(Reply::status(204));
    let (status, body) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        &format!("/webhooks/deliveries/{id}/retry"),
        None,
    )
    .await?;
    ensure!(status == 202, "retry answered {status}: {body}");
    let hooks = stack.webhooks(3, WAIT).await?;
    ensure!(hooks.len() == 3, "{}", describe(&hooks));
    same_message(&hooks)?;
    ensure!(hooks[2].replied == 204);
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    Ok(())
}

// 7 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_event_survives_a_receiver_outage() -> Result<()> {
    const EVENTS: usize = 500;
    const DOWN: Duration = Duration::from_secs(2);
    let delivery = json!({
        "timeout": "2s",
        "retry_schedule": ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s"]
    });
    let stack = Stack::start(|rx| to_receiver(rx, delivery)).await?;
    stack.receiver.set_default(Reply::status(503));
    let down_since = Instant::now();

    stream::iter(0..EVENTS)
        .map(|n| stack.produce(n))
        .buffer_unordered(20)
        .try_collect::<Vec<()>>()
        .await?;
    let produced_in = down_since.elapsed();
    // Events are counted when their stream ends, a moment after the client has its response.
    let detected = stack
        .envoy
        .wait_for_counter(
            "webhooks_events_detected",
            EVENTS as u64,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(detected == EVENTS as u64, "{detected} events detected");

    // The outage lasts DOWN from the first event, however fast they were produced.
    sleep_until(down_since + DOWN).await;
    let refused = stack.receiver.received().len();
    stack.receiver.set_default(Reply::status(204));
    let up_at = Instant::now();

    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", EVENTS as u64, ms(15_000))
        .await?;
    let recovered_in = up_at.elapsed();
    let hooks = stack.receiver.received();
    let delivered: Vec<&Received> = hooks.iter().filter(|h| h.replied == 204).collect();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for hook in &delivered {
        *per_id.entry(webhook_id(hook)).or_default() += 1;
    }
    let events: HashSet<u64> = delivered.iter().filter_map(|h| event_n(h)).collect();
    let duplicates = delivered.len() - per_id.len();
    let timeouts = stack.envoy.log_contents().matches(", timeout").count();
    eprintln!(
        "outage: {EVENTS} events produced in {produced_in:?}; {refused} attempts refused while down; \
         all delivered {recovered_in:?} after the receiver came back; {} deliveries, {} distinct \
         webhook-ids, {} distinct events, {duplicates} duplicates, {timeouts} timeouts",
        delivered.len(),
        per_id.len(),
        events.len()
    );
    ensure!(
        events.len() == EVENTS,
        "{} of {EVENTS} events delivered",
        events.len()
    );
    ensure!(
        per_id.len() == EVENTS,
        "{} webhook-ids for {EVENTS} events",
        per_id.len()
    );
    // At-least-once: a receiver sees a message twice only when an answer was lost (a timeout).
    ensure!(
        duplicates <= timeouts,
        "{duplicates} duplicate deliveries without a timeout to explain them"
    );
    let sample = delivered.first().context("nothing delivered")?;
    sample.verify(SECRET)?;
    check_counters(
        &stack.envoy,
        &[
            ("webhooks_deliveries_exhausted", 0),
            ("webhooks_events_dropped", 0),
        ],
    )
    .await?;
    // The receiver's 503s shrink its pacing window to one attempt at a time, so not every
    // event is tried while it is down; each that is, is refused.
    ensure!(
        refused > 0,
        "{refused} attempts refused while the receiver was down"
    );
    Ok(())
}

// 8 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_drops_old_retries_and_new_events_still_flow() -> Result<()> {
    let delivery = json!({"max_queue": 5, "retry_schedule": ["0s", "10s"]});
    let stack = Stack::start(|rx| to_receiver(rx, delivery)).await?;
    stack.receiver.set_default(Reply::status(500));
    for n in 0..10 {
        stack.produce(n).await?;
        // Attempted (and failed) before the next event comes.
        stack.webhooks(n + 1, WAIT).await?;
    }
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_failed", 10, WAIT)
        .await?;
    // Ten messages waiting 10 s for a retry, room for five: five are dropped, oldest first.
    let dropped = stack
        .envoy
        .wait_for_counter("webhooks_events_dropped", 5, WAIT)
        .await?;
    let depth = stack.envoy.gauge("webhooks_queue_depth").await?;
    eprintln!("max_queue 5, 10 events, receiver failing: {dropped} dropped, queue depth {depth}");
    ensure!(
        depth <= 5,
        "webhooks_queue_depth is {depth} with max_queue 5"
    );

    stack.receiver.set_default(Reply::status(204));
    stack.produce(10).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    let hooks = stack.receiver.received();
    let delivered: Vec<&Received> = hooks.iter().filter(|h| h.replied == 204).collect();
    ensure!(
        delivered.len() == 1 && event_n(delivered[0]) == Some(10),
        "{} delivered, expected only event 10: {}",
        delivered.len(),
        describe(&hooks)
    );
    let depth = stack.envoy.gauge("webhooks_queue_depth").await?;
    ensure!(
        depth <= 5,
        "webhooks_queue_depth is {depth} with max_queue 5"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_stays_bounded_while_attempts_hang() -> Result<()> {
    // Attempts in flight cannot be shed, so while every held message is in flight a newcomer
    // is the one shed: memory stays bounded, and every event is either held or dropped.
    let delivery = json!({"max_queue": 5, "timeout": "500ms", "retry_schedule": ["0s", "10s"]});
    let stack = Stack::start(|rx| to_receiver(rx, delivery)).await?;
    stack
        .receiver
        .set_default(Reply::status(204).delay(ms(1500)));
    for n in 0..10 {
        stack.produce(n).await?;
    }
    let detected = stack
        .envoy
        .wait_for_counter("webhooks_events_detected", 10, WAIT)
        .await?;
    let dropped = stack
        .envoy
        .wait_for_counter("webhooks_events_dropped", 5, WAIT)
        .await?;
    let depth = stack.envoy.gauge("webhooks_queue_depth").await?;
    let delivered = stack.envoy.counter("webhooks_deliveries_succeeded").await?;
    eprintln!("max_queue 5, 10 events, receiver hanging: {dropped} dropped, queue depth {depth}");
    ensure!(
        depth <= 5,
        "webhooks_queue_depth is {depth} with max_queue 5"
    );
    ensure!(
        detected == depth + dropped + delivered,
        "{detected} detected, {depth} held, {dropped} dropped, {delivered} delivered"
    );
    Ok(())
}

/// A second consumer's API key and its SHA-256 (`printf solo-key | sha256sum`).
const SOLO_KEY: &str = "solo-key";
const SOLO_KEY_SHA256: &str = "5b94cefc8f38a192c1c2bfe6007cf4a867b41a33948179e4fea0db56ea306b67";
/// Subscriptions of consumer `fan`, each on every `orders.*` event.
const FAN_SUBSCRIPTIONS: usize = 100;

/// Consumer `fan` (key `TEST_KEY`) with [`FAN_SUBSCRIPTIONS`] subscriptions on `orders.*`, and
/// consumer `solo` (key `SOLO_KEY`) with one on every event, all at the stack's receiver.
fn fan_and_solo(rx: &Receiver, delivery: Value) -> Value {
    let mut subs: Vec<Value> = (0..FAN_SUBSCRIPTIONS)
        .map(|n| {
            json!({"id": format!("sub_fan_{n}"), "consumer": "fan", "url": rx.url("/fan"),
                   "events": ["orders.*"], "secret": SECRET})
        })
        .collect();
    subs.push(
        json!({"id": "sub_solo", "consumer": "solo", "url": rx.url("/solo"),
                     "events": ["*"], "secret": SECRET}),
    );
    let mut config = config(json!(subs), delivery);
    config["api"]["keys"] = json!([
        {"consumer": "fan", "sha256": TEST_KEY_SHA256},
        {"consumer": "solo", "sha256": SOLO_KEY_SHA256}
    ]);
    config
}

/// `n` events only `solo` gets (`invoices.created`), then `m` that fan out to all of `fan`'s
/// subscriptions and to `solo` (`orders.created`), each attempted (and failed) before the next.
async fn solo_then_fan(stack: &Stack, n: usize, m: usize) -> Result<()> {
    for i in 0..n {
        let body = json!({ "invoice": i }).to_string();
        let sent = stack
            .send("POST", "/invoices", &[("x-test-body", body.as_str())])
            .await?;
        ensure!(
            sent.status == 201,
            "POST /invoices answered {}",
            sent.status
        );
        stack.webhooks(i + 1, WAIT).await?;
    }
    for i in 0..m {
        stack.produce(i).await?;
    }
    Ok(())
}

/// Dropped messages per subscription, from the dispatcher's log lines.
fn dropped_per_subscription(envoy: &Envoy) -> HashMap<String, usize> {
    let mut dropped = HashMap::new();
    for line in envoy.log_contents().lines() {
        let Some((_, rest)) = line.split_once("delivery dropped: queue full") else {
            continue;
        };
        let Some((_, sub)) = rest.split_once("subscription ") else {
            continue;
        };
        let sub = sub.split(',').next().unwrap_or_default().to_string();
        *dropped.entry(sub).or_default() += 1;
    }
    dropped
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_s_many_subscriptions_cannot_push_another_s_messages_out() -> Result<()> {
    // `solo`'s one subscription has the longest lane (23 waiting) but `fan` holds the most
    // bytes (303 messages): at the bound, fan's messages are the ones shed.
    const SOLO_ONLY: usize = 20;
    const ORDERS: usize = 3;
    let delivery = json!({"max_queue": 300, "retry_schedule": ["0s", "1h"], "jitter": 0});
    let stack = Stack::start(|rx| fan_and_solo(rx, delivery)).await?;
    stack.receiver.set_default(Reply::status(500));
    solo_then_fan(&stack, SOLO_ONLY, ORDERS).await?;
    let messages = (SOLO_ONLY + ORDERS * (FAN_SUBSCRIPTIONS + 1)) as u64;
    let over = messages - 300;
    stack
        .envoy
        .wait_for_counter(
            "webhooks_events_detected",
            (SOLO_ONLY + ORDERS) as u64,
            WAIT,
        )
        .await?;
    let dropped = stack
        .envoy
        .wait_for_counter("webhooks_events_dropped", over, WAIT)
        .await?;
    wait_for_gauge(&stack.envoy, "webhooks_queue_depth", 300).await?;
    // Every message is held or dropped (none delivered: the receiver fails them all).
    let delivered = stack.envoy.counter("webhooks_deliveries_succeeded").await?;
    ensure!(
        messages == 300 + dropped + delivered,
        "{messages} messages, 300 held, {dropped} dropped, {delivered} delivered"
    );
    let per_subscription = dropped_per_subscription(&stack.envoy);
    let solo = per_subscription.get("sub_solo").copied().unwrap_or(0);
    let fan: usize = per_subscription
        .iter()
        .filter(|(sub, _)| sub.starts_with("sub_fan_"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("{messages} messages, max_queue 300: dropped {fan} of fan's, {solo} of solo's");
    ensure!(
        solo == 0 && fan as u64 == dropped,
        "dropped {solo} of solo's and {fan} of fan's, {dropped} in all"
    );
    Ok(())
}

/// Webhook-ids whose latest attempt-log state is kept for replay (`exhausted`, `dropped` or
/// `failed`), over the subscriptions given, read with `key`.
async fn kept_for_replay(stack: &Stack, key: &str, subscriptions: &[String]) -> Result<usize> {
    let mut kept = 0;
    for sub in subscriptions {
        let path = format!("/webhooks/subscriptions/{sub}/deliveries");
        let (status, body) = api(&stack.envoy, key, "GET", &path, None).await?;
        ensure!(status == 200, "{path} answered {status}: {body}");
        let mut latest: HashMap<String, String> = HashMap::new();
        // Newest first: the first entry of a webhook-id is its state now.
        for entry in body["data"].as_array().into_iter().flatten() {
            let id = entry["webhook_id"].as_str().unwrap_or_default().to_string();
            let state = entry["state"].as_str().unwrap_or_default().to_string();
            latest.entry(id).or_insert(state);
        }
        kept += latest
            .values()
            .filter(|s| matches!(s.as_str(), "exhausted" | "dropped" | "failed"))
            .count();
    }
    Ok(kept)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_consumer_s_dead_messages_never_evict_another_s_from_replay() -> Result<()> {
    // Every attempt fails once and is exhausted: solo's 5 messages are kept first, then fan's
    // 300. Kept for replay: 100 in all, 20 per consumer.
    const SOLO_ONLY: usize = 5;
    const ORDERS: usize = 3;
    let delivery = json!({"retry_schedule": ["0s"], "max_replay": 100,
                          "max_replay_per_consumer": 20});
    let stack = Stack::start(|rx| fan_and_solo(rx, delivery)).await?;
    stack.receiver.set_default(Reply::status(500));
    solo_then_fan(&stack, SOLO_ONLY, ORDERS).await?;
    let messages = SOLO_ONLY + ORDERS * (FAN_SUBSCRIPTIONS + 1);
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_exhausted", messages as u64, WAIT)
        .await?;
    let fan_subs: Vec<String> = (0..FAN_SUBSCRIPTIONS)
        .map(|n| format!("sub_fan_{n}"))
        .collect();
    let solo_subs = ["sub_solo".to_string()];
    // The attempt log is written on the dispatcher's next tick.
    let deadline = Instant::now() + WAIT;
    let (mut fan, mut solo) = (0, 0);
    while Instant::now() < deadline {
        fan = kept_for_replay(&stack, TEST_KEY, &fan_subs).await?;
        solo = kept_for_replay(&stack, SOLO_KEY, &solo_subs).await?;
        if fan <= 20 && solo == SOLO_ONLY + ORDERS {
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    eprintln!(
        "kept for replay: {fan} of fan's 300, {solo} of solo's {}",
        SOLO_ONLY + ORDERS
    );
    ensure!(fan == 20, "{fan} of fan's kept, 20 at most per consumer");
    // solo's oldest, kept before fan's 300, can still be sent again.
    let first = stack
        .receiver
        .received()
        .into_iter()
        .find(|h| h.path == "/solo")
        .context("solo got nothing")?;
    let (status, body) = api(
        &stack.envoy,
        SOLO_KEY,
        "POST",
        &format!("/webhooks/deliveries/{}/retry", webhook_id(&first)),
        None,
    )
    .await?;
    ensure!(
        status == 202,
        "retry of solo's first answered {status}: {body}"
    );
    ensure!(solo == SOLO_ONLY + ORDERS, "{solo} of solo's kept");
    Ok(())
}

// 9 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn after_rotation_both_secrets_sign() -> Result<()> {
    let stack = Stack::start(|_| config(json!([]), json!({}))).await?;
    let url = stack.receiver.url("/hook");
    let create = json!({"url": url, "events": ["*"]});
    let (status, created) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(create),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let id = created["id"].as_str().context("no id")?.to_string();
    let old = created["secret"].as_str().context("no secret")?.to_string();
    let path = format!("/webhooks/subscriptions/{id}/rotate-secret");
    let (status, rotated) = api(&stack.envoy, TEST_KEY, "POST", &path, None).await?;
    ensure!(status == 200, "rotate answered {status}: {rotated}");
    let new = rotated["secret"]
        .as_str()
        .context("no new secret")?
        .to_string();
    ensure!(new != old && new.starts_with("whsec_"), "{rotated}");

    stack.produce(1).await?;
    let hook = stack.webhooks(1, WAIT).await?.remove(0);
    let header = hook.header("webhook-signature").unwrap_or_default();
    let signatures: Vec<&str> = header.split(' ').collect();
    ensure!(
        signatures.len() == 2 && signatures.iter().all(|s| s.starts_with("v1,")),
        "webhook-signature {header:?}"
    );
    // Each signature alone verifies with exactly one of the secrets, and each secret has one.
    let mut signers = Vec::new();
    for signature in &signatures {
        let mut headers = hook.headers.clone();
        headers.insert("webhook-signature", signature.parse()?);
        let by: Vec<&str> = [old.as_str(), new.as_str()]
            .into_iter()
            .filter(|s| devtools::receiver::verify(&headers, &hook.body, s).is_ok())
            .collect();
        ensure!(
            by.len() == 1,
            "{signature} verifies with {} secrets",
            by.len()
        );
        signers.push(by[0]);
    }
    signers.sort();
    let mut both = vec![old.as_str(), new.as_str()];
    both.sort();
    ensure!(signers == both, "both signatures are by the same secret");
    Ok(())
}

// 10 -----------------------------------------------------------------------------------------

/// What Envoy 1.40 does on SIGTERM, seen with `--log-level debug`: "caught ENVOY_SIGTERM",
/// "shutting down server instance" and "main dispatch loop exited" in the same millisecond; the
/// workers' VMs are destroyed, the egress clusters and the listener manager torn down, "exiting"
/// is logged, and only then, with no event loop left, is the dispatcher's `on_done` called (it
/// logs "draining 5 pending message(s)" and returns false). Envoy does not wait for it: the VM is
/// destroyed ("~Wasm 0 remaining active") in the same millisecond, `on_tick` never runs again, no
/// callout can start or finish, and `proxy_done` is never reached. The process exits ~25 ms after
/// SIGTERM with nothing delivered. (`Wasm::initializeLifecycle` registers a ShutdownExit
/// callback, but on the base VM, which is already gone after start-up, so nothing holds the
/// shutdown.) What does work is a drain period before the signal: see the next test.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "Envoy 1.40 does not wait for a wasm service's on_done: on SIGTERM the main loop exits at once and on_done runs during teardown (see the comment)"]
async fn shutdown_delivers_pending_messages_first() -> Result<()> {
    const EVENTS: usize = 5;
    // The first attempt waits 500 ms, so at SIGTERM every message is still pending; the receiver
    // then takes 500 ms to answer each.
    let delivery = json!({"timeout": "5s", "retry_schedule": ["500ms", "300ms"]});
    let mut stack = Stack::start(|rx| to_receiver(rx, delivery)).await?;
    stack
        .receiver
        .set_default(Reply::status(204).delay(ms(500)));
    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    // The dispatcher holds them all (the gauge is set when it takes events off the queue).
    wait_for_gauge(&stack.envoy, "webhooks_queue_depth", EVENTS as u64).await?;
    ensure!(
        stack.receiver.received().is_empty(),
        "delivered before SIGTERM: the test proves nothing"
    );

    let stopping = Instant::now();
    let status = stack.envoy.terminate(ms(15_000)).await?;
    let stopped_in = stopping.elapsed();
    let hooks = stack.receiver.received();
    let log = stack.envoy.log_contents();
    eprintln!(
        "shutdown: Envoy exited ({status}) {stopped_in:?} after SIGTERM with {} of {EVENTS} \
         webhooks received; log lines about draining:\n{}",
        hooks.len(),
        log.lines()
            .filter(|l| l.contains("drain") || l.contains("shutting down") || l.contains("exiting"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ns: HashSet<u64> = hooks.iter().filter_map(event_n).collect();
    ensure!(
        ns.len() == EVENTS,
        "{} of {EVENTS} pending webhooks arrived before Envoy exited: {}",
        ns.len(),
        describe(&hooks)
    );
    // Arrived is not enough: Envoy must also have waited for the receiver's (slow) answers.
    ensure!(
        stopped_in >= ms(500 + 500 - 50),
        "Envoy exited {stopped_in:?} after SIGTERM, before the receiver answered"
    );
    ensure!(
        !log.contains("undelivered"),
        "the drain gave up:\n{}",
        stack.envoy.log_tail(20)
    );
    Ok(())
}

/// The deployment recipe for shutdown without losing webhooks (e.g. a Kubernetes `preStop` hook):
/// stop taking traffic, wait until `webhooks_queue_depth` is 0, then send SIGTERM. The dispatcher
/// keeps delivering (and retrying) while the listeners drain.
#[tokio::test(flavor = "multi_thread")]
async fn draining_before_sigterm_delivers_pending_messages() -> Result<()> {
    const EVENTS: usize = 5;
    let delivery = json!({"retry_schedule": ["500ms", "300ms"]});
    let mut stack = Stack::start(|rx| to_receiver(rx, delivery)).await?;
    stack
        .receiver
        .push_replies([Reply::status(503), Reply::status(204).delay(ms(300))]);
    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    wait_for_gauge(&stack.envoy, "webhooks_queue_depth", EVENTS as u64).await?;
    ensure!(stack.receiver.received().is_empty(), "delivered too early");

    let drained = stack
        .client
        .post(stack.envoy.admin_url("/drain_listeners?graceful"))
        .send()
        .await?;
    ensure!(
        drained.status() == 200,
        "drain_listeners: {}",
        drained.status()
    );
    wait_for_gauge(&stack.envoy, "webhooks_queue_depth", 0).await?;
    let status = stack.envoy.terminate(ms(10_000)).await?;
    ensure!(status.success(), "Envoy exited with {status}");

    let hooks = stack.receiver.received();
    let delivered: HashSet<u64> = hooks
        .iter()
        .filter(|h| h.replied == 204)
        .filter_map(event_n)
        .collect();
    ensure!(delivered.len() == EVENTS, "{}", describe(&hooks));
    Ok(())
}
