//! The Envoy parts of the Istio and Envoy Gateway manifests in `deploy/` are real Envoy
//! configuration: put into the shipped envoy.yaml in place of its own dispatcher, egress clusters
//! and filter (and without its read route: the manifests keep reads out of the filter with a
//! matcher of their own), they must start a real Envoy that detects events and serves the API,
//! reads included. Their egress clusters refuse the same addresses as the shipped ones. (The
//! Kubernetes resources around them cannot be checked here: no cluster.)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::envoy::{Envoy, EnvoyConfig};
use devtools::files::load_yaml;
use devtools::manifests::{compose, envoy_gateway, istio, plugin_config, Pieces};
use devtools::{http_client, poll_until, workspace_root, Upstream};
use serde_json::json;

/// What Envoy's trace log shows when the filter sees a request's headers.
const FILTER_CALLED: &str = "proxy_on_request_headers(";
/// The API key whose SHA-256 the manifests configure.
const MANIFEST_KEY: &str = "shop-example-key";

const RANGES: &str = "/cluster_type/typed_config/dns_cache_config/resolved_address_filter/ranges";

/// Both egress clusters of the manifests refuse exactly what the shipped envoy.yaml refuses.
fn check_egress_filter(name: &str, pieces: &Pieces) -> Result<()> {
    let root = load_yaml(&workspace_root().join("envoy.yaml"))?;
    let shipped = root["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c.pointer(RANGES))
        .context("envoy.yaml has no resolved_address_filter")?;
    for cluster in ["webhooks_egress_http", "webhooks_egress_https"] {
        let ranges = pieces
            .clusters
            .iter()
            .find(|c| c["name"] == cluster)
            .and_then(|c| c.pointer(RANGES));
        ensure!(
            ranges == Some(shipped),
            "{name}: {cluster} must refuse the same ranges as envoy.yaml: {ranges:?}"
        );
    }
    Ok(())
}

async fn check(name: &str, pieces: Pieces) -> Result<()> {
    check_egress_filter(name, &pieces)?;
    let config_text = plugin_config(&pieces)?;
    let dir = tempfile::Builder::new()
        .prefix("deploy-")
        .tempdir_in(tmp_dir()?)?;
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&compose(&pieces)?)?)?;
    let upstream = Upstream::start().await?;
    // Trace logs show each call into the filter (`proxy_on_request_headers`): how reads are seen
    // to skip it.
    let mut cfg = EnvoyConfig::new(config_text, upstream.port()).log_level("trace");
    cfg.base_config = path;
    let envoy = Envoy::start(cfg)
        .await
        .with_context(|| format!("Envoy refused the {name} manifests"))?;
    let client = http_client();
    let created = client.post(envoy.url("/orders")).send().await?;
    ensure!(
        created.status() == 201,
        "{name}: POST /orders {}",
        created.status()
    );
    // Events are built when the stream ends, a moment after the client has its response.
    let detected = envoy
        .wait_for_counter("webhooks_events_detected", 1, Duration::from_secs(10))
        .await
        .with_context(|| format!("{name}: the filter did not detect the event"))?;
    ensure!(
        detected == 1,
        "{name}: {detected} events detected, expected 1"
    );
    // A body the filter must read: needs allow_on_headers_stop_iteration and the API key.
    let api = client
        .post(envoy.url("/webhooks/subscriptions"))
        .header("x-api-key", MANIFEST_KEY)
        .json(&json!({"url": "https://hooks.example.com/in", "events": ["*"]}))
        .send()
        .await?;
    ensure!(
        api.status() == 201,
        "{name}: the API answered {}",
        api.status()
    );
    // The API's own reads get past the read matcher; other reads pass to the API untouched.
    let listed = client
        .get(envoy.url("/webhooks/subscriptions"))
        .header("x-api-key", MANIFEST_KEY)
        .send()
        .await?;
    ensure!(
        listed.status() == 200,
        "{name}: GET /webhooks/subscriptions {}",
        listed.status()
    );
    let calls = || envoy.log_contents().matches(FILTER_CALLED).count();
    let before = calls();
    ensure!(
        before >= 3,
        "{name}: {before} filter calls for 3 writes and API calls"
    );
    let read = client.get(envoy.url("/orders/1")).send().await?;
    ensure!(
        read.status() == 200,
        "{name}: GET /orders/1 {}",
        read.status()
    );
    // A write after the read: once its call is in the log, the read's would be too.
    let created = client.post(envoy.url("/orders")).send().await?;
    ensure!(created.status() == 201);
    poll_until(
        Duration::from_secs(5),
        "the write's filter call in the log",
        async || calls() > before,
    )
    .await?;
    ensure!(
        calls() == before + 1,
        "{name}: GET /orders/1 went through the filter (its matcher must skip reads)"
    );
    Ok(())
}

/// `<workspace>/.tmp`, git-ignored, where the harness keeps Envoy's files too.
fn tmp_dir() -> Result<PathBuf> {
    let dir = workspace_root().join(".tmp");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn istio_manifests_hold_a_working_envoy_configuration() -> Result<()> {
    check("Istio", istio()?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_gateway_manifests_hold_a_working_envoy_configuration() -> Result<()> {
    check("Envoy Gateway", envoy_gateway()?).await
}
