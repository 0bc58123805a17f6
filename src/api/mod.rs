//! The subscription API served by the filter under `api.path_prefix`.
//!
//! Pure logic: the filter hands over the request (headers it needs and the whole body) and sends
//! back the [`Response`]; nothing here calls the host, so every answer is unit-tested natively.
//!
//! Order of checks, so that an unauthenticated caller learns nothing beyond the path layout:
//! unknown path or malformed id (404) → authentication (401) → method (405) → body size (413) →
//! media type (415) → JSON shape (400) → field validation (422) → ownership (404) → state (409).
//! Every check runs before any write, so a refused request changes nothing.

use crate::attempts;
use crate::config::Config;
use crate::event;
use crate::identity::{self, Credentials};
use crate::ids::{random_id, RandomSource, RandomUnavailable};
use crate::queue::QueueMessage;
use crate::ratelimit;
use crate::registry::{Registry, RegistryError};
use crate::rules;
use crate::signing::Secret;
use crate::store::KvStore;
use crate::subscription::{
    self, FilterError, SigningSecret, Status, Subscription, MAX_EVENTS, TEST_EVENT_TYPE,
};
use crate::time::format_rfc3339_millis;
use crate::url::check_destination;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// An API request as the filter saw it. `path` is the full `:path`, query string included.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:method`, compared case-sensitively as HTTP requires.
    pub method: &'a str,
    pub path: &'a str,
    /// The raw `authorization` header value.
    pub authorization: Option<&'a [u8]>,
    /// The raw `x-api-key` header value.
    pub api_key: Option<&'a [u8]>,
    /// The raw value of the `api.consumer_header` header (None when not configured).
    pub consumer_header: Option<&'a [u8]>,
    /// The raw `content-type` header value.
    pub content_type: Option<&'a [u8]>,
    /// The whole request body (empty when there is none).
    pub body: &'a [u8],
}

/// The answer to send; `headers` never include `:status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What a call may use besides the request.
pub struct Context<'a, S: KvStore> {
    pub config: &'a Config,
    pub registry: &'a Registry<S>,
    /// The store the registry is kept in, for what lives beside it (attempt logs, rate limits).
    pub store: &'a S,
    pub rng: &'a mut dyn RandomSource,
    pub now_ms: u64,
    /// Hands a message to the dispatcher; false when the queue is unavailable.
    pub enqueue: &'a mut dyn FnMut(QueueMessage) -> bool,
}

/// Largest `?limit` on the subscription list.
pub const MAX_PAGE: usize = 1000;
/// Signing secrets kept per subscription (the current one and rotated ones still valid), so that
/// rotating in a loop cannot grow the record and the signature header without bound.
pub const MAX_SECRETS: usize = 5;
/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 60 * 60 * 1000;

const SUBSCRIPTION_ID_LEN: usize = 24;
const CREATE_FIELDS: &[&str] = &["url", "events", "description"];
const PATCH_FIELDS: &[&str] = &["url", "events", "description", "status"];
/// Field names echoed in error messages are cut to this many characters.
const ECHO_MAX_CHARS: usize = 64;

type Outcome = Result<Response, Response>;

