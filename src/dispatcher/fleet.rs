//! The dispatcher's side of fleet mode: the registry read from etcd every `sync_interval` into
//! the local cache, and fan-out held back until the first read and the lease of the durable
//! outbox (a restarted replica delivers to every subscription etcd has, not to none, and keeps
//! every message in etcd from the first).

use super::journal::Durable;
use super::session::Session;
use super::shared_log::SharedLog;
use super::Dispatcher;
use crate::config::FleetConfig;
use crate::fleet::commit::{Commit, Step, Write};
use crate::fleet::journal::Journal;
use crate::fleet::keys::Keys;
use crate::fleet::revocations::Revocations;
use crate::fleet::statics::{Shared, Statics};
use crate::fleet::sync::{Apply, Sync};
use crate::fleet::vault::Vault;
use crate::model::subscription::Subscription;
use crate::port::{DispatchHost, Metric};
use crate::registry::store::KvStore;
use crate::registry::watchdog;
use crate::support::hashing::HashMap;

/// How long fan-out waits for the first read of the registry before it goes on with what it
/// has (etcd unreachable at start).
const FIRST_SYNC_WAIT_MS: u64 = 5000;
/// etcd failures logged one line per this many.
const LOG_EVERY: u64 = 100;

/// Fleet mode's state in the dispatcher.
pub(super) struct Fleet {
    pub(super) cluster: String,
    pub(super) keys: Keys,
    pub(super) sync: Sync,
    /// The token of the registry read waiting for its answer.
    reading: Option<u32>,
    /// Static subscriptions' shared statuses, and the token of its call waiting.
    statics: Statics,
    statics_call: Option<u32>,
    /// Portal sessions' revocations, and the token of their read waiting.
    revocations: Revocations,
    revocations_call: Option<u32>,
    /// The workers were told that the first registry read is applied.
    announced: bool,
    /// Record changes the dispatcher made (a subscription disabled) on their way to etcd.
    writes: HashMap<u32, Commit>,
    started_ms: u64,
    errors: u64,
    /// The durable outbox.
    pub(super) durable: Durable,
    /// This replica's delivery logs, copied to etcd.
    pub(super) log: SharedLog,
    /// How secrets and messages are sealed in etcd.
    pub(super) vault: Vault,
    /// etcd's token, with `fleet.username`.
    pub(super) session: Option<Session>,
}

impl Fleet {
    pub(super) fn new(
        config: &crate::config::Config,
        fleet: &FleetConfig,
        node_id: &str,
        now: u64,
    ) -> Fleet {
        let vault = Vault::new(fleet.keyring.clone(), fleet.encrypt_payloads);
        let journal = Journal::new(
            Keys::new(&fleet.prefix),
            node_id,
            fleet.lease_ttl_ms,
            fleet.sync_interval_ms,
            config.delivery.max_replay,
            config.delivery.max_queue_bytes / 4,
        )
        .with_vault(vault.clone());
        let configured: Vec<Subscription> = config
            .subscriptions
            .iter()
            .map(|s| Subscription::from_static(s, now))
            .collect();
        let config = fleet;
        Fleet {
            cluster: config.cluster.clone(),
            keys: Keys::new(&config.prefix),
            sync: Sync::new(Keys::new(&config.prefix), config.sync_interval_ms)
                .with_vault(vault.clone()),
            reading: None,
            statics: Statics::new(
                Keys::new(&config.prefix),
                config.sync_interval_ms,
                &configured,
            ),
            statics_call: None,
            revocations: Revocations::new(Keys::new(&config.prefix), config.sync_interval_ms),
            revocations_call: None,
            announced: false,
            writes: HashMap::default(),
            started_ms: now,
            errors: 0,
            durable: Durable::new(journal),
            log: SharedLog::new(node_id, config.sync_interval_ms),
            vault,
            session: config.credentials.as_ref().map(Session::new),
        }
    }
}

