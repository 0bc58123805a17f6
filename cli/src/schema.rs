//! OpenAPI Schema Objects as JSON Schema 2020-12, self-contained: what an event's `schema`
//! must be once it leaves the document it was written in.
//!
//! - OpenAPI 3.0's dialect is converted: `nullable: true` becomes a `type` array with `"null"`
//!   (and `null` in an `enum`), or `anyOf` with `{"type": "null"}` where there is no `type`;
//!   boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric form; `example` becomes
//!   `examples`. 3.1 schemas are 2020-12 already; only their `$ref`s are rewritten.
//! - Local `$ref`s (`#/components/schemas/...`, any JSON pointer into the document) are inlined,
//!   except recursive ones, which move to `$defs` (or, in [`Mode::Defs`], every one does).
//! - OpenAPI's own keywords (`discriminator`, `xml`, `externalDocs`) and `x-` extensions are
//!   dropped: they mean nothing to a JSON Schema validator, and a discriminator's mapping names
//!   the document's components.

use crate::openapi::{resolve_pointer, Version};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How `$ref`s are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inlined where they are used (readable); recursive ones in `$defs`.
    Inline,
    /// Every referenced schema once in `$defs` (compact, for large documents).
    Defs,
}

/// Converted schema nodes at most: inlining can multiply a document's schemas, and a document
/// can be written to make it explode.
pub const MAX_NODES: usize = 20_000;

/// Why a schema could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// A `$ref` this tool does not follow (another file, a URL) or that leads nowhere.
    Ref(String),
    /// More than [`MAX_NODES`] nodes.
    TooLarge,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaError::Ref(problem) => f.write_str(problem),
            SchemaError::TooLarge => write!(f, "more than {MAX_NODES} schema nodes once inlined"),
        }
    }
}

/// `schema` (a Schema Object of `doc`) as a self-contained JSON Schema 2020-12.
pub fn convert(
    doc: &Value,
    version: Version,
    schema: &Value,
    mode: Mode,
) -> Result<Value, SchemaError> {
    let mut c = Converter {
        doc,
        version,
        mode,
        nodes: 0,
        stack: Vec::new(),
        defs: BTreeMap::new(),
        names: Vec::new(),
    };
    let mut root = c.schema(schema)?;
    // A recursive schema at the root is its own `$defs` entry: point there instead of repeating it.
    if let Some(name) = c.root_def(schema) {
        let mut map = Map::new();
        map.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
        root = Value::Object(map);
    }
    if !c.names.is_empty() {
        let mut defs = Map::new();
        for (pointer, name) in &c.names {
            let body = c
                .defs
                .get(pointer)
                .cloned()
                .flatten()
                .unwrap_or(Value::Bool(true));
            defs.insert(name.clone(), body);
        }
        root = with_defs(root, defs);
    }
    Ok(root)
}

/// `root` with `$defs` beside its keywords (wrapped in `allOf` if it is a boolean).
fn with_defs(root: Value, defs: Map<String, Value>) -> Value {
    match root {
        Value::Object(mut map) => {
            map.insert("$defs".into(), Value::Object(defs));
            Value::Object(map)
        }
        other => {
            let mut map = Map::new();
            map.insert("allOf".into(), Value::Array(vec![other]));
            map.insert("$defs".into(), Value::Object(defs));
            Value::Object(map)
        }
    }
}

struct Converter<'d> {
    doc: &'d Value,
    version: Version,
    mode: Mode,
    nodes: usize,
    /// The `$ref`s being inlined, outermost first: meeting one again is recursion.
    stack: Vec<String>,
    /// Converted `$defs` bodies by pointer (None while being converted).
    defs: BTreeMap<String, Option<Value>>,
    /// `$defs` names in the order first met, by pointer.
    names: Vec<(String, String)>,
}

