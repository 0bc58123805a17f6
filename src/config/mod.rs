//! The plugin configuration: one JSON document shared by the filter and the dispatcher.
//!
//! Parsing is strict (unknown fields are refused) and every error names the field, so that a
//! platform engineer sees exactly what to fix in the single log line Envoy prints at start-up.
//!
//! Owns the parser and its field tables (`*_FIELDS`, also read by the docs test that keeps
//! docs/configuration.md exact).
//!
//! May use: `model`, `support`.

use crate::model::audience::{self, Audience};
use crate::model::identity::Identification;
pub use crate::model::identity::{ApiKey, OperatorKey};
use crate::model::rules::{self, EventRule, PathTemplate, StatusMatch};
use crate::model::signing::Secret;
use crate::model::subscription::{
    self, FilterError, Scheme, StaticSubscription, MAX_EVENTS, RESERVED_TYPE_PREFIX,
    TEST_EVENT_TYPE,
};
pub use crate::support::sealing::Keyring;
use crate::support::url::{check_destination, Policy};
pub use portal::PortalConfig;
use secrets::Env;
use serde_json::{Map, Value};
use std::fmt;

/// The whole validated configuration. Every field has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Explicit event rules, checked in order; the first match wins.
    pub events: Vec<EventRule>,
    /// Whether unmatched POST/PUT/PATCH/DELETE 2xx responses become `<resource>.<verb>` events.
    /// Default: true when `events` is empty, else false; a list of prefixes turns it on.
    pub infer_events: bool,
    /// `infer_events` as a list: inference only under these path prefixes (no trailing `/`;
    /// `""` for `/`). Empty: everywhere.
    pub infer_prefixes: Vec<String>,
    /// The top-level `audience`: for rules without one and for inferred events.
    pub audience: Audience,
    pub api: ApiConfig,
    pub subscriptions: Vec<StaticSubscription>,
    pub delivery: DeliveryConfig,
    /// `fleet`: several replicas sharing subscriptions and a durable outbox in etcd. None: one
    /// process with shared data only.
    pub fleet: Option<FleetConfig>,
    /// This deployment's `openapi.json`, built from the rest by `api` on first use (the host
    /// builds it at configure time) and kept: not a configuration field.
    pub api_document: std::cell::OnceCell<Vec<u8>>,
}

/// `fleet` (docs/fleet.md).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `fleet.cluster`: the Envoy cluster of etcd v3 endpoints (HTTP/JSON gateway). Required.
    pub cluster: String,
    /// `fleet.prefix`: where every key lives in etcd, default `/proxy-webhooks` (no trailing `/`).
    pub prefix: String,
    /// `fleet.node_id`: this replica's name; default Envoy's node id, else a random one.
    pub node_id: Option<String>,
    /// `fleet.sync_interval`: how often the registry is read from etcd, default 500 ms.
    pub sync_interval_ms: u64,
    /// `fleet.lease_ttl`: how long a dead replica's messages wait before another claims them,
    /// default 10 s, at least 2 s (etcd's minimum lease).
    pub lease_ttl_ms: u64,
    /// `fleet.encryption_key` and `fleet.previous_encryption_keys`: signing secrets (and, with
    /// `encrypt_payloads`, messages) are sealed in etcd. None: kept as they are.
    pub keyring: Option<Keyring>,
    /// `fleet.encrypt_payloads`: pending and kept messages are sealed too. Default false.
    pub encrypt_payloads: bool,
    /// `fleet.username` and `fleet.password`: etcd's own authentication. None: calls carry no
    /// token.
    pub credentials: Option<EtcdCredentials>,
}

/// `fleet.username` and `fleet.password` (given as a value or `{"env": "NAME"}`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    pub username: String,
    pub password: String,
}

/// Never shows the password.
impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

impl FleetConfig {
    pub const DEFAULT_PREFIX: &'static str = "/proxy-webhooks";
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Default `/webhooks`; must start with `/`, no trailing `/` (a trailing one is trimmed).
    pub path_prefix: String,
    pub keys: Vec<ApiKey>,
    /// `api.consumer_header` (lowercase): a request header set by an authentication filter
    /// earlier in the chain that names the consumer, instead of `keys`.
    pub consumer_header: Option<String>,
    /// `api.max_subscriptions_per_consumer`, default 100.
    pub max_subscriptions_per_consumer: usize,
    /// `api.max_subscriptions`, default 100000: API subscriptions in all (static ones aside),
    /// at most [`MAX_SUBSCRIPTIONS_BOUND`].
    pub max_subscriptions: usize,
    /// `api.max_body_bytes`, default 65536: larger API request bodies answer 413.
    pub max_body_bytes: usize,
    /// `api.operator_keys`: keys of operators, valid only under `<prefix>/admin/`.
    pub operator_keys: Vec<OperatorKey>,
    /// `api.operator_header` (lowercase): a request header an authentication filter earlier in
    /// the chain sets to the operator's name; valid only under `<prefix>/admin/`.
    pub operator_header: Option<String>,
    /// `api.portal`; None when absent or disabled.
    pub portal: Option<PortalConfig>,
}

