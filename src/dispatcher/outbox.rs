//! The dispatcher's pending messages, and which one to attempt next.
//!
//! Messages wait in one lane per subscription. An attempt starts only when the message is due
//! and its limits allow it: the global `max_in_flight`, the consumer's share, and the lane's
//! own pacing window ([`crate::dispatcher::pacing`]), itself capped by the lane's share of its consumer's.
//! Lanes take turns (round-robin), so a subscription with thousands of due messages does not
//! delay another's first one. Shares are split between the *active* consumers and lanes only
//! (with due work or attempts in flight), so retries due in an hour cost nobody anything: a
//! consumer's share is 7/8 of `max_in_flight` divided by the active consumers. The last eighth
//! is a reserve for consumers with fewer than `max_in_flight / 64` attempts in flight, so
//! consumers whose receivers all hang leave room for eight more to arrive and be served at once.
//!
//! Memory is bounded by `max_queue` messages and `max_queue_bytes`: a payload fanned out to
//! many subscriptions is counted once, plus a fixed overhead per message. Past either bound
//! the consumer holding the most bytes sheds first (each payload counted once per consumer),
//! so one consumer's many subscriptions cannot push another's messages out; within it, its
//! subscription with the most waiting messages: its oldest waiting retry, else its oldest
//! waiting message (possibly the newcomer). Messages in flight are never shed: a consumer
//! whose messages are all in flight is passed over.

use crate::dispatcher::pacing::{Signal, Window};
use crate::model::trace::TraceContext;
use crate::support::hashing::HashMap;
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;

/// Bytes counted per message besides its payload: the message, its ids and its index entries.
pub const MESSAGE_OVERHEAD: usize = 256;

/// An event's body, shared by every message it fans out to; it knows how many of them the
/// outbox holds, so that its bytes count once.
#[derive(Debug, Default)]
pub struct Payload {
    bytes: Box<[u8]>,
    held: Cell<usize>,
    /// The trace context of the request that caused the event (boxed: nothing is allocated,
    /// and one word is held, for the many events without one).
    trace: Option<Box<TraceContext>>,
}

impl Payload {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Rc<Payload> {
        Payload::traced(bytes, None)
    }

    /// A payload whose webhooks carry `trace`'s headers.
    pub fn traced(bytes: impl Into<Box<[u8]>>, trace: Option<TraceContext>) -> Rc<Payload> {
        Rc::new(Payload {
            bytes: bytes.into(),
            held: Cell::new(0),
            trace: trace.map(Box::new),
        })
    }

    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_deref()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// One webhook message for one subscription, waiting for its next attempt.
#[derive(Debug, Clone)]
pub struct Message {
    pub webhook_id: String,
    pub subscription_id: Rc<str>,
    pub event_type: Rc<str>,
    /// The signed body, shared by every subscription the event fans out to.
    pub payload: Rc<Payload>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the message was created (the event was seen).
    pub created_ms: u64,
    /// Times the callout could not start yet because Envoy was still resolving the host.
    pub host_waits: u32,
    /// Sent again on request (a retry): in fleet mode its copy under etcd's `P/dead/` goes
    /// once it is delivered, so a later retry through another replica does not send it again.
    pub replayed: bool,
}

/// A handle on a message in the outbox.
pub type MessageKey = u64;
type LaneId = u64;
type ConsumerId = u64;

/// The outbox's bounds, from `delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_queue: usize,
    pub max_queue_bytes: usize,
    pub max_in_flight: usize,
    pub max_in_flight_per_subscription: usize,
}

#[derive(Debug)]
struct Held {
    message: Message,
    lane: LaneId,
    /// Due time while waiting; None while in flight.
    due_ms: Option<u64>,
}

/// The element of every index here: the wasm then carries one binary heap, not several
/// ordered collections. Indexes are lazy: an entry that no longer matches its message or lane
/// is skipped when it comes up, and indexes are rebuilt when such entries outnumber the live.
type Order = (u64, u64);
type MinHeap = BinaryHeap<Reverse<Order>>;

/// A waiting message's place in its lane's drop order: retries (top bit 0) before first
/// attempts, oldest first.
fn drop_order(key: MessageKey, message: &Message) -> Order {
    let first_attempt = u64::from(message.attempts == 0) << 63;
    (first_attempt | (message.created_ms & !(1 << 63)), key)
}

