//! The dispatcher singleton on Envoy's main thread: takes events off the shared queue, fans them
//! out to matching subscriptions, signs and delivers them with `dispatch_http_call`.
//! Decisions (what to retry, when) live in `crate::delivery`; this file only carries them out.

use super::io::{self, Metrics, SharedData, WasiRandom};
use crate::attempts::{self, Attempt, State};
use crate::audience::{self, Target};
use crate::config::Config;
use crate::delivery::{self, FailureClock, ReplayStore, Response, Verdict};
use crate::ids::{self, RandomSource};
use crate::outbox::{Limits, Message, MessageKey, Outbox, Payload};
use crate::pacing::Signal;
use crate::queue::{QueueMessage, QUEUE_NAME};
use crate::registry::Registry;
use crate::signing::Secret;
use crate::store::KvStore;
use crate::subscription::{SigningSecret, Subscription, TEST_EVENT_TYPE};
use crate::url::{self, Destination};
use crate::watchdog;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, MapType, Status};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How often scheduled retries are looked at.
const TICK_MS: u64 = 100;
const TICK: Duration = Duration::from_millis(TICK_MS);
/// The tick while attempts wait for Envoy to resolve a new host (usually done within one turn of
/// its event loop), so a first delivery is not held back a whole tick.
const FAST_TICK_MS: u64 = 10;
/// How long the fast tick lasts after the last such wait.
const FAST_TICK_FOR_MS: u64 = 1000;
/// Event types whose fan-out candidates are cached, at most.
const MAX_CACHED_EVENT_TYPES: usize = 1024;
/// Pending messages named one per log line at shutdown, at most.
const SHUTDOWN_LOG_LINES: usize = 100;
/// How much of a receiver's response body is read (only to tell Envoy's own errors apart and
/// keep the reason it gives, such as a TLS certificate problem).
const BODY_PEEK: usize = 512;

/// A subscription ready to sign for: parsed once per stored version.
struct Resolved {
    /// The id, shared by every message of the subscription.
    id: Rc<str>,
    version: u32,
    /// The registry generation at which this record was last known current: while the
    /// generation stays, the record is used without reading it again.
    checked_at: Cell<u32>,
    subscription: Subscription,
    destination: Option<Destination>,
    /// The secrets, parsed, current first (a secret's HMAC key is set up once, not per attempt).
    secrets: Vec<(Secret, SigningSecret)>,
}

/// An attempt waiting for its response.
struct InFlight {
    key: MessageKey,
    started_ms: u64,
}

pub struct DispatcherRoot {
    config: Rc<Config>,
    metrics: Metrics,
    registry: Registry<SharedData>,
    outbox: Outbox,
    in_flight: HashMap<u32, InFlight>,
    subscriptions: HashMap<String, Rc<Resolved>>,
    /// The registry generation, read once per host callback.
    generation: u32,
    /// Fan-out candidates per event type, valid while the registry generation is unchanged.
    candidates: (u32, HashMap<String, Rc<[String]>>),
    queue: Option<u32>,
    rng: WasiRandom,
    replayable: ReplayStore,
    /// Attempts not yet written to the shared attempt log, per subscription (flushed per tick).
    unlogged: HashMap<String, Vec<Attempt>>,
    /// Since when each subscription has failed without a success in between.
    failing: FailureClock,
    /// Set once Envoy asked to stop: the time after which we stop waiting.
    drain_deadline: Option<u64>,
    /// While set, the tick is fast (attempts wait for a host to be resolved).
    fast_tick_until: Option<u64>,
    /// When the heartbeat was last written (see `crate::watchdog`).
    beat_at: u64,
}

impl DispatcherRoot {
    pub fn new(config: Rc<Config>) -> DispatcherRoot {
        DispatcherRoot {
            outbox: Outbox::new(limits(&config)),
            config,
            metrics: Metrics::define(),
            registry: Registry::new(SharedData),
            in_flight: HashMap::new(),
            subscriptions: HashMap::new(),
            generation: 0,
            candidates: (0, HashMap::new()),
            queue: None,
            rng: WasiRandom,
            replayable: ReplayStore::default(),
            unlogged: HashMap::new(),
            failing: FailureClock::default(),
            drain_deadline: None,
            fast_tick_until: None,
            beat_at: 0,
        }
    }

