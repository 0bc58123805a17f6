//! The durable outbox's etcd side (fleet mode), pure: which calls to make and what their
//! answers mean. The dispatcher sends [`Journal::calls`] through its host and feeds every answer
//! to [`Journal::on_answer`]; the [`Event`]s say when a held message may have its first attempt.
//!
//! - **Lease.** At start the replica reads `P/node/<node id>`, then a new lease is granted and
//!   `P/live/<lease>` and `P/node/<node id>` (both attached to it, so they go with it) and
//!   `P/owner/<lease>` are written. Keepalives every third of the TTL; a lease found gone is
//!   replaced (its messages are claimed, possibly by another replica: delivered twice at worst,
//!   never lost).
//! - **Node ids.** A lease found under `P/node/<node id>` at start is this node's former one (a
//!   restart) or another process's given the same node id. Its time to live is read every
//!   [`PROBE_MS`]: one that grows back was renewed, so another process holds it: a conflict,
//!   logged and counted ([`Outcome::node_conflicts`]), and the lease is left alone. One that only
//!   shrinks, below what a renewed lease ever shows, is our former one: it is revoked, so its
//!   messages are claimable at once (claimed like any dead replica's, by this replica usually).
//!   Every scan also reads the node key: another lease there than ours means another process
//!   registered with our node id since (a conflict too).
//! - **Messages.** [`Journal::stage`] holds a message until its put commits (batched: up to
//!   [`MAX_OPS`] per txn, [`MAX_BATCH_BYTES`], [`MAX_TXNS`] txns in flight); then it is
//!   [`Event::Written`] and its first attempt may be pending. When etcd does not take it, it is
//!   [`Event::Released`] (delivered from memory) and written again later. [`Journal::finished`]
//!   deletes it (and keeps exhausted or dropped ones under `P/dead/`, trimmed to `max_dead`, in
//!   txns of their own: etcd out of space still takes deletes). A delete is only sent after its
//!   put committed, so the two never race; a put whose answer was lost may have committed, so
//!   its key is deleted too.
//! - **Claims.** Every scan reads `P/live/`, `P/owner/` and `P/claim/`; an owner whose live key
//!   and claim are both gone is claimed by a txn that compares both (one claimer wins), with
//!   `P/claim/<dead>` attached to the claimer's lease (if the claimer dies too, the claim goes and
//!   the messages are claimable again; a claim whose answer was lost is found by the next scan).
//!   Its messages are read a page at a time ([`Event::Claimed`]), only once the registry was read
//!   at or after the claim (a message's subscription missing then is really gone) and only as
//!   many as the outbox has room for ([`Journal::set_intake`]; one that did not fit after all is
//!   [`Journal::returned`] and read again later). Once every one is finished the dead lease's
//!   keys are removed.

use super::keys::{self, Keys, CLAIM, LIVE, OWNER};
use super::stored::{self, Stored};
use super::vault::Vault;

use crate::fleet::etcd::{self, Cmp, Compare, Op, OpAnswer, RangeQuery, Request, Target};
use crate::support::hashing::HashMap;
use std::collections::VecDeque;

/// Operations per txn: etcd's default `--max-txn-ops`.
pub const MAX_OPS: usize = 128;
/// Raw value bytes per txn: base64 in JSON (4/3) stays under etcd's default request limit
/// (1.5 MiB). A message larger than this alone stays in memory only.
pub const MAX_BATCH_BYTES: usize = 768 * 1024;
/// Message txns (puts, deletes) in flight at once.
pub const MAX_TXNS: usize = 4;
/// Messages held for their put at once; past it, messages go out from memory and are written
/// later (etcd is slower than the events).
pub const MAX_HELD: usize = 8192;
/// Messages of a claimed lease read per page, at most; halved for that lease after a page
/// read failed (an answer over Envoy's buffer limit is reset: see [`MAX_VALUE_BYTES`]).
pub const PAGE: u64 = 500;
/// Largest stored message kept in etcd (larger ones stay in memory only): a page of one must
/// come back whole. Envoy resets a callout answer over `http.async_response_buffer_limit`
/// (256 KiB in the shipped configurations, docs/operations.md), and a range answer carries
/// the value in base64 (4/3) beside its key and revisions.
pub const MAX_VALUE_BYTES: usize = 188 * 1024;
/// Wait before a failed start step or write is tried again.
pub const RETRY_MS: u64 = 1000;
/// Between two reads of a former lease's time to live: over a second, so that one nobody
/// renews shows a smaller whole number of seconds each time.
pub const PROBE_MS: u64 = 1500;

