//! Deterministic randomized robustness tests: every host-free parser is fed many thousands of
//! inputs (random bytes, random ASCII, and structured mutations of valid inputs) and must neither
//! panic nor break a few cheap invariants.
//!
//! The generator is a seeded splitmix64, so a failure is reproducible: the failing input is
//! printed (escaped) together with the iteration number before the assertion fires.
//!
//! One file per target; the generators and the shared inputs are here, the seeded generator
//! and the JSON oracle in [`crate::tests::fixtures`].

mod api_handle;
mod audiences;
mod config_parse;
mod dates;
mod etcd_answers;
mod judge_and_outbox;
mod payloads;
mod queue_messages;
mod registry_model;
mod secrets;
mod strings;
mod templates;
mod urls;

use crate::model::subscription::{self, SigningSecret, Status, Subscription};
use crate::registry::attempts::{Attempt, State};
use crate::support::time::format_rfc3339_millis;
use crate::tests::fixtures::{hex, Rng, KEY_A, KEY_B, KEY_OPS, STATIC_SECRET};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Input generators

/// Bytes that tend to matter to the parsers under test.
pub(crate) const SPECIAL: &[u8] =
    b"{}[]\":,\\/ .-+eE0123456789\n\r\t\0?#&=%*@_{}xX\x7f\x80\xc3\xff";

/// Tokens spliced in whole: JSON fragments of every type, huge numbers, odd strings.
pub(crate) const TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e308",
    "1e400",
    "-1e400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "99999999999999999999999999999999999999",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[null]",
    "{\"a\":1}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\uD83D\\uDE00\"",
    "\"\u{e9}\"",
    "\"0s\"",
    "\"365d\"",
    "\"366d\"",
    "\"18446744073709551615ms\"",
    "\"-1s\"",
    "\"*\"",
    "\"a.*\"",
    "\"webhook.test\"",
    "\"https://hooks.example.com/x\"",
    "\"http://127.0.0.1:80/\"",
    "\"https://[::1]/\"",
    "\"whsec_\"",
    "\"whsec_AAAA\"",
    "\"/\"",
    "\"/{id}\"",
    "\"/{*rest}\"",
    "\"2xx\"",
    "\"6xx\"",
    "[100,599]",
    "[0]",
    "\"POST\"",
    "[\"GET\"]",
    "\"active\"",
    "\"disabled\"",
];