impl ApiConfig {
    /// What identifying a caller needs of `api`.
    pub fn identification(&self) -> Identification<'_> {
        Identification {
            keys: &self.keys,
            by_header: self.consumer_header.is_some(),
        }
    }
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
    /// Pending messages held at most, default 100000, at least 1.
    pub max_queue: usize,
    /// `delivery.max_queue_bytes`: bytes of pending messages held at most (payloads counted
    /// once, plus a fixed overhead per message), default 128 MiB.
    pub max_queue_bytes: usize,
    /// Largest response body copied into `data.object`, default 65536.
    pub max_payload_bytes: usize,
    /// `delivery.clusters.http`, default `webhooks_egress_http`.
    pub cluster_http: String,
    /// `delivery.clusters.https`, default `webhooks_egress_https`.
    pub cluster_https: String,
    /// `delivery.allow_http`: plain `http://` subscriber URLs. Default false.
    pub allow_http: bool,
    /// `delivery.allow_private_destinations`: `localhost` and special-purpose IP literals (for
    /// internal receivers; the egress clusters must then not filter them either). Default false.
    pub allow_private_destinations: bool,
    /// `delivery.max_in_flight`: concurrent callouts at most, default 256, at least 1.
    pub max_in_flight: usize,
    /// `delivery.max_in_flight_per_subscription`: the largest pacing window, default 32.
    pub max_in_flight_per_subscription: usize,
    /// `delivery.max_replay`: failed or exhausted messages kept for replay, default 1000.
    pub max_replay: usize,
    /// `delivery.max_replay_per_consumer`: of those, one consumer's at most, default 200.
    pub max_replay_per_consumer: usize,
    /// `delivery.drain_timeout`: how long shutdown waits for pending deliveries, default 10 s.
    pub drain_timeout_ms: u64,
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

/// Durations are capped so that time arithmetic on them can never overflow.
pub const MAX_DURATION_MS: u64 = 365 * DAY_MS;
/// The longest callout timeout: Envoy keeps it in 32-bit milliseconds (2^31 ms is 24.8 days) and
/// fails every callout past that.
pub const MAX_TIMEOUT_MS: u64 = 24 * DAY_MS;
/// `delivery.retry_schedule` entries at most.
pub const MAX_RETRY_SCHEDULE: usize = 50;

const SECOND_MS: u64 = 1000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

const DEFAULT_RETRY_SCHEDULE_MS: [u64; 10] = [
    0,
    5 * SECOND_MS,
    5 * MINUTE_MS,
    30 * MINUTE_MS,
    2 * HOUR_MS,
    5 * HOUR_MS,
    10 * HOUR_MS,
    14 * HOUR_MS,
    20 * HOUR_MS,
    24 * HOUR_MS,
];

impl Default for Config {
    fn default() -> Self {
        Config {
            events: Vec::new(),
            infer_events: true,
            infer_prefixes: Vec::new(),
            audience: Audience::Requester,
            api: ApiConfig::default(),
            subscriptions: Vec::new(),
            delivery: DeliveryConfig::default(),
            fleet: None,
            api_document: std::cell::OnceCell::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            path_prefix: "/webhooks".to_string(),
            keys: Vec::new(),
            consumer_header: None,
            max_subscriptions_per_consumer: 100,
            max_subscriptions: 100_000,
            max_body_bytes: 65536,
            operator_keys: Vec::new(),
            operator_header: None,
            portal: None,
        }
    }
}

impl DeliveryConfig {
    /// How strictly subscriber URLs are checked.
    pub fn url_policy(&self) -> Policy {
        Policy {
            allow_http: self.allow_http,
            allow_private: self.allow_private_destinations,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout_ms: 15 * SECOND_MS,
            retry_schedule_ms: DEFAULT_RETRY_SCHEDULE_MS.to_vec(),
            jitter: 0.2,
            disable_after_ms: 5 * DAY_MS,
            max_queue: 100_000,
            max_queue_bytes: 128 * 1024 * 1024,
            max_payload_bytes: 65536,
            cluster_http: "webhooks_egress_http".to_string(),
            cluster_https: "webhooks_egress_https".to_string(),
            allow_http: false,
            allow_private_destinations: false,
            max_in_flight: 256,
            max_in_flight_per_subscription: 32,
            max_replay: 1000,
            max_replay_per_consumer: 200,
            drain_timeout_ms: 10_000,
        }
    }
}

/// `"250ms"`, `"5s"`, `"30m"`, `"24h"`, `"5d"`: a whole number and a unit, nothing else.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => SECOND_MS,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return Err(bad()),
    };
    match count.checked_mul(scale) {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
        _ => Err(format!("{s:?} is too long (at most 365d)")),
    }
}

/// Parses and validates the plugin configuration. Empty or whitespace-only input gives the
/// defaults. A JSON `null` field counts as absent, so templated YAML can leave values empty.
/// Secrets given as `{"env": "NAME"}` are read from the VM's environment.
pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(json, &secrets::process_env)
}

