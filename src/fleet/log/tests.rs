use super::*;
use crate::registry::attempts::State;
use crate::registry::health::{summarize, Summary};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

const NOW: u64 = 1_795_000_000_000;
const SECOND: u64 = 1000;

fn attempt(webhook_id: &str, n: u32, at_ms: u64) -> Attempt {
    Attempt {
        webhook_id: webhook_id.into(),
        event_type: "order.created".into(),
        attempt: n,
        timestamp: format_rfc3339_millis(at_ms),
        response_status: Some(500),
        error: None,
        duration_ms: 3,
        next_retry_at: None,
        state: State::Retrying,
    }
}

/// etcd's range answer holding these values.
fn range_answer(values: &[Vec<u8>]) -> Vec<u8> {
    let kvs: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"key": STANDARD.encode(format!("/pw/log/s/n{i}")), "value": STANDARD.encode(v),
                   "mod_revision": "5"})
        })
        .collect();
    json!({"header": {"revision": "9"}, "kvs": kvs, "count": values.len().to_string()})
        .to_string()
        .into_bytes()
}

#[test]
fn the_logs_of_every_replica_are_merged_newest_first() {
    let a = vec![
        attempt("msg_a", 2, NOW - 10 * SECOND),
        attempt("msg_a", 1, NOW - 30 * SECOND),
    ];
    let b = vec![attempt("msg_b", 1, NOW - 20 * SECOND)];
    let body = range_answer(&[
        serde_json::to_vec(&a).unwrap(),
        serde_json::to_vec(&b).unwrap(),
        b"not a log".to_vec(),
    ]);
    let merged = read(Some("200"), &body, NOW).unwrap();
    let order: Vec<(&str, u32)> = merged
        .iter()
        .map(|a| (a.webhook_id.as_str(), a.attempt))
        .collect();
    assert_eq!(order, [("msg_a", 2), ("msg_b", 1), ("msg_a", 1)]);
}

#[test]
fn the_merged_log_keeps_the_last_fifty_of_the_last_seven_days() {
    let old = attempt("msg_old", 1, NOW - MAX_AGE_MS - SECOND);
    let many: Vec<Attempt> = (0..60)
        .map(|n| attempt("msg_n", n, NOW - u64::from(n) * SECOND))
        .collect();
    let merged = merge([many.clone(), vec![old]], NOW);
    assert_eq!(merged.len(), MAX_ENTRIES);
    assert_eq!(merged[0].attempt, 0);
    assert!(merged.iter().all(|a| a.webhook_id != "msg_old"));
    let edge = attempt("msg_edge", 1, NOW - MAX_AGE_MS);
    assert_eq!(
        fresh(vec![edge.clone()], NOW),
        [edge],
        "exactly 7 days is kept"
    );
}

