//! What the roles ask of Envoy, as traits: the wasm adapter in `host` implements them, and a
//! fake implements them for native tests. Every method is infallible or returns its failure:
//! a host call never panics behind them.

// ---------------------------------------------------------------------------------------------
// The filter's host: one HTTP stream on a worker (see `crate::stream`).
// ---------------------------------------------------------------------------------------------

use crate::ids::RandomUnavailable;
use crate::registry::KvStore;

/// A metric the filter moves (SPEC "Observability").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCounter {
    /// `webhooks_events_detected`
    EventsDetected,
    /// `webhooks_events_dropped`
    EventsDropped,
}

/// What the filter needs of its host. Header and body reads concern the stream whose callback
/// is running; they answer None when the value is absent or the host refuses to read it.
pub trait StreamHost {
    /// Shared data, seen by every worker and the dispatcher.
    type Store: KvStore;

    /// One request header (lowercase name, or a pseudo-header such as `:path`).
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// One response header.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The first `max` bytes of the request body buffered so far.
    fn request_body(&self, max: usize) -> Option<Vec<u8>>;
    /// The first `max` bytes of the response body chunk being passed on.
    fn response_body(&self, max: usize) -> Option<Vec<u8>>;
    /// Answers the stream locally (it never goes upstream); a refusal is the host's to log.
    fn send_response(&self, status: u16, headers: Vec<(&str, &str)>, body: &[u8]);
    /// Hands an encoded message to the dispatcher's shared queue; false when the queue is not
    /// (yet) there or refuses it.
    fn enqueue(&self, message: &[u8]) -> bool;
    /// The shared store (cheap: a handle).
    fn store(&self) -> Self::Store;
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Fills `buf` with cryptographic randomness, or says that there is none.
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomUnavailable>;
    /// Adds one to a counter.
    fn count(&self, counter: StreamCounter);
    /// Shows whether the dispatcher runs (`webhooks_dispatcher_alive`, 1 or 0).
    fn show_dispatcher_alive(&self, alive: bool);
}
