//! Delivery logic of the dispatcher, free of host calls: the outbox of pending messages, what an
//! attempt looks like on the wire, and what its outcome means (retry when, give up, disable).
//!
//! The dispatcher glue feeds it events, clock readings and responses, and carries out what it
//! returns. One message is one (event, subscription) pair; its webhook-id never changes.

use crate::config::DeliveryConfig;
use crate::signing::Secret;
use crate::url::Destination;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("proxy-webhooks/", env!("CARGO_PKG_VERSION"));

/// One webhook message for one subscription, waiting for its next attempt.
#[derive(Debug, Clone)]
pub struct Message {
    pub webhook_id: String,
    pub subscription_id: String,
    pub event_type: Rc<str>,
    /// The signed body, shared by every subscription the event fans out to.
    pub payload: Rc<[u8]>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the message was created (the event was seen).
    pub created_ms: u64,
    /// Times the callout could not start yet because Envoy was still resolving the host.
    pub host_waits: u32,
}

/// A handle on a message in the outbox.
pub type MessageKey = u64;

/// Pending messages ordered by due time, bounded by `max_queue`.
#[derive(Debug, Default)]
pub struct Outbox {
    messages: HashMap<MessageKey, Message>,
    /// (due time, key); stale entries of removed messages are skipped when popped.
    due: BinaryHeap<Reverse<(u64, MessageKey)>>,
    /// Waiting messages (not in flight) in the order they are dropped on overflow: retries
    /// (`false` sorts first) before first attempts, oldest first. Keeps overflow O(log n).
    waiting: BTreeSet<(bool, u64, MessageKey)>,
    /// Keys of messages currently being attempted (not in `due`).
    in_flight: usize,
    next_key: MessageKey,
}

/// A waiting message's place in [`Outbox::waiting`].
fn waiting_entry(key: MessageKey, message: &Message) -> (bool, u64, MessageKey) {
    (message.attempts == 0, message.created_ms, key)
}

impl Outbox {
    /// Messages held, in flight or waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Every held message, in no particular order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Adds a message due at `due_ms`. When the outbox already holds `max_queue` messages, the
    /// waiting retry created longest ago is dropped first (then the oldest waiting message);
    /// the dropped one is returned.
    pub fn push(&mut self, message: Message, due_ms: u64, max_queue: usize) -> Option<Message> {
        let dropped = if self.messages.len() >= max_queue {
            self.victim().and_then(|key| self.messages.remove(&key))
        } else {
            None
        };
        let key = self.next_key;
        self.next_key += 1;
        self.waiting.insert(waiting_entry(key, &message));
        self.messages.insert(key, message);
        self.due.push(Reverse((due_ms, key)));
        self.compact();
        dropped
    }

    /// Dropped messages leave their entry in `due` until its time comes (possibly days): rebuild
    /// the heap when such entries outnumber the live ones, so memory follows `max_queue`.
    fn compact(&mut self) {
        if self.due.len() > 2 * self.messages.len() + 1024 {
            let messages = &self.messages;
            self.due
                .retain(|Reverse((_, key))| messages.contains_key(key));
        }
    }

    /// Drops waiting messages while more than `max_queue` are held, by the same rule as [`push`]
    /// (oldest waiting retry first), and returns them. `push` cannot make room when every held
    /// message is in flight; call this when an attempt ends and its message waits again.
    ///
    /// [`push`]: Outbox::push
    pub fn trim(&mut self, max_queue: usize) -> Vec<Message> {
        let mut dropped = Vec::new();
        while self.messages.len() > max_queue {
            let Some(message) = self.victim().and_then(|key| self.messages.remove(&key)) else {
                break;
            };
            dropped.push(message);
        }
        dropped
    }

    /// The message to drop on overflow: the oldest waiting retry, else the oldest waiting message.
    fn victim(&mut self) -> Option<MessageKey> {
        self.waiting.pop_first().map(|(_, _, key)| key)
    }