/// Identifies one call for the dispatcher (it maps Envoy's tokens to these).
pub type CallId = u64;

/// What an answer means for the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// These held messages are in etcd: their first attempt may be pending.
    Written(Vec<String>),
    /// These held messages are not in etcd (etcd did not take them): deliver them from memory;
    /// they are written when etcd takes them.
    Released(Vec<String>),
    /// Messages of a dead replica, now this replica's to deliver.
    Claimed(Vec<Stored>),
}

/// What [`Journal::on_answer`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    /// What went wrong with etcd, to count and log.
    pub error: Option<String>,
    /// Leases claimed by this answer.
    pub claims: u64,
    /// Claimed messages no configured key opens (dropped, logged).
    pub unreadable: u64,
    /// Other processes found running with this node id.
    pub node_conflicts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The start step `step` is due at `at`.
    Starting {
        at: u64,
        step: Start,
    },
    /// A start step is in flight.
    Waiting,
    Ready {
        lease: i64,
    },
}

/// The steps to a registered lease, in order (a failed one starts over after [`RETRY_MS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    FindNode,
    Grant,
    Register(i64),
}

/// The lease found under our node key at start, whose holder is not known yet.
#[derive(Debug, Clone, Copy)]
struct Former {
    lease: i64,
    /// Its time to live at the last read (None: not read yet).
    ttl: Option<i64>,
    reads: u32,
    at: u64,
    waiting: bool,
}

