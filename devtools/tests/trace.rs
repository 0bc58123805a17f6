//! Trace context (SPEC.md, "Delivery"), against a real Envoy with the real `.wasm`: a
//! webhook caused by an API request with a valid W3C `traceparent` carries it unchanged, with
//! its `tracestate`, on every attempt; none when the request had none or an invalid one.
//! In fleet mode the trace context is stored with the message in etcd: a replica that claims a
//! dead one's messages sends it too.

use std::time::Duration;

use anyhow::{ensure, Result};
use devtools::fleet::{Fleet, Stop};
use devtools::receiver::describe;
use devtools::{poll_until, Received, Receiver, Reply, Stack};
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn stack() -> Result<Stack> {
    Stack::start(|rx| {
        json!({
            "audience": "all",
            "subscriptions": [{"id": "sub_rx", "consumer": "tests", "url": rx.url("/hook"),
                               "events": ["*"], "secret": SECRET}],
            "delivery": {"retry_schedule": ["0s", "100ms"], "jitter": 0,
                         "allow_insecure_destinations": true}
        })
    })
    .await
}

/// `POST /orders` (an `orders.created` event) with these request headers.
async fn produce(stack: &Stack, n: u64, headers: &[(&str, &str)]) -> Result<()> {
    let body = json!({ "n": n }).to_string();
    let mut all = vec![("x-test-body", body.as_str())];
    all.extend_from_slice(headers);
    let sent = stack.send("POST", "/orders", &all).await?;
    ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
    Ok(())
}

fn n_of(hook: &Received) -> Option<u64> {
    hook.json().ok()?["data"]["object"]["n"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_and_tracestate_are_forwarded_on_every_attempt() -> Result<()> {
    let stack = stack().await?;
    stack.receiver.push_replies([Reply::status(503)]);
    stack.receiver.set_default(Reply::status(204));
    let headers = [
        ("traceparent", TRACEPARENT),
        ("tracestate", "rojo=00f067aa0ba902b7,congo=t61"),
    ];
    produce(&stack, 1, &headers).await?;
    let hooks = stack.webhooks(2, WAIT).await?;
    ensure!(
        hooks.len() == 2 && hooks[0].replied == 503,
        "{}",
        describe(&hooks)
    );
    for hook in &hooks {
        hook.verify(SECRET)?;
        ensure!(
            hook.header("traceparent") == Some(TRACEPARENT),
            "{}",
            describe(&hooks)
        );
        ensure!(
            hook.header("tracestate") == Some("rojo=00f067aa0ba902b7,congo=t61"),
            "{}",
            describe(&hooks)
        );
    }
    ensure!(
        hooks[0].header("webhook-id") == hooks[1].header("webhook-id"),
        "one message, retried"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_trace_context_without_a_valid_traceparent() -> Result<()> {
    let stack = stack().await?;
    let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let upper = TRACEPARENT.to_uppercase();
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("traceparent", zero_trace), ("tracestate", "rojo=1")],
        &[("traceparent", upper.as_str())],
        &[("traceparent", TRACEPARENT), ("tracestate", "Not Valid")],
    ];
    for (n, headers) in cases.iter().enumerate() {
        produce(&stack, n as u64, headers).await?;
    }
    let mut hooks = stack.webhooks(cases.len(), WAIT).await?;
    hooks.sort_by_key(n_of);
    for hook in &hooks[..3] {
        ensure!(hook.header("traceparent").is_none(), "{}", describe(&hooks));
        ensure!(hook.header("tracestate").is_none(), "{}", describe(&hooks));
    }
    // A valid traceparent with an invalid tracestate: the traceparent alone.
    ensure!(
        hooks[3].header("traceparent") == Some(TRACEPARENT),
        "{}",
        describe(&hooks)
    );
    ensure!(
        hooks[3].header("tracestate").is_none(),
        "{}",
        describe(&hooks)
    );
    Ok(())
}

const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
/// A lease (2 s) must expire and be claimed first, on a loaded machine.
const FLEET_WAIT: Duration = Duration::from_secs(40);

fn fleet_plugin(_: &Receiver) -> serde_json::Value {
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
async fn a_claimed_message_still_carries_its_trace_context() -> Result<()> {
    let mut fleet = Fleet::start(2, fleet_plugin).await?;
    fleet.receiver.set_default(Reply::status(503));
    let url = fleet.receiver.url("/claimed");
    let body = json!({"url": url, "events": ["*"]});
    let (status, created) = devtools::api(
        fleet.replica(0),
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(body),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let secret = created["secret"].as_str().unwrap_or_default().to_string();
    fleet.wait_active(1, 1, FLEET_WAIT).await?;
    let sent = devtools::http_client()
        .post(fleet.replica(1).url("/orders"))
        .header("x-test-body", r#"{"n": 1}"#)
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "rojo=1")
        .send()
        .await?;
    ensure!(
        sent.status() == 201,
        "POST /orders answered {}",
        sent.status()
    );
    let msg = format!("{}/msg/", fleet.prefix());
    poll_until(FLEET_WAIT, "the message in etcd", async || {
        fleet.etcd.count(&msg).await.ok() == Some(1)
    })
    .await?;
    fleet.stop(1, Stop::Kill).await?;
    fleet.receiver.set_default(Reply::status(204));
    let delivered = |r: &Vec<Received>| r.iter().any(|h| h.replied == 204);
    poll_until(FLEET_WAIT, "the claimed message delivered", async || {
        delivered(&fleet.receiver.received())
    })
    .await?;
    let hooks = fleet.receiver.received();
    let claimed = hooks.iter().find(|h| h.replied == 204).unwrap_or(&hooks[0]);
    claimed.verify(&secret)?;
    ensure!(
        claimed.header("traceparent") == Some(TRACEPARENT),
        "{}",
        describe(&hooks)
    );
    ensure!(
        claimed.header("tracestate") == Some("rojo=1"),
        "{}",
        describe(&hooks)
    );
    let claims = fleet.replica(0).counter("webhooks_fleet_claims").await?;
    ensure!(claims >= 1, "delivered after a claim");
    Ok(())
}
