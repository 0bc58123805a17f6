//! Who receives an event (SPEC.md, "Who receives an event (audience)"), against a real Envoy with
//! the real `.wasm`: two consumers subscribe through the API to the same types, and each kind of
//! audience must reach exactly the consumer it names; a privileged static subscription gets
//! everything. Consumer identity from a real Envoy `jwt_authn` filter (`api.consumer_header`),
//! with headers a client forges.
//!
//! Negative assertions never sleep: a last event that every consumer must get is the barrier
//! (the dispatcher takes events off one queue in order), and `webhooks_delivery_attempts` must
//! then equal what the receiver got, so no stray delivery is still on its way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use devtools::{Received, Receiver, Sent, Stack};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// Two API consumers: name, key, SHA-256 hex of the key.
const ALPHA: (&str, &str, &str) = (
    "alpha",
    "key-alpha",
    "39a00d29356083a9c9d65c14652350d61b11d5d2e8582da510887c8e11be08c8",
);
const BETA: (&str, &str, &str) = (
    "beta",
    "key-beta",
    "8fd493b2a681a4810d9fd40526a9de960deb255e7bfbb1c4d509d06d6da6ff5b",
);
const AUDIT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DELIVERY: Duration = Duration::from_secs(10);
/// What a login response carries that must never travel in a webhook.
const TOKEN: &str = "tok_do_not_leak_0123456789";

fn delivery() -> Value {
    json!({"timeout": "2s", "retry_schedule": ["0s", "1s"], "allow_insecure_destinations": true})
}

/// One rule per audience kind (the default, `requester`, for `/req`), and a privileged audit
/// subscription to everything.
fn audience_config(rx: &Receiver) -> Value {
    json!({
        "events": [
            {"type": "req.created", "method": "POST", "path": "/req"},
            {"type": "param.created", "method": "POST", "path": "/tenants/{tenant}/things",
             "audience": {"param": "tenant"}},
            {"type": "header.created", "method": "POST", "path": "/hdr",
             "audience": {"header": "X-Tenant"}},
            {"type": "resp.created", "method": "POST", "path": "/resp",
             "audience": {"response_header": "x-owner"}},
            {"type": "json.created", "method": "POST", "path": "/json",
             "audience": {"json": "/owner/id"}},
            {"type": "public.created", "method": "POST", "path": "/public", "audience": "all"},
            {"type": "login.created", "method": "POST", "path": "/login", "audience": "all",
             "include_object": false}
        ],
        "api": {"keys": [
            {"consumer": ALPHA.0, "sha256": ALPHA.2},
            {"consumer": BETA.0, "sha256": BETA.2}
        ]},
        "subscriptions": [{"id": "sub_audit", "consumer": "ops", "url": rx.url("/audit"),
                           "events": ["*"], "secret": AUDIT_SECRET, "privileged": true}],
        "delivery": delivery()
    })
}

/// Subscribes `key`'s consumer to `*` at `url`; returns the subscription's secret.
async fn subscribe(stack: &Stack, auth: (&str, &str), url: &str) -> Result<String> {
    let response = stack
        .client
        .post(stack.envoy.url("/webhooks/subscriptions"))
        .header(auth.0, auth.1)
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await?;
    let sent = Sent::read(response).await?;
    ensure!(
        sent.status == 201,
        "subscribe: {} {}",
        sent.status,
        String::from_utf8_lossy(&sent.body)
    );
    sent.json()?["secret"]
        .as_str()
        .map(str::to_string)
        .context("no secret in the create answer")
}

/// A write through Envoy whose response body is `body`; it must answer 201.
async fn write(stack: &Stack, path: &str, body: Value, headers: &[(&str, &str)]) -> Result<()> {
    let body = body.to_string();
    let mut all = vec![("x-test-body", body.as_str())];
    all.extend_from_slice(headers);
    let sent = stack.send("POST", path, &all).await?;
    ensure!(sent.status == 201, "POST {path}: {}", sent.status);
    Ok(())
}

