//! `proxy-webhooks check`: a plugin configuration validated by the plugin's own parser, with
//! the plugin's own messages, either as a file of its own or inside an Envoy configuration.

use proxy_webhooks::config::{self, Config};
use serde_json::Value;

/// A configuration the plugin refuses: `<where>: invalid configuration: <field>: <problem>`,
/// the text Envoy logs after `proxy-webhooks (<root_id>): `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// What was checked, for the one-line summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// One line: what the configuration sets up.
    pub summary: String,
    /// Things worth knowing that are not errors (the Envoy file's configurations differ).
    pub warnings: Vec<String>,
}

/// The file's text, which is either a plugin configuration (JSON, as Envoy hands it to the
/// plugin), or a file holding proxy-webhooks' Wasm plugin configurations, each of which is
/// checked: an Envoy configuration (JSON or YAML), one embedded in a string (a ConfigMap's
/// bootstrap), an Istio `EnvoyFilter` or `WasmPlugin`, an Envoy Gateway patch or
/// `EnvoyExtensionPolicy`.
pub fn check(text: &[u8]) -> Result<Checked, Invalid> {
    let utf8 = std::str::from_utf8(text).ok();
    let plugins = utf8
        .and_then(|t| crate::document::parse(t).ok())
        .map(|doc| wasm_plugins(&doc))
        .unwrap_or_default();
    if !plugins.is_empty() {
        return check_plugins(&plugins);
    }
    let json_like = utf8.is_some_and(|t| {
        let t = t.trim_start_matches('\u{feff}').trim_start();
        t.is_empty() || t.starts_with(['{', '['])
    });
    if !json_like && utf8.and_then(|t| crate::document::parse(t).ok()).is_some() {
        return Err(Invalid(
            "no proxy-webhooks configuration in it: it is YAML, not the JSON document the plugin reads, and holds no Wasm plugin configuration (vm_config with configuration)".into(),
        ));
    }
    let config = config::parse(text).map_err(|e| Invalid(format!("invalid configuration: {e}")))?;
    Ok(Checked {
        summary: format!("valid: {}", summary(&config)),
        warnings: Vec::new(),
    })
}

/// A Wasm plugin configuration found in a file.
#[derive(Debug, Clone, PartialEq)]
struct Plugin {
    /// Its `root_id` (the name Envoy logs it under), else its `name`, else where it is.
    name: String,
    /// The `configuration` string handed to the plugin.
    text: Result<String, String>,
    /// Whether its code or vm_id names proxy-webhooks.
    ours: bool,
}

fn check_plugins(plugins: &[Plugin]) -> Result<Checked, Invalid> {
    let mut first: Option<(&str, Config)> = None;
    let mut warnings = Vec::new();
    for plugin in plugins {
        let text = plugin
            .text
            .as_ref()
            .map_err(|e| Invalid(format!("proxy-webhooks ({}): {e}", plugin.name)))?;
        let config = config::parse(text.as_bytes()).map_err(|e| {
            Invalid(format!(
                "proxy-webhooks ({}): invalid configuration: {e}",
                plugin.name
            ))
        })?;
        match &first {
            None => first = Some((text, config)),
            Some((seen, _)) if *seen != text.as_str() => warnings.push(format!(
                "proxy-webhooks ({}): its configuration differs from {}'s; the filter and the dispatcher must share one",
                plugin.name,
                plugins.first().map_or("", |p| p.name.as_str())
            )),
            Some(_) => {}
        }
    }
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    let described = first.map(|(_, c)| summary(&c)).unwrap_or_default();
    Ok(Checked {
        summary: format!(
            "{} proxy-webhooks configuration{} valid ({}): {described}",
            plugins.len(),
            if plugins.len() == 1 { "" } else { "s" },
            names.join(", ")
        ),
        warnings,
    })
}

/// The Wasm plugin configurations of a document, in document order: the ones that name
/// proxy-webhooks (`proxy_webhooks` or `proxy-webhooks` in their vm_config or url), else all.
fn wasm_plugins(doc: &Value) -> Vec<Plugin> {
    let mut found = Vec::new();
    collect(doc, "", &mut found);
    match found.iter().any(|p| p.ours) {
        true => found.into_iter().filter(|p| p.ours).collect(),
        false => found,
    }
}

fn names_us(v: Option<&Value>) -> bool {
    let text = v.map(Value::to_string).unwrap_or_default();
    text.contains("proxy_webhooks") || text.contains("proxy-webhooks")
}

