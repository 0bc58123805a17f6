//! The Envoy parts of the Istio and Envoy Gateway manifests in `deploy/`, and the shipped
//! envoy.yaml with its own plugin parts replaced by them: a whole Envoy configuration that
//! devtools/tests/deploy.rs runs and devtools/tests/versions.rs validates on every Envoy version.

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::envoy::{answer_limit, ANSWER_LIMIT_KEY};
use crate::files::load_yaml;
use crate::util::workspace_root;

/// What a manifest set contributes to Envoy's configuration.
pub struct Pieces {
    /// Envoy's runtime layers the manifests add (the cap on callout answers).
    pub layered_runtime: Value,
    pub bootstrap_extensions: Value,
    pub clusters: Vec<Value>,
    pub filter: Value,
}

pub fn istio() -> Result<Pieces> {
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

pub fn envoy_gateway() -> Result<Pieces> {
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
pub fn plugin_config(pieces: &Pieces) -> Result<String> {
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
pub fn compose(pieces: &Pieces) -> Result<Value> {
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
