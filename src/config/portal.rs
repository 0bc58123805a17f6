//! `api.portal` (the consumer portal and its sessions) and the operators' credentials
//! (`api.operator_keys`, `api.operator_header`): docs/operators.md.

use super::{as_str, err, item, secrets, ConfigError, Obj};
use crate::model::identity::OperatorKey;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use secrets::Env;
use serde_json::Value;

/// `api.portal` when enabled.
#[derive(Clone, PartialEq)]
pub struct PortalConfig {
    /// `api.portal.session_key`: 32 to 64 bytes that sign portal sessions. Empty when not
    /// configured (allowed only without fleet mode): the plugin then makes one per Envoy process.
    pub session_key: Vec<u8>,
    /// `api.portal.title`, default "Webhooks".
    pub title: String,
    /// `api.portal.frame_ancestors`: the origins that may frame the portal (CSP
    /// `frame-ancestors`); empty: none.
    pub frame_ancestors: Vec<String>,
    /// `api.portal.public_url`: scheme, host and optional base path (no trailing `/`) that minted
    /// portal URLs start with. None: minted URLs are relative (`<prefix>/portal#token=...`).
    pub public_url: Option<String>,
}

/// Never shows the session key.
impl std::fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("session_key", &"(hidden)")
            .field("title", &self.title)
            .field("frame_ancestors", &self.frame_ancestors)
            .field("public_url", &self.public_url)
            .finish()
    }
}

pub(super) const PORTAL_FIELDS: &[&str] = &[
    "enabled",
    "session_key",
    "title",
    "frame_ancestors",
    "public_url",
];
pub(super) const OPERATOR_KEY_FIELDS: &[&str] = &["operator", "sha256"];

/// Session keys: bytes at least and at most (HMAC-SHA256 takes any length; fewer than 32 would
/// weaken it, more than its 64-byte block adds nothing).
pub const SESSION_KEY_MIN: usize = 32;
pub const SESSION_KEY_MAX: usize = 64;
/// `api.portal.title`: characters at most.
pub const MAX_TITLE_CHARS: usize = 100;
/// `api.portal.frame_ancestors`: entries at most.
pub const MAX_FRAME_ANCESTORS: usize = 20;

/// `api.portal`; None when absent or `"enabled": false`.
pub(super) fn parse_portal(v: &Value, env: Env<'_>) -> Result<Option<PortalConfig>, ConfigError> {
    let o = Obj::new("api.portal", v, PORTAL_FIELDS)?;
    let session_key = o
        .get("session_key")
        .map(|v| session_key(&o.field("session_key"), v, env))
        .transpose()?
        .unwrap_or_default();
    let title = match o.str("title")? {
        Some(t) => parse_title(&o.field("title"), t)?,
        None => "Webhooks".to_string(),
    };
    let frame_ancestors = match o.array("frame_ancestors")? {
        Some(list) => parse_frame_ancestors(&o.field("frame_ancestors"), list)?,
        None => Vec::new(),
    };
    let public_url = o
        .str("public_url")?
        .map(|u| parse_public_url(&o.field("public_url"), u))
        .transpose()?;
    if !o.bool("enabled")?.unwrap_or(true) {
        return Ok(None);
    }
    Ok(Some(PortalConfig {
        session_key,
        title,
        frame_ancestors,
        public_url,
    }))
}

/// The base64 (standard or URL-safe, padded or not) of 32 to 64 bytes, or `{"env": "NAME"}`.
fn session_key(field: &str, v: &Value, env: Env<'_>) -> Result<Vec<u8>, ConfigError> {
    let text = secrets::secret(field, v, env)?;
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .filter(|k| (SESSION_KEY_MIN..=SESSION_KEY_MAX).contains(&k.len()))
        .ok_or_else(|| {
            err(
                field,
                "must be the base64 of 32 to 64 bytes (make one with `openssl rand -base64 32`)",
            )
        })
}

fn parse_title(field: &str, s: &str) -> Result<String, ConfigError> {
    if s.trim().is_empty() || s.chars().count() > MAX_TITLE_CHARS || s.contains(char::is_control) {
        return Err(err(
            field,
            format!("must be 1 to {MAX_TITLE_CHARS} characters, not blank, no control characters"),
        ));
    }
    Ok(s.to_string())
}

/// Each entry a CSP source an origin can be framed by: `'self'`, or `http(s)://host[:port]`
/// (a leading `*.` in the host allowed), nothing that could end the directive.
fn parse_frame_ancestors(field: &str, list: &[Value]) -> Result<Vec<String>, ConfigError> {
    if list.len() > MAX_FRAME_ANCESTORS {
        return Err(err(
            field,
            format!("must list at most {MAX_FRAME_ANCESTORS} origins"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = item(field, i);
            let s = as_str(&field, v)?;
            match s == "'self'" || is_origin(s, true) {
                true => Ok(s.trim_end_matches('/').to_string()),
                false => Err(err(
                    field,
                    format!("{s:?} is not an origin like \"https://app.example.com\" or 'self'"),
                )),
            }
        })
        .collect()
}

/// `http(s)://host[:port]` with an optional trailing `/`; `wildcard` allows a leading `*.`.
fn is_origin(s: &str, wildcard: bool) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let host = match wildcard {
        true => authority.strip_prefix("*.").unwrap_or(authority),
        false => authority,
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
    !host.is_empty() && host.chars().all(ok)
}

/// `http(s)://host[:port]` and an optional base path, without query or fragment; a trailing
/// `/` is trimmed.
fn parse_public_url(field: &str, s: &str) -> Result<String, ConfigError> {
    let trimmed = s.trim_end_matches('/');
    let (origin, path) = match trimmed.match_indices('/').nth(2) {
        Some((at, _)) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let bad_path = |c: char| "?#\"'<>\\".contains(c) || c.is_whitespace() || c.is_control();
    if !is_origin(origin, false) || path.contains(bad_path) {
        return Err(err(
            field,
            format!("{s:?} is not an absolute http(s) URL without query or fragment, like \"https://api.example.com\""),
        ));
    }
    Ok(trimmed.to_string())
}

/// `api.operator_keys`: like `api.keys`, naming operators; a key may not also be an API key.
pub(super) fn parse_operator_keys(
    field: &str,
    list: &[Value],
    api_keys: &[[u8; 32]],
) -> Result<Vec<OperatorKey>, ConfigError> {
    let mut keys: Vec<OperatorKey> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let o = Obj::new(&item(field, i), v, OPERATOR_KEY_FIELDS)?;
        let operator = super::parse_consumer(&o.field("operator"), o.required_str("operator")?)?;
        let sha256 = super::parse_sha256(o.required_str("sha256")?)
            .ok_or_else(|| err(o.field("sha256"), "must be 64 hex digits"))?;
        if keys.iter().any(|k| k.sha256 == sha256) {
            return Err(err(o.field("sha256"), "the same key is configured twice"));
        }
        if api_keys.contains(&sha256) {
            return Err(err(
                o.field("sha256"),
                "is also in api.keys: an operator key must not be a consumer's key",
            ));
        }
        keys.push(OperatorKey { operator, sha256 });
    }
    Ok(keys)
}