/// Whether `path` (query stripped) is `prefix` or under `prefix/`: these requests are answered
/// by the filter and never reach the upstream.
pub fn is_api_path(prefix: &str, path: &str) -> bool {
    let path = rules::strip_query(path);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Answers one API call. Never panics; every outcome is a JSON answer (204 has no body).
pub fn handle<S: KvStore>(request: &Request<'_>, cx: &mut Context<'_, S>) -> Response {
    match dispatch(request, cx) {
        Ok(response) | Err(response) => response,
    }
}

/// A 413 response, for the filter to send when the request body exceeds `api.max_body_bytes`
/// before it is fully read.
pub fn too_large(limit: usize) -> Response {
    error(
        413,
        "payload_too_large",
        format!("request body must be at most {limit} bytes"),
    )
}

// ---------------------------------------------------------------------------------------------
// Routing

/// A known path; ids are already checked against `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'p> {
    Subscriptions,
    Subscription(&'p str),
    RotateSecret(&'p str),
    Test(&'p str),
    Deliveries(&'p str),
    Retry(&'p str),
    EventTypes,
}

impl Route<'_> {
    /// The methods the path answers, as sent in `Allow`.
    fn allow(self) -> &'static str {
        match self {
            Route::Subscriptions => "GET, POST",
            Route::Subscription(_) => "GET, PATCH, DELETE",
            Route::RotateSecret(_) | Route::Test(_) | Route::Retry(_) => "POST",
            Route::Deliveries(_) | Route::EventTypes => "GET",
        }
    }

    fn allows(self, method: &str) -> bool {
        self.allow().split(", ").any(|m| m == method)
    }
}

fn query_of(path: &str) -> &str {
    let no_fragment = path.split('#').next().unwrap_or(path);
    no_fragment.split_once('?').map_or("", |(_, q)| q)
}

/// The route for a path under `prefix`, or None (404). One trailing `/` is tolerated.
fn route<'p>(prefix: &str, path: &'p str) -> Option<Route<'p>> {
    let rest = rules::strip_query(path)
        .strip_prefix(prefix)?
        .strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let parts: [Option<&str>; 4] = [parts.next(), parts.next(), parts.next(), parts.next()];
    let found = match parts {
        [Some("subscriptions"), None, ..] => Route::Subscriptions,
        [Some("subscriptions"), Some(id), None, _] => Route::Subscription(id),
        [Some("subscriptions"), Some(id), Some("rotate-secret"), None] => Route::RotateSecret(id),
        [Some("subscriptions"), Some(id), Some("test"), None] => Route::Test(id),
        [Some("subscriptions"), Some(id), Some("deliveries"), None] => Route::Deliveries(id),
        [Some("deliveries"), Some(id), Some("retry"), None] => Route::Retry(id),
        [Some("event-types"), None, ..] => Route::EventTypes,
        _ => return None,
    };
    route_id(found)
        .is_none_or(subscription::is_valid_id)
        .then_some(found)
}

fn route_id(route: Route<'_>) -> Option<&str> {
    match route {
        Route::Subscription(id)
        | Route::RotateSecret(id)
        | Route::Test(id)
        | Route::Deliveries(id)
        | Route::Retry(id) => Some(id),
        Route::Subscriptions | Route::EventTypes => None,
    }
}

/// The answer a call gets before its body is read, if any: 404 for an unknown path, 401
/// without a valid key, 405 for a method the path does not answer. The filter asks at request
/// headers, so an unauthenticated client never gets a body buffered. `None`: read the body and
/// [`handle`] the call (`request.body` is not looked at here).
pub fn answer_before_body(request: &Request<'_>, config: &Config) -> Option<Response> {
    check_headers(request, config).err()
}

/// The route and the caller of a call, from its headers alone.
fn check_headers<'a>(
    request: &Request<'a>,
    config: &'a Config,
) -> Result<(Route<'a>, Caller<'a>), Response> {
    let route = route(&config.api.path_prefix, request.path)
        .ok_or_else(|| error(404, "not_found", "no such path"))?;
    let consumer = authenticate(request, config).ok_or_else(|| unauthorized(config))?;
    if !route.allows(request.method) {
        return Err(method_not_allowed(route.allow()));
    }
    Ok((route, Caller { consumer }))
}

fn dispatch<S: KvStore>(request: &Request<'_>, cx: &mut Context<'_, S>) -> Outcome {
    let config = cx.config;
    let (route, caller) = check_headers(request, config)?;
    if request.body.len() > config.api.max_body_bytes {
        return Err(too_large(config.api.max_body_bytes));
    }
    // The method is one the route allows, so a catch-all arm is that route's remaining method.
    match (route, request.method) {
        (Route::Subscriptions, "GET") => list(cx, caller, query_of(request.path)),
        (Route::Subscriptions, _) => create(cx, caller, request),
        (Route::Subscription(id), "GET") => get(cx, caller, id),
        (Route::Subscription(id), "PATCH") => patch(cx, caller, id, request),
        (Route::Subscription(id), _) => delete(cx, caller, id),
        (Route::RotateSecret(id), _) => rotate_secret(cx, caller, id),
        (Route::Test(id), _) => send_test(cx, caller, id),
        (Route::Deliveries(id), _) => deliveries(cx, caller, id),
        (Route::Retry(webhook_id), _) => retry(cx, caller, webhook_id),
        (Route::EventTypes, _) => event_types(config),
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// The authenticated consumer.
#[derive(Debug, Clone, Copy)]
struct Caller<'c> {
    consumer: &'c str,
}

impl Caller<'_> {
    fn owns(self, sub: &Subscription) -> bool {
        sub.consumer == self.consumer
    }
}

