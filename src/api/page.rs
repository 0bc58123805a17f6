//! The consumer portal's page (`api.portal`): `GET|HEAD <prefix>/portal`, the HTML shell, and
//! `<prefix>/portal/assets/<hash>/<name>`, its scripts, stylesheet and icon, embedded at compile
//! time by `build.rs` from `portal/` (raw and gzipped). Answered without authentication: the page
//! holds no data, and its API calls carry the session. When the portal is off these paths are
//! left to the API's routing, which answers 404 like any unknown path.
//!
//! Every answer carries a strict `content-security-policy` (`default-src 'self'`, nothing inline,
//! `frame-ancestors` as configured); the shell is `no-cache` (it names the current asset
//! directory), the assets are immutable for a year (their directory is their contents' hash).

use super::responses::{error, method_not_allowed};
use super::Response;
use crate::config::{Config, PortalConfig};
use crate::model::rules;

/// One embedded file of `portal/`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub raw: &'static [u8],
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/portal/assets.rs"));

/// What a portal path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'p> {
    Shell,
    Asset(&'p str),
    /// Under `portal/assets/` but not this build's: an old directory or an unknown name.
    Missing,
}

/// The answer for a portal path, or None when `path` is not one or the portal is off (the API's
/// routing then answers). `accept_encoding` is asked only for a portal path.
pub fn serve_page(
    config: &Config,
    method: &str,
    path: &str,
    accept_encoding: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<Response> {
    let portal = config.api.portal.as_ref()?;
    let target = target(&config.api.path_prefix, path)?;
    if method != "GET" && method != "HEAD" {
        return Some(method_not_allowed("GET, HEAD"));
    }
    let response = match target {
        Target::Shell => shell(config, portal),
        Target::Asset(name) => match ASSETS.iter().find(|a| a.name == name) {
            Some(asset) => asset_response(portal, asset, accept_encoding().as_deref()),
            None => error(404, "not_found", "no such path"),
        },
        Target::Missing => error(404, "not_found", "no such path"),
    };
    Some(response)
}

fn target<'p>(prefix: &str, path: &'p str) -> Option<Target<'p>> {
    let rest = rules::strip_query(path)
        .strip_prefix(prefix)?
        .strip_prefix("/portal")?;
    if rest.is_empty() || rest == "/" {
        return Some(Target::Shell);
    }
    let file = rest.strip_prefix("/assets/")?;
    Some(match file.split_once('/') {
        Some((dir, name)) if dir == ASSET_DIR && !name.contains('/') => Target::Asset(name),
        _ => Target::Missing,
    })
}

/// The policy: only this origin's scripts, styles, images and API; framed only by the
/// configured origins.
fn csp(portal: &PortalConfig) -> String {
    let ancestors = match portal.frame_ancestors.is_empty() {
        true => "'none'".to_string(),
        false => portal.frame_ancestors.join(" "),
    };
    format!("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}")
}

fn headers(portal: &PortalConfig, content_type: &str, cache: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", content_type.to_string()),
        ("cache-control", cache.to_string()),
        ("content-security-policy", csp(portal)),
        ("x-content-type-options", "nosniff".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
    ]
}

fn shell(config: &Config, portal: &PortalConfig) -> Response {
    let prefix = config.api.path_prefix.as_str();
    let assets = format!("{prefix}/portal/assets/{ASSET_DIR}");
    let body = fill(SHELL, |name| match name {
        "title" => Some(escape(&portal.title)),
        "prefix" => Some(escape(prefix)),
        "assets" => Some(escape(&assets)),
        _ => None,
    });
    Response {
        status: 200,
        headers: headers(portal, "text/html; charset=utf-8", "no-cache"),
        body: body.into_bytes(),
    }
}

fn asset_response(
    portal: &PortalConfig,
    asset: &Asset,
    accept_encoding: Option<&[u8]>,
) -> Response {
    let mut headers = headers(
        portal,
        asset.content_type,
        "public, max-age=31536000, immutable",
    );
    headers.push(("vary", "accept-encoding".to_string()));
    let body = match accept_encoding.is_some_and(accepts_gzip) {
        true => {
            headers.push(("content-encoding", "gzip".to_string()));
            asset.gzip
        }
        false => asset.raw,
    };
    Response {
        status: 200,
        headers,
        body: body.to_vec(),
    }
}

/// Whether an `accept-encoding` value allows gzip: named (or `*`) with a q-value above 0; an
/// explicit `gzip` entry wins over `*`.
fn accepts_gzip(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let (mut gzip, mut any) = (None, None);
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        // A qvalue is 0 to 1 with up to three decimals: it allows the coding unless all its
        // digits are 0 (no float parsing: it would cost the .wasm more than the rest of this).
        let allowed = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .map(|q| q.trim().bytes().any(|b| (b'1'..=b'9').contains(&b)))
            .next()
            .unwrap_or(true);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(allowed);
        } else if coding == "*" {
            any = Some(allowed);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Replaces each `{{name}}` in one pass (a value is never read as a placeholder); unknown names
/// stay as they are.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("{{") {
        out.push_str(before);
        match after.split_once("}}") {
            Some((name, tail)) => {
                match value(name) {
                    Some(v) => out.push_str(&v),
                    None => out.extend(["{{", name, "}}"]),
                }
                rest = tail;
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// HTML text and attribute escaping.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