/// Moves up to `n` ids of lanes that still exist off the front of a blocked list into `out`.
fn release(
    blocked: &mut VecDeque<LaneId>,
    n: usize,
    lanes: &HashMap<LaneId, Lane>,
    out: &mut Vec<LaneId>,
) {
    let mut left = n;
    while left > 0 {
        let Some(id) = blocked.pop_front() else {
            return;
        };
        if lanes.contains_key(&id) {
            out.push(id);
            left -= 1;
        }
    }
}

/// Stale index entries tolerated besides `live` ones before a rebuild.
fn too_stale(entries: usize, live: usize) -> bool {
    entries > 2 * live + 64
}

#[derive(Debug)]
struct Lane {
    subscription: Rc<str>,
    consumer: ConsumerId,
    /// (due time, key) of waiting messages.
    due: MinHeap,
    /// Drop order of waiting messages.
    drops: MinHeap,
    waiting: usize,
    in_flight: usize,
    window: Window,
    /// In the ready ring or a blocked list: not to be queued twice.
    queued: bool,
    /// Counted among its consumer's active lanes: queued or with attempts in flight.
    active: bool,
}

impl Lane {
    fn is_idle(&self) -> bool {
        self.waiting == 0 && self.in_flight == 0
    }
}

#[derive(Debug)]
struct Consumer {
    name: Rc<str>,
    lanes: usize,
    /// Lanes with due work or attempts in flight: what shares are split between.
    active_lanes: usize,
    in_flight: usize,
    /// Lanes with due work that wait for this consumer's share (ids of removed lanes are
    /// skipped when they come up).
    blocked: VecDeque<LaneId>,
    /// (waiting count, lane) of its lanes: which one sheds first (the largest).
    by_waiting: BinaryHeap<Order>,
    /// Bytes of the messages it holds: each payload once, plus the overhead per message.
    bytes: usize,
}

impl Consumer {
    fn new(name: Rc<str>) -> Consumer {
        Consumer {
            name,
            lanes: 0,
            active_lanes: 0,
            in_flight: 0,
            blocked: VecDeque::new(),
            by_waiting: BinaryHeap::new(),
            bytes: 0,
        }
    }
}

/// Pending messages in per-subscription lanes; see the module doc.
#[derive(Debug)]
pub struct Outbox {
    limits: Limits,
    messages: HashMap<MessageKey, Held>,
    lanes: HashMap<LaneId, Lane>,
    lane_of: HashMap<Rc<str>, LaneId>,
    consumers: HashMap<ConsumerId, Consumer>,
    consumer_ids: HashMap<Rc<str>, ConsumerId>,
    /// Lanes with due work and room, in turn order.
    ready: VecDeque<LaneId>,
    /// (earliest due time, lane) of lanes waiting for time to pass.
    timers: MinHeap,
    /// (bytes, consumer): who sheds first (the largest). An entry is pushed when a consumer's
    /// bytes grow; one above its current bytes is corrected when it comes up.
    by_bytes: BinaryHeap<Order>,
    /// Messages held per (payload, consumer): a payload's bytes count once per consumer. The
    /// payload is named by its address, stable while a message holds it.
    shares: HashMap<(usize, ConsumerId), usize>,
    /// Consumers with an active lane.
    active_consumers: usize,
    /// Lanes of consumers past the small allowance, waiting for the reserve to be free.
    held_back: VecDeque<LaneId>,
    bytes: usize,
    in_flight: usize,
    next_key: MessageKey,
    next_lane: LaneId,
    next_consumer: ConsumerId,
}

impl Outbox {
    pub fn new(limits: Limits) -> Outbox {
        Outbox {
            limits,
            messages: HashMap::default(),
            lanes: HashMap::default(),
            lane_of: HashMap::default(),
            consumers: HashMap::default(),
            consumer_ids: HashMap::default(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            by_bytes: BinaryHeap::new(),
            shares: HashMap::default(),
            active_consumers: 0,
            held_back: VecDeque::new(),
            bytes: 0,
            in_flight: 0,
            next_key: 0,
            next_lane: 0,
            next_consumer: 0,
        }
    }

    /// Messages held, in flight or waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Bytes held, as counted against `max_queue_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Every held message, in no particular order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values().map(|held| &held.message)
    }

    pub fn get(&self, key: MessageKey) -> Option<&Message> {
        self.messages.get(&key).map(|held| &held.message)
    }

