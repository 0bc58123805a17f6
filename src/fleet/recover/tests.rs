use super::*;
use base64::Engine as _;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A copy as etcd keeps it: (webhook-id, subscription, detection ms, create revision).
fn kv((id, sub, ms, rev): (&str, &str, u64, i64)) -> String {
    let value = stored::encode(id, sub, "order.created", ms, b"{}").unwrap();
    format!(
        r#"{{"key":"{}","value":"{}","create_revision":"{rev}","mod_revision":"{rev}"}}"#,
        b64(format!("/pw/dead/{id}").as_bytes()),
        b64(&value)
    )
}

fn page(copies: &[(&str, &str, u64, i64)], more: bool) -> Vec<u8> {
    let kvs: Vec<String> = copies.iter().copied().map(kv).collect();
    format!(
        r#"{{"header":{{"revision":"50"}},"kvs":[{}],"more":{more},"count":"{}"}}"#,
        kvs.join(","),
        copies.len()
    )
    .into_bytes()
}

/// A take txn's answer: one delete answer per op, `deleted` each.
fn took(deleted: &[u8]) -> Vec<u8> {
    let ops: Vec<String> = deleted
        .iter()
        .map(|d| {
            format!(
                r#"{{"response_delete_range":{{"header":{{"revision":"51"}},"deleted":"{d}"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"header":{{"revision":"51"}},"succeeded":true,"responses":[{}]}}"#,
        ops.join(",")
    )
    .into_bytes()
}

fn deletes(ids: &[&str]) -> Request {
    let ops: Vec<etcd::Op> = ids
        .iter()
        .map(|id| etcd::Op::Delete {
            key: format!("/pw/dead/{id}").into_bytes(),
            prefix: false,
        })
        .collect();
    etcd::txn(&[], &ops, &[])
}

fn scan(from: &[u8], limit: u64) -> Request {
    etcd::range_query(&RangeQuery {
        key: from.to_vec(),
        end: b"/pw/dead0".to_vec(),
        limit,
        ..RangeQuery::default()
    })
}

fn ids(step: Step) -> Vec<String> {
    match step {
        Step::Done { taken, .. } => taken.into_iter().map(|t| t.webhook_id).collect(),
        other => panic!("not done: {other:?}"),
    }
}

#[test]
fn scans_in_pages_then_takes_the_subscriptions_copies_since_in_detection_order() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let (mut r, first) = Recovery::start(&keys, "sub_1", 100, 1000);
    assert_eq!(first, scan(b"/pw/dead/", FIRST_PAGE));
    let one = page(
        &[
            ("msg_a", "sub_1", 300, 7),
            ("msg_b", "sub_2", 300, 8),
            ("msg_c", "sub_1", 50, 3),
        ],
        true,
    );
    let next = r.on_answer(&vault, Some("200"), &one);
    assert_eq!(next, Step::Send(scan(b"/pw/dead/msg_c\0", FIRST_PAGE)));
    let two = page(
        &[("msg_d", "sub_1", 200, 9), ("msg_e", "sub_1", 300, 5)],
        false,
    );
    let take = r.on_answer(&vault, Some("200"), &two);
    // Detection order; the same millisecond in etcd's create order. Before since: left.
    assert_eq!(take, Step::Send(deletes(&["msg_d", "msg_e", "msg_a"])));
    // msg_e was taken by another call meanwhile: not this call's to send.
    let done = r.on_answer(&vault, Some("200"), &took(&[1, 0, 1]));
    assert_eq!(ids(done), ["msg_d", "msg_a"]);
}

#[test]
fn takes_in_batches_and_keeps_at_most_max_oldest_first() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let names: Vec<String> = (0..TAKE_BATCH + 10).map(|i| format!("m{i:03}")).collect();
    let copies: Vec<(&str, &str, u64, i64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), "s", 1000 - i as u64, i as i64 + 1))
        .collect();
    let (mut r, _) = Recovery::start(&keys, "s", 0, TAKE_BATCH + 5);
    let Step::Send(first) = r.on_answer(&vault, Some("200"), &page(&copies, false)) else {
        panic!("no take");
    };
    // Oldest first: the last names were detected first; the newest 5 are past `max`.
    let oldest: Vec<&str> = names
        .iter()
        .rev()
        .take(TAKE_BATCH)
        .map(String::as_str)
        .collect();
    assert_eq!(first, deletes(&oldest));
    let Step::Send(second) = r.on_answer(&vault, Some("200"), &took(&[1; TAKE_BATCH])) else {
        panic!("no second take");
    };
    let rest: Vec<&str> = names
        .iter()
        .rev()
        .skip(TAKE_BATCH)
        .take(5)
        .map(String::as_str)
        .collect();
    assert_eq!(second, deletes(&rest));
    let taken = ids(r.on_answer(&vault, Some("200"), &took(&[1; 5])));
    assert_eq!(taken.len(), TAKE_BATCH + 5);
    assert_eq!(
        taken.first().map(String::as_str),
        names.last().map(String::as_str)
    );
}

