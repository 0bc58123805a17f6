//! The filter's stream states against a fake host: API calls (refused at their headers, with a
//! body buffered, ending in trailers, too large), events (headers, body chunks, `on_log`), a
//! response cut short, requests that make nothing, and a dispatcher presumed dead.

use super::fake::{logged, FakeStreamHost};
use super::*;
use crate::config;
use crate::model::audience::Target;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod fleet;

const KEY: &str = "key-acme-0123456789";
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";

fn filter() -> Rc<Filter<FakeStreamHost>> {
    let sha: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201],
             "audience": {"json": "/customer"}},
            {"type": "order.shipped", "method": "POST", "path": "/orders/{id}/ship",
             "audience": {"header": "x-tenant"}}
        ],
        "api": {"keys": [{"consumer": "acme", "sha256": sha}], "max_body_bytes": 1024}
    });
    let config = config::parse(config.to_string().as_bytes()).unwrap();
    let filter = Rc::new(Filter::new(Rc::new(config), FakeStreamHost::default()));
    filter.configure();
    filter
}

fn host(filter: &Filter<FakeStreamHost>) -> &FakeStreamHost {
    &filter.host
}

/// The only local reply so far: its status and JSON body.
fn reply(filter: &Filter<FakeStreamHost>) -> (u16, Value) {
    let replies = host(filter).replies.borrow();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let body = serde_json::from_slice(&replies[0].body).unwrap_or(Value::Null);
    (replies[0].status, body)
}

/// The only queued message, decoded.
fn queued(filter: &Filter<FakeStreamHost>) -> (String, Value, Target) {
    let queue = host(filter).queue.borrow();
    assert_eq!(queue.len(), 1, "one message");
    match QueueMessage::decode(&queue[0]).unwrap() {
        QueueMessage::Event {
            event_type,
            payload,
            audience,
            ..
        } => (
            event_type,
            serde_json::from_slice(&payload).unwrap(),
            audience,
        ),
        other => panic!("not an event: {other:?}"),
    }
}

fn create_body() -> Vec<u8> {
    json!({"url": "https://hooks.example.com/in", "events": ["order.*"]})
        .to_string()
        .into_bytes()
}

fn post_subscription(filter: &Filter<FakeStreamHost>, body: &[u8]) {
    let length = body.len().to_string();
    host(filter).request(&[
        (":method", "POST"),
        (":path", SUBSCRIPTIONS),
        ("x-api-key", KEY),
        ("content-type", "application/json"),
        ("content-length", &length),
    ]);
}

