//! The host interface: everything the roles ask of Envoy, as plain traits. The proxy-wasm glue
//! in `host` implements them for wasm32; tests implement them with fakes (time advanced and
//! callouts answered by the test), so every decision is tested natively.

// ---- Shared basics (both roles) -------------------------------------------------------------

/// Every metric of docs/operations.md, "Observability" (`webhooks_` + the name in snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    EventsDetected,
    EventsDropped,
    DeliveriesSucceeded,
    DeliveriesFailed,
    DeliveryAttempts,
    DeliveriesExhausted,
    SubscriptionsDisabled,
    /// Events whose audience named no consumer (only privileged subscriptions got them).
    EventsUnaddressed,
    QueueDepth,
    QueueBytes,
    /// The queue's bounds (`delivery.max_queue`, `max_queue_bytes`), for alerts as ratios.
    QueueMax,
    QueueMaxBytes,
    DispatcherAlive,
    SubscriptionsActive,
    DeliveryLatencyMs,
    /// Fleet mode: milliseconds since the registry was last read from etcd.
    FleetSyncLagMs,
    /// Fleet mode: messages this replica holds in etcd's outbox.
    FleetOutboxSize,
    /// Fleet mode: dead replicas' leases whose messages this replica took over.
    FleetClaims,
    /// Fleet mode: etcd calls that failed (refused, timed out, non-200, bad answer, no token)
    /// and failed authentications.
    FleetEtcdErrors,
    /// Fleet mode: records and messages read from etcd that no configured key opens.
    FleetUnreadable,
    /// Fleet mode: other processes found running with this replica's node id.
    FleetNodeConflicts,
    /// Fleet mode: 1 once this replica's first registry read is applied (its API answers 503
    /// before): a readiness signal.
    FleetRegistryRead,
}

/// How Envoy keeps a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl Metric {
    /// Every metric, in the order of [`Metric::index`].
    pub const ALL: [Metric; 22] = [
        Metric::EventsDetected,
        Metric::EventsDropped,
        Metric::DeliveriesSucceeded,
        Metric::DeliveriesFailed,
        Metric::DeliveryAttempts,
        Metric::DeliveriesExhausted,
        Metric::SubscriptionsDisabled,
        Metric::EventsUnaddressed,
        Metric::QueueDepth,
        Metric::QueueBytes,
        Metric::QueueMax,
        Metric::QueueMaxBytes,
        Metric::DispatcherAlive,
        Metric::SubscriptionsActive,
        Metric::DeliveryLatencyMs,
        Metric::FleetSyncLagMs,
        Metric::FleetOutboxSize,
        Metric::FleetClaims,
        Metric::FleetEtcdErrors,
        Metric::FleetUnreadable,
        Metric::FleetNodeConflicts,
        Metric::FleetRegistryRead,
    ];

    /// The position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name Envoy shows (`wasmcustom.<name>` in `/stats`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::EventsDetected => "webhooks_events_detected",
            Metric::EventsDropped => "webhooks_events_dropped",
            Metric::DeliveriesSucceeded => "webhooks_deliveries_succeeded",
            Metric::DeliveriesFailed => "webhooks_deliveries_failed",
            Metric::DeliveryAttempts => "webhooks_delivery_attempts",
            Metric::DeliveriesExhausted => "webhooks_deliveries_exhausted",
            Metric::SubscriptionsDisabled => "webhooks_subscriptions_disabled",
            Metric::EventsUnaddressed => "webhooks_events_unaddressed",
            Metric::QueueDepth => "webhooks_queue_depth",
            Metric::QueueBytes => "webhooks_queue_bytes",
            Metric::QueueMax => "webhooks_queue_max",
            Metric::QueueMaxBytes => "webhooks_queue_max_bytes",
            Metric::DispatcherAlive => "webhooks_dispatcher_alive",
            Metric::SubscriptionsActive => "webhooks_subscriptions_active",
            Metric::DeliveryLatencyMs => "webhooks_delivery_latency_ms",
            Metric::FleetSyncLagMs => "webhooks_fleet_sync_lag_ms",
            Metric::FleetOutboxSize => "webhooks_fleet_outbox_size",
            Metric::FleetClaims => "webhooks_fleet_claims",
            Metric::FleetEtcdErrors => "webhooks_fleet_etcd_errors",
            Metric::FleetUnreadable => "webhooks_fleet_unreadable",
            Metric::FleetNodeConflicts => "webhooks_fleet_node_conflicts",
            Metric::FleetRegistryRead => "webhooks_fleet_registry_read",
        }
    }

    /// How Envoy keeps it (the names are defined by the host).
    pub fn kind(self) -> MetricKind {
        match self {
            Metric::QueueDepth
            | Metric::QueueBytes
            | Metric::QueueMax
            | Metric::QueueMaxBytes
            | Metric::DispatcherAlive
            | Metric::SubscriptionsActive
            | Metric::FleetSyncLagMs
            | Metric::FleetOutboxSize
            | Metric::FleetRegistryRead => MetricKind::Gauge,
            Metric::DeliveryLatencyMs => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }
}

// ---- The dispatcher's host ------------------------------------------------------------------

