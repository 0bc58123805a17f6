//! Egress safety (SPEC.md, "Egress safety (SSRF)") through the shipped egress clusters, unchanged
//! ([`EnvoyConfig::shipped_egress`]): a host name that resolves to 127.0.0.1 is never connected
//! to, and neither is Envoy's own admin interface, even where the plugin's URL policy lets the
//! URL in. Plus a check of the shipped envoy.yaml itself, so that it cannot quietly turn
//! permissive again.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use devtools::envoy::{has_resolved_address_filter, RESOLVED_ADDRESS_FILTER};
use devtools::files::{load_yaml, plugin_config};
use devtools::{poll_until, workspace_root, Stack};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// SHA-256 of "test-key".
const KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const KEY: &str = "test-key";
/// A name of the reserved `.test` domain that this test maps to 127.0.0.1 in /etc/hosts.
const LOOPBACK_NAME: &str = "proxy-webhooks-ssrf.test";
/// What the delivery log says when Envoy refused every address the host resolved to.
const REFUSED: &str = "destination unreachable: the host does not resolve, or resolves only to \
                       addresses the egress cluster refuses (private or special-purpose ranges)";
/// The configuration shipped for Envoy 1.36 and 1.37, whose egress guard replaces
/// `resolved_address_filter` (docs/envoy-versions.md).
const OLDER_ENVOY_YAML: &str = "deploy/envoy-1.36/envoy.yaml";
/// Envoy's counter of resolved addresses the DNS cache's `resolved_address_filter` dropped.
const FILTERED_OUT: &str = "dns_cache.webhooks_dns.dns_address_filter_out";

/// A TCP listener on 127.0.0.1 that counts the connections it accepts and the bytes they send
/// within a second (then closes them).
struct CountingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
    /// Connections read until their end or for a second.
    read: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl CountingListener {
    async fn start() -> Result<CountingListener> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (accepted, read, bytes): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let counters = (Arc::clone(&accepted), Arc::clone(&read), Arc::clone(&bytes));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::SeqCst);
                let (read, bytes) = (Arc::clone(&counters.1), Arc::clone(&counters.2));
                tokio::spawn(async move {
                    let n = read_for_a_second(socket).await;
                    bytes.fetch_add(n, Ordering::SeqCst);
                    read.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(CountingListener {
            port,
            accepted,
            read,
            bytes,
        })
    }

    /// Waits until every accepted connection is read; then the bytes they sent.
    async fn bytes_once_read(&self) -> Result<usize> {
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        poll_until(Duration::from_secs(5), "connections read", async || {
            load(&self.read) == load(&self.accepted)
        })
        .await?;
        Ok(load(&self.bytes))
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// What a connection sends within a second (or until it closes).
async fn read_for_a_second(mut socket: tokio::net::TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

/// Makes sure [`LOOPBACK_NAME`] resolves to 127.0.0.1 on this machine: adds it to /etc/hosts when
/// it is missing (a fresh CI machine), which needs root; fails with how to fix it otherwise.
fn map_name_to_loopback() -> Result<()> {
    let resolves_to_loopback = || {
        (LOOPBACK_NAME, 80)
            .to_socket_addrs()
            .map(|mut addrs| addrs.any(|a| a.ip() == IpAddr::from([127, 0, 0, 1])))
            .unwrap_or(false)
    };
    if resolves_to_loopback() {
        return Ok(());
    }
    let line = format!("127.0.0.1 {LOOPBACK_NAME}\n");
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .and_then(|mut hosts| std::io::Write::write_all(&mut hosts, line.as_bytes()));
    if let Err(e) = appended {
        bail!(
            "{LOOPBACK_NAME} must resolve to 127.0.0.1 for this test, and /etc/hosts cannot be \
             changed ({e}); run the tests as root once, or add the line yourself: \
             echo '127.0.0.1 {LOOPBACK_NAME}' | sudo tee -a /etc/hosts"
        );
    }
    ensure!(
        resolves_to_loopback(),
        "added {LOOPBACK_NAME} to /etc/hosts, but it still does not resolve to 127.0.0.1"
    );
    Ok(())
}

fn plugin(allow_private_destinations: bool) -> Value {
    json!({
        "api": {"keys": [{"consumer": "acme", "sha256": KEY_SHA256}]},
        "delivery": {
            "timeout": "2s",
            "retry_schedule": ["0s"],
            "allow_http": true,
            "allow_private_destinations": allow_private_destinations
        }
    })
}

/// Envoy with the shipped egress clusters, unchanged: envoy.yaml's, or on an Envoy before 1.39
/// those of [`OLDER_ENVOY_YAML`].
async fn start(allow_private_destinations: bool) -> Result<Stack> {
    let older = !has_resolved_address_filter()?;
    Stack::start_with(
        |_| plugin(allow_private_destinations),
        |cfg| {
            let mut cfg = cfg.shipped_egress();
            if older {
                cfg.base_config = workspace_root().join(OLDER_ENVOY_YAML);
            }
            cfg
        },
    )
    .await
}

async fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut request = stack
        .client
        .request(method.parse()?, stack.envoy.url(path))
        .bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
    };
    Ok((status, value))
}

/// Creates a subscription to `url`, asks for a test delivery, and returns the attempt log once
/// it has a finished attempt.
async fn attempt_test_delivery(stack: &Stack, url: &str) -> Result<Value> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, sub) = call(stack, "POST", "/webhooks/subscriptions", Some(body)).await?;
    ensure!(status == 201, "create {url}: {status} {sub}");
    let id = sub["id"].as_str().context("no id")?.to_string();
    let (status, answer) = call(
        stack,
        "POST",
        &format!("/webhooks/subscriptions/{id}/test"),
        None,
    )
    .await?;
    ensure!(status == 202, "test delivery: {status} {answer}");
    let deliveries = format!("/webhooks/subscriptions/{id}/deliveries");
    let mut log = Value::Null;
    let finished = async || {
        let Ok((_, value)) = call(stack, "GET", &deliveries, None).await else {
            return false;
        };
        let done = value["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["state"] != "in_flight"));
        log = value;
        done
    };
    let waited = poll_until(
        Duration::from_secs(10),
        "a finished attempt in the delivery log",
        finished,
    )
    .await;
    waited.with_context(|| {
        format!(
            "delivery log: {log}\nEnvoy log:\n{}",
            stack.envoy.log_tail(30)
        )
    })?;
    Ok(log)
}

