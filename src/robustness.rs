//! Deterministic randomized robustness tests: every host-free parser is fed many thousands of
//! inputs (random bytes, random ASCII, and structured mutations of valid inputs) and must neither
//! panic nor break a few cheap invariants.
//!
//! The generator is a seeded splitmix64, so a failure is reproducible: the failing input is
//! printed (escaped) together with the iteration number before the assertion fires.

use crate::api::tests::{hex, KEY_A, KEY_B, KEY_OPS, STATIC_SECRET};
use crate::api::{self, Context, Request, Response};
use crate::attempts::{self, Attempt, State};
use crate::config::{self, Config};
use crate::delivery::{self, Verdict};
use crate::event::{build_payload, BodyCapture, CapturedObject, RequestInfo};
use crate::ids::TestRng;
use crate::outbox::{Limits, Message, Outbox, Payload};
use crate::pacing::Signal;
use crate::queue::QueueMessage;
use crate::registry::Registry;
use crate::rules::{self, EventRule, PathTemplate, StatusMatch};
use crate::signing::Secret;
use crate::store::{self, KvStore, MemoryStore};
use crate::subscription::{self, SigningSecret, Status, Subscription};
use crate::time::{format_rfc3339_millis, parse_http_date, parse_retry_after};
use crate::url::{check_destination, parse_destination, Policy};
use serde_json::{json, Value};
use std::rc::Rc;

// ---------------------------------------------------------------------------------------------
// A tiny seeded PRNG and input generators

