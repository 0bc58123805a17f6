use super::*;
use crate::config;
use crate::fleet::commit::Write;
use crate::model::event;
use crate::model::signing::Secret;
use crate::model::subscription::{self, SigningSecret, Status, Subscription};
use crate::registry::attempts;
use crate::registry::attempts::{Attempt, State};
use crate::registry::store::{MemoryStore, StoreError};
use crate::support::time::format_rfc3339_millis;
use crate::tests::fixtures::{hex, NoRandom, Rng, KEY_A, KEY_B, KEY_OPS, STATIC_SECRET};
use serde_json::{json, Value};
use std::cell::Cell;
use std::rc::Rc;

/// A [`MemoryStore`] that counts writes (to prove refused calls write nothing) and can be
/// made to fail them.
#[derive(Default)]
struct Store {
    inner: MemoryStore,
    writes: Cell<usize>,
    failing: Cell<bool>,
}

impl KvStore for Store {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if self.failing.get() {
            return Err(StoreError::Failed("down".into()));
        }
        // The rate limiter's bookkeeping is no change of subscriptions or logs.
        if !key.starts_with("pwh:rate:") {
            self.writes.set(self.writes.get() + 1);
        }
        self.inner.set(key, value, cas)
    }
}

const NOW: u64 = 1_795_000_000_000;

fn config_json(infer: bool, insecure: bool) -> String {
    json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201],
             "description": "An order was placed.",
             "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
             "example": {"id": 42}},
            {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}",
             "include_object": false}
        ],
        "infer_events": infer,
        "api": {
            "keys": [
                {"consumer": "acme", "sha256": hex(KEY_A)},
                {"consumer": "beta", "sha256": hex(KEY_B)},
                {"consumer": "ops", "sha256": hex(KEY_OPS)}
            ],
            "max_subscriptions_per_consumer": 3,
            "max_body_bytes": 1024
        },
        "subscriptions": [{
            "id": "sub_static_1", "consumer": "ops", "url": "https://hooks.example.com/in",
            "events": ["order.*"], "secret": STATIC_SECRET
        }],
        "delivery": {"allow_insecure_destinations": insecure}
    })
    .to_string()
}

struct Api {
    config: Config,
    store: Rc<Store>,
    registry: Registry<Rc<Store>>,
    rng: Rng,
    /// False: the host's randomness fails (WASI `random_get` errors).
    random_works: bool,
    sent: Vec<QueueMessage>,
    queue_up: bool,
    now_ms: u64,
}

impl Api {
    fn new() -> Api {
        Api::with(&config_json(true, false))
    }

    fn with(config_text: &str) -> Api {
        let config = config::parse(config_text.as_bytes()).unwrap();
        let store = Rc::new(Store::default());
        let registry = Registry::new(Rc::clone(&store));
        registry.prepare();
        registry.sync_static(&config.subscriptions, NOW);
        Api {
            config,
            store,
            registry,
            rng: Rng(42),
            random_works: true,
            sent: Vec::new(),
            queue_up: true,
            now_ms: NOW,
        }
    }

    fn writes(&self) -> usize {
        self.store.writes.get()
    }

    fn send(&mut self, request: &Request<'_>) -> Response {
        match self.answer(request) {
            Answer::Now(response) => response,
            other => panic!("single-process mode answers now: {other:?}"),
        }
    }

    fn answer(&mut self, request: &Request<'_>) -> Answer {
        self.with_cx(|cx| handle(request, cx))
    }

    /// Runs `call` with the harness's context (its queue records what is handed over).
    fn with_cx<R>(&mut self, call: impl FnOnce(&mut Context<'_, Rc<Store>>) -> R) -> R {
        let (sent, up) = (&mut self.sent, self.queue_up);
        let mut enqueue = |m: QueueMessage| {
            if up {
                sent.push(m);
            }
            up
        };
        let mut broken = NoRandom;
        let rng: &mut dyn RandomSource = if self.random_works {
            &mut self.rng
        } else {
            &mut broken
        };
        let mut cx = Context {
            config: &self.config,
            registry: &self.registry,
            store: &self.store,
            rng,
            now_ms: self.now_ms,
            enqueue: &mut enqueue,
        };
        call(&mut cx)
    }

    /// A call with `Bearer <key>` and a JSON body (when not empty); the answer parsed.
    fn call(&mut self, method: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {key}");
        let response = self.send(&Request {
            method,
            path,
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: Some(b"application/json"),
            body: body.as_bytes(),
            ..Request::default()
        });
        (response.status, parse(&response))
    }

    fn create(&mut self, key: &str, url: &str, events: &[&str]) -> Value {
        let body = json!({"url": url, "events": events}).to_string();
        let (status, value) = self.call("POST", "/webhooks/subscriptions", key, &body);
        assert_eq!(status, 201, "{value}");
        value
    }

    fn record(&self, id: &str) -> Subscription {
        self.registry.get(id).unwrap().0
    }
}

fn parse(response: &Response) -> Value {
    if response.body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&response.body).unwrap()
}

fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn code(value: &Value) -> &str {
    value["error"]["code"].as_str().unwrap_or("<none>")
}

fn sub_path(id: &str, tail: &str) -> String {
    format!("/webhooks/subscriptions/{id}{tail}")
}

const URL: &str = "https://hooks.example.com/acme";

#[test]
fn round_trip_field_by_field() {
    let mut api = Api::new();
    let created = api.create(KEY_A, URL, &["order.created", "orders.*"]);
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sub_") && id.len() == 28, "{id}");
    assert!(subscription::is_valid_id(&id));
    let stamp = format_rfc3339_millis(NOW);
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() == 50);
    assert!(Secret::parse(&secret).is_ok());
    let expected = json!({
        "id": id, "url": URL, "events": ["order.created", "orders.*"], "description": "",
        "status": "active", "disabled_reason": null, "created_at": stamp,
        "updated_at": stamp, "static": false, "ordering": "none", "secret": secret,
        "signature_scheme": "v1", "header_names": [], "headers": {}
    });
    assert_eq!(created, expected);

    let (status, list) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
    let mut shown = expected.clone();
    shown.as_object_mut().unwrap().remove("secret");
    shown.as_object_mut().unwrap().remove("headers");
    // Reads carry the delivery health too.
    let mut read = shown.clone();
    read["health"] = json!({"last_success_at": null, "last_failure_at": null,
        "failing_since": null, "consecutive_failures": 0, "pending": 0});
    assert_eq!(
        (status, list),
        (200, json!({"data": [read], "has_more": false}))
    );
    let (status, got) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
    assert_eq!((status, &got), (200, &read));

    api.now_ms = NOW + 5_000;
    let body =
        r#"{"url":"https://other.example.com/x","events":["order.updated"],"description":"mine"}"#;
    let (status, patched) = api.call("PATCH", &sub_path(&id, ""), KEY_A, body);
    assert_eq!(status, 200, "{patched}");
    let mut after = shown.clone();
    after["url"] = json!("https://other.example.com/x");
    after["events"] = json!(["order.updated"]);
    after["description"] = json!("mine");
    after["updated_at"] = json!(format_rfc3339_millis(NOW + 5_000));
    assert_eq!(patched, after);
    assert!(api.registry.candidates("order.updated").contains(&id));
    assert!(!api.registry.candidates("order.created").contains(&id));

    api.now_ms = NOW + 9_000;
    let (status, rotated) = api.call("POST", &sub_path(&id, "/rotate-secret"), KEY_A, "");
    assert_eq!(status, 200);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(
        rotated["updated_at"],
        json!(format_rfc3339_millis(NOW + 9_000))
    );
    assert_eq!(
        api.record(&id).secrets,
        [
            SigningSecret {
                secret: new_secret.to_string(),
                expires_at_ms: None
            },
            SigningSecret {
                secret,
                expires_at_ms: Some(NOW + 9_000 + ROTATION_OVERLAP_MS)
            },
        ]
    );

    let response = api.send(&Request {
        method: "DELETE",
        path: &sub_path(&id, ""),
        authorization: Some(format!("Bearer {KEY_A}").as_bytes()),
        api_key: None,
        consumer_header: None,
        content_type: None,
        body: b"",
        ..Request::default()
    });
    assert_eq!((response.status, response.body.as_slice()), (204, &b""[..]));
    assert_eq!(header(&response, "content-type"), None);
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let (status, value) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
    assert_eq!((status, code(&value)), (404, "not_found"));
    let (_, list) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
    assert_eq!(list["data"], json!([]));
}

#[test]
fn create_answers_location_and_json_headers() {
    let mut api = Api::new();
    let auth = format!("Bearer {KEY_A}");
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    let response = api.send(&Request {
        method: "POST",
        path: "/webhooks/subscriptions?ignored=1",
        authorization: Some(auth.as_bytes()),
        api_key: None,
        consumer_header: None,
        content_type: Some(b"Application/JSON; charset=utf-8"),
        body: body.as_bytes(),
        ..Request::default()
    });
    assert_eq!(response.status, 201);
    let id = parse(&response)["id"].as_str().unwrap().to_string();
    assert_eq!(
        header(&response, "location"),
        Some(format!("/webhooks/subscriptions/{id}").as_str())
    );
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
}

