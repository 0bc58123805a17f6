//! A pending message as the durable outbox keeps it in etcd (`P/msg/<lease>/<webhook-id>`, and
//! `P/dead/<webhook-id>` once exhausted or dropped): a version line, four header lines and the
//! payload's bytes as they are, so a claimer rebuilds the same webhook (same id, same body).
//!
//! ```text
//! v1\n<webhook-id>\n<subscription id>\n<event type>\n<created, ms since the epoch>\n<payload>
//! ```

const VERSION: &str = "v1";

/// A message read back from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub webhook_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub created_ms: u64,
    pub payload: Vec<u8>,
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
    if [webhook_id, subscription_id, event_type]
        .iter()
        .any(|h| h.contains('\n'))
    {
        return None;
    }
    let head = format!("{VERSION}\n{webhook_id}\n{subscription_id}\n{event_type}\n{created_ms}\n");
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Reads a stored message back; `None` for anything else (another version, a broken value).
pub fn decode(bytes: &[u8]) -> Option<Stored> {
    let mut parts = bytes.splitn(6, |b| *b == b'\n');
    let mut line = || std::str::from_utf8(parts.next()?).ok().map(str::to_string);
    if line()? != VERSION {
        return None;
    }
    let webhook_id = line().filter(|s| !s.is_empty())?;
    let subscription_id = line().filter(|s| !s.is_empty())?;
    let event_type = line()?;
    let created_ms = line()?.parse().ok()?;
    let payload = parts.next()?.to_vec();
    Some(Stored {
        webhook_id,
        subscription_id,
        event_type,
        created_ms,
        payload,
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
            }
        );
        let empty = decode(&encode("m", "s", "t", 0, b"").unwrap()).unwrap();
        assert!(empty.payload.is_empty());
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
