//! Delivery health shared by the fleet, so that `health` in the API's answers is the fleet's on
//! every replica without an etcd call on the read path.
//!
//! Writes: each replica puts its summary of a subscription's delivery log
//! ([`crate::registry::health::Summary`], ~150 bytes) at `P/health/<subscription>/<node id>` in
//! the same txn as its log `P/log/<subscription>/<node id>` ([`crate::fleet::log::writes`]):
//! when new attempts reach its log, at most once per `sync_interval`, deleted with it (a log
//! whose attempts all aged out) and by the subscription's delete.
//!
//! Reads ([`HealthRead`]): every `sync_interval` each dispatcher reads the summaries written
//! since its last complete read: the range of `P/health/` with `min_mod_revision` one past the
//! revision that read was at, in pages of [`PER_PAGE`] keys (each starting after the last key of
//! the one before), every page at the revision its registry was last read at
//! ([`crate::fleet::sync::Sync::revision`]): a subscription's record is written before any
//! delivery to it, so every summary read belongs to a subscription the registry has (or had:
//! then it is dropped), and none is skipped for a record not synced yet. etcd 3.4 applies `limit`
//! after the `min_mod_revision` filter (it reads the whole range, filters, then cuts, and sets
//! `more`), so key-ordered pages with a fixed revision see every changed key once. The revision
//! moves only when a read ends: a page that fails is asked again at the next interval, and a read
//! whose revision etcd compacted starts again, so no summary is skipped. Deleted keys are not
//! returned: a summary whose newest attempt is older than the logs keep is left out when read
//! ([`crate::registry::health::others`]), and a subscription's delete clears its summaries.

use crate::fleet::etcd::{self, Op, RangeQuery, Request};
use crate::fleet::keys::{Keys, HEALTH};
use crate::registry::attempts::Attempt;
use crate::registry::health::{summarize, Summary};

/// Summaries per page: ~400 bytes each in etcd's answer (base64 key and value, revisions),
/// ~570 with a 128-byte node id, so a page stays under ~150 KB, inside the 256 KiB Envoy
/// buffers of an answer in the shipped wiring. A page that gets no answer (Envoy resets one
/// over its buffer: very long node ids or prefix) is asked again with half as many, down to
/// [`MIN_PAGE`], and pages grow back after each answer.
pub const PER_PAGE: u64 = 256;
pub const MIN_PAGE: u64 = 8;

/// The write of `node`'s summary of `subscription_id` beside its log, newest attempt first
/// (an empty log deletes it, as it deletes the log).
pub fn write(keys: &Keys, node: &str, subscription_id: &str, log: &[Attempt]) -> Op {
    let key = keys.health(subscription_id, node);
    match log.is_empty() {
        true => Op::Delete { key, prefix: false },
        false => Op::Put {
            key,
            value: summarize(log).to_json(),
            lease: 0,
        },
    }
}

/// One page's summaries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// `(subscription id, node id, summary)`.
    pub summaries: Vec<(String, String, Summary)>,
    /// Keys under `P/health/` that are no summary (logged; nothing else is done with them).
    pub unreadable: Vec<String>,
}

/// The periodic read of the summaries changed since the last one.
#[derive(Debug)]
pub struct HealthRead {
    keys: Keys,
    interval_ms: u64,
    next_at: u64,
    /// The revision the last complete read was at (0: none yet, read everything).
    revision: i64,
    /// The read in progress: the revision its pages read at and the last key of the page
    /// before.
    reading: Option<(i64, Option<Vec<u8>>)>,
    waiting: bool,
    /// Keys asked per page.
    page_size: u64,
}

impl HealthRead {
    pub fn new(keys: Keys, interval_ms: u64) -> HealthRead {
        HealthRead {
            keys,
            interval_ms,
            next_at: 0,
            revision: 0,
            reading: None,
            waiting: false,
            page_size: PER_PAGE,
        }
    }

    /// The page to read now, if one is due and none is waiting; a new read goes at `registry`,
    /// the revision the registry was last read at (none before the first registry read, nor
    /// while the registry was not read again since the last complete one).
    pub fn due(&mut self, now: u64, registry: i64) -> Option<Request> {
        if self.waiting || now < self.next_at {
            return None;
        }
        if self.reading.is_none() && registry <= self.revision {
            self.next_at = now.saturating_add(self.interval_ms);
            return None;
        }
        self.waiting = true;
        let (at, after) = self.reading.get_or_insert((registry, None)).clone();
        let all = self.keys.all(HEALTH);
        let (key, prefix, end) = match after {
            None => (all, true, Vec::new()),
            Some(last) => (
                [last.as_slice(), b"\0"].concat(),
                false,
                etcd::prefix_end(&all),
            ),
        };
        Some(etcd::range_query(&RangeQuery {
            key,
            prefix,
            end,
            limit: self.page_size,
            min_mod_revision: match self.revision {
                0 => 0,
                r => r.saturating_add(1),
            },
            revision: at,
            ..RangeQuery::default()
        }))
    }

    /// The page could not be sent or got no answer: asked again after `sync_interval`.
    pub fn on_failure(&mut self, now: u64) {
        self.waiting = false;
        self.next_at = now.saturating_add(self.interval_ms);
    }

    /// The page got no answer (a timeout, or a reset: Envoy resets an answer over its buffer):
    /// asked again after `sync_interval`, with half as many keys.
    pub fn on_lost(&mut self, now: u64) {
        self.on_failure(now);
        self.page_size = (self.page_size / 2).max(MIN_PAGE);
    }

    /// etcd's answer to the page [`HealthRead::due`] sent; `Err` says why it is not usable
    /// (the same page is asked again at the next interval; the whole read when etcd compacted
    /// its revision).
    pub fn on_answer(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Page, String> {
        self.on_failure(now);
        if status != Some("200") {
            // etcd's text: "mvcc: required revision has been compacted".
            if String::from_utf8_lossy(body).contains("compacted") {
                self.reading = None;
            }
            return Err(format!(
                "etcd answered the read of health summaries with status {}",
                status.unwrap_or("none")
            ));
        }
        let answer =
            etcd::parse_range(body).map_err(|e| format!("the read of health summaries: {e}"))?;
        let (at, _) = self.reading.take().unwrap_or_default();
        self.page_size = (self.page_size * 2).min(PER_PAGE);
        let page = self.page(&answer.kvs);
        match answer.kvs.last() {
            Some(last) if answer.more => {
                self.reading = Some((at, Some(last.key.clone())));
                self.next_at = now;
            }
            _ => self.revision = at,
        }
        Ok(page)
    }

    fn page(&self, kvs: &[etcd::Kv]) -> Page {
        let mut page = Page::default();
        for kv in kvs {
            let named = self.keys.name_in(HEALTH, &kv.key);
            let read = named.and_then(|name| {
                let (sub, node) = name.split_once('/')?;
                let summary = Summary::parse(&kv.value)?;
                Some((sub.to_string(), node.to_string(), summary))
            });
            match read {
                Some(found) if !found.0.is_empty() && !found.1.is_empty() => {
                    page.summaries.push(found)
                }
                _ => page
                    .unreadable
                    .push(String::from_utf8_lossy(&kv.key).into_owned()),
            }
        }
        page
    }
}

#[cfg(test)]
mod tests;
