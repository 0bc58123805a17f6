//! The key-value store every worker and the dispatcher share (proxy-wasm shared data in Envoy,
//! [`MemoryStore`] in tests; in fleet mode it caches etcd's registry, see `crate::fleet`), and
//! the whole map of the keys kept in it.
//!
//! Key map (all keys start with `pwh:`). Shared data has no delete, so the set of keys is fixed
//! at start-up and never grows: a key per subscription would leave one behind for every
//! subscription ever deleted. The bucketed kinds are created by
//! [`crate::registry::Registry::prepare`] ([`PREPARED_BUCKETS`]).
//! - `pwh:sub:<n>` (n < [`RECORD_BUCKETS`], by a hash of the id): the subscription records,
//!   lines `<id> <stamp> <record JSON>` ([`crate::registry`]).
//! - `pwh:log:<n>` (n < [`LOG_BUCKETS`], same hash): the attempt logs, one line per subscription
//!   ([`crate::registry::attempts`]).
//! - `pwh:idx:<n>` (n < [`LIST_BUCKETS`], by a hash of the filter): lines `<filter> <id>`, the
//!   index fan-out reads.
//! - `pwh:own:<n>` (n < [`LIST_BUCKETS`], by a hash of the consumer): lines `<consumer> <id>`.
//! - `pwh:gen` ([`GEN_KEY`]): its version moves after every registry change.
//! - `pwh:active` ([`ACTIVE_KEY`]): how many subscriptions are active, in decimal.
//! - `pwh:count` ([`COUNT_KEY`]): how many API subscriptions the registry holds (static ones
//!   aside), in decimal; `api.max_subscriptions` is checked against it.
//! - `pwh:static` ([`STATIC_KEY`]): the ids of the static subscriptions last synced.
//! - `pwh:heartbeat` ([`HEARTBEAT_KEY`]): the dispatcher's clock ([`crate::registry::watchdog`]).
//! - `pwh:registry-read` ([`REGISTRY_READ_KEY`]): fleet mode, `1` once the dispatcher applied
//!   its first read of etcd's registry, `0` before ([`crate::registry::watchdog`]).
//! - `pwh:fleet:pass` ([`FLEET_PASS_KEY`]): the dispatcher's etcd token ([`crate::fleet::auth`]).
//! - `pwh:portal:revoked` ([`REVOKED_KEY`]) and `pwh:portal:key` ([`PORTAL_KEY_KEY`]): portal
//!   sessions' revocations and the session key the plugin made ([`crate::registry::portal`]).
//! - `pwh:rate:<n>` ([`RATE_PREFIX`], a fixed set of keys by a hash of the consumer): the API's
//!   per-consumer token buckets ([`crate::registry::ratelimit`]).

use crate::support::hashing::bucket_key;

/// A versioned key-value store with compare-and-swap (proxy-wasm shared data semantics).
pub trait KvStore {
    /// The value and its version, or None when the key was never written. Every write moves a
    /// key's version to one it never had before (record stamps rely on it).
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if the key's version is still `cas` (or unconditionally when None).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since it was read.
    Conflict,
    /// The store refused the write for another reason.
    Failed(String),
}

