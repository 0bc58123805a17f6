//! The plugin's hash maps and sets: the proxy-wasm SDK's hashbrown with foldhash, seeded from
//! WASI `random_get` once per process, instead of std's `HashMap`.
//!
//! std's maps would bring a second copy of hashbrown's table code, SipHash and std's random-key
//! machinery (with WASI's error names) into the .wasm: 5.7 KB for nothing the SDK's copy cannot
//! do. The seed keeps what std's `RandomState` gave: key layouts an outsider cannot predict
//! (event types and consumer names come from requests).
//!
//! Construct with `HashMap::default()` (`new` exists only for hashbrown's own hasher).

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;
use std::cell::Cell;
use std::hash::BuildHasher;

pub type HashMap<K, V> = hashbrown::HashMap<K, V, Seeded>;
pub type HashSet<T> = hashbrown::HashSet<T, Seeded>;

/// A map's hasher: foldhash keyed by the process's random seed and a seed of the map's own.
#[derive(Clone)]
pub struct Seeded(SeedableRandomState);

thread_local! {
    /// The last per-map seed handed out and the shared seed; None until the first map asks.
    static STATE: Cell<Option<(u64, &'static SharedSeed)>> = const { Cell::new(None) };
}

impl Default for Seeded {
    fn default() -> Self {
        STATE.with(|state| {
            let (last, shared) = state.get().unwrap_or_else(|| {
                let seed = process_seed();
                let shared: &'static SharedSeed = Box::leak(Box::new(SharedSeed::from_u64(seed)));
                (seed.rotate_left(32), shared)
            });
            // Every map its own seed, as std's RandomState does it.
            let next = last.wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(Some((next, shared)));
            Seeded(SeedableRandomState::with_seed(next, shared))
        })
    }
}

impl BuildHasher for Seeded {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_hashes_with_its_own_seed() {
        let (a, b) = (Seeded::default(), Seeded::default());
        assert_ne!(a.hash_one("sub_1"), b.hash_one("sub_1"));
        assert_eq!(a.hash_one("sub_1"), a.hash_one("sub_1"));
        let mut map: HashMap<String, u32> = HashMap::default();
        map.insert("sub_1".into(), 1);
        assert_eq!(map.get("sub_1"), Some(&1));
    }
}
