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
use crate::config::{ApiKey, Config, MAX_DESCRIPTION_CHARS};
use crate::event;
use crate::ids::{random_id, RandomSource};
use crate::queue::QueueMessage;
use crate::registry::{KvStore, Registry, RegistryError, SigningSecret, Status, Subscription};
use crate::rules;
use crate::signing::Secret;
use crate::time::format_rfc3339_millis;
use crate::url::check_destination;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

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
    pub rng: &'a mut dyn RandomSource,
    pub now_ms: u64,
    /// Hands a message to the dispatcher; false when the queue is unavailable.
    pub enqueue: &'a mut dyn FnMut(QueueMessage) -> bool,
}

/// Event filters per subscription at most: each one is an index entry.
pub const MAX_EVENTS: usize = 50;
/// Largest `?limit` on the subscription list.
pub const MAX_PAGE: usize = 1000;
/// Signing secrets kept per subscription (the current one and rotated ones still valid), so that
/// rotating in a loop cannot grow the record and the signature header without bound.
pub const MAX_SECRETS: usize = 5;
/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 60 * 60 * 1000;
/// The event type of `POST .../test`, always subscribable.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

const ID_MAX_LEN: usize = 64;
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
    route_id(found).is_none_or(is_valid_id).then_some(found)
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

/// `[A-Za-z0-9_-]{1,64}`: what ids are made of, so anything else cannot name one.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn dispatch<S: KvStore>(request: &Request<'_>, cx: &mut Context<'_, S>) -> Outcome {
    let config = cx.config;
    let route = route(&config.api.path_prefix, request.path)
        .ok_or_else(|| error(404, "not_found", "no such path"))?;
    let consumer = authenticate(request, &config.api.keys).ok_or_else(unauthorized)?;
    if !route.allows(request.method) {
        return Err(method_not_allowed(route.allow()));
    }
    if request.body.len() > config.api.max_body_bytes {
        return Err(too_large(config.api.max_body_bytes));
    }
    let caller = Caller { consumer };
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

/// The consumer whose key was presented. Every configured key is compared, in constant time and
/// without stopping at a match, so timing tells nothing about which key (if any) came close.
fn authenticate<'k>(request: &Request<'_>, keys: &'k [ApiKey]) -> Option<&'k str> {
    let presented = presented_key(request)?;
    let digest: [u8; 32] = Sha256::digest(presented).into();
    let mut found = None;
    for key in keys {
        let diff = key
            .sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(key.consumer.as_str());
        }
    }
    found
}

/// `Authorization: Bearer <key>` (scheme case-insensitive), else `X-API-Key: <key>`.
fn presented_key<'r>(request: &Request<'r>) -> Option<&'r [u8]> {
    let bearer = request.authorization.and_then(|value| {
        let value = value.trim_ascii();
        let scheme = value.get(..6)?;
        let rest = value.get(6..)?;
        let token = rest.trim_ascii_start();
        let separated = token.len() < rest.len();
        (scheme.eq_ignore_ascii_case(b"Bearer") && separated).then_some(token)
    });
    bearer
        .or_else(|| request.api_key.map(<[u8]>::trim_ascii))
        .filter(|key| !key.is_empty())
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

fn unauthorized() -> Response {
    let mut response = error(
        401,
        "unauthorized",
        "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)",
    );
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
    check_destination(url, config.delivery.allow_insecure_destinations)
        .map_err(|e| error(422, e.code, e.message))?;
    Ok(url.to_string())
}

/// A non-empty list of at most [`MAX_EVENTS`] valid filters whose exact types are known;
/// duplicates are dropped, order kept.
fn parse_events(config: &Config, value: &Value) -> Result<Vec<String>, Response> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid_field("events must be an array of event filters"))?;
    if list.is_empty() || list.len() > MAX_EVENTS {
        return Err(error(
            422,
            "invalid_events",
            format!("events must list 1 to {MAX_EVENTS} event filters"),
        ));
    }
    let mut events: Vec<String> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let filter = parse_filter(config, i, entry)?;
        if !events.iter().any(|e| *e == filter) {
            events.push(filter.to_string());
        }
    }
    Ok(events)
}

fn parse_filter<'v>(config: &Config, index: usize, entry: &'v Value) -> Result<&'v str, Response> {
    let filter = entry
        .as_str()
        .filter(|f| rules::is_valid_event_filter(f))
        .ok_or_else(|| {
            error(
                422,
                "invalid_events",
                format!("events[{index}] must be an event type, a prefix.* wildcard or *"),
            )
        })?;
    let exact = filter != "*" && !filter.ends_with(".*");
    if exact && !is_known_type(config, filter) {
        return Err(error(
            422,
            "unknown_event_type",
            format!("events[{index}]: {filter:?} is not an event type of this API (see GET event-types)"),
        ));
    }
    Ok(filter)
}

/// A configured rule's type, `webhook.test`, or, with inference on, any type inference can
/// produce: one resource segment of letters and '_' followed by created/updated/deleted.
fn is_known_type(config: &Config, event_type: &str) -> bool {
    event_type == TEST_EVENT_TYPE
        || config.events.iter().any(|r| r.event_type == event_type)
        || (config.infer_events && is_inferable(event_type))
}

fn is_inferable(event_type: &str) -> bool {
    let Some((resource, verb)) = event_type.split_once('.') else {
        return false;
    };
    matches!(verb, "created" | "updated" | "deleted")
        && !resource.is_empty()
        && resource
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_')
}