impl<H: DispatchHost> Dispatcher<H> {
    /// Whether fan-out waits: fleet mode before the first registry read and the outbox's
    /// lease (at most [`FIRST_SYNC_WAIT_MS`], or as long as a large first read keeps making
    /// progress; then messages go out from memory, and are written once the lease is there).
    pub(super) fn awaiting_first_sync(&self, now: u64) -> bool {
        self.fleet.as_ref().is_some_and(|f| {
            let early = now < f.started_ms.saturating_add(FIRST_SYNC_WAIT_MS);
            let not_yet =
                !f.sync.synced() || !f.statics.ready() || f.durable.journal.lease().is_none();
            (not_yet && early) || f.sync.first_read_progressing(now)
        })
    }

    /// Sends the registry read when it is due; records the sync lag.
    pub(super) fn fleet_tick(&mut self) {
        let now = self.host.now_ms();
        let waits = self.awaiting_token();
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        self.host.record_metric(
            Metric::FleetSyncLagMs,
            fleet.sync.lag_ms(now, fleet.started_ms),
        );
        if waits {
            return;
        }
        if let Some(request) = fleet.sync.due(now) {
            let sent = self.call_etcd(&request);
            if let Some(fleet) = self.fleet.as_mut() {
                match sent {
                    Ok(token) => fleet.reading = Some(token),
                    Err(refused) => {
                        fleet.sync.on_refused(now);
                        self.fleet_error(&refused_call(refused));
                    }
                }
            }
        }
        self.statics_tick(now);
        self.revocations_tick(now);
    }

    /// Sends the read of portal revocations when it is due.
    fn revocations_tick(&mut self, now: u64) {
        let Some(request) = self.fleet.as_mut().and_then(|f| f.revocations.due(now)) else {
            return;
        };
        let sent = self.call_etcd(&request);
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match sent {
            Ok(token) => fleet.revocations_call = Some(token),
            Err(refused) => {
                fleet.revocations.on_failure(now);
                self.fleet_error(&refused_call(refused));
            }
        }
    }

    /// Takes the answer to the read of portal revocations into shared data, where every worker
    /// checks sessions; false when `token` is not that read.
    fn on_revocations_answer(&mut self, token: u32, headers: usize, body_size: usize) -> bool {
        let Some(fleet) = self.fleet.as_mut() else {
            return false;
        };
        if fleet.revocations_call != Some(token) {
            return false;
        }
        fleet.revocations_call = None;
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let body = self.host.callout_body(body_size);
        let Some(fleet) = self.fleet.as_mut() else {
            return true;
        };
        let found = match answer.headers {
            0 => {
                fleet.revocations.on_failure(now);
                Err("the call failed (timeout or connection reset)".to_string())
            }
            _ => fleet
                .revocations
                .on_answer(answer.status.as_deref(), &body, now),
        };
        let merged = found.and_then(|found| {
            crate::registry::portal::merge(self.host.store(), &found, now)
                .map_err(|e| format!("portal revocations could not be kept: {e:?}"))
        });
        if let Err(why) = merged {
            self.fleet_error(&why);
        }
        true
    }

