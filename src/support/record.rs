//! Reading the plugin's own stored JSON records (subscriptions, attempt logs) through
//! `serde_json::Value`, field by field, as serde's derive would: unknown fields are ignored, a
//! missing or null `Option` is `None`, a missing defaulted field is its default, anything else
//! missing or of the wrong type rejects the record. Derived `Deserialize` impls cost the wasm
//! build tens of KB (their visitors and error paths, which pull in float formatting).

use serde_json::{Map, Value};

/// A JSON object's fields.
pub(crate) type Fields = Map<String, Value>;

/// The object in `json`, or None when it is not JSON or not an object.
pub(crate) fn parse_object(json: &[u8]) -> Option<Fields> {
    match serde_json::from_slice(json).ok()? {
        Value::Object(fields) => Some(fields),
        _ => None,
    }
}

/// A required string field.
pub(crate) fn string(o: &Fields, key: &str) -> Option<String> {
    as_string(o.get(key)?)
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// A required unsigned integer field that fits `T`.
pub(crate) fn uint<T: TryFrom<u64>>(o: &Fields, key: &str) -> Option<T> {
    as_uint(o.get(key)?)
}

pub(crate) fn as_uint<T: TryFrom<u64>>(v: &Value) -> Option<T> {
    T::try_from(v.as_u64()?).ok()
}

/// An `Option` field: missing or null is `Some(None)`, a bad value is None.
pub(crate) fn optional<T>(
    o: &Fields,
    key: &str,
    read: fn(&Value) -> Option<T>,
) -> Option<Option<T>> {
    match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => read(v).map(Some),
    }
}

/// A `#[serde(default)]` field: missing is the default, a bad value (null too) is None.
pub(crate) fn defaulted<T: Default>(
    o: &Fields,
    key: &str,
    read: fn(&Value) -> Option<T>,
) -> Option<T> {
    o.get(key).map_or(Some(T::default()), read)
}

/// A required array field, every item read by `read`.
pub(crate) fn list<T>(o: &Fields, key: &str, read: fn(&Value) -> Option<T>) -> Option<Vec<T>> {
    as_list(o.get(key)?, read)
}

pub(crate) fn as_list<T>(v: &Value, read: fn(&Value) -> Option<T>) -> Option<Vec<T>> {
    v.as_array()?.iter().map(read).collect()
}

/// A unit enum variant spelled as one of `names` (in the order of `variants`).
pub(crate) fn variant<T: Copy>(v: &Value, names: &[&str], variants: &[T]) -> Option<T> {
    let name = v.as_str()?;
    let i = names.iter().position(|n| *n == name)?;
    variants.get(i).copied()
}

#[cfg(test)]
mod tests {
    use crate::model::subscription::Subscription;
    use crate::registry::attempts::{parse_log, Attempt};
    use serde_json::{json, Value};

    /// What serde's derive makes of `doc` (derived in test builds only), beside the reader's.
    fn both_subscription(doc: &Value) -> (Option<Subscription>, Option<Subscription>) {
        let bytes = serde_json::to_vec(doc).unwrap();
        (
            serde_json::from_slice(&bytes).ok(),
            Subscription::from_json(&bytes),
        )
    }

    fn full() -> Value {
        json!({"id": "s1", "consumer": "acme", "url": "https://h/x", "events": ["a.*", "b"],
            "description": "d", "status": "disabled", "disabled_reason": "manual",
            "created_at_ms": 1, "updated_at_ms": 2,
            "secrets": [{"secret": "whsec_a"}, {"secret": "whsec_b", "expires_at_ms": 9}],
            "is_static": true, "privileged": true, "version": 3, "unknown": {"x": 1}})
    }

    #[test]
    fn subscriptions_read_as_the_derive_reads_them() {
        let mut minimal = full();
        let o = minimal.as_object_mut().unwrap();
        for key in [
            "description",
            "disabled_reason",
            "is_static",
            "privileged",
            "version",
        ] {
            o.remove(key);
        }
        let mut nulls = full();
        nulls["disabled_reason"] = Value::Null;
        nulls["secrets"][1]["expires_at_ms"] = Value::Null;
        for doc in [full(), minimal, nulls] {
            let (derived, read) = both_subscription(&doc);
            assert!(read.is_some(), "{doc}");
            assert_eq!(read, derived, "{doc}");
        }
    }

    #[test]
    fn bad_subscriptions_are_rejected_as_the_derive_rejects_them() {
        let bad: [(&str, Value); 9] = [
            ("id", Value::Null),
            ("status", json!("paused")),
            ("events", json!(["a", 1])),
            ("created_at_ms", json!(-1)),
            ("updated_at_ms", json!(1.5)),
            ("description", Value::Null),
            ("is_static", json!("yes")),
            ("version", Value::Null),
            ("secrets", json!([{"expires_at_ms": 1}])),
        ];
        for (key, value) in bad {
            let mut doc = full();
            doc[key] = value;
            assert_eq!(both_subscription(&doc), (None, None), "{key}");
        }
        let mut missing = full();
        missing.as_object_mut().unwrap().remove("url");
        assert_eq!(both_subscription(&missing), (None, None));
        for not_one in [&b"[]"[..], b"{", b"null", b"\"s1\""] {
            assert_eq!(Subscription::from_json(not_one), None);
        }
    }

    #[test]
    fn attempt_logs_read_as_the_derive_reads_them() {
        let attempt = json!({"webhook_id": "msg_1", "event_type": "a.b", "attempt": 2,
            "timestamp": "2024-01-01T00:00:00.000Z", "response_status": 500, "error": null,
            "duration_ms": 12, "next_retry_at": "2024-01-01T00:00:05.000Z", "state": "retrying"});
        let mut minimal = attempt.clone();
        for key in ["response_status", "error", "next_retry_at"] {
            minimal.as_object_mut().unwrap().remove(key);
        }
        let log = json!([attempt, minimal]);
        let derived: Vec<Attempt> = serde_json::from_value(log.clone()).unwrap();
        let read = parse_log(&serde_json::to_vec(&log).unwrap());
        assert_eq!(read, Some(derived));
        assert_eq!(parse_log(b"{}"), None);
        for (key, value) in [
            ("attempt", json!(1u64 << 32)),
            ("response_status", json!(70000)),
            ("state", json!("lost")),
            ("timestamp", Value::Null),
        ] {
            let mut bad = attempt.clone();
            bad[key] = value;
            assert!(serde_json::from_value::<Attempt>(bad.clone()).is_err());
            let line = serde_json::to_vec(&json!([bad])).unwrap();
            assert_eq!(parse_log(&line), None, "{key}");
        }
    }
}