/// [`parse`] with environment variables looked up in `env`.
pub fn parse_with_env(json: &[u8], env: Env<'_>) -> Result<Config, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Config::default());
    }
    let value: Value =
        serde_json::from_slice(json).map_err(|e| err("configuration", e.to_string()))?;
    let top = Obj::new("", &value, TOP_FIELDS)?;
    // `delivery` first: it decides how strictly subscription URLs are checked.
    let delivery = parse_delivery(top.get("delivery"))?;
    let audience = match top.get("audience") {
        Some(v) => parse_audience("audience", v, None)?,
        None => Audience::Requester,
    };
    let events = parse_events(top.get("events"), &audience)?;
    let (infer_events, infer_prefixes) = match top.get("infer_events") {
        Some(v) => parse_inference("infer_events", v)?,
        None => (events.is_empty(), Vec::new()),
    };
    let api = parse_api(top.get("api"), env)?;
    let subscriptions = parse_subscriptions(top.get("subscriptions"), delivery.url_policy(), env)?;
    let fleet = top
        .get("fleet")
        .map(|fleet| parse_fleet(fleet, env))
        .transpose()?;
    if let (Some(portal), Some(_)) = (&api.portal, &fleet) {
        if portal.session_key.is_empty() {
            return Err(err(
                "api.portal.session_key",
                "is required in fleet mode (every replica must accept every session)",
            ));
        }
    }
    Ok(Config {
        events,
        infer_events,
        infer_prefixes,
        audience,
        api,
        subscriptions,
        delivery,
        fleet,
        api_document: std::cell::OnceCell::new(),
    })
}

const TOP_FIELDS: &[&str] = &[
    "events",
    "infer_events",
    "audience",
    "api",
    "subscriptions",
    "delivery",
    "fleet",
];
const FLEET_FIELDS: &[&str] = &[
    "cluster",
    "prefix",
    "node_id",
    "sync_interval",
    "lease_ttl",
    "encryption_key",
    "previous_encryption_keys",
    "encrypt_payloads",
    "username",
    "password",
];
const EVENT_FIELDS: &[&str] = &[
    "type",
    "method",
    "path",
    "status",
    "audience",
    "include_object",
    "description",
    "schema",
    "example",
];
const AUDIENCE_FIELDS: &[&str] = &["param", "header", "response_header", "json"];
/// The largest `api.max_subscriptions`: ten million records of ~1 KB are already more than
/// etcd's largest recommended quota (8 GB), and fleet mode's cap slots have 8 digits.
pub const MAX_SUBSCRIPTIONS_BOUND: usize = 10_000_000;
const API_FIELDS: &[&str] = &[
    "path_prefix",
    "keys",
    "consumer_header",
    "max_subscriptions_per_consumer",
    "max_subscriptions",
    "max_body_bytes",
    "operator_keys",
    "operator_header",
    "portal",
];
const KEY_FIELDS: &[&str] = &["consumer", "sha256"];
const SUBSCRIPTION_FIELDS: &[&str] = &[
    "id",
    "consumer",
    "url",
    "events",
    "secret",
    "description",
    "privileged",
    "signature_scheme",
    "signing_key",
    "ordering",
];
const DELIVERY_FIELDS: &[&str] = &[
    "timeout",
    "retry_schedule",
    "jitter",
    "disable_after",
    "max_queue",
    "max_queue_bytes",
    "max_payload_bytes",
    "clusters",
    "allow_http",
    "allow_private_destinations",
    "allow_insecure_destinations",
    "max_in_flight",
    "max_in_flight_per_subscription",
    "max_replay",
    "max_replay_per_consumer",
    "drain_timeout",
];
const CLUSTER_FIELDS: &[&str] = &["http", "https"];

/// Where each field table hangs, in the docs' dotted notation (`a.b` a field of object `a`,
/// `a[]` an item of array `a`): the tables [`parse`] refuses unknown fields with. The docs
/// test holds docs/configuration.md to exactly these fields.
#[cfg(test)]
pub(crate) const FIELD_TABLES: [(&str, &[&str]); 18] = [
    ("", TOP_FIELDS),
    ("events[]", EVENT_FIELDS),
    ("events[].audience", AUDIENCE_FIELDS),
    ("audience", AUDIENCE_FIELDS),
    ("api", API_FIELDS),
    ("api.keys[]", KEY_FIELDS),
    ("api.operator_keys[]", portal::OPERATOR_KEY_FIELDS),
    ("api.portal", portal::PORTAL_FIELDS),
    ("api.portal.session_key", secrets::ENV_FIELDS),
    ("subscriptions[]", SUBSCRIPTION_FIELDS),
    ("delivery", DELIVERY_FIELDS),
    ("delivery.clusters", CLUSTER_FIELDS),
    ("fleet", FLEET_FIELDS),
    ("subscriptions[].secret", secrets::ENV_FIELDS),
    ("subscriptions[].signing_key", secrets::ENV_FIELDS),
    ("fleet.encryption_key", secrets::ENV_FIELDS),
    ("fleet.previous_encryption_keys[]", secrets::ENV_FIELDS),
    ("fleet.password", secrets::ENV_FIELDS),
];

/// Out of line: inlined, each of the many error paths would carry its own copy.
#[inline(never)]
fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A JSON object whose fields have been checked against the known names; every accessor names
/// the field in its error.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, value: &'a Value, known: &[&str]) -> Result<Obj<'a>, ConfigError> {
        let Some(map) = value.as_object() else {
            return Err(match path {
                "" => err("configuration", "must be a JSON object"),
                _ => err(path, "must be an object"),
            });
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            // An empty key would leave nothing to name (`: unknown field` at the top level).
            return Err(match unknown.as_str() {
                "" if path.is_empty() => err("configuration", "unknown field \"\""),
                "" => err(path, "unknown field \"\""),
                _ => err(join(path, unknown), "unknown field"),
            });
        }
        Ok(Obj {
            path: path.to_string(),
            map,
        })
    }

    fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, ConfigError> {
        self.get(key)
            .ok_or_else(|| err(self.field(key), "is required"))
    }

    fn required_str(&self, key: &str) -> Result<&'a str, ConfigError> {
        as_str(&self.field(key), self.required(key)?)
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(key)
            .map(|v| as_str(&self.field(key), v))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| err(self.field(key), "must be a boolean"))
            })
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        self.get(key)
            .map(|v| as_array(&self.field(key), v))
            .transpose()
    }

    /// An integer at least `min`, as a usize.
    fn count(&self, key: &str, min: u64) -> Result<Option<usize>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_u64().map(usize::try_from) {
            Some(Ok(n)) if n as u64 >= min => Ok(Some(n)),
            Some(Err(_)) => Err(err(self.field(key), "is too large")),
            _ => Err(err(self.field(key), format!("must be an integer >= {min}"))),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.get(key)
            .map(|v| as_duration(&self.field(key), v))
            .transpose()
    }

    /// A duration that must be greater than zero.
    fn positive_duration(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.duration(key)? {
            Some(0) => Err(err(self.field(key), "must be greater than 0")),
            other => Ok(other),
        }
    }
}

