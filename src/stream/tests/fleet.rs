//! Fleet mode's API writes against a fake host: answered only once etcd's txn says so, and
//! every other outcome (refused call, bad answers, limit, stale record, gone) with the cache
//! left as etcd has it.

use crate::config;
use crate::fleet::auth::Pass;
use crate::model::subscription::{Status, Subscription};
use crate::stream::fake::{logged, FakeStreamHost};
use crate::stream::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "key-acme-0123456789";
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";
const ID: &str = "sub_AAAAAAAAAAAAAAAAAAAAAAAA";

fn fleet_filter() -> Rc<Filter<FakeStreamHost>> {
    filter_with(true)
}

fn filter_with(fleet: bool) -> Rc<Filter<FakeStreamHost>> {
    read_filter_of(fleet.then(fleet_section))
}

/// Fleet mode with etcd's authentication (`fleet.username`).
fn authed_filter() -> Rc<Filter<FakeStreamHost>> {
    read_filter_of(Some(json!({"cluster": "webhooks_etcd", "prefix": "/pw",
                               "username": "webhooks", "password": "s3cret-pw"})))
}

fn fleet_section() -> Value {
    json!({"cluster": "webhooks_etcd", "prefix": "/pw"})
}

/// A filter whose dispatcher applied its first registry read.
fn read_filter_of(fleet: Option<Value>) -> Rc<Filter<FakeStreamHost>> {
    let filter = filter_of(fleet);
    let read = watchdog::registry_read_value(true);
    host(&filter)
        .store()
        .set(watchdog::REGISTRY_READ_KEY, read, None)
        .unwrap();
    filter
}

/// A filter whose dispatcher has not read etcd's registry yet.
fn unread_filter_with(fleet: bool) -> Rc<Filter<FakeStreamHost>> {
    filter_of(fleet.then(fleet_section))
}

fn filter_of(fleet: Option<Value>) -> Rc<Filter<FakeStreamHost>> {
    let sha: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut config = json!({
        "events": [{"type": "order.created", "method": "POST", "path": "/orders"}],
        "api": {"keys": [{"consumer": "acme", "sha256": sha}],
                "max_subscriptions_per_consumer": 2}
    });
    if let Some(fleet) = fleet {
        config["fleet"] = fleet;
    }
    let config = config::parse(config.to_string().as_bytes()).unwrap();
    let filter = Rc::new(Filter::new(Rc::new(config), FakeStreamHost::default()));
    filter.configure();
    filter
}

fn host(f: &Filter<FakeStreamHost>) -> &FakeStreamHost {
    &f.host
}

fn registry(f: &Filter<FakeStreamHost>) -> Registry<Rc<crate::registry::store::MemoryStore>> {
    Registry::new(host(f).store())
}

/// Sends an API call with its whole body; the stream it runs on.
fn call(
    f: &Rc<Filter<FakeStreamHost>>,
    method: &str,
    path: &str,
    body: &str,
) -> Stream<FakeStreamHost> {
    let length = body.len().to_string();
    host(f).request(&[
        (":method", method),
        (":path", path),
        ("x-api-key", KEY),
        ("content-type", "application/json"),
        ("content-length", &length),
    ]);
    let mut s = Stream::new(Rc::clone(f));
    assert_eq!(s.on_request_headers(body.is_empty()), Flow::Pause);
    if !body.is_empty() {
        let size = host(f).request_data(body.as_bytes());
        assert_eq!(s.on_request_body(size, true), Flow::Pause);
    }
    s
}

fn create(f: &Rc<Filter<FakeStreamHost>>) -> Stream<FakeStreamHost> {
    let body = json!({"url": "https://hooks.example.com/in", "events": ["order.*"]});
    call(f, "POST", SUBSCRIPTIONS, &body.to_string())
}

/// etcd answers the stream's call.
fn answer(
    f: &Filter<FakeStreamHost>,
    s: &mut Stream<FakeStreamHost>,
    status: Option<&str>,
    body: &[u8],
) {
    *host(f).etcd_reply.borrow_mut() = (status.map(str::to_string), body.to_vec());
    s.on_etcd_answer(body.len());
}

fn replies(f: &Filter<FakeStreamHost>) -> usize {
    host(f).replies.borrow().len()
}

/// The last reply: status, JSON body, headers.
fn reply(f: &Filter<FakeStreamHost>) -> (u16, Value, Vec<(String, String)>) {
    let replies = host(f).replies.borrow();
    let last = replies.last().expect("a reply");
    let body = serde_json::from_slice(&last.body).unwrap_or(Value::Null);
    (last.status, body, last.headers.clone())
}

