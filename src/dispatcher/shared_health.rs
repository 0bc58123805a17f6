//! Fleet mode: the other replicas' health summaries read from etcd every `sync_interval`
//! ([`crate::fleet::health`]) into shared data ([`crate::registry::health`]), where the API
//! merges them with this replica's own delivery log. This replica's own summaries come back in
//! the reads too and are skipped: its log in shared data is newer. A page that fails is logged
//! (and counted in `webhooks_fleet_etcd_errors`) and asked again an interval later, so none is
//! lost; meanwhile the API answers with the summaries it has.

use super::Dispatcher;
use crate::fleet::health::{HealthRead, Page};
use crate::fleet::keys::Keys;
use crate::port::DispatchHost;

/// The read of the fleet's health summaries, and the token of its page waiting.
pub(super) struct SharedHealth {
    node: String,
    read: HealthRead,
    call: Option<u32>,
}

impl SharedHealth {
    pub(super) fn new(keys: Keys, node: &str, interval_ms: u64) -> SharedHealth {
        SharedHealth {
            node: node.to_string(),
            read: HealthRead::new(keys, interval_ms),
            call: None,
        }
    }
}

impl<H: DispatchHost> Dispatcher<H> {
    /// Sends the next page of the health read when it is due.
    pub(super) fn shared_health_tick(&mut self, now: u64) {
        let due = |f: &mut super::fleet::Fleet| f.health.read.due(now, f.sync.revision());
        let Some(request) = self.fleet.as_mut().and_then(due) else {
            return;
        };
        let sent = self.call_etcd(&request);
        let Some(health) = self.fleet.as_mut().map(|f| &mut f.health) else {
            return;
        };
        match sent {
            Ok(token) => health.call = Some(token),
            Err(refused) => {
                health.read.on_failure(now);
                self.fleet_error(&format!(
                    "the health summaries were not read (the call was refused: {refused:?})"
                ));
            }
        }
    }

    /// Takes a page of the health read into shared data; false when `token` is not that read.
    pub(super) fn on_shared_health_answer(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
    ) -> bool {
        let Some(health) = self.fleet.as_mut().map(|f| &mut f.health) else {
            return false;
        };
        if health.call != Some(token) {
            return false;
        }
        health.call = None;
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let body = self.host.callout_body(body_size);
        let Some(health) = self.fleet.as_mut().map(|f| &mut f.health) else {
            return true;
        };
        let page = match answer.headers {
            0 => {
                health.read.on_lost(now);
                Err("the call failed (timeout or connection reset)".to_string())
            }
            _ => health.read.on_answer(answer.status.as_deref(), &body, now),
        };
        match page {
            Ok(page) => self.keep_health(page),
            Err(why) => self.fleet_error(&format!("the health summaries were not read: {why}")),
        }
        // A read with more pages goes on at once.
        self.shared_health_tick(now);
        true
    }

    fn keep_health(&mut self, page: Page) {
        let Some(own) = self.fleet.as_ref().map(|f| f.health.node.clone()) else {
            return;
        };
        let mut failed = Vec::new();
        for (id, node, summary) in page.summaries.iter().filter(|(_, n, _)| *n != own) {
            if let Err(e) = self.registry.record_health(id, node, summary) {
                failed.push(format!("{id}/{node} ({e:?})"));
            }
        }
        if let Some(first) = page.unreadable.first() {
            self.fleet_error(&format!(
                "{} key(s) under health/ are no health summary and were skipped, first {first}",
                page.unreadable.len()
            ));
        }
        if let Some(first) = failed.first() {
            self.fleet_error(&format!(
                "{} health summaries could not be kept in shared data, first {first}",
                failed.len()
            ));
        }
    }
}