/// One call in flight.
#[derive(Debug)]
enum Call {
    Start(Start),
    KeepAlive { lease: i64 },
    Probe { lease: i64 },
    Revoke,
    Scan,
    Claim { lease: i64 },
    Page { lease: i64, limit: u64 },
    Release { lease: i64 },
    CountDead,
    TrimDead,
    Puts { ids: Vec<String>, lease: i64 },
    Deletes(Vec<Removal>),
    DeadPuts(Vec<(Vec<u8>, Vec<u8>)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its put (first or again).
    Queued,
    Putting,
    Durable,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// The lease whose key holds it (set when its put is sent).
    lease: i64,
    /// Its stored form, until it is in etcd.
    value: Option<Vec<u8>>,
    /// Its first attempt waits for the put.
    held: bool,
    /// Finished while its put was in flight: removed (kept as dead with this value) once the
    /// put commits.
    finished: Option<Option<Vec<u8>>>,
    /// The lease of a put that failed without a clear answer: it may have committed, so that
    /// key is deleted once the message is finished or written under another lease.
    maybe_at: Option<i64>,
}

/// One key to delete.
#[derive(Debug, Clone)]
struct Removal {
    key: Vec<u8>,
    /// The lease whose message it is (a claimed lease is released once none remain).
    lease: i64,
    /// A dead record removed by the trim.
    trim: bool,
}

/// A dead replica's lease this one claimed.
#[derive(Debug, Default)]
struct Claimed {
    /// Where the next page starts (the key after the last read); `None` once all are read.
    next: Option<Vec<u8>>,
    /// A page read or the release is in flight.
    busy: bool,
    retry_at: u64,
    /// Its messages read and not yet deleted.
    open: usize,
    /// etcd's revision when it was claimed: its pages wait for a registry read this recent.
    revision: i64,
    /// Some messages read did not fit the outbox: read again from the start once all are read.
    rewind: bool,
    /// Messages per page read: [`PAGE`], halved after a failed read.
    page: u64,
    /// Reading from the start again: pages may hold messages finished since.
    reread: bool,
    /// Some messages were sealed with a key this replica lacks: the release leaves them (and
    /// the owner key) in etcd, for a replica that has the key to claim.
    sealed: bool,
}

/// The durable outbox's state; see the module doc.
#[derive(Debug)]
pub struct Journal {
    keys: Keys,
    node_id: String,
    ttl_ms: u64,
    scan_every_ms: u64,
    max_dead: usize,
    max_unwritten_bytes: usize,
    phase: Phase,
    /// The lease found under our node key at start, until we know whose it is.
    former: Option<Former>,
    /// Our earlier leases (lost ones): not another process's when a scan finds them.
    past_leases: Vec<i64>,
    /// The last other process's lease reported as a conflict.
    reported: Option<i64>,
    /// Our former lease, to revoke.
    revoke_due: Option<i64>,
    next_id: CallId,
    /// Calls in flight (a few: a small list is smaller in the wasm than a map).
    calls: Vec<(CallId, Call)>,
    entries: HashMap<String, Entry>,
    puts: VecDeque<String>,
    /// When the put queue may be sent again after a failure.
    puts_at: u64,
    /// The last batch of puts failed: new messages go out from memory at once instead of
    /// waiting (up to [`RETRY_MS`]) for a put that etcd is unlikely to take, and all at once.
    puts_failing: bool,
    removals: VecDeque<Removal>,
    removals_at: u64,
    /// Dead records to keep (key, stored form), in txns of their own.
    dead_puts: VecDeque<(Vec<u8>, Vec<u8>)>,
    dead_puts_at: u64,
    /// Trimmed dead records queued or in flight (no new trim until they are gone).
    trims_open: usize,
    /// Claimed messages the outbox has room for now.
    intake_room: usize,
    /// etcd's revision of the last registry read.
    synced_revision: i64,
    txns: usize,
    keepalive_at: u64,
    keepalive_waiting: bool,
    scan_at: u64,
    scanning: bool,
    /// Dead leases found by the last scan, to claim.
    claims_due: Vec<i64>,
    count_dead_due: bool,
    claimed: Vec<(i64, Claimed)>,
    /// The trim's read of the oldest dead messages, due.
    trim_due: Option<Request>,
    /// Stored bytes of messages not in etcd yet.
    unwritten_bytes: usize,
    held_count: usize,
    durable_count: usize,
    /// How claimed messages are opened.
    vault: Vault,
}

impl Journal {
    /// `max_dead`: how many exhausted or dropped messages etcd keeps for replay;
    /// `max_unwritten_bytes`: how many bytes of messages waiting for etcd are kept in memory
    /// (beyond it, a message is delivered from memory but never written).
    pub fn new(
        keys: Keys,
        node_id: &str,
        ttl_ms: u64,
        scan_every_ms: u64,
        max_dead: usize,
        max_unwritten_bytes: usize,
    ) -> Journal {
        Journal {
            keys,
            node_id: node_id.to_string(),
            ttl_ms,
            scan_every_ms,
            max_dead,
            max_unwritten_bytes,
            phase: Phase::Starting {
                at: 0,
                step: Start::FindNode,
            },
            former: None,
            past_leases: Vec::new(),
            reported: None,
            revoke_due: None,
            next_id: 1,
            calls: Vec::new(),
            entries: HashMap::default(),
            puts: VecDeque::new(),
            puts_at: 0,
            puts_failing: false,
            removals: VecDeque::new(),
            removals_at: 0,
            dead_puts: VecDeque::new(),
            dead_puts_at: 0,
            trims_open: 0,
            intake_room: usize::MAX,
            synced_revision: i64::MAX,
            txns: 0,
            keepalive_at: 0,
            keepalive_waiting: false,
            scan_at: 0,
            scanning: false,
            claims_due: Vec::new(),
            count_dead_due: false,
            claimed: Vec::new(),
            trim_due: None,
            unwritten_bytes: 0,
            held_count: 0,
            durable_count: 0,
            vault: Vault::default(),
        }
    }

