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
mod tests {
    use super::*;

    fn ok(url: &str) -> Destination {
        check_destination(url, Policy::STRICT).unwrap()
    }

    fn refused(url: &str, policy: Policy) -> UrlError {
        check_destination(url, policy).unwrap_err()
    }

    fn assert_invalid(url: &str, message: &str) {
        let err = refused(url, Policy::OPEN);
        assert_eq!(
            (err.code, err.message.as_str()),
            ("invalid_url", message),
            "{url}"
        );
    }

    /// Refused as `insecure_url` with `message` under the strict policy, accepted once private
    /// destinations are allowed (http still refused then).
    fn assert_private(url: &str, message: &str) {
        let err = refused(url, Policy::STRICT);
        assert_eq!(
            (err.code, err.message.as_str()),
            ("insecure_url", message),
            "{url}"
        );
        let private_ok = Policy {
            allow_http: false,
            allow_private: true,
        };
        assert!(check_destination(url, private_ok).is_ok(), "{url}");
    }

    #[test]
    fn parses_https() {
        let d = ok("https://Hooks.Example.com/in?x=1");
        assert_eq!(
            d,
            Destination {
                https: true,
                host: "hooks.example.com".into(),
                port: 443,
                authority: "hooks.example.com".into(),
                path_and_query: "/in?x=1".into(),
            }
        );
    }

    #[test]
    fn parses_ports_paths_and_schemes() {
        let d = ok("HTTPS://example.com:8443");
        assert_eq!((d.port, d.authority.as_str()), (8443, "example.com:8443"));
        assert_eq!(d.path_and_query, "/");
        assert_eq!(ok("https://example.com?a=b").path_and_query, "/?a=b");
        assert_eq!(ok("https://example.com/").path_and_query, "/");
        let d = check_destination("http://example.com/x", Policy::OPEN).unwrap();
        assert_eq!((d.https, d.port), (false, 80));
        assert_eq!(ok("https://a_b.example.com:65535/").port, 65535);
        assert_eq!(ok("https://93.184.216.34/").host, "93.184.216.34");
    }

    #[test]
    fn parses_ipv6() {
        let d = ok("https://[2606:4700::1]:8443/p");
        assert_eq!(d.host, "2606:4700::1");
        assert_eq!(d.authority, "[2606:4700::1]:8443");
        assert_eq!(d.port, 8443);
        assert_eq!(ok("https://[2606:4700::1]").port, 443);
    }