fn parse_description(map: &Map<String, Value>) -> Result<Option<String>, Response> {
    let Some(description) = string_field(map, "description")? else {
        return Ok(None);
    };
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid_field(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
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
    let secret = Secret::generate(cx.rng);
    let sub = Subscription {
        id: random_id(cx.rng, "sub_", SUBSCRIPTION_ID_LEN),
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
    attempts::clear(cx.registry.store(), id);
    Ok(Response {
        status: 204,
        headers: base_headers(),
        body: Vec::new(),
    })
}

fn rotate_secret<S: KvStore>(cx: &mut Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    changeable(cx, caller, id)?;
    let secret = Secret::generate(cx.rng);
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
    enqueue(cx, message)
}

fn subscription_disabled() -> Response {
    error(
        409,
        "subscription_disabled",
        "the subscription is disabled; PATCH it with {\"status\": \"active\"} first",
    )
}

fn enqueue<S: KvStore>(cx: &mut Context<'_, S>, message: QueueMessage) -> Outcome {
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
    let log = attempts::read(cx.registry.store(), &sub.id);
    Ok(json_response(200, &json!({"data": log})))
}

/// Replays a message found in the attempt logs of the caller's own subscriptions. The search is
/// bounded: the caller's subscriptions (the per-consumer limit plus static ones) times the
/// entries kept per log.
fn retry<S: KvStore>(cx: &mut Context<'_, S>, caller: Caller<'_>, webhook_id: &str) -> Outcome {
    let bound = cx.config.api.max_subscriptions_per_consumer + cx.config.subscriptions.len();
    let store = cx.registry.store();
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
    enqueue(cx, message)
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
mod tests {
    use super::*;
    use crate::attempts::{Attempt, State};
    use crate::config;
    use crate::ids::TestRng;
    use crate::registry::{MemoryStore, StoreError};
    use std::cell::Cell;

    /// A [`MemoryStore`] that counts writes (to prove refused calls write nothing) and can be
    /// made to fail them.
    #[derive(Default)]
    struct Store {
        inner: MemoryStore,
        writes: Cell<usize>,
        failing: Cell<bool>,
    }

    impl KvStore for Store {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.failing.get() {
                return Err(StoreError::Failed("down".into()));
            }
            self.writes.set(self.writes.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    const KEY_A: &str = "key-acme-0123456789";
    const KEY_B: &str = "key-beta-0123456789";
    const KEY_OPS: &str = "key-ops-0123456789";
    const NOW: u64 = 1_795_000_000_000;
    const STATIC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn config_json(infer: bool, insecure: bool) -> String {
        json!({
            "events": [
                {"type": "order.created", "method": "POST", "path": "/orders", "status": [201]},
                {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}"}
            ],
            "infer_events": infer,
            "api": {
                "keys": [
                    {"consumer": "acme", "sha256": hex(KEY_A)},
                    {"consumer": "beta", "sha256": hex(KEY_B)},
                    {"consumer": "ops", "sha256": hex(KEY_OPS)}
                ],
                "max_subscriptions_per_consumer": 3,
                "max_body_bytes": 1024
            },
            "subscriptions": [{
                "id": "sub_static_1", "consumer": "ops", "url": "https://hooks.example.com/in",
                "events": ["order.*"], "secret": STATIC_SECRET
            }],
            "delivery": {"allow_insecure_destinations": insecure}
        })
        .to_string()
    }

    struct Api {
        config: Config,
        registry: Registry<Store>,
        rng: TestRng,
        sent: Vec<QueueMessage>,
        queue_up: bool,
        now_ms: u64,
    }

    impl Api {
        fn new() -> Api {
            Api::with(&config_json(true, false))
        }

        fn with(config_text: &str) -> Api {
            let config = config::parse(config_text.as_bytes()).unwrap();
            let registry = Registry::new(Store::default());
            registry.prepare();
            registry.sync_static(&config.subscriptions, NOW);
            Api {
                config,
                registry,
                rng: TestRng(42),
                sent: Vec::new(),
                queue_up: true,
                now_ms: NOW,
            }
        }

        fn writes(&self) -> usize {
            self.registry.store().writes.get()
        }

        fn send(&mut self, request: &Request<'_>) -> Response {
            let (sent, up) = (&mut self.sent, self.queue_up);
            let mut enqueue = |m: QueueMessage| {
                if up {
                    sent.push(m);
                }
                up
            };
            let mut cx = Context {
                config: &self.config,
                registry: &self.registry,
                rng: &mut self.rng,
                now_ms: self.now_ms,
                enqueue: &mut enqueue,
            };
            handle(request, &mut cx)
        }

        /// A call with `Bearer <key>` and a JSON body (when not empty); the answer parsed.
        fn call(&mut self, method: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
            let auth = format!("Bearer {key}");
            let response = self.send(&Request {
                method,
                path,
                authorization: Some(auth.as_bytes()),
                api_key: None,
                content_type: Some(b"application/json"),
                body: body.as_bytes(),
            });
            (response.status, parse(&response))
        }

        fn create(&mut self, key: &str, url: &str, events: &[&str]) -> Value {
            let body = json!({"url": url, "events": events}).to_string();
            let (status, value) = self.call("POST", "/webhooks/subscriptions", key, &body);
            assert_eq!(status, 201, "{value}");
            value
        }

        fn record(&self, id: &str) -> Subscription {
            self.registry.get(id).unwrap().0
        }
    }

    fn parse(response: &Response) -> Value {
        if response.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&response.body).unwrap()
    }

    fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
        response
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(value: &Value) -> &str {
        value["error"]["code"].as_str().unwrap_or("<none>")
    }

    fn sub_path(id: &str, tail: &str) -> String {
        format!("/webhooks/subscriptions/{id}{tail}")
    }

    const URL: &str = "https://hooks.example.com/acme";

    #[test]
    fn round_trip_field_by_field() {
        let mut api = Api::new();
        let created = api.create(KEY_A, URL, &["order.created", "orders.*"]);
        let id = created["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("sub_") && id.len() == 28, "{id}");
        assert!(is_valid_id(&id));
        let stamp = format_rfc3339_millis(NOW);
        let secret = created["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_") && secret.len() == 50);
        assert!(Secret::parse(&secret).is_ok());
        let expected = json!({
            "id": id, "url": URL, "events": ["order.created", "orders.*"], "description": "",
            "status": "active", "disabled_reason": null, "created_at": stamp,
            "updated_at": stamp, "static": false, "secret": secret
        });
        assert_eq!(created, expected);

        let (status, list) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
        let mut shown = expected.clone();
        shown.as_object_mut().unwrap().remove("secret");
        assert_eq!(
            (status, list),
            (200, json!({"data": [shown], "has_more": false}))
        );
        let (status, got) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
        assert_eq!((status, &got), (200, &shown));

        api.now_ms = NOW + 5_000;
        let body = r#"{"url":"https://other.example.com/x","events":["order.updated"],"description":"mine"}"#;
        let (status, patched) = api.call("PATCH", &sub_path(&id, ""), KEY_A, body);
        assert_eq!(status, 200, "{patched}");
        let mut after = shown.clone();
        after["url"] = json!("https://other.example.com/x");
        after["events"] = json!(["order.updated"]);
        after["description"] = json!("mine");
        after["updated_at"] = json!(format_rfc3339_millis(NOW + 5_000));
        assert_eq!(patched, after);
        assert!(api.registry.candidates("order.updated").contains(&id));
        assert!(!api.registry.candidates("order.created").contains(&id));

        api.now_ms = NOW + 9_000;
        let (status, rotated) = api.call("POST", &sub_path(&id, "/rotate-secret"), KEY_A, "");
        assert_eq!(status, 200);
        let new_secret = rotated["secret"].as_str().unwrap();
        assert_ne!(new_secret, secret);
        assert_eq!(
            rotated["updated_at"],
            json!(format_rfc3339_millis(NOW + 9_000))
        );
        assert_eq!(
            api.record(&id).secrets,
            [
                SigningSecret {
                    secret: new_secret.to_string(),
                    expires_at_ms: None
                },
                SigningSecret {
                    secret,
                    expires_at_ms: Some(NOW + 9_000 + ROTATION_OVERLAP_MS)
                },
            ]
        );

        let response = api.send(&Request {
            method: "DELETE",
            path: &sub_path(&id, ""),
            authorization: Some(format!("Bearer {KEY_A}").as_bytes()),
            api_key: None,
            content_type: None,
            body: b"",
        });
        assert_eq!((response.status, response.body.as_slice()), (204, &b""[..]));
        assert_eq!(header(&response, "content-type"), None);
        assert_eq!(header(&response, "cache-control"), Some("no-store"));
        let (status, value) = api.call("GET", &sub_path(&id, ""), KEY_A, "");
        assert_eq!((status, code(&value)), (404, "not_found"));
        let (_, list) = api.call("GET", "/webhooks/subscriptions", KEY_A, "");
        assert_eq!(list["data"], json!([]));
    }

    #[test]
    fn create_answers_location_and_json_headers() {
        let mut api = Api::new();
        let auth = format!("Bearer {KEY_A}");
        let body = json!({"url": URL, "events": ["*"]}).to_string();
        let response = api.send(&Request {
            method: "POST",
            path: "/webhooks/subscriptions?ignored=1",
            authorization: Some(auth.as_bytes()),
            api_key: None,
            content_type: Some(b"Application/JSON; charset=utf-8"),
            body: body.as_bytes(),
        });
        assert_eq!(response.status, 201);
        let id = parse(&response)["id"].as_str().unwrap().to_string();
        assert_eq!(
            header(&response, "location"),
            Some(format!("/webhooks/subscriptions/{id}").as_str())
        );
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(header(&response, "cache-control"), Some("no-store"));
    }

    #[test]
    fn secret_is_shown_only_on_create_and_rotate() {
        let mut api = Api::new();
        let created = api.create(KEY_A, URL, &["*"]);
        let id = created["id"].as_str().unwrap();
        let secret = created["secret"].as_str().unwrap();
        let calls = [
            ("GET", "/webhooks/subscriptions".to_string(), ""),
            ("GET", sub_path(id, ""), ""),
            ("PATCH", sub_path(id, ""), r#"{"description":"x"}"#),
            ("PATCH", sub_path(id, ""), "{}"),
            ("GET", sub_path(id, "/deliveries"), ""),
        ];
        for (method, path, body) in calls {
            let (status, value) = api.call(method, &path, KEY_A, body);
            assert_eq!(status, 200, "{method} {path}");
            let text = value.to_string();
            assert!(!text.contains("secret") && !text.contains(secret), "{text}");
        }
    }

    #[test]
    fn another_consumers_subscription_is_exactly_not_found() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (writes, before) = (api.writes(), api.record(&id));
        let calls = [
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/rotate-secret"),
            ("POST", "/test"),
            ("GET", "/deliveries"),
        ];
        for (method, tail) in calls {
            let body = if method == "PATCH" {
                r#"{"description":"x"}"#
            } else {
                ""
            };
            let theirs = api.call(method, &sub_path(&id, tail), KEY_B, body);
            let unknown = api.call(method, &sub_path("sub_unknown", tail), KEY_B, body);
            assert_eq!(theirs.0, 404, "{method} {tail}");
            assert_eq!(theirs, unknown, "{method} {tail}");
        }
        let (_, list) = api.call("GET", "/webhooks/subscriptions", KEY_B, "");
        assert_eq!(list["data"], json!([]));
        assert_eq!((api.writes(), api.record(&id)), (writes, before));
        assert!(api.sent.is_empty());
    }

    /// Authorization, X-API-Key, expected status.
    type AuthCase<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, u16);

    fn long_events(n: usize) -> Value {
        json!((0..n).map(|i| format!("t{i}.*")).collect::<Vec<_>>())
    }

    /// Posts `body` as a create with `content_type` and checks the refusal: status, error code,
    /// a word of the message, the JSON shape.
    fn assert_refused(
        api: &mut Api,
        content_type: Option<&[u8]>,
        body: &str,
        want: (u16, &str, &str),
    ) {
        let auth = format!("Bearer {KEY_A}");
        let response = api.send(&Request {
            method: "POST",
            path: "/webhooks/subscriptions",
            authorization: Some(auth.as_bytes()),
            api_key: None,
            content_type,
            body: body.as_bytes(),
        });
        let value = parse(&response);
        let (status, error_code, word) = want;
        assert_eq!(
            (response.status, code(&value)),
            (status, error_code),
            "{body}: {value}"
        );
        let message = value["error"]["message"].as_str().unwrap();
        assert!(message.contains(word), "{body}: {message}");
        assert_eq!(value["error"].as_object().unwrap().len(), 2);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
    }

    fn body_with(field: &str, value: Value) -> String {
        let mut body = json!({"url": URL, "events": ["order.created"]});
        body[field] = value;
        body.to_string()
    }

    /// Every refused create answers its status and code and writes nothing.
    #[test]
    fn refused_creates_write_nothing() {
        let mut api = Api::new();
        let writes = api.writes();
        let ok = body_with("description", json!("fine"));
        let media: [(Option<&[u8]>, &str); 3] = [
            (None, "application/json"),
            (Some(b"text/plain"), ""),
            (Some(b"application/jsonx"), ""),
        ];
        for (content_type, word) in media {
            assert_refused(
                &mut api,
                content_type,
                &ok,
                (415, "unsupported_media_type", word),
            );
        }
        let json_cases: [(&str, u16, &str, &str); 7] = [
            ("", 400, "invalid_json", ""),
            ("{\"url\":", 400, "invalid_json", ""),
            ("{} x", 400, "invalid_json", ""),
            ("[]", 400, "invalid_request", "object"),
            ("\"x\"", 400, "invalid_request", ""),
            ("null", 400, "invalid_request", ""),
            (r#"{"events":["*"]}"#, 422, "missing_field", "url"),
        ];
        for (body, status, error_code, word) in json_cases {
            assert_refused(
                &mut api,
                Some(b"application/json"),
                body,
                (status, error_code, word),
            );
        }
        let field_cases: Vec<(&str, Value, &str, &str)> = vec![
            ("secret", json!("whsec_x"), "unknown_field", "secret"),
            ("status", json!("active"), "unknown_field", "status"),
            ("url", json!(5), "invalid_field", "url"),
            ("url", json!(["https://a.b"]), "invalid_field", "url"),
            ("url", Value::Null, "missing_field", "url"),
            ("events", Value::Null, "missing_field", "events"),
            ("events", json!("order.created"), "invalid_field", "events"),
            ("events", json!({}), "invalid_field", "events"),
            ("events", json!([]), "invalid_events", "events"),
            ("events", long_events(51), "invalid_events", "50"),
            ("events", json!([5]), "invalid_events", "events[0]"),
            (
                "events",
                json!(["*", "order..x"]),
                "invalid_events",
                "events[1]",
            ),
            ("events", json!(["order.**"]), "invalid_events", ""),
            ("events", json!([""]), "invalid_events", ""),
            (
                "events",
                json!(["invoice.paid"]),
                "unknown_event_type",
                "invoice.paid",
            ),
            (
                "events",
                json!(["orders1.created"]),
                "unknown_event_type",
                "orders1",
            ),
            (
                "events",
                json!(["orders.archived"]),
                "unknown_event_type",
                "",
            ),
            ("events", json!(["order"]), "unknown_event_type", ""),
            ("description", json!(5), "invalid_field", "description"),
            (
                "description",
                json!("x".repeat(257)),
                "invalid_field",
                "256",
            ),
        ];
        for (field, value, error_code, word) in field_cases {
            let body = body_with(field, value);
            assert_refused(
                &mut api,
                Some(b"application/json"),
                &body,
                (422, error_code, word),
            );
        }
        let url_cases = [
            (
                "http://hooks.example.com/x",
                "insecure_url",
                "url must be https",
            ),
            ("http://127.0.0.1/x", "insecure_url", "https"),
            ("https://127.0.0.1/x", "insecure_url", "loopback"),
            ("https://[::1]/x", "insecure_url", ""),
            ("http://[::1]/x", "insecure_url", ""),
            ("https://10.0.0.1/x", "insecure_url", "private"),
            (
                "https://169.254.169.254/latest",
                "insecure_url",
                "link-local",
            ),
            ("https://localhost/x", "insecure_url", "localhost"),
            ("https://0.0.0.0/x", "insecure_url", ""),
            ("ftp://hooks.example.com/x", "invalid_url", "scheme"),
            ("hooks.example.com/x", "invalid_url", "absolute"),
            ("", "invalid_url", ""),
            ("https://user:pw@hooks.example.com/x", "invalid_url", ""),
            (
                "https://hooks.example.com/x#frag",
                "invalid_url",
                "fragment",
            ),
            ("https://hooks.example.com/a b", "invalid_url", ""),
        ];
        for (url, error_code, word) in url_cases {
            let body = body_with("url", json!(url));
            assert_refused(
                &mut api,
                Some(b"application/json"),
                &body,
                (422, error_code, word),
            );
        }
        assert_eq!(api.writes(), writes);
        assert!(api.registry.list_for_consumer("acme").is_empty());
    }

    #[test]
    fn accepted_creates_normalise_events() {
        let mut api = Api::new();
        let body = json!({
            "url": "https://hooks.example.com:8443/in?x=1", "description": null,
            "events": ["order.*", "orders.created", "order.*", "webhook.test", "*", "order.created"]
        });
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string());
        assert_eq!(status, 201, "{value}");
        assert_eq!(
            value["events"],
            json!([
                "order.*",
                "orders.created",
                "webhook.test",
                "*",
                "order.created"
            ])
        );
        assert_eq!(value["description"], json!(""));
        let body = json!({"url": URL, "events": long_events(50), "description": "é".repeat(256)});
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body.to_string());
        assert_eq!(status, 201, "{value}");
    }

    #[test]
    fn inference_off_allows_only_configured_types() {
        let mut api = Api::with(&config_json(false, false));
        let body = json!({"url": URL, "events": ["orders.created"]}).to_string();
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
        assert_eq!((status, code(&value)), (422, "unknown_event_type"));
        api.create(KEY_A, URL, &["order.created", "webhook.test", "anything.*"]);
    }

    #[test]
    fn insecure_destinations_when_allowed() {
        let mut api = Api::with(&config_json(true, true));
        for url in [
            "http://127.0.0.1:8080/in",
            "http://[::1]/x",
            "https://localhost/x",
        ] {
            api.create(KEY_A, url, &["*"]);
        }
        let body = json!({"url": "ftp://x.example/", "events": ["*"]}).to_string();
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_B, &body);
        assert_eq!((status, code(&value)), (422, "invalid_url"));
    }

    fn auth_request<'a>(authorization: Option<&'a [u8]>, api_key: Option<&'a [u8]>) -> Request<'a> {
        Request {
            method: "GET",
            path: "/webhooks/subscriptions",
            authorization,
            api_key,
            content_type: None,
            body: b"",
        }
    }

    #[test]
    fn authentication_variants() {
        let mut api = Api::new();
        let bearer = format!("Bearer {KEY_A}");
        let lower = format!("bearer   {KEY_A} ");
        let wrong = format!("Bearer {KEY_A}x");
        let basic = format!("Basic {KEY_A}");
        let glued = format!("Bearer{KEY_A}");
        let cases: Vec<AuthCase> = vec![
            (Some(bearer.as_bytes()), None, 200),
            (Some(lower.as_bytes()), None, 200),
            (None, Some(KEY_A.as_bytes()), 200),
            (Some(basic.as_bytes()), Some(KEY_A.as_bytes()), 200),
            (None, None, 401),
            (Some(wrong.as_bytes()), None, 401),
            (None, Some(b"nope"), 401),
            (Some(b"Bearer"), None, 401),
            (Some(b"Bearer "), None, 401),
            (Some(basic.as_bytes()), None, 401),
            (Some(glued.as_bytes()), None, 401),
            (None, Some(b""), 401),
            // The bearer token is the one presented; a second header does not rescue it.
            (Some(wrong.as_bytes()), Some(KEY_A.as_bytes()), 401),
        ];
        for (authorization, api_key, status) in cases {
            let response = api.send(&auth_request(authorization, api_key));
            assert_eq!(response.status, status, "{authorization:?} {api_key:?}");
            if status == 401 {
                let value = parse(&response);
                assert_eq!(code(&value), "unauthorized");
                assert!(!value.to_string().contains(KEY_A));
                assert_eq!(
                    header(&response, "www-authenticate"),
                    Some("Bearer realm=\"webhooks\"")
                );
            }
        }
    }

    #[test]
    fn no_configured_keys_refuse_everything() {
        let mut api = Api::with("{}");
        let bearer = format!("Bearer {KEY_A}");
        for path in ["/webhooks/subscriptions", "/webhooks/event-types"] {
            let mut request = auth_request(Some(bearer.as_bytes()), None);
            request.path = path;
            assert_eq!(api.send(&request).status, 401);
        }
    }

    #[test]
    fn unknown_paths_answer_404_before_auth_and_methods_405_after() {
        let mut api = Api::new();
        let long = format!("/webhooks/subscriptions/{}", "a".repeat(65));
        for path in [
            "/webhooks",
            "/webhooks/",
            "/webhooks/nope",
            "/webhooks/subscriptions/a/b/c",
            "/webhooks/subscriptions/a/rotate",
            "/webhooks/subscriptions/sub.x",
            "/webhooks/subscriptions/sub%20x",
            "/webhooks/subscriptions//",
            "/webhooks//subscriptions",
            "/webhooks/deliveries/msg_1",
            "/webhooks/event-types/x",
            long.as_str(),
        ] {
            let response = api.send(&Request {
                path,
                ..auth_request(None, None)
            });
            let value = parse(&response);
            assert_eq!(
                (response.status, code(&value)),
                (404, "not_found"),
                "{path}"
            );
        }
        // Known path without a key: 401 even for a wrong method.
        let response = api.send(&Request {
            method: "PUT",
            ..auth_request(None, None)
        });
        assert_eq!(response.status, 401);
        let cases = [
            ("DELETE", "/webhooks/subscriptions", "GET, POST"),
            ("PUT", "/webhooks/subscriptions/sub_1", "GET, PATCH, DELETE"),
            (
                "POST",
                "/webhooks/subscriptions/sub_1/",
                "GET, PATCH, DELETE",
            ),
            ("GET", "/webhooks/subscriptions/sub_1/test", "POST"),
            ("GET", "/webhooks/subscriptions/sub_1/rotate-secret", "POST"),
            ("POST", "/webhooks/subscriptions/sub_1/deliveries", "GET"),
            ("GET", "/webhooks/deliveries/msg_1/retry", "POST"),
            ("POST", "/webhooks/event-types", "GET"),
            ("get", "/webhooks/event-types", "GET"),
            ("HEAD", "/webhooks/event-types", "GET"),
        ];
        let bearer = format!("Bearer {KEY_A}");
        for (method, path, allow) in cases {
            let response = api.send(&Request {
                method,
                path,
                ..auth_request(Some(bearer.as_bytes()), None)
            });
            let value = parse(&response);
            assert_eq!(
                (response.status, code(&value)),
                (405, "method_not_allowed"),
                "{method} {path}"
            );
            assert_eq!(header(&response, "allow"), Some(allow));
        }
    }

    #[test]
    fn trailing_slash_and_query_are_tolerated() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        for path in [
            "/webhooks/subscriptions/".to_string(),
            "/webhooks/subscriptions?x=1".to_string(),
            format!("/webhooks/subscriptions/{id}/"),
            format!("/webhooks/subscriptions/{id}?a=b#c"),
            "/webhooks/event-types/?x".to_string(),
        ] {
            assert_eq!(api.call("GET", &path, KEY_A, "").0, 200, "{path}");
        }
    }

    #[test]
    fn api_path_detection() {
        let cases = [
            ("/webhooks", true),
            ("/webhooks/", true),
            ("/webhooks?x=1", true),
            ("/webhooks/subscriptions/x", true),
            ("/webhooks#x", true),
            ("/webhooksx", false),
            ("/webhook", false),
            ("/orders/webhooks", false),
            ("/Webhooks", false),
            ("", false),
        ];
        for (path, expected) in cases {
            assert_eq!(is_api_path("/webhooks", path), expected, "{path}");
        }
        assert!(is_api_path("/api/hooks", "/api/hooks/event-types"));
        assert!(!is_api_path("/api/hooks", "/api/hooksy"));
    }

    #[test]
    fn custom_prefix_routes() {
        let mut config: Value = serde_json::from_str(&config_json(true, false)).unwrap();
        config["api"]["path_prefix"] = json!("/api/hooks/");
        let mut api = Api::with(&config.to_string());
        let (status, _) = api.call("GET", "/api/hooks/event-types", KEY_A, "");
        assert_eq!(status, 200);
        let created = {
            let body = json!({"url": URL, "events": ["*"]}).to_string();
            let auth = format!("Bearer {KEY_A}");
            api.send(&Request {
                method: "POST",
                path: "/api/hooks/subscriptions",
                authorization: Some(auth.as_bytes()),
                api_key: None,
                content_type: Some(b"application/json"),
                body: body.as_bytes(),
            })
        };
        let id = parse(&created)["id"].as_str().unwrap().to_string();
        assert_eq!(
            header(&created, "location"),
            Some(format!("/api/hooks/subscriptions/{id}").as_str())
        );
    }

    #[test]
    fn static_subscriptions_are_visible_but_fixed() {
        let mut api = Api::new();
        let (status, list) = api.call("GET", "/webhooks/subscriptions", KEY_OPS, "");
        assert_eq!(status, 200);
        assert_eq!(list["data"][0]["id"], json!("sub_static_1"));
        assert_eq!(list["data"][0]["static"], json!(true));
        assert!(!list.to_string().contains(STATIC_SECRET));
        let writes = api.writes();
        let before = api.record("sub_static_1");
        for (method, tail, body) in [
            ("PATCH", "", r#"{"description":"mine now"}"#),
            (
                "PATCH",
                "",
                r#"{"status":"disabled","url":"https://x.example/"}"#,
            ),
            ("DELETE", "", ""),
            ("POST", "/rotate-secret", ""),
        ] {
            let (status, value) = api.call(method, &sub_path("sub_static_1", tail), KEY_OPS, body);
            assert_eq!(
                (status, code(&value)),
                (409, "static_subscription"),
                "{method} {tail}"
            );
            assert!(value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("configuration"));
        }
        assert_eq!((api.writes(), api.record("sub_static_1")), (writes, before));
        // Its status is operational, not configuration: the owner can switch it off and on.
        let path = sub_path("sub_static_1", "");
        let (status, value) = api.call("PATCH", &path, KEY_OPS, r#"{"status":"disabled"}"#);
        assert_eq!(
            (status, &value["status"]),
            (200, &json!("disabled")),
            "{value}"
        );
        let (status, value) = api.call("PATCH", &path, KEY_OPS, r#"{"status":"active"}"#);
        assert_eq!(
            (status, &value["disabled_reason"]),
            (200, &json!(null)),
            "{value}"
        );
        let (status, _) = api.call("POST", &sub_path("sub_static_1", "/test"), KEY_OPS, "");
        assert_eq!(status, 202);
        assert_eq!(api.sent.len(), 1);
        // Another consumer cannot even see it.
        let (status, _) = api.call("GET", &sub_path("sub_static_1", ""), KEY_A, "");
        assert_eq!(status, 404);
    }

    #[test]
    fn per_consumer_limit() {
        let mut api = Api::new();
        for _ in 0..3 {
            api.create(KEY_A, URL, &["*"]);
        }
        let writes = api.writes();
        let body = json!({"url": URL, "events": ["*"]}).to_string();
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
        assert_eq!((status, code(&value)), (409, "limit_reached"));
        assert!(value["error"]["message"].as_str().unwrap().contains('3'));
        assert_eq!(api.writes(), writes);
        assert_eq!(api.registry.list_for_consumer("acme").len(), 3);
        api.create(KEY_B, URL, &["*"]);
    }

    #[test]
    fn store_failure_answers_503() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        api.registry.store().failing.set(true);
        let body = json!({"url": URL, "events": ["*"]}).to_string();
        for (method, path, body) in [
            ("POST", "/webhooks/subscriptions".to_string(), body.as_str()),
            ("PATCH", sub_path(&id, ""), r#"{"description":"x"}"#),
            ("POST", sub_path(&id, "/rotate-secret"), ""),
            ("DELETE", sub_path(&id, ""), ""),
        ] {
            let (status, value) = api.call(method, &path, KEY_A, body);
            assert_eq!(
                (status, code(&value)),
                (503, "unavailable"),
                "{method} {path}"
            );
        }
        api.registry.store().failing.set(false);
        assert_eq!(api.record(&id).description, "");
    }

    #[test]
    fn test_call_enqueues_one_test_message() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["order.created"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let writes = api.writes();
        let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
        assert_eq!((status, value), (202, json!({"status": "queued"})));
        assert_eq!(api.writes(), writes);
        let [QueueMessage::Test {
            subscription_id,
            payload,
        }] = api.sent.as_slice()
        else {
            panic!("expected one test message, got {:?}", api.sent);
        };
        assert_eq!(subscription_id, &id);
        assert_eq!(payload, &event::build_test_payload(NOW, &id));
        let payload: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(payload["type"], json!("webhook.test"));

        api.queue_up = false;
        let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
        assert_eq!((status, code(&value)), (503, "queue_unavailable"));
        api.queue_up = true;
        let (status, _) = api.call(
            "PATCH",
            &sub_path(&id, ""),
            KEY_A,
            r#"{"status":"disabled"}"#,
        );
        assert_eq!(status, 200);
        let (status, value) = api.call("POST", &sub_path(&id, "/test"), KEY_A, "");
        assert_eq!((status, code(&value)), (409, "subscription_disabled"));
        assert_eq!(api.sent.len(), 1);
    }

    #[test]
    fn patch_status_and_reasons() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = sub_path(&id, "");
        let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"disabled"}"#);
        assert_eq!(
            (&v["status"], &v["disabled_reason"]),
            (&json!("disabled"), &json!("manual"))
        );
        let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"active"}"#);
        assert_eq!(
            (&v["status"], &v["disabled_reason"]),
            (&json!("active"), &Value::Null)
        );
        api.registry
            .update(&id, |s| {
                s.status = Status::Disabled;
                s.disabled_reason = Some("gone".into());
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        let (_, v) = api.call(
            "PATCH",
            &path,
            KEY_A,
            r#"{"status":"disabled","description":"d"}"#,
        );
        assert_eq!(
            (&v["disabled_reason"], &v["description"]),
            (&json!("gone"), &json!("d"))
        );
        let (_, v) = api.call("PATCH", &path, KEY_A, r#"{"status":"active"}"#);
        assert_eq!(
            (&v["status"], &v["disabled_reason"]),
            (&json!("active"), &Value::Null)
        );
        assert_eq!(api.registry.active_count(), 2);
    }

    #[test]
    fn refused_patches_write_nothing() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = sub_path(&id, "");
        let writes = api.writes();
        let before = api.record(&id);
        let cases = [
            (r#"{"status":"paused"}"#, 422, "invalid_status"),
            (r#"{"status":true}"#, 422, "invalid_field"),
            (r#"{"url":"http://x.example/"}"#, 422, "insecure_url"),
            (r#"{"events":[]}"#, 422, "invalid_events"),
            (r#"{"events":["nope.happened"]}"#, 422, "unknown_event_type"),
            (r#"{"description":"ok","secret":"x"}"#, 422, "unknown_field"),
            (r#"{"description":"ok","id":"sub_x"}"#, 422, "unknown_field"),
            (
                r#"{"description":"ok","status":"on"}"#,
                422,
                "invalid_status",
            ),
            ("[1]", 400, "invalid_request"),
            ("{", 400, "invalid_json"),
            ("", 400, "invalid_json"),
        ];
        for (body, status, error_code) in cases {
            let (got, value) = api.call("PATCH", &path, KEY_A, body);
            assert_eq!((got, code(&value)), (status, error_code), "{body}");
        }
        let (status, value) = api.call("PATCH", &path, KEY_A, "{}");
        assert_eq!((status, &value["id"]), (200, &json!(id)));
        assert_eq!((api.writes(), api.record(&id)), (writes, before));
        let (status, _) = api.call("PATCH", &sub_path("sub_unknown", ""), KEY_A, "{}");
        assert_eq!(status, 404);
    }

    #[test]
    fn rotation_drops_expired_and_caps_secrets() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        api.registry
            .update(&id, |s| {
                s.secrets.push(SigningSecret {
                    secret: "whsec_old".into(),
                    expires_at_ms: Some(NOW),
                });
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        let path = sub_path(&id, "/rotate-secret");
        let (status, value) = api.call("POST", &path, KEY_A, "");
        assert_eq!(status, 200);
        let secrets = api.record(&id).secrets;
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0].secret, value["secret"].as_str().unwrap());
        assert!(secrets.iter().all(|s| s.secret != "whsec_old"));
        for _ in 0..10 {
            api.call("POST", &path, KEY_A, "");
        }
        let secrets = api.record(&id).secrets;
        assert_eq!(secrets.len(), MAX_SECRETS);
        assert_eq!(
            secrets.iter().filter(|s| s.expires_at_ms.is_none()).count(),
            1
        );
    }

    fn attempt(webhook_id: &str, n: u32, state: State) -> Attempt {
        Attempt {
            webhook_id: webhook_id.into(),
            event_type: "order.created".into(),
            attempt: n,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
            response_status: Some(500),
            error: None,
            duration_ms: 12,
            next_retry_at: None,
            state,
        }
    }

    #[test]
    fn deliveries_show_the_attempt_log_and_delete_clears_it() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let log = vec![
            attempt("msg_1", 1, State::Retrying),
            attempt("msg_1", 2, State::Succeeded),
        ];
        attempts::record(api.registry.store(), &id, log).unwrap();
        let (status, value) = api.call("GET", &sub_path(&id, "/deliveries"), KEY_A, "");
        assert_eq!(status, 200);
        let expected = attempts::read(api.registry.store(), &id);
        assert_eq!(value, json!({"data": expected}));
        assert_eq!(value["data"][0]["state"], json!("succeeded"));
        assert_eq!(value["data"][0]["webhook_id"], json!("msg_1"));
        api.call("DELETE", &sub_path(&id, ""), KEY_A, "");
        assert!(attempts::read(api.registry.store(), &id).is_empty());
    }

    #[test]
    fn retry_follows_the_newest_state() {
        let mut api = Api::new();
        let id = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let other = api.create(KEY_A, URL, &["*"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let log = vec![
            attempt("msg_ok", 1, State::Failed),
            attempt("msg_ok", 2, State::Succeeded),
            attempt("msg_wait", 1, State::Retrying),
            attempt("msg_exh", 9, State::Exhausted),
            attempt("msg_gone", 1, State::Failed),
            attempt("msg_old", 3, State::Exhausted),
            attempt("msg_old", 3, State::Expired),
        ];
        attempts::record(api.registry.store(), &id, log).unwrap();
        attempts::record(
            api.registry.store(),
            &other,
            vec![attempt("msg_drop", 3, State::Dropped)],
        )
        .unwrap();
        let writes = api.writes();
        let retry = |m: &str| format!("/webhooks/deliveries/{m}/retry");
        let cases = [
            ("msg_ok", KEY_A, 409, Some("not_replayable")),
            ("msg_wait", KEY_A, 409, Some("not_replayable")),
            ("msg_old", KEY_A, 409, Some("not_replayable")),
            ("msg_unknown", KEY_A, 404, Some("not_found")),
            ("msg_exh", KEY_B, 404, Some("not_found")),
            ("msg_exh", KEY_A, 202, None),
            ("msg_gone", KEY_A, 202, None),
            ("msg_drop", KEY_A, 202, None),
        ];
        for (webhook_id, key, status, error_code) in cases {
            let (got, value) = api.call("POST", &retry(webhook_id), key, "");
            assert_eq!(got, status, "{webhook_id}: {value}");
            if let Some(error_code) = error_code {
                assert_eq!(code(&value), error_code);
            }
        }
        let replayed: Vec<_> = api
            .sent
            .iter()
            .map(|m| match m {
                QueueMessage::Replay { webhook_id } => webhook_id.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(replayed, ["msg_exh", "msg_gone", "msg_drop"]);
        assert_eq!(api.writes(), writes);

        api.queue_up = false;
        let (status, value) = api.call("POST", &retry("msg_exh"), KEY_A, "");
        assert_eq!((status, code(&value)), (503, "queue_unavailable"));
        api.queue_up = true;
        api.call(
            "PATCH",
            &sub_path(&id, ""),
            KEY_A,
            r#"{"status":"disabled"}"#,
        );
        let (status, value) = api.call("POST", &retry("msg_exh"), KEY_A, "");
        assert_eq!((status, code(&value)), (409, "subscription_disabled"));
    }

    #[test]
    fn event_types_list_rules_and_test() {
        let mut api = Api::new();
        let (status, value) = api.call("GET", "/webhooks/event-types", KEY_B, "");
        assert_eq!(status, 200);
        assert_eq!(
            value,
            json!({"data": [
                {"type": "order.created", "methods": ["POST"], "path": "/orders"},
                {"type": "order.updated", "methods": ["PUT", "PATCH"], "path": "/orders/{id}"},
                {"type": "webhook.test", "methods": [], "path": null}
            ], "infer_events": true})
        );
    }

    #[test]
    fn list_pagination() {
        let mut api = Api::new();
        let ids: Vec<String> = (0..3)
            .map(|_| {
                api.create(KEY_A, URL, &["*"])["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let page = |api: &mut Api, query: &str| {
            let (status, value) =
                api.call("GET", &format!("/webhooks/subscriptions{query}"), KEY_A, "");
            let got: Vec<String> = value["data"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|s| s["id"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            (
                status,
                got,
                value["has_more"].clone(),
                code(&value).to_string(),
            )
        };
        assert_eq!(
            page(&mut api, ""),
            (200, ids.clone(), json!(false), "<none>".into())
        );
        assert_eq!(
            page(&mut api, "?limit=2"),
            (200, ids[..2].to_vec(), json!(true), "<none>".into())
        );
        let after = format!("?limit=2&after={}", ids[1]);
        assert_eq!(
            page(&mut api, &after),
            (200, ids[2..].to_vec(), json!(false), "<none>".into())
        );
        let last = format!("?after={}", ids[2]);
        assert_eq!(page(&mut api, &last).1, Vec::<String>::new());
        for bad in ["?limit=0", "?limit=1001", "?limit=x", "?after=sub_unknown"] {
            let (status, _, _, error_code) = page(&mut api, bad);
            assert_eq!(
                (status, error_code.as_str()),
                (422, "invalid_field"),
                "{bad}"
            );
        }
    }

    #[test]
    fn oversized_bodies_answer_413() {
        let mut api = Api::new();
        let body =
            json!({"url": URL, "events": ["*"], "description": "x".repeat(2000)}).to_string();
        let (status, value) = api.call("POST", "/webhooks/subscriptions", KEY_A, &body);
        assert_eq!((status, code(&value)), (413, "payload_too_large"));
        let response = too_large(65536);
        assert_eq!(response.status, 413);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert!(parse(&response)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65536"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut api = Api::new();
        let bearer = format!("Bearer {KEY_A}");
        let deep = "[".repeat(10_000);
        let bodies: [&[u8]; 5] = [
            b"\xff\xfe",
            b"{\"url\":\"\xff\"}",
            deep.as_bytes(),
            b"1e999999",
            b"{\"\\ud800\":1}",
        ];
        for path in [
            "/webhooks/subscriptions",
            "/webhooks/subscriptions/sub_1",
            "/webhooks/\u{e9}",
        ] {
            for method in ["POST", "PATCH", ""] {
                for body in bodies {
                    let response = api.send(&Request {
                        method,
                        path,
                        authorization: Some(bearer.as_bytes()),
                        api_key: Some(b"\xff"),
                        content_type: Some(b"application/json; \xff"),
                        body,
                    });
                    assert!(response.status >= 400, "{method} {path}");
                }
            }
        }
    }
}
