//! The plugin configuration: one JSON document shared by the filter and the dispatcher.
//!
//! Parsing is strict (unknown fields are refused) and every error names the field, so that a
//! platform engineer sees exactly what to fix in the single log line Envoy prints at start-up.

use crate::rules::EventRule;
use std::fmt;

/// The whole validated configuration. Every field has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Explicit event rules, checked in order; the first match wins.
    pub events: Vec<EventRule>,
    /// Whether unmatched POST/PUT/PATCH/DELETE 2xx responses become `<resource>.<verb>` events.
    /// Default: true when `events` is empty, else false.
    pub infer_events: bool,
    pub api: ApiConfig,
    pub subscriptions: Vec<StaticSubscription>,
    pub delivery: DeliveryConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Default `/webhooks`; must start with `/`, no trailing `/` (a trailing one is trimmed).
    pub path_prefix: String,
    pub keys: Vec<ApiKey>,
    /// `api.max_subscriptions_per_consumer`, default 100.
    pub max_subscriptions_per_consumer: usize,
    /// `api.max_body_bytes`, default 65536: larger API request bodies answer 413.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub consumer: String,
    /// The SHA-256 of the key, from 64 hex digits.
    pub sha256: [u8; 32],
}

/// A subscription fixed in the configuration; it cannot be changed through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticSubscription {
    pub id: String,
    pub consumer: String,
    pub url: String,
    /// Event filters: exact types, `prefix.*` or `*`.
    pub events: Vec<String>,
    /// `whsec_` + base64 secret, validated to decode.
    pub secret: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Per-attempt timeout, default 15 s.
    pub timeout_ms: u64,
    /// Delay before each attempt; the first entry is the delay of the first attempt.
    /// Default `["0s","5s","5m","30m","2h","5h","10h","14h","20h","24h"]`. Must be non-empty.
    pub retry_schedule_ms: Vec<u64>,
    /// Relative jitter in [0, 1), default 0.2.
    pub jitter: f64,
    /// Default 5 days.
    pub disable_after_ms: u64,
    /// Pending messages held at most, default 10000, at least 1.
    pub max_queue: usize,
    /// Largest response body copied into `data.object`, default 65536.
    pub max_payload_bytes: usize,
    /// `delivery.clusters.http`, default `webhooks_egress_http`.
    pub cluster_http: String,
    /// `delivery.clusters.https`, default `webhooks_egress_https`.
    pub cluster_https: String,
    /// Default false.
    pub allow_insecure_destinations: bool,
    /// `delivery.max_in_flight`: concurrent callouts at most, default 256, at least 1.
    pub max_in_flight: usize,
}

/// A refused configuration: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path such as `delivery.timeout` or `events[1].path`.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}
