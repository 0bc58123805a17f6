//! Fleet mode: this replica's delivery logs copied to etcd, so that every replica answers the
//! same `GET .../deliveries` ([`crate::fleet::log`]). A subscription is queued when new attempts
//! reach its shared-data log (or it leaves the registry: its key goes); once per
//! `sync_interval` the queue is written in txns of up to [`log::PER_WRITE`] logs (each with its
//! health summary) from its front, one
//! at a time and the next as soon as one is answered while a backlog remains, so only the logs
//! written are read; those etcd did not take go back to the queue. A dead replica's claimed
//! messages wait for the reads of their subscriptions' logs, so they keep their attempt numbers.

use super::Dispatcher;
use crate::fleet::log;
use crate::fleet::stored::Stored;
use crate::port::DispatchHost;
use crate::registry::attempts;
use crate::support::hashing::{HashMap, HashSet};
use std::collections::VecDeque;

/// The copy of this replica's delivery logs in etcd.
pub(super) struct SharedLog {
    node: String,
    interval_ms: u64,
    /// Subscriptions whose log changed since it was last written, oldest change first (and
    /// the same ids as a set, so each is queued once).
    changed: VecDeque<String>,
    queued: HashSet<String>,
    /// The write in flight: Envoy's token and the subscriptions it carries.
    writing: Option<(u32, Vec<String>)>,
    next_ms: u64,
    /// Claimed messages waiting for the reads of their attempts, by Envoy's token.
    claims: Vec<(u32, Lookup)>,
}

/// A page of claimed messages whose subscriptions' logs are being read.
pub(super) struct Lookup {
    found: Vec<Stored>,
    /// Subscriptions whose logs are still to be read.
    unread: Vec<String>,
    /// The highest attempt logged per webhook-id so far.
    made: HashMap<String, u32>,
}

impl SharedLog {
    pub(super) fn new(node: &str, interval_ms: u64) -> SharedLog {
        SharedLog {
            node: node.to_string(),
            interval_ms,
            changed: VecDeque::new(),
            queued: HashSet::default(),
            writing: None,
            next_ms: 0,
            claims: Vec::new(),
        }
    }
}

impl SharedLog {
    fn queue(&mut self, id: String) {
        if self.queued.insert(id.clone()) {
            self.changed.push_back(id);
        }
    }

    /// The front of the queue, as many as one write takes at most.
    fn take_front(&mut self) -> Vec<String> {
        let n = self.changed.len().min(log::PER_WRITE);
        let ids: Vec<String> = self.changed.drain(..n).collect();
        for id in &ids {
            self.queued.remove(id);
        }
        ids
    }

    /// Claimed messages waiting for their logs: they will need outbox room too.
    pub(super) fn claimed_waiting(&self) -> usize {
        self.claims
            .iter()
            .map(|(_, lookup)| lookup.found.len())
            .sum()
    }
}