    fn drain_queue(&mut self) {
        let Some(queue) = self.queue else { return };
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue) {
            match QueueMessage::decode(&bytes) {
                Ok(QueueMessage::Event {
                    event_type,
                    payload,
                    audience,
                }) => self.fan_out(&event_type, payload, &audience),
                Ok(QueueMessage::Test {
                    subscription_id,
                    payload,
                }) => {
                    if let Some(resolved) = self.resolve(&subscription_id) {
                        self.add_message(&resolved, TEST_EVENT_TYPE.into(), Payload::new(payload));
                    }
                }
                Ok(QueueMessage::Replay { webhook_id }) => self.replay(&webhook_id),
                Err(e) => log::warn!("proxy-webhooks: ignoring a malformed queue message: {e}"),
            }
        }
    }

    /// One message per matching, active subscription the audience reaches; the payload is
    /// shared, not copied.
    fn fan_out(&mut self, event_type: &str, payload: Vec<u8>, audience: &Target) {
        if *audience == Target::Nobody {
            self.metrics.events_unaddressed.inc();
        }
        let event_type: Rc<str> = Rc::from(event_type);
        let payload = Payload::new(payload);
        for id in self.candidates_for(&event_type).iter() {
            let Some(resolved) = self.resolve(id) else {
                continue;
            };
            let sub = &resolved.subscription;
            let wanted = sub
                .events
                .iter()
                .any(|f| crate::subscription::filter_matches(f, &event_type));
            let reached = audience::reaches(audience, &sub.consumer, sub.privileged);
            if sub.is_active() && wanted && reached {
                self.add_message(&resolved, Rc::clone(&event_type), Rc::clone(&payload));
            }
        }
    }

    /// Reads the registry generation (once per host callback); when it moved, caches of
    /// records that may be gone are pruned so they stay bounded by the live registry.
    fn refresh_generation(&mut self) {
        let generation = self.registry.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let live = usize::try_from(self.registry.active_count()).unwrap_or(usize::MAX);
        if self.subscriptions.len() > live.saturating_mul(2).saturating_add(1024) {
            self.subscriptions.clear();
            let registry = &self.registry;
            self.failing.retain(|id| registry.get_raw(id).is_some());
        }
    }

    fn candidates_for(&mut self, event_type: &str) -> Rc<[String]> {
        let generation = self.generation;
        // Inferred event types come from request paths, so their number is unbounded: the
        // cache starts over rather than grow past a bound.
        if self.candidates.0 != generation || self.candidates.1.len() >= MAX_CACHED_EVENT_TYPES {
            self.candidates = (generation, HashMap::new());
        }
        if let Some(ids) = self.candidates.1.get(event_type) {
            return Rc::clone(ids);
        }
        let ids: Rc<[String]> = self.registry.candidates(event_type).into();
        self.candidates
            .1
            .insert(event_type.to_string(), Rc::clone(&ids));
        ids
    }

    /// The subscription as stored now: read again only when the registry changed, and parsed
    /// again only when its own version moved.
    fn resolve(&mut self, id: &str) -> Option<Rc<Resolved>> {
        if let Some(cached) = self.subscriptions.get(id) {
            if cached.checked_at.get() == self.generation {
                return Some(Rc::clone(cached));
            }
        }
        let Some((bytes, version)) = self.registry.get_raw(id) else {
            self.subscriptions.remove(id);
            return None;
        };
        if let Some(cached) = self.subscriptions.get(id).filter(|r| r.version == version) {
            cached.checked_at.set(self.generation);
            return Some(Rc::clone(cached));
        }
        let subscription: Subscription = serde_json::from_slice(&bytes).ok()?;
        let destination = url::parse_destination(&subscription.url).ok();
        let secrets = subscription
            .secrets
            .iter()
            .filter_map(|s| Some((Secret::parse(&s.secret).ok()?, s.clone())))
            .collect();
        let resolved = Rc::new(Resolved {
            id: Rc::from(id),
            version,
            checked_at: Cell::new(self.generation),
            subscription,
            destination,
            secrets,
        });
        self.subscriptions
            .insert(id.to_string(), Rc::clone(&resolved));
        Some(resolved)
    }

    fn add_message(&mut self, to: &Resolved, event_type: Rc<str>, payload: Rc<Payload>) {
        let now = io::now_ms();
        let message = Message {
            webhook_id: ids::random_id(&mut self.rng, "msg_", 24)
                .unwrap_or_else(|_| ids::sequential_id("msg_", now)),
            subscription_id: Rc::clone(&to.id),
            event_type,
            payload,
            attempts: 0,
            created_ms: now,
            host_waits: 0,
        };
        self.schedule(message, &to.subscription.consumer, now);
    }

    /// Puts a message in the outbox for its first attempt, making room when it is full.
    fn schedule(&mut self, message: Message, consumer: &str, now: u64) {
        let first_delay = self
            .config
            .delivery
            .retry_schedule_ms
            .first()
            .copied()
            .unwrap_or(0);
        for dropped in self.outbox.push(message, consumer, now + first_delay) {
            self.drop_message(dropped, now);
        }
    }

    /// Counts, logs and keeps (for replay) a message dropped from a full queue.
    fn drop_message(&mut self, dropped: Message, now: u64) {
        self.metrics.events_dropped.inc();
        log::warn!(
            "proxy-webhooks: delivery dropped: queue full (max_queue {} / max_queue_bytes {}), subscription {}, webhook-id {}",
            self.config.delivery.max_queue,
            self.config.delivery.max_queue_bytes,
            dropped.subscription_id,
            dropped.webhook_id
        );
        let error = Some("dropped: queue full".to_string());
        let entry = self.log_entry(&dropped, now, now, None, error, State::Dropped);
        self.log(&dropped.subscription_id, entry);
        self.keep_for_replay(dropped, now);
    }

    /// Keeps a failed message for replay; the ones that no longer fit are marked `expired` in
    /// the attempt log, so the API refuses to replay them instead of accepting in vain.
    fn keep_for_replay(&mut self, message: Message, now: u64) {
        for gone in self.replayable.keep(
            message,
            self.config.delivery.max_replay,
            replay_bytes(&self.config),
        ) {
            let reason = Some("no longer kept for replay (delivery.max_replay)".to_string());
            let entry = self.log_entry(&gone, now, now, None, reason, State::Expired);
            self.log(&gone.subscription_id, entry);
        }
    }

    /// Sends a kept message again with the same webhook-id and body.
    fn replay(&mut self, webhook_id: &str) {
        let taken = self.replayable.take(webhook_id);
        let owner = taken
            .as_ref()
            .and_then(|m| self.resolve(&m.subscription_id));
        match (taken, owner) {
            (Some(message), Some(owner)) => {
                log::info!(
                    "proxy-webhooks: replaying webhook-id {webhook_id} for subscription {}",
                    message.subscription_id
                );
                self.schedule(message, &owner.subscription.consumer, io::now_ms());
            }
            (Some(_), None) => log::warn!(
                "proxy-webhooks: replay of webhook-id {webhook_id} asked, but its subscription is gone"
            ),
            (None, _) => log::warn!(
                "proxy-webhooks: replay of webhook-id {webhook_id} asked, but it is no longer kept (delivery.max_replay)"
            ),
        }
    }

    /// Starts every due attempt that the limits and pacing windows allow.
    fn pump(&mut self) {
        let now = io::now_ms();
        while let Some((key, message)) = self.outbox.next_attempt(now) {
            let message = message.clone();
            self.attempt(key, &message, now);
        }
        self.metrics.queue_depth.record(self.outbox.len() as u64);
        self.metrics.queue_bytes.record(self.outbox.bytes() as u64);
    }

    fn attempt(&mut self, key: MessageKey, message: &Message, now: u64) {
        // Deleted or disabled since the event: no delivery starts for it. A disabled one's
        // message is kept, so it can be replayed once the subscription is active again.
        let resolved = match self.resolve(&message.subscription_id) {
            None => {
                self.outbox.finish(key, None, Signal::Neutral, now, now);
                return;
            }
            Some(disabled) if !disabled.subscription.is_active() => {
                if let Some(message) = self.outbox.finish(key, None, Signal::Neutral, now, now) {
                    let reason = Some("subscription disabled".to_string());
                    let entry = self.log_entry(&message, now, now, None, reason, State::Failed);
                    self.log(&message.subscription_id, entry);
                    self.keep_for_replay(message, now);
                }
                return;
            }
            Some(active) => active,
        };
        let Some(destination) = &resolved.destination else {
            self.conclude(
                key,
                message,
                now,
                now,
                Response::NotSent("invalid url".into()),
            );
            return;
        };
        let secret_refs: Vec<&Secret> = resolved
            .secrets
            .iter()
            .filter(|(_, stored)| stored.signs_at(now))
            .map(|(secret, _)| secret)
            .collect();
        let request = delivery::build_request(
            destination,
            &self.config.delivery,
            message,
            now / 1000,
            &secret_refs,
        );
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        match hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            Some(message.payload.bytes()),
            vec![],
            Duration::from_millis(request.timeout_ms),
        ) {
            Ok(token) => {
                self.metrics.delivery_attempts.inc();
                self.in_flight.insert(
                    token,
                    InFlight {
                        key,
                        started_ms: now,
                    },
                );
            }
            // A host the egress cluster has not resolved yet: Envoy refuses a callout with a body
            // until its DNS cache has the host, and starts resolving it. Try again shortly; this
            // is not an attempt (the receiver saw nothing), unless it lasts a whole timeout.
            Err(Status::InternalFailure)
                if u64::from(message.host_waits) * FAST_TICK_MS < request.timeout_ms =>
            {
                self.outbox.defer(key, now + FAST_TICK_MS);
                self.tick_fast_until(now + FAST_TICK_FOR_MS);
            }
            Err(status) => {
                self.metrics.delivery_attempts.inc();
                let unresolved = status == Status::InternalFailure;
                let reason = delivery::refused_callout(unresolved, &request.cluster);
                self.conclude(key, message, now, now, Response::NotSent(reason));
            }
        }
    }

    /// Applies the verdict on an attempt: stats, logs, and the message's next step.
    fn conclude(
        &mut self,
        key: MessageKey,
        message: &Message,
        started_ms: u64,
        now: u64,
        response: Response,
    ) {
        let attempts = message.attempts + 1;
        let config = &self.config.delivery;
        let mut verdict = delivery::judge(&response, attempts, now, config, 0.0);
        if matches!(verdict, Verdict::RetryAt(_)) {
            // Only a retry needs the random jitter (a host call): draw it then.
            let unit = self.jitter_unit();
            verdict = delivery::judge(&response, attempts, now, &self.config.delivery, unit);
        }
        if self.drain_deadline.is_some() && matches!(verdict, Verdict::RetryAt(_)) {
            verdict = Verdict::Exhausted; // no later attempt will happen in this process
        }
        self.metrics
            .delivery_latency_ms
            .record(now.saturating_sub(started_ms));
        let (status, error) = match &response {
            Response::Status { code, .. } => (Some(*code), None),
            Response::NotSent(reason) => (None, Some(reason.clone())),
        };
        let (state, reschedule) = match verdict {
            Verdict::Delivered => (State::Succeeded, None),
            Verdict::RetryAt(at) => (State::Retrying, Some(at)),
            Verdict::Exhausted => (State::Exhausted, None),
            Verdict::Gone => (State::Failed, None),
        };
        let mut entry = self.log_entry(message, started_ms, now, status, error, state);
        entry.attempt = attempts;
        entry.next_retry_at = reschedule.map(crate::time::format_rfc3339_millis);
        self.log(&message.subscription_id, entry);
        self.count(verdict, message, attempts, &response, started_ms, now);
        if let Some(done) = self
            .outbox
            .finish(key, reschedule, response.signal(), started_ms, now)
        {
            if state.replayable() {
                self.keep_for_replay(done, now);
            }
        }
    }

    /// Stats, the failure log line, and the subscription's failure clock.
    fn count(
        &mut self,
        verdict: Verdict,
        message: &Message,
        attempts: u32,
        response: &Response,
        started_ms: u64,
        now: u64,
    ) {
        let id = &message.subscription_id;
        if verdict == Verdict::Delivered {
            self.metrics.deliveries_succeeded.inc();
            self.failing.succeeded(id);
            return;
        }
        self.metrics.deliveries_failed.inc();
        log::warn!(
            "proxy-webhooks: delivery failed: subscription {id}, webhook-id {}, attempt {attempts}, {}",
            message.webhook_id,
            response.describe()
        );
        if verdict == Verdict::Gone {
            self.disable(id, "gone", now);
            return;
        }
        if verdict == Verdict::Exhausted {
            self.metrics.deliveries_exhausted.inc();
        }
        let disable_after = self.config.delivery.disable_after_ms;
        if self.failing.failed(id, started_ms, now, disable_after) {
            self.disable(id, "failing", now);
        }
    }

    fn log_entry(
        &self,
        message: &Message,
        started_ms: u64,
        now: u64,
        status: Option<u16>,
        error: Option<String>,
        state: State,
    ) -> Attempt {
        Attempt {
            webhook_id: message.webhook_id.clone(),
            event_type: message.event_type.to_string(),
            attempt: message.attempts,
            timestamp: crate::time::format_rfc3339_millis(started_ms),
            response_status: status,
            error,
            duration_ms: now.saturating_sub(started_ms),
            next_retry_at: None,
            state,
        }
    }

    fn log(&mut self, subscription_id: &str, attempt: Attempt) {
        let entries = self
            .unlogged
            .entry(subscription_id.to_string())
            .or_default();
        // The log keeps the newest MAX_ENTRIES only: gather no more than that per tick.
        if entries.len() >= attempts::MAX_ENTRIES {
            entries.remove(0);
        }
        entries.push(attempt);
    }

    /// Writes the attempts gathered since the last tick, one shared-data write per subscription.
    fn flush_log(&mut self) {
        for (id, entries) in std::mem::take(&mut self.unlogged) {
            // A subscription deleted meanwhile keeps no log (the API cleared it).
            if self.registry.get_raw(&id).is_none() {
                continue;
            }
            if let Err(e) = attempts::record(&SharedData, &id, entries) {
                log::warn!("proxy-webhooks: attempt log of subscription {id} not written: {e:?}");
            }
        }
    }

    /// During shutdown: tells Envoy it may stop once nothing is in flight or the time is up.
    fn finish_drain_if_done(&mut self) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        let idle = self.outbox.is_empty();
        if idle || io::now_ms() >= deadline {
            self.flush_log();
            if !idle {
                log::warn!(
                    "proxy-webhooks: shutting down with {} undelivered message(s) after delivery.drain_timeout",
                    self.outbox.len()
                );
            }
            self.drain_deadline = None;
            let _ = hostcalls::done();
        }
    }

    /// Tells the workers' watchdogs that the dispatcher runs.
    fn beat(&mut self) {
        let now = io::now_ms();
        if now.saturating_sub(self.beat_at) >= watchdog::BEAT_EVERY_MS {
            let _ = SharedData.set(watchdog::HEARTBEAT_KEY, &watchdog::beat(now), None);
            self.beat_at = now;
        }
    }

    /// Ticks every [`FAST_TICK_MS`] until `until`, then back to [`TICK`].
    fn tick_fast_until(&mut self, until: u64) {
        if self.fast_tick_until.is_none() {
            let _ = hostcalls::set_tick_period(Duration::from_millis(FAST_TICK_MS));
        }
        self.fast_tick_until = Some(until);
    }

    fn tick_slow_when_due(&mut self, now: u64) {
        if self.fast_tick_until.is_some_and(|until| now >= until) {
            let _ = hostcalls::set_tick_period(TICK);
            self.fast_tick_until = None;
        }
    }

    /// Disables a subscription for good reason; only PATCH `status: active` turns it back on.
    fn disable(&mut self, id: &str, reason: &str, now: u64) {
        let changed = self.registry.update(id, |s| {
            if !s.is_active() {
                return Err(());
            }
            s.status = crate::subscription::Status::Disabled;
            s.disabled_reason = Some(reason.to_string());
            s.updated_at_ms = now;
            Ok(())
        });
        // A disabled subscription's failure clock starts again from its next failure once it is
        // re-enabled; its cached record is stale now.
        self.failing.forget(id);
        self.subscriptions.remove(id);
        if matches!(changed, Ok(Ok(_))) {
            self.metrics.subscriptions_disabled.inc();
            log::warn!("proxy-webhooks: subscription {id} disabled: {reason}");
        }
    }

    fn jitter_unit(&mut self) -> f64 {
        let mut bytes = [0u8; 4];
        if self.rng.fill(&mut bytes).is_err() {
            return 0.0; // no jitter rather than a made-up one
        }
        f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
    }

    /// What the receiver answered. `headers` is the response's header count: 0 when the callout
    /// was reset after the receiver started answering (a short body, a closed connection).
    fn read_response(&self, headers: usize, body_size: usize) -> Response {
        if headers == 0 {
            return Response::NotSent(delivery::RESET.into());
        }
        let header = |name| {
            io::map_value(MapType::HttpCallResponseHeaders, name)
                .and_then(|v| String::from_utf8(v).ok())
        };
        let Some(code) = header(":status").and_then(|s| s.parse::<u16>().ok()) else {
            return Response::NotSent("the receiver's answer has no valid status".into());
        };
        let retry_after_ms =
            header("retry-after").and_then(|v| crate::time::parse_retry_after(&v, io::now_ms()));
        // Only Envoy's own 503/504 replies say something in their body that matters here.
        let peek = if matches!(code, 503 | 504) && body_size > 0 {
            io::buffer(BufferType::HttpCallResponseBody, body_size.min(BODY_PEEK))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        delivery::classify(code, retry_after_ms, &peek)
    }
}

