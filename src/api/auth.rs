//! Authentication: who a call comes from. A consumer (its API key, or `api.consumer_header`),
//! a portal session acting as one consumer (`x-webhooks-session`, and then nothing else counts),
//! or an operator (`api.operator_keys`, `api.operator_header`) under `<prefix>/admin/` only.

use super::responses::error;
use super::{Context, Request, Response};
use crate::config::Config;
use crate::model::identity::{self, consumer_name, Credentials, OperatorKey};
use crate::model::session;
use crate::model::subscription::Subscription;
use crate::registry::portal;
use crate::registry::store::KvStore;
use sha2::{Digest, Sha256};

/// Who is calling, as the credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Who {
    /// The consumer acted as; empty for an operator.
    pub(super) consumer: String,
    /// An operator's name (admin routes only).
    pub(super) operator: Option<String>,
    /// A read-only portal session.
    pub(super) read_only: bool,
    /// Named by `api.consumer_header` or `api.operator_header` (so a browser may be calling
    /// with a cookie the gateway checks).
    pub(super) by_header: bool,
}

impl Who {
    pub(super) fn caller(&self, config: &Config) -> Caller<'_> {
        Caller {
            consumer: &self.consumer,
            sees_static: self.operator.is_some() || config.api.consumer_header.is_none(),
            operator: self.operator.as_deref(),
        }
    }
}

/// The authenticated caller the handlers act for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller<'c> {
    pub(super) consumer: &'c str,
    /// Whether static subscriptions are the caller's to see: not when identities come from
    /// `api.consumer_header`. Those are an identity provider's subjects, which the operator
    /// does not choose, so one could be named like a static subscription's consumer (an
    /// audit trail's, say) and would otherwise read or switch it off.
    pub(super) sees_static: bool,
    /// An operator, who acts on every consumer's subscriptions.
    pub(super) operator: Option<&'c str>,
}

impl Caller<'_> {
    pub(super) fn owns(self, sub: &Subscription) -> bool {
        self.operator.is_some()
            || (sub.consumer == self.consumer && (self.sees_static || !sub.is_static))
    }

    /// The name the test/retry rate limit counts this caller under: an operator's cannot be a
    /// consumer's (consumer names have no space).
    pub(super) fn rate_key(self) -> String {
        match self.operator {
            Some(operator) => format!("operator {operator}"),
            None => self.consumer.to_string(),
        }
    }
}

/// The caller of a call to `admin` (operator) or consumer routes; `Err` is its 401 or 403.
pub(super) fn authenticate<S: KvStore>(
    request: &Request<'_>,
    cx: &mut Context<'_, S>,
    admin: bool,
) -> Result<Who, Response> {
    let config = cx.config;
    // An empty header is no session (a page in cookie mode may send it so).
    if let Some(token) = request.session.filter(|t| !t.trim_ascii().is_empty()) {
        let who = session_caller(token, cx)?;
        return match admin {
            true => Err(forbidden(
                "a portal session cannot use the operator API; use an operator key",
            )),
            false => Ok(who),
        };
    }
    let consumer = identity::identify(config.api.identification(), &credentials(request));
    let operator = operator_of(request, config);
    match (admin, consumer, operator) {
        (true, _, Some((operator, by_header))) => Ok(Who {
            consumer: String::new(),
            operator: Some(operator),
            read_only: false,
            by_header,
        }),
        (true, Some(_), None) => Err(forbidden(
            "consumer credentials cannot use the operator API; use an operator key",
        )),
        (false, Some(consumer), _) => Ok(Who {
            consumer: consumer.to_string(),
            operator: None,
            read_only: false,
            by_header: config.api.consumer_header.is_some(),
        }),
        (false, None, Some(_)) => Err(forbidden(format!(
            "operator credentials work only under {}/admin/",
            config.api.path_prefix
        ))),
        (_, None, None) => Err(unauthorized(config, admin)),
    }
}

fn credentials<'a>(request: &Request<'a>) -> Credentials<'a> {
    Credentials {
        authorization: request.authorization,
        api_key: request.api_key,
        consumer_header: request.consumer_header,
    }
}

