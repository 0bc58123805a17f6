//! Plugin configurations for the scenarios: one event rule, static subscriptions to the bench
//! receiver (plain http on 127.0.0.1, hence `allow_insecure_destinations`).

use bytes::Bytes;
use serde_json::{json, Value};

use super::load::Shape;
use super::servers::Receiver;

/// The only event the bench makes: `POST /orders` answered 201.
pub const EVENT_TYPE: &str = "order.created";
/// A valid signing secret (`whsec_` + base64); the lean receiver does not verify signatures.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The plugin configuration with these subscriptions and `delivery` settings.
fn config(subscriptions: Vec<Value>, delivery: Value) -> Value {
    json!({
        // The load is key-less writes: every subscription gets them.
        "audience": "all",
        "events": [{"type": EVENT_TYPE, "method": "POST", "path": "/orders", "status": [201]}],
        "subscriptions": subscriptions,
        "delivery": delivery,
    })
}

fn subscription(n: usize, url: String, event_type: &str) -> Value {
    subscription_of("bench", n, url, event_type)
}

fn subscription_of(consumer: &str, n: usize, url: String, event_type: &str) -> Value {
    json!({
        "id": format!("sub_{consumer}_{n}"),
        "consumer": consumer,
        "url": url,
        "events": [event_type],
        "secret": SECRET,
    })
}

fn delivery() -> Value {
    json!({"timeout": "5s", "allow_insecure_destinations": true})
}

/// One subscriber to every event (scenarios 1, 2, 3 and the smoke run).
pub fn one_subscriber(receiver: &Receiver) -> Value {
    config(
        vec![subscription(0, receiver.url("/hook"), EVENT_TYPE)],
        delivery(),
    )
}

/// An ed25519 key (`whsk_` + base64 of a 32-byte seed) for the `v1a` subscriptions.
const SIGNING_KEY: &str = "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// One subscriber to every event, signed with `scheme` (`"v1"`, `"v1a"` or `"v1,v1a"`;
/// scenario 16).
pub fn one_subscriber_signed(receiver: &Receiver, scheme: &str) -> Value {
    let mut sub = subscription(0, receiver.url("/hook"), EVENT_TYPE);
    sub["signature_scheme"] = json!(scheme);
    if scheme.contains("v1a") {
        sub["signing_key"] = json!(SIGNING_KEY);
    }
    if scheme == "v1a" {
        sub.as_object_mut().map(|o| o.remove("secret"));
    }
    config(vec![sub], delivery())
}

/// `n` subscribers to the event, each at its own path `/hook/<i>` (scenario 4).
pub fn fan_out(receiver: &Receiver, n: usize) -> Value {
    let subs = (0..n)
        .map(|i| subscription(i, receiver.url(&format!("/hook/{i}")), EVENT_TYPE))
        .collect();
    config(subs, delivery())
}

/// `n` subscriptions of which only the first wants the event; the others each want another
/// type (scenario 5: does the size of the registry slow the hot path down?).
pub fn registry(receiver: &Receiver, n: usize) -> Value {
    let subs = (0..n)
        .map(|i| match i {
            0 => subscription(i, receiver.url("/hook"), EVENT_TYPE),
            _ => subscription(i, receiver.url("/hook"), &format!("other{i}.created")),
        })
        .collect();
    config(subs, delivery())
}

/// One subscriber whose failures are retried only after an hour, and room for `max_queue`
/// pending messages (scenario 6: what holding a backlog costs in memory).
pub fn backlog(receiver: &Receiver, max_queue: usize) -> Value {
    let delivery = json!({
        "timeout": "5s",
        "allow_insecure_destinations": true,
        "retry_schedule": ["0s", "1h"],
        "max_queue": max_queue,
    });
    config(
        vec![subscription(0, receiver.url("/hook"), EVENT_TYPE)],
        delivery,
    )
}

/// One subscriber at a slow receiver (scenario 8), with the default pacing settings and a short
/// retry schedule, so that an attempt that fails is retried within the run.
pub fn slow_receiver(url: String) -> Value {
    let delivery = json!({
        "timeout": "5s",
        "allow_insecure_destinations": true,
        "retry_schedule": ["0s", "1s", "2s", "5s", "10s", "30s"],
    });
    config(vec![subscription(0, url, EVENT_TYPE)], delivery)
}

/// Consumer `b` with one subscription at `receiver`, and, given the URL of an endpoint that
/// never answers, consumer `a` with `hanging` subscriptions there (scenario 9). A 10 s timeout,
/// so that the hanging attempts hold their slots for the whole measurement; `max_in_flight`
/// when given (else the default).
pub fn fairness(
    receiver: &Receiver,
    hang: Option<(&str, usize)>,
    max_in_flight: Option<usize>,
) -> Value {
    let mut subs = vec![subscription_of("b", 0, receiver.url("/hook"), EVENT_TYPE)];
    if let Some((base_url, hanging)) = hang {
        subs.extend(
            (0..hanging)
                .map(|i| subscription_of("a", i, format!("{base_url}/hook/{i}"), EVENT_TYPE)),
        );
    }
    let mut delivery = json!({
        "timeout": "10s",
        "allow_insecure_destinations": true,
        "retry_schedule": ["0s", "10s"],
    });
    if let Some(n) = max_in_flight {
        delivery["max_in_flight"] = json!(n);
    }
    config(subs, delivery)
}

/// The API key of [`ordered`]'s consumer `bench` (`printf test-key | sha256sum`).
pub const API_KEY: &str = "test-key";
const API_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";

/// One subscription per receiver (`sub_bench_<i>`), `fifo` or concurrent, and the API for
/// consumer `bench` (scenario 17). With `backlog`, one attempt per message and room to keep
/// every failed one for `recover`.
pub fn ordered(subscriptions: &[(&Receiver, bool)], backlog: bool) -> Value {
    let subs = subscriptions
        .iter()
        .enumerate()
        .map(|(i, (receiver, fifo))| {
            let mut sub = subscription(i, receiver.url("/hook"), EVENT_TYPE);
            sub["ordering"] = json!(if *fifo { "fifo" } else { "none" });
            sub
        })
        .collect();
    let mut delivery = delivery();
    if backlog {
        delivery["retry_schedule"] = json!(["0s"]);
        delivery["max_replay"] = json!(10_000);
        delivery["max_replay_per_consumer"] = json!(10_000);
    }
    let mut config = config(subs, delivery);
    config["api"] = json!({"keys": [{"consumer": "bench", "sha256": API_KEY_SHA256}]});
    config
}

/// The request that makes one event: `POST /orders` with a small order (echoed back with 201).
pub fn order_request() -> Shape {
    Shape::Post(
        "/orders",
        Bytes::from_static(br#"{"id":42,"item":"widget","qty":1,"total":10}"#),
    )
}
