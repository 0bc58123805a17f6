//! The operator API, portal sessions and the same-origin check.

use super::*;
use crate::model::session::{self, Claims};
use crate::registry::portal;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

const KEY_OPERATOR: &str = "key-operator-0123456789";
const SESSION_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn operator_config(extra_api: Value) -> String {
    let mut config: Value = serde_json::from_str(&config_json(true, false)).unwrap();
    let api = config["api"].as_object_mut().unwrap();
    api.insert(
        "operator_keys".into(),
        json!([{"operator": "support", "sha256": hex(KEY_OPERATOR)}]),
    );
    api.insert(
        "portal".into(),
        json!({"session_key": STANDARD.encode(SESSION_KEY),
               "public_url": "https://api.example.com/"}),
    );
    for (k, v) in extra_api.as_object().unwrap() {
        api.insert(k.clone(), v.clone());
    }
    config.to_string()
}

fn operator_api() -> Api {
    Api::with(&operator_config(json!({})))
}

/// A call with a portal session token.
fn with_session(api: &mut Api, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let response = api.send(&Request {
        method,
        path,
        session: Some(token.as_bytes()),
        content_type: Some(b"application/json"),
        body: body.as_bytes(),
        ..Request::default()
    });
    (response.status, parse(&response))
}

fn mint(consumer: &str, read_only: bool, expires_s: u64, issued_ms: u64) -> String {
    let claims = Claims {
        consumer: consumer.into(),
        expires_s,
        issued_ms,
        read_only,
    };
    session::mint(SESSION_KEY, &claims).unwrap()
}

fn id_of(value: Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

#[test]
fn operators_see_every_consumer_with_health() {
    let mut api = operator_api();
    let a = id_of(api.create(KEY_A, URL, &["order.created"]));
    let b = id_of(api.create(KEY_B, URL, &["order.updated"]));
    let log = vec![
        attempt("msg_1", 1, State::Succeeded),
        attempt("msg_2", 1, State::Exhausted),
        attempt("msg_3", 1, State::Retrying),
    ];
    api.registry.record_attempts(&b, log).unwrap();
    let (status, list) = api.call("GET", "/webhooks/admin/subscriptions", KEY_OPERATOR, "");
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "both consumers' and the static one: {list}");
    let of = |id: &str| data.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(of(&a)["consumer"], "acme");
    assert_eq!(of(&b)["consumer"], "beta");
    assert_eq!(of("sub_static_1")["consumer"], "ops");
    let stamp = "2026-11-27T10:00:00.000Z";
    assert_eq!(
        of(&b)["health"],
        json!({"last_success_at": stamp, "last_failure_at": stamp, "failing_since": stamp,
               "consecutive_failures": 2, "pending": 1})
    );
    let ids: Vec<String> = data
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "in id order");

    let filtered = |api: &mut Api, query: &str| -> Vec<String> {
        let path = format!("/webhooks/admin/subscriptions?{query}");
        let (status, list) = api.call("GET", &path, KEY_OPERATOR, "");
        assert_eq!(status, 200, "{query}: {list}");
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(filtered(&mut api, "status=failing"), [b]);
    assert_eq!(filtered(&mut api, "consumer=acme"), [a]);
    assert_eq!(filtered(&mut api, "event_type=order.updated").len(), 2);
    assert_eq!(filtered(&mut api, "status=disabled").len(), 0);
    // Cursor paging over the whole list.
    let first = filtered(&mut api, "limit=1");
    let second = filtered(&mut api, &format!("limit=2&after={}", first[0]));
    assert_eq!([first, second].concat(), sorted);
    for bad in ["status=broken", "limit=0", "after=a%20b", "consumer="] {
        let path = format!("/webhooks/admin/subscriptions?{bad}");
        let (status, value) = api.call("GET", &path, KEY_OPERATOR, "");
        assert_eq!((status, code(&value)), (422, "invalid_field"), "{bad}");
    }
}

