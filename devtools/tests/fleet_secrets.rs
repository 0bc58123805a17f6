//! Secrets at rest in fleet mode (docs/fleet.md, "Secrets at rest and in transit"), with a real
//! etcd and two real Envoys: with `fleet.encryption_key` and `encrypt_payloads` (both given as
//! environment variables of the VM, `vm_config.environment_variables.host_env_keys`), etcd holds
//! no signing secret and no payload in the clear; the key rotates by a restart with the old one
//! in `previous_encryption_keys`, after which everything still delivers, signed with the right
//! secrets (checked with the independent `standardwebhooks` crate), and records written
//! afterwards carry the new key's id.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::fleet::{delivered, produce};
use devtools::{api, poll_until, Envoy, Fleet, Receiver, Reply, Stop};
use serde_json::{json, Value};

const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";
const WAIT: Duration = Duration::from_secs(20);
/// In every event's payload: found in etcd only if a payload is stored in the clear.
const MARKER: &str = "card-4242-4242-marker";

/// Two encryption keys: 32 bytes of 1s and of 2s.
fn key(b: u8) -> String {
    STANDARD.encode([b; 32])
}

/// The key id the plugin stores beside sealed values: the first 8 bytes of SHA-256, in hex.
fn key_id(b: u8) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &[b; 32]);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn plugin() -> Value {
    let fleet = json!({"encryption_key": {"env": "PW_KEY"}, "encrypt_payloads": true});
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        // A failed attempt waits an hour: the message stays pending in etcd meanwhile.
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "1h"],
                     "allow_http": true, "allow_private_destinations": true},
        "fleet": fleet
    })
}

async fn create(envoy: &Envoy, url: &str) -> Result<(String, String)> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, created) = api(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let id = created["id"].as_str().context("no id")?.to_string();
    let secret = created["secret"].as_str().context("no secret")?.to_string();
    Ok((id, secret))
}

