//! Robustness of api::handle.

use super::{attempt, full_config, fuzz_input, mutate_bytes, run, shown, NOW};
use crate::api::{self, Context, Request, Response};
use crate::config::{self, Config};
use crate::model::queue::QueueMessage;
use crate::registry::attempts::State;
use crate::registry::store::{self, KvStore, MemoryStore};
use crate::registry::Registry;
use crate::tests::fixtures::{scaled, seeded, Rng, KEY_A, KEY_B, KEY_OPS};
use serde_json::{json, Value};
use std::rc::Rc;

struct ApiHarness {
    config: Config,
    store: Rc<MemoryStore>,
    registry: Registry<Rc<MemoryStore>>,
    rng: Rng,
    queue_up: bool,
    now_ms: u64,
}

impl ApiHarness {
    fn send(&mut self, request: &Request<'_>) -> Response {
        let up = self.queue_up;
        let mut enqueue = |m: QueueMessage| {
            assert_eq!(QueueMessage::decode(&m.encode()), Ok(m));
            up
        };
        let mut cx = Context {
            config: &self.config,
            registry: &self.registry,
            store: &self.store,
            rng: &mut self.rng,
            now_ms: self.now_ms,
            enqueue: &mut enqueue,
        };
        match api::handle(request, &mut cx) {
            api::Answer::Now(response) => response,
            other => panic!("single-process mode answers now: {other:?}"),
        }
    }

    fn create(&mut self, key: &str, body: &Value) -> Option<String> {
        let auth = format!("Bearer {key}");
        let body = body.to_string();
        let response = self.send(&Request {
            method: "POST",
            path: "/webhooks/subscriptions",
            authorization: Some(auth.as_bytes()),
            api_key: None,
            consumer_header: None,
            content_type: Some(b"application/json"),
            body: body.as_bytes(),
            ..Request::default()
        });
        let value: Value = serde_json::from_slice(&response.body).ok()?;
        value["id"].as_str().map(str::to_string)
    }
}

const API_ITERATIONS: usize = 4000;