fn as_str<'v>(field: &str, v: &'v Value) -> Result<&'v str, ConfigError> {
    v.as_str().ok_or_else(|| err(field, "must be a string"))
}

fn as_array<'v>(field: &str, v: &'v Value) -> Result<&'v Vec<Value>, ConfigError> {
    v.as_array().ok_or_else(|| err(field, "must be an array"))
}

fn as_duration(field: &str, v: &Value) -> Result<u64, ConfigError> {
    let s = v
        .as_str()
        .ok_or_else(|| err(field, "must be a duration string like \"5s\""))?;
    parse_duration(s).map_err(|problem| err(field, problem))
}

fn parse_delivery(value: Option<&Value>) -> Result<DeliveryConfig, ConfigError> {
    let mut d = DeliveryConfig::default();
    let Some(value) = value else {
        return Ok(d);
    };
    let o = Obj::new("delivery", value, DELIVERY_FIELDS)?;
    d.timeout_ms = o.positive_duration("timeout")?.unwrap_or(d.timeout_ms);
    if d.timeout_ms > MAX_TIMEOUT_MS {
        return Err(err(
            o.field("timeout"),
            "must be at most 24d (Envoy fails callouts with longer timeouts)",
        ));
    }
    if let Some(list) = o.array("retry_schedule")? {
        d.retry_schedule_ms = parse_schedule(&o.field("retry_schedule"), list)?;
    }
    if let Some(v) = o.get("jitter") {
        d.jitter = parse_jitter(&o.field("jitter"), v)?;
    }
    d.disable_after_ms = o
        .positive_duration("disable_after")?
        .unwrap_or(d.disable_after_ms);
    d.max_queue = o.count("max_queue", 1)?.unwrap_or(d.max_queue);
    d.max_queue_bytes = o
        .count("max_queue_bytes", 1024)?
        .unwrap_or(d.max_queue_bytes);
    d.max_payload_bytes = o
        .count("max_payload_bytes", 0)?
        .unwrap_or(d.max_payload_bytes);
    if let Some(v) = o.get("clusters") {
        parse_clusters(&o.field("clusters"), v, &mut d)?;
    }
    // The old single switch stays as shorthand for both; the new ones override it.
    let insecure = o.bool("allow_insecure_destinations")?.unwrap_or(false);
    d.allow_http = o.bool("allow_http")?.unwrap_or(insecure);
    d.allow_private_destinations = o.bool("allow_private_destinations")?.unwrap_or(insecure);
    d.max_in_flight = o.count("max_in_flight", 1)?.unwrap_or(d.max_in_flight);
    d.max_in_flight_per_subscription = o
        .count("max_in_flight_per_subscription", 1)?
        .unwrap_or(d.max_in_flight_per_subscription);
    d.max_replay = o.count("max_replay", 0)?.unwrap_or(d.max_replay);
    d.max_replay_per_consumer = o
        .count("max_replay_per_consumer", 0)?
        .unwrap_or(d.max_replay_per_consumer);
    d.drain_timeout_ms = o.duration("drain_timeout")?.unwrap_or(d.drain_timeout_ms);
    Ok(d)
}

fn parse_fleet(value: &Value, env: Env<'_>) -> Result<FleetConfig, ConfigError> {
    let o = Obj::new("fleet", value, FLEET_FIELDS)?;
    let cluster = o.required_str("cluster")?;
    if cluster.is_empty() {
        return Err(err(o.field("cluster"), "must not be empty"));
    }
    let prefix = o.str("prefix")?.unwrap_or(FleetConfig::DEFAULT_PREFIX);
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) {
        return Err(err(
            o.field("prefix"),
            "must start with / and contain no whitespace",
        ));
    }
    let node_id = o.str("node_id")?.map(str::to_string);
    if node_id
        .as_deref()
        .is_some_and(|n| n.is_empty() || n.contains(|c: char| c == '/' || c.is_whitespace()))
    {
        return Err(err(
            o.field("node_id"),
            "must be non-empty, without / or whitespace",
        ));
    }
    let lease_ttl_ms = o.duration("lease_ttl")?.unwrap_or(10_000);
    if !(2_000..=3_600_000).contains(&lease_ttl_ms) {
        return Err(err(
            o.field("lease_ttl"),
            "must be between 2s (etcd's shortest lease) and 1h",
        ));
    }
    let sync_interval_ms = o.duration("sync_interval")?.unwrap_or(500);
    if !(10..=60_000).contains(&sync_interval_ms) {
        return Err(err(
            o.field("sync_interval"),
            "must be between 10ms and 60s",
        ));
    }
    let (keyring, encrypt_payloads) = parse_keyring(&o, env)?;
    let credentials = parse_credentials(&o, env)?;
    Ok(FleetConfig {
        cluster: cluster.to_string(),
        prefix: prefix.to_string(),
        node_id,
        sync_interval_ms,
        lease_ttl_ms,
        keyring,
        encrypt_payloads,
        credentials,
    })
}

