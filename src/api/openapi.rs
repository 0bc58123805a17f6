//! `GET <prefix>/openapi.json`: this deployment's OpenAPI 3.1 document. The shipped
//! `openapi.yaml` (embedded as JSON, `openapi.base.json`, checked against it by
//! `devtools/tests/openapi.rs`) with what the configuration decides: the prefix, the event
//! filters a subscription may name, and a `webhooks` entry per event type with its payload.
//! Built once per configuration and kept (`Config::api_document`); answered without
//! authentication, like any public API description: it tells nothing that the configuration
//! does not already publish through the event catalog.

use super::responses::base_headers;
use super::Response;
use crate::config::Config;
use crate::model::rules::EventRule;
use crate::model::subscription::TEST_EVENT_TYPE;
use serde_json::{json, Map, Value};

const BASE: &str = include_str!("openapi.base.json");
/// The prefix the base document's paths are written under.
const BASE_PREFIX: &str = "/webhooks";
/// The types inference can produce (`model::rules::is_inferable_type`), and their wildcards.
const INFERRED_TYPE: &str = r"^[A-Za-z_]+\.(created|updated|deleted)$";
const INFERRED_WILDCARD: &str = r"^[A-Za-z_]+\.\*$";
/// Where the payload of inferred events is described in `webhooks`.
pub const INFERRED_ENTRY: &str = "inferred";

/// The answer to `openapi.json`: GET (or HEAD) gets the document, any other method 405.
pub(super) fn answer(method: &str, config: &Config) -> Response {
    if method != "GET" && method != "HEAD" {
        return super::responses::method_not_allowed("GET, HEAD");
    }
    let mut headers = base_headers();
    headers.push(("content-type", "application/json".to_string()));
    let body = config.api_document.get_or_init(|| document(config)).clone();
    Response {
        status: 200,
        headers,
        body,
    }
}

