//! Standard Webhooks signatures over `"{id}.{timestamp}.{body}"`: `v1,` + base64 of its
//! HMAC-SHA256 with a `whsec_` secret, and `v1a,` + base64 of its ed25519 signature with a key
//! pair the plugin generates (stored as `whsk_` + base64 of the 32-byte seed and the 32-byte
//! public key, so that showing the public key costs no curve arithmetic; receivers get it as
//! `whpk_` + base64 of its 32 bytes).

use crate::support::ids::{RandomSource, RandomUnavailable};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";
/// A stored ed25519 private key (its seed); never shown by the API.
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// An ed25519 public key as the API shows it.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
const SIGNING_KEY_ERROR: &str = "signing_key must be whsk_ followed by the base64 of a 32-byte seed (or of 64 bytes: the seed and its public key)";
/// Bytes of an ed25519 seed and of a public key.
const ED25519_KEY_BYTES: usize = 32;
/// `v1a,` + 88 base64 characters of a 64-byte signature.
const V1A_SIGNATURE_LEN: usize = 92;
const PARSE_ERROR: &str = "secret must be whsec_ followed by base64";
/// Longest secret accepted, in decoded bytes (the Standard Webhooks range).
const MAX_KEY_BYTES: usize = 64;
/// Shortest chosen secret accepted, in decoded bytes (the Standard Webhooks range).
const MIN_CHOSEN_KEY_BYTES: usize = 24;
/// Bytes of randomness in a generated secret.
const GENERATED_KEY_BYTES: usize = 32;

/// Standard base64 that accepts the padding being present or left out, as secrets come both ways.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret: an HMAC already keyed (each signature skips re-deriving the key pads), or
/// an ed25519 key pair already expanded. Signing cannot fail. `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret {
    key: Key,
}

