//! Fleet mode's durable outbox with a real etcd and real Envoys on 127.0.0.1: every message is
//! in etcd before its first attempt, so a replica killed with SIGKILL loses nothing: another
//! replica claims its messages once its lease expires (or the node, restarted, resumes them),
//! and delivers each with its webhook-id. Duplicates are allowed (at-least-once) and counted.
//!
//! Nothing sleeps: every wait polls a condition with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::{http_client, poll_until, Envoy, EnvoyConfig, Etcd, Received, Reply, Sent, Stack};
use serde_json::{json, Value};

/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const PREFIX: &str = "/pw-outbox";
/// Generous on a loaded 2-core machine: a lease (2 s) must expire and be claimed first.
const WAIT: Duration = Duration::from_secs(40);

/// Retries that outlast the receiver's outage, so no message is exhausted meanwhile.
fn plugin(node: &str) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s",
                     "retry_schedule": ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s",
                                        "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"],
                     "disable_after": "1h",
                     "allow_http": true, "allow_private_destinations": true},
        "fleet": {"cluster": "webhooks_etcd", "prefix": PREFIX, "node_id": node,
                  "sync_interval": "200ms", "lease_ttl": "2s"}
    })
}

fn etcd_cluster(etcd: &Etcd) -> Value {
    json!({
        "name": "webhooks_etcd", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "webhooks_etcd", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": etcd.client_port()}}}}]}]}
    })
}

fn replica(etcd: &Etcd, node: &str, upstream_port: u16) -> EnvoyConfig {
    EnvoyConfig::new(plugin(node), upstream_port).with_cluster(etcd_cluster(etcd))
}

/// How many keys etcd holds under `PREFIX/<kind>/`.
async fn etcd_count(etcd: &Etcd, kind: &str) -> Result<u64> {
    let key = STANDARD.encode(format!("{PREFIX}/{kind}/"));
    let end = STANDARD.encode(format!("{PREFIX}/{kind}0"));
    let body = json!({"key": key, "range_end": end, "count_only": true});
    let (status, text) = etcd.post("/v3/kv/range", &body.to_string()).await?;
    ensure!(status == 200, "etcd range answered {status}: {text}");
    let answer: Value = serde_json::from_str(&text)?;
    Ok(answer["count"].as_str().unwrap_or("0").parse()?)
}

async fn wait_etcd_count(etcd: &Etcd, kind: &str, n: u64, log: &Envoy) -> Result<()> {
    poll_until(
        WAIT,
        &format!("{n} keys under {PREFIX}/{kind}/"),
        async || etcd_count(etcd, kind).await.ok() == Some(n),
    )
    .await
    .with_context(|| format!("log tail:\n{}", log.log_tail(20)))
}

/// Creates a subscription for every event through `envoy`'s API; its id and secret.
async fn subscribe(envoy: &Envoy, url: &str) -> Result<(String, String)> {
    let response = http_client()
        .post(envoy.url("/webhooks/subscriptions"))
        .header("x-api-key", TEST_KEY)
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    ensure!(status == 201, "create answered {status}: {body}");
    let field = |name: &str| body[name].as_str().map(str::to_string).context("no field");
    Ok((field("id")?, field("secret")?))
}