    /// Claimed messages are opened with `vault` (`fleet.encrypt_payloads`); the dispatcher
    /// seals what it stages with the same.
    pub fn with_vault(mut self, vault: Vault) -> Journal {
        self.vault = vault;
        self
    }

    /// The lease new messages are written under, once registered.
    pub fn lease(&self) -> Option<i64> {
        match self.phase {
            Phase::Ready { lease } => Some(lease),
            _ => None,
        }
    }

    /// Messages this replica owns in etcd (its own and claimed ones).
    pub fn durable(&self) -> usize {
        self.durable_count
    }

    /// Messages held for their put (first attempt not yet pending).
    pub fn held(&self) -> usize {
        self.held_count
    }

    /// What the outbox can take of claimed messages now: `room` messages, and only pages of
    /// leases claimed at or before `synced_revision`, the registry's last read.
    pub fn set_intake(&mut self, room: usize, synced_revision: i64) {
        self.intake_room = room;
        self.synced_revision = synced_revision;
    }

    /// Takes a new message. True: it is held until [`Event::Written`] or [`Event::Released`];
    /// false: deliver it from memory now (no lease yet, etcd failing, too many held); it is written later
    /// when it can be, unless it is too large, not encodable or past `max_unwritten_bytes`
    /// (then it is in memory only).
    pub fn stage(&mut self, webhook_id: &str, value: Option<Vec<u8>>) -> bool {
        let Some(value) = value.filter(|v| v.len() <= MAX_VALUE_BYTES) else {
            return false;
        };
        if self.entries.contains_key(webhook_id) || !self.has_room_for(value.len()) {
            return false;
        }
        let hold = self.lease().is_some() && !self.puts_failing && self.held_count < MAX_HELD;
        self.unwritten_bytes += value.len();
        self.held_count += usize::from(hold);
        self.entries.insert(
            webhook_id.to_string(),
            Entry {
                state: State::Queued,
                lease: 0,
                value: Some(value),
                held: hold,
                finished: None,
                maybe_at: None,
            },
        );
        self.puts.push_back(webhook_id.to_string());
        hold
    }

    /// Whether `size` more bytes not yet in etcd stay within `max_unwritten_bytes`.
    fn has_room_for(&self, size: usize) -> bool {
        self.unwritten_bytes.saturating_add(size) <= self.max_unwritten_bytes
    }

    /// A message left the outbox (delivered, exhausted, dropped, its subscription gone):
    /// removed from etcd; `dead` is its stored form when it is kept for replay.
    pub fn finished(&mut self, webhook_id: &str, dead: Option<Vec<u8>>) {
        let Some(entry) = self.entries.get_mut(webhook_id) else {
            return;
        };
        match entry.state {
            State::Putting => {
                entry.finished = Some(dead);
                return;
            }
            State::Queued => {
                let size = entry.value.as_ref().map_or(0, Vec::len);
                let maybe_at = entry.maybe_at;
                self.unwritten_bytes = self.unwritten_bytes.saturating_sub(size);
                self.entries.remove(webhook_id);
                if let Some(lease) = maybe_at {
                    self.remove_key(lease, webhook_id, 0);
                }
            }
            State::Durable => {
                let lease = entry.lease;
                self.entries.remove(webhook_id);
                self.durable_count = self.durable_count.saturating_sub(1);
                self.remove_key(lease, webhook_id, lease);
            }
        }
        if let Some(value) = dead {
            self.keep_dead(webhook_id, value);
        }
    }

    /// Whether `webhook_id` is pending here (held for its put, in etcd, or finishing).
    pub fn has(&self, webhook_id: &str) -> bool {
        self.entries.contains_key(webhook_id)
    }

