use super::*;
use serde_json::{json, Value};

const JSON: Option<&[u8]> = Some(b"application/json");

fn capture(limit: usize, ct: Option<&[u8]>, chunks: &[&[u8]]) -> CapturedObject {
    let mut c = BodyCapture::new(limit, ct, None, None);
    for chunk in chunks {
        c.push(chunk);
    }
    c.finish()
}

fn json_of(bytes: &[u8]) -> CapturedObject {
    CapturedObject::Json(bytes.to_vec())
}

fn request<'a>(path: &'a str, params: &'a [(String, String)]) -> RequestInfo<'a> {
    RequestInfo {
        method: "POST",
        path,
        params,
        status: 201,
    }
}

fn parse(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap()
}

#[test]
fn skipped_capture_reads_nothing() {
    let mut c = BodyCapture::skip();
    assert!(!c.wants_more());
    c.push(b"{}");
    assert_eq!(c.finish(), CapturedObject::NotJson);
}

#[test]
fn keeps_json_verbatim() {
    let body: &[u8] = br#"{"id": 42,  "total": 1.50, "z": 1, "a": 2}"#;
    assert_eq!(
        capture(100, JSON, &[&body[..10], &body[10..]]),
        json_of(body)
    );
    assert_eq!(capture(100, JSON, &[b"[1, 2]"]), json_of(b"[1, 2]"));
    assert_eq!(capture(100, JSON, &[b"\"hi\""]), json_of(b"\"hi\""));
    assert_eq!(capture(100, JSON, &[b"7"]), json_of(b"7"));
    assert_eq!(capture(100, JSON, &[b"null"]), json_of(b"null"));
}

#[test]
fn trims_surrounding_whitespace() {
    assert_eq!(
        capture(100, JSON, &[b" \r\n {\"a\":1}", b"\n\t "]),
        json_of(b"{\"a\":1}")
    );
    assert_eq!(capture(100, JSON, &[b"  3"]), json_of(b"3"));
}

#[test]
fn nesting_is_bounded_so_receivers_can_parse_the_payload() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let tricky = br#"{"a":["[{\"",{"b":1}]}"#;
    assert!(serde_json::from_slice::<serde_json::Value>(tricky).is_ok());
    assert_eq!(nesting_depth(tricky), 3);
    assert_eq!(
        capture(10_000, JSON, &[&nested(100)]),
        json_of(&nested(100))
    );
    assert_eq!(
        capture(10_000, JSON, &[&nested(101)]),
        CapturedObject::NotJson
    );
}

#[test]
fn invalid_or_empty_is_not_json() {
    for body in [
        &b""[..],
        b"   ",
        b"{\"a\":",
        b"{\"a\":1} {}",
        b"hello",
        b"\xff\xfe",
    ] {
        assert_eq!(
            capture(100, JSON, &[body]),
            CapturedObject::NotJson,
            "{body:?}"
        );
    }
    assert_eq!(capture(100, JSON, &[]), CapturedObject::NotJson);
}

#[test]
fn invalid_utf8_inside_strings_is_not_json() {
    assert_eq!(capture(100, JSON, &[b"\"\xff\""]), CapturedObject::NotJson);
    assert_eq!(
        capture(100, JSON, &[b"{\"a\xc3\":1}"]),
        CapturedObject::NotJson
    );
}

#[test]
fn unpaired_surrogate_escapes_are_not_json() {
    for body in [
        &br#""\ud800""#[..],
        br#""\udc00""#,
        br#"["\udc00\ud800"]"#,
        br#"{"a":"\uD83Dx"}"#,
        br#""\\\ud800""#,
    ] {
        assert_eq!(
            capture(100, JSON, &[body]),
            CapturedObject::NotJson,
            "{body:?}"
        );
    }
    for body in [
        &br#""\uD83D\uDE00""#[..],
        br#""\\ud800""#,
        br#"["\u00e9\n", "\ud7ff\ue000"]"#,
    ] {
        assert_eq!(capture(100, JSON, &[body]), json_of(body), "{body:?}");
    }
}

