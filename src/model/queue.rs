//! Messages from the filter (any worker) to the dispatcher (main thread) through the shared queue.
//!
//! A tiny line-framed format instead of JSON: the payload is already JSON and is passed through
//! untouched, so nothing is escaped or parsed twice on the way.
//!
//! `<tag>\n<name>\n<payload>`; an event addressed to one consumer or to nobody has one more
//! line, `A\n<type>\n<audience>\n<payload>` with `@<consumer>` or `-`. An event for all
//! consumers keeps the original `E` form, which (from before audiences) means exactly that.
//! An event whose request carried a trace context is `B\n<type>\n<audience>\n<traceparent>\n
//! <tracestate>\n<payload>`, the audience `*` for all consumers (header values have no line
//! breaks), so untraced events cost nothing more.

use crate::model::audience::Target;
use crate::model::trace::TraceContext;

/// The name both sides use for the shared queue.
pub const QUEUE_NAME: &str = "proxy_webhooks_events";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueMessage {
    /// A detected event, to be fanned out to every matching subscription.
    Event {
        event_type: String,
        payload: Vec<u8>,
        /// Whose subscriptions receive it (privileged ones always do).
        audience: Target,
        /// The trace context of the request that caused it, forwarded on its webhooks.
        trace: Option<TraceContext>,
    },
    /// A `webhook.test` event for one subscription only.
    Test {
        subscription_id: String,
        payload: Vec<u8>,
    },
    /// Send a failed or exhausted message again, with the same webhook-id: the one the
    /// dispatcher keeps, else (fleet mode) `kept`, its stored form from etcd's `P/dead/`
    /// ([`crate::fleet::stored`]; empty when the API did not look there).
    Replay { webhook_id: String, kept: Vec<u8> },
    /// Send again every message of a subscription detected at or after `since_ms` that the
    /// dispatcher keeps for replay, in detection order (`POST .../recover`).
    Recover {
        subscription_id: String,
        since_ms: u64,
    },
    /// Fleet mode: a worker put into the cache the record etcd had at `mod_revision` (its own
    /// API write, or a newer record the write found), which the dispatcher's registry read
    /// checks again (`crate::fleet::sync`).
    Cached {
        subscription_id: String,
        mod_revision: i64,
    },
}

impl QueueMessage {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, name, payload): (&str, &str, &[u8]) = match self {
            QueueMessage::Event {
                event_type,
                payload,
                audience,
                trace: Some(trace),
            } => return encode_traced(event_type, audience, trace, payload),
            QueueMessage::Event {
                event_type,
                payload,
                audience: Target::All,
                trace: None,
            } => ("E", event_type, payload),
            QueueMessage::Event {
                event_type,
                payload,
                audience,
                trace: None,
            } => return encode_addressed(event_type, audience, payload),
            QueueMessage::Test {
                subscription_id,
                payload,
            } => ("T", subscription_id, payload),
            QueueMessage::Replay { webhook_id, kept } => ("R", webhook_id, kept),
            QueueMessage::Recover {
                subscription_id,
                since_ms,
            } => return format!("V\n{subscription_id}\n{since_ms}").into_bytes(),
            QueueMessage::Cached {
                subscription_id,
                mod_revision,
            } => {
                let revision = mod_revision.to_string();
                return [
                    b"C\n",
                    subscription_id.as_bytes(),
                    b"\n",
                    revision.as_bytes(),
                ]
                .concat();
            }
        };
        let mut out = Vec::with_capacity(tag.len() + name.len() + payload.len() + 2);
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<QueueMessage, String> {
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let tag = parts.next().unwrap_or_default();
        let name = parts
            .next()
            .and_then(|n| std::str::from_utf8(n).ok())
            .filter(|n| !n.is_empty())
            .ok_or("queue message without a name")?
            .to_string();
        let rest = parts.next().unwrap_or_default();
        if tag == b"A" {
            return decode_addressed(name, rest);
        }
        if tag == b"B" {
            return decode_traced(name, rest);
        }
        let payload = rest.to_vec();
        match tag {
            b"E" => Ok(QueueMessage::Event {
                event_type: name,
                payload,
                audience: Target::All,
                trace: None,
            }),
            b"T" => Ok(QueueMessage::Test {
                subscription_id: name,
                payload,
            }),
            b"R" => Ok(QueueMessage::Replay {
                webhook_id: name,
                kept: payload,
            }),
            b"V" => Ok(QueueMessage::Recover {
                subscription_id: name,
                since_ms: std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .ok_or("queue message with a malformed time")?,
            }),
            b"C" => Ok(QueueMessage::Cached {
                subscription_id: name,
                mod_revision: std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .ok_or("queue message with a malformed revision")?,
            }),
            _ => Err("queue message with an unknown tag".to_string()),
        }
    }
}

