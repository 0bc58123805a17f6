use super::*;
use crate::model::subscription::Subscription;
use base64::Engine;

const SHA: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn spec_example() -> String {
    format!(
        r#"{{
  "events": [
    {{"type": "order.created", "method": "POST", "path": "/orders", "status": [201]}},
    {{"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{{id}}", "status": "2xx"}},
    {{"type": "order.deleted", "method": "DELETE", "path": "/orders/{{id}}"}}
  ],
  "infer_events": true,
  "api": {{"path_prefix": "/webhooks", "keys": [{{"consumer": "acme", "sha256": "{SHA}"}}]}},
  "subscriptions": [{{"id": "sub_static_1", "consumer": "ops", "url": "https://hooks.example.com/in",
                     "events": ["order.*"], "secret": "{SECRET}"}}],
  "delivery": {{
    "timeout": "15s",
    "retry_schedule": ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"],
    "jitter": 0.2,
    "disable_after": "5d",
    "max_queue": 100000,
    "max_queue_bytes": 134217728,
    "max_in_flight": 256,
    "max_in_flight_per_subscription": 32,
    "max_payload_bytes": 65536,
    "clusters": {{"http": "webhooks_egress_http", "https": "webhooks_egress_https"}},
    "allow_http": false,
    "allow_private_destinations": false
  }}
}}"#
    )
}

fn parse_str(s: &str) -> Result<Config, ConfigError> {
    parse(s.as_bytes())
}

/// The Display text of the error `json` is refused with.
fn error(json: &str) -> String {
    parse_str(json).unwrap_err().to_string()
}

fn sub(fields: &str) -> String {
    format!(
        r#"{{"subscriptions": [{{"id": "s1", "consumer": "ops", "url": "https://h.example.com/",
                "events": ["*"], "secret": "{SECRET}"{fields}}}]}}"#
    )
}

#[test]
fn fleet_defaults_and_every_field() {
    let c = parse_str(r#"{"fleet": {"cluster": "etcd"}}"#).unwrap();
    let f = c.fleet.unwrap();
    assert_eq!(
        (f.cluster.as_str(), f.prefix.as_str()),
        ("etcd", "/proxy-webhooks")
    );
    assert_eq!(
        (f.node_id, f.sync_interval_ms, f.lease_ttl_ms),
        (None, 500, 10_000)
    );
    let c = parse_str(
        r#"{"fleet": {"cluster": "e", "prefix": "/a/b/", "node_id": "n1",
                "sync_interval": "250ms", "lease_ttl": "3s"}}"#,
    )
    .unwrap();
    let f = c.fleet.unwrap();
    assert_eq!(
        (f.prefix.as_str(), f.node_id.as_deref()),
        ("/a/b", Some("n1"))
    );
    assert_eq!((f.sync_interval_ms, f.lease_ttl_ms), (250, 3000));
    assert_eq!(parse_str("{}").unwrap().fleet, None);
}

#[test]
fn bad_fleet_fields_are_named() {
    let cases = [
        (r#"{"fleet": {}}"#, "fleet.cluster: is required"),
        (
            r#"{"fleet": {"cluster": ""}}"#,
            "fleet.cluster: must not be empty",
        ),
        (r#"{"fleet": "etcd"}"#, "fleet: must be an object"),
        (
            r#"{"fleet": {"cluster": "e", "ttl": "5s"}}"#,
            "fleet.ttl: unknown field",
        ),
        (
            r#"{"fleet": {"cluster": "e", "prefix": "x"}}"#,
            "fleet.prefix: must start with /",
        ),
        (
            r#"{"fleet": {"cluster": "e", "node_id": "a/b"}}"#,
            "fleet.node_id: must be non-empty",
        ),
        (
            r#"{"fleet": {"cluster": "e", "lease_ttl": "1s"}}"#,
            "fleet.lease_ttl: must be between 2s",
        ),
        (
            r#"{"fleet": {"cluster": "e", "sync_interval": "0s"}}"#,
            "fleet.sync_interval: must be between",
        ),
        (
            r#"{"fleet": {"cluster": "e", "sync_interval": 5}}"#,
            "fleet.sync_interval: must be a duration",
        ),
    ];
    for (json, want) in cases {
        let got = error(json);
        assert!(got.starts_with(want), "{json}: {got}");
    }
}

/// Two keys (base64 of 32 bytes of 1s and of 2s) and a table of environment variables.
const KEY_1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn with_env(json: &str) -> Result<Config, ConfigError> {
    let env = |name: &str| match name {
        "WH_KEY" => Some(KEY_2.to_string()),
        "WH_OLD_KEY" => Some(KEY_1.to_string()),
        "WH_TEXT" => Some("s3cret".to_string()),
        "WH_SECRET" => Some(SECRET.to_string()),
        "ETCD_PASSWORD" => Some("etcd-s3cret".to_string()),
        _ => None,
    };
    parse_with_env(json.as_bytes(), &env)
}

fn key(b: u8) -> crate::support::sealing::Key {
    crate::support::sealing::Key::new(&[b; 32])
}

#[test]
fn fleet_encryption_keys_from_values_or_the_environment() {
    let inline = with_env(&format!(
        r#"{{"fleet": {{"cluster": "e", "encryption_key": "{KEY_2}",
             "previous_encryption_keys": ["{KEY_1}"], "encrypt_payloads": true}}}}"#
    ))
    .unwrap();
    let from_env = with_env(
        r#"{"fleet": {"cluster": "e", "encryption_key": {"env": "WH_KEY"},
             "previous_encryption_keys": [{"env": "WH_OLD_KEY"}], "encrypt_payloads": true}}"#,
    )
    .unwrap();
    assert_eq!(inline, from_env);
    let f = from_env.fleet.unwrap();
    assert_eq!(f.keyring, Some(Keyring::new(key(2), vec![key(1)])));
    assert!(f.encrypt_payloads);
    assert!(!format!("{:?}", f.keyring).contains(KEY_2));

    let plain = parse_str(r#"{"fleet": {"cluster": "e"}}"#)
        .unwrap()
        .fleet
        .unwrap();
    assert_eq!((plain.keyring, plain.encrypt_payloads), (None, false));
    // Unpadded base64 is a key too.
    let unpadded = KEY_1.trim_end_matches('=');
    let c = with_env(&format!(
        r#"{{"fleet": {{"cluster": "e", "encryption_key": "{unpadded}"}}}}"#
    ));
    assert_eq!(
        c.unwrap().fleet.unwrap().keyring,
        Some(Keyring::new(key(1), vec![]))
    );
}

