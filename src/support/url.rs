//! Subscriber URL validation.
//!
//! Deliberately a small, strict parser rather than a general one: anything ambiguous (numeric
//! shorthand hosts, user-info, non-ASCII) is refused so that the host Envoy connects to is exactly
//! the host we checked, and a subscriber cannot point deliveries at the proxy's own network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// A parsed subscriber URL, split the way a callout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub https: bool,
    /// Lowercase; an IPv6 literal without brackets.
    pub host: String,
    /// The explicit port, else 443 or 80.
    pub port: u16,
    /// `host[:port]` as sent in `:authority`, brackets around IPv6; the port only when explicit.
    pub authority: String,
    /// `"/"` when the URL has no path.
    pub path_and_query: String,
}

/// A refused URL, shaped like the API's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    /// `"invalid_url"` or `"insecure_url"`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UrlError {}

fn invalid(message: &str) -> UrlError {
    UrlError {
        code: "invalid_url",
        message: message.to_string(),
    }
}

fn insecure(message: &str) -> UrlError {
    UrlError {
        code: "insecure_url",
        message: message.to_string(),
    }
}

/// Parses an absolute `http`/`https` URL; no policy beyond well-formedness.
pub fn parse_destination(url: &str) -> Result<Destination, UrlError> {
    check_characters(url)?;
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("url must be absolute (https://host/path)"))?;
    let https = parse_scheme(scheme)?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(split);
    let (host, port) = parse_authority(authority)?;
    let authority = authority.to_ascii_lowercase();
    Ok(Destination {
        https,
        port: port.unwrap_or(if https { 443 } else { 80 }),
        host: host.to_ascii_lowercase(),
        authority,
        path_and_query: normalise_path(path_and_query),
    })
}

/// What `check_destination` lets through beyond public `https` hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// `delivery.allow_http`: plain `http://` URLs.
    pub allow_http: bool,
    /// `delivery.allow_private_destinations`: `localhost` and special-purpose IP literals.
    pub allow_private: bool,
}

/// Named policies, for tests (the configuration builds its own from its two switches).
#[cfg(test)]
impl Policy {
    /// Public `https` destinations only (the default).
    pub const STRICT: Policy = Policy {
        allow_http: false,
        allow_private: false,
    };
    /// Anything well-formed (`allow_insecure_destinations: true`).
    pub const OPEN: Policy = Policy {
        allow_http: true,
        allow_private: true,
    };
}

/// `parse_destination` plus the security policy: https only unless `allow_http`; no
/// `localhost` and no special-purpose IP literal (see [`SPECIAL_PURPOSE`]) unless
/// `allow_private`. Names that *resolve* to such addresses are the egress clusters' to refuse
/// (Envoy's `resolved_address_filter`): only Envoy knows what it connects to.
pub fn check_destination(url: &str, policy: Policy) -> Result<Destination, UrlError> {
    let dest = parse_destination(url)?;
    if !dest.https && !policy.allow_http {
        return Err(insecure("url must be https"));
    }
    if !policy.allow_private {
        check_public_host(&dest.host)?;
    }
    Ok(dest)
}

/// Special-purpose address blocks (IANA registries, RFC 6890 and successors) that a delivery
/// must never reach unless private destinations are allowed, each as `addr/len (what it is)`. IPv6 blocks
/// that embed an IPv4 address are refused whole: which IPv4 address they reach depends on
/// translators the plugin cannot see. The shipped envoy.yaml's `resolved_address_filter` lists
/// the same blocks (a devtools test keeps them in step).
pub const SPECIAL_PURPOSE: &[&str] = &[
    "0.0.0.0/8 (this network)",
    "10.0.0.0/8 (private)",
    "100.64.0.0/10 (shared address space, CGNAT)",
    "127.0.0.0/8 (loopback)",
    "169.254.0.0/16 (link-local)",
    "172.16.0.0/12 (private)",
    "192.0.0.0/24 (IETF protocol assignments)",
    "192.0.2.0/24 (documentation)",
    "192.88.99.0/24 (6to4 relay anycast)",
    "192.168.0.0/16 (private)",
    "198.18.0.0/15 (benchmarking)",
    "198.51.100.0/24 (documentation)",
    "203.0.113.0/24 (documentation)",
    "224.0.0.0/4 (multicast)",
    "240.0.0.0/4 (reserved, broadcast)",
    "::/96 (unspecified, loopback, IPv4-compatible)",
    "::ffff:0:0/96 (IPv4-mapped)",
    "::ffff:0:0:0/96 (IPv4-translated)",
    "64:ff9b::/96 (NAT64)",
    "64:ff9b:1::/48 (NAT64, local use)",
    "100::/64 (discard-only)",
    "2001::/32 (Teredo)",
    "2001:2::/48 (benchmarking)",
    "2001:db8::/32 (documentation)",
    "2002::/16 (6to4)",
    "fc00::/7 (unique local)",
    "fe80::/10 (link-local)",
    "fec0::/10 (site-local)",
    "ff00::/8 (multicast)",
];