/// Keywords whose value is one schema.
const ONE_SCHEMA: &[&str] = &[
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
];
/// Keywords whose value is an array of schemas.
const SCHEMA_LIST: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is a map of schemas.
const SCHEMA_MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "dependentSchemas",
    "$defs",
];
/// OpenAPI's keywords, meaningless to a JSON Schema validator.
const DROPPED: &[&str] = &["discriminator", "xml", "externalDocs"];

impl Converter<'_> {
    fn schema(&mut self, v: &Value) -> Result<Value, SchemaError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SchemaError::TooLarge);
        }
        let Some(map) = v.as_object() else {
            // A boolean schema, or something that is not a schema: kept as it is.
            return Ok(v.clone());
        };
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            return self.reference(reference, map);
        }
        let mut out = Map::new();
        for (key, value) in map {
            if key.starts_with("x-") || DROPPED.contains(&key.as_str()) {
                continue;
            }
            let converted = match key.as_str() {
                "items" if value.is_array() => {
                    // Draft 4's tuple form, which some 3.0 documents use.
                    out.insert("prefixItems".into(), self.list(value)?);
                    continue;
                }
                k if ONE_SCHEMA.contains(&k) => self.schema(value)?,
                k if SCHEMA_LIST.contains(&k) => self.list(value)?,
                k if SCHEMA_MAP.contains(&k) => self.map(value)?,
                "definitions" => {
                    out.insert("$defs".into(), self.map(value)?);
                    continue;
                }
                _ => value.clone(),
            };
            out.insert(key.clone(), converted);
        }
        if let Some(example) = out.remove("example") {
            out.entry("examples")
                .or_insert_with(|| Value::Array(vec![example]));
        }
        Ok(match self.version {
            Version::V30 => from_30(out),
            Version::V31 => Value::Object(out),
        })
    }

    /// The `$defs` name of the schema `root` refers to, when it is nothing but that reference
    /// (siblings count in 3.1 only) and the reference is recursive.
    fn root_def(&self, root: &Value) -> Option<String> {
        let map = root.as_object()?;
        let pointer = map.get("$ref")?.as_str()?;
        if self.version == Version::V31 && map.len() > 1 {
            return None;
        }
        self.names
            .iter()
            .find(|(p, _)| p == pointer)
            .map(|(_, name)| name.clone())
    }

    fn list(&mut self, v: &Value) -> Result<Value, SchemaError> {
        match v.as_array() {
            Some(items) => items
                .iter()
                .map(|s| self.schema(s))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            None => Ok(v.clone()),
        }
    }

    fn map(&mut self, v: &Value) -> Result<Value, SchemaError> {
        match v.as_object() {
            Some(entries) => {
                let mut out = Map::new();
                for (name, s) in entries {
                    out.insert(name.clone(), self.schema(s)?);
                }
                Ok(Value::Object(out))
            }
            None => Ok(v.clone()),
        }
    }

    /// A `$ref` with its siblings (3.0 ignores them, 3.1 applies them beside the target).
    fn reference(&mut self, pointer: &str, map: &Map<String, Value>) -> Result<Value, SchemaError> {
        let target = resolve_pointer(self.doc, pointer).map_err(SchemaError::Ref)?;
        let recursive = self.stack.iter().any(|p| p == pointer);
        let resolved = match (self.mode, recursive) {
            (Mode::Inline, false) => {
                self.stack.push(pointer.to_string());
                let inlined = self.schema(target);
                self.stack.pop();
                inlined?
            }
            _ => self.in_defs(pointer, target)?,
        };
        let mut siblings: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| k.as_str() != "$ref")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.version == Version::V30 || siblings.is_empty() {
            return Ok(resolved);
        }
        let Value::Object(siblings_converted) =
            self.schema(&Value::Object(std::mem::take(&mut siblings)))?
        else {
            return Ok(resolved);
        };
        let mut out = siblings_converted;
        out.insert("allOf".into(), Value::Array(vec![resolved]));
        Ok(Value::Object(out))
    }

    /// `{"$ref": "#/$defs/<name>"}`, converting the target into `$defs` the first time.
    fn in_defs(&mut self, pointer: &str, target: &Value) -> Result<Value, SchemaError> {
        let name = match self.names.iter().find(|(p, _)| p == pointer) {
            Some((_, name)) => name.clone(),
            None => {
                let name = self.def_name(pointer);
                self.names.push((pointer.to_string(), name.clone()));
                self.defs.insert(pointer.to_string(), None);
                // Inside its own definition, the schema is inlined again down to its recursion.
                let outer = std::mem::replace(&mut self.stack, vec![pointer.to_string()]);
                let body = self.schema(target);
                self.stack = outer;
                self.defs.insert(pointer.to_string(), Some(body?));
                name
            }
        };
        let mut out = Map::new();
        out.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
        Ok(Value::Object(out))
    }

    /// The pointer's last part, in letters, digits, `_`, `.` and `-` (so that it needs no
    /// escaping in a pointer or a URI fragment), made unique.
    fn def_name(&self, pointer: &str) -> String {
        let last = pointer.rsplit('/').next().unwrap_or_default();
        let last = crate::openapi::percent_decode(last)
            .replace("~1", "/")
            .replace("~0", "~");
        let mut base: String = last
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() || "_.-".contains(c) {
                true => c,
                false => '_',
            })
            .collect();
        if base.is_empty() {
            base = "schema".into();
        }
        let taken = |n: &str| self.names.iter().any(|(_, name)| name == n);
        let mut name = base.clone();
        let mut n = 2;
        while taken(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }
}

