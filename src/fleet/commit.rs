//! One API write as a conversation with etcd (fleet mode), pure: [`Commit::start`] gives the
//! first request, [`Commit::on_answer`] reads each answer and says what comes next. Every txn
//! compares what it guessed; a failed one reads the keys instead, so the next round guesses
//! right (or the write is refused: limit, stale record, gone).
//!
//! The per-consumer limit is kept with slots, `P/slot/<consumer>/<n>` holding a subscription id
//! ([`crate::fleet::keys`]). A create reads which slots are taken (keys only), picks a free one
//! at random (from a hash of its random id and the round, so concurrent creates spread over the
//! free slots) and writes the slot and the record in one txn that holds only while both are
//! absent: creates contend only when they pick the same slot, and the loser's failure branch
//! reads the slots again for its next pick. A delete removes the record (compared on its mod
//! revision) and the slot holding its id, if there is one. A replace touches no slot.
//!
//! `api.max_subscriptions` is kept the same way with cap slots, `P/cap/<n>` (n zero-padded, so
//! key order is number order), taken in the same txn: the record, its consumer slot and its cap
//! slot are written together or not at all, so no crash leaves a slot without its record. The
//! registry may hold 100,000 of them, more than an answer may carry, so a create reads counts
//! and windows: how many cap slots and records there are (count-only: at or over the limit, 409),
//! how many slots lie at or above the end of the usable range (only after a lowered limit), and
//! the taken slots (keys only, [`WINDOW`] at most) from a random point of that range, wrapping
//! to its start; it takes a free slot of the windows at random. A create that lost its slot
//! reads another window. The consumer's slot holds the cap slot's number beside the id, so the
//! delete frees both.

use crate::fleet::etcd::{
    self, Cmp, Compare, Op, OpAnswer, RangeAnswer, RangeQuery, Request, Target, TxnAnswer,
};
use crate::fleet::keys::{self, Keys};
use crate::fleet::statics::{self, Shared};
use crate::fleet::vault::{Record, Vault};
use crate::model::subscription::Subscription;
use crate::support::ids::RandomSource;

/// Rounds one write may take before it gives up (other replicas keep winning).
pub const MAX_ROUNDS: u32 = 64;

/// Cap slots a create's window lists at most, on each side of its random point: ~110 bytes a
/// key in etcd's keys-only JSON, ~56 KB for both, well inside the answer cap the shipped
/// wiring sets (256 KiB, `http.async_response_buffer_limit`).
pub const WINDOW: u64 = 256;

/// What the API asks etcd to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new subscription, within `limit` API subscriptions for its consumer and `cap` in all
    /// (`api.max_subscriptions`).
    Create {
        sub: Subscription,
        limit: usize,
        cap: usize,
    },
    /// `after` replaces the record the API checked, which had `before_version`.
    Replace {
        after: Subscription,
        before_version: u64,
    },
    /// Deletes the record the API checked (`before_version`) and frees its consumer's slot.
    Delete {
        id: String,
        consumer: String,
        before_version: u64,
    },
    /// The status of a static subscription, `after` (its definition stays the configuration's:
    /// only the status goes to etcd, see [`crate::fleet::statics`]). The last writer wins.
    Static { after: Subscription },
    /// Every portal session of `consumer` minted up to `up_to_ms` ends
    /// ([`crate::fleet::revocations`]). The last writer wins.
    Revoke { consumer: String, up_to_ms: u64 },
}

impl Write {
    /// The subscription written.
    pub fn id(&self) -> &str {
        match self {
            Write::Create { sub, .. }
            | Write::Replace { after: sub, .. }
            | Write::Static { after: sub } => &sub.id,
            Write::Delete { id, .. } => id,
            Write::Revoke { consumer, .. } => consumer,
        }
    }
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this request and report its answer.
    Send(Request),
    /// etcd has the write, at `revision`.
    Committed { revision: i64 },
    /// The consumer already has this many subscriptions (the limit or more).
    LimitReached(u64),
    /// The registry already holds this many API subscriptions (`api.max_subscriptions` or more).
    RegistryFull(u64),
    /// etcd has a newer record than the one checked (its `mod_revision` beside it): apply it to
    /// the cache and handle the call again.
    Stale(Subscription, i64),
    /// etcd has no such subscription.
    Gone,
    /// etcd could not be used; nothing was written. The reason names what went wrong.
    Unavailable(String),
}