    /// Takes the next message due at `now_ms` and marks it in flight.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(MessageKey, &Message)> {
        loop {
            let Reverse((due, key)) = *self.due.peek()?;
            if due > now_ms {
                return None;
            }
            self.due.pop();
            if let Some(message) = self.messages.get(&key) {
                self.waiting.remove(&waiting_entry(key, message));
                self.in_flight += 1;
                return Some((key, message));
            }
        }
    }

    /// The earliest due time in line (it may belong to a message dropped meanwhile).
    pub fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    /// Ends an attempt: the message is either rescheduled or removed (and returned).
    pub fn finish(&mut self, key: MessageKey, reschedule_at: Option<u64>) -> Option<Message> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match reschedule_at {
            Some(at) => {
                if let Some(m) = self.messages.get_mut(&key) {
                    m.attempts += 1;
                    // A later attempt may meet an unresolved host again: it gets its own wait.
                    m.host_waits = 0;
                    self.waiting.insert(waiting_entry(key, m));
                    self.due.push(Reverse((at, key)));
                }
                None
            }
            None => self.messages.remove(&key),
        }
    }

    /// Puts an attempt that could not start back in line without counting it as an attempt.
    pub fn defer(&mut self, key: MessageKey, at: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(m) = self.messages.get_mut(&key) {
            m.host_waits += 1;
            self.waiting.insert(waiting_entry(key, m));
            self.due.push(Reverse((at, key)));
        }
    }

    pub fn get(&self, key: MessageKey) -> Option<&Message> {
        self.messages.get(&key)
    }
}

/// Failed, exhausted or dropped messages, kept so that a consumer can ask for them again.
/// Bounded: the oldest is forgotten first.
#[derive(Debug, Default)]
pub struct ReplayStore {
    messages: HashMap<String, Message>,
    order: std::collections::VecDeque<String>,
}

impl ReplayStore {
    /// Keeps `message`; returns the ones forgotten to stay within `capacity` (the oldest).
    pub fn keep(&mut self, message: Message, capacity: usize) -> Vec<Message> {
        if capacity == 0 {
            return vec![message];
        }
        let id = message.webhook_id.clone();
        if self.messages.insert(id.clone(), message).is_none() {
            self.order.push_back(id);
        }
        let mut forgotten = Vec::new();
        while self.order.len() > capacity {
            if let Some(old) = self
                .order
                .pop_front()
                .and_then(|id| self.messages.remove(&id))
            {
                forgotten.push(old);
            }
        }
        forgotten
    }