#[test]
fn a_huge_declared_length_within_a_huge_limit_reserves_little() {
    let capture = BodyCapture::new(usize::MAX, None, None, Some(u64::MAX));
    assert!(capture.wants_more());
    assert!(capture.buf.capacity() <= MAX_RESERVE);
}

#[test]
fn absent_content_type_is_sniffed() {
    assert_eq!(capture(100, None, &[b"{}"]), json_of(b"{}"));
    assert_eq!(capture(100, None, &[b"<html>"]), CapturedObject::NotJson);
}

#[test]
fn content_types() {
    for ct in [
        &b"application/json"[..],
        b"Application/JSON",
        b"application/json; charset=utf-8",
        b" application/json ;charset=UTF-8",
        b"application/problem+json",
        b"application/vnd.api+JSON",
        b"text/x+json",
    ] {
        assert!(is_json_media_type(ct), "{ct:?}");
    }
    for ct in [
        &b"text/plain"[..],
        b"application/jsonx",
        b"application/json-seq",
        b"application/xml",
        b"+json",
        b"application/+json",
        b"/+json",
        b"json",
        b"",
    ] {
        assert!(!is_json_media_type(ct), "{ct:?}");
    }
}

#[test]
fn text_plain_is_not_captured() {
    let c = BodyCapture::new(100, Some(b"text/plain"), None, None);
    assert!(!c.wants_more());
    assert_eq!(c.finish(), CapturedObject::NotJson);
}

#[test]
fn encoded_bodies_are_not_captured() {
    let mut c = BodyCapture::new(100, JSON, Some(b"gzip"), Some(10));
    assert!(!c.wants_more());
    c.push(b"{}");
    assert_eq!(c.finish(), CapturedObject::NotJson);
    let c = BodyCapture::new(100, JSON, Some(b"Identity"), None);
    assert!(c.wants_more());
    // A non-JSON response over the limit is still just not JSON.
    let c = BodyCapture::new(1, Some(b"text/html"), None, Some(10));
    assert_eq!(c.finish(), CapturedObject::NotJson);
}

#[test]
fn declared_length_over_limit_is_too_large_up_front() {
    let mut c = BodyCapture::new(10, JSON, None, Some(11));
    assert!(!c.wants_more());
    c.push(b"{}");
    assert_eq!(c.finish(), CapturedObject::TooLarge);
    let c = BodyCapture::new(10, JSON, None, Some(u64::MAX));
    assert_eq!(c.finish(), CapturedObject::TooLarge);
    let c = BodyCapture::new(10, JSON, None, Some(10));
    assert!(c.wants_more());
}

#[test]
fn exactly_at_limit_is_kept() {
    let body = br#"{"a":"12"}"#; // 10 bytes
    assert_eq!(capture(10, JSON, &[&body[..4], &body[4..]]), json_of(body));
    assert_eq!(capture(10, JSON, &[body]), json_of(body));
}

#[test]
fn one_past_limit_across_chunks_is_too_large() {
    let body = br#"{"a":"123"}"#; // 11 bytes
    let mut c = BodyCapture::new(10, JSON, None, None);
    c.push(&body[..6]);
    assert!(c.wants_more());
    c.push(&body[6..10]);
    assert!(c.wants_more());
    c.push(&body[10..]);
    assert!(!c.wants_more());
    assert_eq!(c.buf.capacity(), 0);
    c.push(b"more");
    assert_eq!(c.finish(), CapturedObject::TooLarge);
    assert_eq!(capture(0, JSON, &[b"1"]), CapturedObject::TooLarge);
}

