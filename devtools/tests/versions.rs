//! What differs between the supported Envoy versions (docs/envoy-versions.md), and the monitoring
//! files' contract with the metrics the plugin really exports.
//!
//! - Every shipped Envoy configuration (envoy.yaml, the demo's, the compose ones, and envoy.yaml
//!   with the Istio or Envoy Gateway pieces in place of its own) through `envoy --mode validate`
//!   on every version of the matrix: the `.venv` Envoy (1.40) and those of `ENVOY_MATRIX` in the
//!   Makefile (`make envoy-matrix-install`). Before 1.39, a file with `resolved_address_filter`
//!   must be refused for exactly that field, and load without it.
//! - A fleet-mode Envoy (real etcd) after some traffic: the metric names in `/stats/prometheus`,
//!   the queue bounds as gauges with two workers, and every metric that a PromQL expression of
//!   `deploy/prometheus/alerts.yaml` or `deploy/grafana/proxy-webhooks.json` names. It runs on the
//!   Envoy of `ENVOY_BIN`, so `make envoy-matrix` checks it on every version.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use devtools::api::api;
use devtools::envoy::{remove_resolved_address_filter, version_of, RESOLVED_ADDRESS_FILTER};
use devtools::files::load_yaml;
use devtools::fleet::{delivered, produce, Fleet};
use devtools::manifests::{compose, envoy_gateway, istio, Pieces};
use devtools::receiver::Reply;
use devtools::{poll_until, workspace_root};
use serde_json::{json, Value};

/// The `.wasm` path the Istio and Envoy Gateway pieces name (a volume in the pod).
const MANIFEST_WASM: &str = "/var/lib/proxy-webhooks/proxy_webhooks.wasm";
const TEST_KEY: &str = "test-key";
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const MAX_QUEUE: u64 = 777;
const MAX_QUEUE_BYTES: u64 = 3_000_000;
const WAIT: Duration = Duration::from_secs(15);

// ---- Every shipped configuration on every version ----

/// The Envoys of the matrix: `.venv`'s and one per `ENVOY_MATRIX` version of the Makefile.
fn matrix() -> Result<Vec<PathBuf>> {
    let root = workspace_root();
    let makefile = std::fs::read_to_string(root.join("Makefile"))?;
    let versions = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_MATRIX :="))
        .context("no ENVOY_MATRIX in the Makefile")?;
    let mut bins = vec![root.join(".venv/bin/envoy")];
    for version in versions.split_whitespace() {
        let minor = version.rsplit_once('.').map_or(version, |(m, _)| m);
        bins.push(root.join(format!(".venv-envoy-{minor}/bin/envoy")));
    }
    for bin in &bins {
        ensure!(
            bin.exists(),
            "{} is missing: install the matrix with `make envoy-matrix-install`",
            bin.display()
        );
    }
    Ok(bins)
}

/// Every shipped Envoy configuration: (name, the configuration as JSON, node id).
fn shipped() -> Result<Vec<(String, Value)>> {
    let root = workspace_root();
    let mut configs = Vec::new();
    for file in [
        "envoy.yaml",
        "deploy/envoy-1.36/envoy.yaml",
        "deploy/demo/envoy.yaml",
        "deploy/compose/envoy.yaml",
        "deploy/compose-fleet/envoy.yaml",
    ] {
        configs.push((file.to_string(), load_yaml(&root.join(file))?));
    }
    let wasm = root.join(devtools::envoy::WASM_RELATIVE_PATH);
    let local = |pieces: Pieces| -> Result<Value> {
        let text = compose(&pieces)?.to_string();
        Ok(serde_json::from_str(
            &text.replace(MANIFEST_WASM, &wasm.display().to_string()),
        )?)
    };
    configs.push(("deploy/istio (in envoy.yaml)".into(), local(istio()?)?));
    configs.push((
        "deploy/envoy-gateway (in envoy.yaml)".into(),
        local(envoy_gateway()?)?,
    ));
    Ok(configs)
}

/// `envoy --mode validate` of `config` (written under .tmp/) with `bin`: Envoy's output when it
/// refuses it.
fn validate(bin: &Path, name: &str, config: &Value) -> Result<Option<String>> {
    let root = workspace_root();
    let dir = root.join(".tmp");
    std::fs::create_dir_all(&dir)?;
    let file = tempfile::Builder::new()
        .prefix("validate-")
        .suffix(".json")
        .tempfile_in(&dir)?;
    std::fs::write(file.path(), serde_json::to_vec_pretty(config)?)?;
    let output = std::process::Command::new(bin)
        .current_dir(&root)
        .args([
            "--mode",
            "validate",
            "--log-level",
            "error",
            "--service-node",
        ])
        .args(["a", "-c"])
        .arg(file.path())
        .output()
        .with_context(|| format!("{} --mode validate {name}", bin.display()))?;
    Ok((!output.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }))
}

