//! `POST .../subscriptions/{id}/recover` (SPEC.md, "Subscription API"), against a real Envoy
//! with the real `.wasm`: a receiver down for a while, its messages exhausted on a short
//! schedule, then recovered since a time before the outage: each one sent again once, with its
//! webhook-id, in detection order, and none from before that time; past the replay bound,
//! `not_kept` counts what is gone. In fleet mode, messages exhausted on replica A are recovered
//! through replica B (and A at the same moment) from the copies etcd kept: each once across the
//! fleet.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::fleet::Fleet;
use devtools::receiver::describe;
use devtools::{api, http_client, poll_until, Envoy, Received, Receiver, Reply, Sent, Stack};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const WAIT: Duration = Duration::from_secs(10);
const RECOVER: &str = "/webhooks/subscriptions/sub_rx/recover";

/// One static subscription at the receiver; two attempts 100 ms apart, then exhausted.
fn config(rx: &Receiver, delivery: Value) -> Value {
    let mut settings = json!({"retry_schedule": ["0s", "100ms"], "jitter": 0,
                              "allow_insecure_destinations": true});
    if let (Some(base), Some(extra)) = (settings.as_object_mut(), delivery.as_object()) {
        base.extend(extra.clone());
    }
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "subscriptions": [{"id": "sub_rx", "consumer": "tests", "url": rx.url("/hook"),
                           "events": ["*"], "secret": SECRET}],
        "delivery": settings
    })
}

fn n_of(hook: &Received) -> u64 {
    hook.json()
        .ok()
        .and_then(|v| v["data"]["object"]["n"].as_u64())
        .unwrap_or(u64::MAX)
}

fn webhook_id(hook: &Received) -> String {
    hook.header("webhook-id").unwrap_or_default().to_string()
}

fn now_rfc3339() -> Result<String> {
    Ok(OffsetDateTime::now_utc().format(&Rfc3339)?)
}

