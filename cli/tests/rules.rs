//! `proxy-webhooks rules` on the OpenAPI documents in tests/fixtures/, compared with the reviewed
//! outputs in tests/expected/: `<name>.json` (stdout, the configuration) and `<name>.stderr`
//! (the warnings). Run with `PROXY_WEBHOOKS_UPDATE_EXPECTED=1` to write them again, then review
//! the diff. devtools/tests/openapi_rules.rs loads each expected configuration into a real Envoy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_proxy-webhooks");

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    found.sort();
    found
}

/// Runs `proxy-webhooks <args>` in the crate's directory: (status, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(crate_dir())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn relative(path: &Path) -> String {
    path.strip_prefix(crate_dir())
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn rules_match_the_reviewed_outputs() {
    let update = std::env::var_os("PROXY_WEBHOOKS_UPDATE_EXPECTED").is_some();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 3, "{fixtures:?}");
    let mut differ = Vec::new();
    for fixture in fixtures {
        let (status, stdout, stderr) = run(&["rules", &relative(&fixture)]);
        assert_eq!(status, Some(0), "{}: {stderr}", fixture.display());
        let stem = fixture.file_stem().unwrap().to_string_lossy().to_string();
        for (file, got) in [
            (format!("{stem}.json"), &stdout),
            (format!("{stem}.stderr"), &stderr),
        ] {
            let path = crate_dir().join("tests/expected").join(&file);
            if update {
                std::fs::write(&path, got).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_ref() != Some(got) {
                differ.push(file);
            }
        }
    }
    assert!(
        differ.is_empty(),
        "output differs from tests/expected/{differ:?}; if the change is intended, run \
         PROXY_WEBHOOKS_UPDATE_EXPECTED=1 cargo test -p proxy-webhooks-cli --test rules and review the diff"
    );
}

#[test]
fn every_expected_configuration_passes_check() {
    for fixture in fixtures() {
        let stem = fixture.file_stem().unwrap().to_string_lossy().to_string();
        let expected = format!("tests/expected/{stem}.json");
        let (status, stdout, stderr) = run(&["check", &expected]);
        assert_eq!(status, Some(0), "{expected}: {stderr}");
        assert!(
            stdout.starts_with(&format!("{expected}: valid: ")),
            "{stdout}"
        );
    }
}

#[test]
fn documents_that_are_not_openapi_3_fail() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let swagger = dir.join("swagger.yaml");
    std::fs::write(&swagger, "swagger: '2.0'\npaths: {}\n").unwrap();
    let (status, stdout, stderr) = run(&["rules", swagger.to_str().unwrap()]);
    assert_eq!((status, stdout.as_str()), (Some(1), ""));
    assert_eq!(
        stderr,
        format!(
            "{}: Swagger 2.0 is not supported: convert the document to OpenAPI 3 first\n",
            swagger.display()
        )
    );
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "openapi: 3.0.0\npaths: [\n").unwrap();
    let (status, _, stderr) = run(&["rules", broken.to_str().unwrap()]);
    assert_eq!(status, Some(2));
    assert!(
        stderr.starts_with(&format!("{}: not valid YAML: ", broken.display())),
        "{stderr}"
    );
    let (status, _, stderr) = run(&["rules", "no/such/file.yaml"]);
    assert_eq!(status, Some(2));
    assert!(stderr.starts_with("no/such/file.yaml: "), "{stderr}");
}

/// docs/openapi-rules.md shows the real output for the helpdesk document, not a stale copy.
#[test]
fn the_worked_example_in_the_docs_is_the_real_output() {
    let docs = std::fs::read_to_string(crate_dir().join("../docs/openapi-rules.md")).unwrap();
    for file in ["helpdesk-3.1.json", "helpdesk-3.1.stderr"] {
        let expected =
            std::fs::read_to_string(crate_dir().join("tests/expected").join(file)).unwrap();
        assert!(
            docs.contains(expected.trim_end()),
            "docs/openapi-rules.md lacks tests/expected/{file}"
        );
    }
}
