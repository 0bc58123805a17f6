//! A third-party OpenAPI fuzzer against the live API: schemathesis (installed into `.venv` by
//! `make schemathesis`, a pinned version) runs the deployment's own document, fetched from the
//! real Envoy at `GET /webhooks/openapi.json` (event filters typed to the configured types), with
//! every one of its checks against that Envoy and the real plugin, and must report no failure.
//! The consumer paths run with a consumer's key and the operator paths (`/webhooks/admin/`) with
//! an operator's (devtools/schemathesis.toml), so both APIs are fuzzed past authentication.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use devtools::{workspace_root, Stack};
use serde_json::json;

/// SHA-256 of "test-key" and of "other-key".
const TEST_KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const OTHER_KEY_SHA256: &str = "580843d03d2216ff1a275d0991bad66e4d1af871171d929e9de604b7959f9bca";
/// SHA-256 of "operator-key" (the key devtools/schemathesis.toml sends under `/webhooks/admin/`).
const OPERATOR_KEY_SHA256: &str =
    "c9736463f555cdb7d2a78cfd7aa8b8c4f09d906d78f8dab9228eda30a28c2818";
/// Test cases per operation and phase: enough to cover every answer, short enough for `make test`.
const MAX_EXAMPLES: &str = "40";
/// A fixed seed, so a failure can be reproduced with the same command.
const SEED: &str = "20261202";

/// The cluster every delivery of this test goes through: the test receiver, nothing else.
const SINK_CLUSTER: &str = "schemathesis_sink";

fn plugin_config(receiver_url: &str) -> serde_json::Value {
    json!({
        "events": [
            {"type": "order.created", "method": "POST", "path": "/orders", "status": [201]},
            {"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{id}"}
        ],
        "api": {"keys": [{"consumer": "tests", "sha256": TEST_KEY_SHA256},
                         {"consumer": "others", "sha256": OTHER_KEY_SHA256}],
                "operator_keys": [{"operator": "fuzzer", "sha256": OPERATOR_KEY_SHA256}],
                "portal": {"session_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}},
        "subscriptions": [{"id": "sub_static_1", "consumer": "tests", "url": receiver_url,
                           "events": ["order.*"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}],
        "delivery": {"timeout": "2s", "retry_schedule": ["0s"], "allow_http": true,
                     "allow_private_destinations": true,
                     "clusters": {"http": SINK_CLUSTER, "https": SINK_CLUSTER}}
    })
}

fn schemathesis_bin() -> Result<PathBuf> {
    let bin = workspace_root().join(".venv/bin/schemathesis");
    if !bin.exists() {
        bail!(
            "schemathesis not found at {} (install it with `make schemathesis`)",
            bin.display()
        );
    }
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_mismatch_between_the_live_openapi_json_and_the_api() -> Result<()> {
    let bin = schemathesis_bin()?;
    // Every delivery goes to the test receiver through a static cluster, whatever URL the fuzzer
    // registered: the run reaches nothing beyond 127.0.0.1 (no DNS, no connection elsewhere).
    let receiver_port = std::cell::Cell::new(0);
    let stack = Stack::start_with(
        |receiver| {
            receiver_port.set(receiver.port());
            plugin_config(&receiver.url("/hook"))
        },
        |cfg| {
            let sink = json!({
                "name": SINK_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": SINK_CLUSTER, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address":
                        {"address": "127.0.0.1", "port_value": receiver_port.get()}}}}]}]}
            });
            cfg.with_cluster(sink)
        },
    )
    .await?;
    // Run in a scratch directory: schemathesis keeps a cache in its working directory.
    let scratch = tempfile::tempdir()?;
    let root = workspace_root();
    let output = Command::new(&bin)
        .current_dir(scratch.path())
        .arg("--config-file")
        .arg(root.join("devtools/schemathesis.toml"))
        .arg("run")
        .arg(stack.envoy.url("/webhooks/openapi.json"))
        .args(["--url", &stack.envoy.url("")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
        ])
        // No example database in the work tree: each run starts from the seed alone.
        .args([
            "--no-color",
            "--workers",
            "1",
            "--generation-database",
            "none",
        ])
        .arg("--report-dir")
        .arg(scratch.path().join("report"))
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    if !output.status.success() {
        bail!(
            "schemathesis reported failures ({}):\n{text}",
            output.status
        );
    }
    Ok(())
}
