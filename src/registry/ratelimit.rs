//! Per-consumer rate limit of the API calls that make deliveries on demand (`test`, `retry`):
//! without it one consumer could queue deliveries as fast as it can call.
//!
//! A token bucket per consumer, shared by every worker through the store: [`BURST`] calls at
//! once, then one more every [`REFILL_MS`]. Buckets live in [`KEYS`] fixed keys (by a hash of
//! the consumer), one line `<consumer> <tokens> <at_ms>` each, so churn never adds keys; a
//! consumer whose bucket has refilled is dropped from its line set, so a key holds only the
//! consumers active in the last `BURST × REFILL_MS`. The keys are created at start-up
//! ([`prepare`], on the main thread before any worker) and then only changed with
//! compare-and-swap.

use crate::registry::store::{KvStore, RATE_PREFIX};

/// Calls a consumer may make at once.
pub const BURST: u64 = 10;
/// One more call is allowed this often.
pub const REFILL_MS: u64 = 1000;
const KEYS: u32 = 64;
const CAS_ATTEMPTS: usize = 8;

fn key(consumer: &str) -> String {
    let hash = consumer.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{RATE_PREFIX}:{}", hash % KEYS)
}

/// Creates the keys that do not exist yet.
pub fn prepare<S: KvStore>(store: &S) {
    for n in 0..KEYS {
        let key = format!("pwh:rate:{n}");
        if store.get(&key).is_none() {
            let _ = store.set(&key, b"", None);
        }
    }
}

/// A bucket that held `tokens` at `at_ms`, refilled up to `now_ms`: its tokens, and the instant
/// its refill has counted up to (so that part of an interval is not lost).
fn refilled(tokens: u64, at_ms: u64, now_ms: u64) -> (u64, u64) {
    let earned = now_ms.saturating_sub(at_ms) / REFILL_MS;
    let tokens = tokens.saturating_add(earned);
    if tokens >= BURST {
        (BURST, now_ms)
    } else {
        (tokens, at_ms.saturating_add(earned * REFILL_MS))
    }
}

/// Takes one call from `consumer`'s bucket; `Err(seconds)` to wait when it is empty.
pub fn take<S: KvStore>(store: &S, consumer: &str, now_ms: u64) -> Result<(), u64> {
    let key = key(consumer);
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = match store.get(&key) {
            Some((value, cas)) => (value, Some(cas)),
            None => (Vec::new(), None),
        };
        let text = String::from_utf8_lossy(&value);
        let (mut lines, bucket) = edit(&text, consumer, now_ms);
        let Some((tokens, at)) = bucket else {
            return Err(REFILL_MS.div_ceil(1000));
        };
        lines.push(format!("{consumer} {tokens} {at}"));
        if store.set(&key, lines.join("\n").as_bytes(), cas).is_ok() {
            return Ok(());
        }
    }
    // Too much contention: let the call through rather than refuse it for the store's sake.
    Ok(())
}

/// The other consumers' lines still worth keeping, and this consumer's bucket after the call:
/// tokens and refill instant (None when it has no token left).
fn edit(text: &str, consumer: &str, now_ms: u64) -> (Vec<String>, Option<(u64, u64)>) {
    let mut bucket = (BURST, now_ms);
    let mut kept = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(name), Some(t), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(t), Ok(at)) = (t.parse::<u64>(), at.parse::<u64>()) else {
            continue;
        };
        let now = refilled(t, at, now_ms);
        if name == consumer {
            bucket = now;
        } else if now.0 < BURST {
            kept.push(line.to_string());
        }
    }
    let (tokens, at) = bucket;
    (kept, tokens.checked_sub(1).map(|left| (left, at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::MemoryStore;

    #[test]
    fn a_burst_then_one_call_per_refill() {
        let store = MemoryStore::default();
        for _ in 0..BURST {
            assert_eq!(take(&store, "acme", 0), Ok(()));
        }
        assert_eq!(take(&store, "acme", 999), Err(1));
        assert_eq!(take(&store, "acme", 1000), Ok(()));
        assert_eq!(take(&store, "acme", 1500), Err(1));
        // Idle long enough, the whole burst is back.
        for _ in 0..BURST {
            assert_eq!(take(&store, "acme", 60_000), Ok(()));
        }
        assert_eq!(take(&store, "acme", 60_000), Err(1));
    }

    #[test]
    fn consumers_have_their_own_buckets() {
        let store = MemoryStore::default();
        for _ in 0..BURST {
            take(&store, "acme", 0).unwrap();
        }
        assert!(take(&store, "acme", 0).is_err());
        assert_eq!(take(&store, "bob", 0), Ok(()));
    }

    #[test]
    fn keys_stay_bounded_and_refilled_buckets_are_forgotten() {
        let store = MemoryStore::default();
        for n in 0..1000 {
            take(&store, &format!("c{n}"), 0).unwrap();
        }
        assert!(store.snapshot().len() <= KEYS as usize);
        // Much later, one call rewrites its key without the refilled consumers.
        take(&store, "c0", 3_600_000).unwrap();
        let (value, _) = store.get(&key("c0")).unwrap();
        assert_eq!(String::from_utf8(value).unwrap(), "c0 9 3600000");
    }

    #[test]
    fn part_of_a_refill_interval_is_not_lost() {
        let store = MemoryStore::default();
        // One call every 900 ms for 179.1 s: the burst, then one per whole second of refill.
        let passed = (0..200u64)
            .filter(|n| take(&store, "acme", n * 900).is_ok())
            .count();
        assert_eq!(passed, 10 + 179);
    }

    #[test]
    fn prepare_creates_every_key_once() {
        let store = MemoryStore::default();
        prepare(&store);
        take(&store, "acme", 0).unwrap();
        prepare(&store);
        assert_eq!(store.snapshot().len(), KEYS as usize);
        assert!(store.get(&key("acme")).is_some_and(|(v, _)| !v.is_empty()));
    }

    #[test]
    fn garbled_lines_are_ignored() {
        let (kept, bucket) = edit("x\nacme notanumber 1\nbob 3 0\n", "acme", 0);
        assert_eq!(
            (kept, bucket),
            (vec!["bob 3 0".to_string()], Some((BURST - 1, 0)))
        );
    }
}