#[test]
fn unknown_fields_are_named_with_the_allowed_ones() {
    let mut api = Api::new();
    let body = json!({"url": URL, "events": ["*"], "secret": "x", "description": null});
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string());
    assert_eq!(
        (status, code(&value), value["error"]["message"].as_str()),
        (
            422,
            "unknown_field",
            Some("unknown field \"secret\"; allowed: url, events, description, ordering, signature_scheme, headers")
        )
    );
    let created = api.create(KEY_A, URL, &["*"]);
    let id = created["id"].as_str().unwrap();
    let (status, value) = api.call("PATCH", &sub_path(id, ""), KEY_A, r#"{"x":1}"#);
    assert_eq!(
        (status, code(&value), value["error"]["message"].as_str()),
        (
            422,
            "unknown_field",
            Some("unknown field \"x\"; allowed: url, events, description, status, headers")
        )
    );
    // Null fields count as absent; the others are kept.
    let body = r#"{"url":null,"events":null,"description":"kept","status":null}"#;
    let (status, value) = api.call("PATCH", &sub_path(id, ""), KEY_A, body);
    assert_eq!(
        (status, value["description"].as_str(), value["url"].as_str()),
        (200, Some("kept"), Some(URL)),
        "{value}"
    );
}

/// The API takes what the event capture takes as JSON ([`event::is_json_media_type`]).
#[test]
fn json_bodies_may_come_under_any_json_media_type() {
    let mut api = Api::new();
    let auth = format!("Bearer {KEY_A}");
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    for content_type in [&b"application/vnd.api+json"[..], b"text/x+JSON; q=1"] {
        let response = api.send(&Request {
            method: "POST",
            path: "/webhooks/subscriptions",
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: Some(content_type),
            body: body.as_bytes(),
            ..Request::default()
        });
        assert_eq!(response.status, 201, "{content_type:?}");
    }
}

#[test]
fn secret_is_shown_only_on_create_and_rotate() {
    let mut api = Api::new();
    let created = api.create(KEY_A, URL, &["*"]);
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    let calls = [
        ("GET", "/webhooks/subscriptions".to_string(), ""),
        ("GET", sub_path(id, ""), ""),
        ("PATCH", sub_path(id, ""), r#"{"description":"x"}"#),
        ("PATCH", sub_path(id, ""), "{}"),
        ("GET", sub_path(id, "/deliveries"), ""),
    ];
    for (method, path, body) in calls {
        let (status, value) = api.call(method, &path, KEY_A, body);
        assert_eq!(status, 200, "{method} {path}");
        let text = value.to_string();
        assert!(!text.contains("secret") && !text.contains(secret), "{text}");
    }
}

#[test]
fn another_consumers_subscription_is_exactly_not_found() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (writes, before) = (api.writes(), api.record(&id));
    let calls = [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/rotate-secret"),
        ("POST", "/test"),
        ("GET", "/deliveries"),
    ];
    for (method, tail) in calls {
        let body = if method == "PATCH" {
            r#"{"description":"x"}"#
        } else {
            ""
        };
        let theirs = api.call(method, &sub_path(&id, tail), KEY_B, body);
        let unknown = api.call(method, &sub_path("sub_unknown", tail), KEY_B, body);
        assert_eq!(theirs.0, 404, "{method} {tail}");
        assert_eq!(theirs, unknown, "{method} {tail}");
    }
    let (_, list) = api.call("GET", "/webhooks/subscriptions", KEY_B, "");
    assert_eq!(list["data"], json!([]));
    assert_eq!((api.writes(), api.record(&id)), (writes, before));
    assert!(api.sent.is_empty());
}

/// Authorization, X-API-Key, expected status.
type AuthCase<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, u16);

fn long_events(n: usize) -> Value {
    // Letters only: with inference on, `<resource>.*` is a wildcard over types it can send.
    let letter = |j: usize| char::from(b'a' + (j % 26) as u8);
    json!((0..n)
        .map(|i| format!("t{}{}.*", letter(i / 26), letter(i)))
        .collect::<Vec<_>>())
}

/// Posts `body` as a create with `content_type` and checks the refusal: status, error code,
/// a word of the message, the JSON shape.
fn assert_refused(api: &mut Api, content_type: Option<&[u8]>, body: &str, want: (u16, &str, &str)) {
    let auth = format!("Bearer {KEY_A}");
    let response = api.send(&Request {
        method: "POST",
        path: "/webhooks/subscriptions",
        authorization: Some(auth.as_bytes()),
        api_key: None,
        consumer_header: None,
        content_type,
        body: body.as_bytes(),
        ..Request::default()
    });
    let value = parse(&response);
    let (status, error_code, word) = want;
    assert_eq!(
        (response.status, code(&value)),
        (status, error_code),
        "{body}: {value}"
    );
    let message = value["error"]["message"].as_str().unwrap();
    assert!(message.contains(word), "{body}: {message}");
    assert_eq!(value["error"].as_object().unwrap().len(), 2);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
}

fn body_with(field: &str, value: Value) -> String {
    let mut body = json!({"url": URL, "events": ["order.created"]});
    body[field] = value;
    body.to_string()
}

/// Every refused create answers its status and code and writes nothing.
#[test]
fn refused_creates_write_nothing() {
    let mut api = Api::new();
    let writes = api.writes();
    let ok = body_with("description", json!("fine"));
    let media: [(Option<&[u8]>, &str); 3] = [
        (None, "application/json"),
        (Some(b"text/plain"), ""),
        (Some(b"application/jsonx"), ""),
    ];
    for (content_type, word) in media {
        assert_refused(
            &mut api,
            content_type,
            &ok,
            (415, "unsupported_media_type", word),
        );
    }
    let json_cases: [(&str, u16, &str, &str); 7] = [
        ("", 400, "invalid_json", ""),
        ("{\"url\":", 400, "invalid_json", ""),
        ("{} x", 400, "invalid_json", ""),
        ("[]", 400, "invalid_request", "object"),
        ("\"x\"", 400, "invalid_request", ""),
        ("null", 400, "invalid_request", ""),
        (r#"{"events":["*"]}"#, 422, "missing_field", "url"),
    ];
    for (body, status, error_code, word) in json_cases {
        assert_refused(
            &mut api,
            Some(b"application/json"),
            body,
            (status, error_code, word),
        );
    }
    let field_cases: Vec<(&str, Value, &str, &str)> = vec![
        ("secret", json!("whsec_x"), "unknown_field", "secret"),
        ("status", json!("active"), "unknown_field", "status"),
        ("url", json!(5), "invalid_field", "url"),
        ("url", json!(["https://a.b"]), "invalid_field", "url"),
        ("url", Value::Null, "missing_field", "url"),
        ("events", Value::Null, "missing_field", "events"),
        ("events", json!("order.created"), "invalid_field", "events"),
        ("events", json!({}), "invalid_field", "events"),
        ("events", json!([]), "invalid_events", "events"),
        ("events", long_events(51), "invalid_events", "50"),
        ("events", json!([5]), "invalid_events", "events[0]"),
        (
            "events",
            json!(["*", "order..x"]),
            "invalid_events",
            "events[1]",
        ),
        ("events", json!(["order.**"]), "invalid_events", ""),
        ("events", json!([""]), "invalid_events", ""),
        (
            "events",
            json!(["invoice.paid"]),
            "unknown_event_type",
            "invoice.paid",
        ),
        (
            "events",
            json!(["orders1.created"]),
            "unknown_event_type",
            "orders1",
        ),
        (
            "events",
            json!(["orders.archived"]),
            "unknown_event_type",
            "",
        ),
        ("events", json!(["order"]), "unknown_event_type", ""),
        ("description", json!(5), "invalid_field", "description"),
        (
            "description",
            json!("x".repeat(257)),
            "invalid_field",
            "256",
        ),
    ];
    for (field, value, error_code, word) in field_cases {
        let body = body_with(field, value);
        assert_refused(
            &mut api,
            Some(b"application/json"),
            &body,
            (422, error_code, word),
        );
    }
    let url_cases = [
        (
            "http://hooks.example.com/x",
            "insecure_url",
            "url must be https",
        ),
        ("http://127.0.0.1/x", "insecure_url", "https"),
        ("https://127.0.0.1/x", "insecure_url", "loopback"),
        ("https://[::1]/x", "insecure_url", ""),
        ("http://[::1]/x", "insecure_url", ""),
        ("https://10.0.0.1/x", "insecure_url", "private"),
        (
            "https://169.254.169.254/latest",
            "insecure_url",
            "link-local",
        ),
        ("https://localhost/x", "insecure_url", "localhost"),
        ("https://0.0.0.0/x", "insecure_url", ""),
        ("ftp://hooks.example.com/x", "invalid_url", "scheme"),
        ("hooks.example.com/x", "invalid_url", "absolute"),
        ("", "invalid_url", ""),
        ("https://user:pw@hooks.example.com/x", "invalid_url", ""),
        (
            "https://hooks.example.com/x#frag",
            "invalid_url",
            "fragment",
        ),
        ("https://hooks.example.com/a b", "invalid_url", ""),
    ];
    for (url, error_code, word) in url_cases {
        let body = body_with("url", json!(url));
        assert_refused(
            &mut api,
            Some(b"application/json"),
            &body,
            (422, error_code, word),
        );
    }
    assert_eq!(api.writes(), writes);
    assert!(api.registry.list_for_consumer("acme").is_empty());
}

#[test]
fn accepted_creates_normalise_events() {
    let mut api = Api::new();
    let body = json!({
        "url": "https://hooks.example.com:8443/in?x=1", "description": null,
        "events": ["order.*", "orders.created", "order.*", "webhook.test", "*", "order.created"]
    });
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string());
    assert_eq!(status, 201, "{value}");
    assert_eq!(
        value["events"],
        json!([
            "order.*",
            "orders.created",
            "webhook.test",
            "*",
            "order.created"
        ])
    );
    assert_eq!(value["description"], json!(""));
    let body = json!({"url": URL, "events": long_events(50), "description": "é".repeat(256)});
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string());
    assert_eq!(status, 201, "{value}");
}

