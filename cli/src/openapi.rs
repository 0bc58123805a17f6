//! Reading an OpenAPI 3.0 or 3.1 document: its version, its servers' base path, its
//! state-changing operations, their success responses, and local `$ref`s.

use serde_json::Value;

/// The OpenAPI versions this tool reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.0.x: Schema Objects in OpenAPI's own dialect (`nullable`, boolean exclusive bounds).
    V30,
    /// 3.1.x: Schema Objects are JSON Schema 2020-12.
    V31,
}

/// `$ref` hops followed at most when one refers to another (a loop of references ends there).
const MAX_REF_HOPS: usize = 32;

/// The methods that make events, in the order rules are written for one path.
pub const METHODS: [&str; 4] = ["post", "put", "patch", "delete"];

/// The document's `openapi` version.
pub fn version(doc: &Value) -> Result<Version, String> {
    if doc.get("swagger").is_some() {
        return Err("Swagger 2.0 is not supported: convert the document to OpenAPI 3 first".into());
    }
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") => Ok(Version::V30),
        Some(v) if v.starts_with("3.1") => Ok(Version::V31),
        Some(v) => Err(format!(
            "openapi {v:?}: only OpenAPI 3.0 and 3.1 are supported"
        )),
        None => Err("not an OpenAPI document: no \"openapi\" version field".into()),
    }
}

/// The value a local `$ref` (`#/components/schemas/Order`, any JSON pointer into the document)
/// points to. References to other files or URLs are refused.
pub fn resolve_pointer<'d>(doc: &'d Value, reference: &str) -> Result<&'d Value, String> {
    let Some(pointer) = reference.strip_prefix('#') else {
        return Err(format!(
            "$ref {reference:?} points outside the document (only local \"#/...\" references are followed)"
        ));
    };
    let pointer = percent_decode(pointer);
    doc.pointer(&pointer)
        .ok_or_else(|| format!("$ref {reference:?} points to nothing in the document"))
}

/// A URI fragment's `%XX` escapes decoded (a JSON pointer in a `$ref` is a URI fragment).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `v`, or what its `$ref` (and theirs) point to: for responses, media types, examples and
/// path items, whose `$ref` replaces the object.
pub fn deref<'d>(doc: &'d Value, v: &'d Value) -> Result<&'d Value, String> {
    let mut current = v;
    for _ in 0..MAX_REF_HOPS {
        match current.get("$ref").and_then(Value::as_str) {
            Some(reference) => current = resolve_pointer(doc, reference)?,
            None => return Ok(current),
        }
    }
    Err(format!(
        "more than {MAX_REF_HOPS} $ref hops (a loop of references?)"
    ))
}

/// The path of a `servers` list's first entry, its variables at their defaults: `""` for none,
/// else `/` and no trailing `/` (`https://api.example.com/v1/` → `/v1`).
pub fn base_path(servers: Option<&Value>) -> Result<String, String> {
    let Some(server) = servers.and_then(Value::as_array).and_then(|s| s.first()) else {
        return Ok(String::new());
    };
    let url = server
        .get("url")
        .and_then(Value::as_str)
        .ok_or("servers[0].url is missing")?;
    let url = substitute_variables(url, server.get("variables"))?;
    let after_scheme = match url.find("://") {
        Some(at) => url.get(at + 3..).unwrap_or_default(),
        None if url.starts_with("//") => url.get(2..).unwrap_or_default(),
        None => return Ok(clean_path(&url)),
    };
    let path = after_scheme
        .find('/')
        .map_or("", |at| after_scheme.get(at..).unwrap_or_default());
    Ok(clean_path(path))
}

/// Without query, fragment and trailing `/`, with a leading `/` unless empty.
fn clean_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_matches('/');
    match path {
        "" => String::new(),
        p => format!("/{p}"),
    }
}

/// `{name}` in a server URL replaced by `variables.name.default`.
fn substitute_variables(url: &str, variables: Option<&Value>) -> Result<String, String> {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let close = rest
            .get(open..)
            .and_then(|r| r.find('}'))
            .ok_or_else(|| format!("servers[0].url {url:?} has an unclosed '{{'"))?;
        let name = rest.get(open + 1..open + close).unwrap_or_default();
        let default = variables
            .and_then(|v| v.get(name))
            .and_then(|v| v.get("default"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!("servers[0].url {url:?}: the variable {name:?} has no default in servers[0].variables")
            })?;
        out.push_str(rest.get(..open).unwrap_or_default());
        out.push_str(default);
        rest = rest.get(open + close + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// One state-changing operation of the document.
#[derive(Debug, Clone)]
pub struct Operation<'d> {
    /// Uppercase: POST, PUT, PATCH or DELETE.
    pub method: String,
    /// The path as the document writes it (without the servers' base path).
    pub path: String,
    /// The base path of the servers that apply (the operation's, its path's, else the
    /// document's).
    pub base: String,
    pub object: &'d Value,
}

impl Operation<'_> {
    pub fn operation_id(&self) -> Option<&str> {
        self.object.get("operationId").and_then(Value::as_str)
    }

    /// `POST /orders` (the document's path), for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Every POST, PUT, PATCH and DELETE operation, paths in the document's key order (sorted,
/// since JSON objects are read into sorted maps), methods in [`METHODS`] order; and the paths
/// whose `$ref` could not be followed.
pub fn operations(doc: &Value) -> Result<(Vec<Operation<'_>>, Vec<String>), String> {
    let document_base = base_path(doc.get("servers"))?;
    let mut out = Vec::new();
    let mut unread = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok((out, unread));
    };
    for (path, item) in paths {
        let item = match deref(doc, item) {
            Ok(item) => item,
            Err(e) => {
                unread.push(format!("{path}: left out: {e}"));
                continue;
            }
        };
        let path_base = servers_base(item, &document_base)?;
        for method in METHODS {
            let Some(object) = item.get(method).filter(|o| o.is_object()) else {
                continue;
            };
            out.push(Operation {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                base: servers_base(object, &path_base)?,
                object,
            });
        }
    }
    Ok((out, unread))
}