fn encode_addressed(event_type: &str, audience: &Target, payload: &[u8]) -> Vec<u8> {
    let line = match audience {
        Target::Consumer(name) => format!("@{name}"),
        Target::All | Target::Nobody => "-".to_string(),
    };
    let mut out = Vec::with_capacity(event_type.len() + line.len() + payload.len() + 4);
    for part in [b"A".as_slice(), event_type.as_bytes(), line.as_bytes()] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out.extend_from_slice(payload);
    out
}

/// The `B` form: the `A` form's lines (`*` for all consumers), then the trace context's two.
fn encode_traced(
    event_type: &str,
    audience: &Target,
    trace: &TraceContext,
    payload: &[u8],
) -> Vec<u8> {
    let line = match audience {
        Target::Consumer(name) => format!("@{name}"),
        Target::All => "*".to_string(),
        Target::Nobody => "-".to_string(),
    };
    let parts = [
        b"B".as_slice(),
        event_type.as_bytes(),
        line.as_bytes(),
        trace.traceparent.as_bytes(),
        trace.tracestate.as_bytes(),
    ];
    let mut out =
        Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + payload.len());
    for part in parts {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out.extend_from_slice(payload);
    out
}

/// `<audience>\n<traceparent>\n<tracestate>\n<payload>` after `B\n<type>\n`; the trace
/// context is checked again (a malformed one is refused, as any malformed message).
fn decode_traced(event_type: String, rest: &[u8]) -> Result<QueueMessage, String> {
    let mut parts = rest.splitn(4, |b| *b == b'\n');
    let line = parts.next().unwrap_or_default();
    let traceparent = parts.next();
    let tracestate = parts.next().filter(|s| !s.is_empty());
    let payload = parts.next().ok_or("queue message without a payload")?;
    let trace = TraceContext::from_headers(traceparent, tracestate)
        .filter(|t| tracestate.is_none_or(|s| s == t.tracestate.as_bytes()))
        .ok_or("queue message with a malformed trace context")?;
    let addressed = match line {
        b"*" => QueueMessage::Event {
            event_type,
            payload: Vec::new(),
            audience: Target::All,
            trace: None,
        },
        _ => decode_addressed(event_type, &[line, b"\n"].concat())?,
    };
    let QueueMessage::Event {
        event_type,
        audience,
        ..
    } = addressed
    else {
        return Err("queue message with a malformed audience".to_string());
    };
    Ok(QueueMessage::Event {
        event_type,
        payload: payload.to_vec(),
        audience,
        trace: Some(trace),
    })
}

