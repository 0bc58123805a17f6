//! The journal's lease: start steps, keepalives, the scan for dead replicas, claims, pages of
//! claimed messages, their release, and the trim of dead (replayable) messages.

use super::*;

/// Dead leases claimed per scan, at most (the next scan takes the rest).
const CLAIMS_PER_SCAN: usize = 8;
/// Our lost leases remembered, at most.
const PAST_LEASES: usize = 8;

impl Journal {
    pub(super) fn start_request(&self, step: Start) -> Request {
        match step {
            Start::FindNode => etcd::range(&self.keys.node(&self.node_id)),
            Start::Grant => etcd::lease_grant(ttl_seconds(self.ttl_ms)),
            Start::Register(lease) => {
                let node = self.node_id.as_bytes().to_vec();
                let put = |key, value, lease| Op::Put { key, value, lease };
                let success = [
                    put(self.keys.live(lease), node.clone(), lease),
                    put(self.keys.owner(lease), node, 0),
                    put(
                        self.keys.node(&self.node_id),
                        keys::hex(lease).into_bytes(),
                        lease,
                    ),
                ];
                etcd::txn(&[], &success, &[])
            }
        }
    }

    /// The next start step, due now.
    pub(super) fn next_step(&mut self, step: Start, now: u64) {
        self.phase = Phase::Starting { at: now, step };
    }

    pub(super) fn on_start(&mut self, step: Start, body: &[u8], now: u64) -> Result<(), String> {
        match step {
            Start::FindNode => {
                let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
                let former = answer
                    .kvs
                    .first()
                    .and_then(|kv| std::str::from_utf8(&kv.value).ok())
                    .and_then(keys::parse_hex);
                self.former = former.map(|lease| Former {
                    lease,
                    ttl: None,
                    reads: 0,
                    at: now,
                    waiting: false,
                });
                self.next_step(Start::Grant, now);
            }
            Start::Grant => {
                let lease = etcd::parse_lease_grant(body).map_err(|e| e.to_string())?;
                self.next_step(Start::Register(lease.id), now);
            }
            Start::Register(lease) => {
                check_txn(body)?;
                log::info!(
                    "proxy-webhooks: fleet: node {} holds lease {}; pending messages are kept under it in etcd",
                    self.node_id,
                    keys::hex(lease)
                );
                self.phase = Phase::Ready { lease };
                self.keepalive_at = now + self.ttl_ms / 3;
                self.keepalive_waiting = false;
                self.scan_at = now;
                self.puts_at = now;
            }
        }
        Ok(())
    }

    /// Keepalive, scan, claims, pages, releases and the trim, as they are due.
    pub(super) fn lease_calls(&mut self, lease: i64, now: u64, out: &mut Vec<(CallId, Request)>) {
        if !self.keepalive_waiting && now >= self.keepalive_at {
            self.keepalive_waiting = true;
            let request = etcd::lease_keepalive(lease);
            self.push(out, Call::KeepAlive { lease }, request);
        }
        if let Some(former) = self.former.as_mut().filter(|f| !f.waiting && now >= f.at) {
            former.waiting = true;
            let lease = former.lease;
            self.push(out, Call::Probe { lease }, etcd::lease_time_to_live(lease));
        }
        if let Some(former) = self.revoke_due.take() {
            self.push(out, Call::Revoke, etcd::lease_revoke(former));
        }
        if !self.scanning && now >= self.scan_at {
            self.scanning = true;
            let request = self.scan_request();
            self.push(out, Call::Scan, request);
        }
        for dead in std::mem::take(&mut self.claims_due) {
            let request = self.claim_request(dead, lease);
            self.push(out, Call::Claim { lease: dead }, request);
        }
        if std::mem::take(&mut self.count_dead_due) && self.trims_open == 0 {
            let request = etcd::range_query(&RangeQuery {
                key: self.keys.all(keys::DEAD),
                prefix: true,
                limit: 1,
                keys_only: true,
                ..RangeQuery::default()
            });
            self.push(out, Call::CountDead, request);
        }
        self.claimed_calls(now, out);
    }

    pub(super) fn on_keepalive(&mut self, lease: i64, body: &[u8], now: u64) -> Result<(), String> {
        let alive = etcd::parse_lease_keepalive(body, lease).map_err(|e| e.to_string())?;
        self.keepalive_waiting = false;
        self.keepalive_at = now + self.ttl_ms / 3;
        if self.lease() != Some(lease) {
            return Ok(());
        }
        if alive == etcd::KeepAlive::Gone {
            self.lease_lost(lease, now);
        }
        Ok(())
    }

