//! Authentication: the consumer a call comes from.

use super::responses::error;
use super::{Request, Response};
use crate::config::Config;
use crate::model::identity;
use crate::model::identity::Credentials;
use crate::model::subscription::Subscription;

/// The authenticated consumer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller<'c> {
    pub(super) consumer: &'c str,
    /// Whether static subscriptions are the caller's to see: not when identities come from
    /// `api.consumer_header`. Those are an identity provider's subjects, which the operator
    /// does not choose, so one could be named like a static subscription's consumer (an
    /// audit trail's, say) and would otherwise read or switch it off.
    pub(super) sees_static: bool,
}

impl Caller<'_> {
    pub(super) fn owns(self, sub: &Subscription) -> bool {
        sub.consumer == self.consumer && (self.sees_static || !sub.is_static)
    }
}

/// The consumer the request's credentials name (see [`identity::identify`]).
pub(super) fn authenticate<'a>(request: &Request<'a>, config: &'a Config) -> Option<&'a str> {
    let credentials = Credentials {
        authorization: request.authorization,
        api_key: request.api_key,
        consumer_header: request.consumer_header,
    };
    identity::identify(config.api.identification(), &credentials)
}

pub(super) fn unauthorized(config: &Config) -> Response {
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