#[test]
fn inference_off_allows_only_configured_types() {
    let mut api = Api::with(&config_json(false, false));
    let body = json!({"url": URL, "events": ["orders.created"]}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!((status, code(&value)), (422, "unknown_event_type"));
    api.create(KEY_A, URL, &["order.created", "webhook.test", "order.*"]);
    // A wildcard over no type this deployment sends is refused like an unknown type: the
    // deployment's openapi.json says so, and a fuzzer holds the API to it.
    let body = json!({"url": URL, "events": ["anything.*"]}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!((status, code(&value)), (422, "unknown_event_type"));
}

#[test]
fn insecure_destinations_when_allowed() {
    let mut api = Api::with(&config_json(true, true));
    for url in [
        "http://127.0.0.1:8080/in",
        "http://[::1]/x",
        "https://localhost/x",
    ] {
        api.create(KEY_A, url, &["*"]);
    }
    let body = json!({"url": "ftp://x.example/", "events": ["*"]}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_B, &body);
    assert_eq!((status, code(&value)), (422, "invalid_url"));
}

/// The literals of issue 10, with the block each one is refused as, under `allow_http` alone.
#[test]
fn every_special_purpose_literal_is_refused_even_with_http_allowed() {
    let config = json!({
        "api": {"keys": [{"consumer": "acme", "sha256": hex(KEY_A)}]},
        "delivery": {"allow_http": true}
    });
    let mut api = Api::with(&config.to_string());
    for (host, block) in [
        ("127.0.0.1:9901", "127.0.0.0/8 (loopback)"),
        (
            "[::127.0.0.1]",
            "::/96 (unspecified, loopback, IPv4-compatible)",
        ),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::/96 (NAT64)"),
        ("[::ffff:0:7f00:1]", "::ffff:0:0:0/96 (IPv4-translated)"),
        ("[2002:7f00:1::]", "2002::/16 (6to4)"),
        ("100.64.0.1", "100.64.0.0/10 (shared address space, CGNAT)"),
        ("198.18.0.1", "198.18.0.0/15 (benchmarking)"),
        ("192.0.0.1", "192.0.0.0/24 (IETF protocol assignments)"),
        ("224.0.0.1", "224.0.0.0/4 (multicast)"),
        ("240.0.0.1", "240.0.0.0/4 (reserved, broadcast)"),
        ("192.0.2.1", "192.0.2.0/24 (documentation)"),
        ("198.51.100.1", "198.51.100.0/24 (documentation)"),
        ("203.0.113.1", "203.0.113.0/24 (documentation)"),
        ("[2001:db8::1]", "2001:db8::/32 (documentation)"),
    ] {
        let body = json!({"url": format!("http://{host}/in"), "events": ["*"]}).to_string();
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
        assert_eq!(
            (status, code(&value), value["error"]["message"].as_str()),
            (
                422,
                "insecure_url",
                Some(format!("url host must not be in {block}").as_str())
            ),
            "{host}"
        );
    }
    let body = json!({"url": "http://localhost/in", "events": ["*"]}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!(
        (status, value["error"]["message"].as_str()),
        (422, Some("url host must not be localhost"))
    );
    // A host name is the egress clusters' to check once it resolves.
    api.create(KEY_A, "http://vm:8080/in", &["*"]);
}

/// Without randomness no secret and no id can be made: create and rotate answer 503 and change
/// nothing; everything else still works.
#[test]
fn failing_randomness_refuses_new_secrets_with_503() {
    let mut api = Api::new();
    let sub = api.create(KEY_A, URL, &["*"]);
    let id = sub["id"].as_str().unwrap().to_string();
    let before = api.record(&id);
    let writes = api.writes();
    api.random_works = false;
    let expected = (
        503,
        "random_unavailable".to_string(),
        "no secure randomness is available to create a secret; nothing was changed, try again later"
            .to_string(),
    );
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    for (method, path, body) in [
        ("POST", "/webhooks/subscriptions".to_string(), body.as_str()),
        (
            "POST",
            format!("/webhooks/subscriptions/{id}/rotate-secret"),
            "",
        ),
    ] {
        let (status, value) = api.call(method, &path, KEY_A, body);
        let got = (
            status,
            code(&value).to_string(),
            value["error"]["message"].as_str().unwrap_or("").to_string(),
        );
        assert_eq!(got, expected, "{method} {path}");
    }
    assert_eq!(api.writes(), writes);
    assert_eq!(api.record(&id).secrets, before.secrets);
    let (status, _) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
    assert_eq!(status, 200);
}

/// What headers alone decide is answered before any body is read; the rest waits for the body.
#[test]
fn headers_decide_401_404_and_405_before_the_body() {
    let mut api = Api::new();
    let mut answer = |method: &str, path: &str, key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let request = Request {
            method,
            path,
            authorization: auth.as_deref().map(str::as_bytes),
            api_key: None,
            consumer_header: None,
            content_type: Some(b"application/json"),
            body: b"",
            ..Request::default()
        };
        api.with_cx(|cx| answer_before_body(&request, cx))
            .map(|r| (r.status, code(&parse(&r)).to_string()))
    };
    let refused = |status: u16, c: &str| Some((status, c.to_string()));
    assert_eq!(
        answer("POST", "/webhooks/subscriptions", None),
        refused(401, "unauthorized")
    );
    assert_eq!(
        answer("POST", "/webhooks/subscriptions", Some("wrong")),
        refused(401, "unauthorized")
    );
    assert_eq!(
        answer("POST", "/webhooks/nothing", Some(KEY_A)),
        refused(404, "not_found")
    );
    assert_eq!(
        answer("PUT", "/webhooks/subscriptions", Some(KEY_A)),
        refused(405, "method_not_allowed")
    );
    assert_eq!(answer("POST", "/webhooks/subscriptions", Some(KEY_A)), None);
    assert_eq!(answer("GET", "/webhooks/event-types", Some(KEY_B)), None);
}

fn auth_request<'a>(authorization: Option<&'a [u8]>, api_key: Option<&'a [u8]>) -> Request<'a> {
    Request {
        method: "GET",
        path: "/webhooks/subscriptions",
        authorization,
        api_key,
        consumer_header: None,
        content_type: None,
        body: b"",
        ..Request::default()
    }
}

#[test]
fn authentication_variants() {
    let mut api = Api::new();
    let bearer = format!("Bearer {KEY_A}");
    let lower = format!("bearer   {KEY_A} ");
    let wrong = format!("Bearer {KEY_A}x");
    let basic = format!("Basic {KEY_A}");
    let glued = format!("Bearer{KEY_A}");
    let cases: Vec<AuthCase> = vec![
        (Some(bearer.as_bytes()), None, 200),
        (Some(lower.as_bytes()), None, 200),
        (None, Some(KEY_A.as_bytes()), 200),
        (Some(basic.as_bytes()), Some(KEY_A.as_bytes()), 200),
        (None, None, 401),
        (Some(wrong.as_bytes()), None, 401),
        (None, Some(b"nope"), 401),
        (Some(b"Bearer"), None, 401),
        (Some(b"Bearer "), None, 401),
        (Some(basic.as_bytes()), None, 401),
        (Some(glued.as_bytes()), None, 401),
        (None, Some(b""), 401),
        // The bearer token is the one presented; a second header does not rescue it.
        (Some(wrong.as_bytes()), Some(KEY_A.as_bytes()), 401),
    ];
    for (authorization, api_key, status) in cases {
        let response = api.send(&auth_request(authorization, api_key));
        assert_eq!(response.status, status, "{authorization:?} {api_key:?}");
        if status == 401 {
            let value = parse(&response);
            assert_eq!(code(&value), "unauthorized");
            assert!(!value.to_string().contains(KEY_A));
            assert_eq!(
                header(&response, "www-authenticate"),
                Some("Bearer realm=\"webhooks\"")
            );
        }
    }
}

#[test]
fn no_configured_keys_refuse_everything() {
    let mut api = Api::with("{}");
    let bearer = format!("Bearer {KEY_A}");
    for path in ["/webhooks/subscriptions", "/webhooks/event-types"] {
        let mut request = auth_request(Some(bearer.as_bytes()), None);
        request.path = path;
        assert_eq!(api.send(&request).status, 401);
    }
}

#[test]
fn consumer_header_identifies_the_caller_instead_of_keys() {
    let mut api = Api::with(r#"{"api": {"consumer_header": "x-consumer"}}"#);
    let as_consumer = |name: &'static [u8]| Request {
        consumer_header: Some(name),
        content_type: Some(b"application/json"),
        ..auth_request(None, None)
    };
    let body = br#"{"url": "https://hooks.example.com/a", "events": ["*"]}"#;
    let created = api.send(&Request {
        method: "POST",
        body,
        ..as_consumer(b"auth0|alpha")
    });
    assert_eq!(created.status, 201);
    let id = parse(&created)["id"].as_str().unwrap().to_string();
    let path = format!("/webhooks/subscriptions/{id}");
    let mine = api.send(&Request {
        path: &path,
        ..as_consumer(b" auth0|alpha ")
    });
    assert_eq!(mine.status, 200);
    // Another consumer's header: not found, exactly as an unknown id.
    let theirs = api.send(&Request {
        path: &path,
        ..as_consumer(b"beta")
    });
    assert_eq!(theirs.status, 404);
    // No header, or one that is no consumer name: 401 naming the header; a key is no substitute.
    let bearer = format!("Bearer {KEY_A}");
    for request in [
        auth_request(None, None),
        auth_request(Some(bearer.as_bytes()), None),
        as_consumer(b""),
        as_consumer(b"a b"),
    ] {
        let response = api.send(&request);
        assert_eq!(response.status, 401);
        assert_eq!(
            parse(&response)["error"]["message"],
            "authentication is required (no valid x-consumer header was set)"
        );
    }
}

#[test]
fn unknown_paths_answer_404_before_auth_and_methods_405_after() {
    let mut api = Api::new();
    let long = format!("/webhooks/subscriptions/{}", "a".repeat(65));
    for path in [
        "/webhooks",
        "/webhooks/",
        "/webhooks/nope",
        "/webhooks/subscriptions/a/b/c",
        "/webhooks/subscriptions/a/rotate",
        "/webhooks/subscriptions/sub.x",
        "/webhooks/subscriptions/sub%20x",
        "/webhooks/subscriptions//",
        "/webhooks//subscriptions",
        "/webhooks/deliveries/msg_1",
        "/webhooks/event-types/x",
        long.as_str(),
    ] {
        let response = api.send(&Request {
            path,
            ..auth_request(None, None)
        });
        let value = parse(&response);
        assert_eq!(
            (response.status, code(&value)),
            (404, "not_found"),
            "{path}"
        );
    }
    // Known path without a key: 401 even for a wrong method.
    let response = api.send(&Request {
        method: "PUT",
        ..auth_request(None, None)
    });
    assert_eq!(response.status, 401);
    let cases = [
        ("DELETE", "/webhooks/subscriptions", "GET, POST"),
        ("PUT", "/webhooks/subscriptions/sub_1", "GET, PATCH, DELETE"),
        (
            "POST",
            "/webhooks/subscriptions/sub_1/",
            "GET, PATCH, DELETE",
        ),
        ("GET", "/webhooks/subscriptions/sub_1/test", "POST"),
        ("GET", "/webhooks/subscriptions/sub_1/rotate-secret", "POST"),
        ("POST", "/webhooks/subscriptions/sub_1/deliveries", "GET"),
        ("GET", "/webhooks/deliveries/msg_1/retry", "POST"),
        ("POST", "/webhooks/event-types", "GET"),
        ("get", "/webhooks/event-types", "GET"),
        ("HEAD", "/webhooks/event-types", "GET"),
    ];
    let bearer = format!("Bearer {KEY_A}");
    for (method, path, allow) in cases {
        let response = api.send(&Request {
            method,
            path,
            ..auth_request(Some(bearer.as_bytes()), None)
        });
        let value = parse(&response);
        assert_eq!(
            (response.status, code(&value)),
            (405, "method_not_allowed"),
            "{method} {path}"
        );
        assert_eq!(header(&response, "allow"), Some(allow));
    }
}

#[test]
fn trailing_slash_and_query_are_tolerated() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        "/webhooks/subscriptions/".to_string(),
        "/webhooks/subscriptions?x=1".to_string(),
        format!("/webhooks/subscriptions/{id}/"),
        format!("/webhooks/subscriptions/{id}?a=b#c"),
        "/webhooks/event-types/?x".to_string(),
    ] {
        assert_eq!(api.call("GET", &path, KEY_A, "").0, 200, "{path}");
    }
}

