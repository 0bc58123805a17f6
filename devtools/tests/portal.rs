//! The consumer portal (SPEC.md, "Consumer portal") in a real headless Chromium, served by the real
//! `.wasm` in a real Envoy: the page's answers (policy, caching, gzip, 404 when off), and what a
//! consumer does through it. Every screen is checked with axe-core and the browser's own network
//! log; `PORTAL_SCREENSHOTS=docs/images` (`make screenshots`) saves each screen as a PNG.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use devtools::browser::{Browser, ENTER, SPACE, TAB};
use devtools::{Receiver, Stack};
use fantoccini::Locator;
use serde_json::{json, Value};

const TITLE: &str = "Acme <webhooks>";
const FRAMER: &str = "https://app.example.com";
/// The session key the tests configure, so that they can mint sessions themselves (expired ones).
const SESSION_KEY: &[u8; 32] = b"portal-test-session-key-32-bytes";
const SESSION_KEY_B64: &str = "cG9ydGFsLXRlc3Qtc2Vzc2lvbi1rZXktMzItYnl0ZXM=";
const OPERATOR_KEY: &str = "key-ops";
const ALPHA_KEY: (&str, &str) = ("x-api-key", "key-alpha");
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
            "operator_keys": [{"operator": "ops", "sha256": sha256_hex(OPERATOR_KEY)}],
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
    json!({"enabled": true, "title": TITLE, "frame_ancestors": [FRAMER], "session_key": SESSION_KEY_B64})
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
    ensure!(text.contains("This portal link is not valid"), "{text}");
    browser.find("#ended[data-code=session_invalid]").await?;
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
    // `data:` URLs leave nothing: Chromium's own stylesheet draws the date picker's icon so.
    let outside: Vec<&String> = requests
        .iter()
        .filter(|u| !u.starts_with(origin) && !u.starts_with("data:"))
        .collect();
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

// === The consumer's journey ===

/// A session link minted by the operator API: `<prefix>/portal#token=pws_...` (relative).
async fn mint(stack: &Stack, consumer: &str, read_only: bool) -> Result<String> {
    let (status, body) = devtools::api(
        &stack.envoy,
        OPERATOR_KEY,
        "POST",
        &format!("/webhooks/admin/consumers/{consumer}/portal-sessions"),
        Some(json!({"ttl": "1h", "read_only": read_only})),
    )
    .await?;
    ensure!(status == 201, "minting a session: {status} {body}");
    let url = body["url"].as_str().context("minted url")?;
    ensure!(url.starts_with("/webhooks/portal#token=pws_"), "{url}");
    Ok(stack.envoy.url(url))
}

/// An API call as the test's own client: status and JSON body.
async fn call(
    stack: &Stack,
    auth: (&str, &str),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = stack
        .client
        .request(method, stack.envoy.url(path))
        .header(auth.0, auth.1);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let sent = devtools::Sent::read(request.send().await?).await?;
    Ok((
        sent.status.as_u16(),
        serde_json::from_slice(&sent.body).unwrap_or(Value::Null),
    ))
}

/// The session token of the page (what the page keeps in sessionStorage).
async fn page_token(browser: &Browser) -> Result<String> {
    let token = browser
        .client
        .execute(
            "return sessionStorage.getItem('proxy-webhooks.session')",
            vec![],
        )
        .await?;
    Ok(token.as_str().unwrap_or_default().to_string())
}

/// Opens a link and waits for the first screen; the token must have left the address bar.
async fn open(browser: &Browser, link: &str) -> Result<()> {
    browser.goto(link).await?;
    browser.find("main h1").await?;
    let url = browser.url().await?;
    ensure!(
        !url.contains("pws_"),
        "the token is still in the address bar: {url}"
    );
    Ok(())
}

