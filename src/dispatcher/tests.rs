//! The dispatcher's decisions, against the fake host: what only a real Envoy could test before.

use super::fake::{FakeHost, Sent};
use super::{Dispatcher, FAST_TICK_MS, MAX_DEQUEUE, TICK_MS};
use crate::model::audience::Target;
use crate::model::queue::QueueMessage;
use crate::model::signing::Secret;
use crate::model::subscription::{SigningSecret, Status, Subscription};
use crate::port::{CalloutRefused, CalloutResponse, Metric};
use crate::registry::attempts::{self, Attempt, State};
use crate::registry::store::KvStore;
use crate::registry::watchdog;
use crate::registry::Registry;
use std::rc::Rc;

const T0: u64 = 1_700_000_000_000;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FtcGxlIHNlY3JldCBmb3IgdGVzdHM=";

/// A configured dispatcher with `delivery` settings (JSON members, no braces).
fn dispatcher(delivery: &str) -> Dispatcher<FakeHost> {
    dispatcher_with(&format!(r#"{{"delivery": {{{delivery}}}}}"#))
}

fn dispatcher_with(config: &str) -> Dispatcher<FakeHost> {
    let config = crate::config::parse(config.as_bytes()).unwrap();
    let mut d = Dispatcher::new(Rc::new(config), FakeHost::new(T0));
    assert!(d.on_configure());
    d
}

fn registry(d: &Dispatcher<FakeHost>) -> Registry<Rc<crate::registry::store::MemoryStore>> {
    Registry::new(Rc::clone(&d.host().store))
}

fn subscribe(d: &Dispatcher<FakeHost>, id: &str, url: &str, events: &[&str]) {
    let sub = Subscription {
        id: id.into(),
        consumer: "acme".into(),
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: String::new(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: T0,
        updated_at_ms: T0,
        secrets: vec![SigningSecret {
            secret: SECRET.into(),
            expires_at_ms: None,
        }],
        is_static: false,
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
        version: 1,
    };
    registry(d).insert(&sub, None).unwrap();
}

fn enqueue(d: &mut Dispatcher<FakeHost>, event_type: &str, payload: &str) {
    let message = QueueMessage::Event {
        event_type: event_type.into(),
        payload: payload.as_bytes().to_vec(),
        audience: Target::All,
        trace: None,
    };
    d.host_mut().queue.push_back(message.encode());
}

/// Enqueues one event and lets the dispatcher take it.
fn event(d: &mut Dispatcher<FakeHost>, event_type: &str) {
    enqueue(d, event_type, r#"{"id":1}"#);
    d.on_queue_ready();
}

/// Answers the callout `token` with `status` and headers, as Envoy reports it.
fn answer(d: &mut Dispatcher<FakeHost>, token: u32, status: u16, headers: &[(&str, &str)]) {
    answer_with_body(d, token, status, headers, b"");
}

/// Answers the latest callout.
fn answer_last(d: &mut Dispatcher<FakeHost>, status: u16, headers: &[(&str, &str)]) {
    let token = last_token(d);
    answer(d, token, status, headers);
}

fn answer_with_body(
    d: &mut Dispatcher<FakeHost>,
    token: u32,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let retry_after = headers
        .iter()
        .find(|(k, _)| *k == "retry-after")
        .map(|(_, v)| v.to_string());
    let host = d.host_mut();
    host.answer = CalloutResponse {
        headers: 1 + headers.len(),
        status: Some(status.to_string()),
        retry_after,
        body_size: body.len(),
    };
    host.answer_body = body.to_vec();
    d.on_http_call_response(token, 1 + headers.len(), body.len());
}

fn sent(d: &Dispatcher<FakeHost>) -> &[Sent] {
    &d.host().sent
}

fn last_token(d: &Dispatcher<FakeHost>) -> u32 {
    sent(d).last().unwrap().token
}

/// The attempt log as the API reads it (written on the next tick), oldest first.
fn log_of(d: &mut Dispatcher<FakeHost>, id: &str) -> Vec<Attempt> {
    d.on_tick();
    let mut log = attempts::read(&d.host().store, id);
    log.reverse();
    log
}

fn record(d: &Dispatcher<FakeHost>, id: &str) -> Subscription {
    registry(d).get(id).unwrap().0
}

fn heartbeat(d: &Dispatcher<FakeHost>) -> u64 {
    let (bytes, _) = d.host().store.get(watchdog::HEARTBEAT_KEY).unwrap();
    String::from_utf8(bytes).unwrap().parse().unwrap()
}

fn iso(ms: u64) -> String {
    crate::support::time::format_rfc3339_millis(ms)
}

/// Advances the clock by `ms` in ticks of at most `step`, ticking after each.
fn run_for(d: &mut Dispatcher<FakeHost>, ms: u64, step: u64) {
    let mut left = ms;
    while left > 0 {
        let by = left.min(step);
        d.host().advance(by);
        d.on_tick();
        left -= by;
    }
}

const URL: &str = "https://hooks.example.com/in";
const NO_JITTER: &str = r#""jitter": 0, "retry_schedule": ["0s", "5s", "1m"]"#;

#[test]
fn retries_follow_the_schedule_and_a_longer_retry_after() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    assert_eq!(sent(&d).len(), 1);
    let first = sent(&d)[0].clone();
    assert_eq!(first.at_ms, T0);
    assert_eq!(first.request.cluster, "webhooks_egress_https");
    assert_eq!(first.header(":authority"), Some("hooks.example.com"));

    answer(&mut d, first.token, 500, &[]);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].attempt, log[0].state), (1, State::Retrying));
    assert_eq!(log[0].next_retry_at, Some(iso(T0 + 5000)));

    // Not before the schedule's 5 s; at 5 s, with the same webhook-id.
    d.host().advance(4_999);
    d.on_tick();
    assert_eq!(sent(&d).len(), 1, "no retry before its time");
    d.host().advance(1);
    d.on_tick();
    assert_eq!(sent(&d).len(), 2);
    let second = sent(&d)[1].clone();
    assert_eq!(second.header("webhook-id"), first.header("webhook-id"));

    // Retry-After (120 s) beyond the schedule's 1 m wins.
    answer(&mut d, second.token, 503, &[("retry-after", "120")]);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log[1].next_retry_at, Some(iso(T0 + 5_000 + 120_000)));
    run_for(&mut d, 119_999, 10_000);
    assert_eq!(sent(&d).len(), 2, "Retry-After is honoured");
    run_for(&mut d, 1, 1);
    assert_eq!(sent(&d).len(), 3);

    // The schedule is used up: exhausted, kept for replay.
    answer_last(&mut d, 500, &[]);
    let log = log_of(&mut d, "sub_a");
    assert_eq!((log[2].attempt, log[2].state), (3, State::Exhausted));
    assert_eq!(d.host().metric(Metric::DeliveriesExhausted), 1);
    assert_eq!(d.host().metric(Metric::DeliveriesFailed), 3);
    assert_eq!(d.host().metric(Metric::DeliveryAttempts), 3);
    assert_eq!(d.replayable.len(), 1);
}

