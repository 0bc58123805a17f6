//! The proxy-wasm glue: thin adapters between Envoy and the host-free logic of the crate.
//!
//! One .wasm serves two roles, told apart by the plugin's `root_id`: the HTTP filter on every
//! worker (`webhooks_filter`) and the dispatcher singleton on the main thread
//! (`webhooks_dispatcher`). Envoy creates root contexts before it tells them their root_id, so a
//! root starts undecided and becomes one or the other in `on_configure`.
//!
//! May use: `api`, `config`, `dispatcher`, `fleet`, `model`, `port`, `registry`, `stream`, `support`.

mod dispatcher;
mod filter;
mod io;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

pub const FILTER_ROOT_ID: &str = "webhooks_filter";
pub const DISPATCHER_ROOT_ID: &str = "webhooks_dispatcher";

proxy_wasm::main! {{
    // Info keeps per-request debug formatting off the hot path; Envoy filters further.
    proxy_wasm::set_log_level(LogLevel::Info);
    install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Undecided) });
}}

/// A panic must never go unnoticed: log it at critical level. For the filter, `fail_open: true`
/// then lets traffic pass without it; for the dispatcher, deliveries stop until Envoy restarts.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(
            LogLevel::Critical,
            &format!("proxy-webhooks panicked: {info}"),
        );
    }));
}

enum Root {
    Undecided,
    Filter(filter::FilterRoot),
    Dispatcher(Box<dispatcher::DispatcherRoot>),
}

/// Each call is matched to the role statically: a `dyn RootContext` for each role would give it
/// a vtable, and with it a copy of every default method of the SDK's traits.
impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        match self {
            Root::Undecided => {}
            Root::Filter(f) => f.on_http_call_response(token, headers, body, trailers),
            Root::Dispatcher(d) => d.on_http_call_response(token, headers, body, trailers),
        }
    }

    fn on_done(&mut self) -> bool {
        match self {
            Root::Undecided => true,
            Root::Filter(f) => f.on_done(),
            Root::Dispatcher(d) => d.on_done(),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let root_id = io::root_id();
        let config = match io::plugin_config(&root_id) {
            Ok(config) => config,
            Err(message) => {
                log::error!("proxy-webhooks ({root_id}): invalid configuration: {message}");
                return false;
            }
        };
        *self = match root_id.as_str() {
            FILTER_ROOT_ID => Root::Filter(filter::FilterRoot::new(config)),
            DISPATCHER_ROOT_ID => {
                Root::Dispatcher(Box::new(dispatcher::DispatcherRoot::new(config)))
            }
            other => {
                log::error!(
                    "proxy-webhooks: unknown root_id {other:?}: use {FILTER_ROOT_ID:?} for the HTTP filter or {DISPATCHER_ROOT_ID:?} for the bootstrap service"
                );
                return false;
            }
        };
        match self {
            Root::Undecided => false,
            Root::Filter(f) => f.on_configure(size),
            Root::Dispatcher(d) => d.on_configure(size),
        }
    }

    fn on_tick(&mut self) {
        match self {
            Root::Undecided => {}
            Root::Filter(f) => f.on_tick(),
            Root::Dispatcher(d) => d.on_tick(),
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        match self {
            Root::Undecided => {}
            Root::Filter(f) => f.on_queue_ready(queue_id),
            Root::Dispatcher(d) => d.on_queue_ready(queue_id),
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Filter(f) => f.create_http_context(context_id),
            // The SDK panics on None; an inert context is the safe answer.
            _ => Some(Box::new(filter::EventWatch::PASS_THROUGH)),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
