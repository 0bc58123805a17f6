//! The plugin against its contract (SPEC.md), in a real Envoy with the real `.wasm`.
//!
//! Every test starts its own upstream, receiver and Envoy on free ports, so tests run in parallel.
//! Nothing sleeps to wait for an event: tests poll with deadlines. A negative ("no webhook for
//! X") is proven by sending X, then one positive event, waiting for the positive one, and then
//! checking it is all that arrived and that `webhooks_events_detected` counts only it. The counter
//! is the stronger half: deliveries may arrive out of order (the first call to a new destination
//! waits for the egress cluster), but every request was sent before the positive one, and an event
//! is counted when its stream ends, so once the positive webhook is in, the count is final.
//!
//! Without the built plugin every test fails with "build it with `make wasm`".

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use devtools::{free_port, Received, Receiver, Reply, Stack};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// How long a webhook may take to arrive.
const DELIVERY: Duration = Duration::from_secs(10);

/// The demo's rules.
fn order_rules() -> Value {
    json!([
        {"type": "order.created", "method": "POST", "path": "/orders", "status": [201]},
        {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}"},
        {"type": "order.deleted", "method": "DELETE", "path": "/orders/{id}"}
    ])
}

/// A plugin configuration with `events` (null: none, so events are inferred) and one static
/// subscription to everything at the receiver's `/hook`.
fn config(events: Value, receiver: &Receiver) -> Value {
    config_with_subscriptions(
        events,
        json!([subscription(
            "sub_all",
            &receiver.url("/hook"),
            json!(["*"]),
            SECRET
        )]),
    )
}

fn config_with_subscriptions(events: Value, subscriptions: Value) -> Value {
    let mut config = json!({
        // Events from key-less writes go to every subscription (audiences: subscriptions.rs).
        "audience": "all",
        "subscriptions": subscriptions,
        "delivery": {
            "timeout": "2s",
            "retry_schedule": ["0s", "1s", "2s"],
            "allow_insecure_destinations": true
        }
    });
    if !events.is_null() {
        config["events"] = events;
    }
    config
}

fn subscription(id: &str, url: &str, events: Value, secret: &str) -> Value {
    json!({"id": id, "consumer": "tests", "url": url, "events": events, "secret": secret})
}

/// Checks the parts every delivery has: signature, headers, envelope; returns the body.
fn check_delivery(hook: &Received, secret: &str) -> Result<Value> {
    let body = hook
        .verify(secret)
        .context("standardwebhooks verification")?;
    ensure!(hook.method == "POST", "method {}", hook.method);
    let id = hook.header("webhook-id").unwrap_or_default();
    ensure!(id.starts_with("msg_") && id.len() > 4, "webhook-id {id:?}");
    let sent_at: i64 = hook
        .header("webhook-timestamp")
        .unwrap_or_default()
        .parse()?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    ensure!(
        (now - sent_at).abs() <= 60,
        "webhook-timestamp {sent_at}, now {now}"
    );
    let content_type = hook.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let agent = hook.header("user-agent").unwrap_or_default();
    ensure!(agent.starts_with("proxy-webhooks/"), "user-agent {agent:?}");
    check_event_timestamp(&body["timestamp"])?;
    Ok(body)
}

/// `timestamp` is RFC 3339 UTC with milliseconds (`2026-11-27T10:00:00.123Z`), close to now.
fn check_event_timestamp(value: &Value) -> Result<()> {
    let text = value
        .as_str()
        .with_context(|| format!("timestamp {value}"))?;
    let millis = text.len() == 24 && text.ends_with('Z') && text.as_bytes().get(19) == Some(&b'.');
    ensure!(
        millis,
        "timestamp {text:?} is not like 2026-11-27T10:00:00.123Z"
    );
    let at = OffsetDateTime::parse(text, &Rfc3339)?;
    let skew = (OffsetDateTime::now_utc() - at).abs();
    ensure!(
        skew < time::Duration::seconds(30),
        "timestamp {text} is {skew} from now"
    );
    Ok(())
}

/// `(type, method, path)` of each webhook, sorted: for comparing sets of events.
fn summaries(hooks: &[Received]) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for hook in hooks {
        let body = hook.verify(SECRET)?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let request = &body["data"]["request"];
        out.push((
            text(&body["type"]),
            text(&request["method"]),
            text(&request["path"]),
        ));
    }
    out.sort();
    Ok(out)
}