#[test]
fn api_path_detection() {
    let cases = [
        ("/webhooks", true),
        ("/webhooks/", true),
        ("/webhooks?x=1", true),
        ("/webhooks/subscriptions/x", true),
        ("/webhooks#x", true),
        ("/webhooksx", false),
        ("/webhook", false),
        ("/orders/webhooks", false),
        ("/Webhooks", false),
        ("", false),
    ];
    for (path, expected) in cases {
        assert_eq!(is_api_path("/webhooks", path), expected, "{path}");
    }
    assert!(is_api_path("/api/hooks", "/api/hooks/event-types"));
    assert!(!is_api_path("/api/hooks", "/api/hooksy"));
}

#[test]
fn custom_prefix_routes() {
    let mut config: Value = serde_json::from_str(&config_json(true, false)).unwrap();
    config["api"]["path_prefix"] = json!("/api/hooks/");
    let mut api = Api::with(&config.to_string());
    let (status, _) = api.call("GET", "/api/hooks/event-types", KEY_A, "");
    assert_eq!(status, 200);
    let created = {
        let body = json!({"url": URL, "events": ["*"]}).to_string();
        let auth = format!("Bearer {KEY_A}");
        api.send(&Request {
            method: "POST",
            path: "/api/hooks/subscriptions",
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: Some(b"application/json"),
            body: body.as_bytes(),
            ..Request::default()
        })
    };
    let id = parse(&created)["id"].as_str().unwrap().to_string();
    assert_eq!(
        header(&created, "location"),
        Some(format!("/api/hooks/subscriptions/{id}").as_str())
    );
}