/// The last etcd request's body.
fn sent(f: &Filter<FakeStreamHost>) -> Value {
    let sent = host(f).etcd_sent.borrow();
    let (_, cluster, request) = sent.last().expect("an etcd call");
    assert_eq!(
        (cluster.as_str(), request.path),
        ("webhooks_etcd", crate::fleet::etcd::TXN)
    );
    serde_json::from_str(&request.body).unwrap()
}

/// The record the last txn puts first.
fn put_record(f: &Filter<FakeStreamHost>) -> Subscription {
    let value = sent(f)["success"][0]["request_put"]["value"].clone();
    serde_json::from_slice(&STANDARD.decode(value.as_str().unwrap()).unwrap()).unwrap()
}

fn header() -> Value {
    json!({"cluster_id": "1", "member_id": "2", "revision": "40", "raft_term": "2"})
}

fn succeeded() -> Vec<u8> {
    let put = json!({"response_put": {"header": header()}});
    json!({"header": header(), "succeeded": true, "responses": [put.clone(), put]})
        .to_string()
        .into_bytes()
}

fn kv(key: &str, value: &[u8], mod_revision: i64) -> Value {
    json!({"key": STANDARD.encode(key), "create_revision": "2",
           "mod_revision": mod_revision.to_string(), "version": "1",
           "value": STANDARD.encode(value)})
}

/// A failed txn whose ranges found `found` (None: an empty range).
fn failed(found: &[Option<Value>]) -> Vec<u8> {
    let ranges: Vec<Value> = found
        .iter()
        .map(|kv| {
            let mut r = json!({"header": header()});
            if let Some(kv) = kv {
                r["kvs"] = json!([kv]);
                r["count"] = json!("1");
            }
            json!({"response_range": r})
        })
        .collect();
    json!({"header": header(), "responses": ranges})
        .to_string()
        .into_bytes()
}

/// A create's reads, acme's slots `taken` (keys only) and no record: the answer to its first
/// txn (`first`) or to one that failed.
fn slots_read(taken: &[u64], first: bool) -> Vec<u8> {
    create_read(taken, first, 0)
}

/// [`slots_read`] with `caps` cap slots in the registry (none in the windows read).
fn create_read(taken: &[u64], first: bool, caps: u64) -> Vec<u8> {
    let kvs: Vec<Value> = taken
        .iter()
        .map(|n| {
            json!({"key": STANDARD.encode(format!("/pw/slot/acme/{n}")),
                   "create_revision": "2", "mod_revision": "2", "version": "1"})
        })
        .collect();
    let mut slots = json!({"header": header()});
    if !kvs.is_empty() {
        slots["count"] = json!(kvs.len().to_string());
        slots["kvs"] = json!(kvs);
    }
    let empty = json!({"response_range": {"header": header()}});
    let mut counted = json!({"header": header()});
    if caps > 0 {
        counted["count"] = json!(caps.to_string());
    }
    let counted = json!({ "response_range": counted });
    let mut answer = json!({"header": header(),
        "responses": [{"response_range": slots}, empty, counted, counted, empty, empty, empty]});
    if first {
        answer["succeeded"] = json!(true);
    }
    answer.to_string().into_bytes()
}

/// The slot the last txn takes.
fn slot_taken(f: &Filter<FakeStreamHost>) -> String {
    let key = sent(f)["compare"][0]["key"].as_str().unwrap().to_string();
    String::from_utf8(STANDARD.decode(key).unwrap()).unwrap()
}

/// A record of the consumer as the fleet's sync put it in the cache.
fn synced(f: &Filter<FakeStreamHost>, version: u64) -> Subscription {
    let sub = Subscription {
        id: ID.into(),
        consumer: "acme".into(),
        url: "https://hooks.example.com/in".into(),
        events: vec!["order.*".into()],
        description: String::new(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        secrets: vec![crate::model::subscription::SigningSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at_ms: None,
        }],
        is_static: false,
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
        version,
    };
    registry(f).apply_synced(&sub).unwrap();
    sub
}

fn sub_path() -> String {
    format!("{SUBSCRIPTIONS}/{ID}")
}

#[test]
fn a_create_is_answered_201_only_once_etcd_has_it() {
    let f = fleet_filter();
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), &slots_read(&[], true));
    assert_eq!(replies(&f), 0, "not before etcd's answer");
    let record = put_record(&f);
    assert!(
        registry(&f).get(&record.id).is_none(),
        "not in the cache yet"
    );
    answer(&f, &mut s, Some("200"), &succeeded());
    let (status, body, headers) = reply(&f);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], json!(record.id));
    assert!(headers.contains(&("location".into(), format!("{SUBSCRIPTIONS}/{}", record.id))));
    assert_eq!(registry(&f).get(&record.id).unwrap().0, record);
    assert_eq!(host(&f).etcd_errors.get(), 0);
    // A late or stray answer does nothing more.
    answer(&f, &mut s, Some("200"), &succeeded());
    assert_eq!(replies(&f), 1);
}

