//! The dispatcher singleton on Envoy's main thread: forwards Envoy's callbacks to
//! [`crate::dispatcher::Dispatcher`] and serves its host calls. Every decision lives there.

use super::io::{self, Metrics, SharedData, WasiRandom};
use crate::config::Config;
use crate::dispatcher::delivery::Request;
use crate::dispatcher::Dispatcher;
use crate::port::{CalloutRefused, CalloutResponse, DispatchHost, Metric};
use crate::support::ids::{RandomSource, RandomUnavailable};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, MapType, Status};
use std::rc::Rc;
use std::time::Duration;

pub struct DispatcherRoot(Dispatcher<WasmHost>);

impl DispatcherRoot {
    pub fn new(config: Rc<Config>) -> DispatcherRoot {
        DispatcherRoot(Dispatcher::new(config, WasmHost::new()))
    }
}

impl Context for DispatcherRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _trailers: usize) {
        self.0.on_http_call_response(token, headers, body);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done()
    }
}

impl RootContext for DispatcherRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure()
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.0.on_queue_ready();
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }
}

/// Envoy, as the dispatcher sees it.
pub struct WasmHost {
    metrics: Metrics,
    queue: Option<u32>,
}

impl WasmHost {
    fn new() -> WasmHost {
        WasmHost {
            metrics: Metrics::define(),
            queue: None,
        }
    }

    fn header(name: &str) -> Option<String> {
        let value = io::map_value(MapType::HttpCallResponseHeaders, name)?;
        String::from_utf8(value).ok()
    }
}

impl RandomSource for WasmHost {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        WasiRandom.fill(buf)
    }
}

impl DispatchHost for WasmHost {
    type Store = SharedData;

    fn now_ms(&self) -> u64 {
        io::now_ms()
    }

    fn store(&self) -> &SharedData {
        &SharedData
    }

    fn add_metric(&self, metric: Metric, n: u64) {
        self.metrics.get(metric).add(n);
    }

    fn record_metric(&self, metric: Metric, value: u64) {
        self.metrics.get(metric).record(value);
    }

    fn dispatch(&mut self, request: &Request, body: &[u8]) -> Result<u32, CalloutRefused> {
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        let timeout = Duration::from_millis(request.timeout_ms);
        hostcalls::dispatch_http_call(&request.cluster, headers, Some(body), vec![], timeout)
            .map_err(|status| CalloutRefused {
                unresolved: status == Status::InternalFailure,
                no_token: false,
            })
    }

    fn callout_response(&self, headers: usize, body_size: usize) -> CalloutResponse {
        // Envoy has no header map at all for a callout reset after the receiver began answering.
        if headers == 0 {
            return CalloutResponse::default();
        }
        CalloutResponse {
            headers,
            status: Self::header(":status"),
            retry_after: Self::header("retry-after"),
            body_size,
        }
    }

    fn callout_body(&self, max: usize) -> Vec<u8> {
        io::buffer(BufferType::HttpCallResponseBody, max).unwrap_or_default()
    }

    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool {
        hostcalls::set_tick_period(Duration::from_millis(period_ms)).is_ok()
    }

    fn register_queue(&mut self, name: &str) -> bool {
        self.queue = hostcalls::register_shared_queue(name).ok();
        self.queue.is_some()
    }

    fn dequeue(&mut self) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(self.queue?).ok().flatten()
    }

    fn done(&mut self) {
        let _ = hostcalls::done();
    }

    fn call_etcd(
        &mut self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Result<u32, CalloutRefused> {
        io::call_etcd(request, cluster, auth).map_err(|status| CalloutRefused {
            unresolved: status == Status::InternalFailure,
            no_token: false,
        })
    }

    fn node_id(&self) -> Option<String> {
        let id = hostcalls::get_property(vec!["node", "id"]).ok().flatten()?;
        String::from_utf8(id).ok().filter(|id| !id.is_empty())
    }
}
