//! `openapi.yaml` against real answers: a real Envoy with the plugin answers every call of the
//! subscription API, in success and error cases, and each answer must be documented for its
//! operation (status, media type, headers) and match the documented schema (JSON Schema 2020-12,
//! formats checked), with `$ref`s resolved against the document's components.
//!
//! Every status and error code is provoked except the two 503s (`unavailable`: the shared store
//! is contended; `queue_unavailable`: the dispatcher's queue is missing), which cannot be caused
//! from outside a healthy Envoy; the unit tests in `src/api/tests.rs` cover them.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use devtools::files::load_yaml;
use devtools::stack::Sent;
use devtools::{free_port, poll_until, workspace_root, Stack};
use serde_json::{json, Value};

/// SHA-256 of "test-key" and of "demo-key".
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const DEMO_KEY_SHA256: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
const KEY: &str = "test-key";
const OTHER_KEY: &str = "demo-key";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STATIC_ID: &str = "sub_static";
const LIMIT: usize = 4;
const DEADLINE: Duration = Duration::from_secs(15);

/// The OpenAPI document, as JSON.
struct Spec {
    doc: Value,
}

/// Where a request lands in the document.
enum Target<'d> {
    Operation(&'d Value),
    /// The path exists but not with this method: answered 405.
    OtherMethod,
    /// No such path: answered 404.
    UnknownPath,
}

impl Spec {
    fn load() -> Result<Spec> {
        let doc = load_yaml(&workspace_root().join("openapi.yaml"))?;
        ensure!(doc["openapi"] == "3.1.0", "not an OpenAPI 3.1 document");
        Ok(Spec { doc })
    }

    fn target(&self, method: &str, path: &str) -> Result<Target<'_>> {
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.doc["paths"].as_object().context("no paths")?;
        let Some(item) = paths
            .iter()
            .find(|(template, _)| template_matches(template, path))
            .map(|(_, item)| item)
        else {
            return Ok(Target::UnknownPath);
        };
        Ok(match item.get(method.to_ascii_lowercase()) {
            Some(operation) => Target::Operation(operation),
            None => Target::OtherMethod,
        })
    }

    /// Follows a `#/...` reference (once), or returns the value itself.
    fn resolve<'v>(&'v self, value: &'v Value) -> Result<&'v Value> {
        match value.get("$ref").and_then(Value::as_str) {
            Some(pointer) => self
                .doc
                .pointer(pointer.trim_start_matches('#'))
                .with_context(|| format!("unresolved $ref {pointer}")),
            None => Ok(value),
        }
    }

    /// The documented response for this answer; fails when its status is not documented.
    fn response(&self, method: &str, path: &str, status: u16) -> Result<&Value> {
        let common = |name: &str| self.resolve(&self.doc["components"]["responses"][name]);
        match self.target(method, path)? {
            Target::Operation(operation) => {
                let documented = operation["responses"]
                    .get(status.to_string())
                    .with_context(|| format!("{status} is not documented for {method} {path}"))?;
                self.resolve(documented)
            }
            Target::OtherMethod if status == 405 => common("MethodNotAllowed"),
            Target::UnknownPath if status == 404 => common("NotFound"),
            _ => bail!("{method} {path} answered {status}, which the document does not describe"),
        }
    }

    /// Checks one real answer against the document.
    fn check(&self, method: &str, path: &str, sent: &Sent) -> Result<()> {
        let status = sent.status.as_u16();
        let response = self.response(method, path, status)?;
        for name in response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|h| h.0)
        {
            ensure!(
                sent.headers.contains_key(name.as_str()),
                "{method} {path} → {status}: documented header {name} is missing"
            );
        }
        let Some(media) = response["content"].as_object() else {
            ensure!(
                sent.body.is_empty(),
                "{method} {path} → {status}: undocumented body"
            );
            return Ok(());
        };
        let content_type = sent.headers.get("content-type").map(|v| v.as_bytes());
        ensure!(
            content_type == Some(b"application/json".as_slice()),
            "{method} {path} → {status}: content-type {content_type:?}"
        );
        let schema = media
            .get("application/json")
            .map(|m| &m["schema"])
            .context("no application/json schema")?;
        self.validate(schema, &sent.json()?)
            .with_context(|| format!("{method} {path} → {status}"))
    }

    /// Validates `instance` against `schema`, whose `$ref`s point into this document's
    /// components: the schema is compiled with the components beside it, so that
    /// `#/components/schemas/...` resolves.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<()> {
        let mut root = schema.clone();
        let map = root.as_object_mut().context("a schema must be an object")?;
        map.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| anyhow!("the schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        ensure!(
            errors.is_empty(),
            "does not match the document:\n  {}\nbody: {instance}",
            errors.join("\n  ")
        );
        Ok(())
    }
}

