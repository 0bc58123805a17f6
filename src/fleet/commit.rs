//! One API write as a conversation with etcd (fleet mode), pure: [`Commit::start`] gives the
//! first txn, [`Commit::on_answer`] reads each answer and says what comes next. Every txn
//! compares the revisions it guessed; a failed one reads the keys instead, so the next round
//! guesses right (or the write is refused: limit, stale record, gone).

use crate::etcd::{self, Cmp, Compare, Op, OpAnswer, Request, Target, TxnAnswer};
use crate::fleet::keys::Keys;
use crate::subscription::Subscription;

/// Rounds one write may take before it gives up (other replicas keep winning).
pub const MAX_ROUNDS: u32 = 64;

/// What the API asks etcd to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new subscription, within `limit` API subscriptions for its consumer.
    Create { sub: Subscription, limit: usize },
    /// `after` replaces the record the API checked, which had `before_version`.
    Replace {
        after: Subscription,
        before_version: u64,
    },
    /// Deletes the record the API checked (`before_version`) and lowers its consumer's count.
    Delete {
        id: String,
        consumer: String,
        before_version: u64,
    },
}

impl Write {
    /// The subscription written.
    pub fn id(&self) -> &str {
        match self {
            Write::Create { sub, .. } | Write::Replace { after: sub, .. } => &sub.id,
            Write::Delete { id, .. } => id,
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
    /// etcd has a newer record than the one checked: apply it to the cache and handle the call
    /// again.
    Stale(Subscription),
    /// etcd has no such subscription.
    Gone,
    /// etcd could not be used; nothing was written. The reason names what went wrong.
    Unavailable(String),
}

/// The revisions (and count) the next txn compares against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Guess {
    sub_mod: i64,
    count_mod: i64,
    count: u64,
}

/// One write in progress.
#[derive(Debug)]
pub struct Commit {
    write: Write,
    sub_key: Vec<u8>,
    count_key: Vec<u8>,
    /// The record's JSON, for creates and replaces.
    record: Vec<u8>,
    /// Why the record could not be encoded (then nothing is ever written).
    broken: Option<String>,
    guess: Guess,
    rounds: u32,
}

impl Commit {
    /// The write and its first request. The first guess is "nothing there yet" (revision 0), so
    /// a replace or delete starts with a read.
    pub fn start(write: Write, keys: &Keys) -> (Commit, Request) {
        let id = write.id();
        let (consumer, record) = match &write {
            Write::Create { sub, .. } | Write::Replace { after: sub, .. } => {
                (sub.consumer.as_str(), Some(sub))
            }
            Write::Delete { consumer, .. } => (consumer.as_str(), None),
        };
        let encoded = record.map(serde_json::to_vec).transpose();
        let (record, broken) = match encoded {
            Ok(bytes) => (bytes.unwrap_or_default(), None),
            Err(e) => (
                Vec::new(),
                Some(format!("the record cannot be encoded: {e}")),
            ),
        };
        let commit = Commit {
            sub_key: keys.subscription(id),
            count_key: keys.count(consumer),
            write,
            record,
            broken,
            guess: Guess::default(),
            rounds: 1,
        };
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
        match status {
            Some("200") => {}
            Some(other) => return Err(format!("answered HTTP {other}")),
            None => return Err("did not answer (timeout or reset)".into()),
        }
        let answer = etcd::parse_txn(body).map_err(|e| e.to_string())?;
        if answer.succeeded {
            return Ok(Step::Committed {
                revision: answer.revision,
            });
        }
        let step = match &self.write {
            Write::Create { limit, .. } => self.create_failed(&answer, *limit)?,
            Write::Replace { before_version, .. } => {
                self.replace_failed(&answer, *before_version)?
            }
            Write::Delete { before_version, .. } => self.delete_failed(&answer, *before_version)?,
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

    /// None: retry with the new guess.
    fn create_failed(&mut self, answer: &TxnAnswer, limit: usize) -> Result<Option<Step>, String> {
        let [count] = ranges::<1>(answer)?;
        let (count, count_mod) = self.count_of(count)?;
        if count_mod == self.guess.count_mod {
            // The count was as guessed, so the id is what exists.
            return Err("the new subscription's id is already taken in etcd".into());
        }
        if count >= u64::try_from(limit).unwrap_or(u64::MAX) {
            return Ok(Some(Step::LimitReached(count)));
        }
        self.guess.count = count;
        self.guess.count_mod = count_mod;
        Ok(None)
    }

    fn replace_failed(
        &mut self,
        answer: &TxnAnswer,
        before_version: u64,
    ) -> Result<Option<Step>, String> {
        let [sub] = ranges::<1>(answer)?;
        let Some((record, sub_mod)) = self.record_of(sub)? else {
            return Ok(Some(Step::Gone));
        };
        if record.version != before_version {
            return Ok(Some(Step::Stale(record)));
        }
        self.guess.sub_mod = sub_mod;
        Ok(None)
    }

    fn delete_failed(
        &mut self,
        answer: &TxnAnswer,
        before_version: u64,
    ) -> Result<Option<Step>, String> {
        let [sub, count] = ranges::<2>(answer)?;
        let Some((record, sub_mod)) = self.record_of(sub)? else {
            return Ok(Some(Step::Gone));
        };
        if record.version != before_version {
            return Ok(Some(Step::Stale(record)));
        }
        let (count, count_mod) = self.count_of(count)?;
        self.guess = Guess {
            sub_mod,
            count_mod,
            count,
        };
        Ok(None)
    }

    /// The record etcd holds and its mod_revision; None when there is none.
    fn record_of(&self, range: &etcd::RangeAnswer) -> Result<Option<(Subscription, i64)>, String> {
        let Some(kv) = range.kvs.first() else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(&self.sub_key);
        let record = Subscription::from_json(&kv.value)
            .ok_or_else(|| format!("`{name}` holds no subscription record"))?;
        if kv.key != self.sub_key || record.id != self.write.id() {
            return Err(format!("`{name}` holds the record of `{}`", record.id));
        }
        Ok(Some((record, kv.mod_revision)))
    }

    /// The consumer's count and its mod_revision ((0, 0) when there is none).
    fn count_of(&self, range: &etcd::RangeAnswer) -> Result<(u64, i64), String> {
        let Some(kv) = range.kvs.first() else {
            return Ok((0, 0));
        };
        let name = String::from_utf8_lossy(&self.count_key);
        let count = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                let value = String::from_utf8_lossy(&kv.value);
                format!("`{name}` holds `{value}`, not a decimal count")
            })?;
        if kv.mod_revision == 0 {
            return Err(format!("`{name}` has no mod_revision"));
        }
        Ok((count, kv.mod_revision))
    }

