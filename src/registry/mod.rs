//! The subscription registry and everything else kept in the key-value store that every worker
//! and the dispatcher see (proxy-wasm shared data in Envoy, an in-memory map in tests; in fleet
//! mode it is the cache of etcd's registry, see `crate::fleet`): the store's keys ([`store`]),
//! bucketed lists ([`buckets`]), the subscriptions themselves (this file), delivery logs
//! ([`attempts`]) and the recover index beside them ([`kept`]), per-consumer rate limits ([`ratelimit`]) and the dispatcher's heartbeat
//! ([`watchdog`]).
//!
//! May use: `model`, `support`.
//!
//! The keys are listed in [`crate::registry::store`]: records in `pwh:sub:<n>` buckets (by a hash of the
//! id), lines `<id> <stamp> <record JSON>`, the stamp being the bucket version the record's last
//! write replaced, so it changes exactly when that record is written (the version
//! [`Registry::get_raw`] gives callers that cache parsed records); the index `pwh:idx:<n>`, lines
//! `<filter> <id>` for every subscription listing that filter (fan-out for `a.b.c` reads only the
//! buckets of [`lookup_filters`]`("a.b.c")`, so its cost does not grow with unrelated
//! subscriptions); owners `pwh:own:<n>`, lines `<consumer> <id>` (listing, per-consumer limit,
//! checked atomically with the insert); `pwh:gen`, whose version moves after every change, so
//! readers keep caches until it does.
//!
//! Every read-modify-write uses compare-and-swap and retries on conflict, so concurrent writers on
//! different workers never lose an update. Shared data has no create-if-absent, so two first
//! writers of a key could overwrite each other: the bucket keys are therefore all created once at
//! start-up ([`Registry::prepare`], on Envoy's main thread, whose roots configure before any
//! worker's: seen in Envoy 1.40's log) and afterwards only ever changed with compare-and-swap.
//! Writes are ordered so that readers never see a half-made subscription: an id is listed in an
//! index only while its record exists, and readers skip ids whose record is gone.

pub mod attempts;
pub(crate) mod buckets;
pub mod kept;
pub mod portal;
pub mod ratelimit;
pub mod store;
pub mod watchdog;

use crate::model::subscription::{lookup_filters, StaticSubscription, Subscription};
use crate::registry::buckets::{Bucket, Change};
use crate::registry::store::{
    index_key, owner_key, record_key, KvStore, StoreError, ACTIVE_KEY, COUNT_KEY, GEN_KEY,
    LIST_BUCKETS, OWNER_PREFIX, PREPARED_BUCKETS, STATIC_KEY,
};
use crate::support::hashing::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    NotFound,
    /// The consumer already has the maximum number of subscriptions.
    LimitReached(usize),
    /// The registry already holds `api.max_subscriptions` API subscriptions (this many).
    RegistryFull(usize),
    /// Too much contention or a store failure; nothing was changed.
    Unavailable(String),
}

/// Bounded retries on compare-and-swap conflicts; contention is between a handful of threads.
const MAX_CAS_RETRIES: usize = 1000;

/// A record's entry in its bucket: `<stamp> <json>`, the stamp being the bucket version its
/// write replaced. Each write of a bucket starts from a different version, so a record's stamp
/// changes exactly when the record is written, and a record deleted and made again under the
/// same id (a static subscription) never shows an old stamp.
fn record_entry(stamp: u32, json: &[u8]) -> Vec<u8> {
    let mut entry = format!("{stamp} ").into_bytes();
    entry.extend_from_slice(json);
    entry
}

/// The stamp and JSON of a record entry.
fn parse_entry(entry: &[u8]) -> Option<(u32, &[u8])> {
    let space = entry.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(entry.get(..space)?)
        .ok()?
        .parse()
        .ok()?;
    let json = entry.get(space + 1..)?;
    (!json.is_empty()).then_some((stamp, json))
}

/// The raw record of `id` and its stamp, straight from the store.
pub(crate) fn stored_record<S: KvStore>(store: &S, id: &str) -> Option<(Vec<u8>, u32)> {
    let bucket = Bucket::read(store, &record_key(id));
    let (stamp, json) = parse_entry(bucket.get(id)?)?;
    Some((json.to_vec(), stamp))
}

