//! `proxy-webhooks check`: exactly the plugin's message and exit status 1 for bad
//! configurations; exit status 0 for every configuration shipped in the repository.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_proxy-webhooks");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(path: &str) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["check", path])
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// One bad configuration per line of the plugin's checks: events, templates, audiences, the
/// catalog fields, api, subscriptions, delivery and fleet.
const BAD: &[&str] = &[
    r#"{"events": [{"type": "order created", "path": "/orders"}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/a/{id}/{id}"}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/a", "method": "GET"}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/a", "status": "6xx"}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/t/{tenant}", "audience": {"param": "id"}}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/a", "schema": [1]}]}"#,
    r#"{"events": [{"type": "a.b", "path": "/a", "description": 7}]}"#,
    r#"{"api": {"path_prefix": "/"}}"#,
    r#"{"api": {"keys": [{"consumer": "a", "sha256": "xyz"}]}}"#,
    r#"{"subscriptions": [{"id": "s", "consumer": "c", "url": "http://10.0.0.1/", "events": ["*"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}"#,
    r#"{"delivery": {"jitter": 1.5}}"#,
    r#"{"delivery": {"retry_schedule": ["5 s"]}}"#,
    r#"{"fleet": {"cluster": "etcd", "lease_ttl": "1s"}}"#,
    r#"{"unknown": true}"#,
    r#"{"events": [}"#,
];

#[test]
fn bad_configurations_get_the_plugins_own_message() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for (i, text) in BAD.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.json"));
        std::fs::write(&path, text).unwrap();
        let shown = path.to_str().unwrap();
        let plugin = proxy_webhooks::config::parse(text.as_bytes()).unwrap_err();
        let (status, stdout, stderr) = check(shown);
        assert_eq!(status, Some(1), "{text}");
        assert_eq!(stdout, "", "{text}");
        assert_eq!(
            stderr,
            format!("{shown}: invalid configuration: {plugin}\n"),
            "{text}"
        );
    }
}

#[test]
fn a_bad_configuration_inside_an_envoy_file_is_named_by_its_root_id() {
    let shipped = std::fs::read_to_string(repo().join("envoy.yaml")).unwrap();
    let broken = shipped.replacen("\"events\": [", "\"events\": [7, ", 1);
    assert_ne!(broken, shipped);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envoy-broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let shown = path.to_str().unwrap();
    let (status, _, stderr) = check(shown);
    assert_eq!(status, Some(1));
    assert_eq!(
        stderr,
        format!("{shown}: proxy-webhooks (webhooks_dispatcher): invalid configuration: events[0]: must be an object\n")
    );
}

/// Every file of the repository that holds a plugin configuration.
fn shipped() -> Vec<String> {
    let mut files = vec!["envoy.yaml".to_string()];
    for dir in [
        "examples",
        "deploy/compose",
        "deploy/compose-fleet",
        "deploy/demo",
        "deploy/envoy-1.36",
        "deploy/istio",
        "deploy/envoy-gateway",
    ] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            let holds_one = name.ends_with(".json")
                || name == "envoy.yaml"
                || (dir.starts_with("deploy/") && name.ends_with(".yaml"));
            if holds_one && !matches!(name.as_str(), "workload.yaml" | "docker-compose.yml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_shipped_configuration_is_valid() {
    let files = shipped();
    assert!(files.len() >= 12, "{files:?}");
    for file in files {
        let (status, stdout, stderr) = check(&file);
        assert_eq!(status, Some(0), "{file}: {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{file}: {stdout}");
        assert!(
            stdout.starts_with(&format!("{file}: ")) && stdout.contains("valid"),
            "{stdout}"
        );
    }
}

#[test]
fn unreadable_files_exit_2() {
    let (status, stdout, stderr) = check("no/such/config.json");
    assert_eq!((status, stdout.as_str()), (Some(2), ""));
    assert!(stderr.starts_with("no/such/config.json: "), "{stderr}");
}