/// The base path of `object.servers` when it has some, else `inherited`.
fn servers_base(object: &Value, inherited: &str) -> Result<String, String> {
    match object.get("servers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => base_path(object.get("servers")),
        _ => Ok(inherited.to_string()),
    }
}

/// What an operation documents about success.
#[derive(Debug, Clone, PartialEq)]
pub struct Success<'d> {
    /// The 2xx codes written out (`201`), sorted.
    pub codes: Vec<u16>,
    /// Whether a `2XX` range is documented.
    pub any_2xx: bool,
    /// The JSON bodies' schemas, in code order (`2XX` last), without repeats.
    pub schemas: Vec<&'d Value>,
    /// The first example of a JSON body: the media type's `example`, else its first `examples`
    /// entry's `value`, else the schema's own `example` or first `examples` item.
    pub example: Option<&'d Value>,
}

/// The 2xx responses of an operation, and what could not be read of them (a `$ref` leading
/// nowhere): the codes are known whatever their bodies are.
pub fn success<'d>(doc: &'d Value, operation: &'d Value) -> (Success<'d>, Vec<String>) {
    let mut found = Success {
        codes: Vec::new(),
        any_2xx: false,
        schemas: Vec::new(),
        example: None,
    };
    let mut problems = Vec::new();
    let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
        return (found, problems);
    };
    let mut successes: Vec<(u16, &str, &Value)> = Vec::new();
    for (code, response) in responses {
        if code.eq_ignore_ascii_case("2xx") {
            found.any_2xx = true;
            successes.push((300, code, response)); // after the codes written out
        } else if let Ok(c @ 200..=299) = code.parse::<u16>() {
            found.codes.push(c);
            successes.push((c, code, response));
        }
    }
    found.codes.sort_unstable();
    successes.sort_by_key(|(c, _, _)| *c);
    for (_, code, response) in successes {
        if let Err(e) = read_body(doc, response, &mut found) {
            problems.push(format!("responses.{code}: {e}"));
        }
    }
    (found, problems)
}

/// Adds a response's JSON schema and example to `found`.
fn read_body<'d>(
    doc: &'d Value,
    response: &'d Value,
    found: &mut Success<'d>,
) -> Result<(), String> {
    let response = deref(doc, response)?;
    let Some(media) = json_media(response) else {
        return Ok(());
    };
    let media = deref(doc, media)?;
    if let Some(schema) = media.get("schema") {
        if !found.schemas.contains(&schema) {
            found.schemas.push(schema);
        }
    }
    if found.example.is_none() {
        found.example = media_example(doc, media)?;
    }
    Ok(())
}

