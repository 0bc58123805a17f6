//! Fleet mode as docs/fleet.md wires it (SPEC "Secrets at rest and in transit"): a real etcd
//! that takes clients over TLS only, each with a certificate signed by its CA
//! (`--client-cert-auth`; CA and certificates made at test time), with etcd's own
//! authentication on (a `root` user, and a `webhooks` user whose role may read and write the
//! fleet's prefix only). Two real Envoys reach it through a cluster with an
//! `UpstreamTlsContext` (client certificate, etcd's CA) and `fleet.username` /
//! `fleet.password` (the password from the VM's environment).
//!
//! Creates, sync between the replicas and deliveries work; a restart of etcd (which forgets
//! every token) is recovered; a wrong password is logged, API writes answer 503, and the
//! password shows nowhere.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use devtools::etcd::{Etcd, EtcdOptions};
use devtools::fleet::{delivered, produce};
use devtools::{api, poll_until, Envoy, EnvoyConfig, Fleet, Receiver, Reply};
use serde_json::{json, Value};

const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";
const WAIT: Duration = Duration::from_secs(20);
/// The fleet's prefix ([`devtools::fleet::default_fleet_section`]).
const PREFIX: &str = "/pw-test";
const USER: &str = "webhooks";
const PASSWORD: &str = "etcd-pw-4f1c9a";
const STATIC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// etcd over TLS with client certificates, authentication on, simple tokens unused for 3 s
/// forgotten.
async fn secured_etcd() -> Result<Etcd> {
    let etcd = Etcd::start_with(EtcdOptions {
        tls: true,
        auth_token_ttl: Some(3),
        ..Default::default()
    })
    .await?;
    etcd.enable_auth(USER, PASSWORD, PREFIX).await?;
    Ok(etcd)
}

/// The plugin with `fleet.username` and the password from the VM's `PW_ETCD_PASSWORD`, and a
/// static subscription to `receiver`'s `/static`.
fn plugin(receiver: &Receiver) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "subscriptions": [{"id": "sub_static", "consumer": "tests",
                           "url": receiver.url("/static"), "events": ["*"],
                           "secret": STATIC_SECRET}],
        "delivery": {"timeout": "2s", "allow_http": true, "allow_private_destinations": true},
        "fleet": {"username": USER, "password": {"env": "PW_ETCD_PASSWORD"}}
    })
}

/// `n` replicas logging in with `password`, once each has read the registry (a wrong password:
/// once each is ready, since none ever reads it).
async fn start_fleet(etcd: Etcd, n: usize, password: &str) -> Result<Fleet> {
    let right = password == PASSWORD;
    let password = password.to_string();
    let env = move |cfg: EnvoyConfig| cfg.with_vm_env("PW_ETCD_PASSWORD", &password);
    let plugin = |_: usize, receiver: &Receiver| plugin(receiver);
    let fleet = match right {
        true => Fleet::start_on(etcd, n, plugin, env).await?,
        false => Fleet::start_on_at_ready(etcd, n, plugin, env).await?,
    };
    fleet.receiver.set_default(Reply::status(204));
    Ok(fleet)
}

/// Waits until every replica has authenticated and read the registry (until then API writes
/// answer 503, as before any first read).
async fn authenticated(fleet: &Fleet) -> Result<()> {
    let line = format!("authenticated to etcd as \"{USER}\"");
    for envoy in &fleet.replicas {
        poll_until(WAIT, "authenticated", async || {
            envoy.log_contents().contains(&line)
        })
        .await
        .with_context(|| envoy.log_tail(20))?;
    }
    fleet.wait_all_active(1, WAIT).await
}

/// Creates a subscription to `receiver`'s `path`: its status and answer.
async fn create(envoy: &Envoy, receiver: &Receiver, path: &str) -> Result<(u16, Value)> {
    let body = json!({"url": receiver.url(path), "events": ["*"]});
    api(envoy, TEST_KEY, "POST", SUBSCRIPTIONS, Some(body)).await
}

/// No log line of any replica holds the password.
fn password_nowhere(fleet: &Fleet, password: &str) -> Result<()> {
    for envoy in &fleet.replicas {
        let log = envoy.log_contents();
        ensure!(!log.contains(password), "the password is in a log:\n{log}");
    }
    Ok(())
}

