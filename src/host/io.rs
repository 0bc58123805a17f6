//! Host services behind the crate's small traits: clock, randomness, shared data, metrics,
//! configuration. Every host call's error is handled here; nothing in the glue unwraps.

use crate::config::{self, Config};
use crate::registry::store::{KvStore, StoreError};
use crate::support::ids::{RandomSource, RandomUnavailable};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// The root_id of the plugin this root context belongs to.
pub fn root_id() -> String {
    hostcalls::get_property(vec!["plugin_root_id"])
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

/// Reads and validates the plugin configuration; the error names the field.
pub fn plugin_config(root_id: &str) -> Result<Rc<Config>, String> {
    let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .map_err(|e| format!("cannot read the plugin configuration: {e:?}"))?
        .unwrap_or_default();
    let config = config::parse(&bytes).map_err(|e| e.to_string())?;
    // Built now, once per configuration, so that serving it is a copy.
    config
        .api_document
        .get_or_init(|| crate::api::openapi::document(&config));
    log::info!(
        "proxy-webhooks {} ({root_id}) configured",
        env!("CARGO_PKG_VERSION")
    );
    Ok(Rc::new(config))
}

/// Wall-clock milliseconds since the Unix epoch, as Envoy sees them.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// WASI `random_get`, which Envoy serves from its cryptographic generator. There is no fallback:
/// whatever needs randomness and cannot have it is refused (the API answers 503).
pub struct WasiRandom;

impl RandomSource for WasiRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        getrandom::fill(buf).map_err(|e| {
            log::error!("proxy-webhooks: random_get failed ({e})");
            RandomUnavailable
        })
    }
}

/// proxy-wasm shared data: one map per vm_id, seen by every worker and the main thread.
#[derive(Clone, Copy)]
pub struct SharedData;

impl KvStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((value, Some(cas))) => Some((value.unwrap_or_default(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => StoreError::Conflict,
            other => StoreError::Failed(format!("{other:?}")),
        })
    }
}

/// A defined Envoy metric; a failed definition makes its updates no-ops.
#[derive(Clone, Copy)]
pub struct Metric(Option<u32>);

impl Metric {
    fn define(kind: MetricType, name: &str) -> Metric {
        Metric(hostcalls::define_metric(kind, name).ok())
    }

    /// Adds `n` to a counter (Envoy refuses increments of 0).
    pub fn add(self, n: u64) {
        if let (Some(id), Ok(n @ 1..)) = (self.0, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    /// Sets a gauge or records a histogram value.
    pub fn record(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// Every metric of docs/operations.md, defined once per VM.
#[derive(Clone, Copy)]
pub struct Metrics([Metric; crate::port::Metric::ALL.len()]);

impl Metrics {
    /// The Envoy metric of one of the host interface's metrics.
    pub fn get(&self, metric: crate::port::Metric) -> Metric {
        self.0.get(metric.index()).copied().unwrap_or(Metric(None))
    }

    pub fn define() -> Metrics {
        use crate::port::MetricKind;
        Metrics(crate::port::Metric::ALL.map(|m| {
            let kind = match m.kind() {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            Metric::define(kind, m.name())
        }))
    }
}

/// POSTs an etcd gateway request on `cluster` (the cluster's name is also the authority), with
/// etcd's token in `Authorization` when there is one.
pub fn call_etcd(
    request: &crate::fleet::etcd::Request,
    cluster: &str,
    auth: Option<&str>,
) -> Result<u32, Status> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", request.path),
        (":authority", cluster),
        ("content-type", "application/json"),
    ];
    if let Some(token) = auth {
        headers.push(("authorization", token));
    }
    let timeout = std::time::Duration::from_millis(crate::port::ETCD_TIMEOUT_MS);
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(request.body.as_bytes()),
        vec![],
        timeout,
    )
}

/// One header's value, or None when it is absent or the host refuses to read it. The SDK's own
/// getter panics on any status but Ok and NotFound, and a peer can cause others: Envoy has no
/// header map at all for a callout that was reset after the receiver started answering.
pub fn map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through the SDK's exported allocator (a
    // boxed slice of `size` bytes) and its length; we take ownership only when it says Ok.
    let status = unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    take_host_bytes(status, data, size)
}

/// The first `max` bytes of a body, or None when there is none or the host refuses (never a
/// panic, whatever the peer sent).
pub fn buffer(buffer: BufferType, max: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `map_value`.
    let status =
        unsafe { abi::proxy_get_buffer_bytes(buffer as u32, 0, max, &mut data, &mut size) };
    take_host_bytes(status, data, size)
}

/// Owns what the host returned on success; any other status is "absent".
fn take_host_bytes(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != abi::STATUS_OK || data.is_null() {
        return None;
    }
    // SAFETY: on Ok the host handed over `size` bytes allocated by `proxy_on_memory_allocate`.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The two host functions whose SDK wrappers panic on statuses a peer can cause, declared with
/// plain integers so that any status the host returns is a value, not undefined behaviour.
#[allow(clashing_extern_declarations)]
mod abi {
    pub const STATUS_OK: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
    }
}
