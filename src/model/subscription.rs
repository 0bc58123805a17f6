//! The subscription: its record, status and signing secrets, the static subscriptions of the
//! configuration, the one set of rules its fields obey (used by both the configuration and the
//! API), and how its event filters match event types (beside the index lookup that must agree).

use crate::model::rules;
use crate::model::signing;
use crate::support::record::{self, Fields};
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// Event types of the plugin's own, which configured rules may not use.
pub const RESERVED_TYPE_PREFIX: &str = "webhook.";
/// The event type of `POST .../test`, always subscribable (one of the reserved types).
pub const TEST_EVENT_TYPE: &str = "webhook.test";
/// Event filters per subscription at most: each one is an index entry.
pub const MAX_EVENTS: usize = 50;
/// Description characters at most.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Id bytes at most.
pub const ID_MAX_LEN: usize = 64;
/// What [`is_valid_id`] asks, for error messages.
pub const ID_RULE: &str = "must be 1 to 64 letters, digits, '_' or '-'";
/// Headers for the receiver per subscription at most.
pub const MAX_HEADERS: usize = 10;
/// Bytes of a header name at most.
pub const MAX_HEADER_NAME_BYTES: usize = 64;
/// Bytes of a header value at most (a long bearer token fits; with [`MAX_HEADERS`] a record's
/// headers stay under 21 KiB).
pub const MAX_HEADER_VALUE_BYTES: usize = 2048;

/// Stored records are read by [`Subscription::from_json`]; `Deserialize` is derived for tests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Disabled,
}

/// How a subscription's messages are delivered: `none` (paced and concurrent, the default) or
/// `fifo` (one attempt at a time, in detection order: see `crate::dispatcher::outbox`). Set at
/// create and fixed afterwards, so a lane never changes its rule while messages wait in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    None,
    Fifo,
}

impl Ordering {
    pub const NAMES: [&'static str; 2] = ["none", "fifo"];

    pub fn from_value(v: &Value) -> Option<Ordering> {
        record::variant(v, &Ordering::NAMES, &[Ordering::None, Ordering::Fifo])
    }

    pub fn is_none(&self) -> bool {
        *self == Ordering::None
    }

    pub fn is_fifo(self) -> bool {
        self == Ordering::Fifo
    }
}

/// A signing secret; old ones keep signing beside the new one until they expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct SigningSecret {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// A header sent to the receiver with every delivery (its name in lowercase). Its value is a
/// secret like the signing secrets: sealed in etcd, shown only in the create answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct ReceiverHeader {
    pub name: String,
    pub value: String,
}

impl ReceiverHeader {
    fn from_value(v: &Value) -> Option<ReceiverHeader> {
        let o = v.as_object()?;
        Some(ReceiverHeader {
            name: record::string(o, "name")?,
            value: record::string(o, "value")?,
        })
    }
}

/// How a subscription signs: `v1` (HMAC-SHA256 with a `whsec_` secret), `v1a` (ed25519 with a
/// key pair the plugin generates) or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    V1,
    V1a,
    Both,
}

impl Scheme {
    /// What [`Scheme::parse`] accepts, for error messages.
    pub const RULE: &'static str = "must be \"v1\", \"v1a\" or \"v1,v1a\"";

    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "v1" => Some(Scheme::V1),
            "v1a" => Some(Scheme::V1a),
            "v1,v1a" => Some(Scheme::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::V1 => "v1",
            Scheme::V1a => "v1a",
            Scheme::Both => "v1,v1a",
        }
    }

    /// Whether it signs `v1` (has a `whsec_` secret).
    pub fn hmac(self) -> bool {
        self != Scheme::V1a
    }

    /// Whether it signs `v1a` (has an ed25519 key).
    pub fn ed25519(self) -> bool {
        self != Scheme::V1
    }
}

impl Serialize for Scheme {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Status {
    fn from_value(v: &Value) -> Option<Status> {
        record::variant(
            v,
            &["active", "disabled"],
            &[Status::Active, Status::Disabled],
        )
    }
}

impl SigningSecret {
    fn from_value(v: &Value) -> Option<SigningSecret> {
        let o = v.as_object()?;
        Some(SigningSecret {
            secret: record::string(o, "secret")?,
            expires_at_ms: record::optional(o, "expires_at_ms", record::as_uint)?,
        })
    }

