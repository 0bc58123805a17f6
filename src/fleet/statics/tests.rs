//! The statuses read, the stale keys and legacy copies deleted, on answers shaped as a real
//! etcd 3.4 writes them; bad answers and values.

use super::*;
use crate::model::subscription::SigningSecret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

const INTERVAL: u64 = 200;

fn configured(id: &str, url: &str, secret: &str) -> Subscription {
    Subscription {
        id: id.into(),
        consumer: "ops".into(),
        url: url.into(),
        events: vec!["*".into()],
        description: String::new(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        secrets: vec![SigningSecret {
            secret: secret.into(),
            expires_at_ms: None,
        }],
        is_static: true,
        headers: Vec::new(),
        privileged: true,
        ordering: Default::default(),
        version: 1,
    }
}

fn audit() -> Subscription {
    configured("audit", "https://a.example/in", "whsec_one")
}

fn statics(subs: &[Subscription]) -> Statics {
    Statics::new(Keys::new("/pw"), INTERVAL, subs)
}

fn kv(key: &[u8], value: &[u8], mod_revision: i64) -> Value {
    json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value),
           "create_revision": "2", "mod_revision": mod_revision.to_string(), "version": "1"})
}

fn range(revision: i64, kvs: Vec<Value>) -> Vec<u8> {
    json!({"header": {"revision": revision.to_string()}, "count": kvs.len().to_string(),
           "kvs": kvs})
    .to_string()
    .into_bytes()
}

fn body(request: &Request) -> Value {
    serde_json::from_str(&request.body).unwrap()
}

fn disabled(reason: &str, at: u64) -> Shared {
    Shared {
        status: Status::Disabled,
        disabled_reason: Some(reason.into()),
        updated_at_ms: at,
    }
}

fn key_of(sub: &Subscription) -> Vec<u8> {
    status_key(&Keys::new("/pw"), sub)
}

