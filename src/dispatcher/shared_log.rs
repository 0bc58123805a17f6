//! Fleet mode: this replica's delivery logs copied to etcd, so that every replica answers the
//! same `GET .../deliveries` ([`crate::fleet::log`]). A subscription is marked when new attempts
//! reach its shared-data log; once per `sync_interval` the marked ones are written, one txn at
//! a time; those etcd did not take stay marked and go with the next. A dead replica's claimed
//! messages wait for the reads of their subscriptions' logs, so they keep their attempt numbers.

use super::Dispatcher;
use crate::fleet::log;
use crate::fleet::stored::Stored;
use crate::port::DispatchHost;
use crate::registry::attempts;
use crate::support::hashing::{HashMap, HashSet};

/// The copy of this replica's delivery logs in etcd.
pub(super) struct SharedLog {
    node: String,
    interval_ms: u64,
    /// Subscriptions whose log changed since it was last written.
    changed: HashSet<String>,
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
            changed: HashSet::default(),
            writing: None,
            next_ms: 0,
            claims: Vec::new(),
        }
    }
}

impl SharedLog {
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
            fleet.log.changed.insert(id.to_string());
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
        let store = self.host.store();
        let logs: Vec<(String, Vec<attempts::Attempt>)> = shared
            .changed
            .iter()
            .map(|id| (id.clone(), log::fresh(attempts::read(store, id), now)))
            .collect();
        let (request, taken) = log::writes(&fleet.keys, &shared.node, &logs);
        let ids: Vec<String> = logs.into_iter().take(taken).map(|(id, _)| id).collect();
        let sent = self.call_etcd(&request);
        let Some(shared) = self.fleet.as_mut().map(|f| &mut f.log) else {
            return;
        };
        match sent {
            Ok(token) => {
                for id in &ids {
                    shared.changed.remove(id);
                }
                shared.writing = Some((token, ids));
            }
            Err(refused) => {
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
        if let Err(why) = log::written(status.as_deref(), &body) {
            if let Some(fleet) = self.fleet.as_mut() {
                fleet.log.changed.extend(ids);
            }
            self.fleet_error(&format!("the delivery log was not written: {why}"));
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