/// Waits for the delivery log to show a row matching `css` (clicking Refresh meanwhile).
async fn wait_log_row(browser: &Browser, css: &str) -> Result<String> {
    let deadline = std::time::Instant::now() + devtools::browser::WAIT;
    loop {
        if let Ok(row) = browser.client.find(Locator::Css(css)).await {
            return Ok(row.text().await?);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no log row {css}; page: {}",
            browser.main_text().await
        );
        browser.click_text("main", "Refresh").await?;
        browser.find("#log").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the secret dialog, checks it, closes it; returns the secret.
async fn take_secret(browser: &Browser, origin: &str, screen: &str) -> Result<String> {
    let field = browser.find("dialog[open] input.secret").await?;
    let secret = field.prop("value").await?.unwrap_or_default();
    ensure!(secret.starts_with("whsec_"), "{screen}: {secret}");
    let focused = browser.focused().await?;
    ensure!(
        focused.contains("Copy secret"),
        "{screen}: the copy button has the focus: {focused}"
    );
    if screen == "secret" {
        browser.screenshot(screen).await?;
    }
    check_screen(browser, origin, screen).await?;
    browser.click_text("dialog", "I have stored it").await?;
    Ok(secret)
}

#[tokio::test]
async fn consumer_journey() -> Result<()> {
    let stack = start(portal_on()).await?;
    let browser = Browser::start().await?;
    journey(
        &stack,
        &browser,
        &mint(&stack, "alpha", false).await?,
        ALPHA_KEY,
    )
    .await?;
    browser.close().await
}

/// With `api.consumer_header` set by the gateway (here a header_mutation filter, as an
/// authentication filter would), the portal works without a token.
#[tokio::test]
async fn the_journey_without_a_token_behind_a_gateway_that_names_the_consumer() -> Result<()> {
    let set_consumer = json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "x-consumer", "value": "alpha"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}
        }
    });
    let stack = Stack::start_with(
        |r| {
            let mut c = config(r, portal_on());
            c["api"] = json!({"consumer_header": "x-consumer", "portal": portal_on()});
            c
        },
        |cfg| cfg.with_filter_before_plugin(set_consumer),
    )
    .await?;
    let browser = Browser::start().await?;
    let link = stack.envoy.url("/webhooks/portal");
    journey(&stack, &browser, &link, ("x-consumer", "alpha")).await?;
    browser.close().await
}

