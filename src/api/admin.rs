//! What only operators have: every consumer's subscriptions with their health, and portal
//! sessions minted and revoked. The rest of the operator API is the consumers' handlers run
//! with an operator [`Caller`] (see `dispatch` in the module root).

use super::auth::Caller;
use super::fields::parse_object;
use super::responses::{
    base_headers, error, invalid_field, json_response, view, Shown, SubscriptionView,
};
use super::{Answer, Context, Outcome, Request, Response, Written, MAX_PAGE};
use crate::config::parse_duration;
use crate::fleet::commit::Write;
use crate::fleet::log::MAX_AGE_MS;
use crate::model::identity::consumer_name;
use crate::model::rules::is_valid_event_type;
use crate::model::session::{self, Claims, MAX_TTL_MS, MIN_TTL_MS};
use crate::model::subscription::{filter_matches, is_valid_id, Status, Subscription};
use crate::registry::attempts::{self, Attempt, State};
use crate::registry::health::{merge, others, summarize, Summary};
use crate::registry::portal;
use crate::registry::store::KvStore;
use crate::support::time::format_rfc3339_millis;
use serde::Serialize;

/// A subscription's recent delivery health: this replica's delivery log (the last
/// [`attempts::MAX_ENTRIES`] attempts), merged in fleet mode with the other replicas'
/// summaries the dispatcher keeps in shared data ([`crate::registry::health`]).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub(super) struct Health {
    last_success_at: Option<String>,
    last_failure_at: Option<String>,
    /// The first failure of the failures since the last success, while the newest attempt
    /// failed.
    failing_since: Option<String>,
    /// Failed attempts since the last success.
    consecutive_failures: u32,
    /// Messages waiting for another attempt on this replica.
    pending: u32,
}

impl Health {
    pub(super) fn failing(&self) -> bool {
        self.consecutive_failures > 0
    }
}

/// Health from a delivery log, newest first, and other replicas' summaries.
pub(super) fn health(log: &[Attempt], others: &[Summary]) -> Health {
    let own = summarize(log);
    let mut pending = 0;
    let mut seen: Vec<&str> = Vec::new();
    for attempt in log {
        // A message's newest entry comes first: it says whether it still waits.
        if !seen.contains(&attempt.webhook_id.as_str()) {
            seen.push(&attempt.webhook_id);
            pending += u32::from(attempt.state == State::Retrying);
        }
    }
    let fleet = match others.is_empty() {
        true => own,
        false => merge(others.iter().chain([&own])),
    };
    Health {
        last_success_at: fleet.last_success_at,
        last_failure_at: fleet.last_failure_at,
        failing_since: fleet.failing_since,
        consecutive_failures: fleet.consecutive_failures,
        pending,
    }
}

/// The health of `id` as this replica knows it.
fn health_of<S: KvStore>(cx: &Context<'_, S>, id: &str) -> Health {
    let oldest = format_rfc3339_millis(cx.now_ms.saturating_sub(MAX_AGE_MS));
    health(
        &attempts::read(cx.store, id),
        &others(cx.store, id, &oldest),
    )
}

/// A subscription as reads answer it: with its health, and its consumer for an operator.
pub(super) type ReadView<'s> = SubscriptionView<'s>;

pub(super) fn read_view<'s, S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    sub: &'s Subscription,
) -> ReadView<'s> {
    let mut shown = view(sub, Shown::Public);
    shown.consumer = caller.operator.map(|_| sub.consumer.as_str());
    shown.health = Some(health_of(cx, &sub.id));
    shown
}

/// `GET admin/subscriptions`: the query's filters.
struct Filters<'q> {
    consumer: Option<String>,
    status: Option<&'q str>,
    event_type: Option<String>,
    limit: usize,
    after: Option<&'q str>,
}

