use super::*;
use crate::fleet::stored;
use crate::model::subscription::{SigningSecret, Status};
use crate::support::sealing::Key;
use crate::tests::fixtures::{seeded, NoRandom};

fn ring(current: u8, previous: &[u8]) -> Keyring {
    let key = |b: u8| Key::new(&[b; 32]);
    Keyring::new(key(current), previous.iter().map(|b| key(*b)).collect())
}

fn vault(current: u8, previous: &[u8], payloads: bool) -> Vault {
    Vault::new(Some(ring(current, previous)), payloads)
}

fn sub(id: &str) -> Subscription {
    let secret = |s: &str, expires: Option<u64>| SigningSecret {
        secret: s.into(),
        expires_at_ms: expires,
    };
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
        secrets: vec![
            secret("whsec_current", None),
            secret("whsec_rotated", Some(9)),
        ],
        is_static: false,
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
        version: 3,
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn without_a_key_records_and_messages_are_stored_as_they_are() {
    let plain = Vault::default();
    let bytes = plain.seal_record(&mut NoRandom, &sub("s1")).unwrap();
    assert_eq!(bytes, serde_json::to_vec(&sub("s1")).unwrap());
    assert_eq!(plain.open_record(&bytes), Some(Record::Readable(sub("s1"))));
    assert_eq!(
        plain.seal_message(&mut NoRandom, "m", b"v1\n".to_vec()),
        Some(b"v1\n".to_vec())
    );
    assert_eq!(plain.open_message("m", b"v1\n"), Ok(b"v1\n".to_vec()));
    // encrypt_payloads without a key seals nothing.
    assert_eq!(Vault::new(None, true), Vault::default());
}

#[test]
fn every_secret_is_sealed_and_only_the_secrets() {
    let v = vault(1, &[], false);
    let bytes = v.seal_record(&mut seeded(1), &sub("s1")).unwrap();
    assert!(
        !contains(&bytes, "whsec_"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let id = ring(1, &[]).current_id().to_string();
    for secret in json["secrets"].as_array().unwrap() {
        let text = secret["secret"].as_str().unwrap();
        assert!(text.starts_with(&format!("pws1.{id}.")), "{text}");
    }
    assert_eq!(json["secrets"][1]["expires_at_ms"], 9);
    assert_eq!(json["url"], "https://hooks.example.com/in");
    assert_eq!(v.open_record(&bytes), Some(Record::Readable(sub("s1"))));
    assert_eq!(
        v.seal_record(&mut NoRandom, &sub("s1")),
        Err("no randomness to seal the record's secrets with".into())
    );
}

#[test]
fn a_plain_record_reads_and_is_sealed_when_next_written() {
    let v = vault(1, &[], false);
    let plain = serde_json::to_vec(&sub("s1")).unwrap();
    let Some(Record::Readable(read)) = v.open_record(&plain) else {
        panic!("a record written before encryption reads");
    };
    let rewritten = v.seal_record(&mut seeded(2), &read).unwrap();
    assert!(!contains(&rewritten, "whsec_"));
}

#[test]
fn a_sealed_secret_moved_to_another_record_does_not_open() {
    let v = vault(1, &[], false);
    let bytes = v.seal_record(&mut seeded(3), &sub("s1")).unwrap();
    let moved = String::from_utf8(bytes)
        .unwrap()
        .replace("\"s1\"", "\"s2\"");
    match v.open_record(moved.as_bytes()) {
        Some(Record::Unreadable(sub, OpenError::Broken)) => assert_eq!(sub.id, "s2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_rotate_and_an_unknown_key_is_reported_not_guessed() {
    let old = vault(1, &[], true);
    let bytes = old.seal_record(&mut seeded(4), &sub("s1")).unwrap();
    let rotated = vault(2, &[1], true);
    assert_eq!(
        rotated.open_record(&bytes),
        Some(Record::Readable(sub("s1")))
    );
    let rewritten = rotated.seal_record(&mut seeded(5), &sub("s1")).unwrap();
    let new_id = ring(2, &[]).current_id().to_string();
    assert!(contains(&rewritten, &format!("pws1.{new_id}.")));

    for (name, reader) in [
        ("other key", vault(3, &[], false)),
        ("no key", Vault::default()),
    ] {
        let Some(Record::Unreadable(kept, why)) = reader.open_record(&rewritten) else {
            panic!("{name}: an unreadable record is reported");
        };
        assert_eq!(why, OpenError::UnknownKey(new_id.clone()), "{name}");
        assert!(kept.secrets.iter().all(|s| is_sealed_secret(&s.secret)));
        // Written again (a disable), its sealed secrets stay as they were.
        let again = reader.seal_record(&mut seeded(6), &kept).unwrap();
        assert_eq!(
            rotated.open_record(&again),
            Some(Record::Readable(sub("s1")))
        );
    }
    assert_eq!(rotated.open_record(b"not json"), None);
}

#[test]
fn messages_are_sealed_with_encrypt_payloads_and_bound_to_their_webhook_id() {
    let value = stored::encode("msg_1", "s1", "order.created", 7, b"{\"card\":\"4242\"}").unwrap();
    let secrets_only = vault(1, &[], false);
    assert_eq!(
        secrets_only.seal_message(&mut seeded(7), "msg_1", value.clone()),
        Some(value.clone())
    );
    let v = vault(1, &[], true);
    let sealed = v
        .seal_message(&mut seeded(7), "msg_1", value.clone())
        .unwrap();
    assert!(!contains(&sealed, "4242") && !contains(&sealed, "order.created"));
    assert_eq!(v.open_message("msg_1", &sealed), Ok(value.clone()));
    assert_eq!(v.open_message("msg_2", &sealed), Err(OpenError::Broken));
    // One written before encryption reads as it is.
    assert_eq!(v.open_message("msg_1", &value), Ok(value.clone()));
    assert_eq!(
        vault(2, &[1], true).open_message("msg_1", &sealed),
        Ok(value)
    );
    assert!(matches!(
        Vault::default().open_message("msg_1", &sealed),
        Err(OpenError::UnknownKey(_))
    ));
    assert_eq!(v.seal_message(&mut NoRandom, "msg_1", b"x".to_vec()), None);
}

/// A `v1,v1a` record with receiver headers: every ed25519 key and header value is sealed too,
/// and opens back; one header value no key opens makes the record unreadable.
#[test]
fn signing_keys_and_header_values_are_sealed_like_secrets() {
    use crate::model::subscription::ReceiverHeader;
    let mut s = sub("s1");
    s.secrets.insert(
        1,
        SigningSecret {
            secret: "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".into(),
            expires_at_ms: None,
        },
    );
    s.headers = vec![ReceiverHeader {
        name: "authorization".into(),
        value: "Bearer t0ken".into(),
    }];
    assert!(!has_sealed_values(&s));
    let v = vault(1, &[], false);
    let bytes = v.seal_record(&mut seeded(1), &s).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for clear in ["whsk_", "BwcHBwcH", "t0ken", "whsec_"] {
        assert!(!text.contains(clear), "{clear} in {text}");
    }
    assert!(text.contains("\"name\":\"authorization\""), "{text}");
    assert_eq!(v.open_record(&bytes), Some(Record::Readable(s.clone())));
    // Another replica without the key keeps it sealed and says so.
    match vault(2, &[], false).open_record(&bytes) {
        Some(Record::Unreadable(sealed, _)) => assert!(has_sealed_values(&sealed)),
        other => panic!("{other:?}"),
    }
    // Only a header value sealed (a record written before, say): still unreadable.
    let mut only_header = sub("s1");
    only_header.headers = s.headers.clone();
    let bytes = v.seal_record(&mut seeded(2), &only_header).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["secrets"] = serde_json::json!([{"secret": "whsec_current"}]);
    let bytes = serde_json::to_vec(&json).unwrap();
    assert!(matches!(
        vault(2, &[], false).open_record(&bytes),
        Some(Record::Unreadable(..))
    ));
}