    /// Takes a message out for another round of attempts, counted from one again.
    pub fn take(&mut self, webhook_id: &str) -> Option<Message> {
        let mut message = self.messages.remove(webhook_id)?;
        self.order.retain(|id| id != webhook_id);
        message.attempts = 0;
        message.host_waits = 0;
        Some(message)
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

/// One HTTP callout, ready for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub timeout_ms: u64,
}

/// The callout for one attempt: Standard Webhooks headers, signed with every valid secret.
pub fn build_request(
    destination: &Destination,
    config: &DeliveryConfig,
    message: &Message,
    timestamp_s: u64,
    secrets: &[&Secret],
) -> Request {
    let signature = crate::signing::signature_header(
        secrets,
        &message.webhook_id,
        timestamp_s,
        &message.payload,
    );
    let cluster = if destination.https {
        &config.cluster_https
    } else {
        &config.cluster_http
    };
    Request {
        cluster: cluster.clone(),
        headers: vec![
            (":method", "POST".to_string()),
            (":path", destination.path_and_query.clone()),
            (":authority", destination.authority.clone()),
            (
                ":scheme",
                if destination.https { "https" } else { "http" }.to_string(),
            ),
            ("content-type", "application/json".to_string()),
            ("user-agent", USER_AGENT.to_string()),
            ("webhook-id", message.webhook_id.clone()),
            ("webhook-timestamp", timestamp_s.to_string()),
            ("webhook-signature", signature),
        ],
        timeout_ms: config.timeout_ms,
    }
}

/// Envoy answers for an unreachable or slow receiver itself (503, 504); its body says which.
fn local_reply(code: u16, body: &str) -> Option<String> {
    if code == 503 && body.starts_with("upstream connect error") {
        // Envoy says why a connection failed after this marker, e.g. a TLS certificate problem.
        Some(match body.split_once("transport failure reason: ") {
            Some((_, reason)) => format!("connection failed: {}", reason.trim()),
            None => "connection failed".to_string(),
        })
    } else if code == 504 && body.starts_with("upstream request timeout") {
        Some("timeout".to_string())
    } else {
        None
    }
}

/// Why a callout Envoy would not start failed the attempt. `InternalFailure` that outlasts the
/// wait for DNS is the egress cluster finding no address it may use: the DNS cache's
/// `resolved_address_filter` dropped every address (a private or special-purpose one), or the
/// name does not resolve. Envoy tells the plugin nothing more precise than that.
pub fn callout_refused(internal_failure: bool, cluster: &str) -> String {
    if internal_failure {
        "destination refused: the host resolves to a private or special-purpose address, \
         or does not resolve"
            .to_string()
    } else {
        format!("callout refused by Envoy; does cluster {cluster} exist?")
    }
}

/// A short, secret-free description of a response for logs and the attempt log.
pub fn describe(code: u16, body_start: &[u8]) -> String {
    local_reply(code, &String::from_utf8_lossy(body_start))
        .unwrap_or_else(|| format!("HTTP {code}"))
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
    /// For logs: the receiver's status, or why there was none.
    pub fn describe(&self) -> String {
        match self {
            Response::Status { code, .. } => format!("HTTP {code}"),
            Response::NotSent(reason) => reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(schedule: &[u64]) -> DeliveryConfig {
        let mut c = Config::default().delivery;
        c.retry_schedule_ms = schedule.to_vec();
        c.jitter = 0.2;
        c
    }

    fn message(id: &str, attempts: u32, created_ms: u64) -> Message {
        Message {
            webhook_id: id.into(),
            subscription_id: "sub_1".into(),
            event_type: "a.b".into(),
            payload: Rc::from(&b"{}"[..]),
            attempts,
            created_ms,
            host_waits: 0,
        }
    }

    fn status(code: u16) -> Response {
        Response::Status {
            code,
            retry_after_ms: None,
        }
    }

    #[test]
    fn success_gone_and_exhaustion() {
        let c = config(&[0, 100, 1000]);
        assert_eq!(judge(&status(204), 1, 0, &c, 0.0), Verdict::Delivered);
        assert_eq!(judge(&status(410), 1, 0, &c, 0.0), Verdict::Gone);
        assert_eq!(judge(&status(500), 1, 10, &c, 0.0), Verdict::RetryAt(110));
        assert_eq!(judge(&status(302), 2, 10, &c, 0.0), Verdict::RetryAt(1010));
        assert_eq!(judge(&status(500), 3, 10, &c, 0.0), Verdict::Exhausted);
        assert_eq!(
            judge(&Response::NotSent("x".into()), 1, 0, &c, 0.0),
            Verdict::RetryAt(100)
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let c = config(&[0, 1000]);
        assert_eq!(judge(&status(500), 1, 0, &c, 1.0), Verdict::RetryAt(1200));
        assert_eq!(judge(&status(500), 1, 0, &c, -1.0), Verdict::RetryAt(800));
        assert_eq!(judge(&status(500), 1, 0, &c, 7.0), Verdict::RetryAt(1200));
    }

    #[test]
    fn retry_after_only_when_longer_than_schedule() {
        let c = config(&[0, 100]);
        let slow = Response::Status {
            code: 429,
            retry_after_ms: Some(2000),
        };
        assert_eq!(judge(&slow, 1, 0, &c, 0.0), Verdict::RetryAt(2000));
        let fast = Response::Status {
            code: 503,
            retry_after_ms: Some(10),
        };
        assert_eq!(judge(&fast, 1, 0, &c, 0.0), Verdict::RetryAt(100));
    }

    #[test]
    fn outbox_pops_in_due_order_and_reschedules() {
        let mut o = Outbox::default();
        o.push(message("late", 0, 0), 50, 10);
        o.push(message("early", 0, 0), 10, 10);
        assert!(o.pop_due(5).is_none());
        let (key, m) = o.pop_due(60).unwrap();
        assert_eq!(m.webhook_id, "early");
        assert_eq!(o.in_flight(), 1);
        o.finish(key, Some(100));
        assert_eq!(o.pop_due(60).unwrap().1.webhook_id, "late");
        assert_eq!(o.next_due(), Some(100));
        let (key, m) = o.pop_due(100).unwrap();
        assert_eq!((m.webhook_id.as_str(), m.attempts), ("early", 1));
        assert_eq!(o.finish(key, None).unwrap().webhook_id, "early");
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn sustained_overflow_keeps_memory_bounded() {
        let mut o = Outbox::default();
        for n in 0..20_000u64 {
            o.push(message(&format!("m{n}"), 1, n), 1_000_000 + n, 100);
        }
        assert_eq!(o.len(), 100);
        assert!(o.due.len() <= 2 * o.len() + 1024, "heap {}", o.due.len());
        assert_eq!(o.waiting.len(), 100);
        // The survivors are the newest ones, still in due order.
        assert_eq!(o.pop_due(u64::MAX).unwrap().1.webhook_id, "m19900");
    }

    #[test]
    fn deferred_attempts_do_not_count() {
        let mut o = Outbox::default();
        o.push(message("m", 0, 0), 0, 10);
        let (key, _) = o.pop_due(0).unwrap();
        o.defer(key, 100);
        assert_eq!(o.in_flight(), 0);
        assert!(o.pop_due(99).is_none());
        let (_, m) = o.pop_due(100).unwrap();
        assert_eq!((m.attempts, m.host_waits), (0, 1));
    }

    #[test]
    fn overflow_drops_oldest_waiting_retry_first() {
        let mut o = Outbox::default();
        o.push(message("new0", 0, 1), 0, 3);
        o.push(message("retry_old", 2, 2), 500, 3);
        o.push(message("retry_newer", 1, 3), 400, 3);
        let dropped = o.push(message("new1", 0, 4), 0, 3).unwrap();
        assert_eq!(dropped.webhook_id, "retry_old");
        let dropped = o.push(message("new2", 0, 5), 0, 3).unwrap();
        assert_eq!(dropped.webhook_id, "retry_newer");
        let dropped = o.push(message("new3", 0, 6), 0, 3).unwrap();
        assert_eq!(dropped.webhook_id, "new0");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn overflow_while_all_in_flight_is_trimmed_when_attempts_end() {
        let mut o = Outbox::default();
        // Each goes out before the next comes: nothing is waiting, so nothing can be dropped.
        let mut keys = Vec::new();
        for n in 0..4 {
            assert!(o.push(message(&format!("m{n}"), 0, n), 0, 2).is_none());
            keys.extend(o.pop_due(0).map(|(k, _)| k));
        }
        assert_eq!((o.len(), o.in_flight()), (4, 4));
        assert!(o.trim(2).is_empty(), "nothing waits yet");
        // As attempts end and their messages wait for a retry, the excess goes, oldest first.
        let mut dropped = Vec::new();
        for key in keys {
            o.finish(key, Some(100));
            dropped.extend(o.trim(2).into_iter().map(|m| m.webhook_id));
        }
        assert_eq!(dropped, ["m0", "m1"]);
        assert_eq!((o.len(), o.in_flight()), (2, 0));
        let next: Vec<_> =
            std::iter::from_fn(|| o.pop_due(100).map(|(_, m)| m.webhook_id.clone())).collect();
        assert_eq!(next, ["m2", "m3"]);
    }

    #[test]
    fn replay_store_is_bounded_and_resets_attempts() {
        let mut store = ReplayStore::default();
        let forgotten: Vec<String> = (0..5)
            .flat_map(|n| store.keep(message(&format!("m{n}"), 3, n), 3))
            .map(|m| m.webhook_id)
            .collect();
        assert_eq!(forgotten, ["m0", "m1"]);
        assert_eq!(store.len(), 3);
        assert!(store.take("m0").is_none());
        let m = store.take("m4").unwrap();
        assert_eq!((m.webhook_id.as_str(), m.attempts), ("m4", 0));
        assert!(store.take("m4").is_none());
    }

    #[test]
    fn failure_clock_disables_only_after_continuous_failure() {
        let mut clock = FailureClock::default();
        assert!(!clock.failed("a", 0, 10, 100));
        assert!(!clock.failed("a", 50, 99, 100));
        clock.succeeded("a");
        // A success restarts the clock: 150 is only 50 after the next failure began.
        assert!(!clock.failed("a", 100, 150, 100));
        assert!(clock.failed("a", 160, 200, 100));
        // Once it fired, the clock starts over (a re-enabled subscription gets the full time).
        assert!(!clock.failed("a", 300, 310, 100));
        clock.forget("a");
        assert!(!clock.failed("a", 1000, 1001, 100));
        clock.retain(|id| id != "a");
        assert!(!clock.failed("a", 5000, 5001, 100));
    }

    #[test]
    fn refused_callouts_say_why() {
        assert_eq!(
            callout_refused(true, "webhooks_egress_http"),
            "destination refused: the host resolves to a private or special-purpose address, or does not resolve"
        );
        assert_eq!(
            callout_refused(false, "nope"),
            "callout refused by Envoy; does cluster nope exist?"
        );
    }

    #[test]
    fn describes_envoy_local_replies() {
        assert_eq!(
            describe(503, b"upstream connect error or disconnect"),
            "connection failed"
        );
        assert_eq!(describe(504, b"upstream request timeout"), "timeout");
        assert_eq!(describe(503, b"busy"), "HTTP 503");
        let tls = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed";
        assert_eq!(
            describe(503, tls),
            "connection failed: TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed"
        );
    }
}