/// The document, serialized. Never fails: a base that would not parse (a build mistake the
/// devtools test catches) gives an empty document rather than a panic.
pub fn document(config: &Config) -> Vec<u8> {
    let mut doc: Value = serde_json::from_str(BASE).unwrap_or_else(|_| json!({}));
    patch(&mut doc, config);
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn patch(doc: &mut Value, config: &Config) {
    let prefix = config.api.path_prefix.as_str();
    if let Some(root) = doc.as_object_mut() {
        // Relative to wherever the document was fetched from.
        root.insert("servers".into(), json!([{"url": "/"}]));
        root.insert("webhooks".into(), Value::Object(webhooks(config)));
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        let old = std::mem::take(paths);
        for (template, item) in old {
            let rest = template.strip_prefix(BASE_PREFIX).unwrap_or(&template);
            paths.insert(format!("{prefix}{rest}"), item);
        }
        paths.insert(format!("{prefix}/openapi.json"), self_path());
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        if let Some(map) = schemas.as_object_mut() {
            map.insert("KnownEventFilter".into(), known_filter(config));
            map.insert(
                "KnownEventFilters".into(),
                json!({"type": "array", "minItems": 1, "maxItems": 50,
                       "items": {"$ref": "#/components/schemas/KnownEventFilter"}}),
            );
        }
        let known = json!({"$ref": "#/components/schemas/KnownEventFilters"});
        if let Some(events) = schemas.pointer_mut("/SubscriptionCreate/properties/events") {
            *events = known.clone();
        }
        if let Some(events) = schemas.pointer_mut("/SubscriptionPatch/properties/events") {
            *events = json!({"oneOf": [known, {"type": "null"}]});
        }
    }
}

fn self_path() -> Value {
    json!({"get": {
        "operationId": "getOpenApiDocument",
        "summary": "This document: the subscription API of this deployment, its event types and their payloads",
        "security": [],
        "responses": {"200": {"description": "The OpenAPI 3.1 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}
    }})
}

/// What a subscription may name: the configured types and `webhook.test`, the wildcard of each
/// of their prefixes and `*`, and with inference the types it can produce and their wildcards.
/// Exactly what the API accepts (`Config::knows_filter`).
fn known_filter(config: &Config) -> Value {
    let mut names: Vec<String> = vec!["*".into()];
    let types = config
        .events
        .iter()
        .map(|r| r.event_type.as_str())
        .chain([TEST_EVENT_TYPE]);
    for event_type in types {
        let wildcards = event_type
            .match_indices('.')
            .filter_map(|(i, _)| event_type.get(..i))
            .map(|p| format!("{p}.*"));
        for name in std::iter::once(event_type.to_string()).chain(wildcards) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut any = vec![json!({"enum": names})];
    if config.infer_events {
        any.push(json!({"type": "string", "pattern": INFERRED_TYPE, "maxLength": 128}));
        any.push(json!({"type": "string", "pattern": INFERRED_WILDCARD, "maxLength": 130}));
    }
    json!({
        "description": "An event type of this deployment, a `prefix.*` wildcard of one, or `*`.",
        "anyOf": any
    })
}

fn webhooks(config: &Config) -> Map<String, Value> {
    let mut out = Map::new();
    for rule in &config.events {
        out.entry(rule.event_type.clone())
            .or_insert_with(|| rule_entry(rule));
    }
    if config.infer_events {
        let payload = payload(
            json!({"type": "string", "pattern": INFERRED_TYPE}),
            object_schema(INFERRED_ENTRY, None, config.include_object(None)),
            config.include_object(None),
        );
        let about = "A POST, PUT, PATCH or DELETE answered 2xx that no rule names: \
                     `<resource>.created|updated|deleted`.";
        out.insert(INFERRED_ENTRY.into(), entry(about, payload, None));
    }
    out.insert(TEST_EVENT_TYPE.into(), test_entry());
    out
}

fn rule_entry(rule: &EventRule) -> Value {
    let doc = rule.doc.as_deref();
    let schema = doc.and_then(|d| d.schema.as_ref());
    let about = doc
        .and_then(|d| d.description.clone())
        .unwrap_or_else(|| format!("{} {}", rule.methods.join(", "), rule.path.as_str()));
    let body = payload(
        json!({"const": rule.event_type}),
        object_schema(&rule.event_type, schema, rule.include_object),
        rule.include_object,
    );
    entry(&about, body, doc.and_then(|d| d.example.as_ref()))
}

/// `data.object`: null when the rule leaves the response out, else the rule's schema (an
/// embedded resource of its own, so that its `#/$defs/..` references resolve inside it) or
/// null (the body was not JSON, or too large).
fn object_schema(event_type: &str, schema: Option<&Value>, include: bool) -> Value {
    if !include {
        return json!({"type": "null"});
    }
    let Some(schema) = schema else {
        return json!(true);
    };
    let mut own = schema.clone();
    if let Some(map) = own.as_object_mut() {
        if !map.contains_key("$id") {
            map.insert(
                "$id".into(),
                json!(format!("urn:proxy-webhooks:object:{event_type}")),
            );
        }
    }
    json!({"anyOf": [own, {"type": "null"}]})
}

fn payload(event_type: Value, object: Value, include: bool) -> Value {
    let mut data = json!({
        "object": object,
        "request": {
            "type": "object", "additionalProperties": false,
            "required": ["method", "path", "params", "status"],
            "properties": {
                "method": {"enum": ["POST", "PUT", "PATCH", "DELETE"]},
                "path": {"type": "string"},
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "status": {"type": "integer", "minimum": 200, "maximum": 299}
            }
        }
    });
    if include {
        if let Some(map) = data.as_object_mut() {
            map.insert(
                "truncated".into(),
                json!({"const": true, "description": "The response body was too large to include; `object` is null."}),
            );
        }
    }
    envelope(event_type, data, &["object", "request"])
}

fn envelope(event_type: Value, data: Value, required: &[&str]) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "additionalProperties": false,
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": event_type,
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {"type": "object", "additionalProperties": false,
                     "required": required, "properties": data}
        }
    })
}

fn test_entry() -> Value {
    let data = json!({
        "subscription_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "message": {"type": "string"}
    });
    let body = envelope(
        json!({"const": TEST_EVENT_TYPE}),
        data,
        &["subscription_id", "message"],
    );
    entry(
        "Sent to one subscription on request (`POST .../test`).",
        body,
        None,
    )
}

/// A `webhooks` entry: the POST a receiver gets, with the Standard Webhooks headers.
fn entry(about: &str, body: Value, example: Option<&Value>) -> Value {
    let header = |name: &str, about: &str, pattern: &str| {
        json!({"name": name, "in": "header", "required": true, "description": about,
               "schema": {"type": "string", "pattern": pattern}})
    };
    let mut media = json!({"schema": body});
    if let (Some(example), Some(map)) = (example, media.as_object_mut()) {
        map.insert("x-object-example".into(), example.clone());
    }
    let mut webhook = json!({"post": {
        "summary": about,
        "parameters": [
            header("webhook-id", "The message id, the same on every attempt.", "^msg_[A-Za-z0-9]{1,60}$"),
            header("webhook-timestamp", "Unix seconds of this attempt.", "^[0-9]{1,20}$"),
            header("webhook-signature", "`v1,<base64 HMAC-SHA256>` and/or `v1a,<base64 ed25519 signature>` (the subscription's `signature_scheme`), one per valid key, space-separated.",
                   "^v1a?,[A-Za-z0-9+/]+={0,2}( v1a?,[A-Za-z0-9+/]+={0,2})*$")
        ],
        "requestBody": {"required": true, "content": {"application/json": media}},
        "responses": {"2XX": {"description": "Received. Any other status, or none within `delivery.timeout`, is retried."}}
    }});
    if let Some(Value::Array(parameters)) = webhook.pointer_mut("/post/parameters") {
        parameters.extend(trace_headers());
    }
    webhook
}

