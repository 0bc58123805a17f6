//! The webhook body: the captured response object plus what was asked of the API.

use crate::model::subscription::TEST_EVENT_TYPE;
use crate::support::time::format_rfc3339_millis;
use serde::de::IgnoredAny;
use serde::Serialize;

/// Most bytes reserved up front from a declared `content-length`; larger bodies grow the buffer
/// as they arrive.
const MAX_RESERVE: usize = 1 << 20;

/// Copies a response body as it streams past, up to a limit, keeping it only if it may be JSON.
///
/// Capturing never holds the response back; once the body can no longer be used (not JSON, or
/// over the limit) the buffer is released and `wants_more` tells the filter to stop reading.
#[derive(Debug)]
pub struct BodyCapture {
    limit: usize,
    state: CaptureState,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaptureState {
    Capturing,
    NotJson,
    TooLarge,
}

/// What became of a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturedObject {
    /// Validated JSON, kept verbatim apart from surrounding whitespace.
    Json(Vec<u8>),
    /// Not JSON: empty, invalid, a non-JSON content type, or content-encoded.
    NotJson,
    /// JSON content type, but larger than the limit.
    TooLarge,
}

impl BodyCapture {
    /// `content_type`/`content_encoding`/`content_length` are the response's headers if present.
    /// Only bodies with no or a JSON content type and no (or `identity`) encoding are kept; a
    /// declared length above `limit` is too large before a single byte is read.
    pub fn new(
        limit: usize,
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        content_length: Option<u64>,
    ) -> BodyCapture {
        let json = content_type.is_none_or(is_json_media_type);
        let plain =
            content_encoding.is_none_or(|e| e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let declared = content_length.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let state = match declared {
            _ if !(json && plain) => CaptureState::NotJson,
            Some(n) if n > limit => CaptureState::TooLarge,
            _ => CaptureState::Capturing,
        };
        // The declared length only sizes the first allocation, and never beyond
        // [`MAX_RESERVE`]: `limit` is the operator's (any integer) and the length the upstream's,
        // so reserving it whole could ask for more than the VM has, which aborts.
        let capacity = match state {
            CaptureState::Capturing => declared.unwrap_or(0).min(MAX_RESERVE),
            _ => 0,
        };
        BodyCapture {
            limit,
            state,
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A capture that reads nothing: the event does not need the body.
    pub fn skip() -> BodyCapture {
        BodyCapture {
            limit: 0,
            state: CaptureState::NotJson,
            buf: Vec::new(),
        }
    }

    /// Whether the filter still needs the body bytes.
    pub fn wants_more(&self) -> bool {
        self.state == CaptureState::Capturing
    }

    /// Appends a chunk; past the limit the buffer is dropped and the body marked too large.
    pub fn push(&mut self, chunk: &[u8]) {
        if !self.wants_more() {
            return;
        }
        if chunk.len() > self.limit.saturating_sub(self.buf.len()) {
            self.state = CaptureState::TooLarge;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The outcome once the response has ended.
    pub fn finish(self) -> CapturedObject {
        match self.state {
            CaptureState::NotJson => CapturedObject::NotJson,
            CaptureState::TooLarge => CapturedObject::TooLarge,
            CaptureState::Capturing => validated_json(self.buf),
        }
    }
}

/// `buf` trimmed of surrounding whitespace, if it is one well-formed JSON value.
fn validated_json(mut buf: Vec<u8>) -> CapturedObject {
    if !is_json_text(buf.trim_ascii()) {
        return CapturedObject::NotJson;
    }
    // Trim in place: moving the bytes down is cheaper than a second buffer.
    let kept = buf.trim_ascii_end().len();
    buf.truncate(kept);
    let leading = buf.len() - buf.trim_ascii_start().len();
    buf.drain(..leading);
    CapturedObject::Json(buf)
}

/// One JSON value in UTF-8. The UTF-8 check comes first because serde_json, when it merely
/// skips over strings, does not look inside them, and the bytes are embedded as they are.
/// Skipping does not check `\u` escapes either, so unpaired surrogates are looked for apart:
/// a body holding one is refused by strict parsers (serde_json among them, and I-JSON forbids
/// it), which would make the whole webhook unreadable.
fn is_json_text(bytes: &[u8]) -> bool {
    // Bytes, not &str: the deserializer over a slice is the one every other parse uses.
    !bytes.is_empty()
        && std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
        && surrogates_paired(bytes)
        && nesting_depth(bytes) <= MAX_OBJECT_DEPTH
}

/// Deepest nesting of a body kept as `data.object`. The envelope adds two levels, and common
/// JSON parsers (serde_json among them) refuse documents nested deeper than 128.
const MAX_OBJECT_DEPTH: usize = 100;

/// In valid JSON text, how deeply arrays and objects nest (brackets inside strings don't count).
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// In valid JSON text, whether every `\uD800`-`\uDBFF` escape is followed by a
/// `\uDC00`-`\uDFFF` one and no low surrogate stands alone. Outside strings JSON has no
/// backslashes, so a plain scan of escapes is enough.
fn surrogates_paired(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = rest.get(at..).unwrap_or_default();
        let skip = match unicode_escape(escape) {
            Some(0xD800..=0xDBFF) => match escape.get(6..).and_then(unicode_escape) {
                Some(0xDC00..=0xDFFF) => 12,
                _ => return false,
            },
            Some(0xDC00..=0xDFFF) => return false,
            // Any other escape is a backslash and one character (`\uXXXX` adds plain hex).
            _ => 2,
        };
        rest = escape.get(skip..).unwrap_or_default();
    }
    true
}

/// The code unit of a `\uXXXX` escape at the start of `bytes`.
fn unicode_escape(bytes: &[u8]) -> Option<u32> {
    let hex = bytes.strip_prefix(b"\\u")?.get(..4)?;
    u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// `application/json` or any `type/subtype+json`, ignoring parameters and case: the one rule for
/// what counts as JSON, for captured response bodies and API request bodies alike.
pub fn is_json_media_type(value: &[u8]) -> bool {
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (kind, subtype) = essence.split_at(slash);
    let subtype = subtype.get(1..).unwrap_or_default();
    if kind.is_empty() || subtype.is_empty() {
        return false;
    }
    essence.eq_ignore_ascii_case(b"application/json") || has_json_suffix(subtype)
}

/// Whether a media subtype is a structured `+json` one such as `problem+json`.
fn has_json_suffix(subtype: &[u8]) -> bool {
    const SUFFIX: &[u8] = b"+json";
    subtype.len() > SUFFIX.len()
        && subtype
            .get(subtype.len() - SUFFIX.len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(SUFFIX))
}

/// The API call an event came from.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// Parameters captured from the matched path template, in template order.
    pub params: &'a [(String, String)],
    pub status: u16,
}

/// The event body:
/// `{"type":..,"timestamp":..,"data":{"object":..,"request":{"method","path","params","status"}}}`,
/// with `"truncated":true` after `object` when the JSON body was too large to include.
///
/// The captured object is spliced in verbatim: it was validated, and re-serialising it would
/// cost time and could change number formatting or key order.
pub fn build_payload(
    event_type: &str,
    timestamp_ms: u64,
    request: &RequestInfo<'_>,
    object: CapturedObject,
) -> Vec<u8> {
    let params_len: usize = request
        .params
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    let object_len = match &object {
        CapturedObject::Json(bytes) => bytes.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(
        160 + event_type.len()
            + request.method.len()
            + request.path.len()
            + params_len
            + object_len,
    );
    push_header(&mut out, event_type, timestamp_ms);
    out.extend_from_slice(br#""object":"#);
    match object {
        CapturedObject::Json(bytes) => out.extend_from_slice(&bytes),
        CapturedObject::NotJson => out.extend_from_slice(b"null"),
        CapturedObject::TooLarge => out.extend_from_slice(br#"null,"truncated":true"#),
    }
    out.extend_from_slice(br#","request":{"method":"#);
    push_json(&mut out, request.method);
    out.extend_from_slice(br#","path":"#);
    push_json(&mut out, request.path);
    out.extend_from_slice(br#","params":{"#);
    for (i, (name, value)) in request.params.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json(&mut out, name.as_str());
        out.push(b':');
        push_json(&mut out, value.as_str());
    }
    out.extend_from_slice(br#"},"status":"#);
    push_json(&mut out, &request.status);
    out.extend_from_slice(b"}}}");
    out
}

/// The body of a `webhook.test` event sent to one subscription on request.
pub fn build_test_payload(timestamp_ms: u64, subscription_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + subscription_id.len());
    push_header(&mut out, TEST_EVENT_TYPE, timestamp_ms);
    out.extend_from_slice(br#""subscription_id":"#);
    push_json(&mut out, subscription_id);
    out.extend_from_slice(br#","message":"This is a test webhook from proxy-webhooks."}}"#);
    out
}

/// `{"type":..,"timestamp":..,"data":{`, shared by every event.
fn push_header(out: &mut Vec<u8>, event_type: &str, timestamp_ms: u64) {
    out.extend_from_slice(br#"{"type":"#);
    push_json(out, event_type);
    out.extend_from_slice(br#","timestamp":""#);
    out.extend_from_slice(format_rfc3339_millis(timestamp_ms).as_bytes());
    out.extend_from_slice(br#"","data":{"#);
}

/// Appends `value` as JSON. Strings and integers cannot fail to serialise into a `Vec`, so the
/// error arm is unreachable; it degrades to `null` rather than panicking.
fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mark = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests;