/// One configuration on one Envoy: loads from 1.39 on; before, it is refused for
/// `resolved_address_filter` alone when it has one (and loads without it).
fn check_one(bin: &Path, version: (u32, u32, u32), name: &str, config: &Value) -> Result<()> {
    let refused = validate(bin, name, config)?;
    let mut stripped = config.clone();
    let filters = remove_resolved_address_filter(&mut stripped)?;
    if version >= (1, 39, 0) || filters == 0 {
        if let Some(output) = refused {
            bail!("Envoy {version:?} refused {name}:\n{output}");
        }
        return Ok(());
    }
    let output = refused.with_context(|| {
        format!("Envoy {version:?} loaded {name} and its {RESOLVED_ADDRESS_FILTER}")
    })?;
    // Envoy's protobuf errors space their words at random: compare them collapsed.
    let words = output.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        words.contains(&format!("no such field: '{RESOLVED_ADDRESS_FILTER}'")),
        "Envoy {version:?} refused {name} for another reason:\n{output}"
    );
    if let Some(output) = validate(bin, name, &stripped)? {
        bail!("Envoy {version:?} refused {name} without {RESOLVED_ADDRESS_FILTER}:\n{output}");
    }
    Ok(())
}

#[test]
fn shipped_configurations_validate() -> Result<()> {
    let wasm = workspace_root().join(devtools::envoy::WASM_RELATIVE_PATH);
    ensure!(wasm.exists(), "{} is missing: `make wasm`", wasm.display());
    let configs = shipped()?;
    // One thread per Envoy: validating loads the .wasm, which takes V8 a second or so.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = matrix()?
            .into_iter()
            .map(|bin| {
                let configs = &configs;
                scope.spawn(move || -> Result<Vec<String>> {
                    let version = version_of(&bin)?;
                    Ok(configs
                        .iter()
                        .filter_map(|(name, config)| check_one(&bin, version, name, config).err())
                        .map(|e| format!("{e:#}"))
                        .collect())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for run in runs {
            match run.join() {
                Ok(found) => failures.extend(found?),
                Err(_) => bail!("a validation thread panicked"),
            }
        }
        Ok(failures)
    })?;
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

// ---- What a running Envoy exports, and what the monitoring files use ----

/// The metric names in Envoy's Prometheus text (`# TYPE` lines and samples alike).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// PromQL words that are not metric names (aggregations may put `by (...)` before their `(`).
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names a PromQL expression uses: identifiers outside label matchers, ranges,
/// strings and `by`/`on`-style label lists, that are not functions or keywords.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut plain = String::new();
    let mut depth = 0u32;
    let mut in_string = None;
    for c in expr.chars() {
        match (in_string, c) {
            (Some(q), c) if c == q => in_string = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => in_string = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    let mut rest = plain.as_str();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut skip_list = false;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let end = tail.find(|c| !is_ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        let after = tail[end..].trim_start();
        let preceded_by_digit = rest[..start].ends_with(|c: char| c.is_ascii_digit());
        rest = &tail[end..];
        if skip_list {
            if after.starts_with(')') {
                skip_list = false;
            }
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&lower.as_str())
            && after.starts_with('(')
        {
            skip_list = !after[1..].trim_start().starts_with(')');
            rest = after.strip_prefix('(').unwrap_or(after);
            continue;
        }
        if after.starts_with('(') || preceded_by_digit || PROMQL_WORDS.contains(&lower.as_str()) {
            continue;
        }
        names.insert(word.to_string());
    }
    names
}

/// Every `expr` string in a JSON document (Grafana's targets).
fn exprs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs_in(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs_in(v, out)),
        _ => {}
    }
}

/// (where, expression) for every alert rule and every dashboard query.
fn monitoring_exprs() -> Result<Vec<(String, String)>> {
    let root = workspace_root();
    let mut all = Vec::new();
    let alerts = load_yaml(&root.join("deploy/prometheus/alerts.yaml"))?;
    for group in alerts["groups"].as_array().context("no groups")? {
        for rule in group["rules"].as_array().context("no rules")? {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let expr = rule["expr"].as_str().context("a rule without expr")?;
            all.push((format!("alert {name:?}"), expr.to_string()));
        }
    }
    let path = root.join("deploy/grafana/proxy-webhooks.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut exprs = Vec::new();
    exprs_in(&dashboard, &mut exprs);
    ensure!(!exprs.is_empty(), "no expr in {}", path.display());
    all.extend(exprs.into_iter().map(|e| ("dashboard".to_string(), e)));
    Ok(all)
}

/// `promtool test rules` passes when a rule has no case at all: every alert must have one that
/// fires and one that does not.
#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case() -> Result<()> {
    let dir = workspace_root().join("deploy/prometheus");
    let alerts = load_yaml(&dir.join("alerts.yaml"))?;
    let tests = load_yaml(&dir.join("alerts.test.yaml"))?;
    let checks: Vec<&Value> = tests["tests"]
        .as_array()
        .context("no tests")?
        .iter()
        .filter_map(|t| t["alert_rule_test"].as_array())
        .flatten()
        .collect();
    for group in alerts["groups"].as_array().context("no groups")? {
        for rule in group["rules"].as_array().context("no rules")? {
            let name = rule["alert"].as_str().context("a rule without alert")?;
            let of_rule = checks.iter().filter(|c| c["alertname"] == name);
            let (firing, quiet): (Vec<&&Value>, Vec<&&Value>) =
                of_rule.partition(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
            ensure!(
                !firing.is_empty() && !quiet.is_empty(),
                "{name}: {} firing and {} quiet cases in alerts.test.yaml",
                firing.len(),
                quiet.len()
            );
        }
    }
    Ok(())
}

#[test]
fn promql_metric_names_are_found() {
    let names = promql_metrics(
        r#"sum by (le) (rate(webhooks_delivery_latency_ms_bucket{job="x"}[5m])) / on (instance) group_left() max(webhooks_queue_max) > 0.8 and bool 2e3"#,
    );
    let expected: BTreeSet<String> = ["webhooks_delivery_latency_ms_bucket", "webhooks_queue_max"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

fn plugin() -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256}]},
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "300ms"],
                     "allow_http": true, "allow_private_destinations": true,
                     "max_queue": MAX_QUEUE, "max_queue_bytes": MAX_QUEUE_BYTES}
    })
}

