//! Static subscriptions in fleet mode, pure. Their URL, secret, events, consumer and
//! `privileged` flag are the configuration's on every replica and never go to etcd; only their
//! status does, under `P/static/<id>/<definition>` ([`definition`]: a hash of the URL and the
//! secret), so that etcd never holds the secret and one moved in the configuration (another
//! definition) starts active again. A status write is one put, the last writer wins (a PATCH
//! or a receiver's 410 on any replica).
//!
//! [`Statics`] reads those keys: all of them once at start, then the ones written since the last
//! read every `sync_interval` (only while the configuration has static subscriptions). The first
//! read deletes the keys no configured definition here owns (a subscription removed from the
//! configuration, or moved: its former definition); a replica that still has it keeps the status
//! it read. It also deletes the copies of static subscriptions that earlier versions wrote
//! under `P/sub/` (whole records, secret included): the dispatcher hands it the ids the
//! registry read found ([`Statics::check_legacy`]); each is read again and deleted only while it
//! is still a static record (compared on its revision).

use super::keys::{Keys, STATIC, SUB};
use crate::fleet::etcd::{self, Cmp, Compare, Op, OpAnswer, RangeQuery, Request, Target};
use crate::model::subscription::{Status, Subscription};
use crate::support::record;
use sha2::{Digest, Sha256};

/// Legacy records read per check, at most.
const LEGACY_PER_READ: usize = 64;

/// A static subscription's status as shared in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub status: Status,
    pub disabled_reason: Option<String>,
    pub updated_at_ms: u64,
}

impl Shared {
    pub fn of(sub: &Subscription) -> Shared {
        Shared {
            status: sub.status,
            disabled_reason: sub.disabled_reason.clone(),
            updated_at_ms: sub.updated_at_ms,
        }
    }

