//! One handler per call, run after the route, the caller and the method are checked.

use super::admin::{read_view, ReadView};
use super::auth::Caller;
use super::fields::{missing, parse_fields, parse_page, Fields};
use super::responses::Shown;
use super::responses::{
    base_headers, error, json_response, no_randomness, registry_error, secret_unreadable,
    static_subscription, subscription_not_found, view,
};
use super::{
    Answer, Context, Outcome, Request, Response, Written, MAX_SECRETS, ROTATION_OVERLAP_MS,
};
use crate::config::Config;
use crate::fleet::commit::Write;
use crate::fleet::vault::has_sealed_values;
use crate::model::event;
use crate::model::queue::QueueMessage;
use crate::model::signing::Secret;
use crate::model::subscription::{Scheme, SigningSecret, Status, Subscription, TEST_EVENT_TYPE};
use crate::registry::attempts;
use crate::registry::ratelimit;
use crate::registry::store::KvStore;
use crate::support::ids::random_id;
use crate::support::ids::{RandomSource, RandomUnavailable};
use serde::Serialize;
use serde_json::Value;

pub(super) const SUBSCRIPTION_ID_LEN: usize = 24;
pub(super) const CREATE_FIELDS: &[&str] = &[
    "url",
    "events",
    "description",
    "ordering",
    "signature_scheme",
    "headers",
];
/// Not `ordering` nor `signature_scheme`: they are fixed at create (so messages waiting under
/// one ordering are never reordered under another; a PATCH naming one is refused 422
/// `unknown_field`). `headers` is write-only: replaced whole.
pub(super) const PATCH_FIELDS: &[&str] = &["url", "events", "description", "status", "headers"];

/// Reads only the records of the page (and one more, for `has_more`): a consumer with thousands
/// of subscriptions pays for the page it asks for, not for all of them.
///
/// `after` is a cursor, never refused: the list is in creation order, so an id that is not one
/// of the caller's (deleted meanwhile, another consumer's, never made) has no place in it and
/// gives an empty last page, the same whoever owns it.
pub(super) fn list<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, query: &str) -> Outcome {
    let page = parse_page(query)?;
    let ids = cx.registry.ids_for_consumer(caller.consumer);
    let start = match page.after {
        None => 0,
        Some(after) => ids
            .iter()
            .position(|id| id == after)
            .map_or(ids.len(), |i| i + 1),
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
    let data: Vec<ReadView<'_>> = found.iter().map(|s| read_view(cx, caller, s)).collect();
    Ok(json_response(200, &Page { data, has_more }))
}

pub(super) fn create<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    request: &Request<'_>,
) -> Written {
    let config = cx.config;
    let fields = parse_fields(config, request, CREATE_FIELDS)?;
    let url = fields.url.ok_or_else(|| missing("url"))?;
    let events = fields.events.ok_or_else(|| missing("events"))?;
    let scheme = fields.signature_scheme.unwrap_or_default();
    let secrets = generate_secrets(cx.rng, scheme).map_err(no_randomness)?;
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
        secrets: secrets
            .into_iter()
            .map(|secret| SigningSecret {
                secret,
                expires_at_ms: None,
            })
            .collect(),
        is_static: false,
        headers: fields.headers.unwrap_or_default(),
        privileged: false,
        ordering: fields.ordering.unwrap_or_default(),
        version: 1,
    };
    let mut response = json_response(201, &view(&sub, Shown::Created));
    let location = format!("{}/subscriptions/{}", config.api.path_prefix, sub.id);
    response.headers.push(("location", location));
    let limit = config.api.max_subscriptions_per_consumer;
    let cap = config.api.max_subscriptions;
    if config.fleet.is_some() {
        let write = Write::Create { sub, limit, cap };
        return Ok(Answer::Commit {
            write: Box::new(write),
            response,
        });
    }
    cx.registry
        .insert_within(&sub, Some(limit), Some(cap))
        .map_err(|e| registry_error(e, config))?;
    Ok(Answer::Now(response))
}

/// Fleet mode: `current` as `change` leaves it, to be written to etcd (the cache gets it once
/// etcd has it), with its version moved as [`crate::registry::Registry::update`] moves it.
fn replace(
    current: &Subscription,
    now_ms: u64,
    change: impl FnOnce(&mut Subscription),
) -> (Write, Subscription) {
    let mut after = current.clone();
    change(&mut after);
    after.updated_at_ms = now_ms;
    after.version = current.version.saturating_add(1);
    let write = Write::Replace {
        after: after.clone(),
        before_version: current.version,
    };
    (write, after)
}