/// The `data.object.marker` of every webhook that arrived at `path`, verified with `secret`.
fn markers(got: &[Received], path: &str, secret: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for hook in got.iter().filter(|h| h.path == path) {
        let body = hook
            .verify(secret)
            .with_context(|| format!("webhook at {path}"))?;
        let marker = match body["type"].as_str() {
            Some("login.created") => "login".to_string(),
            _ => body["data"]["object"]["marker"]
                .as_str()
                .with_context(|| format!("no marker in {body}"))?
                .to_string(),
        };
        out.push(marker);
    }
    out.sort();
    Ok(out)
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Waits until every path got `last` and `total` webhooks arrived, then checks that the
/// dispatcher attempted exactly `total` deliveries (none still on its way).
async fn settle(stack: &Stack, total: usize, last: &str, paths: &[&str]) -> Result<Vec<Received>> {
    let has_last = |got: &[Received], path: &str| {
        got.iter().any(|h| {
            h.path == path
                && h.json()
                    .is_ok_and(|b| b["data"]["object"]["marker"] == last)
        })
    };
    devtools::poll_until(
        DELIVERY,
        "the barrier event at every receiver",
        async || {
            let got = stack.receiver.received();
            paths.iter().all(|p| has_last(&got, p)) && got.len() >= total
        },
    )
    .await
    .with_context(|| {
        format!(
            "got: {}\nEnvoy log tail:\n{}",
            devtools::receiver::describe(&stack.receiver.received()),
            stack.envoy.log_tail(30)
        )
    })?;
    let attempts = stack.envoy.counter("webhooks_delivery_attempts").await?;
    let got = stack.receiver.received();
    ensure!(
        got.len() == total && attempts == total as u64,
        "expected exactly {total} deliveries, receiver got {} and Envoy attempted {attempts}: {}",
        got.len(),
        devtools::receiver::describe(&got)
    );
    Ok(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_audience_reaches_exactly_the_consumer_it_names() -> Result<()> {
    let stack = Stack::start_with(audience_config, |cfg| cfg.concurrency(2)).await?;
    let rx = &stack.receiver;
    let alpha_secret = subscribe(&stack, ("x-api-key", ALPHA.1), &rx.url("/alpha")).await?;
    let beta_bearer = format!("Bearer {}", BETA.1);
    let beta_secret = subscribe(&stack, ("authorization", &beta_bearer), &rx.url("/beta")).await?;

    for (consumer, key) in [(ALPHA.0, ALPHA.1), (BETA.0, BETA.1)] {
        let mark = |kind: &str| json!({"marker": format!("{kind}-{consumer}")});
        write(&stack, "/req", mark("req"), &[("x-api-key", key)]).await?;
        let tenant_path = format!("/tenants/{consumer}/things");
        write(&stack, &tenant_path, mark("param"), &[]).await?;
        write(&stack, "/hdr", mark("header"), &[("x-tenant", consumer)]).await?;
        let owner = format!("x-owner: {consumer}");
        write(
            &stack,
            "/resp",
            mark("resp"),
            &[("x-test-response-header", &owner)],
        )
        .await?;
        let owned = json!({"marker": format!("json-{consumer}"), "owner": {"id": consumer}});
        write(&stack, "/json", owned, &[]).await?;
    }
    // Under the default audience an unauthenticated write names no consumer.
    write(&stack, "/req", json!({"marker": "anonymous"}), &[]).await?;
    write(&stack, "/login", json!({"access_token": TOKEN}), &[]).await?;
    write(&stack, "/public", json!({"marker": "public"}), &[]).await?;

    let got = settle(&stack, 7 + 7 + 13, "public", &["/alpha", "/beta", "/audit"]).await?;
    let own = |who: &str| {
        let kinds = ["req", "param", "header", "resp", "json"];
        let mut list: Vec<String> = kinds.iter().map(|k| format!("{k}-{who}")).collect();
        list.extend(["login".to_string(), "public".to_string()]);
        list.sort();
        list
    };
    ensure!(markers(&got, "/alpha", &alpha_secret)? == own("alpha"));
    ensure!(markers(&got, "/beta", &beta_secret)? == own("beta"));
    let mut everything = [own("alpha"), own("beta"), vec!["anonymous".into()]].concat();
    everything.sort();
    everything.dedup();
    ensure!(markers(&got, "/audit", AUDIT_SECRET)? == everything);
    ensure!(stack.envoy.counter("webhooks_events_unaddressed").await? == 1);
    ensure!(stack.envoy.counter("webhooks_events_detected").await? == 13);

    // include_object: false keeps the login response (and its token) out of every webhook.
    for hook in got.iter().filter(|h| h.event_type() == "login.created") {
        let body = hook.json()?;
        ensure!(body["data"]["object"].is_null(), "{body}");
        ensure!(body["data"].get("truncated").is_none(), "{body}");
        ensure!(
            !String::from_utf8_lossy(&hook.body).contains(TOKEN),
            "{body}"
        );
    }
    Ok(())
}

/// Inference limited to prefixes, under the default audience: `/orders` makes events for the
/// requester, `/auth/login` makes none at all.
#[tokio::test(flavor = "multi_thread")]
async fn inference_is_limited_to_its_prefixes() -> Result<()> {
    let stack = Stack::start(|_| {
        json!({
            "infer_events": ["/orders"],
            "api": {"keys": [{"consumer": ALPHA.0, "sha256": ALPHA.2}]},
            "delivery": delivery()
        })
    })
    .await?;
    let secret = subscribe(
        &stack,
        ("x-api-key", ALPHA.1),
        &stack.receiver.url("/alpha"),
    )
    .await?;
    let key = [("x-api-key", ALPHA.1)];
    write(&stack, "/auth/login", json!({"marker": "login"}), &key).await?;
    write(&stack, "/orders", json!({"marker": "order"}), &key).await?;
    let got = settle(&stack, 1, "order", &["/alpha"]).await?;
    ensure!(markers(&got, "/alpha", &secret)? == sorted(&["order"]));
    ensure!(got.first().map(Received::event_type).as_deref() == Some("orders.created"));
    ensure!(stack.envoy.counter("webhooks_events_detected").await? == 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// api.consumer_header behind Envoy's jwt_authn

const ISSUER: &str = "https://issuer.proxy-webhooks.test";
/// The header jwt_authn writes the `sub` claim to, and the plugin reads the consumer from.
const CONSUMER_HEADER: &str = "x-consumer";

/// An ES256 signing key and its JWKS.
struct Issuer {
    key: EcdsaKeyPair,
    kid: &'static str,
}

impl Issuer {
    fn new(kid: &'static str) -> Result<Issuer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| anyhow!("generating a P-256 key: {e:?}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("loading the P-256 key: {e:?}"))?;
        Ok(Issuer { key, kid })
    }

    /// `{"keys": [...]}` with the public key (an uncompressed point: 0x04, x, y).
    fn jwks(&self) -> Result<String> {
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .context("unexpected public key length")?;
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                         "kid": self.kid, "x": B64.encode(x), "y": B64.encode(y)});
        Ok(json!({"keys": [jwk]}).to_string())
    }

    /// A token for `sub`, valid for an hour.
    fn token(&self, sub: &str) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = json!({"iss": ISSUER, "sub": sub, "iat": now, "exp": now + 3600});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow!("signing: {e:?}"))?;
        Ok(format!(
            "{signing_input}.{}",
            B64.encode(signature.as_ref())
        ))
    }
}

/// Removes any client-sent consumer header before authentication (docs/multi-tenant.md,
/// "Consumers from your own authentication"): jwt_authn only writes it for a valid token, and
/// lets the client's pass otherwise.
fn strip_consumer_header() -> Value {
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": CONSUMER_HEADER}]}
        }
    })
}