/// `/webhooks/subscriptions/{id}` matches `/webhooks/subscriptions/sub_1`.
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// A request to send: method, path, API key, content type and body.
struct Call<'a> {
    method: &'a str,
    path: String,
    key: Option<&'a str>,
    content_type: Option<&'a str>,
    body: String,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, path: impl Into<String>) -> Call<'a> {
        Call {
            method,
            path: path.into(),
            key: Some(KEY),
            content_type: None,
            body: String::new(),
        }
    }

    fn json(mut self, body: Value) -> Call<'a> {
        self.body = body.to_string();
        self.content_type = Some("application/json");
        self
    }

    fn raw(mut self, content_type: &'a str, body: &str) -> Call<'a> {
        self.content_type = Some(content_type);
        self.body = body.to_string();
        self
    }

    fn key(mut self, key: Option<&'a str>) -> Call<'a> {
        self.key = key;
        self
    }
}

/// The stack, the document and a log of which (operation, status) pairs were seen.
struct Checker {
    stack: Stack,
    spec: Spec,
    seen: Vec<String>,
}

impl Checker {
    async fn send(&self, call: &Call<'_>) -> Result<Sent> {
        let url = self.stack.envoy.url(&call.path);
        let mut request = self
            .stack
            .client
            .request(call.method.parse()?, url)
            .body(call.body.clone());
        if let Some(key) = call.key {
            request = request.header("x-api-key", key);
        }
        if let Some(content_type) = call.content_type {
            request = request.header("content-type", content_type);
        }
        Sent::read(request.send().await?).await
    }

    /// Sends `call`, checks the answer against the document and that its status and error code
    /// are `expected`; returns the JSON body (null when none).
    async fn expect(&mut self, call: Call<'_>, status: u16, code: Option<&str>) -> Result<Value> {
        let sent = self.send(&call).await?;
        let what = format!("{} {}", call.method, call.path);
        let body = String::from_utf8_lossy(&sent.body);
        ensure!(
            sent.status.as_u16() == status,
            "{what}: expected {status}, got {} {body}",
            sent.status
        );
        self.spec.check(call.method, &call.path, &sent)?;
        let json = if sent.body.is_empty() {
            Value::Null
        } else {
            sent.json()?
        };
        if let Some(code) = code {
            ensure!(
                json["error"]["code"] == code,
                "{what}: expected {code}: {json}"
            );
        }
        self.seen.push(format!("{what} → {status}"));
        Ok(json)
    }

    /// Waits until the attempt log of `id` has an entry in `state`; returns its webhook-id.
    async fn logged(&self, id: &str, state: &str) -> Result<String> {
        let url = self
            .stack
            .envoy
            .url(&format!("/webhooks/subscriptions/{id}/deliveries"));
        let mut found = None;
        let find = async || -> Option<String> {
            let response = self.stack.client.get(&url).header("x-api-key", KEY).send();
            let log: Value = response.await.ok()?.json().await.ok()?;
            let entry = log["data"]
                .as_array()?
                .iter()
                .find(|a| a["state"] == state)?;
            Some(entry["webhook_id"].as_str()?.to_string())
        };
        poll_until(
            DEADLINE,
            &format!("a {state} attempt of {id}"),
            async || {
                found = find().await;
                found.is_some()
            },
        )
        .await?;
        found.context("no attempt")
    }
}

fn plugin_config(receiver_url: &str) -> Value {
    json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201]},
            {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}"}
        ],
        "api": {
            "keys": [
                {"consumer": "tests", "sha256": TEST_KEY_SHA256},
                {"consumer": "others", "sha256": DEMO_KEY_SHA256}
            ],
            "max_subscriptions_per_consumer": LIMIT,
            "max_body_bytes": 1024
        },
        "subscriptions": [{"id": STATIC_ID, "consumer": "tests", "url": receiver_url,
                           "events": ["order.*"], "secret": SECRET}],
        "delivery": {"timeout": "2s", "retry_schedule": ["0s"], "allow_insecure_destinations": true}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn real_answers_of_every_call_conform_to_openapi_yaml() -> Result<()> {
    let spec = Spec::load()?;
    let stack = Stack::start(|r| plugin_config(&r.url("/static"))).await?;
    let mut c = Checker {
        stack,
        spec,
        seen: Vec::new(),
    };
    let id = subscription_calls(&mut c).await?;
    delivery_calls(&mut c, &id).await?;
    refusals(&mut c, &id).await?;
    limits_and_deletion(&mut c, &id).await?;
    println!("checked against openapi.yaml:\n  {}", c.seen.join("\n  "));
    Ok(())
}