    /// Whether this secret still signs at `now_ms` (a rotated one stops at its expiry).
    pub fn signs_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// One registry record. `version` grows by one on every change (optimistic concurrency across
/// backends that lack the store's own cas).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct Subscription {
    pub id: String,
    pub consumer: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The current secret first, then rotated ones still valid.
    pub secrets: Vec<SigningSecret>,
    /// Defined in the plugin configuration; not changeable through the API.
    #[serde(default)]
    pub is_static: bool,
    /// Sent to the receiver with every delivery; values are secrets (see [`ReceiverHeader`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ReceiverHeader>,
    /// A static subscription that receives events whatever their audience (never API-made).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Stored only when not the default, so records without it read as before.
    #[serde(default, skip_serializing_if = "Ordering::is_none")]
    pub ordering: Ordering,
    #[serde(default)]
    pub version: u64,
}

impl Subscription {
    /// A stored record (JSON as serialized), or None when it is not one.
    pub fn from_json(json: &[u8]) -> Option<Subscription> {
        Subscription::from_fields(&record::parse_object(json)?)
    }

    fn from_fields(o: &Fields) -> Option<Subscription> {
        Some(Subscription {
            id: record::string(o, "id")?,
            consumer: record::string(o, "consumer")?,
            url: record::string(o, "url")?,
            events: record::list(o, "events", record::as_string)?,
            description: record::defaulted(o, "description", record::as_string)?,
            status: Status::from_value(o.get("status")?)?,
            disabled_reason: record::optional(o, "disabled_reason", record::as_string)?,
            created_at_ms: record::uint(o, "created_at_ms")?,
            updated_at_ms: record::uint(o, "updated_at_ms")?,
            secrets: record::list(o, "secrets", SigningSecret::from_value)?,
            is_static: record::defaulted(o, "is_static", Value::as_bool)?,
            headers: record::defaulted(o, "headers", |v| {
                record::as_list(v, ReceiverHeader::from_value)
            })?,
            privileged: record::defaulted(o, "privileged", Value::as_bool)?,
            ordering: match o.get("ordering") {
                None => Ordering::None,
                Some(v) => Ordering::from_value(v)?,
            },
            version: record::defaulted(o, "version", record::as_uint)?,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// How it signs, read from its current (unexpiring) secrets: an ed25519 key signs `v1a`,
    /// any other secret `v1`.
    pub fn signature_scheme(&self) -> Scheme {
        let current = self.secrets.iter().filter(|s| s.expires_at_ms.is_none());
        let (mut hmac, mut ed25519) = (false, false);
        for secret in current {
            match signing::is_signing_key(&secret.secret) {
                true => ed25519 = true,
                false => hmac = true,
            }
        }
        match (hmac, ed25519) {
            (false, true) => Scheme::V1a,
            (true, true) => Scheme::Both,
            _ => Scheme::V1,
        }
    }

    /// The `whsec_` secret that signs `v1` now, if it has one.
    pub fn current_secret(&self) -> Option<&str> {
        self.current(false)
    }

    /// The ed25519 key that signs `v1a` now, if it has one (stored form, never shown).
    pub fn current_signing_key(&self) -> Option<&str> {
        self.current(true)
    }

    fn current(&self, ed25519: bool) -> Option<&str> {
        self.secrets
            .iter()
            .find(|s| s.expires_at_ms.is_none() && signing::is_signing_key(&s.secret) == ed25519)
            .map(|s| s.secret.as_str())
    }

    /// The record of a configured subscription, new at `now_ms`.
    pub fn from_static(s: &StaticSubscription, now_ms: u64) -> Subscription {
        Subscription {
            id: s.id.clone(),
            consumer: s.consumer.clone(),
            url: s.url.clone(),
            events: s.events.clone(),
            description: s.description.clone(),
            status: Status::Active,
            disabled_reason: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            secrets: s
                .secret
                .iter()
                .chain(&s.signing_key)
                .map(|secret| SigningSecret {
                    secret: secret.clone(),
                    expires_at_ms: None,
                })
                .collect(),
            is_static: true,
            headers: Vec::new(),
            privileged: s.privileged,
            ordering: s.ordering,
            version: 1,
        }
    }

    /// Whether a stored static subscription still says what the configuration says (its
    /// status may differ: a receiver's 410 disables it until the configuration changes).
    pub fn same_definition(&self, want: &Subscription) -> bool {
        (
            &self.consumer,
            &self.url,
            &self.events,
            &self.description,
            &self.secrets,
            self.privileged,
            self.ordering,
        ) == (
            &want.consumer,
            &want.url,
            &want.events,
            &want.description,
            &want.secrets,
            want.privileged,
            want.ordering,
        )
    }
}

/// A subscription fixed in the configuration; it cannot be changed through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticSubscription {
    pub id: String,
    pub consumer: String,
    pub url: String,
    /// Event filters: exact types, `prefix.*` or `*`.
    pub events: Vec<String>,
    /// `whsec_` + base64 secret, validated to decode; none for a pure `v1a` one.
    pub secret: Option<String>,
    /// `whsk_` + base64 of an ed25519 seed, validated; only for `v1a` and `v1,v1a`.
    pub signing_key: Option<String>,
    pub description: String,
    /// Receives every event its filters match, whatever the event's audience.
    pub privileged: bool,
    pub ordering: Ordering,
}

// ---------------------------------------------------------------------------------------------
// Validation: one rule per field, for configured and API-made subscriptions alike.

/// `[A-Za-z0-9_-]{1,64}`: what ids are made of, so anything else cannot name one.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A description of at most [`MAX_DESCRIPTION_CHARS`] characters; the problem otherwise.
pub fn check_description(description: &str) -> Result<(), String> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "must be at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    Ok(())
}

/// Why a list of event filters was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// Not 1 to [`MAX_EVENTS`] entries.
    Count,
    /// The entry at this index is not a string, or not an event type, `prefix.*` or `*`.
    NotAFilter(usize),
    /// The entry at this index is an exact type that `is_known` does not know.
    Unknown(usize),
}

/// A subscription's event filters from `entries` (None: an entry that is not a string): 1 to
/// [`MAX_EVENTS`] valid filters, each known to `is_known`; duplicates are dropped, order kept.
pub fn check_filters<'v>(
    entries: impl ExactSizeIterator<Item = Option<&'v str>>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Vec<String>, FilterError> {
    if entries.len() == 0 || entries.len() > MAX_EVENTS {
        return Err(FilterError::Count);
    }
    let mut filters: Vec<String> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.enumerate() {
        let filter = entry
            .filter(|f| rules::is_valid_event_filter(f))
            .ok_or(FilterError::NotAFilter(i))?;
        if !is_known(filter) {
            return Err(FilterError::Unknown(i));
        }
        if !filters.iter().any(|f| f == filter) {
            filters.push(filter.to_string());
        }
    }
    Ok(filters)
}