#[test]
fn a_shorter_retry_after_does_not_hasten_the_schedule() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 429, &[("retry-after", "1")]);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log[0].next_retry_at, Some(iso(T0 + 5000)));
}

#[test]
fn jitter_is_drawn_only_for_a_retry_and_stays_within_its_bound() {
    let mut d = dispatcher(r#""jitter": 0.2, "retry_schedule": ["0s", "10s"]"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    let draws = d.host().fills;
    answer_last(&mut d, 200, &[]);
    assert_eq!(d.host().fills, draws, "a success draws no jitter");

    event(&mut d, "order.created");
    let draws = d.host().fills;
    answer_last(&mut d, 500, &[]);
    assert_eq!(d.host().fills, draws + 1, "a retry draws its jitter once");
    let log = log_of(&mut d, "sub_a");
    let next = log[1].next_retry_at.clone().unwrap();
    assert!(
        next >= iso(T0 + 8_000) && next <= iso(T0 + 12_000),
        "{next}"
    );
}

#[test]
fn a_410_disables_the_subscription_and_later_events_skip_it() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 410, &[]);
    let sub = record(&d, "sub_a");
    assert_eq!(sub.status, Status::Disabled);
    assert_eq!(sub.disabled_reason.as_deref(), Some("gone"));
    assert_eq!(d.host().metric(Metric::SubscriptionsDisabled), 1);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(
        (log[0].state, log[0].response_status),
        (State::Failed, Some(410))
    );
    assert_eq!(d.replayable.len(), 1, "a 410'd message can be replayed");

    event(&mut d, "order.created");
    run_for(&mut d, 60_000, 10_000);
    assert_eq!(sent(&d).len(), 1, "no delivery to a disabled subscription");
}