    /// Messages that may still be added (`also`: held elsewhere on their way in) before the
    /// count bound sheds.
    pub fn room(&self, also: usize) -> usize {
        self.limits
            .max_queue
            .saturating_sub(self.messages.len().saturating_add(also))
    }

    /// Whether a message of `size` payload bytes would shed another now but not in an emptier
    /// outbox: it should wait (one too large for any outbox is shed at once by [`Outbox::push`]).
    pub fn full_for(&self, size: usize) -> bool {
        let needs = size + MESSAGE_OVERHEAD;
        let bound = self.limits.max_queue_bytes;
        needs <= bound && (self.bytes + needs > bound || self.room(0) == 0)
    }

    /// The pacing window of a subscription with pending work.
    pub fn window(&self, subscription_id: &str) -> Option<usize> {
        let lane = self.lane_of.get(subscription_id)?;
        self.lanes.get(lane).map(|lane| lane.window.limit())
    }

    /// The consumer a held message is queued for.
    pub fn consumer_of(&self, key: MessageKey) -> Option<Rc<str>> {
        let lane = self.lanes.get(&self.messages.get(&key)?.lane)?;
        self.consumers
            .get(&lane.consumer)
            .map(|c| Rc::clone(&c.name))
    }

    /// Bytes a consumer's messages hold, as counted for shedding.
    #[cfg(test)]
    pub fn consumer_bytes(&self, consumer: &str) -> usize {
        let id = self.consumer_ids.get(consumer);
        id.and_then(|id| self.consumers.get(id))
            .map_or(0, |c| c.bytes)
    }

    /// Adds a message of `consumer`'s, due at `due_ms`; returns the messages shed to make room,
    /// each with its consumer.
    pub fn push(
        &mut self,
        message: Message,
        consumer: &str,
        due_ms: u64,
    ) -> Vec<(Message, Rc<str>)> {
        // One that could never fit is shed at once, not after everyone else's.
        if message.payload.len() + MESSAGE_OVERHEAD > self.limits.max_queue_bytes {
            return vec![(message, Rc::from(consumer))];
        }
        let lane_id = self.lane_for(&message.subscription_id, consumer);
        let key = self.next_key;
        self.next_key += 1;
        self.count_payload(&message.payload, lane_id, true);
        self.messages.insert(
            key,
            Held {
                message,
                lane: lane_id,
                due_ms: None,
            },
        );
        self.requeue(key, due_ms);
        self.shed_excess()
    }

    /// Sheds waiting messages while a bound is exceeded (see the module doc) and returns them.
    /// Only a push adds to what is held, so the bounds hold at all times.
    fn shed_excess(&mut self) -> Vec<(Message, Rc<str>)> {
        let mut shed = Vec::new();
        while self.messages.len() > self.limits.max_queue
            || self.bytes > self.limits.max_queue_bytes
        {
            match self.shed_one() {
                Some(message) => shed.push(message),
                None => break,
            }
        }
        shed
    }

    /// The next attempt to start at `now_ms`, marked in flight; None when nothing is due or
    /// every due lane is at one of its limits.
    pub fn next_attempt(&mut self, now_ms: u64) -> Option<(MessageKey, &Message)> {
        self.fire_timers(now_ms);
        while self.in_flight < self.limits.max_in_flight {
            let lane_id = self.ready.pop_front()?;
            if let Some(key) = self.take_from(lane_id, now_ms) {
                return self.messages.get(&key).map(|held| (key, &held.message));
            }
        }
        None
    }

    /// Ends an attempt: the lane's window learns from `signal`, and the message is either
    /// rescheduled (`Some(at)`) or removed and returned.
    pub fn finish(
        &mut self,
        key: MessageKey,
        reschedule_at: Option<u64>,
        signal: Signal,
        started_ms: u64,
        now_ms: u64,
    ) -> Option<Message> {
        let lane_id = self.end_attempt(key)?;
        if let Some(lane) = self.lanes.get_mut(&lane_id) {
            lane.window.observe(signal, started_ms, now_ms);
        }
        let done = match reschedule_at {
            Some(at) => {
                if let Some(held) = self.messages.get_mut(&key) {
                    held.message.attempts += 1;
                    // A later attempt may meet an unresolved host again: it gets its own wait.
                    held.message.host_waits = 0;
                }
                self.requeue(key, at);
                None
            }
            None => self.remove(key),
        };
        self.after_attempt(lane_id);
        done
    }