/// Bytes of failed messages kept for replay: a quarter of what the queue may hold.
fn replay_bytes(config: &Config) -> usize {
    config.delivery.max_queue_bytes / 4
}

/// The outbox's bounds from `delivery`.
fn limits(config: &Config) -> Limits {
    let d = &config.delivery;
    Limits {
        max_queue: d.max_queue,
        max_queue_bytes: d.max_queue_bytes,
        max_in_flight: d.max_in_flight,
        max_in_flight_per_subscription: d.max_in_flight_per_subscription,
    }
}

impl Context for DispatcherRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(InFlight { key, started_ms }) = self.in_flight.remove(&token) else {
            return;
        };
        self.refresh_generation();
        let response = self.read_response(headers, body_size);
        if let Some(message) = self.outbox.get(key).cloned() {
            self.conclude(key, &message, started_ms, io::now_ms(), response);
        }
        self.pump();
        self.finish_drain_if_done();
    }

    fn on_done(&mut self) -> bool {
        self.refresh_generation();
        let pending = self.outbox.len();
        if pending == 0 {
            self.flush_log();
            return true;
        }
        // Envoy 1.40 does not wait for a singleton that returns false here (it tears the VM down
        // at once on SIGTERM), so name every message that may be lost while it still can.
        log::warn!(
            "proxy-webhooks: shutting down with {pending} pending message(s); sending them now, but Envoy may stop first (drain listeners and wait for webhooks_queue_depth 0 before stopping Envoy)"
        );
        for message in self.outbox.messages().take(SHUTDOWN_LOG_LINES) {
            log::warn!(
                "proxy-webhooks: at shutdown, pending: subscription {}, webhook-id {}, attempts so far {}",
                message.subscription_id,
                message.webhook_id,
                message.attempts
            );
        }
        self.drain_deadline = Some(io::now_ms() + self.config.delivery.drain_timeout_ms);
        self.pump();
        false
    }
}

impl RootContext for DispatcherRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.registry.prepare();
        self.beat();
        self.registry
            .sync_static(&self.config.subscriptions, io::now_ms());
        self.queue = hostcalls::register_shared_queue(QUEUE_NAME).ok();
        if self.queue.is_none() {
            log::error!("proxy-webhooks: cannot register the shared queue {QUEUE_NAME}");
            return false;
        }
        hostcalls::set_tick_period(TICK).is_ok()
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.refresh_generation();
        self.drain_queue();
        self.pump();
    }

    fn on_tick(&mut self) {
        self.beat();
        self.refresh_generation();
        self.pump();
        self.tick_slow_when_due(io::now_ms());
        self.flush_log();
        self.finish_drain_if_done();
        self.metrics
            .subscriptions_active
            .record(self.registry.active_count());
    }
}