    /// A message retried from its `P/dead/` copy was delivered: the copy goes too.
    pub fn forget_dead(&mut self, webhook_id: &str) {
        self.removals.push_back(Removal {
            key: self.keys.dead(webhook_id),
            lease: 0,
            trim: false,
        });
    }

    /// Queues the delete of `webhook_id`'s key under `lease`; `claimed`: the claimed lease it
    /// counts against (0: none).
    fn remove_key(&mut self, lease: i64, webhook_id: &str, claimed: i64) {
        self.removals.push_back(Removal {
            key: self.keys.message(lease, webhook_id),
            lease: claimed,
            trim: false,
        });
    }

    /// Queues a dead record, within `max_unwritten_bytes` (past it, it is kept in memory only).
    fn keep_dead(&mut self, webhook_id: &str, value: Vec<u8>) {
        if self.lease().is_none() || !self.has_room_for(value.len()) {
            return;
        }
        self.unwritten_bytes += value.len();
        self.dead_puts
            .push_back((self.keys.dead(webhook_id), value));
    }

    /// A claimed message the outbox had no room for after all: forgotten here, left in etcd,
    /// and read again (after [`RETRY_MS`]) once the rest of its lease is read.
    pub fn returned(&mut self, webhook_id: &str, now: u64) {
        let Some(entry) = self.entries.get(webhook_id) else {
            return;
        };
        let lease = entry.lease;
        self.entries.remove(webhook_id);
        self.durable_count = self.durable_count.saturating_sub(1);
        let start = self.keys.messages(lease);
        if let Some(claimed) = self.claimed_mut(lease) {
            claimed.open = claimed.open.saturating_sub(1);
            claimed.retry_at = now + RETRY_MS;
            match claimed.next {
                Some(_) => claimed.rewind = true,
                None => {
                    claimed.next = Some(start);
                    claimed.reread = true;
                }
            }
        }
    }

    fn claimed_mut(&mut self, lease: i64) -> Option<&mut Claimed> {
        self.claimed
            .iter_mut()
            .find(|(l, _)| *l == lease)
            .map(|(_, c)| c)
    }