/// The single attempt of the log, failed with `reason`.
fn failed_attempt(log: &Value, reason: &str) -> Result<()> {
    let entries = log["data"].as_array().context("no data")?;
    let [entry] = entries.as_slice() else {
        bail!("expected one attempt: {log}");
    };
    ensure!(
        entry["error"] == reason && entry["response_status"].is_null(),
        "expected the attempt to fail with {reason:?}: {entry}"
    );
    ensure!(
        ["exhausted", "failed"].contains(&entry["state"].as_str().unwrap_or("")),
        "{entry}"
    );
    Ok(())
}

/// `allow_http` on and private destinations off, as a platform might run it: the plugin accepts
/// the name (it cannot know where it points). From Envoy 1.39 the DNS cache drops 127.0.0.1 and
/// nothing connects; before, the egress guard of [`OLDER_ENVOY_YAML`] refuses the callout and
/// the listener gets no byte, though Envoy may open a connection (docs/envoy-versions.md). The
/// delivery log says the same on every version.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_resolves_to_loopback_gets_no_request() -> Result<()> {
    map_name_to_loopback()?;
    let target = CountingListener::start().await?;
    let stack = start(false).await?;
    let url = format!("http://{LOOPBACK_NAME}:{}/hook", target.port);
    let log = attempt_test_delivery(&stack, &url).await?;
    failed_attempt(&log, REFUSED)?;
    if !has_resolved_address_filter()? {
        let bytes = target.bytes_once_read().await?;
        ensure!(bytes == 0, "the receiver behind {url} got {bytes} bytes");
        // What docs/envoy-versions.md says of the guard: it refuses after Envoy has started to
        // connect (the plugin tries again every tick while it waits for DNS).
        ensure!(
            target.accepted() >= 1,
            "Envoy opened no connection to {url}: update docs/envoy-versions.md"
        );
        return Ok(());
    }
    ensure!(
        target.accepted() == 0,
        "the receiver behind {url} saw {} connections",
        target.accepted()
    );
    let filtered = stack.envoy.counter(FILTERED_OUT).await?;
    ensure!(
        filtered >= 1,
        "{FILTERED_OUT} is {filtered}: the filter did not refuse it"
    );
    Ok(())
}