/// `ROBUSTNESS_SEED=<n>` varies every test's seed and `ROBUSTNESS_SCALE=<n>` multiplies the
/// iteration counts, for longer local runs; by default the runs are fixed and take seconds.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeded(base: u64) -> Rng {
    Rng(base ^ env_number("ROBUSTNESS_SEED", 0).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn scaled(iterations: usize) -> usize {
    iterations * env_number("ROBUSTNESS_SCALE", 1) as usize
}

/// splitmix64: tiny, fast, and good enough to drive a fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length biased towards short values but occasionally long.
    fn len(&mut self, max: usize) -> usize {
        match self.below(10) {
            0..=5 => self.below(max.min(16) + 1),
            6..=8 => self.below(max.min(256) + 1),
            _ => self.below(max + 1),
        }
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.len(max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn ascii(&mut self, max: usize) -> String {
        let n = self.len(max);
        (0..n).map(|_| char::from(self.below(128) as u8)).collect()
    }

    /// Any Unicode scalar values, biased towards the interesting ones.
    fn unicode(&mut self, max: usize) -> String {
        let n = self.len(max);
        (0..n)
            .map(|_| match self.below(6) {
                0 => char::from(self.below(0x20) as u8),
                1 => *self.pick(&['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{feff}', '\n']),
                2 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                3 => char::from_u32(0x80 + self.below(0x800) as u32).unwrap_or('é'),
                _ => char::from(0x20 + self.below(0x5f) as u8),
            })
            .collect()
    }

    /// A string from `alphabet`, 0..=max characters.
    fn from(&mut self, alphabet: &str, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let n = self.len(max);
        (0..n).map(|_| *self.pick(&chars)).collect()
    }
}

/// Bytes that tend to matter to the parsers under test.
const SPECIAL: &[u8] = b"{}[]\":,\\/ .-+eE0123456789\n\r\t\0?#&=%*@_{}xX\x7f\x80\xc3\xff";

/// Tokens spliced in whole: JSON fragments of every type, huge numbers, odd strings.
const TOKENS: &[&str] = &[
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
fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
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
fn deep(rng: &mut Rng) -> Vec<u8> {
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
fn long(rng: &mut Rng) -> Vec<u8> {
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
fn random_value(rng: &mut Rng, depth: usize) -> Value {
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
fn raw_replacement(rng: &mut Rng) -> String {
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
fn mutate_json(rng: &mut Rng, valid: &Value) -> Vec<u8> {
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
fn random_node<'v>(rng: &mut Rng, value: &'v mut Value) -> &'v mut Value {
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
fn fuzz_input(rng: &mut Rng, corpus: &[Vec<u8>], json: bool) -> Vec<u8> {
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
struct Shown<'a>(&'a [u8]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown(self.0))
    }
}

fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(400).collect();
    format!("{cut:?} ({} bytes)", bytes.len())
}

/// Runs `check` on `input`; on a panic, prints the input (escaped) before re-raising.
fn run<T: ?Sized + std::fmt::Debug, R>(
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
// A strict JSON oracle, independent of serde_json (no depth limit, I-JSON strings)

/// One RFC 8259 JSON text, strings restricted as I-JSON (RFC 7493) requires: UTF-8 and no
/// unpaired surrogate escapes. Iterative, so any nesting depth is checked.
fn is_strict_json(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut p = Cursor { b: bytes, i: 0 };
    let mut stack: Vec<u8> = Vec::new();
    p.ws();
    'value: loop {
        match p.peek() {
            Some(b'{') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b'}') {
                    p.i += 1;
                } else {
                    stack.push(b'{');
                    if !p.key() {
                        return false;
                    }
                    continue 'value;
                }
            }
            Some(b'[') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b']') {
                    p.i += 1;
                } else {
                    stack.push(b'[');
                    continue 'value;
                }
            }
            Some(b'"') => {
                if !p.string() {
                    return false;
                }
            }
            Some(b't') => {
                if !p.literal(b"true") {
                    return false;
                }
            }
            Some(b'f') => {
                if !p.literal(b"false") {
                    return false;
                }
            }
            Some(b'n') => {
                if !p.literal(b"null") {
                    return false;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                if !p.number() {
                    return false;
                }
            }
            _ => return false,
        }
        loop {
            p.ws();
            let Some(&open) = stack.last() else {
                return p.i == p.b.len();
            };
            match (open, p.bump()) {
                (b'{', Some(b',')) => {
                    p.ws();
                    if !p.key() {
                        return false;
                    }
                    continue 'value;
                }
                (b'[', Some(b',')) => {
                    p.ws();
                    continue 'value;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    stack.pop();
                }
                _ => return false,
            }
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let ok = self.b.get(self.i..self.i + word.len()) == Some(word);
        self.i += word.len();
        ok
    }

    /// `"key"` `:` and the whitespace around it.
    fn key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.ws();
        if self.bump() != Some(b':') {
            return false;
        }
        self.ws();
        true
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    fn string(&mut self) -> bool {
        self.i += 1; // the opening quote
        loop {
            match self.bump() {
                None => return false,
                Some(b'"') => return true,
                Some(0..=0x1f) => return false,
                Some(b'\\') => match self.bump() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => match self.hex4() {
                        Some(0xd800..=0xdbff) => {
                            if self.literal(b"\\u") && !matches!(self.hex4(), Some(0xdc00..=0xdfff))
                            {
                                return false;
                            }
                            if self.b.get(self.i - 6..self.i - 4) != Some(b"\\u") {
                                return false;
                            }
                        }
                        Some(0xdc00..=0xdfff) | None => return false,
                        Some(_) => {}
                    },
                    _ => return false,
                },
                Some(_) => {}
            }
        }
    }
}

#[test]
fn the_json_oracle_agrees_with_known_cases() {
    for good in [
        &b"1"[..],
        b" {\"a\":[1,2.5e-3,-0,true,false,null,\"\\u00e9\\uD83D\\uDE00\\n\"]} ",
        b"[]",
        b"{}",
        b"\"\"",
    ] {
        assert!(is_strict_json(good), "{}", shown(good));
    }
    for bad in [
        &b""[..],
        b"01",
        b"1.",
        b"[1,]",
        b"{\"a\"}",
        b"{\"a\":1,}",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800x\"",
        b"\"\x01\"",
        b"\"\xff\"",
        b"[1] [2]",
        b"tru",
        b"[",
    ] {
        assert!(!is_strict_json(bad), "{}", shown(bad));
    }
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    assert!(is_strict_json(deep.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// config::parse

const NOW: u64 = 1_795_000_000_000;

fn full_config() -> Value {
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

fn config_corpus() -> Vec<Vec<u8>> {
    vec![
        full_config().to_string().into_bytes(),
        serde_json::to_vec_pretty(&full_config()).unwrap(),
        b"{}".to_vec(),
        b"  \n".to_vec(),
        br#"{"infer_events":["/orders","/a/b/"],"audience":{"header":"x-tenant"},"events":[{"type":"a.b","path":"/a","audience":{"response_header":"x-owner"}}],"api":{"consumer_header":"x-consumer"}}"#.to_vec(),
        br#"{"events":[{"type":"a.b","path":"/a/{x}/b"}],"delivery":{"allow_insecure_destinations":true}}"#.to_vec(),
        br#"{"subscriptions":[{"id":"s1","consumer":"c","url":"http://[fe80::1]:8080/x?y","events":["*"],"secret":"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}],"delivery":{"allow_insecure_destinations":true}}"#.to_vec(),
    ]
}

const CONFIG_ITERATIONS: usize = 6000;

#[test]
fn config_parse_never_panics_and_names_the_field() {
    let mut rng = seeded(0xc0f1_6000);
    let corpus = config_corpus();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..scaled(CONFIG_ITERATIONS) {
        let input = fuzz_input(&mut rng, &corpus, true);
        let outcome = run("config::parse", i, &Shown(&input), || config::parse(&input));
        match outcome {
            Err(e) => {
                refused += 1;
                assert!(
                    !e.field.is_empty() && !e.problem.is_empty(),
                    "empty field or problem {e:?} for {}",
                    shown(&input)
                );
            }
            Ok(c) => {
                accepted += 1;
                check_config(&c, &input);
            }
        }
    }
    // The mutations must reach past the JSON parser, or they test nothing behind it.
    assert!(accepted > CONFIG_ITERATIONS / 20, "{accepted} accepted");
    assert!(refused > CONFIG_ITERATIONS / 4, "{refused} refused");
}

/// What a parsed configuration promises to the rest of the plugin.
fn check_config(c: &Config, input: &[u8]) {
    let d = &c.delivery;
    let ok = !d.retry_schedule_ms.is_empty()
        && d.retry_schedule_ms.len() <= config::MAX_RETRY_SCHEDULE
        && d.retry_schedule_ms
            .iter()
            .all(|ms| *ms <= config::MAX_DURATION_MS)
        && (0.0..1.0).contains(&d.jitter)
        && d.timeout_ms > 0
        && d.disable_after_ms > 0
        && d.max_queue >= 1
        && d.max_in_flight >= 1
        && !d.cluster_http.is_empty()
        && !d.cluster_https.is_empty()
        && c.api.path_prefix.starts_with('/')
        && !c.api.path_prefix.ends_with('/')
        && c.api.max_body_bytes >= 1024
        && c.events.iter().all(|r| {
            rules::is_valid_event_type(&r.event_type)
                && !r.methods.is_empty()
                && PathTemplate::parse(r.path.as_str()).as_ref() == Ok(&r.path)
        })
        && c.subscriptions.iter().all(|s| {
            Secret::parse_chosen(&s.secret).is_ok()
                && check_destination(&s.url, d.url_policy()).is_ok()
                && !s.events.is_empty()
                && s.events.iter().all(|f| rules::is_valid_event_filter(f))
        });
    assert!(
        ok,
        "accepted an invalid configuration {c:?} from {}",
        shown(input)
    );
}

// ---------------------------------------------------------------------------------------------
// api::handle

struct ApiHarness {
    config: Config,
    store: Rc<MemoryStore>,
    registry: Registry<Rc<MemoryStore>>,
    rng: TestRng,
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
        api::handle(request, &mut cx)
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
        });
        let value: Value = serde_json::from_slice(&response.body).ok()?;
        value["id"].as_str().map(str::to_string)
    }
}

fn attempt(webhook_id: &str, state: State) -> Attempt {
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
        rng: TestRng(7),
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
        attempts::record(&api.store, id, log).unwrap();
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

// ---------------------------------------------------------------------------------------------
// QueueMessage

const QUEUE_ITERATIONS: usize = 20_000;

#[test]
fn queue_messages_round_trip_and_garbage_is_refused_cleanly() {
    let mut rng = seeded(0x9e_e7e);
    for i in 0..scaled(QUEUE_ITERATIONS) {
        // Names are never empty and never hold a newline: they are event types and ids.
        let mut name = rng.unicode(40).replace('\n', "");
        if name.is_empty() {
            name.push('x');
        }
        let payload = if rng.chance(2) {
            rng.bytes(200)
        } else {
            mutate_bytes(&mut rng, br#"{"type":"a.b","data":{"x":"\n"}}"#)
        };
        let message = match rng.below(3) {
            0 => QueueMessage::Event {
                event_type: name,
                payload,
                audience: match rng.below(3) {
                    0 => crate::audience::Target::All,
                    1 => crate::audience::Target::Nobody,
                    _ => crate::audience::Target::Consumer(format!("c{}", rng.below(1000))),
                },
            },
            1 => QueueMessage::Test {
                subscription_id: name,
                payload,
            },
            _ => QueueMessage::Replay { webhook_id: name },
        };
        let encoded = message.encode();
        let decoded = run("QueueMessage round trip", i, &message, || {
            QueueMessage::decode(&encoded)
        });
        assert_eq!(decoded.as_ref(), Ok(&message));

        let garbage = if rng.chance(2) {
            rng.bytes(64)
        } else {
            mutate_bytes(&mut rng, &encoded)
        };
        let decoded = run("QueueMessage::decode", i, &Shown(&garbage), || {
            QueueMessage::decode(&garbage)
        });
        // Whatever decodes is a message that survives its own round trip.
        if let Ok(m) = decoded {
            assert_eq!(
                QueueMessage::decode(&m.encode()),
                Ok(m.clone()),
                "{}",
                shown(&garbage)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// audience::resolve

const AUDIENCE_ITERATIONS: usize = 5000;

#[test]
fn audiences_resolve_any_body_and_value_to_a_valid_consumer_or_nobody() {
    use crate::audience::{resolve, Audience, Facts, Target};
    let mut rng = seeded(0xa0d1e);
    let api = config::ApiConfig::default();
    let seed = br#"{"owner": {"id": 42, "name": "acme", "list": ["x", -1, 1.5e3]}}"#;
    for i in 0..scaled(AUDIENCE_ITERATIONS) {
        let body = match rng.below(3) {
            0 => rng.bytes(80),
            _ => mutate_bytes(&mut rng, seed),
        };
        let pointer = rng
            .pick(&[
                "",
                "/owner",
                "/owner/id",
                "/owner/name",
                "/owner/list/1",
                "/~",
                "/a~1b",
            ])
            .to_string();
        let value = rng.bytes(20);
        let params = [(
            "p".to_string(),
            String::from_utf8_lossy(&value).into_owned(),
        )];
        let headers = [("h".to_string(), value.clone())];
        let facts = Facts {
            api: &api,
            credentials: crate::identity::Credentials::default(),
            params: &params,
            request_headers: &headers,
            response_header: Some(&value),
            body: Some(&body),
        };
        for audience in [
            Audience::Json(pointer.clone()),
            Audience::Param("p".into()),
            Audience::Header("h".into()),
            Audience::ResponseHeader("r".into()),
        ] {
            let target = run("audience::resolve", i, &Shown(&body), || {
                resolve(&audience, &facts)
            });
            if let Target::Consumer(name) = &target {
                assert_eq!(
                    crate::identity::consumer_name(name.as_bytes()),
                    Some(name.as_str())
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// url

const URL_ITERATIONS: usize = 20_000;

#[test]
fn urls_never_panic_and_accepted_ones_are_whole() {
    let mut rng = seeded(0xb10e);
    let corpus: Vec<Vec<u8>> = [
        "https://hooks.example.com/in?x=1&y=2",
        "http://example.com",
        "https://EXAMPLE.com:8443/a/b/",
        "https://[2001:db8::1]:443/x",
        "http://[::ffff:127.0.0.1]/",
        "https://10.0.0.1/",
        "https://1.2.3.4:65535?q",
        "https://a-b_c.d.e/%2F",
        "http://localhost:8080/x",
        "https://0x7f.1/",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut accepted = 0;
    for i in 0..scaled(URL_ITERATIONS) {
        let bytes = fuzz_input(&mut rng, &corpus, false);
        let url = String::from_utf8_lossy(&bytes).into_owned();
        let parsed = run("url::parse_destination", i, &url, || {
            parse_destination(&url)
        });
        let strict = run("url::check_destination", i, &url, || {
            check_destination(&url, Policy::STRICT)
        });
        let relaxed = check_destination(&url, Policy::OPEN);
        assert_eq!(relaxed, parsed, "{url:?}");
        if let Ok(d) = &strict {
            assert!(d.https && Ok(d) == parsed.as_ref(), "{url:?}");
        }
        match parsed {
            Ok(d) => {
                accepted += 1;
                let whole = d.path_and_query.starts_with('/')
                    && d.port > 0
                    && !d.host.is_empty()
                    && !d.authority.is_empty()
                    && url.is_ascii()
                    && url.len() <= crate::url::MAX_URL_LEN
                    && !d.host.contains(['/', '@', '#', '?', ' '])
                    && d.host == d.host.to_ascii_lowercase();
                assert!(whole, "{url:?} -> {d:?}");
            }
            Err(e) => assert!(
                !e.message.is_empty() && ["invalid_url", "insecure_url"].contains(&e.code),
                "{url:?} -> {e:?}"
            ),
        }
    }
    assert!(accepted > URL_ITERATIONS / 20, "{accepted} accepted");
}

// ---------------------------------------------------------------------------------------------
// rules: PathTemplate, detect, infer_event_type

/// The parameter names a template string declares, in order (for a template that parsed).
fn declared_params(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

const TEMPLATE_ITERATIONS: usize = 5000;

#[test]
fn templates_never_panic_and_match_only_what_they_declare() {
    let mut rng = seeded(0x7e_3e1a7e);
    let templates: Vec<Vec<u8>> = [
        "/",
        "/orders",
        "/orders/{id}",
        "/orders/{id}/items/{item_id}/",
        "/files/{*rest}",
        "/a/{x}/b/{*tail}",
        "/v1/~user/$x/{id}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let paths: Vec<Vec<u8>> = [
        "/orders/42",
        "/orders/42/items/7/",
        "/files/a/b/c.txt",
        "/a/1/b/",
        "//",
        "/",
        "/v1/~user/$x/9?x=1#f",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut matched = 0;
    for i in 0..scaled(TEMPLATE_ITERATIONS) {
        let template =
            String::from_utf8_lossy(&fuzz_input(&mut rng, &templates, false)).into_owned();
        let parsed = run("PathTemplate::parse", i, &template, || {
            PathTemplate::parse(&template)
        });
        let Ok(t) = parsed else {
            continue;
        };
        assert_eq!(t.as_str(), template);
        let names = declared_params(&template);
        for _ in 0..4 {
            let path = if rng.chance(2) {
                instantiate(&mut rng, &template)
            } else {
                String::from_utf8_lossy(&fuzz_input(&mut rng, &paths, false)).into_owned()
            };
            let found = run("PathTemplate::matches", i, &(&template, &path), || {
                t.matches(&path)
            });
            if let Some(params) = found {
                matched += 1;
                let got: Vec<&String> = params.iter().map(|(n, _)| n).collect();
                assert_eq!(
                    got,
                    names.iter().collect::<Vec<_>>(),
                    "{template:?} {path:?}"
                );
                for (name, value) in &params {
                    let is_rest = template.contains(&format!("{{*{name}}}"));
                    if !is_rest {
                        assert!(
                            !value.is_empty() && !value.contains('/'),
                            "{template:?} {path:?} {params:?}"
                        );
                    }
                }
            }
            let rule = EventRule {
                event_type: "x.y".into(),
                methods: vec!["POST".into()],
                path: t.clone(),
                status: StatusMatch::Class(2),
                audience: crate::audience::Audience::All,
                include_object: true,
            };
            let method = *rng.pick(&["POST", "PUT", "PATCH", "DELETE", "GET", "post"]);
            let status = rng.below(700) as u16;
            let detected = run("rules::detect", i, &(&template, &path), || {
                rules::detect(std::slice::from_ref(&rule), true, method, &path, status)
            });
            if let Some(d) = detected {
                assert!(rules::is_mutating(method));
                assert!(
                    rules::is_valid_event_type(&d.event_type),
                    "{method} {path:?} -> {d:?}"
                );
            }
            if let Some(t) = rules::infer_event_type(method, &path) {
                assert!(rules::is_valid_event_type(&t), "{method} {path:?} -> {t:?}");
            }
        }
    }
    assert!(matched > TEMPLATE_ITERATIONS / 10, "{matched} matched");
}

/// A path the template should match: each `{name}` replaced by a non-empty segment, `{*rest}`
/// by zero or more segments.
fn instantiate(rng: &mut Rng, template: &str) -> String {
    let seg_chars = "abcXYZ019-._~%!$&'()*+,;=:@é";
    let parts: Vec<String> = template
        .split('/')
        .map(|part| {
            if part.starts_with("{*") {
                let n = rng.below(4);
                (0..n)
                    .map(|_| {
                        let s = rng.from(seg_chars, 6);
                        if s.is_empty() {
                            "s".to_string()
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            } else if part.starts_with('{') {
                let s = rng.from(seg_chars, 8);
                if s.is_empty() {
                    "v".to_string()
                } else {
                    s
                }
            } else {
                part.to_string()
            }
        })
        .collect();
    let mut path = parts.join("/");
    if rng.chance(4) {
        path.push('/');
    }
    path
}

#[test]
fn instantiated_templates_match_with_their_values() {
    let mut rng = seeded(0x1a57);
    for i in 0..scaled(3000) {
        // A random valid template.
        let n = rng.below(5);
        let mut template = String::new();
        let mut values: Vec<(String, String)> = Vec::new();
        let mut path = String::new();
        for k in 0..n {
            let last = k + 1 == n;
            match rng.below(if last { 3 } else { 2 }) {
                0 => {
                    let lit = rng.from("abc019-._~!$&'()*+,;=:@%", 6);
                    let lit = if lit.is_empty() { "l".to_string() } else { lit };
                    template.push_str(&format!("/{lit}"));
                    path.push_str(&format!("/{lit}"));
                }
                1 => {
                    let value = rng.from("abcé019-%+:@ ?", 8);
                    let value = if value.is_empty() { "v".into() } else { value };
                    template.push_str(&format!("/{{p{k}}}"));
                    path.push_str(&format!("/{value}"));
                    values.push((format!("p{k}"), value));
                }
                _ => {
                    let segments: Vec<String> = (0..rng.below(4))
                        .map(|_| {
                            let s = rng.from("abc019-%", 5);
                            if s.is_empty() {
                                "s".into()
                            } else {
                                s
                            }
                        })
                        .collect();
                    let rest = segments.join("/");
                    template.push_str(&format!("/{{*r{k}}}"));
                    if !rest.is_empty() {
                        path.push_str(&format!("/{rest}"));
                    }
                    values.push((format!("r{k}"), rest));
                }
            }
        }
        if template.is_empty() {
            template.push('/');
        }
        if path.is_empty() || rng.chance(3) {
            path.push('/');
        }
        let t = PathTemplate::parse(&template)
            .unwrap_or_else(|e| panic!("iteration {i}: {template:?} refused: {e}"));
        assert_eq!(t.matches(&path), Some(values), "{template:?} {path:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// event: BodyCapture and build_payload

const PAYLOAD_ITERATIONS: usize = 5000;

#[test]
fn captured_bodies_always_make_valid_payloads() {
    let mut rng = seeded(0xb0d7);
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"id":42,"total":1.50,"items":[{"sku":"a","n":1e3}],"note":"caf\u00e9 \ud83d\ude00"}"#
            .to_vec(),
        b" [1, 2.5, -0, true, false, null, \"x\"]\n".to_vec(),
        b"\"just a string\"".to_vec(),
        b"7".to_vec(),
        b"{}".to_vec(),
    ];
    let content_types: [Option<&[u8]>; 8] = [
        None,
        None,
        Some(b"application/json"),
        Some(b"application/json"),
        Some(b"application/problem+json; charset=utf-8"),
        Some(b"text/plain"),
        Some(b"+json"),
        Some(b"/json"),
    ];
    let mut kept = 0;
    for i in 0..scaled(PAYLOAD_ITERATIONS) {
        let body = fuzz_input(&mut rng, &bodies, true);
        let limit = *rng.pick(&[0, 1, 64, 4096, 65536, 65536, 1 << 20, usize::MAX]);
        let content_type = *rng.pick(&content_types);
        let encoding: Option<&[u8]> = *rng.pick(&[None, Some(&b" Identity "[..]), Some(b"gzip")]);
        let declared = match rng.below(4) {
            0 => Some(body.len() as u64),
            1 => Some(rng.next()),
            2 => Some(u64::MAX),
            _ => None,
        };
        let object = run("BodyCapture", i, &Shown(&body), || {
            let mut capture = BodyCapture::new(limit, content_type, encoding, declared);
            let mut rest = &body[..];
            while !rest.is_empty() && capture.wants_more() {
                let n = 1 + rng.below(rest.len().min(4096));
                let (chunk, tail) = rest.split_at(n);
                capture.push(chunk);
                rest = tail;
            }
            capture.finish()
        });
        if let CapturedObject::Json(kept_bytes) = &object {
            kept += 1;
            assert!(kept_bytes.len() <= limit && kept_bytes.len() <= body.len());
            assert!(is_strict_json(kept_bytes), "kept non-JSON {}", shown(&body));
        }
        let params: Vec<(String, String)> = (0..rng.below(4))
            .map(|k| (format!("{}{k}", rng.unicode(6)), rng.unicode(20)))
            .collect();
        let event_type = rng.unicode(30);
        let method = rng.unicode(8);
        let path = rng.unicode(60);
        let status = rng.next() as u16;
        let timestamp = if rng.chance(4) {
            u64::MAX
        } else {
            rng.next() >> 20
        };
        let request = RequestInfo {
            method: &method,
            path: &path,
            params: &params,
            status,
        };
        let payload = run("build_payload", i, &Shown(&body), || {
            build_payload(&event_type, timestamp, &request, object.clone())
        });
        assert!(
            is_strict_json(&payload),
            "invalid payload {} from body {}",
            shown(&payload),
            shown(&body)
        );
        // Below serde_json's depth limit, the fields read back as they went in.
        if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
            let r = &value["data"]["request"];
            assert_eq!(value["type"], json!(event_type));
            assert_eq!(r["method"], json!(method));
            assert_eq!(r["path"], json!(path));
            assert_eq!(r["status"], json!(status));
            for (name, v) in &params {
                assert_eq!(r["params"][name], json!(v));
            }
            if let CapturedObject::Json(bytes) = &object {
                let original: Value = serde_json::from_slice(bytes).unwrap();
                assert_eq!(value["data"]["object"], original);
            }
        }
    }
    assert!(kept > PAYLOAD_ITERATIONS / 20, "{kept} kept");
}

// ---------------------------------------------------------------------------------------------
// time

const TIME_ITERATIONS: usize = 10_000;

#[test]
fn dates_never_panic_and_retry_after_is_capped() {
    const THIRTY_DAYS_MS: u64 = 30 * 86_400_000;
    let mut rng = seeded(0x7173);
    let corpus: Vec<Vec<u8>> = [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Thu, 31 Dec 9999 23:59:60 GMT",
        "Thu, 29 Feb 2024 00:00:00 GMT",
        "120",
        " 0 ",
        "99999999999999999999999",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for i in 0..scaled(TIME_ITERATIONS) {
        let value = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let now = match rng.below(4) {
            0 => 0,
            1 => u64::MAX,
            _ => rng.next() >> rng.below(64),
        };
        let date = run("parse_http_date", i, &value, || parse_http_date(&value));
        let delay = run("parse_retry_after", i, &(&value, now), || {
            parse_retry_after(&value, now)
        });
        assert!(
            delay.is_none_or(|d| d <= THIRTY_DAYS_MS),
            "{value:?} {now} -> {delay:?}"
        );
        if let Some(secs) = date {
            // An accepted date formats back to the same instant.
            assert!(secs <= 253_402_300_800, "{value:?} -> {secs}");
        }
        // Formatting any instant works, and an IMF-fixdate built from it parses back.
        let ms = if rng.chance(8) {
            rng.next()
        } else {
            rng.next() % 253_402_300_800_000
        };
        let text = run("format_rfc3339_millis", i, &ms, || {
            format_rfc3339_millis(ms)
        });
        if ms < 253_402_300_800_000 {
            let imf = imf_from_rfc3339(&text);
            assert_eq!(parse_http_date(&imf), Some(ms / 1000), "{text} {imf}");
        }
    }
}

/// `2026-11-27T10:00:00.123Z` → `Xxx, 27 Nov 2026 10:00:00 GMT` (any weekday word is accepted).
fn imf_from_rfc3339(text: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month: usize = text[5..7].parse().unwrap();
    format!(
        "Xxx, {} {} {} {} GMT",
        &text[8..10],
        MONTHS[month - 1],
        &text[0..4],
        &text[11..19]
    )
}

// ---------------------------------------------------------------------------------------------
// signing

#[test]
fn secrets_never_panic() {
    let mut rng = seeded(0x5ec7);
    let corpus: Vec<Vec<u8>> = vec![
        STATIC_SECRET.as_bytes().to_vec(),
        b"whsec_AAAA".to_vec(),
        b"whsec_AA==".to_vec(),
        format!("whsec_{}", "A".repeat(88)).into_bytes(),
    ];
    for i in 0..scaled(10_000) {
        let text = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let parsed = run("Secret::parse", i, &text, || Secret::parse(&text));
        match parsed {
            Ok(secret) => {
                assert!(text.starts_with("whsec_"), "{text:?}");
                let signature = secret.sign("msg_1", rng.next(), &rng.bytes(64));
                assert!(signature.starts_with("v1,") && signature.len() == 47);
            }
            Err(problem) => assert!(!problem.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// registry and attempts over a MemoryStore, with corrupted stored bytes

fn subscription(rng: &mut Rng, id: &str, consumer: &str) -> Subscription {
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
        privileged: false,
        version: 1,
    }
}

const REGISTRY_ITERATIONS: usize = 1500;

#[test]
fn registry_follows_a_model_and_survives_corrupted_bytes() {
    let mut rng = seeded(0x4e91);
    let store = MemoryStore::default();
    let registry = Registry::new(&store);
    registry.prepare();
    let ids = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let consumers = ["acme", "beta"];
    let mut model: std::collections::HashMap<String, Subscription> = Default::default();
    let mut corrupted = false;
    for i in 0..scaled(REGISTRY_ITERATIONS) {
        let id = *rng.pick(&ids);
        if i == REGISTRY_ITERATIONS / 2 {
            corrupted = true;
        }
        if corrupted && rng.chance(3) {
            let key = match rng.below(5) {
                0 => store::record_key(id),
                1 => format!("pwh:idx:{}", rng.below(256)),
                2 => format!("pwh:own:{}", rng.below(256)),
                3 => "pwh:active".to_string(),
                _ => "pwh:static".to_string(),
            };
            let seed = store.get(&key).map(|(b, _)| b).unwrap_or_default();
            let bytes = fuzz_input(&mut rng, &[seed, b"acme s1\nbeta s2".to_vec()], true);
            store.set(&key, &bytes, None).unwrap();
        }
        run("registry", i, &id, || match rng.below(5) {
            0 => {
                let consumer = *rng.pick(&consumers);
                let sub = subscription(&mut rng, id, consumer);
                // Ids are random in production: insert is only ever asked for a new one.
                if registry.get(id).is_none() && registry.insert(&sub, Some(4)).is_ok() {
                    model.insert(id.to_string(), sub);
                }
            }
            1 => {
                let events = subscription(&mut rng, id, "x").events;
                let result = registry.update(id, |s| {
                    s.events.clone_from(&events);
                    Ok::<(), ()>(())
                });
                if let Ok(Ok(after)) = result {
                    model.insert(id.to_string(), after);
                }
            }
            2 => {
                if registry.delete(id).is_ok() {
                    model.remove(id);
                }
            }
            3 => {
                let event = *rng.pick(&["order.created", "a.b.c", "x_y.z", ""]);
                let consumer = *rng.pick(&consumers);
                let _ = registry.candidates(event);
                let _ = registry.list_for_consumer(consumer);
                let _ = registry.active_count();
            }
            _ => {
                let log = (0..rng.below(3))
                    .map(|n| attempt(&format!("msg_{n}"), State::Failed))
                    .collect();
                if rng.chance(2) {
                    let key = store::log_key(id);
                    let seed = store.get(&key).unwrap_or_default().0;
                    let bytes = fuzz_input(&mut rng, &[seed], true);
                    store.set(&key, &bytes, None).unwrap();
                }
                let _ = attempts::read(&store, id);
                attempts::record(&store, id, log).unwrap();
                assert!(attempts::read(&store, id).len() <= attempts::MAX_ENTRIES);
            }
        });
        if !corrupted {
            // Until the store is corrupted, the registry says exactly what the model says.
            for id in ids {
                assert_eq!(
                    registry.get(id).map(|(s, _)| s),
                    model.get(id).cloned(),
                    "iteration {i}"
                );
            }
            for consumer in consumers {
                let mut listed: Vec<String> = registry
                    .list_for_consumer(consumer)
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                listed.sort();
                let mut expected: Vec<String> = model
                    .values()
                    .filter(|s| s.consumer == consumer)
                    .map(|s| s.id.clone())
                    .collect();
                expected.sort();
                assert_eq!(listed, expected, "iteration {i}");
            }
            for event in ["order.created", "a.b.c", "x_y.z"] {
                let found = registry.candidates(event);
                for sub in model.values() {
                    if sub
                        .events
                        .iter()
                        .any(|f| subscription::filter_matches(f, event))
                    {
                        assert!(found.contains(&sub.id), "iteration {i}: {event} {sub:?}");
                    }
                }
            }
            let active = model.values().filter(|s| s.is_active()).count() as u64;
            assert_eq!(registry.active_count(), active, "iteration {i}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: judge and the Outbox

#[test]
fn judge_and_outbox_never_panic() {
    let mut rng = seeded(0xde11);
    let config = config::parse(full_config().to_string().as_bytes()).unwrap();
    for i in 0..scaled(20_000) {
        let response = if rng.chance(5) {
            delivery::Response::NotSent(rng.ascii(10))
        } else {
            delivery::Response::Status {
                code: rng.next() as u16,
                retry_after_ms: rng.chance(2).then(|| rng.next() >> rng.below(64)),
            }
        };
        let attempts_made = *rng.pick(&[0, 1, 4, 5, 6, u32::MAX]);
        let now = if rng.chance(4) {
            u64::MAX
        } else {
            rng.next() >> 8
        };
        let unit = *rng.pick(&[
            0.0,
            -1.0,
            1.0,
            7.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        let verdict = run(
            "delivery::judge",
            i,
            &(&response, attempts_made, now, unit),
            || delivery::judge(&response, attempts_made, now, &config.delivery, unit),
        );
        match (&response, verdict) {
            (delivery::Response::Status { code, .. }, Verdict::Delivered) => {
                assert!((200..300).contains(code))
            }
            (delivery::Response::Status { code, .. }, Verdict::Gone) => assert_eq!(*code, 410),
            (_, Verdict::RetryAt(at)) => assert!(at >= now),
            (_, Verdict::Exhausted) => {
                assert!(attempts_made as usize >= config.delivery.retry_schedule_ms.len())
            }
            other => panic!("{other:?}"),
        }
    }
    // The outbox under a random mix of operations keeps its counts and bounds straight, and
    // loses no message: once time passes and every attempt ends, all the rest get attempted.
    let limits = Limits {
        max_queue: 16,
        max_queue_bytes: 16 * 1024,
        max_in_flight: 6,
        max_in_flight_per_subscription: 3,
    };
    let mut outbox = Outbox::new(limits);
    let mut in_flight: Vec<u64> = Vec::new();
    let mut now = 0u64;
    let signals = [Signal::Answered, Signal::Overrun, Signal::Neutral];
    for i in 0..scaled(20_000) {
        run("Outbox", i, &i, || match rng.below(7) {
            0 | 1 => {
                let sub = rng.below(5);
                let message = Message {
                    webhook_id: format!("msg_{i}"),
                    subscription_id: Rc::from(format!("s{sub}")),
                    event_type: Rc::from("a.b"),
                    payload: Payload::new(vec![b'x'; rng.below(2000)]),
                    attempts: 0,
                    created_ms: now,
                    host_waits: 0,
                };
                let consumer = format!("c{}", sub % 2);
                let _ = outbox.push(message, &consumer, now + rng.below(100) as u64);
            }
            2 => {
                if let Some((key, _)) = outbox.next_attempt(now) {
                    in_flight.push(key);
                }
            }
            3 if !in_flight.is_empty() => {
                let key = in_flight.swap_remove(rng.below(in_flight.len()));
                let again = rng.chance(2).then(|| now + rng.below(50) as u64);
                let signal = signals[rng.below(3)];
                let _ = outbox.finish(key, again, signal, now.saturating_sub(5), now);
            }
            4 if !in_flight.is_empty() => {
                let key = in_flight.swap_remove(rng.below(in_flight.len()));
                outbox.defer(key, now + 1);
            }
            _ => now += rng.below(20) as u64,
        });
        assert_eq!(outbox.in_flight(), in_flight.len(), "iteration {i}");
        assert!(outbox.in_flight() <= limits.max_in_flight, "iteration {i}");
        assert!(outbox.len() <= limits.max_queue, "iteration {i}");
        assert!(outbox.bytes() <= limits.max_queue_bytes, "iteration {i}");
    }
    for key in in_flight.drain(..) {
        let _ = outbox.finish(key, Some(now), Signal::Neutral, now, now);
    }
    let mut left = outbox.len();
    while left > 0 {
        let key = outbox.next_attempt(u64::MAX).map(|(key, _)| key);
        let Some(key) = key else {
            panic!("{left} message(s) never attempted");
        };
        assert!(outbox
            .finish(key, None, Signal::Answered, now, now)
            .is_some());
        left -= 1;
    }
    assert_eq!(outbox.bytes(), 0);
}

// ---------------------------------------------------------------------------------------------
// Regressions for what the fuzzers found

#[test]
fn an_empty_unknown_key_is_still_named() {
    for (input, field) in [
        (&br#"{"":1}"#[..], "configuration"),
        (br#"{"delivery":{"":1}}"#, "delivery"),
        (br#"{"events":[{"":1}]}"#, "events[0]"),
    ] {
        let e = config::parse(input).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            (field, "unknown field \"\"")
        );
    }
}

#[test]
fn an_extreme_stored_active_count_does_not_overflow() {
    let store = MemoryStore::default();
    let registry = Registry::new(&store);
    registry.prepare();
    store
        .set("pwh:active", b"9223372036854775807", None)
        .unwrap();
    let sub = subscription(&mut Rng(1), "s1", "acme");
    let sub = Subscription {
        status: Status::Active,
        ..sub
    };
    registry.insert(&sub, None).unwrap();
    assert_eq!(registry.active_count(), i64::MAX as u64);
    store
        .set("pwh:active", b"-9223372036854775808", None)
        .unwrap();
    registry.delete("s1").unwrap();
    assert_eq!(registry.active_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Small helpers on untrusted strings

#[test]
fn string_helpers_never_panic() {
    let mut rng = seeded(0x5_7e1f);
    let corpus: Vec<Vec<u8>> = ["order.created", "a.b.*", "*", "5s", "365d", "/webhooks/x?y"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    for i in 0..scaled(10_000) {
        let text = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let other = String::from_utf8_lossy(&mutate_bytes(&mut rng, text.as_bytes())).into_owned();
        run("string helpers", i, &(&text, &other), || {
            let filters = subscription::lookup_filters(&text);
            assert_eq!(filters.first(), Some(&text));
            assert_eq!(filters.last().map(String::as_str), Some("*"));
            if rules::is_valid_event_type(&text) {
                for f in &filters {
                    assert!(rules::is_valid_event_filter(f), "{f:?}");
                    assert!(subscription::filter_matches(f, &text), "{f:?} {text:?}");
                }
            }
            let _ = subscription::filter_matches(&text, &other);
            let _ = rules::is_valid_event_filter(&text);
            let _ = api::is_api_path(&text, &other);
            if let Ok(ms) = config::parse_duration(&text) {
                assert!(ms <= config::MAX_DURATION_MS, "{text:?}");
            }
            let _ = delivery::classify(rng.next() as u16, None, text.as_bytes()).describe();
            let _ = delivery::classify(
                503,
                None,
                format!("upstream connect error{other}").as_bytes(),
            )
            .describe();
        });
    }
}
