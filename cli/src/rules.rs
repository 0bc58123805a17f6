//! `proxy-webhooks rules`: a plugin configuration from an OpenAPI document, one rule per
//! state-changing operation, checked by the plugin's own parser before it is printed.

use crate::naming::{self, Named};
use crate::openapi::{self, Operation, Success, Version};
use crate::schema::{self, Mode};
use proxy_webhooks::config;
use proxy_webhooks::model::rules::PathTemplate;
use serde::Serialize;
use serde_json::{json, Value};

/// A generated configuration and what the reader should know about it.
#[derive(Debug)]
pub struct Generated {
    pub config: Rules,
    /// One line each: operations left out, renamed, without schema, or with `include_object`
    /// off.
    pub warnings: Vec<String>,
}

/// The plugin configuration printed: the rules, and inference off (operations left out must
/// not come back as inferred events).
#[derive(Debug, Serialize)]
pub struct Rules {
    pub events: Vec<Rule>,
    pub infer_events: bool,
}

/// One `events[]` entry, fields in the order a reader wants them.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    #[serde(rename = "type")]
    pub event_type: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_object: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

/// The rules of `doc`, an OpenAPI 3.0 or 3.1 document read as JSON.
pub fn generate(doc: &Value) -> Result<Generated, String> {
    let version = openapi::version(doc)?;
    let (operations, mut warnings) = openapi::operations(doc)?;
    let mut drafts: Vec<(Named, Rule)> = Vec::new();
    for op in operations {
        match draft(doc, version, &op, &mut warnings) {
            Ok(Some(d)) => drafts.push(d),
            Ok(None) => {}
            Err(reason) => warnings.push(format!("{}: left out: {reason}", op.label())),
        }
    }
    let named: Vec<Named> = drafts.iter().map(|(n, _)| n.clone()).collect();
    let (types, renamed) = naming::disambiguate(&named);
    warnings.extend(renamed);
    let mut events: Vec<Rule> = drafts
        .into_iter()
        .zip(types)
        .map(|((_, rule), event_type)| Rule { event_type, ..rule })
        .collect();
    events.sort_by_key(|r| {
        let method = openapi::METHODS
            .iter()
            .position(|m| m.eq_ignore_ascii_case(&r.method));
        (naming::match_order(&r.path), r.path.clone(), method)
    });
    let rules = Rules {
        events,
        infer_events: false,
    };
    // Every rule was checked on its own; the whole must pass too, or this tool has a bug.
    let text = serde_json::to_vec(&rules).map_err(|e| e.to_string())?;
    config::parse(&text)
        .map_err(|e| format!("the generated configuration is invalid ({e}): please report this"))?;
    Ok(Generated {
        config: rules,
        warnings,
    })
}