#[test]
fn continuous_failure_for_disable_after_disables() {
    let mut d = dispatcher(
        r#""jitter": 0, "retry_schedule": ["0s", "6s", "6s", "6s"], "disable_after": "10s""#,
    );
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 500, &[]);
    run_for(&mut d, 6_000, 1_000);
    answer_last(&mut d, 500, &[]);
    assert_eq!(
        record(&d, "sub_a").status,
        Status::Active,
        "failing for 6 s only"
    );
    run_for(&mut d, 6_000, 1_000);
    answer_last(&mut d, 500, &[]);
    let sub = record(&d, "sub_a");
    assert_eq!(sub.status, Status::Disabled, "failing for 12 s");
    assert_eq!(sub.disabled_reason.as_deref(), Some("failing"));
    assert_eq!(d.host().metric(Metric::SubscriptionsDisabled), 1);
}

#[test]
fn a_success_restarts_the_failure_clock() {
    let mut d = dispatcher(
        r#""jitter": 0, "retry_schedule": ["0s", "6s", "6s", "6s"], "disable_after": "10s""#,
    );
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 500, &[]);
    run_for(&mut d, 6_000, 1_000);
    answer_last(&mut d, 200, &[]);
    event(&mut d, "order.created");
    answer_last(&mut d, 500, &[]);
    run_for(&mut d, 6_000, 1_000);
    answer_last(&mut d, 500, &[]);
    assert_eq!(record(&d, "sub_a").status, Status::Active);
}

#[test]
fn shutdown_turns_a_retry_into_exhaustion_and_says_done_when_idle() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    assert!(d.on_done(), "nothing pending: stop at once");

    event(&mut d, "order.created");
    assert!(!d.on_done(), "a delivery in flight: wait for it");
    assert_eq!(d.host().done_calls, 0);
    answer_last(&mut d, 500, &[]);
    assert_eq!(d.host().done_calls, 1, "done once nothing is pending");
    let log = attempts::read(&d.host().store, "sub_a");
    assert_eq!(log.len(), 1, "the log is flushed before done");
    assert_eq!(
        (log[0].state, log[0].next_retry_at.clone()),
        (State::Exhausted, None)
    );
}

#[test]
fn shutdown_gives_up_waiting_after_drain_timeout() {
    let mut d = dispatcher(r#""drain_timeout": "2s""#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    assert!(!d.on_done());
    run_for(&mut d, 1_900, TICK_MS);
    assert_eq!(d.host().done_calls, 0);
    run_for(&mut d, 100, TICK_MS);
    assert_eq!(d.host().done_calls, 1);
    run_for(&mut d, 1_000, TICK_MS);
    assert_eq!(d.host().done_calls, 1, "done only once");
}

#[test]
fn an_unresolved_host_is_waited_for_without_counting_an_attempt() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    d.host_mut().refuse = Some(CalloutRefused {
        unresolved: true,
        no_token: false,
    });
    event(&mut d, "order.created");
    assert_eq!(d.host().refusals, 1);
    assert_eq!(d.host().tick_ms, Some(FAST_TICK_MS), "the tick speeds up");
    run_for(&mut d, 5 * FAST_TICK_MS, FAST_TICK_MS);
    assert_eq!(d.host().refusals, 6, "tried again every fast tick");

    d.host_mut().refuse = None; // Envoy's DNS cache has the host now
    run_for(&mut d, FAST_TICK_MS, FAST_TICK_MS);
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(
        d.host().metric(Metric::DeliveryAttempts),
        1,
        "waits are no attempts"
    );
    answer_last(&mut d, 200, &[]);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(
        (log.len(), log[0].attempt, log[0].state),
        (1, 1, State::Succeeded)
    );

    run_for(&mut d, 1_000, FAST_TICK_MS);
    assert_eq!(d.host().tick_ms, Some(TICK_MS), "back to the slow tick");
}

