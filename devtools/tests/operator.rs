//! The operator API and consumer portal sessions (SPEC.md, "Operators" and "Consumer portal")
//! against a real Envoy with the real `.wasm`: every admin route, credentials of the other API
//! refused, `health` of a failing receiver and the `status=failing` filter, `operator_header`
//! through Envoy's real jwt_authn filter with a client's forged copy removed, sessions (read-only,
//! expired, revoked, another consumer's), and in fleet mode a session minted through one replica
//! used and revoked through another.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use devtools::fleet::wait_registry_read;
use devtools::portal::mint_session;
use devtools::{api, poll_until, Envoy, Fleet, Receiver, Sent, Stack};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// Two consumers and an operator: name, key, SHA-256 hex of the key.
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
const OPS: (&str, &str, &str) = (
    "support",
    "operator-key",
    "c9736463f555cdb7d2a78cfd7aa8b8c4f09d906d78f8dab9228eda30a28c2818",
);
const SESSION_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const PUBLIC_URL: &str = "https://api.example.com";
const WAIT: Duration = Duration::from_secs(15);

fn portal() -> Value {
    json!({"session_key": STANDARD.encode(SESSION_KEY), "public_url": PUBLIC_URL})
}

fn delivery() -> Value {
    json!({"timeout": "2s", "retry_schedule": ["0s"], "allow_http": true,
           "allow_private_destinations": true})
}

fn plugin(_: &Receiver) -> Value {
    json!({
        "events": [{"type": "order.created", "method": "POST", "path": "/orders", "audience": "all"}],
        "api": {"keys": [{"consumer": ALPHA.0, "sha256": ALPHA.2},
                         {"consumer": BETA.0, "sha256": BETA.2}],
                "operator_keys": [{"operator": OPS.0, "sha256": OPS.2}],
                "portal": portal()},
        "delivery": delivery()
    })
}

