//! Each write's conversation fed answers shaped as a real etcd 3.4 writes them (zero fields
//! omitted, a failed txn without `succeeded`, numbers as strings), every bad answer, and garbage.

use super::*;
use crate::subscription::{SigningSecret, Status};
use crate::tests::fixtures::seeded;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

fn keys() -> Keys {
    Keys::new("/pw")
}

fn sub(id: &str, version: u64) -> Subscription {
    Subscription {
        id: id.into(),
        consumer: "acme".into(),
        url: "https://hooks.example.com/in".into(),
        events: vec!["order.*".into()],
        description: String::new(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: 1,
        updated_at_ms: 2,
        secrets: vec![SigningSecret {
            secret: "whsec_x".into(),
            expires_at_ms: None,
        }],
        is_static: false,
        privileged: false,
        version,
    }
}

fn header(revision: i64) -> Value {
    json!({"cluster_id": "15118495548433857066", "member_id": "13668033151171901709",
           "revision": revision.to_string(), "raft_term": "2"})
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A txn that ran its success branch of `ops` puts.
fn succeeded(revision: i64, ops: usize) -> Vec<u8> {
    let put = json!({"response_put": {"header": header(revision)}});
    json!({"header": header(revision), "succeeded": true, "responses": vec![put; ops]})
        .to_string()
        .into_bytes()
}

/// One key as a range answer lists it.
fn kv(key: &[u8], value: &[u8], mod_revision: i64) -> Value {
    json!({"key": b64(key), "create_revision": "2", "mod_revision": mod_revision.to_string(),
           "version": "1", "value": b64(value)})
}

/// A range answer: etcd omits `kvs` and `count` when there is nothing.
fn range(kvs: Vec<Value>) -> Value {
    let mut r = json!({"header": header(9)});
    if !kvs.is_empty() {
        r["count"] = json!(kvs.len().to_string());
        r["kvs"] = json!(kvs);
    }
    json!({"response_range": r})
}

/// A txn whose compares failed: no `succeeded`, its failure branch's ranges.
fn failed(ranges: Vec<Value>) -> Vec<u8> {
    json!({"header": header(9), "responses": ranges})
        .to_string()
        .into_bytes()
}

fn record(s: &Subscription) -> Vec<u8> {
    serde_json::to_vec(s).unwrap()
}

fn body(step: &Step) -> Value {
    match step {
        Step::Send(r) => {
            assert_eq!(r.path, etcd::TXN);
            serde_json::from_str(&r.body).unwrap()
        }
        other => panic!("not a request: {other:?}"),
    }
}

fn request_body(r: &Request) -> Value {
    body(&Step::Send(r.clone()))
}

fn compare(key: &str, target: &str, result: &str, field: &str, value: i64) -> Value {
    json!({"key": b64(key.as_bytes()), "target": target, "result": result,
           field: value.to_string()})
}

fn put(key: &str, value: &[u8]) -> Value {
    json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value)}})
}

fn read(key: &str) -> Value {
    json!({"request_range": {"key": b64(key.as_bytes())}})
}

fn create(limit: usize) -> (Commit, Request, Subscription) {
    let s = sub("sub_1", 1);
    let (commit, request) = Commit::start(
        Write::Create {
            sub: s.clone(),
            limit,
        },
        &keys(),
    );
    (commit, request, s)
}

fn answer(commit: &mut Commit, body: &[u8]) -> Step {
    commit.on_answer(Some("200"), body)
}

#[test]
fn create_guesses_an_empty_count_and_commits() {
    let (mut commit, request, s) = create(3);
    assert_eq!(
        request_body(&request),
        json!({
            "compare": [
                compare("/pw/sub/sub_1", "CREATE", "EQUAL", "create_revision", 0),
                compare("/pw/count/acme", "MOD", "EQUAL", "mod_revision", 0)
            ],
            "success": [put("/pw/sub/sub_1", &record(&s)), put("/pw/count/acme", b"1")],
            "failure": [read("/pw/count/acme")]
        })
    );
    assert_eq!(
        commit.on_answer(Some("200"), &succeeded(12, 2)),
        Step::Committed { revision: 12 }
    );
    assert_eq!(commit.write(), &Write::Create { sub: s, limit: 3 });
}

