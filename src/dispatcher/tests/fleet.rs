//! Fleet mode in the dispatcher: the registry kept from etcd, and the durable outbox. A small
//! etcd stand-in answers the outbox's calls (`settle`); the tests answer the registry reads and
//! record writes themselves.

use super::*;
use crate::fleet::etcd::Request;
use crate::fleet::stored;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

const FLEET: &str = r#""fleet": {"cluster": "etcd", "prefix": "/pw", "node_id": "n1", "sync_interval": "500ms", "lease_ttl": "3s"}"#;
/// The lease the stand-in grants (hex `ab`).
const LEASE: i64 = 0xab;

/// A fleet-mode dispatcher whose outbox lease is registered (the registry not read yet).
fn fleet_dispatcher() -> Dispatcher<FakeHost> {
    fleet_dispatcher_with("")
}

fn fleet_dispatcher_with(delivery: &str) -> Dispatcher<FakeHost> {
    let config =
        format!(r#"{{"delivery": {{"allow_private_destinations": true{delivery}}}, {FLEET}}}"#);
    let mut d = dispatcher_with(&config);
    settle(&mut d);
    assert_eq!(
        d.fleet.as_ref().unwrap().durable.journal.lease(),
        Some(LEASE)
    );
    d
}

fn record_json(id: &str, status: &str, version: u64) -> Value {
    json!({"id": id, "consumer": "acme", "url": "https://hooks.example.com/in",
        "events": ["order.*"], "status": status, "created_at_ms": T0, "updated_at_ms": T0,
        "secrets": [{"secret": SECRET}], "version": version})
}

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

fn key_of(request: &Request) -> Option<String> {
    let body: Value = serde_json::from_str(&request.body).ok()?;
    let key = body["key"].as_str()?;
    String::from_utf8(STANDARD.decode(key).ok()?).ok()
}

/// Keys a txn's success branch touches.
fn txn_keys(request: &Request) -> Vec<String> {
    let body: Value = serde_json::from_str(&request.body).unwrap();
    body["success"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|op| {
            let inner = op.as_object()?.values().next()?;
            let key = STANDARD.decode(inner["key"].as_str()?).ok()?;
            String::from_utf8(key).ok()
        })
        .collect()
}

/// A registry read or a record write (answered by the tests), not an outbox call.
fn is_registry_call(request: &Request) -> bool {
    let registry = |k: &str| k.starts_with("/pw/sub/") || k.starts_with("/pw/count/");
    match request.path {
        crate::fleet::etcd::RANGE => key_of(request).is_some_and(|k| registry(&k)),
        crate::fleet::etcd::TXN => txn_keys(request).iter().any(|k| registry(k)),
        _ => false,
    }
}

/// The outbox calls not answered yet.
fn outbox_calls(d: &Dispatcher<FakeHost>) -> Vec<(u32, Request)> {
    let host = d.host();
    host.etcd_sent
        .iter()
        .filter(|(token, _, r)| !host.etcd_answered.contains(token) && !is_registry_call(r))
        .map(|(token, _, r)| (*token, r.clone()))
        .collect()
}

/// Answers `token` with a 200 and `body`.
fn reply(d: &mut Dispatcher<FakeHost>, token: u32, body: &str) {
    d.host_mut().etcd_answered.insert(token);
    answer_with_body(d, token, 200, &[], body.as_bytes());
}

/// What an etcd that holds nothing but what the outbox writes answers.
fn plain_answer(request: &Request) -> String {
    let header = json!({"revision": "7"});
    let lease = LEASE.to_string();
    match request.path {
        crate::fleet::etcd::LEASE_GRANT => json!({"header": header, "ID": lease, "TTL": "3"}),
        crate::fleet::etcd::LEASE_KEEPALIVE => {
            json!({"result": {"header": header, "ID": lease, "TTL": "3"}})
        }
        crate::fleet::etcd::TXN => json!({"header": header, "succeeded": true}),
        _ => json!({"header": header}),
    }
    .to_string()
}

/// Answers every outbox call (and those its answers lead to) as a plain etcd would.
fn settle(d: &mut Dispatcher<FakeHost>) {
    for _ in 0..100 {
        let calls = outbox_calls(d);
        if calls.is_empty() {
            return;
        }
        for (token, request) in calls {
            reply(d, token, &plain_answer(&request));
        }
    }
    panic!("the outbox keeps calling etcd");
}

/// A registry read's answer at etcd revision `revision`: `records` (etcd 3.4's shape), of
/// `count` in all.
fn registry_answer(records: &[Value], count: usize, revision: u64) -> Value {
    let kvs: Vec<Value> = records
        .iter()
        .map(|r| {
            let key = format!("/pw/sub/{}", r["id"].as_str().unwrap());
            json!({"key": b64(key.as_bytes()), "mod_revision": "7", "value": b64(r.to_string().as_bytes())})
        })
        .collect();
    json!({"header": {"revision": revision.to_string()}, "kvs": kvs, "count": count.to_string()})
}

/// Answers the latest registry read with `records` (etcd 3.4's shape).
fn answer_etcd(d: &mut Dispatcher<FakeHost>, records: &[Value], count: usize) {
    let body = registry_answer(records, count, 7);
    let token = registry_reads(d).last().unwrap().0;
    reply(d, token, &body.to_string());
}

fn registry_reads(d: &Dispatcher<FakeHost>) -> Vec<(u32, Request)> {
    d.host()
        .etcd_sent
        .iter()
        .filter(|(_, _, r)| r.path == crate::fleet::etcd::RANGE && is_registry_call(r))
        .map(|(t, _, r)| (*t, r.clone()))
        .collect()
}

/// The latest record write (a txn on `/pw/sub/`).
fn last_record_write(d: &Dispatcher<FakeHost>) -> (u32, Request) {
    let (token, _, request) = d
        .host()
        .etcd_sent
        .iter()
        .rev()
        .find(|(_, _, r)| r.path == crate::fleet::etcd::TXN && is_registry_call(r))
        .cloned()
        .unwrap();
    (token, request)
}

/// A dispatcher in fleet mode with `sub_a` synced from etcd.
fn synced() -> Dispatcher<FakeHost> {
    let mut d = fleet_dispatcher();
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    d
}

#[test]
fn fleet_mode_reads_the_registry_at_start_and_holds_fan_out_until_then() {
    let mut d = fleet_dispatcher();
    assert!(d
        .host()
        .etcd_sent
        .iter()
        .all(|(_, cluster, _)| cluster == "etcd"));
    assert_eq!(registry_reads(&d).len(), 1);
    event(&mut d, "order.created");
    assert!(sent(&d).is_empty(), "no fan-out before the first read");
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    d.on_tick();
    settle(&mut d);
    assert_eq!(
        sent(&d).len(),
        1,
        "the held event goes to the synced subscription"
    );
    assert_eq!(
        registry_reads(&d).len(),
        1,
        "the next read waits for the interval"
    );
    d.host().advance(500);
    d.on_tick();
    assert_eq!(registry_reads(&d).len(), 2);
}

#[test]
fn fleet_mode_applies_changes_and_deletes_from_etcd() {
    let mut d = fleet_dispatcher();
    answer_etcd(
        &mut d,
        &[
            record_json("sub_a", "active", 1),
            record_json("sub_b", "active", 1),
        ],
        2,
    );
    assert!(registry(&d).get("sub_b").is_some());
    d.host().advance(500);
    d.on_tick();
    answer_etcd(&mut d, &[record_json("sub_a", "disabled", 2)], 1);
    assert_eq!(
        registry(&d).get("sub_a").unwrap().0.status,
        Status::Disabled
    );
    // sub_b was deleted: the count says so, and a listing follows at once.
    d.on_tick();
    answer_etcd(&mut d, &[record_json("sub_a", "disabled", 2)], 1);
    assert!(registry(&d).get("sub_b").is_none());
    event(&mut d, "order.created");
    assert!(
        sent(&d).is_empty(),
        "neither a disabled nor a deleted subscription gets it"
    );
}

/// The workers' flag (shared data): whether the first registry read is applied.
fn registry_read_flag(d: &Dispatcher<FakeHost>) -> Option<Vec<u8>> {
    let store = &d.host().store;
    store.get(watchdog::REGISTRY_READ_KEY).map(|(v, _)| v)
}

#[test]
fn fleet_mode_tells_the_workers_once_the_first_registry_read_is_applied() {
    let mut d = fleet_dispatcher();
    assert_eq!(registry_read_flag(&d).as_deref(), Some(b"0".as_slice()));
    let token = registry_reads(&d).last().unwrap().0;
    reply(&mut d, token, "no JSON");
    assert_eq!(
        registry_read_flag(&d).as_deref(),
        Some(b"0".as_slice()),
        "a failed read is no read"
    );
    d.host().advance(500);
    d.on_tick();
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    assert_eq!(registry_read_flag(&d).as_deref(), Some(b"1".as_slice()));
}

#[test]
fn fleet_mode_reads_the_pages_of_a_registry_read_one_after_the_other_at_once() {
    let mut d = fleet_dispatcher();
    let (token, first) = registry_reads(&d).last().cloned().unwrap();
    let mut page = registry_answer(&[record_json("sub_a", "active", 1)], 2, 7);
    page["more"] = json!(true);
    reply(&mut d, token, &page.to_string());
    assert_eq!(
        registry_read_flag(&d).as_deref(),
        Some(b"0".as_slice()),
        "not before the last page"
    );
    let (token, next) = registry_reads(&d).last().cloned().unwrap();
    assert_ne!(
        first, next,
        "the next page is asked for without waiting for a tick"
    );
    let next: Value = serde_json::from_str(&next.body).unwrap();
    assert_eq!(next["key"], b64(b"/pw/sub/sub_a\0"));
    assert_eq!(next["revision"], "7");
    let page = registry_answer(&[record_json("sub_b", "active", 1)], 1, 9);
    reply(&mut d, token, &page.to_string());
    assert!(registry(&d).get("sub_a").is_some() && registry(&d).get("sub_b").is_some());
    assert_eq!(registry_read_flag(&d).as_deref(), Some(b"1".as_slice()));
}

#[test]
fn fleet_mode_reads_again_from_a_record_a_worker_put_into_the_cache() {
    let mut d = synced();
    let cached = QueueMessage::Cached {
        subscription_id: "sub_new".into(),
        mod_revision: 5,
    };
    d.host_mut().queue.push_back(cached.encode());
    d.on_queue_ready();
    d.host().advance(500);
    d.on_tick();
    let (_, read) = registry_reads(&d).last().cloned().unwrap();
    let read: Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(
        read["min_mod_revision"], "5",
        "not 8: from the reported record on"
    );
}

#[test]
fn fleet_mode_without_etcd_serves_what_it_has_and_counts_the_errors() {
    let mut d = fleet_dispatcher();
    let token = registry_reads(&d).last().unwrap().0;
    answer_with_body(&mut d, token, 503, &[], b"upstream connect error");
    assert_eq!(d.host().metric(Metric::FleetEtcdErrors), 1);
    subscribe(
        &d,
        "static_like",
        "https://hooks.example.com/in",
        &["order.*"],
    );
    event(&mut d, "order.created");
    assert!(sent(&d).is_empty(), "still waiting for a first read");
    d.host().advance(5000);
    d.host_mut().refuse_etcd = true;
    d.on_tick();
    assert!(d.host().metric(Metric::FleetEtcdErrors) >= 2);
    assert_eq!(
        sent(&d).len(),
        1,
        "after the wait, fan-out goes on from the cache (and delivers from memory)"
    );
    assert!(d.host().metric(Metric::FleetSyncLagMs) >= 5000);
}

#[test]
fn fleet_mode_writes_a_disable_to_etcd_comparing_the_record_it_replaced() {
    let b64 = |s: &str| b64(s.as_bytes());
    let mut d = synced();
    event(&mut d, "order.created");
    settle(&mut d);
    answer_last(&mut d, 410, &[]);
    assert_eq!(
        registry(&d).get("sub_a").unwrap().0.status,
        Status::Disabled
    );
    let (token, first) = last_record_write(&d);
    assert_eq!(first.path, crate::fleet::etcd::TXN);
    // The first guess is "no revision": etcd's failure branch reads the record (version 1).
    let kv = serde_json::json!({"key": b64("/pw/sub/sub_a"), "mod_revision": "7",
        "value": b64(&record_json("sub_a", "active", 1).to_string())});
    let failed = serde_json::json!({"header": {"revision": "7"},
        "responses": [{"response_range": {"header": {"revision": "7"}, "kvs": [kv], "count": "1"}}]});
    answer_with_body(&mut d, token, 200, &[], failed.to_string().as_bytes());
    let (token, second) = last_record_write(&d);
    let body: serde_json::Value = serde_json::from_str(&second.body).unwrap();
    assert_eq!(body["compare"][1]["mod_revision"], "7", "{body}");
    let put = &body["success"][0]["request_put"];
    let stored = base64::engine::general_purpose::STANDARD
        .decode(put["value"].as_str().unwrap())
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        (stored["status"].as_str(), stored["version"].as_u64()),
        (Some("disabled"), Some(2))
    );
    let done = serde_json::json!({"header": {"revision": "8"}, "succeeded": true,
        "responses": [{"response_put": {"header": {"revision": "8"}}}]});
    let writes = |d: &Dispatcher<FakeHost>| {
        let sent = &d.host().etcd_sent;
        sent.iter().filter(|(_, _, r)| is_registry_call(r)).count()
    };
    let sent_before = writes(&d);
    answer_with_body(&mut d, token, 200, &[], done.to_string().as_bytes());
    assert_eq!(writes(&d), sent_before, "committed: nothing more to send");
    assert_eq!(d.host().metric(Metric::FleetEtcdErrors), 0);
}