/// Headers a subscription may not set, by exact lowercase name: the plugin's own, what Envoy or
/// HTTP itself decides (hop-by-hop, framing), and what the contract fixes.
const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("host", "the receiver's host comes from its url"),
    ("user-agent", "every delivery says proxy-webhooks/<version>"),
    (
        "traceparent",
        "trace context is forwarded from the API request",
    ),
    (
        "tracestate",
        "trace context is forwarded from the API request",
    ),
    ("connection", "hop-by-hop headers belong to the connection"),
    ("keep-alive", "hop-by-hop headers belong to the connection"),
    ("te", "hop-by-hop headers belong to the connection"),
    ("trailer", "hop-by-hop headers belong to the connection"),
    ("trailers", "hop-by-hop headers belong to the connection"),
    (
        "transfer-encoding",
        "hop-by-hop headers belong to the connection",
    ),
    ("upgrade", "hop-by-hop headers belong to the connection"),
];

/// Reserved name prefixes, with why.
const RESERVED_HEADER_PREFIXES: &[(&str, &str)] = &[
    ("webhook-", "webhook-* headers are the signature's"),
    ("x-envoy-", "x-envoy-* headers steer Envoy's router"),
    ("content-", "content-* headers describe the JSON body"),
    ("proxy-", "hop-by-hop headers belong to the connection"),
];

