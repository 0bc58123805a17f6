//! Sealing values kept outside the process (fleet mode's etcd): XChaCha20-Poly1305 (an AEAD:
//! a changed byte is detected, not decrypted into garbage) with a 256-bit key, a random 192-bit
//! nonce from the host (random nonces of that size never collide in practice, whatever the
//! number of values sealed), and associated data naming what the value is, so a sealed value
//! moved to another record does not open there.
//!
//! The key's id (the first 8 bytes of its SHA-256, in hex) is kept beside the ciphertext, so a
//! reader knows which key to try and keys rotate without downtime: writes use the current key,
//! reads any configured one. Two forms:
//! - bytes: `pws1.<key id, 16 hex>.<nonce, 24 bytes><ciphertext and tag>`
//! - text (inside JSON): `pws1.<key id, 16 hex>.<base64url of nonce, ciphertext and tag>`

use crate::support::ids::{RandomSource, RandomUnavailable};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// What every sealed value starts with.
pub const PREFIX: &str = "pws1.";
/// Key bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const ID_HEX_LEN: usize = 16;
/// The prefix, the key id and its `.`.
const HEADER_LEN: usize = PREFIX.len() + ID_HEX_LEN + 1;

/// One key and its id.
#[derive(Clone)]
pub struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Only the id: a key never reaches a log through `{:?}`.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.id == other.id
    }
}

impl Key {
    pub fn new(bytes: &[u8; KEY_LEN]) -> Key {
        let digest = Sha256::digest(bytes);
        let id = digest
            .iter()
            .take(ID_HEX_LEN / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        Key {
            id,
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// The first 8 bytes of the key's SHA-256, in hex.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed with a key none of the configured ones is (its id).
    UnknownKey(String),
    /// Not a sealed value, or changed since it was sealed, or sealed for another record.
    Broken,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::UnknownKey(id) => write!(
                f,
                "sealed with key id {id}, which is neither fleet.encryption_key nor one of fleet.previous_encryption_keys"
            ),
            OpenError::Broken => f.write_str("a sealed value that does not open (changed, cut, or moved from another record)"),
        }
    }
}

/// The current key and the previous ones still read.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl Keyring {
    pub fn new(current: Key, previous: Vec<Key>) -> Keyring {
        Keyring { current, previous }
    }

    /// The id new values are sealed with.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// `plain` sealed with the current key, bound to `context` (bytes form).
    pub fn seal(
        &self,
        rng: &mut dyn RandomSource,
        context: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, RandomUnavailable> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)?;
        let payload = Payload {
            msg: plain,
            aad: context,
        };
        // Encryption fails only for messages past 256 GiB; none is that large.
        let sealed = self
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .map_err(|_| RandomUnavailable)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX.as_bytes());
        out.extend_from_slice(self.current.id.as_bytes());
        out.push(b'.');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// A value of [`Keyring::seal`] opened with the key its id names.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (key, body) = self.key_of(sealed)?;
        if body.len() < NONCE_LEN {
            return Err(OpenError::Broken);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context,
        };
        key.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| OpenError::Broken)
    }

    /// `plain` sealed as text (for a JSON string).
    pub fn seal_text(
        &self,
        rng: &mut dyn RandomSource,
        context: &[u8],
        plain: &str,
    ) -> Result<String, RandomUnavailable> {
        let sealed = self.seal(rng, context, plain.as_bytes())?;
        let body = sealed.get(HEADER_LEN..).unwrap_or_default();
        let header = sealed.get(..HEADER_LEN).unwrap_or_default();
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(header),
            URL_SAFE_NO_PAD.encode(body)
        ))
    }

    /// A value of [`Keyring::seal_text`] opened.
    pub fn open_text(&self, context: &[u8], sealed: &str) -> Result<String, OpenError> {
        let header = sealed.get(..HEADER_LEN).ok_or(OpenError::Broken)?;
        let body = sealed.get(HEADER_LEN..).ok_or(OpenError::Broken)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Broken)?;
        let bytes = self.open(context, &[header.as_bytes(), &body].concat())?;
        String::from_utf8(bytes).map_err(|_| OpenError::Broken)
    }

    /// The key a sealed value names, and what follows its header.
    fn key_of<'s>(&self, sealed: &'s [u8]) -> Result<(&Key, &'s [u8]), OpenError> {
        let rest = sealed
            .strip_prefix(PREFIX.as_bytes())
            .ok_or(OpenError::Broken)?;
        let (id, body) = rest.split_at_checked(ID_HEX_LEN).ok_or(OpenError::Broken)?;
        let body = body.strip_prefix(b".").ok_or(OpenError::Broken)?;
        let id = std::str::from_utf8(id).map_err(|_| OpenError::Broken)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .map(|k| (k, body))
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))
    }
}