/// The happy path of the subscription calls; returns the id of a live subscription.
async fn subscription_calls(c: &mut Checker) -> Result<String> {
    let url = c.stack.receiver.url("/hook");
    c.expect(Call::new("GET", "/webhooks/event-types"), 200, None)
        .await?;
    let body = json!({"url": url, "events": ["order.*", "webhook.test"], "description": "d"});
    let created = c
        .expect(
            Call::new("POST", "/webhooks/subscriptions").json(body),
            201,
            None,
        )
        .await?;
    let id = created["id"].as_str().context("no id")?.to_string();
    let one = format!("/webhooks/subscriptions/{id}");
    c.expect(Call::new("GET", "/webhooks/subscriptions"), 200, None)
        .await?;
    let page = format!("/webhooks/subscriptions?limit=1&after={STATIC_ID}");
    c.expect(Call::new("GET", page), 200, None).await?;
    c.expect(Call::new("GET", &*one), 200, None).await?;
    let patch = json!({"description": "changed", "url": null});
    c.expect(Call::new("PATCH", &*one).json(patch), 200, None)
        .await?;
    c.expect(Call::new("POST", format!("{one}/rotate-secret")), 200, None)
        .await?;
    Ok(id)
}

/// Test event, delivery log, replay of a failed message, refused replays.
async fn delivery_calls(c: &mut Checker, id: &str) -> Result<()> {
    let one = format!("/webhooks/subscriptions/{id}");
    c.expect(Call::new("POST", format!("{one}/test")), 202, None)
        .await?;
    let delivered = c.logged(id, "succeeded").await?;
    c.expect(Call::new("GET", format!("{one}/deliveries")), 200, None)
        .await?;
    let retry = |webhook_id: &str| format!("/webhooks/deliveries/{webhook_id}/retry");
    c.expect(
        Call::new("POST", retry(&delivered)),
        409,
        Some("not_replayable"),
    )
    .await?;
    c.expect(
        Call::new("POST", retry("msg_unknown")),
        404,
        Some("not_found"),
    )
    .await?;

    // Nothing listens there: with a one-entry schedule the message is exhausted at once.
    let dead = format!("http://127.0.0.1:{}/gone", free_port()?);
    let body = json!({"url": dead, "events": ["webhook.test"]});
    let failing = c
        .expect(
            Call::new("POST", "/webhooks/subscriptions").json(body),
            201,
            None,
        )
        .await?;
    let failing = failing["id"].as_str().context("no id")?.to_string();
    let path = format!("/webhooks/subscriptions/{failing}");
    c.expect(Call::new("POST", format!("{path}/test")), 202, None)
        .await?;
    let exhausted = c.logged(&failing, "exhausted").await?;
    c.expect(Call::new("GET", format!("{path}/deliveries")), 200, None)
        .await?;
    c.expect(Call::new("POST", retry(&exhausted)), 202, None)
        .await?;
    let disable = json!({"status": "disabled"});
    c.expect(Call::new("PATCH", &*path).json(disable), 200, None)
        .await?;
    let code = Some("subscription_disabled");
    c.expect(Call::new("POST", retry(&exhausted)), 409, code)
        .await?;
    c.expect(Call::new("POST", format!("{path}/test")), 409, code)
        .await?;
    Ok(())
}