/// `fleet.username` and `fleet.password`: both or neither.
fn parse_credentials(o: &Obj<'_>, env: Env<'_>) -> Result<Option<EtcdCredentials>, ConfigError> {
    let username = o.str("username")?;
    let password = o
        .get("password")
        .map(|v| secrets::secret(&o.field("password"), v, env))
        .transpose()?;
    match (username, password) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(err(
            o.field("username"),
            "needs fleet.password (etcd's authentication takes both)",
        )),
        (None, Some(_)) => Err(err(
            o.field("password"),
            "needs fleet.username (etcd's authentication takes both)",
        )),
        (Some(""), _) => Err(err(o.field("username"), "must not be empty")),
        (_, Some(p)) if p.is_empty() => Err(err(o.field("password"), "must not be empty")),
        (Some(username), Some(password)) => Ok(Some(EtcdCredentials {
            username: username.to_string(),
            password,
        })),
    }
}

/// `fleet.encryption_key`, `previous_encryption_keys` and `encrypt_payloads`.
fn parse_keyring(o: &Obj<'_>, env: Env<'_>) -> Result<(Option<Keyring>, bool), ConfigError> {
    let current = o
        .get("encryption_key")
        .map(|v| secrets::encryption_key(&o.field("encryption_key"), v, env))
        .transpose()?;
    let mut previous = Vec::new();
    let field = o.field("previous_encryption_keys");
    for (i, v) in o
        .array("previous_encryption_keys")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        previous.push(secrets::encryption_key(&item(&field, i), v, env)?);
    }
    let payloads = o.bool("encrypt_payloads")?.unwrap_or(false);
    let needs_key = |name: &str| {
        err(
            o.field(name),
            "needs fleet.encryption_key (the key new values are sealed with)",
        )
    };
    match current {
        Some(current) => Ok((Some(Keyring::new(current, previous)), payloads)),
        None if !previous.is_empty() => Err(needs_key("previous_encryption_keys")),
        None if payloads => Err(needs_key("encrypt_payloads")),
        None => Ok((None, false)),
    }
}