    #[test]
    fn refuses_malformed() {
        assert_invalid("example.com/x", "url must be absolute (https://host/path)");
        assert_invalid("/relative", "url must be absolute (https://host/path)");
        assert_invalid("", "url must be absolute (https://host/path)");
        assert_invalid("ftp://example.com/", "url scheme must be https or http");
        assert_invalid("https:///path", "url must have a host");
        assert_invalid("https://", "url must have a host");
        assert_invalid("https://:443/", "url must have a host");
        assert_invalid(
            "https://user:pw@example.com/",
            "url must not contain user-info",
        );
        assert_invalid("https://@example.com/", "url must not contain user-info");
        assert_invalid("https://example.com/#frag", "url must not have a fragment");
        assert_invalid(
            "https://exa mple.com/",
            "url must not contain whitespace or control characters",
        );
        assert_invalid(
            "https://example.com/\n",
            "url must not contain whitespace or control characters",
        );
        assert_invalid(
            "https://exämple.com/",
            "url must be ASCII (punycode the host, percent-encode the path)",
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_invalid(&long, "url must be at most 2048 characters");
        let edge = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(edge.len(), MAX_URL_LEN);
        assert!(check_destination(&edge, Policy::STRICT).is_ok());
    }

    #[test]
    fn refuses_bad_ports_and_hosts() {
        let port = "url port must be a number from 1 to 65535";
        assert_invalid("https://example.com:0/", port);
        assert_invalid("https://example.com:65536/", port);
        assert_invalid("https://example.com:/", port);
        assert_invalid("https://example.com:+1/", port);
        assert_invalid("https://example.com:1:2/", port);
        let name = "url host is not a valid host name";
        assert_invalid("https://exa%6dple.com/", name);
        assert_invalid("https://example..com/", name);
        assert_invalid("https://example.com./", name);
        assert_invalid("https://.example.com/", name);
        assert_invalid(
            "https://example.com\\@evil.com/",
            "url must not contain user-info",
        );
        assert_invalid("https://evil.com\\.example.com/", name);
        assert_invalid("https://2001:db8::1/", port);
        assert_invalid("https://[2001:db8::1/", "url host has an unclosed '['");
        assert_invalid("https://[zz::1]/", "url host is not a valid IPv6 address");
        assert_invalid(
            "https://[fe80::1%25eth0]/",
            "url host is not a valid IPv6 address",
        );
        assert_invalid("https://[::1]x/", "url has characters after the IPv6 host");
        assert_invalid("https://[::1]:0/", port);
    }

    #[test]
    fn refuses_numeric_shorthand_hosts() {
        let msg = "url host looks like a numeric address but is not a dotted quad";
        for host in [
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "127.1",
            "127.0.1",
            "0177.0.0.1",
            "1.2.3.4.5",
            "example.123",
            "0x",
            "256.1.1.1",
        ] {
            assert_invalid(&format!("http://{host}/"), msg);
        }
        // Hex-looking names that are not numbers stay ordinary host names.
        assert!(check_destination("https://cafe.example/", Policy::STRICT).is_ok());
        assert!(check_destination("https://deadbeef/", Policy::STRICT).is_ok());
        assert!(check_destination("https://123.example.com/", Policy::STRICT).is_ok());
    }

    #[test]
    fn insecure_scheme() {
        let err = refused("http://example.com/", Policy::STRICT);
        assert_eq!(err.code, "insecure_url");
        assert_eq!(err.message, "url must be https");
        assert_eq!(err.to_string(), "url must be https");
    }

    #[test]
    fn http_and_private_are_separate_switches() {
        let http_only = Policy {
            allow_http: true,
            allow_private: false,
        };
        assert!(check_destination("http://example.com/", http_only).is_ok());
        let err = refused("http://127.0.0.1:9901/quitquitquit", http_only);
        assert_eq!(
            err.message,
            "url host must not be in 127.0.0.0/8 (loopback)"
        );
        let err = refused("http://vm.localhost/", http_only);
        assert_eq!(err.message, "url host must not be localhost");
        let private_only = Policy {
            allow_http: false,
            allow_private: true,
        };
        assert_eq!(
            refused("http://127.0.0.1/", private_only).message,
            "url must be https"
        );
        assert!(check_destination("https://127.0.0.1/", private_only).is_ok());
    }

    #[test]
    fn refuses_local_names() {
        for url in [
            "https://localhost/",
            "https://LOCALHOST:8443/",
            "https://api.localhost/",
        ] {
            assert_private(url, "url host must not be localhost");
        }
        assert!(check_destination("https://localhost.example.com/", Policy::STRICT).is_ok());
        assert!(check_destination("https://notlocalhost/", Policy::STRICT).is_ok());
    }

    /// Every literal named in issue 10, and the edges of each block, with the block it is in.
    #[test]
    fn refuses_special_purpose_ipv4() {
        for (host, block) in [
            ("127.0.0.1", "127.0.0.0/8 (loopback)"),
            ("127.255.255.254", "127.0.0.0/8 (loopback)"),
            ("10.0.0.1", "10.0.0.0/8 (private)"),
            ("172.16.0.1", "172.16.0.0/12 (private)"),
            ("172.31.255.255", "172.16.0.0/12 (private)"),
            ("192.168.1.1", "192.168.0.0/16 (private)"),
            ("169.254.169.254", "169.254.0.0/16 (link-local)"),
            ("0.0.0.0", "0.0.0.0/8 (this network)"),
            ("0.1.2.3", "0.0.0.0/8 (this network)"),
            ("100.64.0.1", "100.64.0.0/10 (shared address space, CGNAT)"),
            (
                "100.127.255.255",
                "100.64.0.0/10 (shared address space, CGNAT)",
            ),
            ("198.18.0.1", "198.18.0.0/15 (benchmarking)"),
            ("198.19.255.255", "198.18.0.0/15 (benchmarking)"),
            ("192.0.0.8", "192.0.0.0/24 (IETF protocol assignments)"),
            ("192.0.2.1", "192.0.2.0/24 (documentation)"),
            ("198.51.100.7", "198.51.100.0/24 (documentation)"),
            ("203.0.113.9", "203.0.113.0/24 (documentation)"),
            ("192.88.99.1", "192.88.99.0/24 (6to4 relay anycast)"),
            ("224.0.0.1", "224.0.0.0/4 (multicast)"),
            ("239.255.255.255", "224.0.0.0/4 (multicast)"),
            ("240.0.0.1", "240.0.0.0/4 (reserved, broadcast)"),
            ("255.255.255.255", "240.0.0.0/4 (reserved, broadcast)"),
        ] {
            assert_private(
                &format!("https://{host}/"),
                &format!("url host must not be in {block}"),
            );
        }
        for host in [
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "223.255.255.255",
            "8.8.8.8",
            "11.0.0.1",
            "1.0.0.1",
        ] {
            assert!(
                check_destination(&format!("https://{host}/"), Policy::STRICT).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn refuses_special_purpose_ipv6() {
        for (host, block) in [
            ("::1", "::/96 (unspecified, loopback, IPv4-compatible)"),
            ("::", "::/96 (unspecified, loopback, IPv4-compatible)"),
            (
                "::127.0.0.1",
                "::/96 (unspecified, loopback, IPv4-compatible)",
            ),
            (
                "::8.8.8.8",
                "::/96 (unspecified, loopback, IPv4-compatible)",
            ),
            ("::ffff:127.0.0.1", "::ffff:0:0/96 (IPv4-mapped)"),
            ("::ffff:10.1.2.3", "::ffff:0:0/96 (IPv4-mapped)"),
            ("::ffff:169.254.169.254", "::ffff:0:0/96 (IPv4-mapped)"),
            ("::ffff:7f00:1", "::ffff:0:0/96 (IPv4-mapped)"),
            ("::ffff:8.8.8.8", "::ffff:0:0/96 (IPv4-mapped)"),
            ("::ffff:0:7f00:1", "::ffff:0:0:0/96 (IPv4-translated)"),
            ("64:ff9b::a9fe:a9fe", "64:ff9b::/96 (NAT64)"),
            ("64:ff9b::7f00:1", "64:ff9b::/96 (NAT64)"),
            ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::/48 (NAT64, local use)"),
            ("100::1", "100::/64 (discard-only)"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32 (Teredo)"),
            ("2001:2::1", "2001:2::/48 (benchmarking)"),
            ("2001:db8::1", "2001:db8::/32 (documentation)"),
            ("2002:7f00:1::", "2002::/16 (6to4)"),
            ("2002:a9fe:a9fe::1", "2002::/16 (6to4)"),
            ("fc00::1", "fc00::/7 (unique local)"),
            ("fd12:3456::1", "fc00::/7 (unique local)"),
            ("fe80::1", "fe80::/10 (link-local)"),
            ("febf::1", "fe80::/10 (link-local)"),
            ("fec0::1", "fec0::/10 (site-local)"),
            ("ff02::1", "ff00::/8 (multicast)"),
            ("ff0e::1", "ff00::/8 (multicast)"),
        ] {
            assert_private(
                &format!("https://[{host}]/"),
                &format!("url host must not be in {block}"),
            );
        }
        for host in [
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2001:1::1",
            "2003::1",
            "64:ff9b:2::1",
            "fe00::1",
            "1::1",
        ] {
            assert!(
                check_destination(&format!("https://[{host}]/"), Policy::STRICT).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn special_purpose_table_is_well_formed() {
        for block in SPECIAL_PURPOSE {
            let (cidr, what) = block.split_once(' ').unwrap();
            assert!(
                what.starts_with('(') && what.ends_with(')') && what.len() > 2,
                "{block}"
            );
            let (net, len) = cidr.split_once('/').unwrap();
            let ip = parse_ip_literal(net).unwrap();
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            let len: u32 = len.parse().unwrap();
            assert!((1..=bits).contains(&len), "{cidr}");
            // The network address is the block's first address: no host bits set.
            let raw = match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6),
            };
            assert_eq!(raw & ((1u128 << (bits - len)) - 1), 0, "{cidr}");
        }
    }
}