/// The consumer the request's credentials name (see [`identity::identify`]).
fn authenticate<'a>(request: &Request<'a>, config: &'a Config) -> Option<&'a str> {
    let credentials = Credentials {
        authorization: request.authorization,
        api_key: request.api_key,
        consumer_header: request.consumer_header,
    };
    identity::identify(&config.api, &credentials)
}

// ---------------------------------------------------------------------------------------------
// Responses

fn base_headers() -> Vec<(&'static str, String)> {
    vec![("cache-control", "no-store".to_string())]
}

fn json_response<T: Serialize + ?Sized>(status: u16, body: &T) -> Response {
    let mut headers = base_headers();
    headers.push(("content-type", "application/json".to_string()));
    Response {
        status,
        headers,
        // Serialising our own view types cannot fail; an empty object is the harmless fallback.
        body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    let message: String = message.into();
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// 503 when the host has no randomness: a secret or id from anything weaker would be guessable.
fn no_randomness(_: RandomUnavailable) -> Response {
    let mut response = error(
        503,
        "random_unavailable",
        "no secure randomness is available to create a secret; nothing was changed, try again later",
    );
    response.headers.push(("retry-after", "1".to_string()));
    response
}

fn unauthorized(config: &Config) -> Response {
    let message = match &config.api.consumer_header {
        Some(header) => format!("authentication is required (no valid {header} header was set)"),
        None => {
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)".into()
        }
    };
    let mut response = error(401, "unauthorized", message);
    response
        .headers
        .push(("www-authenticate", "Bearer realm=\"webhooks\"".to_string()));
    response
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = error(
        405,
        "method_not_allowed",
        format!("this path answers only {allow}"),
    );
    response.headers.push(("allow", allow.to_string()));
    response
}

/// One answer for an unknown id and for another consumer's id, so ids cannot be probed.
fn subscription_not_found() -> Response {
    error(404, "not_found", "subscription not found")
}

/// A field of the wrong JSON type or out of range; the message names the field.
fn invalid_field(message: impl Into<String>) -> Response {
    error(422, "invalid_field", message)
}

fn static_subscription() -> Response {
    error(
        409,
        "static_subscription",
        "this subscription is defined in the plugin configuration; change the configuration to change it",
    )
}

fn registry_error(e: RegistryError, config: &Config) -> Response {
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

/// The public shape of a subscription; `secret` only in the create and rotate answers.
#[derive(Serialize)]
struct SubscriptionView<'s> {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'s str>,
}

fn view<'s>(sub: &'s Subscription, secret: Option<&'s str>) -> SubscriptionView<'s> {
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
        secret,
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// `application/json`, parameters (charset) allowed, case-insensitive.
fn is_json_media_type(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
}

/// The body as a JSON object with only `allowed` fields. A `null` field counts as absent, as in
/// the plugin configuration, so typed clients may send their empty optionals.
fn parse_object(request: &Request<'_>, allowed: &[&str]) -> Result<Map<String, Value>, Response> {
    if !is_json_media_type(request.content_type) {
        return Err(error(
            415,
            "unsupported_media_type",
            "content-type must be application/json",
        ));
    }
    let value: Value = serde_json::from_slice(request.body)
        .map_err(|_| error(400, "invalid_json", "request body is not valid JSON"))?;
    let Value::Object(mut map) = value else {
        return Err(error(
            400,
            "invalid_request",
            "request body must be a JSON object",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = unknown.chars().take(ECHO_MAX_CHARS).collect();
        return Err(error(
            422,
            "unknown_field",
            format!("unknown field {shown:?}; allowed: {}", allowed.join(", ")),
        ));
    }
    map.retain(|_, v| !v.is_null());
    Ok(map)
}

fn string_field<'m>(map: &'m Map<String, Value>, field: &str) -> Result<Option<&'m str>, Response> {
    map.get(field)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid_field(format!("{field} must be a string")))
        })
        .transpose()
}