fn parse_schedule(field: &str, list: &[Value]) -> Result<Vec<u64>, ConfigError> {
    if list.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if list.len() > MAX_RETRY_SCHEDULE {
        return Err(err(
            field,
            format!("must have at most {MAX_RETRY_SCHEDULE} entries"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| as_duration(&item(field, i), v))
        .collect()
}

fn parse_jitter(field: &str, v: &Value) -> Result<f64, ConfigError> {
    match v.as_f64() {
        Some(j) if (0.0..1.0).contains(&j) => Ok(j),
        _ => Err(err(field, "must be a number in [0, 1)")),
    }
}

fn parse_clusters(field: &str, v: &Value, d: &mut DeliveryConfig) -> Result<(), ConfigError> {
    let o = Obj::new(field, v, CLUSTER_FIELDS)?;
    for (key, slot) in [
        ("http", &mut d.cluster_http),
        ("https", &mut d.cluster_https),
    ] {
        match o.str(key)? {
            Some("") => return Err(err(o.field(key), "must not be empty")),
            Some(name) => *slot = name.to_string(),
            None => {}
        }
    }
    Ok(())
}

fn parse_events(value: Option<&Value>, default: &Audience) -> Result<Vec<EventRule>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    as_array("events", value)?
        .iter()
        .enumerate()
        .map(|(i, v)| parse_rule(&item("events", i), v, default))
        .collect()
}

fn parse_rule(path: &str, value: &Value, default: &Audience) -> Result<EventRule, ConfigError> {
    let o = Obj::new(path, value, EVENT_FIELDS)?;
    let event_type = parse_event_type(&o.field("type"), o.required_str("type")?)?;
    let methods = match o.get("method") {
        Some(v) => parse_methods(&o.field("method"), v)?,
        None => rules::MUTATING_METHODS.map(String::from).to_vec(),
    };
    let template = o.required_str("path")?;
    let path = PathTemplate::parse(template).map_err(|problem| err(o.field("path"), problem))?;
    let status = match o.get("status") {
        Some(v) => parse_status(&o.field("status"), v)?,
        None => StatusMatch::Class(2),
    };
    let audience = match o.get("audience") {
        Some(v) => parse_audience(&o.field("audience"), v, Some(&path))?,
        None => default.clone(),
    };
    Ok(EventRule {
        event_type,
        methods,
        path,
        status,
        audience,
        include_object: o.bool("include_object")?.unwrap_or(true),
        doc: catalog::parse_doc(&o)?,
    })
}

/// `"requester"`, `"all"`, or one of `{"param"}`, `{"header"}`, `{"response_header"}`,
/// `{"json"}`. `template` is the rule's path template; a param audience must name one of its
/// captures, so the top-level default (which inferred events use too) cannot be one.
fn parse_audience(
    field: &str,
    v: &Value,
    template: Option<&PathTemplate>,
) -> Result<Audience, ConfigError> {
    let shape = || {
        err(
            field,
            "must be \"requester\", \"all\", or an object with one of param, header, response_header, json",
        )
    };
    if let Some(name) = v.as_str() {
        return match name {
            "requester" => Ok(Audience::Requester),
            "all" => Ok(Audience::All),
            _ => Err(shape()),
        };
    }
    let o = Obj::new(field, v, AUDIENCE_FIELDS).map_err(|e| match v.is_object() {
        true => e,
        false => shape(),
    })?;
    let mut entries = o.map.iter();
    let (Some((kind, value)), None) = (entries.next(), entries.next()) else {
        return Err(shape());
    };
    let field = o.field(kind);
    let value = as_str(&field, value)?;
    let problem = match kind.as_str() {
        "header" => return parse_header_name(&field, value).map(Audience::Header),
        "response_header" => return parse_header_name(&field, value).map(Audience::ResponseHeader),
        "param" if template.is_some_and(|t| t.has_param(value)) => {
            return Ok(Audience::Param(value.to_string()))
        }
        "param" => match template {
            Some(t) => format!("{value:?} is not a capture of the path {:?}", t.as_str()),
            None => "is only valid on an event rule (inferred events have no path template)".into(),
        },
        _ if audience::is_json_pointer(value) => return Ok(Audience::Json(value.to_string())),
        _ => format!("{value:?} is not a JSON pointer (like \"/customer_id\")"),
    };
    Err(err(field, problem))
}

/// An HTTP field name (RFC 9110 token), stored lowercase as Envoy hands headers over.
fn parse_header_name(field: &str, s: &str) -> Result<String, ConfigError> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(token) {
        return Err(err(field, format!("{s:?} is not a header name")));
    }
    Ok(s.to_ascii_lowercase())
}

/// `true`, `false`, or a non-empty list of path prefixes inference is limited to.
fn parse_inference(field: &str, v: &Value) -> Result<(bool, Vec<String>), ConfigError> {
    if let Some(on) = v.as_bool() {
        return Ok((on, Vec::new()));
    }
    let shape = || {
        err(
            field,
            "must be a boolean or a non-empty array of path prefixes",
        )
    };
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(shape)?;
    let prefixes = list
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = item(field, i);
            let s = as_str(&field, entry)?;
            if !s.starts_with('/')
                || s.contains(|c: char| "?#".contains(c) || c.is_whitespace() || c.is_control())
            {
                return Err(err(
                    field,
                    "must start with '/' and contain no '?', '#' or whitespace",
                ));
            }
            Ok(s.trim_end_matches('/').to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok((true, prefixes))
}

impl Config {
    /// Whether events of `event_type` can happen here: a configured rule's type, `webhook.test`,
    /// or, with inference on, any type inference can produce (one resource segment of letters
    /// and '_' followed by created/updated/deleted).
    pub fn knows_event_type(&self, event_type: &str) -> bool {
        event_type == TEST_EVENT_TYPE
            || self.events.iter().any(|r| r.event_type == event_type)
            || (self.infer_events && rules::is_inferable_type(event_type))
    }

    /// Whether a subscription may name `filter`: `*`, a type [`Config::knows_event_type`], or
    /// `prefix.*` when one of those starts with `prefix.` (with inference, any resource's).
    pub fn knows_filter(&self, filter: &str) -> bool {
        let Some(prefix) = filter.strip_suffix(".*") else {
            return filter == "*" || self.knows_event_type(filter);
        };
        let under = |t: &str| {
            t.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
        };
        under(TEST_EVENT_TYPE)
            || self.events.iter().any(|r| under(&r.event_type))
            || (self.infer_events && rules::is_inferable_type(&format!("{prefix}.created")))
    }

    /// Whether inference applies to `path` (query stripped): on, and under one of the prefixes
    /// if they are limited (`/orders` covers `/orders` and `/orders/7`, not `/ordersx`).
    pub fn infers(&self, path: &str) -> bool {
        self.infer_events
            && (self.infer_prefixes.is_empty()
                || self.infer_prefixes.iter().any(|p| {
                    path.strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }))
    }

    /// The audience of an event detected by rule `rule` (None: inferred).
    pub fn audience_of(&self, rule: Option<usize>) -> &Audience {
        rule.and_then(|i| self.events.get(i))
            .map_or(&self.audience, |r| &r.audience)
    }

    /// Whether events of rule `rule` (None: inferred) carry the response body.
    pub fn include_object(&self, rule: Option<usize>) -> bool {
        rule.and_then(|i| self.events.get(i))
            .is_none_or(|r| r.include_object)
    }
}

fn parse_event_type(field: &str, s: &str) -> Result<String, ConfigError> {
    if !rules::is_valid_event_type(s) {
        return Err(err(
            field,
            format!("{s:?} is not an event type (dot-separated parts of letters, digits and '_', at most 128 characters)"),
        ));
    }
    if s.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(err(
            field,
            format!("types starting with {RESERVED_TYPE_PREFIX:?} are reserved"),
        ));
    }
    Ok(s.to_string())
}

/// One method or a non-empty list; case-insensitive, stored uppercase, duplicates dropped.
fn parse_methods(field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    let shape = || err(field, "must be a method or a non-empty array of methods");
    if let Some(one) = v.as_str() {
        return Ok(vec![parse_method(field, one)?]);
    }
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(shape)?;
    let mut methods: Vec<String> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = item(field, i);
        let method = parse_method(&field, as_str(&field, entry)?)?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    Ok(methods)
}

fn parse_method(field: &str, s: &str) -> Result<String, ConfigError> {
    let upper = s.to_ascii_uppercase();
    if rules::is_mutating(&upper) {
        return Ok(upper);
    }
    let problem = match upper.as_str() {
        "GET" | "HEAD" | "OPTIONS" => {
            format!("{upper} never makes events; only POST, PUT, PATCH and DELETE do")
        }
        _ => format!("{s:?} is not one of POST, PUT, PATCH, DELETE"),
    };
    Err(err(field, problem))
}

/// A non-empty list of codes, or a class string `"1xx"`..`"5xx"`.
fn parse_status(field: &str, v: &Value) -> Result<StatusMatch, ConfigError> {
    let shape = || {
        err(
            field,
            "must be a list of status codes or a class like \"2xx\"",
        )
    };
    if let Some(class) = v.as_str() {
        return parse_status_class(class).ok_or_else(shape);
    }
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(shape)?;
    list.iter()
        .enumerate()
        .map(|(i, code)| match code.as_u64() {
            Some(c @ 100..=599) => Ok(c as u16),
            _ => Err(err(item(field, i), "must be a status code from 100 to 599")),
        })
        .collect::<Result<_, _>>()
        .map(StatusMatch::Codes)
}

fn parse_status_class(s: &str) -> Option<StatusMatch> {
    match s.to_ascii_lowercase().as_bytes() {
        [d @ b'1'..=b'5', b'x', b'x'] => Some(StatusMatch::Class(u16::from(d - b'0'))),
        _ => None,
    }
}

fn parse_api(value: Option<&Value>, env: Env<'_>) -> Result<ApiConfig, ConfigError> {
    let mut api = ApiConfig::default();
    let Some(value) = value else {
        return Ok(api);
    };
    let o = Obj::new("api", value, API_FIELDS)?;
    if let Some(prefix) = o.str("path_prefix")? {
        api.path_prefix = parse_path_prefix(&o.field("path_prefix"), prefix)?;
    }
    if let Some(list) = o.array("keys")? {
        api.keys = parse_keys(&o.field("keys"), list)?;
    }
    if let Some(name) = o.str("consumer_header")? {
        let field = o.field("consumer_header");
        api.consumer_header = Some(parse_header_name(&field, name)?);
        if !api.keys.is_empty() {
            return Err(err(
                field,
                "cannot be combined with api.keys: with a consumer header, it alone identifies consumers",
            ));
        }
    }
    api.max_subscriptions_per_consumer = o
        .count("max_subscriptions_per_consumer", 1)?
        .unwrap_or(api.max_subscriptions_per_consumer);
    if let Some(max) = o.count("max_subscriptions", 1)? {
        if max > MAX_SUBSCRIPTIONS_BOUND {
            let bound = MAX_SUBSCRIPTIONS_BOUND;
            return Err(err(
                o.field("max_subscriptions"),
                format!("must be at most {bound} (fleet mode numbers its slots with 8 digits)"),
            ));
        }
        api.max_subscriptions = max;
    }
    api.max_body_bytes = o
        .count("max_body_bytes", 1024)?
        .unwrap_or(api.max_body_bytes);
    parse_operators(&o, &mut api)?;
    api.portal = o
        .get("portal")
        .map(|v| portal::parse_portal(v, env))
        .transpose()?
        .flatten();
    Ok(api)
}

/// `api.operator_keys` and `api.operator_header`.
fn parse_operators(o: &Obj<'_>, api: &mut ApiConfig) -> Result<(), ConfigError> {
    if let Some(list) = o.array("operator_keys")? {
        let api_keys: Vec<[u8; 32]> = api.keys.iter().map(|k| k.sha256).collect();
        api.operator_keys =
            portal::parse_operator_keys(&o.field("operator_keys"), list, &api_keys)?;
    }
    if let Some(name) = o.str("operator_header")? {
        let field = o.field("operator_header");
        let name = parse_header_name(&field, name)?;
        if api.consumer_header.as_deref() == Some(name.as_str()) {
            return Err(err(
                field,
                "must not be api.consumer_header: one header cannot name both a consumer and an operator",
            ));
        }
        let reserved = ["authorization", "x-api-key", "x-webhooks-session"];
        if reserved.contains(&name.as_str()) {
            return Err(err(
                field,
                format!("{name:?} carries credentials of its own; name the header your authentication filter sets"),
            ));
        }
        api.operator_header = Some(name);
    }
    Ok(())
}

/// Trailing slashes are trimmed; the root itself is refused because the API would then shadow
/// the upstream's own `/subscriptions`.
fn parse_path_prefix(field: &str, s: &str) -> Result<String, ConfigError> {
    if !s.starts_with('/') {
        return Err(err(field, "must start with '/'"));
    }
    let forbidden = |c: char| "?#{}".contains(c) || c.is_whitespace() || c.is_control();
    if s.contains(forbidden) {
        return Err(err(
            field,
            "must not contain '?', '#', '{', '}' or whitespace",
        ));
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(err(field, "must not be the root '/'"));
    }
    Ok(trimmed.to_string())
}

fn parse_keys(field: &str, list: &[Value]) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys: Vec<ApiKey> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let o = Obj::new(&item(field, i), v, KEY_FIELDS)?;
        let consumer = parse_consumer(&o.field("consumer"), o.required_str("consumer")?)?;
        let sha256 = parse_sha256(o.required_str("sha256")?)
            .ok_or_else(|| err(o.field("sha256"), "must be 64 hex digits"))?;
        if keys.iter().any(|k| k.sha256 == sha256) {
            return Err(err(o.field("sha256"), "the same key is configured twice"));
        }
        keys.push(ApiKey { consumer, sha256 });
    }
    Ok(keys)
}

