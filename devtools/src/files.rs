//! Reading the repository's own YAML files (envoy.yaml, docker-compose.yml, openapi.yaml) as
//! JSON values, and the plugin configuration out of an Envoy configuration.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// A YAML file as JSON; anchors and aliases are resolved (each alias becomes a copy).
pub fn load_yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    serde_json::to_value(yaml).with_context(|| format!("converting {} to JSON", path.display()))
}

/// The plugin configuration (the JSON document) of the dispatcher in an Envoy configuration.
pub fn plugin_config(envoy: &Value) -> Result<Value> {
    let text = envoy
        .get("bootstrap_extensions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == "envoy.bootstrap.wasm")
        .find_map(|e| e.pointer("/typed_config/config/configuration/value"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no envoy.bootstrap.wasm configuration value"))?;
    serde_json::from_str(text).context("the plugin configuration is not JSON")
}
