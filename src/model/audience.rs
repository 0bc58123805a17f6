//! Who receives an event (docs/multi-tenant.md, "Who receives an event"): a rule's configured
//! audience, the target the filter resolves it to from what it saw of the exchange, and which
//! subscriptions a target reaches in the dispatcher's fan-out.

use crate::model::identity::{self, Credentials, Identification};
use serde_json::Value;

/// Where an event's audience comes from: a rule's `audience`, or the top-level default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The consumer that made the request (its API key, or `api.consumer_header`).
    Requester,
    /// A capture of the rule's path template.
    Param(String),
    /// A request header (lowercase name).
    Header(String),
    /// A response header (lowercase name).
    ResponseHeader(String),
    /// A JSON pointer into the response body.
    Json(String),
    /// Every consumer.
    All,
}

/// The resolved audience of one event, as it travels to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One consumer (a valid [`identity::consumer_name`]).
    Consumer(String),
    All,
    /// The audience named no consumer: only privileged subscriptions receive the event.
    Nobody,
}

impl Target {
    /// The consumer a raw value names, or nobody.
    pub fn named(raw: Option<&[u8]>) -> Target {
        match raw.and_then(identity::consumer_name) {
            Some(name) => Target::Consumer(name.to_string()),
            None => Target::Nobody,
        }
    }
}

/// What the filter saw of one exchange, for resolving an audience once the response is over.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// How callers are identified (for `"requester"`).
    pub identification: Identification<'a>,
    /// The caller's credentials, from the request headers.
    pub credentials: Credentials<'a>,
    /// The rule's path captures.
    pub params: &'a [(String, String)],
    /// The request headers audiences name (lowercase name, value), where present.
    pub request_headers: &'a [(String, Vec<u8>)],
    /// The response header the audience names, where present.
    pub response_header: Option<&'a [u8]>,
    /// The response body, when it was captured whole and is JSON.
    pub body: Option<&'a [u8]>,
}

/// The target of `audience` for this exchange. Never fails: whatever cannot be resolved (no
/// key, a missing header, a body too large or not JSON, a value that is not a consumer name)
/// names nobody.
pub fn resolve(audience: &Audience, facts: &Facts<'_>) -> Target {
    match audience {
        Audience::All => Target::All,
        Audience::Requester => match identity::identify(facts.identification, &facts.credentials) {
            Some(consumer) => Target::Consumer(consumer.to_string()),
            None => Target::Nobody,
        },
        Audience::Param(name) => Target::named(
            facts
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_bytes()),
        ),
        Audience::Header(name) => Target::named(
            facts
                .request_headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice()),
        ),
        Audience::ResponseHeader(_) => Target::named(facts.response_header),
        Audience::Json(pointer) => facts
            .body
            .map_or(Target::Nobody, |body| from_json(body, pointer)),
    }
}

/// The consumer a JSON pointer names in `body`: a string, or an integer in decimal.
fn from_json(body: &[u8], pointer: &str) -> Target {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return Target::Nobody;
    };
    match doc.pointer(pointer) {
        Some(Value::String(s)) => Target::named(Some(s.as_bytes())),
        // The integer's own Display: Number's would bring serde_json's float formatting along.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Target::named(Some(u.to_string().as_bytes())),
            (None, Some(i)) => Target::named(Some(i.to_string().as_bytes())),
            (None, None) => Target::Nobody,
        },
        _ => Target::Nobody,
    }
}

/// Whether a subscription of `consumer` receives an event addressed to `target`. Privileged
/// (static) subscriptions receive every event their filters match.
pub fn reaches(target: &Target, consumer: &str, privileged: bool) -> bool {
    privileged
        || match target {
            Target::All => true,
            Target::Consumer(name) => name == consumer,
            Target::Nobody => false,
        }
}

