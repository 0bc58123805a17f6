//! Each write's conversation fed answers shaped as a real etcd 3.4 writes them (zero fields
//! omitted, a failed txn without `succeeded`, numbers as strings), every bad answer, and garbage;
//! then many creates and deletes racing against a model of etcd's txns, which must keep the
//! per-consumer limit.

use super::*;
use crate::model::subscription::{SigningSecret, Status};
use crate::tests::fixtures::{scaled, seeded, NoRandom};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

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
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
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

/// One key as a keys-only range lists it (no value).
fn key_only(key: &str) -> Value {
    json!({"key": b64(key.as_bytes()), "create_revision": "2", "mod_revision": "2",
           "version": "1"})
}

/// The slots `ns` of acme, keys only.
fn slots(ns: &[u64]) -> Vec<Value> {
    ns.iter()
        .map(|n| key_only(&format!("/pw/slot/acme/{n}")))
        .collect()
}

/// A range answer's fields: etcd omits `kvs` and `count` when there is nothing.
fn range_fields(kvs: Vec<Value>) -> Value {
    let mut r = json!({"header": header(9)});
    if !kvs.is_empty() {
        r["count"] = json!(kvs.len().to_string());
        r["kvs"] = json!(kvs);
    }
    r
}

/// A range answer inside a txn's answer.
fn range(kvs: Vec<Value>) -> Value {
    json!({"response_range": range_fields(kvs)})
}

/// A count-only range answer inside a txn's answer.
fn counted(n: u64) -> Value {
    let mut r = json!({"header": header(9)});
    if n > 0 {
        r["count"] = json!(n.to_string());
    }
    json!({ "response_range": r })
}

/// Cap slots `ns`, keys only.
fn caps(ns: &[u64]) -> Vec<Value> {
    ns.iter()
        .map(|n| key_only(&format!("/pw/cap/{n:08}")))
        .collect()
}

/// What a create reads: acme's slots `kvs`, the record `held`, the counts of cap slots
/// (`caps`) and of records (`records`), of cap slots at or above the window's end (`above`),
/// and the two windows' cap slots.
struct Reads {
    slots: Vec<Value>,
    held: Vec<Value>,
    caps: u64,
    records: u64,
    above: u64,
    window: Vec<Value>,
    wrapped: Vec<Value>,
}

impl Reads {
    fn of(slots: Vec<Value>) -> Reads {
        Reads {
            slots,
            held: vec![],
            caps: 0,
            records: 0,
            above: 0,
            window: vec![],
            wrapped: vec![],
        }
    }

    fn ranges(self) -> Vec<Value> {
        vec![
            range(self.slots),
            range(self.held),
            counted(self.caps),
            counted(self.records),
            counted(self.above),
            range(self.window),
            range(self.wrapped),
        ]
    }

    /// The answer to a create's first txn, which only reads.
    fn first(self) -> Vec<u8> {
        json!({"header": header(9), "succeeded": true, "responses": self.ranges()})
            .to_string()
            .into_bytes()
    }

    /// The answer to a create's txn that lost.
    fn lost(self) -> Vec<u8> {
        failed(self.ranges())
    }
}

/// The answer to a create's first txn, which only reads: acme's slots `kvs`, no record, no
/// cap slot.
fn read_answer(kvs: Vec<Value>) -> Vec<u8> {
    Reads::of(kvs).first()
}

