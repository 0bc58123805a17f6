//! The subscription registry, kept in a key-value store that every worker and the dispatcher see
//! (proxy-wasm shared data in Envoy; an in-memory map in tests; etcd later).
//!
//! The keys are listed in [`crate::store`]: records in `pwh:sub:<n>` buckets (by a hash of the
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

use crate::attempts;
use crate::buckets::{self, Bucket, Change};
use crate::hashing::{HashMap, HashSet};
use crate::store::{
    index_key, owner_key, record_key, KvStore, StoreError, ACTIVE_KEY, GEN_KEY, PREPARED_BUCKETS,
    STATIC_KEY,
};
use crate::subscription::{lookup_filters, StaticSubscription, Subscription};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    NotFound,
    /// The consumer already has the maximum number of subscriptions.
    LimitReached(usize),
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
        self.create_if_absent(ACTIVE_KEY);
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
        if delta == 0 {
            return;
        }
        for _ in 0..MAX_CAS_RETRIES {
            let (value, cas) = self.store.get(ACTIVE_KEY).unwrap_or_default();
            let count: i64 = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let next = count.saturating_add(delta).max(0).to_string();
            if self.store.set(ACTIVE_KEY, next.as_bytes(), Some(cas)) != Err(StoreError::Conflict) {
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

fn add_line(lines: &mut Vec<String>, name: &str, id: &str) {
    let line = format!("{name} {id}");
    if !lines.contains(&line) {
        lines.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, LIST_BUCKETS, LOG_BUCKETS, RECORD_BUCKETS};
    use crate::subscription::{SigningSecret, Status};

    fn sub(id: &str, consumer: &str, events: &[&str]) -> Subscription {
        Subscription {
            id: id.into(),
            consumer: consumer.into(),
            url: "https://example.com/hook".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            description: String::new(),
            status: Status::Active,
            disabled_reason: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            secrets: vec![SigningSecret {
                secret: "whsec_AAAA".into(),
                expires_at_ms: None,
            }],
            is_static: false,
            privileged: false,
            version: 1,
        }
    }

    fn registry() -> Registry<MemoryStore> {
        let r = Registry::new(MemoryStore::default());
        r.prepare();
        r
    }

    #[test]
    fn apply_synced_adds_replaces_keeps_the_version_and_skips_no_ops() {
        let r = registry();
        let mut s = sub("s1", "acme", &["a.*"]);
        s.version = 7;
        r.apply_synced(&s).unwrap();
        assert_eq!(r.get("s1").unwrap().0, s);
        assert_eq!(r.candidates("a.b"), vec!["s1".to_string()]);
        // No per-consumer limit here: etcd enforced it.
        for n in 0..3 {
            r.apply_synced(&sub(&format!("x{n}"), "acme", &["z"]))
                .unwrap();
        }
        assert_eq!(r.ids_for_consumer("acme").len(), 4);
        let generation = r.generation();
        r.apply_synced(&s).unwrap();
        assert_eq!(
            r.generation(),
            generation,
            "an unchanged record is not written"
        );
        s.events = vec!["b.c".into()];
        s.status = Status::Disabled;
        s.version = 8;
        r.apply_synced(&s).unwrap();
        assert_eq!(r.get("s1").unwrap().0.version, 8);
        assert!(r.candidates("a.b").is_empty());
        assert_eq!(r.candidates("b.c"), vec!["s1".to_string()]);
        assert_eq!(r.active_count(), 3);
    }

    /// A first attempt that succeeded.
    fn delivered(webhook_id: &str, event_type: &str) -> crate::attempts::Attempt {
        crate::attempts::Attempt {
            webhook_id: webhook_id.into(),
            event_type: event_type.into(),
            attempt: 1,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
            response_status: Some(200),
            error: None,
            duration_ms: 3,
            next_retry_at: None,
            state: crate::attempts::State::Succeeded,
        }
    }

    /// How many times each of `keys` was written: MemoryStore's version grows by one per write.
    fn writes<'a>(store: &MemoryStore, keys: impl IntoIterator<Item = &'a String>) -> Vec<u32> {
        let version = |key: &String| store.get(key).map_or(0, |(_, version)| version);
        keys.into_iter().map(version).collect()
    }

    /// A registry over `store`, its buckets made.
    fn prepared(store: &MemoryStore) -> Registry<&MemoryStore> {
        let r = Registry::new(store);
        r.prepare();
        r
    }

    /// `n` records of one event type spread over `consumers`, as etcd holds them (version 3).
    fn synced(n: usize, consumers: usize) -> Vec<Subscription> {
        (0..n)
            .map(|i| {
                let mut s = sub(&format!("s{i}"), &format!("c{}", i % consumers), &["o.new"]);
                s.version = 3;
                s
            })
            .collect()
    }

    #[test]
    fn a_synced_batch_writes_each_list_bucket_once() {
        let store = MemoryStore::default();
        let r = prepared(&store);
        let subs = synced(500, 5);
        let lists: HashSet<String> = subs
            .iter()
            .map(|s| owner_key(&s.consumer))
            .chain([index_key("o.new")])
            .collect();
        let before = writes(&store, &lists);
        r.apply_synced_batch(subs.clone());
        let once: Vec<u32> = before.iter().map(|v| v + 1).collect();
        assert_eq!(writes(&store, &lists), once, "one write per list bucket");
        let ids: Vec<&str> = subs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            r.candidates("o.new"),
            ids,
            "all listed, in the answer's order"
        );
        for s in &subs {
            assert_eq!(
                r.get(&s.id).unwrap().0,
                *s,
                "stored as etcd has it, version kept"
            );
        }
        assert_eq!(r.ids_for_consumer("c0").len(), 100);
        assert_eq!(r.active_count(), 500);
    }

    #[test]
    fn a_synced_batch_ends_as_applying_each_record_does() {
        let (one, batch) = (registry(), registry());
        let mut first = synced(6, 2);
        first[5].status = Status::Disabled;
        for s in &first {
            one.apply_synced(s).unwrap();
        }
        batch.apply_synced_batch(first.clone());
        // Unchanged, changed (filters, status, version moved by etcd) and new records.
        let mut second = first.clone();
        second[1].events = vec!["o.old".into(), "x.*".into()];
        second[1].version = 4;
        second[2].status = Status::Disabled;
        second[5].status = Status::Active;
        second.push(sub("s9", "c9", &["x.y"]));
        for s in &second {
            one.apply_synced(s).unwrap();
        }
        batch.apply_synced_batch(second.clone());
        for r in [&one, &batch] {
            for s in &second {
                assert_eq!(r.get(&s.id).unwrap().0, *s);
            }
            let mut found = r.candidates("o.new");
            found.sort();
            assert_eq!(found, ["s0", "s2", "s3", "s4", "s5"]);
            assert_eq!(
                r.candidates("x.y"),
                ["s9", "s1"],
                "x.y's index first, then x.*'s"
            );
            assert_eq!(r.active_count(), 6);
            assert_eq!(r.ids_for_consumer("c1").len(), 3);
        }
    }

    #[test]
    fn an_unchanged_synced_batch_writes_nothing() {
        let store = MemoryStore::default();
        let r = prepared(&store);
        r.apply_synced_batch(synced(50, 3));
        let before = store.snapshot();
        r.apply_synced_batch(synced(50, 3));
        r.apply_synced_batch(Vec::new());
        r.delete_batch(&[]);
        assert!(store.snapshot() == before, "no key written");
    }

    #[test]
    fn a_delete_batch_takes_every_line_out_with_one_write_per_bucket() {
        let store = MemoryStore::default();
        let r = prepared(&store);
        let subs = synced(300, 3);
        r.apply_synced_batch(subs.clone());
        let log = delivered("msg_1", "o.new");
        crate::attempts::record(&store, "s0", vec![log]).unwrap();
        let lists = [
            owner_key("c0"),
            owner_key("c1"),
            owner_key("c2"),
            index_key("o.new"),
        ];
        let before = writes(&store, &lists);
        // Every third (all of c0's), and an id etcd listed that this cache never had.
        let mut gone: Vec<String> = subs.iter().step_by(3).map(|s| s.id.clone()).collect();
        gone.push("never_cached".into());
        r.delete_batch(&gone);
        let after = writes(&store, &lists);
        let expected: Vec<u32> = before
            .iter()
            .zip([1, 0, 0, 1])
            .map(|(v, n)| v + n)
            .collect();
        assert_eq!(
            after, expected,
            "one write per bucket that listed a deleted id"
        );
        assert!(gone.iter().all(|id| r.get(id).is_none()));
        assert!(
            crate::attempts::read(&store, "s0").is_empty(),
            "log cleared"
        );
        assert_eq!(r.candidates("o.new").len(), 200);
        assert!(r.candidates("o.new").iter().all(|id| !gone.contains(id)));
        assert!(r.ids_for_consumer("c0").is_empty());
        assert_eq!(r.ids_for_consumer("c1").len(), 100);
        assert_eq!(r.active_count(), 200);
    }

    /// Applies `batch` through a store where, right after the batch's first read of `key`,
    /// another worker sharing the store runs `worker` (between this writer's read and its
    /// compare-and-swap); the registry of the shared store afterwards.
    fn batch_raced_by(
        key: String,
        worker: impl FnOnce(&Registry<std::rc::Rc<MemoryStore>>) + 'static,
        batch: Vec<Subscription>,
    ) -> Registry<std::rc::Rc<MemoryStore>> {
        let shared = std::rc::Rc::new(MemoryStore::default());
        let other = Registry::new(std::rc::Rc::clone(&shared));
        other.prepare();
        let store = AfterRead {
            inner: std::rc::Rc::clone(&shared),
            key,
            hook: std::cell::RefCell::new(Some(Box::new(move || worker(&other)))),
        };
        Registry::new(&store).apply_synced_batch(batch);
        assert!(store.hook.borrow().is_none(), "the race happened");
        Registry::new(shared)
    }

    #[test]
    fn a_synced_batch_racing_a_worker_loses_neither_listing() {
        // A worker's API create lands between the batch's read of the index bucket and its
        // compare-and-swap.
        let create = |w: &Registry<_>| w.insert(&sub("api", "c0", &["o.new"]), None).unwrap();
        let r = batch_raced_by(index_key("o.new"), create, synced(20, 2));
        let mut found = r.candidates("o.new");
        found.sort();
        let mut wanted: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        wanted.push("api".into());
        wanted.sort();
        assert_eq!(found, wanted);
        assert_eq!(r.ids_for_consumer("c0").len(), 11);
        assert_eq!(r.active_count(), 21);
    }

    #[test]
    fn a_record_synced_by_a_worker_and_the_dispatcher_at_once_is_counted_once() {
        // The worker applies its API write of s4 (as etcd confirmed it) right after the
        // dispatcher's batch found no record for s4.
        let subs = synced(10, 2);
        let raced = subs[4].clone();
        let apply = move |w: &Registry<_>| w.apply_synced(&raced).unwrap();
        let r = batch_raced_by(record_key("s4"), apply, subs.clone());
        assert_eq!(r.active_count(), 10, "s4 counted once");
        assert_eq!(r.candidates("o.new").len(), 10, "s4 listed once");
        assert_eq!(r.ids_for_consumer("c0").len(), 5);
        assert_eq!(r.get("s4").unwrap().0, subs[4]);
    }

    /// A store shared by several registries (as workers share Envoy's shared data) that runs
    /// `after_set` once, right after the first write of `key`: another worker acting between
    /// two steps of this one.
    struct Interleaved {
        inner: std::rc::Rc<MemoryStore>,
        key: String,
        after_set: std::cell::RefCell<Option<Box<dyn FnOnce()>>>,
    }

    impl KvStore for Interleaved {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)?;
            if key == self.key {
                let hook = self.after_set.borrow_mut().take();
                if let Some(hook) = hook {
                    hook();
                }
            }
            Ok(())
        }
    }

    #[test]
    fn racing_updates_leave_the_index_following_the_newest_record() {
        let shared = std::rc::Rc::new(MemoryStore::default());
        let other = std::rc::Rc::clone(&shared);
        let second = move || {
            // Worker 2 changes the subscription back while worker 1 is between its record
            // write and its index update.
            let w2 = Registry::new(Interleaved {
                inner: other,
                key: String::new(),
                after_set: std::cell::RefCell::new(None),
            });
            w2.update("s1", |s| {
                s.events = vec!["a".into()];
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        };
        let store = Interleaved {
            inner: shared,
            key: record_key("s1"),
            after_set: std::cell::RefCell::new(None),
        };
        let w1 = Registry::new(&store);
        w1.prepare();
        w1.insert(&sub("s1", "c", &["a"]), None).unwrap();
        *store.after_set.borrow_mut() = Some(Box::new(second));
        w1.update("s1", |s| {
            s.events = vec!["b".into()];
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(w1.get("s1").unwrap().0.events, ["a"]);
        assert_eq!(w1.candidates("a"), ["s1"], "the stored record lists a");
        assert!(w1.candidates("b").is_empty());
    }

    #[test]
    fn candidates_come_only_from_matching_indexes() {
        let r = registry();
        r.insert(&sub("s1", "c", &["order.created"]), None).unwrap();
        r.insert(&sub("s2", "c", &["order.*", "user.*"]), None)
            .unwrap();
        r.insert(&sub("s3", "c", &["*"]), None).unwrap();
        r.insert(&sub("s4", "c", &["user.deleted"]), None).unwrap();
        assert_eq!(r.candidates("order.created"), ["s1", "s2", "s3"]);
        assert_eq!(r.candidates("user.deleted"), ["s4", "s2", "s3"]);
        assert_eq!(r.candidates("invoice.paid"), ["s3"]);
    }

    #[test]
    fn update_reindexes_and_bumps_version_and_generation() {
        let r = registry();
        r.insert(&sub("s1", "c", &["order.created"]), None).unwrap();
        let gen = r.generation();
        let updated = r
            .update("s1", |s| {
                s.events = vec!["user.*".into()];
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.version, 2);
        assert!(r.candidates("order.created").is_empty());
        assert_eq!(r.candidates("user.created"), ["s1"]);
        assert_ne!(r.generation(), gen);
    }

    #[test]
    fn refused_update_writes_nothing() {
        let r = registry();
        r.insert(&sub("s1", "c", &["a"]), None).unwrap();
        let out = r.update("s1", |s| {
            s.url = "changed".into();
            Err("no")
        });
        assert_eq!(out, Ok(Err("no")));
        assert_eq!(r.get("s1").unwrap().0.url, "https://example.com/hook");
    }

    #[test]
    fn delete_removes_record_and_index_entries() {
        let r = registry();
        r.insert(&sub("s1", "c", &["a"]), None).unwrap();
        r.delete("s1").unwrap();
        assert!(r.get("s1").is_none());
        assert!(r.candidates("a").is_empty());
        assert!(r.list_for_consumer("c").is_empty());
        assert_eq!(r.delete("s1"), Err(RegistryError::NotFound));
    }

    #[test]
    fn consumer_limit_is_enforced() {
        let r = registry();
        r.insert(&sub("s1", "c", &["a"]), Some(2)).unwrap();
        r.insert(&sub("s2", "c", &["a"]), Some(2)).unwrap();
        assert_eq!(
            r.insert(&sub("s3", "c", &["a"]), Some(2)),
            Err(RegistryError::LimitReached(2))
        );
        assert!(r.get("s3").is_none());
        r.insert(&sub("s4", "other", &["a"]), Some(2)).unwrap();
        assert_eq!(r.list_for_consumer("c").len(), 2);
        assert_eq!(r.active_count(), 3);
    }

    fn static_sub(id: &str, url: &str) -> StaticSubscription {
        StaticSubscription {
            id: id.into(),
            consumer: "ops".into(),
            url: url.into(),
            events: vec!["*".into()],
            secret: "whsec_AAAA".into(),
            description: String::new(),
            privileged: false,
        }
    }

    #[test]
    fn static_sync_adds_keeps_rewrites_and_removes() {
        let r = registry();
        r.sync_static(
            &[
                static_sub("a", "https://x/1"),
                static_sub("b", "https://x/2"),
            ],
            5,
        );
        assert_eq!(r.candidates("any.thing"), ["a", "b"]);
        assert_eq!(r.store.get(STATIC_KEY).unwrap().0, b"a\nb");
        r.update("a", |s| {
            s.status = Status::Disabled;
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        // Unchanged configuration keeps the disabled state; a changed url re-activates.
        r.sync_static(
            &[
                static_sub("a", "https://x/1"),
                static_sub("b", "https://x/2"),
            ],
            6,
        );
        assert_eq!(r.get("a").unwrap().0.status, Status::Disabled);
        r.sync_static(&[static_sub("a", "https://x/new")], 7);
        let (a, _) = r.get("a").unwrap();
        assert_eq!(
            (a.status, a.url.as_str(), a.created_at_ms),
            (Status::Active, "https://x/new", 5)
        );
        assert!(r.get("b").is_none());
        assert_eq!(r.candidates("any.thing"), ["a"]);
        assert_eq!(r.store.get(STATIC_KEY).unwrap().0, b"a");
        assert_eq!(r.active_count(), 1);
    }

    #[test]
    fn static_sync_follows_privileged() {
        let r = registry();
        r.sync_static(&[static_sub("a", "https://x/1")], 5);
        assert!(!r.get("a").unwrap().0.privileged);
        let privileged = StaticSubscription {
            privileged: true,
            ..static_sub("a", "https://x/1")
        };
        r.sync_static(std::slice::from_ref(&privileged), 6);
        assert!(r.get("a").unwrap().0.privileged);
        // Records from before the field read as not privileged.
        let (bytes, _) = r.get_raw("a").unwrap();
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace(",\"privileged\":true", "");
        let old: Subscription = serde_json::from_str(&text).unwrap();
        assert!(!old.privileged);
    }

    /// A store whose writes to index buckets fail, to check that nothing is half-written.
    struct FailingIndex(MemoryStore);

    impl KvStore for FailingIndex {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if key.starts_with("pwh:idx:") && !value.is_empty() {
                return Err(StoreError::Failed("disk on fire".into()));
            }
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn a_failed_insert_leaves_nothing_behind() {
        let r = Registry::new(FailingIndex(MemoryStore::default()));
        r.prepare();
        let out = r.insert(&sub("s1", "c", &["a"]), None);
        assert!(matches!(out, Err(RegistryError::Unavailable(_))));
        assert!(r.get("s1").is_none());
        assert!(r.ids_for_consumer("c").is_empty());
        assert_eq!(r.active_count(), 0);
    }

    /// Every key and the bytes of all values: what shared data holds.
    fn footprint(store: &MemoryStore) -> (usize, usize) {
        let all = store.snapshot();
        (all.len(), all.values().map(|(v, _)| v.len()).sum())
    }

    #[test]
    fn create_delete_churn_leaves_the_keys_as_they_were() {
        let store = MemoryStore::default();
        let r = Registry::new(&store);
        r.prepare();
        r.insert(&sub("keeper", "c", &["a.*"]), None).unwrap();
        let attempt = |n: u32| delivered(&format!("msg_{n}"), "a.b");
        crate::attempts::record(&store, "keeper", vec![attempt(0)]).unwrap();
        let before = footprint(&store);
        let buckets = 2 * LIST_BUCKETS + RECORD_BUCKETS + LOG_BUCKETS;
        assert_eq!(before.0, buckets as usize + 2);
        for n in 0..10_000 {
            let id = format!("sub_{n:024}");
            let consumer = format!("consumer{}", n % 7);
            r.insert(&sub(&id, &consumer, &["a.b", "*"]), Some(3))
                .unwrap();
            crate::attempts::record(&store, &id, vec![attempt(n)]).unwrap();
            assert_eq!(crate::attempts::read(&store, &id).len(), 1);
            r.delete(&id).unwrap();
            assert!(crate::attempts::read(&store, &id).is_empty());
        }
        assert_eq!(footprint(&store), before, "same keys, same bytes");
        assert_eq!(r.candidates("a.b"), ["keeper"]);
        assert_eq!(crate::attempts::read(&store, "keeper").len(), 1);
        assert_eq!(r.active_count(), 1);
    }

    #[test]
    fn a_records_version_moves_exactly_when_it_is_written() {
        let r = registry();
        // Two records that share a bucket.
        let first = "s0".to_string();
        let second = (1..)
            .map(|n| format!("s{n}"))
            .find(|id| record_key(id) == record_key(&first))
            .unwrap();
        r.insert(&sub(&first, "c", &["a"]), None).unwrap();
        r.insert(&sub(&second, "c", &["a"]), None).unwrap();
        let (bytes, version) = r.get_raw(&first).unwrap();
        assert_eq!(
            bytes,
            serde_json::to_vec(&sub(&first, "c", &["a"])).unwrap()
        );
        r.update(&second, |s| {
            s.url = "https://example.com/other".into();
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        r.delete(&second).unwrap();
        assert_eq!(r.get_raw(&first).unwrap().1, version, "neighbours' writes");
        r.update(&first, |_| Ok::<(), ()>(())).unwrap().unwrap();
        let updated = r.get_raw(&first).unwrap().1;
        assert_ne!(updated, version);
        // Deleted and made again with the same id and the same version field (a static
        // subscription removed from the configuration and added back): a new version.
        r.delete(&first).unwrap();
        r.insert(&sub(&first, "c", &["a"]), None).unwrap();
        assert!(![version, updated].contains(&r.get_raw(&first).unwrap().1));
        assert_eq!(r.get(&first).unwrap().0.version, 1);
    }

    /// A shared store that runs `hook` once, right after the first read of `key`: another
    /// worker writing between this one's read of a bucket and its compare-and-swap.
    struct AfterRead {
        inner: std::rc::Rc<MemoryStore>,
        key: String,
        hook: std::cell::RefCell<Option<Box<dyn FnOnce()>>>,
    }

    impl KvStore for AfterRead {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            let value = self.inner.get(key);
            if key == self.key {
                let hook = self.hook.borrow_mut().take();
                if let Some(hook) = hook {
                    hook();
                }
            }
            value
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    /// An id other than `id` whose record shares `id`'s bucket.
    fn neighbour_of(id: &str, prefix: &str) -> String {
        (1..)
            .map(|n| format!("{prefix}{n}"))
            .find(|other| record_key(other) == record_key(id))
            .unwrap()
    }

    #[test]
    fn racing_writers_in_one_record_bucket_lose_nothing() {
        let shared = std::rc::Rc::new(MemoryStore::default());
        let plain = Registry::new(std::rc::Rc::clone(&shared));
        plain.prepare();
        plain.insert(&sub("s0", "c", &["a"]), None).unwrap();
        let racing = |step: &dyn Fn(&Registry<&AfterRead>), neighbour: String| {
            let other = std::rc::Rc::clone(&shared);
            let n = neighbour.clone();
            let store = AfterRead {
                inner: std::rc::Rc::clone(&shared),
                key: record_key("s0"),
                hook: std::cell::RefCell::new(Some(Box::new(move || {
                    Registry::new(other)
                        .insert(&sub(&n, "d", &["a"]), None)
                        .unwrap();
                }))),
            };
            step(&Registry::new(&store));
            assert!(store.hook.borrow().is_none(), "the race happened");
            assert_eq!(plain.get(&neighbour).unwrap().0.consumer, "d");
        };
        racing(
            &|w1| {
                w1.update("s0", |s| {
                    s.url = "https://example.com/new".into();
                    Ok::<(), ()>(())
                })
                .unwrap()
                .unwrap();
            },
            neighbour_of("s0", "n"),
        );
        assert_eq!(plain.get("s0").unwrap().0.url, "https://example.com/new");
        racing(
            &|w1| drop(w1.delete("s0").unwrap()),
            neighbour_of("s0", "m"),
        );
        assert!(plain.get("s0").is_none());
        let mut found = plain.candidates("a");
        found.sort();
        assert_eq!(found, [neighbour_of("s0", "m"), neighbour_of("s0", "n")]);
    }

    #[test]
    fn a_delete_racing_a_log_write_leaves_no_log() {
        let shared = std::rc::Rc::new(MemoryStore::default());
        let api = Registry::new(std::rc::Rc::clone(&shared));
        api.prepare();
        api.insert(&sub("s0", "c", &["a"]), None).unwrap();
        // The dispatcher has read the log bucket and found the record; the API deletes the
        // subscription before the dispatcher writes the log.
        let dispatcher = AfterRead {
            inner: std::rc::Rc::clone(&shared),
            key: record_key("s0"),
            hook: std::cell::RefCell::new(Some(Box::new(move || {
                api.delete("s0").unwrap();
            }))),
        };
        let entry = delivered("msg_1", "a");
        crate::attempts::record(&dispatcher, "s0", vec![entry]).unwrap();
        assert!(dispatcher.hook.borrow().is_none(), "the race happened");
        assert!(crate::attempts::read(&*shared, "s0").is_empty());
        assert_eq!(shared.get(&crate::store::log_key("s0")).unwrap().0, b"");
    }
}
