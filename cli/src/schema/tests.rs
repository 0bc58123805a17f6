use super::*;
use serde_json::json;

fn v30(doc: &Value, schema: Value) -> Value {
    convert(doc, Version::V30, &schema, Mode::Inline).unwrap()
}

fn v31(doc: &Value, schema: Value) -> Value {
    convert(doc, Version::V31, &schema, Mode::Inline).unwrap()
}

#[test]
fn nullable_becomes_a_type_array_or_any_of_null() {
    let doc = json!({});
    assert_eq!(
        v30(&doc, json!({"type": "string", "nullable": true})),
        json!({"type": ["string", "null"]})
    );
    assert_eq!(
        v30(
            &doc,
            json!({"type": "string", "enum": ["a"], "nullable": true})
        ),
        json!({"type": ["string", "null"], "enum": ["a", null]})
    );
    assert_eq!(
        v30(
            &doc,
            json!({"allOf": [{"type": "object"}], "nullable": true, "description": "d"})
        ),
        json!({"anyOf": [{"allOf": [{"type": "object"}], "description": "d"}, {"type": "null"}]})
    );
    assert_eq!(
        v30(&doc, json!({"type": "integer", "nullable": false})),
        json!({"type": "integer"})
    );
    // 3.1 has no `nullable`: it is left to the validator to ignore.
    assert_eq!(
        v31(&doc, json!({"type": "string", "nullable": true})),
        json!({"type": "string", "nullable": true})
    );
}

#[test]
fn boolean_exclusive_bounds_become_numbers() {
    let doc = json!({});
    assert_eq!(
        v30(
            &doc,
            json!({"minimum": 0, "exclusiveMinimum": true, "maximum": 9, "exclusiveMaximum": true})
        ),
        json!({"exclusiveMinimum": 0, "exclusiveMaximum": 9})
    );
    assert_eq!(
        v30(&doc, json!({"minimum": 0, "exclusiveMinimum": false})),
        json!({"minimum": 0})
    );
    assert_eq!(v30(&doc, json!({"exclusiveMaximum": true})), json!({}));
    assert_eq!(
        v31(&doc, json!({"exclusiveMinimum": 0})),
        json!({"exclusiveMinimum": 0})
    );
}

#[test]
fn openapi_keywords_extensions_and_example_are_translated() {
    let doc = json!({});
    let schema = json!({"type": "object", "x-owner": "t", "discriminator": {"propertyName": "k"},
                        "xml": {"name": "n"}, "externalDocs": {"url": "u"}, "example": {"k": 1},
                        "properties": {"k": {"type": "string", "example": "a", "examples": ["b"]}}});
    assert_eq!(
        v30(&doc, schema),
        json!({"type": "object", "examples": [{"k": 1}],
               "properties": {"k": {"type": "string", "examples": ["b"]}}})
    );
    // Data is never read as schemas: `default`, `enum`, `const` stay as written.
    let data = json!({"default": {"$ref": "#/x", "nullable": true}, "const": {"x-a": 1}});
    assert_eq!(v30(&doc, data.clone()), data);
    // Draft 4's tuple `items`.
    assert_eq!(
        v30(
            &doc,
            json!({"items": [{"type": "string", "nullable": true}]})
        ),
        json!({"prefixItems": [{"type": ["string", "null"]}]})
    );
}

#[test]
fn refs_are_inlined_with_3_1_siblings_kept() {
    let doc = json!({"components": {"schemas": {
        "Id": {"type": "string", "nullable": true},
        "Pair": {"type": "array", "items": {"$ref": "#/components/schemas/Id"}}}}});
    let r = json!({"$ref": "#/components/schemas/Pair", "description": "ignored in 3.0"});
    assert_eq!(
        v30(&doc, r.clone()),
        json!({"type": "array", "items": {"type": ["string", "null"]}})
    );
    // 3.1 keeps the siblings beside the inlined target (and has no `nullable` to convert).
    assert_eq!(
        v31(&doc, r),
        json!({"description": "ignored in 3.0",
               "allOf": [{"type": "array", "items": {"type": "string", "nullable": true}}]})
    );
}