/// A call with `headers`: status and JSON body (Null when none).
async fn call(
    envoy: &Envoy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = envoy.client().request(method, envoy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let sent = Sent::read(request.send().await?).await?;
    let value = serde_json::from_slice(&sent.body).unwrap_or(Value::Null);
    Ok((sent.status.as_u16(), value))
}

async fn with_session(
    envoy: &Envoy,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    call(envoy, method, path, &[("x-webhooks-session", token)], body).await
}

fn code(value: &Value) -> &str {
    value["error"]["code"].as_str().unwrap_or("<none>")
}

async fn create(envoy: &Envoy, key: &str, url: &str) -> Result<String> {
    let body = json!({"url": url, "events": ["*"]});
    let (status, value) = api(envoy, key, "POST", "/webhooks/subscriptions", Some(body)).await?;
    ensure!(status == 201, "create: {status} {value}");
    Ok(value["id"].as_str().context("id")?.to_string())
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect()
}

fn now_s() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// `POST admin/consumers/{consumer}/portal-sessions` through `envoy` with the operator key.
async fn mint(envoy: &Envoy, consumer: &str, body: Value) -> Result<String> {
    let path = format!("/webhooks/admin/consumers/{consumer}/portal-sessions");
    let (status, minted) = api(envoy, OPS.1, "POST", &path, Some(body)).await?;
    ensure!(status == 201, "mint: {status} {minted}");
    let token = minted["token"].as_str().context("token")?.to_string();
    ensure!(
        minted["url"] == format!("{PUBLIC_URL}/webhooks/portal#token={token}"),
        "url: {minted}"
    );
    Ok(token)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_acts_for_any_consumer_and_reports_health() -> Result<()> {
    let stack = Stack::start(plugin).await?;
    let envoy = &stack.envoy;
    let good = create(envoy, ALPHA.1, &stack.receiver.url("/alpha")).await?;
    // Nothing listens on port 1 of 127.0.0.1: every delivery there fails at once.
    let failing = create(envoy, BETA.1, "http://127.0.0.1:1/gone").await?;
    let admin = |tail: &str| format!("/webhooks/admin/subscriptions{tail}");

    // Credentials of the other API: 403.
    let (status, value) = api(envoy, ALPHA.1, "GET", &admin(""), None).await?;
    ensure!(
        (status, code(&value)) == (403, "forbidden"),
        "{status} {value}"
    );
    let (status, value) = api(envoy, OPS.1, "GET", "/webhooks/subscriptions", None).await?;
    ensure!(
        (status, code(&value)) == (403, "forbidden"),
        "{status} {value}"
    );

    // One event for both; the failing receiver shows in health and in status=failing.
    stack.send("POST", "/orders", &[]).await?;
    stack.receiver.wait_for(1, WAIT).await?;
    let mut listed = Value::Null;
    poll_until(WAIT, "beta's subscription failing", async || {
        let path = admin("?status=failing");
        listed = api(envoy, OPS.1, "GET", &path, None)
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        ids(&listed) == [failing.clone()]
    })
    .await
    .with_context(|| format!("last answer {listed}"))?;
    let health = &listed["data"][0]["health"];
    ensure!(listed["data"][0]["consumer"] == BETA.0, "{listed}");
    ensure!(
        health["consecutive_failures"].as_u64() >= Some(1),
        "{health}"
    );
    ensure!(
        health["failing_since"].is_string() && health["last_success_at"].is_null(),
        "{health}"
    );
    let mut alpha_health = Value::Null;
    poll_until(WAIT, "alpha's success logged", async || {
        let path = admin(&format!("/{good}"));
        let got = api(envoy, OPS.1, "GET", &path, None)
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        alpha_health = got["health"].clone();
        got["consumer"] == ALPHA.0 && alpha_health["last_success_at"].is_string()
    })
    .await
    .with_context(|| format!("alpha's health {alpha_health}"))?;
    ensure!(alpha_health["consecutive_failures"] == 0, "{alpha_health}");

    // The whole list, and its filters.
    let (status, all) = api(envoy, OPS.1, "GET", &admin(""), None).await?;
    let mut both = vec![good.clone(), failing.clone()];
    both.sort();
    ensure!(status == 200 && ids(&all) == both, "{status} {all}");
    let (_, alpha_only) = api(envoy, OPS.1, "GET", &admin("?consumer=alpha"), None).await?;
    ensure!(ids(&alpha_only) == [good.clone()], "{alpha_only}");
    let (_, page) = api(envoy, OPS.1, "GET", &admin("?limit=1"), None).await?;
    ensure!(
        page["has_more"] == true && ids(&page) == both[..1],
        "{page}"
    );

    // Deliveries, retry of the exhausted message, test, patch, delete: any consumer's.
    let (status, log) = api(
        envoy,
        OPS.1,
        "GET",
        &admin(&format!("/{failing}/deliveries")),
        None,
    )
    .await?;
    ensure!(status == 200, "{status} {log}");
    let webhook_id = log["data"][0]["webhook_id"]
        .as_str()
        .context("a logged attempt")?;
    let retry = format!("/webhooks/admin/deliveries/{webhook_id}/retry");
    let (status, value) = api(envoy, OPS.1, "POST", &retry, None).await?;
    ensure!(status == 202, "retry: {status} {value}");
    // Recover is the consumer's handler too: 202 with its two counts.
    let since = json!({"since": "2000-01-01T00:00:00Z"});
    let recover = admin(&format!("/{failing}/recover"));
    let (status, value) = api(envoy, OPS.1, "POST", &recover, Some(since)).await?;
    ensure!(
        status == 202 && value["count"].is_u64() && value["not_kept"].is_u64(),
        "recover: {status} {value}"
    );
    let (status, _) = api(envoy, OPS.1, "POST", &admin(&format!("/{good}/test")), None).await?;
    ensure!(status == 202, "test: {status}");
    stack.receiver.wait_for(2, WAIT).await?;
    let disable = json!({"status": "disabled"});
    let (status, value) = api(
        envoy,
        OPS.1,
        "PATCH",
        &admin(&format!("/{failing}")),
        Some(disable),
    )
    .await?;
    ensure!(
        status == 200 && value["status"] == "disabled",
        "{status} {value}"
    );
    let (_, disabled) = api(envoy, OPS.1, "GET", &admin("?status=disabled"), None).await?;
    ensure!(ids(&disabled) == [failing.clone()], "{disabled}");
    let (status, _) = api(envoy, OPS.1, "DELETE", &admin(&format!("/{failing}")), None).await?;
    ensure!(status == 204, "delete: {status}");
    let (status, _) = api(
        envoy,
        BETA.1,
        "GET",
        &format!("/webhooks/subscriptions/{failing}"),
        None,
    )
    .await?;
    ensure!(status == 404, "beta's subscription is gone: {status}");

    // Every write is logged with the operator's name, never its key.
    let log = envoy.log_contents();
    for write in [
        "POST /webhooks/admin/deliveries/",
        "PATCH /webhooks/admin/subscriptions/",
        "DELETE /webhooks/admin/subscriptions/",
        "POST /webhooks/admin/subscriptions/",
    ] {
        ensure!(
            log.lines()
                .any(|l| l.contains("operator \"support\"") && l.contains(write)),
            "no log line for {write}"
        );
    }
    ensure!(!log.contains(OPS.1), "the operator key is in Envoy's log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_act_as_one_consumer_until_they_expire_or_are_revoked() -> Result<()> {
    let stack = Stack::start(plugin).await?;
    let envoy = &stack.envoy;
    let alpha_sub = create(envoy, ALPHA.1, &stack.receiver.url("/alpha")).await?;
    let beta_sub = create(envoy, BETA.1, &stack.receiver.url("/beta")).await?;
    let list = "/webhooks/subscriptions";

    let alpha = mint(envoy, ALPHA.0, json!({"ttl": "1h"})).await?;
    let beta = mint(envoy, BETA.0, json!({"ttl": "5m", "read_only": true})).await?;
    let (status, listed) = with_session(envoy, "GET", list, &alpha, None).await?;
    ensure!(
        status == 200 && ids(&listed) == [alpha_sub.clone()],
        "{status} {listed}"
    );
    let (status, listed) = with_session(envoy, "GET", list, &beta, None).await?;
    ensure!(
        status == 200 && ids(&listed) == [beta_sub.clone()],
        "{status} {listed}"
    );
    let (status, _) =
        with_session(envoy, "GET", &format!("{list}/{alpha_sub}"), &beta, None).await?;
    ensure!(
        status == 404,
        "beta's session reads alpha's subscription: {status}"
    );

    // Writes: alpha's may, beta's read-only one may not.
    let change = json!({"description": "from the portal"});
    let path = format!("{list}/{alpha_sub}");
    let (status, value) = with_session(envoy, "PATCH", &path, &alpha, Some(change.clone())).await?;
    ensure!(
        status == 200 && value["description"] == "from the portal",
        "{status} {value}"
    );
    let path = format!("{list}/{beta_sub}");
    let (status, value) = with_session(envoy, "PATCH", &path, &beta, Some(change)).await?;
    ensure!(
        (status, code(&value)) == (403, "read_only"),
        "{status} {value}"
    );

    // Expired: minted here with the key, valid signature, past its expiry.
    let now = now_s()?;
    let expired = mint_session(SESSION_KEY, ALPHA.0, now - 1, (now - 120) * 1000, false);
    let (status, value) = with_session(envoy, "GET", list, &expired, None).await?;
    ensure!(
        (status, code(&value)) == (401, "session_expired"),
        "{status} {value}"
    );
    let forged = mint_session(
        b"not the key of this deployment!!",
        ALPHA.0,
        now + 60,
        now * 1000,
        false,
    );
    let (status, value) = with_session(envoy, "GET", list, &forged, None).await?;
    ensure!(
        (status, code(&value)) == (401, "session_invalid"),
        "{status} {value}"
    );

    // Revoked: every session of alpha ends; beta's lives on; a new one for alpha works.
    let revoke = format!("/webhooks/admin/consumers/{}/portal-sessions", ALPHA.0);
    let (status, _) = api(envoy, OPS.1, "DELETE", &revoke, None).await?;
    ensure!(status == 204, "revoke: {status}");
    let (status, value) = with_session(envoy, "GET", list, &alpha, None).await?;
    ensure!(
        (status, code(&value)) == (401, "session_revoked"),
        "{status} {value}"
    );
    ensure!(with_session(envoy, "GET", list, &beta, None).await?.0 == 200);
    let fresh = mint(envoy, ALPHA.0, json!({})).await?;
    ensure!(with_session(envoy, "GET", list, &fresh, None).await?.0 == 200);
    // A session never opens the operator API.
    let (status, value) =
        with_session(envoy, "GET", "/webhooks/admin/subscriptions", &fresh, None).await?;
    ensure!(
        (status, code(&value)) == (403, "forbidden"),
        "{status} {value}"
    );
    ensure!(
        !envoy.log_contents().contains(&fresh),
        "a token is in Envoy's log"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// api.operator_header behind Envoy's jwt_authn, as docs/operators.md wires it

const ISSUER: &str = "https://issuer.proxy-webhooks.test";
const CONSUMER_HEADER: &str = "x-consumer";
const OPERATOR_HEADER: &str = "x-operator";

/// An ES256 signing key and its JWKS.
struct Issuer {
    key: EcdsaKeyPair,
}

impl Issuer {
    fn new() -> Result<Issuer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| anyhow!("generating a P-256 key: {e:?}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("loading the P-256 key: {e:?}"))?;
        Ok(Issuer { key })
    }

    fn jwks(&self) -> Result<String> {
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .context("public key length")?;
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                         "kid": "ops-1", "x": B64.encode(x), "y": B64.encode(y)});
        Ok(json!({"keys": [jwk]}).to_string())
    }

    /// A token with these claims (and `iss`, `exp`), valid for an hour.
    fn token(&self, claims: Value) -> Result<String> {
        let now = now_s()?;
        let mut claims = claims;
        claims["iss"] = json!(ISSUER);
        claims["exp"] = json!(now + 3600);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ops-1"});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|e| anyhow!("signing: {e:?}"))?;
        Ok(format!("{input}.{}", B64.encode(signature.as_ref())))
    }
}

/// The documented wiring: a client's copies of both headers are removed, then jwt_authn writes
/// them from a valid token's claims (`sub` names the consumer, `operator` the operator).
fn wiring(jwks: &str) -> Vec<Value> {
    let strip = json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": CONSUMER_HEADER}, {"remove": OPERATOR_HEADER}]}
        }
    });
    let jwt = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"staff": {
                "issuer": ISSUER,
                "local_jwks": {"inline_string": jwks},
                "claim_to_headers": [{"header_name": CONSUMER_HEADER, "claim_name": "sub"},
                                     {"header_name": OPERATOR_HEADER, "claim_name": "operator"}]
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "staff"}, {"allow_missing": {}}
            ]}}}]
        }
    });
    vec![strip, jwt]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sent_operator_header_is_removed_by_the_documented_wiring() -> Result<()> {
    let issuer = Issuer::new()?;
    let filters = wiring(&issuer.jwks()?);
    let stack = Stack::start_with(
        |_| {
            json!({"api": {"consumer_header": CONSUMER_HEADER, "operator_header": OPERATOR_HEADER},
                   "delivery": delivery()})
        },
        |mut cfg| {
            for filter in filters {
                cfg = cfg.with_filter_before_plugin(filter);
            }
            cfg
        },
    )
    .await?;
    let envoy = &stack.envoy;
    let admin = "/webhooks/admin/subscriptions";
    let staff = format!(
        "Bearer {}",
        issuer.token(json!({"sub": "staff-7", "operator": "alice"}))?
    );
    let customer = format!("Bearer {}", issuer.token(json!({"sub": "alpha"}))?);

    let (status, value) = call(envoy, "GET", admin, &[("authorization", &staff)], None).await?;
    ensure!(status == 200, "an operator's token: {status} {value}");
    // A forged operator header: removed, so nobody (401), or just the consumer its token names
    // (403).
    let forged = (OPERATOR_HEADER, "alice");
    let (status, value) = call(envoy, "GET", admin, &[forged], None).await?;
    ensure!(
        (status, code(&value)) == (401, "unauthorized"),
        "forged alone: {status} {value}"
    );
    let (status, value) = call(
        envoy,
        "GET",
        admin,
        &[forged, ("authorization", &customer)],
        None,
    )
    .await?;
    ensure!(
        (status, code(&value)) == (403, "forbidden"),
        "forged beside a customer's token: {status} {value}"
    );
    // The customer's own API works, and same-origin rules apply to its writes.
    let list = "/webhooks/subscriptions";
    ensure!(
        call(envoy, "GET", list, &[("authorization", &customer)], None)
            .await?
            .0
            == 200
    );
    let body = json!({"url": stack.receiver.url("/alpha"), "events": ["*"]});
    let cross = [
        ("authorization", customer.as_str()),
        ("origin", "https://evil.example"),
    ];
    let (status, value) = call(envoy, "POST", list, &cross, Some(body.clone())).await?;
    ensure!(
        (status, code(&value)) == (403, "cross_origin"),
        "{status} {value}"
    );
    let same = [
        ("authorization", customer.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    let (status, value) = call(envoy, "POST", list, &same, Some(body)).await?;
    ensure!(status == 201, "{status} {value}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// fleet mode

#[tokio::test(flavor = "multi_thread")]
async fn a_session_minted_on_one_replica_is_used_and_revoked_on_another() -> Result<()> {
    let fleet = Fleet::start(2, plugin).await?;
    let (a, b) = (fleet.replica(0), fleet.replica(1));
    for replica in [a, b] {
        wait_registry_read(replica).await?;
    }
    let sub = create(a, ALPHA.1, &fleet.receiver.url("/alpha")).await?;
    let token = mint(a, ALPHA.0, json!({"ttl": "10m"})).await?;
    let list = "/webhooks/subscriptions";
    poll_until(
        WAIT,
        "the subscription listed on b with a's session",
        async || {
            let listed = with_session(b, "GET", list, &token, None)
                .await
                .unwrap_or_default();
            listed.0 == 200 && ids(&listed.1) == [sub.clone()]
        },
    )
    .await?;

    let revoke = format!("/webhooks/admin/consumers/{}/portal-sessions", ALPHA.0);
    let (status, _) = api(b, OPS.1, "DELETE", &revoke, None).await?;
    ensure!(status == 204, "revoke through b: {status}");
    let (status, value) = with_session(b, "GET", list, &token, None).await?;
    ensure!(
        (status, code(&value)) == (401, "session_revoked"),
        "b at once: {status} {value}"
    );
    let started = std::time::Instant::now();
    let mut last = (0, Value::Null);
    poll_until(WAIT, "the revocation applied on a", async || {
        last = with_session(a, "GET", list, &token, None)
            .await
            .unwrap_or_default();
        code(&last.1) == "session_revoked"
    })
    .await
    .with_context(|| format!("a still answers {last:?}"))?;
    println!(
        "revocation through b applied on a after {:?}",
        started.elapsed()
    );
    // etcd has it, so a replica started later would refuse the token too.
    let key = format!("{}/revoked/{}", fleet.prefix(), ALPHA.0);
    ensure!(fleet.etcd.get(&key).await?.is_some(), "{key} not in etcd");
    Ok(())
}
