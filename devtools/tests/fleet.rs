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
/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const PREFIX: &str = "/pw-test";
/// Generous against `sync_interval` (200 ms) on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(15);

/// The plugin configuration every replica runs; `node` is its node id.
fn plugin(node: &str) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
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

/// An API call through `envoy` with the test key: status and JSON body (Null when none).
async fn api(envoy: &Envoy, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = http_client()
        .request(method, envoy.url(path))
        .header("x-api-key", TEST_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// How many subscription records etcd holds.
async fn etcd_count(etcd: &Etcd) -> Result<i64> {
    let key = STANDARD.encode(format!("{PREFIX}/sub/"));
    let end = STANDARD.encode(format!("{PREFIX}/sub0"));
    let answer = etcd_ok(
        etcd,
        "/v3/kv/range",
        json!({"key": key, "range_end": end, "count_only": true}),
    )
    .await?;
    Ok(answer["count"].as_str().unwrap_or("0").parse()?)
}

#[tokio::test]
async fn created_through_one_replica_delivered_by_the_other_deleted_through_it_and_kept_across_a_restart(
) -> Result<()> {
    let etcd = Etcd::start().await?;
    let a = Stack::start_with(|_| plugin("a"), |cfg| cfg.with_cluster(etcd_cluster(&etcd))).await?;
    let b_config =
        || EnvoyConfig::new(plugin("b"), a.upstream.port()).with_cluster(etcd_cluster(&etcd));
    let mut b = Envoy::start(b_config()).await?;
    a.receiver.set_default(Reply::status(204));

    let create = json!({"url": a.receiver.url("/api"), "events": ["*"]});
    let (status, created) = api(&a.envoy, "POST", "/webhooks/subscriptions", Some(create)).await?;
    ensure!(
        status == 201,
        "create through A answered {status}: {created}"
    );
    let id = created["id"].as_str().context("no id")?.to_string();
    let secret = created["secret"].as_str().context("no secret")?.to_string();
    ensure!(
        stored(&etcd, &id).await?.is_some(),
        "a 201 means etcd has it"
    );
    wait_active(&b, 1).await?;
    let path = format!("/webhooks/subscriptions/{id}");
    let (status, seen) = api(&b, "GET", &path, None).await?;
    ensure!(
        status == 200 && seen["id"] == id.as_str(),
        "B serves it: {status} {seen}"
    );
    produce(&b, 1).await?;
    a.webhooks(1, WAIT).await?[0].verify(&secret)?;

    // Restarted with SIGTERM: B reads the registry from etcd again and delivers.
    b.terminate(WAIT).await?;
    let b = Envoy::start(b_config()).await?;
    wait_active(&b, 1).await?;
    produce(&b, 2).await?;
    a.webhooks(2, WAIT).await?;

    // Deleted through B: gone from etcd and from A.
    let (status, _) = api(&b, "DELETE", &path, None).await?;
    ensure!(status == 204, "delete through B answered {status}");
    ensure!(
        stored(&etcd, &id).await?.is_none(),
        "a 204 means etcd no longer has it"
    );
    wait_active(&a.envoy, 0).await?;
    let (status, _) = api(&a.envoy, "GET", &path, None).await?;
    ensure!(status == 404, "A no longer serves it: {status}");
    Ok(())
}

#[tokio::test]
async fn concurrent_creates_over_replicas_keep_the_per_consumer_limit() -> Result<()> {
    let etcd = Etcd::start().await?;
    let limited = |node: &str| {
        let mut p = plugin(node);
        p["api"]["max_subscriptions_per_consumer"] = json!(40);
        p
    };
    let a = Stack::start_with(
        |_| limited("a"),
        |cfg| cfg.with_cluster(etcd_cluster(&etcd)),
    )
    .await?;
    let b = Envoy::start(
        EnvoyConfig::new(limited("b"), a.upstream.port()).with_cluster(etcd_cluster(&etcd)),
    )
    .await?;
    let url = a.receiver.url("/many");
    let calls = (0..60).map(|n| {
        let envoy = if n % 2 == 0 { &a.envoy } else { &b };
        let body = json!({"url": url, "events": ["*"]});
        async move { api(envoy, "POST", "/webhooks/subscriptions", Some(body)).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut created = 0;
    for answer in answers {
        let (status, body) = answer?;
        match status {
            201 => created += 1,
            409 => ensure!(
                body["error"]["code"] == "limit_reached",
                "refused for the limit: {body}"
            ),
            other => anyhow::bail!("create answered {other}: {body}"),
        }
    }
    ensure!(
        created == 40,
        "exactly the limit was created across replicas: {created}"
    );
    ensure!(etcd_count(&etcd).await? == 40, "etcd holds the limit");
    Ok(())
}
