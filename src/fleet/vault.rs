//! What fleet mode keeps sealed in etcd (`fleet.encryption_key`, docs/fleet.md): the signing
//! secrets and ed25519 keys of every record (`"secret": "pws1.<key id>.…"` inside the record's
//! JSON, bound to the subscription's id) and its receiver headers' values (likewise), and with `fleet.encrypt_payloads` whole messages (`P/msg/`,
//! `P/dead/`, bound to their webhook-id). Values written before encryption was turned on are
//! read as they are and sealed when next written; a value no configured key opens is reported,
//! never guessed at.

use crate::model::subscription::Subscription;
use crate::support::ids::{RandomSource, RandomUnavailable};
use crate::support::sealing::{self, Keyring, OpenError};

/// How values are sealed in etcd; the default seals nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vault {
    keyring: Option<Keyring>,
    payloads: bool,
}

/// A record read back from etcd.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Its secrets in the clear (opened, or never sealed).
    Readable(Subscription),
    /// A record whose secrets no configured key opens: kept sealed (never used to sign, the
    /// API answers 503 for it), with why.
    Unreadable(Subscription, OpenError),
}

impl Vault {
    /// `payloads` counts only with a keyring.
    pub fn new(keyring: Option<Keyring>, payloads: bool) -> Vault {
        let payloads = payloads && keyring.is_some();
        Vault { keyring, payloads }
    }

    /// A record as etcd keeps it: its JSON, each secret and receiver header value sealed.
    pub fn seal_record(
        &self,
        rng: &mut dyn RandomSource,
        sub: &Subscription,
    ) -> Result<Vec<u8>, String> {
        let mut sealed;
        let record = match &self.keyring {
            None => sub,
            Some(keyring) => {
                sealed = sub.clone();
                let context = record_context(&sub.id);
                for value in sealed_values(&mut sealed) {
                    // One still sealed with a key this replica lacks is written as it was.
                    if !is_sealed_secret(value) {
                        *value = keyring
                            .seal_text(rng, &context, value)
                            .map_err(no_randomness)?;
                    }
                }
                &sealed
            }
        };
        serde_json::to_vec(record).map_err(|e| format!("the record cannot be encoded: {e}"))
    }

    /// A record etcd holds, its secrets opened; None when the bytes are no record.
    pub fn open_record(&self, bytes: &[u8]) -> Option<Record> {
        let mut sub = Subscription::from_json(bytes)?;
        let context = record_context(&sub.id);
        let mut failed = None;
        for value in sealed_values(&mut sub) {
            if !is_sealed_secret(value) {
                continue;
            }
            let opened = match &self.keyring {
                Some(keyring) => keyring.open_text(&context, value),
                None => Err(OpenError::UnknownKey(
                    sealing::key_id_of(value.as_bytes())
                        .unwrap_or_default()
                        .to_string(),
                )),
            };
            match opened {
                Ok(plain) => *value = plain,
                Err(why) => {
                    failed = Some(why);
                    break;
                }
            }
        }
        match failed {
            Some(why) => Some(Record::Unreadable(sub, why)),
            None => Some(Record::Readable(sub)),
        }
    }

    /// A message's stored form (see [`crate::fleet::stored`]) as etcd keeps it: sealed with
    /// `fleet.encrypt_payloads`, else as it is. None without randomness to seal it (then it
    /// stays in memory only).
    pub fn seal_message(
        &self,
        rng: &mut dyn RandomSource,
        webhook_id: &str,
        stored: Vec<u8>,
    ) -> Option<Vec<u8>> {
        match &self.keyring {
            Some(keyring) if self.payloads => keyring
                .seal(rng, &message_context(webhook_id), &stored)
                .ok(),
            _ => Some(stored),
        }
    }

    /// A message etcd holds for `webhook_id`, opened (one written in the clear as it is).
    pub fn open_message(&self, webhook_id: &str, value: &[u8]) -> Result<Vec<u8>, OpenError> {
        if !sealing::is_sealed(value) {
            return Ok(value.to_vec());
        }
        let Some(keyring) = &self.keyring else {
            let id = sealing::key_id_of(value).unwrap_or_default();
            return Err(OpenError::UnknownKey(id.to_string()));
        };
        keyring.open(&message_context(webhook_id), value)
    }
}

/// The values of a record that are sealed in etcd: its secrets (HMAC secrets and ed25519 keys)
/// and its receiver headers' values.
fn sealed_values(sub: &mut Subscription) -> impl Iterator<Item = &mut String> {
    let secrets = sub.secrets.iter_mut().map(|s| &mut s.secret);
    secrets.chain(sub.headers.iter_mut().map(|h| &mut h.value))
}

/// Whether any of a record's sealed values is still sealed (no configured key opened it): such
/// a record never signs nor delivers, and the API answers 503 for it.
pub fn has_sealed_values(sub: &Subscription) -> bool {
    let secrets = sub.secrets.iter().map(|s| &s.secret);
    secrets
        .chain(sub.headers.iter().map(|h| &h.value))
        .any(|v| is_sealed_secret(v))
}

/// Whether a record's secret is (still) sealed: one read from etcd that no configured key
/// opened. Such a record never signs, and the API answers 503 for it.
pub fn is_sealed_secret(secret: &str) -> bool {
    sealing::is_sealed(secret.as_bytes())
}

fn record_context(id: &str) -> Vec<u8> {
    format!("sub/{id}").into_bytes()
}

fn message_context(webhook_id: &str) -> Vec<u8> {
    format!("msg/{webhook_id}").into_bytes()
}

fn no_randomness(_: RandomUnavailable) -> String {
    "no randomness to seal the record's secrets with".into()
}

#[cfg(test)]
mod tests;