fn parse_filters(query: &str) -> Result<Filters<'_>, Response> {
    let mut f = Filters {
        consumer: None,
        status: None,
        event_type: None,
        limit: MAX_PAGE,
        after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "consumer" => {
                let name = decoded(value)
                    .filter(|v| consumer_name(v.as_bytes()) == Some(v.as_str()))
                    .ok_or_else(|| {
                        invalid_field("consumer must be 1 to 128 visible ASCII characters")
                    })?;
                f.consumer = Some(name);
            }
            "status" if ["active", "disabled", "failing"].contains(&value) => {
                f.status = Some(value)
            }
            "status" => {
                return Err(invalid_field(
                    "status must be one of active, disabled, failing",
                ))
            }
            "event_type" => {
                let event_type = decoded(value)
                    .filter(|t| is_valid_event_type(t))
                    .ok_or_else(|| invalid_field("event_type must be an event type"))?;
                f.event_type = Some(event_type);
            }
            "limit" => {
                f.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        invalid_field(format!("limit must be an integer from 1 to {MAX_PAGE}"))
                    })?;
            }
            "after" if is_valid_id(value) => f.after = Some(value),
            "after" => {
                return Err(invalid_field(
                    "after must be a subscription id ([A-Za-z0-9_-], 1 to 64 characters)",
                ))
            }
            _ => {}
        }
    }
    Ok(f)
}

/// Every consumer's subscriptions in id order, filtered; `after` is a cursor (the next page
/// starts after that id, whether or not it still exists).
pub(super) fn list_all<S: KvStore>(
    cx: &Context<'_, S>,
    caller: Caller<'_>,
    query: &str,
) -> Outcome {
    let f = parse_filters(query)?;
    let mut ids = match &f.consumer {
        Some(consumer) => cx.registry.ids_for_consumer(consumer),
        None => cx.registry.all_ids(),
    };
    ids.sort_unstable();
    let start = f
        .after
        .map_or(0, |after| ids.partition_point(|id| id.as_str() <= after));
    let mut subs = ids
        .get(start..)
        .unwrap_or_default()
        .iter()
        .filter_map(|id| cx.registry.get(id).map(|(sub, _)| sub))
        .filter(|sub| f.consumer.as_ref().is_none_or(|c| sub.consumer == *c))
        .filter(|sub| match f.status {
            Some("active") => sub.status == Status::Active,
            Some("disabled") => sub.status == Status::Disabled,
            _ => true,
        })
        .filter(|sub| {
            f.event_type
                .as_ref()
                .is_none_or(|t| sub.events.iter().any(|filter| filter_matches(filter, t)))
        })
        .map(|sub| {
            let health = health_of(cx, &sub.id);
            (sub, health)
        })
        .filter(|(_, health)| f.status != Some("failing") || health.failing());
    let found: Vec<(Subscription, Health)> = subs.by_ref().take(f.limit).collect();
    let has_more = subs.next().is_some();
    let data: Vec<ReadView<'_>> = found
        .iter()
        .map(|(sub, _)| read_view(cx, caller, sub))
        .collect();
    Ok(json_response(200, &Page { data, has_more }))
}

#[derive(Serialize)]
struct Page<T> {
    data: T,
    has_more: bool,
}

const SESSION_FIELDS: &[&str] = &["ttl", "read_only"];
/// The lifetime of a session minted without `ttl`.
const DEFAULT_TTL_MS: u64 = 60 * 60 * 1000;

#[derive(Serialize)]
struct Minted {
    token: String,
    url: String,
    expires_at: String,
}

/// The consumer named by the path of `admin/consumers/{consumer}/...` (percent-decoded), or
/// 404 when that is no consumer name.
fn consumer_in_path(raw: &str) -> Result<String, Response> {
    decoded(raw)
        .filter(|c| consumer_name(c.as_bytes()) == Some(c.as_str()))
        .ok_or_else(|| error(404, "not_found", "no such path (not a consumer name)"))
}

