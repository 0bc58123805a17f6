//! Subscriber URL validation.
//!
//! Deliberately a small, strict parser rather than a general one: anything ambiguous (numeric
//! shorthand hosts, user-info, non-ASCII) is refused so that the host Envoy connects to is exactly
//! the host we checked, and a subscriber cannot point deliveries at the proxy's own network.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

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

/// `parse_destination` plus the security policy, relaxed when `allow_insecure`: https only, and
/// no loopback, private, link-local or unspecified hosts.
pub fn check_destination(url: &str, allow_insecure: bool) -> Result<Destination, UrlError> {
    let dest = parse_destination(url)?;
    if allow_insecure {
        return Ok(dest);
    }
    if !dest.https {
        return Err(insecure("url must be https"));
    }
    if is_refused_host(&dest.host) {
        return Err(insecure(
            "url host must not be localhost or a loopback, private, link-local or unspecified address",
        ));
    }
    Ok(dest)
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

fn is_refused_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return is_refused_v4(v4);
    }
    match host.parse::<Ipv6Addr>() {
        Ok(v6) => is_refused_v6(v6),
        Err(_) => false,
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    a == 127
        || a == 10
        || a == 0
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 169 && b == 254)
        || (a == 100 && (64..128).contains(&b))
        || ip == Ipv4Addr::BROADCAST
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_refused_v4(v4);
    }
    let first = ip.segments().first().copied().unwrap_or(0);
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xffc0) == 0xfe80
        || (first & 0xfe00) == 0xfc00
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Destination {
        check_destination(url, false).unwrap()
    }

    fn refused(url: &str, allow_insecure: bool) -> UrlError {
        check_destination(url, allow_insecure).unwrap_err()
    }

    fn assert_invalid(url: &str, message: &str) {
        let err = refused(url, true);
        assert_eq!(
            (err.code, err.message.as_str()),
            ("invalid_url", message),
            "{url}"
        );
    }

    fn assert_insecure(url: &str) {
        let err = refused(url, false);
        assert_eq!(err.code, "insecure_url", "{url}");
        assert!(check_destination(url, true).is_ok(), "{url}");
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
        let d = check_destination("http://example.com/x", true).unwrap();
        assert_eq!((d.https, d.port), (false, 80));
        assert_eq!(ok("https://a_b.example.com:65535/").port, 65535);
        assert_eq!(ok("https://93.184.216.34/").host, "93.184.216.34");
    }

    #[test]
    fn parses_ipv6() {
        let d = ok("https://[2001:DB8::1]:8443/p");
        assert_eq!(d.host, "2001:db8::1");
        assert_eq!(d.authority, "[2001:db8::1]:8443");
        assert_eq!(d.port, 8443);
        assert_eq!(ok("https://[2001:db8::1]").port, 443);
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
        assert!(check_destination(&edge, false).is_ok());
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
        assert!(check_destination("https://cafe.example/", false).is_ok());
        assert!(check_destination("https://deadbeef/", false).is_ok());
        assert!(check_destination("https://123.example.com/", false).is_ok());
    }

    #[test]
    fn insecure_scheme() {
        let err = refused("http://example.com/", false);
        assert_eq!(err.code, "insecure_url");
        assert_eq!(err.message, "url must be https");
        assert_eq!(err.to_string(), "url must be https");
    }

    #[test]
    fn refuses_local_names() {
        for url in [
            "https://localhost/",
            "https://LOCALHOST:8443/",
            "https://api.localhost/",
        ] {
            assert_insecure(url);
        }
        assert!(check_destination("https://localhost.example.com/", false).is_ok());
        assert!(check_destination("https://notlocalhost/", false).is_ok());
    }

    #[test]
    fn refuses_private_ipv4() {
        for host in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
        ] {
            assert_insecure(&format!("https://{host}/"));
        }
        for host in [
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "8.8.8.8",
            "11.0.0.1",
            "255.255.255.254",
        ] {
            assert!(
                check_destination(&format!("https://{host}/"), false).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn refuses_private_ipv6() {
        for host in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.0.1",
            "::ffff:169.254.169.254",
            "::ffff:7f00:1",
        ] {
            assert_insecure(&format!("https://[{host}]/"));
        }
        for host in [
            "2001:db8::1",
            "fec0::1",
            "fe00::1",
            "::ffff:8.8.8.8",
            "2606:4700::1111",
        ] {
            assert!(
                check_destination(&format!("https://[{host}]/"), false).is_ok(),
                "{host}"
            );
        }
    }
}