/// The caller's subscription, or the same 404 as for an id that does not exist.
pub(super) fn owned<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
) -> Result<Subscription, Response> {
    let sub = cx
        .registry
        .get(id)
        .map(|(sub, _)| sub)
        .filter(|sub| caller.owns(sub))
        .ok_or_else(subscription_not_found)?;
    // Fleet mode: a record whose secrets no configured key opened is kept sealed; nothing is
    // answered from it rather than something wrong.
    if has_sealed_values(&sub) {
        return Err(secret_unreadable());
    }
    Ok(sub)
}

/// The caller's subscription that the API may change (not static).
pub(super) fn changeable<S: KvStore>(
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

pub(super) fn get<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Outcome {
    let sub = owned(cx, caller, id)?;
    Ok(json_response(200, &read_view(cx, caller, &sub)))
}

/// Runs `change` on the caller's subscription with compare-and-swap; ownership and (unless
/// `static_allowed`) the static flag are checked again on the record actually written.
pub(super) fn update_owned<S: KvStore>(
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

pub(super) fn patch<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
    request: &Request<'_>,
) -> Written {
    let fields = parse_fields(cx.config, request, PATCH_FIELDS)?;
    // A static subscription's definition belongs to the configuration, but its status is
    // operational (a receiver's 410 or long failure disables it): its owner may switch it.
    let status_only = fields.url.is_none()
        && fields.events.is_none()
        && fields.description.is_none()
        && fields.headers.is_none();
    let current = owned(cx, caller, id)?;
    if current.is_static && !status_only {
        return Err(static_subscription());
    }
    if fields.is_empty() {
        return Ok(Answer::Now(json_response(
            200,
            &view(&current, Shown::Public),
        )));
    }
    if cx.config.fleet.is_some() {
        let (mut write, after) = replace(&current, cx.now_ms, |sub| apply(sub, &fields));
        if current.is_static {
            // Only its status goes to etcd; the rest is the configuration's.
            write = Write::Static {
                after: after.clone(),
            };
        }
        let response = json_response(200, &view(&after, Shown::Public));
        return Ok(Answer::Commit {
            write: Box::new(write),
            response,
        });
    }
    let updated = update_owned(cx, caller, id, status_only, |sub| apply(sub, &fields))?;
    Ok(Answer::Now(json_response(
        200,
        &view(&updated, Shown::Public),
    )))
}

/// Applies a patch. Enabling clears the reason; disabling an active subscription records
/// "manual", while one already disabled keeps the reason it has ("gone", "failing").
pub(super) fn apply(sub: &mut Subscription, fields: &Fields) {
    if let Some(url) = &fields.url {
        sub.url.clone_from(url);
    }
    if let Some(events) = &fields.events {
        sub.events.clone_from(events);
    }
    if let Some(description) = &fields.description {
        sub.description.clone_from(description);
    }
    // Write-only: replaced whole, never read back (an empty object removes them all).
    if let Some(headers) = &fields.headers {
        sub.headers.clone_from(headers);
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

pub(super) fn delete<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Written {
    let current = changeable(cx, caller, id)?;
    let response = Response {
        status: 204,
        headers: base_headers(),
        body: Vec::new(),
    };
    if cx.config.fleet.is_some() {
        let write = Write::Delete {
            id: current.id,
            consumer: current.consumer,
            before_version: current.version,
        };
        return Ok(Answer::Commit {
            write: Box::new(write),
            response,
        });
    }
    cx.registry
        .delete(id)
        .map_err(|e| registry_error(e, cx.config))?;
    Ok(Answer::Now(response))
}

pub(super) fn rotate_secret<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
) -> Written {
    let current = changeable(cx, caller, id)?;
    let fresh = generate_secrets(cx.rng, current.signature_scheme()).map_err(no_randomness)?;
    let now_ms = cx.now_ms;
    if cx.config.fleet.is_some() {
        let (write, after) = replace(&current, now_ms, |sub| rotate(sub, &fresh, now_ms));
        let response = json_response(200, &view(&after, Shown::Rotated));
        return Ok(Answer::Commit {
            write: Box::new(write),
            response,
        });
    }
    let updated = update_owned(cx, caller, id, false, |sub| rotate(sub, &fresh, now_ms))?;
    Ok(Answer::Now(json_response(
        200,
        &view(&updated, Shown::Rotated),
    )))
}

/// New secrets for `scheme`, in the order they sign: a `whsec_` secret for `v1`, then an
/// ed25519 key for `v1a`.
fn generate_secrets(
    rng: &mut dyn RandomSource,
    scheme: Scheme,
) -> Result<Vec<String>, RandomUnavailable> {
    let mut secrets = Vec::with_capacity(2);
    if scheme.hmac() {
        secrets.push(Secret::generate(rng)?);
    }
    if scheme.ed25519() {
        secrets.push(Secret::generate_signing_key(rng)?);
    }
    Ok(secrets)
}

/// Puts `fresh` first; the old current ones sign beside them for [`ROTATION_OVERLAP_MS`],
/// expired ones are dropped, and only the newest [`MAX_SECRETS`] generations are kept (a
/// `v1,v1a` generation is two secrets).
pub(super) fn rotate(sub: &mut Subscription, fresh: &[String], now_ms: u64) {
    let expires = now_ms.saturating_add(ROTATION_OVERLAP_MS);
    let mut secrets: Vec<SigningSecret> = fresh
        .iter()
        .map(|secret| SigningSecret {
            secret: secret.clone(),
            expires_at_ms: None,
        })
        .collect();
    for old in sub.secrets.iter().filter(|s| s.signs_at(now_ms)) {
        secrets.push(SigningSecret {
            secret: old.secret.clone(),
            expires_at_ms: Some(old.expires_at_ms.unwrap_or(expires)),
        });
    }
    secrets.truncate(MAX_SECRETS * fresh.len().max(1));
    sub.secrets = secrets;
}

pub(super) fn send_test<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    id: &str,
) -> Outcome {
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

pub(super) fn subscription_disabled() -> Response {
    error(
        409,
        "subscription_disabled",
        "the subscription is disabled; PATCH it with {\"status\": \"active\"} first",
    )
}

/// Queues a delivery the caller asked for, within the caller's rate limit.
pub(super) fn enqueue<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    message: QueueMessage,
) -> Outcome {
    within_rate_limit(cx, caller)?;
    hand_over(cx, message)
}

/// Takes one of the caller's test, retry and recover calls; 429 when none is left.
pub(super) fn within_rate_limit<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
) -> Result<(), Response> {
    let Err(wait_s) = ratelimit::take(cx.store, &caller.rate_key(), cx.now_ms) else {
        return Ok(());
    };
    let mut response = error(
        429,
        "rate_limited",
        format!(
            "at most {} test, retry and recover calls at once, then one per second; try again later",
            ratelimit::BURST
        ),
    );
    response.headers.push(("retry-after", wait_s.to_string()));
    Err(response)
}

