//! The consumer portal (SPEC.md, "Consumer portal") in a real headless Chromium, served by the real
//! `.wasm` in a real Envoy: the page's answers (policy, caching, gzip, 404 when off), and what a
//! consumer does through it. Every screen is checked with axe-core and the browser's own network
//! log; `PORTAL_SCREENSHOTS=docs/images` (`make screenshots`) saves each screen as a PNG.

use anyhow::{ensure, Result};
use devtools::browser::Browser;
use devtools::{Receiver, Stack};
use serde_json::{json, Value};

const TITLE: &str = "Acme <webhooks>";
const FRAMER: &str = "https://app.example.com";
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors https://app.example.com";

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two consumers with keys, the portal on, an event type with its catalog entry.
fn config(_receiver: &Receiver, portal: Value) -> Value {
    let mut config = json!({
        "audience": "all",
        "events": [{
            "type": "order.created", "method": "POST", "path": "/orders", "status": [201],
            "description": "An order was placed.",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "example": {"n": 42}
        }],
        "api": {
            "keys": [
                {"consumer": "alpha", "sha256": sha256_hex("key-alpha")},
                {"consumer": "beta", "sha256": sha256_hex("key-beta")}
            ],
            "portal": portal
        },
        "delivery": {"timeout": "2s", "retry_schedule": ["0s"], "allow_insecure_destinations": true}
    });
    if portal.is_null() {
        if let Some(api) = config["api"].as_object_mut() {
            api.remove("portal");
        }
    }
    config
}

fn portal_on() -> Value {
    json!({"enabled": true, "title": TITLE, "frame_ancestors": [FRAMER]})
}

async fn start(portal: Value) -> Result<Stack> {
    Stack::start(|r| config(r, portal)).await
}

/// The asset URLs the shell names.
fn asset_paths(html: &str) -> Vec<String> {
    html.split('"')
        .filter(|part| part.starts_with("/webhooks/portal/assets/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_page_carries_its_policy_caching_and_gzip_and_is_404_when_off() -> Result<()> {
    let stack = start(portal_on()).await?;
    let shell = stack.send("GET", "/webhooks/portal", &[]).await?;
    ensure!(shell.status == 200, "shell: {shell:?}");
    let header = |sent: &devtools::Sent, name: &str| {
        sent.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    ensure!(header(&shell, "content-security-policy") == CSP);
    ensure!(header(&shell, "cache-control") == "no-cache");
    let html = String::from_utf8(shell.body.to_vec())?;
    ensure!(
        html.contains("<title>Acme &lt;webhooks&gt;</title>"),
        "{html}"
    );
    let assets = asset_paths(&html);
    ensure!(assets.len() == 3, "icon, stylesheet, script: {assets:?}");
    for path in &assets {
        let plain = stack.send("GET", path, &[]).await?;
        ensure!(plain.status == 200, "{path}: {plain:?}");
        ensure!(header(&plain, "content-security-policy") == CSP, "{path}");
        ensure!(header(&plain, "cache-control") == "public, max-age=31536000, immutable");
        ensure!(header(&plain, "content-encoding").is_empty());
        let gz = stack
            .send("GET", path, &[("accept-encoding", "gzip")])
            .await?;
        ensure!(header(&gz, "content-encoding") == "gzip", "{path}: {gz:?}");
        ensure!(
            gz.body.len() < plain.body.len() || plain.body.len() < 300,
            "{path} smaller gzipped"
        );
    }
    let head = stack.send("HEAD", "/webhooks/portal", &[]).await?;
    ensure!(head.status == 200 && head.body.is_empty(), "HEAD: {head:?}");
    let post = stack.send("POST", "/webhooks/portal", &[]).await?;
    ensure!(post.status == 405, "POST: {post:?}");
    let stale = stack
        .send(
            "GET",
            "/webhooks/portal/assets/0123456789abcdef/app.js",
            &[],
        )
        .await?;
    ensure!(stale.status == 404, "stale asset: {stale:?}");
    ensure!(
        stack.upstream.requests().is_empty(),
        "nothing went upstream"
    );
    drop(stack);

    for portal in [json!({"enabled": false}), Value::Null] {
        let stack = start(portal).await?;
        for path in ["/webhooks/portal", assets[0].as_str()] {
            let sent = stack.send("GET", path, &[]).await?;
            ensure!(sent.status == 404, "{path} with the portal off: {sent:?}");
        }
    }
    Ok(())
}

/// A link with a token the plugin did not sign: the token leaves the address bar at once, the
/// page says the link is not valid, and it asked nothing of any other origin.
#[tokio::test]
async fn a_bad_link_is_refused_in_plain_words_and_the_token_leaves_the_address_bar() -> Result<()> {
    let stack = start(portal_on()).await?;
    let browser = Browser::start().await?;
    let origin = stack.envoy.url("");
    browser
        .goto(
            &stack
                .envoy
                .url("/webhooks/portal#token=pws_eyJjIjoiYWxwaGEifQ.bm90LXNpZ25lZA"),
        )
        .await?;
    browser.find("#ended").await?;
    let url = browser.url().await?;
    ensure!(
        !url.contains("pws_"),
        "the token is still in the address bar: {url}"
    );
    let text = browser.main_text().await;
    ensure!(text.contains("Session ended"), "{text}");
    check_screen(&browser, &origin, "bad link").await?;
    browser.close().await?;
    Ok(())
}

/// axe-core finds no critical violation, and every request of the page went to the gateway.
async fn check_screen(browser: &Browser, origin: &str, screen: &str) -> Result<()> {
    let violations = browser.axe().await?;
    let critical: Vec<&Value> = violations
        .iter()
        .filter(|v| v["impact"] == "critical")
        .collect();
    ensure!(
        critical.is_empty(),
        "{screen}: critical accessibility violations: {critical:#?}"
    );
    if !violations.is_empty() {
        eprintln!("{screen}: non-critical axe findings: {violations:#?}");
    }
    let requests = browser.requests().await?;
    let outside: Vec<&String> = requests.iter().filter(|u| !u.starts_with(origin)).collect();
    ensure!(
        outside.is_empty(),
        "{screen}: requests outside the gateway {origin}: {outside:?}"
    );
    let errors = browser.console_errors().await?;
    let csp: Vec<&String> = errors
        .iter()
        .filter(|e| e.contains("Content Security Policy"))
        .collect();
    ensure!(
        csp.is_empty(),
        "{screen}: the page broke its own policy: {csp:?}"
    );
    Ok(())
}