/// Everything a consumer does, through the page: `auth` is how the test itself calls the API.
async fn journey(stack: &Stack, browser: &Browser, link: &str, auth: (&str, &str)) -> Result<()> {
    let origin = stack.envoy.url("");
    open(browser, link).await?;
    browser.find("#empty").await?;
    let ready = browser
        .client
        .execute(
            "return performance.getEntriesByName('portal-ready')[0].startTime",
            vec![],
        )
        .await?;
    let ready_ms = ready.as_f64().unwrap_or(f64::MAX);
    eprintln!("first screen interactive after {ready_ms:.0} ms");
    ensure!(ready_ms < 1000.0, "first screen after {ready_ms} ms");
    check_screen(browser, &origin, "endpoints, empty").await?;

    // Create an endpoint: the secret is shown once.
    browser.click_text("main", "Add endpoint").await?;
    let url = browser.find("input[name=url]").await?;
    // A URL the API refuses first (422): its message is shown.
    url.send_keys("ftp://example.com/hook").await?;
    browser.find("input[value='*']").await?.click().await?;
    browser.click_text("main", "Create endpoint").await?;
    let said = browser.wait_text("#alert", "Please correct this").await?;
    ensure!(said.contains("url"), "{said}");
    browser.find("input[value='*']").await?.click().await?;
    url.clear().await?;
    url.send_keys(&stack.receiver.url("/hooks/billing")).await?;
    browser
        .find("input[name=description]")
        .await?
        .send_keys("Billing")
        .await?;
    browser
        .find("input[value='order.created']")
        .await?
        .click()
        .await?;
    browser.screenshot("create").await?;
    check_screen(browser, &origin, "create").await?;
    browser.click_text("main", "Create endpoint").await?;
    let secret = take_secret(browser, &origin, "secret").await?;
    browser.wait_text("main h1", "Billing").await?;
    let focused = browser.focused().await?;
    ensure!(
        focused.starts_with("h1"),
        "focus moves to the new screen's heading: {focused}"
    );

    // Send a test: the attempt shows in the log, and the receiver got it signed with the secret.
    browser.click_text("main", "Send test event").await?;
    let row = wait_log_row(browser, "#log tr[data-state=succeeded]").await?;
    ensure!(
        row.contains("webhook.test") && row.contains("HTTP 204"),
        "{row}"
    );
    let got = stack.webhooks(1, Duration::from_secs(10)).await?;
    got[0].verify(&secret)?;
    browser.screenshot("endpoint").await?;
    check_screen(browser, &origin, "endpoint").await?;

    // It is listed, with its status.
    browser.click_text("nav", "Endpoints").await?;
    let listed = browser.wait_text("#endpoints", "Billing").await?;
    ensure!(
        listed.contains("Active") && listed.contains("order.created"),
        "{listed}"
    );
    browser.screenshot("endpoints").await?;
    check_screen(browser, &origin, "endpoints").await?;

    // A failing endpoint: its failed delivery shows the error, and can be retried.
    let down = format!("http://127.0.0.1:{}/down", devtools::free_port()?);
    let (status, failing) = call(
        stack,
        auth,
        "POST",
        "/webhooks/subscriptions",
        Some(json!({"url": down, "events": ["order.created"], "description": "Warehouse"})),
    )
    .await?;
    ensure!(status == 201, "{failing}");
    browser
        .goto(&format!(
            "{origin}/webhooks/portal#/endpoints/{}",
            failing["id"].as_str().unwrap_or_default()
        ))
        .await?;
    browser.wait_text("main h1", "Warehouse").await?;
    browser.click_text("main", "Send test event").await?;
    let failed = wait_log_row(browser, "#log tr[data-state=exhausted]").await?;
    ensure!(!failed.contains("HTTP"), "an error, not a status: {failed}");
    browser.wait_text("main .facts", "Failing since").await?;
    browser
        .find("input[type=checkbox][id^=only-failed]")
        .await?
        .click()
        .await?;
    browser.screenshot("delivery-log-failed").await?;
    check_screen(browser, &origin, "delivery log, failed").await?;
    browser.click_text("#log", "Retry").await?;
    browser.wait_text("#status", "will be sent again").await?;
    wait_log_row(
        browser,
        "#log tr[data-state=exhausted] + tr[data-state=exhausted]",
    )
    .await?;
    // Recover what failed since an hour ago (a date picker: its value is set as a person's
    // choice would set it).
    let since = "document.querySelector('input[name=since]').value = \
                 new Date(Date.now() - 3600e3 - new Date().getTimezoneOffset() * 60e3).toISOString().slice(0, 16)";
    browser.client.execute(since, vec![]).await?;
    browser
        .click_text("main", "Recover failed messages")
        .await?;
    let recovered = browser
        .wait_text("#recover-result", "will be sent again")
        .await?;
    eprintln!("recover: {recovered}");

    // Back to the first one: rotate, disable, enable, change events, delete.
    browser.click_text("nav", "Endpoints").await?;
    browser.click_text("#endpoints", "Billing").await?;
    browser.wait_text("main h1", "Billing").await?;
    browser.click_text("main", "Rotate secret").await?;
    browser.click_text("dialog", "Rotate").await?;
    let rotated = take_secret(browser, &origin, "rotated").await?;
    ensure!(rotated != secret, "a new secret");

    browser.click_text("main", "Disable").await?;
    browser
        .wait_text("main .facts", "Disabled (by you)")
        .await?;
    // A test to a disabled endpoint is refused (409), in plain words.
    browser.click_text("main", "Send test event").await?;
    browser
        .wait_text("#alert", "conflicts with the current state")
        .await?;
    browser.click_text("main", "Enable").await?;
    browser.wait_text("main .facts", "Active").await?;

    browser.click_text("main", "Edit").await?;
    browser.wait_text("main h1", "Change endpoint").await?;
    check_screen(browser, &origin, "edit").await?;
    browser
        .find("input[value='order.created']")
        .await?
        .click()
        .await?;
    browser.find("input[value='*']").await?.click().await?;
    browser.click_text("main", "Save changes").await?;
    browser.wait_text("#endpoint-events", "*").await?;
    let events = browser.find("#endpoint-events").await?.text().await?;
    ensure!(events == "*", "events changed to *: {events}");

    browser.click_text("nav", "Event catalog").await?;
    let catalog = browser.wait_text("main", "An order was placed.").await?;
    ensure!(catalog.contains("order.created"), "{catalog}");
    for summary in browser
        .client
        .find_all(Locator::Css("main details summary"))
        .await?
    {
        summary.click().await?;
    }
    browser.wait_text("main details pre", "\"integer\"").await?;
    browser.screenshot("catalog").await?;
    check_screen(browser, &origin, "catalog").await?;

    browser.goto(&format!("{origin}/webhooks/portal#/")).await?;
    browser.click_text("#endpoints", "Billing").await?;
    browser.wait_text("main h1", "Billing").await?;
    browser.click_text("main", "Delete").await?;
    browser.find("dialog[open]").await?;
    check_screen(browser, &origin, "delete confirmation").await?;
    browser.click_text("dialog", "Delete endpoint").await?;
    let list = browser.wait_text("main", "Endpoints").await?;
    browser.find("#endpoints").await?;
    ensure!(
        !browser.main_text().await.contains("Billing"),
        "deleted: {list}"
    );
    let (_, left) = call(stack, auth, "GET", "/webhooks/subscriptions", None).await?;
    ensure!(left["data"].as_array().map(Vec::len) == Some(1), "{left}");
    Ok(())
}

