//! The token conversation on answers recorded from etcd 3.4.23 (2026-12-06, `--auth-token
//! simple`): a token, a wrong password, authentication off, a rejected token, a missing one.

use super::*;
use crate::registry::store::MemoryStore;

const HEADER: &str = r#""header":{"cluster_id":"2949540925012729009","member_id":"13056168552411208127","revision":"1","raft_term":"2"}"#;
const INVALID_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#;
const NO_USER: &str = r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#;
const WRONG_PASSWORD: &str = r#"{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#;
const AUTH_OFF: &str = r#"{"error":"etcdserver: authentication is not enabled","message":"etcdserver: authentication is not enabled","code":9}"#;
const DENIED: &str = r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}"#;

fn token_answer(token: &str) -> Vec<u8> {
    format!(r#"{{{HEADER},"token":"{token}"}}"#).into_bytes()
}

fn range() -> Request {
    etcd::range(b"/p/sub/a")
}

/// An Auth with token `t1`.
fn authenticated() -> Auth {
    let mut auth = Auth::new("webhooks", "s3cret");
    assert!(auth.due(0).is_some());
    let ready = auth.on_authenticated(Some("200"), &token_answer("t1.1"), 0);
    assert_eq!(ready, Authenticated::Ready);
    auth
}

#[test]
fn the_authenticate_call_names_the_user_and_never_shows_the_password() {
    let r = etcd::authenticate("webhooks", "s3cret");
    assert_eq!(r.path, "/v3/auth/authenticate");
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "webhooks", "password": "s3cret"})
    );
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("(credentials)"),
        "{shown}"
    );
    assert!(format!("{:?}", range()).contains("body"));
    assert_eq!(format!("{:?}", Pass::Token("t1.1".into())), "Token(..)");
}

#[test]
fn a_token_is_parsed_and_a_bad_one_refused() {
    assert_eq!(
        etcd::parse_authenticate(&token_answer("aeVtYm.13")).unwrap(),
        "aeVtYm.13"
    );
    for bad in ["", "a b", "a\\nb", "é"] {
        let e = etcd::parse_authenticate(&token_answer(bad)).unwrap_err();
        assert!(e.to_string().contains("`token`"), "{bad}: {e}");
    }
    let missing = etcd::parse_authenticate(format!("{{{HEADER}}}").as_bytes()).unwrap_err();
    assert!(missing.to_string().contains("`token` is missing"));
    let number = etcd::parse_authenticate(br#"{"token": 5}"#).unwrap_err();
    assert!(number.to_string().contains("a number, not a string"));
}

#[test]
fn only_a_rejected_or_missing_token_is_a_rejection() {
    assert!(rejected(Some("401"), INVALID_TOKEN.as_bytes()));
    assert!(rejected(Some("400"), NO_USER.as_bytes()));
    let old = r#"{"error":"x","message":"etcdserver: revision of auth store is old","code":3}"#;
    assert!(rejected(Some("400"), old.as_bytes()));
    assert!(!rejected(Some("403"), DENIED.as_bytes()));
    assert!(!rejected(Some("400"), WRONG_PASSWORD.as_bytes()));
    assert!(!rejected(Some("200"), INVALID_TOKEN.as_bytes()));
    assert!(!rejected(None, b""));
    assert!(!rejected(Some("503"), b"upstream connect error"));
}

#[test]
fn a_token_is_asked_for_once_and_then_carried() {
    let mut auth = Auth::new("webhooks", "s3cret");
    assert_eq!(*auth.pass(), Pass::None);
    let call = auth.due(0).unwrap();
    assert_eq!(call.path, etcd::AUTHENTICATE);
    assert!(auth.due(0).is_none(), "one authentication at a time");
    assert_eq!(
        auth.on_authenticated(Some("200"), &token_answer("t1.1"), 0),
        Authenticated::Ready
    );
    assert_eq!(auth.pass().header(), Some("t1.1"));
    assert!(auth.due(10).is_none(), "a token is kept");
}

#[test]
fn a_wrong_password_backs_off_up_to_five_seconds_and_names_the_user_only() {
    let mut auth = Auth::new("webhooks", "s3cret");
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        auth.due(now).unwrap();
        let Authenticated::Failed { why, failed } =
            auth.on_authenticated(Some("400"), WRONG_PASSWORD.as_bytes(), now)
        else {
            panic!("a wrong password authenticated");
        };
        assert!(why.contains("\"webhooks\"") && why.contains("invalid user ID or password"));
        assert!(!why.contains("s3cret"), "{why}");
        assert!(failed.is_empty());
        let start = now;
        while auth.due(now).is_none() {
            now += 50;
        }
        auth.authenticating = false;
        waits.push(now - start);
        assert_eq!(*auth.pass(), Pass::None);
    }
    assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
}

#[test]
fn authentication_off_in_etcd_lets_calls_go_without_a_token() {
    let mut auth = Auth::new("webhooks", "s3cret");
    auth.due(0).unwrap();
    assert_eq!(
        auth.on_authenticated(Some("412"), AUTH_OFF.as_bytes(), 0),
        Authenticated::Ready
    );
    assert_eq!(*auth.pass(), Pass::Open);
    assert!(auth.pass().usable() && auth.pass().header().is_none());
    // Turned on later: the first call without a token is rejected, and a token is asked for.
    auth.sent(7, 7, &range());
    assert_eq!(
        auth.on_answer(7, Some("400"), NO_USER.as_bytes()),
        Verdict::Held
    );
    assert!(auth.due(1).is_some());
}