// ---- Static subscriptions ----

const STATIC_URL: &str = "https://audit.example.com/in";

/// A fleet-mode dispatcher with the static subscription `audit`, its statuses read (etcd had
/// `statuses`: key and value), the registry read with `records`.
fn with_static(statuses: &[(Vec<u8>, Vec<u8>)], records: &[Value]) -> Dispatcher<FakeHost> {
    let config = format!(
        r#"{{"delivery": {{"allow_private_destinations": true}}, {FLEET},
            "subscriptions": [{{"id": "audit", "consumer": "ops", "url": "{STATIC_URL}",
                                "events": ["*"], "secret": "{SECRET}"}}]}}"#
    );
    let mut d = dispatcher_with(&config);
    let (token, _) = statics_calls(&d).into_iter().next().unwrap();
    let kvs: Vec<Value> = statuses
        .iter()
        .map(|(k, v)| json!({"key": b64(k), "value": b64(v), "mod_revision": "5"}))
        .collect();
    let body = json!({"header": {"revision": "7"}, "kvs": kvs, "count": kvs.len().to_string()});
    reply(&mut d, token, &body.to_string());
    settle(&mut d);
    answer_etcd(&mut d, records, records.len());
    d
}

/// Every etcd call not answered yet.
fn unanswered(d: &Dispatcher<FakeHost>) -> Vec<(u32, Request)> {
    let host = d.host();
    host.etcd_sent
        .iter()
        .filter(|(token, _, _)| !host.etcd_answered.contains(token))
        .map(|(token, _, r)| (*token, r.clone()))
        .collect()
}

