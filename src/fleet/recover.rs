//! `POST .../recover` in fleet mode: every kept copy of one subscription's messages detected
//! since a time, wherever the replica that kept it is (alive or not), taken from etcd so that
//! one recover sends each once across the fleet.
//!
//! `P/dead/<webhook-id>` names no subscription, so the copies are found by a scan of `P/dead/`
//! with values, a page at a time in key order (each copy is opened and decoded to see its
//! subscription and detection time). The scan is bounded: replicas trim `P/dead/` to
//! `delivery.max_replay` copies fleet-wide, and at most `max` are kept from it (the oldest;
//! held with one page more while a page is read). No index is kept
//! beside the copies, so nothing can disagree with them when a replica dies between two writes.
//! Pages start at [`FIRST_PAGE`] copies and halve when etcd's answer does not arrive (an answer
//! past Envoy's 256 KiB buffer is reset), down to one; a page of one that fails gives up.
//!
//! The copies found are then *taken*: deleted in txns of single-key deletes, each answering
//! whether this call deleted it. Only the call that deleted a copy sends it (the dispatcher
//! journals it again under `P/msg/` before its attempt, as for a retry), so two recovers through
//! two replicas, or a recover and etcd's trim, never send a copy twice.

use crate::fleet::etcd::{self, OpAnswer, RangeQuery, Request};
use crate::fleet::keys::{Keys, DEAD};
use crate::fleet::stored;
use crate::fleet::vault::Vault;

/// Copies asked per page at first.
pub const FIRST_PAGE: u64 = 64;
/// Deletes per take txn (etcd's default `--max-txn-ops` is 128).
pub const TAKE_BATCH: usize = 64;

/// One copy found: when it was detected, etcd's create revision (the order of copies detected
/// in the same millisecond), its key and its stored form (opened).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    created_ms: u64,
    create_revision: i64,
    key: Vec<u8>,
    webhook_id: String,
    stored: Vec<u8>,
}

/// A copy this call took: send it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub webhook_id: String,
    /// The stored message (as [`crate::fleet::stored::encode`] writes it), opened.
    pub stored: Vec<u8>,
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request and hand its answer to [`Recovery::on_answer`].
    Send(Request),
    /// Done: the copies this call took, in detection order; `unreadable` copies of the scan
    /// could not be opened or decoded (left in etcd).
    Done { taken: Vec<Taken>, unreadable: u64 },
    /// etcd could not be read (why); nothing was taken.
    Unavailable(String),
}

/// The scan and take of one recover.
#[derive(Debug)]
pub struct Recovery {
    keys: Keys,
    subscription_id: String,
    since_ms: u64,
    max: usize,
    page: u64,
    /// The next key to scan from; `None` once the scan is over.
    next: Option<Vec<u8>>,
    found: Vec<Found>,
    /// Copies whose take txn is asked (the last batch sent).
    taking: Vec<Found>,
    taken: Vec<Found>,
    unreadable: u64,
}

impl Recovery {
    /// Starts the scan for `subscription_id`'s copies detected at or after `since_ms`, keeping
    /// at most `max` of them (the oldest first once sorted).
    pub fn start(keys: &Keys, subscription_id: &str, since_ms: u64, max: usize) -> (Self, Request) {
        let recovery = Recovery {
            keys: keys.clone(),
            subscription_id: subscription_id.to_string(),
            since_ms,
            max,
            page: FIRST_PAGE,
            next: Some(keys.all(DEAD)),
            found: Vec::new(),
            taking: Vec::new(),
            taken: Vec::new(),
            unreadable: 0,
        };
        let request = recovery.scan_request(&keys.all(DEAD));
        (recovery, request)
    }

    fn scan_request(&self, from: &[u8]) -> Request {
        etcd::range_query(&RangeQuery {
            key: from.to_vec(),
            end: etcd::prefix_end(&self.keys.all(DEAD)),
            limit: self.page,
            ..RangeQuery::default()
        })
    }

    /// Takes etcd's answer to the last request sent (`status` none: no answer).
    pub fn on_answer(&mut self, vault: &Vault, status: Option<&str>, body: &[u8]) -> Step {
        match self.next.clone() {
            Some(from) => self.on_scan(vault, &from, status, body),
            None => self.on_take(status, body),
        }
    }