#[test]
fn a_host_that_never_resolves_fails_as_unreachable_after_the_timeout() {
    let mut d = dispatcher(r#""jitter": 0, "retry_schedule": ["0s", "5s"], "timeout": "1s""#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    d.host_mut().refuse = Some(CalloutRefused {
        unresolved: true,
        no_token: false,
    });
    event(&mut d, "order.created");
    run_for(&mut d, 990, FAST_TICK_MS);
    assert_eq!(
        d.host().metric(Metric::DeliveryAttempts),
        0,
        "still waiting"
    );
    run_for(&mut d, FAST_TICK_MS, FAST_TICK_MS);
    assert_eq!(d.host().metric(Metric::DeliveryAttempts), 1);
    let log = log_of(&mut d, "sub_a");
    assert_eq!((log.len(), log[0].state), (1, State::Retrying));
    let error = log[0].error.clone().unwrap();
    assert!(error.starts_with("destination unreachable"), "{error}");
}

#[test]
fn any_other_refusal_is_a_failed_attempt_at_once() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    d.host_mut().refuse = Some(CalloutRefused {
        unresolved: false,
        no_token: false,
    });
    event(&mut d, "order.created");
    let log = log_of(&mut d, "sub_a");
    let error = log[0].error.clone().unwrap();
    assert!(
        error.contains("does cluster webhooks_egress_https exist?"),
        "{error}"
    );
}

#[test]
fn envoys_own_503_is_a_connection_failure_and_a_reset_is_no_answer() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    let body = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: CERTIFICATE_VERIFY_FAILED";
    let token = last_token(&d);
    answer_with_body(&mut d, token, 503, &[], body);
    event(&mut d, "order.created");
    d.host_mut().answer = CalloutResponse::default();
    let token = last_token(&d);
    d.on_http_call_response(token, 0, 0);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log[0].response_status, None);
    let error = log[0].error.clone().unwrap();
    assert!(error.starts_with("connection failed: TLS error"), "{error}");
    assert_eq!(
        log[1].error.as_deref(),
        Some(crate::dispatcher::delivery::RESET)
    );
}

#[test]
fn attempts_stay_within_max_in_flight() {
    let mut d = dispatcher(r#""max_in_flight": 3"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    for _ in 0..10 {
        enqueue(&mut d, "order.created", "{}");
    }
    d.on_queue_ready();
    assert_eq!(sent(&d).len(), 3);
    run_for(&mut d, 1_000, TICK_MS);
    assert_eq!(sent(&d).len(), 3, "waiting is no failure");
    let first = sent(&d)[0].token;
    answer(&mut d, first, 200, &[]);
    assert_eq!(sent(&d).len(), 4, "one answer, one more attempt");
    assert_eq!(d.host().metric(Metric::QueueDepth), 9);
}

#[test]
fn the_queue_bounds_are_gauges_from_the_start() {
    let mut d = dispatcher(r#""max_queue": 7, "max_queue_bytes": 4096"#);
    assert_eq!(d.host().metric(Metric::QueueMax), 7);
    assert_eq!(d.host().metric(Metric::QueueMaxBytes), 4096);
    run_for(&mut d, 2_000, TICK_MS);
    assert_eq!(d.host().metric(Metric::QueueMax), 7);
}

#[test]
fn a_changed_url_and_secret_are_used_once_the_generation_moves() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 200, &[]);
    assert_eq!(sent(&d)[0].header(":authority"), Some("hooks.example.com"));

    let patched = registry(&d).update("sub_a", |s| {
        s.url = "https://other.example.com/hook".into();
        s.secrets = vec![SigningSecret {
            secret: OTHER_SECRET.into(),
            expires_at_ms: None,
        }];
        Ok::<(), ()>(())
    });
    assert!(matches!(patched, Ok(Ok(_))));
    event(&mut d, "order.created");
    let second = sent(&d)[1].clone();
    assert_eq!(second.header(":authority"), Some("other.example.com"));
    assert_eq!(second.header(":path"), Some("/hook"));
    let timestamp: u64 = second.header("webhook-timestamp").unwrap().parse().unwrap();
    let expected = crate::model::signing::signature_header(
        &[&Secret::parse(OTHER_SECRET).unwrap()],
        second.header("webhook-id").unwrap(),
        timestamp,
        &second.body,
    );
    assert_eq!(second.header("webhook-signature"), Some(expected.as_str()));

    // A changed event filter reaches the fan-out's candidate cache too.
    let refiltered = registry(&d).update("sub_a", |s| {
        s.events = vec!["invoice.*".into()];
        Ok::<(), ()>(())
    });
    assert!(matches!(refiltered, Ok(Ok(_))));
    event(&mut d, "order.created");
    assert_eq!(sent(&d).len(), 2, "no longer wanted");
    event(&mut d, "invoice.paid");
    assert_eq!(sent(&d).len(), 3);
}