#[test]
fn api_handle_answers_json_and_refusals_write_nothing() {
    let mut rng = seeded(0xa91_5000);
    let config = config::parse(full_config().to_string().as_bytes()).unwrap();
    let store = Rc::new(MemoryStore::default());
    let registry = Registry::new(Rc::clone(&store));
    registry.prepare();
    registry.sync_static(&config.subscriptions, NOW);
    let mut api = ApiHarness {
        config,
        store,
        registry,
        rng: Rng(7),
        queue_up: true,
        now_ms: NOW,
    };
    let create_body = json!({
        "url": "https://hooks.example.com/acme?x=1",
        "events": ["order.created", "orders.*", "widgets.deleted"],
        "description": "made by the fuzzer"
    });
    let mut ids: Vec<String> = vec!["sub_static_1".into(), "sub_missing".into()];
    for key in [KEY_A, KEY_A, KEY_B] {
        ids.extend(api.create(key, &create_body));
    }
    // Attempt logs to find and replay: one per state, and a corrupted one.
    let states = [
        State::Succeeded,
        State::Retrying,
        State::Exhausted,
        State::Failed,
        State::Dropped,
    ];
    let webhook_ids: Vec<String> = (0..states.len()).map(|i| format!("msg_{i}")).collect();
    for id in &ids {
        let log = states
            .iter()
            .zip(&webhook_ids)
            .map(|(s, w)| attempt(w, *s))
            .collect();
        crate::registry::Registry::new(&api.store)
            .record_attempts(id, log)
            .unwrap();
    }

    let bodies: Vec<Vec<u8>> = vec![
        create_body.to_string().into_bytes(),
        br#"{"url":"https://a.example.com/","events":["*"]}"#.to_vec(),
        br#"{"status":"disabled"}"#.to_vec(),
        br#"{"status":"active","description":null}"#.to_vec(),
        br#"{"events":["order.updated","webhook.test"],"url":"https://b.example.com/p"}"#.to_vec(),
        b"{}".to_vec(),
    ];
    let (mut statuses, mut writes) = (std::collections::BTreeMap::new(), 0);
    for i in 0..scaled(API_ITERATIONS) {
        api.queue_up = !rng.chance(5);
        api.now_ms = NOW + i as u64 * 1000;
        if rng.chance(40) {
            // Corrupt something other writers own: the bucket of an attempt log or a record.
            let id = rng.pick(&ids).clone();
            let key = if rng.chance(2) {
                store::log_key(&id)
            } else {
                store::record_key(&id)
            };
            let seed = api.store.get(&key).unwrap_or_default().0;
            let bytes = fuzz_input(&mut rng, &[seed], true);
            api.store.set(&key, &bytes, None).unwrap();
        }
        if ids.len() < 8 && rng.chance(10) {
            let key = *rng.pick(&[KEY_A, KEY_B]);
            ids.extend(api.create(key, &create_body));
        }
        let id = rng.pick(&ids).clone();
        let webhook_id = rng.pick(&webhook_ids).clone();
        let (mut path, allowed): (String, &[&str]) = match rng.below(8) {
            0 => ("/webhooks/subscriptions".to_string(), &["POST", "GET"]),
            1 => (
                format!("/webhooks/subscriptions/{id}"),
                &["GET", "PATCH", "DELETE"],
            ),
            2 => (
                format!("/webhooks/subscriptions/{id}/rotate-secret"),
                &["POST"],
            ),
            3 => (format!("/webhooks/subscriptions/{id}/test"), &["POST"]),
            4 => (format!("/webhooks/subscriptions/{id}/deliveries"), &["GET"]),
            5 => (
                format!("/webhooks/deliveries/{webhook_id}/retry"),
                &["POST"],
            ),
            6 => ("/webhooks/event-types".to_string(), &["GET"]),
            _ => (
                format!(
                    "/webhooks/subscriptions?limit={}&after={id}",
                    rng.pick(&[
                        "1",
                        "2",
                        "0",
                        "1000",
                        "1001",
                        "-1",
                        "x",
                        "99999999999999999999"
                    ])
                ),
                &["GET"],
            ),
        };
        let method = match rng.below(12) {
            0 => rng.ascii(8),
            1 => (*rng.pick(&["PUT", "HEAD", "get", "", "OPTIONS"])).to_string(),
            2 => (*rng.pick(&["GET", "POST", "PATCH", "DELETE"])).to_string(),
            _ => (*rng.pick(allowed)).to_string(),
        };
        if rng.chance(4) {
            path = String::from_utf8_lossy(&mutate_bytes(&mut rng, path.as_bytes())).into_owned();
        }
        let key = *rng.pick(&[KEY_A, KEY_A, KEY_A, KEY_A, KEY_B, KEY_OPS, "wrong-key"]);
        let auth_value = match rng.below(16) {
            0 => rng.bytes(40),
            1 => format!("bearer   {key} ").into_bytes(),
            2 => b"Bearer".to_vec(),
            _ => format!("Bearer {key}").into_bytes(),
        };
        let api_key = rng.chance(6).then(|| key.as_bytes().to_vec());
        let authorization = (!rng.chance(16)).then_some(auth_value);
        let content_type: Option<Vec<u8>> = match rng.below(8) {
            0 => None,
            1 => Some(rng.bytes(24)),
            2 => Some(b"Application/JSON ; charset=utf-8".to_vec()),
            3 => Some(b"text/plain".to_vec()),
            _ => Some(b"application/json".to_vec()),
        };
        let body = match rng.below(10) {
            0 => Vec::new(),
            1 => vec![b' '; 5000],
            2..=4 => rng.pick(&bodies).clone(),
            _ => fuzz_input(&mut rng, &bodies, true),
        };
        let request = Request {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
            api_key: api_key.as_deref(),
            consumer_header: None,
            content_type: content_type.as_deref(),
            body: &body,
            ..Request::default()
        };
        // The rate limiter's bookkeeping is no change of subscriptions or logs.
        let state = |api: &ApiHarness| {
            let mut snapshot = api.store.snapshot();
            snapshot.retain(|key, _| !key.starts_with("pwh:rate:"));
            snapshot
        };
        let before = state(&api);
        let response = run("api::handle", i, &request, || api.send(&request));
        let changed = state(&api) != before;
        let described = || {
            format!(
                "{request:?} -> {} {}",
                response.status,
                shown(&response.body)
            )
        };
        assert!((200..=599).contains(&response.status), "{}", described());
        if response.status == 204 {
            assert!(response.body.is_empty(), "{}", described());
        } else {
            let value: Value = serde_json::from_slice(&response.body)
                .unwrap_or_else(|e| panic!("{e}: {}", described()));
            assert!(value.is_object(), "{}", described());
            if response.status >= 400 {
                assert!(value["error"]["code"].is_string(), "{}", described());
                assert!(value["error"]["message"].is_string(), "{}", described());
            }
            let json_type = response
                .headers
                .iter()
                .any(|(n, v)| *n == "content-type" && v == "application/json");
            assert!(json_type, "{}", described());
        }
        if response.status >= 400 || method == "GET" {
            assert!(!changed, "wrote to the store: {}", described());
        }
        writes += usize::from(changed);
        *statuses.entry(response.status).or_insert(0usize) += 1;
        if response.status == 204 {
            ids.retain(|i| *i != id || i == "sub_static_1" || i == "sub_missing");
        }
        if response.status == 201 {
            let value: Value = serde_json::from_slice(&response.body).unwrap();
            ids.extend(value["id"].as_str().map(str::to_string));
        }
    }
    // The requests must get past every kind of check, or the deeper code goes untested.
    for status in [
        200, 201, 202, 204, 400, 401, 404, 405, 409, 413, 415, 422, 503,
    ] {
        assert!(
            statuses.contains_key(&status),
            "never {status}: {statuses:?}"
        );
    }
    assert!(
        writes > API_ITERATIONS / 100,
        "{writes} writes: {statuses:?}"
    );
}
