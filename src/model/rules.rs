//! Event detection: which responses become events, and with which type.
//!
//! Runs on every response the filter sees, so `detect` returns early and allocates nothing unless
//! an event is actually produced.

use crate::model::audience::Audience;
use serde_json::Value;

/// The methods that change state; only they ever produce events.
pub const MUTATING_METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// Event types are bounded so they fit comfortably in headers, logs and registry records.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// One configured `events[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRule {
    pub event_type: String,
    /// Uppercase methods; an empty list never matches.
    pub methods: Vec<String>,
    pub path: PathTemplate,
    pub status: StatusMatch,
    /// The rule's own `audience`, else the top-level default.
    pub audience: Audience,
    /// `include_object` (default true): whether `data.object` carries the response body.
    pub include_object: bool,
    /// What the event catalog tells consumers of these events; None when the rule says nothing.
    /// Boxed so that detection, which walks the rules on every response, never touches it.
    pub doc: Option<Box<EventDoc>>,
}

/// A rule's `description`, `schema` (a JSON Schema 2020-12 of `data.object`) and `example`: read
/// by the event catalog and the API description, never by detection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventDoc {
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub example: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A path template such as `/orders/{id}` or `/files/{*rest}`.
///
/// Matching works on raw path segments: percent-encoding is neither decoded nor normalised, so
/// `/a%2Fb` is one segment. One trailing `/` is ignored on both sides (`/orders/` matches
/// `/orders`). Empty segments (`//`) never match a literal or a `{name}`, so a doubled slash does
/// not silently match a template. A trailing `{*rest}` captures the remainder without its leading
/// `/`, possibly empty: `/files/{*rest}` matches `/files` with `rest = ""`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl PathTemplate {
    /// Parses and validates a template; the error text is meant for the configuration log line.
    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let body = template
            .strip_prefix('/')
            .ok_or_else(|| "path must start with '/'".to_string())?;
        let body = trim_trailing_slash(body);
        let mut segments = Vec::new();
        if !body.is_empty() {
            for raw in body.split('/') {
                let segment = parse_segment(raw)?;
                check_placement(&segments, &segment)?;
                segments.push(segment);
            }
        }
        Ok(PathTemplate {
            source: template.to_string(),
            segments,
        })
    }

    /// The captured parameters, in template order, when `path` (without query string) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        if !self.walk(path, &mut |_, _| {}) {
            return None;
        }
        // Second pass only on success, so a miss never allocates.
        let mut params = Vec::new();
        self.walk(path, &mut |name, value| {
            params.push((name.to_string(), value.to_string()))
        });
        Some(params)
    }

    /// The template as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `{name}` or `{*name}` is one of the template's captures.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) | Segment::Rest(n) if n == name))
    }

    /// Walks `path` against the segments, reporting captures; true when the whole path matched.
    fn walk(&self, path: &str, capture: &mut dyn FnMut(&str, &str)) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut rest = trim_trailing_slash(body);
        let mut consumed_all = rest.is_empty();
        for segment in &self.segments {
            if let Segment::Rest(name) = segment {
                capture(name, if consumed_all { "" } else { rest });
                return true;
            }
            if consumed_all {
                return false;
            }
            let (head, tail) = match rest.split_once('/') {
                Some((head, tail)) => (head, Some(tail)),
                None => (rest, None),
            };
            if !segment_matches(segment, head, capture) {
                return false;
            }
            match tail {
                Some(tail) => rest = tail,
                None => consumed_all = true,
            }
        }
        consumed_all
    }
}

/// Drops one trailing '/', but not the only one left: `//` is a doubled slash, not the root.
fn trim_trailing_slash(body: &str) -> &str {
    match body.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => body,
    }
}

fn segment_matches(segment: &Segment, value: &str, capture: &mut dyn FnMut(&str, &str)) -> bool {
    match segment {
        Segment::Literal(lit) => lit == value,
        Segment::Param(name) if !value.is_empty() => {
            capture(name, value);
            true
        }
        _ => false,
    }
}

fn parse_segment(raw: &str) -> Result<Segment, String> {
    if raw.is_empty() {
        return Err("path must not contain empty segments (\"//\")".to_string());
    }
    if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let (name, rest) = match inner.strip_prefix('*') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        if !is_valid_param_name(name) {
            return Err(format!(
                "invalid parameter {raw:?}: names are letters, digits and '_'"
            ));
        }
        let name = name.to_string();
        return Ok(if rest {
            Segment::Rest(name)
        } else {
            Segment::Param(name)
        });
    }
    if let Some(bad) = raw.chars().find(|c| !is_literal_char(*c)) {
        return Err(format!("invalid character {bad:?} in path segment {raw:?}"));
    }
    Ok(Segment::Literal(raw.to_string()))
}

