//! The Envoy parts of the Istio and Envoy Gateway manifests in `deploy/` are real Envoy
//! configuration: put into the shipped envoy.yaml in place of its own dispatcher, egress clusters
//! and filter (and without its read route: the manifests keep reads out of the filter with a
//! matcher of their own), they must start a real Envoy that detects events and serves the API,
//! reads included. Their egress clusters refuse the same addresses as the shipped ones. (The
//! Kubernetes resources around them cannot be checked here: no cluster.)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::envoy::{answer_limit, Envoy, EnvoyConfig, ANSWER_LIMIT_KEY};
use devtools::files::load_yaml;
use devtools::{http_client, poll_until, workspace_root, Upstream};
use serde_json::{json, Value};

/// What Envoy's trace log shows when the filter sees a request's headers.
const FILTER_CALLED: &str = "proxy_on_request_headers(";
/// The API key whose SHA-256 the manifests configure.
const MANIFEST_KEY: &str = "shop-example-key";

/// What a manifest set contributes to Envoy's configuration.
struct Pieces {
    /// Envoy's runtime layers the manifests add (the cap on callout answers).
    layered_runtime: Value,
    bootstrap_extensions: Value,
    clusters: Vec<Value>,
    filter: Value,
}

fn istio() -> Result<Pieces> {
    let dir = workspace_root().join("deploy/istio");
    let override_map = load_yaml(&dir.join("bootstrap-override.yaml"))?;
    let bootstrap: Value = serde_json::from_str(
        override_map["data"]["custom_bootstrap.json"]
            .as_str()
            .context("no custom_bootstrap.json")?,
    )?;
    let envoy_filter = load_yaml(&dir.join("envoyfilter.yaml"))?;
    pieces(
        &bootstrap,
        &envoy_filter["spec"]["configPatches"][0]["patch"]["value"],
    )
}

fn envoy_gateway() -> Result<Pieces> {
    let dir = workspace_root().join("deploy/envoy-gateway");
    let proxy = load_yaml(&dir.join("envoyproxy.yaml"))?;
    let text = proxy["spec"]["bootstrap"]["value"]
        .as_str()
        .context("no spec.bootstrap.value")?;
    let bootstrap: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(text)?)?;
    let patch = load_yaml(&dir.join("envoypatchpolicy.yaml"))?;
    pieces(
        &bootstrap,
        &patch["spec"]["jsonPatches"][0]["operation"]["value"],
    )
}

fn pieces(bootstrap: &Value, filter: &Value) -> Result<Pieces> {
    ensure!(
        filter["name"] == "envoy.filters.http.wasm",
        "not the wasm filter: {filter}"
    );
    let clusters = bootstrap
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .context("no clusters in the bootstrap")?
        .clone();
    let shipped = answer_limit(&load_yaml(&workspace_root().join("envoy.yaml"))?)?;
    let limit = answer_limit(bootstrap).context("the bootstrap's runtime layers")?;
    ensure!(
        limit == shipped,
        "{ANSWER_LIMIT_KEY} is {limit}, envoy.yaml's {shipped}"
    );
    Ok(Pieces {
        layered_runtime: bootstrap["layered_runtime"].clone(),
        bootstrap_extensions: bootstrap["bootstrap_extensions"].clone(),
        clusters,
        filter: filter.clone(),
    })
}

/// The plugin configuration text of the dispatcher and of the filter; they must be the same.
fn plugin_config(pieces: &Pieces) -> Result<String> {
    let at = "/typed_config/config/configuration/value";
    let dispatcher = pieces.bootstrap_extensions[0].pointer(at);
    let filter = pieces
        .filter
        .pointer(&format!("/typed_config/extension_config{at}"));
    ensure!(
        dispatcher.map(|v| v.as_str().map(str::trim)) == filter.map(|v| v.as_str().map(str::trim)),
        "the dispatcher and the filter must have the same configuration:\n{dispatcher:?}\n{filter:?}"
    );
    Ok(filter
        .and_then(Value::as_str)
        .context("no configuration")?
        .to_string())
}

/// envoy.yaml with its dispatcher, egress clusters and wasm filter replaced by `pieces`.
fn compose(pieces: &Pieces) -> Result<Value> {
    let mut root = load_yaml(&workspace_root().join("envoy.yaml"))?;
    root["layered_runtime"] = pieces.layered_runtime.clone();
    root["bootstrap_extensions"] = pieces.bootstrap_extensions.clone();
    let clusters = root
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .context("no clusters")?;
    clusters.retain(|c| {
        !c["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("webhooks_egress")
    });
    clusters.extend(pieces.clusters.iter().cloned());
    let filters = root
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .context("no http_filters")?;
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .context("no wasm filter in envoy.yaml")?;
    *wasm = pieces.filter.clone();
    // The manifests' own matcher must keep reads out: drop envoy.yaml's read route.
    let routes = root
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes",
        )
        .and_then(Value::as_array_mut)
        .context("no routes")?;
    routes.retain(|r| r.get("typed_per_filter_config").is_none());
    Ok(root)
}

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