    /// Sends the static subscriptions' call when one is due.
    fn statics_tick(&mut self, now: u64) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(request) = fleet.statics.due(now) else {
            return;
        };
        let sent = self.call_etcd(&request);
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match sent {
            Ok(token) => fleet.statics_call = Some(token),
            Err(refused) => {
                fleet.statics.on_failure(now);
                self.fleet_error(&refused_call(refused));
            }
        }
    }

    /// Takes the answer to the static subscriptions' call; false when `token` is not it.
    fn on_statics_answer(&mut self, token: u32, headers: usize, body_size: usize) -> bool {
        let Some(fleet) = self.fleet.as_mut() else {
            return false;
        };
        if fleet.statics_call != Some(token) {
            return false;
        }
        fleet.statics_call = None;
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let body = self.host.callout_body(body_size);
        let Some(fleet) = self.fleet.as_mut() else {
            return true;
        };
        let found = match answer.headers {
            0 => {
                fleet.statics.on_failure(now);
                Err("the call failed (timeout or connection reset)".to_string())
            }
            _ => fleet
                .statics
                .on_answer(answer.status.as_deref(), &body, now),
        };
        match found {
            Ok(found) => self.apply_static_statuses(found),
            Err(why) => self.fleet_error(&why),
        }
        self.statics_tick(now);
        true
    }

    /// Gives the static subscriptions the statuses etcd has for their definitions.
    fn apply_static_statuses(&mut self, found: Vec<(String, Shared)>) {
        for (id, shared) in found {
            let changed = self.registry.update(&id, |s| {
                if !s.is_static || shared.holds_in(s) {
                    return Err(());
                }
                s.status = shared.status;
                s.disabled_reason.clone_from(&shared.disabled_reason);
                s.updated_at_ms = shared.updated_at_ms;
                Ok(())
            });
            if let Ok(Ok(_)) = changed {
                self.failing.forget(&id);
                self.subscriptions.remove(&id);
            }
        }
        self.refresh_generation();
    }

    /// Sends a static subscription's new status to etcd (its definition stays here).
    pub(super) fn share_static_status(&mut self, after: Subscription) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let write = Write::Static { after };
        let (commit, request) = Commit::start(write, &fleet.keys, &fleet.vault, &mut self.host);
        self.send_write(commit, &request);
    }

    /// Takes an etcd answer; false when `token` is not an etcd call (a delivery's).
    pub(super) fn on_fleet_answer(&mut self, token: u32, headers: usize, body_size: usize) -> bool {
        if self.on_journal_answer(token, headers, body_size)
            || self.on_shared_log_answer(token, headers, body_size)
            || self.on_statics_answer(token, headers, body_size)
            || self.on_revocations_answer(token, headers, body_size)
        {
            return true;
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return false;
        };
        let write = fleet.writes.remove(&token);
        if fleet.reading != Some(token) && write.is_none() {
            return false;
        }
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let body = self.host.callout_body(body_size);
        if let Some(commit) = write {
            let status = answer.status.filter(|_| answer.headers > 0);
            self.on_write_answer(commit, status.as_deref(), &body);
            return true;
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return true;
        };
        fleet.reading = None;
        let changes = match answer.headers {
            // A registry read larger than Envoy buffers is reset too: the page is read again
            // smaller.
            0 => {
                fleet.sync.on_failure(now);
                Err(format!(
                    "the call failed (timeout, {})",
                    crate::dispatcher::delivery::RESET
                ))
            }
            _ => fleet.sync.on_answer(answer.status.as_deref(), &body, now),
        };
        let unreadable = self.fleet.as_mut().map_or(0, |f| f.sync.take_unreadable());
        if unreadable > 0 {
            self.host.add_metric(Metric::FleetUnreadable, unreadable);
        }
        match changes {
            Ok(changes) => {
                self.apply_synced(changes);
                self.announce_registry_read();
                // The next page (or the listing a change read asked for) goes at once.
                self.fleet_tick();
            }
            Err(why) => self.fleet_error(&why),
        }
        true
    }

    /// Tells the workers (shared data) whether the first registry read is applied: `false` at
    /// start, `true` once it is, so the API answers 503 until then (`crate::registry::watchdog`).
    pub(super) fn announce_registry_read(&mut self) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let read = fleet.sync.synced();
        if read && fleet.announced {
            return;
        }
        fleet.announced = read;
        self.host
            .record_metric(Metric::FleetRegistryRead, u64::from(read));
        let value = watchdog::registry_read_value(read);
        if let Err(e) = self
            .host
            .store()
            .set(watchdog::REGISTRY_READ_KEY, value, None)
        {
            log::error!(
                "proxy-webhooks: fleet: cannot tell the workers that the registry is read: {e:?}"
            );
        }
    }

    /// Sends a record change the dispatcher made (a disable) to etcd, so every replica has it.
    pub(super) fn fleet_write(&mut self, after: Subscription, before_version: u64) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let write = Write::Replace {
            after,
            before_version,
        };
        let (commit, request) = Commit::start(write, &fleet.keys, &fleet.vault, &mut self.host);
        self.send_write(commit, &request);
    }

    fn send_write(&mut self, commit: Commit, request: &crate::fleet::etcd::Request) {
        let sent = self.call_etcd(request);
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match sent {
            Ok(token) => {
                fleet.writes.insert(token, commit);
            }
            Err(refused) => {
                let id = commit.write().id().to_string();
                self.write_lost(&id, &format!("Envoy refused the call ({refused:?})"));
            }
        }
    }

    /// The next step of a record change on its way to etcd.
    fn on_write_answer(&mut self, mut commit: Commit, status: Option<&str>, body: &[u8]) {
        let id = commit.write().id().to_string();
        match commit.on_answer(status, body) {
            Step::Send(request) => self.send_write(commit, &request),
            Step::Committed { .. } => {}
            // Someone changed it meanwhile (a PATCH on another replica): etcd's record wins,
            // and the next read checks it again (it may be overtaken already).
            Step::Stale(fresh, revision) => {
                self.cached_outside_sync(&fresh.id, revision);
                self.apply_synced(vec![Apply::Put(fresh)]);
            }
            Step::Gone => self.apply_synced(vec![Apply::Remove(id)]),
            Step::LimitReached(_) | Step::RegistryFull(_) => {}
            Step::Unavailable(why) => self.write_lost(&id, &why),
        }
    }

    /// A change etcd did not take: it holds on this replica only (until etcd's record changes).
    fn write_lost(&mut self, id: &str, why: &str) {
        log::warn!(
            "proxy-webhooks: fleet: the change of subscription {id} was not written to etcd ({why}): other replicas do not see it"
        );
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
    }

    /// The cache took a record etcd had at `revision` outside the registry read (see
    /// `crate::fleet::sync`).
    pub(super) fn cached_outside_sync(&mut self, id: &str, revision: i64) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.sync.on_local(id, revision);
        }
    }

    /// Writes etcd's changes into the cache. Static subscriptions are the configuration's: a
    /// record of one in `P/sub/` (a copy an earlier version wrote) is neither applied nor
    /// removed, and is deleted from etcd.
    fn apply_synced(&mut self, changes: Vec<Apply>) {
        // One registry batch for the puts and one for the removes: each list bucket is edited
        // once per answer, not once per record (a first sync brings the whole registry).
        let (mut puts, mut removes) = (Vec::new(), Vec::new());
        for change in changes {
            let statics = self.fleet.as_mut().map(|f| &mut f.statics);
            let Some(change) = not_static(change, statics) else {
                continue;
            };
            match change {
                Apply::Put(sub) => {
                    self.subscriptions.remove(&sub.id);
                    puts.push(sub);
                }
                Apply::Remove(id) => {
                    self.subscriptions.remove(&id);
                    // Its delivery log key goes too, should a write of ours have raced its
                    // delete (which took `P/log/<id>/` along).
                    self.log_changed(&id);
                    removes.push(id);
                }
            }
        }
        self.registry.apply_synced_batch(puts);
        self.registry.delete_batch(&removes);
        self.refresh_generation();
    }

    /// Counts an etcd failure; logs the first and then one per [`LOG_EVERY`].
    pub(super) fn fleet_error(&mut self, why: &str) {
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
        if let Some(fleet) = self.fleet.as_mut() {
            if fleet.errors % LOG_EVERY == 0 {
                log::warn!(
                    "proxy-webhooks: fleet: etcd on cluster {}: {why} ({} failure(s) so far); serving the last synced registry",
                    fleet.cluster,
                    fleet.errors + 1
                );
            }
            fleet.errors = fleet.errors.wrapping_add(1);
        }
    }
}

/// `change`, unless it concerns a static subscription (then the record is checked as a legacy
/// copy, to delete from etcd).
fn not_static(change: Apply, statics: Option<&mut Statics>) -> Option<Apply> {
    let Some(statics) = statics else {
        return Some(change);
    };
    match &change {
        Apply::Put(sub) if sub.is_static || statics.is_configured(&sub.id) => {
            statics.check_legacy(&sub.id);
            None
        }
        Apply::Remove(id) if statics.is_configured(id) => None,
        _ => Some(change),
    }
}

fn refused_call(refused: crate::port::CalloutRefused) -> String {
    match refused.no_token {
        true => "no token from etcd's authentication".to_string(),
        false => format!("Envoy refused the call ({refused:?}): is the cluster defined?"),
    }
}
