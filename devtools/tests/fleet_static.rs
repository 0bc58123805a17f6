//! Fleet mode and static subscriptions (SPEC "Fleet mode", "Static subscriptions belong to the
//! configuration"), with a real etcd and three real Envoys: a static subscription's status is
//! shared (a PATCH or a receiver's 410 through one replica is seen by all), everything else is
//! the configuration's (a moved URL is served and delivered to after a restart, a removed one is
//! gone), and etcd never holds its secret. Also: two replicas given the same `node_id`.
//!
//! Every wait polls a condition with a deadline.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::fleet::node_id;
use devtools::fleet::produce;
use devtools::receiver::describe;
use devtools::{api, poll_until, Envoy, Fleet, Receiver, Reply, Stop};
use serde_json::{json, Value};

const KEY: &str = "test-key";
const KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const SECRET_1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_2: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgYXVkaXQgc2luaw==";
const WAIT: Duration = Duration::from_secs(15);
const ID: &str = "audit";
const PATH: &str = "/webhooks/subscriptions/audit";

/// The plugin configuration with the static subscription `audit` at `url` signed with
/// `secret` (none: no static subscription).
fn plugin(statics: Option<(&str, &str)>) -> Value {
    let subscriptions: Vec<Value> = statics
        .map(|(url, secret)| {
            json!({"id": ID, "consumer": "tests", "url": url, "events": ["*"], "secret": secret})
        })
        .into_iter()
        .collect();
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": KEY_SHA256}]},
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "300ms"],
                     "allow_http": true, "allow_private_destinations": true},
        "subscriptions": subscriptions
    })
}

/// The `n`s `receiver` got at `path`, each checked against `secret`, sorted, once each: a
/// replica killed after a delivery, before etcd took its delete, has it delivered again with
/// the same webhook-id (at-least-once).
fn ns_at(receiver: &Receiver, path: &str, secret: &str) -> Result<Vec<u64>> {
    let mut ns = Vec::new();
    for hook in receiver.received().iter().filter(|r| r.path == path) {
        let body = hook.verify(secret).context("signature")?;
        ns.extend(body["data"]["object"]["n"].as_u64());
    }
    ns.sort_unstable();
    ns.dedup();
    Ok(ns)
}

async fn wait_ns(receiver: &Receiver, path: &str, ns: &[u64], secret: &str) -> Result<()> {
    poll_until(WAIT, &format!("events {ns:?} at {path}"), async || {
        ns_at(receiver, path, secret).ok().as_deref() == Some(ns)
    })
    .await
    .with_context(|| format!("received: {}", describe(&receiver.received())))
}

/// Waits until every replica answers GET of `audit` with `want` (status code and, for 200,
/// these fields of the record).
async fn wait_everywhere(fleet: &Fleet, code: u16, fields: &[(&str, Value)]) -> Result<()> {
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        let what = format!("{} answers GET {PATH} {code} with {fields:?}", node_id(i));
        let mut last = (0, Value::Null);
        let waited = poll_until(WAIT, &what, async || {
            let Ok(got) = api(envoy, KEY, "GET", PATH, None).await else {
                return false;
            };
            last = got;
            last.0 == code && fields.iter().all(|(name, want)| last.1[name] == *want)
        })
        .await;
        waited.with_context(|| format!("last answer {last:?}; log:\n{}", envoy.log_tail(15)))?;
    }
    Ok(())
}

async fn patch_status(envoy: &Envoy, status: &str) -> Result<()> {
    let (code, body) = api(envoy, KEY, "PATCH", PATH, Some(json!({"status": status}))).await?;
    ensure!(code == 200, "PATCH status {status} answered {code}: {body}");
    Ok(())
}

/// Waits until etcd holds no pending message (every delivery's delete taken), then stops every
/// replica (SIGKILL: nothing runs at exit) and starts each again with `plugin`: no message
/// detected before is claimed and delivered again after.
async fn restart_all_with(fleet: &mut Fleet, plugin: &Value) -> Result<()> {
    let messages = format!("{}/msg/", fleet.prefix());
    poll_until(WAIT, "no message pending in etcd", async || {
        fleet.etcd.count(&messages).await.ok() == Some(0)
    })
    .await?;
    for i in 0..fleet.replicas.len() {
        fleet.stop(i, Stop::Kill).await?;
        fleet.reconfigure_plugin(i, plugin.clone())?;
        fleet.start_again(i).await?;
    }
    Ok(())
}

