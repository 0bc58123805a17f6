use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

fn summary(failures: u32) -> Summary {
    Summary {
        last_failure_at: Some("2026-12-06T08:00:01.000Z".into()),
        failing_since: Some("2026-12-06T08:00:00.000Z".into()),
        consecutive_failures: failures,
        ..Summary::default()
    }
}

/// etcd's range answer at `revision` holding these keys and values.
fn answer(revision: i64, kvs: &[(&str, Vec<u8>)], more: bool) -> Vec<u8> {
    let kvs: Vec<Value> = kvs
        .iter()
        .map(|(k, v)| {
            json!({"key": STANDARD.encode(k), "value": STANDARD.encode(v),
                   "mod_revision": "3", "create_revision": "3", "version": "1"})
        })
        .collect();
    json!({"header": {"revision": revision.to_string()}, "kvs": kvs, "more": more,
           "count": "9"})
    .to_string()
    .into_bytes()
}

fn body(request: &Request) -> Value {
    serde_json::from_str(&request.body).unwrap()
}

fn b64(s: &str) -> Value {
    Value::String(STANDARD.encode(s))
}

#[test]
fn reads_everything_first_then_what_changed_since_page_by_page_at_one_revision() {
    let mut r = HealthRead::new(Keys::new("/pw"), 500);
    assert_eq!(r.due(0, 0), None, "not before the registry was read");
    let first = body(&r.due(500, 40).unwrap());
    assert_eq!(first["key"], b64("/pw/health/"));
    assert_eq!(first["limit"], "256");
    assert_eq!(first["revision"], "40", "at the registry's revision");
    assert!(first.get("min_mod_revision").is_none());
    assert_eq!(r.due(500, 40), None, "one page at a time");
    let page = answer(
        45,
        &[
            ("/pw/health/sub_1/a", summary(2).to_json()),
            ("/pw/health/sub_1/b", summary(0).to_json()),
        ],
        true,
    );
    let got = r.on_answer(Some("200"), &page, 10).unwrap();
    assert_eq!(
        got.summaries,
        [
            ("sub_1".into(), "a".into(), summary(2)),
            ("sub_1".into(), "b".into(), summary(0))
        ]
    );
    // More: the next page goes at once, after the last key, at the same revision.
    let next = body(&r.due(10, 41).unwrap());
    assert_eq!(
        next["key"],
        Value::String(STANDARD.encode(b"/pw/health/sub_1/b\0"))
    );
    assert_eq!(next["range_end"], b64("/pw/health0"));
    assert_eq!(next["revision"], "40");
    let last = answer(41, &[("/pw/health/sub_2/a", summary(1).to_json())], false);
    assert_eq!(
        r.on_answer(Some("200"), &last, 20).unwrap().summaries.len(),
        1
    );
    // The read ended at revision 40: the next one, an interval later and once the registry
    // was read again, asks what changed after.
    assert_eq!(r.due(519, 50), None);
    assert_eq!(r.due(520, 40), None, "the registry was not read again");
    let again = body(&r.due(1020, 50).unwrap());
    assert_eq!(again["key"], b64("/pw/health/"));
    assert_eq!(again["min_mod_revision"], "41");
    assert_eq!(again["revision"], "50");
    let empty = answer(55, &[], false);
    assert_eq!(r.on_answer(Some("200"), &empty, 1020), Ok(Page::default()));
    assert_eq!(body(&r.due(1520, 60).unwrap())["min_mod_revision"], "51");
}

#[test]
fn a_failed_page_is_asked_again_and_a_compacted_read_starts_over() {
    let mut r = HealthRead::new(Keys::new("/pw"), 500);
    r.due(0, 40).unwrap();
    let page = answer(40, &[("/pw/health/sub_1/a", summary(2).to_json())], true);
    r.on_answer(Some("200"), &page, 0).unwrap();
    let second = r.due(0, 40).unwrap();
    assert_eq!(
        r.on_answer(Some("503"), b"{}", 5),
        Err("etcd answered the read of health summaries with status 503".into())
    );
    assert_eq!(r.due(504, 40), None, "an interval later");
    assert_eq!(r.due(505, 50), Some(second.clone()), "the same page again");
    let bad = r.on_answer(Some("200"), b"not json", 505).unwrap_err();
    assert!(bad.starts_with("the read of health summaries: "), "{bad}");
    r.on_lost(1005);
    assert_eq!(r.due(1005, 50), None);
    let mut smaller = body(&second);
    smaller["limit"] = json!("128");
    assert_eq!(
        body(&r.due(1505, 50).unwrap()),
        smaller,
        "no answer at all: the same page, half as large"
    );
    let mut now = 1505;
    let mut limit = Value::Null;
    for _ in 0..10 {
        r.on_lost(now);
        now += 500;
        limit = body(&r.due(now, 50).unwrap())["limit"].clone();
    }
    assert_eq!(limit, "8", "down to MIN_PAGE");
    let page = answer(40, &[("/pw/health/sub_1/b", summary(1).to_json())], true);
    r.on_answer(Some("200"), &page, now).unwrap();
    assert_eq!(
        body(&r.due(now, 50).unwrap())["limit"],
        "16",
        "growing back"
    );
    let compacted =
        br#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
    assert!(r.on_answer(Some("400"), compacted, now).is_err());
    let restarted = body(&r.due(now + 500, 60).unwrap());
    assert_eq!(restarted["key"], b64("/pw/health/"));
    assert_eq!(
        restarted["revision"], "60",
        "the whole read again, at the registry's revision"
    );
    assert!(restarted.get("min_mod_revision").is_none());
}

#[test]
fn keys_that_are_no_summary_are_reported_and_the_rest_is_kept() {
    let mut r = HealthRead::new(Keys::new("/pw"), 500);
    r.due(0, 7).unwrap();
    let page = answer(
        7,
        &[
            (
                "/pw/health/sub_1/a",
                b"{\"consecutive_failures\": \"x\"}".to_vec(),
            ),
            ("/pw/health/sub_1", summary(1).to_json()),
            ("/pw/health/sub_1/", summary(1).to_json()),
            ("/pw/health//a", summary(1).to_json()),
            ("/pw/health/sub_2/b", summary(1).to_json()),
        ],
        false,
    );
    let got = r.on_answer(Some("200"), &page, 0).unwrap();
    assert_eq!(got.summaries, [("sub_2".into(), "b".into(), summary(1))]);
    assert_eq!(
        got.unreadable,
        [
            "/pw/health/sub_1/a",
            "/pw/health/sub_1",
            "/pw/health/sub_1/",
            "/pw/health//a"
        ]
    );
}

#[test]
fn the_write_puts_the_logs_summary_and_deletes_it_with_an_empty_log() {
    let keys = Keys::new("/pw");
    assert_eq!(
        write(&keys, "n", "sub_1", &[]),
        Op::Delete {
            key: b"/pw/health/sub_1/n".to_vec(),
            prefix: false
        }
    );
}
