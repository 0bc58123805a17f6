//! Portal sessions' shared state: the revocations every worker checks tokens against, and the
//! session key the plugin makes when `api.portal.session_key` is not configured (without fleet
//! mode only). Both live in shared data, so every worker sees them until Envoy restarts; in
//! fleet mode the dispatcher copies etcd's revocations here every `sync_interval`.
//!
//! `pwh:portal:revoked` holds a JSON object `{consumer: revoked up to (unix ms)}`. A token lives
//! at most [`MAX_TTL_MS`], so a revocation older than that can refuse nothing any more and is
//! dropped at the next write: the object holds at most the consumers revoked in a week.

use super::store::{KvStore, StoreError, PORTAL_KEY_KEY, REVOKED_KEY};
use crate::model::session::MAX_TTL_MS;
use crate::support::ids::RandomSource;

const CAS_ATTEMPTS: usize = 8;
/// Bytes of a key the plugin makes.
const MADE_KEY_LEN: usize = 32;

/// Creates the keys (empty) at start-up, so later writes can all use compare-and-swap.
pub fn prepare<S: KvStore>(store: &S) {
    for key in [REVOKED_KEY, PORTAL_KEY_KEY] {
        if store.get(key).is_none() {
            let _ = store.set(key, b"", None);
        }
    }
}

/// The stored revocations as `(consumer, up to)` pairs (an absent or unreadable object is
/// empty). A plain list rather than a map type of its own: the JSON object is read and written
/// through `serde_json::Value`, whose code the `.wasm` has anyway.
fn parse(bytes: &[u8]) -> Vec<(String, u64)> {
    let Some(o) = crate::support::record::parse_object(bytes) else {
        return Vec::new();
    };
    o.iter()
        .filter_map(|(consumer, v)| Some((consumer.clone(), v.as_u64()?)))
        .collect()
}

/// The time up to which `consumer`'s sessions are revoked, if they are.
pub fn revoked_up_to<S: KvStore>(store: &S, consumer: &str) -> Option<u64> {
    let (bytes, _) = store.get(REVOKED_KEY)?;
    parse(&bytes)
        .into_iter()
        .find(|(c, _)| c == consumer)
        .map(|(_, up_to)| up_to)
}

/// Revokes every session of `consumer` issued up to `up_to_ms` (a later revocation is kept).
pub fn revoke<S: KvStore>(
    store: &S,
    consumer: &str,
    up_to_ms: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    merge(store, &[(consumer.to_string(), up_to_ms)], now_ms)
}

/// Takes every revocation of `synced` (etcd's, in fleet mode), keeping later local ones; drops
/// those that can refuse nothing any more.
pub fn merge<S: KvStore>(
    store: &S,
    synced: &[(String, u64)],
    now_ms: u64,
) -> Result<(), StoreError> {
    let live = |up_to: u64| up_to.saturating_add(MAX_TTL_MS) > now_ms;
    let mut last = StoreError::Conflict;
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = store.get(REVOKED_KEY).unwrap_or_default();
        let before = parse(&bytes);
        let mut after: Vec<(String, u64)> =
            before.iter().filter(|(_, t)| live(*t)).cloned().collect();
        for (consumer, up_to) in synced.iter().filter(|(_, t)| live(*t)) {
            match after.iter_mut().find(|(c, _)| c == consumer) {
                Some((_, kept)) => *kept = (*kept).max(*up_to),
                None => after.push((consumer.clone(), *up_to)),
            }
        }
        if after == before {
            return Ok(());
        }
        let object: serde_json::Map<String, serde_json::Value> =
            after.into_iter().map(|(c, t)| (c, t.into())).collect();
        let value = serde_json::to_vec(&object).unwrap_or_default();
        match store.set(REVOKED_KEY, &value, Some(cas)) {
            Err(StoreError::Conflict) => last = StoreError::Conflict,
            other => return other,
        }
    }
    Err(last)
}

/// The session key: the configured one, else the one this Envoy process made (the first
/// worker to need it makes it; the others read it). None without randomness or shared data.
pub fn session_key<S: KvStore>(
    store: &S,
    configured: &[u8],
    rng: &mut dyn RandomSource,
) -> Option<Vec<u8>> {
    if !configured.is_empty() {
        return Some(configured.to_vec());
    }
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = store.get(PORTAL_KEY_KEY)?;
        if bytes.len() == MADE_KEY_LEN {
            return Some(bytes);
        }
        let mut made = vec![0u8; MADE_KEY_LEN];
        rng.fill(&mut made).ok()?;
        match store.set(PORTAL_KEY_KEY, &made, Some(cas)) {
            Ok(()) => return Some(made),
            Err(StoreError::Conflict) => continue,
            Err(StoreError::Failed(_)) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::MemoryStore;
    use crate::tests::fixtures::Rng;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn revocations_are_kept_per_consumer_and_age_out() {
        let store = MemoryStore::default();
        prepare(&store);
        assert_eq!(revoked_up_to(&store, "acme"), None);
        revoke(&store, "acme", 5_000, 5_000).unwrap();
        revoke(&store, "acme", 4_000, 5_000).unwrap();
        assert_eq!(revoked_up_to(&store, "acme"), Some(5_000));
        assert_eq!(revoked_up_to(&store, "globex"), None);
        merge(
            &store,
            &[("globex".into(), 7_000), ("acme".into(), 1)],
            7_000,
        )
        .unwrap();
        assert_eq!(revoked_up_to(&store, "globex"), Some(7_000));
        assert_eq!(revoked_up_to(&store, "acme"), Some(5_000));
        // A week later nothing minted before 5_000 lives: the entry goes at the next write.
        revoke(&store, "initech", 8 * DAY_MS, 8 * DAY_MS).unwrap();
        assert_eq!(revoked_up_to(&store, "acme"), None);
        assert_eq!(revoked_up_to(&store, "initech"), Some(8 * DAY_MS));
    }

    #[test]
    fn the_made_key_is_made_once_and_shared() {
        let store = MemoryStore::default();
        prepare(&store);
        let configured = vec![9u8; 40];
        let mut rng = Rng(7);
        assert_eq!(session_key(&store, &configured, &mut rng), Some(configured));
        let made = session_key(&store, &[], &mut rng).unwrap();
        assert_eq!(made.len(), 32);
        assert_eq!(session_key(&store, &[], &mut rng), Some(made));
        // Before the keys exist (no prepare), nothing is made unconditionally.
        assert_eq!(session_key(&MemoryStore::default(), &[], &mut rng), None);
    }
}
