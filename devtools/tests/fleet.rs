//! Fleet mode (SPEC "Fleet mode") with a real etcd (Debian's etcd-server 3.4, `make etcd`) and
//! three real Envoys (`devtools::Fleet`, node ids a, b, c) running the real `.wasm`, all on
//! 127.0.0.1: the registry is etcd's, and every replica serves and delivers what etcd holds
//! within `sync_interval`.
//!
//! Nothing sleeps, but the etcd outage, whose 5 s are the scenario: every wait polls a condition
//! with a deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use devtools::fleet::node_id;
use devtools::fleet::produce;
use devtools::receiver::describe;
use devtools::{api, api_sent, poll_until, Envoy, Fleet, Receiver, Reply, Sent, Stop};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// An API key and its SHA-256 (`printf test-key | sha256sum`).
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
/// Generous against `sync_interval` (200 ms) on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(15);
/// Replicas in every test: a, b and c.
const REPLICAS: usize = 3;
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";

/// The plugin configuration of every replica (the `fleet` section is `Fleet`'s: prefix
/// `/pw-test`, `sync_interval` 200 ms, `lease_ttl` 3 s, the replica's node id).
fn plugin() -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "300ms"],
                     "allow_http": true, "allow_private_destinations": true}
    })
}

async fn three() -> Result<Fleet> {
    let fleet = Fleet::start(REPLICAS, |_| plugin()).await?;
    fleet.receiver.set_default(Reply::status(204));
    Ok(fleet)
}

/// A subscription record as the plugin keeps it (what another replica's API would have written).
fn record(id: &str, url: &str) -> Value {
    json!({"id": id, "consumer": "tests", "url": url, "events": ["*"], "status": "active",
           "created_at_ms": 1_795_000_000_000u64, "updated_at_ms": 1_795_000_000_000u64,
           "secrets": [{"secret": SECRET}], "version": 1})
}

/// The `n` of an event made by [`produce`].
fn event_n(hook: &devtools::Received) -> Option<u64> {
    hook.json().ok()?["data"]["object"]["n"].as_u64()
}

/// The `n`s delivered at `path` of `receiver`, sorted.
fn ns_at(receiver: &Receiver, path: &str) -> Vec<u64> {
    let mut ns: Vec<u64> = receiver
        .received()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(event_n)
        .collect();
    ns.sort_unstable();
    ns
}

/// Waits until `path` got exactly the events `ns` (sorted), each verified with `secret`.
async fn wait_ns(receiver: &Receiver, path: &str, ns: &[u64], secret: &str) -> Result<()> {
    poll_until(WAIT, &format!("events {ns:?} at {path}"), async || {
        ns_at(receiver, path) == ns
    })
    .await
    .with_context(|| format!("received: {}", describe(&receiver.received())))?;
    for hook in receiver.received().iter().filter(|r| r.path == path) {
        hook.verify(secret)
            .with_context(|| format!("signature at {path}"))?;
    }
    Ok(())
}

/// Waits until no replica holds a pending message (`webhooks_queue_depth` 0 everywhere: every
/// message delivered or given up), then checks the counts of the whole fleet: `detected` events,
/// `delivered` deliveries, nothing dropped or failed.
async fn settled(fleet: &Fleet, detected: u64, delivered: u64) -> Result<()> {
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        poll_until(
            WAIT,
            &format!("no message pending on {}", node_id(i)),
            async || envoy.gauge("webhooks_queue_depth").await.ok() == Some(0),
        )
        .await?;
    }
    let counts = (
        fleet.counter_sum("webhooks_events_detected").await?,
        fleet.counter_sum("webhooks_deliveries_succeeded").await?,
        fleet.counter_sum("webhooks_events_dropped").await?,
    );
    ensure!(
        counts == (detected, delivered, 0),
        "(detected, delivered, dropped) over the fleet: {counts:?}, expected ({detected}, {delivered}, 0)"
    );
    Ok(())
}

/// Creates a subscription at `url` through `envoy`: its id and secret.
async fn create(envoy: &Envoy, url: &str) -> Result<(String, String)> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, created) = api(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let id = created["id"].as_str().context("no id")?.to_string();
    let secret = created["secret"].as_str().context("no secret")?.to_string();
    Ok((id, secret))
}

