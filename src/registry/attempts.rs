//! The attempt log: the latest delivery attempts per subscription, written by the dispatcher
//! (the only writer, on the main thread) and read by the subscription API on any worker.
//! Kept in the shared store in [`crate::registry::store::LOG_BUCKETS`] hash buckets `pwh:log:<n>` (created by
//! [`crate::registry::Registry::prepare`]), one line `<subscription id> <JSON array>` per
//! subscription, newest first, bounded: a deleted subscription's line goes with it, so the keys
//! stay the same however many subscriptions come and go.

use crate::registry::buckets::{self, Bucket, Change};
use crate::registry::store::{log_key, KvStore, StoreError};
use crate::support::record::{self, Fields};
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// Attempts kept per subscription.
pub const MAX_ENTRIES: usize = 50;

/// Logs are read by [`parse_log`]; `Deserialize` is derived for tests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The receiver took it (2xx).
    Succeeded,
    /// Failed; another attempt is scheduled (`next_retry_at`).
    Retrying,
    /// Failed and the schedule is used up; can be replayed.
    Exhausted,
    /// Failed and not retried (410, subscription disabled or deleted).
    Failed,
    /// Dropped from a full queue before it could be retried.
    Dropped,
    /// A failed message the dispatcher no longer keeps (`delivery.max_replay`): not replayable.
    Expired,
}

impl State {
    fn from_value(v: &Value) -> Option<State> {
        use State::*;
        let names = [
            "succeeded",
            "retrying",
            "exhausted",
            "failed",
            "dropped",
            "expired",
        ];
        record::variant(
            v,
            &names,
            &[Succeeded, Retrying, Exhausted, Failed, Dropped, Expired],
        )
    }