/// Every refusal the API can be driven to from outside.
async fn refusals(c: &mut Checker, id: &str) -> Result<()> {
    let list = "/webhooks/subscriptions";
    let one = format!("/webhooks/subscriptions/{id}");
    let create = |body: Value| Call::new("POST", list).json(body);
    let url = c.stack.receiver.url("/hook");
    c.expect(Call::new("GET", list).key(None), 401, Some("unauthorized"))
        .await?;
    c.expect(
        Call::new("GET", &*one).key(Some("wrong")),
        401,
        Some("unauthorized"),
    )
    .await?;
    let other = Call::new("GET", &*one).key(Some(OTHER_KEY));
    c.expect(other, 404, Some("not_found")).await?;
    c.expect(Call::new("GET", "/webhooks/nope"), 404, Some("not_found"))
        .await?;
    let code = Some("method_not_allowed");
    c.expect(Call::new("PUT", &*one).json(json!({})), 405, code)
        .await?;
    let big = json!({"url": url, "events": ["*"], "description": "x".repeat(2000)});
    c.expect(create(big), 413, Some("payload_too_large"))
        .await?;
    let text = Call::new("POST", list).raw("text/plain", "{}");
    c.expect(text, 415, Some("unsupported_media_type")).await?;
    let broken = Call::new("POST", list).raw("application/json", "{");
    c.expect(broken, 400, Some("invalid_json")).await?;
    c.expect(create(json!([1])), 400, Some("invalid_request"))
        .await?;
    let unprocessable = [
        (json!({"events": ["*"]}), "missing_field"),
        (
            json!({"url": url, "events": ["*"], "x": 1}),
            "unknown_field",
        ),
        (json!({"url": "not a url", "events": ["*"]}), "invalid_url"),
        (json!({"url": url, "events": []}), "invalid_events"),
        (
            json!({"url": url, "events": ["nope.x"]}),
            "unknown_event_type",
        ),
        (
            json!({"url": url, "events": ["*"], "description": 7}),
            "invalid_field",
        ),
    ];
    for (body, code) in unprocessable {
        c.expect(create(body), 422, Some(code)).await?;
    }
    let status = json!({"status": "paused"});
    c.expect(
        Call::new("PATCH", &*one).json(status),
        422,
        Some("invalid_status"),
    )
    .await?;
    let page = "/webhooks/subscriptions?limit=0";
    c.expect(Call::new("GET", page), 422, Some("invalid_field"))
        .await?;
    Ok(())
}

/// Static subscriptions, the per-consumer limit, deletion.
async fn limits_and_deletion(c: &mut Checker, id: &str) -> Result<()> {
    let fixed = format!("/webhooks/subscriptions/{STATIC_ID}");
    let code = Some("static_subscription");
    let patch = Call::new("PATCH", &*fixed).json(json!({"description": "x"}));
    c.expect(patch, 409, code).await?;
    c.expect(
        Call::new("POST", format!("{fixed}/rotate-secret")),
        409,
        code,
    )
    .await?;
    c.expect(Call::new("DELETE", &*fixed), 409, code).await?;

    let body = json!({"url": c.stack.receiver.url("/more"), "events": ["*"]});
    let mut refused = false;
    for _ in 0..=LIMIT {
        let call = Call::new("POST", "/webhooks/subscriptions").json(body.clone());
        if c.send(&call).await?.status == 409 {
            refused = true;
            break;
        }
    }
    ensure!(refused, "never refused past {LIMIT} subscriptions");
    let create = Call::new("POST", "/webhooks/subscriptions").json(body);
    c.expect(create, 409, Some("limit_reached")).await?;

    let one = format!("/webhooks/subscriptions/{id}");
    c.expect(Call::new("DELETE", &*one), 204, None).await?;
    c.expect(Call::new("GET", &*one), 404, Some("not_found"))
        .await?;
    Ok(())
}

/// `insecure_url` needs the default policy (the main test allows insecure destinations so that
/// it can deliver to its local receiver).
#[tokio::test(flavor = "multi_thread")]
async fn insecure_url_refusal_conforms_to_openapi_yaml() -> Result<()> {
    let spec = Spec::load()?;
    let config = json!({"api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]}});
    let stack = Stack::start(|_| config).await?;
    let mut c = Checker {
        stack,
        spec,
        seen: Vec::new(),
    };
    for url in [
        "http://hooks.example.com/in",
        "https://127.0.0.1/in",
        "https://localhost/in",
    ] {
        let body = json!({"url": url, "events": ["*"]});
        let create = Call::new("POST", "/webhooks/subscriptions").json(body);
        c.expect(create, 422, Some("insecure_url")).await?;
    }
    Ok(())
}

/// The plugin embeds `src/api/openapi.base.json` (JSON: a YAML parser would cost the .wasm too
/// much) and builds each deployment's `openapi.json` from it: it must say what `openapi.yaml`
/// says. `PROXY_WEBHOOKS_UPDATE_EXPECTED=1` writes it again from `openapi.yaml`.
#[test]
fn the_embedded_json_base_is_openapi_yaml() -> Result<()> {
    let root = workspace_root();
    let yaml = load_yaml(&root.join("openapi.yaml"))?;
    let base = root.join("src/api/openapi.base.json");
    if std::env::var_os("PROXY_WEBHOOKS_UPDATE_EXPECTED").is_some() {
        std::fs::write(&base, serde_json::to_string(&yaml)? + "\n")?;
    }
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&base)?)?;
    ensure!(
        json == yaml,
        "src/api/openapi.base.json differs from openapi.yaml: run \
         PROXY_WEBHOOKS_UPDATE_EXPECTED=1 cargo test -p devtools --test openapi \
         the_embedded_json_base_is_openapi_yaml"
    );
    Ok(())
}