    /// Our lease expired (etcd was out of reach longer than its TTL): another replica may
    /// claim what it holds (delivered twice at worst); new messages go under a new lease.
    pub(super) fn lease_lost(&mut self, lease: i64, now: u64) {
        if self.past_leases.len() >= PAST_LEASES {
            self.past_leases.remove(0);
        }
        self.past_leases.push(lease);
        log::warn!(
            "proxy-webhooks: fleet: lease {} of node {} expired; taking a new one (its messages may be claimed and delivered by another replica as well)",
            keys::hex(lease),
            self.node_id
        );
        self.next_step(Start::Grant, now);
    }

    /// What the time to live of the lease found under our node key at start says of it.
    pub(super) fn on_probe(
        &mut self,
        lease: i64,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let left = etcd::parse_lease_time_to_live(body, lease).map_err(|e| e.to_string())?;
        let Some(former) = self.former.as_mut() else {
            return Ok(());
        };
        former.waiting = false;
        former.at = now + PROBE_MS;
        former.reads += 1;
        let (ttl, granted) = match left {
            etcd::TimeToLive::Gone => {
                self.former = None;
                return Ok(());
            }
            etcd::TimeToLive::Left { ttl, granted } => (ttl, granted),
        };
        let renewed = former.ttl.is_some_and(|before| ttl >= before);
        // Renewed every third of its TTL, a lease in use never shows less than this.
        let in_use_floor = granted - (granted + 2) / 3 - 1;
        // A lease nobody renews is gone after `granted` seconds: one still there later is.
        let undecided_too_long = i64::from(former.reads) > granted + 2;
        former.ttl = Some(ttl);
        if renewed || undecided_too_long {
            self.former = None;
            self.node_conflict(lease, outcome);
        } else if ttl < in_use_floor {
            self.former = None;
            log::info!(
                "proxy-webhooks: fleet: node {} revokes its former lease {} (no longer renewed): its messages are claimed now",
                self.node_id,
                keys::hex(lease)
            );
            self.revoke_due = Some(lease);
        }
        Ok(())
    }

    /// Another process runs with our node id (it holds `lease`): logged and counted once per
    /// lease; its lease is left alone.
    fn node_conflict(&mut self, lease: i64, outcome: &mut Outcome) {
        if self.reported == Some(lease) {
            return;
        }
        self.reported = Some(lease);
        outcome.node_conflicts += 1;
        log::error!(
            "proxy-webhooks: fleet: another process runs with node id {} (it holds lease {}, which it renews): give every replica its own fleet.node_id (or none, for a random one); its lease is left alone",
            self.node_id,
            keys::hex(lease)
        );
    }

    /// One txn reading every live key, owner and claim, and our node key.
    fn scan_request(&self) -> Request {
        let range = |kind| Op::Range {
            key: self.keys.all(kind),
            prefix: true,
            limit: 0,
        };
        let node = Op::Range {
            key: self.keys.node(&self.node_id),
            prefix: false,
            limit: 0,
        };
        etcd::txn(&[], &[range(LIVE), range(OWNER), range(CLAIM), node], &[])
    }

    pub(super) fn on_scan(
        &mut self,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let answer = check_txn(body)?;
        let mut kinds = answer.responses.iter();
        let live = leases_in(&self.keys, LIVE, kinds.next());
        let owners = leases_in(&self.keys, OWNER, kinds.next());
        let claims = leases_in(&self.keys, CLAIM, kinds.next());
        if let Some(OpAnswer::Range(node)) = kinds.next() {
            let holder = node
                .kvs
                .first()
                .and_then(|kv| keys::parse_hex(std::str::from_utf8(&kv.value).ok()?));
            let ours = |l: i64| self.lease() == Some(l) || self.past_leases.contains(&l);
            if let Some(other) = holder.filter(|l| !ours(*l) && live.contains(l)) {
                self.node_conflict(other, outcome);
            }
        }
        self.scanning = false;
        self.scan_at = now + self.scan_every_ms;
        self.count_dead_due = true;
        let mine = self.lease();
        self.adopt_own_claims(answer.responses.get(2), answer.revision, now);
        self.claims_due = owners
            .into_iter()
            .filter(|l| !live.contains(l) && !claims.contains(l) && Some(*l) != mine)
            .filter(|l| self.claimed.iter().all(|(c, _)| c != l))
            .take(CLAIMS_PER_SCAN)
            .collect();
        Ok(())
    }