/// One write in progress.
#[derive(Debug)]
pub struct Commit {
    write: Write,
    sub_key: Vec<u8>,
    /// The prefix of the subscription's delivery logs (a delete takes them along).
    logs_key: Vec<u8>,
    /// The prefix of the consumer's slots.
    slots: Vec<u8>,
    /// The slot the next txn takes (a create) or frees (a delete, when one holds the id).
    slot: Option<Vec<u8>>,
    /// The cap slot the next txn takes (a create) or frees (a delete, when its consumer slot
    /// names one).
    cap_slot: Option<u64>,
    /// The cap slots a create's next read lists: from `.0` up to `.1`, then from 0 up to `.0`;
    /// `.1` is the end of the usable range (the limit, unless it was lowered below slots taken).
    window: (u64, u64),
    keys: Keys,
    /// The record as etcd keeps it (its secrets sealed), for creates and replaces.
    record: Vec<u8>,
    /// How records read back are opened.
    vault: Vault,
    /// Why the record could not be encoded (then nothing is ever written).
    broken: Option<String>,
    /// The record's mod_revision the next txn compares (0, "absent", until read).
    sub_mod: i64,
    rounds: u32,
    /// A create's write got no answer and its record is being read back: the txn may have
    /// committed, and a 503 "nothing was changed" would be false (the client would create it
    /// twice).
    verifying: bool,
}

impl Commit {
    /// The write and its first request: a create reads its consumer's slots; a replace or
    /// delete sends a txn guessing "nothing there yet" (revision 0), which reads the record.
    /// `rng` gives the nonces the record's secrets are sealed with.
    pub fn start(
        write: Write,
        keys: &Keys,
        vault: &Vault,
        rng: &mut dyn RandomSource,
    ) -> (Commit, Request) {
        let id = write.id();
        let (consumer, record) = match &write {
            Write::Create { sub, .. } | Write::Replace { after: sub, .. } => {
                (sub.consumer.as_str(), Some(sub))
            }
            Write::Delete { consumer, .. } => (consumer.as_str(), None),
            Write::Static { after } => (after.consumer.as_str(), None),
            Write::Revoke { consumer, .. } => (consumer.as_str(), None),
        };
        let encoded = match &write {
            Write::Static { after } => Ok(Some(Shared::of(after).encode())),
            Write::Revoke { up_to_ms, .. } => Ok(Some(up_to_ms.to_string().into_bytes())),
            _ => record.map(|sub| vault.seal_record(rng, sub)).transpose(),
        };
        let sub_key = match &write {
            Write::Static { after } => statics::status_key(keys, after),
            Write::Revoke { consumer, .. } => keys.revoked(consumer),
            _ => keys.subscription(id),
        };
        let (record, broken) = match encoded {
            Ok(bytes) => (bytes.unwrap_or_default(), None),
            Err(why) => (Vec::new(), Some(why)),
        };
        let mut commit = Commit {
            sub_key,
            logs_key: keys.logs(id),
            slots: keys.slots(consumer),
            write,
            slot: None,
            cap_slot: None,
            window: (0, 0),
            keys: keys.clone(),
            record,
            vault: vault.clone(),
            broken,
            sub_mod: 0,
            rounds: 1,
            verifying: false,
        };
        commit.next_window(commit.cap());
        let request = match commit.broken {
            // A harmless read: its answer is refused in `on_answer`.
            Some(_) => etcd::range(&commit.sub_key),
            None => commit.request(),
        };
        (commit, request)
    }

    pub fn write(&self) -> &Write {
        &self.write
    }

    /// Reads the answer to the last request: `status` is its `:status` (None: no answer, as on a
    /// timeout or reset).
    pub fn on_answer(&mut self, status: Option<&str>, body: &[u8]) -> Step {
        match self.advance(status, body) {
            Ok(step) => step,
            Err(reason) => Step::Unavailable(reason),
        }
    }