#[tokio::test]
async fn a_fleet_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() -> Result<()> {
    let etcd = secured_etcd().await?;
    // What the plugin is up against: no token, no call; no client certificate, no connection.
    let range = json!({"key": STANDARD.encode(format!("{PREFIX}/sub/"))}).to_string();
    let (status, text) = etcd.post_as(None, "/v3/kv/range", &range).await?;
    ensure!(
        status == 400 && text.contains("user name is empty"),
        "{status} {text}"
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&etcd.tls().context("tls")?.ca)?)?;
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()?;
    let refused = anonymous.get(etcd.url("/health")).send().await;
    ensure!(
        refused.is_err(),
        "a client without a certificate was served: {refused:?}"
    );

    let mut fleet = start_fleet(etcd, 2, PASSWORD).await?;
    authenticated(&fleet).await?;
    let (status, created) = create(fleet.replica(0), &fleet.receiver, "/a").await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let (id, secret) = (
        created["id"].as_str().context("id")?,
        created["secret"].as_str().context("secret")?,
    );
    ensure!(fleet.stored(id).await?.is_some(), "etcd has the record");
    fleet.wait_all_active(2, WAIT).await?;
    produce(fleet.replica(1), 1).await?;
    delivered(&fleet.receiver, "/a", 1, secret, WAIT).await?;
    delivered(&fleet.receiver, "/static", 1, STATIC_SECRET, WAIT).await?;
    for envoy in &fleet.replicas {
        ensure!(
            envoy
                .log_contents()
                .contains(&format!("authenticated to etcd as \"{USER}\"")),
            "{}",
            envoy.log_tail(20)
        );
    }
    ensure!(
        fleet.counter_sum("webhooks_fleet_etcd_errors").await? == 0,
        "no etcd call failed"
    );

    // etcd restarts: every token it gave is gone; the replicas authenticate again.
    fleet.etcd.stop().await?;
    fleet.etcd.start_again().await?;
    let restarted = Instant::now();
    let mut refusals = 0;
    let second = loop {
        let (status, answer) = create(fleet.replica(1), &fleet.receiver, "/b").await?;
        if status == 201 {
            break answer;
        }
        ensure!(status == 503, "create answered {status}: {answer}");
        ensure!(!answer.to_string().contains("etcdserver"), "{answer}");
        ensure!(
            restarted.elapsed() < WAIT,
            "no create within {WAIT:?} of etcd's restart"
        );
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recovered = restarted.elapsed();
    eprintln!("a create went through {recovered:?} after etcd's restart ({refusals} answered 503)");
    let second_secret = second["secret"].as_str().context("secret")?;
    fleet.wait_all_active(3, WAIT).await?;
    produce(fleet.replica(0), 2).await?;
    delivered(&fleet.receiver, "/a", 2, secret, WAIT).await?;
    delivered(&fleet.receiver, "/b", 2, second_secret, WAIT).await?;
    password_nowhere(&fleet, PASSWORD)
}

#[tokio::test]
async fn a_wrong_password_is_logged_writes_answer_503_and_events_go_from_memory() -> Result<()> {
    let wrong = "not-the-password-7d2e";
    let fleet = start_fleet(secured_etcd().await?, 1, wrong).await?;
    let envoy = fleet.replica(0);
    let refused = format!("etcd refused fleet.username \"{USER}\"");
    poll_until(WAIT, "the refusal logged", async || {
        envoy.log_contents().contains(&refused)
    })
    .await
    .with_context(|| envoy.log_tail(20))?;
    let (status, answer) = create(envoy, &fleet.receiver, "/a").await?;
    ensure!(status == 503, "create answered {status}: {answer}");
    ensure!(answer["error"]["code"] == "unavailable", "{answer}");
    let text = answer.to_string();
    ensure!(
        !text.contains(wrong) && !text.contains("etcdserver"),
        "{text}"
    );
    ensure!(envoy.counter("webhooks_fleet_etcd_errors").await? > 0);
    // Fail-open: the static subscription still gets events (from memory, as with etcd down).
    produce(envoy, 1).await?;
    delivered(&fleet.receiver, "/static", 1, STATIC_SECRET, WAIT).await?;
    password_nowhere(&fleet, wrong)
}
