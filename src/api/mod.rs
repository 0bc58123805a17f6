//! The subscription API served by the filter under `api.path_prefix`.
//!
//! Pure logic: the filter hands over the request (headers it needs and the whole body) and sends
//! back the [`Response`]; nothing here calls the host, so every answer is unit-tested natively.
//!
//! Order of checks, so that an unauthenticated caller learns nothing beyond the path layout:
//! unknown path or malformed id (404) → authentication (401) → method (405) → body size (413) →
//! media type (415) → JSON shape (400) → field validation (422) → ownership (404) → state (409).
//! Every check runs before any write, so a refused request changes nothing.
//!
//! May use: `config`, `fleet`, `model`, `registry`, `support`.

mod admin;
mod auth;
mod fields;
mod handlers;
pub mod openapi;
mod page;
mod recover;
mod responses;
mod routes;

use crate::config::Config;
use crate::fleet::commit::Write;
use crate::model::queue::QueueMessage;
use crate::model::rules;
use crate::registry::store::KvStore;
use crate::registry::Registry;
use crate::registry::RegistryError;
use crate::support::ids::RandomSource;
use auth::{authenticate, Caller, Who};
pub use handlers::delivery_log;
use handlers::{
    create, delete, deliveries, event_types, get, list, patch, retry, retry_stored, rotate_secret,
    send_test,
};
pub use page::serve_page;
use recover::{recover, recover_taken as taken_answer};
use responses::{error, method_not_allowed, registry_error, subscription_not_found};
use routes::{query_of, route, Route, Scope};

/// An API request as the filter saw it. `path` is the full `:path`, query string included.
#[derive(Debug, Clone, Copy, Default)]
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
    /// The raw value of the `api.operator_header` header (None when not configured).
    pub operator_header: Option<&'a [u8]>,
    /// `x-webhooks-session`: a portal session token.
    pub session: Option<&'a [u8]>,
    /// `origin`, `sec-fetch-site` and `:authority`: the same-origin check of writes a gateway
    /// authenticated by cookie (`api.consumer_header`).
    pub origin: Option<&'a [u8]>,
    pub sec_fetch_site: Option<&'a [u8]>,
    pub authority: Option<&'a [u8]>,
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

/// How a call is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Send this now.
    Now(Response),
    /// Fleet mode: the call is accepted once etcd has `write`; then send `response`.
    Commit {
        write: Box<Write>,
        response: Response,
    },
    /// Fleet mode: a retry of a message this replica does not know; read its kept copy from
    /// etcd (`crate::fleet::dead`) and answer with [`retry_kept`].
    FindKept { webhook_id: String },
    /// Fleet mode: the delivery log of this subscription (the caller's, checked) is read from
    /// etcd, where every replica's attempts are (`crate::fleet::log`); answer with
    /// [`delivery_log`].
    ReadLog { subscription_id: String },
    /// Fleet mode: a recover; take the subscription's kept copies detected since `since_ms`
    /// from etcd (`crate::fleet::recover`) and answer with [`recover_taken`].
    TakeKept {
        subscription_id: String,
        since_ms: u64,
    },
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

type Outcome = Result<Response, Response>;
/// A write's outcome: its answer, or a refusal.
type Written = Result<Answer, Response>;

