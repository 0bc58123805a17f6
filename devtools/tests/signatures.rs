//! Signature schemes and receiver headers (SPEC.md, "Delivery": "Signature schemes", "Headers
//! for the receiver") against a real Envoy running the real `.wasm`, and in fleet mode a real
//! etcd. `v1a` (ed25519) webhooks are verified with `ring`, an implementation independent of the
//! plugin's `ed25519-dalek`; `v1` ones with the official `standardwebhooks` crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use devtools::fleet::produce;
use devtools::{api, poll_until, Envoy, Fleet, Received, Receiver, Stack, Stop};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};

const KEY: &str = "test-key";
const KEY_SHA256: &str = "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";
const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";
const WAIT: Duration = Duration::from_secs(20);
/// The static subscription's ed25519 seed (given to the VM as an environment variable).
const STATIC_SEED: [u8; 32] = [
    0x4c, 0xcd, 0x08, 0x9b, 0x28, 0xff, 0x96, 0xda, 0x9d, 0xb6, 0xc3, 0x46, 0xec, 0x11, 0x4e, 0x0f,
    0x5b, 0x8a, 0x31, 0x9f, 0x35, 0xab, 0xa6, 0x24, 0xda, 0x8c, 0xf6, 0xed, 0x4f, 0xb8, 0xa6, 0xfb,
];
/// A receiver header value: found in etcd only if header values are stored in the clear.
const TOKEN: &str = "Bearer t0ken-marker-8861";

fn static_signing_key() -> String {
    format!("whsk_{}", STANDARD.encode(STATIC_SEED))
}

fn plugin(receiver: &Receiver) -> Value {
    json!({
        "audience": "all",
        "api": {"keys": [{"consumer": "tests", "sha256": KEY_SHA256}]},
        "subscriptions": [{
            "id": "audit", "consumer": "tests", "url": receiver.url("/static"), "events": ["*"],
            "signature_scheme": "v1a", "signing_key": {"env": "PW_AUDIT_SIGNING_KEY"}
        }],
        "delivery": {"timeout": "2s", "retry_schedule": ["0s", "1s", "2s"],
                     "allow_http": true, "allow_private_destinations": true}
    })
}

/// Every answer of the API seen in a test, to search for key material afterwards.
#[derive(Default)]
struct Answers(Vec<Value>);

impl Answers {
    async fn call(
        &mut self,
        envoy: &Envoy,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let (status, value) = api(envoy, KEY, method, path, body).await?;
        self.0.push(value.clone());
        Ok((status, value))
    }

    async fn create(&mut self, envoy: &Envoy, fields: Value) -> Result<Value> {
        let (status, created) = self
            .call(envoy, "POST", SUBSCRIPTIONS, Some(fields))
            .await?;
        ensure!(status == 201, "create answered {status}: {created}");
        Ok(created)
    }
}

fn field<'v>(value: &'v Value, name: &str) -> Result<&'v str> {
    value[name]
        .as_str()
        .with_context(|| format!("no {name} in {value}"))
}

/// The `v1a` signatures of a webhook, in header order.
fn v1a_signatures(hook: &Received) -> Result<Vec<Vec<u8>>> {
    let header = hook.header("webhook-signature").context("no signature")?;
    header
        .split(' ')
        .filter_map(|pair| pair.split_once(','))
        .filter(|(version, _)| *version == "v1a")
        .map(|(_, sig)| STANDARD.decode(sig).context("signature is not base64"))
        .collect()
}

/// The versions of a webhook's signatures, in header order (`["v1", "v1a"]`...).
fn versions(hook: &Received) -> Vec<String> {
    let header = hook.header("webhook-signature").unwrap_or_default();
    header
        .split(' ')
        .map(|pair| pair.split(',').next().unwrap_or_default().to_string())
        .collect()
}

/// Whether `signature` is `public_key`'s (`whpk_…`) over "id.timestamp.body" of `hook`, checked
/// with ring; the timestamp must be within 5 minutes, as the libraries require.
fn signed_by(hook: &Received, signature: &[u8], public_key: &str) -> Result<bool> {
    let raw = STANDARD.decode(public_key.strip_prefix("whpk_").context("no whpk_")?)?;
    ensure!(raw.len() == 32, "a public key is 32 bytes: {public_key}");
    let id = hook.header("webhook-id").context("no webhook-id")?;
    let timestamp = hook.header("webhook-timestamp").context("no timestamp")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    ensure!(
        timestamp.parse::<u64>()?.abs_diff(now) < 300,
        "timestamp {timestamp}"
    );
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    let key = UnparsedPublicKey::new(&ED25519, raw);
    Ok(key.verify(&signed, signature).is_ok())
}