/// The W3C Trace Context headers a webhook carries when the API request had them
/// (`crate::model::trace`).
fn trace_headers() -> [Value; 2] {
    [
        json!({"name": "traceparent", "in": "header", "required": false,
               "description": "The API request's W3C `traceparent`, unchanged, when it had a valid one.",
               "schema": {"type": "string", "maxLength": crate::model::trace::MAX_TRACEPARENT,
                          "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"}}),
        json!({"name": "tracestate", "in": "header", "required": false,
               "description": "The API request's W3C `tracestate`, unchanged, when it had a valid `traceparent` and a valid `tracestate`.",
               "schema": {"type": "string", "maxLength": crate::model::trace::MAX_TRACESTATE}}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn doc(config: &str) -> (Config, Value) {
        let config = parse(config.as_bytes()).unwrap();
        let doc = serde_json::from_slice(&document(&config)).unwrap();
        (config, doc)
    }

    #[test]
    fn paths_follow_the_prefix_and_the_document_is_public() {
        let (_, doc) = doc(r#"{"api": {"path_prefix": "/hooks"}}"#);
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/hooks/subscriptions/{id}"));
        assert!(!paths.keys().any(|p| p.starts_with("/webhooks")));
        assert_eq!(
            doc["paths"]["/hooks/openapi.json"]["get"]["security"],
            json!([])
        );
        assert_eq!(doc["openapi"], "3.1.0");
    }

    #[test]
    fn event_filters_are_the_configured_types_and_their_wildcards() {
        let rules = r#"{"events": [
            {"type": "order.line.added", "method": "POST", "path": "/o/{id}/lines"},
            {"type": "user.deleted", "method": "DELETE", "path": "/u/{id}",
             "include_object": false}]}"#;
        let (config, doc) = doc(rules);
        let filter = &doc["components"]["schemas"]["KnownEventFilter"]["anyOf"];
        assert_eq!(
            filter,
            &json!([{"enum": ["*", "order.line.added", "order.*", "order.line.*",
                              "user.deleted", "user.*", "webhook.test", "webhook.*"]}])
        );
        for name in filter[0]["enum"].as_array().unwrap() {
            assert!(config.knows_filter(name.as_str().unwrap()), "{name}");
        }
        for unknown in ["orders.*", "order.line", "user.created", "x.*"] {
            assert!(!config.knows_filter(unknown), "{unknown}");
        }
        let hooks = doc["webhooks"].as_object().unwrap();
        let keys: Vec<&str> = hooks.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        let body =
            |t: &str| &hooks[t]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            body("user.deleted")["properties"]["data"]["properties"]["object"],
            json!({"type": "null"})
        );
        assert_eq!(
            body("order.line.added")["properties"]["type"],
            json!({"const": "order.line.added"})
        );
    }

    #[test]
    fn inference_adds_its_patterns_and_entry_and_rule_schemas_get_an_id() {
        let (config, doc) = doc(r##"{"infer_events": true, "events": [
            {"type": "order.created", "method": "POST", "path": "/orders",
             "schema": {"$defs": {"n": {"type": "object"}}, "$ref": "#/$defs/n"}}]}"##);
        let filter = &doc["components"]["schemas"]["KnownEventFilter"]["anyOf"];
        assert_eq!(filter[1]["pattern"], INFERRED_TYPE);
        assert_eq!(filter[2]["pattern"], INFERRED_WILDCARD);
        assert!(config.knows_filter("invoices.*") && config.knows_filter("invoices.deleted"));
        assert!(!config.knows_filter("in2voices.*"));
        let object = &doc["webhooks"]["order.created"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"]["data"]["properties"]["object"];
        assert_eq!(
            object["anyOf"][0]["$id"],
            "urn:proxy-webhooks:object:order.created"
        );
        assert!(doc["webhooks"][INFERRED_ENTRY].is_object());
    }

    #[test]
    fn it_is_built_once_and_served_to_any_caller_by_get_only() {
        let config = Config::default();
        let first = answer("GET", &config);
        assert_eq!(first.status, 200);
        assert!(config.api_document.get().is_some());
        assert_eq!(answer("GET", &config).body, first.body);
        assert_eq!(answer("POST", &config).status, 405);
    }
}