#[test]
fn a_page_without_an_answer_is_asked_again_smaller_then_given_up() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let (mut r, _) = Recovery::start(&keys, "s", 0, 10);
    let mut limit = FIRST_PAGE;
    while limit > 1 {
        limit /= 2;
        assert_eq!(
            r.on_answer(&vault, None, b""),
            Step::Send(scan(b"/pw/dead/", limit))
        );
    }
    let gave_up = r.on_answer(&vault, None, b"");
    assert_eq!(
        gave_up,
        Step::Unavailable("did not answer (timeout or reset)".into())
    );
    let (mut r, _) = Recovery::start(&keys, "s", 0, 10);
    assert_eq!(
        r.on_answer(&vault, Some("503"), b""),
        Step::Unavailable("answered HTTP 503".into())
    );
    let (mut r, _) = Recovery::start(&keys, "s", 0, 10);
    let Step::Unavailable(why) = r.on_answer(&vault, Some("200"), b"<html>") else {
        panic!("a broken answer is not a scan");
    };
    assert!(why.starts_with("etcd's answer is not JSON"), "{why}");
}

#[test]
fn nothing_found_is_done_at_once_and_unreadable_copies_are_counted() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let (mut r, _) = Recovery::start(&keys, "s", 0, 10);
    let broken = format!(
        r#"{{"header":{{"revision":"5"}},"kvs":[{{"key":"{}","value":"{}","create_revision":"2"}}],"count":"1"}}"#,
        b64(b"/pw/dead/m1"),
        b64(b"v9\nnot a message")
    );
    let done = r.on_answer(&vault, Some("200"), broken.as_bytes());
    assert_eq!(
        done,
        Step::Done {
            taken: vec![],
            unreadable: 1
        }
    );
}

#[test]
fn a_failed_take_sends_nothing_first_and_what_was_taken_after() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let (mut r, _) = Recovery::start(&keys, "s", 0, 10);
    let _ = r.on_answer(&vault, Some("200"), &page(&[("m1", "s", 1, 1)], false));
    assert_eq!(
        r.on_answer(&vault, None, b""),
        Step::Unavailable("did not answer (timeout or reset)".into())
    );
    let names: Vec<String> = (0..TAKE_BATCH + 1).map(|i| format!("m{i:03}")).collect();
    let copies: Vec<(&str, &str, u64, i64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), "s", i as u64, i as i64 + 1))
        .collect();
    let (mut r, _) = Recovery::start(&keys, "s", 0, 1000);
    let _ = r.on_answer(&vault, Some("200"), &page(&copies, false));
    let _ = r.on_answer(&vault, Some("200"), &took(&[1; TAKE_BATCH]));
    let taken = ids(r.on_answer(&vault, Some("503"), b""));
    assert_eq!(
        taken.len(),
        TAKE_BATCH,
        "the first batch is sent, the second left in etcd"
    );
}

#[test]
fn a_sealed_copy_is_opened_and_sent_opened() {
    use crate::support::sealing::{Key, Keyring};
    use crate::tests::fixtures::seeded;
    let vault = Vault::new(Some(Keyring::new(Key::new(&[1; 32]), vec![])), true);
    let value = stored::encode("m1", "s", "order.created", 5, b"{}").unwrap();
    let sealed = vault
        .seal_message(&mut seeded(1), "m1", value.clone())
        .unwrap();
    let answer = format!(
        r#"{{"header":{{"revision":"5"}},"kvs":[{{"key":"{}","value":"{}","create_revision":"2"}}],"count":"1"}}"#,
        b64(b"/pw/dead/m1"),
        b64(&sealed)
    );
    let (mut r, _) = Recovery::start(&Keys::new("/pw"), "s", 0, 10);
    let _ = r.on_answer(&vault, Some("200"), answer.as_bytes());
    let done = r.on_answer(&vault, Some("200"), &took(&[1]));
    let Step::Done { taken, .. } = done else {
        panic!("not done");
    };
    assert_eq!(
        taken,
        vec![Taken {
            webhook_id: "m1".into(),
            stored: value
        }]
    );
}

#[test]
fn the_oldest_max_are_kept_across_pages() {
    let keys = Keys::new("/pw");
    let vault = Vault::default();
    let (mut r, _) = Recovery::start(&keys, "s", 0, 2);
    let one = page(
        &[("m5", "s", 5, 1), ("m6", "s", 6, 2), ("m7", "s", 7, 3)],
        true,
    );
    let _ = r.on_answer(&vault, Some("200"), &one);
    assert_eq!(r.found.len(), 2, "bounded while scanning");
    let two = page(&[("m8", "s", 1, 4)], false);
    assert_eq!(
        r.on_answer(&vault, Some("200"), &two),
        Step::Send(deletes(&["m8", "m5"]))
    );
}