#[test]
fn a_create_that_lost_its_slot_tries_another_then_stops_at_the_limit() {
    let f = fleet_filter();
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), &slots_read(&[], true));
    let first = slot_taken(&f);
    // Taken meanwhile by another create: the other of the limit's two slots is tried.
    let lost = kv(&first, ID.as_bytes(), 7);
    answer(
        &f,
        &mut s,
        Some("200"),
        &failed(&[Some(lost), None, None, None, None, None, None]),
    );
    assert_eq!((replies(&f), host(&f).etcd_sent.borrow().len()), (0, 3));
    let second = slot_taken(&f);
    assert!(
        [first.as_str(), second.as_str()] == ["/pw/slot/acme/0", "/pw/slot/acme/1"]
            || [first.as_str(), second.as_str()] == ["/pw/slot/acme/1", "/pw/slot/acme/0"],
        "{first} then {second}"
    );
    // Taken too: the consumer is at its limit.
    answer(&f, &mut s, Some("200"), &slots_read(&[0, 1], false));
    let (status, body, _) = reply(&f);
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("limit_reached")),
        "{body}"
    );
    assert_eq!(
        body["error"]["message"],
        "at most 2 subscriptions per consumer"
    );
    assert_eq!(registry(&f).ids_for_consumer("acme").len(), 0);
}

#[test]
fn a_create_past_the_registry_limit_is_refused_with_its_message() {
    let f = fleet_filter();
    let cap = f.config.api.max_subscriptions as u64;
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), &create_read(&[], true, cap - 1));
    assert_eq!(replies(&f), 0, "one place left: the create's txn is sent");
    answer(&f, &mut s, Some("200"), &create_read(&[], false, cap));
    let (status, body, _) = reply(&f);
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("limit_reached")),
        "{body}"
    );
    assert_eq!(
        body["error"]["message"],
        format!("at most {cap} subscriptions in all (every consumer together); delete some first")
    );
    assert_eq!(registry(&f).ids_for_consumer("acme").len(), 0);
    assert_eq!(host(&f).etcd_errors.get(), 0);
}

fn assert_unavailable(f: &Filter<FakeStreamHost>, reason: &str) {
    let (status, body, headers) = reply(f);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "the subscription store did not confirm the write, nothing was changed; try again"
    );
    assert!(headers.contains(&("retry-after".into(), "1".into())));
    let lines = logged();
    assert!(
        lines
            .iter()
            .any(|(level, line)| *level == log::Level::Warn && line.contains(reason)),
        "{lines:?}"
    );
}

#[test]
fn a_refused_call_or_a_bad_answer_is_503_and_changes_nothing() {
    logged();
    let f = fleet_filter();
    host(&f).refuse_etcd.set(true);
    let _s = create(&f);
    assert_unavailable(&f, "the call could not be started");
    assert_eq!(host(&f).etcd_errors.get(), 1);

    for (status, body, reason) in [
        (
            Some("503"),
            &b"upstream connect error"[..],
            "answered HTTP 503",
        ),
        (None, b"", "did not answer (timeout or reset)"),
        (
            Some("200"),
            b"\x00garbage",
            "etcd's answer is not JSON: expected value at line 1 column 1",
        ),
    ] {
        let f = fleet_filter();
        let mut s = create(&f);
        answer(&f, &mut s, status, body);
        assert_unavailable(&f, reason);
        assert_eq!(host(&f).etcd_errors.get(), 1);
        assert_eq!(
            registry(&f).ids_for_consumer("acme").len(),
            0,
            "cache untouched"
        );
    }
}

/// etcd's refusals name keys and the prefix: the log has them, the API's answer never does.
#[test]
fn etcd_error_texts_reach_the_log_not_the_api() {
    let refusal = br#"{"error":"etcdserver: permission denied on /pw/sub/sub_1","code":7}"#;
    logged();
    let f = fleet_filter();
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), refusal);
    let (status, body, _) = reply(&f);
    assert_eq!(status, 503);
    let text = body.to_string();
    assert!(
        !text.contains("/pw") && !text.contains("etcdserver"),
        "{text}"
    );
    assert!(
        logged()
            .iter()
            .any(|(_, line)| line.contains("permission denied on /pw/sub/sub_1")),
        "the detail is logged"
    );

    let f = fleet_filter();
    let mut s = retry(&f, "msg_1");
    answer(&f, &mut s, Some("200"), refusal);
    let (status, body, _) = reply(&f);
    assert_eq!(status, 503);
    let text = body.to_string();
    assert!(
        !text.contains("/pw") && !text.contains("etcdserver"),
        "{text}"
    );
}