/// Whether `path` (query stripped) is `prefix` or under `prefix/`: these requests are answered
/// by the filter and never reach the upstream.
pub fn is_api_path(prefix: &str, path: &str) -> bool {
    let path = rules::strip_query(path);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Answers one API call. Never panics; every outcome is a JSON answer (204 has no body). In
/// fleet mode writes are checked against the cache but not made: they come back as
/// [`Answer::Commit`].
pub fn handle<S: KvStore>(request: &Request<'_>, cx: &mut Context<'_, S>) -> Answer {
    match dispatch(request, cx) {
        Ok(answer) => answer,
        Err(response) => Answer::Now(response),
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

/// The answer to a create over the per-consumer limit (fleet mode: etcd's count says so), the
/// same as without fleet mode.
pub fn limit_reached(config: &Config, count: u64) -> Response {
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    registry_error(RegistryError::LimitReached(count), config)
}

/// The answer to a create past `api.max_subscriptions` (fleet mode: etcd's count says so),
/// the same as without fleet mode.
pub fn registry_full(config: &Config, count: u64) -> Response {
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    registry_error(RegistryError::RegistryFull(count), config)
}

/// The answer for a subscription that does not exist (fleet mode: etcd has none).
pub fn not_found() -> Response {
    subscription_not_found()
}

/// 503 for a write etcd did not confirm (nothing was written). A fixed text: etcd's own
/// (key names, the prefix) goes to the log, never to the API's callers.
pub fn etcd_unavailable() -> Response {
    let message =
        "the subscription store did not confirm the write, nothing was changed; try again";
    let mut response = error(503, "unavailable", message);
    response.headers.push(("retry-after", "1".to_string()));
    response
}

/// 503 in fleet mode until the replica's first read of etcd's registry is applied: its cache is
/// empty or partial, and a 404 or an empty list would be false.
pub fn registry_not_read() -> Response {
    let message = "this replica has not read the subscription registry from etcd yet; try again";
    let mut response = error(503, "unavailable", message);
    response.headers.push(("retry-after", "1".to_string()));
    response
}

/// 503 for a retry of a message this replica does not know whose kept copy etcd could not be
/// asked for. A fixed text, as [`etcd_unavailable`]'s.
pub fn lookup_unavailable() -> Response {
    let message =
        "the message is not in this replica's logs and its kept copy could not be read; try again";
    let mut response = error(503, "unavailable", message);
    response.headers.push(("retry-after", "1".to_string()));
    response
}

/// The answer a call gets before its body is read, if any: 404 for an unknown path, 401
/// without valid credentials, 403 for credentials of the other API, a read-only session's
/// write or a cross-origin write, 405 for a method the path does not answer. The filter asks
/// at request headers, so an unauthenticated client never gets a body buffered. `None`: read
/// the body and [`handle`] the call (`request.body` is not looked at here).
pub fn answer_before_body<S: KvStore>(
    request: &Request<'_>,
    cx: &mut Context<'_, S>,
) -> Option<Response> {
    check_headers(request, cx).err()
}

/// The scope, route and caller of a call, from its headers alone.
fn check_headers<'p, S: KvStore>(
    request: &Request<'p>,
    cx: &mut Context<'_, S>,
) -> Result<(Scope, Route<'p>, Who), Response> {
    let config = cx.config;
    let (scope, route) = route(&config.api.path_prefix, request.path)
        .ok_or_else(|| error(404, "not_found", "no such path"))?;
    if route == Route::OpenApi {
        // Public, like any API description: answered here, before authentication and body.
        return Err(openapi::answer(request.method, config));
    }
    let who = authenticate(request, cx, scope == Scope::Admin)?;
    if !route.allows(scope, request.method) {
        return Err(method_not_allowed(route.allow(scope)));
    }
    let write = admin::is_write(request.method);
    if write && who.read_only {
        return Err(auth::read_only());
    }
    if write && who.by_header && !auth::same_origin(request) {
        return Err(auth::cross_origin());
    }
    Ok((scope, route, who))
}

/// Answers a retry that [`handle`] sent to etcd ([`Answer::FindKept`]) with etcd's kept copy of
/// the message (`None`: etcd has none). The caller is checked again, as for any call.
pub fn retry_kept<S: KvStore>(
    request: &Request<'_>,
    cx: &mut Context<'_, S>,
    kept: Option<&[u8]>,
) -> Response {
    let answer = check_headers(request, cx).and_then(|(_, route, who)| match route {
        Route::Retry(webhook_id) => {
            let caller = who.caller(cx.config);
            retry_stored(cx, caller, webhook_id, kept)
        }
        _ => Err(error(404, "not_found", "no such path")),
    });
    answer.unwrap_or_else(|response| response)
}

/// Answers a recover that [`handle`] sent to etcd ([`Answer::TakeKept`]) once its copies were
/// taken (`taken`, in detection order). The caller was checked and counted when it was sent.
pub fn recover_taken<S: KvStore>(
    cx: &mut Context<'_, S>,
    subscription_id: &str,
    since_ms: u64,
    taken: Vec<crate::fleet::recover::Taken>,
) -> Response {
    taken_answer(cx, subscription_id, since_ms, taken).unwrap_or_else(|response| response)
}

/// 503 for a recover whose kept copies etcd could not be asked for (nothing was taken).
pub fn recover_unavailable() -> Response {
    let message = "the kept copies of the subscription's messages could not be read; try again";
    let mut response = error(503, "unavailable", message);
    response.headers.push(("retry-after", "1".to_string()));
    response
}

fn dispatch<S: KvStore>(request: &Request<'_>, cx: &mut Context<'_, S>) -> Written {
    let config = cx.config;
    let (scope, route, who) = check_headers(request, cx)?;
    let caller = who.caller(config);
    let answer = route_call(request, cx, scope, route, caller);
    if let Some(operator) = caller.operator.filter(|_| admin::is_write(request.method)) {
        let shown = match &answer {
            Ok(answer) => answer,
            Err(response) => &Answer::Now(response.clone()),
        };
        admin::log_write(operator, request, shown);
    }
    answer
}

/// Runs the handler of an authenticated call. Operators run the consumers' handlers with an
/// operator [`Caller`], who owns every subscription: any call the consumer API gains, the
/// operator API has too (unless [`Route`] keeps it for consumers).
fn route_call<S: KvStore>(
    request: &Request<'_>,
    cx: &mut Context<'_, S>,
    scope: Scope,
    route: Route<'_>,
    caller: Caller<'_>,
) -> Written {
    let config = cx.config;
    if request.body.len() > config.api.max_body_bytes {
        return Err(too_large(config.api.max_body_bytes));
    }
    // The method is one the route allows, so a catch-all arm is that route's remaining method.
    let now = match (route, request.method) {
        (Route::Subscriptions, "GET") if scope == Scope::Admin => {
            admin::list_all(cx, caller, query_of(request.path))
        }
        (Route::Subscriptions, "GET") => list(cx, caller, query_of(request.path)),
        (Route::PortalSessions(consumer), "POST") => admin::mint_session(cx, consumer, request),
        (Route::PortalSessions(consumer), _) => return admin::revoke_sessions(cx, consumer),
        (Route::Subscriptions, _) => return create(cx, caller, request),
        (Route::Subscription(id), "GET") => get(cx, caller, id),
        (Route::Subscription(id), "PATCH") => return patch(cx, caller, id, request),
        (Route::Subscription(id), _) => return delete(cx, caller, id),
        (Route::RotateSecret(id), _) => return rotate_secret(cx, caller, id),
        (Route::Test(id), _) => send_test(cx, caller, id),
        (Route::Deliveries(id), _) => return deliveries(cx, caller, id),
        (Route::Retry(webhook_id), _) => return retry(cx, caller, webhook_id),
        (Route::Recover(id), _) => return recover(cx, caller, id, request),
        (Route::EventTypes, _) => event_types(config),
        (Route::OpenApi, _) => Ok(openapi::answer(request.method, config)),
    };
    now.map(Answer::Now)
}

#[cfg(test)]
mod tests;
