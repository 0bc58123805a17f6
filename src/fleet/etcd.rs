//! The etcd v3 HTTP/JSON gateway protocol as pure functions: request builders (path + JSON body)
//! and response parsers, with no host calls, so fleet mode can send them with `dispatch_http_call`
//! and everything here is unit-tested natively.
//!
//! Gateway facts this relies on (checked against a real etcd 3.4 by `devtools/tests/etcd_protocol.rs`):
//! keys and values are base64 in the JSON; 64-bit numbers arrive as JSON strings (numbers are
//! accepted too); fields with zero values are omitted (a failed txn has no `succeeded`, an empty
//! value no `value`); errors are `{"error": "...", "message": "...", "code": N}` with a gRPC code;
//! `lease/keepalive` is a stream whose one answer is wrapped in `{"result": ...}`, and a lease that
//! is gone answers there without a `TTL` rather than with an error.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

pub const RANGE: &str = "/v3/kv/range";
pub const PUT: &str = "/v3/kv/put";
pub const DELETE_RANGE: &str = "/v3/kv/deleterange";
pub const TXN: &str = "/v3/kv/txn";
pub const LEASE_GRANT: &str = "/v3/lease/grant";
pub const LEASE_KEEPALIVE: &str = "/v3/lease/keepalive";
pub const LEASE_REVOKE: &str = "/v3/lease/revoke";
pub const LEASE_TIME_TO_LIVE: &str = "/v3/lease/timetolive";
pub const AUTHENTICATE: &str = "/v3/auth/authenticate";

/// One gateway call: POST `body` (JSON) to `path`.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub path: &'static str,
    pub body: String,
}

