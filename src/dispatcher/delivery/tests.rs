use super::*;

#[test]
fn a_kept_message_is_taken_for_its_own_subscription_only() {
    let mut store = ReplayStore::default();
    store.keep(message("msg_1", 3, 0), "c", limits(10, 10, 1 << 20));
    assert!(store.take_of("msg_1", "sub_2").is_none());
    assert_eq!(store.len(), 1, "left as it was");
    let taken = store.take_of("msg_1", "sub_1").unwrap();
    assert_eq!(taken.webhook_id, "msg_1");
    assert!(store.is_empty());
}
use crate::config::Config;

fn limits(max_messages: usize, max_per_consumer: usize, max_bytes: usize) -> ReplayLimits {
    ReplayLimits {
        max_messages,
        max_per_consumer,
        max_bytes,
    }
}

fn config(schedule: &[u64]) -> DeliveryConfig {
    let mut c = Config::default().delivery;
    c.retry_schedule_ms = schedule.to_vec();
    c.jitter = 0.2;
    c
}

fn message(id: &str, attempts: u32, created_ms: u64) -> Message {
    Message {
        webhook_id: id.into(),
        subscription_id: "sub_1".into(),
        event_type: "a.b".into(),
        payload: crate::dispatcher::outbox::Payload::new(&b"{}"[..]),
        attempts,
        created_ms,
        host_waits: 0,
        replayed: false,
    }
}

fn status(code: u16) -> Response {
    Response::Status {
        code,
        retry_after_ms: None,
    }
}

#[test]
fn success_gone_and_exhaustion() {
    let c = config(&[0, 100, 1000]);
    assert_eq!(judge(&status(204), 1, 0, &c, 0.0), Verdict::Delivered);
    assert_eq!(judge(&status(410), 1, 0, &c, 0.0), Verdict::Gone);
    assert_eq!(judge(&status(500), 1, 10, &c, 0.0), Verdict::RetryAt(110));
    assert_eq!(judge(&status(302), 2, 10, &c, 0.0), Verdict::RetryAt(1010));
    assert_eq!(judge(&status(500), 3, 10, &c, 0.0), Verdict::Exhausted);
    assert_eq!(
        judge(&Response::NotSent("x".into()), 1, 0, &c, 0.0),
        Verdict::RetryAt(100)
    );
}

#[test]
fn jitter_stays_within_bounds() {
    let c = config(&[0, 1000]);
    assert_eq!(judge(&status(500), 1, 0, &c, 1.0), Verdict::RetryAt(1200));
    assert_eq!(judge(&status(500), 1, 0, &c, -1.0), Verdict::RetryAt(800));
    assert_eq!(judge(&status(500), 1, 0, &c, 7.0), Verdict::RetryAt(1200));
}

#[test]
fn retry_after_only_when_longer_than_schedule() {
    let c = config(&[0, 100]);
    let slow = Response::Status {
        code: 429,
        retry_after_ms: Some(2000),
    };
    assert_eq!(judge(&slow, 1, 0, &c, 0.0), Verdict::RetryAt(2000));
    let fast = Response::Status {
        code: 503,
        retry_after_ms: Some(10),
    };
    assert_eq!(judge(&fast, 1, 0, &c, 0.0), Verdict::RetryAt(100));
}

#[test]
fn replay_store_is_bounded_and_resets_attempts() {
    let mut store = ReplayStore::default();
    let forgotten: Vec<String> = (0..5)
        .flat_map(|n| {
            store.keep(
                message(&format!("m{n}"), 3, n),
                "c",
                limits(3, 9, usize::MAX),
            )
        })
        .map(|m| m.webhook_id)
        .collect();
    assert_eq!(forgotten, ["m0", "m1"]);
    assert_eq!(store.len(), 3);
    assert!(store.take("m0").is_none());
    let m = store.take("m4").unwrap();
    assert_eq!((m.webhook_id.as_str(), m.attempts), ("m4", 0));
    assert!(store.take("m4").is_none());
}

#[test]
fn replay_store_is_bounded_in_bytes() {
    let mut store = ReplayStore::default();
    let cost = 2 + crate::dispatcher::outbox::MESSAGE_OVERHEAD;
    let forgotten: Vec<String> = (0..5)
        .flat_map(|n| {
            store.keep(
                message(&format!("m{n}"), 3, n),
                "c",
                limits(100, 100, 2 * cost),
            )
        })
        .map(|m| m.webhook_id)
        .collect();
    assert_eq!(forgotten, ["m0", "m1", "m2"]);
    assert!(store.take("m3").is_some());
    assert_eq!(store.bytes, cost);
    assert_eq!(
        store
            .keep(message("big", 0, 9), "c", limits(100, 100, 10))
            .len(),
        2
    );
    assert!(store.is_empty() && store.bytes == 0);
}

fn keep_all(store: &mut ReplayStore, ids: &[&str], consumer: &str, l: ReplayLimits) -> Vec<String> {
    ids.iter()
        .flat_map(|id| store.keep(message(id, 3, 0), consumer, l))
        .map(|m| m.webhook_id)
        .collect()
}

