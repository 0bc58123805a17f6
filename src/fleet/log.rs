//! The delivery log shared by the fleet. Each replica keeps its own attempts of a subscription
//! in its shared-data log ([`crate::registry::attempts`], the last 50) and copies that log to
//! `P/log/<subscription>/<node id>` at most once per `sync_interval` after new attempts, in one
//! txn for up to [`MAX_OPS`] subscriptions. The API reads `P/log/<subscription>/`: every
//! replica's attempts, merged newest first and cut to the last 50 of the last 7 days, so any
//! replica gives the same answer, a dead replica's attempts included. Each log is written with
//! its health summary ([`crate::fleet::health`]). A subscription's delete
//! takes its `P/log/` keys with it ([`crate::fleet::commit`]).
//!
//! A claimed message keeps its attempt number: before a dead replica's page of messages joins
//! the outbox, the logs of their subscriptions are read ([`lookup_many`]) and each message goes
//! on from the highest attempt any replica logged for its webhook-id ([`attempts_made`]).

use crate::fleet::etcd::{self, Op, OpAnswer, Request};
use crate::fleet::health;
use crate::fleet::journal::{MAX_BATCH_BYTES, MAX_OPS};
use crate::fleet::keys::Keys;
use crate::registry::attempts::{self, Attempt, MAX_ENTRIES};
use crate::support::hashing::HashMap;
use crate::support::time::format_rfc3339_millis;

/// Attempts older than this are not answered (and not written again).
pub const MAX_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Replicas' logs read per subscription at most. A full log is ~11 KB, ~15 KB as base64 in
/// etcd's answer, so 16 of them stay under the 256 KiB Envoy buffers of an answer
/// (`http.async_response_buffer_limit` in the shipped wiring); node ids of replicas gone for
/// good stay until the subscription is deleted.
pub const MAX_NODES: u64 = 16;
/// Subscriptions whose logs one read for claimed messages covers: with 3 replicas' full logs
/// each, an answer of ~180 KB.
pub const LOOKUP_SUBSCRIPTIONS: usize = 4;

/// Subscriptions whose logs one txn writes: two operations each (the log and its health
/// summary, [`crate::fleet::health`]).
pub const PER_WRITE: usize = MAX_OPS / 2;

/// The txn that writes this replica's logs and their health summaries: `(subscription id, its
/// attempts newest first)`, as many as fit in one txn from the front of `logs`; the rest is for
/// the next one. An empty log deletes the keys (a subscription whose attempts all aged out).
pub fn writes(keys: &Keys, node: &str, logs: &[(String, Vec<Attempt>)]) -> (Request, usize) {
    let mut ops = Vec::new();
    let mut bytes = 0;
    for (id, log) in logs.iter().take(PER_WRITE) {
        let key = keys.log(id, node);
        let value = serde_json::to_vec(log).unwrap_or_default();
        if !ops.is_empty() && bytes + value.len() > MAX_BATCH_BYTES {
            break;
        }
        bytes += value.len();
        ops.push(match log.is_empty() {
            true => Op::Delete { key, prefix: false },
            false => Op::Put {
                key,
                value,
                lease: 0,
            },
        });
        ops.push(health::write(keys, node, id, log));
    }
    let taken = ops.len() / 2;
    (etcd::txn(&[], &ops, &[]), taken)
}

/// Whether etcd took a [`writes`] txn; `Err` says why not.
pub fn written(status: Option<&str>, body: &[u8]) -> Result<(), String> {
    answered(status)?;
    etcd::parse_txn(body).map(drop).map_err(|e| e.to_string())
}

/// The read of every replica's log of `subscription_id`.
pub fn lookup(keys: &Keys, subscription_id: &str) -> Request {
    etcd::range_prefix(&keys.logs(subscription_id), MAX_NODES)
}

/// etcd's answer to [`lookup`]: the fleet's attempts, newest first; `Err` (why) when etcd did
/// not answer usably. A replica's log that does not parse is left out.
pub fn read(status: Option<&str>, body: &[u8], now_ms: u64) -> Result<Vec<Attempt>, String> {
    answered(status)?;
    let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
    let logs = answer
        .kvs
        .iter()
        .filter_map(|kv| attempts::parse_log(&kv.value));
    Ok(merge(logs, now_ms))
}

/// The attempts of several replicas' logs as one: newest first, the last [`MAX_ENTRIES`] of the
/// last [`MAX_AGE_MS`]. Timestamps are all RFC 3339 with milliseconds in UTC, so their text
/// orders them.
pub fn merge(logs: impl IntoIterator<Item = Vec<Attempt>>, now_ms: u64) -> Vec<Attempt> {
    let mut all: Vec<Attempt> = logs.into_iter().flatten().collect();
    all.sort_by(|a, b| b.timestamp.cmp(&a.timestamp));
    fresh(all, now_ms)
}

/// The entries of a log (newest first) that are recent enough to keep, at most [`MAX_ENTRIES`].
pub fn fresh(log: Vec<Attempt>, now_ms: u64) -> Vec<Attempt> {
    let oldest = format_rfc3339_millis(now_ms.saturating_sub(MAX_AGE_MS));
    log.into_iter()
        .take_while(|a| a.timestamp >= oldest)
        .take(MAX_ENTRIES)
        .collect()
}

/// One read of the logs of several subscriptions (the first [`MAX_OPS`] of `subscription_ids`;
/// callers send [`LOOKUP_SUBSCRIPTIONS`] at a time).
pub fn lookup_many<'a>(
    keys: &Keys,
    subscription_ids: impl IntoIterator<Item = &'a str>,
) -> Request {
    let reads: Vec<Op> = subscription_ids
        .into_iter()
        .take(MAX_OPS)
        .map(|id| Op::Range {
            key: keys.logs(id),
            prefix: true,
            limit: MAX_NODES,
        })
        .collect();
    etcd::txn(&[], &reads, &[])
}

/// etcd's answer to [`lookup_many`]: the highest attempt number logged per webhook-id.
pub fn attempts_made(status: Option<&str>, body: &[u8]) -> Result<HashMap<String, u32>, String> {
    answered(status)?;
    let answer = etcd::parse_txn(body).map_err(|e| e.to_string())?;
    let mut made: HashMap<String, u32> = HashMap::default();
    let ranges = answer.responses.into_iter().filter_map(|op| match op {
        OpAnswer::Range(range) => Some(range),
        _ => None,
    });
    for kv in ranges.flat_map(|r| r.kvs) {
        for attempt in attempts::parse_log(&kv.value).unwrap_or_default() {
            let highest = made.entry(attempt.webhook_id).or_default();
            *highest = (*highest).max(attempt.attempt);
        }
    }
    Ok(made)
}

fn answered(status: Option<&str>) -> Result<(), String> {
    match status {
        Some("200") => Ok(()),
        Some(other) => Err(format!("answered HTTP {other}")),
        None => Err("did not answer (timeout or reset)".into()),
    }
}

#[cfg(test)]
mod tests;