#[test]
fn payload_with_object() {
    let params = [("id".to_string(), "42".to_string())];
    let payload = build_payload(
        "order.created",
        1_795_773_600_123,
        &request("/orders/42", &params),
        json_of(br#"{"id":42,"total":10}"#),
    );
    let expected = concat!(
        r#"{"type":"order.created","timestamp":"2026-11-27T10:00:00.123Z","#,
        r#""data":{"object":{"id":42,"total":10},"request":{"method":"POST","#,
        r#""path":"/orders/42","params":{"id":"42"},"status":201}}}"#
    );
    assert_eq!(String::from_utf8(payload).unwrap(), expected);
}

#[test]
fn payload_embeds_the_object_verbatim() {
    let object = br#"{"big":12345678901234567890123,"f":1.50}"#;
    let payload = build_payload("a.b", 0, &request("/", &[]), json_of(object));
    let text = String::from_utf8(payload.clone()).unwrap();
    assert!(text.contains(std::str::from_utf8(object).unwrap()));
    parse(&payload);
}

#[test]
fn payload_without_object() {
    let v = parse(&build_payload(
        "a.b",
        0,
        &request("/x", &[]),
        CapturedObject::NotJson,
    ));
    assert_eq!(v["data"]["object"], Value::Null);
    assert!(v["data"].get("truncated").is_none());
    assert_eq!(v["data"]["request"]["params"], json!({}));
    assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
}

#[test]
fn payload_marks_truncation_after_object() {
    let payload = build_payload("a.b", 0, &request("/x", &[]), CapturedObject::TooLarge);
    let text = String::from_utf8(payload.clone()).unwrap();
    assert!(text.contains(r#""data":{"object":null,"truncated":true,"request":"#));
    let v = parse(&payload);
    assert_eq!(v["data"]["truncated"], true);
}

#[test]
fn payload_escapes_odd_strings() {
    let odd = "/a\"b\\c\u{1}\n\t/é/日本/\u{7f}/😀";
    let params = [
        ("q\"k".to_string(), "v\\\u{0}".to_string()),
        ("id".to_string(), "ü".to_string()),
    ];
    let info = RequestInfo {
        method: "PATCH",
        path: odd,
        params: &params,
        status: 200,
    };
    let payload = build_payload("odd.\"type\"", 1, &info, json_of(b"[]"));
    let v = parse(&payload);
    assert_eq!(v["type"], "odd.\"type\"");
    assert_eq!(v["data"]["object"], json!([]));
    assert_eq!(
        v["data"]["request"],
        json!({
            "method": "PATCH",
            "path": odd,
            "params": {"q\"k": "v\\\u{0}", "id": "ü"},
            "status": 200
        })
    );
    let keys: Vec<_> = v["data"]["request"]["params"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys.len(), 2);
}

#[test]
fn payload_fields_for_every_capture_outcome() {
    let params = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
    ];
    for object in [
        json_of(b"{\"k\":[1,{}]}"),
        json_of(b"\"s\""),
        CapturedObject::NotJson,
        CapturedObject::TooLarge,
    ] {
        let v = parse(&build_payload(
            "thing.deleted",
            1_614_265_330_000,
            &request("/t/1", &params),
            object,
        ));
        assert_eq!(v["type"], "thing.deleted");
        assert_eq!(v["timestamp"], "2021-02-25T15:02:10.000Z");
        assert_eq!(v["data"]["request"]["method"], "POST");
        assert_eq!(v["data"]["request"]["path"], "/t/1");
        assert_eq!(v["data"]["request"]["params"], json!({"a": "1", "b": "2"}));
        assert_eq!(v["data"]["request"]["status"], 201);
        assert_eq!(v.as_object().unwrap().len(), 3);
    }
}

#[test]
fn test_payload() {
    let payload = build_test_payload(1_795_773_600_123, "sub_\"x");
    let v = parse(&payload);
    assert_eq!(
        v,
        json!({
            "type": "webhook.test",
            "timestamp": "2026-11-27T10:00:00.123Z",
            "data": {
                "subscription_id": "sub_\"x",
                "message": "This is a test webhook from proxy-webhooks."
            }
        })
    );
    assert!(payload.starts_with(br#"{"type":"webhook.test","timestamp":"#));
}
