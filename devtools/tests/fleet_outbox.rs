//! Fleet mode's durable outbox with a real etcd and real Envoys on 127.0.0.1: every message is
//! in etcd before its first attempt, so a replica killed with SIGKILL loses nothing: another
//! replica claims its messages once its lease expires (or the node, restarted, resumes them),
//! and delivers each with its webhook-id. Duplicates are allowed (at-least-once) and counted.
//!
//! Nothing sleeps: every wait polls a condition with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::fleet::{Fleet, Stop};
use devtools::{http_client, poll_until, Envoy, Received, Receiver, Reply, Sent};
use serde_json::{json, Value};

/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
/// Generous on a loaded 2-core machine: a lease (2 s) must expire and be claimed first.
const WAIT: Duration = Duration::from_secs(40);

/// Retries that outlast the receiver's outage, so no message is exhausted meanwhile; the
/// shortest lease etcd grants, so a dead replica's messages are claimed soon.
fn plugin(_: &Receiver) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s",
                     "retry_schedule": ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s",
                                        "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"],
                     "disable_after": "1h",
                     "allow_http": true, "allow_private_destinations": true},
        "fleet": {"lease_ttl": "2s"}
    })
}

async fn wait_etcd_count(fleet: &Fleet, kind: &str, n: u64, log: &Envoy) -> Result<()> {
    let prefix = format!("{}/{kind}/", fleet.prefix());
    poll_until(WAIT, &format!("{n} keys under {prefix}"), async || {
        fleet.etcd.count(&prefix).await.ok() == Some(n)
    })
    .await
    .with_context(|| format!("log tail:\n{}", log.log_tail(20)))
}

/// Creates a subscription for every event through `envoy`'s API; its secret.
async fn subscribe(envoy: &Envoy, url: &str) -> Result<String> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, created) = devtools::api(
        envoy,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(body),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    Ok(created["secret"].as_str().context("no secret")?.to_string())
}

/// `count` events detected by `envoy` (`POST /orders` answered 201), `n` in their bodies.
async fn produce(envoy: &Envoy, count: usize) -> Result<()> {
    let client = http_client();
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|n| {
            let request = client
                .post(envoy.url("/orders"))
                .header("x-test-body", json!({ "n": n }).to_string());
            async move { Sent::read(request.send().await?).await }
        });
        for sent in futures_util::future::join_all(calls).await {
            let sent = sent?;
            ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
        }
    }
    Ok(())
}

/// The webhooks received at `path`, by webhook-id (each with how many times it came).
fn by_webhook_id(received: &[Received], path: &str) -> HashMap<String, (usize, Received)> {
    let mut seen: HashMap<String, (usize, Received)> = HashMap::new();
    for r in received
        .iter()
        .filter(|r| r.path == path && r.replied < 300)
    {
        let id = r.header("webhook-id").unwrap_or_default().to_string();
        seen.entry(id).or_insert((0, r.clone())).0 += 1;
    }
    seen
}

/// Waits until `n` distinct webhook-ids were delivered (answered 2xx) at `path`; checks each
/// one's signature and that the event numbers 0..n all came; returns the duplicates.
async fn all_delivered(
    receiver: &Receiver,
    log: &Envoy,
    path: &str,
    n: usize,
    secret: &str,
) -> Result<usize> {
    poll_until(
        WAIT,
        &format!("{n} distinct webhook-ids at {path}"),
        async || by_webhook_id(&receiver.received(), path).len() >= n,
    )
    .await
    .with_context(|| format!("log tail:\n{}", log.log_tail(30)))?;
    let seen = by_webhook_id(&receiver.received(), path);
    let mut numbers = Vec::new();
    for (_, webhook) in seen.values() {
        let body = webhook.verify(secret)?;
        numbers.push(body["data"]["object"]["n"].as_u64().context("no n")?);
    }
    numbers.sort_unstable();
    numbers.dedup();
    ensure!(
        numbers.len() == n,
        "{n} events, each delivered: got {} distinct",
        numbers.len()
    );
    ensure!(seen.len() == n, "one webhook-id per event: {}", seen.len());
    Ok(seen.values().map(|(count, _)| count - 1).sum())
}

#[tokio::test]
async fn a_replica_killed_with_pending_messages_loses_none_another_claims_and_delivers_them(
) -> Result<()> {
    const EVENTS: usize = 500;
    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    let mut fleet = Fleet::start(3, plugin).await?;
    fleet.receiver.set_default(Reply::status(503));
    let secret = subscribe(fleet.replica(A), &fleet.receiver.url("/crash")).await?;
    fleet.wait_active(B, 1, WAIT).await?;

    produce(fleet.replica(B), EVENTS).await?;
    let b = fleet.replica(B);
    ensure!(b.counter("webhooks_events_detected").await? == EVENTS as u64);
    // Every message is in etcd (under B's lease) while the receiver refuses them.
    wait_etcd_count(&fleet, "msg", EVENTS as u64, b).await?;
    ensure!(b.counter("webhooks_deliveries_succeeded").await? == 0);
    fleet.stop(B, Stop::Kill).await?;
    fleet.receiver.set_default(Reply::status(204));

    let (a, c) = (fleet.replica(A), fleet.replica(C));
    let duplicates = all_delivered(&fleet.receiver, a, "/crash", EVENTS, &secret).await?;
    let claims =
        a.counter("webhooks_fleet_claims").await? + c.counter("webhooks_fleet_claims").await?;
    ensure!(claims >= 1, "the dead replica's lease was claimed");
    let delivered = a.counter("webhooks_deliveries_succeeded").await?
        + c.counter("webhooks_deliveries_succeeded").await?;
    ensure!(
        delivered >= EVENTS as u64,
        "A and C delivered them all: {delivered}"
    );
    // Delivered messages leave etcd, and so does the dead lease once released.
    wait_etcd_count(&fleet, "msg", 0, a).await?;
    wait_etcd_count(&fleet, "owner", 2, a).await?;
    eprintln!("{EVENTS} events detected on B before SIGKILL: {EVENTS} delivered by A or C, {duplicates} duplicate(s), 0 lost");
    Ok(())
}

#[tokio::test]
async fn a_node_restarted_with_its_id_resumes_its_own_messages() -> Result<()> {
    const EVENTS: usize = 50;
    const A: usize = 0;
    const B: usize = 1;
    let mut fleet = Fleet::start(2, plugin).await?;
    fleet.receiver.set_default(Reply::status(503));
    let secret = subscribe(fleet.replica(A), &fleet.receiver.url("/resume")).await?;
    fleet.wait_active(B, 1, WAIT).await?;
    // A leaves: only B's own restart can deliver what B detects.
    fleet.stop(A, Stop::Kill).await?;
    produce(fleet.replica(B), EVENTS).await?;
    wait_etcd_count(&fleet, "msg", EVENTS as u64, fleet.replica(B)).await?;
    fleet.stop(B, Stop::Kill).await?;
    fleet.start_again(B).await?;
    fleet.receiver.set_default(Reply::status(204));
    let b = fleet.replica(B);
    let duplicates = all_delivered(&fleet.receiver, b, "/resume", EVENTS, &secret).await?;
    ensure!(
        b.counter("webhooks_fleet_claims").await? >= 1,
        "the restarted node claimed its former lease"
    );
    wait_etcd_count(&fleet, "msg", 0, b).await?;
    eprintln!("{EVENTS} events pending on B at SIGKILL: all delivered by B restarted, {duplicates} duplicate(s)");
    Ok(())
}
