//! FIFO ordering (SPEC.md, "Delivery"), against a real Envoy with the real `.wasm` (and a real
//! etcd for fleet mode): a `fifo` subscription gets one attempt at a time, in detection order;
//! a failing message holds the later ones back until it succeeds; a concurrent subscription
//! beside it is not held back. In fleet mode a dead replica's messages, claimed by another,
//! are delivered in their detection-time order. Every test counts: events detected =
//! delivered + dropped, dropped 0.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::fleet::{Fleet, Stop};
use devtools::receiver::describe;
use devtools::{api, poll_until, Received, Receiver, Reply, Stack};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const WAIT: Duration = Duration::from_secs(20);
/// A lease (2 s) must expire and be claimed first, on a loaded machine.
const FLEET_WAIT: Duration = Duration::from_secs(40);
const EVENTS: usize = 20;

fn n_of(hook: &Received) -> Option<u64> {
    hook.json().ok()?["data"]["object"]["n"].as_u64()
}

fn webhook_id(hook: &Received) -> String {
    hook.header("webhook-id").unwrap_or_default().to_string()
}

/// The webhooks received at `path`, in arrival order.
fn at(rx: &Receiver, path: &str) -> Vec<Received> {
    rx.received()
        .into_iter()
        .filter(|h| h.path == path)
        .collect()
}

/// The 2xx deliveries at `path` are events 0..n in order, one webhook-id each, each once;
/// returns how many requests came in all.
fn in_detection_order(rx: &Receiver, path: &str, n: usize, secret: &str) -> Result<usize> {
    let all = at(rx, path);
    let delivered: Vec<&Received> = all.iter().filter(|h| h.replied < 300).collect();
    let mut ids: HashMap<String, u64> = HashMap::new();
    for hook in &delivered {
        hook.verify(secret).context("signature")?;
        let n = n_of(hook).context("no n")?;
        ensure!(
            ids.insert(webhook_id(hook), n).is_none(),
            "delivered twice: {}",
            describe(&all)
        );
    }
    let order: Vec<u64> = delivered.iter().filter_map(|h| n_of(h)).collect();
    let want: Vec<u64> = (0..n as u64).collect();
    ensure!(
        order == want,
        "in detection order: {order:?}\n{}",
        describe(&all)
    );
    Ok(all.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_subscription_receives_a_burst_in_detection_order_despite_failures() -> Result<()> {
    let stack = Stack::start(|rx| {
        json!({
            "audience": "all",
            "subscriptions": [
                {"id": "sub_fifo", "consumer": "tests", "url": rx.url("/fifo"), "events": ["*"],
                 "secret": SECRET, "ordering": "fifo"},
                {"id": "sub_plain", "consumer": "tests", "url": rx.url("/plain"), "events": ["*"],
                 "secret": SECRET}
            ],
            "delivery": {"retry_schedule": ["0s", "100ms", "100ms", "100ms", "100ms"], "jitter": 0,
                         "allow_insecure_destinations": true}
        })
    })
    .await?;
    // The first three requests fail (whichever subscription they are for), then every answer
    // takes 5 ms, so overlapping attempts would show.
    stack
        .receiver
        .push_replies([Reply::status(500), Reply::status(500), Reply::status(500)]);
    stack
        .receiver
        .set_default(Reply::status(204).delay(Duration::from_millis(5)));
    // One burst: every event sent before any is delivered; awaited one by one, so detection
    // order is `n` order.
    for n in 0..EVENTS {
        stack.produce(n).await?;
    }
    poll_until(WAIT, "every event delivered to both", async || {
        let done = |path| {
            at(&stack.receiver, path)
                .iter()
                .filter(|h| h.replied < 300)
                .count()
        };
        done("/fifo") >= EVENTS && done("/plain") >= EVENTS
    })
    .await
    .with_context(|| stack.envoy.log_tail(30))?;
    let requests = in_detection_order(&stack.receiver, "/fifo", EVENTS, SECRET)?;
    let fifo = at(&stack.receiver, "/fifo");
    // One at a time: each request comes after the previous one's answer (5 ms) at least.
    for pair in fifo.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        ensure!(
            gap >= Duration::from_millis(4),
            "overlapping attempts ({gap:?}): {}",
            describe(&fifo)
        );
    }
    let detected = stack.envoy.counter("webhooks_events_detected").await?;
    let dropped = stack.envoy.counter("webhooks_events_dropped").await?;
    let exhausted = stack.envoy.counter("webhooks_deliveries_exhausted").await?;
    ensure!(
        (detected, dropped, exhausted) == (EVENTS as u64, 0, 0),
        "detected {detected}, dropped {dropped}, exhausted {exhausted}"
    );
    eprintln!(
        "fifo: {EVENTS} events in order, {requests} requests ({} failed)",
        requests - EVENTS
    );
    Ok(())
}

fn fleet_plugin(_: &Receiver) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"retry_schedule": ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s",
                                        "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"],
                     "allow_http": true, "allow_private_destinations": true},
        "fleet": {"lease_ttl": "2s"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_replica_s_fifo_messages_are_claimed_and_delivered_in_detection_order() -> Result<()>
{
    let mut fleet = Fleet::start(2, fleet_plugin).await?;
    fleet.receiver.set_default(Reply::status(503));
    let body = json!({"url": fleet.receiver.url("/claimed"), "events": ["*"], "ordering": "fifo"});
    let (status, created) = api(
        fleet.replica(0),
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(body),
    )
    .await?;
    ensure!(
        status == 201 && created["ordering"] == "fifo",
        "create answered {status}: {created}"
    );
    let secret = created["secret"].as_str().unwrap_or_default().to_string();
    fleet.wait_active(1, 1, FLEET_WAIT).await?;
    let client = devtools::http_client();
    for n in 0..EVENTS {
        let sent = client
            .post(fleet.replica(1).url("/orders"))
            .header("x-test-body", json!({ "n": n }).to_string())
            .send()
            .await?;
        ensure!(
            sent.status() == 201,
            "POST /orders answered {}",
            sent.status()
        );
        // Detection times in distinct milliseconds: a claimer orders by them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let msg = format!("{}/msg/", fleet.prefix());
    poll_until(FLEET_WAIT, "every message in etcd", async || {
        fleet.etcd.count(&msg).await.ok() == Some(EVENTS as u64)
    })
    .await?;
    fleet.stop(1, Stop::Kill).await?;
    fleet.receiver.set_default(Reply::status(204));
    poll_until(FLEET_WAIT, "every claimed message delivered", async || {
        at(&fleet.receiver, "/claimed")
            .iter()
            .filter(|h| h.replied < 300)
            .count()
            >= EVENTS
    })
    .await
    .with_context(|| fleet.replica(0).log_tail(30))?;
    in_detection_order(&fleet.receiver, "/claimed", EVENTS, &secret)?;
    let claims = fleet.replica(0).counter("webhooks_fleet_claims").await?;
    ensure!(claims >= 1, "delivered after a claim");
    let lost = fleet.replica(0).counter("webhooks_events_dropped").await?
        + fleet
            .replica(0)
            .counter("webhooks_deliveries_exhausted")
            .await?;
    ensure!(lost == 0, "{lost} lost");
    Ok(())
}