/// The answer to a create's txn that lost: acme's slots `kvs`, no record, no cap slot.
fn lost(kvs: Vec<Value>) -> Vec<u8> {
    Reads::of(kvs).lost()
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

/// acme's slots, as a txn reads them.
fn read_slots(keys_only: bool) -> Value {
    let mut r = json!({"key": b64(b"/pw/slot/acme/"), "range_end": b64(b"/pw/slot/acme0")});
    if keys_only {
        r["keys_only"] = json!(true);
    }
    json!({ "request_range": r })
}

fn remove(key: &str) -> Value {
    json!({"request_delete_range": {"key": b64(key.as_bytes())}})
}

/// The delete of every replica's delivery log of `sub_1`, which goes with its record.
fn remove_logs() -> Value {
    let end = crate::fleet::etcd::prefix_end(b"/pw/log/sub_1/");
    json!({"request_delete_range": {"key": b64(b"/pw/log/sub_1/"), "range_end": b64(&end)}})
}

fn create_of(s: &Subscription, limit: usize) -> (Commit, Request) {
    capped_create_of(s, limit, 100_000)
}

fn capped_create_of(s: &Subscription, limit: usize, cap: usize) -> (Commit, Request) {
    Commit::start(
        Write::Create {
            sub: s.clone(),
            limit,
            cap,
        },
        &keys(),
        &Vault::default(),
        &mut NoRandom,
    )
}

fn create(limit: usize) -> (Commit, Request, Subscription) {
    let s = sub("sub_1", 1);
    let (commit, request) = create_of(&s, limit);
    (commit, request, s)
}

fn answer(commit: &mut Commit, body: &[u8]) -> Step {
    commit.on_answer(Some("200"), body)
}

/// The slot a create's txn takes.
fn slot_taken(step: &Step) -> u64 {
    let sent = body(step);
    let key = STANDARD
        .decode(sent["compare"][0]["key"].as_str().unwrap())
        .unwrap();
    let key = String::from_utf8(key).unwrap();
    key.strip_prefix("/pw/slot/acme/").unwrap().parse().unwrap()
}

/// The cap slot a create's txn takes.
fn cap_taken(step: &Step) -> u64 {
    let sent = body(step);
    let key = STANDARD
        .decode(sent["compare"][1]["key"].as_str().unwrap())
        .unwrap();
    let key = String::from_utf8(key).unwrap();
    key.strip_prefix("/pw/cap/").unwrap().parse().unwrap()
}

/// The window a create's request reads: its random point and its end.
fn window_of(sent: &Value) -> (u64, u64) {
    let number = |v: &Value| -> u64 {
        let key = String::from_utf8(STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap();
        key.strip_prefix("/pw/cap/").unwrap().parse().unwrap()
    };
    let reads = sent["compare"]
        .as_array()
        .filter(|c| !c.is_empty())
        .map_or(&sent["success"], |_| &sent["failure"]);
    let window = &reads[5]["request_range"];
    (number(&window["key"]), number(&window["range_end"]))
}

/// The reads of a create whose window is `start..end`, as sent.
fn create_reads(start: u64, end: u64) -> Value {
    let cap = |n: u64| b64(format!("/pw/cap/{n:08}").as_bytes());
    json!([
        read_slots(true),
        read("/pw/sub/sub_1"),
        {"request_range": {"key": b64(b"/pw/cap/"), "range_end": b64(b"/pw/cap0"),
                           "count_only": true}},
        {"request_range": {"key": b64(b"/pw/sub/"), "range_end": b64(b"/pw/sub0"),
                           "count_only": true}},
        {"request_range": {"key": cap(end), "range_end": b64(b"/pw/cap0"), "count_only": true}},
        {"request_range": {"key": cap(start), "range_end": cap(end), "limit": "256",
                           "keys_only": true}},
        {"request_range": {"key": b64(b"/pw/cap/"), "range_end": cap(start), "limit": "256",
                           "keys_only": true}}
    ])
}

/// The slot a create of `id` takes when acme's slots `taken` are read.
fn pick(id: &str, limit: usize, taken: &[u64]) -> u64 {
    let (mut commit, _) = create_of(&sub(id, 1), limit);
    slot_taken(&answer(&mut commit, &read_answer(slots(taken))))
}

// ---------------------------------------------------------------------------------------------
// Creates

#[test]
fn create_reads_the_slots_then_takes_a_free_one_with_the_record() {
    let (_, request, s) = create(3);
    let sent = request_body(&request);
    let (start, end) = window_of(&sent);
    assert!(start < 100_000 && end == 100_000, "{start}..{end}");
    assert_eq!(
        sent,
        json!({"compare": [], "success": create_reads(start, end), "failure": []})
    );
    // Cap slots 0 and 2 taken, in a cap of 3: slot 1 is the only free one.
    let (mut commit, request) = capped_create_of(&s, 3, 3);
    let (start, _) = window_of(&request_body(&request));
    let mut read = Reads::of(slots(&[0, 2]));
    read.caps = 2;
    read.records = 2;
    let taken: Vec<u64> = [0, 2].into();
    read.window = caps(
        &taken
            .iter()
            .copied()
            .filter(|n| *n >= start)
            .collect::<Vec<_>>(),
    );
    read.wrapped = caps(
        &taken
            .iter()
            .copied()
            .filter(|n| *n < start)
            .collect::<Vec<_>>(),
    );
    let next = answer(&mut commit, &read.first());
    let sent = body(&next);
    let (start, end) = window_of(&sent);
    assert_eq!(
        sent,
        json!({
            "compare": [
                compare("/pw/slot/acme/1", "CREATE", "EQUAL", "create_revision", 0),
                compare("/pw/cap/00000001", "CREATE", "EQUAL", "create_revision", 0),
                compare("/pw/sub/sub_1", "CREATE", "EQUAL", "create_revision", 0)
            ],
            "success": [
                put("/pw/sub/sub_1", &record(&s)),
                put("/pw/slot/acme/1", b"sub_1 1"),
                put("/pw/cap/00000001", b"sub_1")
            ],
            "failure": create_reads(start, end)
        })
    );
    assert_eq!(
        answer(&mut commit, &succeeded(12, 3)),
        Step::Committed { revision: 12 }
    );
    assert_eq!(
        commit.write(),
        &Write::Create {
            sub: s,
            limit: 3,
            cap: 3
        }
    );
}

#[test]
fn creates_pick_only_free_slots_and_spread_over_them() {
    let taken = [1, 3, 4, 8];
    let picked: BTreeSet<u64> = (0..200)
        .map(|n| pick(&format!("sub_{n}"), 10, &taken))
        .collect();
    assert_eq!(picked, BTreeSet::from([0, 2, 5, 6, 7, 9]));
    // 200 creates over 1000 empty slots: few share a pick (as random picks would).
    let picked: BTreeSet<u64> = (0..200)
        .map(|n| pick(&format!("sub_X{n}q"), 1000, &[]))
        .collect();
    assert!(picked.len() > 170, "{} distinct slots", picked.len());
    assert!(picked.iter().all(|n| *n < 1000));
}

#[test]
fn create_that_lost_its_slot_reads_the_slots_again_and_tries_another() {
    let (mut commit, _, s) = create(3);
    let first = answer(&mut commit, &read_answer(slots(&[])));
    let gone = slot_taken(&first);
    // Another create took it meanwhile, and slot 0 or 2 besides: one is left.
    let others: Vec<u64> = [gone, (gone + 1) % 3].into();
    let next = answer(&mut commit, &lost(slots(&others)));
    let left = (gone + 2) % 3;
    assert_eq!(slot_taken(&next), left);
    let cap = cap_taken(&next);
    assert_eq!(
        body(&next)["success"],
        json!([
            put("/pw/sub/sub_1", &record(&s)),
            put(
                &format!("/pw/slot/acme/{left}"),
                format!("sub_1 {cap}").as_bytes()
            ),
            put(&format!("/pw/cap/{cap:08}"), b"sub_1")
        ])
    );
    assert_eq!(
        answer(&mut commit, &succeeded(13, 3)),
        Step::Committed { revision: 13 }
    );
}

#[test]
fn create_stops_at_the_limit_without_writing() {
    let (mut commit, _, _) = create(3);
    assert_eq!(
        answer(&mut commit, &read_answer(slots(&[0, 1, 2]))),
        Step::LimitReached(3)
    );
    // Found full after a lost round.
    let (mut commit, _, _) = create(3);
    answer(&mut commit, &read_answer(slots(&[0, 1])));
    assert_eq!(
        answer(&mut commit, &lost(slots(&[0, 1, 2]))),
        Step::LimitReached(3)
    );
}

#[test]
fn a_lowered_limit_counts_the_slots_at_or_above_it() {
    // Limit 3 now, 4 slots from when it was higher: refused, nothing written.
    let (mut commit, _, _) = create(3);
    assert_eq!(
        answer(&mut commit, &read_answer(slots(&[1, 5, 6, 7]))),
        Step::LimitReached(4)
    );
    // Limit 5, slots 5, 6 and 7 taken: two more fit, and only slots 0 and 1 are picked, so
    // however many creates race, at most two of them commit.
    let picked: BTreeSet<u64> = (0..100)
        .map(|n| pick(&format!("sub_{n}"), 5, &[5, 6, 7]))
        .collect();
    assert_eq!(picked, BTreeSet::from([0, 1]));
    // Limit 5, slots 3, 4 and 6 taken: slots 0 and 1 again (2 + the 3 slots at or above 2 make
    // 5, while 3 + the same 3 would make 6).
    let picked: BTreeSet<u64> = (0..100)
        .map(|n| pick(&format!("sub_{n}"), 5, &[3, 4, 6]))
        .collect();
    assert_eq!(picked, BTreeSet::from([0, 1]));
}

#[test]
fn usable_is_the_largest_count_of_low_slots_that_keeps_the_limit() {
    let mut rng = seeded(0x5107);
    for _ in 0..scaled(2000) {
        let limit = 1 + rng.below(12) as u64;
        let mut taken: Vec<u64> = (0..16).filter(|_| rng.chance(3)).collect();
        taken.truncate(limit as usize - 1);
        let above = |m: u64| taken.iter().filter(|n| **n >= m).count() as u64;
        let expected = (0..=limit)
            .filter(|m| m + above(*m) <= limit)
            .max()
            .unwrap();
        assert_eq!(usable(limit, above), expected, "{taken:?} limit {limit}");
        assert!(taken.iter().filter(|n| **n < expected).count() < expected as usize);
    }
    assert_eq!(usable(u64::MAX, |_| 0), u64::MAX);
}

#[test]
fn slots_of_a_consumer_named_like_a_longer_one_are_not_its_own() {
    // `acme/eu` is another consumer: its slot 0 is neither counted nor a bad slot.
    let (mut commit, _, _) = create(1);
    let read = vec![key_only("/pw/slot/acme/eu/0")];
    assert_eq!(slot_taken(&answer(&mut commit, &read_answer(read))), 0);
}

#[test]
fn create_gives_up_after_the_rounds_other_writers_win() {
    let (mut commit, _, _) = create(1000);
    let mut step = answer(&mut commit, &read_answer(vec![]));
    let mut taken = Vec::new();
    for round in 2..MAX_ROUNDS {
        taken.push(slot_taken(&step));
        step = answer(&mut commit, &lost(slots(&taken)));
        assert!(matches!(step, Step::Send(_)), "round {round}: {step:?}");
        assert!(!taken.contains(&slot_taken(&step)), "round {round}");
    }
    taken.push(slot_taken(&step));
    assert_eq!(
        answer(&mut commit, &lost(slots(&taken))),
        Step::Unavailable("too much contention (64 rounds lost to other writers)".into())
    );
}

#[test]
fn create_whose_id_etcd_has_already_is_refused() {
    let (mut commit, _, _) = create(3);
    answer(&mut commit, &read_answer(vec![]));
    let mut read = Reads::of(vec![]);
    read.held = vec![kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 1)), 5)];
    assert_eq!(
        answer(&mut commit, &read.lost()),
        Step::Unavailable("the new subscription's id is already taken in etcd".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Replaces

fn replace(after: &Subscription, before_version: u64) -> (Commit, Request) {
    Commit::start(
        Write::Replace {
            after: after.clone(),
            before_version,
        },
        &keys(),
        &Vault::default(),
        &mut NoRandom,
    )
}

#[test]
fn replace_reads_first_then_commits_with_the_mod_revision_and_no_slot() {
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
        sent,
        json!({
            "compare": [
                compare("/pw/sub/sub_1", "VERSION", "GREATER", "version", 0),
                compare("/pw/sub/sub_1", "MOD", "EQUAL", "mod_revision", 21)
            ],
            "success": [put("/pw/sub/sub_1", &record(&after))],
            "failure": [read("/pw/sub/sub_1")]
        })
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
        Step::Stale(newer, 21)
    );
    let (mut commit, _) = replace(&sub("sub_1", 5), 4);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![])])),
        Step::Gone
    );
}

