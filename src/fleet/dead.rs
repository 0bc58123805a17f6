//! A retry asked through the API for a message this replica's attempt logs do not have, or no
//! longer keep in memory (fleet mode): the exhausted or dropped copy etcd keeps under
//! `P/dead/<webhook-id>` is read back, so a retry works on any replica and after a restart.

use crate::fleet::etcd::{self, Request};
use crate::fleet::keys::Keys;

/// The read of `webhook_id`'s kept copy.
pub fn lookup(keys: &Keys, webhook_id: &str) -> Request {
    etcd::range(&keys.dead(webhook_id))
}

/// etcd's answer to [`lookup`]: the stored message, `None` when etcd has none, `Err` (why)
/// when etcd did not answer usably.
pub fn read(status: Option<&str>, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match status {
        Some("200") => {}
        Some(other) => return Err(format!("answered HTTP {other}")),
        None => return Err("did not answer (timeout or reset)".into()),
    }
    let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
    Ok(answer.kvs.into_iter().next().map(|kv| kv.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_reads_the_one_dead_key() {
        let request = lookup(&Keys::new("/pw"), "msg_1");
        assert_eq!(request, etcd::range(b"/pw/dead/msg_1"));
    }

    #[test]
    fn an_answer_gives_the_value_none_or_why_not() {
        let found = br#"{"header":{"revision":"9"},"kvs":[{"key":"L3B3L2RlYWQvbXNnXzE=","value":"djEK","mod_revision":"8"}],"count":"1"}"#;
        assert_eq!(read(Some("200"), found), Ok(Some(b"v1\n".to_vec())));
        assert_eq!(
            read(Some("200"), br#"{"header":{"revision":"9"}}"#),
            Ok(None)
        );
        assert_eq!(read(Some("503"), b""), Err("answered HTTP 503".to_string()));
        assert_eq!(
            read(None, b""),
            Err("did not answer (timeout or reset)".to_string())
        );
        let broken = read(Some("200"), b"<html>").unwrap_err();
        assert!(broken.starts_with("etcd's answer is not JSON"), "{broken}");
    }
}