/// The JSON media type of a response: `application/json` (with or without parameters), else the
/// first `+json` one (`application/vnd.api+json`).
fn json_media(response: &Value) -> Option<&Value> {
    let content = response.get("content")?.as_object()?;
    let essence = |k: &str| {
        k.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    content
        .iter()
        .find(|(k, _)| essence(k) == "application/json")
        .or_else(|| content.iter().find(|(k, _)| essence(k).ends_with("+json")))
        .map(|(_, v)| v)
}

fn media_example<'d>(doc: &'d Value, media: &'d Value) -> Result<Option<&'d Value>, String> {
    if let Some(example) = media.get("example") {
        return Ok(Some(example));
    }
    if let Some(first) = media
        .get("examples")
        .and_then(Value::as_object)
        .and_then(|e| e.values().next())
    {
        return Ok(deref(doc, first)?.get("value"));
    }
    // A schema that cannot be followed has no example; its conversion reports why.
    let Some(schema) = media.get("schema").and_then(|s| deref(doc, s).ok()) else {
        return Ok(None);
    };
    Ok(schema
        .get("example")
        .or_else(|| schema.get("examples").and_then(|e| e.get(0))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions() {
        assert_eq!(version(&json!({"openapi": "3.0.3"})), Ok(Version::V30));
        assert_eq!(version(&json!({"openapi": "3.1.0"})), Ok(Version::V31));
        assert!(version(&json!({"swagger": "2.0"}))
            .unwrap_err()
            .contains("Swagger 2.0"));
        assert!(version(&json!({"openapi": "4.0"}))
            .unwrap_err()
            .contains("3.0 and 3.1"));
        assert!(version(&json!({})).unwrap_err().contains("no \"openapi\""));
    }

    #[test]
    fn base_paths() {
        let base = |servers: Value| base_path(Some(&servers));
        assert_eq!(
            base(json!([{"url": "https://api.example.com/v1/"}])),
            Ok("/v1".into())
        );
        assert_eq!(
            base(json!([{"url": "https://api.example.com"}])),
            Ok(String::new())
        );
        assert_eq!(
            base(json!([{"url": "/api"}, {"url": "/other"}])),
            Ok("/api".into())
        );
        assert_eq!(base(json!([{"url": "api/v2"}])), Ok("/api/v2".into()));
        assert_eq!(
            base(json!([{"url": "//h.example.com/x?y=1"}])),
            Ok("/x".into())
        );
        assert_eq!(base(json!([])), Ok(String::new()));
        assert_eq!(
            base(json!([{"url": "https://{region}.example.com/{version}",
                         "variables": {"region": {"default": "eu"}, "version": {"default": "v3"}}}])),
            Ok("/v3".into())
        );
        assert!(base(json!([{"url": "/{v}"}]))
            .unwrap_err()
            .contains("\"v\" has no default"));
        assert!(base(json!([{"url": "/{v"}]))
            .unwrap_err()
            .contains("unclosed"));
        assert_eq!(base_path(None), Ok(String::new()));
    }

    #[test]
    fn pointers_and_refs() {
        let doc = json!({"components": {"schemas": {"a/b": {"type": "string"}, "c d": {"type": "integer"}},
                                        "responses": {"R": {"$ref": "#/components/responses/S"},
                                                      "S": {"description": "s"},
                                                      "L": {"$ref": "#/components/responses/L"}}}});
        assert_eq!(
            resolve_pointer(&doc, "#/components/schemas/a~1b").unwrap()["type"],
            "string"
        );
        assert_eq!(
            resolve_pointer(&doc, "#/components/schemas/c%20d").unwrap()["type"],
            "integer"
        );
        assert!(resolve_pointer(&doc, "other.yaml#/x")
            .unwrap_err()
            .contains("outside the document"));
        assert!(resolve_pointer(&doc, "#/nowhere")
            .unwrap_err()
            .contains("points to nothing"));
        let r = json!({"$ref": "#/components/responses/R"});
        assert_eq!(deref(&doc, &r).unwrap()["description"], "s");
        let l = json!({"$ref": "#/components/responses/L"});
        assert!(deref(&doc, &l).unwrap_err().contains("loop"));
    }

    #[test]
    fn operations_take_the_nearest_servers() {
        let doc = json!({
            "servers": [{"url": "https://x.example.com/api"}],
            "paths": {
                "/a": {"get": {}, "post": {}, "delete": {}, "parameters": []},
                "/c": {"$ref": "#/components/pathItems/C"},
                "/b": {"servers": [{"url": "/b-api"}], "put": {"servers": [{"url": "/put-api"}]}, "patch": {}}
            }
        });
        let (ops, unread) = operations(&doc).unwrap();
        assert_eq!(
            unread,
            ["/c: left out: $ref \"#/components/pathItems/C\" points to nothing in the document"]
        );
        let ops: Vec<(String, String, String)> = ops
            .into_iter()
            .map(|o| (o.method, o.path, o.base))
            .collect();
        let t = |m: &str, p: &str, b: &str| (m.to_string(), p.to_string(), b.to_string());
        assert_eq!(
            ops,
            [
                t("POST", "/a", "/api"),
                t("DELETE", "/a", "/api"),
                t("PUT", "/b", "/put-api"),
                t("PATCH", "/b", "/b-api")
            ]
        );
    }

    #[test]
    fn success_responses() {
        let doc = json!({"components": {"responses": {"Made": {"description": "", "content": {
            "application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/O"},
                                                "examples": {"one": {"value": {"id": 1}}}}}}},
            "schemas": {"O": {"type": "object", "example": {"id": 2}}}}});
        let op = json!({"responses": {
            "201": {"$ref": "#/components/responses/Made"},
            "200": {"description": "", "content": {"application/vnd.api+json": {"schema": {"type": "object"}}}},
            "2XX": {"description": ""},
            "204": {"description": ""},
            "400": {"description": "", "content": {"application/json": {"schema": {"type": "string"}}}},
            "default": {"description": ""}}});
        let (s, problems) = success(&doc, &op);
        assert!(problems.is_empty());
        assert_eq!(s.codes, [200, 201, 204]);
        assert!(s.any_2xx);
        assert_eq!(
            s.schemas,
            [
                &json!({"type": "object"}),
                &json!({"$ref": "#/components/schemas/O"})
            ]
        );
        // The first JSON body with an example: 201's named example (200 has none; the schema's
        // own example comes only after the media type's).
        assert_eq!(s.example, Some(&json!({"id": 1})));
    }
}