/// Refuses a segment after `{*rest}` and a parameter name used twice.
fn check_placement(before: &[Segment], segment: &Segment) -> Result<(), String> {
    if before.iter().any(|s| matches!(s, Segment::Rest(_))) {
        return Err("a {*name} parameter must be the last segment".to_string());
    }
    let name = match segment {
        Segment::Param(name) | Segment::Rest(name) => name,
        Segment::Literal(_) => return Ok(()),
    };
    let duplicate = before
        .iter()
        .any(|s| matches!(s, Segment::Param(n) | Segment::Rest(n) if n == name));
    if duplicate {
        return Err(format!("parameter {name:?} is used twice"));
    }
    Ok(())
}

fn is_valid_param_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 3986 `pchar`: unreserved, sub-delims, ':', '@', and '%' for raw percent-encoding.
fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// Which response statuses a rule accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusMatch {
    Codes(Vec<u16>),
    /// The hundreds digit: 2 means 2xx.
    Class(u16),
}

impl StatusMatch {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            StatusMatch::Codes(codes) => codes.contains(&status),
            StatusMatch::Class(class) => status / 100 == *class,
        }
    }
}

/// An event found in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub event_type: String,
    pub params: Vec<(String, String)>,
    /// The index of the matching rule; None for an inferred event.
    pub rule: Option<usize>,
}

/// POST, PUT, PATCH or DELETE, exactly as Envoy reports them (uppercase).
pub fn is_mutating(method: &str) -> bool {
    MUTATING_METHODS.contains(&method)
}

/// Explicit rules in order, first match wins; else inference when `infer` and status is 2xx.
/// GET/HEAD/OPTIONS (anything not mutating) never make events. A query string or fragment
/// left on `path` is ignored.
pub fn detect(
    rules: &[EventRule],
    infer: bool,
    method: &str,
    path: &str,
    status: u16,
) -> Option<Detected> {
    if !is_mutating(method) {
        return None;
    }
    let path = strip_query(path);
    for (index, rule) in rules.iter().enumerate() {
        if !rule.status.matches(status) || !rule.methods.iter().any(|m| m == method) {
            continue;
        }
        if let Some(params) = rule.path.matches(path) {
            return Some(Detected {
                event_type: rule.event_type.clone(),
                params,
                rule: Some(index),
            });
        }
    }
    if !infer || !(200..300).contains(&status) {
        return None;
    }
    infer_event_type(method, path).map(|event_type| Detected {
        event_type,
        params: Vec::new(),
        rule: None,
    })
}

/// The path without its query string or fragment.
pub fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// POST→created, PUT/PATCH→updated, DELETE→deleted; resource = the last path segment that is not
/// id-like (an id-like segment contains a digit, or any char outside [A-Za-z_-], or is empty); '-'
/// becomes '_'. `/orders`→orders.created, `PATCH /orders/42`→orders.updated,
/// `DELETE /users/7/keys/3`→keys.deleted, `/api/v1/orders/42`→orders; `/` or `/42` → None.
/// Also None when the result would not be a valid event type (e.g. longer than 128 chars).
pub fn infer_event_type(method: &str, path: &str) -> Option<String> {
    let verb = match method {
        "POST" => "created",
        "PUT" | "PATCH" => "updated",
        "DELETE" => "deleted",
        _ => return None,
    };
    let resource = strip_query(path)
        .rsplit('/')
        .find(|segment| !is_id_like(segment))?;
    if resource.len() + 1 + verb.len() > MAX_EVENT_TYPE_LEN {
        return None;
    }
    Some(format!("{}.{verb}", resource.replace('-', "_")))
}

/// Whether [`infer_event_type`] can produce `event_type`: `<resource>.created|updated|deleted`
/// with a resource of letters and `_` (kept beside the inference so the two cannot drift apart).
pub fn is_inferable_type(event_type: &str) -> bool {
    let Some((resource, verb)) = event_type.split_once('.') else {
        return false;
    };
    matches!(verb, "created" | "updated" | "deleted")
        && !resource.is_empty()
        && !is_id_like(resource)
        && !resource.contains('-')
        && event_type.len() <= MAX_EVENT_TYPE_LEN
}

fn is_id_like(segment: &str) -> bool {
    segment.is_empty()
        || segment
            .chars()
            .any(|c| !(c.is_ascii_alphabetic() || c == '_' || c == '-'))
}

/// `[a-zA-Z0-9_]+(\.[a-zA-Z0-9_]+)*`, at most 128 chars.
pub fn is_valid_event_type(s: &str) -> bool {
    s.len() <= MAX_EVENT_TYPE_LEN
        && s.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// An exact valid type, `prefix.*` with a valid prefix, or `*`.
pub fn is_valid_event_filter(f: &str) -> bool {
    if f == "*" {
        return true;
    }
    match f.strip_suffix(".*") {
        Some(prefix) => is_valid_event_type(prefix),
        None => is_valid_event_type(f),
    }
}

#[cfg(test)]
mod tests;
