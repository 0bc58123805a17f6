//! Fleet mode (SPEC "Fleet mode") with a real etcd (Debian's etcd-server 3.4, `make etcd`) and
//! several real Envoys running the real `.wasm`, all on 127.0.0.1: the registry is etcd's, and
//! every replica serves and delivers what etcd holds within `sync_interval`.
//!
//! Nothing sleeps: every wait polls a condition with a deadline.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::{http_client, poll_until, Envoy, EnvoyConfig, Etcd, Reply, Sent, Stack};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREFIX: &str = "/pw-test";
/// Generous against `sync_interval` (200 ms) on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(15);

/// The plugin configuration every replica runs; `node` is its node id.
fn plugin(node: &str) -> Value {
    json!({
        "audience": "all",
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "300ms"],
                     "allow_http": true, "allow_private_destinations": true},
        "fleet": {"cluster": "webhooks_etcd", "prefix": PREFIX, "node_id": node,
                  "sync_interval": "200ms", "lease_ttl": "3s"}
    })
}

/// The Envoy cluster of the etcd gateway.
fn etcd_cluster(etcd: &Etcd) -> Value {
    json!({
        "name": "webhooks_etcd", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "webhooks_etcd", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": etcd.client_port()}}}}]}]}
    })
}

/// A subscription record as the plugin keeps it (what another replica's API would have written).
fn record(id: &str, url: &str, status: &str, version: u64) -> Value {
    json!({"id": id, "consumer": "tests", "url": url, "events": ["*"], "status": status,
           "created_at_ms": 1_795_000_000_000u64, "updated_at_ms": 1_795_000_000_000u64,
           "secrets": [{"secret": SECRET}], "version": version})
}

async fn etcd_ok(etcd: &Etcd, path: &str, body: Value) -> Result<Value> {
    let (status, text) = etcd.post(path, &body.to_string()).await?;
    ensure!(status == 200, "etcd {path} answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

async fn put_record(etcd: &Etcd, id: &str, value: &Value) -> Result<()> {
    let key = STANDARD.encode(format!("{PREFIX}/sub/{id}"));
    let value = STANDARD.encode(value.to_string());
    etcd_ok(etcd, "/v3/kv/put", json!({"key": key, "value": value})).await?;
    Ok(())
}

async fn delete_record(etcd: &Etcd, id: &str) -> Result<()> {
    let key = STANDARD.encode(format!("{PREFIX}/sub/{id}"));
    etcd_ok(etcd, "/v3/kv/deleterange", json!({"key": key})).await?;
    Ok(())
}

/// The record etcd holds for `id`, parsed.
async fn stored(etcd: &Etcd, id: &str) -> Result<Option<Value>> {
    let key = STANDARD.encode(format!("{PREFIX}/sub/{id}"));
    let answer = etcd_ok(etcd, "/v3/kv/range", json!({"key": key})).await?;
    let Some(value) = answer["kvs"][0]["value"].as_str() else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&STANDARD.decode(value)?)?))
}

/// `POST /orders` through `envoy`, answered 201 by the upstream: one `orders.created` event.
async fn produce(envoy: &Envoy, n: usize) -> Result<()> {
    let response = http_client()
        .post(envoy.url("/orders"))
        .header("x-test-body", json!({ "n": n }).to_string())
        .send()
        .await?;
    let sent = Sent::read(response).await?;
    ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
    Ok(())
}

/// Waits until `envoy` counts `n` active subscriptions (its cache of etcd's registry).
async fn wait_active(envoy: &Envoy, n: u64) -> Result<()> {
    let what = format!("webhooks_subscriptions_active {n} on {}", envoy.url(""));
    poll_until(WAIT, &what, async || {
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

#[tokio::test]
async fn every_replica_delivers_what_etcd_holds_and_a_410_or_a_delete_stops_them_all() -> Result<()>
{
    let etcd = Etcd::start().await?;
    let a = Stack::start_with(|_| plugin("a"), |cfg| cfg.with_cluster(etcd_cluster(&etcd))).await?;
    let b_config =
        EnvoyConfig::new(plugin("b"), a.upstream.port()).with_cluster(etcd_cluster(&etcd));
    let b = Envoy::start(b_config).await?;

    // Written by "another replica" (straight into etcd): both replicas pick it up.
    let gone_url = a.receiver.url("/gone");
    put_record(
        &etcd,
        "sub_gone",
        &record("sub_gone", &gone_url, "active", 1),
    )
    .await?;
    let kept_url = a.receiver.url("/kept");
    put_record(
        &etcd,
        "sub_kept",
        &record("sub_kept", &kept_url, "active", 1),
    )
    .await?;
    wait_active(&a.envoy, 2).await?;
    wait_active(&b, 2).await?;

    // An event detected by each replica reaches both subscriptions, signed with etcd's secret.
    a.receiver.set_default(Reply::status(204));
    produce(&a.envoy, 1).await?;
    produce(&b, 2).await?;
    let got = a.webhooks(4, WAIT).await?;
    for webhook in &got {
        webhook.verify(SECRET)?;
    }

    // A 410 seen by A disables the subscription in etcd, and so on B.
    a.receiver.push_replies([Reply::status(410)]);
    let gone_before = count_at(&a, "/gone");
    produce(&a.envoy, 3).await?;
    poll_until(WAIT, "sub_gone disabled in etcd", async || {
        let record = stored(&etcd, "sub_gone").await.ok().flatten();
        record.is_some_and(|r| r["status"] == "disabled" && r["disabled_reason"] == "gone")
    })
    .await
    .with_context(|| format!("A's log:\n{}", a.envoy.log_tail(20)))?;
    wait_active(&b, 1).await?;
    ensure!(
        count_at(&a, "/gone") == gone_before + 1,
        "one delivery (the 410) after the first two"
    );
    produce(&b, 4).await?;
    poll_until(WAIT, "B's event at /kept", async || {
        count_at(&a, "/kept") == 4
    })
    .await?;
    ensure!(
        count_at(&a, "/gone") == gone_before + 1,
        "B did not deliver to the disabled subscription"
    );

    // Deleted in etcd: neither replica delivers to it any more.
    delete_record(&etcd, "sub_kept").await?;
    wait_active(&a.envoy, 0).await?;
    wait_active(&b, 0).await?;
    produce(&a.envoy, 5).await?;
    produce(&b, 6).await?;
    // Proof that 5 and 6 went through fan-out: later events, after them in each replica's queue,
    // reach a subscription added afterwards.
    let late_url = a.receiver.url("/late");
    put_record(
        &etcd,
        "sub_late",
        &record("sub_late", &late_url, "active", 1),
    )
    .await?;
    wait_active(&a.envoy, 1).await?;
    wait_active(&b, 1).await?;
    produce(&a.envoy, 7).await?;
    produce(&b, 8).await?;
    poll_until(WAIT, "events 7 and 8 at /late", async || {
        let late: Vec<_> = a
            .receiver
            .received()
            .into_iter()
            .filter(|r| r.path == "/late")
            .collect();
        let ns: Vec<i64> = late
            .iter()
            .filter_map(|r| r.json().ok()?["data"]["object"]["n"].as_i64())
            .collect();
        ns.contains(&7) && ns.contains(&8)
    })
    .await?;
    ensure!(
        count_at(&a, "/kept") == 4,
        "no delivery to the deleted subscription"
    );
    Ok(())
}

fn count_at(stack: &Stack, path: &str) -> usize {
    stack
        .receiver
        .received()
        .iter()
        .filter(|r| r.path == path)
        .count()
}