/// With a key the record's secrets go out sealed; a record etcd holds that no configured key
/// opens is refused (503), never taken for the cache.
#[test]
fn records_are_written_sealed_and_an_unreadable_one_is_refused() {
    use crate::support::sealing::{Key, Keyring};
    let ring = |b: u8| Some(Keyring::new(Key::new(&[b; 32]), vec![]));
    let vault = Vault::new(ring(1), false);
    let after = sub("sub_1", 5);
    let write = Write::Replace {
        after: after.clone(),
        before_version: 4,
    };
    let (mut commit, request) = Commit::start(write.clone(), &keys(), &vault, &mut seeded(1));
    let sent = request_body(&request);
    let value = sent["success"][0]["request_put"]["value"].as_str().unwrap();
    let value = STANDARD.decode(value).unwrap();
    assert!(!String::from_utf8_lossy(&value).contains("whsec_"));
    assert_eq!(vault.open_record(&value), Some(Record::Readable(after)));
    // etcd holds it sealed with a key this replica lacks.
    let other = Vault::new(ring(2), false)
        .seal_record(&mut seeded(2), &sub("sub_1", 4))
        .unwrap();
    let held = kv(b"/pw/sub/sub_1", &other, 21);
    let step = answer(&mut commit, &failed(vec![range(vec![held])]));
    let Step::Unavailable(why) = step else {
        panic!("{step:?}");
    };
    assert!(
        why.starts_with("`/pw/sub/sub_1`'s signing secrets cannot be read: sealed with key id"),
        "{why}"
    );
    let (mut commit, _) = Commit::start(write, &keys(), &vault, &mut NoRandom);
    assert_eq!(
        answer(&mut commit, b"{}"),
        Step::Unavailable("no randomness to seal the record's secrets with".into())
    );
}