#[test]
fn fleet_credentials_from_values_or_the_environment_never_shown() {
    let inline = with_env(
        r#"{"fleet": {"cluster": "e", "username": "webhooks", "password": "etcd-s3cret"}}"#,
    )
    .unwrap();
    let from_env = with_env(
        r#"{"fleet": {"cluster": "e", "username": "webhooks", "password": {"env": "ETCD_PASSWORD"}}}"#,
    )
    .unwrap();
    assert_eq!(inline, from_env);
    let credentials = from_env.fleet.unwrap().credentials.unwrap();
    assert_eq!(
        (credentials.username.as_str(), credentials.password.as_str()),
        ("webhooks", "etcd-s3cret")
    );
    let shown = format!("{credentials:?}");
    assert!(
        shown.contains("webhooks") && !shown.contains("etcd-s3cret"),
        "{shown}"
    );
    let plain = parse_str(r#"{"fleet": {"cluster": "e"}}"#).unwrap();
    assert_eq!(plain.fleet.unwrap().credentials, None);
}

#[test]
fn bad_fleet_credentials_are_named() {
    let fleet = |fields: &str| format!(r#"{{"fleet": {{"cluster": "e", {fields}}}}}"#);
    let cases = [
        (
            fleet(r#""username": "u""#),
            "fleet.username: needs fleet.password (etcd's authentication takes both)",
        ),
        (
            fleet(r#""password": "p""#),
            "fleet.password: needs fleet.username (etcd's authentication takes both)",
        ),
        (
            fleet(r#""username": "", "password": "p""#),
            "fleet.username: must not be empty",
        ),
        (
            fleet(r#""username": "u", "password": """#),
            "fleet.password: must not be empty",
        ),
        (
            fleet(r#""username": 5, "password": "p""#),
            "fleet.username: must be a string",
        ),
        (
            fleet(r#""username": "u", "password": {"env": "NOPE"}"#),
            r#"fleet.password: the environment variable "NOPE" is not set in the Wasm VM"#,
        ),
        (
            fleet(r#""username": "u", "password": {"env": "ETCD_PASSWORD", "x": 1}"#),
            "fleet.password.x: unknown field",
        ),
        (
            fleet(r#""username": "u", "password": 7"#),
            r#"fleet.password: must be a string or {"env": "NAME"}"#,
        ),
    ];
    for (json, want) in cases {
        let got = with_env(&json).unwrap_err().to_string();
        assert!(got.starts_with(want), "{json}: {got}");
        assert!(!got.contains("etcd-s3cret"), "{got}");
    }
}

#[test]
fn a_static_subscriptions_secret_may_come_from_the_environment() {
    let c = with_env(&sub("").replace(&format!(r#""{SECRET}""#), r#"{"env": "WH_SECRET"}"#));
    assert_eq!(c.unwrap().subscriptions[0].secret.as_deref(), Some(SECRET));
}

/// `whsk_` + base64 of 32 bytes of 7.
const SIGNING_KEY: &str = "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

#[test]
fn static_subscriptions_choose_their_signature_scheme() {
    let no_secret = |fields: &str| sub(fields).replace(&format!(r#", "secret": "{SECRET}""#), "");
    let v1a = no_secret(&format!(
        r#", "signature_scheme": "v1a", "signing_key": "{SIGNING_KEY}""#
    ));
    let s = parse_str(&v1a).unwrap().subscriptions.remove(0);
    assert_eq!(
        (s.secret, s.signing_key.as_deref()),
        (None, Some(SIGNING_KEY))
    );
    let both = sub(&format!(
        r#", "signature_scheme": "v1,v1a", "signing_key": "{SIGNING_KEY}""#
    ));
    let s = parse_str(&both).unwrap().subscriptions.remove(0);
    assert_eq!(
        (s.secret.as_deref(), s.signing_key.as_deref()),
        (Some(SECRET), Some(SIGNING_KEY))
    );
    let record = Subscription::from_static(&s, 1);
    assert_eq!(record.signature_scheme(), Scheme::Both);
    let cases = [
        (sub(r#", "signature_scheme": "v2""#), r#"subscriptions[0].signature_scheme: must be "v1", "v1a" or "v1,v1a""#),
        (sub(r#", "signature_scheme": "v1a""#), r#"subscriptions[0].secret: is not used with signature_scheme "v1a""#),
        (no_secret(r#", "signature_scheme": "v1a""#), r#"subscriptions[0].signing_key: is required with signature_scheme "v1a""#),
        (no_secret(""), r#"subscriptions[0].secret: is required with signature_scheme "v1""#),
        (sub(&format!(r#", "signing_key": "{SIGNING_KEY}""#)), r#"subscriptions[0].signing_key: is not used with signature_scheme "v1""#),
        (sub(r#", "signature_scheme": "v1,v1a", "signing_key": "whsk_AAAA""#), "subscriptions[0].signing_key: signing_key must be whsk_ followed by the base64 of a 32-byte seed"),
        (sub(r#", "signature_scheme": "v1,v1a", "signing_key": {"env": "NOPE"}"#), r#"subscriptions[0].signing_key: the environment variable "NOPE" is not set"#),
    ];
    for (json, want) in cases {
        let got = with_env(&json).unwrap_err().to_string();
        assert!(got.starts_with(want), "{json}: {got}");
        assert!(!got.contains("BwcHBwcH"), "{got}");
    }
}

#[test]
fn bad_secrets_and_keys_are_named() {
    let fleet = |fields: &str| format!(r#"{{"fleet": {{"cluster": "e", {fields}}}}}"#);
    let cases = [
        (
            fleet(r#""encryption_key": {"env": "NOPE"}"#),
            r#"fleet.encryption_key: the environment variable "NOPE" is not set in the Wasm VM (give it in vm_config.environment_variables)"#,
        ),
        (
            fleet(r#""encryption_key": {"env": "NOPE"}"#),
            r#"fleet.encryption_key: the environment variable "NOPE" is not set"#,
        ),
        (
            fleet(r#""encryption_key": {"env": ""}"#),
            "fleet.encryption_key.env: must name an environment variable",
        ),
        (
            fleet(r#""encryption_key": {"env": "A=B"}"#),
            "fleet.encryption_key.env: must name an environment variable",
        ),
        (
            fleet(r#""encryption_key": {"env": 5}"#),
            "fleet.encryption_key.env: must be a string",
        ),
        (
            fleet(r#""encryption_key": {}"#),
            "fleet.encryption_key.env: is required",
        ),
        (
            fleet(r#""encryption_key": {"env": "WH_KEY", "file": "x"}"#),
            "fleet.encryption_key.file: unknown field",
        ),
        (
            fleet(r#""encryption_key": 5"#),
            r#"fleet.encryption_key: must be a string or {"env": "NAME"}"#,
        ),
        (
            fleet(r#""encryption_key": "c2hvcnQ=""#),
            "fleet.encryption_key: must be the base64 of 32 bytes (make one with `openssl rand -base64 32`)",
        ),
        (
            fleet(r#""encryption_key": {"env": "WH_TEXT"}"#),
            "fleet.encryption_key: must be the base64 of 32 bytes",
        ),
        (
            fleet(&format!(r#""encryption_key": "{KEY_1}", "previous_encryption_keys": ["{KEY_2}", "x"]"#)),
            "fleet.previous_encryption_keys[1]: must be the base64 of 32 bytes",
        ),
        (
            fleet(&format!(r#""encryption_key": "{KEY_1}", "previous_encryption_keys": "{KEY_2}""#)),
            "fleet.previous_encryption_keys: must be an array",
        ),
        (
            fleet(&format!(r#""previous_encryption_keys": ["{KEY_2}"]"#)),
            "fleet.previous_encryption_keys: needs fleet.encryption_key",
        ),
        (
            fleet(r#""encrypt_payloads": true"#),
            "fleet.encrypt_payloads: needs fleet.encryption_key",
        ),
        (
            fleet(&format!(r#""encryption_key": "{KEY_1}", "encrypt_payloads": "yes""#)),
            "fleet.encrypt_payloads: must be a boolean",
        ),
        (
            sub("").replace(&format!(r#""{SECRET}""#), r#"{"env": "NOPE"}"#),
            r#"subscriptions[0].secret: the environment variable "NOPE" is not set"#,
        ),
        (
            sub("").replace(&format!(r#""{SECRET}""#), r#"{"env": "WH_TEXT"}"#),
            "subscriptions[0].secret: secret must be whsec_ followed by base64",
        ),
    ];
    for (json, want) in cases {
        let got = with_env(&json).unwrap_err().to_string();
        assert!(got.starts_with(want), "{json}: {got}");
    }
}

#[test]
fn spec_example_parses() {
    let c = parse_str(&spec_example()).unwrap();
    assert_eq!(c.events.len(), 3);
    let created = &c.events[0];
    assert_eq!(created.event_type, "order.created");
    assert_eq!(created.methods, vec!["POST"]);
    assert_eq!(created.path.as_str(), "/orders");
    assert_eq!(created.status, StatusMatch::Codes(vec![201]));
    assert_eq!(c.events[1].methods, vec!["PUT", "PATCH"]);
    assert_eq!(c.events[1].status, StatusMatch::Class(2));
    assert_eq!(c.events[2].status, StatusMatch::Class(2));
    assert!(c.infer_events);
    assert_eq!(c.api.path_prefix, "/webhooks");
    assert_eq!(c.api.keys[0].consumer, "acme");
    assert_eq!(c.api.keys[0].sha256[0], 0xc4);
    assert_eq!(c.api.keys[0].sha256[31], 0x5c);
    assert_eq!(
        c.subscriptions,
        vec![StaticSubscription {
            id: "sub_static_1".into(),
            consumer: "ops".into(),
            url: "https://hooks.example.com/in".into(),
            events: vec!["order.*".into()],
            secret: Some(SECRET.into()),
            signing_key: None,
            description: String::new(),
            privileged: false,
            ordering: Default::default(),
        }]
    );
    assert_eq!(c.delivery, DeliveryConfig::default());
}

#[test]
fn shipped_demo_configuration_parses() {
    let demo = format!(
        r#"{{
  "events": [
    {{"type": "order.created", "method": "POST", "path": "/orders", "status": [201]}},
    {{"type": "order.updated", "method": ["PUT", "PATCH"], "path": "/orders/{{id}}"}},
    {{"type": "order.deleted", "method": "DELETE", "path": "/orders/{{id}}"}}
  ],
  "api": {{"path_prefix": "/webhooks", "keys": [{{"consumer": "demo", "sha256": "{SHA}"}}]}},
  "subscriptions": [
    {{"id": "sub_demo_receiver", "consumer": "demo", "url": "http://127.0.0.1:9000/webhooks",
     "events": ["*"], "secret": "{SECRET}", "description": "the bundled demo receiver"}}
  ],
  "delivery": {{"timeout": "5s", "allow_insecure_destinations": true}}
}}"#
    );
    let c = parse_str(&demo).unwrap();
    assert!(!c.infer_events);
    assert_eq!(c.delivery.timeout_ms, 5000);
    assert!(c.delivery.allow_http && c.delivery.allow_private_destinations);
    assert_eq!(c.subscriptions[0].description, "the bundled demo receiver");
}

#[test]
fn defaults() {
    let d = Config::default();
    for empty in ["", "  \n\t", "{}"] {
        assert_eq!(parse_str(empty).unwrap(), d, "{empty:?}");
    }
    assert!(d.events.is_empty() && d.infer_events && d.subscriptions.is_empty());
    assert_eq!(d.api.path_prefix, "/webhooks");
    assert!(d.api.keys.is_empty());
    assert_eq!(d.api.max_subscriptions_per_consumer, 100);
    assert_eq!(d.api.max_subscriptions, 100_000);
    assert_eq!(d.api.max_body_bytes, 65536);
    let dl = &d.delivery;
    assert_eq!(dl.timeout_ms, 15_000);
    assert_eq!(
        dl.retry_schedule_ms,
        vec![
            0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 50_400_000,
            72_000_000, 86_400_000
        ]
    );
    assert_eq!(dl.jitter, 0.2);
    assert_eq!(dl.disable_after_ms, 5 * 86_400_000);
    assert_eq!((dl.max_queue, dl.max_payload_bytes), (100_000, 65536));
    assert_eq!(dl.max_queue_bytes, 134_217_728);
    assert_eq!(dl.max_in_flight_per_subscription, 32);
    assert_eq!(dl.cluster_http, "webhooks_egress_http");
    assert_eq!(dl.cluster_https, "webhooks_egress_https");
    assert!(!dl.allow_http && !dl.allow_private_destinations);
    assert_eq!(dl.url_policy(), crate::support::url::Policy::STRICT);
    assert_eq!(dl.max_in_flight, 256);
}

#[test]
fn null_fields_are_absent() {
    let c = parse_str(r#"{"events": null, "delivery": {"timeout": null}}"#).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn rule_defaults_and_normalisation() {
    let c = parse_str(
        r#"{"events": [{"type": "a.b", "path": "/a"},
                           {"type": "a.c", "method": ["patch", "PATCH", "Put"], "path": "/a/{id}",
                            "status": "4XX"}]}"#,
    )
    .unwrap();
    assert_eq!(c.events[0].methods, vec!["POST", "PUT", "PATCH", "DELETE"]);
    assert_eq!(c.events[0].status, StatusMatch::Class(2));
    assert_eq!(c.events[1].methods, vec!["PATCH", "PUT"]);
    assert_eq!(c.events[1].status, StatusMatch::Class(4));
    assert!(!c.infer_events);
    let c = parse_str(r#"{"events": [{"type": "a.b", "path": "/a"}], "infer_events": true}"#);
    assert!(c.unwrap().infer_events);
    assert!(
        !parse_str(r#"{"infer_events": false}"#)
            .unwrap()
            .infer_events
    );
}

#[test]
fn overrides() {
    let c = parse_str(
        r#"{"api": {"path_prefix": "/hooks/v1//", "max_subscriptions_per_consumer": 1,
                        "max_subscriptions": 10000000, "max_body_bytes": 1024},
                "delivery": {"timeout": "250ms", "retry_schedule": ["1s"], "jitter": 0,
                             "disable_after": "1h", "max_queue": 1, "max_payload_bytes": 0,
                             "clusters": {"https": "egress"}, "max_in_flight": 1}}"#,
    )
    .unwrap();
    assert_eq!(c.api.path_prefix, "/hooks/v1");
    assert_eq!(c.api.max_subscriptions_per_consumer, 1);
    assert_eq!(c.api.max_subscriptions, 10_000_000);
    assert_eq!(c.api.max_body_bytes, 1024);
    let d = &c.delivery;
    assert_eq!((d.timeout_ms, d.disable_after_ms), (250, 3_600_000));
    assert_eq!(d.retry_schedule_ms, vec![1000]);
    assert_eq!(d.jitter, 0.0);
    assert_eq!(
        (d.max_queue, d.max_payload_bytes, d.max_in_flight),
        (1, 0, 1)
    );
    assert_eq!(d.cluster_http, "webhooks_egress_http");
    assert_eq!(d.cluster_https, "egress");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(250));
    assert_eq!(parse_duration("0s"), Ok(0));
    assert_eq!(parse_duration("5s"), Ok(5_000));
    assert_eq!(parse_duration("30m"), Ok(1_800_000));
    assert_eq!(parse_duration("24h"), Ok(86_400_000));
    assert_eq!(parse_duration("5d"), Ok(432_000_000));
    assert_eq!(parse_duration("365d"), Ok(MAX_DURATION_MS));
    for bad in [
        "", "5", "s", "5 s", "1.5s", "-1s", "+1s", "5S", "5sec", " 5s", "5parsecs",
    ] {
        assert_eq!(
            parse_duration(bad),
            Err(format!("{bad:?} is not a duration"))
        );
    }
    assert_eq!(
        parse_duration("5 parsecs"),
        Err("\"5 parsecs\" is not a duration".to_string())
    );
    assert_eq!(
        parse_duration("366d"),
        Err("\"366d\" is too long (at most 365d)".to_string())
    );
    assert_eq!(
        parse_duration("99999999999999999999d"),
        Err("\"99999999999999999999d\" is not a duration".to_string())
    );
    assert_eq!(
        parse_duration("9999999999999999999d"),
        Err("\"9999999999999999999d\" is too long (at most 365d)".to_string())
    );
}

#[test]
fn invalid_json() {
    let e = parse_str("{").unwrap_err();
    assert_eq!(e.field, "configuration");
    assert!(e.problem.contains("EOF"), "{}", e.problem);
    assert_eq!(error("[]"), "configuration: must be a JSON object");
    assert_eq!(error("null"), "configuration: must be a JSON object");
}

#[test]
fn unknown_fields() {
    assert_eq!(error(r#"{"event": []}"#), "event: unknown field");
    assert_eq!(
        error(r#"{"delivery": {"retries": 3}}"#),
        "delivery.retries: unknown field"
    );
    assert_eq!(
        error(r#"{"delivery": {"clusters": {"tcp": "x"}}}"#),
        "delivery.clusters.tcp: unknown field"
    );
    assert_eq!(
        error(r#"{"events": [{"type": "a.b", "path": "/a", "when": 1}]}"#),
        "events[0].when: unknown field"
    );
    assert_eq!(
        error(r#"{"api": {"keys": [{"consumer": "a", "sha256": "x", "key": "k"}]}}"#),
        "api.keys[0].key: unknown field"
    );
    assert_eq!(
        error(&sub(r#", "status": "active""#)),
        "subscriptions[0].status: unknown field"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        error(r#"{"infer_events": "yes"}"#),
        "infer_events: must be a boolean or a non-empty array of path prefixes"
    );
    assert_eq!(error(r#"{"events": {}}"#), "events: must be an array");
    assert_eq!(error(r#"{"events": [1]}"#), "events[0]: must be an object");
    assert_eq!(error(r#"{"api": []}"#), "api: must be an object");
    assert_eq!(
        error(r#"{"subscriptions": "x"}"#),
        "subscriptions: must be an array"
    );
    assert_eq!(error(r#"{"delivery": 1}"#), "delivery: must be an object");
    assert_eq!(
        error(r#"{"delivery": {"allow_insecure_destinations": 1}}"#),
        "delivery.allow_insecure_destinations: must be a boolean"
    );
    assert_eq!(
        error(r#"{"delivery": {"allow_http": "yes"}}"#),
        "delivery.allow_http: must be a boolean"
    );
    assert_eq!(
        error(r#"{"delivery": {"allow_private_destinations": 0}}"#),
        "delivery.allow_private_destinations: must be a boolean"
    );
    assert_eq!(
        error(r#"{"delivery": {"timeout": 15}}"#),
        "delivery.timeout: must be a duration string like \"5s\""
    );
    assert_eq!(
        error(r#"{"api": {"path_prefix": 1}}"#),
        "api.path_prefix: must be a string"
    );
}

#[test]
fn delivery_errors() {
    let d = |body: &str| error(&format!(r#"{{"delivery": {{{body}}}}}"#));
    assert_eq!(
        d(r#""timeout": "5 parsecs""#),
        "delivery.timeout: \"5 parsecs\" is not a duration"
    );
    assert_eq!(
        d(r#""timeout": "0s""#),
        "delivery.timeout: must be greater than 0"
    );
    assert_eq!(
        d(r#""disable_after": "0d""#),
        "delivery.disable_after: must be greater than 0"
    );
    assert_eq!(
        d(r#""retry_schedule": []"#),
        "delivery.retry_schedule: must not be empty"
    );
    assert_eq!(
        d(r#""retry_schedule": ["1s", "soon"]"#),
        "delivery.retry_schedule[1]: \"soon\" is not a duration"
    );
    let many = vec!["\"1s\""; 51].join(",");
    assert_eq!(
        d(&format!(r#""retry_schedule": [{many}]"#)),
        "delivery.retry_schedule: must have at most 50 entries"
    );
    let fifty = vec!["\"1s\""; 50].join(",");
    let ok = parse_str(&format!(
        r#"{{"delivery": {{"retry_schedule": [{fifty}]}}}}"#
    ));
    assert_eq!(ok.unwrap().delivery.retry_schedule_ms.len(), 50);
    for jitter in ["1", "1.0", "-0.1", "\"0.2\"", "true"] {
        assert_eq!(
            d(&format!(r#""jitter": {jitter}"#)),
            "delivery.jitter: must be a number in [0, 1)"
        );
    }
    assert_eq!(
        d(r#""max_queue": 0"#),
        "delivery.max_queue: must be an integer >= 1"
    );
    assert_eq!(
        d(r#""max_queue_bytes": 1000"#),
        "delivery.max_queue_bytes: must be an integer >= 1024"
    );
    assert_eq!(
        d(r#""max_in_flight_per_subscription": 0"#),
        "delivery.max_in_flight_per_subscription: must be an integer >= 1"
    );
    assert_eq!(
        d(r#""timeout": "25d""#),
        "delivery.timeout: must be at most 24d (Envoy fails callouts with longer timeouts)"
    );
    assert!(parse_str(
        r#"{"delivery": {"timeout": "24d", "max_queue_bytes": 1024,
                               "max_in_flight_per_subscription": 1}}"#
    )
    .is_ok());
    assert_eq!(
        d(r#""max_queue": -5"#),
        "delivery.max_queue: must be an integer >= 1"
    );
    assert_eq!(
        d(r#""max_queue": 1.5"#),
        "delivery.max_queue: must be an integer >= 1"
    );
    assert_eq!(
        d(r#""max_in_flight": 0"#),
        "delivery.max_in_flight: must be an integer >= 1"
    );
    let replay = parse_str(r#"{"delivery": {"max_replay_per_consumer": 5}}"#).unwrap();
    assert_eq!(replay.delivery.max_replay_per_consumer, 5);
    assert_eq!(Config::default().delivery.max_replay_per_consumer, 200);
    assert_eq!(
        d(r#""max_replay_per_consumer": -1"#),
        "delivery.max_replay_per_consumer: must be an integer >= 0"
    );
    assert_eq!(
        d(r#""max_replay_per_consumer": "200""#),
        "delivery.max_replay_per_consumer: must be an integer >= 0"
    );
    assert_eq!(
        d(r#""max_payload_bytes": "64k""#),
        "delivery.max_payload_bytes: must be an integer >= 0"
    );
    assert_eq!(
        d(r#""clusters": {"http": ""}"#),
        "delivery.clusters.http: must not be empty"
    );
    assert_eq!(
        d(r#""clusters": {"https": 3}"#),
        "delivery.clusters.https: must be a string"
    );
    assert_eq!(
        d(r#""clusters": []"#),
        "delivery.clusters: must be an object"
    );
}

#[test]
fn event_errors() {
    let ev = |body: &str| {
        error(&format!(
            r#"{{"events": [{{"type": "a.b", "path": "/a"}}, {{{body}}}]}}"#
        ))
    };
    assert_eq!(ev(r#""path": "/a""#), "events[1].type: is required");
    assert_eq!(ev(r#""type": "a.b""#), "events[1].path: is required");
    assert_eq!(
            ev(r#""type": "order created", "path": "/a""#),
            "events[1].type: \"order created\" is not an event type (dot-separated parts of letters, digits and '_', at most 128 characters)"
        );
    assert_eq!(
        ev(r#""type": "webhook.test", "path": "/a""#),
        "events[1].type: types starting with \"webhook.\" are reserved"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "orders""#),
        "events[1].path: path must start with '/'"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a/{id}/{id}""#),
        "events[1].path: parameter \"id\" is used twice"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a", "method": "GET""#),
        "events[1].method: GET never makes events; only POST, PUT, PATCH and DELETE do"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a", "method": ["POST", "options"]"#),
        "events[1].method[1]: OPTIONS never makes events; only POST, PUT, PATCH and DELETE do"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a", "method": "FETCH""#),
        "events[1].method: \"FETCH\" is not one of POST, PUT, PATCH, DELETE"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a", "method": []"#),
        "events[1].method: must be a method or a non-empty array of methods"
    );
    assert_eq!(
        ev(r#""type": "a.b", "path": "/a", "method": ["POST", 1]"#),
        "events[1].method[1]: must be a string"
    );
    let shape = "events[1].status: must be a list of status codes or a class like \"2xx\"";
    for status in [r#""6xx""#, r#""2XXX""#, r#""200""#, "[]", "200", "{}"] {
        assert_eq!(
            ev(&format!(
                r#""type": "a.b", "path": "/a", "status": {status}"#
            )),
            shape
        );
    }
    for code in ["99", "600", "-1", "201.5", "\"201\""] {
        assert_eq!(
            ev(&format!(
                r#""type": "a.b", "path": "/a", "status": [200, {code}]"#
            )),
            "events[1].status[1]: must be a status code from 100 to 599"
        );
    }
}

#[test]
fn api_errors() {
    let api = |body: &str| error(&format!(r#"{{"api": {{{body}}}}}"#));
    assert_eq!(
        api(r#""path_prefix": "hooks""#),
        "api.path_prefix: must start with '/'"
    );
    assert_eq!(
        api(r#""path_prefix": "/""#),
        "api.path_prefix: must not be the root '/'"
    );
    for bad in ["/h?x", "/h#x", "/h/{id}", "/h x"] {
        assert_eq!(
            api(&format!(r#""path_prefix": "{bad}""#)),
            "api.path_prefix: must not contain '?', '#', '{', '}' or whitespace"
        );
    }
    assert_eq!(
        api(r#""max_subscriptions_per_consumer": 0"#),
        "api.max_subscriptions_per_consumer: must be an integer >= 1"
    );
    for bad in ["0", "-1", "1.5", "\"100\""] {
        assert_eq!(
            api(&format!(r#""max_subscriptions": {bad}"#)),
            "api.max_subscriptions: must be an integer >= 1"
        );
    }
    assert_eq!(
        api(r#""max_subscriptions": 10000001"#),
        "api.max_subscriptions: must be at most 10000000 (fleet mode numbers its slots with 8 digits)"
    );
    assert_eq!(
        api(r#""max_body_bytes": 1023"#),
        "api.max_body_bytes: must be an integer >= 1024"
    );
    let key = |consumer: &str, sha: &str| {
        api(&format!(
            r#""keys": [{{"consumer": {consumer}, "sha256": "{sha}"}}]"#
        ))
    };
    let short = &SHA[..63];
    assert_eq!(
        key("\"a\"", short),
        "api.keys[0].sha256: must be 64 hex digits"
    );
    let not_hex = format!("{}g", &SHA[..63]);
    assert_eq!(
        key("\"a\"", &not_hex),
        "api.keys[0].sha256: must be 64 hex digits"
    );
    let consumer = "api.keys[0].consumer: must be 1 to 64 letters, digits, '_', '.' or '-'";
    assert_eq!(key("\"\"", SHA), consumer);
    assert_eq!(key("\"a b\"", SHA), consumer);
    assert_eq!(key(&format!("\"{}\"", "a".repeat(65)), SHA), consumer);
    assert_eq!(
        api(&format!(r#""keys": [{{"sha256": "{SHA}"}}]"#)),
        "api.keys[0].consumer: is required"
    );
    let dup = format!(
        r#""keys": [{{"consumer": "a", "sha256": "{SHA}"}}, {{"consumer": "b", "sha256": "{}"}}]"#,
        SHA.to_uppercase()
    );
    assert_eq!(
        api(&dup),
        "api.keys[1].sha256: the same key is configured twice"
    );
}

#[test]
fn api_keys_parse_hex_case_insensitively() {
    let json = format!(
        r#"{{"api": {{"keys": [{{"consumer": "a.b-c_1", "sha256": "{}"}},
                                  {{"consumer": "a.b-c_1", "sha256": "{}"}}]}}}}"#,
        SHA.to_uppercase(),
        "0".repeat(64)
    );
    let c = parse_str(&json).unwrap();
    assert_eq!(c.api.keys[0].sha256, parse_sha256(SHA).unwrap());
    assert_eq!(c.api.keys[1].sha256, [0; 32]);
}

#[test]
fn subscription_errors() {
    assert_eq!(
        error(&sub("").replace("https://h.example.com/", "http://h.example.com/")),
        "subscriptions[0].url: url must be https"
    );
    assert_eq!(
        error(&sub("").replace("https://h.example.com/", "https://10.0.0.1/")),
        "subscriptions[0].url: url host must not be in 10.0.0.0/8 (private)"
    );
    assert_eq!(
        error(&sub("").replace("https://h.example.com/", "https://u@h/")),
        "subscriptions[0].url: url must not contain user-info"
    );
    assert_eq!(
        error(&sub("").replace("\"s1\"", "\"sub 1\"")),
        "subscriptions[0].id: must be 1 to 64 letters, digits, '_' or '-'"
    );
    assert_eq!(
        error(&sub("").replace("\"ops\"", "\"o/ps\"")),
        "subscriptions[0].consumer: must be 1 to 64 letters, digits, '_', '.' or '-'"
    );
    assert_eq!(
        error(&sub("").replace("[\"*\"]", "[]")),
        "subscriptions[0].events: must be a non-empty array of event filters"
    );
    assert_eq!(
        error(&sub("").replace("[\"*\"]", "[\"order.*\", \"*.created\"]")),
        "subscriptions[0].events[1]: \"*.created\" is not an event type, a prefix.* wildcard or *"
    );
    assert_eq!(
        error(&sub("").replace(SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        "subscriptions[0].secret: secret must be whsec_ followed by base64"
    );
    // 23 bytes: too short; 24 and 64 bytes: the Standard Webhooks range; 65: too long.
    let sized = |n: usize| {
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
        );
        sub("").replace(SECRET, &secret)
    };
    assert_eq!(
        error(&sized(23)),
        "subscriptions[0].secret: secret must decode to 24 to 64 bytes, not 23"
    );
    assert!(parse_str(&sized(24)).is_ok());
    assert!(parse_str(&sized(64)).is_ok());
    assert_eq!(
        error(&sized(65)),
        "subscriptions[0].secret: secret must decode to 24 to 64 bytes, not 65"
    );
    assert_eq!(
        error(&sub(&format!(r#", "description": "{}""#, "é".repeat(257)))),
        "subscriptions[0].description: must be at most 256 characters"
    );
    assert_eq!(
        error(&sub("").replace(r#""id": "s1", "#, "")),
        "subscriptions[0].id: is required"
    );
    let two = format!(
        r#"{{"subscriptions": [{0}, {0}]}}"#,
        format!(
            r#"{{"id": "s1", "consumer": "ops", "url": "https://h.example.com/", "events": ["*"], "secret": "{SECRET}"}}"#
        )
    );
    assert_eq!(error(&two), "subscriptions[1].id: duplicate id \"s1\"");
}

#[test]
fn egress_switches_and_their_shorthand() {
    let policy = |delivery: &str| {
        parse_str(&format!(r#"{{"delivery": {delivery}}}"#))
            .unwrap()
            .delivery
            .url_policy()
    };
    let p = |allow_http, allow_private| crate::support::url::Policy {
        allow_http,
        allow_private,
    };
    assert_eq!(policy("{}"), p(false, false));
    assert_eq!(policy(r#"{"allow_http": true}"#), p(true, false));
    assert_eq!(
        policy(r#"{"allow_private_destinations": true}"#),
        p(false, true)
    );
    assert_eq!(
        policy(r#"{"allow_insecure_destinations": true}"#),
        p(true, true)
    );
    // The explicit switches win over the shorthand.
    assert_eq!(
        policy(r#"{"allow_insecure_destinations": true, "allow_private_destinations": false}"#),
        p(true, false)
    );
}

#[test]
fn subscriptions_honour_the_egress_switches() {
    let json = sub("").replace("https://h.example.com/", "http://localhost:9000/in");
    assert_eq!(error(&json), "subscriptions[0].url: url must be https");
    let with = |delivery: &str| json.replacen('{', &format!(r#"{{"delivery": {delivery}, "#), 1);
    assert_eq!(
        error(&with(r#"{"allow_http": true}"#)),
        "subscriptions[0].url: url host must not be localhost"
    );
    assert_eq!(
        error(&with(r#"{"allow_private_destinations": true}"#)),
        "subscriptions[0].url: url must be https"
    );
    let both = r#"{"allow_http": true, "allow_private_destinations": true}"#;
    let c = parse_str(&with(both)).unwrap();
    assert_eq!(c.subscriptions[0].url, "http://localhost:9000/in");
    let c = parse_str(&with(r#"{"allow_insecure_destinations": true}"#)).unwrap();
    assert_eq!(c.subscriptions[0].url, "http://localhost:9000/in");
    let ok = parse_str(&sub(&format!(r#", "description": "{}""#, "é".repeat(256))));
    assert_eq!(
        ok.unwrap().subscriptions[0].description.chars().count(),
        256
    );
}

#[test]
fn audiences_parse_with_the_default_applied() {
    let c = parse_str(
            r#"{"audience": "all", "events": [
                {"type": "a.x", "path": "/a"},
                {"type": "a.y", "path": "/t/{tenant}/a", "audience": {"param": "tenant"}},
                {"type": "a.z", "path": "/f/{*rest}", "audience": {"param": "rest"}},
                {"type": "b.x", "path": "/b", "audience": {"header": "X-Tenant-ID"}},
                {"type": "b.y", "path": "/b", "audience": {"response_header": "X-Owner"}},
                {"type": "c.x", "path": "/c", "audience": {"json": "/customer/id"}, "include_object": false},
                {"type": "c.y", "path": "/c", "audience": "requester", "include_object": true}
            ]}"#,
        )
        .unwrap();
    let audiences: Vec<&Audience> = c.events.iter().map(|r| &r.audience).collect();
    assert_eq!(
        audiences,
        [
            &Audience::All,
            &Audience::Param("tenant".into()),
            &Audience::Param("rest".into()),
            &Audience::Header("x-tenant-id".into()),
            &Audience::ResponseHeader("x-owner".into()),
            &Audience::Json("/customer/id".into()),
            &Audience::Requester,
        ]
    );
    let objects: Vec<bool> = c.events.iter().map(|r| r.include_object).collect();
    assert_eq!(objects, [true, true, true, true, true, false, true]);
    assert_eq!(c.audience, Audience::All);
    assert_eq!(c.audience_of(Some(1)), &Audience::Param("tenant".into()));
    assert_eq!(c.audience_of(None), &Audience::All);
    assert_eq!(c.audience_of(Some(99)), &Audience::All);
    assert!(!c.include_object(Some(5)) && c.include_object(None));
    // Without a top-level audience the default is the requester.
    let c = parse_str(r#"{"events": [{"type": "a.x", "path": "/a"}]}"#).unwrap();
    assert_eq!(c.audience, Audience::Requester);
    assert_eq!(c.events[0].audience, Audience::Requester);
    assert_eq!(
        parse_str(r#"{"audience": {"json": "/owner"}}"#)
            .unwrap()
            .audience,
        Audience::Json("/owner".into())
    );
}

#[test]
fn audience_errors() {
    let rule = |audience: &str| {
        error(&format!(
            r#"{{"events": [{{"type": "a.b", "path": "/t/{{tenant}}/a", "audience": {audience}}}]}}"#
        ))
    };
    let shape = "must be \"requester\", \"all\", or an object with one of param, header, response_header, json";
    for bad in [
        r#""everyone""#,
        "1",
        "[]",
        "{}",
        r#"{"param": "tenant", "header": "x"}"#,
    ] {
        assert_eq!(rule(bad), format!("events[0].audience: {shape}"), "{bad}");
    }
    assert_eq!(
        error(r#"{"audience": "public"}"#),
        format!("audience: {shape}")
    );
    assert_eq!(
        rule(r#"{"claim": "sub"}"#),
        "events[0].audience.claim: unknown field"
    );
    assert_eq!(
        rule(r#"{"param": "id"}"#),
        "events[0].audience.param: \"id\" is not a capture of the path \"/t/{tenant}/a\""
    );
    assert_eq!(
        rule(r#"{"param": 1}"#),
        "events[0].audience.param: must be a string"
    );
    assert_eq!(
        error(r#"{"audience": {"param": "tenant"}}"#),
        "audience.param: is only valid on an event rule (inferred events have no path template)"
    );
    for bad in ["", "x tenant", "x:y", ":authority", "é"] {
        assert_eq!(
            rule(&format!(r#"{{"header": "{bad}"}}"#)),
            format!("events[0].audience.header: {bad:?} is not a header name")
        );
        assert_eq!(
            rule(&format!(r#"{{"response_header": "{bad}"}}"#)),
            format!("events[0].audience.response_header: {bad:?} is not a header name")
        );
    }
    for bad in ["customer_id", "/a~2", "#/a"] {
        assert_eq!(
            rule(&format!(r#"{{"json": "{bad}"}}"#)),
            format!(
                "events[0].audience.json: {bad:?} is not a JSON pointer (like \"/customer_id\")"
            )
        );
    }
    assert_eq!(
        error(r#"{"events": [{"type": "a.b", "path": "/a", "include_object": "no"}]}"#),
        "events[0].include_object: must be a boolean"
    );
}

#[test]
fn inference_prefixes() {
    let c = parse_str(r#"{"infer_events": ["/orders/", "/api/v1/customers"]}"#).unwrap();
    assert!(c.infer_events);
    assert_eq!(c.infer_prefixes, vec!["/orders", "/api/v1/customers"]);
    for yes in ["/orders", "/orders/7", "/api/v1/customers/3/notes"] {
        assert!(c.infers(yes), "{yes}");
    }
    for no in ["/ordersx", "/auth/login", "/api/v1", "/"] {
        assert!(!c.infers(no), "{no}");
    }
    let everywhere = parse_str(r#"{"infer_events": ["/"]}"#).unwrap();
    assert!(everywhere.infers("/auth/login") && everywhere.infers("/"));
    let off = parse_str(r#"{"infer_events": false}"#).unwrap();
    assert!(!off.infers("/orders"));
    assert!(Config::default().infers("/anything"));
    // A list turns inference on even beside explicit rules.
    let c = parse_str(r#"{"events": [{"type": "a.b", "path": "/a"}], "infer_events": ["/o"]}"#);
    assert!(c.unwrap().infers("/o/1"));
    let shape = "infer_events: must be a boolean or a non-empty array of path prefixes";
    assert_eq!(error(r#"{"infer_events": []}"#), shape);
    assert_eq!(error(r#"{"infer_events": "/orders"}"#), shape);
    assert_eq!(
        error(r#"{"infer_events": ["/a", 3]}"#),
        "infer_events[1]: must be a string"
    );
    for bad in ["orders", "/a?b", "/a b", "/a#b"] {
        assert_eq!(
            error(&format!(r#"{{"infer_events": ["{bad}"]}}"#)),
            "infer_events[0]: must start with '/' and contain no '?', '#' or whitespace"
        );
    }
}

#[test]
fn consumer_header() {
    let c = parse_str(r#"{"api": {"consumer_header": "X-Consumer-ID"}}"#).unwrap();
    assert_eq!(c.api.consumer_header.as_deref(), Some("x-consumer-id"));
    assert_eq!(Config::default().api.consumer_header, None);
    assert_eq!(
        error(r#"{"api": {"consumer_header": "x consumer"}}"#),
        "api.consumer_header: \"x consumer\" is not a header name"
    );
    assert_eq!(
        error(r#"{"api": {"consumer_header": true}}"#),
        "api.consumer_header: must be a string"
    );
    let both = format!(
        r#"{{"api": {{"consumer_header": "x-consumer", "keys": [{{"consumer": "a", "sha256": "{SHA}"}}]}}}}"#
    );
    assert_eq!(
            error(&both),
            "api.consumer_header: cannot be combined with api.keys: with a consumer header, it alone identifies consumers"
        );
}

#[test]
fn privileged_static_subscriptions() {
    assert!(!parse_str(&sub("")).unwrap().subscriptions[0].privileged);
    let c = parse_str(&sub(r#", "privileged": true"#)).unwrap();
    assert!(c.subscriptions[0].privileged);
    assert_eq!(
        error(&sub(r#", "privileged": "yes""#)),
        "subscriptions[0].privileged: must be a boolean"
    );
}

#[test]
fn catalog_fields_are_kept_as_given() {
    let c = parse_str(
        r#"{"events": [
            {"type": "a.b", "path": "/a", "description": "An a was made.",
             "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
             "example": {"id": 7}},
            {"type": "a.c", "path": "/c", "schema": false, "example": [1, "two", null]},
            {"type": "a.d", "path": "/d", "description": null, "schema": null, "example": null}
        ]}"#,
    )
    .unwrap();
    let doc = c.events[0].doc.as_deref().unwrap();
    assert_eq!(doc.description.as_deref(), Some("An a was made."));
    assert_eq!(
        doc.schema.as_ref().unwrap()["properties"]["id"]["type"],
        "integer"
    );
    assert_eq!(doc.example, Some(serde_json::json!({"id": 7})));
    let doc = c.events[1].doc.as_deref().unwrap();
    assert_eq!(
        (doc.description.as_deref(), doc.schema.clone()),
        (None, Some(Value::Bool(false)))
    );
    assert_eq!(doc.example, Some(serde_json::json!([1, "two", null])));
    // Null counts as absent, as everywhere in the configuration.
    assert_eq!(c.events[2].doc, None);
}

/// `{"a": {"a": ... 1 ...}}` with `levels` objects.
fn nested(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

#[test]
fn catalog_field_errors() {
    let ev = |body: &str| {
        error(&format!(
            r#"{{"events": [{{"type": "a.b", "path": "/a", {body}}}]}}"#
        ))
    };
    assert_eq!(
        ev(r#""description": 5"#),
        "events[0].description: must be a string"
    );
    let long = "é".repeat(1001);
    assert_eq!(
        ev(&format!(r#""description": "{long}""#)),
        "events[0].description: must be at most 1000 characters"
    );
    assert!(parse_str(&format!(
        r#"{{"events": [{{"type": "a.b", "path": "/a", "description": "{}"}}]}}"#,
        &long[2..]
    ))
    .is_ok());
    for bad in ["1", r#""object""#, "[]", r#"[{"type": "object"}]"#] {
        assert_eq!(
            ev(&format!(r#""schema": {bad}"#)),
            "events[0].schema: must be a JSON Schema (2020-12): an object or a boolean",
            "{bad}"
        );
    }
    assert!(parse_str(&format!(
        r#"{{"events": [{{"type": "a.b", "path": "/a", "schema": {}, "example": {}}}]}}"#,
        nested(64),
        nested(64)
    ))
    .is_ok());
    for field in ["schema", "example"] {
        assert_eq!(
            ev(&format!(r#""{field}": {}"#, nested(65))),
            format!("events[0].{field}: must nest at most 64 arrays and objects deep")
        );
        // 65536 bytes pass, one more does not: `{"p":"…"}` is 8 bytes around the padding.
        let padded = |n: usize| format!(r#"{{"p":"{}"}}"#, "x".repeat(n - 8));
        assert!(parse_str(&format!(
            r#"{{"events": [{{"type": "a.b", "path": "/a", "{field}": {}}}]}}"#,
            padded(65536)
        ))
        .is_ok());
        assert_eq!(
            ev(&format!(r#""{field}": {}"#, padded(65537))),
            format!("events[0].{field}: is 65537 bytes as JSON; at most 65536 are allowed")
        );
    }
    // An example may be any JSON value, a scalar too.
    assert!(parse_str(r#"{"events": [{"type": "a.b", "path": "/a", "example": "text"}]}"#).is_ok());
}

#[test]
fn static_subscriptions_may_be_fifo() {
    use crate::model::subscription::Ordering;
    assert_eq!(
        parse_str(&sub("")).unwrap().subscriptions[0].ordering,
        Ordering::None
    );
    let c = parse_str(&sub(r#", "ordering": "fifo""#)).unwrap();
    assert_eq!(c.subscriptions[0].ordering, Ordering::Fifo);
    let c = parse_str(&sub(r#", "ordering": "none""#)).unwrap();
    assert_eq!(c.subscriptions[0].ordering, Ordering::None);
    assert_eq!(
        error(&sub(r#", "ordering": "FIFO""#)),
        r#"subscriptions[0].ordering: must be "none" or "fifo""#
    );
    assert_eq!(
        error(&sub(r#", "ordering": 1"#)),
        "subscriptions[0].ordering: must be a string"
    );
}

const KEY32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

#[test]
fn portal_every_field_and_defaults() {
    assert_eq!(Config::default().api.portal, None);
    let c = parse_str(&format!(
        r#"{{"api": {{"portal": {{"enabled": true, "session_key": "{KEY32}", "title": "Acme webhooks",
             "frame_ancestors": ["https://app.example.com", "'self'", "https://*.example.org:8443/"],
             "public_url": "https://api.example.com/base/"}}}}}}"#
    ))
    .unwrap();
    let p = c.api.portal.unwrap();
    assert_eq!(p.session_key, b"0123456789abcdef0123456789abcdef");
    assert_eq!(p.title, "Acme webhooks");
    assert_eq!(
        p.frame_ancestors,
        [
            "https://app.example.com",
            "'self'",
            "https://*.example.org:8443"
        ]
    );
    assert_eq!(
        p.public_url.as_deref(),
        Some("https://api.example.com/base")
    );
    assert!(!format!("{p:?}").contains("0123"), "the key is never shown");
    let p = parse_str(r#"{"api": {"portal": {}}}"#)
        .unwrap()
        .api
        .portal
        .unwrap();
    assert_eq!((p.title.as_str(), p.session_key.len()), ("Webhooks", 0));
    assert_eq!((p.frame_ancestors.len(), p.public_url), (0, None));
    let off = format!(r#"{{"api": {{"portal": {{"enabled": false, "session_key": "{KEY32}"}}}}}}"#);
    assert_eq!(parse_str(&off).unwrap().api.portal, None);
}

#[test]
fn portal_session_key_from_the_environment_and_fleet_needs_it() {
    let env = |name: &str| (name == "PORTAL_KEY").then(|| KEY32.to_string());
    let doc =
        r#"{"api": {"portal": {"session_key": {"env": "PORTAL_KEY"}}}, "fleet": {"cluster": "e"}}"#;
    let c = parse_with_env(doc.as_bytes(), &env).unwrap();
    assert_eq!(c.api.portal.unwrap().session_key.len(), 32);
    assert_eq!(
        error(r#"{"api": {"portal": {"enabled": true}}, "fleet": {"cluster": "e"}}"#),
        "api.portal.session_key: is required in fleet mode (every replica must accept every session)"
    );
    // A disabled portal needs no key, in fleet mode either.
    parse_str(r#"{"api": {"portal": {"enabled": false}}, "fleet": {"cluster": "e"}}"#).unwrap();
}

#[test]
fn portal_errors_name_the_field() {
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    let long = base64::engine::general_purpose::STANDARD.encode([7u8; 65]);
    let key_problem = "api.portal.session_key: must be the base64 of 32 to 64 bytes (make one with `openssl rand -base64 32`)";
    for (portal, expected) in [
        (format!(r#"{{"session_key": "{short}"}}"#), key_problem.to_string()),
        (format!(r#"{{"session_key": "{long}"}}"#), key_problem.to_string()),
        (r#"{"session_key": "not base64!"}"#.into(), key_problem.to_string()),
        (
            r#"{"session_key": 5}"#.into(),
            "api.portal.session_key: must be a string or {\"env\": \"NAME\"} naming an environment variable".into(),
        ),
        (r#"{"enabled": "yes"}"#.into(), "api.portal.enabled: must be a boolean".into()),
        (
            r#"{"title": "  "}"#.into(),
            "api.portal.title: must be 1 to 100 characters, not blank, no control characters".into(),
        ),
        (
            r#"{"frame_ancestors": ["app.example.com"]}"#.into(),
            "api.portal.frame_ancestors[0]: \"app.example.com\" is not an origin like \"https://app.example.com\" or 'self'".into(),
        ),
        (
            r#"{"frame_ancestors": ["https://a.example.com; script-src *"]}"#.into(),
            "api.portal.frame_ancestors[0]: \"https://a.example.com; script-src *\" is not an origin like \"https://app.example.com\" or 'self'".into(),
        ),
        (
            r#"{"frame_ancestors": "https://a.example.com"}"#.into(),
            "api.portal.frame_ancestors: must be an array".into(),
        ),
        (
            r#"{"public_url": "api.example.com"}"#.into(),
            "api.portal.public_url: \"api.example.com\" is not an absolute http(s) URL without query or fragment, like \"https://api.example.com\"".into(),
        ),
        (
            r#"{"public_url": "https://api.example.com/?x=1"}"#.into(),
            "api.portal.public_url: \"https://api.example.com/?x=1\" is not an absolute http(s) URL without query or fragment, like \"https://api.example.com\"".into(),
        ),
        (r#"{"colour": "red"}"#.into(), "api.portal.colour: unknown field".into()),
        (r#"[]"#.into(), "api.portal: must be an object".into()),
    ] {
        assert_eq!(error(&format!(r#"{{"api": {{"portal": {portal}}}}}"#)), expected);
    }
}

#[test]
fn operator_keys_and_header() {
    let c = parse_str(&format!(
        r#"{{"api": {{"operator_keys": [{{"operator": "ops", "sha256": "{}"}}],
             "operator_header": "X-Operator"}}}}"#,
        SHA.to_ascii_uppercase()
    ))
    .unwrap();
    assert_eq!(c.api.operator_keys[0].operator, "ops");
    assert_eq!(c.api.operator_keys[0].sha256[0], 0xc4);
    assert_eq!(c.api.operator_header.as_deref(), Some("x-operator"));
    assert_eq!(Config::default().api.operator_keys, []);
    let twice = format!(
        r#"{{"api": {{"operator_keys": [{{"operator": "a", "sha256": "{SHA}"}}, {{"operator": "b", "sha256": "{SHA}"}}]}}}}"#
    );
    assert_eq!(
        error(&twice),
        "api.operator_keys[1].sha256: the same key is configured twice"
    );
    let shared = format!(
        r#"{{"api": {{"keys": [{{"consumer": "c", "sha256": "{SHA}"}}], "operator_keys": [{{"operator": "a", "sha256": "{SHA}"}}]}}}}"#
    );
    assert_eq!(
        error(&shared),
        "api.operator_keys[0].sha256: is also in api.keys: an operator key must not be a consumer's key"
    );
    for (api, expected) in [
        (r#"{"operator_keys": [{"operator": "a b", "sha256": "00"}]}"#, "api.operator_keys[0].operator: must be 1 to 64 letters, digits, '_', '.' or '-'"),
        (r#"{"operator_keys": [{"operator": "a", "sha256": "00"}]}"#, "api.operator_keys[0].sha256: must be 64 hex digits"),
        (r#"{"operator_keys": [{"sha256": "00"}]}"#, "api.operator_keys[0].operator: is required"),
        (r#"{"operator_keys": [{"consumer": "a"}]}"#, "api.operator_keys[0].consumer: unknown field"),
        (r#"{"operator_keys": {}}"#, "api.operator_keys: must be an array"),
        (r#"{"operator_header": "x op"}"#, "api.operator_header: \"x op\" is not a header name"),
        (r#"{"consumer_header": "x-who", "operator_header": "X-Who"}"#, "api.operator_header: must not be api.consumer_header: one header cannot name both a consumer and an operator"),
        (r#"{"operator_header": "Authorization"}"#, "api.operator_header: \"authorization\" carries credentials of its own; name the header your authentication filter sets"),
    ] {
        assert_eq!(error(&format!(r#"{{"api": {api}}}"#)), expected, "{api}");
    }
}
