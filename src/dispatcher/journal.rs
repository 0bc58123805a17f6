//! The dispatcher's side of the durable outbox (fleet mode): a new message is held until etcd
//! has it (then its first attempt is pending), messages that leave the outbox leave etcd, and a
//! dead replica's messages claimed from etcd join the outbox with their webhook-ids. The etcd
//! conversation itself is [`crate::fleet::journal`]'s; this only carries its calls and events.

use super::Dispatcher;
use crate::dispatcher::outbox::{Message, Payload};
use crate::fleet::journal::{CallId, Event, Journal, Outcome};
use crate::fleet::stored::{self, Stored};
use crate::fleet::vault::Vault;
use crate::port::{DispatchHost, Metric};
use crate::support::hashing::HashMap;
use crate::support::ids::RandomSource;
use std::rc::Rc;

/// The durable outbox's state in the dispatcher.
pub(super) struct Durable {
    pub(super) journal: Journal,
    /// Envoy's tokens of the journal's calls (a few at once).
    calls: Vec<(u32, CallId)>,
    /// Messages waiting for their put, with their consumers.
    held: HashMap<String, (Message, String)>,
}

impl Durable {
    pub(super) fn new(journal: Journal) -> Durable {
        Durable {
            journal,
            calls: Vec::new(),
            held: HashMap::default(),
        }
    }
}

/// A message's stored form, sealed with `fleet.encrypt_payloads`.
fn encode(message: &Message, vault: &Vault, rng: &mut dyn RandomSource) -> Option<Vec<u8>> {
    let plain = stored::encode_traced(
        &message.webhook_id,
        &message.subscription_id,
        &message.event_type,
        message.created_ms,
        message.payload.trace(),
        message.payload.bytes(),
    )?;
    vault.seal_message(rng, &message.webhook_id, plain)
}

impl<H: DispatchHost> Dispatcher<H> {
    /// Holds a new message until etcd has it; gives it back when it goes out from memory now.
    pub(super) fn hold_until_written(
        &mut self,
        message: Message,
        consumer: &str,
    ) -> Option<Message> {
        let Some(fleet) = self.fleet.as_mut() else {
            return Some(message);
        };
        let value = encode(&message, &fleet.vault, &mut self.host);
        if !fleet.durable.journal.stage(&message.webhook_id, value) {
            return Some(message);
        }
        fleet
            .durable
            .held
            .insert(message.webhook_id.clone(), (message, consumer.to_string()));
        None
    }