fn owned(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = items
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_match_delivers_one_signed_webhook() -> Result<()> {
    let stack = Stack::start(|rx| config(order_rules(), rx)).await?;
    let sent = stack.send("POST", "/orders?debug=1", &[]).await?;
    ensure!(sent.status == 201, "status {}", sent.status);

    let hooks = stack.webhooks(1, DELIVERY).await?;
    let body = check_delivery(&hooks[0], SECRET)?;
    ensure!(hooks[0].path == "/hook", "delivered to {}", hooks[0].path);
    ensure!(body["type"] == "order.created", "{body}");
    ensure!(
        body["data"]["object"] == sent.json()?,
        "object {}",
        body["data"]["object"]
    );
    let request = json!({"method": "POST", "path": "/orders", "params": {}, "status": 201});
    ensure!(
        body["data"]["request"] == request,
        "request {}",
        body["data"]["request"]
    );

    // Exactly one: a later event arrives, and the first is still alone with its id.
    stack.send("DELETE", "/orders/42", &[]).await?;
    let hooks = stack.webhooks(2, DELIVERY).await?;
    ensure!(hooks.len() == 2, "{} webhooks", hooks.len());
    ensure!(
        hooks[1].event_type() == "order.deleted",
        "{}",
        hooks[1].event_type()
    );
    ensure!(hooks[0].header("webhook-id") != hooks[1].header("webhook-id"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_inferred_without_rules() -> Result<()> {
    let stack = Stack::start(|rx| config(Value::Null, rx)).await?;
    stack.send("POST", "/orders", &[]).await?;
    stack.send("PUT", "/orders/42", &[]).await?;
    stack.send("PATCH", "/orders/42", &[]).await?;
    stack.send("DELETE", "/users/7/keys/3", &[]).await?;

    let hooks = stack.webhooks(4, DELIVERY).await?;
    let expected = owned(&[
        ("orders.created", "POST", "/orders"),
        ("orders.updated", "PUT", "/orders/42"),
        ("orders.updated", "PATCH", "/orders/42"),
        ("keys.deleted", "DELETE", "/users/7/keys/3"),
    ]);
    ensure!(summaries(&hooks)? == expected, "{:?}", summaries(&hooks)?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_captures_become_params() -> Result<()> {
    let rules = json!([
        {"type": "order.updated", "method": "PUT", "path": "/orders/{id}"},
        {"type": "key.deleted", "method": "DELETE", "path": "/users/{user}/keys/{key}"}
    ]);
    let stack = Stack::start(|rx| config(rules, rx)).await?;
    stack.send("PUT", "/orders/42", &[]).await?;
    stack.send("DELETE", "/users/7/keys/3", &[]).await?;

    let hooks = stack.webhooks(2, DELIVERY).await?;
    let find = |kind: &str| hooks.iter().find(|h| h.event_type() == kind).cloned();
    let put = check_delivery(&find("order.updated").context("no order.updated")?, SECRET)?;
    ensure!(
        put["data"]["request"]["params"] == json!({"id": "42"}),
        "{put}"
    );
    ensure!(put["data"]["request"]["status"] == 200, "{put}");
    let del = check_delivery(&find("key.deleted").context("no key.deleted")?, SECRET)?;
    ensure!(
        del["data"]["request"]["params"] == json!({"user": "7", "key": "3"}),
        "{del}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_and_errors_make_no_webhook() -> Result<()> {
    let stack = Stack::start(|rx| config(Value::Null, rx)).await?;
    stack.send("GET", "/orders", &[]).await?;
    stack.send("HEAD", "/orders", &[]).await?;
    stack.send("OPTIONS", "/orders", &[]).await?;
    let not_found = stack
        .send("POST", "/orders", &[("x-test-status", "404")])
        .await?;
    ensure!(not_found.status == 404);
    let failed = stack
        .send("PUT", "/orders/1", &[("x-test-status", "500")])
        .await?;
    ensure!(failed.status == 500);
    stack
        .send("DELETE", "/orders/9", &[("x-test-status", "302")])
        .await?;
    // The positive event, sent last: when it is there, any webhook for the above would be too.
    stack.send("POST", "/widgets", &[]).await?;

    let hooks = stack.webhooks(1, DELIVERY).await?;
    let expected = owned(&[("widgets.created", "POST", "/widgets")]);
    ensure!(summaries(&hooks)? == expected, "{:?}", summaries(&hooks)?);
    let detected = stack.envoy.counter("webhooks_events_detected").await?;
    ensure!(
        detected == 1,
        "webhooks_events_detected is {detected}, expected 1"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_subscription_gets_only_its_events() -> Result<()> {
    let stack = Stack::start(|rx| {
        config_with_subscriptions(
            order_rules(),
            json!([
                subscription("sub_orders", &rx.url("/all"), json!(["order.*"]), SECRET),
                subscription(
                    "sub_deletes",
                    &rx.url("/deletes"),
                    json!(["order.deleted"]),
                    OTHER_SECRET
                ),
            ]),
        )
    })
    .await?;
    stack.send("POST", "/orders", &[]).await?;
    stack.send("DELETE", "/orders/1", &[]).await?;

    let hooks = stack.webhooks(3, DELIVERY).await?;
    let at = |path: &str| {
        hooks
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect::<Vec<_>>()
    };
    let all = at("/all");
    let deletes = at("/deletes");
    ensure!(
        all.len() == 2 && deletes.len() == 1,
        "{}",
        devtools::receiver::describe(&hooks)
    );
    for hook in &all {
        check_delivery(hook, SECRET)?;
        ensure!(
            hook.verify(OTHER_SECRET).is_err(),
            "signed with the other secret"
        );
    }
    let deleted = check_delivery(&deletes[0], OTHER_SECRET)?;
    ensure!(deleted["type"] == "order.deleted", "{deleted}");
    ensure!(
        deletes[0].verify(SECRET).is_err(),
        "signed with the other secret"
    );
    // One message per (event, subscription): the same event has different ids per subscription.
    let all_deleted = all
        .iter()
        .find(|h| h.event_type() == "order.deleted")
        .context("no deletion at /all")?;
    ensure!(all_deleted.header("webhook-id") != deletes[0].header("webhook-id"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_bodies_are_not_held_back() -> Result<()> {
    let stack = Stack::start(|rx| config(order_rules(), rx)).await?;
    let started = Instant::now();
    let mut response = stack
        .client
        .post(stack.envoy.url("/orders"))
        .header("x-test-chunks", "5")
        .header("x-test-chunk-delay-ms", "300")
        .send()
        .await?;
    ensure!(response.status() == 201);
    let mut body = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        arrivals.push(started.elapsed());
        body.extend_from_slice(&chunk);
    }
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    // The upstream spends 4 × 300 ms between its first and last chunk; a filter that buffered
    // the body would hand the client everything at once, at the end.
    ensure!(
        last - first >= Duration::from_millis(800),
        "chunks at {arrivals:?}"
    );

    let hooks = stack.webhooks(1, DELIVERY).await?;
    let event = check_delivery(&hooks[0], SECRET)?;
    let object: Value = serde_json::from_slice(&body)?;
    ensure!(
        event["data"]["object"] == object,
        "object {}",
        event["data"]["object"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn large_and_non_json_bodies_give_a_null_object() -> Result<()> {
    let stack = Stack::start(|rx| {
        let mut config = config(Value::Null, rx);
        config["delivery"]["max_payload_bytes"] = json!(1024);
        config
    })
    .await?;
    let big = stack
        .send("POST", "/large", &[("x-test-body-size", "4096")])
        .await?;
    ensure!(
        big.body.len() == 4096,
        "client got {} bytes",
        big.body.len()
    );
    let text = [
        ("x-test-content-type", "text/plain"),
        ("x-test-body", "hello"),
    ];
    let plain = stack.send("POST", "/texts", &text).await?;
    ensure!(plain.body == "hello");

    let hooks = stack.webhooks(2, DELIVERY).await?;
    let find = |kind: &str| hooks.iter().find(|h| h.event_type() == kind).cloned();
    let large = check_delivery(&find("large.created").context("no large.created")?, SECRET)?;
    ensure!(large["data"]["object"].is_null(), "{large}");
    ensure!(large["data"]["truncated"] == true, "{large}");
    let texts = check_delivery(&find("texts.created").context("no texts.created")?, SECRET)?;
    ensure!(texts["data"]["object"].is_null(), "{texts}");
    ensure!(texts["data"]["truncated"] != true, "{texts}");
    Ok(())
}

/// The API's answer is byte-for-byte what the upstream sent, however delivery fares.
async fn check_unchanged(stack: &Stack) -> Result<()> {
    let headers = [("x-test-body", r#"{"id":7,"note":"unchanged"}"#)];
    let sent = stack.send("POST", "/orders", &headers).await?;
    ensure!(sent.status == 201, "status {}", sent.status);
    ensure!(
        sent.body == r#"{"id":7,"note":"unchanged"}"#,
        "body {:?}",
        sent.body
    );
    ensure!(sent.headers["content-type"] == "application/json");
    let deleted = stack
        .send("DELETE", "/orders/7", &[("x-test-status", "204")])
        .await?;
    ensure!(
        deleted.status == 204 && deleted.body.is_empty(),
        "{deleted:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_changes_nothing_for_the_api() -> Result<()> {
    let stack = Stack::start(|rx| config(order_rules(), rx)).await?;
    stack.receiver.set_default(Reply::status(500));
    check_unchanged(&stack).await?;
    stack.webhooks(1, DELIVERY).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_failed", 1, DELIVERY)
        .await?;
    check_unchanged(&stack).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_subscriber_changes_nothing_for_the_api() -> Result<()> {
    let nobody = format!("http://127.0.0.1:{}/hook", free_port()?);
    let stack = Stack::start(|_| {
        let subs = json!([subscription("sub_gone", &nobody, json!(["*"]), SECRET)]);
        config_with_subscriptions(order_rules(), subs)
    })
    .await?;
    check_unchanged(&stack).await?;
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_failed", 1, DELIVERY)
        .await?;
    check_unchanged(&stack).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_configuration_stops_envoy_and_names_the_field() -> Result<()> {
    let config =
        devtools::EnvoyConfig::new(json!({"delivery": {"timeout": "5 parsecs"}}), free_port()?);
    let log = devtools::Envoy::start_expect_failure(config).await?;
    ensure!(
        log.contains("delivery.timeout"),
        "the log does not name delivery.timeout:\n{log}"
    );
    Ok(())
}