/// Hands a message to the dispatcher: 202, or 503 when its queue is not there.
fn hand_over<S: KvStore>(cx: &mut Context<'_, S>, message: QueueMessage) -> Outcome {
    if !(cx.enqueue)(message) {
        let mut response = error(
            503,
            "queue_unavailable",
            "the delivery queue is unavailable; try again",
        );
        response.headers.push(("retry-after", "1".to_string()));
        return Err(response);
    }
    Ok(json_response(202, &Queued { status: "queued" }))
}

/// The delivery log of one of the caller's subscriptions. In fleet mode every replica's attempts
/// are in etcd: the filter reads them there and answers with [`delivery_log`].
pub(super) fn deliveries<S: KvStore>(cx: &Context<'_, S>, caller: Caller<'_>, id: &str) -> Written {
    let sub = owned(cx, caller, id)?;
    if cx.config.fleet.is_some() {
        return Ok(Answer::ReadLog {
            subscription_id: sub.id,
        });
    }
    Ok(Answer::Now(delivery_log(&attempts::read(
        cx.store, &sub.id,
    ))))
}

/// The answer to `GET .../deliveries`: the attempts, newest first.
pub fn delivery_log(log: &[attempts::Attempt]) -> Response {
    json_response(200, &Data { data: log })
}