#[test]
fn a_patch_of_a_record_etcd_has_newer_is_handled_again_on_it() {
    let f = fleet_filter();
    synced(&f, 4);
    let mut s = call(&f, "PATCH", &sub_path(), r#"{"status":"disabled"}"#);
    // The first round reads: etcd has version 6, described since.
    let mut newer = synced(&f, 4);
    newer.version = 6;
    newer.description = "changed elsewhere".into();
    let held = kv(
        &format!("/pw/sub/{ID}"),
        &serde_json::to_vec(&newer).unwrap(),
        30,
    );
    answer(&f, &mut s, Some("200"), &failed(&[Some(held)]));
    assert_eq!(replies(&f), 0);
    assert_eq!(
        registry(&f).get(ID).unwrap().0,
        newer,
        "the cache took etcd's record"
    );
    assert_eq!(host(&f).etcd_sent.borrow().len(), 2, "the call ran again");
    let held = kv(
        &format!("/pw/sub/{ID}"),
        &serde_json::to_vec(&newer).unwrap(),
        30,
    );
    answer(&f, &mut s, Some("200"), &failed(&[Some(held)]));
    assert_eq!(sent(&f)["compare"][1]["mod_revision"], json!("30"));
    let written = put_record(&f);
    assert_eq!((written.version, written.status), (7, Status::Disabled));
    assert_eq!(written.description, "changed elsewhere");
    answer(&f, &mut s, Some("200"), &succeeded());
    let (status, body, _) = reply(&f);
    assert_eq!(
        (status, &body["description"]),
        (200, &json!("changed elsewhere")),
        "{body}"
    );
    assert_eq!(registry(&f).get(ID).unwrap().0, written);
}

#[test]
fn a_record_that_keeps_changing_is_503_after_four_rehandles() {
    logged();
    let f = fleet_filter();
    synced(&f, 4);
    let mut s = call(&f, "PATCH", &sub_path(), r#"{"status":"disabled"}"#);
    let mut newer = synced(&f, 4);
    for version in 5..10 {
        newer.version = version;
        let held = kv(
            &format!("/pw/sub/{ID}"),
            &serde_json::to_vec(&newer).unwrap(),
            30,
        );
        answer(&f, &mut s, Some("200"), &failed(&[Some(held)]));
    }
    assert_unavailable(&f, "the record kept changing (4 times) while written");
    assert_eq!(host(&f).etcd_sent.borrow().len(), 5);
}

#[test]
fn a_record_etcd_does_not_have_is_404_and_leaves_the_cache() {
    let f = fleet_filter();
    synced(&f, 4);
    let mut s = call(&f, "POST", &format!("{}/rotate-secret", sub_path()), "");
    answer(&f, &mut s, Some("200"), &failed(&[None]));
    let (status, body, _) = reply(&f);
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    assert!(registry(&f).get(ID).is_none());
}

#[test]
fn a_delete_is_answered_204_once_etcd_has_it() {
    let f = fleet_filter();
    let record = synced(&f, 4);
    let mut s = call(&f, "DELETE", &sub_path(), "");
    let held = kv(
        &format!("/pw/sub/{ID}"),
        &serde_json::to_vec(&record).unwrap(),
        30,
    );
    let slot = kv("/pw/slot/acme/1", ID.as_bytes(), 31);
    answer(&f, &mut s, Some("200"), &failed(&[Some(held), Some(slot)]));
    assert_eq!(replies(&f), 0);
    let deleted = &sent(&f)["success"];
    let logs = format!("/pw/log/{ID}/");
    let logs_end = crate::fleet::etcd::prefix_end(logs.as_bytes());
    let health = format!("/pw/health/{ID}/");
    let health_end = crate::fleet::etcd::prefix_end(health.as_bytes());
    assert_eq!(
        deleted,
        &json!([
            {"request_delete_range": {"key": STANDARD.encode(format!("/pw/sub/{ID}"))}},
            {"request_delete_range": {"key": STANDARD.encode(&logs),
                                      "range_end": STANDARD.encode(logs_end)}},
            {"request_delete_range": {"key": STANDARD.encode(&health),
                                      "range_end": STANDARD.encode(health_end)}},
            {"request_delete_range": {"key": STANDARD.encode("/pw/slot/acme/1")}}
        ])
    );
    assert!(registry(&f).get(ID).is_some());
    answer(&f, &mut s, Some("200"), &succeeded());
    assert_eq!(reply(&f).0, 204);
    assert!(registry(&f).get(ID).is_none());
}

#[test]
fn reads_and_single_process_writes_never_call_etcd() {
    let f = fleet_filter();
    synced(&f, 4);
    let _s = call(&f, "GET", &sub_path(), "");
    assert_eq!(reply(&f).0, 200);
    assert!(host(&f).etcd_sent.borrow().is_empty());

    let f = filter_with(false);
    let _s = create(&f);
    let (status, body, _) = reply(&f);
    assert_eq!(status, 201, "answered at once");
    assert!(registry(&f).get(body["id"].as_str().unwrap()).is_some());
    assert!(host(&f).etcd_sent.borrow().is_empty());
}

/// A retry of `webhook_id`, which no attempt log of this replica has.
fn retry(f: &Rc<Filter<FakeStreamHost>>, webhook_id: &str) -> Stream<FakeStreamHost> {
    call(
        f,
        "POST",
        &format!("/webhooks/deliveries/{webhook_id}/retry"),
        "",
    )
}

/// etcd's answer to a range: `kvs`.
fn range_answer(kvs: &[Value]) -> Vec<u8> {
    json!({"header": header(), "kvs": kvs, "count": kvs.len().to_string()})
        .to_string()
        .into_bytes()
}

#[test]
fn a_retry_no_log_here_has_reads_the_kept_copy_from_etcd_and_replays_it() {
    let f = fleet_filter();
    synced(&f, 1);
    let kept = crate::fleet::stored::encode("msg_1", ID, "order.created", 7, b"{\"n\":1}").unwrap();
    let mut s = retry(&f, "msg_1");
    assert_eq!(replies(&f), 0, "the stream waits for etcd");
    {
        let calls = host(&f).etcd_sent.borrow();
        let (_, cluster, request) = calls.last().expect("an etcd call");
        assert_eq!(cluster, "webhooks_etcd");
        assert_eq!(request, &crate::fleet::etcd::range(b"/pw/dead/msg_1"));
    }
    answer(
        &f,
        &mut s,
        Some("200"),
        &range_answer(&[kv("/pw/dead/msg_1", &kept, 9)]),
    );
    let (status, body, _) = reply(&f);
    assert_eq!((status, body["status"].as_str()), (202, Some("queued")));
    let queued = host(&f).queue.borrow().clone();
    let want = QueueMessage::Replay {
        webhook_id: "msg_1".into(),
        kept,
    };
    assert_eq!(queued, [want.encode()]);

    let mut s = retry(&f, "msg_2");
    answer(&f, &mut s, Some("200"), &range_answer(&[]));
    let (status, body, _) = reply(&f);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(host(&f).queue.borrow().len(), 1, "nothing queued for a 404");
}

#[test]
fn a_retry_whose_kept_copy_etcd_cannot_give_is_503() {
    logged();
    let f = fleet_filter();
    host(&f).refuse_etcd.set(true);
    let _s = retry(&f, "msg_1");
    let why =
        "the message is not in this replica's logs and its kept copy could not be read; try again";
    let (status, body, headers) = reply(&f);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(body["error"]["message"], why);
    assert!(headers.contains(&("retry-after".into(), "1".into())));
    host(&f).refuse_etcd.set(false);
    let mut lines = logged();
    for (status, body, reason) in [
        (
            Some("503"),
            &b"no healthy upstream"[..],
            "answered HTTP 503",
        ),
        (None, b"", "did not answer (timeout or reset)"),
    ] {
        let mut s = retry(&f, "msg_1");
        answer(&f, &mut s, status, body);
        let (code, body, _) = reply(&f);
        assert_eq!((code, body["error"]["message"].clone()), (503, json!(why)));
        let new = logged();
        assert!(new.iter().any(|(_, line)| line.contains(reason)), "{new:?}");
        lines.extend(new);
    }
    assert_eq!(host(&f).etcd_errors.get(), 3);
    assert!(host(&f).queue.borrow().is_empty());
    assert!(
        lines.iter().any(|(level, line)| *level == log::Level::Warn
            && line.contains("a retry could not read its message from etcd")),
        "{lines:?}"
    );
}

#[test]
fn an_etcd_answer_after_the_stream_ended_sends_and_queues_nothing() {
    let f = fleet_filter();
    synced(&f, 1);
    let kept = crate::fleet::stored::encode("msg_1", ID, "order.created", 7, b"{}").unwrap();
    let mut s = retry(&f, "msg_1");
    s.on_log(); // the client went away while etcd was asked
    answer(
        &f,
        &mut s,
        Some("200"),
        &range_answer(&[kv("/pw/dead/msg_1", &kept, 9)]),
    );
    assert_eq!(replies(&f), 0);
    assert!(host(&f).queue.borrow().is_empty());
}

fn logged_attempt(webhook_id: &str, timestamp: &str) -> Value {
    json!({"webhook_id": webhook_id, "event_type": "order.created", "attempt": 1,
           "timestamp": timestamp, "response_status": 500, "duration_ms": 3,
           "state": "retrying"})
}

#[test]
fn the_delivery_log_is_every_replicas_read_from_etcd() {
    let f = fleet_filter();
    synced(&f, 1);
    host(&f).now_ms.set(1_795_000_000_000);
    let mut s = call(&f, "GET", &format!("{}/deliveries", sub_path()), "");
    let sent = host(&f).etcd_sent.borrow().last().cloned().unwrap();
    assert_eq!(sent.2, crate::fleet::log::lookup(&Keys::new("/pw"), ID));
    let a = json!([logged_attempt("msg_a", "2026-11-18T08:00:02.000Z")]);
    let b = json!([logged_attempt("msg_b", "2026-11-18T08:00:03.000Z")]);
    let logs = [
        kv(&format!("/pw/log/{ID}/node-a"), a.to_string().as_bytes(), 5),
        kv(&format!("/pw/log/{ID}/node-b"), b.to_string().as_bytes(), 6),
    ];
    answer(&f, &mut s, Some("200"), &range_answer(&logs));
    let (status, body, _) = reply(&f);
    let ids: Vec<&Value> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["webhook_id"])
        .collect();
    assert_eq!((status, ids), (200, vec![&json!("msg_b"), &json!("msg_a")]));
}

#[test]
fn without_etcd_the_delivery_log_is_this_replicas_own() {
    let f = fleet_filter();
    synced(&f, 1);
    let own = crate::registry::attempts::parse_log(
        json!([logged_attempt("msg_own", "2026-11-18T08:00:02.000Z")])
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    registry(&f).record_attempts(ID, own).unwrap();
    let path = format!("{}/deliveries", sub_path());
    let mut s = call(&f, "GET", &path, "");
    answer(&f, &mut s, Some("503"), b"");
    host(&f).refuse_etcd.set(true);
    call(&f, "GET", &path, "");
    for reply in host(&f).replies.borrow().iter() {
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            (reply.status, &body["data"][0]["webhook_id"]),
            (200, &json!("msg_own"))
        );
    }
    assert_eq!((replies(&f), host(&f).etcd_errors.get()), (2, 2));
    let lines = logged();
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("answered with this replica's attempts")),
        "{lines:?}"
    );
}