async fn wait_active(envoy: &Envoy, n: u64) -> Result<()> {
    poll_until(WAIT, "the subscription synced", async || {
        envoy
            .stat("webhooks_subscriptions_active")
            .await
            .ok()
            .flatten()
            == Some(n)
    })
    .await
    .with_context(|| format!("log tail:\n{}", envoy.log_tail(20)))
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
async fn all_delivered(stack: &Stack, path: &str, n: usize, secret: &str) -> Result<usize> {
    poll_until(
        WAIT,
        &format!("{n} distinct webhook-ids at {path}"),
        async || by_webhook_id(&stack.receiver.received(), path).len() >= n,
    )
    .await
    .with_context(|| format!("log tail:\n{}", stack.envoy.log_tail(30)))?;
    let seen = by_webhook_id(&stack.receiver.received(), path);
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

/// The receiver refuses every webhook (503) until [`receiver_up`].
fn receiver_down(stack: &Stack) {
    stack.receiver.set_default(Reply::status(503));
}

fn receiver_up(stack: &Stack) {
    stack.receiver.set_default(Reply::status(204));
}

#[tokio::test]
async fn a_replica_killed_with_pending_messages_loses_none_another_claims_and_delivers_them(
) -> Result<()> {
    const EVENTS: usize = 500;
    let etcd = Etcd::start().await?;
    let a = Stack::start_with(|_| plugin("a"), |cfg| cfg.with_cluster(etcd_cluster(&etcd))).await?;
    let b = Envoy::start(replica(&etcd, "b", a.upstream.port())).await?;
    let c = Envoy::start(replica(&etcd, "c", a.upstream.port())).await?;
    receiver_down(&a);
    let (_, secret) = subscribe(&a.envoy, &a.receiver.url("/crash")).await?;
    wait_active(&b, 1).await?;

    produce(&b, EVENTS).await?;
    ensure!(b.counter("webhooks_events_detected").await? == EVENTS as u64);
    // Every message is in etcd (under B's lease) while the receiver refuses them.
    wait_etcd_count(&etcd, "msg", EVENTS as u64, &b).await?;
    ensure!(b.counter("webhooks_deliveries_succeeded").await? == 0);
    drop(b); // SIGKILL
    receiver_up(&a);

    let duplicates = all_delivered(&a, "/crash", EVENTS, &secret).await?;
    let claims = a.envoy.counter("webhooks_fleet_claims").await?
        + c.counter("webhooks_fleet_claims").await?;
    ensure!(claims >= 1, "the dead replica's lease was claimed");
    let delivered = a.envoy.counter("webhooks_deliveries_succeeded").await?
        + c.counter("webhooks_deliveries_succeeded").await?;
    ensure!(
        delivered >= EVENTS as u64,
        "A and C delivered them all: {delivered}"
    );
    // Delivered messages leave etcd, and so does the dead lease once released.
    wait_etcd_count(&etcd, "msg", 0, &a.envoy).await?;
    wait_etcd_count(&etcd, "owner", 2, &a.envoy).await?;
    eprintln!("{EVENTS} events detected on B before SIGKILL: {EVENTS} delivered by A or C, {duplicates} duplicate(s), 0 lost");
    Ok(())
}

#[tokio::test]
async fn a_node_restarted_with_its_id_resumes_its_own_messages() -> Result<()> {
    const EVENTS: usize = 50;
    let etcd = Etcd::start().await?;
    let a = Stack::start_with(
        |_| plugin("solo"),
        |cfg| cfg.with_cluster(etcd_cluster(&etcd)),
    )
    .await?;
    receiver_down(&a);
    let (_, secret) = subscribe(&a.envoy, &a.receiver.url("/resume")).await?;
    let b = Envoy::start(replica(&etcd, "only", a.upstream.port())).await?;
    wait_active(&b, 1).await?;
    // A leaves: only B's own restart can deliver what B detects.
    drop(a.envoy);
    produce(&b, EVENTS).await?;
    wait_etcd_count(&etcd, "msg", EVENTS as u64, &b).await?;
    let upstream = a.upstream.port();
    drop(b); // SIGKILL
    let b = Envoy::start(replica(&etcd, "only", upstream)).await?;
    a.receiver.set_default(Reply::status(204));
    poll_until(WAIT, "the restarted node delivered them", async || {
        by_webhook_id(&a.receiver.received(), "/resume").len() >= EVENTS
    })
    .await
    .with_context(|| format!("log tail:\n{}", b.log_tail(30)))?;
    for (_, webhook) in by_webhook_id(&a.receiver.received(), "/resume").values() {
        webhook.verify(&secret)?;
    }
    ensure!(
        b.counter("webhooks_fleet_claims").await? >= 1,
        "the restarted node claimed its former lease"
    );
    wait_etcd_count(&etcd, "msg", 0, &b).await?;
    Ok(())
}
