//! Noticing that the dispatcher is gone.
//!
//! Envoy 1.40 never reloads a bootstrap wasm service whose VM failed (its `failure_policy` acts
//! only for filters, on their next stream): after a trap the dispatcher's callbacks are skipped
//! silently, no stat moves, and the shared queue, which is unbounded, keeps taking events. So
//! the dispatcher writes a heartbeat into shared data, and every worker's filter root checks
//! its age: past [`DEAD_AFTER_MS`] the worker logs an error once, shows
//! `webhooks_dispatcher_alive` 0, and drops (and counts) events instead of queueing them where
//! nothing reads them. Only restarting Envoy brings a dead dispatcher back.
//!
//! In fleet mode the dispatcher also tells the workers when its first read of etcd's registry is
//! applied ([`REGISTRY_READ_KEY`]): until then the cache is empty or partial, and the API answers
//! 503 rather than a false 404 or an empty list.

pub use crate::registry::store::{HEARTBEAT_KEY, REGISTRY_READ_KEY};
/// How often the dispatcher writes it.
pub const BEAT_EVERY_MS: u64 = 1000;
/// How often workers look at it.
pub const CHECK_EVERY_MS: u64 = 1000;
/// A heartbeat this old means the dispatcher is gone (a few beats: the main thread may be
/// busy for a moment).
pub const DEAD_AFTER_MS: u64 = 5000;

/// The heartbeat's value at `now_ms`.
pub fn beat(now_ms: u64) -> Vec<u8> {
    now_ms.to_string().into_bytes()
}

/// The value of [`REGISTRY_READ_KEY`]: whether the first registry read is applied.
pub fn registry_read_value(read: bool) -> &'static [u8] {
    match read {
        true => b"1",
        false => b"0",
    }
}

/// Whether the first registry read is applied, from the value of [`REGISTRY_READ_KEY`] (none:
/// the dispatcher has not started yet).
pub fn registry_read(value: Option<&[u8]>) -> bool {
    value == Some(b"1".as_slice())
}

/// A change the worker must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The last heartbeat is this many milliseconds old.
    Died { silent_ms: u64 },
    /// Heartbeats come again (an Envoy hot restart, or a main thread that was stuck).
    Revived,
}

/// One worker's view of the dispatcher.
#[derive(Debug)]
pub struct Watchdog {
    alive: bool,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog { alive: true }
    }
}

impl Watchdog {
    pub fn alive(&self) -> bool {
        self.alive
    }

    /// Looks at the heartbeat (None before the dispatcher's first: it is starting, not dead).
    pub fn check(&mut self, heartbeat: Option<&[u8]>, now_ms: u64) -> Option<Change> {
        let last = heartbeat
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let silent_ms = last.map_or(0, |at| now_ms.saturating_sub(at));
        let alive = silent_ms < DEAD_AFTER_MS;
        if alive == self.alive {
            return None;
        }
        self.alive = alive;
        Some(if alive {
            Change::Revived
        } else {
            Change::Died { silent_ms }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_dispatcher_is_reported_once_and_its_return_too() {
        let mut w = Watchdog::default();
        assert_eq!(w.check(None, 1_000_000), None, "no beat yet: starting");
        assert_eq!(w.check(Some(&beat(10_000)), 14_999), None);
        assert_eq!(
            w.check(Some(&beat(10_000)), 15_000),
            Some(Change::Died { silent_ms: 5000 })
        );
        assert!(!w.alive());
        assert_eq!(w.check(Some(&beat(10_000)), 60_000), None, "reported once");
        assert_eq!(w.check(Some(&beat(59_500)), 60_000), Some(Change::Revived));
        assert!(w.alive());
    }

    #[test]
    fn the_registry_is_read_only_once_the_dispatcher_says_so() {
        assert!(!registry_read(None), "the dispatcher has not started");
        assert!(!registry_read(Some(registry_read_value(false))));
        assert!(!registry_read(Some(b"yes")));
        assert!(registry_read(Some(registry_read_value(true))));
    }

    #[test]
    fn a_garbled_heartbeat_counts_as_none() {
        let mut w = Watchdog::default();
        assert_eq!(w.check(Some(b"soon"), u64::MAX), None);
        assert_eq!(w.check(Some(b""), 5), None);
    }
}