#[test]
fn a_static_subscriptions_change_writes_its_status_alone_under_its_definition() {
    let mut after = sub("audit", 2);
    after.is_static = true;
    after.privileged = true;
    after.status = Status::Disabled;
    after.disabled_reason = Some("gone".into());
    let (mut commit, request) = Commit::start(
        Write::Static {
            after: after.clone(),
        },
        &keys(),
        &Vault::default(),
        &mut NoRandom,
    );
    let body = request_body(&request);
    assert_eq!(body["compare"], json!([]));
    let put = &body["success"][0]["request_put"];
    let key = STANDARD.decode(put["key"].as_str().unwrap()).unwrap();
    let def = crate::fleet::statics::definition(&after.url, "whsec_x");
    assert_eq!(key, format!("/pw/static/audit/{def}").into_bytes());
    // The status only: no URL, secret, events or privileged flag.
    let value = STANDARD.decode(put["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&value).unwrap(),
        json!({"status": "disabled", "disabled_reason": "gone", "updated_at_ms": 2})
    );
    assert_eq!(
        answer(&mut commit, &succeeded(30, 1)),
        Step::Committed { revision: 30 }
    );
    let (mut commit, _) = Commit::start(
        Write::Static { after },
        &keys(),
        &Vault::default(),
        &mut NoRandom,
    );
    assert!(matches!(
        answer(&mut commit, &failed(vec![])),
        Step::Unavailable(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Deletes

fn delete(before_version: u64) -> (Commit, Request) {
    Commit::start(
        Write::Delete {
            id: "sub_1".into(),
            consumer: "acme".into(),
            before_version,
        },
        &keys(),
        &Vault::default(),
        &mut NoRandom,
    )
}

/// acme's slots with their ids.
fn held_slots(slots: &[(u64, &str)]) -> Vec<Value> {
    slots
        .iter()
        .map(|(n, id)| kv(format!("/pw/slot/acme/{n}").as_bytes(), id.as_bytes(), 3))
        .collect()
}

#[test]
fn delete_reads_the_record_and_the_slots_then_frees_the_slot_holding_its_id() {
    let (mut commit, request) = delete(4);
    let first = request_body(&request);
    assert_eq!(
        first["failure"],
        json!([read("/pw/sub/sub_1"), read_slots(false)])
    );
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let slots = held_slots(&[(0, "sub_9"), (4, "sub_1"), (7, "sub_10")]);
    let sent = body(&answer(
        &mut commit,
        &failed(vec![range(vec![held]), range(slots)]),
    ));
    assert_eq!(
        sent,
        json!({
            "compare": [
                compare("/pw/sub/sub_1", "VERSION", "GREATER", "version", 0),
                compare("/pw/sub/sub_1", "MOD", "EQUAL", "mod_revision", 21)
            ],
            "success": [remove("/pw/sub/sub_1"), remove_logs(), remove("/pw/slot/acme/4")],
            "failure": [read("/pw/sub/sub_1"), read_slots(false)]
        })
    );
    assert_eq!(
        answer(&mut commit, &succeeded(31, 2)),
        Step::Committed { revision: 31 }
    );
}

/// Slots whose values are not ids or whose keys are odd are not the record's: they neither
/// block its delete nor go with it.
#[test]
fn delete_frees_only_the_slot_holding_its_id_and_without_one_deletes_the_record() {
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let odd = vec![
        kv(b"/pw/slot/acme/0", b"", 3),
        kv(b"/pw/slot/acme/1", b"not an id \xff", 3),
        kv(b"/pw/slot/acme/two", b"sub_9", 3),
        kv(b"/pw/slot/acme/eu/3", b"sub_7", 3),
        kv(b"/pw/slot/acme/5", b"sub_10", 3),
    ];
    let (mut commit, _) = delete(4);
    let mut slots = odd.clone();
    slots.push(kv(b"/pw/slot/acme/6", b"sub_1", 3));
    let sent = body(&answer(
        &mut commit,
        &failed(vec![range(vec![held.clone()]), range(slots)]),
    ));
    assert_eq!(
        sent["success"],
        json!([
            remove("/pw/sub/sub_1"),
            remove_logs(),
            remove("/pw/slot/acme/6")
        ])
    );

    let (mut commit, _) = delete(4);
    let sent = body(&answer(
        &mut commit,
        &failed(vec![range(vec![held]), range(odd)]),
    ));
    assert_eq!(
        sent["success"],
        json!([remove("/pw/sub/sub_1"), remove_logs()])
    );
    assert_eq!(
        answer(&mut commit, &succeeded(31, 1)),
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
        Step::Stale(newer, 21)
    );
    let (mut commit, _) = delete(4);
    assert_eq!(
        answer(&mut commit, &failed(vec![range(vec![]), range(vec![])])),
        Step::Gone
    );
}

// ---------------------------------------------------------------------------------------------
// Bad answers

fn unavailable(commit: &mut Commit, status: Option<&str>, body: &[u8]) -> String {
    match commit.on_answer(status, body) {
        Step::Unavailable(reason) => reason,
        other => panic!("not unavailable: {other:?}"),
    }
}

/// A create that has read its slots and sent its first txn.
fn create_sent() -> Commit {
    let (mut c, _, _) = create(3);
    assert!(matches!(
        answer(&mut c, &read_answer(vec![])),
        Step::Send(_)
    ));
    c
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
    let (mut c, _, _) = create(3);
    assert_eq!(
        unavailable(&mut c, Some("200"), no_leader),
        "etcd refused (code 14): etcdserver: no leader"
    );
    let (mut c, _, _) = create(3);
    let bad = br#"{"header":{"revision":"4"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"4"},"kvs":7}}]}"#;
    assert_eq!(
        unavailable(&mut c, Some("200"), bad),
        "etcd's answer: `responses[0].response_range.kvs` is a number, not an array"
    );
    let (mut c, _, _) = create(3);
    let one = json!({"header": header(9), "succeeded": true, "responses": [range(vec![])]});
    assert_eq!(
        unavailable(&mut c, Some("200"), one.to_string().as_bytes()),
        "etcd's answer: the txn has 1 responses, not 7"
    );

    // A slot whose last part is not a number (as this module writes it) is no slot.
    for bad in [
        "/pw/slot/acme/x",
        "/pw/slot/acme/007",
        "/pw/slot/acme/+7",
        "/pw/slot/acme/",
    ] {
        let (mut c, _, _) = create(3);
        let read = read_answer(vec![key_only(bad)]);
        assert_eq!(
            unavailable(&mut c, Some("200"), &read),
            format!("`{bad}` is not a numbered slot")
        );
    }
    let (mut c, _, _) = create(3);
    let read = read_answer(vec![key_only("/pw/sub/sub_2")]);
    assert_eq!(
        unavailable(&mut c, Some("200"), &read),
        "`/pw/sub/sub_2` is not a numbered slot"
    );

    let mut c = create_sent();
    assert_eq!(
        unavailable(
            &mut c,
            Some("200"),
            br#"{"header":{"revision":"4"},"succeeded":"yes"}"#
        ),
        "etcd's answer: `succeeded` is a string, not a boolean"
    );
    let mut c = create_sent();
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![range(vec![])])),
        "etcd's answer: the txn has 1 responses, not 7"
    );
    let mut c = create_sent();
    let put = json!({"response_put": {"header": header(9)}});
    assert_eq!(
        unavailable(&mut c, Some("200"), &failed(vec![put, range(vec![])])),
        "etcd's answer: the txn's `responses[0]` is not a range answer"
    );
    let mut c = create_sent();
    let bad = lost(vec![key_only("/pw/slot/acme/1x")]);
    assert_eq!(
        unavailable(&mut c, Some("200"), &bad),
        "`/pw/slot/acme/1x` is not a numbered slot"
    );
    // A window's key that is no cap slot of the range read.
    for bad in ["/pw/cap/7", "/pw/cap/0000000x", "/pw/sub/sub_2"] {
        let mut c = create_sent();
        let mut read = Reads::of(vec![]);
        read.wrapped = vec![key_only(bad)];
        assert_eq!(
            unavailable(&mut c, Some("200"), &read.lost()),
            format!("`{bad}` is not a cap slot of the range read")
        );
    }

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
        "etcd's answer: the txn has 1 responses, not 2"
    );
}

/// Mutations of real answers and plain noise, for each kind of write: never a panic.
#[test]
fn garbage_never_panics() {
    let held = kv(b"/pw/sub/sub_1", &record(&sub("sub_1", 4)), 21);
    let samples = [
        succeeded(12, 3),
        read_answer(slots(&[0, 2])),
        lost(slots(&[1])),
        failed(vec![range(vec![held.clone()])]),
        failed(vec![range(vec![held]), range(held_slots(&[(4, "sub_1")]))]),
    ];
    let mut rng = seeded(0xc0_11_17);
    for i in 0..scaled(4000) {
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
        let mut commit = match i % 4 {
            0 => create(3).0,
            1 => create_sent(),
            2 => replace(&sub("sub_1", 5), 4).0,
            _ => delete(4).0,
        };
        let _ = commit.on_answer(Some("200"), &bytes);
        let _ = commit.on_answer(Some("200"), &bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Races against a model of etcd

/// etcd's key-value store as far as commits use it: ranges, and txns of single-key compares
/// and puts, deletes and ranges, each txn atomic at one new revision.
#[derive(Default)]
struct Model {
    revision: i64,
    /// key → (value, create_revision, mod_revision, version)
    kvs: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>,
}

fn decoded(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().unwrap_or("")).unwrap()
}

fn number(v: &Value) -> i64 {
    v.as_str().unwrap().parse().unwrap()
}

impl Model {
    /// Serves `request` now, as etcd would.
    fn serve(&mut self, request: &Request) -> Vec<u8> {
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let answer = match request.path {
            etcd::RANGE => self.range(&body),
            etcd::TXN => self.txn(&body),
            other => panic!("no model of {other}"),
        };
        answer.to_string().into_bytes()
    }

    fn keys_of(&self, r: &Value) -> Vec<Vec<u8>> {
        let key = decoded(&r["key"]);
        match r.get("range_end") {
            Some(end) => {
                let end = decoded(end);
                self.kvs.range(key..end).map(|(k, _)| k.clone()).collect()
            }
            None => self
                .kvs
                .contains_key(&key)
                .then_some(key)
                .into_iter()
                .collect(),
        }
    }

    fn range(&self, r: &Value) -> Value {
        let keys_only = r["keys_only"] == json!(true);
        let all = self.keys_of(r);
        let limit = r.get("limit").map_or(0, number) as usize;
        let shown = if limit > 0 {
            limit.min(all.len())
        } else {
            all.len()
        };
        let shown = if r["count_only"] == json!(true) {
            0
        } else {
            shown
        };
        let kvs: Vec<Value> = all[..shown]
            .iter()
            .map(|k| {
                let (value, create, modified, version) = &self.kvs[k];
                let mut kv = json!({"key": b64(k), "create_revision": create.to_string(),
                    "mod_revision": modified.to_string(), "version": version.to_string()});
                if !keys_only && !value.is_empty() {
                    kv["value"] = json!(b64(value));
                }
                kv
            })
            .collect();
        let mut answer = json!({"header": {"revision": self.revision.max(1).to_string()}});
        if !all.is_empty() {
            answer["count"] = json!(all.len().to_string());
        }
        if !kvs.is_empty() {
            answer["kvs"] = json!(kvs);
        }
        if limit > 0 && all.len() > limit && !kvs.is_empty() {
            answer["more"] = json!(true);
        }
        answer
    }

    fn holds(&self, c: &Value) -> bool {
        let held = self.kvs.get(&decoded(&c["key"]));
        let (actual, expected) = match c["target"].as_str().unwrap() {
            "CREATE" => (held.map_or(0, |h| h.1), number(&c["create_revision"])),
            "MOD" => (held.map_or(0, |h| h.2), number(&c["mod_revision"])),
            "VERSION" => (held.map_or(0, |h| h.3), number(&c["version"])),
            other => panic!("no model of target {other}"),
        };
        match c["result"].as_str().unwrap() {
            "EQUAL" => actual == expected,
            "NOT_EQUAL" => actual != expected,
            "GREATER" => actual > expected,
            "LESS" => actual < expected,
            other => panic!("no model of result {other}"),
        }
    }

    fn txn(&mut self, t: &Value) -> Value {
        let ok = t["compare"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| self.holds(c));
        let ops = t[if ok { "success" } else { "failure" }]
            .as_array()
            .unwrap();
        let writes = ops.iter().any(|op| op.get("request_range").is_none());
        if writes {
            self.revision += 1;
        }
        let rev = self.revision;
        let mut responses = Vec::new();
        for op in ops {
            let header = json!({"revision": rev.max(1).to_string()});
            if let Some(r) = op.get("request_range") {
                responses.push(json!({ "response_range": self.range(r) }));
            } else if let Some(p) = op.get("request_put") {
                let key = decoded(&p["key"]);
                let (create, version) = self.kvs.get(&key).map_or((rev, 0), |h| (h.1, h.3));
                self.kvs
                    .insert(key, (decoded(&p["value"]), create, rev, version + 1));
                responses.push(json!({"response_put": {"header": header}}));
            } else {
                let d = &op["request_delete_range"];
                let gone = self.keys_of(d);
                for k in &gone {
                    self.kvs.remove(k);
                }
                responses.push(json!({"response_delete_range": {"header": header,
                    "deleted": gone.len().to_string()}}));
            }
        }
        let mut answer = json!({"header": {"revision": rev.max(1).to_string()},
                                "responses": responses});
        if ok {
            answer["succeeded"] = json!(true);
        }
        answer
    }

    /// acme's slots: number → id.
    fn slots(&self) -> BTreeMap<u64, String> {
        self.slot_values()
            .into_iter()
            .map(|(n, v)| (n, v.split(' ').next().unwrap().to_string()))
            .collect()
    }

    /// acme's slots: number → value (the id and the cap slot's number).
    fn slot_values(&self) -> BTreeMap<u64, String> {
        self.kvs
            .iter()
            .filter_map(|(k, (v, ..))| {
                let n = std::str::from_utf8(k)
                    .ok()?
                    .strip_prefix("/pw/slot/acme/")?;
                Some((n.parse().unwrap(), String::from_utf8(v.clone()).unwrap()))
            })
            .collect()
    }

    /// The cap slots: number → id.
    fn caps(&self) -> BTreeMap<u64, String> {
        self.kvs
            .iter()
            .filter_map(|(k, (v, ..))| {
                let n = std::str::from_utf8(k).ok()?.strip_prefix("/pw/cap/")?;
                Some((n.parse().unwrap(), String::from_utf8(v.clone()).unwrap()))
            })
            .collect()
    }

    /// acme's records: id → version.
    fn records(&self) -> BTreeMap<String, u64> {
        self.kvs
            .iter()
            .filter_map(|(k, (v, ..))| {
                let id = std::str::from_utf8(k).ok()?.strip_prefix("/pw/sub/")?;
                Some((id.to_string(), Subscription::from_json(v)?.version))
            })
            .collect()
    }
}

/// One race: `creates` creates for acme (and, with `deletes`, deletes of what exists) within
/// `limit` for acme and `cap` in all; acme holds the slots `before` (earlier records, as an
/// earlier version wrote them: no cap slot) and the cap slots `before_caps` (each with its
/// record and an acme slot from 500 on) from higher limits.
struct Race<'a> {
    limit: usize,
    cap: usize,
    creates: usize,
    deletes: bool,
    before: &'a [u64],
    before_caps: &'a [u64],
}

impl Default for Race<'_> {
    fn default() -> Self {
        Race {
            limit: 1000,
            cap: 100_000,
            creates: 0,
            deletes: false,
            before: &[],
            before_caps: &[],
        }
    }
}

impl Model {
    fn hold(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.revision += 1;
        let rev = self.revision;
        self.kvs.insert(key, (value, rev, rev, 1));
    }
}

/// Runs `race`, its requests served one at a time in random order: how many creates committed
/// and how many were refused for a limit. After every request: no create takes acme past
/// `limit` nor the registry past `cap` (slots already there may exceed them, from higher
/// limits), every slot names a record, and a committed create or delete has its slots and
/// record written or removed together.
fn race(seed: u64, race: Race<'_>) -> (usize, usize) {
    let Race {
        limit,
        cap,
        creates,
        deletes,
        before,
        before_caps,
    } = race;
    let mut etcd = Model::default();
    for n in before {
        let s = sub(&format!("sub_old{n}"), 1);
        etcd.hold(
            format!("/pw/slot/acme/{n}").into_bytes(),
            s.id.clone().into_bytes(),
        );
        etcd.hold(keys().subscription(&s.id), record(&s));
    }
    for n in before_caps {
        let s = sub(&format!("sub_cap{n}"), 1);
        let slot = format!("/pw/slot/acme/{}", 500 + n).into_bytes();
        etcd.hold(slot, format!("{} {n}", s.id).into_bytes());
        etcd.hold(keys().cap(*n), s.id.clone().into_bytes());
        etcd.hold(keys().subscription(&s.id), record(&s));
    }
    let mut rng = seeded(seed);
    let mut flight: Vec<(Commit, Request)> = (0..creates)
        .map(|n| capped_create_of(&sub(&format!("sub_r{seed}x{n}"), 1), limit, cap))
        .collect();
    let (mut committed, mut refused) = (0, 0);
    let mut deleted = BTreeSet::new();
    while !flight.is_empty() {
        if deletes && rng.chance(4) {
            let records = etcd.records();
            let victims: Vec<_> = records
                .iter()
                .filter(|(id, _)| !deleted.contains(*id))
                .collect();
            if !victims.is_empty() {
                let (id, version) = victims[rng.below(victims.len())];
                deleted.insert(id.clone());
                flight.push(Commit::start(
                    Write::Delete {
                        id: id.clone(),
                        consumer: "acme".into(),
                        before_version: *version,
                    },
                    &keys(),
                    &Vault::default(),
                    &mut NoRandom,
                ));
            }
        }
        let (mut commit, request) = flight.swap_remove(rng.below(flight.len()));
        let (slots_before, caps_before) = (etcd.slots().len(), etcd.caps().len());
        let answer = etcd.serve(&request);
        let (count, held) = (etcd.slots().len(), etcd.caps().len());
        assert!(
            count <= slots_before || count <= limit,
            "{count} slots for limit {limit}"
        );
        assert!(
            held <= caps_before || held <= cap,
            "{held} cap slots for cap {cap}"
        );
        let records = etcd.records();
        for id in etcd.slots().values().chain(etcd.caps().values()) {
            assert!(records.contains_key(id), "slot of {id} without its record");
        }
        match commit.on_answer(Some("200"), &answer) {
            Step::Send(next) => flight.push((commit, next)),
            Step::Committed { .. } => match commit.write() {
                Write::Create { sub, .. } => {
                    let (&n, _) = etcd.caps().iter().find(|(_, id)| **id == sub.id).unwrap();
                    let value = format!("{} {n}", sub.id);
                    assert!(etcd.slot_values().values().any(|v| *v == value));
                    assert!(records.contains_key(&sub.id));
                    committed += 1;
                }
                Write::Delete { id, .. } => {
                    assert!(!etcd.slots().values().any(|s| s == id));
                    assert!(!etcd.caps().values().any(|s| s == id));
                    assert!(!records.contains_key(id));
                }
                Write::Replace { .. } | Write::Static { .. } | Write::Revoke { .. } => {
                    unreachable!()
                }
            },
            Step::LimitReached(n) => {
                assert!(n >= limit as u64);
                refused += 1;
            }
            Step::RegistryFull(n) => {
                assert!(n >= cap as u64);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Every record has its slot, and every one but the earlier version's its cap slot.
    let held: BTreeSet<String> = etcd.slots().into_values().collect();
    let records: BTreeSet<String> = etcd.records().into_keys().collect();
    assert_eq!(held, records);
    let capped: BTreeSet<String> = etcd.caps().into_values().collect();
    let old: BTreeSet<String> = records
        .iter()
        .filter(|id| id.starts_with("sub_old"))
        .cloned()
        .collect();
    assert_eq!(capped, &records - &old);
    (committed, refused)
}

#[test]
fn racing_creates_within_the_limit_all_commit() {
    for seed in 0..scaled(5) as u64 {
        let race_of = |creates| Race {
            creates,
            ..Race::default()
        };
        assert_eq!(race(seed, race_of(200)), (200, 0));
    }
}

#[test]
fn racing_creates_past_the_limit_commit_exactly_up_to_it() {
    for seed in 0..scaled(20) as u64 {
        let race_of = |limit, creates, before| Race {
            limit,
            creates,
            before,
            ..Race::default()
        };
        assert_eq!(race(seed, race_of(40, 60, &[])), (40, 20));
        assert_eq!(race(seed, race_of(3, 30, &[1])), (2, 28));
    }
}

#[test]
fn racing_creates_under_a_lowered_limit_never_pass_it() {
    for seed in 0..scaled(20) as u64 {
        let race_of = |limit, creates, before| Race {
            limit,
            creates,
            before,
            ..Race::default()
        };
        // Limit 5 now; 3 slots from when it was 10: two more commit.
        assert_eq!(race(seed, race_of(5, 20, &[5, 8, 9])), (2, 18));
        // Limit 3 now, 4 slots: none.
        assert_eq!(race(seed, race_of(3, 10, &[0, 4, 6, 7])), (0, 10));
    }
}

#[test]
fn racing_creates_and_deletes_keep_the_limit_and_a_slot_per_record() {
    for seed in 0..scaled(20) as u64 {
        let r = Race {
            limit: 10,
            creates: 40,
            deletes: true,
            before: &[2, 12],
            ..Race::default()
        };
        let (committed, refused) = race(seed, r);
        assert_eq!(committed + refused, 40);
        assert!(committed >= 8, "{committed} committed");
    }
}

#[test]
fn racing_creates_past_the_registry_limit_commit_exactly_up_to_it() {
    for seed in 0..scaled(8) as u64 {
        let race_of = |cap, creates, before, before_caps| Race {
            cap,
            creates,
            before,
            before_caps,
            ..Race::default()
        };
        assert_eq!(race(seed, race_of(40, 60, &[], &[])), (40, 20));
        // Records of an earlier version hold no cap slot; they are counted, but only the cap
        // slots make the count exact under racing creates: at most the cap besides them.
        let (committed, refused) = race(seed, race_of(40, 60, &[3, 4], &[]));
        assert!((38..=40).contains(&committed), "{committed}");
        assert_eq!(committed + refused, 60);
        assert_eq!(race(seed, race_of(3, 30, &[], &[1])), (2, 28));
    }
}

#[test]
fn racing_creates_under_a_lowered_registry_limit_never_pass_it() {
    for seed in 0..scaled(20) as u64 {
        let race_of = |cap, creates, before_caps| Race {
            cap,
            creates,
            before_caps,
            ..Race::default()
        };
        // Cap 5 now; 3 cap slots from when it was 10: two more commit.
        assert_eq!(race(seed, race_of(5, 20, &[5, 8, 9])), (2, 18));
        // Slots 3, 4 and 6: the usable range is found down to 0..2.
        assert_eq!(race(seed, race_of(5, 20, &[3, 4, 6])), (2, 18));
        // Cap 3 now, 4 cap slots: none.
        assert_eq!(race(seed, race_of(3, 10, &[0, 4, 6, 7])), (0, 10));
    }
}

#[test]
fn racing_creates_and_deletes_keep_the_registry_limit() {
    for seed in 0..scaled(20) as u64 {
        let r = Race {
            cap: 10,
            creates: 40,
            deletes: true,
            before_caps: &[2, 12],
            ..Race::default()
        };
        let (committed, refused) = race(seed, r);
        assert_eq!(committed + refused, 40);
        assert!(committed >= 8, "{committed} committed");
    }
}

/// A registry of a thousand cap slots, more than a window lists: creates find the free ones
/// in the windows, and the last free slot is found too.
#[test]
fn creates_find_free_cap_slots_beyond_one_window() {
    for seed in 0..scaled(3) as u64 {
        let taken: Vec<u64> = (0..1000).filter(|n| *n != 777 && *n != 3).collect();
        let r = Race {
            cap: 1000,
            creates: 4,
            before_caps: &taken,
            ..Race::default()
        };
        assert_eq!(race(seed, r), (2, 2));
    }
}

/// A create whose write txn got no answer may have committed: its record is read back, and the
/// create is committed when etcd holds it, refused (nothing written) when it does not. Before,
/// it answered 503 "nothing was changed" either way, and a client's retry created it twice.
#[test]
fn a_create_whose_write_got_no_answer_reads_its_record_back() {
    let s = sub("sub_1", 1);
    let write_of = |s: &Subscription| {
        let (mut commit, _) = capped_create_of(s, 3, 3);
        let read = Reads::of(slots(&[]));
        let write = answer(&mut commit, &read.first());
        assert!(body(&write)["success"][0].get("request_put").is_some());
        commit
    };
    let mut commit = write_of(&s);
    let Step::Send(check) = commit.on_answer(None, b"") else {
        panic!("no read back");
    };
    assert_eq!(check, etcd::range(b"/pw/sub/sub_1"));
    let held = json!({"header": {"revision": "13"},
                      "kvs": [kv(b"/pw/sub/sub_1", &record(&s), 12)], "count": "1"});
    assert_eq!(
        commit.on_answer(Some("200"), held.to_string().as_bytes()),
        Step::Committed { revision: 12 }
    );
    let mut commit = write_of(&s);
    assert!(matches!(commit.on_answer(None, b""), Step::Send(_)));
    let none = json!({"header": {"revision": "13"}});
    let Step::Unavailable(why) = commit.on_answer(Some("200"), none.to_string().as_bytes()) else {
        panic!("not refused");
    };
    assert!(why.ends_with("it was not written"), "{why}");
    // A read (no write yet) that gets no answer is refused at once.
    let (mut reading, _) = capped_create_of(&s, 3, 3);
    assert!(matches!(reading.on_answer(None, b""), Step::Unavailable(_)));
}

#[test]
fn a_revocation_is_a_put_of_its_time_under_p_revoked() {
    let keys = Keys::new("/pw");
    let write = Write::Revoke {
        consumer: "acme".into(),
        up_to_ms: 1_800_000_000_123,
    };
    let (mut commit, request) = Commit::start(write, &keys, &Vault::default(), &mut seeded(1));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    let put = &body["success"][0]["request_put"];
    assert_eq!(put["key"], STANDARD.encode("/pw/revoked/acme"));
    assert_eq!(put["value"], STANDARD.encode("1800000000123"));
    assert!(body["compare"].as_array().is_none_or(Vec::is_empty));
    let answer = r#"{"header": {"revision": "12"}, "succeeded": true}"#;
    assert_eq!(
        commit.on_answer(Some("200"), answer.as_bytes()),
        Step::Committed { revision: 12 }
    );
}
