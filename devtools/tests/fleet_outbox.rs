//! Fleet mode's durable outbox with a real etcd and real Envoys on 127.0.0.1: every message is
//! in etcd before its first attempt, so a replica killed with SIGKILL loses nothing: another
//! replica claims its messages once its lease expires (or the node, restarted, resumes them),
//! and delivers each with its webhook-id. Duplicates are allowed (at-least-once) and counted.
//! SIGTERM keeps them in etcd too, and a claimer reads only as many as its outbox has room for.
//! A message exhausted on one replica is retried through another from the copy etcd kept.
//! Every test counts: events detected = delivered + dropped (dropped or exhausted: 0 here).
//!
//! Nothing sleeps: every wait polls a condition with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use devtools::fleet::{node_id, Fleet, Stop};
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

/// Replicas by name in the tests.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
/// The counters of messages that will not be delivered.
const LOSSES: [&str; 2] = ["webhooks_events_dropped", "webhooks_deliveries_exhausted"];

/// [`plugin`] with `delivery.max_queue` set to `max_queue`.
fn with_max_queue(mut config: Value, max_queue: usize) -> Value {
    config["delivery"]["max_queue"] = json!(max_queue);
    config
}

/// The etcd prefix of the fleet's keys of `kind` (`msg`, `owner`, `dead`, ...).
fn keys_of(fleet: &Fleet, kind: &str) -> String {
    format!("{}/{kind}/", fleet.prefix())
}