/// The calls about `/pw/static/` not answered yet.
fn statics_calls(d: &Dispatcher<FakeHost>) -> Vec<(u32, Request)> {
    let statics = |k: &String| k.starts_with("/pw/static/");
    outbox_calls(d)
        .into_iter()
        .filter(|(_, r)| key_of(r).is_some_and(|k| statics(&k)) || txn_keys(r).iter().any(statics))
        .collect()
}

fn audit_key() -> Vec<u8> {
    let def = crate::fleet::statics::definition(STATIC_URL, SECRET);
    format!("/pw/static/audit/{def}").into_bytes()
}

#[test]
fn fleet_mode_shares_a_static_subscriptions_disable_as_its_status_alone() {
    let mut d = with_static(&[], &[]);
    assert!(registry(&d).get("audit").unwrap().0.is_active());
    event(&mut d, "order.created");
    settle(&mut d);
    answer_last(&mut d, 410, &[]);
    let (_, write) = statics_calls(&d).into_iter().next().unwrap();
    let body: Value = serde_json::from_str(&write.body).unwrap();
    let put = &body["success"][0]["request_put"];
    assert_eq!(put["key"], json!(b64(&audit_key())));
    let value = STANDARD.decode(put["value"].as_str().unwrap()).unwrap();
    let value: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(
        (&value["status"], &value["disabled_reason"]),
        (&json!("disabled"), &json!("gone"))
    );
    assert!(!write.body.contains("whsec"), "{}", write.body);
    assert!(d
        .host()
        .etcd_sent
        .iter()
        .all(|(_, _, r)| !txn_keys(r).contains(&"/pw/sub/audit".to_string())));
}

#[test]
fn fleet_mode_takes_a_static_subscriptions_status_from_etcd_for_its_definition_only() {
    let gone = br#"{"status":"disabled","disabled_reason":"gone","updated_at_ms":5}"#.to_vec();
    let d = with_static(&[(audit_key(), gone.clone())], &[]);
    let (sub, _) = registry(&d).get("audit").unwrap();
    assert_eq!(
        (sub.status, sub.disabled_reason.as_deref()),
        (Status::Disabled, Some("gone"))
    );
    // Another definition's status (the URL or secret moved since): active, and that key goes.
    let other = b"/pw/static/audit/00000000000000000000000000000000".to_vec();
    let mut d = with_static(&[(other.clone(), gone)], &[]);
    assert!(registry(&d).get("audit").unwrap().0.is_active());
    let other = String::from_utf8(other).unwrap();
    let deletes = d.host().etcd_sent.iter();
    let deletes = deletes.filter(|(_, _, r)| r.body.contains("request_delete_range"));
    let deleted: Vec<Vec<String>> = deletes.map(|(_, _, r)| txn_keys(r)).collect();
    assert_eq!(deleted, [[other]]);
    d.on_tick();
    assert!(statics_calls(&d).is_empty());
}

