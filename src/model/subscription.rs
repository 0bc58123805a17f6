//! The subscription: its record, status and signing secrets, the static subscriptions of the
//! configuration, the one set of rules its fields obey (used by both the configuration and the
//! API), and how its event filters match event types (beside the index lookup that must agree).

use crate::model::rules;
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
            secrets: vec![SigningSecret {
                secret: s.secret.clone(),
                expires_at_ms: None,
            }],
            is_static: true,
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
    /// `whsec_` + base64 secret, validated to decode.
    pub secret: String,
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
