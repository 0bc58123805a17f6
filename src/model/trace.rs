//! W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` and `tracestate`
//! of the API request that caused an event, forwarded unchanged on its webhooks (the plugin
//! emits no span of its own), so the receiver's trace joins the API call.
//!
//! `traceparent` version `00` must be exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, with a
//! trace id and a parent id that are not all zeros. A higher version (`01`..`fe`) is accepted by
//! the specification's rule for versions it does not know: its first 55 characters parse as
//! version 00 does, and anything after them starts with `-` (visible ASCII, bounded); it is
//! forwarded as it came. Version `ff` and anything else are invalid: the header is dropped, and
//! its `tracestate` with it. A `tracestate` longer than [`MAX_TRACESTATE`] bytes, with more than
//! 32 members or a member that does not parse is dropped alone (the specification lets a
//! vendor drop what it cannot propagate whole).

/// Longest `traceparent` forwarded (a future version may be longer than version 00's 55).
pub const MAX_TRACEPARENT: usize = 256;
/// Longest `tracestate` forwarded: the length the specification asks vendors to propagate.
pub const MAX_TRACESTATE: usize = 512;
/// Members a `tracestate` may list.
const MAX_MEMBERS: usize = 32;
/// The length of a version 00 `traceparent`.
const V00_LEN: usize = 55;

/// A valid trace context, as the request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    /// Empty when the request had none, or an invalid one.
    pub tracestate: String,
}

impl TraceContext {
    /// The request's headers as the trace context to forward, or None (absent or invalid).
    pub fn from_headers(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Self> {
        let traceparent = std::str::from_utf8(traceparent?).ok()?;
        if !valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| valid_tracestate(v))
            .unwrap_or_default();
        Some(TraceContext {
            traceparent: traceparent.to_string(),
            tracestate: tracestate.to_string(),
        })
    }

    /// The headers a delivery carries.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let state = (!self.tracestate.is_empty()).then(|| ("tracestate", self.tracestate.clone()));
        std::iter::once(("traceparent", self.traceparent.clone())).chain(state)
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn not_zeros(s: &str) -> bool {
    s.bytes().any(|b| b != b'0')
}

/// See the module doc.
pub fn valid_traceparent(value: &str) -> bool {
    if value.len() < V00_LEN || value.len() > MAX_TRACEPARENT {
        return false;
    }
    let (head, rest) = value.split_at_checked(V00_LEN).unwrap_or((value, ""));
    let mut parts = head.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let fields = lower_hex(version, 2)
        && lower_hex(trace_id, 32)
        && lower_hex(parent_id, 16)
        && lower_hex(flags, 2)
        && not_zeros(trace_id)
        && not_zeros(parent_id);
    match version {
        _ if !fields => false,
        "00" => rest.is_empty(),
        "ff" => false,
        _ => {
            rest.is_empty() || (rest.starts_with('-') && rest.bytes().all(|b| b.is_ascii_graphic()))
        }
    }
}

/// See the module doc.
pub fn valid_tracestate(value: &str) -> bool {
    if value.len() > MAX_TRACESTATE {
        return false;
    }
    let members: Vec<&str> = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    !members.is_empty() && members.len() <= MAX_MEMBERS && members.iter().all(|m| valid_member(m))
}

/// `key=value`: a key of lowercase letters, digits and `_-*/` (`tenant@system` allowed) starting
/// with a letter or digit, at most 256; a value of printable ASCII but `,` and `=`, at most 256,
/// not ending in a space.
fn valid_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    let key_char = |b: u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let key_ok = |k: &str| {
        k.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && k.bytes().all(key_char)
    };
    let key_valid = key.len() <= 256
        && match key.split_once('@') {
            Some((tenant, system)) => key_ok(tenant) && key_ok(system),
            None => key_ok(key),
        };
    let value_valid = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ');
    key_valid && value_valid
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn version_00_is_exact() {
        assert!(valid_traceparent(TP));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn future_versions_parse_as_00_with_more_after_a_dash() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(v1));
        assert!(valid_traceparent(&format!("{v1}-whatever-next")));
        assert!(!valid_traceparent(&format!("{v1}x")));
        assert!(!valid_traceparent(&format!("{v1}-a b")));
        assert!(!valid_traceparent(&format!(
            "{v1}-{}",
            "a".repeat(MAX_TRACEPARENT)
        )));
    }

    #[test]
    fn tracestate_is_kept_when_valid_and_bounded_and_dropped_alone() {
        let ctx =
            |state: &str| TraceContext::from_headers(Some(TP.as_bytes()), Some(state.as_bytes()));
        let good = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,t@sys=v";
        assert_eq!(ctx(good).unwrap().tracestate, good, "unchanged");
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        for bad in [
            "Rojo=1".to_string(),
            "rojo".to_string(),
            "rojo=a,b".to_string(),
            "rojo=a=b".to_string(),
            "rojo=é".to_string(),
            format!("a={}", "v".repeat(MAX_TRACESTATE)),
            members.join(","),
        ] {
            let trace = ctx(&bad).unwrap();
            assert_eq!(
                (trace.traceparent.as_str(), trace.tracestate.as_str()),
                (TP, ""),
                "{bad}"
            );
        }
        assert_eq!(TraceContext::from_headers(None, Some(b"a=b")), None);
        assert_eq!(
            TraceContext::from_headers(Some(b"00-bad"), Some(b"a=b")),
            None
        );
        assert_eq!(TraceContext::from_headers(Some(b"\xff"), None), None);
        let headers: Vec<_> = ctx("").unwrap().headers().collect();
        assert_eq!(headers, [("traceparent", TP.to_string())]);
    }
}
