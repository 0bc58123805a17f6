//! Every key fleet mode keeps in etcd, under `fleet.prefix` (P):
//! - `P/sub/<id>`: a subscription record, the same JSON as in shared data.
//! - `P/slot/<consumer>/<n>`: the id of one of the consumer's API subscriptions, `n` in decimal
//!   below `api.max_subscriptions_per_consumer`. A create takes a free slot in the txn that
//!   writes its record, a delete frees it, so the limit holds across replicas while creates that
//!   pick different slots do not contend (see [`crate::fleet::commit`]).
//!   Its value is the id, a space and the subscription's cap slot number (below), or the id
//!   alone for subscriptions created before `api.max_subscriptions` (they hold no cap slot).
//! - `P/cap/<n>`: the id of one API subscription, `n` zero-padded to 8 digits (so key order is
//!   number order) below `api.max_subscriptions`: the registry-wide limit, kept like the
//!   per-consumer one (taken with the record, freed with it; see [`crate::fleet::commit`]).
//! - `P/live/<lease>`: a replica's node id, attached to its lease (gone: the replica is dead).
//! - `P/owner/<lease>`: the node id, without a lease: the lease has (or had) messages.
//! - `P/claim/<lease>`: the lease of the replica that took a dead lease's messages over,
//!   attached to that replica's lease.
//! - `P/node/<node id>`: the node's current lease, attached to it (gone with it), so a restart
//!   finds its messages and a second process given the same node id is noticed.
//! - `P/static/<id>/<definition>`: the shared status of a static subscription (only that: its
//!   definition is the configuration's), the definition a hash of its URL and secret (see
//!   [`crate::fleet::statics`]).
//! - `P/msg/<lease>/<webhook-id>`: a pending delivery owned by that lease.
//! - `P/dead/<webhook-id>`: an exhausted or dropped delivery kept for replay (bounded).
//! - `P/log/<subscription id>/<node id>`: that replica's delivery log of the subscription
//!   (see [`crate::fleet::log`]).
//! - `P/revoked/<consumer>`: the time (unix ms, decimal) up to which the consumer's portal
//!   sessions are revoked (see [`crate::fleet::revocations`]).
//!
//! Leases are written in lowercase hex, as etcdctl shows them.

/// The keys of one fleet (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` has no trailing `/` (the configuration trims it).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> Vec<u8> {
        format!("{}/{kind}/{name}", self.prefix).into_bytes()
    }

    /// The prefix of every key of `kind` (`P/<kind>/`).
    pub fn all(&self, kind: &str) -> Vec<u8> {
        self.key(kind, "")
    }

    pub fn subscription(&self, id: &str) -> Vec<u8> {
        self.key(SUB, id)
    }

    /// The prefix of the consumer's slots (a slot's key is this and its number).
    pub fn slots(&self, consumer: &str) -> Vec<u8> {
        let mut key = self.key(SLOT, consumer);
        key.push(b'/');
        key
    }

    /// The prefix of every cap slot.
    pub fn caps(&self) -> Vec<u8> {
        self.all(CAP)
    }

    /// Cap slot `n` (zero-padded: [`CAP_DIGITS`] digits).
    pub fn cap(&self, n: u64) -> Vec<u8> {
        self.key(CAP, &format!("{n:0width$}", width = CAP_DIGITS))
    }

    /// The number of cap slot `key` (None: not a cap slot as [`Keys::cap`] writes it).
    pub fn cap_number(&self, key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(self.caps().as_slice())?;
        let all_digits = digits.len() == CAP_DIGITS && digits.iter().all(u8::is_ascii_digit);
        all_digits.then(|| std::str::from_utf8(digits).ok()?.parse().ok())?
    }

    pub fn live(&self, lease: i64) -> Vec<u8> {
        self.key(LIVE, &hex(lease))
    }

    pub fn owner(&self, lease: i64) -> Vec<u8> {
        self.key(OWNER, &hex(lease))
    }

    pub fn claim(&self, lease: i64) -> Vec<u8> {
        self.key(CLAIM, &hex(lease))
    }

    /// The shared status of static subscription `id` as `definition` defines it.
    pub fn static_status(&self, id: &str, definition: &str) -> Vec<u8> {
        self.key(STATIC, &format!("{id}/{definition}"))
    }

    pub fn node(&self, node_id: &str) -> Vec<u8> {
        self.key(NODE, node_id)
    }

    /// The prefix of every message owned by `lease`.
    pub fn messages(&self, lease: i64) -> Vec<u8> {
        self.key(MSG, &format!("{}/", hex(lease)))
    }

    pub fn message(&self, lease: i64, webhook_id: &str) -> Vec<u8> {
        self.key(MSG, &format!("{}/{webhook_id}", hex(lease)))
    }

    pub fn dead(&self, webhook_id: &str) -> Vec<u8> {
        self.key(DEAD, webhook_id)
    }

    /// The prefix of every replica's delivery log of `subscription_id`.
    pub fn logs(&self, subscription_id: &str) -> Vec<u8> {
        self.key(LOG, &format!("{subscription_id}/"))
    }

    /// `node_id`'s delivery log of `subscription_id`.
    pub fn log(&self, subscription_id: &str, node_id: &str) -> Vec<u8> {
        self.key(LOG, &format!("{subscription_id}/{node_id}"))
    }

    /// When `consumer`'s portal sessions were last revoked.
    pub fn revoked(&self, consumer: &str) -> Vec<u8> {
        self.key(REVOKED, consumer)
    }

    /// The last segment of a key of `kind` (an id, a consumer, a lease in hex), when `key` is one.
    pub fn name_in<'k>(&self, kind: &str, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        let name = rest.strip_prefix(kind)?.strip_prefix('/')?;
        (!name.is_empty()).then_some(name)
    }
}

