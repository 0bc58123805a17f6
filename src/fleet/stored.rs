//! A pending message as the durable outbox keeps it in etcd (`P/msg/<lease>/<webhook-id>`, and
//! `P/dead/<webhook-id>` once exhausted or dropped): a version line, four header lines and the
//! payload's bytes as they are, so a claimer rebuilds the same webhook (same id, same body).
//!
//! ```text
//! v1\n<webhook-id>\n<subscription id>\n<event type>\n<created, ms since the epoch>\n<payload>
//! v2\n<webhook-id>\n<subscription id>\n<event type>\n<created>\n<traceparent>\n<tracestate>\n<payload>
//! ```
//!
//! `v2` is written only for a message whose event carried a trace context (so a claimer sends
//! it too); every other message stays `v1`, which replicas from before trace context read.

use crate::model::trace::TraceContext;

const VERSION: &str = "v1";
const TRACED: &str = "v2";

/// A message read back from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub webhook_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub created_ms: u64,
    pub payload: Vec<u8>,
    pub trace: Option<TraceContext>,
}

/// The stored form of a message; `None` when a header holds a line break (then the message
/// cannot be kept in etcd and stays in memory only).
pub fn encode(
    webhook_id: &str,
    subscription_id: &str,
    event_type: &str,
    created_ms: u64,
    payload: &[u8],
) -> Option<Vec<u8>> {
    encode_traced(
        webhook_id,
        subscription_id,
        event_type,
        created_ms,
        None,
        payload,
    )
}

/// [`encode`], with the trace context the webhooks carry (`v2`).
pub fn encode_traced(
    webhook_id: &str,
    subscription_id: &str,
    event_type: &str,
    created_ms: u64,
    trace: Option<&TraceContext>,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let trace_lines = trace.map(|t| [t.traceparent.as_str(), t.tracestate.as_str()]);
    if [webhook_id, subscription_id, event_type]
        .iter()
        .chain(trace_lines.iter().flatten())
        .any(|h| h.contains('\n'))
    {
        return None;
    }
    let head = match trace_lines {
        None => format!("{VERSION}\n{webhook_id}\n{subscription_id}\n{event_type}\n{created_ms}\n"),
        Some([parent, state]) => format!(
            "{TRACED}\n{webhook_id}\n{subscription_id}\n{event_type}\n{created_ms}\n{parent}\n{state}\n"
        ),
    };
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Reads a stored message back; `None` for anything else (another version, a broken value).
pub fn decode(bytes: &[u8]) -> Option<Stored> {
    let traced = bytes.starts_with(TRACED.as_bytes());
    let mut parts = bytes.splitn(if traced { 8 } else { 6 }, |b| *b == b'\n');
    let mut line = || std::str::from_utf8(parts.next()?).ok().map(str::to_string);
    let version = line()?;
    if version != VERSION && version != TRACED {
        return None;
    }
    let webhook_id = line().filter(|s| !s.is_empty())?;
    let subscription_id = line().filter(|s| !s.is_empty())?;
    let event_type = line()?;
    let created_ms = line()?.parse().ok()?;
    let trace = match traced {
        true => {
            let (parent, state) = (line()?, line()?);
            let state = (!state.is_empty()).then_some(state.as_bytes());
            Some(TraceContext::from_headers(Some(parent.as_bytes()), state)?)
        }
        false => None,
    };
    let payload = parts.next()?.to_vec();
    Some(Stored {
        webhook_id,
        subscription_id,
        event_type,
        created_ms,
        payload,
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_as_written_whatever_its_payload() {
        let payload = b"{\"a\":\n1}\n\xff\x00".to_vec();
        let bytes = encode("msg_1", "sub_1", "order.created", 17, &payload).unwrap();
        assert!(bytes.starts_with(b"v1\nmsg_1\nsub_1\norder.created\n17\n"));
        let back = decode(&bytes).unwrap();
        assert_eq!(
            back,
            Stored {
                webhook_id: "msg_1".into(),
                subscription_id: "sub_1".into(),
                event_type: "order.created".into(),
                created_ms: 17,
                payload,
                trace: None,
            }
        );
        let empty = decode(&encode("m", "s", "t", 0, b"").unwrap()).unwrap();
        assert!(empty.payload.is_empty());
    }

    #[test]
    fn a_trace_context_is_stored_with_its_message() {
        let trace = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "rojo=1".into(),
        };
        let bytes = encode_traced("m", "s", "t", 3, Some(&trace), b"{\n}").unwrap();
        assert!(bytes.starts_with(b"v2\nm\ns\nt\n3\n00-4bf9"));
        let back = decode(&bytes).unwrap();
        assert_eq!(
            (back.trace, back.payload),
            (Some(trace.clone()), b"{\n}".to_vec())
        );
        let stateless = TraceContext {
            tracestate: String::new(),
            ..trace
        };
        let bytes = encode_traced("m", "s", "t", 3, Some(&stateless), b"").unwrap();
        assert_eq!(decode(&bytes).unwrap().trace, Some(stateless));
        assert_eq!(decode(b"v2\nm\ns\nt\n3\n00-bad\n\n{}"), None);
    }

    #[test]
    fn headers_with_line_breaks_are_not_stored() {
        assert_eq!(encode("m", "s", "a\nb", 0, b"x"), None);
        assert_eq!(encode("m\n", "s", "t", 0, b"x"), None);
    }

    #[test]
    fn anything_else_is_not_a_message() {
        for bad in [
            &b""[..],
            b"v2\nm\ns\nt\n1\nx",
            b"v1\nm\ns\nt\nnot-a-number\nx",
            b"v1\nm\ns\nt\n1",
            b"v1\n\ns\nt\n1\nx",
            b"v1\nm\n\nt\n1\nx",
            b"v1\n\xff\ns\nt\n1\nx",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