/// Byte-level mutations of a valid input: flip, insert, delete, duplicate, splice, truncate.
pub(crate) fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = *rng.pick(SPECIAL);
            }
            2 => out.insert(at, *rng.pick(SPECIAL)),
            3 => out.insert(at, rng.next() as u8),
            4 if len > 0 => {
                let n = 1 + rng.below((len - at).clamp(1, 16));
                out.drain(at..(at + n).min(len));
            }
            5 if len > 0 => {
                let n = rng.below((len - at).min(32) + 1);
                let chunk = out[at..at + n].to_vec();
                for _ in 0..=rng.below(3) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            6 => {
                let token = rng.pick(TOKENS).as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            7 => out.truncate(at),
            _ if len > 1 => {
                let i = rng.below(len);
                let j = rng.below(len);
                out.swap(i, j);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

/// Deeply nested arrays/objects, well-formed or cut off.
pub(crate) fn deep(rng: &mut Rng) -> Vec<u8> {
    let depth = *rng.pick(&[64, 127, 128, 129, 500, 5000, 20_000]);
    let (open, close): (&[u8], &[u8]) = if rng.chance(2) {
        (b"[", b"]")
    } else {
        (b"{\"a\":", b"}")
    };
    let mut out = open.repeat(depth);
    out.extend_from_slice(b"1");
    if !rng.chance(4) {
        out.extend_from_slice(&close.repeat(depth));
    }
    out
}

/// A long string value or a long run of one byte.
pub(crate) fn long(rng: &mut Rng) -> Vec<u8> {
    let n = if rng.chance(10) {
        300_000
    } else {
        *rng.pick(&[1000, 4096, 70_000])
    };
    match rng.below(3) {
        0 => format!("\"{}\"", "a".repeat(n)).into_bytes(),
        1 => vec![*rng.pick(SPECIAL); n],
        _ => "9".repeat(n).into_bytes(),
    }
}

/// A random JSON value of small depth.
pub(crate) fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!((rng.next() as f64) / 7.0),
        4 => Value::String(rng.unicode(12)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (rng.ascii(6), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A raw JSON fragment standing for a replaced value, spliced into the text after serialising.
pub(crate) fn raw_replacement(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::from_utf8_lossy(&deep(rng)).into_owned(),
        1 => format!("\"{}\"", "x".repeat(*rng.pick(&[300, 5000, 100_000]))),
        2 => random_value(rng, 2).to_string(),
        _ => rng.pick(TOKENS).to_string(),
    }
}

/// Value-level mutations of a valid JSON document: swap a value's type, drop or add a field,
/// wrap a value, duplicate a key. The result is valid JSON more often than not, so the checks
/// behind the JSON parser get exercised too.
pub(crate) fn mutate_json(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let mut value = valid.clone();
    let mut raws = Vec::new();
    for _ in 0..=rng.below(3) {
        let node = random_node(rng, &mut value);
        match rng.below(6) {
            0 | 1 => {
                raws.push(raw_replacement(rng));
                *node = Value::String(format!("\u{1}RAW{}\u{1}", raws.len() - 1));
            }
            2 => match node {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(rng.below(map.len())).cloned();
                    if let Some(key) = key {
                        map.remove(&key);
                    }
                }
                Value::Array(list) if !list.is_empty() => {
                    list.remove(rng.below(list.len()));
                }
                other => *other = Value::Null,
            },
            3 => match node {
                Value::Object(map) => {
                    let key = if rng.chance(2) {
                        rng.ascii(8)
                    } else {
                        (*rng.pick(&["url", "events", "type", "path", "id", "secret"])).to_string()
                    };
                    map.insert(key, random_value(rng, 2));
                }
                Value::Array(list) => list.push(random_value(rng, 2)),
                other => *other = random_value(rng, 2),
            },
            4 => *node = json!([node.take()]),
            _ => *node = random_value(rng, 3),
        }
    }
    let mut text = value.to_string();
    for (i, raw) in raws.iter().enumerate() {
        text = text.replace(&format!("\"\\u0001RAW{i}\\u0001\""), raw);
    }
    if rng.chance(8) {
        // A duplicated key (serde_json keeps the last).
        if let Some(at) = text.find("\":") {
            let start = text[..at].rfind('"').unwrap_or(0);
            let key = text[start..at + 2].to_string();
            text.insert_str(start, &format!("{key}null,"));
        }
    }
    text.into_bytes()
}

/// A random node of the tree (the root included).
pub(crate) fn random_node<'v>(rng: &mut Rng, value: &'v mut Value) -> &'v mut Value {
    let stop = rng.chance(3);
    let len = match &*value {
        Value::Array(list) => list.len(),
        Value::Object(map) => map.len(),
        _ => 0,
    };
    if stop || len == 0 {
        return value;
    }
    let i = rng.below(len);
    match value {
        Value::Array(list) => random_node(rng, &mut list[i]),
        Value::Object(map) => {
            let child = map.values_mut().nth(i).unwrap();
            random_node(rng, child)
        }
        _ => unreachable!(),
    }
}

/// One input derived from `corpus`: a mutation most of the time, else noise or an extreme.
pub(crate) fn fuzz_input(rng: &mut Rng, corpus: &[Vec<u8>], json: bool) -> Vec<u8> {
    let seed = rng.pick(corpus);
    match rng.below(20) {
        0 => rng.bytes(64),
        1 => rng.ascii(64).into_bytes(),
        2 => Vec::new(),
        3 => deep(rng),
        4 => long(rng),
        5..=11 if json => match serde_json::from_slice::<Value>(seed) {
            Ok(valid) => mutate_json(rng, &valid),
            Err(_) => mutate_bytes(rng, seed),
        },
        12 => seed.clone(),
        _ => mutate_bytes(rng, seed),
    }
}

/// Bytes printed as (lossy, cut) text, formatted only when a failure is reported.
pub(crate) struct Shown<'a>(&'a [u8]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown(self.0))
    }
}