fn parse_consumer(field: &str, s: &str) -> Result<String, ConfigError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return Err(err(
            field,
            "must be 1 to 64 letters, digits, '_', '.' or '-'",
        ));
    }
    Ok(s.to_string())
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let [hi, lo] = pair else {
            return None;
        };
        *byte = hex_value(*hi)? << 4 | hex_value(*lo)?;
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn parse_subscriptions(
    value: Option<&Value>,
    policy: Policy,
    env: Env<'_>,
) -> Result<Vec<StaticSubscription>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let list = as_array("subscriptions", value)?;
    let mut subs: Vec<StaticSubscription> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let path = item("subscriptions", i);
        let sub = parse_subscription(&path, v, policy, env)?;
        if subs.iter().any(|s| s.id == sub.id) {
            return Err(err(join(&path, "id"), format!("duplicate id {:?}", sub.id)));
        }
        subs.push(sub);
    }
    Ok(subs)
}

fn parse_subscription(
    path: &str,
    value: &Value,
    policy: Policy,
    env: Env<'_>,
) -> Result<StaticSubscription, ConfigError> {
    let o = Obj::new(path, value, SUBSCRIPTION_FIELDS)?;
    let id = parse_subscription_id(&o.field("id"), o.required_str("id")?)?;
    let consumer = parse_consumer(&o.field("consumer"), o.required_str("consumer")?)?;
    let url = o.required_str("url")?;
    check_destination(url, policy).map_err(|e| err(o.field("url"), e.message))?;
    let events = parse_filters(&o.field("events"), o.required("events")?)?;
    let (secret, signing_key) = parse_signing(&o, env)?;
    let description = o.str("description")?.unwrap_or_default();
    let privileged = o.bool("privileged")?.unwrap_or(false);
    let ordering = match o.str("ordering")? {
        None => subscription::Ordering::None,
        Some(name) => subscription::Ordering::from_value(&Value::from(name))
            .ok_or_else(|| err(o.field("ordering"), "must be \"none\" or \"fifo\""))?,
    };
    subscription::check_description(description)
        .map_err(|problem| err(o.field("description"), problem))?;
    Ok(StaticSubscription {
        id,
        consumer,
        url: url.to_string(),
        events,
        secret,
        signing_key,
        description: description.to_string(),
        privileged,
        ordering,
    })
}