/// Envoy refused to start a callout (`dispatch_http_call` returned an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalloutRefused {
    /// Envoy's InternalFailure: for a callout with a body, the egress cluster has no address
    /// for the host yet (its DNS cache is resolving it), or never will.
    pub unresolved: bool,
    /// Not sent at all: an etcd call with `fleet.username` while etcd has given no token.
    pub no_token: bool,
}

/// What Envoy tells about a callout's answer in `on_http_call_response`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    /// The number of response headers: 0 when the callout was reset after the receiver started
    /// answering (a short body, a closed connection).
    pub headers: usize,
    /// The `:status` header, as sent.
    pub status: Option<String>,
    /// The `retry-after` header, as sent.
    pub retry_after: Option<String>,
    /// The body's size; its start is read only when it matters (`DispatchHost::callout_body`).
    pub body_size: usize,
}

/// One HTTP callout, ready for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cluster: String,
    /// Fixed names are static; a subscription's receiver headers bring their own.
    pub headers: Vec<(std::borrow::Cow<'static, str>, String)>,
    pub timeout_ms: u64,
}

/// What the dispatcher singleton asks of its host. Randomness (message ids, retry jitter) comes
/// from the supertrait; logging goes through the `log` crate.
pub trait DispatchHost: crate::support::ids::RandomSource {
    /// The shared key-value store (subscriptions, attempt logs, the heartbeat).
    type Store: crate::registry::store::KvStore + Clone;

    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    fn store(&self) -> &Self::Store;
    fn add_metric(&self, metric: Metric, n: u64);
    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, metric: Metric, value: u64);

    /// Starts an HTTP callout; its answer comes to `on_http_call_response` with the token.
    fn dispatch(&mut self, request: &Request, body: &[u8]) -> Result<u32, CalloutRefused>;
    /// The answer of the callout being reported (`headers`, `body_size` as Envoy gave them).
    fn callout_response(&self, headers: usize, body_size: usize) -> CalloutResponse;
    /// The first `max` bytes of that answer's body (empty when the host has none).
    fn callout_body(&self, max: usize) -> Vec<u8>;

    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool;
    /// Registers the shared queue the filters write to; false when the host refuses.
    fn register_queue(&mut self, name: &str) -> bool;
    /// The next message of that queue, None when it is empty (or not registered).
    fn dequeue(&mut self) -> Option<Vec<u8>>;
    /// Tells Envoy a shutdown that waited for deliveries may go on.
    fn done(&mut self);

    /// Starts a call to etcd's HTTP/JSON gateway on `cluster` (fleet mode), with etcd's token
    /// in `Authorization` when `auth` is Some; its answer comes to `on_http_call_response` with
    /// the token and is read with `callout_response`/`callout_body`.
    fn call_etcd(
        &mut self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Result<u32, CalloutRefused>;
    /// Envoy's node id (`--service-node`), when it has one.
    fn node_id(&self) -> Option<String>;
}

/// How long any etcd call may take before it counts as failed.
pub const ETCD_TIMEOUT_MS: u64 = 2000;

// ---- The filter's host: one HTTP stream on a worker (see `crate::stream`) -------------------

/// What the filter needs of its host. Header and body reads concern the stream whose callback
/// is running; they answer None when the value is absent or the host refuses to read it.
pub trait StreamHost {
    /// Shared data, seen by every worker and the dispatcher.
    type Store: crate::registry::store::KvStore;

    /// One request header (lowercase name, or a pseudo-header such as `:path`).
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// One response header.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The first `max` bytes of the request body buffered so far.
    fn request_body(&self, max: usize) -> Option<Vec<u8>>;
    /// The first `max` bytes of the response body chunk being passed on.
    fn response_body(&self, max: usize) -> Option<Vec<u8>>;
    /// Answers the stream locally (it never goes upstream); a refusal is the host's to log.
    fn send_response(&self, status: u16, headers: Vec<(&str, &str)>, body: &[u8]);
    /// Hands an encoded message to the dispatcher's shared queue; false when the queue is not
    /// (yet) there or refuses it.
    fn enqueue(&self, message: &[u8]) -> bool;
    /// The shared store (cheap: a handle).
    fn store(&self) -> Self::Store;
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Fills `buf` with cryptographic randomness, or says that there is none.
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), crate::support::ids::RandomUnavailable>;
    fn add_metric(&self, metric: Metric, n: u64);
    /// Sets a gauge (`webhooks_dispatcher_alive`).
    fn record_metric(&self, metric: Metric, value: u64);
    /// Starts a call to etcd's gateway on `cluster` for this stream (fleet mode), with etcd's
    /// token in `Authorization` when `auth` is Some; its answer comes to the stream's
    /// `on_etcd_answer`. None when Envoy refuses to start it.
    fn call_etcd(
        &self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Option<u32>;
    /// The answer of the etcd call being reported: its `:status` and body (as far as read).
    fn etcd_answer(&self, body_size: usize) -> (Option<String>, Vec<u8>);
}

#[cfg(test)]
mod tests {
    use super::Metric;

    #[test]
    fn every_metric_is_listed_at_its_index_with_a_webhooks_name() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
            assert!(m.name().starts_with("webhooks_"));
        }
    }
}
