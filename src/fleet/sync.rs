//! Keeping the local registry a cache of etcd's (the dispatcher runs it): every `sync_interval`
//! one range of `P/sub/` written since the last revision seen. etcd counts the whole range in
//! the same answer, so when the count differs from the ids known after applying the changes,
//! some were deleted, and a keys-only listing of the range tells which.

use super::keys::{Keys, SUB};
use crate::fleet::etcd::{self, RangeQuery};
use crate::fleet::vault::{Record, Vault};
use crate::model::subscription::Subscription;
use crate::support::hashing::HashSet;

/// A change to make to the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// Write this record (added or changed in etcd).
    Put(Subscription),
    /// Remove this subscription (deleted in etcd).
    Remove(String),
}

/// Which read is waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Records written since `revision` (all of them the first time).
    Changes,
    /// Every id, to find the deleted ones.
    Listing,
}

#[derive(Debug)]
pub struct Sync {
    keys: Keys,
    interval_ms: u64,
    /// The ids etcd had at the last sync.
    known: HashSet<String>,
    /// etcd's revision at the last answer (0: never synced).
    revision: i64,
    waiting: Option<Read>,
    /// A listing is needed before the next change read.
    list_next: bool,
    next_at: u64,
    last_ok_ms: Option<u64>,
    /// How records' secrets are opened.
    vault: Vault,
    /// Records read whose secrets no configured key opens, not yet counted.
    unreadable: u64,
}

impl Sync {
    pub fn new(keys: Keys, interval_ms: u64) -> Sync {
        Sync {
            keys,
            interval_ms,
            known: HashSet::default(),
            revision: 0,
            waiting: None,
            list_next: false,
            next_at: 0,
            last_ok_ms: None,
            vault: Vault::default(),
            unreadable: 0,
        }
    }

    /// Records are opened with `vault` (`fleet.encryption_key`).
    pub fn with_vault(mut self, vault: Vault) -> Sync {
        self.vault = vault;
        self
    }

    /// Records read since the last call whose secrets no configured key opened.
    pub fn take_unreadable(&mut self) -> u64 {
        std::mem::take(&mut self.unreadable)
    }

    /// Whether a first full read has been applied.
    pub fn synced(&self) -> bool {
        self.last_ok_ms.is_some()
    }

    /// etcd's revision the registry was last read at (0: never).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Milliseconds since the last successful read (since `started_ms` before the first).
    pub fn lag_ms(&self, now: u64, started_ms: u64) -> u64 {
        now.saturating_sub(self.last_ok_ms.unwrap_or(started_ms))
    }

    /// The read to send now, if one is due and none is waiting.
    pub fn due(&mut self, now: u64) -> Option<etcd::Request> {
        if self.waiting.is_some() || (now < self.next_at && !self.list_next) {
            return None;
        }
        let read = if self.list_next {
            Read::Listing
        } else {
            Read::Changes
        };
        self.waiting = Some(read);
        let query = RangeQuery {
            key: self.keys.all(SUB),
            prefix: true,
            min_mod_revision: match read {
                Read::Changes if self.revision > 0 => self.revision + 1,
                _ => 0,
            },
            keys_only: read == Read::Listing,
            ..RangeQuery::default()
        };
        Some(etcd::range_query(&query))
    }

    /// Takes the answer to the read sent by [`Sync::due`]: the changes for the cache, or why
    /// the answer is not usable (the next read comes at the next interval).
    pub fn on_answer(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<Apply>, String> {
        let read = self.waiting.take();
        self.next_at = now + self.interval_ms;
        if status != Some("200") {
            return Err(format!(
                "etcd answered the registry read with status {}",
                status.unwrap_or("none")
            ));
        }
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        let changes = match read {
            Some(Read::Listing) => self.removed(&answer),
            _ => self.changed(&answer),
        };
        self.revision = answer.revision;
        self.last_ok_ms = Some(now);
        Ok(changes)
    }

    /// The records written since the last read; a listing follows if ids were deleted.
    fn changed(&mut self, answer: &etcd::RangeAnswer) -> Vec<Apply> {
        let mut changes = Vec::new();
        for kv in &answer.kvs {
            let Some(id) = self.keys.name_in(SUB, &kv.key) else {
                continue;
            };
            match self.vault.open_record(&kv.value) {
                Some(Record::Readable(sub)) if sub.id == id => {
                    self.known.insert(id.to_string());
                    changes.push(Apply::Put(sub));
                }
                // Kept with its secrets sealed: it never signs, and the API answers 503 for it.
                Some(Record::Unreadable(sub, why)) if sub.id == id => {
                    log::warn!("proxy-webhooks: fleet: the signing secrets of subscription {id} cannot be read ({why}); nothing is delivered to it and the API answers 503 for it");
                    self.unreadable += 1;
                    self.known.insert(id.to_string());
                    changes.push(Apply::Put(sub));
                }
                _ => log::warn!("proxy-webhooks: fleet: etcd record {id} is not a subscription of that id; ignored"),
            }
        }
        self.list_next = usize::try_from(answer.count).ok() != Some(self.known.len());
        changes
    }

    /// The known ids that a full listing no longer has.
    fn removed(&mut self, answer: &etcd::RangeAnswer) -> Vec<Apply> {
        let listed: HashSet<String> = answer
            .kvs
            .iter()
            .filter_map(|kv| self.keys.name_in(SUB, &kv.key))
            .map(str::to_string)
            .collect();
        let gone: Vec<Apply> = self
            .known
            .iter()
            .filter(|id| !listed.contains(*id))
            .map(|id| Apply::Remove(id.clone()))
            .collect();
        self.known = listed;
        self.list_next = false;
        gone
    }

    /// A read that failed before any answer (refused, timed out): retried next interval.
    pub fn on_failure(&mut self, now: u64) {
        self.waiting = None;
        self.next_at = now + self.interval_ms;
    }
}

#[cfg(test)]
mod tests;
