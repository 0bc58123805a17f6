//! The configurations `proxy-webhooks rules` makes of the OpenAPI documents in cli/tests/fixtures
//! (checked in as cli/tests/expected/*.json, which cli/tests/rules.rs holds equal to the tool's
//! output) load into a real Envoy, and a request to each operation through it produces exactly
//! one event, of its rule's type; the operations the tool left out (login, token, search...)
//! produce none. Where a rule has an example, the upstream answers it, and the delivered
//! `data.object` validates against the rule's schema with an independent JSON Schema validator.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use devtools::{workspace_root, Receiver, Stack};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DELIVERY: Duration = Duration::from_secs(15);

fn expected(name: &str) -> Result<Value> {
    let path = workspace_root().join("cli/tests/expected").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The generated configuration plus a subscription to everything at the receiver.
fn with_receiver(mut config: Value, receiver: &Receiver) -> Value {
    config["subscriptions"] = json!([{"id": "sub_openapi_rules", "consumer": "tests",
        "url": receiver.url("/hook"), "events": ["*"], "secret": SECRET, "privileged": true}]);
    config["delivery"] = json!({"allow_insecure_destinations": true});
    config
}

/// A path of the template, every `{param}` as `7`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "7" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The status the upstream answers a rule's request with: its first code, else 200.
fn status_of(rule: &Value) -> String {
    rule["status"]
        .as_array()
        .and_then(|codes| codes.first())
        .map_or("200".to_string(), Value::to_string)
}

fn validator(schema: &Value) -> Result<jsonschema::Validator> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .map_err(|e| anyhow!("the schema does not compile: {e}\n{schema}"))
}

fn check_object(rule: &Value, object: &Value) -> Result<()> {
    let Some(schema) = rule.get("schema") else {
        return Ok(());
    };
    let errors: Vec<String> = validator(schema)?
        .iter_errors(object)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    ensure!(
        errors.is_empty(),
        "{}: data.object does not match the schema: {errors:?}\n{object}",
        rule["type"]
    );
    Ok(())
}

/// Loads `name`, sends `left_out` (method, path) and one request per rule, and checks the events.
async fn check(name: &str, left_out: &[(&str, &str)]) -> Result<()> {
    let config = expected(name)?;
    let rules = config["events"].as_array().context("no events")?.clone();
    ensure!(rules.len() >= 5, "{name}: only {} rules", rules.len());
    let stack = Stack::start(|r| with_receiver(config, r))
        .await
        .with_context(|| format!("Envoy refused cli/tests/expected/{name}"))?;
    for (method, path) in left_out {
        let sent = stack
            .send(method, path, &[("x-test-status", "200")])
            .await?;
        ensure!(sent.status == 200, "{method} {path}: {}", sent.status);
    }
    for rule in &rules {
        let method = rule["method"].as_str().context("method")?;
        let path = concrete(rule["path"].as_str().context("path")?);
        let status = status_of(rule);
        let body = rule.get("example").map(Value::to_string);
        let mut headers = vec![("x-test-status", status.as_str())];
        if let Some(body) = &body {
            headers.push(("x-test-body", body.as_str()));
        }
        let sent = stack.send(method, &path, &headers).await?;
        ensure!(
            sent.status.as_str() == status,
            "{method} {path}: {}",
            sent.status
        );
    }
    let got = stack.webhooks(rules.len(), DELIVERY).await?;
    let mut types: Vec<String> = got.iter().map(|w| w.event_type()).collect();
    let mut wanted: Vec<String> = rules
        .iter()
        .filter_map(|r| r["type"].as_str().map(str::to_string))
        .collect();
    types.sort();
    wanted.sort();
    ensure!(
        types == wanted,
        "{name}: events {types:?}, expected {wanted:?}"
    );
    // Every response was answered before the counter was read: the left-out operations made
    // no event at all, not merely a late one.
    let detected = stack.envoy.counter("webhooks_events_detected").await?;
    ensure!(
        detected == rules.len() as u64,
        "{name}: {detected} events detected"
    );
    for hook in &got {
        hook.verify(SECRET)?;
        let body = hook.json()?;
        let rule = rules
            .iter()
            .find(|r| r["type"] == body["type"])
            .context("a rule of the event's type")?;
        let object = &body["data"]["object"];
        if rule["include_object"] == false {
            ensure!(object.is_null(), "{}: {body}", rule["type"]);
        } else if let Some(example) = rule.get("example") {
            ensure!(
                object == example,
                "{}: {object} is not the example",
                rule["type"]
            );
            check_object(rule, object)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shop_3_0_yaml_rules_make_their_events() -> Result<()> {
    check(
        "shop-3.0.json",
        &[
            ("POST", "/api/v1/auth/login"),
            ("POST", "/api/v1/orders/search"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_3_1_json_rules_make_their_events() -> Result<()> {
    check(
        "billing-3.1.json",
        &[
            ("POST", "/billing/oauth/token"),
            ("POST", "/billing/invoices/query"),
            ("DELETE", "/billing/me/sessions"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn helpdesk_3_1_yaml_rules_make_their_events() -> Result<()> {
    check(
        "helpdesk-3.1.json",
        &[
            ("PUT", "/api/v3/agents/7/presence"),
            ("PUT", "/api/v3/tickets/7/attachments/a.json"),
        ],
    )
    .await
}

/// Every example of the generated configurations matches its rule's schema, by an independent
/// validator: the conversion to JSON Schema 2020-12 (nullable, exclusive bounds, $refs) keeps
/// what the documents meant.
#[test]
fn examples_match_their_generated_schemas() -> Result<()> {
    let mut checked = 0;
    for name in ["shop-3.0.json", "billing-3.1.json", "helpdesk-3.1.json"] {
        for rule in expected(name)?["events"].as_array().into_iter().flatten() {
            if let (Some(_), Some(example)) = (rule.get("schema"), rule.get("example")) {
                check_object(rule, example)?;
                checked += 1;
            }
        }
    }
    ensure!(checked >= 5, "only {checked} examples");
    Ok(())
}