    /// Puts an attempt that could not start back in line without counting it as an attempt.
    pub fn defer(&mut self, key: MessageKey, at: u64) {
        let Some(lane_id) = self.end_attempt(key) else {
            return;
        };
        if let Some(held) = self.messages.get_mut(&key) {
            held.message.host_waits += 1;
        }
        self.requeue(key, at);
        self.after_attempt(lane_id);
    }

    /// The lane of a subscription, created (with its consumer's entry) when it has none.
    fn lane_for(&mut self, subscription: &Rc<str>, consumer: &str) -> LaneId {
        if let Some(id) = self.lane_of.get(subscription) {
            return *id;
        }
        let id = self.next_lane;
        self.next_lane += 1;
        let consumer = self.consumer_id(consumer);
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.lanes += 1;
        }
        self.lanes.insert(
            id,
            Lane {
                subscription: Rc::clone(subscription),
                consumer,
                due: BinaryHeap::new(),
                drops: BinaryHeap::new(),
                waiting: 0,
                in_flight: 0,
                window: Window::new(self.limits.max_in_flight_per_subscription),
                queued: false,
                active: false,
            },
        );
        self.lane_of.insert(Rc::clone(subscription), id);
        id
    }

    /// A consumer's id, its entry created when it has none.
    fn consumer_id(&mut self, name: &str) -> ConsumerId {
        if let Some(id) = self.consumer_ids.get(name) {
            return *id;
        }
        let id = self.next_consumer;
        self.next_consumer += 1;
        let name: Rc<str> = Rc::from(name);
        self.consumer_ids.insert(Rc::clone(&name), id);
        self.consumers.insert(id, Consumer::new(name));
        id
    }

    /// The lane's earliest waiting message, skipping stale entries.
    fn head(&mut self, lane_id: LaneId) -> Option<(u64, MessageKey)> {
        let lane = self.lanes.get_mut(&lane_id)?;
        while let Some(Reverse((due, key))) = lane.due.peek().copied() {
            if self
                .messages
                .get(&key)
                .is_some_and(|h| h.due_ms == Some(due))
            {
                return Some((due, key));
            }
            lane.due.pop();
        }
        None
    }

    /// The lane's next message to shed, skipping stale entries.
    fn victim(&mut self, lane_id: LaneId) -> Option<MessageKey> {
        let lane = self.lanes.get_mut(&lane_id)?;
        while let Some(Reverse(order)) = lane.drops.pop() {
            let key = order.1;
            let waiting = self.messages.get(&key).filter(|h| h.due_ms.is_some());
            if waiting.is_some_and(|h| drop_order(key, &h.message) == order) {
                return Some(key);
            }
        }
        None
    }

    /// Records a lane's waiting count for shedding, in its consumer's order.
    fn note_waiting(&mut self, lane_id: LaneId) {
        let Some(lane) = self.lanes.get(&lane_id) else {
            return;
        };
        let Some(consumer) = self.consumers.get_mut(&lane.consumer) else {
            return;
        };
        consumer.by_waiting.push((lane.waiting as u64, lane_id));
        if too_stale(consumer.by_waiting.len(), consumer.lanes) {
            let lanes = &self.lanes;
            consumer
                .by_waiting
                .retain(|(n, id)| lanes.get(id).is_some_and(|l| l.waiting as u64 == *n));
        }
    }

    /// Makes sure a lane that is in no queue will be looked at when its earliest message is due.
    fn retime(&mut self, lane_id: LaneId) {
        let queued = self.lanes.get(&lane_id).is_none_or(|lane| lane.queued);
        if queued {
            return;
        }
        if let Some((due, _)) = self.head(lane_id) {
            self.timers.push(Reverse((due, lane_id)));
        }
        if too_stale(self.timers.len(), self.lanes.len()) {
            self.rebuild_timers();
        }
    }

    /// Drops timer entries of lanes that are gone or queued, keeping one per waiting lane.
    fn rebuild_timers(&mut self) {
        self.timers.clear();
        let ids: Vec<LaneId> = self.lanes.keys().copied().collect();
        for id in ids {
            let queued = self.lanes.get(&id).is_none_or(|lane| lane.queued);
            if let Some((due, _)) = self.head(id).filter(|_| !queued) {
                self.timers.push(Reverse((due, id)));
            }
        }
    }

    /// Moves lanes whose earliest message is due by `now_ms` into the ready ring.
    fn fire_timers(&mut self, now_ms: u64) {
        while let Some(Reverse((due, lane_id))) = self.timers.peek().copied() {
            if due > now_ms {
                break;
            }
            self.timers.pop();
            let is_due = self.head(lane_id).is_some_and(|(d, _)| d <= now_ms);
            if let Some(lane) = self.lanes.get_mut(&lane_id).filter(|l| !l.queued && is_due) {
                lane.queued = true;
                self.ready.push_back(lane_id);
                self.update_active(lane_id);
            }
        }
    }

    /// Starts the lane's earliest due message if its limits allow; requeues the lane as fits.
    fn take_from(&mut self, lane_id: LaneId, now_ms: u64) -> Option<MessageKey> {
        let key = self.try_take(lane_id, now_ms);
        self.update_active(lane_id);
        key
    }

    fn try_take(&mut self, lane_id: LaneId, now_ms: u64) -> Option<MessageKey> {
        let cap = self.lane_cap(lane_id);
        let consumer_cap = self.consumer_cap();
        let reserve_free = self.in_flight < self.reserve_limit();
        let small = self.small_allowance();
        self.lanes.get_mut(&lane_id)?.queued = false;
        let (due, key) = self.head(lane_id)?;
        if due > now_ms {
            self.retime(lane_id);
            return None;
        }
        let lane = self.lanes.get_mut(&lane_id)?;
        let consumer = self.consumers.get_mut(&lane.consumer)?;
        if consumer.in_flight >= consumer_cap {
            lane.queued = true;
            consumer.blocked.push_back(lane_id);
            return None;
        }
        if consumer.in_flight >= small && !reserve_free {
            lane.queued = true;
            self.held_back.push_back(lane_id);
            return None;
        }
        if lane.in_flight >= cap {
            return None; // its own attempts ending bring it back
        }
        lane.due.pop();
        lane.waiting = lane.waiting.saturating_sub(1);
        lane.in_flight += 1;
        consumer.in_flight += 1;
        self.in_flight += 1;
        let room = lane.in_flight < cap;
        if let Some(held) = self.messages.get_mut(&key) {
            held.due_ms = None;
        }
        self.note_waiting(lane_id);
        if room {
            match self.head(lane_id) {
                Some((next, _)) if next <= now_ms => {
                    if let Some(lane) = self.lanes.get_mut(&lane_id) {
                        lane.queued = true;
                        self.ready.push_back(lane_id);
                    }
                }
                _ => self.retime(lane_id),
            }
        }
        Some(key)
    }

    /// Attempts in flight past which only consumers within their small allowance may start
    /// more: the last eighth of `max_in_flight` is kept for consumers that arrive while others'
    /// attempts hang.
    fn reserve_limit(&self) -> usize {
        let max = self.limits.max_in_flight;
        max - max / 8
    }

    /// Attempts a consumer may always have in flight while the reserve has room: a reserve of
    /// an eighth holds eight such consumers.
    fn small_allowance(&self) -> usize {
        (self.limits.max_in_flight / 64).max(1)
    }

    /// A consumer's share: the first seven eighths of `max_in_flight` split evenly between the
    /// consumers with due work or attempts in flight.
    fn consumer_cap(&self) -> usize {
        (self.reserve_limit() / self.active_consumers.max(1)).max(1)
    }

    /// A lane's limit: its window, and its share of its consumer's (split between the
    /// consumer's active lanes).
    fn lane_cap(&self, lane_id: LaneId) -> usize {
        let Some(lane) = self.lanes.get(&lane_id) else {
            return 0;
        };
        let lanes = self
            .consumers
            .get(&lane.consumer)
            .map_or(1, |c| c.active_lanes);
        let share = (self.consumer_cap() / lanes.max(1)).max(1);
        lane.window.limit().min(share).max(1)
    }

    /// Counts a lane as active (queued or in flight) or not, and its consumer with it.
    fn update_active(&mut self, lane_id: LaneId) {
        let Some(lane) = self.lanes.get_mut(&lane_id) else {
            return;
        };
        let active = lane.queued || lane.in_flight > 0;
        if active == lane.active {
            return;
        }
        lane.active = active;
        let Some(consumer) = self.consumers.get_mut(&lane.consumer) else {
            return;
        };
        if active {
            consumer.active_lanes += 1;
            if consumer.active_lanes == 1 {
                self.active_consumers += 1;
            }
        } else {
            consumer.active_lanes = consumer.active_lanes.saturating_sub(1);
            if consumer.active_lanes == 0 {
                self.active_consumers = self.active_consumers.saturating_sub(1);
            }
        }
    }

    /// Marks a message no longer in flight; returns its lane.
    fn end_attempt(&mut self, key: MessageKey) -> Option<LaneId> {
        let held = self.messages.get(&key)?;
        if held.due_ms.is_some() {
            return None; // not in flight
        }
        let lane_id = held.lane;
        let lane = self.lanes.get_mut(&lane_id)?;
        lane.in_flight = lane.in_flight.saturating_sub(1);
        if let Some(consumer) = self.consumers.get_mut(&lane.consumer) {
            consumer.in_flight = consumer.in_flight.saturating_sub(1);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(lane_id)
    }

    /// Makes a held message (new, or back from an attempt) wait in its lane, due at `at`.
    fn requeue(&mut self, key: MessageKey, at: u64) {
        let Some(held) = self.messages.get_mut(&key) else {
            return;
        };
        held.due_ms = Some(at);
        let lane_id = held.lane;
        let order = drop_order(key, &held.message);
        if let Some(lane) = self.lanes.get_mut(&lane_id) {
            lane.due.push(Reverse((at, key)));
            lane.drops.push(Reverse(order));
            lane.waiting += 1;
        }
        self.note_waiting(lane_id);
        self.compact_lane(lane_id);
        self.retime(lane_id);
    }

    /// Rebuilds a lane's indexes once stale entries outnumber its waiting messages.
    fn compact_lane(&mut self, lane_id: LaneId) {
        let messages = &self.messages;
        let Some(lane) = self.lanes.get_mut(&lane_id) else {
            return;
        };
        if too_stale(lane.due.len(), lane.waiting) {
            lane.due.retain(|Reverse((due, key))| {
                messages.get(key).is_some_and(|h| h.due_ms == Some(*due))
            });
        }
        if too_stale(lane.drops.len(), lane.waiting) {
            lane.drops.retain(|Reverse(order)| {
                messages.get(&order.1).is_some_and(|h| {
                    h.due_ms.is_some() && drop_order(order.1, &h.message) == *order
                })
            });
        }
    }

    /// After an attempt of `lane_id` ended: the lane gets another turn (an idle one is
    /// removed), and as many blocked lanes as the freed slots allow get theirs.
    fn after_attempt(&mut self, lane_id: LaneId) {
        let Some(lane) = self.lanes.get(&lane_id) else {
            return;
        };
        let consumer = lane.consumer;
        if lane.is_idle() {
            self.remove_lane(lane_id);
        } else {
            self.retime(lane_id);
            self.update_active(lane_id);
        }
        let cap = self.consumer_cap();
        let room = self
            .consumers
            .get(&consumer)
            .map_or(0, |c| cap.saturating_sub(c.in_flight));
        let reserve_room = self.reserve_limit().saturating_sub(self.in_flight);
        let mut released = Vec::new();
        if let Some(c) = self.consumers.get_mut(&consumer) {
            release(&mut c.blocked, room, &self.lanes, &mut released);
        }
        release(
            &mut self.held_back,
            reserve_room,
            &self.lanes,
            &mut released,
        );
        self.ready.extend(released);
    }

    /// Removes a held message (waiting, or just back from an attempt) and its accounting.
    fn remove(&mut self, key: MessageKey) -> Option<Message> {
        let held = self.messages.remove(&key)?;
        if held.due_ms.is_some() {
            if let Some(lane) = self.lanes.get_mut(&held.lane) {
                lane.waiting = lane.waiting.saturating_sub(1);
            }
            self.note_waiting(held.lane);
            self.retime(held.lane);
        }
        self.count_payload(&held.message.payload, held.lane, false);
        Some(held.message)
    }

    /// Drops one waiting message of the consumer holding the most bytes that has one waiting.
    fn shed_one(&mut self) -> Option<(Message, Rc<str>)> {
        let mut passed = Vec::new();
        let mut shed = None;
        while let Some((bytes, id)) = self.by_bytes.pop() {
            let Some(current) = self.consumers.get(&id).map(|c| c.bytes as u64) else {
                continue; // gone
            };
            if current != bytes {
                if current > 0 {
                    self.by_bytes.push((current, id)); // it shrank since: in its place
                }
                continue;
            }
            passed.push((bytes, id));
            if let Some(lane_id) = self.lane_to_shed(id) {
                shed = self.shed_from(lane_id, id);
                break;
            }
        }
        self.by_bytes.extend(passed);
        shed
    }

    /// The consumer's lane with the most waiting messages; None when none waits.
    fn lane_to_shed(&mut self, consumer: ConsumerId) -> Option<LaneId> {
        let lanes = &self.lanes;
        let order = &mut self.consumers.get_mut(&consumer)?.by_waiting;
        loop {
            let (waiting, lane_id) = *order.peek()?;
            if lanes.get(&lane_id).map(|l| l.waiting as u64) == Some(waiting) {
                return (waiting > 0).then_some(lane_id);
            }
            order.pop();
        }
    }

    /// Drops the lane's next victim; returns it with its consumer's name.
    fn shed_from(&mut self, lane_id: LaneId, consumer: ConsumerId) -> Option<(Message, Rc<str>)> {
        let name = Rc::clone(&self.consumers.get(&consumer)?.name);
        let key = self.victim(lane_id)?;
        let message = self.remove(key);
        if self.lanes.get(&lane_id).is_some_and(Lane::is_idle) {
            self.remove_lane(lane_id);
        }
        message.map(|m| (m, name))
    }

    fn remove_lane(&mut self, lane_id: LaneId) {
        let Some(lane) = self.lanes.remove(&lane_id) else {
            return;
        };
        self.lane_of.remove(&lane.subscription);
        if let Some(consumer) = self.consumers.get_mut(&lane.consumer) {
            consumer.lanes = consumer.lanes.saturating_sub(1);
            if lane.active {
                consumer.active_lanes = consumer.active_lanes.saturating_sub(1);
                if consumer.active_lanes == 0 {
                    self.active_consumers = self.active_consumers.saturating_sub(1);
                }
            }
            if consumer.lanes == 0 {
                self.consumer_ids.remove(&consumer.name);
                self.consumers.remove(&lane.consumer);
            }
        }
        // Its id may still stand in the ready ring, a blocked list, a timer or the shedding
        // order: ids are never reused, and a missing lane is skipped there.
    }

    /// Counts a payload's bytes when the first message holding it arrives and uncounts them
    /// when the last one leaves: in all, and for the consumer of `lane_id`.
    fn count_payload(&mut self, payload: &Rc<Payload>, lane_id: LaneId, added: bool) {
        let held = payload.held.get();
        if added {
            payload.held.set(held + 1);
            self.bytes += MESSAGE_OVERHEAD + if held == 0 { payload.len() } else { 0 };
        } else {
            payload.held.set(held.saturating_sub(1));
            let freed = MESSAGE_OVERHEAD + if held == 1 { payload.len() } else { 0 };
            self.bytes = self.bytes.saturating_sub(freed);
        }
        if let Some(consumer) = self.lanes.get(&lane_id).map(|l| l.consumer) {
            self.count_share(payload, consumer, added);
        }
    }

    /// A consumer's part of [`Outbox::count_payload`].
    fn count_share(&mut self, payload: &Rc<Payload>, id: ConsumerId, added: bool) {
        let share = (Rc::as_ptr(payload) as usize, id);
        let held = self.shares.get(&share).copied().unwrap_or(0);
        let first_or_last = held == usize::from(!added);
        let size = MESSAGE_OVERHEAD + if first_or_last { payload.len() } else { 0 };
        match (added, held) {
            (true, _) => {
                self.shares.insert(share, held + 1);
            }
            (false, 0 | 1) => {
                self.shares.remove(&share);
            }
            (false, _) => {
                self.shares.insert(share, held - 1);
            }
        }
        let Some(consumer) = self.consumers.get_mut(&id) else {
            return;
        };
        if added {
            consumer.bytes += size;
            self.by_bytes.push((consumer.bytes as u64, id));
            if too_stale(self.by_bytes.len(), self.consumers.len()) {
                self.rebuild_by_bytes();
            }
        } else {
            consumer.bytes = consumer.bytes.saturating_sub(size);
        }
    }

    /// One entry per consumer holding bytes, at its current bytes.
    fn rebuild_by_bytes(&mut self) {
        self.by_bytes.clear();
        let consumers = self.consumers.iter();
        let entries = consumers.filter(|(_, c)| c.bytes > 0);
        self.by_bytes
            .extend(entries.map(|(id, c)| (c.bytes as u64, *id)));
    }
}

#[cfg(test)]
mod tests;
