//! The attempt log: the latest delivery attempts per subscription, written by the dispatcher
//! (the only writer, on the main thread) and read by the subscription API on any worker.
//! Kept in the shared store under `pwh:log:<subscription id>`, newest first, bounded.

use crate::registry::{KvStore, StoreError};
use serde::{Deserialize, Serialize};

/// Attempts kept per subscription.
pub const MAX_ENTRIES: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Whether `POST /deliveries/{id}/retry` may send the message again.
    pub fn replayable(self) -> bool {
        matches!(self, State::Exhausted | State::Failed | State::Dropped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

fn key(subscription_id: &str) -> String {
    format!("pwh:log:{subscription_id}")
}

/// The logged attempts of a subscription, newest first.
pub fn read<S: KvStore>(store: &S, subscription_id: &str) -> Vec<Attempt> {
    store
        .get(&key(subscription_id))
        .and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Adds attempts (given oldest first) in front, dropping the oldest beyond [`MAX_ENTRIES`].
/// The dispatcher batches a tick's attempts per subscription into one call.
pub fn record<S: KvStore>(
    store: &S,
    subscription_id: &str,
    new: Vec<Attempt>,
) -> Result<(), StoreError> {
    let mut entries: Vec<Attempt> = new.into_iter().rev().take(MAX_ENTRIES).collect();
    if entries.len() < MAX_ENTRIES {
        entries.extend(read(store, subscription_id));
        entries.truncate(MAX_ENTRIES);
    }
    let bytes = serde_json::to_vec(&entries).map_err(|e| StoreError::Failed(e.to_string()))?;
    store.set(&key(subscription_id), &bytes, None)
}

/// Forgets a deleted subscription's log.
pub fn clear<S: KvStore>(store: &S, subscription_id: &str) {
    let _ = store.set(&key(subscription_id), b"", None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryStore;

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
        let store = MemoryStore::default();
        record(&store, "s", vec![attempt(1), attempt(2)]).unwrap();
        for n in 3..=(MAX_ENTRIES as u32 + 5) {
            record(&store, "s", vec![attempt(n)]).unwrap();
        }
        assert_eq!(read(&store, "s")[MAX_ENTRIES - 1].attempt, 6);
        let log = read(&store, "s");
        assert_eq!(log.len(), MAX_ENTRIES);
        assert_eq!(log[0].attempt, MAX_ENTRIES as u32 + 5);
        clear(&store, "s");
        assert!(read(&store, "s").is_empty());
    }
}