/// A static subscription's `secret` and `signing_key`, as its `signature_scheme` asks: each one
/// the scheme uses is required, the other refused.
fn parse_signing(
    o: &Obj<'_>,
    env: Env<'_>,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let scheme = match o.str("signature_scheme")? {
        None => Scheme::V1,
        Some(s) => {
            Scheme::parse(s).ok_or_else(|| err(o.field("signature_scheme"), Scheme::RULE))?
        }
    };
    // Given values are read first, so that a bad one is named before a missing one.
    let given = |name: &str, parse: fn(&str) -> Result<Secret, String>| {
        let field = o.field(name);
        o.get(name)
            .map(|v| {
                let text = secrets::secret(&field, v, env)?;
                parse(&text).map_err(|problem| err(&field, problem))?;
                Ok(text)
            })
            .transpose()
    };
    let secret = given("secret", Secret::parse_chosen)?;
    let signing_key = given("signing_key", Secret::parse_signing_key)?;
    let wanted = [
        ("secret", secret.is_some(), scheme.hmac()),
        ("signing_key", signing_key.is_some(), scheme.ed25519()),
    ];
    for (name, present, wanted) in wanted {
        let problem = match (present, wanted) {
            (false, true) => "is required",
            (true, false) => "is not used",
            _ => continue,
        };
        let scheme = scheme.as_str();
        return Err(err(
            o.field(name),
            format!("{problem} with signature_scheme {scheme:?}"),
        ));
    }
    Ok((secret, signing_key))
}

fn parse_subscription_id(field: &str, s: &str) -> Result<String, ConfigError> {
    if !subscription::is_valid_id(s) {
        return Err(err(field, subscription::ID_RULE));
    }
    Ok(s.to_string())
}

/// The API's rules for event filters, except that a configured subscription may name exact
/// types no rule produces (the operator's choice, not an API caller's guess).
fn parse_filters(field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    let list = v
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| err(field, "must be a non-empty array of event filters"))?;
    subscription::check_filters(list.iter().map(Value::as_str), |_| true).map_err(|e| match e {
        FilterError::Count => err(
            field,
            format!("must list at most {MAX_EVENTS} event filters"),
        ),
        FilterError::NotAFilter(i) | FilterError::Unknown(i) => {
            let field = item(field, i);
            match list.get(i).and_then(Value::as_str) {
                Some(filter) => err(
                    field,
                    format!("{filter:?} is not an event type, a prefix.* wildcard or *"),
                ),
                None => err(field, "must be a string"),
            }
        }
    })
}

pub mod catalog;
pub mod portal;
pub mod secrets;
#[cfg(test)]
mod tests;