#[test]
fn bad_answers_say_why() {
    assert_eq!(
        read(Some("503"), b"", NOW),
        Err("answered HTTP 503".to_string())
    );
    assert_eq!(
        read(None, b"", NOW),
        Err("did not answer (timeout or reset)".to_string())
    );
    assert!(read(Some("200"), b"<html>", NOW).is_err());
    assert_eq!(
        read(Some("200"), br#"{"header":{"revision":"9"}}"#, NOW),
        Ok(vec![])
    );
    assert_eq!(
        written(
            Some("200"),
            br#"{"header":{"revision":"9"},"succeeded":true}"#
        ),
        Ok(())
    );
    assert_eq!(
        written(Some("500"), b""),
        Err("answered HTTP 500".to_string())
    );
    assert!(written(Some("200"), b"[]").is_err());
}

#[test]
fn the_write_puts_each_log_and_its_health_under_the_node_and_deletes_an_empty_one() {
    let keys = Keys::new("/pw");
    let log = vec![attempt("msg_1", 1, NOW)];
    let logs = vec![("s1".to_string(), log.clone()), ("s2".to_string(), vec![])];
    let (request, taken) = writes(&keys, "node-a", &logs);
    assert_eq!(taken, 2);
    let expected = etcd::txn(
        &[],
        &[
            Op::Put {
                key: b"/pw/log/s1/node-a".to_vec(),
                value: serde_json::to_vec(&log).unwrap(),
                lease: 0,
            },
            Op::Put {
                key: b"/pw/health/s1/node-a".to_vec(),
                value: summarize(&log).to_json(),
                lease: 0,
            },
            Op::Delete {
                key: b"/pw/log/s2/node-a".to_vec(),
                prefix: false,
            },
            Op::Delete {
                key: b"/pw/health/s2/node-a".to_vec(),
                prefix: false,
            },
        ],
        &[],
    );
    assert_eq!(request, expected);
    let written = Summary::parse(&summarize(&log).to_json()).unwrap();
    assert_eq!(
        written.last_failure_at.as_deref(),
        Some(log[0].timestamp.as_str())
    );
}

#[test]
fn a_write_takes_no_more_than_one_txn_holds() {
    let keys = Keys::new("/pw");
    let many: Vec<(String, Vec<Attempt>)> = (0..MAX_OPS + 5)
        .map(|n| (format!("s{n}"), vec![attempt("m", 1, NOW)]))
        .collect();
    let (request, taken) = writes(&keys, "n", &many);
    assert_eq!(taken, PER_WRITE, "two operations each");
    let ops = serde_json::from_str::<serde_json::Value>(&request.body).unwrap()["success"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ops, MAX_OPS);
    let big = vec![attempt(&"x".repeat(MAX_BATCH_BYTES / 2), 1, NOW)];
    let large: Vec<(String, Vec<Attempt>)> =
        (0..3).map(|n| (format!("s{n}"), big.clone())).collect();
    assert_eq!(
        writes(&keys, "n", &large).1,
        1,
        "past the batch bytes the rest waits"
    );
    let huge = vec![(
        "s".to_string(),
        vec![attempt(&"x".repeat(MAX_BATCH_BYTES * 2), 1, NOW)],
    )];
    assert_eq!(writes(&keys, "n", &huge).1, 1, "one alone always goes");
}

#[test]
fn the_attempts_made_are_the_highest_any_replica_logged() {
    let keys = Keys::new("/pw");
    let request = lookup_many(&keys, ["s1", "s2"]);
    let range = |key: &[u8]| Op::Range {
        key: key.to_vec(),
        prefix: true,
        limit: MAX_NODES,
    };
    assert_eq!(
        request,
        etcd::txn(&[], &[range(b"/pw/log/s1/"), range(b"/pw/log/s2/")], &[])
    );
    let on_b = serde_json::to_vec(&[attempt("msg_1", 3, NOW), attempt("msg_2", 1, NOW)]).unwrap();
    let on_c = serde_json::to_vec(&[attempt("msg_1", 2, NOW)]).unwrap();
    let ranges = |values: &[&Vec<u8>]| {
        let kvs: Vec<Value> = values
            .iter()
            .map(|v| json!({"key": STANDARD.encode("/pw/log/s1/n"), "value": STANDARD.encode(v)}))
            .collect();
        json!({"response_range": {"header": {"revision": "9"}, "kvs": kvs}})
    };
    let body = json!({"header": {"revision": "9"}, "succeeded": true,
                      "responses": [ranges(&[&on_b, &b"junk".to_vec()]), ranges(&[&on_c])]});
    let made = attempts_made(Some("200"), body.to_string().as_bytes()).unwrap();
    assert_eq!(
        (made.get("msg_1"), made.get("msg_2"), made.len()),
        (Some(&3), Some(&1), 2)
    );
    assert_eq!(
        attempts_made(Some("500"), b"").unwrap_err(),
        "answered HTTP 500"
    );
    assert!(attempts_made(Some("200"), b"{").is_err());
}
