//! The recover index: per subscription, when its messages that the dispatcher keeps for replay
//! were detected, and when those it no longer keeps (`delivery.max_replay`,
//! `max_replay_per_consumer`) were. The dispatcher (the only writer) rewrites a subscription's
//! entry at its tick when either changed; `POST .../recover` reads it on any worker to answer
//! `{"count", "not_kept"}` at once, while the dispatcher sends the messages themselves.
//!
//! Kept beside the attempt log, in the same bucket under the name `<id>/kept` (ids have no `/`),
//! so that deleting a subscription takes it with the log. Bounded: the kept times are at most
//! what the replay store holds for the subscription; the lost ones are exact for the newest
//! [`MAX_LOST`], older ones are one count with the newest detection time among them.
//!
//! Value: `<kept, comma-separated ms>|<lost, comma-separated ms>|<older count>|<older newest ms>`.

use crate::registry::buckets::{self, Bucket, Change};
use crate::registry::store::{log_key, KvStore, StoreError};

/// Lost messages whose detection time is kept exactly, per subscription.
pub const MAX_LOST: usize = 64;
/// Bounded retries on compare-and-swap conflicts.
const MAX_CAS_RETRIES: usize = 100;

/// One subscription's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptIndex {
    /// Detection times (ms) of the messages kept for replay.
    pub kept: Vec<u64>,
    /// Detection times of the newest messages no longer kept, oldest first.
    pub lost: Vec<u64>,
    /// Lost messages older than those in `lost`, and the newest detection time among them.
    pub older: (u64, u64),
}

impl KeptIndex {
    /// What a recover since `since_ms` finds: (kept, no longer kept). Lost messages past
    /// [`MAX_LOST`] count when the newest of them was detected since `since_ms`, so `not_kept`
    /// may count some of them detected a little earlier: it is exact for the newest
    /// [`MAX_LOST`] lost, an upper bound past them.
    pub fn count_since(&self, since_ms: u64) -> (u64, u64) {
        let after = |times: &[u64]| times.iter().filter(|t| **t >= since_ms).count() as u64;
        let older = match self.older {
            (n, newest) if newest >= since_ms => n,
            _ => 0,
        };
        (after(&self.kept), after(&self.lost) + older)
    }

    /// Adds newly lost detection times, folding the oldest past [`MAX_LOST`] into `older`.
    pub fn lose(&mut self, times: &[u64]) {
        self.lost.extend_from_slice(times);
        self.lost.sort_unstable();
        let excess = self.lost.len().saturating_sub(MAX_LOST);
        for t in self.lost.drain(..excess) {
            self.older = (self.older.0 + 1, self.older.1.max(t));
        }
    }

    fn encode(&self) -> Vec<u8> {
        let csv = |times: &[u64]| {
            let parts: Vec<String> = times.iter().map(u64::to_string).collect();
            parts.join(",")
        };
        let (n, newest) = self.older;
        format!("{}|{}|{n}|{newest}", csv(&self.kept), csv(&self.lost)).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<KeptIndex> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let mut times = || -> Option<Vec<u64>> {
            let part = parts.next()?;
            part.split(',')
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().ok())
                .collect()
        };
        let kept = times()?;
        let lost = times()?;
        let older = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        Some(KeptIndex { kept, lost, older })
    }
}

fn name(subscription_id: &str) -> String {
    format!("{subscription_id}/kept")
}

/// The subscription's entry (empty when it has none).
pub fn read<S: KvStore + ?Sized>(store: &S, subscription_id: &str) -> KeptIndex {
    let bucket = Bucket::read(store, &log_key(subscription_id));
    bucket
        .get(&name(subscription_id))
        .and_then(KeptIndex::decode)
        .unwrap_or_default()
}

/// Sets the kept times and adds `newly_lost`, while the subscription exists (`exists`, asked
/// between the read and the compare-and-swap, as for [`crate::registry::attempts::record`]).
pub fn record(
    store: &dyn KvStore,
    subscription_id: &str,
    kept: Vec<u64>,
    newly_lost: &[u64],
    exists: impl Fn() -> bool,
) -> Result<(), StoreError> {
    let mut edit = |old: Option<&[u8]>, _| {
        if !exists() {
            return Ok(Change::Remove);
        }
        let mut index = old.and_then(KeptIndex::decode).unwrap_or_default();
        index.kept.clone_from(&kept);
        index.lose(newly_lost);
        Ok(Change::Put(index.encode()))
    };
    let key = log_key(subscription_id);
    buckets::edit(
        store,
        &key,
        &name(subscription_id),
        MAX_CAS_RETRIES,
        &mut edit,
    )
}

/// Forgets a deleted subscription's entry.
pub fn clear(store: &dyn KvStore, subscription_id: &str) {
    let key = log_key(subscription_id);
    let mut remove = |_: Option<&[u8]>, _| Ok(Change::Remove);
    let _ = buckets::edit(
        store,
        &key,
        &name(subscription_id),
        MAX_CAS_RETRIES,
        &mut remove,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::MemoryStore;

    #[test]
    fn counts_since_a_time_exactly_for_the_newest_lost() {
        let mut index = KeptIndex {
            kept: vec![10, 20, 30],
            ..KeptIndex::default()
        };
        index.lose(&(1..=(MAX_LOST as u64 + 3)).collect::<Vec<_>>());
        assert_eq!(index.lost.len(), MAX_LOST);
        assert_eq!(index.older, (3, 3));
        assert_eq!(index.count_since(20), (2, MAX_LOST as u64 + 3 - 19));
        assert_eq!(index.count_since(4), (3, MAX_LOST as u64));
        assert_eq!(
            index.count_since(3),
            (3, MAX_LOST as u64 + 3),
            "older: upper bound"
        );
        assert_eq!(index.count_since(1000), (0, 0));
        assert_eq!(KeptIndex::decode(&index.encode()), Some(index));
    }

    #[test]
    fn written_while_the_subscription_exists_and_cleared() {
        let store = MemoryStore::default();
        record(&store, "s", vec![5, 6], &[1], || true).unwrap();
        record(&store, "s", vec![6], &[2, 3], || true).unwrap();
        let index = read(&store, "s");
        assert_eq!((index.kept, index.lost), (vec![6], vec![1, 2, 3]));
        record(&store, "s", vec![7], &[], || false).unwrap();
        assert_eq!(read(&store, "s"), KeptIndex::default(), "gone with it");
        record(&store, "s", vec![7], &[], || true).unwrap();
        clear(&store, "s");
        assert_eq!(read(&store, "s"), KeptIndex::default());
        let broken = Bucket::read(&store, &log_key("t")).with("t/kept", Some(b"x|y"));
        store.set(&log_key("t"), &broken, None).unwrap();
        assert_eq!(read(&store, "t"), KeptIndex::default());
    }
}