fn parse_url(config: &Config, url: &str) -> Result<String, Response> {
    check_destination(url, config.delivery.url_policy())
        .map_err(|e| error(422, e.code, e.message))?;
    Ok(url.to_string())
}

/// The event filters of a subscription ([`subscription::check_filters`]): exact types must be
/// ones this API knows.
fn parse_events(config: &Config, value: &Value) -> Result<Vec<String>, Response> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid_field("events must be an array of event filters"))?;
    let known = |event_type: &str| config.knows_event_type(event_type);
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
                format!("events[{i}]: {filter:?} is not an event type of this API (see GET event-types)"),
            )
        }
    })
}

fn parse_description(map: &Map<String, Value>) -> Result<Option<String>, Response> {
    let Some(description) = string_field(map, "description")? else {
        return Ok(None);
    };
    subscription::check_description(description)
        .map_err(|problem| invalid_field(format!("description {problem}")))?;
    Ok(Some(description.to_string()))
}

fn parse_status(map: &Map<String, Value>) -> Result<Option<Status>, Response> {
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

/// The validated fields of a create or patch body; None means "not given".
#[derive(Debug, Default)]
struct Fields {
    url: Option<String>,
    events: Option<Vec<String>>,
    description: Option<String>,
    status: Option<Status>,
}

impl Fields {
    fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.events.is_none()
            && self.description.is_none()
            && self.status.is_none()
    }
}

fn parse_fields(
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
    })
}

fn missing(field: &str) -> Response {
    error(422, "missing_field", format!("{field} is required"))
}

// ---------------------------------------------------------------------------------------------
// Calls

/// `?limit=<1..1000>&after=<id>`: a page of the caller's subscriptions, oldest first.
#[derive(Debug, Clone, Copy)]
struct Page<'q> {
    limit: usize,
    after: Option<&'q str>,
}

fn parse_page(query: &str) -> Result<Page<'_>, Response> {
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
            Some(("after", id)) => page.after = Some(id),
            _ => {}
        }
    }
    Ok(page)
}

/// Reads only the records of the page (and one more, for `has_more`): a consumer with thousands
/// of subscriptions pays for the page it asks for, not for all of them.
fn list<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, query: &str) -> Outcome {
    let page = parse_page(query)?;
    let ids = cx.registry.ids_for_consumer(caller.consumer);
    let start = match page.after {
        None => 0,
        Some(after) => ids
            .iter()
            .position(|id| id == after)
            .map(|i| i + 1)
            .ok_or_else(|| invalid_field("after must be the id of one of your subscriptions"))?,
    };
    // Ids whose record is gone (being created or deleted) are skipped, as everywhere.
    let mut subs = ids
        .get(start..)
        .unwrap_or_default()
        .iter()
        .filter_map(|id| cx.registry.get(id).map(|(sub, _)| sub))
        .filter(|sub| caller.owns(sub));
    let found: Vec<Subscription> = subs.by_ref().take(page.limit).collect();
    let has_more = subs.next().is_some();
    let data: Vec<SubscriptionView<'_>> = found.iter().map(|s| view(s, None)).collect();
    Ok(json_response(
        200,
        &json!({"data": data, "has_more": has_more}),
    ))
}

fn create<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    request: &Request<'_>,
) -> Outcome {
    let config = cx.config;
    let fields = parse_fields(config, request, CREATE_FIELDS)?;
    let url = fields.url.ok_or_else(|| missing("url"))?;
    let events = fields.events.ok_or_else(|| missing("events"))?;
    let secret = Secret::generate(cx.rng).map_err(no_randomness)?;
    let sub = Subscription {
        id: random_id(cx.rng, "sub_", SUBSCRIPTION_ID_LEN).map_err(no_randomness)?,
        consumer: caller.consumer.to_string(),
        url,
        events,
        description: fields.description.unwrap_or_default(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: cx.now_ms,
        updated_at_ms: cx.now_ms,
        secrets: vec![SigningSecret {
            secret: secret.clone(),
            expires_at_ms: None,
        }],
        is_static: false,
        privileged: false,
        version: 1,
    };
    let limit = Some(config.api.max_subscriptions_per_consumer);
    cx.registry
        .insert(&sub, limit)
        .map_err(|e| registry_error(e, config))?;
    let mut response = json_response(201, &view(&sub, Some(&secret)));
    let location = format!("{}/subscriptions/{}", config.api.path_prefix, sub.id);
    response.headers.push(("location", location));
    Ok(response)
}

/// The caller's subscription, or the same 404 as for an id that does not exist.
fn owned<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
) -> Result<Subscription, Response> {
    cx.registry
        .get(id)
        .map(|(sub, _)| sub)
        .filter(|sub| caller.owns(sub))
        .ok_or_else(subscription_not_found)
}