    /// `{"status": ..., "disabled_reason": ..., "updated_at_ms": ...}`, written out rather than
    /// through `serde_json::Value`, whose serializer costs the wasm its float formatting.
    pub fn encode(&self) -> Vec<u8> {
        let status = match self.status {
            Status::Active => "active",
            Status::Disabled => "disabled",
        };
        let reason = self
            .disabled_reason
            .as_deref()
            .and_then(|r| serde_json::to_string(r).ok())
            .map(|r| format!(r#","disabled_reason":{r}"#))
            .unwrap_or_default();
        format!(
            r#"{{"status":"{status}"{reason},"updated_at_ms":{}}}"#,
            self.updated_at_ms
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Shared> {
        let o = record::parse_object(bytes)?;
        let status = record::variant(
            o.get("status")?,
            &["active", "disabled"],
            &[Status::Active, Status::Disabled],
        )?;
        Some(Shared {
            status,
            disabled_reason: record::optional(&o, "disabled_reason", record::as_string)?,
            updated_at_ms: record::uint(&o, "updated_at_ms")?,
        })
    }

    /// Whether `sub` already has this status.
    pub fn holds_in(&self, sub: &Subscription) -> bool {
        sub.status == self.status && sub.disabled_reason == self.disabled_reason
    }
}

/// What identifies a static subscription's definition in etcd: the first 16 bytes of
/// SHA-256(url, 0, secret) in hex. It changes when the URL or the secret does, and tells
/// nothing of the secret (a random one of at least 24 bytes).
pub fn definition(url: &str, secret: &str) -> String {
    definition_of_secrets(url, [secret])
}

/// The definition of a static subscription's record: SHA-256(url, 0, secret, 0, key...) over
/// its secrets in order (the `whsec_` secret and the ed25519 key of a `v1,v1a` one), the same
/// as [`definition`] for one secret.
pub fn definition_of(sub: &Subscription) -> String {
    definition_of_secrets(&sub.url, sub.secrets.iter().map(|s| s.secret.as_str()))
}

fn definition_of_secrets<'s>(url: &str, secrets: impl IntoIterator<Item = &'s str>) -> String {
    let mut hash = Sha256::new();
    hash.update(url.as_bytes());
    for secret in secrets {
        hash.update([0u8]);
        hash.update(secret.as_bytes());
    }
    let digest = hash.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The key of `sub`'s shared status.
pub fn status_key(keys: &Keys, sub: &Subscription) -> Vec<u8> {
    keys.static_status(&sub.id, &definition_of(sub))
}

/// Which call is waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Statuses,
    Legacy,
    Delete,
    DeleteLogs,
}

/// The statuses of the configured static subscriptions, read from etcd; see the module doc.
#[derive(Debug)]
pub struct Statics {
    keys: Keys,
    interval_ms: u64,
    /// The configured static subscriptions: id and definition.
    wanted: Vec<(String, String)>,
    /// etcd's revision at the last statuses read (0: none yet).
    revision: i64,
    waiting: Option<Call>,
    next_at: u64,
    /// Ids whose `P/sub/` record may be a legacy copy, to read.
    legacy: Vec<String>,
    /// Keys to delete, each compared on its mod revision.
    deletes: Vec<(Vec<u8>, i64)>,
    /// Static subscriptions removed from the configuration whose delivery logs
    /// (`P/log/<id>/`) and health summaries (`P/health/<id>/`) go too.
    stale_logs: Vec<String>,
}

impl Statics {
    /// `configured`: the static subscriptions' records as the configuration makes them.
    pub fn new(keys: Keys, interval_ms: u64, configured: &[Subscription]) -> Statics {
        let wanted = configured
            .iter()
            .map(|s| (s.id.clone(), definition_of(s)))
            .collect();
        Statics {
            keys,
            interval_ms,
            wanted,
            revision: 0,
            waiting: None,
            next_at: 0,
            legacy: Vec::new(),
            deletes: Vec::new(),
            stale_logs: Vec::new(),
        }
    }

    /// Whether the statuses were read once (or there is nothing to read).
    pub fn ready(&self) -> bool {
        self.wanted.is_empty() || self.revision > 0
    }

    /// Whether `id` is a configured static subscription's.
    pub fn is_configured(&self, id: &str) -> bool {
        self.wanted.iter().any(|(w, _)| w == id)
    }

    /// `id`'s `P/sub/` record is a static subscription's, or names a configured one: read it
    /// again and delete it if it is a static record.
    pub fn check_legacy(&mut self, id: &str) {
        if !self.legacy.iter().any(|l| l == id) {
            self.legacy.push(id.to_string());
        }
    }

    /// The call to send now, if one is due and none is waiting.
    pub fn due(&mut self, now: u64) -> Option<Request> {
        if self.waiting.is_some() {
            return None;
        }
        let (call, request) = if let Some((key, revision)) = self.deletes.last() {
            (Call::Delete, delete_request(key, *revision))
        } else if let Some(id) = self.stale_logs.last() {
            (Call::DeleteLogs, self.delete_logs_request(id))
        } else if !self.legacy.is_empty() {
            (Call::Legacy, self.legacy_request())
        } else if now >= self.next_at && (self.revision == 0 || !self.wanted.is_empty()) {
            (Call::Statuses, self.statuses_request())
        } else {
            return None;
        };
        self.waiting = Some(call);
        Some(request)
    }

    /// One txn for both of a removed subscription's per-replica prefixes.
    fn delete_logs_request(&self, id: &str) -> Request {
        let logs = Op::Delete {
            key: self.keys.logs(id),
            prefix: true,
        };
        let healths = Op::Delete {
            key: self.keys.healths(id),
            prefix: true,
        };
        etcd::txn(&[], &[logs, healths], &[])
    }

    fn statuses_request(&self) -> Request {
        etcd::range_query(&RangeQuery {
            key: self.keys.all(STATIC),
            prefix: true,
            min_mod_revision: if self.revision > 0 {
                self.revision + 1
            } else {
                0
            },
            ..RangeQuery::default()
        })
    }

    fn legacy_request(&self) -> Request {
        let reads: Vec<Op> = self
            .legacy
            .iter()
            .take(LEGACY_PER_READ)
            .map(|id| Op::Range {
                key: self.keys.subscription(id),
                prefix: false,
                limit: 0,
            })
            .collect();
        etcd::txn(&[], &reads, &[])
    }

    /// Takes the answer to the call [`Statics::due`] sent: the statuses of configured static
    /// subscriptions found (to apply), or why the answer is not usable.
    pub fn on_answer(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<(String, Shared)>, String> {
        let call = self.waiting.take();
        self.done(call.as_ref(), now);
        if status != Some("200") {
            return Err(format!(
                "etcd answered a call about static subscriptions with status {}",
                status.unwrap_or("none")
            ));
        }
        match call {
            Some(Call::Statuses) => self.on_statuses(body),
            Some(Call::Legacy) => self.on_legacy(body).map(|()| Vec::new()),
            Some(Call::Delete) => etcd::parse_txn(body)
                .map(|_| Vec::new())
                .map_err(|e| e.to_string()),
            Some(Call::DeleteLogs) => etcd::parse_txn(body)
                .map(|_| Vec::new())
                .map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        }
    }

    /// A call answered or failed: a statuses read is due again after the interval; a delete or
    /// a legacy check is tried once (a failed one is found again at the next start).
    fn done(&mut self, call: Option<&Call>, now: u64) {
        match call {
            Some(Call::Statuses) => self.next_at = now + self.interval_ms,
            Some(Call::Delete) => {
                self.deletes.pop();
            }
            Some(Call::DeleteLogs) => {
                self.stale_logs.pop();
            }
            Some(Call::Legacy) => {
                let read = self.legacy.len().min(LEGACY_PER_READ);
                self.legacy.drain(..read);
            }
            None => {}
        }
    }

    fn on_statuses(&mut self, body: &[u8]) -> Result<Vec<(String, Shared)>, String> {
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        let first = self.revision == 0;
        let mut found = Vec::new();
        for kv in &answer.kvs {
            let name = self.keys.name_in(STATIC, &kv.key).unwrap_or_default();
            let (id, def) = name.split_once('/').unwrap_or((name, ""));
            let configured = self.wanted.iter().any(|(w, d)| w == id && d == def);
            match (configured, Shared::decode(&kv.value)) {
                (true, Some(shared)) => found.push((id.to_string(), shared)),
                (true, None) => log::warn!(
                    "proxy-webhooks: fleet: etcd key {} is not a static subscription's status; ignored",
                    String::from_utf8_lossy(&kv.key)
                ),
                (false, _) if first => {
                    self.deletes.push((kv.key.clone(), kv.mod_revision));
                    let removed = !self.is_configured(id);
                    if removed && !self.stale_logs.iter().any(|s| s == id) {
                        self.stale_logs.push(id.to_string());
                    }
                }
                (false, _) => {}
            }
        }
        self.revision = answer.revision.max(1);
        Ok(found)
    }

    /// Queues the delete of every record read that is a static subscription's.
    fn on_legacy(&mut self, body: &[u8]) -> Result<(), String> {
        let answer = etcd::parse_txn(body).map_err(|e| e.to_string())?;
        for response in &answer.responses {
            let OpAnswer::Range(range) = response else {
                continue;
            };
            for kv in &range.kvs {
                let legacy = Subscription::from_json(&kv.value).is_some_and(|s| s.is_static);
                if legacy && self.keys.name_in(SUB, &kv.key).is_some() {
                    log::info!(
                        "proxy-webhooks: fleet: deleting {} from etcd: a copy of a static subscription written by an earlier version (static subscriptions are the configuration's)",
                        String::from_utf8_lossy(&kv.key)
                    );
                    self.deletes.push((kv.key.clone(), kv.mod_revision));
                }
            }
        }
        Ok(())
    }

    /// A call that failed before any answer (refused, timed out).
    pub fn on_failure(&mut self, now: u64) {
        let call = self.waiting.take();
        self.done(call.as_ref(), now);
    }
}

/// Deletes `key` while it is still the one read (its mod revision).
fn delete_request(key: &[u8], mod_revision: i64) -> Request {
    let unchanged = Compare {
        key: key.to_vec(),
        target: Target::Mod,
        cmp: Cmp::Equal,
        value: mod_revision,
    };
    let delete = Op::Delete {
        key: key.to_vec(),
        prefix: false,
    };
    etcd::txn(&[unchanged], &[delete], &[])
}

#[cfg(test)]
mod tests;