fn collect(v: &Value, at: &str, found: &mut Vec<Plugin>) {
    match v {
        Value::Object(map)
            if map.contains_key("vm_config") && map.contains_key("configuration") =>
        {
            found.push(plugin(at, v));
        }
        Value::Object(map) if map.get("kind").and_then(Value::as_str) == Some("WasmPlugin") => {
            found.push(istio_plugin(at, v));
        }
        Value::Object(map)
            if map.get("kind").and_then(Value::as_str) == Some("EnvoyExtensionPolicy") =>
        {
            let wasm = v.pointer("/spec/wasm").and_then(Value::as_array);
            for (i, entry) in wasm.into_iter().flatten().enumerate() {
                found.push(gateway_plugin(&format!("{at}spec.wasm[{i}]"), entry));
            }
        }
        Value::Object(map) => {
            for (key, child) in map {
                let at = match at {
                    "" => key.clone(),
                    _ => format!("{at}.{key}"),
                };
                collect(child, &at, found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect(child, &format!("{at}[{i}]"), found);
            }
        }
        // An Envoy configuration inside a string (a ConfigMap's custom bootstrap).
        Value::String(text) if text.contains("vm_config") => {
            if let Ok(inner) = crate::document::parse(text) {
                collect(&inner, at, found);
            }
        }
        _ => {}
    }
}

/// An Envoy `PluginConfig` (`vm_config`, `configuration`, `root_id`).
fn plugin(at: &str, v: &Value) -> Plugin {
    let name = ["root_id", "name"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str))
        .unwrap_or(at)
        .to_string();
    let configuration = v.get("configuration").filter(|c| !c.is_null());
    let is_string_value = |c: &Value| {
        c.get("@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("google.protobuf.StringValue"))
    };
    let text = match configuration {
        None => Ok(String::new()),
        Some(c) if is_string_value(c) => Ok(c
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()),
        Some(_) => Err(format!(
            "{at}.configuration: must be a google.protobuf.StringValue whose value is the JSON document"
        )),
    };
    Plugin {
        name,
        text,
        ours: names_us(v.get("vm_config")),
    }
}

/// An Envoy Gateway `EnvoyExtensionPolicy`'s `wasm[]` entry, whose `config` it hands over as JSON.
fn gateway_plugin(at: &str, v: &Value) -> Plugin {
    let name = ["rootID", "name"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str))
        .unwrap_or(at)
        .to_string();
    Plugin {
        name,
        text: Ok(v.get("config").map(Value::to_string).unwrap_or_default()),
        ours: names_us(v.get("code")),
    }
}

/// An Istio `WasmPlugin`: Istio hands `spec.pluginConfig` to the plugin as JSON text.
fn istio_plugin(at: &str, v: &Value) -> Plugin {
    let spec = v.get("spec");
    let name = spec
        .and_then(|s| s.get("pluginName"))
        .and_then(Value::as_str)
        .unwrap_or(at)
        .to_string();
    let text = match spec.and_then(|s| s.get("pluginConfig")) {
        Some(config) => Ok(config.to_string()),
        None => Ok(String::new()),
    };
    Plugin {
        name,
        text,
        ours: names_us(spec.and_then(|s| s.get("url"))),
    }
}