#[test]
fn recursion_moves_to_defs() {
    let doc = json!({"components": {"schemas": {
        "Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                                                  "tag": {"$ref": "#/components/schemas/Tag"}}},
        "Tag": {"type": "string"},
        "Tree": {"type": "object", "properties": {"root": {"$ref": "#/components/schemas/Node"}}}}}});
    let node = json!({"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                                                       "tag": {"type": "string"}}});
    assert_eq!(
        v30(&doc, json!({"$ref": "#/components/schemas/Node"})),
        json!({"$ref": "#/$defs/Node", "$defs": {"Node": node}})
    );
    // Below the root, the first level is inlined and the recursion refers to $defs.
    assert_eq!(
        v30(&doc, json!({"$ref": "#/components/schemas/Tree"})),
        json!({"type": "object", "properties": {"root": node}, "$defs": {"Node": node}})
    );
}

#[test]
fn defs_mode_writes_every_reference_once() {
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "properties": {"b1": {"$ref": "#/components/schemas/B"}, "b2": {"$ref": "#/components/schemas/B"}}},
        "B": {"type": "integer"},
        "weird name": {"type": "null"}},
        "other": {"B": {"type": "boolean"}}}});
    let schema = json!({"allOf": [{"$ref": "#/components/schemas/A"}, {"$ref": "#/components/other/B"},
                                  {"$ref": "#/components/schemas/weird%20name"}]});
    assert_eq!(
        convert(&doc, Version::V30, &schema, Mode::Defs).unwrap(),
        json!({"allOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B_2"}, {"$ref": "#/$defs/weird_name"}],
               "$defs": {"A": {"type": "object", "properties": {"b1": {"$ref": "#/$defs/B"}, "b2": {"$ref": "#/$defs/B"}}},
                         "B": {"type": "integer"}, "B_2": {"type": "boolean"}, "weird_name": {"type": "null"}}})
    );
}

#[test]
fn bad_refs_and_explosions_are_refused() {
    let doc = json!({});
    assert_eq!(
        convert(&doc, Version::V31, &json!({"$ref": "other.yaml#/A"}), Mode::Inline),
        Err(SchemaError::Ref("$ref \"other.yaml#/A\" points outside the document (only local \"#/...\" references are followed)".into()))
    );
    assert!(matches!(
        convert(&doc, Version::V31, &json!({"$ref": "#/components/schemas/Missing"}), Mode::Inline),
        Err(SchemaError::Ref(e)) if e.contains("points to nothing")
    ));
    // Each level refers to the next one ten times: inlining it would take 10^6 nodes.
    let mut schemas = Map::new();
    for level in 0..6 {
        let next = json!({"$ref": format!("#/components/schemas/L{}", level + 1)});
        let properties: Map<String, Value> =
            (0..10).map(|i| (format!("p{i}"), next.clone())).collect();
        schemas.insert(
            format!("L{level}"),
            json!({"type": "object", "properties": properties}),
        );
    }
    schemas.insert("L6".into(), json!({"type": "string"}));
    let doc = json!({"components": {"schemas": schemas}});
    let root = json!({"$ref": "#/components/schemas/L0"});
    assert_eq!(
        convert(&doc, Version::V30, &root, Mode::Inline),
        Err(SchemaError::TooLarge)
    );
    let compact = convert(&doc, Version::V30, &root, Mode::Defs).unwrap();
    assert_eq!(compact["$defs"].as_object().unwrap().len(), 7);
}

#[test]
fn credential_fields_at_any_depth() {
    let schema = json!({"type": "object", "properties": {
        "id": {"type": "string"},
        "access_token": {"type": "string"},
        "owner": {"properties": {"Password": {}, "password_changed_at": {}}},
        "keys": {"items": {"properties": {"api-key": {}, "tokens_left": {}}}},
        "nested": {"anyOf": [{"properties": {"clientSecret": {}}}]}},
        "examples": [{"properties": {"token": 1}}],
        "$defs": {"X": {"properties": {"privateKey": {}}}}});
    assert_eq!(
        credential_fields(&schema),
        [
            "Password",
            "access_token",
            "api-key",
            "clientSecret",
            "privateKey"
        ]
    );
    assert!(credential_fields(&json!({"properties": {"author": {}, "tokenizer": {}}})).is_empty());
}
