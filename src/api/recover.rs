//! `POST .../subscriptions/{id}/recover {"since"}`: every failed, exhausted or dropped message
//! of the subscription detected since then that is still kept is sent again, same webhook-ids,
//! in detection order. The answer counts them, and those no longer kept, from the recover index
//! the dispatcher keeps in the store ([`crate::registry::kept`], as of its last tick); the
//! dispatcher then sends what it still keeps ([`QueueMessage::Recover`]).

use super::auth::Caller;
use super::fields::{missing, parse_object, string_field};
use super::handlers::{owned, subscription_disabled, within_rate_limit};
use super::responses::{error, json_response};
use super::{Context, Outcome, Request};
use crate::model::queue::QueueMessage;
use crate::registry::kept;
use crate::registry::store::KvStore;
use crate::support::time::parse_rfc3339_millis;
use serde::Serialize;

/// The fields a recover takes.
pub(super) const RECOVER_FIELDS: &[&str] = &["since"];

/// The answer: messages sent again, and messages detected since then no longer kept.
#[derive(Serialize)]
struct Recovered {
    count: u64,
    not_kept: u64,
}

/// Checks in the API's order (body, fields, ownership, state, rate limit), then answers 202
/// `{"count", "not_kept"}` and hands the recover to the dispatcher when there is anything to
/// send. Rate-limited per consumer like `test` and `retry`.
pub(super) fn recover<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
    request: &Request<'_>,
) -> Outcome {
    let map = parse_object(request, RECOVER_FIELDS)?;
    let since = string_field(&map, "since")?.ok_or_else(|| missing("since"))?;
    let since_ms = parse_rfc3339_millis(since)
        .map_err(|why| error(422, "invalid_since", format!("since {why}")))?;
    let sub = owned(cx, caller, id)?;
    if !sub.is_active() {
        return Err(subscription_disabled());
    }
    within_rate_limit(cx, caller)?;
    let (count, not_kept) = kept::read(cx.store, &sub.id).count_since(since_ms);
    if count > 0 {
        let message = QueueMessage::Recover {
            subscription_id: sub.id,
            since_ms,
        };
        if !(cx.enqueue)(message) {
            let mut response = error(
                503,
                "queue_unavailable",
                "the delivery queue is unavailable; try again",
            );
            response.headers.push(("retry-after", "1".to_string()));
            return Err(response);
        }
    }
    Ok(json_response(202, &Recovered { count, not_kept }))
}