#[test]
fn one_consumer_s_failures_never_push_another_s_out() {
    let mut store = ReplayStore::default();
    let l = limits(10, 4, usize::MAX);
    assert!(keep_all(&mut store, &["b0", "b1"], "bob", l).is_empty());
    let ids: Vec<String> = (0..20).map(|n| format!("a{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // alice keeps her newest 4; bob's two stay.
    let forgotten = keep_all(&mut store, &ids, "alice", l);
    assert_eq!(forgotten.len(), 16);
    assert_eq!(forgotten.first().map(String::as_str), Some("a0"));
    assert_eq!(store.len(), 6);
    assert!(store.take("b0").is_some() && store.take("a19").is_some());
    assert!(store.take("a15").is_none(), "forgotten");
}

#[test]
fn the_global_bound_still_forgets_the_oldest_of_anyone() {
    let mut store = ReplayStore::default();
    let l = limits(3, 2, usize::MAX);
    keep_all(&mut store, &["a0", "a1"], "alice", l);
    let forgotten = keep_all(&mut store, &["b0", "b1"], "bob", l);
    assert_eq!(forgotten, ["a0"]);
    assert_eq!(store.len(), 3);
}

#[test]
fn kept_again_a_message_moves_to_the_back_once() {
    let mut store = ReplayStore::default();
    let l = limits(3, 3, usize::MAX);
    keep_all(&mut store, &["m0", "m1", "m2", "m0"], "c", l);
    assert_eq!(store.len(), 3);
    // m0 is now the newest: m1 goes first.
    assert_eq!(keep_all(&mut store, &["m3"], "c", l), ["m1"]);
    assert_eq!(
        store.bytes,
        3 * (2 + crate::dispatcher::outbox::MESSAGE_OVERHEAD)
    );
}

#[test]
fn replay_indexes_stay_bounded_under_churn() {
    let mut store = ReplayStore::default();
    let l = limits(50, 5, usize::MAX);
    for n in 0..10_000u64 {
        let id = format!("m{n}");
        store.keep(message(&id, 3, n), &format!("c{}", n % 17), l);
        if n % 3 == 0 {
            store.take(&id);
        }
    }
    assert!(store.len() <= 50);
    assert!(store.order.len() <= 2 * store.len() + 65);
    assert!(store
        .consumers
        .values()
        .all(|of| of.order.len() <= 2 * of.count + 65));
    assert!(store.consumers.len() <= 17);
}

#[test]
fn no_replay_per_consumer_keeps_nothing() {
    let mut store = ReplayStore::default();
    assert_eq!(
        keep_all(&mut store, &["m0"], "c", limits(10, 0, usize::MAX)),
        ["m0"]
    );
    assert!(store.is_empty() && store.consumers.is_empty());
}

#[test]
fn failure_clock_disables_only_after_continuous_failure() {
    let mut clock = FailureClock::default();
    assert!(!clock.failed("a", 0, 10, 100));
    assert!(!clock.failed("a", 50, 99, 100));
    clock.succeeded("a");
    // A success restarts the clock: 150 is only 50 after the next failure began.
    assert!(!clock.failed("a", 100, 150, 100));
    assert!(clock.failed("a", 160, 200, 100));
    // Once it fired, the clock starts over (a re-enabled subscription gets the full time).
    assert!(!clock.failed("a", 300, 310, 100));
    clock.forget("a");
    assert!(!clock.failed("a", 1000, 1001, 100));
    clock.retain(|id| id != "a");
    assert!(!clock.failed("a", 5000, 5001, 100));
}

#[test]
fn the_reset_reason_names_the_answer_limit() {
    assert!(RESET.ends_with(&format!("larger than {ANSWER_LIMIT_BYTES} bytes")));
    // A page of one stored message comes back whole (base64 value, key and revisions).
    let page_of_one = crate::fleet::journal::MAX_VALUE_BYTES.div_ceil(3) * 4 + 2048;
    assert!(page_of_one <= ANSWER_LIMIT_BYTES, "{page_of_one}");
}

#[test]
fn refused_callouts_say_why() {
    assert_eq!(
            refused_callout(true, "webhooks_egress_http"),
            "destination unreachable: the host does not resolve, or resolves only to addresses the egress cluster refuses (private or special-purpose ranges)"
        );
    assert_eq!(
        refused_callout(false, "nope"),
        "callout refused by Envoy; does cluster nope exist?"
    );
}

#[test]
fn overrun_answers_shrink_the_window() {
    for code in [429, 503] {
        assert_eq!(status(code).signal(), Signal::Overrun);
    }
    assert_eq!(status(204).signal(), Signal::Answered);
    for code in [500, 404, 410, 302] {
        assert_eq!(status(code).signal(), Signal::Neutral);
    }
    for body in [
        &b"upstream connect error or disconnect/reset before headers"[..],
        b"upstream request timeout",
    ] {
        let code = if body.starts_with(b"upstream connect") {
            503
        } else {
            504
        };
        assert_eq!(classify(code, None, body).signal(), Signal::Overrun);
    }
    assert_eq!(Response::NotSent(RESET.into()).signal(), Signal::Overrun);
    assert_eq!(
        Response::NotSent("invalid url".into()).signal(),
        Signal::Neutral
    );
}

fn describe(code: u16, body_start: &[u8]) -> String {
    classify(code, None, body_start).describe()
}

#[test]
fn describes_envoy_local_replies() {
    assert_eq!(
        describe(503, b"upstream connect error or disconnect"),
        "connection failed"
    );
    assert_eq!(describe(504, b"upstream request timeout"), "timeout");
    assert_eq!(describe(503, b"busy"), "HTTP 503");
    let tls = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed";
    assert_eq!(
        describe(503, tls),
        "connection failed: TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed"
    );
}
