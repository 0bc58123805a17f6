#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

fn record(id: &str, version: u64) -> Value {
    json!({"id": id, "consumer": "acme", "url": "https://example.com/h", "events": ["a.*"],
           "status": "active", "created_at_ms": 1, "updated_at_ms": 1,
           "secrets": [{"secret": "whsec_AAAA"}], "version": version})
}

fn kv(key: &str, value: Option<&Value>, rev: i64) -> Value {
    let mut kv = json!({"key": STANDARD.encode(key), "create_revision": rev.to_string(),
                        "mod_revision": rev.to_string(), "version": "1"});
    if let Some(v) = value {
        kv["value"] = json!(STANDARD.encode(v.to_string()));
    }
    kv
}

/// A range answer as etcd 3.4 writes it (zero fields omitted, numbers as strings).
fn answer(revision: i64, kvs: Vec<Value>, count: usize) -> Vec<u8> {
    let mut a = json!({"header": {"revision": revision.to_string()}});
    if !kvs.is_empty() {
        a["kvs"] = Value::Array(kvs);
    }
    if count > 0 {
        a["count"] = json!(count.to_string());
    }
    a.to_string().into_bytes()
}

fn sent(request: &etcd::Request) -> Value {
    serde_json::from_str(&request.body).unwrap()
}

fn ids(changes: &[Apply]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Apply::Put(s) => format!("put {} v{}", s.id, s.version),
            Apply::Remove(id) => format!("remove {id}"),
        })
        .collect()
}

#[test]
fn the_first_read_takes_everything_and_later_ones_only_what_changed() {
    let mut sync = Sync::new(Keys::new("/pw"), 500);
    assert!(!sync.synced());
    let first = sync.due(0).unwrap();
    assert_eq!(first.path, etcd::RANGE);
    assert_eq!(sent(&first).get("min_mod_revision"), None);
    assert!(sync.due(0).is_none(), "one read at a time");
    let a = record("s1", 1);
    let b = record("s2", 3);
    let body = answer(
        9,
        vec![kv("/pw/sub/s1", Some(&a), 5), kv("/pw/sub/s2", Some(&b), 9)],
        2,
    );
    let changes = sync.on_answer(Some("200"), &body, 10).unwrap();
    assert_eq!(ids(&changes), ["put s1 v1", "put s2 v3"]);
    assert!(sync.synced());
    assert!(sync.due(100).is_none(), "not before the interval");
    let next = sync.due(510).unwrap();
    assert_eq!(sent(&next)["min_mod_revision"], "10");
    let changes = sync
        .on_answer(Some("200"), &answer(9, vec![], 2), 520)
        .unwrap();
    assert!(changes.is_empty());
    assert_eq!(sync.lag_ms(600, 0), 80);
}

#[test]
fn a_count_below_the_known_ids_lists_the_range_and_removes_the_deleted() {
    let mut sync = Sync::new(Keys::new("/pw"), 500);
    sync.due(0).unwrap();
    let (a, b) = (record("s1", 1), record("s2", 1));
    let body = answer(
        9,
        vec![kv("/pw/sub/s1", Some(&a), 5), kv("/pw/sub/s2", Some(&b), 9)],
        2,
    );
    sync.on_answer(Some("200"), &body, 10).unwrap();
    // s1 deleted and s3 created since: the change read gives s3 and counts two.
    sync.due(600).unwrap();
    let c = record("s3", 1);
    let changes = sync
        .on_answer(
            Some("200"),
            &answer(12, vec![kv("/pw/sub/s3", Some(&c), 12)], 2),
            610,
        )
        .unwrap();
    assert_eq!(ids(&changes), ["put s3 v1"]);
    let listing = sync
        .due(610)
        .expect("a listing at once, not after the interval");
    assert_eq!(sent(&listing)["keys_only"], true);
    let keys = vec![kv("/pw/sub/s2", None, 9), kv("/pw/sub/s3", None, 12)];
    let changes = sync
        .on_answer(Some("200"), &answer(12, keys, 2), 612)
        .unwrap();
    assert_eq!(ids(&changes), ["remove s1"]);
    assert!(sync.due(700).is_none(), "back to the interval");
    assert_eq!(sent(&sync.due(1200).unwrap())["min_mod_revision"], "13");
}