/// Replays a message found in the attempt logs of the caller's own subscriptions. The search is
/// bounded: the caller's subscriptions (the per-consumer limit plus static ones) times the
/// entries kept per log. In fleet mode a message this replica's logs do not have, or no longer
/// keep in memory, may be kept in etcd (exhausted or dropped on another replica, or before a
/// restart): the filter looks there and answers with [`retry_stored`].
pub(super) fn retry<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    webhook_id: &str,
) -> Written {
    let store = cx.store;
    // An operator's message may be any consumer's.
    let (ids, bound) = match caller.operator {
        Some(_) => (cx.registry.all_ids(), cx.config.api.max_subscriptions),
        None => (
            cx.registry.ids_for_consumer(caller.consumer),
            cx.config.api.max_subscriptions_per_consumer,
        ),
    };
    let bound = bound + cx.config.subscriptions.len();
    let found = ids
        .into_iter()
        .take(bound)
        .filter(|id| owned(cx, caller, id).is_ok())
        .find_map(|id| {
            let newest = attempts::read(store, &id)
                .into_iter()
                .find(|a| a.webhook_id == webhook_id)?;
            Some((id, newest.state))
        });
    // Unknown here, or no longer kept in memory: in fleet mode etcd may keep a copy.
    let in_memory = found
        .as_ref()
        .is_some_and(|(_, state)| *state != attempts::State::Expired);
    if !in_memory && cx.config.fleet.is_some() {
        // Counted before etcd is asked, so retries cannot flood etcd either.
        within_rate_limit(cx, caller)?;
        let webhook_id = webhook_id.to_string();
        return Ok(Answer::FindKept { webhook_id });
    }
    let (id, state) = found.ok_or_else(delivery_not_found)?;
    if !state.replayable() {
        let message = if state == attempts::State::Expired {
            "the message is no longer kept for replay (delivery.max_replay or max_replay_per_consumer)"
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
        kept: Vec::new(),
    };
    enqueue(cx, caller, message).map(Answer::Now)
}

/// A retry of a message this replica's logs do not have, once etcd was asked for its kept copy
/// (`kept`; `None`: etcd has none). Another consumer's message is not found, as in [`retry`].
/// The call was counted against the rate limit when [`retry`] sent it to etcd.
pub(super) fn retry_stored<S: KvStore>(
    cx: &mut Context<'_, S>,
    caller: Caller<'_>,
    webhook_id: &str,
    kept: Option<&[u8]>,
) -> Outcome {
    let stored = kept
        .and_then(crate::fleet::stored::decode)
        .filter(|stored| stored.webhook_id == webhook_id)
        .ok_or_else(delivery_not_found)?;
    let sub = owned(cx, caller, &stored.subscription_id).map_err(|_| delivery_not_found())?;
    if !sub.is_active() {
        return Err(subscription_disabled());
    }
    let message = QueueMessage::Replay {
        webhook_id: webhook_id.to_string(),
        kept: kept.unwrap_or_default().to_vec(),
    };
    hand_over(cx, message)
}

fn delivery_not_found() -> Response {
    error(404, "not_found", "delivery not found")
}

#[derive(Serialize)]
pub(super) struct EventTypeView<'c> {
    #[serde(rename = "type")]
    event_type: &'c str,
    methods: &'c [String],
    path: Option<&'c str>,
    /// Whether the events carry the response body in `data.object` (else it is null).
    include_object: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'c Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    example: Option<&'c Value>,
}

/// What `webhook.test` is, for the catalog.
const TEST_EVENT_DESCRIPTION: &str =
    "Sent on request to one subscription (POST .../subscriptions/{id}/test), to check an endpoint.";

/// The configured rules in order, each with its catalog fields, then `webhook.test` (no method
/// or path: it is sent on request).
pub(super) fn event_types(config: &Config) -> Outcome {
    let mut data: Vec<EventTypeView<'_>> = config
        .events
        .iter()
        .map(|rule| {
            let doc = rule.doc.as_deref();
            EventTypeView {
                event_type: &rule.event_type,
                methods: &rule.methods,
                path: Some(rule.path.as_str()),
                include_object: rule.include_object,
                description: doc.and_then(|d| d.description.as_deref()),
                schema: doc.and_then(|d| d.schema.as_ref()),
                example: doc.and_then(|d| d.example.as_ref()),
            }
        })
        .collect();
    data.push(EventTypeView {
        event_type: TEST_EVENT_TYPE,
        methods: &[],
        path: None,
        include_object: true,
        description: Some(TEST_EVENT_DESCRIPTION),
        schema: None,
        example: None,
    });
    Ok(json_response(
        200,
        &EventTypes {
            data,
            infer_events: config.infer_events,
        },
    ))
}

/// `{"data": ..}`, the answer of a list.
#[derive(Serialize)]
struct Data<T> {
    data: T,
}

#[derive(Serialize)]
struct Page<T> {
    data: T,
    has_more: bool,
}

#[derive(Serialize)]
struct EventTypes<T> {
    data: T,
    infer_events: bool,
}

#[derive(Serialize)]
struct Queued {
    status: &'static str,
}