/// OpenAPI 3.0's `nullable` and boolean exclusive bounds, in 2020-12's terms.
fn from_30(mut out: Map<String, Value>) -> Value {
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(on)) = out.get(exclusive).cloned() {
            out.remove(exclusive);
            if on {
                if let Some(limit) = out.remove(bound) {
                    out.insert(exclusive.into(), limit);
                }
            }
        }
    }
    let nullable = out.remove("nullable") == Some(Value::Bool(true));
    if !nullable {
        return Value::Object(out);
    }
    if let Some(Value::Array(values)) = out.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
    match out.get("type").cloned() {
        Some(Value::String(t)) => {
            out.insert(
                "type".into(),
                Value::Array(vec![Value::String(t), Value::String("null".into())]),
            );
            Value::Object(out)
        }
        _ => {
            let mut null = Map::new();
            null.insert("type".into(), Value::String("null".into()));
            let mut any = Map::new();
            any.insert(
                "anyOf".into(),
                Value::Array(vec![Value::Object(out), Value::Object(null)]),
            );
            Value::Object(any)
        }
    }
}

/// Property names that carry credentials, compared lowercase without `_` and `-`: a name equal
/// to or ending in one of these (`token`, `access_token`, `refreshToken`, `client_secret`,
/// `api-key`, `private_key`, `password`, `new_password`...).
pub const CREDENTIAL_ENDINGS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "apikey",
    "privatekey",
    "credential",
    "credentials",
];

/// Whether a property name looks like it holds a credential (see [`CREDENTIAL_ENDINGS`]).
pub fn is_credential_name(name: &str) -> bool {
    let normal: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect();
    CREDENTIAL_ENDINGS.iter().any(|end| normal.ends_with(end))
}

/// The credential-like property names anywhere in a converted schema, sorted, without repeats.
pub fn credential_fields(schema: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_credentials(schema, &mut found);
    found.sort();
    found.dedup();
    found
}

fn collect_credentials(v: &Value, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                found.extend(properties.keys().filter(|k| is_credential_name(k)).cloned());
            }
            for (key, child) in map {
                // Data, not schemas: an example holding a "token" key describes no field.
                if !matches!(key.as_str(), "examples" | "default" | "const" | "enum") {
                    collect_credentials(child, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_credentials(i, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