    fn on_scan(&mut self, vault: &Vault, from: &[u8], status: Option<&str>, body: &[u8]) -> Step {
        let answer = match (status, etcd::parse_range(body)) {
            (Some("200"), Ok(answer)) => answer,
            (Some("200"), Err(e)) => return Step::Unavailable(e.to_string()),
            (Some(other), _) => return Step::Unavailable(format!("answered HTTP {other}")),
            (None, _) if self.page > 1 => {
                // Likely an answer past Envoy's buffer: ask again for half as many.
                log::info!(
                    "proxy-webhooks: recover: no answer to a page of {} kept copies (past Envoy's answer buffer?); asking for {}",
                    self.page,
                    self.page / 2
                );
                self.page /= 2;
                return Step::Send(self.scan_request(from));
            }
            (None, _) => return Step::Unavailable("did not answer (timeout or reset)".into()),
        };
        for kv in &answer.kvs {
            self.consider(vault, kv);
        }
        // Bounded while scanning: at most `max` plus one page, the oldest kept.
        self.found
            .sort_by_key(|f| (f.created_ms, f.create_revision));
        self.found.truncate(self.max);
        match answer.kvs.last().filter(|_| answer.more) {
            Some(last) => {
                let mut after = last.key.clone();
                after.push(0);
                self.next = Some(after.clone());
                Step::Send(self.scan_request(&after))
            }
            None => {
                self.next = None;
                self.found.reverse(); // taken from the end: oldest first
                self.take_next()
            }
        }
    }

    /// Keeps `kv` when it is a copy of the subscription's detected since `since_ms`.
    fn consider(&mut self, vault: &Vault, kv: &etcd::Kv) {
        let Some(webhook_id) = self.keys.name_in(DEAD, &kv.key) else {
            return;
        };
        let opened = vault.open_message(webhook_id, &kv.value).ok();
        let Some(decoded) = opened.as_deref().and_then(stored::decode) else {
            self.unreadable += 1;
            return;
        };
        if decoded.subscription_id != self.subscription_id || decoded.created_ms < self.since_ms {
            return;
        }
        self.found.push(Found {
            created_ms: decoded.created_ms,
            create_revision: kv.create_revision,
            key: kv.key.clone(),
            webhook_id: webhook_id.to_string(),
            stored: opened.unwrap_or_default(),
        });
    }

    /// The next take txn, or done.
    fn take_next(&mut self) -> Step {
        let n = self.found.len().min(TAKE_BATCH);
        let at = self.found.len() - n;
        self.taking = self.found.split_off(at);
        self.taking.reverse();
        if self.taking.is_empty() {
            let taken = std::mem::take(&mut self.taken)
                .into_iter()
                .map(|f| Taken {
                    webhook_id: f.webhook_id,
                    stored: f.stored,
                })
                .collect();
            return Step::Done {
                taken,
                unreadable: self.unreadable,
            };
        }
        let ops: Vec<etcd::Op> = self
            .taking
            .iter()
            .map(|f| etcd::Op::Delete {
                key: f.key.clone(),
                prefix: false,
            })
            .collect();
        Step::Send(etcd::txn(&[], &ops, &[]))
    }

    /// A take txn's answer: the copies it deleted are this call's. Unanswered, none is taken
    /// for sure: the batch stays in etcd (or was deleted unseen, then lost to replay; logged
    /// by the caller as etcd errors are).
    fn on_take(&mut self, status: Option<&str>, body: &[u8]) -> Step {
        let answer = match status {
            Some("200") => etcd::parse_txn(body).map_err(|e| e.to_string()),
            Some(other) => Err(format!("answered HTTP {other}")),
            None => Err("did not answer (timeout or reset)".into()),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(why) if self.taken.is_empty() => return Step::Unavailable(why),
            Err(why) => {
                log::warn!("proxy-webhooks: recover: a take of kept copies failed ({why}); sending those taken before it");
                self.found.clear();
                return self.take_next();
            }
        };
        let taking = std::mem::take(&mut self.taking);
        let asked = taking.len();
        let before = self.taken.len();
        for (found, op) in taking.into_iter().zip(answer.responses.iter()) {
            if matches!(op, OpAnswer::Delete(d) if d.deleted == 1) {
                self.taken.push(found);
            }
        }
        let took = self.taken.len() - before;
        if took < asked {
            log::info!("proxy-webhooks: recover: {took} of {asked} kept copies taken here, the others by another call meanwhile");
        }
        self.take_next()
    }
}

#[cfg(test)]
mod tests;
