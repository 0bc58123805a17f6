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