fn check_public_host(host: &str) -> Result<(), UrlError> {
    if host == "localhost" || host.ends_with(".localhost") {
        return Err(insecure("url host must not be localhost"));
    }
    let Some(ip) = parse_ip_literal(host) else {
        return Ok(());
    };
    match special_purpose_block(ip) {
        Some(block) => Err(UrlError {
            code: "insecure_url",
            message: format!("url host must not be in {block}"),
        }),
        None => Ok(()),
    }
}

fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    host.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| host.parse::<Ipv6Addr>().map(IpAddr::V6))
        .ok()
}

/// The first [`SPECIAL_PURPOSE`] block that holds `ip`.
pub fn special_purpose_block(ip: IpAddr) -> Option<&'static str> {
    SPECIAL_PURPOSE
        .iter()
        .copied()
        .find(|block| block_contains(block, ip))
}

/// Whether `block` (`addr/len (…)`, same family as `ip`) holds `ip`; a malformed one holds nothing.
fn block_contains(block: &str, ip: IpAddr) -> bool {
    let cidr = block.split(' ').next().unwrap_or_default();
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u32>() else {
        return false;
    };
    let (net, ip, bits) = match (parse_ip_literal(net), ip) {
        (Some(IpAddr::V4(n)), IpAddr::V4(a)) => {
            (u128::from(u32::from(n)), u128::from(u32::from(a)), 32u32)
        }
        (Some(IpAddr::V6(n)), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    match bits.checked_sub(len) {
        Some(128) => true,
        Some(shift) => (net >> shift) == (ip >> shift),
        None => false,
    }
}

fn check_characters(url: &str) -> Result<(), UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(invalid("url must be at most 2048 characters"));
    }
    if !url.is_ascii() {
        return Err(invalid(
            "url must be ASCII (punycode the host, percent-encode the path)",
        ));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(invalid(
            "url must not contain whitespace or control characters",
        ));
    }
    if url.contains('#') {
        return Err(invalid("url must not have a fragment"));
    }
    Ok(())
}

fn parse_scheme(scheme: &str) -> Result<bool, UrlError> {
    if scheme.eq_ignore_ascii_case("https") {
        Ok(true)
    } else if scheme.eq_ignore_ascii_case("http") {
        Ok(false)
    } else {
        Err(invalid("url scheme must be https or http"))
    }
}

/// Splits `host[:port]` into the host (brackets removed) and the explicit port.
fn parse_authority(authority: &str) -> Result<(&str, Option<u16>), UrlError> {
    if authority.contains('@') {
        return Err(invalid("url must not contain user-info"));
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("url host has an unclosed '['"))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(invalid("url host is not a valid IPv6 address"));
        }
        return Ok((host, parse_port_suffix(after)?));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (authority, None),
    };
    check_host_name(host)?;
    Ok((host, port))
}

fn parse_port_suffix(after: &str) -> Result<Option<u16>, UrlError> {
    if after.is_empty() {
        return Ok(None);
    }
    match after.strip_prefix(':') {
        Some(port) => parse_port(port),
        None => Err(invalid("url has characters after the IPv6 host")),
    }
}

fn parse_port(port: &str) -> Result<Option<u16>, UrlError> {
    let bad = || invalid("url port must be a number from 1 to 65535");
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(bad()),
    }
}

/// A DNS name or a dotted-quad IPv4 address. Hosts whose last label is numeric are what
/// browsers and resolvers read as IPv4 shorthand (`2130706433`, `0x7f.1`, `127.1`); only the
/// plain dotted quad is accepted, so the address we check is the address that gets dialled.
fn check_host_name(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(invalid("url must have a host"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !host.split('.').all(label_ok) {
        return Err(invalid("url host is not a valid host name"));
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if is_numeric_label(last) && host.parse::<Ipv4Addr>().is_err() {
        return Err(invalid(
            "url host looks like a numeric address but is not a dotted quad",
        ));
    }
    Ok(())
}

fn is_numeric_label(label: &str) -> bool {
    let lower = label.to_ascii_lowercase();
    match lower.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => lower.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn normalise_path(path_and_query: &str) -> String {
    if path_and_query.starts_with('/') {
        path_and_query.to_string()
    } else {
        format!("/{path_and_query}")
    }
}

#[cfg(test)]
mod tests;
