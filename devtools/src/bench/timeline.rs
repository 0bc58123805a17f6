//! One clock for the client and the receiver, and per-event timestamps on it.
//!
//! Client and receiver live in the same process, so event → receiver latency is simply "receiver
//! arrival minus the moment the client got the API response" on one monotonic clock. Events are
//! told apart by a sequence number the client puts in the request body; the bench upstream echoes
//! the body, so it comes back in the webhook as `data.object.seq`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Microseconds since the first call in this process, plus one (0 means "not set" below).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX) + 1
}

/// A histogram of microseconds from 1 µs to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// When each numbered event's API request was sent, when its response reached the client, and
/// when its webhook arrived.
pub struct Timeline {
    sent: Vec<AtomicU64>,
    responded: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
}

impl Timeline {
    /// Room for sequence numbers `0..capacity`; later ones are not recorded.
    pub fn new(capacity: usize) -> Timeline {
        let slots = || (0..capacity).map(|_| AtomicU64::new(0)).collect();
        Timeline {
            sent: slots(),
            responded: slots(),
            arrived: slots(),
        }
    }

    pub fn mark_sent(&self, seq: u64) {
        mark(&self.sent, seq);
    }

    pub fn mark_responded(&self, seq: u64) {
        mark(&self.responded, seq);
    }

    pub fn mark_arrived(&self, seq: u64) {
        mark(&self.arrived, seq);
    }

    /// Whether event `seq`'s webhook has arrived.
    pub fn arrived(&self, seq: u64) -> bool {
        let slot = usize::try_from(seq).ok().and_then(|i| self.arrived.get(i));
        slot.is_some_and(|s| s.load(Ordering::Relaxed) != 0)
    }

    /// Arrival minus response for every event seen on both sides, and how many those were.
    pub fn latencies(&self) -> (Histogram<u64>, u64) {
        between(&self.responded, &self.arrived)
    }

    /// Arrival minus the start of the API request (an upper bound: it includes the API call).
    pub fn latencies_from_request(&self) -> (Histogram<u64>, u64) {
        between(&self.sent, &self.arrived)
    }
}

/// `to - from` for every slot set in both, and how many those were.
fn between(from: &[AtomicU64], to: &[AtomicU64]) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut pairs = 0;
    for (start, end) in from.iter().zip(to) {
        let (start, end) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
        if start != 0 && end != 0 {
            // A webhook can beat the client's last read of the response: that counts as ~0.
            hist.saturating_record(end.saturating_sub(start).max(1));
            pairs += 1;
        }
    }
    (hist, pairs)
}

fn mark(slots: &[AtomicU64], seq: u64) {
    let slot = usize::try_from(seq).ok().and_then(|i| slots.get(i));
    if let Some(slot) = slot {
        // Keep the first time: a retried delivery must not make the latency look better.
        let _ = slot.compare_exchange(0, now_us(), Ordering::Relaxed, Ordering::Relaxed);
    }
}