    /// Claims held under our lease that this replica does not know of (the claim's answer was
    /// lost): ours to deliver, like any claim won.
    fn adopt_own_claims(&mut self, claims: Option<&OpAnswer>, revision: i64, now: u64) {
        let (Some(OpAnswer::Range(range)), Some(mine)) = (claims, self.lease()) else {
            return;
        };
        let mine = keys::hex(mine).into_bytes();
        let adopt: Vec<i64> = range
            .kvs
            .iter()
            .filter(|kv| kv.value == mine)
            .filter_map(|kv| self.keys.name_in(CLAIM, &kv.key))
            .filter_map(keys::parse_hex)
            .filter(|l| self.claimed.iter().all(|(c, _)| c != l))
            .collect();
        for dead in adopt {
            self.take_claim(dead, revision, now);
        }
    }

    /// Messages under `lease` this replica holds or is deleting: our own former lease's, when
    /// this replica claims it (its lease expired while it lived).
    fn open_under(&self, lease: i64) -> usize {
        let held = self.entries.values();
        let held = held.filter(|e| e.lease == lease && e.state == State::Durable);
        held.count() + self.deleting().filter(|r| r.lease == lease).count()
    }

    /// Deletes queued or in flight.
    fn deleting(&self) -> impl Iterator<Item = &Removal> {
        let in_flight = self.calls.iter().flat_map(|(_, call)| match call {
            Call::Deletes(removals) => removals.as_slice(),
            _ => &[],
        });
        self.removals.iter().chain(in_flight)
    }

    /// Takes `dead` over if its replica is still gone and nobody claimed it.
    fn claim_request(&self, dead: i64, lease: i64) -> Request {
        let absent = |key| Compare {
            key,
            target: Target::Create,
            cmp: Cmp::Equal,
            value: 0,
        };
        let compare = [
            absent(self.keys.live(dead)),
            absent(self.keys.claim(dead)),
            Compare {
                key: self.keys.owner(dead),
                target: Target::Create,
                cmp: Cmp::Greater,
                value: 0,
            },
        ];
        let claim = Op::Put {
            key: self.keys.claim(dead),
            value: keys::hex(lease).into_bytes(),
            lease,
        };
        etcd::txn(&compare, &[claim], &[])
    }

    pub(super) fn on_claim(
        &mut self,
        dead: i64,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let answer = check_txn(body)?;
        if !answer.succeeded {
            return Ok(()); // another replica was first, or the replica is back
        }
        outcome.claims += 1;
        self.take_claim(dead, answer.revision, now);
        Ok(())
    }

    /// `dead`'s messages are this replica's, as of etcd's `revision`.
    fn take_claim(&mut self, dead: i64, revision: i64, now: u64) {
        log::info!(
            "proxy-webhooks: fleet: node {} claimed the messages of dead lease {}",
            self.node_id,
            keys::hex(dead)
        );
        let claimed = Claimed {
            next: Some(self.keys.messages(dead)),
            retry_at: now,
            revision,
            open: self.open_under(dead),
            page: PAGE,
            ..Claimed::default()
        };
        self.claimed.push((dead, claimed));
    }

    /// The next page of each claimed lease, as many as the outbox has room for, once the
    /// registry was read after the claim; the release of those all read and finished.
    fn claimed_calls(&mut self, now: u64, out: &mut Vec<(CallId, Request)>) {
        let paging: u64 = self
            .calls
            .iter()
            .map(|(_, call)| match call {
                Call::Page { limit, .. } => *limit,
                _ => 0,
            })
            .sum();
        let mut room_left = (self.intake_room as u64).saturating_sub(paging);
        let mut due = Vec::new();
        for (lease, claimed) in &mut self.claimed {
            if claimed.busy || now < claimed.retry_at {
                continue;
            }
            let room = room_left.min(claimed.page.max(1));
            let call = match &claimed.next {
                Some(from) if room > 0 && self.synced_revision >= claimed.revision => {
                    room_left -= room;
                    let request = etcd::range_query(&RangeQuery {
                        key: from.clone(),
                        end: etcd::prefix_end(&self.keys.messages(*lease)),
                        limit: room,
                        ..RangeQuery::default()
                    });
                    let call = Call::Page {
                        lease: *lease,
                        limit: room,
                    };
                    (call, request)
                }
                None if claimed.open == 0 => (
                    Call::Release { lease: *lease },
                    release_request(&self.keys, *lease, claimed.sealed),
                ),
                _ => continue,
            };
            claimed.busy = true;
            due.push(call);
        }
        for (call, request) in due {
            self.push(out, call, request);
        }
    }