/// Even with private destinations allowed in the plugin (literals pass its URL policy), the
/// shipped egress clusters never reach Envoy's own admin interface: the attack of issue 10
/// (`/quitquitquit`) fails and Envoy keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_admin_is_not_reachable_through_the_shipped_egress() -> Result<()> {
    let stack = start(true).await?;
    let url = format!("http://127.0.0.1:{}/quitquitquit", stack.envoy.admin_port());
    let log = attempt_test_delivery(&stack, &url).await?;
    failed_attempt(&log, REFUSED)?;
    let ready = stack
        .client
        .get(stack.envoy.admin_url("/ready"))
        .send()
        .await?;
    ensure!(
        ready.status() == 200,
        "Envoy admin /ready: {}",
        ready.status()
    );
    ensure!(!has_resolved_address_filter()? || stack.envoy.counter(FILTERED_OUT).await? >= 1);
    Ok(())
}

/// Addresses the shipped egress clusters must refuse when a name resolves to them: every
/// literal of issue 10 that Envoy can be handed (IPv4, and IPv6 for a dual-stack cache).
const MUST_REFUSE: &[&str] = &[
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "198.18.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "::1",
    "::",
    "::127.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:0:7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2002:7f00:1::",
    "2001::1",
    "2001:db8::1",
    "fc00::1",
    "fe80::1",
    "ff02::1",
];

/// Whether one of the filter's `ranges` holds `ip`.
fn filter_holds(ranges: &[Value], ip: IpAddr) -> bool {
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    ranges.iter().any(|r| {
        let (Some(prefix), Some(len)) = (r["address_prefix"].as_str(), r["prefix_len"].as_u64())
        else {
            return false;
        };
        let Ok(net) = prefix.parse::<IpAddr>() else {
            return false;
        };
        let ((net, width), (addr, addr_width)) = (bits(net), bits(ip));
        let shift = width - len.min(width);
        width == addr_width && (shift == 128 || net >> shift == addr >> shift)
    })
}

/// Fails if the shipped envoy.yaml ever allows http or private destinations again, publishes a
/// key, fails closed or uses the deprecated `fail_open`, or drops the resolved-address filter
/// from either egress cluster.
#[test]
fn the_shipped_envoy_yaml_is_safe_for_production() -> Result<()> {
    let envoy = load_yaml(&workspace_root().join("envoy.yaml"))?;
    let plugin = plugin_config(&envoy)?;
    let delivery = &plugin["delivery"];
    for flag in [
        "allow_http",
        "allow_private_destinations",
        "allow_insecure_destinations",
    ] {
        ensure!(
            delivery[flag].is_null() || delivery[flag] == false,
            "envoy.yaml sets delivery.{flag}: {}",
            delivery[flag]
        );
    }
    let keys = plugin["api"]["keys"].as_array().map_or(0, Vec::len);
    ensure!(
        keys == 0,
        "envoy.yaml ships API keys: {}",
        plugin["api"]["keys"]
    );
    ensure!(
        plugin["subscriptions"].as_array().is_none_or(Vec::is_empty),
        "envoy.yaml ships static subscriptions: {}",
        plugin["subscriptions"]
    );

    let text = std::fs::read_to_string(workspace_root().join("envoy.yaml"))?;
    ensure!(
        !text.contains("fail_open"),
        "envoy.yaml uses the deprecated fail_open"
    );
    ensure!(
        text.contains("failure_policy: FAIL_OPEN"),
        "envoy.yaml's filter must let traffic pass on a plugin failure (failure_policy: FAIL_OPEN)"
    );

    let clusters = envoy["static_resources"]["clusters"]
        .as_array()
        .context("no clusters")?;
    for name in ["webhooks_egress_http", "webhooks_egress_https"] {
        let cluster = clusters
            .iter()
            .find(|c| c["name"] == name)
            .with_context(|| format!("envoy.yaml has no cluster {name}"))?;
        let ranges = cluster
            .pointer("/cluster_type/typed_config/dns_cache_config/resolved_address_filter/ranges")
            .and_then(Value::as_array)
            .with_context(|| format!("{name} has no resolved_address_filter"))?;
        let missing: Vec<&str> = MUST_REFUSE
            .iter()
            .copied()
            .filter(|a| !a.parse().is_ok_and(|ip| filter_holds(ranges, ip)))
            .collect();
        ensure!(
            missing.is_empty(),
            "{name}'s resolved_address_filter lets through {missing:?}"
        );
        let public = ["8.8.8.8", "1.1.1.1", "2606:4700::1111"];
        let held: Vec<&str> = public
            .into_iter()
            .filter(|a| a.parse().is_ok_and(|ip| filter_holds(ranges, ip)))
            .collect();
        ensure!(
            held.is_empty(),
            "{name}'s resolved_address_filter refuses public {held:?}"
        );
    }
    Ok(())
}