/// The consumer a portal session acts as: 401 with `session_invalid`, `session_expired` or
/// `session_revoked` when it does not.
fn session_caller<S: KvStore>(token: &[u8], cx: &mut Context<'_, S>) -> Result<Who, Response> {
    let refused = |refusal: session::Refusal| {
        let message = match refusal {
            session::Refusal::Invalid => "the portal session is not valid (ask for a new link)",
            session::Refusal::Expired => "the portal session has expired (ask for a new link)",
            session::Refusal::Revoked => "the portal session was revoked (ask for a new link)",
        };
        error(401, refusal.code(), message)
    };
    let portal = cx
        .config
        .api
        .portal
        .as_ref()
        .ok_or_else(|| refused(session::Refusal::Invalid))?;
    let store = cx.store;
    let key = portal::session_key(store, &portal.session_key, cx.rng).ok_or_else(|| {
        let mut response = error(
            503,
            "unavailable",
            "sessions cannot be checked now; try again",
        );
        response.headers.push(("retry-after", "1".to_string()));
        response
    })?;
    let claims = session::verify(&key, token, cx.now_ms, |consumer| {
        portal::revoked_up_to(store, consumer)
    })
    .map_err(refused)?;
    Ok(Who {
        consumer: claims.consumer,
        operator: None,
        read_only: claims.read_only,
        by_header: false,
    })
}

/// The operator an operator key or `api.operator_header` names, and whether the header did.
/// Every key is compared, in constant time and without stopping at a match, as for consumers'
/// keys.
fn operator_of(request: &Request<'_>, config: &Config) -> Option<(String, bool)> {
    let by_key = identity::presented_key(&credentials(request)).and_then(|presented| {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found: Option<&OperatorKey> = None;
        for key in &config.api.operator_keys {
            if identity::same_digest(&key.sha256, &digest) {
                found = Some(key);
            }
        }
        found.map(|k| (k.operator.clone(), false))
    });
    by_key.or_else(|| {
        config.api.operator_header.as_ref()?;
        request
            .operator_header
            .and_then(consumer_name)
            .map(|name| (name.to_string(), true))
    })
}

pub(super) fn forbidden(message: impl Into<String>) -> Response {
    error(403, "forbidden", message)
}

pub(super) fn unauthorized(config: &Config, admin: bool) -> Response {
    let message = match (&config.api.consumer_header, admin) {
        (_, true) => {
            let header = config.api.operator_header.as_deref().unwrap_or("");
            match header {
                "" => {
                    "an operator key is required (Authorization: Bearer <key> or X-API-Key: <key>)"
                        .to_string()
                }
                _ => format!("an operator key or a valid {header} header is required"),
            }
        }
        (Some(header), false) => {
            format!("authentication is required (no valid {header} header was set)")
        }
        (None, false) => {
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)".into()
        }
    };
    let mut response = error(401, "unauthorized", message);
    response
        .headers
        .push(("www-authenticate", "Bearer realm=\"webhooks\"".to_string()));
    response
}

/// With `api.consumer_header` (or `api.operator_header`) a browser may be authenticated by a
/// cookie the gateway checks,
/// which any site could make it send: a write without a session is accepted only when the
/// browser says it comes from the same origin. `Sec-Fetch-Site` (sent by current browsers)
/// must be `same-origin` or `none`; without it, an `Origin` must name the request's own
/// host (`:authority`). A request with neither is not a browser's cross-site request (browsers
/// send `Origin` on every cross-origin write) and is accepted, for server-to-server clients.
pub(super) fn same_origin(request: &Request<'_>) -> bool {
    if let Some(site) = request.sec_fetch_site {
        return matches!(site.trim_ascii(), b"same-origin" | b"none");
    }
    let Some(origin) = request.origin else {
        return true;
    };
    let host = origin
        .trim_ascii()
        .strip_prefix(b"https://")
        .or_else(|| origin.trim_ascii().strip_prefix(b"http://"));
    match (host, request.authority) {
        (Some(host), Some(authority)) => host.eq_ignore_ascii_case(authority.trim_ascii()),
        _ => false,
    }
}

pub(super) fn cross_origin() -> Response {
    error(
        403,
        "cross_origin",
        "writes authenticated by the gateway are accepted only from this API's own origin",
    )
}

pub(super) fn read_only() -> Response {
    error(
        403,
        "read_only",
        "this portal session is read-only; ask for a session that may make changes",
    )
}