/// Every value under the fleet's prefix, as text (lossy).
async fn etcd_values(fleet: &Fleet) -> Result<Vec<(String, String)>> {
    let all = fleet.etcd.range(fleet.prefix()).await?;
    Ok(all
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

/// The key id the record of `id` seals its secret with.
async fn record_key_id(fleet: &Fleet, id: &str) -> Result<String> {
    let record = fleet.stored(id).await?.context("no record")?;
    let secret = record["secrets"][0]["secret"]
        .as_str()
        .context("no secret")?;
    let rest = secret
        .strip_prefix("pws1.")
        .with_context(|| format!("the secret of {id} is not sealed: {record}"))?;
    Ok(rest.split('.').next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn secrets_and_payloads_are_sealed_in_etcd_and_the_key_rotates() -> Result<()> {
    let with_key = |cfg: devtools::EnvoyConfig| cfg.with_vm_env("PW_KEY", &key(1));
    let mut fleet = Fleet::start_with(2, |_| plugin(), with_key).await?;
    fleet.receiver.set_default(Reply::status(204));
    let down = Receiver::start().await?;
    down.set_default(Reply::status(503));

    let (up_id, up_secret) = create(fleet.replica(0), &fleet.receiver.url("/up")).await?;
    let (down_id, down_secret) = create(fleet.replica(1), &down.url("/down")).await?;
    fleet.wait_all_active(2, WAIT).await?;
    produce(fleet.replica(0), 1).await?;
    delivered(&fleet.receiver, "/up", 1, &up_secret, WAIT).await?;
    // The event to `down` failed once and waits an hour: pending in etcd.
    down.wait_for(1, WAIT).await?;
    let pending = format!("{}/msg/", fleet.prefix());

    let values = etcd_values(&fleet).await?;
    ensure!(
        values.iter().any(|(k, _)| k.starts_with(&pending)),
        "a message is pending in etcd: {:?}",
        values.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for (k, v) in &values {
        ensure!(
            !v.contains("whsec_") && !v.contains(MARKER),
            "{k} holds a secret or a payload in the clear: {v}"
        );
        ensure!(
            !v.contains(&up_secret[6..]) && !v.contains(&down_secret[6..]),
            "{k}: {v}"
        );
    }
    for id in [&up_id, &down_id] {
        ensure!(record_key_id(&fleet, id).await? == key_id(1), "{id}");
    }
    let sealed_messages = values
        .iter()
        .filter(|(k, v)| k.starts_with(&pending) && v.starts_with(&format!("pws1.{}.", key_id(1))))
        .count();
    ensure!(
        sealed_messages >= 1,
        "the pending message is sealed with key 1"
    );

    // Rotation: both replicas restart with key 2, key 1 kept for reading.
    down.set_default(Reply::status(204));
    for i in 0..2 {
        fleet.stop(i, Stop::Term).await?;
        fleet.reconfigure(i, |mut cfg| {
            cfg.plugin_config = rotated(&cfg.plugin_config);
            cfg.with_vm_env("PW_KEY", &key(2))
                .with_vm_env("PW_OLD_KEY", &key(1))
        });
        fleet.start_again(i).await?;
    }
    fleet.wait_all_active(2, WAIT).await?;
    // The pending message (sealed with key 1) is resumed and signed with `down`'s secret (its
    // record sealed with key 1 too).
    delivered(&down, "/down", 1, &down_secret, WAIT).await?;
    produce(fleet.replica(1), 2).await?;
    delivered(&fleet.receiver, "/up", 2, &up_secret, WAIT).await?;
    delivered(&down, "/down", 2, &down_secret, WAIT).await?;

    // Written after the rotation: the new key's id.
    let (new_id, new_secret) = create(fleet.replica(1), &fleet.receiver.url("/new")).await?;
    ensure!(record_key_id(&fleet, &new_id).await? == key_id(2));
    let patch = json!({"description": "rewritten"});
    let path = format!("{SUBSCRIPTIONS}/{up_id}");
    let (status, body) = api(fleet.replica(0), TEST_KEY, "PATCH", &path, Some(patch)).await?;
    ensure!(status == 200, "PATCH answered {status}: {body}");
    ensure!(
        record_key_id(&fleet, &up_id).await? == key_id(2),
        "rewritten with key 2"
    );
    fleet.wait_all_active(3, WAIT).await?;
    produce(fleet.replica(0), 3).await?;
    delivered(&fleet.receiver, "/up", 3, &up_secret, WAIT).await?;
    for (k, v) in etcd_values(&fleet).await? {
        ensure!(
            !v.contains("whsec_") && !v.contains(&new_secret[6..]),
            "{k}: {v}"
        );
    }
    ensure!(fleet.counter_sum("webhooks_fleet_unreadable").await? == 0);
    Ok(())
}

/// A replica whose key opens none of etcd's records never signs with a wrong secret: the API
/// answers 503 for them, and the stat counts them.
#[tokio::test]
async fn a_replica_without_the_key_answers_503_and_counts() -> Result<()> {
    let with_key = |cfg: devtools::EnvoyConfig| cfg.with_vm_env("PW_KEY", &key(1));
    let mut fleet = Fleet::start_with(2, |_| plugin(), with_key).await?;
    fleet.stop(1, Stop::Term).await?;
    fleet.reconfigure(1, |cfg| cfg.with_vm_env("PW_KEY", &key(3)));
    fleet.start_again(1).await?;
    let (id, _) = create(fleet.replica(0), &fleet.receiver.url("/x")).await?;
    let path = format!("{SUBSCRIPTIONS}/{id}");
    poll_until(WAIT, "replica b counts the unreadable record", async || {
        fleet
            .replica(1)
            .counter("webhooks_fleet_unreadable")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;
    let (status, body) = api(fleet.replica(1), TEST_KEY, "GET", &path, None).await?;
    ensure!(status == 503, "GET through b answered {status}: {body}");
    ensure!(!body.to_string().contains(&key_id(1)), "{body}");
    let (status, _) = api(fleet.replica(0), TEST_KEY, "GET", &path, None).await?;
    ensure!(status == 200);
    ensure!(fleet.replica(1).log_contents().contains("cannot be read"));
    Ok(())
}

/// `plugin_config` (JSON) with key 1 kept for reading, the replica's `fleet` section otherwise
/// as it was.
fn rotated(plugin_config: &str) -> String {
    let mut config: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    config["fleet"]["previous_encryption_keys"] = json!([{"env": "PW_OLD_KEY"}]);
    config.to_string()
}