const HTTP_OPTIONS: &str =
    "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Where the egress guard's regex is, in its filter list.
const GUARD_REGEX: &str = "/0/typed_config/xds_matcher/matcher_list/matchers/0/predicate/\
    single_predicate/custom_match/typed_config/expr_match/parsed_expr/expr/call_expr/args/0/\
    call_expr/args/0/const_expr/string_value";

/// [`OLDER_ENVOY_YAML`]'s egress clusters' upstream filters (the guard), removed with what
/// only they need, so that the rest can be compared with envoy.yaml.
fn take_guards(older: &mut Value) -> Result<Vec<Value>> {
    let clusters = older
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .context("no clusters")?;
    let mut guards = Vec::new();
    for cluster in clusters.iter_mut().filter(|c| {
        c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("webhooks_egress"))
    }) {
        let name = cluster["name"].clone();
        let options = cluster
            .pointer_mut(HTTP_OPTIONS)
            .and_then(Value::as_object_mut)
            .with_context(|| format!("{name} has no HttpProtocolOptions"))?;
        guards.push(options.remove("http_filters").context("no http_filters")?);
        if name == "webhooks_egress_http" {
            if let Some(object) = cluster.as_object_mut() {
                object.remove("typed_extension_protocol_options");
            }
            if let Some(Value::Object(dfp)) = cluster.pointer_mut("/cluster_type/typed_config") {
                dfp.remove("allow_insecure_cluster_options");
            }
        }
    }
    Ok(guards)
}

