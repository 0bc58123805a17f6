//! Host services behind the crate's small traits: clock, randomness, shared data, metrics,
//! configuration. Every host call's error is handled here; nothing in the glue unwraps.

use crate::config::{self, Config};
use crate::ids::RandomSource;
use crate::registry::{KvStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MetricType, Status};
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

/// WASI `random_get`, which Envoy serves from its cryptographic generator.
pub struct WasiRandom;

impl RandomSource for WasiRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        if let Err(e) = getrandom::fill(buf) {
            // Never seen in Envoy; ids must still be unique, so fall back to the clock.
            log::error!("proxy-webhooks: random_get failed ({e}); using a clock-derived fallback");
            let mut x = now_ms() ^ 0x9e37_79b9_7f4a_7c15;
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x.to_le_bytes().first().copied().unwrap_or_default();
            }
        }
    }
}

/// proxy-wasm shared data: one map per vm_id, seen by every worker and the main thread.
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
    pub fn counter(name: &str) -> Metric {
        Metric::define(MetricType::Counter, name)
    }

    pub fn gauge(name: &str) -> Metric {
        Metric::define(MetricType::Gauge, name)
    }

    pub fn histogram(name: &str) -> Metric {
        Metric::define(MetricType::Histogram, name)
    }

    fn define(kind: MetricType, name: &str) -> Metric {
        Metric(hostcalls::define_metric(kind, name).ok())
    }

    /// Adds `n` to a counter (Envoy refuses increments of 0).
    pub fn add(self, n: u64) {
        if let (Some(id), Ok(n @ 1..)) = (self.0, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    pub fn inc(self) {
        self.add(1);
    }

    /// Sets a gauge or records a histogram value.
    pub fn record(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// Every metric of SPEC "Observability".
#[derive(Clone, Copy)]
pub struct Metrics {
    pub events_detected: Metric,
    pub events_dropped: Metric,
    pub deliveries_succeeded: Metric,
    pub deliveries_failed: Metric,
    pub delivery_attempts: Metric,
    pub deliveries_exhausted: Metric,
    pub subscriptions_disabled: Metric,
    /// Events whose audience named no consumer (only privileged subscriptions got them).
    pub events_unaddressed: Metric,
    pub queue_depth: Metric,
    pub subscriptions_active: Metric,
    pub delivery_latency_ms: Metric,
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            events_detected: Metric::counter("webhooks_events_detected"),
            events_dropped: Metric::counter("webhooks_events_dropped"),
            deliveries_succeeded: Metric::counter("webhooks_deliveries_succeeded"),
            deliveries_failed: Metric::counter("webhooks_deliveries_failed"),
            delivery_attempts: Metric::counter("webhooks_delivery_attempts"),
            deliveries_exhausted: Metric::counter("webhooks_deliveries_exhausted"),
            subscriptions_disabled: Metric::counter("webhooks_subscriptions_disabled"),
            events_unaddressed: Metric::counter("webhooks_events_unaddressed"),
            queue_depth: Metric::gauge("webhooks_queue_depth"),
            subscriptions_active: Metric::gauge("webhooks_subscriptions_active"),
            delivery_latency_ms: Metric::histogram("webhooks_delivery_latency_ms"),
        }
    }
}