    fn advance(&mut self, status: Option<&str>, body: &[u8]) -> Result<Step, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if std::mem::take(&mut self.verifying) {
            return self.read_back(status, body);
        }
        let wrote = matches!(self.write, Write::Create { .. }) && !self.reading();
        match status {
            Some("200") => {}
            Some(other) => return Err(format!("answered HTTP {other}")),
            // The create's txn may have committed: read its record back before answering.
            None if wrote => {
                self.verifying = true;
                return Ok(Step::Send(etcd::range(&self.sub_key)));
            }
            None => return Err("did not answer (timeout or reset)".into()),
        }
        let answer = etcd::parse_txn(body).map_err(|e| e.to_string())?;
        // A create's txn only reads until it has both slots.
        let read = self.reading();
        if answer.succeeded && !read {
            return Ok(Step::Committed {
                revision: answer.revision,
            });
        }
        let step = match &self.write {
            Write::Create { .. } => self.create_failed(&answer)?,
            Write::Replace { before_version, .. } => {
                self.replace_failed(&answer, *before_version)?
            }
            Write::Delete { before_version, .. } => self.delete_failed(&answer, *before_version)?,
            Write::Static { .. } | Write::Revoke { .. } => {
                return Err("etcd did not run the write".into())
            }
        };
        if let Some(step) = step {
            return Ok(step);
        }
        if self.rounds >= MAX_ROUNDS {
            return Err(format!(
                "too much contention ({MAX_ROUNDS} rounds lost to other writers)"
            ));
        }
        self.rounds += 1;
        Ok(Step::Send(self.request()))
    }

    /// A create whose txn only reads: it has not picked both slots yet.
    /// The answer to reading a create's record back after its write got no answer: committed
    /// when etcd holds exactly the record written (its id is this create's alone).
    fn read_back(&self, status: Option<&str>, body: &[u8]) -> Result<Step, String> {
        let lost = "did not answer (timeout or reset)";
        if status != Some("200") {
            return Err(format!(
                "{lost}, and whether it was written could not be read"
            ));
        }
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        match answer.kvs.first() {
            Some(kv) if kv.value == self.record => Ok(Step::Committed {
                revision: kv.mod_revision,
            }),
            _ => Err(format!("{lost}; it was not written")),
        }
    }

    fn reading(&self) -> bool {
        matches!(self.write, Write::Create { .. })
            && (self.slot.is_none() || self.cap_slot.is_none())
    }

    /// `api.max_subscriptions` of a create (0 for other writes).
    fn cap(&self) -> u64 {
        match &self.write {
            Write::Create { cap, .. } => u64::try_from(*cap).unwrap_or(u64::MAX),
            _ => 0,
        }
    }

    /// The slots read (None: send a txn taking both, or read again).
    fn create_failed(&mut self, answer: &TxnAnswer) -> Result<Option<Step>, String> {
        let found = ranges(answer)?;
        let [slots, sub, caps, records, above, window, wrapped] = found.as_slice() else {
            return Err(miscounted(found.len(), 7));
        };
        if !sub.kvs.is_empty() {
            return Err("the new subscription's id is already taken in etcd".into());
        }
        (self.slot, self.cap_slot) = (None, None);
        if let Some(refused) = self.take_slot(slots)? {
            return Ok(Some(refused));
        }
        let count = caps.count.max(records.count);
        let count = u64::try_from(count).unwrap_or(0);
        if count >= self.cap() {
            return Ok(Some(Step::RegistryFull(count)));
        }
        let above = u64::try_from(above.count).unwrap_or(u64::MAX);
        self.take_cap_slot(above, window, wrapped)?;
        Ok(None)
    }

    /// Picks a free cap slot in the windows read (`cap_slot`), or sets the next read's window:
    /// the usable range's end found again when slots at or above it make it too long, another
    /// window when these were full. Either way the next txn's failure branch reads a new
    /// window, so a create that loses its slot looks elsewhere.
    fn take_cap_slot(
        &mut self,
        above: u64,
        window: &RangeAnswer,
        wrapped: &RangeAnswer,
    ) -> Result<(), String> {
        let (cap, (start, end)) = (self.cap(), self.window);
        // Creates take slots below `end` only, so with `end` + the slots at or above it within
        // the cap, no race passes the cap (as [`usable`] for the per-consumer slots). It is
        // too long only after the cap was lowered below slots taken: a shorter end is tried,
        // down to the largest that fits.
        if end.saturating_add(above) > cap {
            self.next_window(cap.saturating_sub(above));
            return Ok(());
        }
        let spans = [
            self.span(window, start, end)?,
            self.span(wrapped, 0, start)?,
        ];
        let free: u64 = spans.iter().map(Span::free).sum();
        if free == 0 {
            // All of `0..end` taken with fewer than the cap in all: slots above were freed
            // since `end` was found, which is found again from the cap down.
            let whole = !window.more && !wrapped.more;
            self.next_window(if whole { cap } else { end });
            return Ok(());
        }
        let mut pick = spread(self.write.id(), self.rounds ^ PICK) % free;
        for span in &spans {
            if pick < span.free() {
                self.cap_slot = Some(span.nth_free(pick));
                break;
            }
            pick -= span.free();
        }
        self.next_window(end);
        Ok(())
    }

    /// The window the next read lists: from a random point below `end` (the usable end).
    fn next_window(&mut self, end: u64) {
        let start = spread(self.write.id(), self.rounds ^ START) % end.max(1);
        self.window = (start, end);
    }

    /// The cap slots a window read lists, all in `from..to`; a window cut short by the limit
    /// covers up to its last key.
    fn span(&self, range: &RangeAnswer, from: u64, to: u64) -> Result<Span, String> {
        let mut taken = Vec::with_capacity(range.kvs.len());
        for kv in &range.kvs {
            let n = self.keys.cap_number(&kv.key);
            let n = n.filter(|n| (from..to).contains(n)).ok_or_else(|| {
                format!("`{}` is not a cap slot of the range read", lossy(&kv.key))
            })?;
            taken.push(n);
        }
        taken.sort_unstable();
        taken.dedup();
        let to = match (range.more, taken.last()) {
            (true, Some(last)) => last.saturating_add(1),
            _ => to,
        };
        Ok(Span { from, to, taken })
    }

    /// Picks a free slot for the create's next txn (None), or finds the consumer at its limit.
    fn take_slot(&mut self, range: &RangeAnswer) -> Result<Option<Step>, String> {
        let limit = match &self.write {
            Write::Create { limit, .. } => u64::try_from(*limit).unwrap_or(u64::MAX),
            // Only creates take slots.
            _ => 0,
        };
        let mut taken = Vec::new();
        for kv in &range.kvs {
            if let Some(n) = self.slot_number(&kv.key)? {
                taken.push(n);
            }
        }
        let count = taken.len() as u64;
        if count >= limit {
            return Ok(Some(Step::LimitReached(count)));
        }
        // How many slots are taken up to `n`, or from `n` on.
        let upto = |n: u64| taken.iter().filter(|t| **t <= n).count() as u64;
        let from = |n: u64| taken.iter().filter(|t| **t >= n).count() as u64;
        // The slots below `usable` that are free: one at least, since fewer than `limit` are
        // taken. The pick-th of them is the first n with n = pick + (slots taken up to n).
        let usable = usable(limit, from);
        let free = usable - (count - from(usable));
        let pick = spread(self.write.id(), self.rounds) % free.max(1);
        let mut n = pick;
        loop {
            let next = pick + upto(n);
            if next == n {
                break;
            }
            n = next;
        }
        let mut key = self.slots.clone();
        key.extend_from_slice(n.to_string().as_bytes());
        self.slot = Some(key);
        Ok(None)
    }

    fn replace_failed(
        &mut self,
        answer: &TxnAnswer,
        before_version: u64,
    ) -> Result<Option<Step>, String> {
        let found = ranges(answer)?;
        let [sub] = found.as_slice() else {
            return Err(miscounted(found.len(), 1));
        };
        let Some((record, sub_mod)) = self.record_of(sub)? else {
            return Ok(Some(Step::Gone));
        };
        if record.version != before_version {
            return Ok(Some(Step::Stale(record, sub_mod)));
        }
        self.sub_mod = sub_mod;
        Ok(None)
    }

    fn delete_failed(
        &mut self,
        answer: &TxnAnswer,
        before_version: u64,
    ) -> Result<Option<Step>, String> {
        let found = ranges(answer)?;
        let [sub, slots] = found.as_slice() else {
            return Err(miscounted(found.len(), 2));
        };
        let Some((record, sub_mod)) = self.record_of(sub)? else {
            return Ok(Some(Step::Gone));
        };
        if record.version != before_version {
            return Ok(Some(Step::Stale(record, sub_mod)));
        }
        self.sub_mod = sub_mod;
        // The slot holding the id, and the cap slot it names; none (or only odd keys or
        // values) does not keep the record.
        let id = self.write.id();
        let held = slots.kvs.iter().find_map(|kv| {
            let (holder, cap) = slot_value(&kv.value)?;
            (holder == id).then(|| (kv.key.clone(), cap))
        });
        (self.slot, self.cap_slot) = match held {
            Some((key, cap)) => (Some(key), cap),
            None => (None, None),
        };
        Ok(None)
    }

    /// The record etcd holds and its mod_revision; None when there is none.
    fn record_of(&self, range: &etcd::RangeAnswer) -> Result<Option<(Subscription, i64)>, String> {
        let Some(kv) = range.kvs.first() else {
            return Ok(None);
        };
        let name = lossy(&self.sub_key);
        let record = match self.vault.open_record(&kv.value) {
            Some(Record::Readable(record)) => record,
            Some(Record::Unreadable(_, why)) => {
                return Err(format!("`{name}`'s signing secrets cannot be read: {why}"))
            }
            None => return Err(format!("`{name}` holds no subscription record")),
        };
        if kv.key != self.sub_key || record.id != self.write.id() {
            return Err(format!("`{name}` holds the record of `{}`", record.id));
        }
        Ok(Some((record, kv.mod_revision)))
    }

    /// The number of the consumer's slot `key` (None: the slot of another consumer, whose name
    /// is this one's, a `/` and more).
    fn slot_number(&self, key: &[u8]) -> Result<Option<u64>, String> {
        let name = key.strip_prefix(self.slots.as_slice());
        if name.is_some_and(|name| name.contains(&b'/')) {
            return Ok(None);
        }
        // Decimal as written here: digits only, no leading zero.
        let digits = name.filter(|d| {
            d.iter().all(u8::is_ascii_digit) && (d.len() == 1 || d.first() != Some(&b'0'))
        });
        digits
            .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a numbered slot", lossy(key)))
    }

    /// The consumer's slots, with their ids or not.
    fn read_slots(&self, keys_only: bool) -> RangeQuery {
        RangeQuery {
            key: self.slots.clone(),
            prefix: true,
            keys_only,
            ..RangeQuery::default()
        }
    }

    /// What a create reads (its first txn, and the failure branch of each that takes slots):
    /// the consumer's slots, the record, the counts of cap slots and records, the count of cap
    /// slots at or above the window's end, and the window (keys only).
    fn create_reads(&self) -> Vec<Op> {
        let (start, end) = self.window;
        let caps = self.keys.caps();
        let count = |key: Vec<u8>, prefix: bool, end: Vec<u8>| {
            Op::Query(RangeQuery {
                key,
                prefix,
                end,
                count_only: true,
                ..RangeQuery::default()
            })
        };
        let window = |key: Vec<u8>, end: Vec<u8>| {
            Op::Query(RangeQuery {
                key,
                end,
                limit: WINDOW,
                keys_only: true,
                ..RangeQuery::default()
            })
        };
        vec![
            Op::Query(self.read_slots(true)),
            Op::Range {
                key: self.sub_key.clone(),
                prefix: false,
                limit: 0,
            },
            count(caps.clone(), true, Vec::new()),
            count(self.keys.all(keys::SUB), true, Vec::new()),
            count(self.keys.cap(end), false, etcd::prefix_end(&caps)),
            window(self.keys.cap(start), self.keys.cap(end)),
            window(caps, self.keys.cap(start)),
        ]
    }

    /// The txn for the current guess.
    fn request(&self) -> Request {
        let sub = || self.sub_key.clone();
        let compare = |key: Vec<u8>, target, cmp, value| Compare {
            key,
            target,
            cmp,
            value,
        };
        let put = |key: Vec<u8>, value: Vec<u8>| Op::Put {
            key,
            value,
            lease: 0,
        };
        let delete = |key: Vec<u8>| Op::Delete { key, prefix: false };
        let range = |key: Vec<u8>| Op::Range {
            key,
            prefix: false,
            limit: 0,
        };
        // `version > 0`: the record exists (a replace or delete never recreates one).
        let exists = compare(sub(), Target::Version, Cmp::Greater, 0);
        let sub_is = compare(sub(), Target::Mod, Cmp::Equal, self.sub_mod);
        let slot = self.slot.clone();
        match &self.write {
            Write::Create { sub: created, .. } => {
                let reads = self.create_reads();
                let (Some(slot), Some(n)) = (slot, self.cap_slot) else {
                    return etcd::txn(&[], &reads, &[]);
                };
                let cap = self.keys.cap(n);
                let id = created.id.clone().into_bytes();
                etcd::txn(
                    &[
                        compare(slot.clone(), Target::Create, Cmp::Equal, 0),
                        compare(cap.clone(), Target::Create, Cmp::Equal, 0),
                        compare(sub(), Target::Create, Cmp::Equal, 0),
                    ],
                    &[
                        put(sub(), self.record.clone()),
                        put(slot, format!("{} {n}", created.id).into_bytes()),
                        put(cap, id),
                    ],
                    &reads,
                )
            }
            Write::Static { .. } | Write::Revoke { .. } => {
                etcd::txn(&[], &[put(sub(), self.record.clone())], &[])
            }
            Write::Replace { .. } => etcd::txn(
                &[exists, sub_is],
                &[put(sub(), self.record.clone())],
                &[range(sub())],
            ),
            Write::Delete { .. } => {
                let logs = Op::Delete {
                    key: self.logs_key.clone(),
                    prefix: true,
                };
                let mut success = vec![delete(sub()), logs];
                if let Some(slot) = slot {
                    success.push(delete(slot));
                }
                if let Some(n) = self.cap_slot {
                    success.push(delete(self.keys.cap(n)));
                }
                etcd::txn(
                    &[exists, sub_is],
                    &success,
                    &[range(sub()), Op::Query(self.read_slots(false))],
                )
            }
        }
    }
}

