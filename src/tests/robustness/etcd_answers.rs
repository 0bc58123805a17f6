//! Robustness of the etcd gateway parsers and builders.

use super::{fuzz_input, run, shown, Shown};
use crate::fleet::etcd::{self, Error, Kv};
use crate::tests::fixtures::{scaled, seeded, Rng};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"7","raft_term":"2"}"#;

/// Answers recorded from a real etcd 3.4.23, one of each kind.
fn answer_corpus() -> Vec<Vec<u8>> {
    [
        format!("{{{HEADER}}}"),
        format!(r#"{{{HEADER},"kvs":[{{"key":"ZmxlZXQvYQ==","create_revision":"2","mod_revision":"3","version":"2","value":"aGVsbG8="}}],"more":true,"count":"2"}}"#),
        format!(r#"{{{HEADER},"kvs":[{{"key":"eA==","create_revision":"8","mod_revision":"8","version":"1","value":"eQ==","lease":"4111120386162656539"}},{{"key":"ZmxlZXQvYg==","create_revision":"4","mod_revision":"4","version":"1"}}],"count":"2"}}"#),
        format!(r#"{{{HEADER},"deleted":"1"}}"#),
        format!(r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"6"}}}}}},{{"response_delete_range":{{"header":{{"revision":"6"}},"deleted":"1"}}}}]}}"#),
        format!(r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"5"}},"kvs":[{{"key":"ZmxlZXQvYQ==","create_revision":"2","mod_revision":"5","version":"3","value":"aGVsbG8="}}],"count":"1"}}}}]}}"#),
        format!(r#"{{{HEADER},"ID":"4111120386162656531","TTL":"5"}}"#),
        format!("{{\"result\":{{{HEADER},\"ID\":\"1\",\"TTL\":\"30\"}}}}\n"),
        format!("{{\"result\":{{{HEADER},\"ID\":\"1\"}}}}\n"),
        r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#.to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const ANSWER_ITERATIONS: usize = 8000;

fn check_error(e: &Error, input: &[u8]) {
    let ok = match e {
        Error::NotJson(why) => !why.is_empty(),
        // etcd's own words, whatever they are (possibly empty).
        Error::Etcd { .. } => true,
        Error::Field { field, problem } => !field.is_empty() && !problem.is_empty(),
    };
    assert!(ok, "unclear error {e:?} for {}", shown(input));
}

#[test]
fn etcd_parsers_never_panic_and_accepted_answers_have_a_revision() {
    let mut rng = seeded(0xe7cd_0001);
    let corpus = answer_corpus();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..scaled(ANSWER_ITERATIONS) {
        let input = fuzz_input(&mut rng, &corpus, true);
        let results = run("etcd parsers", i, &Shown(&input), || {
            [
                etcd::parse_range(&input).map(|a| a.revision),
                etcd::parse_put(&input),
                etcd::parse_delete(&input).map(|a| a.revision),
                etcd::parse_txn(&input).map(|a| a.revision),
                etcd::parse_lease_grant(&input).map(|l| l.id),
                etcd::parse_lease_keepalive(&input, 1).map(|_| 1),
                etcd::parse_lease_revoke(&input),
            ]
        });
        for r in results {
            match r {
                Ok(n) => {
                    accepted += 1;
                    assert!(n > 0, "accepted with revision/id {n}: {}", shown(&input));
                }
                Err(e) => {
                    refused += 1;
                    check_error(&e, &input);
                }
            }
        }
    }
    assert!(accepted > ANSWER_ITERATIONS / 10, "{accepted} accepted");
    assert!(refused > ANSWER_ITERATIONS, "{refused} refused");
}

fn random_kv(rng: &mut Rng) -> Kv {
    let mut n = || {
        if rng.chance(3) {
            0
        } else {
            (rng.next() >> 1) as i64
        }
    };
    let (create_revision, mod_revision, version, lease) = (n(), n(), n(), n());
    Kv {
        key: rng.bytes(40),
        value: rng.bytes(200),
        create_revision,
        mod_revision,
        version,
        lease,
    }
}

/// A kv as etcd writes it: base64, numbers as strings (or numbers), zero fields omitted.
fn as_etcd_writes(rng: &mut Rng, kv: &Kv) -> Value {
    let mut m = Map::new();
    for (name, bytes) in [("key", &kv.key), ("value", &kv.value)] {
        if !bytes.is_empty() {
            m.insert(name.into(), json!(STANDARD.encode(bytes)));
        }
    }
    for (name, n) in [
        ("create_revision", kv.create_revision),
        ("mod_revision", kv.mod_revision),
        ("version", kv.version),
        ("lease", kv.lease),
    ] {
        if n != 0 {
            let v = if rng.chance(4) {
                json!(n)
            } else {
                json!(n.to_string())
            };
            m.insert(name.into(), v);
        }
    }
    Value::Object(m)
}

#[test]
fn etcd_range_answers_round_trip_and_builders_encode_exactly() {
    let mut rng = seeded(0xe7cd_0002);
    for i in 0..scaled(5000) {
        let kvs: Vec<Kv> = (0..rng.below(5)).map(|_| random_kv(&mut rng)).collect();
        let written: Vec<Value> = kvs.iter().map(|kv| as_etcd_writes(&mut rng, kv)).collect();
        let text =
            json!({"header": {"revision": "3"}, "kvs": written, "count": kvs.len().to_string()})
                .to_string();
        let parsed = run("etcd::parse_range round trip", i, &text, || {
            etcd::parse_range(text.as_bytes())
        });
        assert_eq!(parsed.map(|a| a.kvs), Ok(kvs), "{text}");

        let key = rng.bytes(40);
        let value = rng.bytes(200);
        let put = etcd::put(&key, &value, 0);
        let body: Value = serde_json::from_str(&put.body).unwrap();
        assert_eq!(STANDARD.decode(body["key"].as_str().unwrap()).unwrap(), key);
        assert_eq!(
            STANDARD.decode(body["value"].as_str().unwrap()).unwrap(),
            value
        );

        let end = etcd::prefix_end(&key);
        let covers = end == [0] || (end.as_slice() > key.as_slice() && !end.starts_with(&key));
        assert!(covers, "prefix_end({key:?}) = {end:?}");
    }
}
