//! Robustness of event: BodyCapture and build_payload.

use super::{fuzz_input, run, shown, Shown};
use crate::model::event::{build_payload, BodyCapture, CapturedObject, RequestInfo};
use crate::tests::fixtures::{is_strict_json, scaled, seeded};
use serde_json::{json, Value};

const PAYLOAD_ITERATIONS: usize = 5000;

#[test]
fn captured_bodies_always_make_valid_payloads() {
    let mut rng = seeded(0xb0d7);
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"id":42,"total":1.50,"items":[{"sku":"a","n":1e3}],"note":"caf\u00e9 \ud83d\ude00"}"#
            .to_vec(),
        b" [1, 2.5, -0, true, false, null, \"x\"]\n".to_vec(),
        b"\"just a string\"".to_vec(),
        b"7".to_vec(),
        b"{}".to_vec(),
    ];
    let content_types: [Option<&[u8]>; 8] = [
        None,
        None,
        Some(b"application/json"),
        Some(b"application/json"),
        Some(b"application/problem+json; charset=utf-8"),
        Some(b"text/plain"),
        Some(b"+json"),
        Some(b"/json"),
    ];
    let mut kept = 0;
    for i in 0..scaled(PAYLOAD_ITERATIONS) {
        let body = fuzz_input(&mut rng, &bodies, true);
        let limit = *rng.pick(&[0, 1, 64, 4096, 65536, 65536, 1 << 20, usize::MAX]);
        let content_type = *rng.pick(&content_types);
        let encoding: Option<&[u8]> = *rng.pick(&[None, Some(&b" Identity "[..]), Some(b"gzip")]);
        let declared = match rng.below(4) {
            0 => Some(body.len() as u64),
            1 => Some(rng.next()),
            2 => Some(u64::MAX),
            _ => None,
        };
        let object = run("BodyCapture", i, &Shown(&body), || {
            let mut capture = BodyCapture::new(limit, content_type, encoding, declared);
            let mut rest = &body[..];
            while !rest.is_empty() && capture.wants_more() {
                let n = 1 + rng.below(rest.len().min(4096));
                let (chunk, tail) = rest.split_at(n);
                capture.push(chunk);
                rest = tail;
            }
            capture.finish()
        });
        if let CapturedObject::Json(kept_bytes) = &object {
            kept += 1;
            assert!(kept_bytes.len() <= limit && kept_bytes.len() <= body.len());
            assert!(is_strict_json(kept_bytes), "kept non-JSON {}", shown(&body));
        }
        let params: Vec<(String, String)> = (0..rng.below(4))
            .map(|k| (format!("{}{k}", rng.unicode(6)), rng.unicode(20)))
            .collect();
        let event_type = rng.unicode(30);
        let method = rng.unicode(8);
        let path = rng.unicode(60);
        let status = rng.next() as u16;
        let timestamp = if rng.chance(4) {
            u64::MAX
        } else {
            rng.next() >> 20
        };
        let request = RequestInfo {
            method: &method,
            path: &path,
            params: &params,
            status,
        };
        let payload = run("build_payload", i, &Shown(&body), || {
            build_payload(&event_type, timestamp, &request, object.clone())
        });
        assert!(
            is_strict_json(&payload),
            "invalid payload {} from body {}",
            shown(&payload),
            shown(&body)
        );
        // Below serde_json's depth limit, the fields read back as they went in.
        if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
            let r = &value["data"]["request"];
            assert_eq!(value["type"], json!(event_type));
            assert_eq!(r["method"], json!(method));
            assert_eq!(r["path"], json!(path));
            assert_eq!(r["status"], json!(status));
            for (name, v) in &params {
                assert_eq!(r["params"][name], json!(v));
            }
            if let CapturedObject::Json(bytes) = &object {
                let original: Value = serde_json::from_slice(bytes).unwrap();
                assert_eq!(value["data"]["object"], original);
            }
        }
    }
    assert!(kept > PAYLOAD_ITERATIONS / 20, "{kept} kept");
}