/// How many slots (`0..m`) a create may pick from: the largest `m` ≤ `limit` with `m` plus the
/// slots taken from `m` on (`from(m)`) ≤ `limit`; the limit itself unless it was lowered below
/// slots taken before. Fewer than `limit` are taken. Creates racing each take a free slot below
/// their `m`, which keeps `m` (deletes only raise it), so the consumer never holds more than
/// `limit` subscriptions, old slots included.
fn usable(limit: u64, from: impl Fn(u64) -> u64) -> u64 {
    let (mut low, mut high) = (0, limit);
    while low < high {
        let mid = high - (high - low) / 2;
        if mid.saturating_add(from(mid)) <= limit {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// The cap slots a window read found taken (ascending), in `from..to`.
struct Span {
    from: u64,
    to: u64,
    taken: Vec<u64>,
}

impl Span {
    fn free(&self) -> u64 {
        let len = self.to.saturating_sub(self.from);
        len.saturating_sub(self.taken.len() as u64)
    }

    /// The `pick`-th free slot (`pick` below [`Span::free`]).
    fn nth_free(&self, pick: u64) -> u64 {
        let mut n = self.from.saturating_add(pick);
        for taken in &self.taken {
            if *taken > n {
                break;
            }
            n = n.saturating_add(1);
        }
        n
    }
}

/// A consumer slot's value: the id, and the number of its cap slot when it has one.
fn slot_value(value: &[u8]) -> Option<(&str, Option<u64>)> {
    let value = std::str::from_utf8(value).ok()?;
    Some(match value.split_once(' ') {
        Some((id, cap)) => (id, cap.parse().ok()),
        None => (value, None),
    })
}

/// What [`spread`]'s round is salted with: the window's random point, the cap slot picked.
const START: u32 = 1 << 20;
const PICK: u32 = 2 << 20;

/// Spreads concurrent creates over the free slots: a hash of the new subscription's (random)
/// id and the round, so a create that lost its slot also tries elsewhere next time.
fn spread(id: &str, round: u32) -> u64 {
    let mut h = u64::from(crate::support::hashing::fnv1a(id)) ^ (u64::from(round) << 32);
    // splitmix64's finalizer: every bit of the input moves every bit of the output.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// The range answers of a failed txn (a create's first txn: its success branch; both are all
/// ranges).
fn ranges(answer: &TxnAnswer) -> Result<Vec<&RangeAnswer>, String> {
    answer
        .responses
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            OpAnswer::Range(range) => Ok(range),
            _ => Err(format!(
                "etcd's answer: the txn's `responses[{i}]` is not a range answer"
            )),
        })
        .collect()
}

/// Why `found` ranges are not the `n` a txn reads.
fn miscounted(found: usize, n: usize) -> String {
    format!("etcd's answer: the txn has {found} responses, not {n}")
}

#[cfg(test)]
mod tests;
