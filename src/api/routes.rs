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
    /// `admin/consumers/{consumer}/portal-sessions` (operators only); the consumer as written
    /// in the path (percent-encoded).
    PortalSessions(&'p str),
}

/// Which API a path is under: the consumers' or the operators' (`<prefix>/admin/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Consumer,
    Admin,
}

impl Route<'_> {
    /// The methods the path answers under `scope`, as sent in `Allow`.
    pub(super) fn allow(self, scope: Scope) -> &'static str {
        match self {
            Route::Subscriptions if scope == Scope::Admin => "GET",
            Route::Subscriptions => "GET, POST",
            Route::PortalSessions(_) => "POST, DELETE",
            Route::Subscription(_) => "GET, PATCH, DELETE",
            Route::RotateSecret(_) | Route::Test(_) | Route::Retry(_) | Route::Recover(_) => "POST",
            Route::Deliveries(_) | Route::EventTypes => "GET",
            Route::OpenApi => "GET, HEAD",
        }
    }

    pub(super) fn allows(self, scope: Scope, method: &str) -> bool {
        self.allow(scope).split(", ").any(|m| m == method)
    }

    /// Whether the route exists under `scope`. The operator API is the consumer API for any
    /// consumer, minus what is the consumer's alone (creating, rotating a secret; the catalog
    /// and the API description are public to consumers anyway), plus portal sessions.
    fn under(self, scope: Scope) -> bool {
        match self {
            Route::PortalSessions(_) => scope == Scope::Admin,
            Route::RotateSecret(_) | Route::EventTypes | Route::OpenApi => scope == Scope::Consumer,
            _ => true,
        }
    }
}

pub(super) fn query_of(path: &str) -> &str {
    let no_fragment = path.split('#').next().unwrap_or(path);
    no_fragment.split_once('?').map_or("", |(_, q)| q)
}

/// The route for a path under `prefix`, and its scope, or None (404). One trailing `/` is
/// tolerated.
pub(super) fn route<'p>(prefix: &str, path: &'p str) -> Option<(Scope, Route<'p>)> {
    let rest = rules::strip_query(path)
        .strip_prefix(prefix)?
        .strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (scope, rest) = match rest.strip_prefix("admin/") {
        Some(rest) => (Scope::Admin, rest),
        None => (Scope::Consumer, rest),
    };
    let found = route_in(rest)?;
    found.under(scope).then_some((scope, found))
}

fn route_in(rest: &str) -> Option<Route<'_>> {
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
        [Some("consumers"), Some(consumer), Some("portal-sessions"), None]
            if !consumer.is_empty() =>
        {
            Route::PortalSessions(consumer)
        }
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
        Route::Subscriptions | Route::EventTypes | Route::OpenApi | Route::PortalSessions(_) => {
            None
        }
    }
}
