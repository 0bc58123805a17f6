//! Messages from the filter (any worker) to the dispatcher (main thread) through the shared queue.
//!
//! A tiny line-framed format instead of JSON: the payload is already JSON and is passed through
//! untouched, so nothing is escaped or parsed twice on the way.

/// The name both sides use for the shared queue.
pub const QUEUE_NAME: &str = "proxy_webhooks_events";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueMessage {
    /// A detected event, to be fanned out to every matching subscription.
    Event {
        event_type: String,
        payload: Vec<u8>,
    },
    /// A `webhook.test` event for one subscription only.
    Test {
        subscription_id: String,
        payload: Vec<u8>,
    },
    /// Send a failed or exhausted message again, with the same webhook-id.
    Replay { webhook_id: String },
}

impl QueueMessage {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, name, payload): (&str, &str, &[u8]) = match self {
            QueueMessage::Event {
                event_type,
                payload,
            } => ("E", event_type, payload),
            QueueMessage::Test {
                subscription_id,
                payload,
            } => ("T", subscription_id, payload),
            QueueMessage::Replay { webhook_id } => ("R", webhook_id, &[]),
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
        let payload = parts.next().unwrap_or_default().to_vec();
        match tag {
            b"E" => Ok(QueueMessage::Event {
                event_type: name,
                payload,
            }),
            b"T" => Ok(QueueMessage::Test {
                subscription_id: name,
                payload,
            }),
            b"R" => Ok(QueueMessage::Replay { webhook_id: name }),
            _ => Err("queue message with an unknown tag".to_string()),
        }
    }
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
            },
            QueueMessage::Test {
                subscription_id: "sub_1".into(),
                payload: b"{}".to_vec(),
            },
            QueueMessage::Replay {
                webhook_id: "msg_1".into(),
            },
        ];
        for m in messages {
            assert_eq!(QueueMessage::decode(&m.encode()).unwrap(), m);
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