/// Whether `value` is a sealed one (either form).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(PREFIX.as_bytes())
}

/// The key id a sealed value names, if it is one.
pub fn key_id_of(value: &[u8]) -> Option<&str> {
    let rest = value.strip_prefix(PREFIX.as_bytes())?;
    std::str::from_utf8(rest.get(..ID_HEX_LEN)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);

    impl RandomSource for Counter {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
            for b in buf.iter_mut() {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }

    struct Empty;

    impl RandomSource for Empty {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), RandomUnavailable> {
            Err(RandomUnavailable)
        }
    }

    fn ring(current: u8, previous: &[u8]) -> Keyring {
        let key = |b: u8| Key::new(&[b; KEY_LEN]);
        Keyring::new(key(current), previous.iter().map(|b| key(*b)).collect())
    }

    #[test]
    fn a_value_opens_with_its_context_only() {
        let ring = ring(1, &[]);
        let sealed = ring.seal(&mut Counter(0), b"sub/a", b"whsec_x").unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(key_id_of(&sealed), Some(ring.current_id()));
        assert!(!sealed.windows(7).any(|w| w == b"whsec_x"));
        assert_eq!(ring.open(b"sub/a", &sealed).unwrap(), b"whsec_x");
        assert_eq!(ring.open(b"sub/b", &sealed), Err(OpenError::Broken));
        // Random nonces: the same value seals differently each time.
        let again = ring.seal(&mut Counter(0x40), b"sub/a", b"whsec_x").unwrap();
        assert_ne!(sealed, again);
    }

    #[test]
    fn the_key_id_is_the_start_of_the_keys_sha256() {
        let key = Key::new(&[0u8; KEY_LEN]);
        // sha256 of 32 zero bytes: 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925
        assert_eq!(key.id(), "66687aadf862bd77");
        assert_eq!(format!("{key:?}"), "Key(66687aadf862bd77)");
    }

    #[test]
    fn keys_rotate_old_values_open_with_a_previous_key() {
        let old = ring(1, &[]);
        let sealed = old.seal(&mut Counter(0), b"c", b"payload").unwrap();
        let rotated = ring(2, &[1]);
        assert_eq!(rotated.open(b"c", &sealed).unwrap(), b"payload");
        let new = rotated.seal(&mut Counter(0), b"c", b"payload").unwrap();
        assert_eq!(key_id_of(&new), Some(rotated.current_id()));
        assert_ne!(key_id_of(&new), key_id_of(&sealed));
        assert_eq!(
            old.open(b"c", &new),
            Err(OpenError::UnknownKey(rotated.current_id().to_string()))
        );
        let forgotten = ring(3, &[2]);
        assert!(matches!(
            forgotten.open(b"c", &sealed),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn text_form_round_trips_and_anything_else_is_broken() {
        let ring = ring(7, &[]);
        let text = ring
            .seal_text(&mut Counter(9), b"ctx", "whsec_abc")
            .unwrap();
        assert!(text.starts_with(&format!("{PREFIX}{}.", ring.current_id())));
        assert!(text.is_ascii() && !text.contains('"'));
        assert_eq!(ring.open_text(b"ctx", &text).unwrap(), "whsec_abc");
        let mut changed = text.clone().into_bytes();
        if let Some(last) = changed.last_mut() {
            *last = if *last == b'A' { b'B' } else { b'A' };
        }
        let changed = String::from_utf8(changed).unwrap();
        assert_eq!(ring.open_text(b"ctx", &changed), Err(OpenError::Broken));
        for bad in ["", "pws1.", "whsec_abc", "pws1.0123456789abcdef", "pws1.é"] {
            assert!(ring.open_text(b"ctx", bad).is_err(), "{bad}");
            assert!(ring.open(b"ctx", bad.as_bytes()).is_err(), "{bad}");
        }
        let id = ring.current_id();
        assert_eq!(
            ring.open(b"ctx", format!("pws1.{id}.short").as_bytes()),
            Err(OpenError::Broken)
        );
    }

    #[test]
    fn no_randomness_no_sealing() {
        assert_eq!(
            ring(1, &[]).seal(&mut Empty, b"c", b"x"),
            Err(RandomUnavailable)
        );
    }
}