/// The caller's subscription that the API may change (not static).
fn changeable<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
) -> Result<Subscription, Response> {
    let sub = owned(cx, caller, id)?;
    if sub.is_static {
        return Err(static_subscription());
    }
    Ok(sub)
}

fn get<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    let sub = owned(cx, caller, id)?;
    Ok(json_response(200, &view(&sub, None)))
}

/// Runs `change` on the caller's subscription with compare-and-swap; ownership and (unless
/// `static_allowed`) the static flag are checked again on the record actually written.
fn update_owned<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
    static_allowed: bool,
    mut change: impl FnMut(&mut Subscription),
) -> Result<Subscription, Response> {
    let now_ms = cx.now_ms;
    let outcome = cx.registry.update(id, |sub| {
        if !caller.owns(sub) {
            return Err(subscription_not_found());
        }
        if sub.is_static && !static_allowed {
            return Err(static_subscription());
        }
        change(sub);
        sub.updated_at_ms = now_ms;
        Ok(())
    });
    outcome.map_err(|e| registry_error(e, cx.config))?
}

fn patch<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
    request: &Request<'_>,
) -> Outcome {
    let fields = parse_fields(cx.config, request, PATCH_FIELDS)?;
    // A static subscription's definition belongs to the configuration, but its status is
    // operational (a receiver's 410 or long failure disables it): its owner may switch it.
    let status_only =
        fields.url.is_none() && fields.events.is_none() && fields.description.is_none();
    let current = owned(cx, caller, id)?;
    if current.is_static && !status_only {
        return Err(static_subscription());
    }
    if fields.is_empty() {
        return Ok(json_response(200, &view(&current, None)));
    }
    let updated = update_owned(cx, caller, id, status_only, |sub| apply(sub, &fields))?;
    Ok(json_response(200, &view(&updated, None)))
}

/// Applies a patch. Enabling clears the reason; disabling an active subscription records
/// "manual", while one already disabled keeps the reason it has ("gone", "failing").
fn apply(sub: &mut Subscription, fields: &Fields) {
    if let Some(url) = &fields.url {
        sub.url.clone_from(url);
    }
    if let Some(events) = &fields.events {
        sub.events.clone_from(events);
    }
    if let Some(description) = &fields.description {
        sub.description.clone_from(description);
    }
    match fields.status {
        Some(Status::Active) => {
            sub.status = Status::Active;
            sub.disabled_reason = None;
        }
        Some(Status::Disabled) if sub.is_active() => {
            sub.status = Status::Disabled;
            sub.disabled_reason = Some("manual".to_string());
        }
        Some(Status::Disabled) | None => {}
    }
}

fn delete<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    changeable(cx, caller, id)?;
    cx.registry
        .delete(id)
        .map_err(|e| registry_error(e, cx.config))?;
    Ok(Response {
        status: 204,
        headers: base_headers(),
        body: Vec::new(),
    })
}

fn rotate_secret<S: KvStore>(cx: &mut Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    changeable(cx, caller, id)?;
    let secret = Secret::generate(cx.rng).map_err(no_randomness)?;
    let now_ms = cx.now_ms;
    let updated = update_owned(cx, caller, id, false, |sub| rotate(sub, &secret, now_ms))?;
    Ok(json_response(200, &view(&updated, Some(&secret))))
}

