//! The configurations in `examples/` load into a real Envoy, and a representative request of each
//! produces the event type the example promises.
//!
//! Each example is used as written, plus one static subscription to the test receiver (with
//! `allow_insecure_destinations`, since the receiver is plain http on 127.0.0.1).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::{workspace_root, Receiver, Stack};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DELIVERY: Duration = Duration::from_secs(10);

/// A request through Envoy, the status the API answers it with, and the event it must make.
struct Case {
    method: &'static str,
    path: &'static str,
    status: &'static str,
    event_type: &'static str,
}

fn load_example(name: &str) -> Result<Value> {
    let path = workspace_root().join("examples").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The example plus a subscription to everything at the receiver.
fn with_receiver(mut config: Value, receiver: &Receiver) -> Value {
    let sub = json!({"id": "sub_examples_test", "consumer": "tests", "url": receiver.url("/hook"),
                     "events": ["*"], "secret": SECRET, "privileged": true});
    match config["subscriptions"].as_array_mut() {
        Some(list) => list.push(sub),
        None => config["subscriptions"] = json!([sub]),
    }
    config["delivery"]["allow_insecure_destinations"] = json!(true);
    config
}

async fn check_example(name: &str, cases: &[Case]) -> Result<()> {
    let example = load_example(name)?;
    let stack = Stack::start(|r| with_receiver(example, r))
        .await
        .with_context(|| format!("Envoy refused examples/{name}"))?;
    for case in cases {
        let headers = [("x-test-status", case.status)];
        let sent = stack.send(case.method, case.path, &headers).await?;
        ensure!(
            sent.status.as_str() == case.status,
            "{} {}: {}",
            case.method,
            case.path,
            sent.status
        );
    }
    let got = stack.webhooks(cases.len(), DELIVERY).await?;
    let mut types = BTreeSet::new();
    for webhook in &got {
        webhook.verify(SECRET)?;
        types.insert(webhook.event_type());
    }
    let expected: BTreeSet<String> = cases.iter().map(|c| c.event_type.to_string()).collect();
    ensure!(
        types == expected,
        "examples/{name}: events {types:?}, expected {expected:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_api_rules_example_matches_rest_templates_and_status_lists() -> Result<()> {
    let cases = [
        Case {
            method: "POST",
            path: "/api/v1/catalog/products/42/images",
            status: "201",
            event_type: "catalog.changed",
        },
        Case {
            method: "POST",
            path: "/api/v1/orders/7/cancel",
            status: "202",
            event_type: "order.cancelled",
        },
    ];
    check_example("rest-api-rules.json", &cases).await
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_config_example_infers_events() -> Result<()> {
    let cases = [
        Case {
            method: "POST",
            path: "/customers",
            status: "201",
            event_type: "customers.created",
        },
        Case {
            method: "DELETE",
            path: "/users/7/keys/3",
            status: "200",
            event_type: "keys.deleted",
        },
    ];
    check_example("zero-config.json", &cases).await
}
