//! Keeping the local registry a cache of etcd's (the dispatcher runs it), exactly, whatever the
//! interleaving of creates, changes and deletes through other replicas.
//!
//! Every `sync_interval` a **change read**: the range of `P/sub/` with `min_mod_revision` one past
//! the revision the cache was last read at, in pages of [`RECORDS_PER_PAGE`] records (etcd's
//! `limit`, each page starting after the last key of the one before), every page read at the
//! revision etcd gave the first (`revision`), so the pages together are one state of the store.
//! Deletes leave nothing a range can return, but etcd counts the whole range in the first page
//! (3.4 filters by revision after counting): when the count differs from the ids known, a
//! **listing** follows, keys only, in pages of [`KEYS_PER_PAGE`], and every known id inside a
//! page's span of keys that the page lacks is removed.
//!
//! Why it never skips a record: the change-read revision moves only when a change read ends, to
//! the revision its pages read at; every record written after it has a later `mod_revision`, so
//! the next change read returns it. A listing only removes; it never moves that revision (a
//! listing that did, as before, marked records written between the two reads as read without
//! ever fetching them). The known ids always include every live id whose record is at or below
//! the revision, so "count = known" holds exactly when no known id was deleted.
//!
//! Records the cache takes outside the sync (a replica's own API writes, a stale record a write
//! found) may land over a newer one the sync applied, or stay after another replica deleted
//! them. They are reported with their `mod_revision` ([`Sync::on_local`]), and the next change
//! read (sent after the report, so served after the write) starts at the lowest such revision:
//! it returns the current record of each, which the cache takes over the local one, and one it
//! does not return was deleted meanwhile and leaves the cache.
//!
//! Memory: the known ids, the reported ones not yet covered, and one page.
//!
//! Why not etcd's watch: through the HTTP gateway a watch is an endless streamed answer, which a
//! buffered `dispatch_http_call` cannot consume; over gRPC it needs a protobuf codec and stream
//! handling in the host glue for what these reads already give exactly, within `sync_interval`.

use super::keys::{Keys, SUB};
use crate::fleet::etcd::{self, RangeAnswer, RangeQuery};
use crate::fleet::vault::{Record, Vault};
use crate::model::subscription::Subscription;
use crate::support::hashing::HashMap;
use std::collections::BTreeSet;
use std::ops::Bound;

/// Records per page of a change read: ~1 KB each (~1.4 KB in etcd's base64 JSON), so a page is
/// ~180 KB typically, under the 256 KiB Envoy buffers of an answer in the shipped wiring
/// (`http.async_response_buffer_limit`; a larger answer is reset). A record at its largest (50
/// filters, 5 secrets, long URL) is ~15 KB: a page that fails is read again with half as many
/// records, down to one, and pages grow back once a read ends.
pub const RECORDS_PER_PAGE: u64 = 128;
/// Keys per page of a listing (~120 bytes each in the answer: ~120 KB).
pub const KEYS_PER_PAGE: u64 = 1000;
/// A first read whose last page answered within this long is still making progress.
const PROGRESS_MS: u64 = 5000;

/// A change to make to the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// Write this record (added or changed in etcd).
    Put(Subscription),
    /// Remove this subscription (deleted in etcd).
    Remove(String),
}

/// What a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Records written since the change-read revision (all of them the first time).
    Changes,
    /// Every key, to find the deleted ones.
    Listing,
}

/// A read in progress, one page at a time.
#[derive(Debug)]
struct Reading {
    kind: Kind,
    /// The revision every page reads at (0 until the first page's answer gives it).
    at: i64,
    /// The last key of the previous page (None: the first page is next).
    after: Option<Vec<u8>>,
    /// How many keys the range held at `at` (the first page's count).
    count: i64,
    /// A page was sent and its answer is awaited.
    sent: bool,
    /// After a failed page: not sent again before this time.
    not_before: u64,
    /// The records reported before the read started: whether a page returned each.
    settling: HashMap<String, bool>,
    /// The reports' revisions, for the next read if this one fails.
    reported: HashMap<String, i64>,
}