pub(crate) fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(400).collect();
    format!("{cut:?} ({} bytes)", bytes.len())
}

/// Runs `check` on `input`; on a panic, prints the input (escaped) before re-raising.
pub(crate) fn run<T: ?Sized + std::fmt::Debug, R>(
    target: &str,
    iteration: usize,
    input: &T,
    check: impl FnOnce() -> R,
) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{input:?}");
            let cut: String = text.chars().take(2000).collect();
            eprintln!("{target}: iteration {iteration} panicked on input {cut}");
            std::panic::resume_unwind(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared inputs

pub(crate) const NOW: u64 = 1_795_000_000_000;

pub(crate) fn full_config() -> Value {
    json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201]},
            {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}",
             "audience": {"param": "id"}},
            {"type": "file.stored", "path": "/files/{*rest}", "status": "2xx",
             "audience": {"json": "/owner"}, "include_object": false}
        ],
        "infer_events": true,
        "audience": "requester",
        "api": {
            "path_prefix": "/webhooks/",
            "keys": [
                {"consumer": "acme", "sha256": hex(KEY_A)},
                {"consumer": "beta", "sha256": hex(KEY_B)},
                {"consumer": "ops", "sha256": hex(KEY_OPS)}
            ],
            "max_subscriptions_per_consumer": 20,
            "max_body_bytes": 4096
        },
        "subscriptions": [{
            "id": "sub_static_1", "consumer": "ops", "url": "https://hooks.example.com/in",
            "events": ["order.*"], "secret": STATIC_SECRET, "description": "static",
            "privileged": true
        }],
        "delivery": {
            "timeout": "10s",
            "retry_schedule": ["0s", "5s", "5m", "2h", "1d"],
            "jitter": 0.1,
            "disable_after": "5d",
            "max_queue": 100,
            "max_payload_bytes": 65536,
            "clusters": {"http": "egress_http", "https": "egress_https"},
            "allow_insecure_destinations": false,
            "max_in_flight": 8,
            "max_replay": 10,
            "drain_timeout": "3s"
        }
    })
}

pub(crate) fn attempt(webhook_id: &str, state: State) -> Attempt {
    Attempt {
        webhook_id: webhook_id.to_string(),
        event_type: "order.created".into(),
        attempt: 3,
        timestamp: format_rfc3339_millis(NOW),
        response_status: Some(500),
        error: None,
        duration_ms: 12,
        next_retry_at: None,
        state,
    }
}

pub(crate) fn subscription(rng: &mut Rng, id: &str, consumer: &str) -> Subscription {
    let filters = ["order.created", "order.*", "*", "a.b.c", "a.*", "x_y.z"];
    let events = (0..=rng.below(3))
        .map(|_| (*rng.pick(&filters)).to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Subscription {
        id: id.to_string(),
        consumer: consumer.to_string(),
        url: "https://hooks.example.com/x".into(),
        events,
        description: rng.unicode(10),
        status: if rng.chance(3) {
            Status::Disabled
        } else {
            Status::Active
        },
        disabled_reason: None,
        created_at_ms: NOW,
        updated_at_ms: NOW,
        secrets: vec![SigningSecret {
            secret: STATIC_SECRET.into(),
            expires_at_ms: None,
        }],
        is_static: false,
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
        version: 1,
    }
}