/// `<audience>\n<payload>` after `A\n<type>\n`.
fn decode_addressed(event_type: String, rest: &[u8]) -> Result<QueueMessage, String> {
    let mut parts = rest.splitn(2, |b| *b == b'\n');
    let line = parts.next().unwrap_or_default();
    let audience = match line {
        b"-" => Target::Nobody,
        _ => match line
            .strip_prefix(b"@")
            .and_then(crate::model::identity::consumer_name)
        {
            Some(name) => Target::Consumer(name.to_string()),
            None => return Err("queue message with a malformed audience".to_string()),
        },
    };
    Ok(QueueMessage::Event {
        event_type,
        payload: parts.next().unwrap_or_default().to_vec(),
        audience,
        trace: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let messages = [
            QueueMessage::Event {
                event_type: "order.created".into(),
                payload: b"{\"a\":\n1}".to_vec(),
                audience: Target::All,
                trace: None,
            },
            QueueMessage::Event {
                event_type: "order.created".into(),
                payload: b"{\"a\":\n1}".to_vec(),
                audience: Target::Consumer("acme|7@x".into()),
                trace: None,
            },
            QueueMessage::Event {
                event_type: "order.created".into(),
                payload: b"\n".to_vec(),
                audience: Target::Nobody,
                trace: None,
            },
            QueueMessage::Event {
                event_type: "order.created".into(),
                payload: Vec::new(),
                audience: Target::Consumer("-".into()),
                trace: None,
            },
            QueueMessage::Test {
                subscription_id: "sub_1".into(),
                payload: b"{}".to_vec(),
            },
            QueueMessage::Replay {
                webhook_id: "msg_1".into(),
                kept: Vec::new(),
            },
            QueueMessage::Replay {
                webhook_id: "msg_1".into(),
                kept: b"v1\nmsg_1\nsub_1\na.b\n7\n{\"a\":\n1}".to_vec(),
            },
            QueueMessage::Cached {
                subscription_id: "sub_1".into(),
                mod_revision: 42,
            },
            QueueMessage::Recover {
                subscription_id: "sub_1".into(),
                since_ms: 1_700_000_000_000,
            },
        ];
        for m in messages {
            assert_eq!(QueueMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn traced_events_round_trip_for_every_audience_and_refuse_a_bad_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (audience, tracestate) in [
            (Target::All, "rojo=1,congo=2"),
            (Target::Consumer("acme".into()), ""),
            (Target::Nobody, "a=b"),
        ] {
            let m = QueueMessage::Event {
                event_type: "a.b".into(),
                payload: b"{\"a\":\n1}".to_vec(),
                audience,
                trace: Some(TraceContext {
                    traceparent: tp.into(),
                    tracestate: tracestate.into(),
                }),
            };
            assert_eq!(QueueMessage::decode(&m.encode()).unwrap(), m);
        }
        for bad in [
            "B\na.b\n*\n00-bad\n\n{}".to_string(),
            format!("B\na.b\n*\n{tp}\nBAD\n{{}}"),
            format!("B\na.b\nacme\n{tp}\n\n{{}}"),
            format!("B\na.b\n*\n{tp}"),
        ] {
            assert!(QueueMessage::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_for_all_keep_the_original_form() {
        let event = |audience: Target| QueueMessage::Event {
            event_type: "a.b".into(),
            payload: b"{}".to_vec(),
            audience,
            trace: None,
        };
        assert_eq!(event(Target::All).encode(), b"E\na.b\n{}");
        assert_eq!(
            event(Target::Consumer("acme".into())).encode(),
            b"A\na.b\n@acme\n{}"
        );
        assert_eq!(event(Target::Nobody).encode(), b"A\na.b\n-\n{}");
    }

    #[test]
    fn refuses_malformed_audiences() {
        for bad in [
            &b"A\na.b\n"[..],
            b"A\na.b\nacme\n{}",
            b"A\na.b\n@\n{}",
            b"A\na.b\n@a b\n{}",
            b"A\na.b\n*\n{}",
            b"A\n\n@acme\n{}",
            b"C\nsub_1\n",
            b"C\nsub_1\nseven",
            b"V\nsub_1\n",
            b"V\nsub_1\n-1",
        ] {
            assert!(QueueMessage::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(QueueMessage::decode(b"").is_err());
        assert!(QueueMessage::decode(b"X\nname\n").is_err());
        assert!(QueueMessage::decode(b"E\n\n{}").is_err());
        assert!(QueueMessage::decode(b"E\n\xff\n{}").is_err());
    }
}