    /// A message left the outbox: it leaves etcd too (kept under `P/dead/` when `dead`).
    pub(super) fn unjournal(&mut self, message: &Message, dead: bool) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let value = match dead {
            true => encode(message, &fleet.vault, &mut self.host),
            false => None,
        };
        let journal = &mut fleet.durable.journal;
        journal.finished(&message.webhook_id, value);
        if message.replayed && !dead {
            journal.forget_dead(&message.webhook_id);
        }
    }

    /// Sends the journal's due calls.
    pub(super) fn journal_send(&mut self) {
        let now = self.host.now_ms();
        if self.awaiting_token() {
            return;
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let waiting = fleet.durable.held.len() + fleet.log.claimed_waiting();
        let room = self.outbox.room(waiting);
        let journal = &mut fleet.durable.journal;
        journal.set_intake(room, fleet.sync.revision());
        let calls = journal.calls(now);
        for (id, request) in calls {
            match self.call_etcd(&request) {
                Ok(token) => {
                    if let Some(durable) = self.durable_mut() {
                        durable.calls.push((token, id));
                    }
                }
                Err(refused) => {
                    let outcome = match self.durable_mut() {
                        Some(durable) => durable.journal.on_refused(id, now),
                        None => Outcome::default(),
                    };
                    let why = format!("Envoy refused the call ({refused:?})");
                    self.take_outcome(outcome, Some(why));
                }
            }
        }
        let size = self.durable_mut().map_or(0, |d| d.journal.durable());
        self.host
            .record_metric(Metric::FleetOutboxSize, size as u64);
    }

    /// Takes the answer to a journal call; false when `token` is not one.
    pub(super) fn on_journal_answer(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
    ) -> bool {
        let Some(id) = self.durable_mut().and_then(|d| {
            let at = d.calls.iter().position(|(t, _)| *t == token)?;
            Some(d.calls.swap_remove(at).1)
        }) else {
            return false;
        };
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let body = self.host.callout_body(body_size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let outcome = match self.durable_mut() {
            Some(durable) => durable.journal.on_answer(id, status.as_deref(), &body, now),
            None => return true,
        };
        self.take_outcome(outcome, None);
        self.journal_send();
        self.pump();
        true
    }

    fn take_outcome(&mut self, outcome: Outcome, refused: Option<String>) {
        if let Some(why) = outcome.error.or(refused) {
            self.fleet_error(&format!("durable outbox: {why}"));
        }
        if outcome.claims > 0 {
            self.host.add_metric(Metric::FleetClaims, outcome.claims);
        }
        if outcome.unreadable > 0 {
            self.host
                .add_metric(Metric::FleetUnreadable, outcome.unreadable);
        }
        if outcome.node_conflicts > 0 {
            self.host
                .add_metric(Metric::FleetNodeConflicts, outcome.node_conflicts);
        }
        let now = self.host.now_ms();
        for event in outcome.events {
            match event {
                Event::Written(ids) | Event::Released(ids) => self.release_held(&ids, now),
                Event::Claimed(found) => self.look_up_attempts(found),
            }
        }
    }

    /// Held messages whose first attempt may be pending now.
    fn release_held(&mut self, ids: &[String], now: u64) {
        for id in ids {
            let held = self.durable_mut().and_then(|d| d.held.remove(id));
            if let Some((message, consumer)) = held {
                self.enqueue(message, &consumer, now);
            }
        }
    }

    /// A dead replica's messages, delivered with their own webhook-ids and bodies, each going on
    /// from the attempts `made` of it. Those the outbox has no room for now stay in etcd, read
    /// again later.
    pub(super) fn take_claimed(
        &mut self,
        found: Vec<Stored>,
        made: &HashMap<String, u32>,
        now: u64,
    ) {
        for stored in found {
            let owner = self.resolve(&stored.subscription_id);
            let held = self.durable_mut().map_or(0, |d| d.held.len());
            let wait = self.outbox.room(held) == 0 || self.outbox.full_for(stored.payload.len());
            let Some(durable) = self.durable_mut() else {
                return;
            };
            let Some(owner) = owner else {
                // Deleted (the registry was read after the claim): nothing to deliver or keep.
                durable.journal.finished(&stored.webhook_id, None);
                continue;
            };
            if wait {
                durable.journal.returned(&stored.webhook_id, now);
                continue;
            }
            let mut message = message_of(stored, Rc::clone(&owner.id));
            message.attempts = made.get(&message.webhook_id).copied().unwrap_or(0);
            self.enqueue(message, &owner.subscription.consumer, now);
        }
    }

    /// The message a retry brought the `P/dead/` copy of (see [`crate::fleet::dead`]): the
    /// same message kept in memory if there is one (for the subscription the API checked),
    /// else the copy's. `None` when the journal has it pending already (a second retry sends
    /// nothing more) or the copy is not `webhook_id`'s.
    pub(super) fn message_of_kept_copy(
        &mut self,
        webhook_id: &str,
        kept: &[u8],
    ) -> Option<Message> {
        let Some(stored) = stored::decode(kept).filter(|s| s.webhook_id == webhook_id) else {
            log::warn!("proxy-webhooks: replay of webhook-id {webhook_id} asked with an unreadable copy from etcd");
            return None;
        };
        if self
            .durable_mut()
            .is_some_and(|d| d.journal.has(webhook_id))
        {
            log::info!("proxy-webhooks: replay of webhook-id {webhook_id} asked, but it is pending already");
            return None;
        }
        let subscription_id: Rc<str> = Rc::from(stored.subscription_id.as_str());
        let message = self
            .replayable
            .take_of(webhook_id, &subscription_id)
            .unwrap_or_else(|| message_of(stored, subscription_id));
        Some(message)
    }

    /// Messages not (yet) in etcd: held for their put, or out from memory only.
    pub(super) fn not_durable(&self) -> usize {
        self.fleet.as_ref().map_or(0, |f| {
            self.outbox
                .len()
                .saturating_add(f.durable.held.len())
                .saturating_sub(f.durable.journal.durable())
        })
    }

    fn durable_mut(&mut self) -> Option<&mut Durable> {
        self.fleet.as_mut().map(|f| &mut f.durable)
    }
}

/// A stored message as the outbox holds it, for a first attempt.
fn message_of(stored: Stored, subscription_id: Rc<str>) -> Message {
    Message {
        webhook_id: stored.webhook_id,
        subscription_id,
        event_type: Rc::from(stored.event_type),
        payload: Payload::traced(stored.payload, stored.trace),
        attempts: 0,
        created_ms: stored.created_ms,
        host_waits: 0,
        replayed: false,
    }
}
