//! The HTTP filter on every worker: watches responses for events and hands them to the
//! dispatcher through the shared queue, and answers the subscription API under its prefix.
//! For the API's own traffic it only ever reads: those callbacks return `Continue`, so the API's
//! responses are never changed, delayed or failed.

use super::io::{self, Metrics, SharedData, WasiRandom};
use crate::api;
use crate::audience::{self, Audience, Facts};
use crate::config::Config;
use crate::event::{self, BodyCapture, CapturedObject, RequestInfo};
use crate::identity::OwnedCredentials;
use crate::queue::{QueueMessage, QUEUE_NAME};
use crate::registry::Registry;
use crate::rules::{self, Detected};
use crate::store::KvStore;
use crate::watchdog::{self, Change, Watchdog};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// What every HTTP context of a worker shares.
pub struct Shared {
    config: Rc<Config>,
    metrics: Metrics,
    queue: Cell<Option<u32>>,
    /// Events this worker could not hand over (for a rate-limited warning).
    dropped: Cell<u64>,
    /// Whether the dispatcher's heartbeat is recent (see `crate::watchdog`).
    dispatcher_alive: Cell<bool>,
    /// The request headers some audience names, read on every request that may make an event.
    audience_headers: Vec<String>,
    /// Whether some audience is the requester (then its credentials are read too).
    needs_requester: bool,
}

impl Shared {
    /// The dispatcher's queue; resolved lazily because the dispatcher may register it after
    /// this worker was configured.
    fn queue(&self) -> Option<u32> {
        if self.queue.get().is_none() {
            self.queue.set(
                hostcalls::resolve_shared_queue("", QUEUE_NAME)
                    .ok()
                    .flatten(),
            );
        }
        self.queue.get()
    }

    /// Hands a message to the dispatcher; false (logged and counted) when it cannot, or when
    /// the dispatcher is gone and nothing would ever read it.
    fn enqueue(&self, message: &QueueMessage) -> bool {
        let sent = self.dispatcher_alive.get()
            && self.queue().is_some_and(|q| {
                hostcalls::enqueue_shared_queue(q, Some(&message.encode())).is_ok()
            });
        if !sent {
            self.queue.set(None);
            self.metrics.events_dropped.inc();
            // One line for the first drop and then one per thousand, not one per event.
            let dropped = self.dropped.get();
            self.dropped.set(dropped.wrapping_add(1));
            if dropped % 1000 == 0 {
                let why = if self.dispatcher_alive.get() {
                    "the dispatcher's queue is not available (is the webhooks_dispatcher bootstrap extension configured with the same vm_id?)"
                } else {
                    "the dispatcher is not running (restart Envoy)"
                };
                log::warn!(
                    "proxy-webhooks: event dropped ({} so far on this worker): {why}",
                    dropped + 1
                );
            }
        }
        sent
    }
}

pub struct FilterRoot {
    shared: Rc<Shared>,
    watchdog: Watchdog,
}

impl FilterRoot {
    pub fn new(config: Rc<Config>) -> FilterRoot {
        let audiences = || {
            config
                .events
                .iter()
                .map(|r| &r.audience)
                .chain([&config.audience])
        };
        let audience_headers = audience::request_headers(audiences());
        let needs_requester = audiences().any(|a| *a == Audience::Requester);
        let shared = Shared {
            audience_headers,
            needs_requester,
            config,
            metrics: Metrics::define(),
            queue: Cell::new(None),
            dropped: Cell::new(0),
            dispatcher_alive: Cell::new(true),
        };
        FilterRoot {
            shared: Rc::new(shared),
            watchdog: Watchdog::default(),
        }
    }
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        Registry::new(SharedData).prepare();
        crate::ratelimit::prepare(&SharedData);
        let _ = hostcalls::set_tick_period(Duration::from_millis(watchdog::CHECK_EVERY_MS));
        true
    }

    /// Checks the dispatcher's heartbeat.
    fn on_tick(&mut self) {
        let heartbeat = SharedData
            .get(watchdog::HEARTBEAT_KEY)
            .map(|(bytes, _)| bytes);
        match self.watchdog.check(heartbeat.as_deref(), io::now_ms()) {
            Some(Change::Died { silent_ms }) => log::error!(
                "proxy-webhooks: the dispatcher has not run for {silent_ms} ms: its VM failed, and Envoy does not restart it; no webhook is delivered and new events are dropped until Envoy restarts"
            ),
            Some(Change::Revived) => log::warn!("proxy-webhooks: the dispatcher runs again"),
            None => {}
        }
        let alive = self.watchdog.alive();
        self.shared.dispatcher_alive.set(alive);
        self.shared
            .metrics
            .dispatcher_alive
            .record(u64::from(alive));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EventWatch {
            shared: Rc::clone(&self.shared),
            state: State::Idle,
        }))
    }
}

/// A context that does nothing, for roots that serve no HTTP traffic.
pub struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

