//! A rule's event catalog fields: `description`, `schema` (a JSON Schema 2020-12 of the event's
//! `data.object`) and `example`. They are opaque values kept for the catalog and the API
//! description, so they are checked only for shape and size: bounded, because the plugin holds
//! them in memory and answers them on every catalog call.

use super::{as_str, err, ConfigError, Obj};
use crate::model::rules::EventDoc;
use serde_json::Value;

/// `events[].description`: characters at most.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// `events[].schema` and `events[].example`: bytes at most, serialized as compact JSON.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// `events[].schema` and `events[].example`: nested arrays and objects at most.
pub const MAX_VALUE_DEPTH: usize = 64;

/// The rule's catalog fields, None when it has none.
pub(super) fn parse_doc(o: &Obj<'_>) -> Result<Option<Box<EventDoc>>, ConfigError> {
    let description = o
        .get("description")
        .map(|v| parse_description(&o.field("description"), v))
        .transpose()?;
    let schema = o
        .get("schema")
        .map(|v| parse_schema(&o.field("schema"), v))
        .transpose()?;
    let example = o
        .get("example")
        .map(|v| check_bounds(&o.field("example"), v).map(|()| v.clone()))
        .transpose()?;
    if description.is_none() && schema.is_none() && example.is_none() {
        return Ok(None);
    }
    Ok(Some(Box::new(EventDoc {
        description,
        schema,
        example,
    })))
}

fn parse_description(field: &str, v: &Value) -> Result<String, ConfigError> {
    let s = as_str(field, v)?;
    if s.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(err(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(s.to_string())
}

/// A JSON Schema is an object or a boolean (2020-12, section 4.3); its keywords are not checked.
fn parse_schema(field: &str, v: &Value) -> Result<Value, ConfigError> {
    if !(v.is_object() || v.is_boolean()) {
        return Err(err(
            field,
            "must be a JSON Schema (2020-12): an object or a boolean",
        ));
    }
    check_bounds(field, v)?;
    Ok(v.clone())
}

fn check_bounds(field: &str, v: &Value) -> Result<(), ConfigError> {
    if depth(v, 0) > MAX_VALUE_DEPTH {
        return Err(err(
            field,
            format!("must nest at most {MAX_VALUE_DEPTH} arrays and objects deep"),
        ));
    }
    // Serialized once, at start-up, with the serializer the API's answers use already (a
    // counting writer of its own would add a copy of the serializer to the .wasm).
    let size = serde_json::to_vec(v).map_or(0, |bytes| bytes.len());
    if size > MAX_VALUE_BYTES {
        return Err(err(
            field,
            format!("is {size} bytes as JSON; at most {MAX_VALUE_BYTES} are allowed"),
        ));
    }
    Ok(())
}

/// How deeply arrays and objects nest in `v` (a scalar is 0), counted no further than one past
/// the limit. serde_json's parser refuses more than 128 levels, so the recursion is bounded.
fn depth(v: &Value, at: usize) -> usize {
    if at > MAX_VALUE_DEPTH {
        return at;
    }
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return at,
    };
    children.map(|c| depth(c, at + 1)).max().unwrap_or(at + 1)
}