async fn wait_etcd_count(fleet: &Fleet, kind: &str, n: u64, log: &Envoy) -> Result<()> {
    let prefix = keys_of(fleet, kind);
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

/// Dropped and exhausted messages counted by the running `replicas`: the total, and each
/// counter that is not 0 (`b: webhooks_events_dropped 450`).
async fn losses(fleet: &Fleet, replicas: &[usize]) -> Result<(u64, String)> {
    let (mut total, mut seen) = (0, Vec::new());
    for &i in replicas {
        for name in LOSSES {
            let value = fleet.replica(i).counter(name).await?;
            if value > 0 {
                seen.push(format!("{}: {name} {value}", node_id(i)));
            }
            total += value;
        }
    }
    Ok((total, seen.join(", ")))
}

/// The sum of counter `name` over the running `replicas`.
async fn sum(fleet: &Fleet, replicas: &[usize], name: &str) -> Result<u64> {
    let mut total = 0;
    for &i in replicas {
        total += fleet.replica(i).counter(name).await?;
    }
    Ok(total)
}

/// What replica `holder` counted, with its messages pending, before it was stopped.
struct Pending {
    secret: String,
    detected: u64,
    /// Dropped or exhausted by `holder`.
    lost: u64,
}

/// Subscribes `path` to every event through replica `api` while the receiver refuses every
/// delivery (503), and has replica `holder` detect `events` events; returns once etcd holds
/// every one of their messages (under `holder`'s lease) and none was delivered.
async fn pending_on(
    fleet: &Fleet,
    api: usize,
    holder: usize,
    path: &str,
    events: usize,
) -> Result<Pending> {
    fleet.receiver.set_default(Reply::status(503));
    let secret = subscribe(fleet.replica(api), &fleet.receiver.url(path)).await?;
    fleet.wait_active(holder, 1, WAIT).await?;
    produce(fleet.replica(holder), events).await?;
    let envoy = fleet.replica(holder);
    let detected = envoy.counter("webhooks_events_detected").await?;
    ensure!(
        detected == events as u64,
        "{} detected {detected} of {events} events",
        node_id(holder)
    );
    wait_etcd_count(fleet, "msg", events as u64, envoy).await?;
    let succeeded = envoy.counter("webhooks_deliveries_succeeded").await?;
    ensure!(
        succeeded == 0,
        "the receiver refuses, yet {succeeded} were delivered"
    );
    let (lost, _) = losses(fleet, &[holder]).await?;
    Ok(Pending {
        secret,
        detected,
        lost,
    })
}

/// Waits until `n` distinct webhook-ids were delivered at `path`, failing as soon as one of
/// the running `replicas` drops or exhausts a message (that one would never come).
async fn delivered_without_losses(
    fleet: &Fleet,
    replicas: &[usize],
    path: &str,
    n: usize,
) -> Result<()> {
    let mut lost = String::new();
    let waited = poll_until(
        WAIT,
        &format!("{n} distinct webhook-ids at {path}"),
        async || {
            if let Ok((total, seen)) = losses(fleet, replicas).await {
                if total > 0 {
                    lost = seen;
                    return true;
                }
            }
            by_webhook_id(&fleet.receiver.received(), path).len() >= n
        },
    )
    .await;
    if !lost.is_empty() {
        let got = by_webhook_id(&fleet.receiver.received(), path).len();
        bail!("messages lost ({lost}) with {got} of {n} delivered");
    }
    waited.with_context(|| {
        format!(
            "log tail of {}:\n{}",
            node_id(replicas[0]),
            fleet.replica(replicas[0]).log_tail(30)
        )
    })
}

/// Events detected = delivered (distinct webhook-ids) + dropped, and none dropped.
fn accounted(detected: u64, delivered: usize, dropped: u64) -> Result<()> {
    ensure!(
        detected == delivered as u64 + dropped && dropped == 0,
        "detected {detected} = delivered {delivered} + dropped {dropped}, and 0 dropped"
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_killed_with_pending_messages_loses_none_another_claims_and_delivers_them(
) -> Result<()> {
    const EVENTS: usize = 500;
    let mut fleet = Fleet::start(3, plugin).await?;
    let Pending { secret, .. } = pending_on(&fleet, A, B, "/crash", EVENTS).await?;
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

#[tokio::test]
async fn a_replica_stopped_with_sigterm_leaves_its_pending_messages_in_etcd_and_they_are_delivered(
) -> Result<()> {
    const EVENTS: usize = 300;
    let mut fleet = Fleet::start(3, plugin).await?;
    let b = pending_on(&fleet, A, B, "/term", EVENTS).await?;
    // How B exits is printed, not asserted: Envoy 1.40 may crash in its teardown (SIGSEGV when a
    // callout fails then); either way the messages are etcd's, which is what this test checks.
    let exit = fleet.stop(B, Stop::Term).await?;
    let log = fleet.replica(B).log_contents();
    ensure!(
        !log.contains("they are lost"),
        "B lost messages at shutdown:\n{}",
        fleet.replica(B).log_tail(20)
    );
    // Shutdown deleted nothing: every message waits in etcd under B's lease, which expires. (The
    // receiver still refuses, so no claimer can have delivered and deleted one yet.)
    let left = fleet.etcd.count(&keys_of(&fleet, "msg")).await?;
    ensure!(
        left == EVENTS as u64,
        "{left} of B's {EVENTS} messages in etcd after SIGTERM"
    );
    fleet.receiver.set_default(Reply::status(204));

    // Not restarted: A or C claims B's lease once it expires and delivers everything.
    let survivors = [A, C];
    delivered_without_losses(&fleet, &survivors, "/term", EVENTS).await?;
    let duplicates = all_delivered(
        &fleet.receiver,
        fleet.replica(A),
        "/term",
        EVENTS,
        &b.secret,
    )
    .await?;
    let claims = sum(&fleet, &survivors, "webhooks_fleet_claims").await?;
    ensure!(claims >= 1, "B's lease was claimed by A or C");
    wait_etcd_count(&fleet, "msg", 0, fleet.replica(A)).await?;
    wait_etcd_count(&fleet, "owner", 2, fleet.replica(A)).await?;
    wait_etcd_count(&fleet, "dead", 0, fleet.replica(A)).await?;
    let dropped = b.lost + losses(&fleet, &survivors).await?.0;
    accounted(b.detected, EVENTS, dropped)?;
    eprintln!("{} events detected on B before SIGTERM ({exit}): {EVENTS} delivered by A or C after B's lease expired, {duplicates} duplicate(s), {dropped} dropped", b.detected);
    Ok(())
}

#[tokio::test]
async fn a_failover_onto_a_replica_with_a_small_outbox_sheds_nothing() -> Result<()> {
    const EVENTS: usize = 500;
    const SMALL_QUEUE: usize = 50;
    // Two replicas: B holds the messages; A, the only one left to claim them, has room for a
    // tenth of them.
    let config = |i, receiver: &Receiver| match i {
        A => with_max_queue(plugin(receiver), SMALL_QUEUE),
        _ => plugin(receiver),
    };
    let mut fleet = Fleet::start_each(2, config, |envoy| envoy).await?;
    let b = pending_on(&fleet, A, B, "/small", EVENTS).await?;
    fleet.stop(B, Stop::Kill).await?;

    // A claims B's lease while the receiver still refuses: its outbox fills up, and whatever does
    // not fit must stay in etcd (nothing delivered, nothing shed into P/dead/).
    let a = fleet.replica(A);
    a.wait_for_counter("webhooks_fleet_claims", 1, WAIT).await?;
    poll_until(WAIT, "claimed messages in A's outbox", async || {
        a.gauge("webhooks_queue_depth").await.is_ok_and(|n| n > 0)
    })
    .await?;
    let depth = a.gauge("webhooks_queue_depth").await?;
    let (lost, seen) = losses(&fleet, &[A]).await?;
    ensure!(
        lost == 0,
        "A (max_queue {SMALL_QUEUE}) shed claimed messages: {seen}; {depth} in its outbox"
    );
    let left = fleet.etcd.count(&keys_of(&fleet, "msg")).await?;
    ensure!(
        left == EVENTS as u64,
        "{left} of B's {EVENTS} messages in etcd once A took {depth} into its outbox"
    );
    fleet.receiver.set_default(Reply::status(204));

    delivered_without_losses(&fleet, &[A], "/small", EVENTS).await?;
    let duplicates = all_delivered(&fleet.receiver, a, "/small", EVENTS, &b.secret).await?;
    wait_etcd_count(&fleet, "msg", 0, a).await?;
    wait_etcd_count(&fleet, "dead", 0, a).await?;
    let dropped = b.lost + losses(&fleet, &[A]).await?.0;
    accounted(b.detected, EVENTS, dropped)?;
    eprintln!("{} events pending on B at SIGKILL: {EVENTS} delivered by A (max_queue {SMALL_QUEUE}, {depth} in its outbox at its first claimed page), {duplicates} duplicate(s), {dropped} dropped", b.detected);
    Ok(())
}

/// Another consumer's key (`printf other-key | sha256sum`).
const OTHER_KEY: &str = "other-key";
const OTHER_KEY_SHA256: &str = "580843d03d2216ff1a275d0991bad66e4d1af871171d929e9de604b7959f9bca";

/// One attempt, so a refused message is exhausted at once (and kept under `P/dead/`); a
/// second consumer to ask for someone else's message.
fn one_attempt(receiver: &Receiver) -> Value {
    let mut config = plugin(receiver);
    config["delivery"]["retry_schedule"] = json!(["0s"]);
    config["api"]["keys"] = json!([
        {"consumer": "tests", "sha256": TEST_KEY_SHA256},
        {"consumer": "other", "sha256": OTHER_KEY_SHA256}
    ]);
    config
}

#[tokio::test]
async fn a_message_exhausted_on_a_is_retried_through_b_from_the_copy_etcd_kept() -> Result<()> {
    let fleet = Fleet::start(2, one_attempt).await?;
    fleet.receiver.set_default(Reply::status(500));
    let (a, b) = (fleet.replica(A), fleet.replica(B));
    let secret = subscribe(a, &fleet.receiver.url("/replay")).await?;
    fleet.wait_active(B, 1, WAIT).await?;
    produce(a, 1).await?;
    wait_etcd_count(&fleet, "dead", 1, a).await?;
    ensure!(
        a.counter("webhooks_deliveries_exhausted").await? == 1,
        "exhausted on A"
    );
    let refused = fleet.receiver.received();
    let webhook_id = refused
        .iter()
        .find(|r| r.path == "/replay")
        .and_then(|r| r.header("webhook-id"))
        .context("A's refused attempt")?
        .to_string();
    fleet.receiver.set_default(Reply::status(204));

    // B's logs have never seen it: B reads etcd's copy, and only for the message's owner.
    let retry = format!("/webhooks/deliveries/{webhook_id}/retry");
    for (key, path, want) in [
        (OTHER_KEY, retry.as_str(), 404),
        (TEST_KEY, "/webhooks/deliveries/msg_unknown/retry", 404),
        (TEST_KEY, retry.as_str(), 202),
    ] {
        let (status, body) = devtools::api(b, key, "POST", path, None).await?;
        ensure!(
            status == want,
            "{key} {path}: {status} {body}, wanted {want}"
        );
    }
    poll_until(WAIT, "the replayed webhook delivered", async || {
        by_webhook_id(&fleet.receiver.received(), "/replay").contains_key(&webhook_id)
    })
    .await
    .with_context(|| format!("B's log tail:\n{}", b.log_tail(20)))?;
    let delivered = by_webhook_id(&fleet.receiver.received(), "/replay");
    ensure!(
        delivered.len() == 1,
        "one webhook-id: {:?}",
        delivered.keys()
    );
    let (count, webhook) = &delivered[&webhook_id];
    ensure!(*count == 1, "delivered once: {count}");
    let body = webhook.verify(&secret)?;
    ensure!(
        body["data"]["object"]["n"] == json!(0),
        "the same body: {body}"
    );
    ensure!(
        b.counter("webhooks_deliveries_succeeded").await? == 1,
        "by B"
    );
    ensure!(
        a.counter("webhooks_deliveries_succeeded").await? == 0,
        "not by A"
    );
    // Exhausted once, then delivered on request: nothing is lost in the end.
    let detected = a.counter("webhooks_events_detected").await?;
    accounted(detected, delivered.len(), 0)?;
    // B put it in its own outbox in etcd first and took it out once delivered, with the copy.
    wait_etcd_count(&fleet, "msg", 0, b).await?;
    wait_etcd_count(&fleet, "dead", 0, b).await?;
    let (status, body) = devtools::api(b, TEST_KEY, "POST", &retry, None).await?;
    ensure!(
        status == 409,
        "a delivered message again through B: {status} {body}"
    );
    eprintln!("1 event detected on A, exhausted there (receiver 500), retried through B from etcd's copy: delivered once by B with webhook-id {webhook_id}");
    Ok(())
}

/// `GET .../deliveries` of the only subscription, through replica `r`.
async fn delivery_log(fleet: &Fleet, r: usize) -> Result<Vec<Value>> {
    let envoy = fleet.replica(r);
    let (_, list) = devtools::api(envoy, TEST_KEY, "GET", "/webhooks/subscriptions", None).await?;
    let id = list["data"][0]["id"].as_str().context("no subscription")?;
    let path = format!("/webhooks/subscriptions/{id}/deliveries");
    let (status, log) = devtools::api(envoy, TEST_KEY, "GET", &path, None).await?;
    ensure!(status == 200, "{path} answered {status}: {log}");
    Ok(log["data"].as_array().cloned().unwrap_or_default())
}

/// The webhook-ids of a log's entries in `state`.
fn ids_in(log: &[Value], state: &str) -> std::collections::BTreeSet<String> {
    log.iter()
        .filter(|a| a["state"] == state)
        .filter_map(|a| a["webhook_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn every_replica_answers_the_same_delivery_log_a_dead_replicas_attempts_included(
) -> Result<()> {
    const EVENTS: usize = 5;
    let mut fleet = Fleet::start(3, plugin).await?;
    let Pending { detected, .. } = pending_on(&fleet, A, B, "/log", EVENTS).await?;
    // B's failed attempts reach A's answer through etcd.
    let mut failed_on_b = Default::default();
    poll_until(
        WAIT,
        "B's failed attempts in A's delivery log",
        async || {
            failed_on_b = delivery_log(&fleet, A)
                .await
                .map(|l| ids_in(&l, "retrying"))
                .unwrap_or_default();
            failed_on_b.len() == EVENTS
        },
    )
    .await?;
    fleet.stop(B, Stop::Kill).await?;
    fleet.receiver.set_default(Reply::status(204));
    delivered_without_losses(&fleet, &[A, C], "/log", EVENTS).await?;

    let (mut on_a, mut on_c) = (Vec::new(), Vec::new());
    poll_until(
        WAIT,
        "the same log with every delivery on A and C",
        async || {
            on_a = delivery_log(&fleet, A).await.unwrap_or_default();
            on_c = delivery_log(&fleet, C).await.unwrap_or_default();
            ids_in(&on_a, "succeeded").len() == EVENTS && on_a == on_c
        },
    )
    .await
    .with_context(|| format!("A: {on_a:?}\nC: {on_c:?}"))?;
    ensure!(
        ids_in(&on_a, "retrying") == failed_on_b,
        "the dead replica's attempts are still answered"
    );
    // A claimed message goes on from the attempts B logged: its number follows theirs.
    let number = |a: &Value| a["attempt"].as_u64().unwrap_or(0);
    for success in on_a.iter().filter(|a| a["state"] == "succeeded") {
        let before = on_a
            .iter()
            .filter(|a| a["state"] == "retrying" && a["webhook_id"] == success["webhook_id"])
            .map(number)
            .max()
            .unwrap_or(0);
        ensure!(
            number(success) > before,
            "{success} is numbered after B's {before} attempt(s)"
        );
    }
    let delivered = by_webhook_id(&fleet.receiver.received(), "/log").len();
    let (dropped, _) = losses(&fleet, &[A, C]).await?;
    accounted(detected, delivered, dropped)
}
