//! Signature schemes (`v1`, `v1a`, `v1,v1a`) and receiver headers through the API.

use super::*;
use crate::model::signing::{self, Secret};

fn create_with(api: &mut Api, fields: Value) -> (u16, Value) {
    let mut body = json!({"url": URL, "events": ["*"]});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string())
}

/// Whether any answer of the subscription shows its private key, in any encoding.
fn shows_private_key(answer: &Value, sub: &Subscription) -> bool {
    let text = answer.to_string();
    sub.secrets
        .iter()
        .filter(|s| signing::is_signing_key(&s.secret))
        .any(|s| {
            let encoded = s.secret.trim_start_matches("whsk_");
            let engine = &base64::engine::general_purpose::STANDARD;
            let raw = base64::Engine::decode(engine, encoded).unwrap();
            // The seed alone (the stored form is the seed and then the public key).
            let seed = base64::Engine::encode(engine, &raw[..32]);
            text.contains(encoded)
                || text.contains(seed.trim_end_matches('='))
                || text.contains(&hex_of(&raw[..32]))
        })
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn v1a_shows_the_public_key_on_every_read_and_never_a_secret() {
    let mut api = Api::new();
    let (status, created) = create_with(&mut api, json!({"signature_scheme": "v1a"}));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let record = api.record(&id);
    let key = record.current_signing_key().unwrap().to_string();
    let public = signing::public_key(&key).unwrap();
    assert_eq!(created["signature_scheme"], "v1a");
    assert_eq!(created["public_key"], json!(public));
    assert!(created.get("secret").is_none(), "{created}");
    assert_eq!(record.secrets.len(), 1);
    assert!(Secret::parse(&key).unwrap().is_ed25519());
    let (_, got) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
    assert_eq!(
        (&got["public_key"], &got["signature_scheme"]),
        (&json!(public), &json!("v1a"))
    );
    let (_, list) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
    assert_eq!(list["data"][0]["public_key"], json!(public));
    for answer in [&created, &got, &list] {
        assert!(!shows_private_key(answer, &record), "{answer}");
    }
}

#[test]
fn v1_v1a_has_both_and_rotation_rotates_both() {
    let mut api = Api::new();
    let (status, created) = create_with(&mut api, json!({"signature_scheme": "v1,v1a"}));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let before = api.record(&id);
    assert_eq!(created["secret"], json!(before.current_secret().unwrap()));
    assert!(created["public_key"].as_str().unwrap().starts_with("whpk_"));
    assert_eq!(created["signature_scheme"], "v1,v1a");

    api.now_ms = NOW + 1_000;
    let (status, rotated) = api.call("POST", &sub_path(&id, "/rotate-secret"), KEY_A, "");
    assert_eq!(status, 200, "{rotated}");
    let after = api.record(&id);
    assert_eq!(rotated["secret"], json!(after.current_secret().unwrap()));
    let new_public = signing::public_key(after.current_signing_key().unwrap()).unwrap();
    assert_eq!(rotated["public_key"], json!(new_public));
    assert_ne!(rotated["public_key"], created["public_key"]);
    assert_ne!(rotated["secret"], created["secret"]);
    assert!(!shows_private_key(&rotated, &after));
    // The new pair first, then the old pair, which signs for 24 h more.
    let expiry: Vec<Option<u64>> = after.secrets.iter().map(|s| s.expires_at_ms).collect();
    let overlap = Some(NOW + 1_000 + ROTATION_OVERLAP_MS);
    assert_eq!(expiry, [None, None, overlap, overlap]);
    assert_eq!(
        after.secrets[2..],
        before
            .secrets
            .iter()
            .map(|s| SigningSecret {
                expires_at_ms: overlap,
                ..s.clone()
            })
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(after.signature_scheme(), subscription::Scheme::Both);
    // Rotating in a loop keeps whole generations, at most MAX_SECRETS of them.
    for _ in 0..10 {
        api.call("POST", &sub_path(&id, "/rotate-secret"), KEY_A, "");
    }
    assert_eq!(api.record(&id).secrets.len(), 2 * MAX_SECRETS);
}

#[test]
fn v1a_rotation_answers_the_new_public_key_and_no_secret() {
    let mut api = Api::new();
    let (_, created) = create_with(&mut api, json!({"signature_scheme": "v1a"}));
    let id = created["id"].as_str().unwrap().to_string();
    let (status, rotated) = api.call("POST", &sub_path(&id, "/rotate-secret"), KEY_A, "");
    assert_eq!(status, 200);
    assert!(rotated.get("secret").is_none(), "{rotated}");
    assert_ne!(rotated["public_key"], created["public_key"]);
    assert_eq!(api.record(&id).secrets.len(), 2);
}

#[test]
fn a_bad_scheme_is_refused_and_nothing_written() {
    let mut api = Api::new();
    let writes = api.store.writes.get();
    for bad in [json!("v2"), json!("v1a,v1"), json!(1)] {
        let (status, value) = create_with(&mut api, json!({"signature_scheme": bad}));
        assert_eq!(status, 422, "{value}");
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature_scheme"));
    }
    assert_eq!(api.store.writes.get(), writes);
    let (_, v1) = create_with(&mut api, json!({"signature_scheme": null}));
    assert_eq!(v1["signature_scheme"], "v1");
    assert!(v1.get("public_key").is_none());
}

#[test]
fn headers_are_shown_at_create_only_and_replaced_by_patch() {
    let mut api = Api::new();
    let headers = json!({"authorization": "Bearer t0ken", "x-tenant": "acme"});
    let (status, created) = create_with(&mut api, json!({"headers": headers}));
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["headers"],
        json!({"authorization": "Bearer t0ken", "x-tenant": "acme"})
    );
    assert_eq!(
        created["header_names"],
        json!(["authorization", "x-tenant"])
    );
    let id = created["id"].as_str().unwrap().to_string();
    let (_, got) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
    assert!(
        got.get("headers").is_none() && !got.to_string().contains("t0ken"),
        "{got}"
    );
    assert_eq!(got["header_names"], created["header_names"]);

    let body = json!({"headers": {"authorization": "Bearer n3w"}}).to_string();
    let (status, patched) = api.call("PATCH", &sub_path(&id, ""), KEY_A, &body);
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("headers").is_none() && !patched.to_string().contains("n3w"));
    assert_eq!(patched["header_names"], json!(["authorization"]));
    let stored = api.record(&id).headers;
    assert_eq!(
        (stored[0].name.as_str(), stored[0].value.as_str()),
        ("authorization", "Bearer n3w")
    );
    let (_, cleared) = api.call("PATCH", &sub_path(&id, ""), KEY_A, r#"{"headers": {}}"#);
    assert_eq!(cleared["header_names"], json!([]));
    assert!(api.record(&id).headers.is_empty());
}

#[test]
fn reserved_and_bad_headers_are_refused_naming_the_header() {
    let mut api = Api::new();
    let writes = api.store.writes.get();
    let cases = [
        (json!({"X-Envoy-Upstream-Rq-Timeout-Ms": "1"}), "headers: \"X-Envoy-Upstream-Rq-Timeout-Ms\" is reserved (x-envoy-* headers steer Envoy's router)"),
        (json!({"webhook-id": "x"}), "headers: \"webhook-id\" is reserved (webhook-* headers are the signature's)"),
        (json!({"Host": "x"}), "headers: \"Host\" is reserved"),
        (json!({"content-type": "x"}), "headers: \"content-type\" is reserved"),
        (json!({"Transfer-Encoding": "chunked"}), "headers: \"Transfer-Encoding\" is reserved"),
        (json!({"a b": "x"}), "headers: \"a b\" is not a header name"),
        (json!({"x-a": "line\r\nx-b: 1"}), "headers: the value of \"x-a\" must be"),
        (json!({"x-a": 1}), "headers: the value of \"x-a\" must be"),
        (json!({"Authorization": "x"}), "headers: \"Authorization\" must be lowercase"),
    ];
    for (headers, want) in cases {
        let (status, value) = create_with(&mut api, json!({"headers": headers}));
        let message = value["error"]["message"].as_str().unwrap();
        assert_eq!((status, code(&value)), (422, "invalid_headers"), "{value}");
        assert!(message.starts_with(want), "{message}");
    }
    let (status, value) = create_with(&mut api, json!({"headers": ["x"]}));
    assert_eq!((status, code(&value)), (422, "invalid_field"));
    let eleven: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("x-{i}"), json!("v"))).collect();
    let (status, value) = create_with(&mut api, json!({"headers": eleven}));
    assert_eq!((status, code(&value)), (422, "invalid_headers"));
    assert_eq!(api.store.writes.get(), writes);
    let created = api.create(KEY_A, URL, &["*"]);
    let id = created["id"].as_str().unwrap();
    let body = json!({"headers": {"x-envoy-retry-on": "5xx"}}).to_string();
    let (status, value) = api.call("PATCH", &sub_path(id, ""), KEY_A, &body);
    assert_eq!((status, code(&value)), (422, "invalid_headers"));
    assert!(api.record(id).headers.is_empty());
}
