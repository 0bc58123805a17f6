use super::*;
use serde_json::json;

fn doc(paths: Value) -> Value {
    json!({"openapi": "3.0.3", "paths": paths})
}

fn ok(body: Value) -> Value {
    json!({"description": "", "content": {"application/json": {"schema": body}}})
}

/// The rules as JSON, and the warnings.
fn run(d: &Value) -> (Vec<Value>, Vec<String>) {
    let g = generate(d).unwrap();
    let events = serde_json::to_value(&g.config.events).unwrap();
    (events.as_array().unwrap().clone(), g.warnings)
}

#[test]
fn not_openapi_3() {
    assert!(generate(&json!({"swagger": "2.0"}))
        .unwrap_err()
        .contains("Swagger 2.0"));
    let (events, warnings) = run(&json!({"openapi": "3.1.0"}));
    assert!(events.is_empty() && warnings.is_empty());
}

#[test]
fn statuses() {
    let d = doc(json!({
        "/a": {"post": {"responses": {"201": {"description": ""}, "202": {"description": ""}, "400": {"description": ""}}}},
        "/b": {"post": {"responses": {"2XX": {"description": ""}, "200": {"description": ""}}}},
        "/c": {"post": {"responses": {"default": {"description": ""}}}}
    }));
    let (events, warnings) = run(&d);
    let statuses: Vec<&Value> = events.iter().map(|e| &e["status"]).collect();
    assert_eq!(statuses, [&json!([201, 202]), &json!("2xx"), &Value::Null]);
    assert_eq!(
        warnings,
        ["POST /c: documents no 2xx response; the rule matches any 2xx"]
    );
}

#[test]
fn descriptions_prefer_the_summary_and_fit_the_plugin() {
    let long = "x".repeat(1500);
    let d = doc(json!({
        "/a": {"post": {"summary": "  Short  ", "description": "Long", "responses": {}}},
        "/b": {"post": {"summary": "", "description": long, "responses": {}}},
        "/c": {"post": {"responses": {}}}
    }));
    let (events, _) = run(&d);
    assert_eq!(events[0]["description"], "Short");
    let cut = events[1]["description"].as_str().unwrap();
    assert_eq!(cut.chars().count(), 1000);
    assert!(cut.ends_with("x…"));
    assert!(events[2].get("description").is_none());
}

#[test]
fn several_success_bodies_are_any_of() {
    let d = doc(json!({"/a": {"put": {"responses": {
        "200": ok(json!({"type": "object"})),
        "201": ok(json!({"type": "array"})),
        "202": ok(json!({"type": "object"}))
    }}}}));
    let (events, _) = run(&d);
    assert_eq!(
        events[0]["schema"],
        json!({"anyOf": [{"type": "object"}, {"type": "array"}]})
    );
}

#[test]
fn unreadable_responses_keep_the_rule_without_schema() {
    let d = doc(json!({
        "/a": {"post": {"responses": {"201": {"$ref": "#/components/responses/Gone"}}}},
        "/b": {"post": {"responses": {"201": ok(json!({"$ref": "https://example.com/s.json"}))}}}
    }));
    let (events, warnings) = run(&d);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.get("schema").is_none()));
    assert_eq!(
        warnings,
        [
            "POST /a: responses.201: $ref \"#/components/responses/Gone\" points to nothing in the document: its schema and example are left out",
            "POST /b: no schema ($ref \"https://example.com/s.json\" points outside the document (only local \"#/...\" references are followed)); check the response for credentials by hand",
        ]
    );
}

/// A document whose `Big` schema has `n` properties, each a `Leaf` of ~40 bytes inlined.
fn big(n: usize, leaf_pattern_len: usize) -> Value {
    let properties: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            (
                format!("p{i}"),
                json!({"$ref": "#/components/schemas/Leaf"}),
            )
        })
        .collect();
    json!({"openapi": "3.1.0",
           "paths": {"/a": {"post": {"responses": {"201": ok(json!({"$ref": "#/components/schemas/Big"}))}}}},
           "components": {"schemas": {
               "Big": {"type": "object", "properties": properties},
               "Leaf": {"type": "string", "pattern": "x".repeat(leaf_pattern_len)}}}})
}