/// jwt_authn with a local JWKS: a valid token's `sub` becomes the consumer header; requests
/// without a token pass (writes may be anonymous), invalid tokens are refused with 401.
fn jwt_authn(jwks: &str) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"tests": {
                "issuer": ISSUER,
                "local_jwks": {"inline_string": jwks},
                "claim_to_headers": [{"header_name": CONSUMER_HEADER, "claim_name": "sub"}]
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "tests"}, {"allow_missing": {}}
            ]}}}]
        }
    })
}

fn jwt_config(rx: &Receiver) -> Value {
    json!({
        "events": [{"type": "order.created", "method": "POST", "path": "/orders"}],
        "api": {"consumer_header": CONSUMER_HEADER},
        "subscriptions": [{"id": "sub_audit", "consumer": "ops", "url": rx.url("/audit"),
                           "events": ["*"], "secret": AUDIT_SECRET, "privileged": true}],
        "delivery": delivery()
    })
}

/// Starts the stack with `filters` in front of the plugin.
async fn start_behind(filters: Vec<Value>) -> Result<Stack> {
    Stack::start_with(jwt_config, |mut cfg| {
        for filter in filters {
            cfg = cfg.with_filter_before_plugin(filter);
        }
        cfg
    })
    .await
}

/// `GET /webhooks/subscriptions` with these headers: the status and the listed urls.
async fn list(stack: &Stack, headers: &[(&str, &str)]) -> Result<(u16, Vec<String>)> {
    let mut request = stack.client.get(stack.envoy.url("/webhooks/subscriptions"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let sent = Sent::read(request.send().await?).await?;
    let status = sent.status.as_u16();
    if status != 200 {
        return Ok((status, Vec::new()));
    }
    let urls = sent.json()?["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["url"].as_str().map(str::to_string))
        .collect();
    Ok((status, urls))
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_header_from_jwt_authn_cannot_be_forged() -> Result<()> {
    let issuer = Issuer::new("tests-1")?;
    let stranger = Issuer::new("tests-1")?;
    let stack = start_behind(vec![strip_consumer_header(), jwt_authn(&issuer.jwks()?)]).await?;
    let rx = &stack.receiver;
    let bearer = |token: String| format!("Bearer {token}");
    let alpha = bearer(issuer.token("alpha")?);
    let beta = bearer(issuer.token("beta")?);

    // A valid token: the consumer is its `sub` claim.
    let alpha_secret = subscribe(&stack, ("authorization", &alpha), &rx.url("/alpha")).await?;
    let beta_secret = subscribe(&stack, ("authorization", &beta), &rx.url("/beta")).await?;
    let alpha_urls = vec![rx.url("/alpha")];
    ensure!(list(&stack, &[("authorization", &alpha)]).await? == (200, alpha_urls.clone()));

    // A forged consumer header: without a token it is removed (401 from the plugin); beside
    // another consumer's token, the token wins; with a token from another key, jwt_authn says 401.
    let forged = (CONSUMER_HEADER, "alpha");
    ensure!(list(&stack, &[forged]).await?.0 == 401);
    let (status, urls) = list(&stack, &[forged, ("authorization", &beta)]).await?;
    ensure!(
        (status, &urls) == (200, &vec![rx.url("/beta")]),
        "{status} {urls:?}"
    );
    let foreign = bearer(stranger.token("alpha")?);
    ensure!(
        list(&stack, &[forged, ("authorization", &foreign)])
            .await?
            .0
            == 401
    );

    // The requester of a write is the token's consumer too; a forged header names nobody.
    let order = |marker: &str| json!({"marker": marker});
    write(
        &stack,
        "/orders",
        order("by-alpha"),
        &[("authorization", &alpha)],
    )
    .await?;
    write(&stack, "/orders", order("forged"), &[forged]).await?;
    let beta_forging = [forged, ("authorization", beta.as_str())];
    write(&stack, "/orders", order("by-beta"), &beta_forging).await?;
    write(
        &stack,
        "/orders",
        order("last-alpha"),
        &[("authorization", &alpha)],
    )
    .await?;
    let got = settle(&stack, 2 + 1 + 4, "last-alpha", &["/alpha"]).await?;
    ensure!(markers(&got, "/alpha", &alpha_secret)? == sorted(&["by-alpha", "last-alpha"]));
    ensure!(markers(&got, "/beta", &beta_secret)? == sorted(&["by-beta"]));
    let audit = markers(&got, "/audit", AUDIT_SECRET)?;
    ensure!(audit == sorted(&["by-alpha", "by-beta", "forged", "last-alpha"]));
    ensure!(stack.envoy.counter("webhooks_events_unaddressed").await? == 1);
    Ok(())
}

/// What Envoy itself does with a client-sent header of the same name, without the removal
/// step and with jwt_authn's rule covering only the API prefix: it drops the header on every
/// request through the filter (no token; a path no rule covers) and writes it for a valid token.
/// The documented wiring (docs/multi-tenant.md) still removes it first, so that safety does not rest on this alone.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_authn_alone_drops_a_client_sent_claim_header() -> Result<()> {
    let issuer = Issuer::new("tests-1")?;
    let mut only_api = jwt_authn(&issuer.jwks()?);
    only_api["typed_config"]["rules"][0]["match"] = json!({"prefix": "/webhooks"});
    let stack = start_behind(vec![only_api]).await?;
    let rx = &stack.receiver;
    let alpha = format!("Bearer {}", issuer.token("alpha")?);
    let beta = format!("Bearer {}", issuer.token("beta")?);
    let alpha_secret = subscribe(&stack, ("authorization", &alpha), &rx.url("/alpha")).await?;
    subscribe(&stack, ("authorization", &beta), &rx.url("/beta")).await?;

    let forged = (CONSUMER_HEADER, "beta");
    let sent = stack.client.get(stack.envoy.url("/webhooks/subscriptions"));
    let sent = Sent::read(sent.header(forged.0, forged.1).send().await?).await?;
    ensure!(sent.status == 401, "no token: {}", sent.status);
    let message = sent.json()?["error"]["message"].clone();
    ensure!(
        message == "authentication is required (no valid x-consumer header was set)",
        "the plugin, not jwt_authn, answered: {message}"
    );
    let (status, urls) = list(&stack, &[forged, ("authorization", &alpha)]).await?;
    ensure!(
        (status, &urls) == (200, &vec![rx.url("/alpha")]),
        "alpha's token: {status} {urls:?}"
    );

    // Writes on a path no jwt_authn rule covers: the forged header is dropped, and a token is
    // not even looked at, so both name nobody (the rule must cover the API for "requester").
    write(&stack, "/orders", json!({"marker": "forged"}), &[forged]).await?;
    let own = [("authorization", alpha.as_str())];
    write(&stack, "/orders", json!({"marker": "last"}), &own).await?;
    let got = settle(&stack, 2, "last", &["/audit"]).await?;
    ensure!(markers(&got, "/audit", AUDIT_SECRET)? == sorted(&["forged", "last"]));
    ensure!(markers(&got, "/alpha", &alpha_secret)?.is_empty());
    ensure!(stack.envoy.counter("webhooks_events_unaddressed").await? == 2);
    Ok(())
}