    pub(super) fn on_page(
        &mut self,
        dead: i64,
        body: &[u8],
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        let prefix = self.keys.messages(dead);
        let reread = self.claimed.iter().any(|(l, c)| *l == dead && c.reread);
        let mut found = Vec::new();
        let mut broken = Vec::new();
        let mut sealed = 0;
        for kv in &answer.kvs {
            let id = kv.key.strip_prefix(prefix.as_slice()).unwrap_or_default();
            let id = String::from_utf8_lossy(id);
            let finished = || reread && self.deleting().any(|r| r.key == kv.key);
            if self.entries.contains_key(id.as_ref()) || finished() {
                // Already here or finished (read before, or our own former lease's): not
                // delivered twice.
                continue;
            }
            let value = match self.vault.open_message(&id, &kv.value) {
                Ok(value) => value,
                Err(why) => {
                    if sealed == 0 {
                        log::warn!("proxy-webhooks: fleet: claimed message {id} cannot be read ({why}); left in etcd for a replica with its key");
                    }
                    sealed += 1;
                    outcome.unreadable += 1;
                    continue;
                }
            };
            match stored::decode(&value).filter(|m| m.webhook_id == id) {
                Some(message) => found.push(message),
                None => broken.push(kv.key.clone()),
            }
        }
        let open = found.len();
        for message in &found {
            self.insert_durable(&message.webhook_id, dead);
        }
        for key in broken {
            log::warn!(
                "proxy-webhooks: fleet: etcd key {} is not a message; deleted",
                String::from_utf8_lossy(&key)
            );
            let trim = false;
            self.removals.push_back(Removal {
                key,
                lease: 0,
                trim,
            });
        }
        let start = self.keys.messages(dead);
        if let Some(claimed) = self.claimed_mut(dead) {
            claimed.busy = false;
            claimed.open += open;
            claimed.sealed |= sealed > 0;
            claimed.next = match answer.kvs.last() {
                Some(last) if answer.more => Some([last.key.as_slice(), b"\0"].concat()),
                _ if std::mem::take(&mut claimed.rewind) => {
                    claimed.reread = true;
                    claimed.retry_at = now + RETRY_MS;
                    Some(start)
                }
                _ => {
                    claimed.reread = false;
                    None
                }
            };
        }
        if !found.is_empty() {
            outcome.events.push(Event::Claimed(found));
        }
        Ok(())
    }

    pub(super) fn on_release(&mut self, dead: i64, body: &[u8]) -> Result<(), String> {
        check_txn(body)?;
        self.claimed.retain(|(l, _)| *l != dead);
        Ok(())
    }

    pub(super) fn on_count_dead(&mut self, body: &[u8]) -> Result<(), String> {
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        let count = usize::try_from(answer.count).unwrap_or(usize::MAX);
        let excess = count.saturating_sub(self.max_dead).min(MAX_OPS);
        if excess > 0 {
            // Oldest first: the ones the trim removes.
            let request = etcd::range_query(&RangeQuery {
                key: self.keys.all(keys::DEAD),
                prefix: true,
                limit: excess as u64,
                keys_only: true,
                oldest_first: true,
                ..RangeQuery::default()
            });
            self.trim_due = Some(request);
        }
        Ok(())
    }

    pub(super) fn on_trim_dead(&mut self, body: &[u8]) -> Result<(), String> {
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        self.trims_open += answer.kvs.len();
        for kv in answer.kvs {
            self.removals.push_back(Removal {
                key: kv.key,
                lease: 0,
                trim: true,
            });
        }
        Ok(())
    }
}

/// Removes a released lease's keys: its owner, the claim, and any message left under it; with
/// messages sealed with a key this replica lacks (`sealed`), the claim only, so that a replica
/// with the key claims and delivers them.
fn release_request(keys: &Keys, dead: i64, sealed: bool) -> Request {
    let delete = |key, prefix| Op::Delete { key, prefix };
    let ops = match sealed {
        true => vec![delete(keys.claim(dead), false)],
        false => vec![
            delete(keys.owner(dead), false),
            delete(keys.claim(dead), false),
            delete(keys.messages(dead), true),
        ],
    };
    etcd::txn(&[], &ops, &[])
}

/// Keys of `kind` found in a scan's range answer, as leases.
fn leases_in(keys: &Keys, kind: &str, answer: Option<&OpAnswer>) -> Vec<i64> {
    let Some(OpAnswer::Range(range)) = answer else {
        return Vec::new();
    };
    range
        .kvs
        .iter()
        .filter_map(|kv| keys.name_in(kind, &kv.key))
        .filter_map(keys::parse_hex)
        .collect()
}