    /// The calls to send now.
    pub fn calls(&mut self, now: u64) -> Vec<(CallId, Request)> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Starting { at, step } if now >= at => {
                self.phase = Phase::Waiting;
                let request = self.start_request(step);
                self.push(&mut out, Call::Start(step), request);
            }
            Phase::Ready { lease } => {
                self.lease_calls(lease, now, &mut out);
                self.message_calls(lease, now, &mut out);
            }
            _ => {}
        }
        out
    }

    fn push(&mut self, out: &mut Vec<(CallId, Request)>, call: Call, request: Request) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.calls.push((id, call));
        out.push((id, request));
    }

    /// Envoy refused the call: nothing was sent.
    pub fn on_refused(&mut self, id: CallId, now: u64) -> Outcome {
        self.on_answer(id, None, b"", now)
    }

    /// Takes the answer to call `id` (`status` none: the call failed).
    pub fn on_answer(
        &mut self,
        id: CallId,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Outcome {
        let Some(at) = self.calls.iter().position(|(c, _)| *c == id) else {
            return Outcome::default();
        };
        let (_, call) = self.calls.swap_remove(at);
        let mut outcome = Outcome::default();
        let result = match status {
            Some("200") => self.take(&call, body, now, &mut outcome),
            Some(other) => Err(format!(
                "etcd answered with status {other}: {}",
                String::from_utf8_lossy(body.get(..200).unwrap_or(body))
            )),
            None => Err(
                "no answer (timeout, refused, reset, or an answer over Envoy's buffer limit)"
                    .to_string(),
            ),
        };
        if let Err(why) = result {
            // A revoke of a lease already gone is refused: either way it is gone now.
            if matches!(call, Call::Revoke) && status.is_some() {
                return outcome;
            }
            self.undo(&call, now, &mut outcome);
            outcome.error = Some(format!("{}: {why}", call_name(&call)));
        }
        outcome
    }

    /// Reads a 200 answer; `Err` (before any change) says why it is not usable.
    fn take(
        &mut self,
        call: &Call,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        match call {
            Call::Start(step) => self.on_start(*step, body, now),
            Call::KeepAlive { lease } => self.on_keepalive(*lease, body, now),
            Call::Probe { lease } => self.on_probe(*lease, body, now, outcome),
            Call::Revoke => etcd::parse_lease_revoke(body)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Call::Scan => self.on_scan(body, now, outcome),
            Call::Claim { lease } => self.on_claim(*lease, body, now, outcome),
            Call::Page { lease, .. } => self.on_page(*lease, body, now, outcome),
            Call::Release { lease } => self.on_release(*lease, body),
            Call::CountDead => self.on_count_dead(body),
            Call::TrimDead => self.on_trim_dead(body),
            Call::Puts { ids, lease } => self.on_puts(ids, *lease, body, now, outcome),
            Call::Deletes(removals) => self.on_deletes(removals, body),
            Call::DeadPuts(records) => check_txn(body).map(|_| self.on_dead_puts(records)),
        }
    }

    /// A call that failed: what it was doing is undone, to be tried again.
    fn undo(&mut self, call: &Call, now: u64, outcome: &mut Outcome) {
        match call {
            Call::Start(_) => {
                self.phase = Phase::Starting {
                    at: now + RETRY_MS,
                    step: Start::FindNode,
                }
            }
            Call::KeepAlive { .. } => {
                self.keepalive_waiting = false;
                self.keepalive_at = now + RETRY_MS.min(self.ttl_ms / 3);
            }
            Call::Scan => {
                self.scanning = false;
                self.scan_at = now + self.scan_every_ms;
            }
            Call::Probe { .. } => {
                if let Some(former) = self.former.as_mut() {
                    former.waiting = false;
                    former.at = now + PROBE_MS;
                }
            }
            Call::Claim { .. } | Call::CountDead | Call::TrimDead | Call::Revoke => {}
            Call::Page { lease, .. } | Call::Release { lease } => {
                let page = matches!(call, Call::Page { .. });
                if let Some(claimed) = self.claimed_mut(*lease) {
                    claimed.busy = false;
                    claimed.retry_at = now + RETRY_MS;
                    if page {
                        claimed.page = (claimed.page / 2).max(1);
                    }
                }
            }
            Call::Puts { ids, lease } => self.puts_failed(ids, *lease, now, outcome),
            Call::Deletes(removals) => self.deletes_failed(removals, now),
            Call::DeadPuts(records) => self.dead_puts_failed(records, now),
        }
    }
}

/// The call's name in error messages.
fn call_name(call: &Call) -> &'static str {
    match call {
        Call::Start(Start::FindNode) => "the read of the node's former lease",
        Call::Probe { .. } => "the read of the node's former lease's time to live",
        Call::Revoke => "the revoke of the node's former lease",
        Call::Start(Start::Grant) => "the lease grant",
        Call::Start(Start::Register(_)) => "the replica's registration",
        Call::KeepAlive { .. } => "the lease keepalive",
        Call::Scan => "the scan for dead replicas",
        Call::Claim { .. } => "a claim of a dead replica's messages",
        Call::Page { .. } => "a page of claimed messages",
        Call::Release { .. } => "the release of a claimed lease",
        Call::CountDead | Call::TrimDead => "the trim of dead messages",
        Call::Puts { .. } => "a batch of message writes",
        Call::Deletes(_) => "a batch of message deletes",
        Call::DeadPuts(_) => "a batch of dead (replayable) messages",
    }
}

/// etcd's lease TTL in whole seconds (at least 1; etcd raises it to its minimum).
fn ttl_seconds(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms.div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

fn check_txn(body: &[u8]) -> Result<etcd::TxnAnswer, String> {
    etcd::parse_txn(body).map_err(|e| e.to_string())
}

mod lease;
mod messages;

#[cfg(test)]
mod tests;
