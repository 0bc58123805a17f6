//! The journal's message writes: puts of new messages and deletes of finished ones, batched
//! into txns of at most [`MAX_OPS`] operations and [`MAX_BATCH_BYTES`], [`MAX_TXNS`] at once.

use super::*;

impl Journal {
    /// Message txns, deletes first (they free etcd), while fewer than [`MAX_TXNS`] are out.
    pub(super) fn message_calls(&mut self, lease: i64, now: u64, out: &mut Vec<(CallId, Request)>) {
        if let Some(request) = self.trim_due.take() {
            self.push(out, Call::TrimDead, request);
        }
        while self.txns < MAX_TXNS {
            let batch = if now >= self.removals_at && !self.removals.is_empty() {
                self.removal_batch()
            } else if now >= self.puts_at && !self.puts.is_empty() {
                self.put_batch(lease)
            } else if now >= self.dead_puts_at && !self.dead_puts.is_empty() {
                self.dead_batch()
            } else {
                None
            };
            let Some((call, request)) = batch else {
                break;
            };
            self.txns += 1;
            self.push(out, call, request);
        }
    }

    /// The next queued messages' puts under `lease`; the txn holds only while the lease is
    /// alive (its live key exists), so nothing is written under a lease another replica may
    /// be claiming.
    fn put_batch(&mut self, lease: i64) -> Option<(Call, Request)> {
        let mut ids = Vec::new();
        let mut ops = Vec::new();
        let mut bytes = 0usize;
        while ops.len() < MAX_OPS {
            let Some(id) = self.puts.front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(id.as_str()) else {
                self.puts.pop_front(); // finished before it was written
                continue;
            };
            let size = entry.value.as_ref().map_or(0, Vec::len);
            if entry.state != State::Queued || entry.value.is_none() {
                self.puts.pop_front();
                continue;
            }
            if !ops.is_empty() && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            entry.state = State::Putting;
            entry.lease = lease;
            ops.push(Op::Put {
                key: self.keys.message(lease, id),
                value: entry.value.clone().unwrap_or_default(),
                lease: 0,
            });
            if let Some(id) = self.puts.pop_front() {
                ids.push(id);
            }
        }
        if ops.is_empty() {
            return None;
        }
        let alive = Compare {
            key: self.keys.live(lease),
            target: Target::Create,
            cmp: Cmp::Greater,
            value: 0,
        };
        let call = Call::Puts { ids, lease };
        Some((call, etcd::txn(&[alive], &ops, &[])))
    }

    pub(super) fn on_puts(
        &mut self,
        ids: &[String],
        lease: i64,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let answer = check_txn(body)?;
        if !answer.succeeded {
            // The live key of the lease it was sent under is gone: that lease expired.
            self.puts_failed(ids, lease, now, outcome);
            if self.lease() == Some(lease) {
                self.lease_lost(lease, now);
            }
            return Ok(());
        }
        self.txns = self.txns.saturating_sub(1);
        self.puts_failing = false;
        let mut written = Vec::new();
        for id in ids {
            let Some(entry) = self.entries.get_mut(id.as_str()) else {
                continue;
            };
            let size = entry.value.take().map_or(0, |v| v.len());
            let earlier = entry.maybe_at.take().filter(|l| *l != lease);
            self.unwritten_bytes = self.unwritten_bytes.saturating_sub(size);
            entry.state = State::Durable;
            self.durable_count += 1;
            if std::mem::take(&mut entry.held) {
                self.held_count = self.held_count.saturating_sub(1);
                written.push(id.clone());
            }
            let finished = entry.finished.take();
            if let Some(earlier) = earlier {
                self.remove_key(earlier, id, 0);
            }
            if let Some(dead) = finished {
                self.finished(id, dead);
            }
        }
        if !written.is_empty() {
            outcome.events.push(Event::Written(written));
        }
        Ok(())
    }

