//! The dispatcher, free of host calls: takes events off the shared queue, fans them out to
//! matching subscriptions, schedules them through the outbox, and decides every attempt's next
//! step (retry, give up, disable, keep for replay, drain at shutdown). It is generic over
//! [`DispatchHost`], so `host::dispatcher` only forwards Envoy's callbacks and makes host calls.
//!
//! This folder also owns what only the dispatcher needs: the [`outbox`] of pending messages,
//! [`pacing`] per receiver, [`delivery`] (requests, verdicts, the replay store) and the glue to
//! fleet mode's outbox ([`journal`]), registry reads ([`fleet`]) and etcd's token ([`session`]).
//!
//! May use: `config`, `fleet`, `model`, `port`, `registry`, `support`.

use crate::config::Config;
use crate::dispatcher::delivery::{FailureClock, ReplayLimits, ReplayStore, Response, Verdict};
use crate::dispatcher::outbox::{Limits, Message, MessageKey, Outbox, Payload};
use crate::dispatcher::pacing::Signal;
use crate::fleet::vault::has_sealed_values;
use crate::model::audience::{self, Target};
use crate::model::queue::{QueueMessage, QUEUE_NAME};
use crate::model::signing::Secret;
use crate::model::subscription::{SigningSecret, Subscription};
use crate::model::trace::TraceContext;
use crate::port::{CalloutRefused, DispatchHost, Metric};
use crate::registry::attempts::{self, Attempt, State};
use crate::registry::store::KvStore;
use crate::registry::watchdog;
use crate::registry::Registry;
use crate::support::hashing::HashMap;
use crate::support::ids;
use crate::support::url::{self, Destination};
use std::cell::Cell;
use std::rc::Rc;

pub mod delivery;
mod fleet;
mod journal;
pub mod outbox;
pub mod pacing;
mod session;
mod shared_log;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

/// How often scheduled retries are looked at.
pub const TICK_MS: u64 = 100;
/// The tick while attempts wait for Envoy to resolve a new host (usually done within one turn of
/// its event loop), so a first delivery is not held back a whole tick.
pub const FAST_TICK_MS: u64 = 10;
/// How long the fast tick lasts after the last such wait.
const FAST_TICK_FOR_MS: u64 = 1000;
/// Queue messages taken per callback, at most: one callback never runs unbounded (the rest
/// waits for the next callback or tick).
pub const MAX_DEQUEUE: usize = 1000;
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
    /// Where to deliver, checked against today's egress policy (`delivery.allow_http`,
    /// `allow_private_destinations`): a URL stored under a looser configuration is refused with
    /// the reason, not delivered to.
    destination: Result<Destination, String>,
    /// The secrets, parsed, current first (a secret's HMAC key is set up once, not per attempt).
    secrets: Vec<(Secret, SigningSecret)>,
}

/// An attempt waiting for its response.
struct InFlight {
    key: MessageKey,
    started_ms: u64,
}

pub struct Dispatcher<H: DispatchHost> {
    host: H,
    config: Rc<Config>,
    registry: Registry<H::Store>,
    outbox: Outbox,
    in_flight: HashMap<u32, InFlight>,
    subscriptions: HashMap<String, Rc<Resolved>>,
    /// The registry generation, read once per host callback.
    generation: u32,
    /// Fan-out candidates per event type, valid while the registry generation is unchanged.
    candidates: (u32, HashMap<String, Rc<[String]>>),
    replayable: ReplayStore,
    /// Attempts not yet written to the shared attempt log, per subscription (flushed per tick).
    unlogged: HashMap<String, Vec<Attempt>>,
    /// Subscriptions whose kept messages changed since the last tick, with the detection times
    /// of those no longer kept: their recover index is written at the tick.
    unindexed: HashMap<String, Vec<u64>>,
    /// Since when each subscription has failed without a success in between.
    failing: FailureClock,
    /// Set once Envoy asked to stop: the time after which we stop waiting.
    drain_deadline: Option<u64>,
    /// While set, the tick is fast (attempts wait for a host to be resolved).
    fast_tick_until: Option<u64>,
    /// When the heartbeat was last written (see `crate::registry::watchdog`).
    beat_at: u64,
    /// Fleet mode (`config.fleet`): the registry kept from etcd.
    fleet: Option<fleet::Fleet>,
}

