//! `POST .../subscriptions/{id}/recover {"since"}`: every failed, exhausted or dropped message
//! of the subscription detected since then that is still kept is sent again, same webhook-ids,
//! in detection order. The answer counts them, and those no longer kept, from the recover index
//! the dispatcher keeps in the store ([`crate::registry::kept`], as of its last tick); the
//! dispatcher then sends what it still keeps ([`QueueMessage::Recover`]). In fleet mode the
//! copies every replica kept in etcd are taken there and sent, each once across the fleet
//! ([`recover_taken`]).

use super::auth::Caller;
use super::fields::{missing, parse_object, string_field};
use super::handlers::{owned, subscription_disabled, within_rate_limit};
use super::responses::{error, json_response};
use super::{Answer, Context, Outcome, Request, Response, Written};
use crate::fleet::recover::Taken;
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
/// send. Rate-limited per consumer like `test` and `retry`. In fleet mode the kept copies are
/// in etcd, whichever replica kept them: the filter takes them there
/// ([`crate::fleet::recover`]) and answers with [`recover_taken`].
pub(super) fn recover<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
    request: &Request<'_>,
) -> Written {
    let map = parse_object(request, RECOVER_FIELDS)?;
    let since = string_field(&map, "since")?.ok_or_else(|| missing("since"))?;
    let since_ms = parse_rfc3339_millis(since)
        .map_err(|why| error(422, "invalid_since", format!("since {why}")))?;
    let sub = owned(cx, caller, id)?;
    if !sub.is_active() {
        return Err(subscription_disabled());
    }
    // Counted before etcd is asked, so recovers cannot flood etcd either.
    within_rate_limit(cx, caller)?;
    if cx.config.fleet.is_some() {
        return Ok(Answer::TakeKept {
            subscription_id: sub.id,
            since_ms,
        });
    }
    let (count, not_kept) = kept::read(cx.store, &sub.id).count_since(since_ms);
    if count > 0 {
        let message = QueueMessage::Recover {
            subscription_id: sub.id,
            since_ms,
        };
        if !(cx.enqueue)(message) {
            return Err(queue_unavailable());
        }
    }
    Ok(Answer::Now(json_response(
        202,
        &Recovered { count, not_kept },
    )))
}

/// Fleet mode: the answer once the copies were taken from etcd (`taken`, in detection order).
/// Each is handed to the dispatcher as a retry of its kept copy, so it is journaled again and
/// sent with its webhook-id. `count` is what was handed over; `not_kept` what this replica's
/// recover index counts as let go from its own replay store since then (other replicas' and
/// etcd's trim of `P/dead/` are not counted).
pub(super) fn recover_taken<S: KvStore>(
    cx: &mut Context<'_, S>,
    subscription_id: &str,
    since_ms: u64,
    taken: Vec<Taken>,
) -> Outcome {
    let mut count = 0;
    for Taken { webhook_id, stored } in taken {
        let message = QueueMessage::Replay {
            webhook_id: webhook_id.clone(),
            kept: stored,
        };
        if !(cx.enqueue)(message) {
            // Already out of etcd: this copy is no longer kept anywhere.
            log::error!("proxy-webhooks: recover of {subscription_id}: the queue refused webhook-id {webhook_id}, taken from etcd; it is lost to replay");
            continue;
        }
        count += 1;
    }
    let (_, not_kept) = kept::read(cx.store, subscription_id).count_since(since_ms);
    Ok(json_response(202, &Recovered { count, not_kept }))
}

fn queue_unavailable() -> Response {
    let mut response = error(
        503,
        "queue_unavailable",
        "the delivery queue is unavailable; try again",
    );
    response.headers.push(("retry-after", "1".to_string()));
    response
}