pub const SUB: &str = "sub";
pub const SLOT: &str = "slot";
pub const CAP: &str = "cap";
/// Digits of a cap slot's number: `api.max_subscriptions` is at most 10,000,000, whose slots
/// are numbered below it.
pub const CAP_DIGITS: usize = 8;
pub const LIVE: &str = "live";
pub const OWNER: &str = "owner";
pub const CLAIM: &str = "claim";
pub const NODE: &str = "node";
pub const MSG: &str = "msg";
pub const DEAD: &str = "dead";
pub const LOG: &str = "log";
pub const STATIC: &str = "static";
pub const REVOKED: &str = "revoked";

/// A lease id as lowercase hex.
pub fn hex(lease: i64) -> String {
    format!("{lease:x}")
}

/// A lease id from its hex form.
pub fn parse_hex(s: &str) -> Option<i64> {
    i64::from_str_radix(s, 16).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let k = Keys::new("/pw");
        assert_eq!(k.subscription("sub_1"), b"/pw/sub/sub_1");
        assert_eq!(k.slots("acme"), b"/pw/slot/acme/");
        assert_eq!(k.cap(42), b"/pw/cap/00000042");
        assert_eq!(k.cap(10_000_000), b"/pw/cap/10000000");
        assert_eq!(k.cap_number(b"/pw/cap/00000042"), Some(42));
        for bad in [
            "/pw/cap/42",
            "/pw/cap/0000004x",
            "/pw/cap/000000042",
            "/pw/slot/00000042",
        ] {
            assert_eq!(k.cap_number(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(k.live(255), b"/pw/live/ff");
        assert_eq!(k.owner(255), b"/pw/owner/ff");
        assert_eq!(k.claim(255), b"/pw/claim/ff");
        assert_eq!(k.node("n1"), b"/pw/node/n1");
        assert_eq!(k.messages(255), b"/pw/msg/ff/");
        assert_eq!(k.message(255, "msg_1"), b"/pw/msg/ff/msg_1");
        assert_eq!(k.dead("msg_1"), b"/pw/dead/msg_1");
        assert_eq!(k.logs("sub_1"), b"/pw/log/sub_1/");
        assert_eq!(k.log("sub_1", "n1"), b"/pw/log/sub_1/n1");
        assert_eq!(k.all(SUB), b"/pw/sub/");
        assert_eq!(k.static_status("audit", "0a1b"), b"/pw/static/audit/0a1b");
        assert_eq!(k.all(STATIC), b"/pw/static/");
        assert_eq!(k.revoked("acme"), b"/pw/revoked/acme");
    }

    #[test]
    fn names_are_read_back_only_from_keys_of_their_kind() {
        let k = Keys::new("/pw");
        assert_eq!(k.name_in(SUB, b"/pw/sub/sub_1"), Some("sub_1"));
        assert_eq!(k.name_in(LIVE, b"/pw/live/ff"), Some("ff"));
        assert_eq!(k.name_in(SUB, b"/pw/sub/"), None);
        assert_eq!(k.name_in(SUB, b"/pw/slot/acme/0"), None);
        assert_eq!(k.name_in(SUB, b"/other/sub/x"), None);
        assert_eq!(k.name_in(SUB, b"/pw/subx/y"), None);
        assert_eq!(k.name_in(SUB, &[0xff, 0xfe]), None);
        assert_eq!(parse_hex("ff"), Some(255));
        assert_eq!(
            (parse_hex("0"), parse_hex("zz"), parse_hex("")),
            (None, None, None)
        );
        assert_eq!(parse_hex(&hex(i64::MAX)), Some(i64::MAX));
    }
}
