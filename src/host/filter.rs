//! The HTTP filter's glue: proxy-wasm callbacks forwarded to `crate::stream`, and the host
//! calls it asks for.

use super::io::{self, Metrics, SharedData, WasiRandom};
use crate::model::queue::QUEUE_NAME;
use crate::port::{Metric, StreamHost};
use crate::registry::watchdog;
use crate::stream::{Filter, Flow, Stream};
use crate::support::ids::{RandomSource, RandomUnavailable};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Envoy, as one worker's streams see it.
pub struct Envoy {
    metrics: Metrics,
    queue: Cell<Option<u32>>,
}

impl StreamHost for Envoy {
    type Store = SharedData;

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        io::map_value(MapType::HttpRequestHeaders, name)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        io::map_value(MapType::HttpResponseHeaders, name)
    }

    fn request_body(&self, max: usize) -> Option<Vec<u8>> {
        io::buffer(BufferType::HttpRequestBody, max)
    }

    fn response_body(&self, max: usize) -> Option<Vec<u8>> {
        io::buffer(BufferType::HttpResponseBody, max)
    }

    fn send_response(&self, status: u16, headers: Vec<(&str, &str)>, body: &[u8]) {
        let sent = hostcalls::send_http_response(u32::from(status), headers, Some(body));
        if let Err(e) = sent {
            log::error!("proxy-webhooks: could not answer a subscription API call: {e:?}");
        }
    }

    /// The queue is resolved lazily (the dispatcher may register it after this worker was
    /// configured) and again after a failure.
    fn enqueue(&self, message: &[u8]) -> bool {
        let queue = self.queue.get().or_else(|| {
            hostcalls::resolve_shared_queue("", QUEUE_NAME)
                .ok()
                .flatten()
        });
        let sent = queue.is_some_and(|q| hostcalls::enqueue_shared_queue(q, Some(message)).is_ok());
        self.queue.set(queue.filter(|_| sent));
        sent
    }

    fn store(&self) -> SharedData {
        SharedData
    }

    fn now_ms(&self) -> u64 {
        io::now_ms()
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        WasiRandom.fill(buf)
    }

    fn add_metric(&self, metric: Metric, n: u64) {
        self.metrics.get(metric).add(n);
    }

    fn record_metric(&self, metric: Metric, value: u64) {
        self.metrics.get(metric).record(value);
    }

    fn call_etcd(
        &self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Option<u32> {
        io::call_etcd(request, cluster, auth).ok()
    }

    fn etcd_answer(&self, body_size: usize) -> (Option<String>, Vec<u8>) {
        let status = io::map_value(MapType::HttpCallResponseHeaders, ":status")
            .and_then(|v| String::from_utf8(v).ok());
        let body = io::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
        (status, body)
    }
}

pub struct FilterRoot(Rc<Filter<Envoy>>);

impl FilterRoot {
    pub fn new(config: Rc<crate::config::Config>) -> FilterRoot {
        let host = Envoy {
            metrics: Metrics::define(),
            queue: Cell::new(None),
        };
        FilterRoot(Rc::new(Filter::new(config, host)))
    }
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.configure();
        let _ = hostcalls::set_tick_period(Duration::from_millis(watchdog::CHECK_EVERY_MS));
        true
    }

    fn on_tick(&mut self) {
        self.0.tick();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EventWatch(Some(Stream::new(Rc::clone(&self.0))))))
    }
}

/// The filter's HTTP context; `PASS_THROUGH` does nothing, for roots that serve no HTTP traffic.
/// One type for both: a second `dyn HttpContext` would bring a second copy of every default
/// method of the SDK's traits.
pub struct EventWatch(Option<Stream<Envoy>>);

impl EventWatch {
    pub const PASS_THROUGH: EventWatch = EventWatch(None);

    fn on(&mut self, call: impl FnOnce(&mut Stream<Envoy>) -> Flow) -> Action {
        match self.0.as_mut().map_or(Flow::Continue, call) {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
        }
    }
}

impl Context for EventWatch {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if let Some(stream) = &mut self.0 {
            stream.on_etcd_answer(body);
        }
    }
}

impl HttpContext for EventWatch {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on(|s| s.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.on(|s| s.on_request_body(size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.on(|s| s.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on(|s| s.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.on(|s| s.on_response_body(size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.on(|s| s.on_response_trailers())
    }

    fn on_log(&mut self) {
        if let Some(stream) = &mut self.0 {
            stream.on_log();
        }
    }
}