/// The ids listed under `name` in a bucket of `<name> <id>` lines.
fn ids_under<'a>(value: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    std::str::from_utf8(value)
        .unwrap_or_default()
        .lines()
        .filter_map(move |line| line.strip_prefix(name)?.strip_prefix(' '))
}

/// The registry operations, over any [`KvStore`].
pub struct Registry<S: KvStore> {
    store: S,
}

impl<S: KvStore> Registry<S> {
    pub fn new(store: S) -> Self {
        Registry { store }
    }

    /// Creates the bucket keys that do not exist yet. Run at start-up, before any request.
    /// `pwh:gen` is created last, so once it exists every bucket does: later callers (each
    /// worker's configure) return at once and never write a bucket unconditionally while
    /// someone else may be filling it.
    pub fn prepare(&self) {
        if self.store.get(GEN_KEY).is_some() {
            return;
        }
        for (prefix, count) in PREPARED_BUCKETS {
            for n in 0..count {
                self.create_if_absent(&format!("{prefix}:{n}"));
            }
        }
        portal::prepare(&self.store);
        self.create_if_absent(ACTIVE_KEY);
        self.create_if_absent(COUNT_KEY);
        self.create_if_absent(GEN_KEY);
    }

    fn create_if_absent(&self, key: &str) {
        if self.store.get(key).is_none() {
            let _ = self.store.set(key, b"", None);
        }
    }

    /// A number that changes whenever any subscription changes.
    pub fn generation(&self) -> u32 {
        self.store.get(GEN_KEY).map_or(0, |(_, cas)| cas)
    }

    /// The record and its store version, or None when absent or deleted.
    pub fn get(&self, id: &str) -> Option<(Subscription, u32)> {
        let (bytes, cas) = self.get_raw(id)?;
        Subscription::from_json(&bytes).map(|s| (s, cas))
    }

    /// The raw record bytes and version, for callers that cache parsed records by version.
    pub fn get_raw(&self, id: &str) -> Option<(Vec<u8>, u32)> {
        stored_record(&self.store, id)
    }

    /// Adds attempts (oldest first) to the delivery log of `id`, only while its record exists
    /// (see [`attempts::record`]).
    pub fn record_attempts(&self, id: &str, new: Vec<attempts::Attempt>) -> Result<(), StoreError> {
        attempts::record(&self.store, id, new, || {
            stored_record(&self.store, id).is_some()
        })
    }

    /// Sets the recover index of `id` ([`kept`]): the detection times of its kept messages, and
    /// those newly no longer kept; only while its record exists.
    pub fn record_kept(
        &self,
        id: &str,
        kept_ms: Vec<u64>,
        lost_ms: &[u64],
    ) -> Result<(), StoreError> {
        kept::record(&self.store, id, kept_ms, lost_ms, || {
            stored_record(&self.store, id).is_some()
        })
    }

    /// Ids of subscriptions that may match `event_type` (deduplicated, index order).
    pub fn candidates(&self, event_type: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        let mut seen = HashSet::default();
        for filter in lookup_filters(event_type) {
            if let Some((value, _)) = self.store.get(&index_key(&filter)) {
                for id in ids_under(&value, &filter) {
                    if seen.insert(id.to_string()) {
                        ids.push(id.to_string());
                    }
                }
            }
        }
        ids
    }