/// Fails if any key etcd holds under the fleet's prefix has one of `secrets` in its value.
async fn etcd_holds_no_secret(fleet: &Fleet, secrets: &[&str]) -> Result<()> {
    for (key, value) in fleet.etcd.range(fleet.prefix()).await? {
        let text = String::from_utf8_lossy(&value);
        for secret in secrets {
            let raw = secret.trim_start_matches("whsec_");
            let bytes = STANDARD.decode(raw).unwrap_or_default();
            let leaked = text.contains(raw)
                || (!bytes.is_empty() && value.windows(bytes.len()).any(|w| w == bytes));
            ensure!(!leaked, "etcd key {key} holds a static secret: {text}");
        }
    }
    Ok(())
}

/// Keys under the fleet's prefix that name the static subscription.
async fn keys_naming_it(fleet: &Fleet) -> Result<Vec<String>> {
    let keys = fleet.etcd.range(fleet.prefix()).await?;
    Ok(keys
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.contains(&format!("/{ID}")))
        .collect())
}

#[tokio::test]
async fn a_static_subscriptions_status_is_shared_and_its_definition_follows_each_restarts_configuration(
) -> Result<()> {
    let gone_rx = Receiver::start().await?;
    let first = |rx: &Receiver| plugin(Some((&rx.url("/v1"), SECRET_1)));
    let mut fleet = Fleet::start(3, first).await?;
    fleet.receiver.set_default(Reply::status(204));
    let v1 = fleet.receiver.url("/v1");
    let v2 = gone_rx.url("/v2");
    fleet.wait_all_active(1, WAIT).await?;

    // Disabled through A: B and C show it disabled and deliver nothing to it.
    patch_status(fleet.replica(0), "disabled").await?;
    let disabled = [("status", json!("disabled")), ("url", json!(v1))];
    wait_everywhere(&fleet, 200, &disabled).await?;
    fleet.wait_all_active(0, WAIT).await?;
    // Enabled again through C: every replica shows it active and delivers to it.
    patch_status(fleet.replica(2), "active").await?;
    wait_everywhere(&fleet, 200, &[("status", json!("active"))]).await?;
    fleet.wait_all_active(1, WAIT).await?;
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        produce(envoy, i as u64 + 1).await?;
    }
    wait_ns(&fleet.receiver, "/v1", &[1, 2, 3], SECRET_1).await?;

    // Moved in the configuration (URL and secret) and restarted: every replica shows and
    // delivers to the new URL, signed with the new secret, active.
    restart_all_with(&mut fleet, &plugin(Some((&v2, SECRET_2)))).await?;
    gone_rx.set_default(Reply::status(204));
    let moved = [("status", json!("active")), ("url", json!(v2))];
    wait_everywhere(&fleet, 200, &moved).await?;
    for (i, envoy) in fleet.replicas.iter().enumerate() {
        produce(envoy, i as u64 + 11).await?;
    }
    wait_ns(&gone_rx, "/v2", &[11, 12, 13], SECRET_2).await?;
    ensure!(
        ns_at(&fleet.receiver, "/v1", SECRET_1)? == [1, 2, 3],
        "the old URL got more: {}",
        describe(&fleet.receiver.received())
    );

    // A 410 seen by B disables it on every replica; enabled again through A, on every one.
    gone_rx.set_default(Reply::status(410));
    produce(fleet.replica(1), 21).await?;
    let gone = [
        ("status", json!("disabled")),
        ("disabled_reason", json!("gone")),
    ];
    wait_everywhere(&fleet, 200, &gone).await?;
    fleet.wait_all_active(0, WAIT).await?;
    gone_rx.set_default(Reply::status(204));
    patch_status(fleet.replica(0), "active").await?;
    wait_everywhere(&fleet, 200, &moved).await?;
    fleet.wait_all_active(1, WAIT).await?;
    produce(fleet.replica(2), 22).await?;
    // The receiver answered event 21 with 410; 22 is delivered after the re-enable.
    poll_until(WAIT, "event 22 at /v2", async || {
        ns_at(&gone_rx, "/v2", SECRET_2).is_ok_and(|ns| ns.contains(&22))
    })
    .await?;
    etcd_holds_no_secret(&fleet, &[SECRET_1, SECRET_2]).await?;

    // Removed from the configuration and restarted: gone everywhere, and from etcd.
    restart_all_with(&mut fleet, &plugin(None)).await?;
    wait_everywhere(&fleet, 404, &[]).await?;
    for envoy in &fleet.replicas {
        let (code, list) = api(envoy, KEY, "GET", "/webhooks/subscriptions", None).await?;
        ensure!(
            code == 200 && list["data"] == json!([]),
            "list: {code} {list}"
        );
    }
    let left = keys_naming_it(&fleet).await?;
    ensure!(left.is_empty(), "etcd still holds {left:?}");
    Ok(())
}