#[test]
fn health_merges_other_replicas_summaries_with_this_replicas_log() {
    use crate::registry::health::Summary;
    let mut api = operator_api();
    let id = id_of(api.create(KEY_A, URL, &["order.created"]));
    // This replica delivered msg_1 (succeeded at NOW - 10 s), msg_3 waits for another attempt.
    let own_ok = format_rfc3339_millis(NOW - 10_000);
    let mut ok = attempt("msg_1", 1, State::Succeeded);
    ok.timestamp = own_ok.clone();
    api.registry.record_attempts(&id, vec![ok]).unwrap();
    let health = |api: &mut Api| {
        let path = format!("/webhooks/admin/subscriptions/{id}");
        let (status, got) = api.call("GET", &path, KEY_OPERATOR, "");
        assert_eq!(status, 200, "{got}");
        got["health"].clone()
    };
    assert_eq!(health(&mut api)["consecutive_failures"], 0);
    // Replica n2 failed twice since NOW - 5 s: the fleet is failing, through this replica.
    let other = Summary {
        last_success_at: None,
        last_failure_at: Some(format_rfc3339_millis(NOW - 1_000)),
        failing_since: Some(format_rfc3339_millis(NOW - 5_000)),
        consecutive_failures: 2,
    };
    api.registry.record_health(&id, "n2", &other).unwrap();
    assert_eq!(
        health(&mut api),
        json!({"last_success_at": own_ok, "last_failure_at": format_rfc3339_millis(NOW - 1_000),
               "failing_since": format_rfc3339_millis(NOW - 5_000),
               "consecutive_failures": 2, "pending": 0})
    );
    let (_, failing) = api.call(
        "GET",
        "/webhooks/admin/subscriptions?status=failing",
        KEY_OPERATOR,
        "",
    );
    assert_eq!(failing["data"][0]["id"], json!(id), "{failing}");
    // The consumer's own read says the same.
    let (_, own) = api.call("GET", &format!("/webhooks/subscriptions/{id}"), KEY_A, "");
    assert_eq!(own["health"]["consecutive_failures"], 2);
    // n2 then succeeded: healthy again.
    let recovered = Summary {
        last_success_at: Some(format_rfc3339_millis(NOW)),
        ..other.clone()
    };
    let recovered = Summary {
        consecutive_failures: 0,
        failing_since: None,
        ..recovered
    };
    api.registry.record_health(&id, "n2", &recovered).unwrap();
    assert_eq!(health(&mut api)["consecutive_failures"], 0);
    assert_eq!(
        health(&mut api)["last_success_at"],
        format_rfc3339_millis(NOW)
    );
    // A summary whose newest attempt is older than the delivery logs keep is left out.
    api.registry.record_health(&id, "n2", &other).unwrap();
    api.now_ms = NOW + crate::fleet::log::MAX_AGE_MS;
    assert_eq!(health(&mut api)["consecutive_failures"], 0);
}

#[test]
fn operators_act_on_any_subscription_through_the_consumer_handlers() {
    let mut api = operator_api();
    let id = id_of(api.create(KEY_A, URL, &["*"]));
    let admin = |tail: &str| format!("/webhooks/admin/subscriptions/{id}{tail}");
    let (status, got) = api.call("GET", &admin(""), KEY_OPERATOR, "");
    assert_eq!((status, &got["consumer"]), (200, &json!("acme")));
    let disable = r#"{"status":"disabled"}"#;
    let (status, patched) = api.call("PATCH", &admin(""), KEY_OPERATOR, disable);
    assert_eq!((status, &patched["status"]), (200, &json!("disabled")));
    assert_eq!(api.record(&id).disabled_reason.as_deref(), Some("manual"));
    let enable = r#"{"status":"active"}"#;
    assert_eq!(api.call("PATCH", &admin(""), KEY_OPERATOR, enable).0, 200);
    assert_eq!(api.call("POST", &admin("/test"), KEY_OPERATOR, "").0, 202);
    let (status, log) = api.call("GET", &admin("/deliveries"), KEY_OPERATOR, "");
    assert_eq!((status, log), (200, json!({"data": []})));
    api.registry
        .record_attempts(&id, vec![attempt("msg_9", 1, State::Exhausted)])
        .unwrap();
    let retry = "/webhooks/admin/deliveries/msg_9/retry";
    assert_eq!(api.call("POST", retry, KEY_OPERATOR, "").0, 202);
    // What is the consumer's alone is not under admin.
    assert_eq!(
        api.call("POST", &admin("/rotate-secret"), KEY_OPERATOR, "")
            .0,
        404
    );
    assert_eq!(
        api.call("GET", "/webhooks/admin/event-types", KEY_OPERATOR, "")
            .0,
        404
    );
    let (status, value) = api.call("POST", "/webhooks/admin/subscriptions", KEY_OPERATOR, "{}");
    assert_eq!((status, code(&value)), (405, "method_not_allowed"));
    assert_eq!(api.call("DELETE", &admin(""), KEY_OPERATOR, "").0, 204);
    assert!(api.registry.get(&id).is_none());
}