#[test]
fn the_definition_follows_the_url_and_the_secret_and_hides_the_secret() {
    let def = definition("https://a.example/in", "whsec_one");
    assert_eq!(def.len(), 32);
    assert!(def.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(def, definition_of(&audit()));
    assert_ne!(def, definition("https://b.example/in", "whsec_one"));
    assert_ne!(def, definition("https://a.example/in", "whsec_two"));
    // The separator keeps "ab" + "c" apart from "a" + "bc".
    assert_ne!(definition("ab", "c"), definition("a", "bc"));
    assert!(!String::from_utf8_lossy(&key_of(&audit())).contains("whsec"));
    // A v1,v1a one: another signing key is another definition.
    let mut both = audit();
    both.secrets.push(SigningSecret {
        secret: "whsk_one".into(),
        expires_at_ms: None,
    });
    let with_key = definition_of(&both);
    assert_ne!(with_key, def);
    both.secrets[1].secret = "whsk_two".into();
    assert_ne!(definition_of(&both), with_key);
}

#[test]
fn shared_statuses_round_trip_and_bad_values_are_refused() {
    let gone = disabled("gone", 7);
    assert_eq!(Shared::decode(&gone.encode()), Some(gone.clone()));
    let active = Shared::of(&audit());
    assert_eq!(
        String::from_utf8(active.encode()).unwrap(),
        r#"{"status":"active","updated_at_ms":1}"#
    );
    assert_eq!(Shared::decode(&active.encode()), Some(active));
    for bad in [
        &b"not json"[..],
        br#"{"status":"paused","updated_at_ms":1}"#,
        br#"{"status":"active"}"#,
        br#"{"status":"disabled","disabled_reason":3,"updated_at_ms":1}"#,
        br#"[]"#,
    ] {
        assert_eq!(
            Shared::decode(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut sub = audit();
    assert!(!gone.holds_in(&sub));
    sub.status = Status::Disabled;
    sub.disabled_reason = Some("gone".into());
    assert!(gone.holds_in(&sub));
}

#[test]
fn the_first_read_takes_every_key_then_only_new_writes_each_interval() {
    let mut s = statics(&[audit()]);
    assert!(!s.ready());
    let first = s.due(0).unwrap();
    assert_eq!(body(&first)["key"], json!(STANDARD.encode("/pw/static/")));
    assert_eq!(body(&first).get("min_mod_revision"), None);
    assert!(s.due(0).is_none(), "one call at a time");
    let found = s
        .on_answer(
            Some("200"),
            &range(
                40,
                vec![kv(&key_of(&audit()), &disabled("gone", 5).encode(), 30)],
            ),
            0,
        )
        .unwrap();
    assert_eq!(found, [("audit".to_string(), disabled("gone", 5))]);
    assert!(s.ready());
    assert!(s.due(INTERVAL - 1).is_none());
    let next = s.due(INTERVAL).unwrap();
    assert_eq!(body(&next)["min_mod_revision"], json!("41"));
    let found = s
        .on_answer(Some("200"), &range(41, vec![]), INTERVAL)
        .unwrap();
    assert!(found.is_empty());
}

#[test]
fn the_first_read_deletes_keys_no_configured_definition_owns_and_later_reads_do_not() {
    let moved = configured("audit", "https://moved.example/in", "whsec_one");
    let removed = configured("old", "https://a.example/in", "whsec_one");
    let mut s = statics(std::slice::from_ref(&moved));
    s.due(0).unwrap();
    let answer = range(
        50,
        vec![
            kv(&key_of(&audit()), &disabled("gone", 5).encode(), 30),
            kv(&key_of(&removed), &disabled("manual", 5).encode(), 31),
            kv(&key_of(&moved), b"garbage", 32),
        ],
    );
    // The configured one's value is not a status: ignored (it stays active).
    assert!(s.on_answer(Some("200"), &answer, 0).unwrap().is_empty());
    let (mut deleted, mut logs) = (Vec::new(), Vec::new());
    while let Some(request) = s.due(0) {
        let b = body(&request);
        if b["compare"].as_array().is_none_or(|c| c.is_empty()) {
            for op in b["success"].as_array().unwrap() {
                let delete = &op["request_delete_range"];
                logs.push((
                    STANDARD.decode(delete["key"].as_str().unwrap()).unwrap(),
                    delete["range_end"].clone(),
                ));
            }
            let ok = json!({"header": {"revision": "51"}, "succeeded": true}).to_string();
            assert!(s
                .on_answer(Some("200"), ok.as_bytes(), 0)
                .unwrap()
                .is_empty());
            continue;
        }
        assert_eq!(b["compare"][0]["target"], json!("MOD"));
        let key = STANDARD.decode(
            b["success"][0]["request_delete_range"]["key"]
                .as_str()
                .unwrap(),
        );
        let revision = b["compare"][0]["mod_revision"]
            .as_str()
            .unwrap()
            .to_string();
        deleted.push((key.unwrap(), revision));
        let ok = json!({"header": {"revision": "51"}, "succeeded": true}).to_string();
        assert!(s
            .on_answer(Some("200"), ok.as_bytes(), 0)
            .unwrap()
            .is_empty());
    }
    deleted.sort();
    let mut want = vec![
        (key_of(&audit()), "30".to_string()),
        (key_of(&removed), "31".to_string()),
    ];
    want.sort();
    assert_eq!(deleted, want);
    // The removed one's delivery logs and health summaries go too; the moved one keeps its.
    let end = |p: &[u8]| json!(STANDARD.encode(crate::fleet::etcd::prefix_end(p)));
    assert_eq!(
        logs,
        [
            (b"/pw/log/old/".to_vec(), end(b"/pw/log/old/")),
            (b"/pw/health/old/".to_vec(), end(b"/pw/health/old/"))
        ]
    );
    // Written later by a replica still on another configuration: left to it.
    s.due(INTERVAL).unwrap();
    let later = range(
        60,
        vec![kv(&key_of(&audit()), &disabled("gone", 9).encode(), 55)],
    );
    assert!(s
        .on_answer(Some("200"), &later, INTERVAL)
        .unwrap()
        .is_empty());
    assert!(s.due(INTERVAL).is_none());
}

#[test]
fn without_static_subscriptions_one_read_cleans_up_and_none_follow() {
    let mut s = statics(&[]);
    assert!(s.ready(), "nothing to wait for");
    assert!(!s.is_configured("audit"));
    s.due(0).unwrap();
    let answer = range(
        9,
        vec![kv(&key_of(&audit()), &disabled("gone", 5).encode(), 3)],
    );
    assert!(s.on_answer(Some("200"), &answer, 0).unwrap().is_empty());
    assert!(s.due(0).is_some(), "the delete");
    s.on_answer(
        Some("200"),
        br#"{"header":{"revision":"10"},"succeeded":true}"#,
        0,
    )
    .unwrap();
    let logs = s
        .due(0)
        .expect("the removed one's delivery logs and health summaries");
    assert_eq!(logs.path, crate::fleet::etcd::TXN);
    assert_eq!(body(&logs)["success"].as_array().unwrap().len(), 2);
    s.on_answer(
        Some("200"),
        br#"{"header":{"revision":"11"},"succeeded":true}"#,
        0,
    )
    .unwrap();
    assert!(s.due(INTERVAL * 10).is_none());
}

#[test]
fn legacy_copies_are_read_again_and_deleted_only_while_static() {
    let mut s = statics(&[audit()]);
    assert!(s.is_configured("audit"));
    s.due(0).unwrap();
    s.on_answer(Some("200"), &range(5, vec![]), 0).unwrap();
    s.check_legacy("audit");
    s.check_legacy("audit");
    s.check_legacy("sub_api");
    let read = s.due(0).unwrap();
    assert_eq!(read.path, etcd::TXN);
    assert_eq!(body(&read)["success"].as_array().unwrap().len(), 2);
    let legacy = serde_json::to_vec(&audit()).unwrap();
    let mut api_made = audit();
    api_made.id = "sub_api".into();
    api_made.is_static = false;
    let api_made = serde_json::to_vec(&api_made).unwrap();
    let answer = json!({"header": {"revision": "6"}, "succeeded": true, "responses": [
        {"response_range": {"header": {"revision": "6"}, "count": "1",
                            "kvs": [kv(b"/pw/sub/audit", &legacy, 4)]}},
        {"response_range": {"header": {"revision": "6"}, "count": "1",
                            "kvs": [kv(b"/pw/sub/sub_api", &api_made, 5)]}}]});
    s.on_answer(Some("200"), answer.to_string().as_bytes(), 0)
        .unwrap();
    let delete = s.due(0).unwrap();
    let b = body(&delete);
    assert_eq!(
        b["success"][0]["request_delete_range"]["key"],
        json!(STANDARD.encode("/pw/sub/audit"))
    );
    assert_eq!(b["compare"][0]["mod_revision"], json!("4"));
    s.on_answer(Some("200"), br#"{"header":{"revision":"7"}}"#, 0)
        .unwrap();
    assert!(s.due(0).is_none(), "the API's record is left alone");
}

#[test]
fn failures_are_retried_after_the_interval_and_deletes_are_tried_once() {
    let mut s = statics(&[audit()]);
    s.due(0).unwrap();
    assert!(s.on_answer(Some("503"), b"busy", 0).is_err());
    assert!(!s.ready());
    assert!(s.due(INTERVAL - 1).is_none(), "no retry storm");
    s.due(INTERVAL).unwrap();
    s.on_failure(INTERVAL);
    assert!(s.due(INTERVAL).is_none());
    s.due(2 * INTERVAL).unwrap();
    assert!(s.on_answer(Some("200"), b"garbage", 2 * INTERVAL).is_err());
    s.due(3 * INTERVAL).unwrap();
    let stale = configured("old", "https://a.example/in", "whsec_one");
    let answer = range(
        9,
        vec![kv(&key_of(&stale), &disabled("gone", 5).encode(), 3)],
    );
    s.on_answer(Some("200"), &answer, 3 * INTERVAL).unwrap();
    s.due(3 * INTERVAL).unwrap();
    s.on_failure(3 * INTERVAL);
    s.due(3 * INTERVAL).expect("its delivery logs' delete");
    s.on_failure(3 * INTERVAL);
    assert!(
        s.due(3 * INTERVAL).is_none(),
        "found again at the next start"
    );
}