/// The delivery options through the page: a "v1,v1a" FIFO endpoint with a receiver header; its
/// public key and header name on its page; a test delivery carries the header and verifies with
/// the public key (ring's ed25519) and the secret; a reserved header name shows the API's 422;
/// the headers replaced, then removed; a rotation shows a new secret and public key.
#[tokio::test]
async fn delivery_options_signature_ordering_and_receiver_headers() -> Result<()> {
    let stack = start(portal_on()).await?;
    let browser = Browser::start().await?;
    let origin = stack.envoy.url("");
    open(&browser, &mint(&stack, "alpha", false).await?).await?;
    browser.click_text("main", "Add endpoint").await?;
    let url = stack.receiver.url("/hooks/signed");
    browser
        .find("input[name=url]")
        .await?
        .send_keys(&url)
        .await?;
    browser
        .find("input[name=description]")
        .await?
        .send_keys("Signed")
        .await?;
    browser.find("input[value='*']").await?.click().await?;
    browser
        .find("input[name=scheme][value='v1,v1a']")
        .await?
        .click()
        .await?;
    browser
        .find("input[name=ordering][value=fifo]")
        .await?
        .click()
        .await?;
    browser.click_text("main", "Add header").await?;
    // Typed with capitals: the page sends header names in lowercase, as the API wants them.
    browser.keys("Authorization").await?;
    browser
        .find("input[name=header-value]")
        .await?
        .send_keys("Bearer receiver-token-1")
        .await?;
    browser.screenshot("create-options").await?;
    check_screen(&browser, &origin, "create with options").await?;
    browser.click_text("main", "Create endpoint").await?;

    // The answer: the secret and the public key, and the header's name.
    browser.wait_text("dialog[open]", "not secret").await?;
    let fields = browser
        .client
        .find_all(Locator::Css("dialog[open] input.secret"))
        .await?;
    ensure!(fields.len() == 2, "a secret and a public key");
    let public_key = fields[1].prop("value").await?.unwrap_or_default();
    ensure!(public_key.starts_with("whpk_"), "{public_key}");
    let named = browser.find("#created-headers").await?.text().await?;
    ensure!(named.contains("authorization"), "{named}");
    browser.screenshot("secret-and-key").await?;
    let secret = take_secret(&browser, &origin, "secret and key").await?;

    // The endpoint's page: scheme, public key, ordering, header names.
    browser.wait_text("main h1", "Signed").await?;
    let shown = browser.find("#public-key").await?.prop("value").await?;
    ensure!(shown.as_deref() == Some(public_key.as_str()), "{shown:?}");
    browser.wait_text("#endpoint-scheme", "v1 and v1a").await?;
    browser.wait_text("#endpoint-ordering", "FIFO").await?;
    let names = browser.find("#endpoint-headers").await?.text().await?;
    ensure!(names == "authorization", "{names}");
    browser.click_text("main", "Copy public key").await?;
    browser
        .wait_text("main .facts", "Copied to the clipboard")
        .await?;

    // A test delivery carries the header and both signatures.
    browser.click_text("main", "Send test event").await?;
    wait_log_row(&browser, "#log tr[data-state=succeeded]").await?;
    browser.screenshot("endpoint-options").await?;
    check_screen(&browser, &origin, "endpoint with options").await?;
    let got = stack.webhooks(1, Duration::from_secs(10)).await?;
    ensure!(
        got[0].header("authorization") == Some("Bearer receiver-token-1"),
        "{:?}",
        got[0].headers
    );
    got[0].verify(&secret)?;
    got[0].verify_v1a(&public_key)?;

    // Replace the headers: a reserved name first, refused by the API with its message.
    browser.click_text("main", "Receiver headers").await?;
    browser.wait_text("main h1", "Receiver headers").await?;
    browser
        .wait_text("#current-headers", "authorization")
        .await?;
    let name = browser.find("input[name=header-name]").await?;
    name.send_keys("x-envoy-upstream-rq-timeout-ms").await?;
    let value = browser.find("input[name=header-value]").await?;
    value.send_keys("1").await?;
    browser.screenshot("headers").await?;
    check_screen(&browser, &origin, "receiver headers").await?;
    browser.click_text("main", "Replace headers").await?;
    let said = browser.wait_text("#alert", "Please correct this").await?;
    ensure!(said.contains("x-envoy-upstream-rq-timeout-ms"), "{said}");
    browser.find("#alert[data-code=invalid_headers]").await?;
    name.clear().await?;
    name.send_keys("x-receiver-token").await?;
    value.clear().await?;
    value.send_keys("token-2").await?;
    browser.click_text("main", "Replace headers").await?;
    browser
        .wait_text("#endpoint-headers", "x-receiver-token")
        .await?;
    browser.click_text("main", "Send test event").await?;
    let got = stack.webhooks(2, Duration::from_secs(10)).await?;
    ensure!(
        got[1].header("x-receiver-token") == Some("token-2")
            && got[1].header("authorization").is_none(),
        "{:?}",
        got[1].headers
    );

    // And remove them all.
    browser.click_text("main", "Receiver headers").await?;
    browser.click_text("main", "Remove all headers").await?;
    browser.click_text("dialog", "Remove headers").await?;
    browser.wait_text("#endpoint-headers", "None").await?;

    // Rotating a "v1,v1a" endpoint shows a new secret and a new public key; the page shows the key.
    browser.click_text("main", "Rotate secret and key").await?;
    browser.click_text("dialog", "Rotate").await?;
    browser.wait_text("dialog[open]", "not secret").await?;
    let fields = browser
        .client
        .find_all(Locator::Css("dialog[open] input.secret"))
        .await?;
    ensure!(fields.len() == 2, "a new secret and a new public key");
    let rotated_key = fields[1].prop("value").await?.unwrap_or_default();
    ensure!(rotated_key.starts_with("whpk_") && rotated_key != public_key);
    let rotated = take_secret(&browser, &origin, "rotated secret and key").await?;
    ensure!(rotated != secret, "a new secret");
    browser.wait_text("#status", "Rotated").await?;
    // The page renders again after the rotation: wait for the new key on it.
    let deadline = std::time::Instant::now() + devtools::browser::WAIT;
    loop {
        let shown = browser.find("#public-key").await?.prop("value").await;
        if shown.ok().flatten().as_deref() == Some(rotated_key.as_str()) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the page shows the old key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, list) = call(&stack, ALPHA_KEY, "GET", "/webhooks/subscriptions", None).await?;
    let sub = &list["data"][0];
    ensure!(
        sub["header_names"] == json!([])
            && sub["ordering"] == "fifo"
            && sub["signature_scheme"] == "v1,v1a",
        "{sub}"
    );

    // A pure v1a endpoint has no secret: rotating it shows only the new public key.
    let (status, v1a) = call(
        &stack,
        ALPHA_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(
            json!({"url": url, "events": ["*"], "signature_scheme": "v1a", "description": "Keyed"}),
        ),
    )
    .await?;
    ensure!(status == 201, "{v1a}");
    let id = v1a["id"].as_str().unwrap_or_default();
    browser
        .goto(&format!("{origin}/webhooks/portal#/endpoints/{id}"))
        .await?;
    browser.wait_text("main h1", "Keyed").await?;
    browser.click_text("main", "Rotate key").await?;
    browser.click_text("dialog", "Rotate").await?;
    browser.wait_text("dialog[open]", "not secret").await?;
    let fields = browser
        .client
        .find_all(Locator::Css("dialog[open] input.secret"))
        .await?;
    let only = match fields.as_slice() {
        [only] => only.prop("value").await?.unwrap_or_default(),
        _ => anyhow::bail!("one field, the public key: {}", fields.len()),
    };
    ensure!(
        only.starts_with("whpk_") && only != v1a["public_key"],
        "{only}"
    );
    ensure!(browser.focused().await?.contains("Copy public key"));
    check_screen(&browser, &origin, "rotated v1a").await?;
    browser.click_text("dialog", "Done").await?;
    browser.wait_text("#status", "Rotated").await?;
    browser.close().await
}

