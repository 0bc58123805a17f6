//! Portal sessions: a token that acts as one consumer on the subscription API until it expires
//! or its consumer's sessions are revoked (docs/operators.md). Pure: minting and checking a
//! token, given the key, the clock and the consumer's revocation time.
//!
//! Token: `pws_` + base64url(payload) + `.` + base64url(HMAC-SHA256(key, "pws_" +
//! base64url(payload))), unpadded; payload `{"c": consumer, "x": expires (unix s), "i": issued
//! (unix ms), "r": read_only}`. The signature is checked (in constant time) before the payload
//! is read, so nothing of an unsigned token is ever parsed.

use crate::model::identity::consumer_name;
use crate::support::record;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "pws_";
/// Longest token accepted: a 128-character consumer makes one of ~280 characters.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Session lifetimes an operator may ask for.
pub const MIN_TTL_MS: u64 = 5 * 60 * 1000;
pub const MAX_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// What a token says. Read with [`record`]'s helpers rather than a derived `Deserialize`,
/// which would add its own JSON reader to the `.wasm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    #[serde(rename = "c")]
    pub consumer: String,
    /// Expiry, unix seconds.
    #[serde(rename = "x")]
    pub expires_s: u64,
    /// When it was minted, unix milliseconds (revocations compare it).
    #[serde(rename = "i")]
    pub issued_ms: u64,
    #[serde(rename = "r")]
    pub read_only: bool,
}

/// Why a token is refused; each is its own API error code, so the portal can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, or not signed with this key (a rotated key ends every session this way).
    Invalid,
    Expired,
    /// Minted at or before its consumer's revocation.
    Revoked,
}

impl Refusal {
    /// The API error code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Invalid => "session_invalid",
            Refusal::Expired => "session_expired",
            Refusal::Revoked => "session_revoked",
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], signed: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(signed);
    Some(mac)
}

/// A token for `claims`, signed with `key` (None only for a key HMAC refuses, which none is).
pub fn mint(key: &[u8], claims: &Claims) -> Option<String> {
    let payload = serde_json::to_vec(claims).ok()?;
    let signed = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
    let tag = mac(key, signed.as_bytes())?.finalize().into_bytes();
    Some(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag)))
}

/// The claims of a valid token. `revoked_up_to` gives the consumer's revocation time (unix ms),
/// if any: tokens issued at or before it are refused.
pub fn verify(
    key: &[u8],
    token: &[u8],
    now_ms: u64,
    revoked_up_to: impl FnOnce(&str) -> Option<u64>,
) -> Result<Claims, Refusal> {
    let token = token.trim_ascii();
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX.as_bytes()) {
        return Err(Refusal::Invalid);
    }
    let dot = token
        .iter()
        .rposition(|&b| b == b'.')
        .ok_or(Refusal::Invalid)?;
    let (signed, tag) = token.split_at(dot);
    let tag = URL_SAFE_NO_PAD
        .decode(tag.get(1..).unwrap_or_default())
        .map_err(|_| Refusal::Invalid)?;
    mac(key, signed)
        .ok_or(Refusal::Invalid)?
        .verify_slice(&tag)
        .map_err(|_| Refusal::Invalid)?;
    let payload = signed.get(TOKEN_PREFIX.len()..).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Refusal::Invalid)?;
    let claims = read_claims(&payload).ok_or(Refusal::Invalid)?;
    if consumer_name(claims.consumer.as_bytes()) != Some(claims.consumer.as_str()) {
        return Err(Refusal::Invalid);
    }
    if now_ms / 1000 >= claims.expires_s {
        return Err(Refusal::Expired);
    }
    if revoked_up_to(&claims.consumer).is_some_and(|up_to| claims.issued_ms <= up_to) {
        return Err(Refusal::Revoked);
    }
    Ok(claims)
}

fn read_claims(payload: &[u8]) -> Option<Claims> {
    let o = record::parse_object(payload)?;
    Some(Claims {
        consumer: record::string(&o, "c")?,
        expires_s: record::uint(&o, "x")?,
        issued_ms: record::uint(&o, "i")?,
        read_only: o.get("r")?.as_bool()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn claims() -> Claims {
        Claims {
            consumer: "acme".into(),
            expires_s: NOW_MS / 1000 + 3600,
            issued_ms: NOW_MS - 1000,
            read_only: true,
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let token = mint(KEY, &claims()).unwrap();
        assert!(token.starts_with("pws_"));
        assert_eq!(
            verify(KEY, token.as_bytes(), NOW_MS, |_| None),
            Ok(claims())
        );
        // The payload is the shared format, readable by the page.
        let payload = token
            .strip_prefix("pws_")
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"c": "acme", "x": NOW_MS / 1000 + 3600, "i": NOW_MS - 1000, "r": true})
        );
    }

    #[test]
    fn expired_revoked_and_invalid_are_told_apart() {
        let token = mint(KEY, &claims()).unwrap();
        let at_expiry = (NOW_MS / 1000 + 3600) * 1000;
        assert_eq!(
            verify(KEY, token.as_bytes(), at_expiry, |_| None),
            Err(Refusal::Expired)
        );
        let revoked = |at: u64| move |c: &str| (c == "acme").then_some(at);
        assert_eq!(
            verify(KEY, token.as_bytes(), NOW_MS, revoked(NOW_MS - 1000)),
            Err(Refusal::Revoked)
        );
        // A revocation before it was minted does not touch it.
        assert!(verify(KEY, token.as_bytes(), NOW_MS, revoked(NOW_MS - 1001)).is_ok());
        let other_key = b"another key of thirty-two bytes!";
        assert_eq!(
            verify(other_key, token.as_bytes(), NOW_MS, |_| None),
            Err(Refusal::Invalid)
        );
        assert_eq!(Refusal::Revoked.code(), "session_revoked");
    }

    #[test]
    fn tampered_or_malformed_tokens_are_invalid() {
        let token = mint(KEY, &claims()).unwrap();
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(br#"{"c":"globex","x":9999999999,"i":0,"r":false}"#);
        let long = "a".repeat(MAX_TOKEN_LEN);
        for bad in [
            format!("pws_{forged_payload}.{tag}"),
            format!("{signed}x.{tag}"),
            format!("{signed}.{}", &tag[1..]),
            signed.to_string(),
            format!("pwx_{}", &token[4..]),
            format!("pws_.{tag}"),
            String::new(),
            format!("pws_{long}"),
        ] {
            assert_eq!(
                verify(KEY, bad.as_bytes(), NOW_MS, |_| None),
                Err(Refusal::Invalid),
                "{bad}"
            );
        }
        // Signed, but a consumer no credential could name.
        let odd = Claims {
            consumer: "a b".into(),
            ..claims()
        };
        let token = mint(KEY, &odd).unwrap();
        assert_eq!(
            verify(KEY, token.as_bytes(), NOW_MS, |_| None),
            Err(Refusal::Invalid)
        );
    }
}