#[derive(Debug)]
pub struct Sync {
    keys: Keys,
    interval_ms: u64,
    /// The ids (bytes of the key after `P/sub/`) whose records the sync applied and that were
    /// not seen deleted since.
    known: BTreeSet<Vec<u8>>,
    /// The change-read revision: every live record at or below it is applied (0: never read).
    revision: i64,
    /// Records the cache took outside the sync, by id: the `mod_revision` they had.
    reported: HashMap<String, i64>,
    reading: Option<Reading>,
    /// A listing is needed (the last change read counted other than the known ids).
    list_next: bool,
    next_at: u64,
    last_ok_ms: Option<u64>,
    /// How records' secrets are opened.
    vault: Vault,
    /// Records read whose secrets no configured key opens, not yet counted.
    unreadable: u64,
    /// Records and keys per page ([`RECORDS_PER_PAGE`], [`KEYS_PER_PAGE`]; smaller in tests).
    page_sizes: (u64, u64),
    /// The records and keys per page pages grow back to after failures made them smaller.
    records_max: u64,
    keys_max: u64,
    /// When a page was last answered.
    last_page_ms: Option<u64>,
}

impl Sync {
    pub fn new(keys: Keys, interval_ms: u64) -> Sync {
        Sync {
            keys,
            interval_ms,
            known: BTreeSet::new(),
            revision: 0,
            reported: HashMap::default(),
            reading: None,
            list_next: false,
            next_at: 0,
            last_ok_ms: None,
            vault: Vault::default(),
            unreadable: 0,
            page_sizes: (RECORDS_PER_PAGE, KEYS_PER_PAGE),
            records_max: RECORDS_PER_PAGE,
            keys_max: KEYS_PER_PAGE,
            last_page_ms: None,
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

    /// Smaller pages, so that tests page through a few records.
    #[cfg(test)]
    pub(crate) fn with_pages(mut self, records: u64, keys: u64) -> Sync {
        self.page_sizes = (records, keys);
        self.records_max = records;
        self.keys_max = keys;
        self
    }

    /// Whether a first full read has been applied.
    pub fn synced(&self) -> bool {
        self.last_ok_ms.is_some()
    }

    /// etcd's revision the registry was last read at (0: never).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Milliseconds since the last complete change read (since `started_ms` before the first).
    pub fn lag_ms(&self, now: u64, started_ms: u64) -> u64 {
        now.saturating_sub(self.last_ok_ms.unwrap_or(started_ms))
    }

    /// The page to send now, if one is due and none is waiting: the next page of a read in
    /// progress at once, a listing right after the change read that asked for it, a change
    /// read every interval.
    pub fn due(&mut self, now: u64) -> Option<etcd::Request> {
        match &mut self.reading {
            Some(reading) if reading.sent || now < reading.not_before => return None,
            Some(reading) => reading.sent = true,
            None if now < self.next_at => return None,
            None => {
                let kind = match self.list_next {
                    true => Kind::Listing,
                    false => Kind::Changes,
                };
                let reported = match kind {
                    Kind::Changes => std::mem::take(&mut self.reported),
                    Kind::Listing => HashMap::default(),
                };
                self.reading = Some(Reading {
                    kind,
                    at: 0,
                    after: None,
                    count: 0,
                    sent: true,
                    not_before: 0,
                    settling: reported.keys().map(|id| (id.clone(), false)).collect(),
                    reported,
                });
            }
        }
        self.reading.as_ref().map(|r| self.page(r))
    }

    /// The request for the next page of `reading`.
    fn page(&self, reading: &Reading) -> etcd::Request {
        let all = self.keys.all(SUB);
        let (key, prefix, end) = match &reading.after {
            None => (all, true, Vec::new()),
            Some(last) => {
                let end = etcd::prefix_end(&all);
                ([last.as_slice(), b"\0"].concat(), false, end)
            }
        };
        let changes = reading.kind == Kind::Changes;
        etcd::range_query(&RangeQuery {
            key,
            prefix,
            end,
            limit: match changes {
                true => self.page_sizes.0,
                false => self.page_sizes.1,
            },
            min_mod_revision: match changes && self.revision > 0 {
                true => reading
                    .reported
                    .values()
                    .fold(self.revision + 1, |low, at| low.min(*at)),
                false => 0,
            },
            keys_only: !changes,
            revision: reading.at,
            ..RangeQuery::default()
        })
    }

    /// Takes the answer to the page sent by [`Sync::due`]: the changes for the cache, or why
    /// the answer is not usable (then the same page is asked again at the next interval, or,
    /// when etcd compacted the revision the read's pages read at, the read starts again; what
    /// earlier pages applied stays).
    pub fn on_answer(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<Apply>, String> {
        if status != Some("200") {
            // etcd's text, for the log only: "mvcc: required revision has been compacted".
            let compacted = String::from_utf8_lossy(body).contains("compacted");
            self.pause(now, compacted);
            return Err(format!(
                "etcd answered the registry read with status {}",
                status.unwrap_or("none")
            ));
        }
        let answer = match etcd::parse_range(body) {
            Ok(answer) => answer,
            Err(e) => {
                self.pause(now, false);
                return Err(e.to_string());
            }
        };
        let Some(mut reading) = self.reading.take() else {
            return Err("an answer to a registry read that was not sent".into());
        };
        self.next_at = now + self.interval_ms;
        if reading.at == 0 {
            // etcd's header gives its current revision, which the first page read at.
            reading.at = answer.revision;
            reading.count = answer.count;
        }
        let mut changes = match reading.kind {
            Kind::Changes => self.changed(&answer, &mut reading.settling),
            Kind::Listing => self.removed(reading.after.as_deref(), &answer),
        };
        self.grow_pages(reading.kind);
        self.last_page_ms = Some(now);
        match answer.kvs.last() {
            Some(last) if answer.more => {
                reading.after = Some(last.key.clone());
                reading.sent = false;
                self.reading = Some(reading);
            }
            _ => self.finish(&reading, now, &mut changes),
        }
        Ok(changes)
    }

    /// The end of a read: a change read moves the revision to the one its pages read at,
    /// removes the reported records it did not return (deleted since), and asks for a listing
    /// if ids were deleted.
    fn finish(&mut self, reading: &Reading, now: u64, changes: &mut Vec<Apply>) {
        if reading.kind == Kind::Listing {
            self.list_next = false;
            return;
        }
        self.revision = reading.at;
        self.last_ok_ms = Some(now);
        for (id, returned) in &reading.settling {
            if !returned {
                self.known.remove(id.as_bytes());
                changes.push(Apply::Remove(id.clone()));
            }
        }
        self.list_next = usize::try_from(reading.count).ok() != Some(self.known.len());
        if self.list_next {
            self.next_at = now;
        }
    }

    /// A page of a change read: the records written since the revision.
    fn changed(
        &mut self,
        answer: &RangeAnswer,
        settling: &mut HashMap<String, bool>,
    ) -> Vec<Apply> {
        let mut changes = Vec::new();
        for kv in &answer.kvs {
            let Some(id) = self.keys.name_in(SUB, &kv.key) else {
                continue;
            };
            if let Some(returned) = settling.get_mut(id) {
                *returned = true;
            }
            // Known whatever it holds: it is a key of the range etcd counts.
            self.known.insert(id.as_bytes().to_vec());
            match self.vault.open_record(&kv.value) {
                Some(Record::Readable(sub)) if sub.id == id => changes.push(Apply::Put(sub)),
                // Kept with its secrets sealed: it never signs, and the API answers 503 for it.
                Some(Record::Unreadable(sub, why)) if sub.id == id => {
                    log::warn!("proxy-webhooks: fleet: the signing secrets or receiver headers of subscription {id} cannot be read ({why}); nothing is delivered to it and the API answers 503 for it");
                    self.unreadable += 1;
                    changes.push(Apply::Put(sub));
                }
                _ => log::warn!("proxy-webhooks: fleet: etcd record {id} is not a subscription of that id; ignored"),
            }
        }
        changes
    }

    /// A page of a listing: the known ids in the page's span of keys (after the previous
    /// page's last key, up to its own last one, or to the end for the last page) it lacks.
    fn removed(&mut self, after: Option<&[u8]>, answer: &RangeAnswer) -> Vec<Apply> {
        let all = self.keys.all(SUB);
        let id_of = |key: &[u8]| key.strip_prefix(all.as_slice()).map(<[u8]>::to_vec);
        let listed: BTreeSet<Vec<u8>> = answer.kvs.iter().filter_map(|kv| id_of(&kv.key)).collect();
        let low = after
            .and_then(id_of)
            .map_or(Bound::Unbounded, Bound::Excluded);
        let high = match answer.kvs.last().and_then(|kv| id_of(&kv.key)) {
            Some(last) if answer.more => Bound::Included(last),
            _ => Bound::Unbounded,
        };
        let gone: Vec<Vec<u8>> = self
            .known
            .range((low, high))
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        gone.into_iter()
            .map(|id| {
                self.known.remove(&id);
                Apply::Remove(String::from_utf8_lossy(&id).into_owned())
            })
            .collect()
    }

    /// The cache took the record of `id` that etcd had at `mod_revision` outside the sync (an
    /// API write of this replica, a stale record a write found): the next change read returns
    /// its current record, or finds it deleted.
    pub fn on_local(&mut self, id: &str, mod_revision: i64) {
        let at = self.reported.entry(id.to_string()).or_insert(mod_revision);
        *at = (*at).min(mod_revision);
    }

    /// A page that got no answer (timed out, or reset: as an answer past Envoy's buffer limit
    /// is): the same page is asked again at the next interval, half as large.
    pub fn on_failure(&mut self, now: u64) {
        let kind = self.reading.as_ref().map(|r| r.kind);
        match kind {
            Some(Kind::Changes) => self.page_sizes.0 = (self.page_sizes.0 / 2).max(1),
            Some(Kind::Listing) => self.page_sizes.1 = (self.page_sizes.1 / 2).max(1),
            None => {}
        }
        self.pause(now, false);
    }

    /// A page Envoy refused to send (no cluster, no token): asked again at the next interval.
    pub fn on_refused(&mut self, now: u64) {
        self.pause(now, false);
    }

    /// The read in progress goes on from the same page after an interval, or, when it cannot
    /// (`restart`: its revision was compacted), starts again then.
    fn pause(&mut self, now: u64, restart: bool) {
        self.next_at = now + self.interval_ms;
        match self.reading.take() {
            Some(reading) if restart => {
                for (id, at) in reading.reported {
                    self.on_local(&id, at);
                }
            }
            Some(mut reading) => {
                reading.sent = false;
                reading.not_before = self.next_at;
                self.reading = Some(reading);
            }
            None => {}
        }
    }

    /// A page answered: pages a failure made smaller grow back.
    fn grow_pages(&mut self, kind: Kind) {
        match kind {
            Kind::Changes => {
                self.page_sizes.0 = self.page_sizes.0.saturating_mul(2).min(self.records_max)
            }
            Kind::Listing => {
                self.page_sizes.1 = self.page_sizes.1.saturating_mul(2).min(self.keys_max)
            }
        }
    }

    /// Whether the first read is under way and its last page answered lately: fan-out may
    /// wait for it past its first seconds (a registry of 100,000 takes ~10 s to read).
    pub fn first_read_progressing(&self, now: u64) -> bool {
        !self.synced()
            && self.reading.is_some()
            && self
                .last_page_ms
                .is_some_and(|at| now < at.saturating_add(PROGRESS_MS))
    }
}

#[cfg(test)]
mod tests;