/// Creating an endpoint with the keyboard alone: Tab through the form, Space on a checkbox,
/// Enter to submit; the secret dialog has the focus, and gives it back when closed.
#[tokio::test]
async fn an_endpoint_is_created_with_the_keyboard_alone() -> Result<()> {
    let stack = start(portal_on()).await?;
    let browser = Browser::start().await?;
    let link = mint(&stack, "alpha", false).await?;
    open(&browser, &link).await?;
    browser.find("#empty").await?;
    // From the heading, Tab reaches "Add endpoint"; Enter follows it.
    let mut steps = 0;
    while !browser.focused().await?.contains("Add endpoint") {
        browser.keys(TAB).await?;
        steps += 1;
        ensure!(
            steps < 10,
            "Add endpoint is not in the focus order: {}",
            browser.focused().await?
        );
    }
    browser.keys(ENTER).await?;
    browser.wait_text("main h1", "Add an endpoint").await?;
    browser.keys(TAB).await?;
    ensure!(
        browser.focused().await?.contains("|url|"),
        "{}",
        browser.focused().await?
    );
    browser.keys(&stack.receiver.url("/kb")).await?;
    browser.keys(TAB).await?;
    browser.keys("Keyboard").await?;
    browser.keys(TAB).await?; // All events
    browser.keys(TAB).await?; // order.created
    ensure!(
        browser.focused().await?.contains("order.created"),
        "{}",
        browser.focused().await?
    );
    browser.keys(SPACE).await?;
    browser.keys(ENTER).await?;
    browser.find("dialog[open]").await?;
    ensure!(browser.focused().await?.contains("Copy secret"));
    browser.keys(TAB).await?;
    ensure!(
        browser.focused().await?.contains("I have stored it"),
        "{}",
        browser.focused().await?
    );
    browser.keys(ENTER).await?;
    browser.wait_text("main h1", "Keyboard").await?;
    let (_, list) = devtools::api(
        &stack.envoy,
        "key-alpha",
        "GET",
        "/webhooks/subscriptions",
        None,
    )
    .await?;
    ensure!(
        list["data"][0]["events"] == json!(["order.created"]),
        "{list}"
    );
    browser.close().await?;
    Ok(())
}