/// Never shows an authenticate call's body: it holds the password.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: &dyn std::fmt::Debug = match self.path {
            AUTHENTICATE => &"(credentials)",
            _ => &self.body,
        };
        f.debug_struct("Request")
            .field("path", &self.path)
            .field("body", body)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Which revision of a key a txn compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `mod_revision`: the revision of the key's last write (0 when absent).
    Mod,
    /// `version`: writes since the key was created (0 when absent).
    Version,
    /// `create_revision`: the revision that created the key (0 when absent).
    Create,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// `key`'s `target` revision `cmp` `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: Target,
    pub cmp: Cmp,
    pub value: i64,
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` at `key`, attached to `lease` (0: none).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Read `key`, or every key under it when `prefix`, at most `limit` (0: all).
    Range {
        key: Vec<u8>,
        prefix: bool,
        limit: u64,
    },
    /// Delete `key`, or every key under it when `prefix`.
    Delete { key: Vec<u8>, prefix: bool },
    /// A read with every option of [`RangeQuery`].
    Query(RangeQuery),
}

/// Reads one key.
pub fn range(key: &[u8]) -> Request {
    request(RANGE, range_body(key, false, 0))
}

/// Reads the keys starting with `prefix` in key order, at most `limit` of them (0: all); the
/// answer's `more` says whether some were left out.
pub fn range_prefix(prefix: &[u8], limit: u64) -> Request {
    request(RANGE, range_body(prefix, true, limit))
}

/// A range with the options plain [`range_prefix`] leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// The key, or the prefix when `prefix`.
    pub key: Vec<u8>,
    pub prefix: bool,
    /// At most this many keys (0: all).
    pub limit: u64,
    /// Only keys written at or after this revision (0: all). The answer's `count` still counts
    /// every key of the range (etcd 3.4 filters after counting), so a reader can tell that keys
    /// it knows were deleted.
    pub min_mod_revision: i64,
    /// Keys without values.
    pub keys_only: bool,
    /// Oldest first (by create revision) instead of key order.
    pub oldest_first: bool,
    /// When not empty (and not `prefix`): the keys from `key` up to this one, excluded (a page
    /// of a prefix that starts after the last key read).
    pub end: Vec<u8>,
    /// Read the store as it was at this revision (0: now): the pages of one read see one
    /// state. etcd refuses a compacted revision.
    pub revision: i64,
    /// Only the count, no keys.
    pub count_only: bool,
}

/// Reads a range with every option of [`RangeQuery`].
pub fn range_query(query: &RangeQuery) -> Request {
    request(RANGE, query_body(query))
}

fn query_body(query: &RangeQuery) -> Map<String, Value> {
    let mut body = range_body(&query.key, query.prefix, query.limit);
    if !query.prefix && !query.end.is_empty() {
        body.insert("range_end".into(), b64(&query.end));
    }
    if query.min_mod_revision > 0 {
        body.insert("min_mod_revision".into(), number(query.min_mod_revision));
    }
    if query.keys_only {
        body.insert("keys_only".into(), Value::Bool(true));
    }
    if query.oldest_first {
        body.insert("sort_target".into(), Value::String("CREATE".into()));
        body.insert("sort_order".into(), Value::String("ASCEND".into()));
    }
    if query.revision > 0 {
        body.insert("revision".into(), number(query.revision));
    }
    if query.count_only {
        body.insert("count_only".into(), Value::Bool(true));
    }
    body
}

/// Writes one key, attached to `lease` (0: none).
pub fn put(key: &[u8], value: &[u8], lease: i64) -> Request {
    request(PUT, put_body(key, value, lease))
}

/// Deletes one key, or every key under it when `prefix`.
pub fn delete(key: &[u8], prefix: bool) -> Request {
    request(DELETE_RANGE, delete_body(key, prefix))
}

/// If every compare holds, runs `success`, else `failure`, atomically.
pub fn txn(compare: &[Compare], success: &[Op], failure: &[Op]) -> Request {
    let mut body = Map::new();
    let compares = compare.iter().map(compare_value).collect::<Vec<_>>();
    body.insert("compare".into(), Value::Array(compares));
    body.insert("success".into(), ops_value(success));
    body.insert("failure".into(), ops_value(failure));
    request(TXN, body)
}

/// Asks for a lease of `ttl_seconds` (etcd 3.4 raises a TTL below its minimum, 2 s by default).
pub fn lease_grant(ttl_seconds: i64) -> Request {
    let mut body = Map::new();
    body.insert("TTL".into(), number(ttl_seconds));
    request(LEASE_GRANT, body)
}

/// Renews lease `id` for its full TTL.
pub fn lease_keepalive(id: i64) -> Request {
    request(LEASE_KEEPALIVE, id_body(id))
}

/// Ends lease `id` now, deleting every key attached to it.
pub fn lease_revoke(id: i64) -> Request {
    request(LEASE_REVOKE, id_body(id))
}

/// Asks how long lease `id` has left.
pub fn lease_time_to_live(id: i64) -> Request {
    request(LEASE_TIME_TO_LIVE, id_body(id))
}

/// Asks etcd for a token of user `name` (etcd's own authentication): every later call carries
/// it in its `Authorization` header.
pub fn authenticate(name: &str, password: &str) -> Request {
    let mut body = Map::new();
    body.insert("name".into(), Value::String(name.into()));
    body.insert("password".into(), Value::String(password.into()));
    request(AUTHENTICATE, body)
}

/// The `range_end` that makes a range cover every key starting with `prefix`: the prefix with its
/// last byte below 0xff incremented (trailing 0xff bytes dropped); `\0` (all keys) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn request(path: &'static str, body: Map<String, Value>) -> Request {
    Request {
        path,
        body: json_text(&Value::Object(body)),
    }
}

/// `value` as compact JSON, as serde_json writes it, except that a number that is not an integer
/// (no request has one; in an answer it would be garbage) is written as `null`. Not serde_json's
/// serializer for `Value`: its float formatting alone is 3 KB of the .wasm, and every number
/// this protocol has is an integer or a string.
fn json_text(value: &Value) -> String {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => out.extend_from_slice(u.to_string().as_bytes()),
                (None, Some(i)) => out.extend_from_slice(i.to_string().as_bytes()),
                (None, None) => out.extend_from_slice(b"null"),
            },
            Value::String(s) => string(s, out),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            Value::Object(map) => {
                out.push(b'{');
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(key, out);
                    out.push(b':');
                    write(item, out);
                }
                out.push(b'}');
            }
        }
    }
    // A str always serializes (into a Vec, nothing can fail).
    fn string(s: &str, out: &mut Vec<u8>) {
        let _ = serde_json::to_writer(&mut *out, s);
    }
    let mut out = Vec::new();
    write(value, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod json_text_tests {
    use super::json_text;
    use serde_json::{json, Value};

    #[test]
    fn json_text_writes_what_serde_json_writes_and_fractions_as_null() {
        let doc = json!({
            "key": "a\"b\\c\n\u{1}\u{7f}é😀</",
            "n": [0, 1, -1, u64::MAX, i64::MIN],
            "nested": {"t": true, "f": false, "z": null, "empty": {}, "none": []},
            "": "",
        });
        assert_eq!(json_text(&doc), serde_json::to_string(&doc).unwrap());
        assert_eq!(json_text(&json!([1.5, -0.25])), "[null,null]");
        assert_eq!(json_text(&Value::String("x".into())), r#""x""#);
    }
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

/// 64-bit numbers go out as strings, as etcd sends them: exact whatever the reader's numbers are.
fn number(n: i64) -> Value {
    Value::String(n.to_string())
}

fn id_body(id: i64) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("ID".into(), number(id));
    body
}

fn with_range_end(body: &mut Map<String, Value>, key: &[u8], prefix: bool) {
    body.insert("key".into(), b64(key));
    if prefix {
        body.insert("range_end".into(), b64(&prefix_end(key)));
    }
}

fn range_body(key: &[u8], prefix: bool, limit: u64) -> Map<String, Value> {
    let mut body = Map::new();
    with_range_end(&mut body, key, prefix);
    if limit > 0 {
        body.insert("limit".into(), Value::String(limit.to_string()));
    }
    body
}

fn put_body(key: &[u8], value: &[u8], lease: i64) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("key".into(), b64(key));
    body.insert("value".into(), b64(value));
    if lease != 0 {
        body.insert("lease".into(), number(lease));
    }
    body
}

fn delete_body(key: &[u8], prefix: bool) -> Map<String, Value> {
    let mut body = Map::new();
    with_range_end(&mut body, key, prefix);
    body
}

fn compare_value(c: &Compare) -> Value {
    let (target, field) = match c.target {
        Target::Mod => ("MOD", "mod_revision"),
        Target::Version => ("VERSION", "version"),
        Target::Create => ("CREATE", "create_revision"),
    };
    let result = match c.cmp {
        Cmp::Equal => "EQUAL",
        Cmp::NotEqual => "NOT_EQUAL",
        Cmp::Greater => "GREATER",
        Cmp::Less => "LESS",
    };
    let mut m = Map::new();
    m.insert("key".into(), b64(&c.key));
    m.insert("target".into(), Value::String(target.into()));
    m.insert("result".into(), Value::String(result.into()));
    m.insert(field.into(), number(c.value));
    Value::Object(m)
}

fn ops_value(ops: &[Op]) -> Value {
    Value::Array(ops.iter().map(op_value).collect())
}

fn op_value(op: &Op) -> Value {
    let (name, body) = match op {
        Op::Put { key, value, lease } => ("request_put", put_body(key, value, *lease)),
        Op::Range { key, prefix, limit } => ("request_range", range_body(key, *prefix, *limit)),
        Op::Delete { key, prefix } => ("request_delete_range", delete_body(key, *prefix)),
        Op::Query(query) => ("request_range", query_body(query)),
    };
    let mut m = Map::new();
    m.insert(name.into(), Value::Object(body));
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Answers

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The body is not a JSON document (serde_json's reason).
    NotJson(String),
    /// etcd refused the request: its gRPC `code` and message.
    Etcd { code: i64, message: String },
    /// A field is missing or has the wrong shape; `field` is its path in the answer.
    Field { field: String, problem: String },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotJson(why) => write!(f, "etcd's answer is not JSON: {why}"),
            Error::Etcd { code, message } => write!(f, "etcd refused (code {code}): {message}"),
            Error::Field { field, problem } => write!(f, "etcd's answer: `{field}` {problem}"),
        }
    }
}

/// One key as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// `revision` is the store's revision when the request was served (from the answer's header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeAnswer {
    pub revision: i64,
    pub kvs: Vec<Kv>,
    /// Keys were left out by the limit.
    pub more: bool,
    /// How many keys the range holds, limit aside.
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteAnswer {
    pub revision: i64,
    pub deleted: i64,
}

/// One txn operation's answer, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpAnswer {
    Put { revision: i64 },
    Range(RangeAnswer),
    Delete(DeleteAnswer),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnAnswer {
    pub revision: i64,
    /// The compares held (the success branch ran).
    pub succeeded: bool,
    pub responses: Vec<OpAnswer>,
}

/// A granted lease: its id and TTL in seconds (which may exceed the one asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// What a keepalive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Renewed for `ttl` seconds.
    Alive { ttl: i64 },
    /// The lease expired or was revoked: its keys are gone.
    Gone,
}

pub fn parse_range(body: &[u8]) -> Result<RangeAnswer, Error> {
    range_answer(&top(body)?, "")
}

/// A put's answer: the revision it wrote.
pub fn parse_put(body: &[u8]) -> Result<i64, Error> {
    revision(&top(body)?, "")
}

pub fn parse_delete(body: &[u8]) -> Result<DeleteAnswer, Error> {
    delete_answer(&top(body)?, "")
}

pub fn parse_txn(body: &[u8]) -> Result<TxnAnswer, Error> {
    let m = top(body)?;
    let mut responses = Vec::new();
    for (i, item) in list(&m, "responses", "")?.iter().enumerate() {
        responses.push(op_answer(item, &format!("responses[{i}]"))?);
    }
    Ok(TxnAnswer {
        revision: revision(&m, "")?,
        succeeded: boolean(&m, "succeeded", "")?,
        responses,
    })
}

pub fn parse_lease_grant(body: &[u8]) -> Result<Lease, Error> {
    let m = top(body)?;
    let lease = Lease {
        id: int(&m, "ID", "")?,
        ttl: int(&m, "TTL", "")?,
    };
    if lease.id == 0 {
        return Err(field("ID", "is missing: no lease was granted"));
    }
    Ok(lease)
}

/// A keepalive's answer, unwrapped from the stream's `{"result": ...}` (a trailing newline is
/// part of it); it must be for lease `id`.
pub fn parse_lease_keepalive(body: &[u8], id: i64) -> Result<KeepAlive, Error> {
    let outer = top(body)?;
    let Some(result) = outer.get("result") else {
        return Err(field("result", "is missing"));
    };
    let m = object(result, "result")?;
    let got = int(m, "ID", "result")?;
    if got != id {
        return Err(field("result.ID", &format!("is {got}, not the lease {id}")));
    }
    match int(m, "TTL", "result")? {
        0 => Ok(KeepAlive::Gone),
        ttl => Ok(KeepAlive::Alive { ttl }),
    }
}

/// What a time-to-live answer says of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeToLive {
    /// Expired or revoked (etcd answers `TTL` -1).
    Gone,
    /// `ttl` whole seconds left (0: about to expire), of the `granted` ones.
    Left { ttl: i64, granted: i64 },
}

/// A time-to-live answer; it must be for lease `id`.
pub fn parse_lease_time_to_live(body: &[u8], id: i64) -> Result<TimeToLive, Error> {
    let m = top(body)?;
    let got = int(&m, "ID", "")?;
    if got != id {
        return Err(field("ID", &format!("is {got}, not the lease {id}")));
    }
    let gone = match m.get("TTL") {
        Some(Value::String(s)) => s == "-1",
        Some(Value::Number(n)) => n.as_i64() == Some(-1),
        _ => false,
    };
    if gone {
        return Ok(TimeToLive::Gone);
    }
    Ok(TimeToLive::Left {
        ttl: int(&m, "TTL", "")?,
        granted: int(&m, "grantedTTL", "")?,
    })
}

/// A revoke's answer: the revision at which the lease's keys were deleted.
pub fn parse_lease_revoke(body: &[u8]) -> Result<i64, Error> {
    revision(&top(body)?, "")
}

/// An authenticate call's token. It goes out as a header value, so anything but printable
/// ASCII is refused (an answer cannot smuggle a header in).
pub fn parse_authenticate(body: &[u8]) -> Result<String, Error> {
    let m = top(body)?;
    match m.get("token") {
        Some(Value::String(t)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(t.clone())
        }
        Some(Value::String(_)) => Err(field("token", "is not a non-empty printable ASCII string")),
        Some(other) => Err(field("token", &format!("is {}, not a string", kind(other)))),
        None => Err(field("token", "is missing")),
    }
}

/// etcd's refusal in an answer (`{"error", "message", "code"}`), if it is one.
pub fn refusal(body: &[u8]) -> Option<Error> {
    top(body).err().filter(|e| matches!(e, Error::Etcd { .. }))
}

/// The answer as an object, or etcd's error object as [`Error::Etcd`].
fn top(body: &[u8]) -> Result<Map<String, Value>, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Error::NotJson(e.to_string()))?;
    let Value::Object(m) = value else {
        return Err(field(
            "(answer)",
            &format!("is {}, not an object", kind(&value)),
        ));
    };
    if let Some(error) = m.get("error") {
        return Err(etcd_error(&m, error));
    }
    Ok(m)
}

/// `error` is a string (unary calls) or, from a stream, an object with `grpc_code`/`message`.
fn etcd_error(m: &Map<String, Value>, error: &Value) -> Error {
    let (inner, code_name) = match error {
        Value::Object(inner) => (inner, "grpc_code"),
        _ => (m, "code"),
    };
    let message = match (inner.get("message"), error) {
        (Some(Value::String(s)), _) | (None, Value::String(s)) => s.clone(),
        (Some(other), _) | (None, other) => json_text(other),
    };
    let code = inner.get(code_name).and_then(Value::as_i64).unwrap_or(0);
    Error::Etcd { code, message }
}

fn field(path: &str, problem: &str) -> Error {
    Error::Field {
        field: path.to_string(),
        problem: problem.to_string(),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Error> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(field(path, &format!("is {}, not an object", kind(other)))),
    }
}

/// A non-negative 64-bit integer, as a string or a number; absent means 0.
fn int(m: &Map<String, Value>, name: &str, parent: &str) -> Result<i64, Error> {
    let parsed = match m.get(name) {
        None => return Ok(0),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(other) => {
            let problem = format!("is {}, not a 64-bit integer", kind(other));
            return Err(field(&join(parent, name), &problem));
        }
    };
    match parsed {
        Some(n) if n >= 0 => Ok(n),
        _ => Err(field(
            &join(parent, name),
            "is not a non-negative 64-bit integer",
        )),
    }
}

/// Base64 bytes; absent means empty.
fn bytes(m: &Map<String, Value>, name: &str, parent: &str) -> Result<Vec<u8>, Error> {
    match m.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .map_err(|e| field(&join(parent, name), &format!("is not base64: {e}"))),
        Some(other) => Err(field(
            &join(parent, name),
            &format!("is {}, not a base64 string", kind(other)),
        )),
    }
}

/// Absent means false.
fn boolean(m: &Map<String, Value>, name: &str, parent: &str) -> Result<bool, Error> {
    match m.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(field(
            &join(parent, name),
            &format!("is {}, not a boolean", kind(other)),
        )),
    }
}

/// Absent means empty.
fn list<'a>(m: &'a Map<String, Value>, name: &str, parent: &str) -> Result<&'a [Value], Error> {
    match m.get(name) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(field(
            &join(parent, name),
            &format!("is {}, not an array", kind(other)),
        )),
    }
}

/// `header.revision`: every answer has one (etcd's revisions start at 1).
fn revision(m: &Map<String, Value>, parent: &str) -> Result<i64, Error> {
    let path = join(parent, "header");
    let Some(header) = m.get("header") else {
        return Err(field(&path, "is missing"));
    };
    let revision = int(object(header, &path)?, "revision", &path)?;
    if revision == 0 {
        return Err(field(&join(&path, "revision"), "is missing"));
    }
    Ok(revision)
}

fn kv(v: &Value, path: &str) -> Result<Kv, Error> {
    let m = object(v, path)?;
    Ok(Kv {
        key: bytes(m, "key", path)?,
        value: bytes(m, "value", path)?,
        create_revision: int(m, "create_revision", path)?,
        mod_revision: int(m, "mod_revision", path)?,
        version: int(m, "version", path)?,
        lease: int(m, "lease", path)?,
    })
}

fn range_answer(m: &Map<String, Value>, parent: &str) -> Result<RangeAnswer, Error> {
    let mut kvs = Vec::new();
    for (i, item) in list(m, "kvs", parent)?.iter().enumerate() {
        kvs.push(kv(item, &join(parent, &format!("kvs[{i}]")))?);
    }
    Ok(RangeAnswer {
        revision: revision(m, parent)?,
        kvs,
        more: boolean(m, "more", parent)?,
        count: int(m, "count", parent)?,
    })
}

fn delete_answer(m: &Map<String, Value>, parent: &str) -> Result<DeleteAnswer, Error> {
    Ok(DeleteAnswer {
        revision: revision(m, parent)?,
        deleted: int(m, "deleted", parent)?,
    })
}

/// `{"response_put": ...}`, `{"response_range": ...}` or `{"response_delete_range": ...}`.
fn op_answer(v: &Value, path: &str) -> Result<OpAnswer, Error> {
    let m = object(v, path)?;
    let mut found = m.iter().filter(|(name, _)| name.starts_with("response_"));
    let (Some((name, inner)), None) = (found.next(), found.next()) else {
        return Err(field(path, "does not hold exactly one response_* field"));
    };
    let inner_path = join(path, name);
    let inner_map = object(inner, &inner_path)?;
    match name.as_str() {
        "response_put" => Ok(OpAnswer::Put {
            revision: revision(inner_map, &inner_path)?,
        }),
        "response_range" => Ok(OpAnswer::Range(range_answer(inner_map, &inner_path)?)),
        "response_delete_range" => Ok(OpAnswer::Delete(delete_answer(inner_map, &inner_path)?)),
        _ => Err(field(&inner_path, "is not a put, range or delete answer")),
    }
}

#[cfg(test)]
mod tests;