/// Why a header name may not be set by a subscription, if it may not.
fn reserved_because(name: &str) -> Option<&'static str> {
    if name.starts_with(':') {
        return Some("pseudo-headers are Envoy's");
    }
    RESERVED_HEADERS
        .iter()
        .find(|(reserved, _)| *reserved == name)
        .or_else(|| {
            RESERVED_HEADER_PREFIXES
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
        })
        .map(|(_, why)| *why)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible ASCII, space and tab, not starting or ending with whitespace (no CR, LF or NUL can
/// reach the wire).
fn is_header_value(value: &str) -> bool {
    let visible = |b: u8| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b);
    value.bytes().all(visible) && value.trim_matches([' ', '\t']).len() == value.len()
}

/// The headers of a subscription from `(name, value)` entries (value None: not a string), sorted
/// by name; the problem otherwise, naming the header. Names must be lowercase, as HTTP/2 sends
/// them: one spelling per header, so no two entries can name the same one.
pub fn check_headers<'v>(
    entries: impl ExactSizeIterator<Item = (&'v str, Option<&'v str>)>,
) -> Result<Vec<ReceiverHeader>, String> {
    if entries.len() > MAX_HEADERS {
        return Err(format!("headers may name at most {MAX_HEADERS} headers"));
    }
    let mut headers: Vec<ReceiverHeader> = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let shown: String = name.chars().take(MAX_HEADER_NAME_BYTES).collect();
        if let Some(why) = reserved_because(&name.to_ascii_lowercase()) {
            return Err(format!("headers: {shown:?} is reserved ({why})"));
        }
        if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES || !name.bytes().all(is_token_byte)
        {
            return Err(format!(
                "headers: {shown:?} is not a header name (1 to {MAX_HEADER_NAME_BYTES} letters, digits or !#$%&'*+-.^_`|~)"
            ));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            let lower = name.to_ascii_lowercase();
            return Err(format!(
                "headers: {shown:?} must be lowercase ({lower:?}), as HTTP/2 sends header names"
            ));
        }
        let value = value
            .filter(|v| v.len() <= MAX_HEADER_VALUE_BYTES && is_header_value(v))
            .ok_or_else(|| format!("headers: the value of {shown:?} must be a string of at most {MAX_HEADER_VALUE_BYTES} visible ASCII characters, spaces or tabs, not starting or ending with a space or tab"))?;
        headers.push(ReceiverHeader {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(headers)
}

// ---------------------------------------------------------------------------------------------
// Matching. The index lists a subscription under each of its filters, and fan-out reads the
// index under [`lookup_filters`] of the event type: a subscription is found for an event
// exactly when one of its filters [`filter_matches`] it (tested below).

/// `*` matches all; `order.*` matches `order.created` and `order.x.y` but neither `order` nor
/// `orders.created`; anything else matches exactly.
pub fn filter_matches(filter: &str, event_type: &str) -> bool {
    if filter == "*" {
        return true;
    }
    match filter.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| !rest.is_empty()),
        None => filter == event_type,
    }
}

