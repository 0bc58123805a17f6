//! A retry asked through the API for a message this replica's attempt logs do not have, or no
//! longer keep in memory (fleet mode): the exhausted or dropped copy etcd keeps under
//! `P/dead/<webhook-id>` is read back, so a retry works on any replica and after a restart.

use crate::fleet::etcd::{self, Request};
use crate::fleet::keys::{Keys, DEAD};
use crate::fleet::vault::Vault;

/// The read of `webhook_id`'s kept copy.
pub fn lookup(keys: &Keys, webhook_id: &str) -> Request {
    etcd::range(&keys.dead(webhook_id))
}

/// etcd's answer to [`lookup`]: the stored message (opened with `vault`), `None` when etcd has
/// none, `Err` (why) when etcd did not answer usably or no configured key opens it.
pub fn read(
    keys: &Keys,
    vault: &Vault,
    status: Option<&str>,
    body: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    match status {
        Some("200") => {}
        Some(other) => return Err(format!("answered HTTP {other}")),
        None => return Err("did not answer (timeout or reset)".into()),
    }
    let answer = etcd::parse_range(body).map_err(|e| e.to_string())?;
    let Some(kv) = answer.kvs.first() else {
        return Ok(None);
    };
    let webhook_id = keys.name_in(DEAD, &kv.key).unwrap_or_default();
    vault
        .open_message(webhook_id, &kv.value)
        .map(Some)
        .map_err(|why| format!("the kept copy of {webhook_id} cannot be read: {why}"))
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
        let read = |status, body: &[u8]| read(&Keys::new("/pw"), &Vault::default(), status, body);
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

    #[test]
    fn a_sealed_copy_is_opened_for_its_webhook_id_only() {
        use crate::support::sealing::{Key, Keyring};
        use crate::tests::fixtures::seeded;
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let vault = Vault::new(Some(Keyring::new(Key::new(&[1; 32]), vec![])), true);
        let sealed = vault
            .seal_message(&mut seeded(1), "msg_1", b"v1\n".to_vec())
            .unwrap();
        let answer = |key: &[u8]| {
            format!(
                r#"{{"header":{{"revision":"9"}},"kvs":[{{"key":"{}","value":"{}"}}],"count":"1"}}"#,
                b64(key),
                b64(&sealed)
            )
        };
        let keys = Keys::new("/pw");
        let found = answer(b"/pw/dead/msg_1");
        assert_eq!(
            read(&keys, &vault, Some("200"), found.as_bytes()),
            Ok(Some(b"v1\n".to_vec()))
        );
        let moved = answer(b"/pw/dead/msg_2");
        let why = read(&keys, &vault, Some("200"), moved.as_bytes()).unwrap_err();
        assert!(
            why.starts_with("the kept copy of msg_2 cannot be read"),
            "{why}"
        );
        let why = read(&keys, &Vault::default(), Some("200"), found.as_bytes()).unwrap_err();
        assert!(why.contains("sealed with key id"), "{why}");
    }
}