impl<H: DispatchHost> Dispatcher<H> {
    pub fn new(config: Rc<Config>, host: H) -> Dispatcher<H> {
        Dispatcher {
            outbox: Outbox::new(limits(&config)),
            config,
            registry: Registry::new(host.store().clone()),
            host,
            in_flight: HashMap::default(),
            subscriptions: HashMap::default(),
            generation: 0,
            candidates: (0, HashMap::default()),
            replayable: ReplayStore::default(),
            unlogged: HashMap::default(),
            unindexed: HashMap::default(),
            failing: FailureClock::default(),
            drain_deadline: None,
            fast_tick_until: None,
            beat_at: 0,
            fleet: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn host(&self) -> &H {
        &self.host
    }

    #[cfg(test)]
    pub(crate) fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    // ---- Envoy's callbacks ----

    /// Prepares shared data, takes the static subscriptions in, registers the queue and starts
    /// the tick. False when the dispatcher cannot run.
    pub fn on_configure(&mut self) -> bool {
        let config = Rc::clone(&self.config);
        if let Some(fleet) = &config.fleet {
            let node_id = self.node_id(fleet);
            log::info!(
                "proxy-webhooks: fleet mode: node {node_id}: subscriptions and pending messages kept in etcd (cluster {}, prefix {}), read every {} ms, lease TTL {} ms",
                fleet.cluster,
                fleet.prefix,
                fleet.sync_interval_ms,
                fleet.lease_ttl_ms
            );
            let now = self.host.now_ms();
            self.fleet = Some(fleet::Fleet::new(&config, fleet, &node_id, now));
        }
        self.registry.prepare();
        crate::registry::ratelimit::prepare(self.host.store());
        self.announce_registry_read();
        self.beat();
        self.registry
            .sync_static(&self.config.subscriptions, self.host.now_ms());
        // Syncing many static subscriptions may take a while: say at once that we are alive.
        self.beat_now();
        if !self.host.register_queue(QUEUE_NAME) {
            log::error!("proxy-webhooks: cannot register the shared queue {QUEUE_NAME}");
            return false;
        }
        self.record_bounds();
        self.session_tick();
        self.fleet_tick();
        self.journal_send();
        self.host.set_tick_period_ms(TICK_MS)
    }

    pub fn on_queue_ready(&mut self) {
        self.beat();
        self.refresh_generation();
        self.drain_queue();
        self.journal_send();
        self.pump();
    }

    pub fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize) {
        self.beat();
        let Some(token) = self.on_session_answer(token, headers, body_size) else {
            return;
        };
        if self.on_fleet_answer(token, headers, body_size) {
            return;
        }
        let Some(InFlight { key, started_ms }) = self.in_flight.remove(&token) else {
            return;
        };
        self.refresh_generation();
        let response = self.read_response(headers, body_size);
        if let Some(message) = self.outbox.get(key).cloned() {
            let now = self.host.now_ms();
            self.conclude(key, &message, started_ms, now, response);
        }
        self.pump();
        self.finish_drain_if_done();
    }

    pub fn on_tick(&mut self) {
        self.beat();
        self.session_tick();
        self.fleet_tick();
        self.refresh_generation();
        self.drain_queue();
        self.journal_send();
        self.pump();
        self.tick_slow_when_due(self.host.now_ms());
        self.flush_log();
        self.shared_log_send();
        self.finish_drain_if_done();
        self.host
            .record_metric(Metric::SubscriptionsActive, self.registry.active_count());
        self.record_bounds();
    }

    /// The queue's bounds as gauges (at start and every tick), so that alerts compare depth
    /// and bytes with them as ratios, whatever the configuration.
    fn record_bounds(&self) {
        let delivery = &self.config.delivery;
        self.host
            .record_metric(Metric::QueueMax, delivery.max_queue as u64);
        self.host
            .record_metric(Metric::QueueMaxBytes, delivery.max_queue_bytes as u64);
    }

    /// Envoy asks to stop: true when nothing is pending; otherwise the pending messages are
    /// sent now and `done` is called once they are settled or `delivery.drain_timeout` is up.
    pub fn on_done(&mut self) -> bool {
        self.refresh_generation();
        let pending = self.outbox.len();
        if self.fleet.is_some() {
            return self.stop_in_fleet(pending);
        }
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
        self.drain_deadline = Some(self.host.now_ms() + self.config.delivery.drain_timeout_ms);
        self.pump();
        false
    }

    /// In fleet mode pending messages are in etcd: the node restarted with its id, or another
    /// replica once its lease expires, delivers them. Only those etcd does not have are lost.
    fn stop_in_fleet(&mut self, pending: usize) -> bool {
        self.flush_log();
        let lost = self.not_durable();
        if lost > 0 {
            log::warn!(
                "proxy-webhooks: shutting down with {lost} pending message(s) that etcd does not have (etcd unreachable or slower than the events): they are lost"
            );
        }
        if pending > 0 {
            log::info!(
                "proxy-webhooks: shutting down; {pending} pending message(s) stay in etcd for this node's restart or another replica"
            );
        }
        true
    }

    /// `fleet.node_id`, else Envoy's node id, else a random one (then a restart cannot resume
    /// its own messages; another replica claims them once the lease expires).
    fn node_id(&mut self, fleet: &crate::config::FleetConfig) -> String {
        if let Some(id) = fleet.node_id.clone().or_else(|| self.host.node_id()) {
            return id;
        }
        let now = self.host.now_ms();
        let id = ids::random_id(&mut self.host, "node_", 16)
            .unwrap_or_else(|_| ids::sequential_id("node_", now));
        log::warn!("proxy-webhooks: fleet: no fleet.node_id and no Envoy node id: using {id}; a restart will not resume its own messages (another replica claims them once its lease expires)");
        id
    }

    // ---- Intake ----

    /// Takes at most [`MAX_DEQUEUE`] messages off the shared queue.
    fn drain_queue(&mut self) {
        if self.awaiting_first_sync(self.host.now_ms()) {
            return;
        }
        for _ in 0..MAX_DEQUEUE {
            let Some(bytes) = self.host.dequeue() else {
                return;
            };
            match QueueMessage::decode(&bytes) {
                Ok(QueueMessage::Event {
                    event_type,
                    payload,
                    audience,
                    trace,
                }) => self.fan_out(&event_type, payload, &audience, trace),
                Ok(QueueMessage::Test {
                    subscription_id,
                    payload,
                }) => {
                    if let Some(resolved) = self.resolve(&subscription_id) {
                        self.add_message(
                            &resolved,
                            crate::model::subscription::TEST_EVENT_TYPE.into(),
                            Payload::new(payload),
                        );
                    }
                }
                Ok(QueueMessage::Replay { webhook_id, kept }) => self.replay(&webhook_id, &kept),
                Ok(QueueMessage::Recover {
                    subscription_id,
                    since_ms,
                }) => self.recover(&subscription_id, since_ms),
                Ok(QueueMessage::Cached {
                    subscription_id,
                    mod_revision,
                }) => self.cached_outside_sync(&subscription_id, mod_revision),
                Err(e) => log::warn!("proxy-webhooks: ignoring a malformed queue message: {e}"),
            }
        }
    }

    /// One message per matching, active subscription the audience reaches; the payload is
    /// shared, not copied.
    fn fan_out(
        &mut self,
        event_type: &str,
        payload: Vec<u8>,
        audience: &Target,
        trace: Option<TraceContext>,
    ) {
        if *audience == Target::Nobody {
            self.host.add_metric(Metric::EventsUnaddressed, 1);
        }
        let event_type: Rc<str> = Rc::from(event_type);
        let payload = Payload::traced(payload, trace);
        for id in self.candidates_for(&event_type).iter() {
            let Some(resolved) = self.resolve(id) else {
                continue;
            };
            let sub = &resolved.subscription;
            let wanted = sub
                .events
                .iter()
                .any(|f| crate::model::subscription::filter_matches(f, &event_type));
            let reached = audience::reaches(audience, &sub.consumer, sub.privileged);
            if sub.is_active() && wanted && reached {
                self.add_message(&resolved, Rc::clone(&event_type), Rc::clone(&payload));
            }
        }
    }

    // ---- Caches of the registry ----

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
            self.candidates = (generation, HashMap::default());
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
        let subscription = Subscription::from_json(&bytes)?;
        let sealed = has_sealed_values(&subscription);
        let destination = match sealed {
            // Never sent unsigned or signed with the wrong secret: it waits for its retries.
            true => Err("its signing secret cannot be read on this replica (sealed with a key it is not configured with)".to_string()),
            false => url::check_destination(&subscription.url, self.config.delivery.url_policy())
                .map_err(|e| format!("url refused: {}", e.message)),
        };
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

    // ---- Scheduling and the books of dropped, expired and replayed messages ----

    fn add_message(&mut self, to: &Resolved, event_type: Rc<str>, payload: Rc<Payload>) {
        let now = self.host.now_ms();
        let message = Message {
            webhook_id: ids::random_id(&mut self.host, "msg_", 24)
                .unwrap_or_else(|_| ids::sequential_id("msg_", now)),
            subscription_id: Rc::clone(&to.id),
            event_type,
            payload,
            attempts: 0,
            created_ms: now,
            host_waits: 0,
            replayed: false,
        };
        self.schedule(message, &to.subscription.consumer, now);
    }

    /// Puts a message in the outbox for its first attempt, in fleet mode once etcd has it.
    fn schedule(&mut self, message: Message, consumer: &str, now: u64) {
        if let Some(message) = self.hold_until_written(message, consumer) {
            self.enqueue(message, consumer, now);
        }
    }

    /// Puts a message in the outbox for its first attempt, making room when it is full.
    fn enqueue(&mut self, message: Message, consumer: &str, now: u64) {
        let first_delay = self
            .config
            .delivery
            .retry_schedule_ms
            .first()
            .copied()
            .unwrap_or(0);
        let fifo = self
            .resolve(&message.subscription_id)
            .is_some_and(|r| r.subscription.ordering.is_fifo());
        let due = now + first_delay;
        for (dropped, consumer) in self.outbox.push_ordered(message, consumer, due, fifo) {
            self.drop_message(dropped, &consumer, now);
        }
    }

    /// Counts, logs and keeps (for replay) a message dropped from a full queue.
    fn drop_message(&mut self, dropped: Message, consumer: &str, now: u64) {
        self.host.add_metric(Metric::EventsDropped, 1);
        log::warn!(
            "proxy-webhooks: delivery dropped: queue full (max_queue {} / max_queue_bytes {}), subscription {}, webhook-id {}",
            self.config.delivery.max_queue,
            self.config.delivery.max_queue_bytes,
            dropped.subscription_id,
            dropped.webhook_id
        );
        let error = Some("dropped: queue full".to_string());
        let entry = log_entry(&dropped, now, now, None, error, State::Dropped);
        self.log(&dropped.subscription_id, entry);
        self.keep_for_replay(dropped, consumer, now);
    }

    /// Keeps a failed message for replay; the ones that no longer fit are marked `expired` in
    /// the attempt log, so the API refuses to replay them instead of accepting in vain.
    fn keep_for_replay(&mut self, message: Message, consumer: &str, now: u64) {
        self.unjournal(&message, true);
        let d = &self.config.delivery;
        let limits = ReplayLimits {
            max_messages: d.max_replay,
            max_per_consumer: d.max_replay_per_consumer,
            max_bytes: replay_bytes(&self.config),
        };
        self.reindex(&message.subscription_id, None);
        for gone in self.replayable.keep(message, consumer, limits) {
            self.reindex(&gone.subscription_id, Some(gone.created_ms));
            let reason = Some(
                "no longer kept for replay (delivery.max_replay or max_replay_per_consumer)"
                    .to_string(),
            );
            let entry = log_entry(&gone, now, now, None, reason, State::Expired);
            self.log(&gone.subscription_id, entry);
        }
    }

    /// Sends a kept message again with the same webhook-id and body: the one kept in memory,
    /// or (fleet mode) the copy etcd kept, which the API checked and this replica then owns.
    fn replay(&mut self, webhook_id: &str, kept: &[u8]) {
        let mut taken = if kept.is_empty() {
            self.replayable.take(webhook_id)
        } else {
            self.message_of_kept_copy(webhook_id, kept)
        };
        if let Some(message) = taken.as_mut() {
            message.replayed = true;
            self.reindex(&message.subscription_id, None);
        }
        let owner = taken
            .as_ref()
            .and_then(|m| self.resolve(&m.subscription_id));
        match (taken, owner) {
            (Some(message), Some(owner)) => {
                log::info!(
                    "proxy-webhooks: replaying webhook-id {webhook_id} for subscription {}",
                    message.subscription_id
                );
                let now = self.host.now_ms();
                self.schedule(message, &owner.subscription.consumer, now);
            }
            (Some(_), None) => log::warn!(
                "proxy-webhooks: replay of webhook-id {webhook_id} asked, but its subscription is gone"
            ),
            (None, _) if kept.is_empty() => log::warn!(
                "proxy-webhooks: replay of webhook-id {webhook_id} asked, but it is no longer kept (delivery.max_replay or max_replay_per_consumer)"
            ),
            (None, _) => {}
        }
    }

    /// Sends again every message of `subscription_id` detected since `since_ms` that is kept
    /// in memory, in detection order (`POST .../recover`).
    fn recover(&mut self, subscription_id: &str, since_ms: u64) {
        let Some(owner) = self.resolve(subscription_id) else {
            log::warn!(
                "proxy-webhooks: recover of subscription {subscription_id} asked, but it is gone"
            );
            return;
        };
        let messages = self.replayable.take_since(subscription_id, since_ms);
        log::info!(
            "proxy-webhooks: recovering {} message(s) of subscription {subscription_id}",
            messages.len()
        );
        self.reindex(subscription_id, None);
        let now = self.host.now_ms();
        for mut message in messages {
            message.replayed = true;
            self.schedule(message, &owner.subscription.consumer, now);
        }
    }

    /// Marks a subscription's recover index for the next tick, with a message no longer kept.
    fn reindex(&mut self, subscription_id: &str, lost_ms: Option<u64>) {
        let lost = self
            .unindexed
            .entry(subscription_id.to_string())
            .or_default();
        lost.extend(lost_ms);
    }

    // ---- Attempts ----

    /// Starts every due attempt that the limits and pacing windows allow.
    fn pump(&mut self) {
        let now = self.host.now_ms();
        while let Some((key, message)) = self.outbox.next_attempt(now) {
            let message = message.clone();
            self.attempt(key, &message, now);
        }
        self.host
            .record_metric(Metric::QueueDepth, self.outbox.len() as u64);
        self.host
            .record_metric(Metric::QueueBytes, self.outbox.bytes() as u64);
    }

    fn attempt(&mut self, key: MessageKey, message: &Message, now: u64) {
        // Deleted or disabled since the event: no delivery starts for it. A disabled one's
        // message is kept, so it can be replayed once the subscription is active again.
        let resolved = match self.resolve(&message.subscription_id) {
            None => {
                if let Some(message) = self.outbox.finish(key, None, Signal::Neutral, now, now) {
                    self.unjournal(&message, false);
                }
                return;
            }
            Some(disabled) if !disabled.subscription.is_active() => {
                let consumer = self.outbox.consumer_of(key);
                if let Some(message) = self.outbox.finish(key, None, Signal::Neutral, now, now) {
                    let reason = Some("subscription disabled".to_string());
                    let entry = log_entry(&message, now, now, None, reason, State::Failed);
                    self.log(&message.subscription_id, entry);
                    self.keep_for_replay(message, consumer.as_deref().unwrap_or_default(), now);
                }
                return;
            }
            Some(active) => active,
        };
        let destination = match &resolved.destination {
            Ok(destination) => destination,
            Err(reason) => {
                let response = Response::NotSent(reason.clone());
                self.conclude(key, message, now, now, response);
                return;
            }
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
            &resolved.subscription.headers,
        );
        match self.host.dispatch(&request, message.payload.bytes()) {
            Ok(token) => {
                self.host.add_metric(Metric::DeliveryAttempts, 1);
                let started_ms = now;
                self.in_flight.insert(token, InFlight { key, started_ms });
            }
            // A host the egress cluster has not resolved yet: Envoy refuses a callout with a body
            // until its DNS cache has the host, and starts resolving it. Try again shortly; this
            // is not an attempt (the receiver saw nothing), unless it lasts a whole timeout.
            Err(CalloutRefused {
                unresolved: true,
                no_token: false,
            }) if u64::from(message.host_waits) * FAST_TICK_MS < request.timeout_ms => {
                self.outbox.defer(key, now + FAST_TICK_MS);
                self.tick_fast_until(now + FAST_TICK_FOR_MS);
            }
            Err(CalloutRefused { unresolved, .. }) => {
                self.host.add_metric(Metric::DeliveryAttempts, 1);
                let reason = delivery::refused_callout(unresolved, &request.cluster);
                self.conclude(key, message, now, now, Response::NotSent(reason));
            }
        }
    }

    /// What the receiver answered.
    fn read_response(&self, headers: usize, body_size: usize) -> Response {
        let answer = self.host.callout_response(headers, body_size);
        if answer.headers == 0 {
            return Response::NotSent(delivery::RESET.into());
        }
        let Some(code) = answer.status.and_then(|s| s.parse::<u16>().ok()) else {
            return Response::NotSent("the receiver's answer has no valid status".into());
        };
        let now = self.host.now_ms();
        let retry_after_ms = answer
            .retry_after
            .and_then(|v| crate::support::time::parse_retry_after(&v, now));
        // Only Envoy's own 503/504 replies say something in their body that matters here.
        let peek = if matches!(code, 503 | 504) && answer.body_size > 0 {
            self.host.callout_body(answer.body_size.min(BODY_PEEK))
        } else {
            Vec::new()
        };
        delivery::classify(code, retry_after_ms, &peek)
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
        let verdict = self.verdict(&response, attempts, now);
        self.host
            .record_metric(Metric::DeliveryLatencyMs, now.saturating_sub(started_ms));
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
        let mut entry = log_entry(message, started_ms, now, status, error, state);
        entry.attempt = attempts;
        entry.next_retry_at = reschedule.map(crate::support::time::format_rfc3339_millis);
        self.log(&message.subscription_id, entry);
        self.count(verdict, message, attempts, &response, started_ms, now);
        let consumer = self.outbox.consumer_of(key);
        if let Some(done) = self
            .outbox
            .finish(key, reschedule, response.signal(), started_ms, now)
        {
            if state.replayable() {
                self.keep_for_replay(done, consumer.as_deref().unwrap_or_default(), now);
            } else {
                self.unjournal(&done, false);
            }
        }
    }

    /// The verdict on attempt number `attempts`: random jitter is drawn only for a retry, and
    /// during shutdown a retry becomes exhaustion (no later attempt happens in this process).
    fn verdict(&mut self, response: &Response, attempts: u32, now: u64) -> Verdict {
        let config = &self.config.delivery;
        let mut verdict = delivery::judge(response, attempts, now, config, 0.0);
        if matches!(verdict, Verdict::RetryAt(_)) {
            let unit = self.jitter_unit();
            verdict = delivery::judge(response, attempts, now, &self.config.delivery, unit);
        }
        if self.drain_deadline.is_some() && matches!(verdict, Verdict::RetryAt(_)) {
            verdict = Verdict::Exhausted;
        }
        verdict
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
            self.host.add_metric(Metric::DeliveriesSucceeded, 1);
            self.failing.succeeded(id);
            return;
        }
        self.host.add_metric(Metric::DeliveriesFailed, 1);
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
            self.host.add_metric(Metric::DeliveriesExhausted, 1);
        }
        let disable_after = self.config.delivery.disable_after_ms;
        if self.failing.failed(id, started_ms, now, disable_after) {
            self.disable(id, "failing", now);
        }
    }

    /// Disables a subscription for good reason; only PATCH `status: active` turns it back on.
    fn disable(&mut self, id: &str, reason: &str, now: u64) {
        let changed = self.registry.update(id, |s| {
            if !s.is_active() {
                return Err(());
            }
            s.status = crate::model::subscription::Status::Disabled;
            s.disabled_reason = Some(reason.to_string());
            s.updated_at_ms = now;
            Ok(())
        });
        // A disabled subscription's failure clock starts again from its next failure once it is
        // re-enabled; its cached record is stale now.
        self.failing.forget(id);
        self.subscriptions.remove(id);
        if let Ok(Ok(after)) = changed {
            self.host.add_metric(Metric::SubscriptionsDisabled, 1);
            log::warn!("proxy-webhooks: subscription {id} disabled: {reason}");
            if after.is_static {
                self.share_static_status(after);
            } else {
                let before_version = after.version.saturating_sub(1);
                self.fleet_write(after, before_version);
            }
        }
    }

    /// A uniform number in [-1, 1] for the retry jitter; none (0) rather than a made-up one.
    fn jitter_unit(&mut self) -> f64 {
        let mut bytes = [0u8; 4];
        if self.host.fill(&mut bytes).is_err() {
            return 0.0;
        }
        f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
    }

    // ---- The attempt log ----

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

    /// Writes the recover index of every subscription whose kept messages changed.
    fn flush_kept_index(&mut self) {
        for (id, lost) in std::mem::take(&mut self.unindexed) {
            let kept = self.replayable.times_of(&id);
            if let Err(e) = self.registry.record_kept(&id, kept, &lost) {
                log::warn!("proxy-webhooks: recover index of subscription {id} not written: {e:?}");
            }
        }
    }

    /// Writes the attempts gathered since the last tick, one store write per subscription.
    fn flush_log(&mut self) {
        self.flush_kept_index();
        for (id, entries) in std::mem::take(&mut self.unlogged) {
            // A subscription deleted meanwhile keeps no log (the API cleared it).
            if self.registry.get_raw(&id).is_none() {
                continue;
            }
            match self.registry.record_attempts(&id, entries) {
                Ok(()) => self.log_changed(&id),
                Err(e) => {
                    log::warn!(
                        "proxy-webhooks: attempt log of subscription {id} not written: {e:?}"
                    )
                }
            }
        }
    }

    // ---- Shutdown, heartbeat, tick ----

    /// During shutdown: tells Envoy it may stop once nothing is in flight or the time is up.
    fn finish_drain_if_done(&mut self) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        let idle = self.outbox.is_empty();
        if idle || self.host.now_ms() >= deadline {
            self.flush_log();
            if !idle {
                log::warn!(
                    "proxy-webhooks: shutting down with {} undelivered message(s) after delivery.drain_timeout",
                    self.outbox.len()
                );
            }
            self.drain_deadline = None;
            self.host.done();
        }
    }

    /// Tells the workers' watchdogs that the dispatcher runs (at most every
    /// [`watchdog::BEAT_EVERY_MS`]; called from every callback, so a long burst of queue and
    /// response callbacks without a tick never looks like a dead dispatcher).
    fn beat(&mut self) {
        if self.host.now_ms().saturating_sub(self.beat_at) >= watchdog::BEAT_EVERY_MS {
            self.beat_now();
        }
    }

    fn beat_now(&mut self) {
        let now = self.host.now_ms();
        let _ = self
            .host
            .store()
            .set(watchdog::HEARTBEAT_KEY, &watchdog::beat(now), None);
        self.beat_at = now;
    }

    /// Ticks every [`FAST_TICK_MS`] until `until`, then back to [`TICK_MS`].
    fn tick_fast_until(&mut self, until: u64) {
        if self.fast_tick_until.is_none() {
            self.host.set_tick_period_ms(FAST_TICK_MS);
        }
        self.fast_tick_until = Some(until);
    }

    fn tick_slow_when_due(&mut self, now: u64) {
        if self.fast_tick_until.is_some_and(|until| now >= until) {
            self.host.set_tick_period_ms(TICK_MS);
            self.fast_tick_until = None;
        }
    }
}

fn log_entry(
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
        timestamp: crate::support::time::format_rfc3339_millis(started_ms),
        response_status: status,
        error,
        duration_ms: now.saturating_sub(started_ms),
        next_retry_at: None,
        state,
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
