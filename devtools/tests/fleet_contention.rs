//! Fleet mode under contention, with a real etcd (Debian's etcd-server 3.4, `make etcd`) and two
//! real Envoys running the real `.wasm`: many concurrent creates for one consumer, spread over
//! both replicas, all go through (each takes its own slot, `P/slot/<consumer>/<n>`), and a
//! per-consumer limit holds across the replicas however the creates race, and so does
//! `api.max_subscriptions` (cap slots `P/cap/<n>`).
//!
//! Nothing sleeps: every call is awaited, and etcd is read once the answers are in.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use devtools::fleet::etcd_cluster;
use devtools::{Envoy, EnvoyConfig, Etcd, Stack};
use serde_json::{json, Value};

/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const CONSUMER: &str = "tests";
const PREFIX: &str = "/pw-contention";

/// The plugin configuration of replica `node`, with the per-consumer `limit` and the
/// registry's `cap`.
fn plugin(node: &str, limit: usize, cap: usize) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": CONSUMER, "sha256": TEST_KEY_SHA256}],
                "max_subscriptions_per_consumer": limit, "max_subscriptions": cap},
        "delivery": {"allow_http": true, "allow_private_destinations": true},
        "fleet": {"cluster": "webhooks_etcd", "prefix": PREFIX, "node_id": node,
                  "sync_interval": "200ms", "lease_ttl": "3s"}
    })
}

/// One etcd, and two replicas A and B on it with the per-consumer `limit` and the registry's
/// `cap`.
async fn fleet(limit: usize, cap: usize) -> Result<(Etcd, Stack, Envoy)> {
    let etcd = Etcd::start().await?;
    let a = Stack::start_with(
        |_| plugin("a", limit, cap),
        |cfg| cfg.with_cluster(etcd_cluster(&etcd)),
    )
    .await?;
    let b_config = EnvoyConfig::new(plugin("b", limit, cap), a.upstream.port())
        .with_cluster(etcd_cluster(&etcd));
    let b = Envoy::start(b_config).await?;
    Ok((etcd, a, b))
}