#[test]
fn create_retries_with_the_count_etcd_has() {
    let (mut commit, _, s) = create(3);
    let count = kv(b"/pw/count/acme", b"2", 7);
    let next = answer(&mut commit, &failed(vec![range(vec![count])]));
    let sent = body(&next);
    assert_eq!(
        sent["compare"][1],
        compare("/pw/count/acme", "MOD", "EQUAL", "mod_revision", 7)
    );
    assert_eq!(
        sent["success"],
        json!([
            put("/pw/sub/sub_1", &record(&s)),
            put("/pw/count/acme", b"3")
        ])
    );
    assert_eq!(
        answer(&mut commit, &succeeded(13, 2)),
        Step::Committed { revision: 13 }
    );
}

#[test]
fn create_stops_at_the_limit() {
    let (mut commit, _, _) = create(3);
    let count = kv(b"/pw/count/acme", b"3", 7);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![count])])),
        Step::LimitReached(3)
    );
}

#[test]
fn create_gives_up_after_the_rounds_other_writers_win() {
    let (mut commit, _, _) = create(1000);
    for round in 1..MAX_ROUNDS {
        let count = kv(b"/pw/count/acme", b"1", i64::from(round) + 10);
        let step = answer(&mut commit, &failed(vec![range(vec![count])]));
        assert!(matches!(step, Step::Send(_)), "round {round}: {step:?}");
    }
    let count = kv(b"/pw/count/acme", b"1", 5000);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![count])])),
        Step::Unavailable("too much contention (64 rounds lost to other writers)".into())
    );
}

#[test]
fn create_whose_count_was_as_guessed_found_its_id_taken() {
    let (mut commit, _, _) = create(3);
    // No count key: the guess (0, 0) held, so CREATE(sub) = 0 failed.
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![])])),
        Step::Unavailable("the new subscription's id is already taken in etcd".into())
    );
}

fn replace(after: &Subscription, before_version: u64) -> (Commit, Request) {
    Commit::start(
        Write::Replace {
            after: after.clone(),
            before_version,
        },
        &keys(),
    )
}

#[test]
fn replace_reads_first_then_commits_with_the_mod_revision() {
    let after = sub("sub_1", 5);
    let (mut commit, request) = replace(&after, 4);
    assert_eq!(
        request_body(&request),
        json!({
            "compare": [
                compare("/pw/sub/sub_1", "VERSION", "GREATER", "version", 0),
                compare("/pw/sub/sub_1", "MOD", "EQUAL", "mod_revision", 0)
            ],
            "success": [put("/pw/sub/sub_1", &record(&after))],
            "failure": [read("/pw/sub/sub_1")]
        })
    );
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let sent = body(&answer(&mut commit, &failed(vec![range(vec![held])])));
    assert_eq!(
        sent["compare"][1],
        compare("/pw/sub/sub_1", "MOD", "EQUAL", "mod_revision", 21)
    );
    assert_eq!(
        answer(&mut commit, &succeeded(22, 1)),
        Step::Committed { revision: 22 }
    );
}

#[test]
fn replace_of_a_newer_record_is_stale_and_of_none_gone() {
    let (mut commit, _) = replace(&sub("sub_1", 5), 4);
    let newer = sub("sub_1", 6);
    let held = kv(b"/pw/sub/sub_1", &record(&newer), 21);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![held])])),
        Step::Stale(newer)
    );
    let (mut commit, _) = replace(&sub("sub_1", 5), 4);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![])])),
        Step::Gone
    );
}

#[test]
fn replace_of_a_static_subscription_may_write_it_first() {
    let mut after = sub("sub_static", 2);
    after.is_static = true;
    let (_, request) = replace(&after, 1);
    assert_eq!(
        request_body(&request)["compare"],
        json!([compare(
            "/pw/sub/sub_static",
            "MOD",
            "EQUAL",
            "mod_revision",
            0
        )])
    );
}

fn delete(before_version: u64) -> (Commit, Request) {
    Commit::start(
        Write::Delete {
            id: "sub_1".into(),
            consumer: "acme".into(),
            before_version,
        },
        &keys(),
    )
}

#[test]
fn delete_reads_both_keys_then_lowers_the_count() {
    let (mut commit, request) = delete(4);
    let first = request_body(&request);
    assert_eq!(
        first["failure"],
        json!([read("/pw/sub/sub_1"), read("/pw/count/acme")])
    );
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let count = kv(b"/pw/count/acme", b"2", 30);
    let sent = body(&answer(
        &mut commit,
        &failed(vec![range(vec![held]), range(vec![count])]),
    ));
    assert_eq!(
        sent,
        json!({
            "compare": [
                compare("/pw/sub/sub_1", "VERSION", "GREATER", "version", 0),
                compare("/pw/sub/sub_1", "MOD", "EQUAL", "mod_revision", 21),
                compare("/pw/count/acme", "MOD", "EQUAL", "mod_revision", 30)
            ],
            "success": [
                {"request_delete_range": {"key": b64(b"/pw/sub/sub_1")}},
                put("/pw/count/acme", b"1")
            ],
            "failure": [read("/pw/sub/sub_1"), read("/pw/count/acme")]
        })
    );
    assert_eq!(
        answer(&mut commit, &succeeded(31, 2)),
        Step::Committed { revision: 31 }
    );
}