#[test]
fn a_deleted_subscription_gets_no_further_attempt() {
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    answer_last(&mut d, 500, &[]);
    registry(&d).delete("sub_a").unwrap();
    run_for(&mut d, 10_000, 1_000);
    assert_eq!(sent(&d).len(), 1);
    assert!(d.outbox.is_empty());
}

#[test]
fn a_full_queue_drops_the_oldest_and_a_replay_sends_it_again() {
    let mut d = dispatcher(r#""max_queue": 1, "retry_schedule": ["1s", "5s"]"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    event(&mut d, "order.updated");
    assert_eq!(d.host().metric(Metric::EventsDropped), 1);
    let log = log_of(&mut d, "sub_a");
    assert_eq!(
        (log[0].state, log[0].event_type.as_str()),
        (State::Dropped, "order.created")
    );
    let dropped = log[0].webhook_id.clone();

    d.host_mut().queue.push_back(
        QueueMessage::Replay {
            webhook_id: dropped.clone(),
            kept: Vec::new(),
        }
        .encode(),
    );
    d.on_queue_ready();
    run_for(&mut d, 1_000, TICK_MS);
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(sent(&d)[0].header("webhook-id"), Some(dropped.as_str()));
}

#[test]
fn the_heartbeat_is_written_after_syncing_static_subscriptions() {
    let config = format!(
        r#"{{"subscriptions": [{{"id": "sub_static_1", "consumer": "ops", "url": "{URL}",
            "events": ["order.*"], "secret": "{SECRET}"}}]}}"#
    );
    let config = crate::config::parse(config.as_bytes()).unwrap();
    let mut d = Dispatcher::new(Rc::new(config), FakeHost::new(T0));
    d.host().step_ms.set(100); // every clock reading takes 100 ms
    assert!(d.on_configure());
    let synced_at = record(&d, "sub_static_1").created_at_ms;
    assert!(
        heartbeat(&d) > synced_at,
        "the heartbeat follows sync_static"
    );
    assert!(d.host().queue_registered);
    assert_eq!(d.host().tick_ms, Some(TICK_MS));
}