    /// Whether `POST /deliveries/{id}/retry` may send the message again.
    pub fn replayable(self) -> bool {
        matches!(self, State::Exhausted | State::Failed | State::Dropped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
pub struct Attempt {
    pub webhook_id: String,
    pub event_type: String,
    /// 1 for the first attempt of a message.
    pub attempt: u32,
    /// When the attempt started, RFC 3339.
    pub timestamp: String,
    /// The receiver's status, when it answered.
    #[serde(default)]
    pub response_status: Option<u16>,
    /// Why it failed without an answer (timeout, connection failed, ...).
    #[serde(default)]
    pub error: Option<String>,
    pub duration_ms: u64,
    #[serde(default)]
    pub next_retry_at: Option<String>,
    pub state: State,
}

impl Attempt {
    fn from_value(v: &Value) -> Option<Attempt> {
        Attempt::from_fields(v.as_object()?)
    }

    fn from_fields(o: &Fields) -> Option<Attempt> {
        Some(Attempt {
            webhook_id: record::string(o, "webhook_id")?,
            event_type: record::string(o, "event_type")?,
            attempt: record::uint(o, "attempt")?,
            timestamp: record::string(o, "timestamp")?,
            response_status: record::optional(o, "response_status", record::as_uint)?,
            error: record::optional(o, "error", record::as_string)?,
            duration_ms: record::uint(o, "duration_ms")?,
            next_retry_at: record::optional(o, "next_retry_at", record::as_string)?,
            state: State::from_value(o.get("state")?)?,
        })
    }
}

/// A stored log line's JSON array, or None when it is not one.
pub(crate) fn parse_log(json: &[u8]) -> Option<Vec<Attempt>> {
    let value: Value = serde_json::from_slice(json).ok()?;
    record::as_list(&value, Attempt::from_value)
}

/// Bounded retries on compare-and-swap conflicts (the API's deletes and the dispatcher's writes).
const MAX_CAS_RETRIES: usize = 100;

/// The logged attempts of a subscription, newest first.
pub fn read<S: KvStore>(store: &S, subscription_id: &str) -> Vec<Attempt> {
    let bucket = Bucket::read(store, &log_key(subscription_id));
    bucket
        .get(subscription_id)
        .and_then(parse_log)
        .unwrap_or_default()
}

/// Adds attempts (given oldest first) in front, dropping the oldest beyond [`MAX_ENTRIES`].
/// The dispatcher batches a tick's attempts per subscription into one call.
///
/// A subscription without a record gets no log: `exists` (the registry's check, passed in so
/// that this module does not depend on the registry) is asked after the log bucket is read and
/// before it is written, so a delete that lands in between (it removes the record, then the log
/// line) either clears this write or makes it fail its compare-and-swap and look again: no log
/// outlives its subscription. Callers go through [`crate::registry::Registry::record_attempts`].
pub fn record<S: KvStore>(
    store: &S,
    subscription_id: &str,
    new: Vec<Attempt>,
    exists: impl Fn() -> bool,
) -> Result<(), StoreError> {
    let newest: Vec<Attempt> = new.into_iter().rev().take(MAX_ENTRIES).collect();
    let mut log = |old: Option<&[u8]>, _| {
        if !exists() {
            return Ok(Change::Remove);
        }
        let old: Vec<Attempt> = match newest.len() < MAX_ENTRIES {
            true => old.and_then(parse_log),
            false => None,
        }
        .unwrap_or_default();
        let entries: Vec<&Attempt> = newest.iter().chain(&old).take(MAX_ENTRIES).collect();
        serde_json::to_vec(&entries)
            .map(Change::Put)
            .map_err(|e| StoreError::Failed(e.to_string()))
    };
    let key = log_key(subscription_id);
    buckets::edit(store, &key, subscription_id, MAX_CAS_RETRIES, &mut log)
}

/// Forgets a deleted subscription's log.
pub fn clear<S: KvStore>(store: &S, subscription_id: &str) {
    let key = log_key(subscription_id);
    let mut remove = |_: Option<&[u8]>, _| Ok(Change::Remove);
    let _ = buckets::edit(store, &key, subscription_id, MAX_CAS_RETRIES, &mut remove);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::MemoryStore;
    use crate::registry::Registry;

    /// A store whose registry holds one subscription `id`.
    fn store_with(id: &str) -> MemoryStore {
        let store = MemoryStore::default();
        let registry = Registry::new(&store);
        registry.prepare();
        let sub = serde_json::from_value(serde_json::json!({
            "id": id, "consumer": "c", "url": "https://example.com/hook", "events": ["*"],
            "status": "active", "created_at_ms": 1, "updated_at_ms": 1,
            "secrets": [{"secret": "whsec_AAAA"}]
        }))
        .unwrap();
        registry.insert(&sub, None).unwrap();
        store
    }

    fn attempt(n: u32) -> Attempt {
        Attempt {
            webhook_id: format!("msg_{n}"),
            event_type: "a.b".into(),
            attempt: n,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
            response_status: Some(500),
            error: None,
            duration_ms: 3,
            next_retry_at: None,
            state: State::Retrying,
        }
    }

    #[test]
    fn newest_first_and_bounded() {
        let store = &store_with("s");
        Registry::new(store)
            .record_attempts("s", vec![attempt(1), attempt(2)])
            .unwrap();
        for n in 3..=(MAX_ENTRIES as u32 + 5) {
            Registry::new(store)
                .record_attempts("s", vec![attempt(n)])
                .unwrap();
        }
        assert_eq!(read(store, "s")[MAX_ENTRIES - 1].attempt, 6);
        let log = read(store, "s");
        assert_eq!(log.len(), MAX_ENTRIES);
        assert_eq!(log[0].attempt, MAX_ENTRIES as u32 + 5);
        clear(store, "s");
        assert!(read(store, "s").is_empty());
    }

    #[test]
    fn no_log_without_a_subscription_and_none_after_delete() {
        let store = &store_with("s");
        Registry::new(store)
            .record_attempts("other", vec![attempt(1)])
            .unwrap();
        assert!(read(store, "other").is_empty());
        Registry::new(store)
            .record_attempts("s", vec![attempt(1)])
            .unwrap();
        assert_eq!(read(store, "s").len(), 1);
        Registry::new(store).delete("s").unwrap();
        assert!(read(store, "s").is_empty(), "delete takes the log");
        Registry::new(store)
            .record_attempts("s", vec![attempt(2)])
            .unwrap();
        assert!(read(store, "s").is_empty(), "a late write adds nothing");
    }
}
