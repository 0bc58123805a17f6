//! Request bodies and query strings: parsed and validated before anything is written.

use super::responses::{error, invalid_field};
use super::{Request, Response, MAX_PAGE};
use crate::config::Config;
use crate::model::event;
use crate::model::subscription;
use crate::model::subscription::{
    FilterError, Ordering, ReceiverHeader, Scheme, Status, MAX_EVENTS,
};
use crate::support::url::check_destination;
use serde_json::{Map, Value};

/// Field names echoed in error messages are cut to this many characters.
pub(super) const ECHO_MAX_CHARS: usize = 64;

/// The body as a JSON object with only `allowed` fields. A `null` field counts as absent, as in
/// the plugin configuration, so typed clients may send their empty optionals.
pub(super) fn parse_object(
    request: &Request<'_>,
    allowed: &[&str],
) -> Result<Map<String, Value>, Response> {
    if !request.content_type.is_some_and(event::is_json_media_type) {
        return Err(error(
            415,
            "unsupported_media_type",
            "content-type must be application/json (or another +json type)",
        ));
    }
    let value: Value = serde_json::from_slice(request.body)
        .map_err(|_| error(400, "invalid_json", "request body is not valid JSON"))?;
    let Value::Object(map) = value else {
        return Err(error(
            400,
            "invalid_request",
            "request body must be a JSON object",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = unknown.chars().take(ECHO_MAX_CHARS).collect();
        // `allowed.join(", ")` written out: `[&str]::join` would be a second 1 KB copy of join.
        let mut message = format!("unknown field {shown:?}; allowed: ");
        for (i, name) in allowed.iter().enumerate() {
            if i > 0 {
                message.push_str(", ");
            }
            message.push_str(name);
        }
        return Err(error(422, "unknown_field", message));
    }
    // Rebuilt rather than `retain`ed: that would be the only removal from a JSON map in the
    // plugin, and brings BTreeMap's whole rebalancing code (about 4.5 KB of wasm).
    let mut kept = Map::new();
    for (key, value) in map {
        if !value.is_null() {
            kept.insert(key, value);
        }
    }
    Ok(kept)
}

pub(super) fn string_field<'m>(
    map: &'m Map<String, Value>,
    field: &str,
) -> Result<Option<&'m str>, Response> {
    map.get(field)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid_field(format!("{field} must be a string")))
        })
        .transpose()
}

pub(super) fn parse_url(config: &Config, url: &str) -> Result<String, Response> {
    check_destination(url, config.delivery.url_policy())
        .map_err(|e| error(422, e.code, e.message))?;
    Ok(url.to_string())
}

/// The event filters of a subscription ([`subscription::check_filters`]): each must name a type
/// this API can send ([`Config::knows_filter`]: exact, or a wildcard over at least one).
pub(super) fn parse_events(config: &Config, value: &Value) -> Result<Vec<String>, Response> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid_field("events must be an array of event filters"))?;
    let known = |filter: &str| config.knows_filter(filter);
    subscription::check_filters(list.iter().map(Value::as_str), known).map_err(|e| match e {
        FilterError::Count => error(
            422,
            "invalid_events",
            format!("events must list 1 to {MAX_EVENTS} event filters"),
        ),
        FilterError::NotAFilter(i) => error(
            422,
            "invalid_events",
            format!("events[{i}] must be an event type, a prefix.* wildcard or *"),
        ),
        FilterError::Unknown(i) => {
            let filter = list.get(i).and_then(Value::as_str).unwrap_or_default();
            error(
                422,
                "unknown_event_type",
                format!("events[{i}]: {filter:?} is not an event type of this API, nor a wildcard over one (see GET event-types)"),
            )
        }
    })
}

pub(super) fn parse_description(map: &Map<String, Value>) -> Result<Option<String>, Response> {
    let Some(description) = string_field(map, "description")? else {
        return Ok(None);
    };
    subscription::check_description(description)
        .map_err(|problem| invalid_field(format!("description {problem}")))?;
    Ok(Some(description.to_string()))
}

