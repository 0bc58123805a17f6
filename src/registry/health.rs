//! Delivery health: a summary of a delivery log ([`summarize`]), and, in fleet mode, the other
//! replicas' summaries of the same subscription, kept in shared data by the dispatcher
//! (`crate::fleet::health` reads them from etcd) and merged with this replica's own by the API
//! ([`merge`]), so that every replica answers the fleet's health without asking etcd.
//!
//! Kept in [`HEALTH_BUCKETS`] hash buckets `pwh:health:<n>` (created by
//! [`crate::registry::Registry::prepare`]), one line `<subscription id> {node: summary}` per
//! subscription with other replicas' attempts (at most [`MAX_NODES`]); a deleted subscription's
//! line goes with it.

use crate::registry::attempts::{Attempt, State};
use crate::registry::buckets::{self, Bucket, Change};
use crate::registry::store::{health_key, KvStore, StoreError};
use crate::support::record::{self, Fields};
use serde_json::Value;

/// Replicas whose summaries are kept per subscription (as many as the delivery log reads).
pub const MAX_NODES: usize = 16;
/// Bounded retries on compare-and-swap conflicts.
const MAX_CAS_RETRIES: usize = 100;

/// What one replica's delivery log says of a subscription's health (the pending messages
/// aside: those are each replica's own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    /// The first of the failures since the last success, while there are some.
    pub failing_since: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
}

pub fn is_failure(state: State) -> bool {
    matches!(
        state,
        State::Retrying | State::Exhausted | State::Failed | State::Expired
    )
}

/// The summary of a delivery log, newest first.
pub fn summarize(log: &[Attempt]) -> Summary {
    let mut summary = Summary::default();
    let mut run_open = true;
    for attempt in log {
        let success = attempt.state == State::Succeeded;
        if success && summary.last_success_at.is_none() {
            summary.last_success_at = Some(attempt.timestamp.clone());
        }
        let failure = is_failure(attempt.state);
        if failure && summary.last_failure_at.is_none() {
            summary.last_failure_at = Some(attempt.timestamp.clone());
        }
        run_open &= !success;
        if run_open && failure {
            summary.consecutive_failures += 1;
            summary.failing_since = Some(attempt.timestamp.clone());
        }
    }
    summary
}

/// Several replicas' summaries as the fleet's: the newest success and failure of any; the
/// failures since the fleet's newest success (S), counted per replica: all of a replica's run
/// when it began after S (exact), else at least its newest one (a run that began before
/// another replica's newer success: its failures after S are not known one by one), and
/// `failing_since` the earliest of those. Timestamps are RFC 3339 UTC with milliseconds, so
/// their text orders them.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Summary> + Clone) -> Summary {
    let newest = |pick: fn(&Summary) -> Option<&String>| {
        parts.clone().into_iter().filter_map(pick).max().cloned()
    };
    let mut fleet = Summary {
        last_success_at: newest(|s| s.last_success_at.as_ref()),
        last_failure_at: newest(|s| s.last_failure_at.as_ref()),
        ..Summary::default()
    };
    let success = fleet.last_success_at.clone().unwrap_or_default();
    for part in parts {
        let (Some(first), Some(last)) = (&part.failing_since, &part.last_failure_at) else {
            continue;
        };
        if part.consecutive_failures == 0 || *last <= success {
            continue;
        }
        let (count, since) = match *first > success {
            true => (part.consecutive_failures, first),
            false => (1, last),
        };
        fleet.consecutive_failures += count;
        if fleet.failing_since.as_ref().is_none_or(|f| since < f) {
            fleet.failing_since = Some(since.clone());
        }
    }
    fleet
}

impl Summary {
    /// The summary as etcd and shared data keep it (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// Built by hand: a derived `Serialize` costs the .wasm more.
    fn to_value(&self) -> Value {
        let text = |t: &Option<String>| t.clone().map_or(Value::Null, Value::String);
        let mut o = Fields::new();
        o.insert("last_success_at".into(), text(&self.last_success_at));
        o.insert("last_failure_at".into(), text(&self.last_failure_at));
        o.insert("failing_since".into(), text(&self.failing_since));
        o.insert(
            "consecutive_failures".into(),
            Value::from(self.consecutive_failures),
        );
        Value::Object(o)
    }

    /// A summary's JSON, or None when it is not one.
    pub fn parse(json: &[u8]) -> Option<Summary> {
        Summary::from_fields(&record::parse_object(json)?)
    }

    fn from_fields(o: &Fields) -> Option<Summary> {
        let text = |key| record::optional(o, key, record::as_string);
        Some(Summary {
            last_success_at: text("last_success_at")?,
            last_failure_at: text("last_failure_at")?,
            failing_since: text("failing_since")?,
            consecutive_failures: record::uint(o, "consecutive_failures")?,
        })
    }

    fn newest(&self) -> Option<&String> {
        self.last_success_at
            .as_ref()
            .max(self.last_failure_at.as_ref())
    }
}

/// The other replicas' summaries of `subscription_id` kept in shared data, those with an
/// attempt at or after `oldest` (RFC 3339; older ones are out of every delivery log too).
pub fn others<S: KvStore>(store: &S, subscription_id: &str, oldest: &str) -> Vec<Summary> {
    let bucket = Bucket::read(store, &health_key(subscription_id));
    let Some(nodes) = bucket.get(subscription_id).and_then(record::parse_object) else {
        return Vec::new();
    };
    nodes
        .values()
        .filter_map(|v| Summary::from_fields(v.as_object()?))
        .filter(|s| s.newest().is_some_and(|t| t.as_str() >= oldest))
        .collect()
}

/// Keeps `node`'s summary of `subscription_id` (the dispatcher, from etcd). A node beyond
/// [`MAX_NODES`] replaces the one whose newest attempt is the oldest. `exists` (the registry's
/// check) is asked between the bucket's read and its write, as for
/// [`crate::registry::attempts::record`], so no line outlives its subscription.
pub fn keep<S: KvStore>(
    store: &S,
    subscription_id: &str,
    node: &str,
    summary: &Summary,
    exists: impl Fn() -> bool,
) -> Result<(), StoreError> {
    let mut edit = |current: Option<&[u8]>, _| {
        if !exists() {
            return Ok(Change::Remove);
        }
        let mut nodes = current.and_then(record::parse_object).unwrap_or_default();
        nodes.remove(node);
        while nodes.len() >= MAX_NODES {
            let oldest = nodes
                .iter()
                .min_by_key(|(_, v)| {
                    let s = v.as_object().and_then(Summary::from_fields);
                    s.and_then(|s| s.newest().cloned())
                })
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            nodes.remove(&oldest);
        }
        nodes.insert(node.to_string(), summary.to_value());
        serde_json::to_vec(&nodes)
            .map(Change::Put)
            .map_err(|e| StoreError::Failed(e.to_string()))
    };
    let key = health_key(subscription_id);
    buckets::edit(store, &key, subscription_id, MAX_CAS_RETRIES, &mut edit)
}

/// Forgets a deleted subscription's summaries.
pub fn clear<S: KvStore>(store: &S, subscription_id: &str) {
    let key = health_key(subscription_id);
    let mut remove = |_: Option<&[u8]>, _| Ok(Change::Remove);
    let _ = buckets::edit(store, &key, subscription_id, MAX_CAS_RETRIES, &mut remove);
}

#[cfg(test)]
mod tests;
