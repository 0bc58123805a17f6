//! Portal session revocations shared by the fleet. A revocation through any replica is written
//! to `P/revoked/<consumer>` (the time up to which that consumer's sessions end, unix ms) before
//! it is answered ([`crate::fleet::commit`]'s `Write::Revoke`); every replica's dispatcher reads
//! `P/revoked/` every `sync_interval` and merges it into shared data
//! ([`crate::registry::portal`]), where every worker checks sessions against it.
//!
//! A revocation older than the longest session ([`MAX_TTL_MS`]) refuses nothing any more and is
//! not applied. The read is bounded ([`MAX_READ`] consumers).

use crate::fleet::etcd::{self, Request};
use crate::fleet::keys::{Keys, REVOKED};
use crate::model::session::MAX_TTL_MS;

/// Consumers' revocations read at most (an answer of ~100 KB).
pub const MAX_READ: u64 = 2000;

/// The periodic read of `P/revoked/`.
#[derive(Debug)]
pub struct Revocations {
    keys: Keys,
    interval_ms: u64,
    next_at: u64,
    waiting: bool,
}

impl Revocations {
    pub fn new(keys: Keys, interval_ms: u64) -> Revocations {
        Revocations {
            keys,
            interval_ms,
            next_at: 0,
            waiting: false,
        }
    }

    /// The read to send now, if one is due and none is waiting.
    pub fn due(&mut self, now: u64) -> Option<Request> {
        if self.waiting || now < self.next_at {
            return None;
        }
        self.waiting = true;
        Some(etcd::range_prefix(&self.keys.all(REVOKED), MAX_READ))
    }

    /// The read could not be sent or got no answer: tried again after `sync_interval`.
    pub fn on_failure(&mut self, now: u64) {
        self.waiting = false;
        self.next_at = now.saturating_add(self.interval_ms);
    }

    /// etcd's answer: the revocations still in force, `(consumer, up to ms)`.
    pub fn on_answer(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<(String, u64)>, String> {
        self.on_failure(now);
        if status != Some("200") {
            return Err(format!(
                "etcd answered the read of portal revocations with status {}",
                status.unwrap_or("none")
            ));
        }
        let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
        Ok(answer
            .kvs
            .iter()
            .filter_map(|kv| {
                let consumer = self.keys.name_in(REVOKED, &kv.key)?;
                let up_to: u64 = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
                let live = up_to.saturating_add(MAX_TTL_MS) > now;
                live.then(|| (consumer.to_string(), up_to))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    fn answer(kvs: &[(&str, &str)]) -> Vec<u8> {
        let kvs: Vec<serde_json::Value> = kvs
            .iter()
            .map(|(k, v)| {
                serde_json::json!({"key": STANDARD.encode(k), "value": STANDARD.encode(v),
                                   "mod_revision": "3", "create_revision": "3", "version": "1"})
            })
            .collect();
        serde_json::json!({"header": {"revision": "3"}, "kvs": kvs, "count": kvs.len().to_string()})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn reads_every_interval_and_keeps_what_is_in_force() {
        let mut r = Revocations::new(Keys::new("/pw"), 500);
        let request = r.due(0).unwrap();
        assert!(request.body.contains(&STANDARD.encode("/pw/revoked/")));
        assert_eq!(r.due(0), None, "one read at a time");
        let now = 10 * MAX_TTL_MS;
        let body = answer(&[
            ("/pw/revoked/acme", &(now - 1000).to_string()),
            ("/pw/revoked/old", &(now - MAX_TTL_MS).to_string()),
            ("/pw/revoked/bad", "x"),
            ("/pw/other/x", "5"),
        ]);
        assert_eq!(
            r.on_answer(Some("200"), &body, now),
            Ok(vec![("acme".to_string(), now - 1000)])
        );
        assert_eq!(r.due(now + 499), None);
        assert!(r.due(now + 500).is_some());
        assert!(r.on_answer(Some("503"), b"", now).is_err());
        assert!(r.due(now).is_none());
        assert!(r.on_answer(Some("200"), b"not json", now + 500).is_err());
    }
}