    /// etcd did not take a batch sent under `lease` (or its answer was lost: it may have): held
    /// messages go out from memory now, and every one is written again after [`RETRY_MS`]
    /// (unless it is finished first).
    pub(super) fn puts_failed(
        &mut self,
        ids: &[String],
        lease: i64,
        now: u64,
        outcome: &mut Outcome,
    ) {
        self.txns = self.txns.saturating_sub(1);
        let mut released = Vec::new();
        for id in ids.iter().rev() {
            let Some(entry) = self.entries.get_mut(id.as_str()) else {
                continue;
            };
            entry.state = State::Queued;
            entry.maybe_at = Some(lease);
            if std::mem::take(&mut entry.held) {
                self.held_count = self.held_count.saturating_sub(1);
                released.push(id.clone());
            }
            match entry.finished.take() {
                Some(dead) => self.finished(id, dead),
                None => self.puts.push_front(id.clone()),
            }
        }
        self.puts_at = now + RETRY_MS;
        self.puts_failing = true;
        if !released.is_empty() {
            released.reverse();
            outcome.events.push(Event::Released(released));
        }
    }

    /// The next finished messages' deletes, no key twice in one txn (etcd refuses that).
    fn removal_batch(&mut self) -> Option<(Call, Request)> {
        let mut taken: Vec<Removal> = Vec::new();
        let mut ops = Vec::new();
        while let Some(next) = self.removals.front() {
            if ops.len() >= MAX_OPS || taken.iter().any(|r| r.key == next.key) {
                break;
            }
            let Some(removal) = self.removals.pop_front() else {
                break;
            };
            ops.push(Op::Delete {
                key: removal.key.clone(),
                prefix: false,
            });
            taken.push(removal);
        }
        if ops.is_empty() {
            return None;
        }
        Some((Call::Deletes(taken), etcd::txn(&[], &ops, &[])))
    }

    /// The next dead records' puts.
    fn dead_batch(&mut self) -> Option<(Call, Request)> {
        let mut taken: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        while let Some((key, value)) = self.dead_puts.front() {
            let full = taken.len() >= MAX_OPS
                || (!taken.is_empty() && bytes + value.len() > MAX_BATCH_BYTES);
            if full || taken.iter().any(|(k, _)| k == key) {
                break;
            }
            bytes += value.len();
            taken.extend(self.dead_puts.pop_front());
        }
        let ops: Vec<Op> = taken
            .iter()
            .map(|(key, value)| Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease: 0,
            })
            .collect();
        if ops.is_empty() {
            return None;
        }
        Some((Call::DeadPuts(taken), etcd::txn(&[], &ops, &[])))
    }

    pub(super) fn on_deletes(&mut self, removals: &[Removal], body: &[u8]) -> Result<(), String> {
        check_txn(body)?;
        self.txns = self.txns.saturating_sub(1);
        for removal in removals {
            self.trims_open = self.trims_open.saturating_sub(usize::from(removal.trim));
            if let Some(claimed) = self.claimed_mut(removal.lease) {
                claimed.open = claimed.open.saturating_sub(1);
            }
        }
        Ok(())
    }

    pub(super) fn on_dead_puts(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        self.txns = self.txns.saturating_sub(1);
        let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
        self.unwritten_bytes = self.unwritten_bytes.saturating_sub(bytes);
    }

    /// etcd did not take the dead records (out of space, say): tried again after
    /// [`RETRY_MS`], while other writes go on.
    pub(super) fn dead_puts_failed(&mut self, records: &[(Vec<u8>, Vec<u8>)], now: u64) {
        self.txns = self.txns.saturating_sub(1);
        for record in records.iter().rev() {
            self.dead_puts.push_front(record.clone());
        }
        self.dead_puts_at = now + RETRY_MS;
    }

    /// etcd did not take the deletes: they are sent again after [`RETRY_MS`].
    pub(super) fn deletes_failed(&mut self, removals: &[Removal], now: u64) {
        self.txns = self.txns.saturating_sub(1);
        for removal in removals.iter().rev() {
            self.removals.push_front(removal.clone());
        }
        self.removals_at = now + RETRY_MS;
    }

    /// A message read from etcd under `lease`: this replica's now.
    pub(super) fn insert_durable(&mut self, webhook_id: &str, lease: i64) {
        self.durable_count += 1;
        self.entries.insert(
            webhook_id.to_string(),
            Entry {
                state: State::Durable,
                lease,
                value: None,
                held: false,
                finished: None,
                maybe_at: None,
            },
        );
    }
}