#[test]
fn static_subscriptions_are_visible_but_fixed() {
    let mut api = Api::new();
    let (status, list) = api.call("GET", "/webhooks/subscriptions", KEY_OPS, "");
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], json!("sub_static_1"));
    assert_eq!(list["data"][0]["static"], json!(true));
    assert!(!list.to_string().contains(STATIC_SECRET));
    let writes = api.writes();
    let before = api.record("sub_static_1");
    for (method, tail, body) in [
        ("PATCH", "", r#"{"description":"mine now"}"#),
        (
            "PATCH",
            "",
            r#"{"status":"disabled","url":"https://x.example/"}"#,
        ),
        ("DELETE", "", ""),
        ("POST", "/rotate-secret", ""),
    ] {
        let (status, value) = api.call(method, &sub_path("sub_static_1", tail), KEY_OPS, body);
        assert_eq!(
            (status, code(&value)),
            (409, "static_subscription"),
            "{method} {tail}"
        );
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("configuration"));
    }
    assert_eq!((api.writes(), api.record("sub_static_1")), (writes, before));
    // Its status is operational, not configuration: the owner can switch it off and on.
    let path = sub_path("sub_static_1", "");
    let (status, value) = api.call("PATCH", &path, KEY_OPS, r#"{"status":"disabled"}"#);
    assert_eq!(
        (status, &value["status"]),
        (200, &json!("disabled")),
        "{value}"
    );
    let (status, value) = api.call("PATCH", &path, KEY_OPS, r#"{"status":"active"}"#);
    assert_eq!(
        (status, &value["disabled_reason"]),
        (200, &json!(null)),
        "{value}"
    );
    let (status, _) = api.call("POST", &sub_path("sub_static_1", "/test"), KEY_OPS, "");
    assert_eq!(status, 202);
    assert_eq!(api.sent.len(), 1);
    // Another consumer cannot even see it.
    let (status, _) = api.call("GET", &sub_path("sub_static_1", ""), KEY_A, "");
    assert_eq!(status, 404);
}

#[test]
fn per_consumer_limit() {
    let mut api = Api::new();
    for _ in 0..3 {
        api.create(KEY_A, URL, &["*"]);
    }
    let writes = api.writes();
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!((status, code(&value)), (409, "limit_reached"));
    assert!(value["error"]["message"].as_str().unwrap().contains('3'));
    assert_eq!(api.writes(), writes);
    assert_eq!(api.registry.list_for_consumer("acme").len(), 3);
    api.create(KEY_B, URL, &["*"]);
}

/// `api.max_subscriptions` caps every consumer together; the static subscription of the
/// configuration does not count, and a delete makes room again.
#[test]
fn registry_limit_counts_every_consumer_but_not_static_subscriptions() {
    let mut config: Value = serde_json::from_str(&config_json(true, false)).unwrap();
    config["api"]["max_subscriptions"] = json!(4);
    let mut api = Api::with(&config.to_string());
    let mut ids = Vec::new();
    for key in [KEY_A, KEY_B, KEY_A, KEY_B] {
        ids.push(
            api.create(key, URL, &["*"])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let writes = api.writes();
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    for key in [KEY_A, KEY_B] {
        let (status, value) = api.call("POST", "/webhooks/subscriptions", key, &body);
        assert_eq!((status, code(&value)), (409, "limit_reached"));
        assert_eq!(
            value["error"]["message"],
            json!("at most 4 subscriptions in all (every consumer together); delete some first")
        );
    }
    assert_eq!(api.writes(), writes, "a refused create writes nothing");
    assert_eq!(api.registry.count(), 4);
    let (status, _) = api.call("DELETE", &sub_path(&ids[0], ""), KEY_A, "");
    assert_eq!(status, 204);
    assert_eq!(api.registry.count(), 3);
    api.create(KEY_B, URL, &["*"]);
    assert_eq!(api.registry.count(), 4);
}

#[test]
fn store_failure_answers_503() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.store.failing.set(true);
    let body = json!({"url": URL, "events": ["*"]}).to_string();
    for (method, path, body) in [
        ("POST", "/webhooks/subscriptions".to_string(), body.as_str()),
        ("PATCH", sub_path(&id, ""), r#"{"description":"x"}"#),
        ("POST", sub_path(&id, "/rotate-secret"), ""),
        ("DELETE", sub_path(&id, ""), ""),
    ] {
        let (status, value) = api.call(method, &path, KEY_A, body);
        assert_eq!(
            (status, code(&value)),
            (503, "unavailable"),
            "{method} {path}"
        );
    }
    api.store.failing.set(false);
    assert_eq!(api.record(&id).description, "");
}

#[test]
fn test_and_retry_calls_are_rate_limited_per_consumer() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["order.created"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = api.create(KEY_B, URL, &["order.created"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..crate::registry::ratelimit::BURST {
        let (status, _) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
        assert_eq!(status, 202);
    }
    let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
    assert_eq!((status, code(&value)), (429, "rate_limited"));
    assert_eq!(api.sent.len(), crate::registry::ratelimit::BURST as usize);
    let (status, _) = api.call("POST", &sub_path(&other, "/test"), KEY_B, "");
    assert_eq!(status, 202, "another consumer has its own budget");
}

#[test]
fn test_call_enqueues_one_test_message() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["order.created"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let writes = api.writes();
    let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
    assert_eq!((status, value), (202, json!({"status": "queued"})));
    assert_eq!(api.writes(), writes);
    let [QueueMessage::Test {
        subscription_id,
        payload,
    }] = api.sent.as_slice()
    else {
        panic!("expected one test message, got {:?}", api.sent);
    };
    assert_eq!(subscription_id, &id);
    assert_eq!(payload, &event::build_test_payload(NOW, &id));
    let payload: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(payload["type"], json!("webhook.test"));

    api.queue_up = false;
    let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
    assert_eq!((status, code(&value)), (503, "queue_unavailable"));
    api.queue_up = true;
    let (status, _) = api.call(
        "PATCH",
        &sub_path(&id, ""),
        KEY_A,
        r#"{"status":"disabled"}"#,
    );
    assert_eq!(status, 200);
    let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
    assert_eq!((status, code(&value)), (409, "subscription_disabled"));
    assert_eq!(api.sent.len(), 1);
}

#[test]
fn patch_status_and_reasons() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = sub_path(&id, "");
    let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"disabled"}"#);
    assert_eq!(
        (&v["status"], &v["disabled_reason"]),
        (&json!("disabled"), &json!("manual"))
    );
    let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"active"}"#);
    assert_eq!(
        (&v["status"], &v["disabled_reason"]),
        (&json!("active"), &Value::Null)
    );
    api.registry
        .update(&id, |s| {
            s.status = Status::Disabled;
            s.disabled_reason = Some("gone".into());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    let (_, v) = api.call(
        "PATCH",
        &path,
        KEY_A,
        r#"{"status":"disabled","description":"d"}"#,
    );
    assert_eq!(
        (&v["disabled_reason"], &v["description"]),
        (&json!("gone"), &json!("d"))
    );
    let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"active"}"#);
    assert_eq!(
        (&v["status"], &v["disabled_reason"]),
        (&json!("active"), &Value::Null)
    );
    assert_eq!(api.registry.active_count(), 2);
}

#[test]
fn refused_patches_write_nothing() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = sub_path(&id, "");
    let writes = api.writes();
    let before = api.record(&id);
    let cases = [
        (r#"{"status":"paused"}"#, 422, "invalid_status"),
        (r#"{"status":true}"#, 422, "invalid_field"),
        (r#"{"url":"http://x.example/"}"#, 422, "insecure_url"),
        (r#"{"events":[]}"#, 422, "invalid_events"),
        (r#"{"events":["nope.happened"]}"#, 422, "unknown_event_type"),
        (r#"{"description":"ok","secret":"x"}"#, 422, "unknown_field"),
        (r#"{"description":"ok","id":"sub_x"}"#, 422, "unknown_field"),
        (
            r#"{"description":"ok","status":"on"}"#,
            422,
            "invalid_status",
        ),
        ("[1]", 400, "invalid_request"),
        ("{", 400, "invalid_json"),
        ("", 400, "invalid_json"),
    ];
    for (body, status, error_code) in cases {
        let (got, value) = api.call("PATCH", &path, KEY_A, body);
        assert_eq!((got, code(&value)), (status, error_code), "{body}");
    }
    let (status, value) = api.call("PATCH", &path, KEY_A, "{}");
    assert_eq!((status, &value["id"]), (200, &json!(id)));
    assert_eq!((api.writes(), api.record(&id)), (writes, before));
    let (status, _) = api.call("PATCH", &sub_path("sub_unknown", ""), KEY_A, "{}");
    assert_eq!(status, 404);
}

#[test]
fn rotation_drops_expired_and_caps_secrets() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.registry
        .update(&id, |s| {
            s.secrets.push(SigningSecret {
                secret: "whsec_old".into(),
                expires_at_ms: Some(NOW),
            });
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    let path = sub_path(&id, "/rotate-secret");
    let (status, value) = api.call("POST", &path, KEY_A, "");
    assert_eq!(status, 200);
    let secrets = api.record(&id).secrets;
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0].secret, value["secret"].as_str().unwrap());
    assert!(secrets.iter().all(|s| s.secret != "whsec_old"));
    for _ in 0..10 {
        api.call("POST", &path, KEY_A, "");
    }
    let secrets = api.record(&id).secrets;
    assert_eq!(secrets.len(), MAX_SECRETS);
    assert_eq!(
        secrets.iter().filter(|s| s.expires_at_ms.is_none()).count(),
        1
    );
}

fn attempt(webhook_id: &str, n: u32, state: State) -> Attempt {
    Attempt {
        webhook_id: webhook_id.into(),
        event_type: "order.created".into(),
        attempt: n,
        timestamp: "2026-11-27T10:00:00.000Z".into(),
        response_status: Some(500),
        error: None,
        duration_ms: 12,
        next_retry_at: None,
        state,
    }
}

#[test]
fn deliveries_show_the_attempt_log_and_delete_clears_it() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = vec![
        attempt("msg_1", 1, State::Retrying),
        attempt("msg_1", 2, State::Succeeded),
    ];
    crate::registry::Registry::new(&api.store)
        .record_attempts(&id, log)
        .unwrap();
    let (status, value) = api.call("GET", &sub_path(&id, "/deliveries"), KEY_A, "");
    assert_eq!(status, 200);
    let expected = attempts::read(&api.store, &id);
    assert_eq!(value, json!({"data": expected}));
    assert_eq!(value["data"][0]["state"], json!("succeeded"));
    assert_eq!(value["data"][0]["webhook_id"], json!("msg_1"));
    api.call("DELETE", &sub_path(&id, ""), KEY_A, "");
    assert!(attempts::read(&api.store, &id).is_empty());
}

#[test]
fn retry_follows_the_newest_state() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = api.create(KEY_A, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = vec![
        attempt("msg_ok", 1, State::Failed),
        attempt("msg_ok", 2, State::Succeeded),
        attempt("msg_wait", 1, State::Retrying),
        attempt("msg_exh", 9, State::Exhausted),
        attempt("msg_gone", 1, State::Failed),
        attempt("msg_old", 3, State::Exhausted),
        attempt("msg_old", 3, State::Expired),
    ];
    crate::registry::Registry::new(&api.store)
        .record_attempts(&id, log)
        .unwrap();
    crate::registry::Registry::new(&api.store)
        .record_attempts(&other, vec![attempt("msg_drop", 3, State::Dropped)])
        .unwrap();
    let writes = api.writes();
    let retry = |m: &str| format!("/webhooks/deliveries/{m}/retry");
    let cases = [
        ("msg_ok", KEY_A, 409, Some("not_replayable")),
        ("msg_wait", KEY_A, 409, Some("not_replayable")),
        ("msg_old", KEY_A, 409, Some("not_replayable")),
        ("msg_unknown", KEY_A, 404, Some("not_found")),
        ("msg_exh", KEY_B, 404, Some("not_found")),
        ("msg_exh", KEY_A, 202, None),
        ("msg_gone", KEY_A, 202, None),
        ("msg_drop", KEY_A, 202, None),
    ];
    for (webhook_id, key, status, error_code) in cases {
        let (got, value) = api.call("POST", &retry(webhook_id), key, "");
        assert_eq!(got, status, "{webhook_id}: {value}");
        if let Some(error_code) = error_code {
            assert_eq!(code(&value), error_code);
        }
    }
    let replayed: Vec<_> = api
        .sent
        .iter()
        .map(|m| match m {
            QueueMessage::Replay { webhook_id, kept } if kept.is_empty() => webhook_id.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(replayed, ["msg_exh", "msg_gone", "msg_drop"]);
    assert_eq!(api.writes(), writes);

    api.queue_up = false;
    let (status, value) = api.call("POST", &retry("msg_exh"), KEY_A, "");
    assert_eq!((status, code(&value)), (503, "queue_unavailable"));
    api.queue_up = true;
    api.call(
        "PATCH",
        &sub_path(&id, ""),
        KEY_A,
        r#"{"status":"disabled"}"#,
    );
    let (status, value) = api.call("POST", &retry("msg_exh"), KEY_A, "");
    assert_eq!((status, code(&value)), (409, "subscription_disabled"));
}

#[test]
fn event_types_list_rules_with_their_catalog_fields_and_test() {
    let mut api = Api::new();
    let (status, value) = api.call("GET", "/webhooks/event-types", KEY_B, "");
    assert_eq!(status, 200);
    let test_description = "Sent on request to one subscription (POST .../subscriptions/{id}/test), to check an endpoint.";
    assert_eq!(
        value,
        json!({"data": [
            {"type": "order.created", "methods": ["POST"], "path": "/orders",
             "include_object": true, "description": "An order was placed.",
             "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
             "example": {"id": 42}},
            {"type": "order.updated", "methods": ["PUT", "PATCH"], "path": "/orders/{id}",
             "include_object": false},
            {"type": "webhook.test", "methods": [], "path": null, "include_object": true,
             "description": test_description}
        ], "infer_events": true})
    );
}

#[test]
fn list_pagination() {
    let mut api = Api::new();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            api.create(KEY_A, URL, &["*"])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let page = |api: &mut Api, query: &str| {
        let (status, value) =
            api.call("GET", &format!("/webhooks/subscriptions{query}"), KEY_A, "");
        let got: Vec<String> = value["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|s| s["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (
            status,
            got,
            value["has_more"].clone(),
            code(&value).to_string(),
        )
    };
    assert_eq!(
        page(&mut api, ""),
        (200, ids.clone(), json!(false), "<none>".into())
    );
    assert_eq!(
        page(&mut api, "?limit=2"),
        (200, ids[..2].to_vec(), json!(true), "<none>".into())
    );
    let after = format!("?limit=2&after={}", ids[1]);
    assert_eq!(
        page(&mut api, &after),
        (200, ids[2..].to_vec(), json!(false), "<none>".into())
    );
    let last = format!("?after={}", ids[2]);
    assert_eq!(page(&mut api, &last).1, Vec::<String>::new());
    // A cursor that is not one of the caller's (unknown, or another consumer's) ends the list.
    let other = api.create(KEY_B, URL, &["*"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for cursor in ["sub_unknown".to_string(), other] {
        let query = format!("?after={cursor}");
        assert_eq!(
            page(&mut api, &query),
            (200, vec![], json!(false), "<none>".into()),
            "{cursor}"
        );
    }
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?after=a%20b"] {
        let (status, _, _, error_code) = page(&mut api, bad);
        assert_eq!(
            (status, error_code.as_str()),
            (422, "invalid_field"),
            "{bad}"
        );
    }
}

#[test]
fn oversized_bodies_answer_413() {
    let mut api = Api::new();
    let body = json!({"url": URL, "events": ["*"], "description": "x".repeat(2000)}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!((status, code(&value)), (413, "payload_too_large"));
    let response = too_large(65536);
    assert_eq!(response.status, 413);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert!(parse(&response)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("65536"));
}

#[test]
fn garbage_never_panics() {
    let mut api = Api::new();
    let bearer = format!("Bearer {KEY_A}");
    let deep = "[".repeat(10_000);
    let bodies: [&[u8]; 5] = [
        b"\xff\xfe",
        b"{\"url\":\"\xff\"}",
        deep.as_bytes(),
        b"1e999999",
        b"{\"\\ud800\":1}",
    ];
    for path in [
        "/webhooks/subscriptions",
        "/webhooks/subscriptions/sub_1",
        "/webhooks/\u{e9}",
    ] {
        for method in ["POST", "PATCH", ""] {
            for body in bodies {
                let response = api.send(&Request {
                    method,
                    path,
                    authorization: Some(bearer.as_bytes()),
                    api_key: Some(b"\xff"),
                    consumer_header: None,
                    content_type: Some(b"application/json; \xff"),
                    body,
                    ..Request::default()
                });
                assert!(response.status >= 400, "{method} {path}");
            }
        }
    }
}

#[test]
fn consumer_header_identities_never_reach_static_subscriptions() {
    // An identity provider's subject named like the audit trail's consumer must neither read nor
    // switch off that privileged static subscription.
    let text = json!({
        "events": [{"type": "order.created", "method": "POST", "path": "/orders"}],
        "api": {"consumer_header": "x-consumer"},
        "subscriptions": [{"id": "sub_audit", "consumer": "ops", "url": "https://audit.example.com/in",
                           "events": ["*"], "secret": STATIC_SECRET, "privileged": true}]
    })
    .to_string();
    let mut api = Api::with(&text);
    let call = |api: &mut Api, method, path: &str, body: &'static [u8]| {
        api.send(&Request {
            method,
            path,
            authorization: None,
            api_key: None,
            consumer_header: Some(b"ops"),
            content_type: Some(b"application/json"),
            body,
            ..Request::default()
        })
    };
    let patched = call(
        &mut api,
        "PATCH",
        "/webhooks/subscriptions/sub_audit",
        br#"{"status": "disabled"}"#,
    );
    assert_eq!(patched.status, 404);
    for path in [
        "/webhooks/subscriptions/sub_audit",
        "/webhooks/subscriptions/sub_audit/deliveries",
    ] {
        assert_eq!(call(&mut api, "GET", path, b"").status, 404, "{path}");
    }
    let test = call(
        &mut api,
        "POST",
        "/webhooks/subscriptions/sub_audit/test",
        b"",
    );
    assert_eq!(test.status, 404);
    let list = call(&mut api, "GET", "/webhooks/subscriptions", b"");
    let listed: Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(listed["data"], json!([]));
    assert_eq!(api.record("sub_audit").status, Status::Active);
}

/// The harness with `fleet` configured (a cache of etcd that the API only reads).
fn fleet_api() -> Api {
    let mut config: Value = serde_json::from_str(&config_json(true, false)).unwrap();
    config["fleet"] = json!({"cluster": "webhooks_etcd", "prefix": "/pw"});
    Api::with(&config.to_string())
}

impl Api {
    /// A call with `Bearer <key>` as [`Api::call`] makes it, answered as it comes.
    fn fleet_call(&mut self, method: &str, path: &str, key: &str, body: &str) -> Answer {
        let auth = format!("Bearer {key}");
        self.answer(&Request {
            method,
            path,
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: Some(b"application/json"),
            body: body.as_bytes(),
            ..Request::default()
        })
    }

    /// A record in the cache, as the fleet's sync would put it there.
    fn synced(&self, id: &str, consumer: &str, version: u64) -> Subscription {
        let mut sub = self.record("sub_static_1");
        sub.id = id.to_string();
        sub.consumer = consumer.to_string();
        sub.is_static = false;
        sub.version = version;
        self.registry.apply_synced(&sub).unwrap();
        sub
    }
}

/// The write and the parsed response of a call that waits for etcd.
fn commit(answer: Answer) -> (Write, u16, Value) {
    match answer {
        Answer::Commit { write, response } => (*write, response.status, parse(&response)),
        Answer::Now(r) => panic!("answered now: {} {}", r.status, parse(&r)),
        other => panic!("not a write: {other:?}"),
    }
}

fn now(answer: Answer) -> (u16, Value) {
    match answer {
        Answer::Now(r) => (r.status, parse(&r)),
        other => panic!("not answered now: {other:?}"),
    }
}

const FLEET_SUB: &str = "sub_AAAAAAAAAAAAAAAAAAAAAAAA";

#[test]
fn fleet_create_is_checked_but_left_to_etcd() {
    let mut api = fleet_api();
    let writes = api.writes();
    let body = json!({"url": URL, "events": ["order.*"]}).to_string();
    let answer = api.fleet_call("POST", "/webhooks/subscriptions", KEY_A, &body);
    let Answer::Commit { write, response } = answer else {
        panic!("not a commit: {answer:?}");
    };
    let Write::Create { sub, limit, cap } = *write else {
        panic!("not a create: {write:?}");
    };
    assert_eq!((limit, sub.version, sub.consumer.as_str()), (3, 1, "acme"));
    assert_eq!(cap, 100_000);
    assert_eq!(response.status, 201);
    let shown = parse(&response);
    assert_eq!(shown["id"], json!(sub.id));
    assert_eq!(shown["secret"], json!(sub.secrets[0].secret));
    let location = format!("/webhooks/subscriptions/{}", sub.id);
    assert_eq!(header(&response, "location"), Some(location.as_str()));
    assert_eq!(
        api.writes(),
        writes,
        "the cache is written only once etcd has it"
    );
    assert!(api.registry.get(&sub.id).is_none());
    // Checks still answer at once.
    let (status, value) = now(api.fleet_call("POST", "/webhooks/subscriptions", KEY_A, "{}"));
    assert_eq!((status, code(&value)), (422, "missing_field"), "{value}");
}

#[test]
fn fleet_patch_and_rotate_replace_the_checked_version() {
    let mut api = fleet_api();
    let before = api.synced(FLEET_SUB, "acme", 4);
    let writes = api.writes();
    api.now_ms = NOW + 5_000;
    let path = sub_path(FLEET_SUB, "");
    let (write, status, shown) =
        commit(api.fleet_call("PATCH", &path, KEY_A, r#"{"status":"disabled"}"#));
    let mut after = before.clone();
    after.status = Status::Disabled;
    after.disabled_reason = Some("manual".into());
    after.updated_at_ms = NOW + 5_000;
    after.version = 5;
    assert_eq!(
        write,
        Write::Replace {
            after: after.clone(),
            before_version: 4
        }
    );
    assert_eq!((status, &shown["status"]), (200, &json!("disabled")));

    let rotate = sub_path(FLEET_SUB, "/rotate-secret");
    let (write, status, shown) = commit(api.fleet_call("POST", &rotate, KEY_A, ""));
    let Write::Replace {
        after,
        before_version,
    } = write
    else {
        panic!("not a replace: {write:?}");
    };
    assert_eq!((status, before_version, after.version), (200, 4, 5));
    assert_eq!(shown["secret"], json!(after.secrets[0].secret));
    assert_eq!(after.secrets[1].secret, before.secrets[0].secret);
    assert_eq!(api.writes(), writes);
    assert_eq!(api.record(FLEET_SUB), before, "the cache is unchanged");
    // An empty patch writes nothing anywhere; another consumer's id is not found.
    assert_eq!(now(api.fleet_call("PATCH", &path, KEY_A, "{}")).0, 200);
    let (status, value) = now(api.fleet_call("PATCH", &path, KEY_B, r#"{"status":"active"}"#));
    assert_eq!((status, code(&value)), (404, "not_found"));
}

#[test]
fn fleet_patch_of_a_static_subscription_writes_its_status_alone() {
    let mut api = fleet_api();
    let before = api.record("sub_static_1");
    let writes = api.writes();
    let path = sub_path("sub_static_1", "");
    let (write, status, shown) =
        commit(api.fleet_call("PATCH", &path, KEY_OPS, r#"{"status":"disabled"}"#));
    let Write::Static { after } = write else {
        panic!("not a status write: {write:?}");
    };
    assert_eq!((status, &shown["status"]), (200, &json!("disabled")));
    assert_eq!(after.disabled_reason.as_deref(), Some("manual"));
    assert!(after.is_static && after.same_definition(&before));
    assert_eq!(api.writes(), writes, "the cache waits for etcd");
    // Its definition stays out of reach, in fleet mode as without.
    let body = r#"{"status":"active","url":"https://other.example.com/in"}"#;
    let (status, value) = now(api.fleet_call("PATCH", &path, KEY_OPS, body));
    assert_eq!((status, code(&value)), (409, "static_subscription"));
}

#[test]
fn fleet_delete_names_the_record_and_its_consumer() {
    let mut api = fleet_api();
    api.synced(FLEET_SUB, "acme", 4);
    let writes = api.writes();
    let (write, status, body) =
        commit(api.fleet_call("DELETE", &sub_path(FLEET_SUB, ""), KEY_A, ""));
    assert_eq!(
        write,
        Write::Delete {
            id: FLEET_SUB.into(),
            consumer: "acme".into(),
            before_version: 4
        }
    );
    assert_eq!((status, body), (204, Value::Null));
    assert_eq!(api.writes(), writes);
    assert!(api.registry.get(FLEET_SUB).is_some());
    // Static subscriptions stay out of reach; reads answer from the cache.
    let (status, value) = now(api.fleet_call("DELETE", &sub_path("sub_static_1", ""), KEY_OPS, ""));
    assert_eq!((status, code(&value)), (409, "static_subscription"));
    let (status, list) = now(api.fleet_call("GET", "/webhooks/subscriptions", KEY_A, ""));
    assert_eq!(
        (status, list["data"][0]["id"].clone()),
        (200, json!(FLEET_SUB))
    );
}

impl Api {
    /// A retry answered with what etcd kept for it (`kept`), as the filter does after a
    /// [`Answer::FindKept`].
    fn kept_call(&mut self, path: &str, key: &str, kept: Option<&[u8]>) -> (u16, Value) {
        let auth = format!("Bearer {key}");
        let request = Request {
            method: "POST",
            path,
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: None,
            body: b"",
            ..Request::default()
        };
        let response = self.with_cx(|cx| retry_kept(&request, cx, kept));
        (response.status, parse(&response))
    }
}

#[test]
fn fleet_retry_of_a_message_no_log_here_has_asks_etcd() {
    let mut api = fleet_api();
    let path = "/webhooks/deliveries/msg_elsewhere/retry";
    let answer = api.fleet_call("POST", path, KEY_A, "");
    assert_eq!(
        answer,
        Answer::FindKept {
            webhook_id: "msg_elsewhere".into()
        }
    );
    // Without fleet mode there is nowhere else to look.
    let (status, value) = Api::new().call("POST", path, KEY_A, "");
    assert_eq!((status, code(&value)), (404, "not_found"));
    // Each lookup counts against the caller's retries: a flood of them never reaches etcd.
    for _ in 1..crate::registry::ratelimit::BURST {
        let answer = api.fleet_call("POST", path, KEY_A, "");
        assert!(matches!(answer, Answer::FindKept { .. }), "{answer:?}");
    }
    let (status, value) = now(api.fleet_call("POST", path, KEY_A, ""));
    assert_eq!((status, code(&value)), (429, "rate_limited"));
    assert!(api.sent.is_empty());
}

#[test]
fn fleet_retry_of_a_message_no_longer_kept_in_memory_asks_etcd_and_counts_once() {
    let mut api = fleet_api();
    api.synced(FLEET_SUB, "acme", 1);
    let log = vec![
        attempt("msg_old", 3, State::Exhausted),
        attempt("msg_old", 3, State::Expired),
        attempt("msg_ok", 1, State::Succeeded),
    ];
    crate::registry::Registry::new(&api.store)
        .record_attempts(FLEET_SUB, log)
        .unwrap();
    let path = "/webhooks/deliveries/msg_old/retry";
    for _ in 0..crate::registry::ratelimit::BURST {
        let answer = api.fleet_call("POST", path, KEY_A, "");
        assert!(matches!(answer, Answer::FindKept { .. }), "{answer:?}");
    }
    // The lookup took the call's token: answering it takes none.
    let kept = crate::fleet::stored::encode("msg_old", FLEET_SUB, "a.b", 7, b"{}").unwrap();
    let (status, value) = api.kept_call(path, KEY_A, Some(&kept));
    assert_eq!(status, 202, "{value}");
    // Still in memory, so etcd's copy is not asked for.
    let (status, value) =
        now(api.fleet_call("POST", "/webhooks/deliveries/msg_ok/retry", KEY_A, ""));
    assert_eq!((status, code(&value)), (409, "not_replayable"));
}

#[test]
fn fleet_retry_with_the_kept_copy_replays_only_the_callers_own_active_message() {
    let mut api = fleet_api();
    api.synced(FLEET_SUB, "acme", 1);
    let path = "/webhooks/deliveries/msg_1/retry";
    let kept = crate::fleet::stored::encode("msg_1", FLEET_SUB, "order.created", 7, b"{}").unwrap();
    let writes = api.writes();

    // Another consumer's message, none, a broken copy, another message's copy: the same 404.
    let not_found = api.kept_call(path, KEY_A, None);
    assert_eq!(
        not_found.1,
        json!({"error": {"code": "not_found", "message": "delivery not found"}})
    );
    let refused: [(&str, &str, Option<&[u8]>); 3] = [
        (KEY_B, path, Some(&kept)),
        (KEY_A, path, Some(b"v1\nmsg_1\nbroken")),
        (KEY_A, "/webhooks/deliveries/msg_2/retry", Some(&kept)),
    ];
    for (key, path, kept) in refused {
        assert_eq!(api.kept_call(path, key, kept), not_found, "{key} {path}");
    }
    let (status, value) = api.kept_call(path, KEY_A, Some(&kept));
    assert_eq!((status, value), (202, json!({"status": "queued"})));
    assert_eq!(
        api.sent,
        [QueueMessage::Replay {
            webhook_id: "msg_1".into(),
            kept: kept.clone()
        }]
    );
    assert_eq!(api.writes(), writes, "a retry writes nothing");

    let mut disabled = api.record(FLEET_SUB);
    disabled.status = Status::Disabled;
    api.registry.apply_synced(&disabled).unwrap();
    let (status, value) = api.kept_call(path, KEY_A, Some(&kept));
    assert_eq!((status, code(&value)), (409, "subscription_disabled"));
    let (status, _) = api.kept_call("/webhooks/subscriptions", KEY_A, Some(&kept));
    assert_eq!(status, 404, "only a retry is answered this way");
}

#[test]
fn fleet_delivery_logs_are_read_from_etcd_for_the_owner_only() {
    let mut api = fleet_api();
    api.synced(FLEET_SUB, "acme", 4);
    let path = sub_path(FLEET_SUB, "/deliveries");
    let answer = api.fleet_call("GET", &path, KEY_A, "");
    assert!(
        matches!(&answer, Answer::ReadLog { subscription_id } if subscription_id == FLEET_SUB),
        "{answer:?}"
    );
    let (status, value) = now(api.fleet_call("GET", &path, KEY_B, ""));
    assert_eq!((status, code(&value)), (404, "not_found"), "{value}");
}

mod schemes;

#[test]
fn recover_counts_from_the_index_and_hands_the_rest_to_the_dispatcher() {
    let mut api = Api::new();
    let id = api.create(KEY_A, URL, &["order.created"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = sub_path(&id, "/recover");
    let t = |s: &str| crate::support::time::parse_rfc3339_millis(s).unwrap();
    let kept = vec![t("2026-11-27T10:00:00Z"), t("2026-11-27T10:00:01Z")];
    api.registry
        .record_kept(&id, kept, &[t("2026-11-27T09:59:59Z")])
        .unwrap();

    let (status, value) = api.call(
        "POST",
        &path,
        KEY_A,
        r#"{"since": "2026-11-27T10:00:00.5Z"}"#,
    );
    assert_eq!((status, value), (202, json!({"count": 1, "not_kept": 0})));
    let (status, value) = api.call("POST", &path, KEY_A, r#"{"since": "2026-11-27T09:00:00Z"}"#);
    assert_eq!((status, value), (202, json!({"count": 2, "not_kept": 1})));
    let want = QueueMessage::Recover {
        subscription_id: id.clone(),
        since_ms: t("2026-11-27T09:00:00Z"),
    };
    assert_eq!(api.sent.last(), Some(&want));
    let sent = api.sent.len();
    let (status, value) = api.call("POST", &path, KEY_A, r#"{"since": "2030-01-01T00:00:00Z"}"#);
    assert_eq!((status, value), (202, json!({"count": 0, "not_kept": 0})));
    assert_eq!(api.sent.len(), sent, "nothing to send: nothing handed over");

    for (body, want) in [
        (r#"{}"#, (422, "missing_field")),
        (r#"{"since": 5}"#, (422, "invalid_field")),
        (r#"{"since": "yesterday"}"#, (422, "invalid_since")),
        (
            r#"{"since": "2026-11-27T10:00:00Z", "x": 1}"#,
            (422, "unknown_field"),
        ),
    ] {
        let (status, value) = api.call("POST", &path, KEY_A, body);
        assert_eq!((status, code(&value)), want, "{body}");
    }
    let (_, value) = api.call("POST", &path, KEY_A, r#"{"since": "2026-11-27 10:00:00"}"#);
    assert_eq!(
        value["error"]["message"],
        "since must be an RFC 3339 date-time such as 2026-11-27T10:00:00Z"
    );
    let body = r#"{"since": "2026-11-27T10:00:00Z"}"#;
    let (status, value) = api.call("POST", &path, KEY_B, body);
    assert_eq!(
        (status, code(&value)),
        (404, "not_found"),
        "another consumer's"
    );
    let (status, value) = api.call("POST", &sub_path("sub_nope", "/recover"), KEY_A, body);
    assert_eq!((status, code(&value)), (404, "not_found"));
    let (status, _) = api.call("GET", &path, KEY_A, "");
    assert_eq!(status, 405);
    // Rate-limited with test and retry calls (three taken above).
    let mut last = (0, Value::Null);
    for _ in 0..crate::registry::ratelimit::BURST {
        last = api.call("POST", &path, KEY_A, body);
    }
    assert_eq!((last.0, code(&last.1)), (429, "rate_limited"));
}

#[test]
fn fleet_recover_takes_the_copies_from_etcd_and_hands_each_over_in_order() {
    let mut api = fleet_api();
    api.synced(FLEET_SUB, "acme", 1);
    let path = sub_path(FLEET_SUB, "/recover");
    let body = r#"{"since": "2026-11-27T10:00:00Z"}"#;
    let since_ms = crate::support::time::parse_rfc3339_millis("2026-11-27T10:00:00Z").unwrap();
    assert_eq!(
        api.fleet_call("POST", &path, KEY_A, body),
        Answer::TakeKept {
            subscription_id: FLEET_SUB.into(),
            since_ms
        }
    );
    let (status, value) = now(api.fleet_call("POST", &path, KEY_B, body));
    assert_eq!(
        (status, code(&value)),
        (404, "not_found"),
        "not asked for another's"
    );
    let copy =
        |id: &str| crate::fleet::stored::encode(id, FLEET_SUB, "a.b", since_ms, b"{}").unwrap();
    let taken: Vec<crate::fleet::recover::Taken> = ["msg_1", "msg_2"]
        .iter()
        .map(|id| crate::fleet::recover::Taken {
            webhook_id: id.to_string(),
            stored: copy(id),
        })
        .collect();
    let response = api.with_cx(|cx| recover_taken(cx, FLEET_SUB, since_ms, taken));
    assert_eq!(
        (response.status, parse(&response)),
        (202, json!({"count": 2, "not_kept": 0}))
    );
    let want: Vec<QueueMessage> = ["msg_1", "msg_2"]
        .iter()
        .map(|id| QueueMessage::Replay {
            webhook_id: id.to_string(),
            kept: copy(id),
        })
        .collect();
    assert_eq!(
        api.sent, want,
        "each a retry of its kept copy, in detection order"
    );
    // Counted before etcd is asked, with test and retry calls (one taken above).
    for _ in 1..crate::registry::ratelimit::BURST {
        let answer = api.fleet_call("POST", &path, KEY_A, body);
        assert!(matches!(answer, Answer::TakeKept { .. }), "{answer:?}");
    }
    let (status, value) = now(api.fleet_call("POST", &path, KEY_A, body));
    assert_eq!((status, code(&value)), (429, "rate_limited"));
    let mut disabled = api.record(FLEET_SUB);
    disabled.status = Status::Disabled;
    api.registry.apply_synced(&disabled).unwrap();
    let (status, value) = now(api.fleet_call("POST", &path, KEY_A, body));
    assert_eq!((status, code(&value)), (409, "subscription_disabled"));
}

#[test]
fn ordering_is_chosen_at_create_and_fixed_afterwards() {
    let mut api = Api::new();
    let body = json!({"url": URL, "events": ["*"], "ordering": "fifo"}).to_string();
    let (status, created) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!(
        (status, &created["ordering"]),
        (201, &json!("fifo")),
        "{created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert!(api.record(&id).ordering.is_fifo());
    let (_, got) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
    assert_eq!(got["ordering"], "fifo");
    let (status, value) = api.call("PATCH", &sub_path(&id, ""), KEY_A, r#"{"ordering":"none"}"#);
    assert_eq!(
        (status, code(&value)),
        (422, "unknown_field"),
        "fixed at create"
    );
    let body = json!({"url": URL, "events": ["*"], "ordering": "lifo"}).to_string();
    let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!(
        (status, code(&value), value["error"]["message"].as_str()),
        (
            422,
            "invalid_field",
            Some("ordering must be \"none\" or \"fifo\"")
        )
    );
    let body = json!({"url": URL, "events": ["*"], "ordering": null}).to_string();
    let (status, created) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
    assert_eq!((status, &created["ordering"]), (201, &json!("none")));
}

mod operators;