#[derive(Clone)]
enum Key {
    Hmac(HmacSha256),
    Ed25519(Box<SigningKey>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Parses `whsec_` + standard base64 (padding optional) of 1 to 64 bytes, or a
    /// [`SIGNING_KEY_PREFIX`] key ([`Secret::parse_signing_key`]).
    pub fn parse(s: &str) -> Result<Secret, String> {
        if s.starts_with(SIGNING_KEY_PREFIX) {
            return Secret::parse_signing_key(s);
        }
        Secret::parse_sized(s, 1)
    }

    /// Parses `whsk_` + standard base64 (padding optional) of a 32-byte ed25519 seed, or of
    /// the seed and its public key (64 bytes, as generated: a public key that is not the seed's
    /// is refused).
    pub fn parse_signing_key(s: &str) -> Result<Secret, String> {
        let key = match decode_key(s).ok_or(SIGNING_KEY_ERROR)? {
            (seed, None) => SigningKey::from_bytes(&seed),
            (seed, Some(public)) => {
                let mut pair = [0u8; 2 * ED25519_KEY_BYTES];
                let (first, second) = pair.split_at_mut(ED25519_KEY_BYTES);
                first.copy_from_slice(&seed);
                second.copy_from_slice(&public);
                let key = SigningKey::from_keypair_bytes(&pair);
                pair.fill(0);
                key.map_err(|_| SIGNING_KEY_ERROR.to_string())?
            }
        };
        Ok(Secret {
            key: Key::Ed25519(Box::new(key)),
        })
    }

    /// Whether this secret signs `v1a` (ed25519) rather than `v1` (HMAC).
    pub fn is_ed25519(&self) -> bool {
        matches!(self.key, Key::Ed25519(_))
    }

    /// [`Secret::parse`] for a secret someone chose (a static subscription's): the Standard
    /// Webhooks range of 24 to 64 bytes, so that a short, guessable key is refused.
    pub fn parse_chosen(s: &str) -> Result<Secret, String> {
        Secret::parse_sized(s, MIN_CHOSEN_KEY_BYTES)
    }

    fn parse_sized(s: &str, min_bytes: usize) -> Result<Secret, String> {
        let encoded = s.strip_prefix(PREFIX).ok_or(PARSE_ERROR)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| PARSE_ERROR.to_string())?;
        if key.is_empty() {
            return Err(PARSE_ERROR.to_string());
        }
        if key.len() < min_bytes || key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "secret must decode to {min_bytes} to {MAX_KEY_BYTES} bytes, not {}",
                key.len()
            ));
        }
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| PARSE_ERROR.to_string())?;
        Ok(Secret {
            key: Key::Hmac(mac),
        })
    }

    /// A fresh secret in its textual form: `whsec_` + base64 of 32 random bytes; none without
    /// randomness.
    pub fn generate(rng: &mut dyn RandomSource) -> Result<String, RandomUnavailable> {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rng.fill(&mut key)?;
        let mut out = String::with_capacity(PREFIX.len() + 44);
        out.push_str(PREFIX);
        STANDARD.encode_string(key, &mut out);
        Ok(out)
    }

    /// A fresh ed25519 key in its stored form: `whsk_` + base64 of a 32-byte seed from the same
    /// randomness as secrets, followed by its public key; none without randomness.
    pub fn generate_signing_key(rng: &mut dyn RandomSource) -> Result<String, RandomUnavailable> {
        let mut seed = [0u8; ED25519_KEY_BYTES];
        rng.fill(&mut seed)?;
        let mut pair = SigningKey::from_bytes(&seed).to_keypair_bytes();
        seed.fill(0);
        let mut out = String::with_capacity(SIGNING_KEY_PREFIX.len() + 88);
        out.push_str(SIGNING_KEY_PREFIX);
        STANDARD.encode_string(pair, &mut out);
        pair.fill(0);
        Ok(out)
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")), or `v1a,` +
    /// base64(ed25519 signature of the same bytes).
    ///
    /// The three parts are fed to the MAC one after the other, so the body is never copied.
    /// Tests sign one at a time; deliveries sign through [`signature_header`].
    #[cfg(test)]
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut out = String::with_capacity(V1A_SIGNATURE_LEN);
        self.sign_into(msg_id, timestamp, body, &mut Vec::new(), &mut out);
        out
    }

    /// Appends the signature to `out`; `signed` holds the signed bytes once an ed25519 key
    /// needed them (ed25519 reads its message twice, so it is written out once per header).
    fn sign_into(
        &self,
        msg_id: &str,
        timestamp: u64,
        body: &[u8],
        signed: &mut Vec<u8>,
        out: &mut String,
    ) {
        let mut digits = [0u8; 20];
        let digits = decimal(timestamp, &mut digits);
        match &self.key {
            Key::Hmac(mac) => {
                let mut mac = mac.clone();
                mac.update(msg_id.as_bytes());
                mac.update(b".");
                mac.update(digits);
                mac.update(b".");
                mac.update(body);
                out.push_str("v1,");
                STANDARD.encode_string(mac.finalize().into_bytes(), out);
            }
            Key::Ed25519(key) => {
                if signed.is_empty() {
                    signed.reserve_exact(msg_id.len() + digits.len() + 2 + body.len());
                    signed.extend_from_slice(msg_id.as_bytes());
                    signed.push(b'.');
                    signed.extend_from_slice(digits);
                    signed.push(b'.');
                    signed.extend_from_slice(body);
                }
                out.push_str("v1a,");
                STANDARD.encode_string(key.sign(signed).to_bytes(), out);
            }
        }
    }
}

/// The public key of a stored [`SIGNING_KEY_PREFIX`] key as the API shows it: `whpk_` + base64
/// of its 32 bytes (read from the stored form when it has it, else derived from the seed); None
/// for anything else (an HMAC secret, a sealed or broken value).
pub fn public_key(stored: &str) -> Option<String> {
    let public = match decode_key(stored)? {
        (_, Some(public)) => public,
        (seed, None) => SigningKey::from_bytes(&seed).verifying_key().to_bytes(),
    };
    let mut out = String::with_capacity(PUBLIC_KEY_PREFIX.len() + 44);
    out.push_str(PUBLIC_KEY_PREFIX);
    STANDARD.encode_string(public, &mut out);
    Some(out)
}

/// Whether a stored secret is an ed25519 key (by its prefix; a sealed one is neither).
pub fn is_signing_key(stored: &str) -> bool {
    stored.starts_with(SIGNING_KEY_PREFIX)
}

/// The seed of a stored key, and its public key when stored beside it.
type Decoded = ([u8; ED25519_KEY_BYTES], Option<[u8; ED25519_KEY_BYTES]>);