/// Puts `secret` first; the old current one signs beside it for [`ROTATION_OVERLAP_MS`], expired
/// ones are dropped, and only the newest [`MAX_SECRETS`] are kept.
fn rotate(sub: &mut Subscription, secret: &str, now_ms: u64) {
    let expires = now_ms.saturating_add(ROTATION_OVERLAP_MS);
    let mut secrets = vec![SigningSecret {
        secret: secret.to_string(),
        expires_at_ms: None,
    }];
    for old in sub.secrets.iter().filter(|s| s.signs_at(now_ms)) {
        secrets.push(SigningSecret {
            secret: old.secret.clone(),
            expires_at_ms: Some(old.expires_at_ms.unwrap_or(expires)),
        });
    }
    secrets.truncate(MAX_SECRETS);
    sub.secrets = secrets;
}

fn send_test<S: KvStore>(cx: &mut Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    let sub = owned(cx, caller, id)?;
    if !sub.is_active() {
        return Err(subscription_disabled());
    }
    let message = QueueMessage::Test {
        subscription_id: sub.id.clone(),
        payload: event::build_test_payload(cx.now_ms, &sub.id),
    };
    enqueue(cx, caller, message)
}

fn subscription_disabled() -> Response {
    error(
        409,
        "subscription_disabled",
        "the subscription is disabled; PATCH it with {\"status\": \"active\"} first",
    )
}

/// Queues a delivery the caller asked for, within the caller's rate limit.
fn enqueue<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    message: QueueMessage,
) -> Outcome {
    if let Err(wait_s) = ratelimit::take(cx.store, caller.consumer, cx.now_ms) {
        let mut response = error(
            429,
            "rate_limited",
            format!(
                "at most {} test and retry calls at once, then one per second; try again later",
                ratelimit::BURST
            ),
        );
        response.headers.push(("retry-after", wait_s.to_string()));
        return Err(response);
    }
    if !(cx.enqueue)(message) {
        let mut response = error(
            503,
            "queue_unavailable",
            "the delivery queue is unavailable; try again",
        );
        response.headers.push(("retry-after", "1".to_string()));
        return Err(response);
    }
    Ok(json_response(202, &json!({"status": "queued"})))
}

fn deliveries<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    let sub = owned(cx, caller, id)?;
    let log = attempts::read(cx.store, &sub.id);
    Ok(json_response(200, &json!({"data": log})))
}

/// Replays a message found in the attempt logs of the caller's own subscriptions. The search is
/// bounded: the caller's subscriptions (the per-consumer limit plus static ones) times the
/// entries kept per log.
fn retry<S: KvStore>(cx: &mut Context<'_, S>, caller: Caller<'_>, webhook_id: &str) -> Outcome {
    let bound = cx.config.api.max_subscriptions_per_consumer + cx.config.subscriptions.len();
    let store = cx.store;
    let found = cx
        .registry
        .ids_for_consumer(caller.consumer)
        .into_iter()
        .take(bound)
        .find_map(|id| {
            let newest = attempts::read(store, &id)
                .into_iter()
                .find(|a| a.webhook_id == webhook_id)?;
            Some((id, newest.state))
        });
    let (id, state) = found.ok_or_else(|| error(404, "not_found", "delivery not found"))?;
    if !state.replayable() {
        let message = if state == attempts::State::Expired {
            "the message is no longer kept for replay (delivery.max_replay)"
        } else {
            "only failed, exhausted or dropped messages can be retried"
        };
        return Err(error(409, "not_replayable", message));
    }
    if !owned(cx, caller, &id)?.is_active() {
        return Err(subscription_disabled());
    }
    let message = QueueMessage::Replay {
        webhook_id: webhook_id.to_string(),
    };
    enqueue(cx, caller, message)
}

#[derive(Serialize)]
struct EventTypeView<'c> {
    #[serde(rename = "type")]
    event_type: &'c str,
    methods: &'c [String],
    path: Option<&'c str>,
}

/// The configured rules in order, then `webhook.test` (no method or path: it is sent on request).
fn event_types(config: &Config) -> Outcome {
    let mut data: Vec<EventTypeView<'_>> = config
        .events
        .iter()
        .map(|rule| EventTypeView {
            event_type: &rule.event_type,
            methods: &rule.methods,
            path: Some(rule.path.as_str()),
        })
        .collect();
    data.push(EventTypeView {
        event_type: TEST_EVENT_TYPE,
        methods: &[],
        path: None,
    });
    Ok(json_response(
        200,
        &json!({"data": data, "infer_events": config.infer_events}),
    ))
}

#[cfg(test)]
pub(crate) mod tests;