#[test]
fn schemas_too_large_inlined_use_defs_then_are_left_out() {
    // 1500 inlined leaves of ~70 bytes are over 64 KiB; with $defs each is a short $ref.
    let (events, warnings) = run(&big(1500, 30));
    let schema = &events[0]["schema"];
    assert_eq!(schema["$ref"], "#/$defs/Big");
    assert_eq!(
        schema["$defs"]["Big"]["properties"]["p0"],
        json!({"$ref": "#/$defs/Leaf"})
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    // 5000 properties are over 64 KiB even as $refs.
    let (events, warnings) = run(&big(5000, 30));
    assert!(events[0].get("schema").is_none());
    assert_eq!(
        warnings,
        [format!(
            "POST /a: no schema: is {} bytes as JSON; at most 65536 are allowed",
            serde_json::to_string(
                &schema::convert(
                    &big(5000, 30),
                    Version::V31,
                    &json!({"$ref": "#/components/schemas/Big"}),
                    Mode::Defs
                )
                .unwrap()
            )
            .unwrap()
            .len()
        )]
    );
}

#[test]
fn credentials_turn_the_object_off_even_in_a_schema_too_large_to_keep() {
    let mut d = big(5000, 30);
    d["components"]["schemas"]["Big"]["properties"]["refresh_token"] = json!({"type": "string"});
    let (events, warnings) = run(&d);
    assert_eq!(events[0]["include_object"], false);
    assert!(events[0].get("schema").is_none());
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings[1].contains("credential-like fields (refresh_token)"),
        "{warnings:?}"
    );
}

#[test]
fn examples_too_large_are_left_out() {
    let d = doc(
        json!({"/a": {"post": {"responses": {"201": {"description": "", "content": {
        "application/json": {"example": {"pad": "x".repeat(70_000)}}}}}}}}),
    );
    let (events, warnings) = run(&d);
    assert!(events[0].get("example").is_none());
    assert_eq!(
        warnings,
        ["POST /a: no example: is 70010 bytes as JSON; at most 65536 are allowed"]
    );
}

#[test]
fn a_type_depends_on_its_own_operation_only() {
    let base = doc(json!({
        "/orders": {"post": {"responses": {"201": {"description": ""}}}},
        "/orders/{id}": {"patch": {"responses": {"200": {"description": ""}}}},
        "/orders/{id}/cancel": {"post": {"responses": {"200": {"description": ""}}}}
    }));
    let types = |d: &Value| -> Vec<(String, String)> {
        run(d)
            .0
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["type"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = types(&base);
    let mut more = base.clone();
    for (path, item) in [
        (
            "/customers/{id}/orders",
            json!({"post": {"responses": {"201": {"description": ""}}}}),
        ),
        (
            "/orders/{id}/refund",
            json!({"post": {"responses": {"200": {"description": ""}}}}),
        ),
        (
            "/orders/{id}",
            json!({"put": {"responses": {"200": {"description": ""}}}, "patch": {"responses": {"200": {"description": ""}}}}),
        ),
        (
            "/v2/orders",
            json!({"post": {"responses": {"201": {"description": ""}}}}),
        ),
    ] {
        more["paths"][path] = item;
    }
    let after = types(&more);
    for kept in &before {
        assert!(after.contains(kept), "{kept:?} changed: {after:?}");
    }
    assert_eq!(after.len(), 7);
}

#[test]
fn rules_are_in_match_order_and_load() {
    let d = doc(json!({
        "/orders/{id}": {"delete": {"responses": {}}, "post": {"responses": {}}},
        "/orders/archive": {"post": {"responses": {}}},
        "/orders": {"post": {"responses": {}}}
    }));
    let (events, _) = run(&d);
    let order: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "POST /orders",
            "POST /orders/archive",
            "POST /orders/{id}",
            "DELETE /orders/{id}"
        ]
    );
    let g = generate(&d).unwrap();
    let text = serde_json::to_vec(&g.config).unwrap();
    let config = config::parse(&text).unwrap();
    assert!(!config.infer_events);
    assert_eq!(config.events.len(), 4);
}