#[tokio::test]
async fn a_copy_of_a_static_subscription_left_in_etcd_by_an_older_version_is_ignored_and_deleted(
) -> Result<()> {
    let v2 = |rx: &Receiver| plugin(Some((&rx.url("/v2"), SECRET_2)));
    let mut fleet = Fleet::start(2, v2).await?;
    fleet.receiver.set_default(Reply::status(204));
    fleet.wait_all_active(1, WAIT).await?;
    // What a status PATCH wrote before: the whole record, old URL and secret, disabled.
    let legacy = json!({"id": ID, "consumer": "tests", "url": fleet.receiver.url("/v1"),
        "events": ["*"], "status": "disabled", "disabled_reason": "manual",
        "created_at_ms": 1_795_000_000_000u64, "updated_at_ms": 1_795_000_000_000u64,
        "secrets": [{"secret": SECRET_1}], "is_static": true, "version": 2});
    fleet.put_stored(ID, &legacy).await?;
    fleet.restart(1, Stop::Kill).await?;
    poll_until(WAIT, "the copy deleted from etcd", async || {
        fleet.stored(ID).await.ok().flatten().is_none()
    })
    .await?;
    let v2_url = fleet.receiver.url("/v2");
    let configured = [("status", json!("active")), ("url", json!(v2_url))];
    wait_everywhere(&fleet, 200, &configured).await?;
    fleet.wait_all_active(1, WAIT).await?;
    produce(fleet.replica(0), 1).await?;
    produce(fleet.replica(1), 2).await?;
    wait_ns(&fleet.receiver, "/v2", &[1, 2], SECRET_2).await?;
    ensure!(ns_at(&fleet.receiver, "/v1", SECRET_1)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn two_replicas_given_the_same_node_id_both_deliver_and_the_conflict_is_logged_and_counted(
) -> Result<()> {
    let same = |rx: &Receiver| {
        let mut config = plugin(Some((&rx.url("/hooks"), SECRET_1)));
        config["fleet"] = json!({"node_id": "twin"});
        config
    };
    let mut fleet = Fleet::start(1, same).await?;
    fleet.receiver.set_default(Reply::status(204));
    fleet.wait_all_active(1, WAIT).await?;
    // The twin starts while the first holds its lease.
    let twin = Envoy::start(fleet.config(0).clone()).await?;
    let conflicts = async || -> u64 {
        let first = fleet
            .replica(0)
            .counter("webhooks_fleet_node_conflicts")
            .await;
        let second = twin.counter("webhooks_fleet_node_conflicts").await;
        first.unwrap_or(0) + second.unwrap_or(0)
    };
    poll_until(WAIT, "the conflict counted", async || {
        conflicts().await >= 1
    })
    .await
    .with_context(|| format!("the twin's log:\n{}", twin.log_tail(20)))?;
    let logs = format!("{}{}", fleet.replica(0).log_contents(), twin.log_contents());
    ensure!(
        logs.contains("node id twin"),
        "the conflict is logged: {}",
        twin.log_tail(20)
    );
    // Both keep delivering, and neither took the other's lease away.
    for n in 1..=5 {
        produce(fleet.replica(0), n).await?;
        produce(&twin, n + 100).await?;
    }
    let want: Vec<u64> = (1..=5).chain(101..=105).collect();
    wait_ns(&fleet.receiver, "/hooks", &want, SECRET_1).await?;
    for (name, envoy) in [("first", fleet.replica(0)), ("twin", &twin)] {
        ensure!(
            !envoy.log_contents().contains("expired; taking a new one"),
            "the {name} lost its lease: {}",
            envoy.log_tail(20)
        );
        ensure!(envoy.counter("webhooks_fleet_claims").await? == 0);
    }
    fleet.stop(0, Stop::Kill).await?;
    Ok(())
}
