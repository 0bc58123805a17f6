//! Fleet mode: this replica's delivery logs copied to etcd, so that every replica answers the
//! same `GET .../deliveries` ([`crate::fleet::log`]). A subscription is marked when new attempts
//! reach its shared-data log; once per `sync_interval` the marked ones are written, one txn at
//! a time; those etcd did not take stay marked and go with the next. A dead replica's claimed
//! messages wait for one read of their subscriptions' logs, so they keep their attempt numbers.

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
    /// Claimed messages waiting for the read of their attempts: Envoy's token and the page.
    claims: Vec<(u32, Vec<Stored>)>,
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
        self.claims.iter().map(|(_, page)| page.len()).sum()
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

    /// A dead replica's messages: their subscriptions' logs are read first (without an
    /// answer they start again at attempt 1).
    pub(super) fn look_up_attempts(&mut self, found: Vec<Stored>) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let mut ids: Vec<&str> = found.iter().map(|s| s.subscription_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let request = log::lookup_many(&fleet.keys, ids);
        let sent = self.call_etcd(&request);
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match sent {
            Ok(token) => fleet.log.claims.push((token, found)),
            Err(refused) => {
                self.fleet_error(&format!(
                    "the claimed messages' logs were not read ({refused:?})"
                ));
                let now = self.host.now_ms();
                self.take_claimed(found, &HashMap::default(), now);
            }
        }
    }

    /// Takes the answer to a log write or read; false when `token` is neither.
    pub(super) fn on_shared_log_answer(&mut self, token: u32, headers: usize, size: usize) -> bool {
        let Some(fleet) = self.fleet.as_mut() else {
            return false;
        };
        if let Some(at) = fleet.log.claims.iter().position(|(t, _)| *t == token) {
            let (_, found) = fleet.log.claims.swap_remove(at);
            self.on_attempts_answer(found, headers, size);
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

    fn on_attempts_answer(&mut self, found: Vec<Stored>, headers: usize, size: usize) {
        let answer = self.host.callout_response(headers, size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let body = self.host.callout_body(size);
        let made = log::attempts_made(status.as_deref(), &body).unwrap_or_else(|why| {
            self.fleet_error(&format!("the claimed messages' logs were not read: {why}"));
            HashMap::default()
        });
        let now = self.host.now_ms();
        self.take_claimed(found, &made, now);
        self.pump();
    }
}
