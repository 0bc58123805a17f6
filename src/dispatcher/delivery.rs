//! Delivery logic of the dispatcher, free of host calls: what an attempt looks like on the wire,
//! what its outcome means (retry when, give up, disable), when a failing subscription is
//! disabled, and which finished messages are kept for replay. The pending messages themselves
//! are in [`crate::dispatcher::outbox`].
//!
//! The dispatcher glue feeds it events, clock readings and responses, and carries out what it
//! returns. One message is one (event, subscription) pair; its webhook-id never changes.

use crate::config::DeliveryConfig;
pub use crate::dispatcher::outbox::Message;
use crate::dispatcher::pacing::Signal;
use crate::model::signing::Secret;
use crate::model::subscription::ReceiverHeader;
pub use crate::port::Request;
use crate::support::hashing::HashMap;
use crate::support::url::Destination;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::rc::Rc;

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("proxy-webhooks/", env!("CARGO_PKG_VERSION"));

/// Failed, exhausted or dropped messages, kept so that a consumer can ask for them again.
/// Bounded in messages and bytes, and in messages per consumer: the oldest is forgotten first,
/// the consumer's own oldest when it is the consumer's bound that is exceeded, so one
/// consumer's failures never push another's out.
#[derive(Debug, Default)]
pub struct ReplayStore {
    /// Boxed: a map from ids to one pointer shares its table code with the dispatcher's
    /// subscription map (each element type of a map is ~1 KB of wasm).
    messages: HashMap<String, Box<Kept>>,
    /// (keeping number, webhook-id), oldest first; entries whose number is no longer the
    /// message's are stale (taken, forgotten, kept again) and skipped.
    order: VecDeque<(u64, Rc<str>)>,
    consumers: HashMap<Rc<str>, KeptOf>,
    bytes: usize,
    next: u64,
}

/// A kept message, the consumer it was queued for and when it was kept.
#[derive(Debug)]
struct Kept {
    message: Message,
    consumer: Rc<str>,
    number: u64,
}

/// One consumer's kept messages.
#[derive(Debug, Default)]
struct KeptOf {
    count: usize,
    order: VecDeque<(u64, Rc<str>)>,
}

/// The bounds of a [`ReplayStore`], from `delivery`.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub max_messages: usize,
    pub max_per_consumer: usize,
    pub max_bytes: usize,
}

/// What a kept message costs: its payload (not shared with the outbox's accounting) and ids.
fn replay_bytes(message: &Message) -> usize {
    message.payload.len() + crate::dispatcher::outbox::MESSAGE_OVERHEAD
}

impl ReplayStore {
    /// Keeps `message` of `consumer`'s; returns the ones forgotten to stay within `limits`.
    pub fn keep(&mut self, message: Message, consumer: &str, limits: ReplayLimits) -> Vec<Message> {
        let id: Rc<str> = Rc::from(message.webhook_id.as_str());
        self.remove(&id);
        let consumer: Rc<str> = match self.consumers.get_key_value(consumer) {
            Some((name, _)) => Rc::clone(name),
            None => Rc::from(consumer),
        };
        let number = self.next;
        self.next += 1;
        self.bytes += replay_bytes(&message);
        self.order.push_back((number, Rc::clone(&id)));
        let of = self.consumers.entry(Rc::clone(&consumer)).or_default();
        of.count += 1;
        of.order.push_back((number, Rc::clone(&id)));
        let kept = Kept {
            message,
            consumer: Rc::clone(&consumer),
            number,
        };
        self.messages.insert(id.to_string(), Box::new(kept));
        let mut forgotten = Vec::new();
        while self.count_of(&consumer) > limits.max_per_consumer {
            let of = self.consumers.get_mut(&consumer);
            let Some(entry) = of.and_then(|of| of.order.pop_front()) else {
                break;
            };
            forgotten.extend(self.forget(entry));
        }
        while self.messages.len() > limits.max_messages || self.bytes > limits.max_bytes {
            let Some(entry) = self.order.pop_front() else {
                break;
            };
            forgotten.extend(self.forget(entry));
        }
        self.compact(&consumer);
        forgotten
    }

    fn count_of(&self, consumer: &str) -> usize {
        self.consumers.get(consumer).map_or(0, |of| of.count)
    }

    /// Removes the message an order entry names, unless the entry is stale.
    fn forget(&mut self, (number, id): (u64, Rc<str>)) -> Option<Message> {
        let current = self.messages.get(&*id).is_some_and(|k| k.number == number);
        if current {
            self.remove(&id)
        } else {
            None
        }
    }

    /// Removes a kept message and its accounting (its order entries become stale).
    fn remove(&mut self, webhook_id: &str) -> Option<Message> {
        let kept = self.messages.remove(webhook_id)?;
        self.bytes = self.bytes.saturating_sub(replay_bytes(&kept.message));
        if let Some(of) = self.consumers.get_mut(&kept.consumer) {
            of.count = of.count.saturating_sub(1);
            if of.count == 0 {
                self.consumers.remove(&kept.consumer);
            }
        }
        Some(kept.message)
    }