/// Produces events `range` one after the other while the receiver fails, and waits until all
/// of them are exhausted (`exhausted` in all so far); returns their webhook-ids by `n`.
async fn exhaust(
    stack: &Stack,
    range: std::ops::Range<usize>,
    exhausted: u64,
) -> Result<Vec<(u64, String)>> {
    for n in range.clone() {
        stack.produce(n).await?;
    }
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_exhausted", exhausted, WAIT)
        .await?;
    let mut ids: Vec<(u64, String)> = stack
        .receiver
        .received()
        .iter()
        .filter(|h| range.contains(&(n_of(h) as usize)))
        .map(|h| (n_of(h), webhook_id(h)))
        .collect();
    ids.sort();
    ids.dedup();
    ensure!(ids.len() == range.len(), "one id per event: {ids:?}");
    // What the API counts is written at the dispatcher's next tick, with the attempt log.
    let deadline = std::time::Instant::now() + WAIT;
    let path = "/webhooks/subscriptions/sub_rx/deliveries";
    loop {
        let (_, log) = api(&stack.envoy, TEST_KEY, "GET", path, None).await?;
        let logged = log["data"].as_array().into_iter().flatten();
        let done = logged.filter(|e| e["state"] == "exhausted").count() as u64;
        if done >= exhausted.min(25) {
            return Ok(ids);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "not logged exhausted: {log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `n` more webhooks after the first `seen`, then checks nothing else follows
/// within a retry window; returns them.
async fn recovered(stack: &Stack, seen: usize, n: usize) -> Result<Vec<Received>> {
    let all = stack.webhooks(seen + n, WAIT).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", n as u64, WAIT)
        .await?;
    // A second copy would come at once (no retry is pending: every attempt succeeded).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_now = stack.receiver.received();
    ensure!(
        all_now.len() == all.len(),
        "more than recovered: {}",
        describe(&all_now)
    );
    let again: Vec<Received> = all_now.into_iter().skip(seen).collect();
    for hook in &again {
        hook.verify(SECRET).context("signature")?;
    }
    Ok(again)
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_sends_every_message_since_then_once_in_detection_order() -> Result<()> {
    let stack = Stack::start(|rx| config(rx, json!({}))).await?;
    stack.receiver.set_default(Reply::status(500));
    let before = exhaust(&stack, 0..3, 3).await?;
    // Detection times are in milliseconds: the outage starts strictly after `since`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = now_rfc3339()?;
    let during = exhaust(&stack, 3..13, 13).await?;
    let seen = stack.receiver.received().len();
    ensure!(
        seen == 26,
        "two attempts each: {}",
        describe(&stack.receiver.received())
    );

    stack.receiver.set_default(Reply::status(204));
    let (status, body) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        RECOVER,
        Some(json!({"since": since})),
    )
    .await?;
    ensure!(status == 202, "recover answered {status}: {body}");
    ensure!(body == json!({"count": 10, "not_kept": 0}), "{body}");
    let again = recovered(&stack, seen, 10).await?;
    // Queued in detection order; this subscription is concurrent, so arrivals may interleave
    // (a `fifo` one receives them in order: fifo.rs).
    let mut got: Vec<(u64, String)> = again.iter().map(|h| (n_of(h), webhook_id(h))).collect();
    got.sort();
    ensure!(
        got == during,
        "the outage's messages, once each: {got:?} vs {during:?}"
    );
    let before: HashSet<String> = before.into_iter().map(|(_, id)| id).collect();
    ensure!(
        got.iter().all(|(_, id)| !before.contains(id)),
        "none from before `since`"
    );

    // Sent again: no longer kept, so a second recover finds nothing.
    let (status, body) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        RECOVER,
        Some(json!({"since": since})),
    )
    .await?;
    ensure!(
        (status, &body) == (202, &json!({"count": 0, "not_kept": 0})),
        "{status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_replay_bound_not_kept_counts_what_is_gone() -> Result<()> {
    let stack = Stack::start(|rx| config(rx, json!({"max_replay_per_consumer": 4}))).await?;
    stack.receiver.set_default(Reply::status(500));
    let since = now_rfc3339()?;
    let exhausted = exhaust(&stack, 0..7, 7).await?;
    let seen = stack.receiver.received().len();

    stack.receiver.set_default(Reply::status(204));
    let (status, body) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        RECOVER,
        Some(json!({"since": since})),
    )
    .await?;
    ensure!(status == 202, "recover answered {status}: {body}");
    ensure!(body == json!({"count": 4, "not_kept": 3}), "{body}");
    let again = recovered(&stack, seen, 4).await?;
    let mut got: Vec<(u64, String)> = again.iter().map(|h| (n_of(h), webhook_id(h))).collect();
    got.sort();
    // The bound forgets what failed first; with concurrent retries that is not always what was
    // detected first.
    let distinct: HashSet<&(u64, String)> = got.iter().collect();
    ensure!(distinct.len() == 4, "four, once each: {got:?}");
    ensure!(
        got.iter().all(|m| exhausted.contains(m)),
        "the exhausted ones: {got:?}"
    );

    for (body, want) in [
        (json!({"since": "yesterday"}), (422, "invalid_since")),
        (json!({}), (422, "missing_field")),
    ] {
        let (status, answer) = api(&stack.envoy, TEST_KEY, "POST", RECOVER, Some(body)).await?;
        ensure!(
            (status, answer["error"]["code"].as_str().unwrap_or("")) == want,
            "{answer}"
        );
    }
    let other = "/webhooks/subscriptions/sub_other/recover";
    let (status, _) = api(
        &stack.envoy,
        TEST_KEY,
        "POST",
        other,
        Some(json!({"since": since})),
    )
    .await?;
    ensure!(status == 404);
    Ok(())
}

/// Events `range` produced through `envoy`, one at a time (so detected in this order).
async fn produce_through(envoy: &Envoy, range: std::ops::Range<usize>) -> Result<()> {
    produce_padded(envoy, range, 0).await
}

/// [`produce_through`], each event's object padded with `pad` bytes.
async fn produce_padded(envoy: &Envoy, range: std::ops::Range<usize>, pad: usize) -> Result<()> {
    let client = http_client();
    for n in range {
        let body = json!({ "n": n, "pad": "x".repeat(pad) }).to_string();
        let request = client
            .post(envoy.url("/orders"))
            .header("x-test-body", body);
        let sent = Sent::read(request.send().await?).await?;
        ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
    }
    Ok(())
}

/// Waits until etcd keeps `n` copies under `P/dead/`.
async fn wait_dead(fleet: &Fleet, n: u64) -> Result<()> {
    let prefix = format!("{}/dead/", fleet.prefix());
    poll_until(WAIT, &format!("{n} keys under {prefix}"), async || {
        fleet.etcd.count(&prefix).await.ok() == Some(n)
    })
    .await
}

/// (n, webhook-id) of every webhook received so far that the receiver answered 2xx.
fn delivered(rx: &Receiver) -> Vec<(u64, String)> {
    let received = rx.received();
    received
        .iter()
        .filter(|h| h.replied < 300)
        .map(|h| (n_of(h), webhook_id(h)))
        .collect()
}

/// The webhook-ids of the refused webhooks of events `range`.
fn refused_ids(rx: &Receiver, range: std::ops::Range<u64>) -> HashSet<String> {
    let received = rx.received();
    received
        .iter()
        .filter(|h| h.replied >= 300 && range.contains(&n_of(h)))
        .map(webhook_id)
        .collect()
}

/// Waits until the receiver accepted `want` (and only it), each once, with a valid signature,
/// past a moment in which a second copy would have come (every attempt succeeds).
async fn accepted_once(fleet: &Fleet, want: &HashSet<String>) -> Result<()> {
    let accepted = |ids: &HashSet<String>| {
        let all = delivered(&fleet.receiver);
        all.iter().filter(|(_, id)| ids.contains(id)).count()
    };
    poll_until(WAIT, "the recovered webhooks", async || {
        accepted(want) >= want.len()
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (_, id) in delivered(&fleet.receiver) {
        *per_id.entry(id).or_default() += 1;
    }
    let got: HashSet<String> = per_id.keys().cloned().collect();
    ensure!(&got == want, "the outage's messages: {got:?} vs {want:?}");
    ensure!(per_id.values().all(|n| *n == 1), "once each: {per_id:?}");
    for hook in fleet.receiver.received().iter().filter(|h| h.replied < 300) {
        hook.verify(SECRET).context("signature")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_recover_through_b_sends_what_a_exhausted_once_across_the_fleet() -> Result<()> {
    let fleet = Fleet::start(2, |rx| config(rx, json!({}))).await?;
    let (a, b) = (fleet.replica(0), fleet.replica(1));
    fleet.receiver.set_default(Reply::status(500));
    produce_through(a, 0..3).await?;
    wait_dead(&fleet, 3).await?;
    // Detection times are in milliseconds: the outage starts strictly after `since`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = now_rfc3339()?;
    produce_through(a, 3..13).await?;
    wait_dead(&fleet, 13).await?;
    let (before, during) = (
        refused_ids(&fleet.receiver, 0..3),
        refused_ids(&fleet.receiver, 3..13),
    );
    ensure!((before.len(), during.len()) == (3, 10), "one id per event");

    // Through B, which never saw them: etcd's copies, wherever they were kept.
    fleet.receiver.set_default(Reply::status(204));
    let (status, answer) = api(b, TEST_KEY, "POST", RECOVER, Some(json!({"since": since}))).await?;
    ensure!(
        (status, &answer) == (202, &json!({"count": 10, "not_kept": 0})),
        "recover through B answered {status} {answer}"
    );
    accepted_once(&fleet, &during).await?;
    ensure!(
        b.counter("webhooks_deliveries_succeeded").await? == 10,
        "sent by B"
    );
    // Out of etcd once sent: a recover through either finds nothing more; the copies from
    // before `since` stay.
    wait_dead(&fleet, 3).await?;
    for envoy in [a, b] {
        let (status, answer) = api(
            envoy,
            TEST_KEY,
            "POST",
            RECOVER,
            Some(json!({"since": since})),
        )
        .await?;
        ensure!(
            (status, answer["count"].as_u64()) == (202, Some(0)),
            "{status} {answer}"
        );
    }

    // A second outage, recovered through A (which keeps it in memory too) and B at once: each
    // copy is taken by one call only.
    fleet.receiver.set_default(Reply::status(500));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = now_rfc3339()?;
    produce_through(a, 13..23).await?;
    wait_dead(&fleet, 13).await?;
    let second = refused_ids(&fleet.receiver, 13..23);
    fleet.receiver.set_default(Reply::status(204));
    let body = || Some(json!({"since": since}));
    let (on_a, on_b) = tokio::join!(
        api(a, TEST_KEY, "POST", RECOVER, body()),
        api(b, TEST_KEY, "POST", RECOVER, body())
    );
    let ((status_a, answer_a), (status_b, answer_b)) = (on_a?, on_b?);
    ensure!(
        (status_a, status_b) == (202, 202),
        "recover answered {status_a} {answer_a} / {status_b} {answer_b}"
    );
    let counts = [&answer_a, &answer_b].map(|v| v["count"].as_u64().unwrap_or(99));
    ensure!(
        counts.iter().sum::<u64>() == 10,
        "the ten, split between the calls: {answer_a} {answer_b}"
    );
    let all: HashSet<String> = during.union(&second).cloned().collect();
    accepted_once(&fleet, &all).await?;
    wait_dead(&fleet, 3).await?;
    let succeeded = a.counter("webhooks_deliveries_succeeded").await?
        + b.counter("webhooks_deliveries_succeeded").await?;
    ensure!(succeeded == 20, "delivered {succeeded} times");
    eprintln!("13 events exhausted on A (3 before since): recover through B sent the 10 once each; 10 more recovered through A and B at once: counts {counts:?}, each once; the 3 from before since stay in etcd");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_recover_reads_large_copies_in_pages_under_envoys_answer_cap_and_takes_each_once(
) -> Result<()> {
    const EVENTS: usize = 40;
    // ~20 KB each, ~27 KB in etcd's base64: a first page of 64 is ~1.7 MB, far past Envoy's
    // 256 KiB buffer for a callout's answer, so the scan halves its pages until they fit.
    const PAD: usize = 20_000;
    let fleet = Fleet::start(2, |rx| config(rx, json!({}))).await?;
    let (a, b) = (fleet.replica(0), fleet.replica(1));
    fleet.receiver.set_default(Reply::status(500));
    let since = now_rfc3339()?;
    produce_padded(a, 0..EVENTS, PAD).await?;
    wait_dead(&fleet, EVENTS as u64).await?;
    let refused = refused_ids(&fleet.receiver, 0..EVENTS as u64);
    ensure!(refused.len() == EVENTS, "one id per event");
    fleet.receiver.set_default(Reply::status(204));
    // Through A and B at the same moment: both scans read the copies, the takes split them.
    let started = std::time::Instant::now();
    let body = || Some(json!({"since": since}));
    let (on_a, on_b) = tokio::join!(
        api(a, TEST_KEY, "POST", RECOVER, body()),
        api(b, TEST_KEY, "POST", RECOVER, body())
    );
    let took = started.elapsed();
    let ((status_a, answer_a), (status_b, answer_b)) = (on_a?, on_b?);
    ensure!(
        (status_a, status_b) == (202, 202),
        "recover answered {status_a} {answer_a} / {status_b} {answer_b}"
    );
    let counts = [&answer_a, &answer_b].map(|v| v["count"].as_u64().unwrap_or(999));
    ensure!(
        counts.iter().sum::<u64>() == EVENTS as u64,
        "the {EVENTS}, split between the calls: {answer_a} {answer_b}"
    );
    let halved = b
        .log_contents()
        .matches("kept copies (past Envoy's answer buffer?)")
        .count();
    ensure!(
        halved >= 1,
        "the first page was past the cap: {}",
        b.log_tail(20)
    );
    accepted_once(&fleet, &refused).await?;
    wait_dead(&fleet, 0).await?;
    let contended = [a, b]
        .iter()
        .map(|r| {
            r.log_contents()
                .matches("by another call meanwhile")
                .count()
        })
        .sum::<usize>();
    eprintln!("{EVENTS} copies of ~{PAD} bytes exhausted on A, recovered through A and B at once in {} ms (B's pages halved {halved} times under the 256 KiB answer cap): counts {counts:?}, {contended} take(s) found copies the other call had taken, each delivered once", took.as_millis());
    Ok(())
}