impl<H: DispatchHost> Dispatcher<H> {
    /// New attempts of `id` are in its shared-data log.
    pub(super) fn log_changed(&mut self, id: &str) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.log.queue(id.to_string());
        }
    }

    /// Writes the changed logs when due and no write is in flight.
    pub(super) fn shared_log_send(&mut self) {
        let now = self.host.now_ms();
        if self.awaiting_token() {
            return;
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let shared = &mut fleet.log;
        if shared.writing.is_some() || shared.changed.is_empty() || now < shared.next_ms {
            return;
        }
        shared.next_ms = now.saturating_add(shared.interval_ms);
        let front = shared.take_front();
        let store = self.host.store();
        let logs: Vec<(String, Vec<attempts::Attempt>)> = front
            .into_iter()
            .map(|id| {
                let own = log::fresh(attempts::read(store, &id), now);
                (id, own)
            })
            .collect();
        let (request, taken) = log::writes(&fleet.keys, &shared.node, &logs);
        let mut ids: Vec<String> = logs.into_iter().map(|(id, _)| id).collect();
        // What did not fit in this txn goes back to the front, in order.
        for id in ids.drain(taken..).rev() {
            shared.queued.insert(id.clone());
            shared.changed.push_front(id);
        }
        let sent = self.call_etcd(&request);
        let Some(shared) = self.fleet.as_mut().map(|f| &mut f.log) else {
            return;
        };
        match sent {
            Ok(token) => shared.writing = Some((token, ids)),
            Err(refused) => {
                for id in ids {
                    shared.queue(id);
                }
                self.fleet_error(&format!("the delivery log write was refused ({refused:?})"))
            }
        }
    }

    /// A dead replica's messages: their subscriptions' logs are read first, a few at a time
    /// (without an answer they start again at attempt 1).
    pub(super) fn look_up_attempts(&mut self, found: Vec<Stored>) {
        let mut unread: Vec<String> = found.iter().map(|s| s.subscription_id.clone()).collect();
        unread.sort_unstable();
        unread.dedup();
        let lookup = Lookup {
            found,
            unread,
            made: HashMap::default(),
        };
        self.read_next_logs(lookup);
    }

    /// Sends the next read of `lookup`, or hands its messages over once every log was read.
    fn read_next_logs(&mut self, mut lookup: Lookup) {
        let now = self.host.now_ms();
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if lookup.unread.is_empty() {
            self.take_claimed(lookup.found, &lookup.made, now);
            self.pump();
            return;
        }
        let batch = lookup.unread.len().min(log::LOOKUP_SUBSCRIPTIONS);
        let ids: Vec<String> = lookup.unread.drain(..batch).collect();
        let request = log::lookup_many(&fleet.keys, ids.iter().map(String::as_str));
        let sent = self.call_etcd(&request);
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match sent {
            Ok(token) => fleet.log.claims.push((token, lookup)),
            Err(refused) => {
                self.fleet_error(&format!(
                    "the claimed messages' logs were not read ({refused:?})"
                ));
                lookup.unread.clear();
                self.read_next_logs(lookup);
            }
        }
    }

    /// Takes the answer to a log write or read; false when `token` is neither.
    pub(super) fn on_shared_log_answer(&mut self, token: u32, headers: usize, size: usize) -> bool {
        let Some(fleet) = self.fleet.as_mut() else {
            return false;
        };
        if let Some(at) = fleet.log.claims.iter().position(|(t, _)| *t == token) {
            let (_, lookup) = fleet.log.claims.swap_remove(at);
            self.on_attempts_answer(lookup, headers, size);
            return true;
        }
        let ids = match fleet.log.writing.take() {
            Some((t, ids)) if t == token => ids,
            other => {
                fleet.log.writing = other;
                return false;
            }
        };
        let answer = self.host.callout_response(headers, size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let body = self.host.callout_body(size);
        match log::written(status.as_deref(), &body) {
            // A backlog goes on at once, not an interval later.
            Ok(()) => {
                if let Some(fleet) = self.fleet.as_mut().filter(|f| !f.log.changed.is_empty()) {
                    fleet.log.next_ms = 0;
                    self.shared_log_send();
                }
            }
            Err(why) => {
                if let Some(fleet) = self.fleet.as_mut() {
                    for id in ids {
                        fleet.log.queue(id);
                    }
                }
                self.fleet_error(&format!("the delivery log was not written: {why}"));
            }
        }
        true
    }

    fn on_attempts_answer(&mut self, mut lookup: Lookup, headers: usize, size: usize) {
        let answer = self.host.callout_response(headers, size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let body = self.host.callout_body(size);
        match log::attempts_made(status.as_deref(), &body) {
            Ok(made) => {
                for (id, n) in made {
                    let highest = lookup.made.entry(id).or_default();
                    *highest = (*highest).max(n);
                }
            }
            Err(why) => {
                self.fleet_error(&format!("the claimed messages' logs were not read: {why}"));
                lookup.unread.clear();
            }
        }
        self.read_next_logs(lookup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_change_order_holds_each_id_once_and_is_taken_from_its_front() {
        let mut log = SharedLog::new("n1", 500);
        for n in (0..log::PER_WRITE + 3).chain([0, 1]) {
            log.queue(format!("s{n}"));
        }
        assert_eq!(log.changed.len(), log::PER_WRITE + 3, "s0 and s1 once");
        let first = log.take_front();
        assert_eq!(first.len(), log::PER_WRITE);
        assert_eq!((first[0].as_str(), first[1].as_str()), ("s0", "s1"));
        log.queue("s0".into());
        let rest = log.take_front();
        assert_eq!(rest, ["s64", "s65", "s66", "s0"]);
        assert!(log.changed.is_empty() && log.queued.is_empty());
    }
}