#[test]
fn fleet_mode_ignores_and_deletes_a_copy_of_a_static_subscription_an_earlier_version_wrote() {
    let mut legacy = record_json("audit", "disabled", 3);
    legacy["consumer"] = json!("ops");
    legacy["url"] = json!("https://old.example.com/in");
    legacy["is_static"] = json!(true);
    let mut removed = legacy.clone();
    removed["id"] = json!("gone_from_config");
    let mut d = with_static(
        &[],
        &[legacy.clone(), removed, record_json("sub_a", "active", 1)],
    );
    let (sub, _) = registry(&d).get("audit").unwrap();
    assert_eq!((sub.url.as_str(), sub.status), (STATIC_URL, Status::Active));
    assert!(registry(&d).get("gone_from_config").is_none());
    assert!(registry(&d).get("sub_a").is_some());
    // Read again, then deleted while still the copy read (compared on its revision).
    d.on_tick();
    let (token, check) = unanswered(&d)
        .into_iter()
        .find(|(_, r)| {
            r.body.contains("request_range") && txn_keys(r).contains(&"/pw/sub/audit".into())
        })
        .unwrap();
    assert_eq!(
        txn_keys(&check),
        ["/pw/sub/audit", "/pw/sub/gone_from_config"]
    );
    let kv = |id: &str, record: &Value| {
        let key = format!("/pw/sub/{id}");
        json!({"response_range": {"header": {"revision": "9"}, "count": "1", "kvs": [
            {"key": b64(key.as_bytes()), "mod_revision": "6", "value": b64(record.to_string().as_bytes())}]}})
    };
    let mut removed = legacy.clone();
    removed["id"] = json!("gone_from_config");
    let answer = json!({"header": {"revision": "9"}, "succeeded": true,
        "responses": [kv("audit", &legacy), kv("gone_from_config", &removed)]});
    reply(&mut d, token, &answer.to_string());
    let mut deleted = Vec::new();
    let is_delete = |r: &Request| {
        r.body.contains("request_delete_range")
            && txn_keys(r).iter().any(|k| k.starts_with("/pw/sub/"))
    };
    while let Some((token, delete)) = unanswered(&d).into_iter().find(|(_, r)| is_delete(r)) {
        let body: Value = serde_json::from_str(&delete.body).unwrap();
        assert_eq!(body["compare"][0]["mod_revision"], json!("6"));
        deleted.extend(txn_keys(&delete));
        reply(
            &mut d,
            token,
            r#"{"header":{"revision":"10"},"succeeded":true}"#,
        );
    }
    deleted.sort();
    assert_eq!(deleted, ["/pw/sub/audit", "/pw/sub/gone_from_config"]);
    // etcd's delete reaches the registry read as a removal: the static subscription stays.
    sync_at(&mut d, &[], 11);
    d.on_tick();
    let (token, listing) = registry_reads(&d).last().cloned().unwrap();
    assert!(listing.body.contains("keys_only"));
    let listed = registry_answer(&[record_json("sub_a", "active", 1)], 1, 11);
    reply(&mut d, token, &listed.to_string());
    assert!(registry(&d).get("sub_a").is_some());
    assert_eq!(registry(&d).get("audit").unwrap().0.url, STATIC_URL);
}

// ---- The durable outbox ----

