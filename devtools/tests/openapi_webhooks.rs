//! Real deliveries against the live `openapi.json`: events produced through a real Envoy with
//! the plugin (a rule with a `schema`, an `include_object: false` rule, an inferred event and
//! `webhook.test`) reach the receiver, and each body and its headers must validate against the
//! matching `webhooks` entry of the document that same Envoy serves, with the `jsonschema` crate
//! (an implementation independent of the plugin; draft 2020-12, formats checked).

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use devtools::receiver::Received;
use devtools::Stack;
use serde_json::{json, Value};

/// SHA-256 of "test-key".
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const KEY: &str = "test-key";
const DEADLINE: Duration = Duration::from_secs(15);

fn plugin_config() -> Value {
    json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201],
             "description": "An order was placed.",
             "schema": {"type": "object", "required": ["id", "total"], "additionalProperties": false,
                        "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}},
             "example": {"id": "ord_1", "total": 42}},
            {"type": "session.created", "method": "POST", "path": "/auth/login",
             "include_object": false}
        ],
        "infer_events": ["/invoices"],
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s", "retry_schedule": ["0s"], "allow_insecure_destinations": true}
    })
}

/// The `webhooks` entry `name` of the live document, as a validator of the request body and the
/// list of its headers with their schemas (and whether each is required).
struct Entry {
    body: jsonschema::Validator,
    headers: Vec<(String, bool, jsonschema::Validator)>,
}

fn compile(schema: &Value) -> Result<jsonschema::Validator> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| anyhow!("the schema does not compile: {e}\n{schema}"))
}

fn entry(doc: &Value, name: &str) -> Result<Entry> {
    let post = doc["webhooks"]
        .get(name)
        .with_context(|| format!("no webhooks entry {name}"))?
        .get("post")
        .context("no post")?;
    let body = compile(&post["requestBody"]["content"]["application/json"]["schema"])?;
    let mut headers = Vec::new();
    for p in post["parameters"].as_array().context("no parameters")? {
        ensure!(p["in"] == "header", "{p}");
        let name = p["name"].as_str().context("a parameter without name")?;
        let required = p["required"] == true;
        // Optional: only the trace context, carried when the API request had one.
        ensure!(
            required || ["traceparent", "tracestate"].contains(&name),
            "{p}"
        );
        headers.push((name.to_string(), required, compile(&p["schema"])?));
    }
    let required = headers.iter().filter(|(_, required, _)| *required).count();
    ensure!(required == 3, "{name}: required headers {required}");
    Ok(Entry { body, headers })
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// Checks one delivery against its entry; returns the body.
fn check(doc: &Value, name: &str, got: &Received) -> Result<Value> {
    let entry = entry(doc, name)?;
    let body = got.json()?;
    let mut wrong = errors(&entry.body, &body);
    for (header, required, schema) in &entry.headers {
        let Some(value) = got.header(header) else {
            ensure!(!required, "no {header}");
            continue;
        };
        wrong.extend(
            errors(schema, &json!(value))
                .into_iter()
                .map(|e| format!("{header}: {e}")),
        );
    }
    ensure!(
        wrong.is_empty(),
        "{name}: {}\nbody: {body}",
        wrong.join("\n  ")
    );
    Ok(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_validate_against_their_webhooks_entry_of_the_live_document() -> Result<()> {
    let stack = Stack::start(|_| plugin_config()).await?;
    let doc = stack
        .send("GET", "/webhooks/openapi.json", &[])
        .await?
        .json()?;
    let url = stack.receiver.url("/hook");
    let created = stack
        .client
        .post(stack.envoy.url("/webhooks/subscriptions"))
        .header("x-api-key", KEY)
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await?;
    ensure!(
        created.status() == 201,
        "subscription: {}",
        created.status()
    );
    let id = created.json::<Value>().await?["id"]
        .as_str()
        .context("no id")?
        .to_string();

    let order = r#"{"id":"ord_7","total":12}"#;
    let sent = stack
        .send("POST", "/orders", &[("x-test-body", order)])
        .await?;
    ensure!(sent.status == 201, "POST /orders: {}", sent.status);
    let token = r#"{"token":"tok_secret_1"}"#;
    let login = [("x-test-body", token), ("x-test-status", "200")];
    ensure!(stack.send("POST", "/auth/login", &login).await?.status == 200);
    ensure!(stack.send("PUT", "/invoices/9", &[]).await?.status == 200);
    let test = stack
        .client
        .post(
            stack
                .envoy
                .url(&format!("/webhooks/subscriptions/{id}/test")),
        )
        .header("x-api-key", KEY)
        .send()
        .await?;
    ensure!(test.status() == 202, "test: {}", test.status());

    let got = stack.webhooks(4, DEADLINE).await?;
    let by_type = |t: &str| {
        got.iter()
            .find(|r| r.event_type() == t)
            .with_context(|| format!("no {t} delivered"))
    };
    let body = check(&doc, "order.created", by_type("order.created")?)?;
    ensure!(
        body["data"]["object"] == json!({"id": "ord_7", "total": 12}),
        "{body}"
    );
    let got_login = by_type("session.created")?;
    let body = check(&doc, "session.created", got_login)?;
    ensure!(body["data"]["object"].is_null(), "{body}");
    ensure!(!String::from_utf8_lossy(&got_login.body).contains("tok_secret_1"));
    check(&doc, "inferred", by_type("invoices.updated")?)?;
    let body = check(&doc, "webhook.test", by_type("webhook.test")?)?;
    ensure!(body["data"]["subscription_id"] == id.as_str(), "{body}");
    Ok(())
}

/// The validation above has teeth: a body that breaks the rule's `schema` or a `webhook-id`
/// of the wrong shape is refused by the same entries.
#[tokio::test(flavor = "multi_thread")]
async fn the_live_entries_refuse_what_does_not_match() -> Result<()> {
    let stack = Stack::start(|_| plugin_config()).await?;
    let doc = stack
        .send("GET", "/webhooks/openapi.json", &[])
        .await?
        .json()?;
    let created = entry(&doc, "order.created")?;
    let event = |event_type: &str, object: Value| {
        json!({"type": event_type, "timestamp": "2026-12-06T06:00:00Z",
               "data": {"object": object,
                        "request": {"method": "POST", "path": "/orders", "params": {}, "status": 201}}})
    };
    let order = |object: Value| event("order.created", object);
    ensure!(errors(&created.body, &order(json!({"id": "o", "total": 1}))).is_empty());
    ensure!(!errors(&created.body, &order(json!({"id": 7, "total": 1}))).is_empty());
    let login = entry(&doc, "session.created")?.body;
    ensure!(errors(&login, &event("session.created", Value::Null)).is_empty());
    ensure!(!errors(&login, &event("session.created", json!({"token": "t"}))).is_empty());
    let id = &created.headers.first().context("no header")?;
    ensure!(id.0 == "webhook-id" && !errors(&id.2, &json!("nope")).is_empty());
    Ok(())
}
