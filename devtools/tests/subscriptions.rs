//! The subscription API is served by the filter itself: its calls never reach the upstream.

use std::time::Duration;

use anyhow::{ensure, Result};
use devtools::Stack;
use serde_json::{json, Value};

/// SHA-256 of "test-key".
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";

fn config() -> Value {
    json!({
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s", "allow_insecure_destinations": true}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_calls_never_reach_the_upstream() -> Result<()> {
    let stack = Stack::start(|_| config()).await?;
    let url = stack.receiver.url("/hook");
    let created = stack
        .client
        .post(stack.envoy.url("/webhooks/subscriptions"))
        .header("x-api-key", "test-key")
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await?;
    let reached = stack.upstream.requests();
    ensure!(
        reached.is_empty(),
        "the subscription API reached the upstream: {reached:?}"
    );
    ensure!(created.status() == 201, "create: {}", created.status());
    let created: Value = created.json().await?;
    let secret = created["secret"].as_str().unwrap_or_default();
    ensure!(secret.starts_with("whsec_"), "{created}");

    let listed = stack
        .client
        .get(stack.envoy.url("/webhooks/subscriptions"))
        .header("authorization", "Bearer test-key")
        .send()
        .await?;
    ensure!(listed.status() == 200, "list: {}", listed.status());
    let listed: Value = listed.json().await?;
    ensure!(listed["data"][0]["id"] == created["id"], "{listed}");
    ensure!(
        listed["data"][0].get("secret").is_none(),
        "secret listed: {listed}"
    );

    for (path, key) in [
        ("/webhooks/subscriptions", "wrong"),
        ("/webhooks/nothing-here", "test-key"),
    ] {
        let answer = stack.send("GET", path, &[("x-api-key", key)]).await?;
        ensure!(answer.status.is_client_error(), "{path}: {}", answer.status);
    }
    ensure!(stack
        .send("GET", "/webhooks", &[])
        .await?
        .status
        .is_client_error());

    // A created subscription receives events.
    stack.send("POST", "/orders", &[]).await?;
    let hooks = stack.webhooks(1, Duration::from_secs(10)).await?;
    ensure!(hooks[0].verify(secret)?["type"] == "orders.created");
    ensure!(stack
        .upstream
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/webhooks")));
    ensure!(
        stack.upstream.requests().len() == 1,
        "{:?}",
        stack.upstream.requests()
    );
    Ok(())
}
