//! JSON for people: a value on one line when it fits in [`WIDTH`] columns, else one member per
//! line, indented by two spaces; `, ` and `: ` between members. Still plain JSON.
//!
//! serde_json's maps are sorted, so the members of the outer objects (a configuration and its
//! rules) are put in the order of [`FIRST`]; deeper ones (schemas, examples) stay sorted.

use serde_json::Value;

/// Columns a line may take, indentation included.
pub const WIDTH: usize = 100;

/// The order of a rule's fields, then the others sorted, in objects at most [`ORDERED_DEPTH`]
/// levels down.
pub const FIRST: &[&str] = &[
    "events",
    "type",
    "method",
    "path",
    "status",
    "description",
    "include_object",
    "schema",
    "example",
];
/// The configuration (0), its `events` (1) and each rule (2).
const ORDERED_DEPTH: usize = 2;

/// `value` laid out as the module says, without a final newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, 0, 0, &mut out);
    out
}

/// The members of an object at `depth`, in the order written.
fn members(map: &serde_json::Map<String, Value>, depth: usize) -> Vec<(&String, &Value)> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    if depth <= ORDERED_DEPTH {
        let rank = |k: &str| FIRST.iter().position(|f| *f == k).unwrap_or(FIRST.len());
        members.sort_by_key(|(k, _)| rank(k));
    }
    members
}

/// Writes `v` at `indent`, where the line already holds `used` columns (the key before it).
fn write(v: &Value, indent: usize, used: usize, out: &mut String) {
    let depth = indent / 2;
    let line = one_line(v, depth);
    let children: Vec<(Option<&String>, &Value)> = match v {
        Value::Object(map) => members(map, depth)
            .into_iter()
            .map(|(k, v)| (Some(k), v))
            .collect(),
        Value::Array(items) => items.iter().map(|v| (None, v)).collect(),
        _ => Vec::new(),
    };
    if used + line.len() <= WIDTH || children.is_empty() {
        out.push_str(&line);
        return;
    }
    let (open, close) = match v {
        Value::Object(_) => ('{', '}'),
        _ => ('[', ']'),
    };
    out.push(open);
    let inner = indent + 2;
    let count = children.len();
    for (i, (key, child)) in children.into_iter().enumerate() {
        out.push('\n');
        out.push_str(&" ".repeat(inner));
        let mut used = inner;
        if let Some(key) = key {
            let key = format!("{}: ", Value::String(key.clone()));
            used += key.len();
            out.push_str(&key);
        }
        let comma = usize::from(i + 1 < count);
        write(child, inner, used + comma, out);
        if comma == 1 {
            out.push(',');
        }
    }
    out.push('\n');
    out.push_str(&" ".repeat(indent));
    out.push(close);
}

/// `v` (at `depth`) on one line, with a space after each `,` and `:`.
fn one_line(v: &Value, depth: usize) -> String {
    match v {
        Value::Object(map) => {
            let members: Vec<String> = members(map, depth)
                .into_iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), one_line(v, depth + 1)))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| one_line(i, depth + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_values_stay_on_one_line() {
        let v =
            json!({"type": "a.b", "status": [201], "schema": {"type": "string"}, "z": 1, "a": 2});
        assert_eq!(
            to_string(&v),
            r#"{"type": "a.b", "status": [201], "schema": {"type": "string"}, "a": 2, "z": 1}"#
        );
        // Deeper than a rule, members stay sorted.
        let deep = json!([[[{"type": 1, "a": 2}]]]);
        assert_eq!(to_string(&deep), r#"[[[{"a": 2, "type": 1}]]]"#);
    }

    #[test]
    fn long_values_break_and_stay_json() {
        let long = "x".repeat(90);
        let v = json!({"events": [{"description": long, "id": 1}, {"id": 2}], "empty": {}, "quote": "\"\n"});
        let text = to_string(&v);
        assert_eq!(
            text,
            format!(
                "{{\n  \"events\": [\n    {{\n      \"description\": \"{long}\",\n      \"id\": 1\n    }},\n    {{\"id\": 2}}\n  ],\n  \"empty\": {{}},\n  \"quote\": \"\\\"\\n\"\n}}"
            )
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        assert!(text.lines().all(|l| l.len() <= WIDTH || l.contains(&long)));
    }
}