    /// The ids a consumer owns, oldest first.
    pub fn ids_for_consumer(&self, consumer: &str) -> Vec<String> {
        self.store
            .get(&owner_key(consumer))
            .map(|(value, _)| ids_under(&value, consumer).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Every subscription id of every consumer, in id order (the operator's list pages by it),
    /// at most `api.max_subscriptions` and the static ones.
    pub fn all_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for n in 0..LIST_BUCKETS {
            let Some((value, _)) = self.store.get(&format!("{OWNER_PREFIX}:{n}")) else {
                continue;
            };
            let text = std::str::from_utf8(&value).unwrap_or_default();
            ids.extend(
                text.lines()
                    .filter_map(|line| line.rsplit_once(' '))
                    .map(|(_, id)| id.to_string()),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every subscription of a consumer, oldest first, skipping ones being created or deleted
    /// (the API reads pages of [`Registry::ids_for_consumer`] instead).
    #[cfg(test)]
    pub(crate) fn list_for_consumer(&self, consumer: &str) -> Vec<Subscription> {
        self.ids_for_consumer(consumer)
            .iter()
            .filter_map(|id| self.get(id).map(|(s, _)| s))
            .collect()
    }

    /// Adds a new subscription. `limit` caps the consumer's subscriptions (checked atomically).
    pub fn insert(&self, sub: &Subscription, limit: Option<usize>) -> Result<(), RegistryError> {
        self.insert_within(sub, limit, None)
    }

    /// [`Registry::insert`] within `total` API subscriptions in all (`api.max_subscriptions`):
    /// the create's place is counted in [`COUNT_KEY`] first (compare-and-swap, so creates on
    /// every worker at once never pass it) and given back if the create fails.
    pub fn insert_within(
        &self,
        sub: &Subscription,
        limit: Option<usize>,
        total: Option<usize>,
    ) -> Result<(), RegistryError> {
        // Refused without a write when the consumer is at its limit already (checked again,
        // atomically, when its owner line is added).
        let owned = || self.ids_for_consumer(&sub.consumer).len();
        if let Some(max) = limit.filter(|max| owned() >= *max) {
            return Err(RegistryError::LimitReached(owned().max(max)));
        }
        // Static subscriptions are the configuration's: never counted.
        let counted = !sub.is_static;
        if counted {
            self.reserve(total.unwrap_or(usize::MAX))?;
        }
        let inserted = self.insert_owned(sub, limit);
        if inserted.is_err() && counted {
            self.adjust_count(-1);
        }
        inserted
    }

    /// The records, index and owner lines of a new subscription, within `limit` for its consumer.
    fn insert_owned(&self, sub: &Subscription, limit: Option<usize>) -> Result<(), RegistryError> {
        let (id, consumer) = (sub.id.as_str(), sub.consumer.as_str());
        let record =
            serde_json::to_vec(sub).map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        self.edit_bucket(&owner_key(consumer), |lines| {
            let owned = lines
                .iter()
                .filter(|l| ids_under(l.as_bytes(), consumer).next().is_some());
            let count = owned.count();
            if limit.is_some_and(|max| count >= max) {
                return Err(RegistryError::LimitReached(count));
            }
            add_line(lines, consumer, id);
            Ok(())
        })?;
        let written = self
            .put_record(id, &record)
            .and_then(|()| self.index(id, &sub.events));
        if let Err(e) = written {
            // Nothing half-written: take back every line and the record.
            self.unindex(id, &sub.events);
            self.remove_record(id);
            self.remove_line(&owner_key(consumer), consumer, id);
            return Err(e);
        }
        self.count_active(None, Some(sub));
        self.bump_generation();
        Ok(())
    }

    /// How many API subscriptions the registry holds (static ones aside).
    pub fn count(&self) -> u64 {
        read_count(self.store.get(COUNT_KEY).unwrap_or_default().0.as_slice())
    }

    /// Takes a place among `max` API subscriptions, or finds them all taken.
    fn reserve(&self, max: usize) -> Result<(), RegistryError> {
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        for _ in 0..MAX_CAS_RETRIES {
            let (value, cas) = self.store.get(COUNT_KEY).unwrap_or_default();
            let count = read_count(&value);
            if count >= max {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                return Err(RegistryError::RegistryFull(count));
            }
            let next = (count + 1).to_string();
            match self.store.set(COUNT_KEY, next.as_bytes(), Some(cas)) {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RegistryError::Unavailable(e)),
            }
        }
        Err(RegistryError::Unavailable("too much contention".into()))
    }

    /// Moves the API subscription count by `delta` (never below 0).
    fn adjust_count(&self, delta: i64) {
        self.adjust(COUNT_KEY, delta);
    }

    /// How many subscriptions are active.
    pub fn active_count(&self) -> u64 {
        self.store
            .get(ACTIVE_KEY)
            .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// Keeps the active count in step with a change from `before` to `after`.
    fn count_active(&self, before: Option<&Subscription>, after: Option<&Subscription>) {
        let active = |s: Option<&Subscription>| i64::from(s.is_some_and(Subscription::is_active));
        self.adjust_active(active(after) - active(before));
    }

    fn adjust_active(&self, delta: i64) {
        self.adjust(ACTIVE_KEY, delta);
    }

    /// Moves the decimal count under `key` by `delta` (never below 0), with compare-and-swap.
    fn adjust(&self, key: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        for _ in 0..MAX_CAS_RETRIES {
            let (value, cas) = self.store.get(key).unwrap_or_default();
            let count = i64::try_from(read_count(&value)).unwrap_or(i64::MAX);
            let next = count.saturating_add(delta).max(0).to_string();
            if self.store.set(key, next.as_bytes(), Some(cas)) != Err(StoreError::Conflict) {
                return;
            }
        }
    }

    /// Changes a subscription with `change`, retried on conflict; returns the stored result.
    /// `change` may refuse (its error is returned and nothing is written).
    pub fn update<E>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Subscription) -> Result<(), E>,
    ) -> Result<Result<Subscription, E>, RegistryError> {
        let mut refusal = None;
        let mut refusing = |sub: &mut Subscription| match change(sub) {
            Ok(()) => true,
            Err(e) => {
                refusal = Some(e);
                false
            }
        };
        let stored = self.update_with(id, &mut refusing, true)?;
        Ok(match (stored, refusal) {
            (_, Some(refused)) => Err(refused),
            (Some(after), None) => Ok(after),
            (None, None) => return Err(RegistryError::NotFound),
        })
    }

    /// Makes the cache hold `sub` exactly as etcd has it (fleet mode): written over the record
    /// of the same id (its version kept, not moved), or added without the per-consumer limit,
    /// which etcd enforced. Unchanged records are not written.
    pub fn apply_synced(&self, sub: &Subscription) -> Result<(), RegistryError> {
        if self.write_synced(sub)? {
            self.relist(std::slice::from_ref(sub), true);
        }
        Ok(())
    }

    /// [`Registry::apply_synced`] for many records (one etcd answer's, or the new static
    /// subscriptions): each record is written on its own (record buckets are small), then the
    /// new ones are listed with one compare-and-swap edit per index and owner bucket rather than
    /// one per record: 10,000 records of one event type (or of one consumer) would otherwise
    /// rewrite a bucket growing to 10,000 lines 10,000 times. A record not stored is logged.
    pub fn apply_synced_batch(&self, subs: Vec<Subscription>) {
        let mut new = Vec::new();
        for sub in subs {
            match self.write_synced(&sub) {
                Ok(true) => new.push(sub),
                Ok(false) => {}
                Err(e) => not_stored(&sub.id, &e),
            }
        }
        self.relist(&new, true);
    }

    /// Writes the record of [`Registry::apply_synced`]; true when this call created it (its
    /// owner and index lines are then still to add, and it is not counted yet). A record made
    /// meanwhile by another writer (a worker applying its API write of the same record) is
    /// written over instead, so a record is created, listed and counted once.
    fn write_synced(&self, sub: &Subscription) -> Result<bool, RegistryError> {
        match self.apply_existing(sub) {
            Err(RegistryError::NotFound) if self.create_record(sub)? => Ok(true),
            Err(RegistryError::NotFound) => self.apply_existing(sub).map(|()| false),
            other => other.map(|()| false),
        }
    }

    /// Writes `sub` over the stored record of its id, keeping `sub`'s version; NotFound when
    /// there is none.
    fn apply_existing(&self, sub: &Subscription) -> Result<(), RegistryError> {
        let mut same = |have: &mut Subscription| {
            let differs = *have != *sub;
            have.clone_from(sub);
            differs
        };
        self.update_with(&sub.id, &mut same, false).map(|_| ())
    }

    /// Writes the record of `sub` while its id has none (compare-and-swap on its bucket); false
    /// when it has one.
    fn create_record(&self, sub: &Subscription) -> Result<bool, RegistryError> {
        let json =
            serde_json::to_vec(sub).map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let key = record_key(&sub.id);
        for _ in 0..MAX_CAS_RETRIES {
            let bucket = Bucket::read(&self.store, &key);
            if bucket.get(&sub.id).is_some() {
                return Ok(false);
            }
            let entry = record_entry(bucket.cas, &json);
            match bucket.replace(&self.store, &key, &bucket.with(&sub.id, Some(&entry))) {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RegistryError::Unavailable(e)),
            }
        }
        Err(RegistryError::Unavailable("too much contention".into()))
    }

    /// [`Registry::update`] without the generic closure, so the wasm carries it once:
    /// `change` returns false to refuse, and then nothing is written (None). `bump` moves the
    /// record's version.
    fn update_with(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut Subscription) -> bool,
        bump: bool,
    ) -> Result<Option<Subscription>, RegistryError> {
        let key = record_key(id);
        for _ in 0..MAX_CAS_RETRIES {
            let bucket = Bucket::read(&self.store, &key);
            let before = parsed_record(&bucket, id).ok_or(RegistryError::NotFound)?;
            let mut after = before.clone();
            if !change(&mut after) {
                return Ok(None);
            }
            if bump {
                after.version = before.version.saturating_add(1);
            }
            let record = serde_json::to_vec(&after)
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            let entry = record_entry(bucket.cas, &record);
            match bucket.replace(&self.store, &key, &bucket.with(id, Some(&entry))) {
                Ok(()) => {
                    let changed: Vec<&String> = before
                        .events
                        .iter()
                        .filter(|f| !after.events.contains(f))
                        .chain(after.events.iter().filter(|f| !before.events.contains(f)))
                        .collect();
                    if let Err(e) = self.sync_index(id, &changed) {
                        // Put the old record back, and its index lines, rather than half-change.
                        if let Ok(old) = serde_json::to_vec(&before) {
                            let _ = self.put_record(id, &old);
                        }
                        let _ = self.sync_index(id, &changed);
                        return Err(e);
                    }
                    self.count_active(Some(&before), Some(&after));
                    self.bump_generation();
                    return Ok(Some(after));
                }
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RegistryError::Unavailable(e)),
            }
        }
        Err(RegistryError::Unavailable("too much contention".into()))
    }

