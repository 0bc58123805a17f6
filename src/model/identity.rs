//! Who is calling: the consumer named by an API key from `api.keys`, or, with
//! `api.consumer_header`, by a request header an authentication filter earlier in Envoy's chain
//! has set. The subscription API and the `"requester"` audience ask the same question here.

use sha2::{Digest, Sha256};

/// One entry of `api.keys`: a consumer and the SHA-256 of its key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub consumer: String,
    /// The SHA-256 of the key, from 64 hex digits.
    pub sha256: [u8; 32],
}

/// One entry of `api.operator_keys`: an operator (a person or team of the platform) and the
/// SHA-256 of its key. Operator keys work only under `<prefix>/admin/`.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorKey {
    pub operator: String,
    /// The SHA-256 of the key, from 64 hex digits.
    pub sha256: [u8; 32],
}

/// The two settings of `api` that say how callers are identified: the configured keys, and
/// whether `api.consumer_header` replaces them. Passed instead of the whole configuration.
#[derive(Debug, Clone, Copy)]
pub struct Identification<'a> {
    pub keys: &'a [ApiKey],
    pub by_header: bool,
}

/// Longest consumer name taken from a request, a response or a token claim.
pub const MAX_CONSUMER_LEN: usize = 128;

/// The request headers that can identify a caller (raw values, as the filter read them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// `authorization`.
    pub authorization: Option<&'a [u8]>,
    /// `x-api-key`.
    pub api_key: Option<&'a [u8]>,
    /// The value of the `api.consumer_header` header.
    pub consumer_header: Option<&'a [u8]>,
}

/// [`Credentials`] kept from the request phase until the event is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedCredentials {
    pub authorization: Option<Vec<u8>>,
    pub api_key: Option<Vec<u8>>,
    pub consumer_header: Option<Vec<u8>>,
}

impl OwnedCredentials {
    pub fn borrow(&self) -> Credentials<'_> {
        Credentials {
            authorization: self.authorization.as_deref(),
            api_key: self.api_key.as_deref(),
            consumer_header: self.consumer_header.as_deref(),
        }
    }
}

/// The consumer the credentials name. With `api.consumer_header` set, only that header counts
/// (keys are not configured then); a missing or malformed value names nobody.
pub fn identify<'a>(how: Identification<'a>, credentials: &Credentials<'a>) -> Option<&'a str> {
    if how.by_header {
        return credentials.consumer_header.and_then(consumer_name);
    }
    consumer_for_key(how.keys, credentials)
}

/// A consumer name as it may come from a header, a path or a response body: 1 to
/// [`MAX_CONSUMER_LEN`] visible ASCII characters (no spaces, no control characters), after
/// trimming surrounding whitespace. Anything else names nobody.
pub fn consumer_name(raw: &[u8]) -> Option<&str> {
    let name = raw.trim_ascii();
    let visible = name.iter().all(|b| b.is_ascii_graphic());
    if name.is_empty() || name.len() > MAX_CONSUMER_LEN || !visible {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// The consumer whose key was presented. Every configured key is compared, in constant time and
/// without stopping at a match, so timing tells nothing about which key (if any) came close.
fn consumer_for_key<'a>(keys: &'a [ApiKey], credentials: &Credentials<'_>) -> Option<&'a str> {
    let presented = presented_key(credentials)?;
    let digest: [u8; 32] = Sha256::digest(presented).into();
    let mut found = None;
    for key in keys {
        if same_digest(&key.sha256, &digest) {
            found = Some(key.consumer.as_str());
        }
    }
    found
}

/// Whether two digests are equal, compared in constant time.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `Authorization: Bearer <key>` (scheme case-insensitive), else `X-API-Key: <key>`.
pub fn presented_key<'r>(credentials: &Credentials<'r>) -> Option<&'r [u8]> {
    let bearer = credentials.authorization.and_then(|value| {
        let value = value.trim_ascii();
        let scheme = value.get(..6)?;
        let rest = value.get(6..)?;
        let token = rest.trim_ascii_start();
        let separated = token.len() < rest.len();
        (scheme.eq_ignore_ascii_case(b"Bearer") && separated).then_some(token)
    });
    bearer
        .or_else(|| credentials.api_key.map(<[u8]>::trim_ascii))
        .filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiConfig;

    fn keys() -> ApiConfig {
        ApiConfig {
            keys: vec![ApiKey {
                consumer: "acme".into(),
                sha256: Sha256::digest(b"k1").into(),
            }],
            ..ApiConfig::default()
        }
    }

    fn with_header() -> ApiConfig {
        ApiConfig {
            consumer_header: Some("x-consumer".into()),
            ..ApiConfig::default()
        }
    }

    #[test]
    fn keys_identify_by_bearer_or_x_api_key() {
        let api = keys();
        let bearer = Credentials {
            authorization: Some(b"bearer  k1 "),
            ..Credentials::default()
        };
        assert_eq!(identify(api.identification(), &bearer), Some("acme"));
        let x_api_key = Credentials {
            api_key: Some(b"k1"),
            ..Credentials::default()
        };
        assert_eq!(identify(api.identification(), &x_api_key), Some("acme"));
        for wrong in [&b"Bearer k2"[..], b"Basic k1", b"Bearerk1", b"Bearer "] {
            let c = Credentials {
                authorization: Some(wrong),
                ..Credentials::default()
            };
            assert_eq!(
                identify(api.identification(), &c),
                None,
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        // A consumer header means nothing without api.consumer_header.
        let header = Credentials {
            consumer_header: Some(b"acme"),
            ..Credentials::default()
        };
        assert_eq!(identify(api.identification(), &header), None);
    }

    #[test]
    fn consumer_header_alone_identifies_when_configured() {
        let api = with_header();
        let c = Credentials {
            consumer_header: Some(b" user@example.com "),
            authorization: Some(b"Bearer k1"),
            ..Credentials::default()
        };
        assert_eq!(identify(api.identification(), &c), Some("user@example.com"));
        let key_only = Credentials {
            authorization: Some(b"Bearer k1"),
            ..Credentials::default()
        };
        assert_eq!(identify(api.identification(), &key_only), None);
    }

    #[test]
    fn consumer_names() {
        assert_eq!(consumer_name(b"acme"), Some("acme"));
        assert_eq!(consumer_name(b"auth0|5f3a"), Some("auth0|5f3a"));
        assert_eq!(consumer_name(b"42"), Some("42"));
        let longest = "a".repeat(MAX_CONSUMER_LEN);
        assert_eq!(consumer_name(longest.as_bytes()), Some(longest.as_str()));
        let too_long = "a".repeat(MAX_CONSUMER_LEN + 1);
        for bad in [
            &b""[..],
            b"   ",
            b"a b",
            b"a\nb",
            b"a\tb",
            b"caf\xc3\xa9",
            b"\xff",
            too_long.as_bytes(),
        ] {
            assert_eq!(consumer_name(bad), None, "{bad:?}");
        }
    }
}
