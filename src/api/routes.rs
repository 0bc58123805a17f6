//! Routing: which call a path names, and the methods it answers.

use crate::model::rules;
use crate::model::subscription;

/// A known path; ids are already checked against `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route<'p> {
    Subscriptions,
    Subscription(&'p str),
    RotateSecret(&'p str),
    Test(&'p str),
    Deliveries(&'p str),
    Retry(&'p str),
    /// `POST .../subscriptions/{id}/recover`.
    Recover(&'p str),
    EventTypes,
    /// This deployment's OpenAPI document, answered without authentication.
    OpenApi,
}

impl Route<'_> {
    /// The methods the path answers, as sent in `Allow`.
    pub(super) fn allow(self) -> &'static str {
        match self {
            Route::Subscriptions => "GET, POST",
            Route::Subscription(_) => "GET, PATCH, DELETE",
            Route::RotateSecret(_) | Route::Test(_) | Route::Retry(_) | Route::Recover(_) => "POST",
            Route::Deliveries(_) | Route::EventTypes => "GET",
            Route::OpenApi => "GET, HEAD",
        }
    }

    pub(super) fn allows(self, method: &str) -> bool {
        self.allow().split(", ").any(|m| m == method)
    }
}

pub(super) fn query_of(path: &str) -> &str {
    let no_fragment = path.split('#').next().unwrap_or(path);
    no_fragment.split_once('?').map_or("", |(_, q)| q)
}

/// The route for a path under `prefix`, or None (404). One trailing `/` is tolerated.
pub(super) fn route<'p>(prefix: &str, path: &'p str) -> Option<Route<'p>> {
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
        [Some("subscriptions"), Some(id), Some("recover"), None] => Route::Recover(id),
        [Some("deliveries"), Some(id), Some("retry"), None] => Route::Retry(id),
        [Some("event-types"), None, ..] => Route::EventTypes,
        [Some("openapi.json"), None, ..] => Route::OpenApi,
        _ => return None,
    };
    route_id(found)
        .is_none_or(subscription::is_valid_id)
        .then_some(found)
}

pub(super) fn route_id(route: Route<'_>) -> Option<&str> {
    match route {
        Route::Subscription(id)
        | Route::RotateSecret(id)
        | Route::Test(id)
        | Route::Deliveries(id)
        | Route::Retry(id)
        | Route::Recover(id) => Some(id),
        Route::Subscriptions | Route::EventTypes | Route::OpenApi => None,
    }
}