/// `POST admin/consumers/{consumer}/portal-sessions` `{"ttl", "read_only"}`: 201 with the
/// token and the portal URL that carries it in its fragment.
pub(super) fn mint_session<S: KvStore>(
    cx: &mut Context<'_, S>,
    raw_consumer: &str,
    request: &Request<'_>,
) -> Outcome {
    let consumer = &consumer_in_path(raw_consumer)?;
    let config = cx.config;
    let portal = config.api.portal.as_ref().ok_or_else(portal_disabled)?;
    let map = parse_object(request, SESSION_FIELDS)?;
    let ttl_ms = match map.get("ttl") {
        None => DEFAULT_TTL_MS,
        Some(v) => v
            .as_str()
            .and_then(|s| parse_duration(s).ok())
            .filter(|ms| (MIN_TTL_MS..=MAX_TTL_MS).contains(ms))
            .ok_or_else(|| invalid_field("ttl must be a duration from \"5m\" to \"7d\""))?,
    };
    let read_only = match map.get("read_only") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid_field("read_only must be a boolean"))?,
    };
    let store = cx.store;
    let key = portal::session_key(store, &portal.session_key, cx.rng).ok_or_else(unavailable)?;
    // Never at or before the consumer's revocation, even within the same millisecond.
    let revoked = portal::revoked_up_to(store, consumer).unwrap_or(0);
    let claims = Claims {
        consumer: consumer.to_string(),
        expires_s: cx.now_ms.saturating_add(ttl_ms) / 1000,
        issued_ms: cx.now_ms.max(revoked.saturating_add(1)),
        read_only,
    };
    let token = session::mint(&key, &claims).ok_or_else(unavailable)?;
    let url = format!(
        "{}{}/portal#token={token}",
        portal.public_url.as_deref().unwrap_or(""),
        config.api.path_prefix
    );
    let expires_at = format_rfc3339_millis(claims.expires_s.saturating_mul(1000));
    Ok(json_response(
        201,
        &Minted {
            token,
            url,
            expires_at,
        },
    ))
}

/// `DELETE admin/consumers/{consumer}/portal-sessions`: every session of the consumer minted
/// until now ends. In fleet mode etcd takes it first and every replica reads it within
/// `sync_interval`.
pub(super) fn revoke_sessions<S: KvStore>(cx: &Context<'_, S>, raw_consumer: &str) -> Written {
    let consumer = &consumer_in_path(raw_consumer)?;
    cx.config.api.portal.as_ref().ok_or_else(portal_disabled)?;
    let response = Response {
        status: 204,
        headers: base_headers(),
        body: Vec::new(),
    };
    if cx.config.fleet.is_some() {
        let write = Write::Revoke {
            consumer: consumer.to_string(),
            up_to_ms: cx.now_ms,
        };
        return Ok(Answer::Commit {
            write: Box::new(write),
            response,
        });
    }
    portal::revoke(cx.store, consumer, cx.now_ms, cx.now_ms).map_err(|_| unavailable())?;
    Ok(Answer::Now(response))
}

fn portal_disabled() -> Response {
    error(
        409,
        "portal_disabled",
        "the consumer portal is not enabled (api.portal)",
    )
}

fn unavailable() -> Response {
    let mut response = error(503, "unavailable", "sessions cannot be made now; try again");
    response.headers.push(("retry-after", "1".to_string()));
    response
}

/// Whether an operator's call changes something (logged with the operator's name).
pub(super) fn is_write(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

/// The log line of an operator's write: who, what, and how it was answered; never a key or
/// a token (the path holds neither: ids and consumer names only).
pub(super) fn log_write(operator: &str, request: &Request<'_>, answer: &Answer) {
    let outcome = match answer {
        Answer::Now(response) => response.status.to_string(),
        Answer::Commit { response, .. } => format!("{} once etcd has it", response.status),
        Answer::FindKept { .. } | Answer::ReadLog { .. } | Answer::TakeKept { .. } => {
            "pending".to_string()
        }
    };
    let path = crate::model::rules::strip_query(request.path);
    log::info!(
        "proxy-webhooks: operator {operator:?}: {} {path}: {outcome}",
        request.method
    );
}

/// A query value with its `%XX` escapes decoded (`+` is a space); None when that is not UTF-8
/// or an escape is malformed.
pub(super) fn decoded(value: &str) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            other => other,
        });
    }
    String::from_utf8(out).ok()
}
