//! Fleet mode with `fleet.username`: the dispatcher authenticates before its first etcd call,
//! every call carries the token, a call etcd rejects for its token goes again once with a new
//! one, and without a token nothing is sent (as with etcd down). etcd's answers are recorded
//! from etcd 3.4.23 (see `crate::fleet::auth`'s tests).

use super::*;
use crate::fleet::auth::{self as fleet_auth, Pass};
use crate::fleet::etcd::{self as etcd, Request};

const FLEET: &str = r#""fleet": {"cluster": "etcd", "prefix": "/pw", "node_id": "n1", "sync_interval": "500ms", "lease_ttl": "3s", "username": "webhooks", "password": "s3cret-pw"}"#;
const INVALID_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#;
const WRONG_PASSWORD: &str = r#"{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#;

fn authed_dispatcher() -> Dispatcher<FakeHost> {
    crate::tests::fixtures::logged();
    dispatcher_with(&format!(r#"{{{FLEET}}}"#))
}

/// Every etcd call so far: token, path, the Authorization it carried.
fn calls(d: &Dispatcher<FakeHost>) -> Vec<(u32, &'static str, Option<String>)> {
    let host = d.host();
    host.etcd_sent
        .iter()
        .zip(&host.etcd_auth)
        .map(|((token, _, r), auth)| (*token, r.path, auth.clone()))
        .collect()
}

fn last_call(d: &Dispatcher<FakeHost>, path: &str) -> (u32, Request) {
    let (token, _, request) = d
        .host()
        .etcd_sent
        .iter()
        .rev()
        .find(|(_, _, r)| r.path == path)
        .cloned()
        .unwrap();
    (token, request)
}

/// The latest registry read (a range under `/pw/sub/`).
fn last_registry_read(d: &Dispatcher<FakeHost>) -> (u32, Request) {
    let sub = base64_of("/pw/sub/");
    let (token, _, request) = d
        .host()
        .etcd_sent
        .iter()
        .rev()
        .find(|(_, _, r)| r.path == etcd::RANGE && r.body.contains(&sub[..8]))
        .cloned()
        .unwrap();
    (token, request)
}

fn reply(d: &mut Dispatcher<FakeHost>, token: u32, status: u16, body: &str) {
    answer_with_body(d, token, status, &[], body.as_bytes());
}

fn token_answer(token: &str) -> String {
    format!(r#"{{"header":{{"revision":"1"}},"token":"{token}"}}"#)
}

/// The registry read's answer with nothing in it.
const EMPTY_READ: &str = r#"{"header":{"revision":"7"}}"#;

/// A dispatcher that authenticated as `t1`.
fn authenticated() -> Dispatcher<FakeHost> {
    let mut d = authed_dispatcher();
    let (token, _) = last_call(&d, etcd::AUTHENTICATE);
    reply(&mut d, token, 200, &token_answer("t1.1"));
    d
}

#[test]
fn the_first_call_authenticates_and_every_later_one_carries_the_token() {
    let mut d = authed_dispatcher();
    assert_eq!(
        calls(&d),
        [(1, etcd::AUTHENTICATE, None)],
        "nothing else goes before the token"
    );
    d.on_tick();
    assert_eq!(
        calls(&d).len(),
        1,
        "one authentication at a time; owners wait"
    );
    reply(&mut d, 1, 200, &token_answer("t1.1"));
    let later = &calls(&d)[1..];
    assert!(
        !later.is_empty(),
        "the registry read and the outbox's lease go at once"
    );
    assert!(
        later
            .iter()
            .all(|(_, _, auth)| auth.as_deref() == Some("t1.1")),
        "{later:?}"
    );
    let (pass, _) = fleet_auth::shared_pass(&d.host().store);
    assert_eq!(
        pass,
        Pass::Token("t1.1".into()),
        "published for the workers"
    );
    let lines = crate::tests::fixtures::logged();
    assert!(lines
        .iter()
        .any(|(_, l)| l.contains("authenticated to etcd as \"webhooks\"")));
    assert!(lines
        .iter()
        .all(|(_, l)| !l.contains("s3cret-pw") && !l.contains("t1.1")));
}

#[test]
fn a_rejected_token_is_renewed_and_the_call_sent_again_once() {
    let mut d = authenticated();
    let (read, request) = last_registry_read(&d);
    reply(&mut d, read, 401, INVALID_TOKEN);
    let (auth_call, _) = last_call(&d, etcd::AUTHENTICATE);
    assert!(auth_call > read, "authenticates again at once");
    assert_eq!(
        d.host().metric(Metric::FleetEtcdErrors),
        0,
        "not a failure yet"
    );
    reply(&mut d, auth_call, 200, &token_answer("t2.2"));
    let (again, resent) = last_registry_read(&d);
    assert!(again > auth_call);
    assert_eq!(resent, request, "the same read");
    let carried = calls(&d)
        .into_iter()
        .find(|(t, _, _)| *t == again)
        .unwrap()
        .2;
    assert_eq!(carried.as_deref(), Some("t2.2"));
    // Its answer reaches the sync as the first read's.
    let record = serde_json::json!({"id": "sub_a", "consumer": "acme",
        "url": "https://hooks.example.com/in", "events": ["order.*"], "status": "active",
        "created_at_ms": T0, "updated_at_ms": T0, "secrets": [{"secret": SECRET}], "version": 1});
    let body = format!(
        r#"{{"header":{{"revision":"7"}},"kvs":[{{"key":"{}","mod_revision":"7","value":"{}"}}],"count":"1"}}"#,
        base64_of("/pw/sub/sub_a"),
        base64_of(&record.to_string())
    );
    reply(&mut d, again, 200, &body);
    let errors = d.host().metric(Metric::FleetEtcdErrors);
    assert!(
        registry(&d).get("sub_a").is_some(),
        "the resent read was applied ({errors} errors)"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn a_second_rejection_is_the_owners_failure() {
    let mut d = authenticated();
    let (read, _) = last_registry_read(&d);
    reply(&mut d, read, 401, INVALID_TOKEN);
    let (auth_call, _) = last_call(&d, etcd::AUTHENTICATE);
    reply(&mut d, auth_call, 200, &token_answer("t2.2"));
    let (again, _) = last_registry_read(&d);
    reply(&mut d, again, 401, INVALID_TOKEN);
    assert_eq!(
        d.host().metric(Metric::FleetEtcdErrors),
        1,
        "the read failed"
    );
}

#[test]
fn a_wrong_password_sends_nothing_else_and_backs_off() {
    let mut d = authed_dispatcher();
    reply(&mut d, 1, 400, WRONG_PASSWORD);
    assert_eq!(d.host().metric(Metric::FleetEtcdErrors), 1);
    let lines = crate::tests::fixtures::logged();
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("etcd refused fleet.username \"webhooks\"")),
        "{lines:?}"
    );
    assert!(lines.iter().all(|(_, l)| !l.contains("s3cret-pw")));
    // Ticks for 2 s: authentications at 250 ms, then 500 ms, 1 s later; nothing else goes.
    for _ in 0..20 {
        d.host().advance(100);
        d.on_tick();
        let calls = calls(&d);
        let (last, _, _) = *calls.last().unwrap();
        if calls.last().unwrap().1 == etcd::AUTHENTICATE && !d.host().etcd_answered.contains(&last)
        {
            d.host_mut().etcd_answered.insert(last);
            reply(&mut d, last, 400, WRONG_PASSWORD);
        }
    }
    let all = calls(&d);
    assert!(
        all.iter().all(|(_, path, _)| *path == etcd::AUTHENTICATE),
        "{all:?}"
    );
    assert_eq!(all.len(), 4, "at 0, 250, 750 and 1750 ms");
    // Events still go out from memory (as with etcd down), once the first-sync wait is over.
    subscribe(&d, "sub_a", "https://hooks.example.com/in", &["order.*"]);
    d.host().advance(5000);
    event(&mut d, "order.created");
    d.on_tick();
    assert_eq!(sent(&d).len(), 1);
}

#[test]
fn a_token_a_worker_found_rejected_is_renewed_at_the_next_tick() {
    let mut d = authenticated();
    let before = calls(&d).len();
    let store = d.host().store.clone();
    assert_eq!(
        fleet_auth::after_rejection(&*store, &Pass::Token("t1.1".into())),
        None
    );
    d.on_tick();
    let (auth_call, _) = last_call(&d, etcd::AUTHENTICATE);
    assert!(auth_call as usize > before);
    reply(&mut d, auth_call, 200, &token_answer("t2.2"));
    assert_eq!(
        fleet_auth::shared_pass(&*store).0,
        Pass::Token("t2.2".into())
    );
}

#[test]
fn without_credentials_no_call_carries_a_token() {
    let d = fleet_dispatcher_plain();
    assert!(!calls(&d).is_empty());
    assert!(calls(&d)
        .iter()
        .all(|(_, path, auth)| auth.is_none() && *path != etcd::AUTHENTICATE));
    let _ = EMPTY_READ;
}

fn fleet_dispatcher_plain() -> Dispatcher<FakeHost> {
    dispatcher_with(r#"{"fleet": {"cluster": "etcd", "prefix": "/pw", "node_id": "n1"}}"#)
}
