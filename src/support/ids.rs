//! Random identifiers (`msg_…`, `sub_…`) drawn from an injected randomness source.

/// No cryptographic randomness could be had (WASI `random_get` failed): nothing that needs it
/// (a secret, a subscription id) may be made up from anything weaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomUnavailable;

/// Source of cryptographically random bytes (WASI `random_get` in Envoy; a seeded fake in tests).
pub trait RandomSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable>;
}

/// Random bytes drawn per refill: enough for a 24-character id in one call most of the time.
const BATCH: usize = 32;

/// Bytes at or above this are rejected: 248 = 4 × 62, so `byte % 62` stays uniform.
const REJECT_FROM: u8 = 248;

/// `prefix` followed by `len` base62 characters (`0-9A-Za-z`), each uniformly distributed.
///
/// Uniformity comes from rejection sampling: a byte maps to a character only when it falls in
/// the largest multiple of 62 that fits in a byte; other bytes are discarded and more drawn.
pub fn random_id(
    rng: &mut dyn RandomSource,
    prefix: &str,
    len: usize,
) -> Result<String, RandomUnavailable> {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    let mut missing = len;
    let mut buf = [0u8; BATCH];
    while missing > 0 {
        rng.fill(&mut buf)?;
        for c in buf.iter().filter_map(|&b| base62_char(b)).take(missing) {
            id.push(c);
            missing -= 1;
        }
    }
    Ok(id)
}

/// A webhook-id when no randomness is available: `prefix` + the time and a sequence number, so
/// unique within this VM. A webhook-id needs to be unique, not secret; secrets and subscription
/// ids are never made this way (they are refused instead).
pub fn sequential_id(prefix: &str, now_ms: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut id = String::from(prefix);
    for mut v in [now_ms, n] {
        // Fixed width (11 base62 digits hold any u64), so the two parts cannot run together.
        let mut digits = [b'0'; 11];
        for d in digits.iter_mut().rev() {
            *d = base62_char(u8::try_from(v % 62).unwrap_or(0)).map_or(b'0', |c| c as u8);
            v /= 62;
        }
        id.extend(digits.iter().map(|&b| char::from(b)));
    }
    id
}

/// The base62 character for an accepted byte, `None` for a rejected one.
fn base62_char(byte: u8) -> Option<char> {
    if byte >= REJECT_FROM {
        return None;
    }
    let digit = byte % 62;
    let ascii = match digit {
        0..=9 => b'0' + digit,
        10..=35 => b'A' + (digit - 10),
        _ => b'a' + (digit - 36),
    };
    Some(char::from(ascii))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixtures::{NoRandom, Rng};

    /// Replays a fixed byte sequence, cycling.
    struct Replay(Vec<u8>, usize);

    impl RandomSource for Replay {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
            for b in buf.iter_mut() {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(())
        }
    }

    #[test]
    fn no_randomness_no_id() {
        assert_eq!(random_id(&mut NoRandom, "sub_", 24), Err(RandomUnavailable));
    }

    #[test]
    fn sequential_ids_are_unique_and_well_formed() {
        let a = sequential_id("msg_", 1_700_000_000_000);
        let b = sequential_id("msg_", 1_700_000_000_000);
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 22);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(sequential_id("", u64::MAX).len(), 22);
    }

    #[test]
    fn has_prefix_and_length() {
        let id = random_id(&mut Rng(7), "msg_", 24).unwrap();
        assert!(id.starts_with("msg_"));
        assert_eq!(id.len(), 28);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn maps_bytes_and_rejects_the_top_range() {
        let mut rng = Replay(vec![255, 248, 0, 9, 10, 35, 36, 61, 62, 247], 0);
        assert_eq!(random_id(&mut rng, "", 8).unwrap(), "09AZaz0z");
    }

    #[test]
    fn zero_length_draws_nothing() {
        let mut rng = Replay(vec![1], 0);
        assert_eq!(random_id(&mut rng, "sub_", 0).unwrap(), "sub_");
        assert_eq!(rng.1, 0);
    }

    #[test]
    fn ids_longer_than_a_batch() {
        let id = random_id(&mut Rng(3), "", 100).unwrap();
        assert_eq!(id.len(), 100);
    }

    #[test]
    fn ids_differ() {
        let mut rng = Rng(42);
        let a = random_id(&mut rng, "msg_", 24).unwrap();
        let b = random_id(&mut rng, "msg_", 24).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn characters_are_roughly_uniform() {
        let id = random_id(&mut Rng(99), "", 62 * 1000).unwrap();
        let mut counts = std::collections::HashMap::new();
        for c in id.chars() {
            *counts.entry(c).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 62);
        assert!(
            counts.values().all(|&n| (850..=1150).contains(&n)),
            "{counts:?}"
        );
    }
}