fn decode_key(s: &str) -> Option<Decoded> {
    let encoded = s.strip_prefix(SIGNING_KEY_PREFIX)?;
    let bytes = LENIENT_BASE64.decode(encoded).ok()?;
    let seed = bytes.get(..ED25519_KEY_BYTES)?.try_into().ok()?;
    match bytes.get(ED25519_KEY_BYTES..) {
        Some([]) => Some((seed, None)),
        Some(rest) => Some((seed, Some(rest.try_into().ok()?))),
        None => None,
    }
}

/// The `webhook-signature` value: one space-separated signature per secret, in the given order
/// (the newest secret first, then old ones still valid during a rotation).
pub fn signature_header(secrets: &[&Secret], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * (V1A_SIGNATURE_LEN + 1));
    let mut signed = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        secret.sign_into(msg_id, timestamp, body, &mut signed, &mut out);
    }
    out
}

/// `n` in decimal ASCII, written into `buf` without allocating.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut used = 0;
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        used += 1;
        if n == 0 {
            break;
        }
    }
    let start = buf.len() - used;
    buf.get(start..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixtures::Rng;

    const KAT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const KAT_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const KAT_TS: u64 = 1614265330;
    const KAT_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const KAT_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn known_answer() {
        let secret = Secret::parse(KAT_SECRET).unwrap();
        assert_eq!(secret.sign(KAT_ID, KAT_TS, KAT_BODY), KAT_SIG);
    }

    #[test]
    fn padding_is_optional() {
        // 5 bytes: "aGVsbG8=" padded, "aGVsbG8" unpadded.
        let padded = Secret::parse("whsec_aGVsbG8=").unwrap();
        let bare = Secret::parse("whsec_aGVsbG8").unwrap();
        assert_eq!(padded.sign("a", 1, b"x"), bare.sign("a", 1, b"x"));
    }

    #[test]
    fn matches_a_concatenated_hmac() {
        let secret = Secret::parse("whsec_aGVsbG8=").unwrap();
        let mut mac = HmacSha256::new_from_slice(b"hello").unwrap();
        mac.update(b"msg_1.0.body");
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(secret.sign("msg_1", 0, b"body"), expected);
        let mut mac = HmacSha256::new_from_slice(b"hello").unwrap();
        mac.update(b"m.18446744073709551615.");
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(secret.sign("m", u64::MAX, b""), expected);
    }

    #[test]
    fn rejects_bad_secrets() {
        let too_long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!!",
            "whsec_a",
        ] {
            assert_eq!(Secret::parse(bad).unwrap_err(), PARSE_ERROR, "{bad}");
        }
        let size = "secret must decode to 1 to 64 bytes, not 65";
        assert_eq!(Secret::parse(&too_long).unwrap_err(), size);
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 64]))).is_ok());
        assert!(Secret::parse("whsec_AQ==").is_ok());
        let chosen =
            |n: usize| Secret::parse_chosen(&format!("whsec_{}", STANDARD.encode(vec![1u8; n])));
        assert_eq!(
            chosen(23).unwrap_err(),
            "secret must decode to 24 to 64 bytes, not 23"
        );
        assert!(chosen(24).is_ok() && chosen(64).is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", Secret::parse(KAT_SECRET).unwrap());
        assert!(!shown.contains("MfKQ"));
        assert_eq!(shown, "Secret(redacted)");
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let mut rng = Rng(5);
        let a = Secret::generate(&mut rng).unwrap();
        let b = Secret::generate(&mut rng).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&a[6..]).unwrap().len(), 32);
        assert!(Secret::parse(&a).is_ok());
    }

    #[test]
    fn header_lists_each_secret_in_order() {
        let new = Secret::parse("whsec_aGVsbG8=").unwrap();
        let old = Secret::parse(KAT_SECRET).unwrap();
        let header = signature_header(&[&new, &old], KAT_ID, KAT_TS, KAT_BODY);
        let expected = format!("{} {}", new.sign(KAT_ID, KAT_TS, KAT_BODY), KAT_SIG);
        assert_eq!(header, expected);
        assert_eq!(signature_header(&[&old], KAT_ID, KAT_TS, KAT_BODY), KAT_SIG);
        assert_eq!(signature_header(&[], KAT_ID, KAT_TS, KAT_BODY), "");
    }

    /// RFC 8032, test 1: the seed's public key.
    const RFC_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn rfc_key() -> String {
        format!("{SIGNING_KEY_PREFIX}{}", STANDARD.encode(hex(RFC_SEED)))
    }

    #[test]
    fn public_key_of_a_known_seed() {
        let expected = format!("whpk_{}", STANDARD.encode(hex(RFC_PUBLIC)));
        assert_eq!(public_key(&rfc_key()).as_deref(), Some(expected.as_str()));
        assert_eq!(public_key(KAT_SECRET), None);
        assert_eq!(public_key("whsk_AAAA"), None);
    }

    #[test]
    fn v1a_signs_id_timestamp_and_body() {
        let key = Secret::parse(&rfc_key()).unwrap();
        assert!(key.is_ed25519());
        let sig = key.sign(KAT_ID, KAT_TS, KAT_BODY);
        let encoded = sig.strip_prefix("v1a,").unwrap();
        assert_eq!(sig.len(), V1A_SIGNATURE_LEN);
        let bytes: [u8; 64] = STANDARD.decode(encoded).unwrap().try_into().unwrap();
        let public: [u8; 32] = hex(RFC_PUBLIC).try_into().unwrap();
        let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
        let signed = format!(
            "{KAT_ID}.{KAT_TS}.{}",
            std::str::from_utf8(KAT_BODY).unwrap()
        );
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        assert!(public.verify_strict(signed.as_bytes(), &signature).is_ok());
        // Deterministic: the same message signs the same.
        assert_eq!(key.sign(KAT_ID, KAT_TS, KAT_BODY), sig);
    }

    #[test]
    fn header_mixes_v1_and_v1a() {
        let hmac = Secret::parse(KAT_SECRET).unwrap();
        let ed = Secret::parse(&rfc_key()).unwrap();
        let header = signature_header(&[&hmac, &ed, &hmac], KAT_ID, KAT_TS, KAT_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [KAT_SIG, &ed.sign(KAT_ID, KAT_TS, KAT_BODY), KAT_SIG]
        );
    }

    #[test]
    fn signing_keys_generate_parse_and_hide() {
        let mut rng = Rng(9);
        let a = Secret::generate_signing_key(&mut rng).unwrap();
        let b = Secret::generate_signing_key(&mut rng).unwrap();
        assert_ne!(a, b);
        assert!(is_signing_key(&a) && !is_signing_key(KAT_SECRET));
        assert!(Secret::parse(&a).unwrap().is_ed25519());
        assert!(!Secret::parse(KAT_SECRET).unwrap().is_ed25519());
        assert_eq!(
            format!("{:?}", Secret::parse(&a).unwrap()),
            "Secret(redacted)"
        );
        // The stored form carries the public key: read back, not derived.
        let stored = STANDARD.decode(&a[5..]).unwrap();
        assert_eq!(stored.len(), 64);
        let derived = SigningKey::from_bytes(&stored[..32].try_into().unwrap()).verifying_key();
        assert_eq!(&stored[32..], derived.as_bytes());
        let seed_only = format!("whsk_{}", STANDARD.encode(&stored[..32]));
        assert_eq!(public_key(&a), public_key(&seed_only));
        let sig = |k: &str| Secret::parse(k).unwrap().sign("m", 1, b"b");
        assert_eq!(sig(&a), sig(&seed_only));
        // A public key that is not the seed's is refused.
        let mut wrong = stored.clone();
        wrong[40] ^= 1;
        let wrong = format!("whsk_{}", STANDARD.encode(&wrong));
        assert_eq!(Secret::parse(&wrong).unwrap_err(), SIGNING_KEY_ERROR);
        for bad in [
            "whsk_",
            "whsk_!!",
            "whsk_AAAA",
            &format!("whsk_{}", STANDARD.encode([1u8; 33])),
            &format!("whsk_{}", STANDARD.encode([1u8; 65])),
        ] {
            assert_eq!(Secret::parse(bad).unwrap_err(), SIGNING_KEY_ERROR, "{bad}");
        }
    }

    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1614265330, &mut buf), b"1614265330");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