#[test]
fn bad_answers_change_nothing_and_say_why() {
    let mut sync = Sync::new(Keys::new("/pw"), 500);
    sync.due(0).unwrap();
    let err = sync
        .on_answer(Some("503"), b"no healthy upstream", 1)
        .unwrap_err();
    assert_eq!(err, "etcd answered the registry read with status 503");
    assert!(!sync.synced());
    assert!(sync.due(100).is_none());
    sync.due(501).unwrap();
    let err = sync.on_answer(Some("200"), b"{oops", 502).unwrap_err();
    assert!(err.starts_with("etcd's answer is not JSON"), "{err}");
    sync.due(1002).unwrap();
    let err = sync.on_answer(None, b"", 1003).unwrap_err();
    assert!(err.ends_with("status none"), "{err}");
    sync.due(1503).unwrap();
    sync.on_failure(1504);
    assert!(sync.due(1600).is_none());
    assert!(sync.due(2004).is_some());
}

#[test]
fn records_that_are_not_subscriptions_or_name_another_id_are_skipped() {
    let mut sync = Sync::new(Keys::new("/pw"), 500);
    sync.due(0).unwrap();
    let good = record("s1", 1);
    let other = record("s9", 1);
    let kvs = vec![
        kv("/pw/sub/s1", Some(&good), 2),
        kv("/pw/sub/s2", Some(&json!({"id": "s2"})), 3),
        kv("/pw/sub/s3", Some(&other), 4),
        kv("/pw/slot/acme/3", Some(&json!("s1")), 5),
    ];
    let changes = sync.on_answer(Some("200"), &answer(5, kvs, 3), 1).unwrap();
    assert_eq!(ids(&changes), ["put s1 v1"]);
}

#[test]
fn garbage_answers_never_panic() {
    let mut rng = crate::tests::fixtures::seeded(0x5ca1);
    let mut sync = Sync::new(Keys::new("/pw"), 10);
    for n in 0..crate::tests::fixtures::scaled(2000) {
        let now = n as u64 * 20;
        if sync.due(now).is_some() {
            let body = rng.bytes(200);
            let _ = sync.on_answer(Some("200"), &body, now);
        }
    }
}

#[test]
fn sealed_records_are_opened_and_one_no_key_opens_is_kept_sealed_and_counted() {
    use crate::fleet::vault::{is_sealed_secret, Vault};
    use crate::support::sealing::{Key, Keyring};
    use crate::tests::fixtures::seeded;
    let vault = |b: u8| Vault::new(Some(Keyring::new(Key::new(&[b; 32]), vec![])), false);
    let sealed = |id: &str, b: u8| {
        let sub = Subscription::from_json(record(id, 1).to_string().as_bytes()).unwrap();
        let bytes = vault(b).seal_record(&mut seeded(1), &sub).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let mut sync = Sync::new(Keys::new("/pw"), 500).with_vault(vault(1));
    sync.due(0).unwrap();
    let body = answer(
        9,
        vec![
            kv("/pw/sub/s1", Some(&sealed("s1", 1)), 5),
            kv("/pw/sub/s2", Some(&sealed("s2", 2)), 6),
            kv("/pw/sub/s3", Some(&record("s3", 1)), 7),
        ],
        3,
    );
    let changes = sync.on_answer(Some("200"), &body, 10).unwrap();
    assert_eq!(ids(&changes), ["put s1 v1", "put s2 v1", "put s3 v1"]);
    let secret = |i: usize| match &changes[i] {
        Apply::Put(sub) => sub.secrets[0].secret.clone(),
        Apply::Remove(_) => unreachable!(),
    };
    assert_eq!(secret(0), "whsec_AAAA");
    assert!(is_sealed_secret(&secret(1)), "kept sealed, never guessed");
    assert_eq!(
        secret(2),
        "whsec_AAAA",
        "written before encryption: read as is"
    );
    assert_eq!(sync.take_unreadable(), 1);
    assert_eq!(sync.take_unreadable(), 0);
}
