//! Standard Webhooks v1 signatures: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).

use crate::support::ids::{RandomSource, RandomUnavailable};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";
const PARSE_ERROR: &str = "secret must be whsec_ followed by base64";
/// Longest secret accepted, in decoded bytes (the Standard Webhooks range).
const MAX_KEY_BYTES: usize = 64;
/// Shortest chosen secret accepted, in decoded bytes (the Standard Webhooks range).
const MIN_CHOSEN_KEY_BYTES: usize = 24;
/// Bytes of randomness in a generated secret.
const GENERATED_KEY_BYTES: usize = 32;
/// `v1,` + 44 base64 characters of a 32-byte tag.
const SIGNATURE_LEN: usize = 47;

/// Standard base64 that accepts the padding being present or left out, as secrets come both ways.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret. Holds the HMAC already keyed, so each signature skips re-deriving the key
/// pads and cannot fail. `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret {
    mac: HmacSha256,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Parses `whsec_` + standard base64 (padding optional) of 1 to 64 bytes.
    pub fn parse(s: &str) -> Result<Secret, String> {
        Secret::parse_sized(s, 1)
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
        Ok(Secret { mac })
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

    /// `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")).
    ///
    /// The three parts are fed to the MAC one after the other, so the body is never copied.
    /// Tests sign one at a time; deliveries sign through [`signature_header`].
    #[cfg(test)]
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut out = String::with_capacity(SIGNATURE_LEN);
        self.sign_into(msg_id, timestamp, body, &mut out);
        out
    }

    /// Appends the signature to `out`.
    fn sign_into(&self, msg_id: &str, timestamp: u64, body: &[u8], out: &mut String) {
        let mut digits = [0u8; 20];
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(decimal(timestamp, &mut digits));
        mac.update(b".");
        mac.update(body);
        out.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// The `webhook-signature` value: one space-separated signature per secret, in the given order
/// (the newest secret first, then old ones still valid during a rotation).
pub fn signature_header(secrets: &[&Secret], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * (SIGNATURE_LEN + 1));
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        secret.sign_into(msg_id, timestamp, body, &mut out);
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

    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1614265330, &mut buf), b"1614265330");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