/// `n` creates at once, alternating between the two replicas: each one's status and body.
async fn concurrent_creates(a: &Envoy, b: &Envoy, n: usize) -> Result<Vec<(u16, Value)>> {
    let calls = (0..n).map(|i| {
        let envoy = if i % 2 == 0 { a } else { b };
        let body = json!({"url": format!("http://127.0.0.1:9/hook/{i}"), "events": ["*"]});
        async move {
            devtools::api(
                envoy,
                TEST_KEY,
                "POST",
                "/webhooks/subscriptions",
                Some(body),
            )
            .await
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// Every key under `prefix` in etcd, with its value as text.
async fn etcd_keys(etcd: &Etcd, prefix: &str) -> Result<Vec<(String, String)>> {
    let mut keys = Vec::new();
    for (key, value) in etcd.range(prefix).await? {
        keys.push((key, String::from_utf8(value)?));
    }
    Ok(keys)
}

/// The ids etcd holds records of; checks that every record has exactly one slot below `limit`
/// and one cap slot below `cap`, that its slot names its cap slot, and that every slot and cap
/// slot names a record.
async fn records_and_slots(etcd: &Etcd, limit: u64, cap: u64) -> Result<BTreeSet<String>> {
    let records: BTreeSet<String> = etcd_keys(etcd, &format!("{PREFIX}/sub/"))
        .await?
        .into_iter()
        .map(|(key, _)| {
            key.trim_start_matches(&format!("{PREFIX}/sub/"))
                .to_string()
        })
        .collect();
    let slot_prefix = format!("{PREFIX}/slot/{CONSUMER}/");
    let slots = etcd_keys(etcd, &slot_prefix).await?;
    let cap_prefix = format!("{PREFIX}/cap/");
    let mut caps = std::collections::BTreeMap::new();
    for (key, id) in etcd_keys(etcd, &cap_prefix).await? {
        let n: u64 = key
            .strip_prefix(&cap_prefix)
            .filter(|n| n.len() == 8)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("cap slot key {key}"))?;
        ensure!(n < cap, "cap slot {n} is not below the cap {cap}");
        ensure!(
            caps.insert(id.clone(), n).is_none(),
            "{id} holds two cap slots"
        );
    }
    let mut held = BTreeSet::new();
    for (key, value) in &slots {
        let n: u64 = key
            .strip_prefix(&slot_prefix)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("slot key {key}"))?;
        ensure!(n < limit, "slot {n} is not below the limit {limit}");
        let (id, cap_slot) = value
            .split_once(' ')
            .context("a slot without its cap slot")?;
        ensure!(
            caps.get(id).map(u64::to_string).as_deref() == Some(cap_slot),
            "slot {key} = {value}, but {id}'s cap slot is {:?}",
            caps.get(id)
        );
        ensure!(held.insert(id.to_string()), "{id} holds two slots");
    }
    let capped: BTreeSet<String> = caps.into_keys().collect();
    ensure!(capped == held, "cap slots and slots name different ids");
    ensure!(
        held == records,
        "slots and records differ: {} slots, {} records",
        held.len(),
        records.len()
    );
    Ok(records)
}

/// The ids of the 201s; every other answer must be `expected_other` (status and error code).
fn created_ids(
    answers: &[(u16, Value)],
    expected_other: Option<(u16, &str)>,
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (status, body) in answers {
        match (status, expected_other) {
            (201, _) => ids.push(body["id"].as_str().context("a 201 without id")?.to_string()),
            (other, Some((status, code))) if *other == status => ensure!(
                body["error"]["code"] == code,
                "a {other} that is not {code}: {body}"
            ),
            (other, _) => {
                let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
                anyhow::bail!("a create answered {other}: {body}; all statuses: {statuses:?}")
            }
        }
    }
    Ok(ids)
}

#[tokio::test]
async fn two_hundred_concurrent_creates_for_one_consumer_over_two_replicas_all_get_201_and_etcd_holds_two_hundred(
) -> Result<()> {
    let (etcd, a, b) = fleet(1000, 100_000).await?;
    let answers = concurrent_creates(&a.envoy, &b, 200).await?;
    let ids = created_ids(&answers, None)
        .with_context(|| format!("A's log:\n{}", a.envoy.log_tail(10)))?;
    ensure!(ids.len() == 200, "{} created", ids.len());
    let records = records_and_slots(&etcd, 1000, 100_000).await?;
    ensure!(records.len() == 200, "etcd holds {} records", records.len());
    let created: BTreeSet<String> = ids.into_iter().collect();
    ensure!(
        created == records,
        "etcd holds exactly the ids answered 201"
    );
    Ok(())
}

#[tokio::test]
async fn a_limit_of_forty_holds_against_sixty_concurrent_creates_over_two_replicas_and_a_delete_frees_a_slot(
) -> Result<()> {
    let (etcd, a, b) = fleet(40, 100_000).await?;
    let answers = concurrent_creates(&a.envoy, &b, 60).await?;
    let ids = created_ids(&answers, Some((409, "limit_reached")))?;
    ensure!(ids.len() == 40, "{} created, not 40", ids.len());
    let refused = answers.iter().filter(|(s, _)| *s == 409).count();
    ensure!(refused == 20, "{refused} refused for the limit, not 20");
    let records = records_and_slots(&etcd, 40, 100_000).await?;
    ensure!(records.len() == 40, "etcd holds {} records", records.len());

    // Full: one more is refused through either replica, until a delete frees a slot.
    let more = json!({"url": "http://127.0.0.1:9/hook/more", "events": ["*"]});
    let (status, body) = devtools::api(
        &b,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(more.clone()),
    )
    .await?;
    ensure!(status == 409, "a 41st create answered {status}: {body}");
    // One A created (B may not have synced it yet).
    let gone = answers
        .iter()
        .step_by(2)
        .find(|(status, _)| *status == 201)
        .and_then(|(_, body)| body["id"].as_str())
        .context("A created none")?
        .to_string();
    let path = format!("/webhooks/subscriptions/{gone}");
    let (status, body) = devtools::api(&a.envoy, TEST_KEY, "DELETE", &path, None).await?;
    ensure!(status == 204, "the delete answered {status}: {body}");
    let (status, body) =
        devtools::api(&b, TEST_KEY, "POST", "/webhooks/subscriptions", Some(more)).await?;
    ensure!(
        status == 201,
        "a create after the delete answered {status}: {body}"
    );
    let records = records_and_slots(&etcd, 40, 100_000).await?;
    ensure!(
        records.len() == 40 && !records.contains(&gone),
        "the deleted one's slot went to the new one"
    );
    Ok(())
}

#[tokio::test]
async fn a_registry_limit_of_forty_holds_against_sixty_concurrent_creates_over_two_replicas(
) -> Result<()> {
    let (etcd, a, b) = fleet(1000, 40).await?;
    let answers = concurrent_creates(&a.envoy, &b, 60).await?;
    let ids = created_ids(&answers, Some((409, "limit_reached")))?;
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, body)| body)
        .collect();
    ensure!(
        (ids.len(), refused.len()) == (40, 20),
        "sent 60: {} created, {} refused",
        ids.len(),
        refused.len()
    );
    let message = "at most 40 subscriptions in all (every consumer together); delete some first";
    for body in &refused {
        ensure!(body["error"]["message"] == message, "{body}");
    }
    let records = records_and_slots(&etcd, 1000, 40).await?;
    let created: BTreeSet<String> = ids.iter().cloned().collect();
    ensure!(
        records == created,
        "etcd holds {} records, {} answered 201",
        records.len(),
        created.len()
    );

    // Full through either replica, until a delete through one frees a cap slot for the other.
    let more = json!({"url": "http://127.0.0.1:9/hook/more", "events": ["*"]});
    for envoy in [&a.envoy, &b] {
        let (status, body) = devtools::api(
            envoy,
            TEST_KEY,
            "POST",
            "/webhooks/subscriptions",
            Some(more.clone()),
        )
        .await?;
        ensure!(status == 409, "a 41st create answered {status}: {body}");
    }
    let gone = answers
        .iter()
        .step_by(2)
        .find(|(status, _)| *status == 201)
        .and_then(|(_, body)| body["id"].as_str())
        .context("A created none")?
        .to_string();
    let path = format!("/webhooks/subscriptions/{gone}");
    let (status, body) = devtools::api(&a.envoy, TEST_KEY, "DELETE", &path, None).await?;
    ensure!(status == 204, "the delete answered {status}: {body}");
    let (status, body) =
        devtools::api(&b, TEST_KEY, "POST", "/webhooks/subscriptions", Some(more)).await?;
    ensure!(
        status == 201,
        "a create after the delete answered {status}: {body}"
    );
    let records = records_and_slots(&etcd, 1000, 40).await?;
    ensure!(
        records.len() == 40 && !records.contains(&gone),
        "etcd holds {} records after the delete and one create",
        records.len()
    );
    Ok(())
}