/// The index keys an event of `event_type` is looked up under: itself, each `prefix.*`, and `*`.
pub fn lookup_filters(event_type: &str) -> Vec<String> {
    let mut filters = vec![event_type.to_string()];
    let mut end = event_type.len();
    while let Some(dot) = event_type.get(..end).and_then(|s| s.rfind('.')) {
        if let Some(prefix) = event_type.get(..dot) {
            filters.push(format!("{prefix}.*"));
        }
        end = dot;
    }
    filters.push("*".to_string());
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_prefixes_on_dot_boundaries() {
        assert!(filter_matches("*", "anything.at.all"));
        assert!(filter_matches("order.*", "order.created"));
        assert!(filter_matches("order.*", "order.x.y"));
        assert!(!filter_matches("order.*", "order"));
        assert!(!filter_matches("order.*", "orders.created"));
        assert!(!filter_matches("order.*", "order."));
        assert!(filter_matches("order.created", "order.created"));
        assert!(!filter_matches("order.created", "order.created.x"));
        assert!(!filter_matches("order", "order.created"));
    }

    #[test]
    fn lookup_filters_cover_every_prefix() {
        assert_eq!(lookup_filters("a.b.c"), ["a.b.c", "a.b.*", "a.*", "*"]);
        assert_eq!(lookup_filters("a"), ["a", "*"]);
    }

    /// The index finds a subscription under a filter exactly when the filter matches: every
    /// valid filter against every event type made of the same parts.
    #[test]
    fn the_index_lookup_agrees_with_filter_matching() {
        let parts = ["a", "b", "ab", "c_1"];
        let mut types: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        for _ in 0..2 {
            let longer: Vec<String> = types
                .iter()
                .flat_map(|t| parts.iter().map(move |p| format!("{t}.{p}")))
                .collect();
            types.extend(longer);
        }
        let mut filters: Vec<String> = vec!["*".into()];
        filters.extend(types.iter().cloned());
        filters.extend(types.iter().map(|t| format!("{t}.*")));
        for event_type in &types {
            let looked_up = lookup_filters(event_type);
            for filter in &filters {
                assert!(rules::is_valid_event_filter(filter), "{filter}");
                assert_eq!(
                    looked_up.contains(filter),
                    filter_matches(filter, event_type),
                    "{filter:?} for {event_type:?}"
                );
            }
        }
    }

    fn check(entries: &[Option<&str>]) -> Result<Vec<String>, FilterError> {
        check_filters(entries.iter().copied(), |t| t != "nope" && t != "nope.*")
    }

    #[test]
    fn filters_are_checked_deduplicated_and_capped() {
        assert_eq!(
            check(&[Some("a.*"), Some("b"), Some("a.*"), Some("*")]),
            Ok(vec!["a.*".into(), "b".into(), "*".into()])
        );
        assert_eq!(check(&[]), Err(FilterError::Count));
        assert_eq!(check(&[Some("*"); MAX_EVENTS + 1]), Err(FilterError::Count));
        assert_eq!(check(&[Some("*"); MAX_EVENTS]).map(|f| f.len()), Ok(1));
        assert_eq!(check(&[Some("a"), None]), Err(FilterError::NotAFilter(1)));
        assert_eq!(check(&[Some("*.a")]), Err(FilterError::NotAFilter(0)));
        assert_eq!(
            check(&[Some("a"), Some("nope")]),
            Err(FilterError::Unknown(1))
        );
        assert_eq!(check(&[Some("nope.*")]), Err(FilterError::Unknown(0)));
    }

    #[test]
    fn the_test_event_type_is_reserved_and_valid() {
        assert!(TEST_EVENT_TYPE.starts_with(RESERVED_TYPE_PREFIX));
        assert!(rules::is_valid_event_type(TEST_EVENT_TYPE));
    }

    #[test]
    fn ids_and_descriptions() {
        assert!(is_valid_id("sub_A-1") && is_valid_id(&"x".repeat(ID_MAX_LEN)));
        assert!(!is_valid_id("") && !is_valid_id(&"x".repeat(ID_MAX_LEN + 1)));
        assert!(!is_valid_id("a b") && !is_valid_id("é"));
        assert!(check_description(&"é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        assert_eq!(
            check_description(&"x".repeat(MAX_DESCRIPTION_CHARS + 1)),
            Err("must be at most 256 characters".into())
        );
    }

    fn headers(entries: &[(&str, Option<&str>)]) -> Result<Vec<ReceiverHeader>, String> {
        check_headers(entries.iter().copied())
    }

    #[test]
    fn receiver_headers_are_checked_and_sorted() {
        let ok = headers(&[
            ("x-tenant", Some("t 1")),
            ("authorization", Some("Bearer a.b")),
        ]);
        let names: Vec<String> = ok.unwrap().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["authorization", "x-tenant"]);
        assert_eq!(headers(&[]), Ok(vec![]));
        let eleven: Vec<(String, &str)> = (0..11).map(|i| (format!("x-{i}"), "v")).collect();
        let eleven = check_headers(eleven.iter().map(|(n, v)| (n.as_str(), Some(*v))));
        assert_eq!(eleven.unwrap_err(), "headers may name at most 10 headers");
        for reserved in [
            "Webhook-Signature",
            "X-Envoy-Upstream-Rq-Timeout-Ms",
            "host",
            "Content-Length",
            "content-type",
            "connection",
            "keep-alive",
            "proxy-authorization",
            "te",
            "trailer",
            "trailers",
            "transfer-encoding",
            "upgrade",
            ":authority",
            "user-agent",
            "traceparent",
        ] {
            let problem = headers(&[(reserved, Some("v"))]).unwrap_err();
            let want = format!("headers: {reserved:?} is reserved (");
            assert!(problem.starts_with(&want), "{problem}");
        }
        for bad_name in ["", "a b", "é", "a:b", &"x".repeat(65)] {
            let problem = headers(&[(bad_name, Some("v"))]).unwrap_err();
            assert!(
                problem.contains("is not a header name"),
                "{bad_name}: {problem}"
            );
        }
        assert_eq!(
            headers(&[("X-Tenant", Some("v"))]).unwrap_err(),
            "headers: \"X-Tenant\" must be lowercase (\"x-tenant\"), as HTTP/2 sends header names"
        );
        let long = "v".repeat(MAX_HEADER_VALUE_BYTES + 1);
        for bad_value in [
            None,
            Some("a\r\nb"),
            Some(" a"),
            Some("a\t"),
            Some("\0"),
            Some("é"),
            Some(long.as_str()),
        ] {
            let problem = headers(&[("x-a", bad_value)]).unwrap_err();
            let want = "headers: the value of \"x-a\" must be a string of at most 2048";
            assert!(problem.starts_with(want), "{problem}");
        }
        assert!(headers(&[("x-a", Some(""))]).is_ok());
        assert!(headers(&[("x-a", Some("a\tb c"))]).is_ok());
        assert!(headers(&[("x-a", Some(&long[1..]))]).is_ok());
    }

    fn with_secrets(secrets: &[(&str, Option<u64>)]) -> Subscription {
        let mut sub = Subscription::from_static(
            &StaticSubscription {
                id: "s".into(),
                consumer: "c".into(),
                url: "https://h/".into(),
                events: vec!["*".into()],
                secret: None,
                signing_key: None,
                description: String::new(),
                privileged: false,
                ordering: Ordering::None,
            },
            0,
        );
        sub.secrets = secrets
            .iter()
            .map(|(s, e)| SigningSecret {
                secret: s.to_string(),
                expires_at_ms: *e,
            })
            .collect();
        sub
    }

    #[test]
    fn the_scheme_is_read_from_the_current_secrets() {
        let v1 = with_secrets(&[("whsec_a", None), ("whsk_old", Some(5))]);
        assert_eq!(v1.signature_scheme(), Scheme::V1);
        assert_eq!(v1.current_secret(), Some("whsec_a"));
        assert_eq!(v1.current_signing_key(), None);
        let v1a = with_secrets(&[("whsk_b", None), ("whsec_old", Some(5))]);
        assert_eq!(v1a.signature_scheme(), Scheme::V1a);
        assert_eq!(
            (v1a.current_secret(), v1a.current_signing_key()),
            (None, Some("whsk_b"))
        );
        let both = with_secrets(&[("whsec_a", None), ("whsk_b", None)]);
        assert_eq!(both.signature_scheme(), Scheme::Both);
        for scheme in [Scheme::V1, Scheme::V1a, Scheme::Both] {
            assert_eq!(Scheme::parse(scheme.as_str()), Some(scheme));
        }
        assert_eq!(Scheme::parse("v1a,v1"), None);
        assert!(Scheme::Both.hmac() && Scheme::Both.ed25519());
        assert!(!Scheme::V1a.hmac() && !Scheme::V1.ed25519());
    }

    #[test]
    fn expired_secrets_stop_signing() {
        let old = SigningSecret {
            secret: "old".into(),
            expires_at_ms: Some(100),
        };
        assert!(old.signs_at(99));
        assert!(!old.signs_at(100));
        let current = SigningSecret {
            secret: "new".into(),
            expires_at_ms: None,
        };
        assert!(current.signs_at(u64::MAX));
    }
}
