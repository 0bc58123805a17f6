//! The plugin's hash maps and sets: the proxy-wasm SDK's hashbrown, hashing with SipHash keyed
//! from WASI `random_get` once per process, instead of std's `HashMap`.
//!
//! std's maps would bring a second copy of hashbrown's table code and std's random-key machinery
//! (with WASI's error names) into the .wasm. The keys are std's scheme: random once, the first
//! one moved on for each new map, so key layouts stay unpredictable from outside (event types
//! and consumer names come from requests). SipHash-2-4 (`SipHasher`, deprecated only in favour
//! of std's unkeyable `DefaultHasher`) rather than hashbrown's foldhash: its string hashing is
//! 1.5 KB smaller.
//!
//! Construct with `HashMap::default()` (`new` exists only for hashbrown's own hasher).
//!
//! Also the one hash that must be the same everywhere: [`fnv1a`], which names store buckets
//! ([`bucket_key`]) and spreads etcd slot keys, identically on every replica and build.

use std::cell::Cell;
use std::hash::BuildHasher;

pub type HashMap<K, V> = hashbrown::HashMap<K, V, Seeded>;
pub type HashSet<T> = hashbrown::HashSet<T, Seeded>;

/// A map's hasher: SipHash with the map's keys.
#[derive(Clone)]
pub struct Seeded(u64, u64);

thread_local! {
    /// The keys the next map gets; None until the first map asks.
    static STATE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

impl Default for Seeded {
    fn default() -> Self {
        STATE.with(|state| {
            let (k0, k1) = state
                .get()
                .unwrap_or_else(|| (process_seed(), process_seed()));
            state.set(Some((k0.wrapping_add(1), k1)));
            Seeded(k0, k1)
        })
    }
}

impl BuildHasher for Seeded {
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.0, self.1)
    }
}

/// 64 random bits. Without randomness (Envoy's `random_get` failing), a fixed seed: maps still
/// work, only their layout is predictable.
fn process_seed() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::hash::RandomState::new().hash_one(0u8)
    }
}

/// FNV-1a: stable across builds and replicas, unlike std's hasher.
pub fn fnv1a(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The key of `name`'s bucket among `count` buckets named `<prefix>:<n>`.
pub fn bucket_key(prefix: &str, count: u32, name: &str) -> String {
    format!("{prefix}:{}", fnv1a(name) % count.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_hashes_with_its_own_keys() {
        let (a, b) = (Seeded::default(), Seeded::default());
        assert_ne!(a.hash_one("sub_1"), b.hash_one("sub_1"));
        assert_eq!(a.hash_one("sub_1"), a.hash_one("sub_1"));
        let mut map: HashMap<String, u32> = HashMap::default();
        map.insert("sub_1".into(), 1);
        assert_eq!(map.get("sub_1"), Some(&1));
    }
}
