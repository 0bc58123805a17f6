//! Fleet mode with etcd out of space (its `NOSPACE` alarm), against a real etcd started with a
//! 2 MiB `--quota-backend-bytes` and filled until it refuses puts ("etcdserver: mvcc: database
//! space exceeded"), and two real Envoys: API writes answer 503 `unavailable` with
//! `Retry-After` and none of etcd's text, reads and proxied traffic go on, events are still
//! delivered, and a delete still goes through and takes its keys out of etcd. Once the operator
//! frees space (deletes, compaction, defragmentation, alarm disarmed), writes work again.
//!
//! Nothing sleeps: every wait polls a condition with a deadline.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::fleet::node_id;
use devtools::fleet::produce;
use devtools::receiver::describe;
use devtools::{api, api_sent, poll_until, Envoy, Etcd, Fleet, Reply, Sent, Stop};
use serde_json::{json, Value};

/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const WAIT: Duration = Duration::from_secs(15);
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";
/// etcd's quota: small enough to fill in a second.
const QUOTA: &str = "--quota-backend-bytes=2097152";
/// Where the filler keys go (outside the plugin's prefix).
const FILLER: &str = "/filler/";

fn plugin() -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "300ms"],
                     "allow_http": true, "allow_private_destinations": true}
    })
}

async fn create(envoy: &Envoy, url: &str) -> Result<String> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, created) = api(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await?;
    ensure!(status == 201, "create answered {status}: {created}");
    Ok(created["id"].as_str().context("no id")?.to_string())
}

/// Puts 10 KB values under [`FILLER`] until etcd refuses one for its quota: how many it took.
async fn fill(etcd: &Etcd) -> Result<usize> {
    let value = STANDARD.encode(vec![b'x'; 10_000]);
    for n in 0..2_000 {
        let key = STANDARD.encode(format!("{FILLER}{n:05}"));
        let body = json!({"key": key, "value": value}).to_string();
        let (status, text) = etcd.post("/v3/kv/put", &body).await?;
        if status != 200 {
            ensure!(
                text.contains("database space exceeded"),
                "put {n} answered {status}: {text}"
            );
            return Ok(n);
        }
    }
    bail!("etcd took 20 MB past a 2 MiB quota")
}

/// Every keys under `prefix` deleted (one deleterange).
async fn delete_prefix(etcd: &Etcd, prefix: &str) -> Result<()> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body = json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(end)});
    etcd.call("/v3/kv/deleterange", &body).await?;
    Ok(())
}