enum State {
    /// Nothing (more) to do for this stream: no event, or it was handed over.
    Idle,
    /// A subscription API call, waiting for its body; answered here, never sent upstream.
    Api(Box<ApiCall>),
    /// A state-changing request; what the response phase needs of it.
    Request(Box<Seen>),
    /// The response makes an event; its body is being read as it streams past.
    Response(Box<Pending>),
}

struct ApiCall {
    method: String,
    path: String,
    credentials: OwnedCredentials,
    content_type: Option<Vec<u8>>,
}

/// A state-changing request as the request phase saw it (request headers cannot be read later).
struct Seen {
    method: String,
    path: String,
    /// The caller's credentials, when some audience is the requester.
    credentials: OwnedCredentials,
    /// The request headers audiences name, where present.
    headers: Vec<(String, Vec<u8>)>,
}

struct Pending {
    /// Whether the response ended normally (its body can be trusted).
    complete: bool,
    seen: Box<Seen>,
    /// The response header the audience names, where present.
    response_header: Option<Vec<u8>>,
    status: u16,
    detected: Detected,
    seen_ms: u64,
    capture: BodyCapture,
}

pub struct EventWatch {
    shared: Rc<Shared>,
    state: State,
}

fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    io::map_value(map, name)
}

fn header_str(map: MapType, name: &str) -> Option<String> {
    header(map, name).and_then(|v| String::from_utf8(v).ok())
}

/// The request headers that can identify the caller: `api.consumer_header` when set, else the
/// API key headers.
fn credentials(config: &Config) -> OwnedCredentials {
    let request = MapType::HttpRequestHeaders;
    match &config.api.consumer_header {
        Some(name) => OwnedCredentials {
            consumer_header: header(request, name),
            ..OwnedCredentials::default()
        },
        None => OwnedCredentials {
            authorization: header(request, "authorization"),
            api_key: header(request, "x-api-key"),
            consumer_header: None,
        },
    }
}

impl EventWatch {
    /// Remembers what the response phase needs; returns whether the request is the API's.
    fn on_request(&mut self) -> bool {
        let Some(method) = header_str(MapType::HttpRequestHeaders, ":method") else {
            return false;
        };
        let Some(mut path) = header_str(MapType::HttpRequestHeaders, ":path") else {
            return false;
        };
        if api::is_api_path(&self.shared.config.api.path_prefix, &path) {
            let call = ApiCall {
                method,
                path,
                credentials: credentials(&self.shared.config),
                content_type: header(MapType::HttpRequestHeaders, "content-type"),
            };
            self.state = State::Api(Box::new(call));
            return true;
        }
        if rules::is_mutating(&method) {
            path.truncate(rules::strip_query(&path).len());
            let shared = &self.shared;
            let credentials = match shared.needs_requester {
                true => credentials(&shared.config),
                false => OwnedCredentials::default(),
            };
            let headers = shared
                .audience_headers
                .iter()
                .filter_map(|name| Some((name.clone(), header(MapType::HttpRequestHeaders, name)?)))
                .collect();
            self.state = State::Request(Box::new(Seen {
                method,
                path,
                credentials,
                headers,
            }));
        }
        false
    }

    /// Answers an API call at its headers when they decide it (401, 404, 405): no body is
    /// buffered for a caller that is refused anyway. True when answered.
    fn api_refused_at_headers(&mut self) -> bool {
        let State::Api(call) = &self.state else {
            return false;
        };
        let request = api::Request {
            method: &call.method,
            path: &call.path,
            authorization: call.credentials.authorization.as_deref(),
            api_key: call.credentials.api_key.as_deref(),
            consumer_header: call.credentials.consumer_header.as_deref(),
            content_type: call.content_type.as_deref(),
            body: &[],
        };
        let Some(response) = api::answer_before_body(&request, &self.shared.config) else {
            return false;
        };
        self.state = State::Idle;
        send(response);
        true
    }

    /// Answers a subscription API call with its whole body; the call never goes upstream.
    fn answer_api(&mut self, body: &[u8]) {
        let State::Api(call) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let shared = Rc::clone(&self.shared);
        let registry = Registry::new(SharedData);
        let mut enqueue = |message: QueueMessage| shared.enqueue(&message);
        let mut cx = api::Context {
            config: &shared.config,
            registry: &registry,
            store: &SharedData,
            rng: &mut WasiRandom,
            now_ms: io::now_ms(),
            enqueue: &mut enqueue,
        };
        let request = api::Request {
            method: &call.method,
            path: &call.path,
            authorization: call.credentials.authorization.as_deref(),
            api_key: call.credentials.api_key.as_deref(),
            consumer_header: call.credentials.consumer_header.as_deref(),
            content_type: call.content_type.as_deref(),
            body,
        };
        send(api::handle(&request, &mut cx));
    }

    /// Whether an API request body has grown past the limit (then it was answered 413).
    fn api_body_too_large(&mut self, size: usize) -> bool {
        let limit = self.shared.config.api.max_body_bytes;
        if size <= limit {
            return false;
        }
        self.state = State::Idle;
        send(api::too_large(limit));
        true
    }