/// RFC 6901: empty (the whole document) or `/`-separated tokens where `~` is only `~0` or `~1`.
pub fn is_json_pointer(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let Some(tokens) = s.strip_prefix('/') else {
        return false;
    };
    let mut chars = tokens.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// The distinct request headers `audiences` name, which the filter reads on every request that
/// may make an event (before the status tells which rule matches).
pub fn request_headers<'a>(audiences: impl Iterator<Item = &'a Audience>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for audience in audiences {
        if let Audience::Header(name) = audience {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiConfig;
    use crate::model::identity::ApiKey;
    use sha2::{Digest, Sha256};

    fn api() -> ApiConfig {
        ApiConfig {
            keys: vec![ApiKey {
                consumer: "acme".into(),
                sha256: Sha256::digest(b"k1").into(),
            }],
            ..ApiConfig::default()
        }
    }

    fn facts<'a>(api: &'a ApiConfig, body: Option<&'a [u8]>) -> Facts<'a> {
        Facts {
            identification: api.identification(),
            credentials: Credentials::default(),
            params: &[],
            request_headers: &[],
            response_header: None,
            body,
        }
    }

    fn consumer(name: &str) -> Target {
        Target::Consumer(name.into())
    }

    #[test]
    fn requester_is_the_key_holder_or_nobody() {
        let api = api();
        let mut f = facts(&api, None);
        assert_eq!(resolve(&Audience::Requester, &f), Target::Nobody);
        f.credentials.api_key = Some(b"k1");
        assert_eq!(resolve(&Audience::Requester, &f), consumer("acme"));
        f.credentials.api_key = Some(b"k2");
        assert_eq!(resolve(&Audience::Requester, &f), Target::Nobody);
    }

    #[test]
    fn requester_from_consumer_header() {
        let api = ApiConfig {
            consumer_header: Some("x-consumer".into()),
            ..ApiConfig::default()
        };
        let mut f = facts(&api, None);
        f.credentials.consumer_header = Some(b"tenant-7");
        assert_eq!(resolve(&Audience::Requester, &f), consumer("tenant-7"));
    }

    #[test]
    fn params_and_headers() {
        let api = api();
        let params = [("tenant".to_string(), "globex".to_string())];
        let headers = [("x-tenant".to_string(), b" initech ".to_vec())];
        let f = Facts {
            params: &params,
            request_headers: &headers,
            response_header: Some(b"umbrella"),
            ..facts(&api, None)
        };
        assert_eq!(
            resolve(&Audience::Param("tenant".into()), &f),
            consumer("globex")
        );
        assert_eq!(resolve(&Audience::Param("id".into()), &f), Target::Nobody);
        assert_eq!(
            resolve(&Audience::Header("x-tenant".into()), &f),
            consumer("initech")
        );
        assert_eq!(
            resolve(&Audience::Header("x-other".into()), &f),
            Target::Nobody
        );
        assert_eq!(
            resolve(&Audience::ResponseHeader("x-owner".into()), &f),
            consumer("umbrella")
        );
        let none = facts(&api, None);
        assert_eq!(
            resolve(&Audience::ResponseHeader("x-owner".into()), &none),
            Target::Nobody
        );
        assert_eq!(resolve(&Audience::All, &none), Target::All);
        // A capture that is no consumer name (a space, percent-decoded or not) names nobody.
        let params = [("tenant".to_string(), "a b".to_string())];
        let f = Facts {
            params: &params,
            ..facts(&api, None)
        };
        assert_eq!(
            resolve(&Audience::Param("tenant".into()), &f),
            Target::Nobody
        );
    }

    #[test]
    fn json_pointer_strings_and_integers() {
        let api = api();
        let body = br#"{"customer_id": "acme", "owner": {"id": 42, "a/b": "slash"},
                        "neg": -7, "float": 1.5, "flag": true, "list": ["x"], "empty": ""}"#;
        let f = facts(&api, Some(body));
        let json = |p: &str| resolve(&Audience::Json(p.into()), &f);
        assert_eq!(json("/customer_id"), consumer("acme"));
        assert_eq!(json("/owner/id"), consumer("42"));
        assert_eq!(json("/owner/a~1b"), consumer("slash"));
        assert_eq!(json("/neg"), consumer("-7"));
        assert_eq!(json("/list/0"), consumer("x"));
        for nobody in [
            "/float", "/flag", "/list", "/owner", "/missing", "/empty", "",
        ] {
            assert_eq!(json(nobody), Target::Nobody, "{nobody}");
        }
        assert_eq!(
            resolve(&Audience::Json("/a".into()), &facts(&api, None)),
            Target::Nobody
        );
        assert_eq!(
            resolve(
                &Audience::Json("/a".into()),
                &facts(&api, Some(b"not json"))
            ),
            Target::Nobody
        );
    }

    #[test]
    fn fan_out_reach() {
        let acme = consumer("acme");
        assert!(reaches(&acme, "acme", false));
        assert!(!reaches(&acme, "globex", false));
        assert!(reaches(&acme, "globex", true));
        assert!(reaches(&Target::All, "globex", false));
        assert!(!reaches(&Target::Nobody, "acme", false));
        assert!(reaches(&Target::Nobody, "ops", true));
    }

    #[test]
    fn json_pointer_syntax() {
        for ok in ["", "/", "/a", "/a/0", "/a~0b", "/a~1b", "/~01"] {
            assert!(is_json_pointer(ok), "{ok}");
        }
        for bad in ["a", "a/b", "/a~", "/a~2", "#/a"] {
            assert!(!is_json_pointer(bad), "{bad}");
        }
    }

    #[test]
    fn request_headers_are_distinct() {
        let audiences = [
            Audience::Header("x-a".into()),
            Audience::Requester,
            Audience::Header("x-a".into()),
            Audience::ResponseHeader("x-r".into()),
            Audience::Header("x-b".into()),
        ];
        assert_eq!(request_headers(audiences.iter()), vec!["x-a", "x-b"]);
    }
}