#[test]
fn credentials_work_only_in_their_own_api() {
    let mut api = operator_api();
    let id = id_of(api.create(KEY_A, URL, &["*"]));
    let (status, value) = api.call("GET", "/webhooks/admin/subscriptions", KEY_A, "");
    assert_eq!((status, code(&value)), (403, "forbidden"));
    let (status, value) = api.call("GET", "/webhooks/subscriptions", KEY_OPERATOR, "");
    assert_eq!((status, code(&value)), (403, "forbidden"));
    let (status, value) = api.call("GET", "/webhooks/admin/subscriptions", "nope", "");
    assert_eq!((status, code(&value)), (401, "unauthorized"));
    let token = mint("acme", false, NOW / 1000 + 60, NOW);
    let admin_list = "/webhooks/admin/subscriptions";
    let (status, value) = with_session(&mut api, "GET", admin_list, &token, "");
    assert_eq!((status, code(&value)), (403, "forbidden"));
    assert_eq!(
        with_session(&mut api, "GET", &sub_path(&id, ""), &token, "").0,
        200
    );
}

#[test]
fn the_operator_header_names_an_operator_under_admin_only() {
    let mut api = Api::with(&operator_config(json!({"operator_header": "x-operator"})));
    let mut call = |path: &str| {
        let response = api.send(&Request {
            method: "GET",
            path,
            operator_header: Some(b"alice"),
            ..Request::default()
        });
        (response.status, code(&parse(&response)).to_string())
    };
    assert_eq!(call("/webhooks/admin/subscriptions").0, 200);
    assert_eq!(call("/webhooks/subscriptions"), (403, "forbidden".into()));
    // Named by a header, an operator's writes must come from the same origin, as a consumer's.
    let path = "/webhooks/admin/consumers/acme/portal-sessions";
    let mut write = |site: &[u8]| {
        let response = api.send(&Request {
            method: "DELETE",
            path,
            operator_header: Some(b"alice"),
            sec_fetch_site: Some(site),
            ..Request::default()
        });
        (response.status, code(&parse(&response)).to_string())
    };
    assert_eq!(write(b"cross-site"), (403, "cross_origin".into()));
    assert_eq!(write(b"same-origin").0, 204);
}