/// `GET /webhooks/subscriptions/{id}` through `envoy`.
async fn get(envoy: &Envoy, id: &str) -> Result<(u16, Value)> {
    api(
        envoy,
        TEST_KEY,
        "GET",
        &format!("{SUBSCRIPTIONS}/{id}"),
        None,
    )
    .await
}

#[tokio::test]
async fn created_through_a_delivered_for_events_b_and_c_detect_deleted_through_c_then_delivered_by_none(
) -> Result<()> {
    let fleet = three().await?;
    let (a, b, c) = (fleet.replica(0), fleet.replica(1), fleet.replica(2));
    let rx = &fleet.receiver;

    let (id, secret) = create(a, &rx.url("/api")).await?;
    ensure!(
        fleet.stored(&id).await?.is_some(),
        "a 201 means etcd has it"
    );
    fleet.wait_all_active(1, WAIT).await?;
    for (i, envoy) in [(1, b), (2, c)] {
        let (status, seen) = get(envoy, &id).await?;
        ensure!(
            status == 200 && seen["id"] == id.as_str() && seen["status"] == "active",
            "{} serves it: {status} {seen}",
            node_id(i)
        );
    }
    produce(b, 1).await?;
    produce(c, 2).await?;
    wait_ns(rx, "/api", &[1, 2], &secret).await?;

    // Deleted through C: gone from etcd at once, and from A and B within sync_interval.
    let path = format!("{SUBSCRIPTIONS}/{id}");
    let (status, body) = api(c, TEST_KEY, "DELETE", &path, None).await?;
    ensure!(status == 204, "delete through C answered {status}: {body}");
    ensure!(
        fleet.stored(&id).await?.is_none(),
        "a 204 means etcd no longer has it"
    );
    fleet.wait_all_active(0, WAIT).await?;
    for (i, envoy) in [(0, a), (1, b)] {
        let (status, _) = get(envoy, &id).await?;
        ensure!(
            status == 404,
            "{} no longer serves it: {status}",
            node_id(i)
        );
    }
    produce(a, 3).await?;
    produce(b, 4).await?;
    // Proof that 3 and 4 went through fan-out without reaching the deleted subscription: later
    // events, after them in each replica's queue, reach a subscription created afterwards.
    let (_, late_secret) = create(b, &rx.url("/late")).await?;
    fleet.wait_all_active(1, WAIT).await?;
    produce(a, 5).await?;
    produce(b, 6).await?;
    wait_ns(rx, "/late", &[5, 6], &late_secret).await?;
    settled(&fleet, 6, 4).await?;
    ensure!(
        ns_at(rx, "/api") == [1, 2],
        "no delivery to the deleted subscription: {:?}",
        ns_at(rx, "/api")
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_restarted_with_sigterm_or_sigkill_reads_the_registry_from_etcd_again_and_delivers(
) -> Result<()> {
    let mut fleet = three().await?;
    let (id, secret) = create(fleet.replica(0), &fleet.receiver.url("/api")).await?;
    fleet.wait_all_active(1, WAIT).await?;

    fleet.restart(1, Stop::Term).await?;
    fleet.restart(2, Stop::Kill).await?;
    for i in [1, 2] {
        fleet.wait_active(i, 1, WAIT).await?;
        let (status, seen) = get(fleet.replica(i), &id).await?;
        ensure!(
            status == 200 && seen["id"] == id.as_str(),
            "{} restarted serves it: {status} {seen}",
            node_id(i)
        );
    }
    produce(fleet.replica(1), 1).await?;
    produce(fleet.replica(2), 2).await?;
    wait_ns(&fleet.receiver, "/api", &[1, 2], &secret).await?;
    settled(&fleet, 2, 2).await?;
    Ok(())
}

/// A consumer's API key and the `api.keys` entry for it.
fn consumer_key(consumer: &str) -> (String, Value) {
    let key = format!("key-{consumer}");
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (key, json!({"consumer": consumer, "sha256": hex}))
}

/// A create as a client does it: sent again after a 503 `unavailable` (nothing was changed;
/// `Retry-After: 1`), at most 20 times; counted in `unavailable`.
async fn create_as_a_client_would(
    envoy: &Envoy,
    key: &str,
    body: Value,
    unavailable: &std::sync::atomic::AtomicUsize,
) -> Result<(u16, Value)> {
    for _ in 0..20 {
        let (status, answer) = api(envoy, key, "POST", SUBSCRIPTIONS, Some(body.clone())).await?;
        if status != 503 {
            return Ok((status, answer));
        }
        unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The answer's Retry-After.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("a create answered 503 twenty times")
}

#[tokio::test]
async fn concurrent_creates_over_three_replicas_are_all_in_etcd_listed_by_every_replica_and_keep_each_consumers_limit(
) -> Result<()> {
    const LIMIT: usize = 100;
    // 200 creates by consumers with room for them (each ends exactly at the limit), and a
    // greedy consumer's 130 at the same time, of which exactly the limit may be created.
    let roomy = ["alpha", "beta"];
    let greedy = "greedy";
    const GREEDY_TRIES: usize = 130;
    let keys: Vec<(String, Value)> = roomy
        .iter()
        .chain([&greedy])
        .map(|c| consumer_key(c))
        .collect();
    let entries: Vec<Value> = keys.iter().map(|(_, entry)| entry.clone()).collect();
    let fleet = Fleet::start(REPLICAS, |_| {
        let mut p = plugin();
        p["api"]["keys"] = json!(entries);
        p["api"]["max_subscriptions_per_consumer"] = json!(LIMIT);
        p
    })
    .await?;
    let url = fleet.receiver.url("/many");
    let mut calls = Vec::new();
    for (c, (key, _)) in keys.iter().enumerate() {
        let tries = if c < roomy.len() { LIMIT } else { GREEDY_TRIES };
        calls.extend((0..tries).map(|_| (c, key.as_str())));
    }
    let unavailable = std::sync::atomic::AtomicUsize::new(0);
    let answers = futures_util::future::join_all(calls.iter().enumerate().map(|(n, &(c, key))| {
        let envoy = fleet.replica(n % REPLICAS);
        let body = json!({"url": url, "events": ["*"]});
        let unavailable = &unavailable;
        async move {
            (
                c,
                create_as_a_client_would(envoy, key, body, unavailable).await,
            )
        }
    }))
    .await;
    eprintln!(
        "{} creates answered 503 (etcd did not confirm them in time) and were sent again",
        unavailable.load(std::sync::atomic::Ordering::Relaxed)
    );

    let mut created: Vec<BTreeSet<String>> = vec![BTreeSet::new(); keys.len()];
    let mut refused = vec![0usize; keys.len()];
    for (c, answer) in answers {
        let (status, body) = answer?;
        match status {
            201 => {
                let id = body["id"].as_str().context("no id")?.to_string();
                ensure!(created[c].insert(id), "an id given twice: {body}");
            }
            409 if body["error"]["code"] == "limit_reached" => refused[c] += 1,
            other => bail!("create for consumer {c} answered {other}: {body}"),
        }
    }
    let sizes: Vec<usize> = created.iter().map(BTreeSet::len).collect();
    ensure!(
        sizes == [LIMIT; 3] && refused == [0, 0, GREEDY_TRIES - LIMIT],
        "created per consumer {sizes:?}, refused {refused:?}: the 200 with room all created, \
         exactly the limit of the greedy one"
    );
    let all: BTreeSet<&String> = created.iter().flatten().collect();
    let total = 2 * LIMIT + LIMIT;
    ensure!(all.len() == total);

    // etcd holds exactly those.
    let stored: BTreeSet<String> = fleet
        .etcd
        .range(&fleet.subscription_key(""))
        .await?
        .into_iter()
        .map(|(key, _)| key.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    ensure!(
        stored.iter().collect::<BTreeSet<_>>() == all,
        "etcd holds {} records, {} created",
        stored.len(),
        all.len()
    );
    // Every replica lists each consumer's own, all of them.
    fleet.wait_all_active(total as u64, WAIT).await?;
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        for (c, (key, _)) in keys.iter().enumerate() {
            let (status, list) = api(envoy, key, "GET", SUBSCRIPTIONS, None).await?;
            ensure!(status == 200, "list on {}: {status} {list}", node_id(i));
            let listed: BTreeSet<String> = list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| Some(s["id"].as_str()?.to_string()))
                .collect();
            ensure!(
                listed == created[c] && list["has_more"] == false,
                "{} lists {} of consumer {c}'s {} subscriptions",
                node_id(i),
                listed.len(),
                created[c].len()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_410_seen_by_a_disables_the_subscription_on_b_and_c_and_in_etcd() -> Result<()> {
    let fleet = three().await?;
    let (a, b, c) = (fleet.replica(0), fleet.replica(1), fleet.replica(2));
    let rx = &fleet.receiver;
    // The subscription that answers 410 has a receiver of its own, so the 410 goes to it alone.
    let gone_rx = Receiver::start().await?;

    // Written by "another replica" (straight into etcd): every replica picks both up.
    fleet
        .put_stored("sub_gone", &record("sub_gone", &gone_rx.url("/gone")))
        .await?;
    fleet
        .put_stored("sub_kept", &record("sub_kept", &rx.url("/kept")))
        .await?;
    fleet.wait_all_active(2, WAIT).await?;
    for (n, envoy) in [a, b, c].into_iter().enumerate() {
        produce(envoy, n + 1).await?;
    }
    wait_ns(rx, "/kept", &[1, 2, 3], SECRET).await?;
    wait_ns(&gone_rx, "/gone", &[1, 2, 3], SECRET).await?;

    // A 410 seen by A disables it in etcd, and so on B and C.
    gone_rx.set_default(Reply::status(410));
    produce(a, 4).await?;
    poll_until(WAIT, "sub_gone disabled in etcd", async || {
        let record = fleet.stored("sub_gone").await.ok().flatten();
        record.is_some_and(|r| r["status"] == "disabled" && r["disabled_reason"] == "gone")
    })
    .await
    .with_context(|| format!("A's log:\n{}", a.log_tail(20)))?;
    for (i, envoy) in [(1, b), (2, c)] {
        fleet.wait_active(i, 1, WAIT).await?;
        let (status, seen) = get(envoy, "sub_gone").await?;
        ensure!(
            status == 200 && seen["status"] == "disabled" && seen["disabled_reason"] == "gone",
            "{} shows it disabled for gone: {status} {seen}",
            node_id(i)
        );
    }
    produce(b, 5).await?;
    produce(c, 6).await?;
    wait_ns(rx, "/kept", &[1, 2, 3, 4, 5, 6], SECRET).await?;
    // 9 deliveries succeeded (6 to /kept, 3 to /gone before the 410); the 410 is a failure.
    settled(&fleet, 6, 9).await?;
    ensure!(
        ns_at(&gone_rx, "/gone") == [1, 2, 3, 4],
        "B and C did not deliver to the disabled subscription: {:?}",
        ns_at(&gone_rx, "/gone")
    );
    Ok(())
}

/// A request through `envoy` outside the API that the upstream answers with `status`.
async fn proxied(envoy: &Envoy, method: &str, path: &str, status: u16) -> Result<Sent> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let response = envoy
        .client()
        .request(method, envoy.url(path))
        .header("x-test-status", status.to_string())
        .send()
        .await
        .with_context(|| format!("{path} through Envoy"))?;
    Sent::read(response).await
}

#[tokio::test]
async fn while_etcd_is_down_writes_answer_503_reads_and_proxied_traffic_go_on_and_events_are_delivered(
) -> Result<()> {
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut fleet = three().await?;
    let (id, secret) = create(fleet.replica(0), &fleet.receiver.url("/api")).await?;
    fleet.wait_all_active(1, WAIT).await?;
    produce(fleet.replica(1), 1).await?;
    wait_ns(&fleet.receiver, "/api", &[1], &secret).await?;

    fleet.etcd.stop().await?;
    let stopped = Instant::now();
    let upstream_before = fleet.upstream.requests().len();
    let mut sent = 0;
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        // Writes: refused, never a false 201 (or 204).
        let body = json!({"url": fleet.receiver.url("/outage"), "events": ["*"]});
        let answer = api_sent(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await?;
        let code = answer.json().ok().map(|v| v["error"]["code"].clone());
        ensure!(
            answer.status == 503
                && code == Some(json!("unavailable"))
                && answer.headers.contains_key("retry-after"),
            "create through {} while etcd is down: {} {:?} {}",
            node_id(i),
            answer.status,
            answer.headers,
            String::from_utf8_lossy(&answer.body)
        );
        let path = format!("{SUBSCRIPTIONS}/{id}");
        let (status, body) = api(envoy, TEST_KEY, "DELETE", &path, None).await?;
        ensure!(
            status == 503 && body["error"]["code"] == "unavailable",
            "delete through {} while etcd is down: {status} {body}",
            node_id(i)
        );
        // Reads: the last synced state.
        let (status, seen) = get(envoy, &id).await?;
        ensure!(
            status == 200 && seen["status"] == "active",
            "get through {}: {status} {seen}",
            node_id(i)
        );
        let (status, list) = api(envoy, TEST_KEY, "GET", SUBSCRIPTIONS, None).await?;
        let listed = list["data"].as_array().map(Vec::len);
        ensure!(
            status == 200 && listed == Some(1),
            "list through {}: {status} {list}",
            node_id(i)
        );
        // Proxied traffic: every request answered by the upstream with its own status; the
        // two 2xx writes are events, delivered from memory.
        for (method, path, status) in [
            ("GET", "/orders", 200),
            ("POST", "/orders", 500),
            ("PUT", "/orders/7", 404),
            ("DELETE", "/orders/8", 503),
        ] {
            let answer = proxied(envoy, method, path, status).await?;
            let upstream = answer.json().ok();
            ensure!(
                answer.status == status
                    && upstream.is_some_and(|u| u["path"] == path && u["method"] == method),
                "{method} {path} through {} answered {} {}",
                node_id(i),
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            sent += 1;
        }
        for n in 0..2 {
            produce(envoy, 10 * (i + 1) + n).await?;
            sent += 1;
        }
    }
    ensure!(
        fleet.upstream.requests().len() - upstream_before == sent,
        "every proxied request reached the upstream, no API call did"
    );
    let during = [1, 10, 11, 20, 21, 30, 31];
    wait_ns(&fleet.receiver, "/api", &during, &secret).await?;
    settled(&fleet, 7, 7).await?;
    ensure!(
        fleet.counter_sum("webhooks_fleet_etcd_errors").await? > 0,
        "the outage is counted"
    );
    ensure!(
        !fleet.etcd.is_running(),
        "all of the above happened while etcd was down"
    );

    // The scenario is a 5 s outage: wait out what is left of it.
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    fleet.etcd.start_again().await?;

    // etcd is back: a create through any replica is confirmed again and seen by the others.
    let mut created = None;
    poll_until(WAIT, "a create through C answered 201 again", async || {
        let body = json!({"url": fleet.receiver.url("/after"), "events": ["*"]});
        let answer = api(
            fleet.replica(2),
            TEST_KEY,
            "POST",
            SUBSCRIPTIONS,
            Some(body),
        )
        .await;
        if let Ok((201, created_now)) = answer {
            created = Some(created_now);
            return true;
        }
        false
    })
    .await?;
    let after = created.context("created")?;
    let after_id = after["id"].as_str().context("no id")?;
    ensure!(fleet.stored(after_id).await?.is_some());
    fleet.wait_all_active(2, WAIT).await?;
    for i in [0, 1] {
        let (status, _) = get(fleet.replica(i), after_id).await?;
        ensure!(status == 200, "{} serves the new one: {status}", node_id(i));
    }
    // The subscription the refused deletes were about is still there, in etcd and everywhere.
    ensure!(
        fleet.stored(&id).await?.is_some(),
        "refused deletes changed nothing"
    );
    Ok(())
}