/// The rule of one operation (its type not yet made unique), None when it is left out.
fn draft(
    doc: &Value,
    version: Version,
    op: &Operation<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<(Named, Rule)>, String> {
    let label = op.label();
    if let Some(word) = naming::not_a_state_change(&op.path, op.operation_id()) {
        warnings.push(format!(
            "{label}: left out: {word} names a login, token, session or search operation, not a state change (add a rule by hand if it is one)"
        ));
        return Ok(None);
    }
    let template = naming::template(&op.base, &op.path);
    PathTemplate::parse(&template)
        .map_err(|e| format!("{template:?} is not a rule path template: {e}"))?;
    let (success, problems) = openapi::success(doc, op.object);
    for problem in problems {
        warnings.push(format!(
            "{label}: {problem}: its schema and example are left out"
        ));
    }
    let event_type = naming::event_type(&op.method, &op.path, &success.codes)?;
    let status = match (success.codes.is_empty(), success.any_2xx) {
        (false, false) => Some(json!(success.codes)),
        (_, true) => Some(json!("2xx")),
        (true, false) => {
            warnings.push(format!(
                "{label}: documents no 2xx response; the rule matches any 2xx"
            ));
            None
        }
    };
    let mut rule = Rule {
        event_type: event_type.clone(),
        method: op.method.clone(),
        path: template,
        status,
        description: description(op.object),
        include_object: None,
        schema: None,
        example: success.example.cloned(),
    };
    add_schema(doc, version, &success, &mut rule, &label, warnings);
    check_example(&mut rule, &label, warnings);
    let named = Named {
        event_type,
        method: op.method.clone(),
        path: op.path.clone(),
    };
    Ok(Some((named, rule)))
}

/// The operation's `summary`, else its `description`, trimmed, cut to what the plugin takes.
fn description(operation: &Value) -> Option<String> {
    let text = ["summary", "description"]
        .iter()
        .filter_map(|k| operation.get(k).and_then(Value::as_str))
        .map(str::trim)
        .find(|t| !t.is_empty())?;
    let max = config::catalog::MAX_DESCRIPTION_CHARS;
    if text.chars().count() <= max {
        return Some(text.to_string());
    }
    let cut: String = text.chars().take(max - 1).collect();
    Some(format!("{}…", cut.trim_end()))
}

/// The response schema (all JSON 2xx bodies: one, or `anyOf` them), inlined, else with `$defs`
/// when that is too large for the plugin; and `include_object: false` without schema or example
/// when it has credential-like fields.
fn add_schema(
    doc: &Value,
    version: Version,
    success: &Success<'_>,
    rule: &mut Rule,
    label: &str,
    warnings: &mut Vec<String>,
) {
    if success.schemas.is_empty() {
        return;
    }
    let mut problem = String::new();
    let mut scanned = None;
    for mode in [Mode::Inline, Mode::Defs] {
        match convert_all(doc, version, &success.schemas, mode) {
            Ok(schema) => match fits("schema", &schema) {
                Ok(()) => {
                    scanned = Some(schema.clone());
                    rule.schema = Some(schema);
                    break;
                }
                Err(e) => {
                    problem = e;
                    scanned = Some(schema);
                }
            },
            Err(e) => problem = e.to_string(),
        }
    }
    let Some(schema) = scanned else {
        warnings.push(format!(
            "{label}: no schema ({problem}); check the response for credentials by hand"
        ));
        return;
    };
    if rule.schema.is_none() {
        warnings.push(format!("{label}: no schema: {problem}"));
    }
    let credentials = schema::credential_fields(&schema);
    if credentials.is_empty() {
        return;
    }
    warnings.push(format!(
        "{label}: include_object: false, as the response has credential-like fields ({}): its events carry data.object: null",
        credentials.join(", ")
    ));
    rule.include_object = Some(false);
    rule.schema = None;
    rule.example = None;
}

fn convert_all(
    doc: &Value,
    version: Version,
    schemas: &[&Value],
    mode: Mode,
) -> Result<Value, schema::SchemaError> {
    let mut converted = schemas
        .iter()
        .map(|s| schema::convert(doc, version, s, mode))
        .collect::<Result<Vec<Value>, _>>()?;
    Ok(match converted.len() {
        1 => converted.pop().unwrap_or(Value::Bool(true)),
        _ => json!({ "anyOf": converted }),
    })
}

/// Whether the plugin's parser takes `value` as a rule's `field` (`schema` or `example`): the
/// problem it names if not.
fn fits(field: &str, value: &Value) -> Result<(), String> {
    let text = json!({"events": [{"type": "a.b", "path": "/", field: value}]}).to_string();
    config::parse(text.as_bytes())
        .map(|_| ())
        .map_err(|e| e.problem)
}

/// An example the plugin's parser refuses (too large, too deep) is left out.
fn check_example(rule: &mut Rule, label: &str, warnings: &mut Vec<String>) {
    if let Some(Err(problem)) = rule.example.as_ref().map(|e| fits("example", e)) {
        warnings.push(format!("{label}: no example: {problem}"));
        rule.example = None;
    }
}

#[cfg(test)]
mod tests;