/// An answer that must be 503 `unavailable` with `Retry-After`, and carry nothing of etcd's.
fn check_refused(what: &str, answer: &Sent) -> Result<()> {
    let text = String::from_utf8_lossy(&answer.body);
    let code = answer.json().ok().map(|v| v["error"]["code"].clone());
    ensure!(
        answer.status == 503
            && code == Some(json!("unavailable"))
            && answer.headers.contains_key("retry-after"),
        "{what}: {} {:?} {text}",
        answer.status,
        answer.headers
    );
    for leak in ["etcd", "space", "mvcc", "/pw-test"] {
        ensure!(
            !text.contains(leak),
            "{what}: the answer names `{leak}`: {text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn with_etcd_out_of_space_writes_answer_503_reads_deliveries_and_deletes_go_on() -> Result<()>
{
    let etcd = Etcd::start_with_args(&[QUOTA]).await?;
    let fleet = Fleet::start_on(etcd, 2, |_, _| plugin(), |cfg| cfg).await?;
    fleet.receiver.set_default(Reply::status(204));
    let mut fleet = fleet;
    let (a, b) = (fleet.replica(0), fleet.replica(1));
    let url = fleet.receiver.url("/full");
    let kept = create(a, &url).await?;
    let gone = create(a, &url).await?;
    fleet.wait_all_active(2, WAIT).await?;

    let filled = fill(&fleet.etcd).await?;
    let alarms = fleet.etcd.alarms().await?;
    ensure!(
        alarms == ["NOSPACE"],
        "alarms after {filled} puts: {alarms:?}"
    );
    let size = fleet.etcd.db_size().await?;
    eprintln!("etcd refused puts after {filled} filler keys of 10 KB (db {size} bytes)");

    // Writes: 503 through either replica, with nothing of etcd's text.
    for (i, envoy) in [a, b].into_iter().enumerate() {
        let body = json!({"url": url, "events": ["*"]});
        let answer = api_sent(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await?;
        check_refused(&format!("create through {}", node_id(i)), &answer)?;
        let path = format!("{SUBSCRIPTIONS}/{kept}");
        let patch = json!({"description": "changed"});
        let answer = api_sent(envoy, TEST_KEY, "PATCH", &path, Some(patch)).await?;
        check_refused(&format!("patch through {}", node_id(i)), &answer)?;
        // Reads: served.
        let (status, seen) = api(envoy, TEST_KEY, "GET", &path, None).await?;
        ensure!(
            status == 200 && seen["description"] == "",
            "get: {status} {seen}"
        );
        let (status, list) = api(envoy, TEST_KEY, "GET", SUBSCRIPTIONS, None).await?;
        let listed = list["data"].as_array().map(Vec::len);
        ensure!(status == 200 && listed == Some(2), "list: {status} {list}");
    }
    let stored = fleet.stored_count().await?;
    ensure!(stored == 2, "etcd holds {stored} records, not 2");

    // Proxied traffic and events: every event delivered to both subscriptions.
    let upstream_before = fleet.upstream.requests().len();
    for n in 0..4 {
        produce(if n % 2 == 0 { a } else { b }, n).await?;
    }
    ensure!(fleet.upstream.requests().len() - upstream_before == 4);
    poll_until(WAIT, "8 deliveries", async || {
        fleet.receiver.received().len() == 8
    })
    .await
    .with_context(|| describe(&fleet.receiver.received()))?;

    // A delete goes through, and takes its record and slots out of etcd.
    let path = format!("{SUBSCRIPTIONS}/{gone}");
    let (status, body) = api(b, TEST_KEY, "DELETE", &path, None).await?;
    ensure!(
        status == 204,
        "delete while etcd is full answered {status}: {body}"
    );
    ensure!(fleet.stored(&gone).await?.is_none(), "the record left etcd");
    let prefix = fleet.prefix().to_string();
    let left = fleet.etcd.range(&format!("{prefix}/")).await?;
    let mentions: Vec<&String> = left
        .iter()
        .filter(|(key, value)| {
            key.contains(&gone) || String::from_utf8_lossy(value).contains(&gone)
        })
        .map(|(key, _)| key)
        .collect();
    ensure!(
        mentions.is_empty(),
        "keys naming the deleted one: {mentions:?}"
    );
    ensure!(fleet.etcd.alarms().await? == ["NOSPACE"], "still full");

    // A replica restarted meanwhile (etcd grants it no lease) reads the registry and delivers.
    fleet.restart(1, Stop::Term).await?;
    let b = fleet.replica(1);
    fleet.wait_active(1, 1, WAIT).await?;
    let (status, seen) = api(b, TEST_KEY, "GET", &format!("{SUBSCRIPTIONS}/{kept}"), None).await?;
    ensure!(
        status == 200,
        "get through the restarted replica: {status} {seen}"
    );
    let answer = api_sent(
        b,
        TEST_KEY,
        "POST",
        SUBSCRIPTIONS,
        Some(json!({"url": url, "events": ["*"]})),
    )
    .await?;
    check_refused("create through the restarted replica", &answer)?;
    produce(b, 4).await?;
    poll_until(WAIT, "9 deliveries", async || {
        fleet.receiver.received().len() == 9
    })
    .await
    .with_context(|| {
        format!(
            "{}\nB's log:\n{}",
            describe(&fleet.receiver.received()),
            b.log_tail(20)
        )
    })?;

    // The operator frees space: writes work again, through either replica.
    delete_prefix(&fleet.etcd, FILLER).await?;
    fleet.etcd.compact().await?;
    fleet.etcd.defragment().await?;
    fleet.etcd.disarm().await?;
    ensure!(fleet.etcd.alarms().await?.is_empty(), "alarm disarmed");
    let b = fleet.replica(1);
    let after = create(b, &url).await?;
    ensure!(fleet.stored(&after).await?.is_some());
    fleet.wait_all_active(2, WAIT).await?;
    let counts = (
        fleet.counter_sum("webhooks_events_detected").await?,
        fleet.counter_sum("webhooks_deliveries_succeeded").await?,
        fleet.counter_sum("webhooks_events_dropped").await?,
    );
    // A detected events 0 and 2 (4 deliveries); B counts since its restart: event 4, to the
    // one subscription left.
    ensure!(
        counts == (3, 5, 0),
        "(detected, delivered, dropped): {counts:?}"
    );
    ensure!(
        fleet.receiver.received().len() == 9,
        "nothing delivered twice"
    );
    Ok(())
}