#[test]
fn delete_of_a_newer_record_is_stale_and_of_none_gone() {
    let (mut commit, _) = delete(4);
    let newer = sub("sub_1", 5);
    let held = kv(b"/pw/sub/sub_1", &record(&newer), 21);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![held]), range(vec![])])),
        Step::Stale(newer)
    );
    let (mut commit, _) = delete(4);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![]), range(vec![])])),
        Step::Gone
    );
}

fn unavailable(commit: &mut Commit, status: Option<&str>, body: &[u8]) -> String {
    match commit.on_answer(status, body) {
        Step::Unavailable(reason) => reason,
        other => panic!("not unavailable: {other:?}"),
    }
}

#[test]
fn every_bad_answer_is_unavailable_with_its_reason() {
    let (mut c, _, _) = create(3);
    assert_eq!(
        unavailable(&mut c, None, b""),
        "did not answer (timeout or reset)"
    );
    assert_eq!(unavailable(&mut c, Some("503"), b"no"), "answered HTTP 503");
    assert!(unavailable(&mut c, Some("200"), b"<html>").starts_with("etcd's answer is not JSON"));
    let no_leader =
        br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
    assert_eq!(
        unavailable(&mut c, Some("200"), no_leader),
        "etcd refused (code 14): etcdserver: no leader"
    );
    assert_eq!(
        unavailable(
            &mut c,
            Some("200"),
            br#"{"header":{"revision":"4"},"succeeded":"yes"}"#
        ),
        "etcd's answer: `succeeded` is a string, not a boolean"
    );
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![])),
        "etcd's answer: the failed txn has 0 responses, not 1"
    );
    let put = json!({"response_put": {"header": header(9)}});
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![put])),
        "etcd's answer: the failed txn's `responses[0]` is not a range answer"
    );
    let count = kv(b"/pw/count/acme", b"two", 7);
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![range(vec![count])])),
        "`/pw/count/acme` holds `two`, not a decimal count"
    );
    let count = json!({"key": b64(b"/pw/count/acme"), "value": b64(b"1")});
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![range(vec![count])])),
        "`/pw/count/acme` has no mod_revision"
    );

    let (mut c, _) = replace(&sub("sub_1", 5), 4);
    let junk = kv(b"/pw/sub/sub_1", b"{\"id\":1}", 21);
    let reason = unavailable(&mut c, Some("200"), &failed(vec![range(vec![junk])]));
    assert_eq!(reason, "`/pw/sub/sub_1` holds no subscription record");
    let other = kv(b"/pw/sub/sub_1", &record(&sub("sub_2", 4)), 21);
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![range(vec![other])])),
        "`/pw/sub/sub_1` holds the record of `sub_2`"
    );

    let (mut c, _) = delete(4);
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![range(vec![])])),
        "etcd's answer: the failed txn has 1 responses, not 2"
    );
}

/// Mutations of real answers and plain noise, for each kind of write: never a panic.
#[test]
fn garbage_never_panics() {
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let count = kv(b"/pw/count/acme", b"2", 30);
    let samples = [
        succeeded(12, 2),
        failed(vec![range(vec![count.clone()])]),
        failed(vec![range(vec![held.clone()])]),
        failed(vec![range(vec![held]), range(vec![count])]),
    ];
    let mut rng = seeded(0xc0_11_17);
    for i in 0..4000 {
        let mut bytes = rng.pick(&samples).clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len().max(1)).min(bytes.len());
            match rng.below(3) {
                0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                0 | 1 => bytes.truncate(at),
                _ => bytes.insert(at, *rng.pick(b"{}[]\",:0-9")),
            }
        }
        if rng.chance(10) {
            bytes = rng.bytes(64);
        }
        let mut commit = match i % 3 {
            0 => create(3).0,
            1 => replace(&sub("sub_1", 5), 4).0,
            _ => delete(4).0,
        };
        let _ = commit.on_answer(Some("200"), &bytes);
        let _ = commit.on_answer(Some("200"), &bytes);
    }
}