#[test]
fn a_long_burst_without_ticks_keeps_the_heartbeat_fresh() {
    let mut d = dispatcher(r#""max_in_flight": 1"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    let mut watchdog = watchdog::Watchdog::default();
    // 30 s of queue and response callbacks, each 400 ms apart, and no tick at all.
    for _ in 0..75 {
        d.host().advance(200);
        event(&mut d, "order.created");
        assert!(d.host().clock() - heartbeat(&d) < watchdog::BEAT_EVERY_MS);
        d.host().advance(200);
        answer_last(&mut d, 200, &[]);
        let now = d.host().clock();
        assert!(now - heartbeat(&d) < watchdog::BEAT_EVERY_MS);
        let beat = watchdog::beat(heartbeat(&d));
        assert_eq!(watchdog.check(Some(&beat), now), None, "never looks dead");
    }
}

#[test]
fn one_callback_takes_at_most_max_dequeue_messages_and_ticks_take_the_rest() {
    let mut d = dispatcher("");
    subscribe(&d, "sub_a", URL, &["order.*"]);
    for _ in 0..(2 * MAX_DEQUEUE + 500) {
        enqueue(&mut d, "noise.happened", "{}");
    }
    enqueue(&mut d, "order.created", "{}");
    d.on_queue_ready();
    assert_eq!(d.host().dequeues, MAX_DEQUEUE);
    assert_eq!(d.host().queue.len(), MAX_DEQUEUE + 501);
    d.on_tick();
    assert_eq!(d.host().queue.len(), 501);
    assert!(sent(&d).is_empty());
    d.on_tick();
    assert!(d.host().queue.is_empty());
    assert_eq!(
        sent(&d).len(),
        1,
        "the last event is delivered from the tick"
    );
}

#[test]
fn a_test_event_goes_to_its_subscription_only() {
    let mut d = dispatcher("");
    subscribe(&d, "sub_a", URL, &["order.*"]);
    subscribe(&d, "sub_b", "https://b.example.com/", &["order.*"]);
    let test = QueueMessage::Test {
        subscription_id: "sub_b".into(),
        payload: b"{}".to_vec(),
    };
    d.host_mut().queue.push_back(test.encode());
    d.on_queue_ready();
    assert_eq!(sent(&d).len(), 1);
    assert_eq!(sent(&d)[0].header(":authority"), Some("b.example.com"));
}

#[test]
fn a_ticks_attempt_log_holds_the_newest_max_entries_only() {
    let mut d = dispatcher(r#""retry_schedule": ["0s", "1h"]"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    d.host_mut().refuse = Some(CalloutRefused {
        unresolved: false,
        no_token: false,
    });
    for n in 0..(attempts::MAX_ENTRIES + 10) {
        enqueue(&mut d, &format!("order.n{n}"), "{}");
    }
    d.on_queue_ready();
    assert_eq!(
        d.unlogged["sub_a"].len(),
        attempts::MAX_ENTRIES,
        "gathered: bounded"
    );
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log.len(), attempts::MAX_ENTRIES);
    assert_eq!(log[0].event_type, "order.n10", "the oldest ten gave way");
    let newest = format!("order.n{}", attempts::MAX_ENTRIES + 9);
    assert_eq!(log.last().unwrap().event_type, newest);
}