pub(super) fn parse_status(map: &Map<String, Value>) -> Result<Option<Status>, Response> {
    match string_field(map, "status")? {
        None => Ok(None),
        Some("active") => Ok(Some(Status::Active)),
        Some("disabled") => Ok(Some(Status::Disabled)),
        Some(_) => Err(error(
            422,
            "invalid_status",
            "status must be \"active\" or \"disabled\"",
        )),
    }
}

pub(super) fn parse_scheme(map: &Map<String, Value>) -> Result<Option<Scheme>, Response> {
    let Some(scheme) = string_field(map, "signature_scheme")? else {
        return Ok(None);
    };
    let scheme = Scheme::parse(scheme).ok_or_else(|| {
        error(
            422,
            "invalid_signature_scheme",
            format!("signature_scheme {}", Scheme::RULE),
        )
    })?;
    Ok(Some(scheme))
}

/// `headers`: an object of header names to values ([`subscription::check_headers`]).
pub(super) fn parse_headers(
    map: &Map<String, Value>,
) -> Result<Option<Vec<ReceiverHeader>>, Response> {
    let Some(value) = map.get("headers") else {
        return Ok(None);
    };
    let object = value.as_object().ok_or_else(|| {
        invalid_field("headers must be an object of header names to string values")
    })?;
    let entries = object.iter().map(|(name, v)| (name.as_str(), v.as_str()));
    let headers = subscription::check_headers(entries)
        .map_err(|problem| error(422, "invalid_headers", problem))?;
    Ok(Some(headers))
}

/// The validated fields of a create or patch body; None means "not given".
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) url: Option<String>,
    pub(super) events: Option<Vec<String>>,
    pub(super) description: Option<String>,
    pub(super) status: Option<Status>,
    pub(super) signature_scheme: Option<Scheme>,
    pub(super) headers: Option<Vec<ReceiverHeader>>,
    pub(super) ordering: Option<Ordering>,
}

impl Fields {
    pub(super) fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.events.is_none()
            && self.description.is_none()
            && self.status.is_none()
            && self.headers.is_none()
    }
}

pub(super) fn parse_fields(
    config: &Config,
    request: &Request<'_>,
    allowed: &[&str],
) -> Result<Fields, Response> {
    let map = parse_object(request, allowed)?;
    let url = match string_field(&map, "url")? {
        Some(url) => Some(parse_url(config, url)?),
        None => None,
    };
    let events = map
        .get("events")
        .map(|v| parse_events(config, v))
        .transpose()?;
    Ok(Fields {
        url,
        events,
        description: parse_description(&map)?,
        status: parse_status(&map)?,
        signature_scheme: parse_scheme(&map)?,
        headers: parse_headers(&map)?,
        ordering: parse_ordering(&map)?,
    })
}

/// `"none"` or `"fifo"`.
pub(super) fn parse_ordering(map: &Map<String, Value>) -> Result<Option<Ordering>, Response> {
    map.get("ordering")
        .map(|v| {
            Ordering::from_value(v)
                .ok_or_else(|| invalid_field("ordering must be \"none\" or \"fifo\""))
        })
        .transpose()
}

pub(super) fn missing(field: &str) -> Response {
    error(422, "missing_field", format!("{field} is required"))
}

/// `?limit=<1..1000>&after=<id>`: a page of the caller's subscriptions, oldest first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Page<'q> {
    pub(super) limit: usize,
    pub(super) after: Option<&'q str>,
}

pub(super) fn parse_page(query: &str) -> Result<Page<'_>, Response> {
    let mut page = Page {
        limit: MAX_PAGE,
        after: None,
    };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("limit", n)) => {
                page.limit = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        invalid_field(format!("limit must be an integer from 1 to {MAX_PAGE}"))
                    })?;
            }
            Some(("after", id)) if subscription::is_valid_id(id) => page.after = Some(id),
            Some(("after", _)) => {
                return Err(invalid_field(
                    "after must be a subscription id ([A-Za-z0-9_-], 1 to 64 characters)",
                ))
            }
            _ => {}
        }
    }
    Ok(page)
}
