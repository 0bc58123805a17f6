//! Egress safety (SPEC.md, "Egress safety (SSRF)") through the shipped egress clusters, unchanged
//! ([`EnvoyConfig::shipped_egress`]): a host name that resolves to 127.0.0.1 is never connected
//! to, and neither is Envoy's own admin interface, even where the plugin's URL policy lets the
//! URL in. Plus a check of the shipped envoy.yaml itself, so that it cannot quietly turn
//! permissive again.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use devtools::envoy::{envoy_version, has_resolved_address_filter};
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
/// Envoy's counter of resolved addresses the DNS cache's `resolved_address_filter` dropped.
const FILTERED_OUT: &str = "dns_cache.webhooks_dns.dns_address_filter_out";

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (and closes them).
struct CountingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    async fn start() -> Result<CountingListener> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Ok(CountingListener { port, accepted })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
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

/// Envoy with the shipped egress clusters, unchanged.
async fn start(allow_private_destinations: bool) -> Result<Stack> {
    Stack::start_with(
        |_| plugin(allow_private_destinations),
        |cfg| cfg.shipped_egress(),
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
/// the name (it cannot know where it points), Envoy's DNS cache drops 127.0.0.1, nothing connects.
/// Envoy before 1.39 has no `resolved_address_filter` (the harness removes it, as an operator
/// must for that Envoy to load the file at all): there the same delivery reaches the listener,
/// which is what docs/envoy-versions.md says, and why 1.39 is the floor for production.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_resolving_to_loopback_is_refused_from_envoy_1_39_and_reached_before() -> Result<()>
{
    map_name_to_loopback()?;
    let target = CountingListener::start().await?;
    let stack = start(false).await?;
    let url = format!("http://{LOOPBACK_NAME}:{}/hook", target.port);
    let log = attempt_test_delivery(&stack, &url).await?;
    if !has_resolved_address_filter()? {
        ensure!(
            target.accepted() >= 1,
            "Envoy {:?} without resolved_address_filter did not connect to {url}: {log}",
            envoy_version()?
        );
        return Ok(());
    }
    failed_attempt(&log, REFUSED)?;
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
    ensure!(stack.envoy.counter(FILTERED_OUT).await? >= 1);
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