    /// Deletes a subscription: no delivery starts for it afterwards.
    pub fn delete(&self, id: &str) -> Result<Subscription, RegistryError> {
        let sub = self.take_record(id)?;
        self.relist(std::slice::from_ref(&sub), false);
        Ok(sub)
    }

    /// [`Registry::delete`] for many subscriptions (one etcd answer's deletions), with one edit
    /// per index and owner bucket rather than one per subscription. Ids already gone are
    /// skipped; a subscription not deleted is logged.
    pub fn delete_batch(&self, ids: &[String]) {
        let mut gone = Vec::new();
        for id in ids {
            match self.take_record(id) {
                Ok(sub) => gone.push(sub),
                Err(RegistryError::NotFound) => {}
                Err(e) => not_stored(id, &e),
            }
        }
        self.relist(&gone, false);
    }

    /// Removes the record of `id` (compare-and-swap on its bucket), then its attempt log.
    fn take_record(&self, id: &str) -> Result<Subscription, RegistryError> {
        let key = record_key(id);
        for _ in 0..MAX_CAS_RETRIES {
            let bucket = Bucket::read(&self.store, &key);
            let sub = parsed_record(&bucket, id).ok_or(RegistryError::NotFound)?;
            match bucket.replace(&self.store, &key, &bucket.with(id, None)) {
                Ok(()) => {
                    attempts::clear(&self.store, id);
                    kept::clear(&self.store, id);
                    return Ok(sub);
                }
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RegistryError::Unavailable(e)),
            }
        }
        Err(RegistryError::Unavailable("too much contention".into()))
    }

    /// Makes the registry hold exactly the configured static subscriptions: new ones are added,
    /// changed ones rewritten (a changed url, filter or secret re-activates), removed ones deleted.
    /// Idempotent, so every configure may run it.
    pub fn sync_static(&self, statics: &[StaticSubscription], now_ms: u64) {
        let mut new = Vec::new();
        for wanted in statics {
            let fresh = Subscription::from_static(wanted, now_ms);
            match self.get(&wanted.id) {
                Some((have, _)) if have.is_static && have.same_definition(&fresh) => {}
                Some(_) => {
                    let _ = self.update(&wanted.id, |s| {
                        *s = Subscription {
                            created_at_ms: s.created_at_ms,
                            version: s.version,
                            ..fresh.clone()
                        };
                        Ok::<(), ()>(())
                    });
                }
                None => new.push(fresh),
            }
        }
        self.apply_synced_batch(new);
        let (listed, cas) = self.store.get(STATIC_KEY).unwrap_or_default();
        for gone in std::str::from_utf8(&listed).unwrap_or_default().lines() {
            if !statics.iter().any(|s| s.id == gone) {
                let _ = self.delete(gone);
            }
        }
        // One id a line; written out rather than `[&str]::join`, so that the wasm carries only
        // the `[String]` instantiation of join (1 KB each).
        let mut ids = String::new();
        for s in statics {
            if !ids.is_empty() {
                ids.push('\n');
            }
            ids.push_str(&s.id);
        }
        let _ = self.store.set(STATIC_KEY, ids.as_bytes(), Some(cas));
    }

    /// Adds (`add`) or takes out the owner and index lines of `subs` with one compare-and-swap
    /// edit per bucket, and counts them in or out of the active count. Taking out is best
    /// effort: an id left behind is harmless, readers skip missing records.
    fn relist(&self, subs: &[Subscription], add: bool) {
        if subs.is_empty() {
            return;
        }
        let mut lines: HashMap<String, Vec<String>> = HashMap::default();
        for sub in subs {
            let own = lines.entry(owner_key(&sub.consumer)).or_default();
            own.push(format!("{} {}", sub.consumer, sub.id));
            for filter in &sub.events {
                let bucket = lines.entry(index_key(filter)).or_default();
                bucket.push(format!("{filter} {}", sub.id));
            }
        }
        for (key, changed) in lines {
            let set: HashSet<&String> = changed.iter().collect();
            let edited = self.edit_bucket(&key, |existing| {
                existing.retain(|l| !set.contains(l));
                if add {
                    existing.extend(changed.iter().cloned());
                }
                Ok(())
            });
            if let Err(e) = edited {
                log::error!("proxy-webhooks: subscriptions not fully listed ({key}): {e:?}");
            }
        }
        let active = i64::try_from(subs.iter().filter(|s| s.is_active()).count());
        let active = active.unwrap_or(i64::MAX);
        self.adjust_active(if add { active } else { -active });
        // API subscriptions (a create reserved its own place in `insert_within`; those synced
        // from etcd and every delete are counted here).
        let api = i64::try_from(subs.iter().filter(|s| !s.is_static).count());
        let api = api.unwrap_or(i64::MAX);
        self.adjust_count(if add { api } else { -api });
        self.bump_generation();
    }

    /// Writes the record of `id` (JSON) into its bucket.
    fn put_record(&self, id: &str, json: &[u8]) -> Result<(), RegistryError> {
        let mut put = |_: Option<&[u8]>, cas| Ok(Change::Put(record_entry(cas, json)));
        buckets::edit(&self.store, &record_key(id), id, MAX_CAS_RETRIES, &mut put)
            .map_err(|e| RegistryError::Unavailable(format!("{e:?}")))
    }

    /// Takes a record back (best effort, to undo a failed insert).
    fn remove_record(&self, id: &str) {
        let mut remove = |_: Option<&[u8]>, _| Ok(Change::Remove);
        let _ = buckets::edit(
            &self.store,
            &record_key(id),
            id,
            MAX_CAS_RETRIES,
            &mut remove,
        );
    }

    /// Lists a new subscription under each of its filters.
    fn index(&self, id: &str, filters: &[String]) -> Result<(), RegistryError> {
        filters
            .iter()
            .try_for_each(|filter| self.add_line(&index_key(filter), filter, id))
    }

    /// Takes a subscription's index lines back (best effort, to undo a failed insert).
    fn unindex(&self, id: &str, filters: &[String]) {
        for filter in filters {
            self.remove_line(&index_key(filter), filter, id);
        }
    }

    /// Makes the index line `<filter> <id>` of each of `filters` agree with the record as stored
    /// now: present when the record lists the filter, absent otherwise (or when it is gone).
    ///
    /// Two workers may change one subscription at once, each fixing the index after its own
    /// record write. Applying each writer's own before/after difference could leave the index
    /// following the older record (W1 writes [a]→[b]; W2 writes [b]→[a] and indexes a; W1 then
    /// removes a), and the subscription silently missed events it lists. Here the record is read
    /// after the bucket, inside the bucket's compare-and-swap loop, and the bucket is written even
    /// when unchanged: a decision made on a record that another writer changed before this one
    /// wrote the bucket fails its swap and is made again, so the last write of every bucket
    /// follows the newest record.
    fn sync_index(&self, id: &str, filters: &[&String]) -> Result<(), RegistryError> {
        for filter in filters {
            self.edit_bucket_with(&index_key(filter), true, &mut |lines| {
                let listed = self
                    .get(id)
                    .is_some_and(|(sub, _)| sub.events.iter().any(|f| f == *filter));
                if listed {
                    add_line(lines, filter, id);
                } else {
                    let line = format!("{filter} {id}");
                    lines.retain(|l| *l != line);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn add_line(&self, key: &str, name: &str, id: &str) -> Result<(), RegistryError> {
        self.edit_bucket(key, |lines| {
            add_line(lines, name, id);
            Ok(())
        })
    }

    /// Best effort: an id left behind in a bucket is harmless, readers skip missing records.
    fn remove_line(&self, key: &str, name: &str, id: &str) {
        let line = format!("{name} {id}");
        let _ = self.edit_bucket(key, |lines| {
            lines.retain(|l| *l != line);
            Ok(())
        });
    }

    /// Read-modify-write of one bucket with compare-and-swap, retried on conflict; an edit that
    /// changes nothing writes nothing.
    fn edit_bucket(
        &self,
        key: &str,
        mut edit: impl FnMut(&mut Vec<String>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        self.edit_bucket_with(key, false, &mut edit)
    }

    /// [`Registry::edit_bucket`]; with `always_write` the bucket is written (its version moves)
    /// even when the edit changed nothing.
    fn edit_bucket_with(
        &self,
        key: &str,
        always_write: bool,
        edit: &mut dyn FnMut(&mut Vec<String>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        for _ in 0..MAX_CAS_RETRIES {
            let (value, cas) = self.store.get(key).unwrap_or_default();
            let text = std::str::from_utf8(&value).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            edit(&mut lines)?;
            let joined = lines.join("\n");
            if joined == text && !always_write {
                return Ok(());
            }
            match self.store.set(key, joined.as_bytes(), Some(cas)) {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RegistryError::Unavailable(e)),
            }
        }
        Err(RegistryError::Unavailable("too much contention".into()))
    }

    fn bump_generation(&self) {
        let _ = self.store.set(GEN_KEY, b"", None);
    }
}

/// The record of `id` in its bucket, parsed.
fn parsed_record(bucket: &Bucket, id: &str) -> Option<Subscription> {
    let (_, json) = parse_entry(bucket.get(id)?)?;
    Subscription::from_json(json)
}

/// Logs a change of subscription `id` the store did not take.
fn not_stored(id: &str, e: &RegistryError) {
    log::error!("proxy-webhooks: subscription {id}: change not stored: {e:?}");
}

/// A decimal count as stored (0 when absent or not a number).
fn read_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn add_line(lines: &mut Vec<String>, name: &str, id: &str) {
    let line = format!("{name} {id}");
    if !lines.contains(&line) {
        lines.push(line);
    }
}

#[cfg(test)]
mod tests;
