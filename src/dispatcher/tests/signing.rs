//! What a `v1,v1a` subscription with receiver headers sends: both signatures of every valid
//! key, newest first, and its headers after the fixed ones.

use super::*;
use crate::model::subscription::ReceiverHeader;

const SIGNING_KEY: &str = "whsk_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const OLD_KEY: &str = "whsk_CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";

#[test]
fn v1a_signatures_and_receiver_headers_go_with_every_attempt() {
    let mut d = dispatcher("");
    subscribe(&d, "sub_a", "https://hooks.example.com/in", &["*"]);
    let secret = |s: &str, expires: Option<u64>| SigningSecret {
        secret: s.into(),
        expires_at_ms: expires,
    };
    let updated = registry(&d).update("sub_a", |s| {
        s.secrets = vec![
            secret(SECRET, None),
            secret(SIGNING_KEY, None),
            secret(OTHER_SECRET, Some(T0 + 2_000)),
            secret(OLD_KEY, Some(T0 + 2_000)),
        ];
        s.headers = vec![ReceiverHeader {
            name: "authorization".into(),
            value: "Bearer t0ken".into(),
        }];
        Ok::<(), ()>(())
    });
    assert!(matches!(updated, Ok(Ok(_))));
    event(&mut d, "order.created");
    let first = sent(&d)[0].clone();
    let timestamp: u64 = first.header("webhook-timestamp").unwrap().parse().unwrap();
    let keys = [SECRET, SIGNING_KEY, OTHER_SECRET, OLD_KEY].map(|k| Secret::parse(k).unwrap());
    let refs: Vec<&Secret> = keys.iter().collect();
    let id = first.header("webhook-id").unwrap();
    let expected = crate::model::signing::signature_header(&refs, id, timestamp, &first.body);
    assert_eq!(first.header("webhook-signature"), Some(expected.as_str()));
    let versions: Vec<&str> = expected
        .split(' ')
        .map(|p| p.split(',').next().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1a", "v1", "v1a"]);
    assert_eq!(first.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(
        first.header("user-agent"),
        Some(super::super::delivery::USER_AGENT)
    );

    // A retry past the old keys' expiry signs with the current pair only, headers still there.
    answer_last(&mut d, 500, &[]);
    run_for(&mut d, 10_000, 500);
    let retry = sent(&d).last().unwrap().clone();
    assert_eq!(retry.header("webhook-id"), Some(id));
    let versions: Vec<&str> = retry
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .map(|p| p.split(',').next().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1a"]);
    assert_eq!(retry.header("authorization"), Some("Bearer t0ken"));
}