/// A read-only session: the page says so, every write is refused by the API and the page says
/// why; an expired and a revoked session: the page says which.
#[tokio::test]
async fn read_only_expired_and_revoked_sessions_are_explained() -> Result<()> {
    let stack = start(portal_on()).await?;
    let origin = stack.envoy.url("");
    let browser = Browser::start().await?;
    open(&browser, &mint(&stack, "alpha", true).await?).await?;
    browser.wait_text("#session", "Read-only").await?;
    let token = page_token(&browser).await?;
    let refused = stack
        .client
        .post(stack.envoy.url("/webhooks/subscriptions"))
        .header("x-webhooks-session", &token)
        .json(&json!({"url": stack.receiver.url("/ro"), "events": ["*"]}))
        .send()
        .await?;
    ensure!(
        refused.status() == 403,
        "the API refuses: {}",
        refused.status()
    );
    browser.click_text("main", "Add endpoint").await?;
    browser
        .find("input[name=url]")
        .await?
        .send_keys(&stack.receiver.url("/ro"))
        .await?;
    browser.find("input[value='*']").await?.click().await?;
    browser.click_text("main", "Create endpoint").await?;
    let said = browser.wait_text("#alert", "read-only").await?;
    browser.screenshot("read-only").await?;
    check_screen(&browser, &origin, "read-only").await?;
    eprintln!("read-only: {said}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let expired = devtools::portal::mint_session(
        SESSION_KEY,
        "alpha",
        now.as_secs() - 60,
        u64::try_from(now.as_millis())? - 3_600_000,
        false,
    );
    open(
        &browser,
        &format!("{origin}/webhooks/portal#token={expired}"),
    )
    .await?;
    let text = browser.wait_text("main", "expired").await?;
    ensure!(
        browser
            .find("#ended[data-code=session_expired]")
            .await
            .is_ok(),
        "{text}"
    );
    browser.screenshot("session-expired").await?;
    check_screen(&browser, &origin, "expired").await?;

    open(&browser, &mint(&stack, "alpha", false).await?).await?;
    browser.find("#empty").await?;
    let (status, _) = devtools::api(
        &stack.envoy,
        OPERATOR_KEY,
        "DELETE",
        "/webhooks/admin/consumers/alpha/portal-sessions",
        None,
    )
    .await?;
    ensure!(status == 204, "revoking: {status}");
    browser.client.refresh().await?;
    let text = browser.wait_text("main", "revoked").await?;
    ensure!(
        browser
            .find("#ended[data-code=session_revoked]")
            .await
            .is_ok(),
        "{text}"
    );
    check_screen(&browser, &origin, "revoked").await?;
    browser.close().await?;
    Ok(())
}