#[test]
fn no_answer_and_garbage_fail_the_authentication() {
    let mut auth = Auth::new("u", "p");
    auth.due(0).unwrap();
    let Authenticated::Failed { why, .. } = auth.on_authenticated(None, b"", 0) else {
        panic!()
    };
    assert!(why.contains("did not answer"), "{why}");
    auth.due(1000).unwrap();
    let Authenticated::Failed { why, .. } = auth.on_authenticated(Some("200"), b"<html>", 1000)
    else {
        panic!()
    };
    assert!(why.contains("not JSON"), "{why}");
    assert!(auth.on_refused(2000).is_empty());
    assert!(auth.due(2000).is_none(), "a refused start backs off too");
}

#[test]
fn a_rejected_token_holds_the_call_which_goes_again_once_with_the_new_one() {
    let mut auth = authenticated();
    auth.sent(5, 5, &range());
    assert_eq!(
        auth.on_answer(5, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Held
    );
    assert_eq!(*auth.pass(), Pass::None);
    assert!(auth.take_held().is_empty(), "nothing to send it with yet");
    auth.due(0).unwrap();
    assert_eq!(
        auth.on_authenticated(Some("200"), &token_answer("t2.2"), 0),
        Authenticated::Ready
    );
    let again = auth.take_held();
    assert_eq!(again, vec![(5, range())]);
    // Sent again as Envoy's 9; rejected again, it is answered (the caller's failure).
    auth.sent(9, 5, &range());
    assert_eq!(
        auth.on_answer(9, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Answer(5)
    );
    assert_eq!(
        auth.pass().header(),
        Some("t2.2"),
        "a second rejection drops nothing"
    );
}

#[test]
fn held_calls_fail_when_the_new_authentication_fails() {
    let mut auth = authenticated();
    auth.sent(5, 5, &range());
    auth.sent(6, 6, &range());
    assert_eq!(
        auth.on_answer(5, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Held
    );
    assert_eq!(
        auth.on_answer(6, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Held
    );
    auth.due(0).unwrap();
    let Authenticated::Failed { failed, .. } =
        auth.on_authenticated(Some("400"), WRONG_PASSWORD.as_bytes(), 0)
    else {
        panic!()
    };
    assert_eq!(failed, [5, 6]);
    assert!(auth.take_held().is_empty());
}

#[test]
fn a_rejection_of_an_older_token_keeps_the_newer_one() {
    let mut auth = authenticated();
    auth.sent(5, 5, &range());
    auth.sent(6, 6, &range());
    assert_eq!(
        auth.on_answer(5, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Held
    );
    auth.due(0).unwrap();
    auth.on_authenticated(Some("200"), &token_answer("t2.2"), 0);
    assert_eq!(auth.take_held().len(), 1);
    // 6 carried t1 too: held, and sent again at once with t2 (no new authentication).
    assert_eq!(
        auth.on_answer(6, Some("401"), INVALID_TOKEN.as_bytes()),
        Verdict::Held
    );
    assert_eq!(auth.pass().header(), Some("t2.2"));
    assert!(auth.due(0).is_none());
    assert_eq!(auth.take_held(), vec![(6, range())]);
}

#[test]
fn other_answers_go_to_their_callers_and_unknown_tokens_are_not_ours() {
    let mut auth = authenticated();
    auth.sent(5, 5, &range());
    auth.sent(6, 6, &range());
    assert_eq!(auth.on_answer(5, Some("200"), b"{}"), Verdict::Answer(5));
    assert_eq!(
        auth.on_answer(6, Some("403"), DENIED.as_bytes()),
        Verdict::Answer(6)
    );
    assert_eq!(
        auth.on_answer(5, Some("200"), b"{}"),
        Verdict::NotOurs,
        "answered once"
    );
    assert_eq!(auth.on_answer(77, None, b""), Verdict::NotOurs);
}

#[test]
fn the_workers_read_the_published_pass_and_clear_a_rejected_one() {
    let store = MemoryStore::default();
    assert_eq!(shared_pass(&store).0, Pass::None);
    let t1 = Pass::Token("t1.1".into());
    publish(&store, &t1);
    assert_eq!(shared_pass(&store).0, t1);
    // The dispatcher has a newer one: send again with it.
    let t2 = Pass::Token("t2.2".into());
    publish(&store, &t2);
    assert_eq!(after_rejection(&store, &t1), Some(t2.clone()));
    // Rejected with the current one: cleared, which the dispatcher sees at its next tick.
    assert_eq!(after_rejection(&store, &t2), None);
    assert_eq!(shared_pass(&store).0, Pass::None);
    let mut auth = authenticated();
    publish(&store, auth.pass());
    auth.check_shared(&shared_pass(&store).0);
    assert_eq!(
        auth.pass().header(),
        Some("t1.1"),
        "the published pass is ours"
    );
    after_rejection(&store, &Pass::Token("t1.1".into()));
    auth.check_shared(&shared_pass(&store).0);
    assert_eq!(*auth.pass(), Pass::None);
    assert!(auth.due(0).is_some());
    publish(&store, &Pass::Open);
    assert_eq!(shared_pass(&store).0, Pass::Open);
}

#[test]
fn garbage_in_shared_data_is_no_pass() {
    for bytes in [&b""[..], b"token ", b"token \xff", b"tok", b"open "] {
        assert_eq!(Pass::decode(bytes), Pass::None, "{bytes:?}");
    }
}