    /// Drops stale order entries once they outnumber the live ones.
    fn compact(&mut self, consumer: &str) {
        let messages = &self.messages;
        let live = |(number, id): &(u64, Rc<str>)| {
            messages.get(&**id).is_some_and(|k| k.number == *number)
        };
        if self.order.len() > 2 * messages.len() + 64 {
            self.order.retain(live);
        }
        if let Some(of) = self.consumers.get_mut(consumer) {
            if of.order.len() > 2 * of.count + 64 {
                of.order.retain(live);
            }
        }
    }

    /// Takes a message out for another round of attempts, counted from one again.
    pub fn take(&mut self, webhook_id: &str) -> Option<Message> {
        let mut message = self.remove(webhook_id)?;
        message.attempts = 0;
        message.host_waits = 0;
        Some(message)
    }

    /// [`ReplayStore::take`], only when the message kept is `subscription_id`'s.
    pub fn take_of(&mut self, webhook_id: &str, subscription_id: &str) -> Option<Message> {
        let kept = self.messages.get(webhook_id)?;
        if &*kept.message.subscription_id != subscription_id {
            return None;
        }
        self.take(webhook_id)
    }

    /// Detection times of the messages kept for `subscription_id` (the recover index).
    pub fn times_of(&self, subscription_id: &str) -> Vec<u64> {
        let of = self.messages.values();
        let mut times: Vec<u64> = of
            .filter(|k| &*k.message.subscription_id == subscription_id)
            .map(|k| k.message.created_ms)
            .collect();
        times.sort_unstable();
        times
    }

    /// Takes out every message of `subscription_id` detected at or after `since_ms`, in
    /// detection order (same millisecond: the order they were kept in), as [`ReplayStore::take`].
    pub fn take_since(&mut self, subscription_id: &str, since_ms: u64) -> Vec<Message> {
        let mut found: Vec<(u64, u64, String)> = self
            .messages
            .iter()
            .filter(|(_, k)| &*k.message.subscription_id == subscription_id)
            .filter(|(_, k)| k.message.created_ms >= since_ms)
            .map(|(id, k)| (k.message.created_ms, k.number, id.clone()))
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .filter_map(|(_, _, id)| self.take(&id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Since when each subscription has failed without a success in between: decides when a
/// subscription has failed continuously for `delivery.disable_after`.
#[derive(Debug, Default)]
pub struct FailureClock {
    since: HashMap<String, u64>,
}

impl FailureClock {
    /// A success: the subscription's clock stops.
    pub fn succeeded(&mut self, id: &str) {
        self.since.remove(id);
    }

    /// A failed attempt that started at `started_ms`. True when the subscription has now failed
    /// continuously for `disable_after_ms`; its clock then stops (it is being disabled).
    pub fn failed(
        &mut self,
        id: &str,
        started_ms: u64,
        now_ms: u64,
        disable_after_ms: u64,
    ) -> bool {
        let since = *self.since.entry(id.to_string()).or_insert(started_ms);
        let expired = now_ms.saturating_sub(since) >= disable_after_ms;
        if expired {
            self.since.remove(id);
        }
        expired
    }

    /// Stops a clock without a success (the subscription was disabled or deleted).
    pub fn forget(&mut self, id: &str) {
        self.since.remove(id);
    }

    /// Keeps the clocks of the subscriptions `keep` names (to drop deleted ones).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.since.retain(|id, _| keep(id));
    }
}

/// What came back from one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The receiver answered (or Envoy answered for it: 503 on connect failure, 504 on timeout).
    Status {
        code: u16,
        retry_after_ms: Option<u64>,
    },
    /// The callout could not even be started.
    NotSent(String),
}

/// What an attempt's outcome means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again at this time.
    RetryAt(u64),
    /// The schedule is used up; the message is kept for replay only.
    Exhausted,
    /// 410: the receiver is gone for good; disable the subscription.
    Gone,
}

/// Decides what follows an attempt. `attempts_made` includes this one; `jitter_unit` is a
/// random number in [-1, 1] (passed in so the rule stays deterministic under test).
pub fn judge(
    response: &Response,
    attempts_made: u32,
    now_ms: u64,
    config: &DeliveryConfig,
    jitter_unit: f64,
) -> Verdict {
    let retry_after = match response {
        Response::Status {
            code: 200..=299, ..
        } => return Verdict::Delivered,
        Response::Status { code: 410, .. } => return Verdict::Gone,
        Response::Status { retry_after_ms, .. } => *retry_after_ms,
        Response::NotSent(_) => None,
    };
    let Some(delay) = config.retry_schedule_ms.get(attempts_made as usize) else {
        return Verdict::Exhausted;
    };
    let jittered = apply_jitter(*delay, config.jitter, jitter_unit);
    Verdict::RetryAt(now_ms.saturating_add(jittered.max(retry_after.unwrap_or(0))))
}

fn apply_jitter(delay_ms: u64, jitter: f64, unit: f64) -> u64 {
    let factor = 1.0 + jitter * unit.clamp(-1.0, 1.0);
    (delay_ms as f64 * factor).round().max(0.0) as u64
}

/// The callout for one attempt: Standard Webhooks headers, signed with every valid secret, then
/// the subscription's own headers for its receiver (their names were checked against the
/// reserved ones, so none replaces a header above).
pub fn build_request(
    destination: &Destination,
    config: &DeliveryConfig,
    message: &Message,
    timestamp_s: u64,
    secrets: &[&Secret],
    receiver_headers: &[ReceiverHeader],
) -> Request {
    let signature = crate::model::signing::signature_header(
        secrets,
        &message.webhook_id,
        timestamp_s,
        message.payload.bytes(),
    );
    let cluster = if destination.https {
        &config.cluster_https
    } else {
        &config.cluster_http
    };
    let scheme = if destination.https { "https" } else { "http" };
    let fixed = [
        (":method", "POST".to_string()),
        (":path", destination.path_and_query.clone()),
        (":authority", destination.authority.clone()),
        (":scheme", scheme.to_string()),
        ("content-type", "application/json".to_string()),
        ("user-agent", USER_AGENT.to_string()),
        ("webhook-id", message.webhook_id.clone()),
        ("webhook-timestamp", timestamp_s.to_string()),
        ("webhook-signature", signature),
    ];
    let mut headers = Vec::with_capacity(fixed.len() + 2 + receiver_headers.len());
    headers.extend(fixed.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)));
    if let Some(trace) = message.payload.trace() {
        headers.extend(trace.headers().map(|(k, v)| (Cow::Borrowed(k), v)));
    }
    headers.extend(
        receiver_headers
            .iter()
            .map(|h| (Cow::Owned(h.name.clone()), h.value.clone())),
    );
    Request {
        cluster: cluster.clone(),
        headers,
        timeout_ms: config.timeout_ms,
    }
}