/// A borrowed store is a store: the registry and the attempt log may share one.
impl<S: KvStore + ?Sized> KvStore for &S {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

/// The registry generation.
pub const GEN_KEY: &str = "pwh:gen";
/// How many subscriptions are active, kept by every writer (the `subscriptions_active` gauge).
pub const ACTIVE_KEY: &str = "pwh:active";
/// How many API subscriptions exist (static ones aside): a create reserves its place here
/// with compare-and-swap before it writes anything, so `api.max_subscriptions` holds however
/// many workers create at once.
pub const COUNT_KEY: &str = "pwh:count";
/// The ids of the static subscriptions last synced from the configuration.
pub const STATIC_KEY: &str = "pwh:static";
/// The shared-data key of the heartbeat: the dispatcher's clock in milliseconds, in decimal.
pub const HEARTBEAT_KEY: &str = "pwh:heartbeat";
/// Fleet mode: whether the first registry read from etcd is applied (`1`) or not yet (`0`).
pub const REGISTRY_READ_KEY: &str = "pwh:registry-read";
/// Fleet mode with `fleet.username`: the dispatcher's etcd token for the workers' calls.
pub const FLEET_PASS_KEY: &str = "pwh:fleet:pass";
/// Portal sessions' revocations, a JSON object `{consumer: unix ms}`.
pub const REVOKED_KEY: &str = "pwh:portal:revoked";
/// The session key the plugin made when none is configured.
pub const PORTAL_KEY_KEY: &str = "pwh:portal:key";
/// The rate limiter's keys are `<RATE_PREFIX>:<n>`.
pub const RATE_PREFIX: &str = "pwh:rate";

/// Buckets for the records: a fixed set of keys however many subscriptions come and go, with
/// ~2.4 records in a bucket at 10,000 (a read for fan-out copies ~1.5 KB instead of ~0.45).
pub const RECORD_BUCKETS: u32 = 4096;
const RECORD_PREFIX: &str = "pwh:sub";

/// Log buckets: a fixed set of keys however many subscriptions come and go. A log write
/// rewrites the whole bucket, and a full log is ~11 KB, so there are twice as many as record
/// buckets: at 10,000 subscriptions a bucket holds the log written plus ~1.2 others (each
/// neighbour's full log added 20–30% to a write, measured natively).
pub const LOG_BUCKETS: u32 = 8192;
const LOG_PREFIX: &str = "pwh:log";

/// Buckets per list kind (index, owners): enough that a bucket stays small with 10,000
/// subscriptions.
pub const LIST_BUCKETS: u32 = 256;
const INDEX_PREFIX: &str = "pwh:idx";
pub(crate) const OWNER_PREFIX: &str = "pwh:own";

/// Every bucketed kind made at start-up: prefix and bucket count.
pub const PREPARED_BUCKETS: [(&str, u32); 4] = [
    (INDEX_PREFIX, LIST_BUCKETS),
    (OWNER_PREFIX, LIST_BUCKETS),
    (RECORD_PREFIX, RECORD_BUCKETS),
    (LOG_PREFIX, LOG_BUCKETS),
];

/// The bucket holding the record of subscription `id`.
pub fn record_key(id: &str) -> String {
    bucket_key(RECORD_PREFIX, RECORD_BUCKETS, id)
}

/// The bucket holding the attempt log of subscription `id`.
pub fn log_key(id: &str) -> String {
    bucket_key(LOG_PREFIX, LOG_BUCKETS, id)
}

/// The index bucket listing the subscriptions of event filter `filter`.
pub fn index_key(filter: &str) -> String {
    bucket_key(INDEX_PREFIX, LIST_BUCKETS, filter)
}

/// The bucket listing the subscriptions of `consumer`.
pub fn owner_key(consumer: &str) -> String {
    bucket_key(OWNER_PREFIX, LIST_BUCKETS, consumer)
}

/// An in-memory [`KvStore`] with the same semantics as proxy-wasm shared data, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
}

#[cfg(test)]
impl KvStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        let current = map.get(key).map_or(0, |(_, c)| *c);
        if cas.is_some_and(|c| current != 0 && c != current) {
            return Err(StoreError::Conflict);
        }
        map.insert(key.to_string(), (value.to_vec(), current + 1));
        Ok(())
    }
}

/// A store shared by several registries, as workers share Envoy's shared data.
#[cfg(test)]
impl<S: KvStore + ?Sized> KvStore for std::rc::Rc<S> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

#[cfg(test)]
impl MemoryStore {
    /// Every key with its value and version, so a test can prove a call wrote nothing.
    pub(crate) fn snapshot(&self) -> std::collections::HashMap<String, (Vec<u8>, u32)> {
        self.map.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_follow_the_key_map() {
        assert!(record_key("s").starts_with("pwh:sub:"));
        assert!(log_key("s").starts_with("pwh:log:"));
        assert!(index_key("a.*").starts_with("pwh:idx:"));
        assert!(owner_key("c").starts_with("pwh:own:"));
        let n = |key: String| key.rsplit(':').next().unwrap().parse::<u32>().unwrap();
        assert!(n(record_key("s")) < RECORD_BUCKETS && n(log_key("s")) < LOG_BUCKETS);
        assert!(n(index_key("a.*")) < LIST_BUCKETS && n(owner_key("c")) < LIST_BUCKETS);
    }

    #[test]
    fn a_write_on_a_stale_version_conflicts() {
        let store = MemoryStore::default();
        store.set("k", b"1", None).unwrap();
        let (_, cas) = store.get("k").unwrap();
        store.set("k", b"2", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"3", Some(cas)), Err(StoreError::Conflict));
        assert_eq!(store.get("k").unwrap().0, b"2");
    }
}