/// The webhook at `path` carrying event `n` of [`produce`], once it arrived.
async fn hook_at(receiver: &Receiver, path: &str, n: u64) -> Result<Received> {
    let find = || {
        receiver.received().into_iter().find(|hook| {
            let event = hook.json().ok();
            hook.path == path && event.and_then(|b| b["data"]["object"]["n"].as_u64()) == Some(n)
        })
    };
    poll_until(WAIT, &format!("event {n} at {path}"), async || {
        find().is_some()
    })
    .await
    .with_context(|| devtools::receiver::describe(&receiver.received()))?;
    find().context("gone")
}

/// Every encoding of `bytes` a log line or answer could carry.
fn encodings(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        hex.to_uppercase(),
        hex,
    ]
}

#[tokio::test]
async fn v1a_and_v1_v1a_verify_with_an_independent_ed25519_also_across_a_rotation() -> Result<()> {
    let stack = Stack::start_with(plugin, |cfg| {
        cfg.with_vm_env("PW_AUDIT_SIGNING_KEY", &static_signing_key())
            .log_level("debug")
    })
    .await?;
    let envoy = &stack.envoy;
    let mut answers = Answers::default();
    let url = |path: &str| stack.receiver.url(path);

    let v1a = answers
        .create(
            envoy,
            json!({"url": url("/a"), "events": ["*"], "signature_scheme": "v1a"}),
        )
        .await?;
    let both = answers
        .create(
            envoy,
            json!({"url": url("/both"), "events": ["*"], "signature_scheme": "v1,v1a"}),
        )
        .await?;
    let v1 = answers
        .create(envoy, json!({"url": url("/v1"), "events": ["*"]}))
        .await?;
    ensure!(
        v1a.get("secret").is_none(),
        "a v1a subscription has no secret: {v1a}"
    );
    ensure!(v1a["signature_scheme"] == "v1a" && both["signature_scheme"] == "v1,v1a");
    ensure!(
        v1.get("public_key").is_none() && v1["signature_scheme"] == "v1",
        "{v1}"
    );
    let a_public = field(&v1a, "public_key")?.to_string();
    let both_public = field(&both, "public_key")?.to_string();
    let both_secret = field(&both, "secret")?.to_string();
    let v1_secret = field(&v1, "secret")?.to_string();
    // The public key is shown on every read.
    let path = format!("{SUBSCRIPTIONS}/{}", field(&v1a, "id")?);
    let (_, got) = answers.call(envoy, "GET", &path, None).await?;
    ensure!(got["public_key"] == a_public.as_str(), "{got}");
    // The static subscription's public key is the one of its configured seed.
    let (_, audit) = answers
        .call(envoy, "GET", &format!("{SUBSCRIPTIONS}/audit"), None)
        .await?;
    let pair =
        Ed25519KeyPair::from_seed_unchecked(&STATIC_SEED).map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit_public = format!("whpk_{}", STANDARD.encode(pair.public_key().as_ref()));
    ensure!(audit["public_key"] == audit_public.as_str(), "{audit}");
    ensure!(audit.get("secret").is_none() && audit["signature_scheme"] == "v1a");

    produce(envoy, 1).await?;
    let a = hook_at(&stack.receiver, "/a", 1).await?;
    ensure!(
        versions(&a) == ["v1a"],
        "{:?}",
        a.header("webhook-signature")
    );
    ensure!(
        signed_by(&a, &v1a_signatures(&a)?[0], &a_public)?,
        "v1a signature of /a"
    );
    ensure!(
        !signed_by(&a, &v1a_signatures(&a)?[0], &both_public)?,
        "another key fails"
    );
    let b = hook_at(&stack.receiver, "/both", 1).await?;
    ensure!(
        versions(&b) == ["v1", "v1a"],
        "{:?}",
        b.header("webhook-signature")
    );
    ensure!(signed_by(&b, &v1a_signatures(&b)?[0], &both_public)?);
    b.verify(&both_secret)
        .context("v1 of v1,v1a with standardwebhooks")?;
    hook_at(&stack.receiver, "/v1", 1)
        .await?
        .verify(&v1_secret)
        .context("v1 with standardwebhooks")?;
    let s = hook_at(&stack.receiver, "/static", 1).await?;
    ensure!(
        signed_by(&s, &v1a_signatures(&s)?[0], &audit_public)?,
        "static v1a"
    );

    // Rotation: new secret and key first, the old ones sign beside them.
    let rotate = format!("{SUBSCRIPTIONS}/{}/rotate-secret", field(&both, "id")?);
    let (status, rotated) = answers.call(envoy, "POST", &rotate, None).await?;
    ensure!(status == 200, "rotate answered {status}: {rotated}");
    let new_public = field(&rotated, "public_key")?.to_string();
    let new_secret = field(&rotated, "secret")?.to_string();
    ensure!(new_public != both_public && new_secret != both_secret);
    produce(envoy, 2).await?;
    let r = hook_at(&stack.receiver, "/both", 2).await?;
    ensure!(
        versions(&r) == ["v1", "v1a", "v1", "v1a"],
        "{:?}",
        r.header("webhook-signature")
    );
    let sigs = v1a_signatures(&r)?;
    ensure!(
        signed_by(&r, &sigs[0], &new_public)?,
        "the new key signs first"
    );
    ensure!(
        signed_by(&r, &sigs[1], &both_public)?,
        "the old key still signs"
    );
    r.verify(&new_secret).context("new v1 secret")?;
    r.verify(&both_secret).context("old v1 secret")?;

    // The static key never shows: not in any answer, not in Envoy's (debug) log.
    let (_, list) = answers.call(envoy, "GET", SUBSCRIPTIONS, None).await?;
    ensure!(list["data"].as_array().map(Vec::len) == Some(4), "{list}");
    let log = envoy.log_contents();
    let mut keypair = STATIC_SEED.to_vec();
    keypair.extend_from_slice(pair.public_key().as_ref());
    let texts: Vec<String> = answers
        .0
        .iter()
        .map(Value::to_string)
        .chain([log])
        .collect();
    for text in &texts {
        ensure!(!text.contains("whsk_"), "a stored key shows: {text:.300}");
        for secret in encodings(&STATIC_SEED)
            .into_iter()
            .chain(encodings(&keypair))
        {
            ensure!(!text.contains(&secret), "the private key shows as {secret}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn receiver_headers_arrive_reserved_ones_are_refused_and_patch_replaces_them() -> Result<()> {
    let stack = Stack::start_with(plugin, |cfg| {
        cfg.with_vm_env("PW_AUDIT_SIGNING_KEY", &static_signing_key())
    })
    .await?;
    let envoy = &stack.envoy;
    let mut answers = Answers::default();
    let headers = json!({"authorization": TOKEN, "x-tenant": "acme"});
    let created = answers
        .create(
            envoy,
            json!({"url": stack.receiver.url("/h"), "events": ["*"], "headers": headers}),
        )
        .await?;
    ensure!(created["headers"] == headers, "shown at create: {created}");
    ensure!(created["header_names"] == json!(["authorization", "x-tenant"]));
    let path = format!("{SUBSCRIPTIONS}/{}", field(&created, "id")?);
    let (_, got) = answers.call(envoy, "GET", &path, None).await?;
    ensure!(
        got.get("headers").is_none() && !got.to_string().contains(TOKEN),
        "{got}"
    );

    produce(envoy, 1).await?;
    let hook = hook_at(&stack.receiver, "/h", 1).await?;
    ensure!(
        hook.header("authorization") == Some(TOKEN),
        "{:?}",
        hook.headers
    );
    ensure!(hook.header("x-tenant") == Some("acme"));
    ensure!(hook
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("proxy-webhooks/")));
    hook.verify(field(&created, "secret")?)?;

    // Reserved names are refused with a 422 naming the header; nothing changes.
    let reserved = [
        (
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-* headers steer Envoy's router",
        ),
        ("x-envoy-retry-on", "x-envoy-* headers steer Envoy's router"),
        ("webhook-signature", "webhook-* headers are the signature's"),
        ("host", "the receiver's host comes from its url"),
        ("content-type", "content-* headers describe the JSON body"),
        (
            "transfer-encoding",
            "hop-by-hop headers belong to the connection",
        ),
        ("user-agent", "every delivery says proxy-webhooks/<version>"),
    ];
    for (name, why) in reserved {
        let body =
            json!({"url": stack.receiver.url("/x"), "events": ["*"], "headers": {name: "1"}});
        let (status, refused) = answers
            .call(envoy, "POST", SUBSCRIPTIONS, Some(body))
            .await?;
        let want = format!("headers: {name:?} is reserved ({why})");
        ensure!(
            status == 422 && refused["error"]["code"] == "invalid_headers",
            "{refused}"
        );
        ensure!(refused["error"]["message"] == want.as_str(), "{refused}");
        let patch = json!({"headers": {name: "1"}});
        let (status, refused) = answers.call(envoy, "PATCH", &path, Some(patch)).await?;
        ensure!(
            status == 422 && refused["error"]["message"] == want.as_str(),
            "{refused}"
        );
    }

    // A PATCH replaces them all, and does not show them.
    let patch = json!({"headers": {"authorization": "Bearer n3w"}});
    let (status, patched) = answers.call(envoy, "PATCH", &path, Some(patch)).await?;
    ensure!(
        status == 200 && patched.get("headers").is_none(),
        "{patched}"
    );
    ensure!(
        patched["header_names"] == json!(["authorization"]),
        "{patched}"
    );
    produce(envoy, 2).await?;
    let hook = hook_at(&stack.receiver, "/h", 2).await?;
    ensure!(
        hook.header("authorization") == Some("Bearer n3w"),
        "{:?}",
        hook.headers
    );
    ensure!(hook.header("x-tenant").is_none(), "the old set is gone");
    for answer in &answers.0[1..] {
        ensure!(!answer.to_string().contains("n3w"), "write-only: {answer}");
    }
    Ok(())
}

/// Fleet mode with `fleet.encryption_key`: etcd holds neither the ed25519 key nor the header
/// values in the clear; after both replicas restart, the same key signs (the public key the API
/// shows is unchanged), whichever replica delivers.
#[tokio::test]
async fn fleet_a_v1a_key_is_sealed_in_etcd_and_survives_restarts() -> Result<()> {
    let fleet_plugin = |_: &Receiver| {
        json!({
            "audience": "all",
            "api": {"keys": [{"consumer": "tests", "sha256": KEY_SHA256}]},
            "delivery": {"timeout": "2s", "retry_schedule": ["0s", "1s", "2s"],
                         "allow_http": true, "allow_private_destinations": true},
            "fleet": {"encryption_key": {"env": "PW_KEY"}}
        })
    };
    let with_key =
        |cfg: devtools::EnvoyConfig| cfg.with_vm_env("PW_KEY", &STANDARD.encode([1u8; 32]));
    let mut fleet = Fleet::start_with(2, fleet_plugin, with_key).await?;
    let mut answers = Answers::default();
    let body = json!({"url": fleet.receiver.url("/f"), "events": ["*"],
                      "signature_scheme": "v1,v1a", "headers": {"authorization": TOKEN}});
    let created = answers.create(fleet.replica(0), body).await?;
    let id = field(&created, "id")?.to_string();
    let public = field(&created, "public_key")?.to_string();
    let secret = field(&created, "secret")?.to_string();
    fleet.wait_all_active(1, WAIT).await?;

    let record = fleet.stored(&id).await?.context("no record in etcd")?;
    let text = record.to_string();
    ensure!(
        !text.contains("whsk_") && !text.contains("whsec_"),
        "clear key: {text}"
    );
    ensure!(
        !text.contains("t0ken"),
        "a header value in the clear: {text}"
    );
    let sealed = record["secrets"].as_array().context("no secrets")?;
    ensure!(sealed.len() == 2, "a secret and a key: {record}");
    for s in sealed {
        ensure!(field(s, "secret")?.starts_with("pws1."), "sealed: {record}");
    }
    ensure!(record["headers"][0]["name"] == "authorization", "{record}");

    produce(fleet.replica(1), 1).await?;
    let hook = hook_at(&fleet.receiver, "/f", 1).await?;
    ensure!(
        signed_by(&hook, &v1a_signatures(&hook)?[0], &public)?,
        "v1a before restarts"
    );
    hook.verify(&secret)?;
    ensure!(hook.header("authorization") == Some(TOKEN));

    for i in 0..2 {
        fleet.restart(i, Stop::Term).await?;
    }
    fleet.wait_all_active(1, WAIT).await?;
    for i in 0..2 {
        let (status, got) = answers
            .call(
                fleet.replica(i),
                "GET",
                &format!("{SUBSCRIPTIONS}/{id}"),
                None,
            )
            .await?;
        ensure!(
            status == 200 && got["public_key"] == public.as_str(),
            "replica {i}: {got}"
        );
    }
    for (i, n) in [(0, 2), (1, 3)] {
        produce(fleet.replica(i), n).await?;
        let hook = hook_at(&fleet.receiver, "/f", n).await?;
        let sigs = v1a_signatures(&hook)?;
        ensure!(
            sigs.len() == 1 && signed_by(&hook, &sigs[0], &public)?,
            "event {n}"
        );
        hook.verify(&secret)?;
        ensure!(hook.header("authorization") == Some(TOKEN), "event {n}");
    }
    for answer in &answers.0 {
        ensure!(!answer.to_string().contains("whsk_"), "{answer}");
    }
    if fleet.counter_sum("webhooks_fleet_unreadable").await? != 0 {
        bail!("a replica could not open a record");
    }
    Ok(())
}
