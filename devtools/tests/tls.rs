//! Deliveries to `https://` subscriber URLs (SPEC.md, "Shape": the `webhooks_egress_https`
//! cluster, TLS with SNI and certificate checks), in a real Envoy with the real `.wasm`.
//!
//! The receiver serves HTTPS with a certificate from a CA made for the test; Envoy's https
//! cluster trusts that CA (or, as shipped, only the system bundle). The receiver records every TLS
//! handshake with the SNI Envoy sent, so a refused certificate shows as a failed handshake, not as
//! mere silence.
//!
//! Without the built plugin every test fails with "build it with `make wasm`".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::receiver::tls::{Handshake, TestCa};
use devtools::{http_client, poll_until, Envoy, EnvoyConfig, Receiver, Sent, Stack, Upstream};
use serde_json::{json, Value};
use tokio_rustls::rustls::ServerConfig;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long a webhook, a counter or a handshake may take to show.
const WAIT: Duration = Duration::from_secs(10);
/// The API's answer to `POST /orders` with this body (the test upstream echoes `x-test-body`).
const ORDER: &str = r#"{"id":7,"total":10}"#;

/// One subscription to everything at `url`, one attempt per message (a failure is final at once).
fn plugin_config(url: &str) -> Value {
    json!({
        "subscriptions": [
            {"id": "sub_tls", "consumer": "tests", "url": url, "events": ["*"], "secret": SECRET,
             "privileged": true}
        ],
        "delivery": {
            "timeout": "2s",
            "retry_schedule": ["0s"],
            // Only because the receiver's host is `localhost`, which subscription URLs may not
            // name otherwise. The URL is still https and Envoy still checks the certificate.
            "allow_insecure_destinations": true
        }
    })
}

/// An HTTPS receiver presenting `certificate`, and Envoy trusting `trusted_ca` (None: the
/// shipped system bundle) for its https egress.
async fn start(certificate: Arc<ServerConfig>, trusted_ca: Option<&Path>) -> Result<Stack> {
    let upstream = Upstream::start().await?;
    let receiver = Receiver::start_tls(certificate).await?;
    let mut config = EnvoyConfig::new(plugin_config(&receiver.url("/hook")), upstream.port());
    if let Some(pem) = trusted_ca {
        config = config.trusted_ca(pem);
    }
    let envoy = Envoy::start(config).await?;
    Ok(Stack {
        envoy,
        receiver,
        upstream,
        client: http_client(),
    })
}

/// `POST /orders` through Envoy; the API's answer must reach the client untouched.
async fn create_order(stack: &Stack) -> Result<Sent> {
    let sent = stack
        .send("POST", "/orders", &[("x-test-body", ORDER)])
        .await?;
    ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
    ensure!(
        sent.body == ORDER.as_bytes(),
        "body {:?}",
        String::from_utf8_lossy(&sent.body)
    );
    Ok(sent)
}

/// Waits for at least one TLS handshake at the receiver; returns them all.
async fn handshakes(stack: &Stack) -> Result<Vec<Handshake>> {
    poll_until(WAIT, "a TLS handshake at the receiver", async || {
        !stack.receiver.handshakes().is_empty()
    })
    .await
    .with_context(|| format!("Envoy log tail:\n{}", stack.envoy.log_tail(20)))?;
    Ok(stack.receiver.handshakes())
}

/// The one message failed its only attempt: Envoy counted `envoy_stat` (why its TLS check
/// failed), the receiver saw handshakes with SNI `localhost`, each ended by Envoy's `alert`, and
/// no request.
async fn check_refused(stack: &Stack, envoy_stat: &str, alert: &str) -> Result<()> {
    let envoy = &stack.envoy;
    envoy
        .wait_for_counter("webhooks_deliveries_exhausted", 1, WAIT)
        .await?;
    ensure!(envoy.counter("webhooks_deliveries_failed").await? == 1);
    ensure!(envoy.counter("webhooks_deliveries_succeeded").await? == 0);
    let shakes = handshakes(stack).await?;
    for shake in &shakes {
        let error = shake.error.as_deref().unwrap_or_default();
        ensure!(error.contains(alert), "expected alert {alert}: {shakes:?}");
        ensure!(shake.sni.as_deref() == Some("localhost"), "{shakes:?}");
    }
    let stat = format!("cluster.webhooks_egress_https.ssl.{envoy_stat}");
    ensure!(envoy.counter(&stat).await? >= 1, "{stat} is 0");
    let received = stack.receiver.received();
    ensure!(received.is_empty(), "the receiver got {received:?}");
    let failure_logged = envoy
        .log_contents()
        .lines()
        .any(|l| l.contains("sub_tls") && l.contains("msg_"));
    ensure!(failure_logged, "no failure line:\n{}", envoy.log_tail(20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_subscriber_gets_a_verified_webhook_over_tls() -> Result<()> {
    let ca = TestCa::new()?;
    let certificate = ca.server_config(&["localhost", "127.0.0.1"])?;
    let stack = start(certificate, Some(ca.pem_path())).await?;
    create_order(&stack).await?;

    let hooks = stack.webhooks(1, WAIT).await?;
    let body = stack.receiver.verify(&hooks[0], SECRET)?;
    ensure!(body["type"] == "orders.created", "{body}");
    ensure!(
        body["data"]["object"] == json!({"id": 7, "total": 10}),
        "{body}"
    );
    ensure!(hooks[0].path == "/hook", "delivered to {}", hooks[0].path);
    ensure!(
        hooks[0].sni.as_deref() == Some("localhost"),
        "SNI {:?}",
        hooks[0].sni
    );
    let host = hooks[0].header("host").unwrap_or_default();
    let expected = format!("localhost:{}", stack.receiver.port());
    ensure!(host == expected, "host {host:?}, expected {expected:?}");
    stack
        .envoy
        .wait_for_counter("webhooks_deliveries_succeeded", 1, WAIT)
        .await?;
    ensure!(stack.envoy.counter("webhooks_deliveries_failed").await? == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_outside_the_system_bundle_is_refused() -> Result<()> {
    let ca = TestCa::new()?;
    // Envoy keeps the shipped trusted_ca (the system bundle), which does not know the test CA.
    let stack = start(ca.server_config(&["localhost"])?, None).await?;
    create_order(&stack).await?;
    check_refused(&stack, "fail_verify_error", "UnknownCA").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused() -> Result<()> {
    let ca = TestCa::new()?;
    // Trusted CA, but the certificate names only example.test while the URL names localhost:
    // auto_san_validation must refuse it.
    let stack = start(ca.server_config(&["example.test"])?, Some(ca.pem_path())).await?;
    create_order(&stack).await?;
    check_refused(&stack, "fail_verify_san", "CertificateUnknown").await
}