    fn on_response(&mut self) {
        let State::Request(seen) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let status = header_str(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let config = &self.shared.config;
        let infer = config.infers(&seen.path);
        let Some(detected) = rules::detect(&config.events, infer, &seen.method, &seen.path, status)
        else {
            return;
        };
        let audience = config.audience_of(detected.rule);
        let response_header = match audience {
            Audience::ResponseHeader(name) => header(MapType::HttpResponseHeaders, name),
            _ => None,
        };
        // The body is read only when the event carries it or its audience is found in it.
        let wants_body =
            config.include_object(detected.rule) || matches!(audience, Audience::Json(_));
        let capture = match wants_body {
            true => BodyCapture::new(
                config.delivery.max_payload_bytes,
                header(MapType::HttpResponseHeaders, "content-type").as_deref(),
                header(MapType::HttpResponseHeaders, "content-encoding").as_deref(),
                header_str(MapType::HttpResponseHeaders, "content-length")
                    .and_then(|s| s.trim().parse::<u64>().ok()),
            ),
            false => BodyCapture::skip(),
        };
        let seen_ms = io::now_ms();
        let pending = Pending {
            complete: false,
            seen,
            response_header,
            status,
            detected,
            seen_ms,
            capture,
        };
        self.state = State::Response(Box::new(pending));
    }

    fn on_body_chunk(&mut self, size: usize) {
        if let State::Response(pending) = &mut self.state {
            if pending.capture.wants_more() && size > 0 {
                if let Some(chunk) = io::buffer(BufferType::HttpResponseBody, size) {
                    pending.capture.push(&chunk);
                }
            }
        }
    }

    /// The response has ended: its body is whole. The event is built later, in `on_log`, so
    /// that none of that work delays the response's last bytes.
    fn response_complete(&mut self) {
        if let State::Response(pending) = &mut self.state {
            pending.complete = true;
        }
    }

    /// Builds the event from what was seen and queues it for the dispatcher.
    fn emit(&mut self) {
        let State::Response(pending) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let Pending {
            complete,
            seen,
            response_header,
            status,
            detected,
            seen_ms,
            capture,
        } = *pending;
        // A response cut short has no trustworthy body, but the state change still happened.
        let object = if complete {
            capture.finish()
        } else {
            CapturedObject::NotJson
        };
        let config = &self.shared.config;
        let facts = Facts {
            api: &config.api,
            credentials: seen.credentials.borrow(),
            params: &detected.params,
            request_headers: &seen.headers,
            response_header: response_header.as_deref(),
            body: match &object {
                CapturedObject::Json(body) => Some(body),
                _ => None,
            },
        };
        let target = audience::resolve(config.audience_of(detected.rule), &facts);
        let object = match config.include_object(detected.rule) {
            true => object,
            false => CapturedObject::NotJson,
        };
        let request = RequestInfo {
            method: &seen.method,
            path: &seen.path,
            params: &detected.params,
            status,
        };
        let payload = event::build_payload(&detected.event_type, seen_ms, &request, object);
        self.shared.metrics.events_detected.inc();
        let message = QueueMessage::Event {
            event_type: detected.event_type,
            payload,
            audience: target,
        };
        self.shared.enqueue(&message);
    }
}

fn send(response: api::Response) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    if let Err(e) =
        hostcalls::send_http_response(u32::from(response.status), headers, Some(&response.body))
    {
        log::error!("proxy-webhooks: could not answer a subscription API call: {e:?}");
    }
}

impl Context for EventWatch {}

impl HttpContext for EventWatch {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if !self.on_request() {
            return Action::Continue;
        }
        if self.api_refused_at_headers() {
            return Action::Pause;
        }
        let declared = header_str(MapType::HttpRequestHeaders, "content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if !self.api_body_too_large(declared) && end_of_stream {
            self.answer_api(&[]);
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.state, State::Api(_)) {
            return Action::Continue;
        }
        // Envoy buffers the body while we pause; `size` is all of it so far.
        if self.api_body_too_large(size) || !end_of_stream {
            return Action::Pause;
        }
        let body = io::buffer(BufferType::HttpRequestBody, size).unwrap_or_default();
        self.answer_api(&body);
        Action::Pause
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if !matches!(self.state, State::Api(_)) {
            return Action::Continue;
        }
        // A body that ends with trailers never reaches `on_http_request_body` with
        // end_of_stream: answer here, or the call would go upstream.
        let body = io::buffer(BufferType::HttpRequestBody, usize::MAX).unwrap_or_default();
        if !self.api_body_too_large(body.len()) {
            self.answer_api(&body);
        }
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on_response();
        if end_of_stream {
            self.response_complete();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.on_body_chunk(size);
        if end_of_stream {
            self.response_complete();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.response_complete();
        Action::Continue
    }

    /// Runs once the response has gone out (or the stream was cut short).
    fn on_log(&mut self) {
        self.emit();
    }
}