#[test]
fn a_message_of_a_subscription_disabled_meanwhile_is_kept_for_replay() {
    let mut d = dispatcher(r#""retry_schedule": ["1s", "5s"]"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    event(&mut d, "order.created");
    let disabled = registry(&d).update("sub_a", |s| {
        s.status = Status::Disabled;
        Ok::<(), ()>(())
    });
    assert!(matches!(disabled, Ok(Ok(_))));
    run_for(&mut d, 1_000, TICK_MS);
    assert!(sent(&d).is_empty());
    let log = log_of(&mut d, "sub_a");
    assert_eq!(log[0].state, State::Failed);
    assert_eq!(log[0].error.as_deref(), Some("subscription disabled"));
    assert_eq!(d.replayable.len(), 1);
}

#[test]
fn a_stored_url_the_policy_now_refuses_is_not_delivered_to() {
    // Stored under a looser configuration (the store is shared data: a subscription created
    // before the policy was tightened, or written by an older plugin).
    let mut d = dispatcher(r#""allow_http": false, "allow_private_destinations": false"#);
    subscribe(&d, "sub_old", "http://127.0.0.1:9901/quitquitquit", &["*"]);
    event(&mut d, "order.created");
    run_for(&mut d, 1000, 100);
    assert!(sent(&d).is_empty(), "delivered to a refused URL");
    assert_eq!(d.host().metric(Metric::DeliveriesFailed), 1);
}

mod fleet;
mod session;
mod signing;

#[test]
fn recover_sends_the_kept_messages_since_a_time_in_detection_order() {
    let mut d = dispatcher(r#""retry_schedule": ["0s"], "max_replay_per_consumer": 3"#);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    // Five messages a millisecond apart, each failing once: exhausted, kept (three at most).
    for _ in 0..5 {
        event(&mut d, "order.created");
        answer_last(&mut d, 500, &[]);
        d.host().advance(1);
    }
    d.on_tick();
    let ids: Vec<String> = sent(&d)
        .iter()
        .map(|s| s.header("webhook-id").unwrap().to_string())
        .collect();
    let index = crate::registry::kept::read(&*d.host().store, "sub_a");
    assert_eq!(index.kept.len(), 3);
    assert_eq!(index.lost.len(), 2, "the two oldest are no longer kept");
    let since = index.kept[1];
    assert_eq!(index.count_since(since), (2, 0));
    assert_eq!(index.count_since(0), (3, 2));

    d.host_mut().queue.push_back(
        QueueMessage::Recover {
            subscription_id: "sub_a".into(),
            since_ms: since,
        }
        .encode(),
    );
    d.on_queue_ready();
    run_for(&mut d, 1_000, TICK_MS);
    let again: Vec<&str> = sent(&d)[5..]
        .iter()
        .map(|s| s.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        again,
        [ids[3].as_str(), ids[4].as_str()],
        "same ids, in order"
    );
    let index = crate::registry::kept::read(&*d.host().store, "sub_a");
    assert_eq!(
        index.count_since(since),
        (0, 0),
        "in flight: no longer kept"
    );
}

#[test]
fn a_traced_event_s_webhooks_carry_its_trace_context_on_every_attempt() {
    use crate::model::trace::TraceContext;
    let mut d = dispatcher(NO_JITTER);
    subscribe(&d, "sub_a", URL, &["order.*"]);
    let trace = TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: "rojo=1".into(),
    };
    let traced = QueueMessage::Event {
        event_type: "order.created".into(),
        payload: b"{}".to_vec(),
        audience: Target::All,
        trace: Some(trace.clone()),
    };
    d.host_mut().queue.push_back(traced.encode());
    d.on_queue_ready();
    answer_last(&mut d, 500, &[]);
    run_for(&mut d, 5_000, TICK_MS);
    event(&mut d, "order.updated");
    let sent = sent(&d);
    assert_eq!(
        sent.len(),
        3,
        "two attempts of the traced event, one of the other"
    );
    for attempt in &sent[..2] {
        assert_eq!(
            attempt.header("traceparent"),
            Some(trace.traceparent.as_str())
        );
        assert_eq!(attempt.header("tracestate"), Some("rojo=1"));
    }
    assert_eq!(sent[2].header("traceparent"), None);
    assert_eq!(sent[2].header("tracestate"), None);
}

#[test]
fn a_fifo_subscription_gets_one_attempt_at_a_time_in_detection_order() {
    let mut d = dispatcher(NO_JITTER);
    let mut sub = record_of_new(&d, "sub_f");
    sub.ordering = crate::model::subscription::Ordering::Fifo;
    registry(&d).insert(&sub, None).unwrap();
    subscribe(&d, "sub_c", "https://other.example.com/in", &["order.*"]);
    for _ in 0..3 {
        event(&mut d, "order.created");
    }
    let to = |d: &Dispatcher<FakeHost>, host: &str| -> Vec<Sent> {
        sent(d)
            .iter()
            .filter(|s| s.header(":authority") == Some(host))
            .cloned()
            .collect()
    };
    assert_eq!(to(&d, "hooks.example.com").len(), 1, "one in flight");
    assert_eq!(
        to(&d, "other.example.com").len(),
        3,
        "the concurrent one is not held back"
    );
    let first = to(&d, "hooks.example.com")[0].clone();
    answer(&mut d, first.token, 500, &[]);
    run_for(&mut d, 4_000, TICK_MS);
    assert_eq!(
        to(&d, "hooks.example.com").len(),
        1,
        "the failure holds the rest back"
    );
    run_for(&mut d, 1_000, TICK_MS);
    let retried = to(&d, "hooks.example.com");
    assert_eq!(retried.len(), 2);
    assert_eq!(retried[1].header("webhook-id"), first.header("webhook-id"));
    answer(&mut d, retried[1].token, 204, &[]);
    for n in 3..=4 {
        let now = to(&d, "hooks.example.com");
        assert_eq!(now.len(), n, "the next one, after the previous succeeded");
        answer(&mut d, now[n - 1].token, 204, &[]);
    }
    let ids: Vec<_> = to(&d, "hooks.example.com")
        .iter()
        .map(|s| s.header("webhook-id").unwrap().to_string())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
}

/// A subscription record like [`subscribe`]'s, not inserted.
fn record_of_new(d: &Dispatcher<FakeHost>, id: &str) -> Subscription {
    subscribe(d, id, URL, &["order.*"]);
    let sub = record(d, id);
    registry(d).delete(id).unwrap();
    sub
}