#[test]
fn minted_sessions_act_as_their_consumer_until_revoked() {
    let mut api = operator_api();
    let a = id_of(api.create(KEY_A, URL, &["*"]));
    let b = id_of(api.create(KEY_B, URL, &["*"]));
    let path = "/webhooks/admin/consumers/acme/portal-sessions";
    let body = r#"{"ttl":"2h","read_only":false}"#;
    let (status, minted) = api.call("POST", path, KEY_OPERATOR, body);
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    assert_eq!(
        minted["url"],
        json!(format!(
            "https://api.example.com/webhooks/portal#token={token}"
        ))
    );
    let expires = (NOW + 2 * 3600 * 1000) / 1000 * 1000;
    assert_eq!(minted["expires_at"], json!(format_rfc3339_millis(expires)));
    let list = "/webhooks/subscriptions";
    let (status, listed) = with_session(&mut api, "GET", list, &token, "");
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str()], "never another consumer's");
    assert_eq!(
        with_session(&mut api, "GET", &sub_path(&b, ""), &token, "").0,
        404
    );
    let change = r#"{"description":"x"}"#;
    assert_eq!(
        with_session(&mut api, "PATCH", &sub_path(&a, ""), &token, change).0,
        200
    );
    // A session is authenticated by itself alone: a valid key beside a bad token is refused.
    let auth = format!("Bearer {KEY_A}");
    let response = api.send(&Request {
        method: "GET",
        path: list,
        authorization: Some(auth.as_bytes()),
        session: Some(b"pws_garbage.x"),
        ..Request::default()
    });
    let refused = (response.status, code(&parse(&response)).to_string());
    assert_eq!(refused, (401, "session_invalid".to_string()));
    // An empty session header is no session: the key counts.
    let response = api.send(&Request {
        method: "GET",
        path: list,
        authorization: Some(auth.as_bytes()),
        session: Some(b" "),
        ..Request::default()
    });
    assert_eq!(response.status, 200);

    api.now_ms = NOW + 1;
    assert_eq!(api.call("DELETE", path, KEY_OPERATOR, "").0, 204);
    let (status, value) = with_session(&mut api, "GET", list, &token, "");
    assert_eq!((status, code(&value)), (401, "session_revoked"));
    // One minted after the revocation (even in the same millisecond) works.
    let (_, minted) = api.call("POST", path, KEY_OPERATOR, "{}");
    let fresh = minted["token"].as_str().unwrap().to_string();
    assert_eq!(with_session(&mut api, "GET", list, &fresh, "").0, 200);
    assert!(portal::revoked_up_to(&api.store, "acme").is_some());
}

#[test]
fn read_only_expired_and_invalid_sessions_are_told_apart() {
    let mut api = operator_api();
    let a = id_of(api.create(KEY_A, URL, &["*"]));
    let read_only = mint("acme", true, NOW / 1000 + 60, NOW);
    let log = sub_path(&a, "/deliveries");
    assert_eq!(with_session(&mut api, "GET", &log, &read_only, "").0, 200);
    for (method, path) in [
        ("PATCH", sub_path(&a, "")),
        ("DELETE", sub_path(&a, "")),
        ("POST", sub_path(&a, "/test")),
        ("POST", "/webhooks/subscriptions".to_string()),
    ] {
        let (status, value) = with_session(&mut api, method, &path, &read_only, "{}");
        assert_eq!(
            (status, code(&value)),
            (403, "read_only"),
            "{method} {path}"
        );
    }
    let list = "/webhooks/subscriptions";
    let expired = mint("acme", false, NOW / 1000, NOW - 60_000);
    let (status, value) = with_session(&mut api, "GET", list, &expired, "");
    assert_eq!((status, code(&value)), (401, "session_expired"));
    let claims = Claims {
        consumer: "acme".into(),
        expires_s: NOW / 1000 + 60,
        issued_ms: NOW,
        read_only: false,
    };
    let other_key = session::mint(b"another key of thirty-two bytes!", &claims).unwrap();
    let (status, value) = with_session(&mut api, "GET", list, &other_key, "");
    assert_eq!((status, code(&value)), (401, "session_invalid"));
    // Without a portal, no token is valid.
    let mut plain = Api::new();
    let token = mint("acme", false, NOW / 1000 + 60, NOW);
    let (status, value) = with_session(&mut plain, "GET", list, &token, "");
    assert_eq!((status, code(&value)), (401, "session_invalid"));
}