    /// The txn for the current guess.
    fn request(&self) -> Request {
        let g = self.guess;
        let sub = || self.sub_key.clone();
        let count = || self.count_key.clone();
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
        let range = |key: Vec<u8>| Op::Range {
            key,
            prefix: false,
            limit: 0,
        };
        // `version > 0`: the record exists (a replace or delete never recreates one).
        let exists = compare(sub(), Target::Version, Cmp::Greater, 0);
        let sub_is = compare(sub(), Target::Mod, Cmp::Equal, g.sub_mod);
        match &self.write {
            Write::Create { .. } => etcd::txn(
                &[
                    compare(sub(), Target::Create, Cmp::Equal, 0),
                    compare(count(), Target::Mod, Cmp::Equal, g.count_mod),
                ],
                &[
                    put(sub(), self.record.clone()),
                    put(count(), g.count.saturating_add(1).to_string().into_bytes()),
                ],
                &[range(count())],
            ),
            // A static subscription is defined on every replica: its first change writes it.
            Write::Replace { after, .. } if after.is_static => etcd::txn(
                &[sub_is],
                &[put(sub(), self.record.clone())],
                &[range(sub())],
            ),
            Write::Replace { .. } => etcd::txn(
                &[exists, sub_is],
                &[put(sub(), self.record.clone())],
                &[range(sub())],
            ),
            Write::Delete { .. } => etcd::txn(
                &[
                    exists,
                    sub_is,
                    compare(count(), Target::Mod, Cmp::Equal, g.count_mod),
                ],
                &[
                    Op::Delete {
                        key: sub(),
                        prefix: false,
                    },
                    put(count(), g.count.saturating_sub(1).to_string().into_bytes()),
                ],
                &[range(sub()), range(count())],
            ),
        }
    }
}

/// The `N` range answers of a failed txn (its failure branch is all ranges).
fn ranges<const N: usize>(answer: &TxnAnswer) -> Result<[&etcd::RangeAnswer; N], String> {
    let found: Vec<&etcd::RangeAnswer> = answer
        .responses
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            OpAnswer::Range(range) => Ok(range),
            _ => Err(format!(
                "etcd's answer: the failed txn's `responses[{i}]` is not a range answer"
            )),
        })
        .collect::<Result<_, _>>()?;
    let len = found.len();
    found
        .try_into()
        .map_err(|_| format!("etcd's answer: the failed txn has {len} responses, not {N}"))
}

#[cfg(test)]
mod tests;
