//! The answers: JSON bodies, error shapes and the public views of records.

use super::admin::Health;
use super::Response;
use crate::config::Config;
use crate::model::signing;
use crate::model::subscription::{Ordering, Scheme, Status, Subscription};
use crate::registry::RegistryError;
use crate::support::ids::RandomUnavailable;
use crate::support::time::format_rfc3339_millis;
use serde::ser::SerializeMap;
use serde::Serialize;

pub(super) fn base_headers() -> Vec<(&'static str, String)> {
    vec![("cache-control", "no-store".to_string())]
}

pub(super) fn json_response<T: Serialize + ?Sized>(status: u16, body: &T) -> Response {
    let mut headers = base_headers();
    headers.push(("content-type", "application/json".to_string()));
    Response {
        status,
        headers,
        // Serialising our own view types cannot fail; an empty object is the harmless fallback.
        body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

pub(super) fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Detail<'a>,
    }
    #[derive(Serialize)]
    struct Detail<'a> {
        code: &'a str,
        message: String,
    }
    let message = message.into();
    json_response(
        status,
        &Body {
            error: Detail { code, message },
        },
    )
}

/// 503 when the host has no randomness: a secret or id from anything weaker would be guessable.
pub(super) fn no_randomness(_: RandomUnavailable) -> Response {
    let mut response = error(
        503,
        "random_unavailable",
        "no secure randomness is available to create a secret; nothing was changed, try again later",
    );
    response.headers.push(("retry-after", "1".to_string()));
    response
}

/// 503 for a subscription whose signing secrets this replica cannot read (fleet mode: sealed
/// with a key it is not configured with). Nothing about the key goes to the caller.
pub(super) fn secret_unreadable() -> Response {
    let mut response = error(
        503,
        "unavailable",
        "this subscription cannot be used on this replica right now; try again later",
    );
    response.headers.push(("retry-after", "1".to_string()));
    response
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = error(
        405,
        "method_not_allowed",
        format!("this path answers only {allow}"),
    );
    response.headers.push(("allow", allow.to_string()));
    response
}

/// One answer for an unknown id and for another consumer's id, so ids cannot be probed.
pub(super) fn subscription_not_found() -> Response {
    error(404, "not_found", "subscription not found")
}

/// A field of the wrong JSON type or out of range; the message names the field.
pub(super) fn invalid_field(message: impl Into<String>) -> Response {
    error(422, "invalid_field", message)
}

pub(super) fn static_subscription() -> Response {
    error(
        409,
        "static_subscription",
        "this subscription is defined in the plugin configuration; change the configuration to change it",
    )
}

pub(super) fn registry_error(e: RegistryError, config: &Config) -> Response {
    match e {
        RegistryError::NotFound => subscription_not_found(),
        RegistryError::LimitReached(_) => error(
            409,
            "limit_reached",
            format!(
                "at most {} subscriptions per consumer",
                config.api.max_subscriptions_per_consumer
            ),
        ),
        RegistryError::RegistryFull(_) => error(
            409,
            "limit_reached",
            format!(
                "at most {} subscriptions in all (every consumer together); delete some first",
                config.api.max_subscriptions
            ),
        ),
        RegistryError::Unavailable(_) => {
            let mut response = error(
                503,
                "unavailable",
                "the subscription store is busy; try again",
            );
            response.headers.push(("retry-after", "1".to_string()));
            response
        }
    }
}

/// What an answer shows beyond the public fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    /// Every read: no secret, no header values.
    Public,
    /// The create answer: the `whsec_` secret and the receiver headers' values.
    Created,
    /// The rotate answer: the new `whsec_` secret.
    Rotated,
}

/// The receiver headers as an object of name to value (only in the create answer).
pub(super) struct HeaderValues<'s>(&'s [crate::model::subscription::ReceiverHeader]);

impl Serialize for HeaderValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for header in self.0 {
            map.serialize_entry(&header.name, &header.value)?;
        }
        map.end()
    }
}

/// The public shape of a subscription; `secret` only in the create and rotate answers, header
/// values only in the create answer; the ed25519 public key on every read, the private key never.
#[derive(Serialize)]
pub(super) struct SubscriptionView<'s> {
    id: &'s str,
    url: &'s str,
    events: &'s [String],
    description: &'s str,
    status: Status,
    disabled_reason: Option<&'s str>,
    created_at: String,
    updated_at: String,
    #[serde(rename = "static")]
    is_static: bool,
    signature_scheme: Scheme,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// The receiver headers' names (lowercase, sorted); their values are write-only.
    header_names: Vec<&'s str>,
    ordering: Ordering,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'s str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<HeaderValues<'s>>,
    /// The operator API's answers name the consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) consumer: Option<&'s str>,
    /// Reads carry the delivery health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) health: Option<Health>,
}

pub(super) fn view(sub: &Subscription, shown: Shown) -> SubscriptionView<'_> {
    let secret = match shown {
        Shown::Public => None,
        Shown::Created | Shown::Rotated => sub.current_secret(),
    };
    SubscriptionView {
        id: &sub.id,
        url: &sub.url,
        events: &sub.events,
        description: &sub.description,
        status: sub.status,
        disabled_reason: sub.disabled_reason.as_deref(),
        created_at: format_rfc3339_millis(sub.created_at_ms),
        updated_at: format_rfc3339_millis(sub.updated_at_ms),
        is_static: sub.is_static,
        signature_scheme: sub.signature_scheme(),
        public_key: sub.current_signing_key().and_then(signing::public_key),
        header_names: sub.headers.iter().map(|h| h.name.as_str()).collect(),
        ordering: sub.ordering,
        secret,
        headers: (shown == Shown::Created).then_some(HeaderValues(&sub.headers)),
        consumer: None,
        health: None,
    }
}