#[test]
fn minting_checks_its_fields_and_the_portal() {
    let mut api = operator_api();
    let path = "/webhooks/admin/consumers/acme/portal-sessions";
    for body in [
        r#"{"ttl":"4m"}"#,
        r#"{"ttl":"8d"}"#,
        r#"{"ttl":5}"#,
        r#"{"read_only":"no"}"#,
    ] {
        let (status, value) = api.call("POST", path, KEY_OPERATOR, body);
        assert_eq!((status, code(&value)), (422, "invalid_field"), "{body}");
    }
    let (status, value) = api.call("POST", path, KEY_OPERATOR, r#"{"scope":1}"#);
    assert_eq!((status, code(&value)), (422, "unknown_field"));
    assert_eq!(api.call("PUT", path, KEY_OPERATOR, "{}").0, 405);
    let odd = "/webhooks/admin/consumers/a%20b/portal-sessions";
    assert_eq!(
        api.call("POST", odd, KEY_OPERATOR, "{}").0,
        404,
        "no name has a space"
    );
    let piped = "/webhooks/admin/consumers/auth0%7Calpha/portal-sessions";
    let (status, minted) = api.call("POST", piped, KEY_OPERATOR, "{}");
    assert_eq!(status, 201);
    let token = minted["token"].as_str().unwrap().as_bytes();
    let claims = session::verify(SESSION_KEY, token, NOW, |_| None).unwrap();
    assert_eq!(claims.consumer, "auth0|alpha");
    let mut no_portal = Api::with(&operator_config(json!({"portal": {"enabled": false}})));
    let (status, value) = no_portal.call("POST", path, KEY_OPERATOR, "{}");
    assert_eq!((status, code(&value)), (409, "portal_disabled"));
    // Without a configured key the plugin makes one, and its sessions verify.
    let mut made = Api::with(&operator_config(json!({"portal": {}})));
    let (status, minted) = made.call("POST", path, KEY_OPERATOR, "{}");
    assert_eq!(status, 201);
    let token = minted["token"].as_str().unwrap();
    assert_eq!(
        minted["url"],
        json!(format!("/webhooks/portal#token={token}"))
    );
    let list = "/webhooks/subscriptions";
    assert_eq!(with_session(&mut made, "GET", list, token, "").0, 200);
}

#[test]
fn gateway_authenticated_writes_must_be_same_origin() {
    let mut api = Api::with(&json!({"api": {"consumer_header": "x-consumer"}}).to_string());
    let mut call = |method: &str, origin: Option<&[u8]>, site: Option<&[u8]>| {
        let response = api.send(&Request {
            method,
            path: "/webhooks/subscriptions",
            consumer_header: Some(b"acme"),
            origin,
            sec_fetch_site: site,
            authority: Some(b"api.example.com"),
            content_type: Some(b"application/json"),
            body: b"{}",
            ..Request::default()
        });
        (response.status, code(&parse(&response)).to_string())
    };
    let cross = (403, "cross_origin".to_string());
    assert_eq!(call("POST", Some(b"https://evil.example"), None), cross);
    assert_eq!(call("POST", None, Some(b"cross-site")), cross);
    let same_site = call("POST", Some(b"https://api.example.com"), Some(b"same-site"));
    assert_eq!(same_site, cross);
    // Same origin, or no browser at all, gets to validation.
    assert_eq!(call("POST", Some(b"https://api.example.com"), None).0, 422);
    assert_eq!(call("POST", None, Some(b"same-origin")).0, 422);
    assert_eq!(call("POST", None, None).0, 422);
    // Reads are not writes.
    assert_eq!(
        call("GET", Some(b"https://evil.example"), Some(b"cross-site")).0,
        200
    );
}

#[test]
fn an_operator_recover_in_fleet_mode_takes_etcds_copies_too() {
    let mut config: Value = serde_json::from_str(&operator_config(json!({}))).unwrap();
    config["fleet"] = json!({"cluster": "webhooks_etcd", "prefix": "/pw"});
    let mut api = Api::with(&config.to_string());
    api.synced("sub_fleet_1", "acme", 1);
    let path = "/webhooks/admin/subscriptions/sub_fleet_1/recover";
    let answer = api.fleet_call(
        "POST",
        path,
        KEY_OPERATOR,
        r#"{"since": "1970-01-01T00:00:00Z"}"#,
    );
    assert_eq!(
        answer,
        Answer::TakeKept {
            subscription_id: "sub_fleet_1".into(),
            since_ms: 0
        }
    );
}