/// The most Envoy buffers of an answer to a callout: the runtime key
/// `http.async_response_buffer_limit` in every shipped Envoy configuration. A larger answer is
/// reset like a cut connection (docs/operations.md, "Memory").
pub const ANSWER_LIMIT_BYTES: usize = 256 * 1024;

/// Why an attempt got no answer: Envoy gives a callout no headers at all when the receiver cut
/// its answer short, or when the answer passed [`ANSWER_LIMIT_BYTES`] (it cannot tell which).
pub const RESET: &str = "connection reset, or an answer larger than 262144 bytes";
const TIMEOUT: &str = "timeout";
const CONNECTION_FAILED: &str = "connection failed";

/// Why Envoy refused to start a callout. It refuses one with a body while the egress cluster
/// has no address for the host, which lasts when the name does not resolve or resolves only to
/// addresses its `resolved_address_filter` refuses; any other refusal is a configuration error.
pub fn refused_callout(unresolved: bool, cluster: &str) -> String {
    if unresolved {
        "destination unreachable: the host does not resolve, or resolves only to addresses the egress cluster refuses (private or special-purpose ranges)".to_string()
    } else {
        format!("callout refused by Envoy; does cluster {cluster} exist?")
    }
}

/// Reasons that mean the receiver is overrun or unreachable: its window shrinks.
fn is_overrun(reason: &str) -> bool {
    reason == TIMEOUT || reason.starts_with(CONNECTION_FAILED) || reason == RESET
}

/// Envoy answers for an unreachable or slow receiver itself (503, 504); its body says which.
fn local_reply(code: u16, body: &str) -> Option<String> {
    if code == 503 && body.starts_with("upstream connect error") {
        // Envoy says why a connection failed after this marker, e.g. a TLS certificate problem.
        Some(match body.split_once("transport failure reason: ") {
            Some((_, reason)) => format!("{CONNECTION_FAILED}: {}", reason.trim()),
            None => CONNECTION_FAILED.to_string(),
        })
    } else if code == 504 && body.starts_with("upstream request timeout") {
        Some(TIMEOUT.to_string())
    } else {
        None
    }
}

/// What a callout's answer means: Envoy's own connect-failure or timeout reply is no answer
/// from the receiver at all.
pub fn classify(code: u16, retry_after_ms: Option<u64>, body_start: &[u8]) -> Response {
    match local_reply(code, &String::from_utf8_lossy(body_start)) {
        Some(reason) => Response::NotSent(reason),
        None => Response::Status {
            code,
            retry_after_ms,
        },
    }
}

impl Response {
    /// What the answer says about the receiver's capacity, for its pacing window.
    pub fn signal(&self) -> Signal {
        match self {
            Response::Status {
                code: 200..=299, ..
            } => Signal::Answered,
            Response::Status {
                code: 429 | 503, ..
            } => Signal::Overrun,
            Response::Status { .. } => Signal::Neutral,
            Response::NotSent(reason) if is_overrun(reason) => Signal::Overrun,
            Response::NotSent(_) => Signal::Neutral,
        }
    }

    /// For logs: the receiver's status, or why there was none.
    pub fn describe(&self) -> String {
        match self {
            Response::Status { code, .. } => format!("HTTP {code}"),
            Response::NotSent(reason) => reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