/// Beta's session never shows alpha's endpoints, nor one of them by its id.
#[tokio::test]
async fn a_second_consumers_session_never_shows_the_firsts_data() -> Result<()> {
    let stack = start(portal_on()).await?;
    let (status, alpha) = devtools::api(
        &stack.envoy,
        "key-alpha",
        "POST",
        "/webhooks/subscriptions",
        Some(json!({"url": stack.receiver.url("/alpha-secret-endpoint"), "events": ["*"], "description": "Alpha only"})),
    )
    .await?;
    ensure!(status == 201, "{alpha}");
    let browser = Browser::start().await?;
    open(&browser, &mint(&stack, "beta", false).await?).await?;
    browser.find("#empty").await?;
    let origin = stack.envoy.url("");
    let id = alpha["id"].as_str().unwrap_or_default();
    browser
        .goto(&format!("{origin}/webhooks/portal#/endpoints/{id}"))
        .await?;
    browser.wait_text("#alert", "Not found").await?;
    let text = browser.main_text().await;
    ensure!(
        !text.contains("Alpha only") && !text.contains("alpha-secret-endpoint"),
        "{text}"
    );
    browser.close().await?;
    Ok(())
}

/// Past the test/retry rate limit the page says how long to wait (429 and its Retry-After).
#[tokio::test]
async fn too_many_tests_say_how_long_to_wait() -> Result<()> {
    let stack = start(portal_on()).await?;
    let (status, sub) = call(
        &stack,
        ALPHA_KEY,
        "POST",
        "/webhooks/subscriptions",
        Some(json!({"url": stack.receiver.url("/many"), "events": ["*"], "description": "Busy"})),
    )
    .await?;
    ensure!(status == 201, "{sub}");
    let browser = Browser::start().await?;
    let id = sub["id"].as_str().unwrap_or_default();
    let link = mint(&stack, "alpha", false).await?;
    open(
        &browser,
        &link.replace("#token=", &format!("#/endpoints/{id}&token=")),
    )
    .await?;
    browser.wait_text("main h1", "Busy").await?;
    // The burst (10 calls) is used up with the page's own session, then the page tries.
    let token = page_token(&browser).await?;
    let path = format!("/webhooks/subscriptions/{id}/test");
    for _ in 0..12 {
        call(&stack, ("x-webhooks-session", &token), "POST", &path, None).await?;
    }
    browser.click_text("main", "Send test event").await?;
    let said = browser.wait_text("#alert", "Too many requests").await?;
    ensure!(
        said.contains("Try again in ") && said.contains(" second"),
        "{said}"
    );
    browser.close().await
}