/// The puts of messages among the outbox calls not answered yet.
fn message_puts(d: &Dispatcher<FakeHost>) -> Vec<(u32, Vec<String>)> {
    outbox_calls(d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .map(|(t, r)| (t, txn_keys(&r)))
        .filter(|(_, keys)| keys.iter().any(|k| k.starts_with("/pw/msg/")))
        .collect()
}

#[test]
fn fleet_mode_attempts_a_message_only_once_etcd_has_it_and_deletes_it_once_delivered() {
    let mut d = synced();
    event(&mut d, "order.created");
    assert!(sent(&d).is_empty(), "held until its put commits");
    let puts = message_puts(&d);
    assert_eq!(puts.len(), 1, "{puts:?}");
    let (token, keys) = puts.into_iter().next().unwrap();
    let (_, _, put) = d
        .host()
        .etcd_sent
        .iter()
        .find(|(t, _, _)| *t == token)
        .cloned()
        .unwrap();
    let body: Value = serde_json::from_str(&put.body).unwrap();
    let value = STANDARD
        .decode(body["success"][0]["request_put"]["value"].as_str().unwrap())
        .unwrap();
    let kept = stored::decode(&value).unwrap();
    assert_eq!(keys, [format!("/pw/msg/ab/{}", kept.webhook_id)]);
    assert_eq!(
        (kept.subscription_id.as_str(), kept.event_type.as_str()),
        ("sub_a", "order.created")
    );
    assert_eq!(kept.payload, br#"{"id":1}"#);
    reply(
        &mut d,
        token,
        r#"{"header":{"revision":"8"},"succeeded":true}"#,
    );
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(
        sent(&d)[0].header("webhook-id"),
        Some(kept.webhook_id.as_str())
    );
    assert_eq!(d.host().metric(Metric::FleetOutboxSize), 1);
    answer_last(&mut d, 200, &[]);
    d.on_tick();
    let deletes: Vec<Vec<String>> = outbox_calls(&d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .map(|(_, r)| txn_keys(&r))
        .collect();
    assert!(
        deletes.contains(&vec![format!("/pw/msg/ab/{}", kept.webhook_id)]),
        "{deletes:?}"
    );
    settle(&mut d);
    assert_eq!(d.host().metric(Metric::FleetOutboxSize), 0);
}

#[test]
fn fleet_mode_delivers_from_memory_when_etcd_does_not_take_a_message_and_writes_it_later() {
    let mut d = synced();
    event(&mut d, "order.created");
    let (token, _) = message_puts(&d).into_iter().next().unwrap();
    d.host_mut().etcd_answered.insert(token);
    answer_with_body(&mut d, token, 503, &[], b"etcd unavailable");
    assert_eq!(sent(&d).len(), 1, "delivered from memory");
    assert_eq!(d.host().metric(Metric::FleetEtcdErrors), 1);
    assert!(
        message_puts(&d).is_empty(),
        "written again only after a while"
    );
    d.host().advance(1000);
    d.on_tick();
    assert_eq!(message_puts(&d).len(), 1, "written again");
}

#[test]
fn fleet_mode_keeps_an_exhausted_message_under_dead_for_replay() {
    let mut d = fleet_dispatcher_with(r#", "retry_schedule": ["0s"]"#);
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    event(&mut d, "order.created");
    settle(&mut d);
    let webhook_id = sent(&d)[0].header("webhook-id").unwrap().to_string();
    answer_last(&mut d, 500, &[]);
    d.on_tick();
    let txns: Vec<Vec<String>> = outbox_calls(&d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .map(|(_, r)| txn_keys(&r))
        .collect();
    // The dead record in a txn of its own: etcd out of space still takes the delete.
    assert!(
        txns.contains(&vec![format!("/pw/msg/ab/{webhook_id}")]),
        "{txns:?}"
    );
    assert!(
        txns.contains(&vec![format!("/pw/dead/{webhook_id}")]),
        "{txns:?}"
    );
}

/// Lets the scan find dead lease `d` and wins its claim at etcd revision `revision`.
fn claim_dead_lease(d: &mut Dispatcher<FakeHost>, revision: u64) {
    d.host().advance(500);
    d.on_tick();
    let scan = outbox_calls(d)
        .into_iter()
        .find(|(_, r)| {
            r.path == crate::fleet::etcd::TXN && txn_keys(r).contains(&"/pw/live/".to_string())
        })
        .unwrap();
    let range = |kind: &str, leases: &[&str]| {
        let kvs: Vec<Value> = leases
            .iter()
            .map(|l| json!({"key": b64(format!("/pw/{kind}/{l}").as_bytes()), "value": b64(b"n")}))
            .collect();
        json!({"response_range": {"header": {"revision": "7"}, "kvs": kvs, "count": kvs.len().to_string()}})
    };
    let found = json!({"header": {"revision": "7"}, "succeeded": true, "responses": [
        range("live", &["ab"]), range("owner", &["ab", "d"]), range("claim", &[])]});
    reply(d, scan.0, &found.to_string());
    let (claim, _) = outbox_calls(d)
        .into_iter()
        .find(|(_, r)| txn_keys(r) == ["/pw/claim/d"])
        .unwrap();
    let won = json!({"header": {"revision": revision.to_string()}, "succeeded": true});
    reply(d, claim, &won.to_string());
}

/// The read of a page of lease `d`'s messages, if one is out: (token, limit, start key).
fn claimed_page(d: &Dispatcher<FakeHost>) -> Option<(u32, u64, String)> {
    outbox_calls(d).into_iter().find_map(|(token, r)| {
        let key = key_of(&r).filter(|k| k.starts_with("/pw/msg/d/"))?;
        let body: Value = serde_json::from_str(&r.body).ok()?;
        let limit = body["limit"].as_str()?.parse().ok()?;
        (r.path == crate::fleet::etcd::RANGE).then_some((token, limit, key))
    })
}

/// Answers a page of claimed messages, and the read of their logs that follows (no attempts
/// logged anywhere).
fn reply_page(d: &mut Dispatcher<FakeHost>, token: u32, page: &str) {
    reply(d, token, page);
    let no_logs = r#"{"header":{"revision":"8"},"succeeded":true,"responses":[]}"#;
    for (token, request) in outbox_calls(d) {
        if request.path == crate::fleet::etcd::TXN && request.body.contains("request_range") {
            reply(d, token, no_logs);
        }
    }
}

/// A page answer with `messages` (webhook-id, subscription id, payload) of lease `d`.
fn page_of(messages: &[(&str, &str, &[u8])], more: bool) -> String {
    let kvs: Vec<Value> = messages
        .iter()
        .map(|(id, sub, payload)| {
            let value = stored::encode(id, sub, "order.created", T0, payload).unwrap();
            json!({"key": b64(format!("/pw/msg/d/{id}").as_bytes()), "value": b64(&value)})
        })
        .collect();
    json!({"header": {"revision": "8"}, "count": kvs.len().to_string(), "kvs": kvs, "more": more})
        .to_string()
}

/// Answers the next registry read (due every 500 ms) at etcd revision `revision`.
fn sync_at(d: &mut Dispatcher<FakeHost>, records: &[Value], revision: u64) {
    d.host().advance(500);
    d.on_tick();
    let body = registry_answer(records, records.len(), revision);
    let token = registry_reads(d).last().unwrap().0;
    reply(d, token, &body.to_string());
}

#[test]
fn fleet_mode_claims_a_dead_replicas_messages_and_delivers_them_with_their_webhook_ids() {
    let mut d = synced();
    claim_dead_lease(&mut d, 7);
    assert_eq!(d.host().metric(Metric::FleetClaims), 1);
    let (page, _, _) = claimed_page(&d).expect("a page of the claimed lease");
    let body = page_of(
        &[
            ("msg_dead1", "sub_a", br#"{"n":1}"#),
            ("msg_dead2", "sub_gone", b"{}"),
        ],
        false,
    );
    reply_page(&mut d, page, &body);
    assert_eq!(
        sent(&d).len(),
        1,
        "the message of a deleted subscription is not delivered"
    );
    assert_eq!(sent(&d)[0].header("webhook-id"), Some("msg_dead1"));
    assert_eq!(sent(&d)[0].body, br#"{"n":1}"#);
    answer_last(&mut d, 204, &[]);
    d.on_tick();
    let deleted: Vec<String> = outbox_calls(&d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .flat_map(|(_, r)| txn_keys(&r))
        .collect();
    assert!(
        deleted.contains(&"/pw/msg/d/msg_dead1".to_string()),
        "{deleted:?}"
    );
    assert!(
        deleted.contains(&"/pw/msg/d/msg_dead2".to_string()),
        "{deleted:?}"
    );
}

#[test]
fn fleet_mode_reads_claimed_messages_only_after_a_registry_read_as_recent_as_the_claim() {
    let mut d = fleet_dispatcher();
    claim_dead_lease(&mut d, 8);
    assert!(claimed_page(&d).is_none(), "the registry is not read yet");
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    d.on_tick();
    assert!(
        claimed_page(&d).is_none(),
        "a registry read older than the claim may miss the message's subscription"
    );
    sync_at(&mut d, &[record_json("sub_a", "active", 1)], 8);
    d.on_tick();
    let (page, _, _) = claimed_page(&d).expect("a page once the registry is as recent");
    reply_page(
        &mut d,
        page,
        &page_of(&[("msg_dead1", "sub_a", b"{}")], false),
    );
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(sent(&d)[0].header("webhook-id"), Some("msg_dead1"));
}

#[test]
fn fleet_mode_reads_claimed_messages_only_as_far_as_the_outbox_has_room() {
    let mut d = fleet_dispatcher_with(r#", "max_queue": 2"#);
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    event(&mut d, "order.created");
    settle(&mut d);
    assert_eq!(sent(&d).len(), 1, "our own message, in flight");
    claim_dead_lease(&mut d, 7);
    let (page, limit, _) = claimed_page(&d).unwrap();
    assert_eq!(limit, 1, "the outbox has room for one more");
    reply_page(
        &mut d,
        page,
        &page_of(&[("msg_dead1", "sub_a", b"{}")], true),
    );
    d.host().advance(2000);
    d.on_tick();
    assert!(claimed_page(&d).is_none(), "the outbox is full");
    let own = sent(&d)[0].token;
    answer(&mut d, own, 204, &[]);
    d.on_tick();
    let (page, limit, from) = claimed_page(&d).expect("room again");
    assert_eq!((limit, from.as_str()), (1, "/pw/msg/d/msg_dead1\0"));
    reply_page(
        &mut d,
        page,
        &page_of(&[("msg_dead2", "sub_a", b"{}")], false),
    );
    assert_eq!(d.host().metric(Metric::EventsDropped), 0);
    let ids: Vec<_> = sent(&d).iter().map(|s| s.header("webhook-id")).collect();
    assert_eq!(ids[1..], [Some("msg_dead1"), Some("msg_dead2")]);
}

#[test]
fn fleet_mode_leaves_a_claimed_message_that_does_not_fit_in_etcd_and_reads_it_again() {
    let mut d = fleet_dispatcher_with(r#", "max_queue_bytes": 2048"#);
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    claim_dead_lease(&mut d, 7);
    let (page, _, _) = claimed_page(&d).unwrap();
    let big = [b'x'; 900];
    let two = [
        ("msg_dead1", "sub_a", &big[..]),
        ("msg_dead2", "sub_a", &big[..]),
    ];
    reply_page(&mut d, page, &page_of(&two, false));
    assert_eq!(sent(&d).len(), 1, "only one fits the byte bound");
    let first = sent(&d)[0].token;
    answer(&mut d, first, 204, &[]);
    d.host().advance(1000);
    d.on_tick();
    let (page, _, from) = claimed_page(&d).expect("read again from the start");
    assert_eq!(from, "/pw/msg/d/");
    reply_page(&mut d, page, &page_of(&two[1..], false));
    assert_eq!(d.host().metric(Metric::EventsDropped), 0);
    let ids: Vec<_> = sent(&d).iter().map(|s| s.header("webhook-id")).collect();
    assert_eq!(ids, [Some("msg_dead1"), Some("msg_dead2")]);
}

#[test]
fn fleet_mode_stops_at_once_leaving_pending_messages_in_etcd() {
    let mut d = synced();
    event(&mut d, "order.created");
    settle(&mut d);
    assert_eq!(sent(&d).len(), 1);
    assert!(d.on_done(), "nothing to drain: etcd has the message");
    assert_eq!(d.host().done_calls, 0);
}

#[test]
fn fleet_mode_restarts_resume_the_former_lease_once_nobody_renews_it() {
    let config = format!(r#"{{"delivery": {{"allow_private_destinations": true}}, {FLEET}}}"#);
    let mut d = dispatcher_with(&config);
    let (token, _) = outbox_calls(&d)
        .into_iter()
        .find(|(_, r)| key_of(r).as_deref() == Some("/pw/node/n1"))
        .unwrap();
    let former = json!({"header": {"revision": "7"}, "kvs": [{"key": b64(b"/pw/node/n1"), "value": b64(b"99")}], "count": "1"});
    reply(&mut d, token, &former.to_string());
    let revoke = crate::fleet::etcd::lease_revoke(0x99);
    for _ in 0..20 {
        if d.host().etcd_sent.iter().any(|(_, _, r)| *r == revoke) {
            break;
        }
        for (token, request) in outbox_calls(&d) {
            let body = match request.path {
                crate::fleet::etcd::LEASE_TIME_TO_LIVE => {
                    json!({"header": {"revision": "7"}, "ID": "153", "grantedTTL": "3"}).to_string()
                }
                _ => plain_answer(&request),
            };
            reply(&mut d, token, &body);
        }
        d.host().advance(crate::fleet::journal::PROBE_MS);
        d.on_tick();
    }
    assert!(d.host().etcd_sent.iter().any(|(_, _, r)| *r == revoke));
    assert_eq!(d.host().metric(Metric::FleetNodeConflicts), 0);
}

#[test]
fn fleet_mode_counts_another_process_with_the_same_node_id_and_leaves_its_lease() {
    let config = format!(r#"{{"delivery": {{"allow_private_destinations": true}}, {FLEET}}}"#);
    let mut d = dispatcher_with(&config);
    let (token, _) = outbox_calls(&d)
        .into_iter()
        .find(|(_, r)| key_of(r).as_deref() == Some("/pw/node/n1"))
        .unwrap();
    let former = json!({"header": {"revision": "7"}, "kvs": [{"key": b64(b"/pw/node/n1"), "value": b64(b"99")}], "count": "1"});
    reply(&mut d, token, &former.to_string());
    for _ in 0..10 {
        for (token, request) in outbox_calls(&d) {
            let body = match request.path {
                crate::fleet::etcd::LEASE_TIME_TO_LIVE => {
                    json!({"header": {"revision": "7"}, "ID": "153", "TTL": "2", "grantedTTL": "3"})
                        .to_string()
                }
                _ => plain_answer(&request),
            };
            reply(&mut d, token, &body);
        }
        d.host().advance(crate::fleet::journal::PROBE_MS);
        d.on_tick();
    }
    assert_eq!(d.host().metric(Metric::FleetNodeConflicts), 1);
    let revoke = crate::fleet::etcd::lease_revoke(0x99);
    assert!(!d.host().etcd_sent.iter().any(|(_, _, r)| *r == revoke));
    assert_eq!(
        d.fleet.as_ref().unwrap().durable.journal.lease(),
        Some(LEASE)
    );
}

#[test]
fn fleet_mode_replays_the_copy_etcd_kept_under_its_webhook_id_through_its_own_outbox() {
    let mut d = synced();
    let kept = stored::encode("msg_kept", "sub_a", "order.created", 7, br#"{"n":1}"#).unwrap();
    for (webhook_id, kept) in [
        ("msg_other", kept.clone()),
        ("msg_kept", b"v1\nbroken".to_vec()),
    ] {
        let replay = QueueMessage::Replay {
            webhook_id: webhook_id.into(),
            kept,
        };
        d.host_mut().queue.push_back(replay.encode());
        d.on_queue_ready();
    }
    assert!(
        message_puts(&d).is_empty(),
        "another message's copy, or none"
    );

    let replay = QueueMessage::Replay {
        webhook_id: "msg_kept".into(),
        kept,
    };
    d.host_mut().queue.push_back(replay.encode());
    d.on_queue_ready();
    let puts = message_puts(&d);
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(
        puts[0].1,
        ["/pw/msg/ab/msg_kept"],
        "this replica owns it now"
    );
    assert!(sent(&d).is_empty(), "held until its put commits");
    // Asked again (through another replica's answer, say) while pending: nothing more.
    d.host_mut().queue.push_back(replay.encode());
    d.on_queue_ready();
    assert_eq!(message_puts(&d).len(), 1, "no second copy");
    settle(&mut d);
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(sent(&d)[0].header("webhook-id"), Some("msg_kept"));
    assert_eq!(sent(&d)[0].body, br#"{"n":1}"#);
    answer_last(&mut d, 200, &[]);
    d.on_tick();
    let deletes: Vec<String> = outbox_calls(&d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .flat_map(|(_, r)| txn_keys(&r))
        .collect();
    for key in ["/pw/msg/ab/msg_kept", "/pw/dead/msg_kept"] {
        assert!(deletes.contains(&key.to_string()), "{key}: {deletes:?}");
    }
    settle(&mut d);
    assert_eq!(sent(&d).len(), 1, "delivered once");
}

/// The delivery-log writes sent and not answered yet: token and the keys each puts.
fn log_writes(d: &Dispatcher<FakeHost>) -> Vec<(u32, Vec<String>)> {
    outbox_calls(d)
        .into_iter()
        .filter(|(_, r)| r.path == crate::fleet::etcd::TXN)
        .map(|(t, r)| (t, txn_keys(&r)))
        .filter(|(_, keys)| keys.iter().any(|k| k.starts_with("/pw/log/")))
        .collect()
}

/// One delivered message of `sub_a`, its put and delete settled; its log write not answered.
fn delivered_once() -> Dispatcher<FakeHost> {
    let mut d = synced();
    event(&mut d, "order.created");
    let (token, _) = message_puts(&d).into_iter().next().unwrap();
    reply(
        &mut d,
        token,
        r#"{"header":{"revision":"8"},"succeeded":true}"#,
    );
    answer_last(&mut d, 200, &[]);
    d.on_tick();
    d
}

#[test]
fn fleet_mode_copies_a_subscriptions_delivery_log_to_etcd_under_its_node() {
    let mut d = delivered_once();
    let writes = log_writes(&d);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (token, keys) = writes[0].clone();
    assert_eq!(keys, ["/pw/log/sub_a/n1"]);
    let request = d
        .host()
        .etcd_sent
        .iter()
        .find(|(t, _, _)| *t == token)
        .cloned()
        .unwrap()
        .2;
    let body: Value = serde_json::from_str(&request.body).unwrap();
    let value = STANDARD
        .decode(body["success"][0]["request_put"]["value"].as_str().unwrap())
        .unwrap();
    let log = crate::registry::attempts::parse_log(&value).unwrap();
    assert_eq!(
        log,
        crate::registry::attempts::read(&d.host().store, "sub_a")
    );
    assert_eq!((log.len(), log[0].attempt), (1, 1));
    d.on_tick();
    assert_eq!(log_writes(&d).len(), 1, "one write in flight at a time");
}

#[test]
fn fleet_mode_writes_a_delivery_log_etcd_did_not_take_again() {
    let mut d = delivered_once();
    let (token, _) = log_writes(&d)[0].clone();
    let errors = d.host().metric(Metric::FleetEtcdErrors);
    d.host_mut().etcd_answered.insert(token);
    answer_with_body(&mut d, token, 503, &[], b"");
    assert_eq!(d.host().metric(Metric::FleetEtcdErrors), errors + 1);
    d.host_mut().advance(500);
    d.on_tick();
    let again = log_writes(&d);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].1, ["/pw/log/sub_a/n1"]);
}

#[test]
fn fleet_mode_a_claimed_message_goes_on_from_the_attempts_any_replica_logged() {
    let mut d = synced();
    claim_dead_lease(&mut d, 7);
    let (page, _, _) = claimed_page(&d).unwrap();
    reply(
        &mut d,
        page,
        &page_of(&[("msg_dead1", "sub_a", b"{}")], false),
    );
    assert!(sent(&d).is_empty(), "held until its attempts are read");
    let (read, request) = outbox_calls(&d)
        .into_iter()
        .find(|(_, r)| r.body.contains("request_range"))
        .expect("the read of its subscription's logs");
    assert_eq!(txn_keys(&request), ["/pw/log/sub_a/"]);
    let logged = json!([{"webhook_id": "msg_dead1", "event_type": "order.created", "attempt": 3,
        "timestamp": "2026-11-18T08:00:00.000Z", "duration_ms": 1, "state": "retrying"}]);
    let kv = json!({"key": b64(b"/pw/log/sub_a/n2"), "value": b64(logged.to_string().as_bytes())});
    let found = json!({"header": {"revision": "8"}, "succeeded": true,
        "responses": [{"response_range": {"header": {"revision": "8"}, "kvs": [kv]}}]});
    reply(&mut d, read, &found.to_string());
    assert_eq!(sent(&d)[0].header("webhook-id"), Some("msg_dead1"));
    answer_last(&mut d, 503, &[]);
    d.on_tick();
    let log = crate::registry::attempts::read(&d.host().store, "sub_a");
    assert_eq!(
        (log[0].webhook_id.as_str(), log[0].attempt),
        ("msg_dead1", 4)
    );
}

#[test]
fn fleet_mode_reads_a_claimed_pages_logs_a_few_subscriptions_at_a_time() {
    let mut d = synced();
    claim_dead_lease(&mut d, 7);
    let (page, _, _) = claimed_page(&d).unwrap();
    let subs = ["sub_a", "sub_b", "sub_c", "sub_d", "sub_e"];
    let ids: Vec<String> = (0..subs.len()).map(|n| format!("msg_dead{n}")).collect();
    let messages: Vec<(&str, &str, &[u8])> = ids
        .iter()
        .zip(subs)
        .map(|(id, sub)| (id.as_str(), sub, &b"{}"[..]))
        .collect();
    reply(&mut d, page, &page_of(&messages, false));
    let no_logs = r#"{"header":{"revision":"8"},"succeeded":true,"responses":[]}"#;
    let mut read = Vec::new();
    while let Some((token, request)) = outbox_calls(&d)
        .into_iter()
        .find(|(_, r)| r.body.contains("request_range"))
    {
        assert!(sent(&d).is_empty(), "held until every log was read");
        read.push(txn_keys(&request));
        reply(&mut d, token, no_logs);
    }
    let log = |s: &str| format!("/pw/log/{s}/");
    assert_eq!(
        read,
        [
            subs[..4].iter().map(|s| log(s)).collect::<Vec<_>>(),
            vec![log("sub_e")]
        ]
    );
    assert_eq!(
        sent(&d).len(),
        1,
        "sub_a's; the others are not in the registry"
    );
}

#[test]
fn fleet_mode_recovers_what_this_replica_keeps_and_its_dead_copy_goes_once_delivered() {
    let mut d = fleet_dispatcher_with(r#", "retry_schedule": ["0s"]"#);
    answer_etcd(&mut d, &[record_json("sub_a", "active", 1)], 1);
    event(&mut d, "order.created");
    settle(&mut d);
    let webhook_id = sent(&d)[0].header("webhook-id").unwrap().to_string();
    answer_last(&mut d, 500, &[]);
    d.on_tick();
    let dead = format!("/pw/dead/{webhook_id}");
    let dead_writes = |d: &Dispatcher<FakeHost>| {
        let calls = outbox_calls(d).into_iter();
        let txns = calls.filter(|(_, r)| r.path == crate::fleet::etcd::TXN);
        let keys: Vec<String> = txns.flat_map(|(_, r)| txn_keys(&r)).collect();
        keys.iter().filter(|k| **k == dead).count()
    };
    assert_eq!(dead_writes(&d), 1, "kept under dead");
    settle(&mut d);
    assert_eq!(dead_writes(&d), 0);
    let puts_before = message_puts(&d).len();
    let recover = QueueMessage::Recover {
        subscription_id: "sub_a".into(),
        since_ms: 0,
    };
    d.host_mut().queue.push_back(recover.encode());
    d.on_queue_ready();
    let puts = message_puts(&d);
    assert_eq!(puts.len(), puts_before + 1, "journaled again: {puts:?}");
    settle(&mut d);
    assert_eq!(sent(&d).len(), 2);
    assert_eq!(sent(&d)[1].header("webhook-id"), Some(webhook_id.as_str()));
    answer_last(&mut d, 200, &[]);
    d.on_tick();
    assert_eq!(dead_writes(&d), 1, "and deleted once delivered");
}

/// The unanswered reads of `/pw/revoked/`.
fn revocation_reads(d: &Dispatcher<FakeHost>) -> Vec<u32> {
    unanswered(d)
        .into_iter()
        .filter(|(_, r)| key_of(r).is_some_and(|k| k == "/pw/revoked/"))
        .map(|(token, _)| token)
        .collect()
}

#[test]
fn fleet_mode_reads_portal_revocations_into_shared_data_every_sync_interval() {
    let mut d = fleet_dispatcher();
    // The first read went out at start (and the stand-in answered it: none).
    assert!(revocation_reads(&d).is_empty());
    d.host().advance(500);
    d.on_tick();
    let reads = revocation_reads(&d);
    assert_eq!(reads.len(), 1, "one read per sync_interval");
    let up_to = T0 + 500;
    let kvs = json!([{"key": b64(b"/pw/revoked/acme"), "value": b64(up_to.to_string().as_bytes()),
                      "mod_revision": "9"}]);
    let body = json!({"header": {"revision": "9"}, "kvs": kvs, "count": "1"});
    reply(&mut d, reads[0], &body.to_string());
    let store = d.host().store.clone();
    assert_eq!(
        crate::registry::portal::revoked_up_to(&store, "acme"),
        Some(up_to)
    );
    assert_eq!(crate::registry::portal::revoked_up_to(&store, "beta"), None);
    // Not again before the interval has passed.
    d.on_tick();
    assert!(revocation_reads(&d).is_empty());
}