/// `3 event rules (2 with a schema), inference off, 2 API keys, 1 static subscription, one
/// process`.
pub fn summary(c: &Config) -> String {
    let with_schema = c
        .events
        .iter()
        .filter(|r| r.doc.as_ref().is_some_and(|d| d.schema.is_some()))
        .count();
    let inference = match (c.infer_events, c.infer_prefixes.len()) {
        (false, _) => "inference off".to_string(),
        (true, 0) => "inference on".to_string(),
        (true, n) => format!("inference under {}", plural(n, "prefix", "prefixes")),
    };
    let callers = match &c.api.consumer_header {
        Some(header) => format!("consumers from the {header} header"),
        None => plural(c.api.keys.len(), "API key", "API keys"),
    };
    let mode = match &c.fleet {
        Some(f) => format!("fleet mode on etcd cluster {}", f.cluster),
        None => "one process".to_string(),
    };
    format!(
        "{} ({with_schema} with a schema), {inference}, {callers}, {}, {mode}",
        plural(c.events.len(), "event rule", "event rules"),
        plural(
            c.subscriptions.len(),
            "static subscription",
            "static subscriptions"
        ),
    )
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_configuration_gets_the_plugins_message() {
        let bad = br#"{"delivery": {"jitter": 2}}"#;
        let expected = config::parse(bad).unwrap_err().to_string();
        assert_eq!(
            check(bad),
            Err(Invalid(format!("invalid configuration: {expected}")))
        );
        assert_eq!(
            check(b"{\"a\": 1,}"),
            Err(Invalid(
                "invalid configuration: configuration: trailing comma at line 1 column 9".into()
            ))
        );
        assert!(check(b"a: 1\n")
            .unwrap_err()
            .0
            .starts_with("no proxy-webhooks configuration in it: it is YAML"));
        // Not YAML either: the plugin's own message.
        assert_eq!(
            check(b"a: [1\n"),
            Err(Invalid(
                "invalid configuration: configuration: expected value at line 1 column 1".into()
            ))
        );
    }

    #[test]
    fn summaries() {
        let checked = check(b"").unwrap();
        assert_eq!(
            checked.summary,
            "valid: 0 event rules (0 with a schema), inference on, 0 API keys, 0 static subscriptions, one process"
        );
        let text =
            br#"{"events": [{"type": "a.b", "path": "/a", "schema": true}], "infer_events": ["/x"],
                        "api": {"consumer_header": "x-consumer"}, "fleet": {"cluster": "etcd"}}"#;
        assert_eq!(
            check(text).unwrap().summary,
            "valid: 1 event rule (1 with a schema), inference under 1 prefix, consumers from the x-consumer header, 0 static subscriptions, fleet mode on etcd cluster etcd"
        );
    }

    fn envoy(dispatcher: &str, filter: &str) -> String {
        format!(
            r#"
bootstrap_extensions:
  - name: envoy.bootstrap.wasm
    typed_config:
      config:
        root_id: webhooks_dispatcher
        vm_config: {{vm_id: proxy_webhooks}}
        configuration:
          "@type": type.googleapis.com/google.protobuf.StringValue
          value: '{dispatcher}'
static_resources:
  listeners:
    - filter_chains:
        - filters:
            - typed_config:
                http_filters:
                  - name: other
                    typed_config: {{config: {{root_id: other, vm_config: {{vm_id: other}}, configuration: {{}}}}}}
                  - name: envoy.filters.http.wasm
                    typed_config:
                      config:
                        root_id: webhooks_filter
                        vm_config: {{vm_id: proxy_webhooks}}
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{filter}'
"#
        )
    }

    #[test]
    fn envoy_files_have_each_plugin_configuration_checked() {
        let good = r#"{"infer_events": false}"#;
        let checked = check(envoy(good, good).as_bytes()).unwrap();
        assert_eq!(
            checked.summary,
            "2 proxy-webhooks configurations valid (webhooks_dispatcher, webhooks_filter): 0 event rules (0 with a schema), inference off, 0 API keys, 0 static subscriptions, one process"
        );
        assert!(checked.warnings.is_empty());
        let checked = check(envoy(good, "{}").as_bytes()).unwrap();
        assert_eq!(
            checked.warnings,
            ["proxy-webhooks (webhooks_filter): its configuration differs from webhooks_dispatcher's; the filter and the dispatcher must share one"]
        );
        assert_eq!(
            check(envoy(good, r#"{"events": 1}"#).as_bytes()),
            Err(Invalid(
                "proxy-webhooks (webhooks_filter): invalid configuration: events: must be an array"
                    .into()
            ))
        );
    }

    #[test]
    fn a_configuration_that_is_not_a_string_value_is_refused() {
        let text =
            "config: {root_id: r, vm_config: {vm_id: proxy_webhooks}, configuration: {a: 1}}";
        assert_eq!(
            check(text.as_bytes()),
            Err(Invalid("proxy-webhooks (r): config.configuration: must be a google.protobuf.StringValue whose value is the JSON document".into()))
        );
    }

    #[test]
    fn embedded_bootstraps_and_istio_wasm_plugins() {
        let config_map = r#"
kind: ConfigMap
data:
  custom_bootstrap.json: |
    {"bootstrap_extensions": [{"typed_config": {"config": {"root_id": "webhooks_dispatcher",
      "vm_config": {"vm_id": "proxy_webhooks"},
      "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"events\": {}}"}}}}]}
"#;
        assert_eq!(
            check(config_map.as_bytes()),
            Err(Invalid("proxy-webhooks (webhooks_dispatcher): invalid configuration: events: must be an array".into()))
        );
        let wasm_plugin = "kind: WasmPlugin\nspec:\n  url: file:///p/proxy_webhooks.wasm\n  pluginName: webhooks_filter\n  pluginConfig:\n    infer_events: false\n";
        assert!(check(wasm_plugin.as_bytes())
            .unwrap()
            .summary
            .starts_with("1 proxy-webhooks configuration valid (webhooks_filter): 0 event rules"));
    }
}