/// The configuration for Envoy 1.36 and 1.37 is envoy.yaml with the same egress guard on both
/// egress clusters in place of `resolved_address_filter`, nothing else changed; and the guard's
/// expression refuses exactly the filter's IPv4 blocks (checked on every first and second byte,
/// and every third where a /24 block starts with it) and every IPv6 address (the DNS cache
/// resolves to IPv4 only; IPv6 literals are refused whole).
#[test]
fn the_older_envoy_yaml_is_envoy_yaml_with_the_guard_for_the_filter() -> Result<()> {
    let root = workspace_root();
    let mut shipped = load_yaml(&root.join("envoy.yaml"))?;
    let ranges = shipped
        .pointer("/static_resources/clusters/1/cluster_type/typed_config/dns_cache_config")
        .and_then(|cache| cache[RESOLVED_ADDRESS_FILTER]["ranges"].as_array())
        .context("envoy.yaml's second cluster has no resolved_address_filter")?
        .clone();
    let mut older = load_yaml(&root.join(OLDER_ENVOY_YAML))?;
    devtools::envoy::remove_resolved_address_filter(&mut shipped)?;
    let guards = take_guards(&mut older)?;
    ensure!(
        shipped == older,
        "{OLDER_ENVOY_YAML} differs from envoy.yaml beyond the egress guard"
    );
    ensure!(
        guards.len() == 2 && guards[0] == guards[1],
        "both egress clusters need the same guard: {guards:?}"
    );
    let pattern = guards[0]
        .pointer(GUARD_REGEX)
        .and_then(Value::as_str)
        .context("no regex in the guard")?;
    let refuses = regex::Regex::new(pattern)?;
    let mut wrong = Vec::new();
    for a in 0..=255u8 {
        let thirds: Vec<u8> = if [192, 198, 203].contains(&a) {
            (0..=255).collect()
        } else {
            vec![0, 255]
        };
        for b in 0..=255u8 {
            for &c in &thirds {
                let ip = Ipv4Addr::new(a, b, c, 1);
                let refused = refuses.is_match(&format!("{ip}:443"));
                if refused != filter_holds(&ranges, IpAddr::V4(ip)) && wrong.len() < 10 {
                    wrong.push(format!("{ip} refused: {refused}"));
                }
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "the guard and the filter disagree: {wrong:?}"
    );
    for ip in MUST_REFUSE
        .iter()
        .filter(|a| a.contains(':'))
        .chain(&["2606:4700::1111"])
    {
        ensure!(
            refuses.is_match(&format!("[{ip}]:443")),
            "the guard lets IPv6 {ip} through"
        );
    }
    Ok(())
}

/// Every literal of issue 10 is refused by the API in a real Envoy, with `allow_http` on and
/// private destinations off, with the block it falls in; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn every_special_purpose_literal_is_refused_with_422() -> Result<()> {
    let stack = start(false).await?;
    let cases = [
        ("127.0.0.1:9901", "127.0.0.0/8 (loopback)"),
        ("[::1]", "::/96 (unspecified, loopback, IPv4-compatible)"),
        (
            "[::127.0.0.1]",
            "::/96 (unspecified, loopback, IPv4-compatible)",
        ),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::/96 (NAT64)"),
        ("[::ffff:0:7f00:1]", "::ffff:0:0:0/96 (IPv4-translated)"),
        ("[::ffff:127.0.0.1]", "::ffff:0:0/96 (IPv4-mapped)"),
        ("[2002:7f00:1::]", "2002::/16 (6to4)"),
        ("[2001:0:4136:e378::1]", "2001::/32 (Teredo)"),
        ("100.64.0.1", "100.64.0.0/10 (shared address space, CGNAT)"),
        ("198.18.0.1", "198.18.0.0/15 (benchmarking)"),
        ("192.0.0.1", "192.0.0.0/24 (IETF protocol assignments)"),
        ("224.0.0.1", "224.0.0.0/4 (multicast)"),
        ("240.0.0.1", "240.0.0.0/4 (reserved, broadcast)"),
        ("192.0.2.1", "192.0.2.0/24 (documentation)"),
        ("198.51.100.1", "198.51.100.0/24 (documentation)"),
        ("203.0.113.1", "203.0.113.0/24 (documentation)"),
        ("[2001:db8::1]", "2001:db8::/32 (documentation)"),
        ("10.0.0.1", "10.0.0.0/8 (private)"),
        ("172.16.0.1", "172.16.0.0/12 (private)"),
        ("192.168.0.1", "192.168.0.0/16 (private)"),
        ("169.254.169.254", "169.254.0.0/16 (link-local)"),
        ("[fe80::1]", "fe80::/10 (link-local)"),
        ("[fd00::1]", "fc00::/7 (unique local)"),
        ("0.0.0.0", "0.0.0.0/8 (this network)"),
        ("[ff02::1]", "ff00::/8 (multicast)"),
    ];
    for (host, block) in cases {
        let url = format!("http://{host}/in");
        let body = json!({"url": url, "events": ["*"]});
        let (status, answer) = call(&stack, "POST", "/webhooks/subscriptions", Some(body)).await?;
        let expected = format!("url host must not be in {block}");
        ensure!(
            status == 422
                && answer["error"]["code"] == "insecure_url"
                && answer["error"]["message"] == expected.as_str(),
            "{url}: {status} {answer} (expected 422 insecure_url {expected:?})"
        );
    }
    let body = json!({"url": "http://localhost:9901/quitquitquit", "events": ["*"]});
    let (status, answer) = call(&stack, "POST", "/webhooks/subscriptions", Some(body)).await?;
    ensure!(
        status == 422 && answer["error"]["message"] == "url host must not be localhost",
        "{status} {answer}"
    );
    let (_, listed) = call(&stack, "GET", "/webhooks/subscriptions", None).await?;
    ensure!(
        listed["data"] == json!([]),
        "something was written: {listed}"
    );
    Ok(())
}