#[test]
fn another_consumers_delivery_log_is_not_read_from_etcd() {
    let f = fleet_filter();
    let mut other = synced(&f, 1);
    other.consumer = "globex".into();
    registry(&f).apply_synced(&other).unwrap();
    call(&f, "GET", &format!("{}/deliveries", sub_path()), "");
    assert_eq!(reply(&f).0, 404);
    assert!(host(&f).etcd_sent.borrow().is_empty());
}

/// A record etcd holds sealed with a key this replica lacks is kept sealed in the cache: every
/// call on it answers 503, never a secret or a signature from something wrong.
#[test]
fn a_subscription_whose_secret_cannot_be_read_answers_503() {
    let f = fleet_filter();
    let mut sub = synced(&f, 2);
    sub.secrets[0].secret = "pws1.0123456789abcdef.AAAA".into();
    registry(&f).apply_synced(&sub).unwrap();
    for (method, path, body) in [
        ("GET", sub_path(), ""),
        ("PATCH", sub_path(), r#"{"description":"x"}"#),
        ("POST", format!("{}/rotate-secret", sub_path()), ""),
        ("DELETE", sub_path(), ""),
    ] {
        let _s = call(&f, method, &path, body);
        let (status, body, headers) = reply(&f);
        assert_eq!(status, 503, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(!body.to_string().contains("0123456789abcdef"), "{body}");
        assert!(headers.contains(&("retry-after".into(), "1".into())));
    }
    assert!(host(&f).etcd_sent.borrow().is_empty(), "nothing written");
}
/// Issue 20: a restarted replica answered 404 and empty lists until its first registry read.
#[test]
fn every_call_is_503_until_the_first_registry_read_is_applied() {
    let f = unread_filter_with(true);
    for (method, path) in [
        ("GET", format!("{SUBSCRIPTIONS}/{ID}")),
        ("GET", SUBSCRIPTIONS.to_string()),
        ("POST", SUBSCRIPTIONS.to_string()),
        ("DELETE", format!("{SUBSCRIPTIONS}/{ID}")),
    ] {
        host(&f).request(&[(":method", method), (":path", &path), ("x-api-key", KEY)]);
        let mut s = Stream::new(Rc::clone(&f));
        s.on_request_headers(false);
        let (status, body, headers) = reply(&f);
        assert_eq!(status, 503, "{method} {path}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));
    }
    assert!(host(&f).etcd_sent.borrow().is_empty());
    // A wrong key still learns only that (401), and once the read is applied, calls run.
    host(&f).request(&[
        (":method", "GET"),
        (":path", SUBSCRIPTIONS),
        ("x-api-key", "nope"),
    ]);
    Stream::new(Rc::clone(&f)).on_request_headers(true);
    assert_eq!(reply(&f).0, 401);
    let read = watchdog::registry_read_value(true);
    host(&f)
        .store()
        .set(watchdog::REGISTRY_READ_KEY, read, None)
        .unwrap();
    call(&f, "GET", SUBSCRIPTIONS, "").on_request_headers(true);
    assert_eq!(reply(&f).0, 200);
    // Without fleet mode there is no read to wait for.
    let single = unread_filter_with(false);
    call(&single, "GET", SUBSCRIPTIONS, "");
    assert_eq!(reply(&single).0, 200);
}

#[test]
fn a_committed_write_reports_the_record_it_put_into_the_cache() {
    let f = fleet_filter();
    let before = host(&f).queue.borrow().len();
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), &slots_read(&[], true));
    answer(&f, &mut s, Some("200"), &succeeded());
    assert_eq!(reply(&f).0, 201);
    let queue = host(&f).queue.borrow();
    assert_eq!(queue.len(), before + 1);
    let id = reply(&f).1["id"].as_str().unwrap().to_string();
    assert_eq!(
        QueueMessage::decode(queue.last().unwrap()).unwrap(),
        QueueMessage::Cached {
            subscription_id: id,
            mod_revision: 40
        }
    );
}

// ---- etcd's authentication (`fleet.username`) -------------------------------------------------

const INVALID_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#;

fn publish(f: &Filter<FakeStreamHost>, token: &str) {
    crate::fleet::auth::publish(&host(f).store(), &Pass::Token(token.into()));
}

fn shared(f: &Filter<FakeStreamHost>) -> Pass {
    crate::fleet::auth::shared_pass(&host(f).store()).0
}

/// The Authorization of every etcd call so far.
fn carried(f: &Filter<FakeStreamHost>) -> Vec<Option<String>> {
    host(f).etcd_auth.borrow().clone()
}

#[test]
fn a_write_carries_the_dispatchers_token_and_none_goes_without_one() {
    let f = authed_filter();
    let _ = logged();
    create(&f);
    assert!(
        host(&f).etcd_sent.borrow().is_empty(),
        "no token yet: nothing sent"
    );
    assert_unavailable(&f, "could not be started");
    publish(&f, "t1.1");
    let mut s = create(&f);
    answer(&f, &mut s, Some("200"), &slots_read(&[], true));
    answer(&f, &mut s, Some("200"), &succeeded());
    assert_eq!(reply(&f).0, 201);
    assert_eq!(
        carried(&f),
        [Some("t1.1".to_string()), Some("t1.1".to_string())]
    );
    // Without fleet.username nothing carries a token, whatever shared data holds.
    let plain = fleet_filter();
    publish(&plain, "t1.1");
    create(&plain);
    assert_eq!(carried(&plain), [None]);
}

#[test]
fn a_rejected_token_is_replaced_by_the_dispatchers_newer_one_once() {
    let f = authed_filter();
    publish(&f, "t1.1");
    let mut s = create(&f);
    let first = host(&f).etcd_sent.borrow()[0].2.clone();
    publish(&f, "t2.2");
    answer(&f, &mut s, Some("401"), INVALID_TOKEN.as_bytes());
    assert_eq!(replies(&f), 0, "sent again, not answered");
    assert_eq!(host(&f).etcd_sent.borrow()[1].2, first, "the same call");
    assert_eq!(carried(&f)[1].as_deref(), Some("t2.2"));
    answer(&f, &mut s, Some("200"), &slots_read(&[], true));
    answer(&f, &mut s, Some("200"), &succeeded());
    assert_eq!(reply(&f).0, 201);
    assert_eq!(host(&f).etcd_errors.get(), 0);
}

#[test]
fn a_token_rejected_with_no_newer_one_is_cleared_and_the_write_is_503() {
    let f = authed_filter();
    let _ = logged();
    publish(&f, "t1.1");
    let mut s = create(&f);
    answer(&f, &mut s, Some("401"), INVALID_TOKEN.as_bytes());
    assert_eq!(shared(&f), Pass::None, "the dispatcher authenticates again");
    assert_eq!(host(&f).etcd_sent.borrow().len(), 1);
    let (status, body, _) = reply(&f);
    assert_eq!(status, 503);
    assert!(!body.to_string().contains("etcdserver"), "{body}");
    assert_unavailable_logged("answered HTTP 401");
    // Rejected again after one more try: answered, not sent a third time.
    publish(&f, "t2.2");
    let mut s = create(&f);
    publish(&f, "t3.3");
    answer(&f, &mut s, Some("401"), INVALID_TOKEN.as_bytes());
    answer(&f, &mut s, Some("401"), INVALID_TOKEN.as_bytes());
    assert_eq!(reply(&f).0, 503);
    assert_eq!(host(&f).etcd_sent.borrow().len(), 3);
}

fn assert_unavailable_logged(text: &str) {
    let lines = logged();
    assert!(lines.iter().any(|(_, l)| l.contains(text)), "{lines:?}");
    assert!(lines
        .iter()
        .all(|(_, l)| !l.contains("t1.1") && !l.contains("s3cret")));
}

/// A recover of the subscription since `since` (RFC 3339).
fn recover(f: &Rc<Filter<FakeStreamHost>>, since: &str) -> Stream<FakeStreamHost> {
    let body = json!({ "since": since }).to_string();
    call(f, "POST", &format!("{}/recover", sub_path()), &body)
}

#[test]
fn a_recover_scans_etcd_takes_the_copies_and_queues_each_in_detection_order() {
    let f = fleet_filter();
    synced(&f, 1);
    let copy =
        |id: &str, ms| crate::fleet::stored::encode(id, ID, "order.created", ms, b"{}").unwrap();
    let mut s = recover(&f, "1970-01-01T00:00:00.005Z");
    assert_eq!(replies(&f), 0, "the stream waits for etcd");
    let mut found = [
        kv("/pw/dead/msg_b", &copy("msg_b", 9), 4),
        kv("/pw/dead/msg_a", &copy("msg_a", 8), 5),
        kv("/pw/dead/msg_c", &copy("msg_c", 1), 6),
    ];
    for (kv, rev) in found.iter_mut().zip([4, 5, 6]) {
        kv["create_revision"] = json!(rev.to_string());
    }
    answer(&f, &mut s, Some("200"), &range_answer(&found));
    assert_eq!(replies(&f), 0, "then takes them");
    let take = sent(&f);
    let deleted: Vec<String> = take["success"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            let key = op["request_delete_range"]["key"].as_str().unwrap();
            String::from_utf8(STANDARD.decode(key).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(
        deleted,
        ["/pw/dead/msg_a", "/pw/dead/msg_b"],
        "msg_c is older"
    );
    let del =
        |n: u8| json!({"response_delete_range": {"header": header(), "deleted": n.to_string()}});
    let took = json!({"header": header(), "succeeded": true, "responses": [del(1), del(1)]});
    answer(&f, &mut s, Some("200"), took.to_string().as_bytes());
    let (status, body, _) = reply(&f);
    assert_eq!((status, body), (202, json!({"count": 2, "not_kept": 0})));
    let queued = host(&f).queue.borrow().clone();
    let want: Vec<Vec<u8>> = [("msg_a", 8), ("msg_b", 9)]
        .iter()
        .map(|(id, ms)| {
            QueueMessage::Replay {
                webhook_id: id.to_string(),
                kept: copy(id, *ms),
            }
            .encode()
        })
        .collect();
    assert_eq!(queued, want);
}

#[test]
fn a_recover_etcd_cannot_answer_is_503_and_takes_nothing() {
    logged();
    let f = fleet_filter();
    synced(&f, 1);
    let mut s = recover(&f, "2026-11-27T10:00:00Z");
    answer(&f, &mut s, Some("503"), b"no healthy upstream");
    let (status, body, headers) = reply(&f);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(headers.contains(&("retry-after".into(), "1".into())));
    assert_eq!(host(&f).etcd_errors.get(), 1);
    assert_eq!(host(&f).etcd_sent.borrow().len(), 1, "no take");
    assert!(host(&f).queue.borrow().is_empty());
    let lines = logged();
    assert!(
        lines.iter().any(
            |(_, line)| line.contains("a recover could not read the kept copies")
                && line.contains("answered HTTP 503")
        ),
        "{lines:?}"
    );
}