#[test]
fn an_unauthenticated_api_call_is_answered_at_its_headers_without_reading_its_body() {
    let f = filter();
    host(&f).request(&[(":method", "POST"), (":path", SUBSCRIPTIONS)]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let (status, body) = reply(&f);
    assert_eq!(status, 401, "{body}");
    // The call is over: what Envoy may still pass is not read, answered or sent upstream.
    let size = host(&f).request_data(&create_body());
    assert_eq!(s.on_request_body(size, true), Flow::Continue);
    assert_eq!(s.on_request_trailers(), Flow::Continue);
    s.on_log();
    assert_eq!(host(&f).body_reads.get(), 0);
    assert_eq!(host(&f).replies.borrow().len(), 1);
    assert!(host(&f).queue.borrow().is_empty());
}

#[test]
fn an_api_call_waits_for_its_whole_body_then_is_answered() {
    let f = filter();
    let body = create_body();
    post_subscription(&f, &body);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let (first, rest) = body.split_at(10);
    let size = host(&f).request_data(first);
    assert_eq!(s.on_request_body(size, false), Flow::Pause);
    assert!(host(&f).replies.borrow().is_empty(), "not before its end");
    let size = host(&f).request_data(rest);
    assert_eq!(s.on_request_body(size, true), Flow::Pause);
    let (status, value) = reply(&f);
    assert_eq!(status, 201, "{value}");
    assert_eq!(value["url"], "https://hooks.example.com/in");
    let id = value["id"].as_str().unwrap();
    let location = ("location".to_string(), format!("{SUBSCRIPTIONS}/{id}"));
    assert!(host(&f).replies.borrow()[0].headers.contains(&location));
    // Written to shared data: the next call sees it.
    post_subscription(&f, &[]);
    host(&f).request_headers.borrow_mut()[0].1 = b"GET".to_vec();
    let mut list = Stream::new(Rc::clone(&f));
    assert_eq!(list.on_request_headers(true), Flow::Pause);
    let replies = host(&f).replies.borrow();
    let listed: Value = serde_json::from_slice(&replies[1].body).unwrap();
    assert_eq!(listed["data"][0]["id"], id, "{listed}");
    drop(replies);
    // The response phase of a locally answered call makes nothing.
    host(&f).response(&[(":status", "201")]);
    assert_eq!(s.on_response_headers(true), Flow::Continue);
    s.on_log();
    assert!(host(&f).queue.borrow().is_empty());
}

#[test]
fn an_api_call_whose_body_ends_in_trailers_is_answered_at_the_trailers() {
    let f = filter();
    let body = create_body();
    post_subscription(&f, &body);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let size = host(&f).request_data(&body);
    assert_eq!(s.on_request_body(size, false), Flow::Pause);
    assert!(host(&f).replies.borrow().is_empty());
    assert_eq!(s.on_request_trailers(), Flow::Pause);
    let (status, value) = reply(&f);
    assert_eq!(status, 201, "{value}");
}

#[test]
fn an_api_call_without_a_body_is_answered_at_its_headers() {
    let f = filter();
    host(&f).request(&[
        (":method", "GET"),
        (":path", SUBSCRIPTIONS),
        ("x-api-key", KEY),
    ]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(true), Flow::Pause);
    let (status, value) = reply(&f);
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"], json!([]));
}

#[test]
fn the_portal_page_is_answered_at_its_headers_without_authentication_gzipped_when_accepted() {
    let config = json!({"api": {"portal": {"enabled": true}}});
    let config = config::parse(config.to_string().as_bytes()).unwrap();
    let f = Rc::new(Filter::new(Rc::new(config), FakeStreamHost::default()));
    f.configure();
    host(&f).request(&[(":method", "GET"), (":path", "/webhooks/portal")]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let html = {
        let replies = host(&f).replies.borrow();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].status, 200);
        String::from_utf8(replies[0].body.clone()).unwrap()
    };
    let start = html.find("/webhooks/portal/assets/").unwrap();
    let script = html[start..]
        .split('"')
        .next()
        .unwrap()
        .replace("/icon.svg", "/app.js");
    host(&f).request(&[
        (":method", "GET"),
        (":path", &script),
        ("accept-encoding", "gzip, br"),
    ]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(true), Flow::Pause);
    let replies = host(&f).replies.borrow();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1].status, 200, "{script}");
    assert!(replies[1].body.starts_with(&[0x1f, 0x8b]), "gzipped");
}