/// A fleet-mode Envoy with two workers, after an event delivered and one failed attempt: its
/// `/stats/prometheus` names every metric of the contract under its own name (no `envoy_`
/// prefix), shows the queue bounds as configured and gauges not summed over the VMs, and has
/// every metric the alert rules and the dashboard use.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_envoy_exports_every_metric_the_monitoring_files_use() -> Result<()> {
    let fleet = Fleet::start(1, |_| plugin()).await?;
    let envoy = fleet.replica(0);
    fleet.receiver.push_replies([Reply::status(503)]);
    fleet.receiver.set_default(Reply::status(204));
    let body = json!({"url": fleet.receiver.url("/hook"), "events": ["*"]});
    let (status, created) = api(
        envoy,
        TEST_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(body),
    )
    .await?;
    ensure!(status == 201, "create answered {status}: {created}");
    let secret = created["secret"].as_str().context("no secret")?;
    fleet.wait_active(0, 1, WAIT).await?;
    produce(envoy, 1).await?;
    delivered(&fleet.receiver, "/hook", 1, secret, WAIT).await?;
    // Both workers set webhooks_dispatcher_alive to 1: summed, it would read 2 or more.
    for (gauge, bound) in [
        ("webhooks_queue_max", MAX_QUEUE),
        ("webhooks_queue_max_bytes", MAX_QUEUE_BYTES),
        ("webhooks_dispatcher_alive", 1),
    ] {
        poll_until(WAIT, &format!("{gauge} {bound}"), async || {
            envoy.gauge(gauge).await.ok() == Some(bound)
        })
        .await?;
    }
    let text = envoy
        .client()
        .get(envoy.admin_url("/stats/prometheus"))
        .send()
        .await?
        .text()
        .await?;
    let exported = exported_names(&text);
    let contract = [
        "webhooks_events_detected",
        "webhooks_deliveries_failed",
        "webhooks_queue_max",
        "webhooks_queue_max_bytes",
        "webhooks_dispatcher_alive",
        "webhooks_fleet_sync_lag_ms",
        "webhooks_fleet_etcd_errors",
        "webhooks_delivery_latency_ms_bucket",
    ];
    for name in contract {
        ensure!(
            exported.contains(name),
            "/stats/prometheus has no {name}; its webhooks names: {:?}",
            exported
                .iter()
                .filter(|n| n.contains("webhooks"))
                .collect::<Vec<_>>()
        );
    }
    let mut unknown = Vec::new();
    for (place, expr) in monitoring_exprs()? {
        let names = promql_metrics(&expr);
        if names.is_empty() {
            unknown.push(format!("{place}: no metric in {expr:?}"));
        }
        for name in names.into_iter().filter(|n| !exported.contains(n)) {
            unknown.push(format!("{place}: {name} (in {expr:?})"));
        }
    }
    ensure!(
        unknown.is_empty(),
        "metrics that Envoy does not export:\n{}",
        unknown.join("\n")
    );
    Ok(())
}