#[test]
fn an_api_body_over_the_limit_is_answered_413_declared_or_streamed() {
    // Declared too large: refused at the headers.
    let f = filter();
    host(&f).request(&[
        (":method", "POST"),
        (":path", SUBSCRIPTIONS),
        ("x-api-key", KEY),
        ("content-length", " 1025 "),
    ]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let (status, value) = reply(&f);
    assert_eq!(status, 413, "{value}");
    assert_eq!(value["error"]["code"], "payload_too_large", "{value}");

    // Undeclared: refused once the buffered body passes the limit, never read.
    let f = filter();
    host(&f).request(&[
        (":method", "POST"),
        (":path", SUBSCRIPTIONS),
        ("x-api-key", KEY),
    ]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Pause);
    let size = host(&f).request_data(&[b' '; 1024]);
    assert_eq!(s.on_request_body(size, false), Flow::Pause);
    assert!(
        host(&f).replies.borrow().is_empty(),
        "1024 bytes are allowed"
    );
    let size = host(&f).request_data(b" ");
    assert_eq!(s.on_request_body(size, false), Flow::Pause);
    assert_eq!(reply(&f).0, 413);
    assert_eq!(host(&f).body_reads.get(), 0);
}

#[test]
fn an_event_is_read_as_its_body_streams_and_queued_at_on_log() {
    let f = filter();
    host(&f).request(&[(":method", "POST"), (":path", "/orders?draft=0")]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(false), Flow::Continue);
    assert_eq!(s.on_request_body(0, true), Flow::Continue);
    host(&f).response(&[(":status", "201"), ("content-type", "application/json")]);
    assert_eq!(s.on_response_headers(false), Flow::Continue);
    for (chunk, end) in [
        (&br#"{"id":"o1","#[..], false),
        (br#""customer":"acme"}"#, true),
    ] {
        let size = host(&f).response_data(chunk);
        assert_eq!(s.on_response_body(size, end), Flow::Continue);
    }
    assert!(host(&f).queue.borrow().is_empty(), "nothing before on_log");
    s.on_log();
    let (event_type, payload, audience) = queued(&f);
    assert_eq!(event_type, "order.created");
    assert_eq!(audience, Target::Consumer("acme".into()));
    assert_eq!(payload["type"], "order.created");
    assert_eq!(
        payload["data"]["object"],
        json!({"id": "o1", "customer": "acme"})
    );
    assert_eq!(
        payload["data"]["request"]["path"], "/orders",
        "query stripped"
    );
    assert_eq!(payload["data"]["request"]["status"], 201);
    assert_eq!(host(&f).detected.get(), 1);
    assert_eq!(host(&f).dropped.get(), 0);
    // on_log runs once; a second call would make nothing more.
    s.on_log();
    assert_eq!(host(&f).queue.borrow().len(), 1);
}

#[test]
fn a_response_cut_short_still_makes_its_event_with_object_null() {
    let f = filter();
    host(&f).request(&[
        (":method", "POST"),
        (":path", "/orders/o7/ship"),
        ("x-tenant", "acme"),
    ]);
    let mut s = Stream::new(Rc::clone(&f));
    assert_eq!(s.on_request_headers(true), Flow::Continue);
    host(&f).response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(s.on_response_headers(false), Flow::Continue);
    let size = host(&f).response_data(br#"{"id":"o7","state":"shi"#);
    assert_eq!(s.on_response_body(size, false), Flow::Continue);
    // No end of stream, no trailers: the stream was reset.
    s.on_log();
    let (event_type, payload, audience) = queued(&f);
    assert_eq!(event_type, "order.shipped");
    assert_eq!(
        audience,
        Target::Consumer("acme".into()),
        "the header audience"
    );
    assert_eq!(payload["data"]["object"], Value::Null);
    assert_eq!(payload["data"]["request"]["params"], json!({"id": "o7"}));
}

#[test]
fn a_response_ending_in_trailers_is_whole() {
    let f = filter();
    host(&f).request(&[(":method", "POST"), (":path", "/orders")]);
    let mut s = Stream::new(Rc::clone(&f));
    s.on_request_headers(true);
    host(&f).response(&[(":status", "201"), ("content-type", "application/json")]);
    s.on_response_headers(false);
    let size = host(&f).response_data(br#"{"customer":"acme"}"#);
    s.on_response_body(size, false);
    assert_eq!(s.on_response_trailers(), Flow::Continue);
    s.on_log();
    let (_, payload, audience) = queued(&f);
    assert_eq!(payload["data"]["object"], json!({"customer": "acme"}));
    assert_eq!(audience, Target::Consumer("acme".into()));
}

#[test]
fn a_get_or_a_404_makes_nothing_and_reads_no_body() {
    let f = filter();
    for (method, status) in [("GET", "200"), ("POST", "404")] {
        host(&f).request(&[(":method", method), (":path", "/orders")]);
        let mut s = Stream::new(Rc::clone(&f));
        assert_eq!(s.on_request_headers(true), Flow::Continue);
        host(&f).response(&[(":status", status), ("content-type", "application/json")]);
        assert_eq!(s.on_response_headers(false), Flow::Continue);
        let size = host(&f).response_data(br#"{"customer":"acme"}"#);
        assert_eq!(s.on_response_body(size, true), Flow::Continue);
        s.on_log();
    }
    assert!(host(&f).queue.borrow().is_empty());
    assert!(host(&f).replies.borrow().is_empty());
    assert_eq!(host(&f).body_reads.get(), 0);
    assert_eq!(host(&f).detected.get(), 0);
}

/// One event through a whole stream.
fn make_event(f: &Rc<Filter<FakeStreamHost>>) {
    host(f).request(&[(":method", "POST"), (":path", "/orders")]);
    let mut s = Stream::new(Rc::clone(f));
    s.on_request_headers(true);
    host(f).response(&[(":status", "201")]);
    s.on_response_headers(true);
    s.on_log();
}

#[test]
fn with_the_dispatcher_presumed_dead_events_are_dropped_and_counted() {
    let f = filter();
    let store = host(&f).store();
    let now = host(&f).now_ms.get();
    store
        .set(watchdog::HEARTBEAT_KEY, &watchdog::beat(now), None)
        .unwrap();
    f.tick();
    assert_eq!(host(&f).alive_gauge.get(), Some(true));
    host(&f).now_ms.set(now + watchdog::DEAD_AFTER_MS);
    f.tick();
    assert_eq!(host(&f).alive_gauge.get(), Some(false));
    make_event(&f);
    make_event(&f);
    assert!(
        host(&f).queue.borrow().is_empty(),
        "nothing queued where nothing reads"
    );
    assert_eq!(host(&f).detected.get(), 2);
    assert_eq!(host(&f).dropped.get(), 2);
    assert_eq!(f.dropped.get(), 2);

    // Heartbeats again: events are queued again.
    let later = now + watchdog::DEAD_AFTER_MS + 1;
    store
        .set(watchdog::HEARTBEAT_KEY, &watchdog::beat(later), None)
        .unwrap();
    host(&f).now_ms.set(later);
    f.tick();
    assert_eq!(host(&f).alive_gauge.get(), Some(true));
    make_event(&f);
    assert_eq!(host(&f).queue.borrow().len(), 1);
    assert_eq!(host(&f).dropped.get(), 2);
}

#[test]
fn without_the_dispatchers_queue_events_are_dropped_and_counted() {
    let f = filter();
    host(&f).queue_exists.set(false);
    make_event(&f);
    assert_eq!(host(&f).dropped.get(), 1);
    assert!(host(&f).queue.borrow().is_empty());
    // The queue appears (the dispatcher registered it after this worker started).
    host(&f).queue_exists.set(true);
    make_event(&f);
    assert_eq!(host(&f).queue.borrow().len(), 1);
    assert_eq!(host(&f).dropped.get(), 1);
}

#[test]
fn before_the_first_heartbeat_the_dispatcher_counts_as_starting() {
    let f = filter();
    host(&f).now_ms.set(u64::MAX);
    f.tick();
    assert_eq!(host(&f).alive_gauge.get(), Some(true));
    make_event(&f);
    assert_eq!(host(&f).queue.borrow().len(), 1);
}

#[test]
fn a_dead_dispatcher_is_logged_once_and_drops_warn_once_per_thousand() {
    let f = filter();
    logged();
    let now = host(&f).now_ms.get();
    host(&f)
        .store()
        .set(watchdog::HEARTBEAT_KEY, &watchdog::beat(now), None)
        .unwrap();
    host(&f).now_ms.set(now + 60_000);
    f.tick();
    f.tick();
    let lines = logged();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].0, log::Level::Error);
    assert!(lines[0].1.contains("has not run for 60000 ms"), "{lines:?}");

    for _ in 0..1001 {
        make_event(&f);
    }
    assert_eq!(host(&f).dropped.get(), 1001);
    let lines = logged();
    let warnings: Vec<&str> = lines.iter().map(|(_, line)| line.as_str()).collect();
    assert_eq!(
        warnings,
        [
            "proxy-webhooks: event dropped (1 so far on this worker): the dispatcher is not running (restart Envoy)",
            "proxy-webhooks: event dropped (1001 so far on this worker): the dispatcher is not running (restart Envoy)",
        ]
    );

    // A missing queue is a configuration mistake, and says so.
    let f = filter();
    host(&f).queue_exists.set(false);
    make_event(&f);
    let lines = logged();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].1.contains(
            "is the webhooks_dispatcher bootstrap extension configured with the same vm_id?"
        ),
        "{lines:?}"
    );
}

#[test]
fn a_valid_trace_context_is_carried_with_the_event_and_an_invalid_one_dropped() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let trace_of = |headers: &[(&str, &str)]| {
        let f = filter();
        let mut request = vec![(":method", "POST"), (":path", "/orders")];
        request.extend_from_slice(headers);
        host(&f).request(&request);
        let mut s = Stream::new(Rc::clone(&f));
        s.on_request_headers(true);
        host(&f).response(&[(":status", "201")]);
        s.on_response_headers(true);
        s.on_log();
        let queue = host(&f).queue.borrow();
        match QueueMessage::decode(&queue[0]).unwrap() {
            QueueMessage::Event { trace, .. } => trace.map(|t| (t.traceparent, t.tracestate)),
            other => panic!("not an event: {other:?}"),
        }
    };
    let both = [("traceparent", TP), ("tracestate", "rojo=1,congo=2")];
    assert_eq!(trace_of(&both), Some((TP.into(), "rojo=1,congo=2".into())));
    let bad_state = [("traceparent", TP), ("tracestate", "Rojo=1")];
    assert_eq!(trace_of(&bad_state), Some((TP.into(), String::new())));
    let upper = TP.to_uppercase();
    let bad_parent = [("traceparent", upper.as_str()), ("tracestate", "rojo=1")];
    assert_eq!(trace_of(&bad_parent), None);
    assert_eq!(trace_of(&[("tracestate", "rojo=1")]), None);
    assert_eq!(trace_of(&[]), None);
}
