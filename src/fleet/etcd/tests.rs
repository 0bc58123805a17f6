//! Builders checked field by field; parsers fed answers recorded from a real etcd 3.4.23
//! (Debian's etcd-server, 2026-12-02) and every kind of bad answer.

use super::*;
use serde_json::json;

const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"4","raft_term":"2"}"#;

fn body(r: &Request) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

fn recorded(rest: &str) -> Vec<u8> {
    format!("{{{HEADER}{rest}}}").into_bytes()
}

fn assert_field_err<T: std::fmt::Debug>(r: Result<T, Error>, path: &str, problem: &str) {
    let e = r.unwrap_err();
    let ok =
        matches!(&e, Error::Field { field, problem: p } if field == path && p.contains(problem));
    assert!(ok, "{e:?} is not `{path}` {problem}");
}

// ---------------------------------------------------------------------------------------------
// Builders

#[test]
fn range_builders_send_base64_keys_and_a_prefix_end() {
    let one = range(b"fleet/a");
    assert_eq!(one.path, "/v3/kv/range");
    assert_eq!(body(&one), json!({"key": "ZmxlZXQvYQ=="}));

    let prefix = range_prefix(b"fleet/", 1);
    assert_eq!(
        body(&prefix),
        json!({"key": "ZmxlZXQv", "range_end": "ZmxlZXQw", "limit": "1"})
    );
    assert_eq!(
        body(&range_prefix(b"fleet/", 0)),
        json!({"key": "ZmxlZXQv", "range_end": "ZmxlZXQw"})
    );
}

#[test]
fn prefix_end_increments_the_last_byte_below_0xff() {
    assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
    assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), b"b".to_vec());
    assert_eq!(prefix_end(&[0xff]), vec![0]);
    assert_eq!(prefix_end(b""), vec![0]);
}

#[test]
fn put_and_delete_builders() {
    let p = put(b"x", b"y", 0);
    assert_eq!(
        (p.path, body(&p)),
        ("/v3/kv/put", json!({"key": "eA==", "value": "eQ=="}))
    );
    assert_eq!(
        body(&put(b"x", b"", 4_111_120_386_162_656_539)),
        json!({"key": "eA==", "value": "", "lease": "4111120386162656539"})
    );
    let d = delete(b"x", false);
    assert_eq!(
        (d.path, body(&d)),
        ("/v3/kv/deleterange", json!({"key": "eA=="}))
    );
    assert_eq!(
        body(&delete(b"fleet/", true)),
        json!({"key": "ZmxlZXQv", "range_end": "ZmxlZXQw"})
    );
}

#[test]
fn txn_builder_names_each_compare_field_and_op() {
    let t = txn(
        &[
            Compare {
                key: b"x".to_vec(),
                target: Target::Mod,
                cmp: Cmp::Equal,
                value: 3,
            },
            Compare {
                key: b"y".to_vec(),
                target: Target::Version,
                cmp: Cmp::NotEqual,
                value: 0,
            },
            Compare {
                key: b"z".to_vec(),
                target: Target::Create,
                cmp: Cmp::Greater,
                value: 1,
            },
            Compare {
                key: b"w".to_vec(),
                target: Target::Mod,
                cmp: Cmp::Less,
                value: 9,
            },
        ],
        &[
            Op::Put {
                key: b"x".to_vec(),
                value: b"y".to_vec(),
                lease: 7,
            },
            Op::Delete {
                key: b"fleet/".to_vec(),
                prefix: true,
            },
        ],
        &[Op::Range {
            key: b"x".to_vec(),
            prefix: false,
            limit: 0,
        }],
    );
    assert_eq!(t.path, "/v3/kv/txn");
    assert_eq!(
        body(&t),
        json!({
            "compare": [
                {"key": "eA==", "target": "MOD", "result": "EQUAL", "mod_revision": "3"},
                {"key": "eQ==", "target": "VERSION", "result": "NOT_EQUAL", "version": "0"},
                {"key": "eg==", "target": "CREATE", "result": "GREATER", "create_revision": "1"},
                {"key": "dw==", "target": "MOD", "result": "LESS", "mod_revision": "9"}
            ],
            "success": [
                {"request_put": {"key": "eA==", "value": "eQ==", "lease": "7"}},
                {"request_delete_range": {"key": "ZmxlZXQv", "range_end": "ZmxlZXQw"}}
            ],
            "failure": [{"request_range": {"key": "eA=="}}]
        })
    );
}

#[test]
fn a_txn_reads_with_every_range_option() {
    let keys_only = Op::Query(RangeQuery {
        key: b"fleet/".to_vec(),
        prefix: true,
        keys_only: true,
        ..RangeQuery::default()
    });
    assert_eq!(
        body(&txn(&[], &[], &[keys_only])),
        json!({"compare": [], "success": [], "failure": [{"request_range":
            {"key": "ZmxlZXQv", "range_end": "ZmxlZXQw", "keys_only": true}}]})
    );
}

#[test]
fn lease_builders() {
    let g = lease_grant(5);
    assert_eq!((g.path, body(&g)), ("/v3/lease/grant", json!({"TTL": "5"})));
    let k = lease_keepalive(42);
    assert_eq!(
        (k.path, body(&k)),
        ("/v3/lease/keepalive", json!({"ID": "42"}))
    );
    let r = lease_revoke(42);
    assert_eq!(
        (r.path, body(&r)),
        ("/v3/lease/revoke", json!({"ID": "42"}))
    );
    let t = lease_time_to_live(42);
    assert_eq!(
        (t.path, body(&t)),
        ("/v3/lease/timetolive", json!({"ID": "42"}))
    );
}

#[test]
fn time_to_live_answers_as_etcd_3_4_writes_them() {
    let header = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1","raft_term":"2"}"#;
    let left = format!(r#"{{{header},"ID":"4111120472143332101","TTL":"7","grantedTTL":"10"}}"#);
    assert_eq!(
        parse_lease_time_to_live(left.as_bytes(), 4_111_120_472_143_332_101),
        Ok(TimeToLive::Left {
            ttl: 7,
            granted: 10
        })
    );
    // About to expire: `TTL` 0 is left out.
    let expiring = format!(r#"{{{header},"ID":"5","grantedTTL":"3"}}"#);
    assert_eq!(
        parse_lease_time_to_live(expiring.as_bytes(), 5),
        Ok(TimeToLive::Left { ttl: 0, granted: 3 })
    );
    let gone = format!(r#"{{{header},"ID":"5","TTL":"-1"}}"#);
    assert_eq!(
        parse_lease_time_to_live(gone.as_bytes(), 5),
        Ok(TimeToLive::Gone)
    );
    assert_field_err(
        parse_lease_time_to_live(gone.as_bytes(), 6),
        "ID",
        "is 5, not the lease 6",
    );
    let odd = format!(r#"{{{header},"ID":"5","TTL":"-2"}}"#);
    assert_field_err(
        parse_lease_time_to_live(odd.as_bytes(), 5),
        "TTL",
        "is not a non-negative 64-bit integer",
    );
}

// ---------------------------------------------------------------------------------------------
// Recorded answers

#[test]
fn range_of_a_missing_key_has_no_kvs_and_no_count() {
    let a = parse_range(&recorded("")).unwrap();
    assert_eq!(
        a,
        RangeAnswer {
            revision: 4,
            kvs: vec![],
            more: false,
            count: 0
        }
    );
}

#[test]
fn prefix_range_with_limit_says_more_and_omits_an_empty_value() {
    let limited = recorded(
        r#","kvs":[{"key":"ZmxlZXQvYQ==","create_revision":"2","mod_revision":"3","version":"2","value":"aGVsbG8="}],"more":true,"count":"2""#,
    );
    let a = parse_range(&limited).unwrap();
    assert_eq!(
        a,
        RangeAnswer {
            revision: 4,
            kvs: vec![Kv {
                key: b"fleet/a".to_vec(),
                value: b"hello".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                lease: 0
            }],
            more: true,
            count: 2
        }
    );
    let all = recorded(
        r#","kvs":[{"key":"ZmxlZXQvYQ==","create_revision":"2","mod_revision":"3","version":"2","value":"aGVsbG8="},{"key":"ZmxlZXQvYg==","create_revision":"4","mod_revision":"4","version":"1"}],"count":"2""#,
    );
    let a = parse_range(&all).unwrap();
    assert_eq!(a.kvs.len(), 2);
    assert_eq!(a.kvs[1].key, b"fleet/b");
    assert_eq!(a.kvs[1].value, b"");
    assert!(!a.more);
}

#[test]
fn a_key_under_a_lease_carries_its_id() {
    let a = parse_range(&recorded(
        r#","kvs":[{"key":"eA==","create_revision":"8","mod_revision":"8","version":"1","value":"eQ==","lease":"4111120386162656539"}],"count":"1""#,
    ))
    .unwrap();
    assert_eq!(a.kvs[0].lease, 4_111_120_386_162_656_539);
}

#[test]
fn put_and_delete_answers() {
    assert_eq!(parse_put(&recorded("")), Ok(4));
    assert_eq!(
        parse_delete(&recorded(r#","deleted":"1""#)),
        Ok(DeleteAnswer {
            revision: 4,
            deleted: 1
        })
    );
    // Nothing deleted: `deleted` is omitted.
    assert_eq!(
        parse_delete(&recorded("")),
        Ok(DeleteAnswer {
            revision: 4,
            deleted: 0
        })
    );
}

#[test]
fn txn_answers_succeeded_and_failed() {
    let ok = parse_txn(&recorded(
        r#","succeeded":true,"responses":[{"response_put":{"header":{"revision":"6"}}},{"response_delete_range":{"header":{"revision":"6"},"deleted":"1"}}]"#,
    ))
    .unwrap();
    assert_eq!(
        ok,
        TxnAnswer {
            revision: 4,
            succeeded: true,
            responses: vec![
                OpAnswer::Put { revision: 6 },
                OpAnswer::Delete(DeleteAnswer {
                    revision: 6,
                    deleted: 1
                })
            ]
        }
    );
    // A failed compare: `succeeded` is omitted; the failure branch's range answered.
    let failed = parse_txn(&recorded(
        r#","responses":[{"response_range":{"header":{"revision":"5"},"kvs":[{"key":"ZmxlZXQvYQ==","create_revision":"2","mod_revision":"5","version":"3","value":"aGVsbG8="}],"count":"1"}}]"#,
    ))
    .unwrap();
    assert!(!failed.succeeded);
    let [OpAnswer::Range(r)] = failed.responses.as_slice() else {
        panic!("{failed:?}")
    };
    assert_eq!((r.revision, r.kvs[0].mod_revision, r.count), (5, 5, 1));
    // Empty branches: neither `succeeded` nor `responses`.
    assert_eq!(
        parse_txn(&recorded("")),
        Ok(TxnAnswer {
            revision: 4,
            succeeded: false,
            responses: vec![]
        })
    );
}

#[test]
fn lease_answers() {
    assert_eq!(
        parse_lease_grant(&recorded(r#","ID":"4111120386162656531","TTL":"5""#)),
        Ok(Lease {
            id: 4_111_120_386_162_656_531,
            ttl: 5
        })
    );
    let alive = br#"{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"7","raft_term":"2"},"ID":"4111120386162656539","TTL":"30"}}
"#;
    assert_eq!(
        parse_lease_keepalive(alive, 4_111_120_386_162_656_539),
        Ok(KeepAlive::Alive { ttl: 30 })
    );
    let gone = br#"{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"7","raft_term":"2"},"ID":"1"}}
"#;
    assert_eq!(parse_lease_keepalive(gone, 1), Ok(KeepAlive::Gone));
    assert_field_err(
        parse_lease_keepalive(gone, 2),
        "result.ID",
        "is 1, not the lease 2",
    );
    assert_eq!(parse_lease_revoke(&recorded("")), Ok(4));
}

#[test]
fn numbers_are_accepted_as_json_numbers_too() {
    let a = parse_range(
        br#"{"header":{"revision":9},"kvs":[{"key":"eA==","mod_revision":7,"version":1}],"count":1}"#,
    )
    .unwrap();
    assert_eq!((a.revision, a.kvs[0].mod_revision, a.count), (9, 7, 1));
}

// ---------------------------------------------------------------------------------------------
// Bad answers

#[test]
fn etcd_error_objects_become_etcd_errors() {
    let not_found = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    let want = Error::Etcd {
        code: 5,
        message: "etcdserver: requested lease not found".into(),
    };
    assert_eq!(parse_put(not_found), Err(want.clone()));
    assert_eq!(parse_lease_revoke(not_found), Err(want.clone()));
    assert_eq!(parse_lease_keepalive(not_found, 1), Err(want));
    let bad_json = br#"{"error":"invalid character 'g' looking for beginning of value","message":"invalid character 'g' looking for beginning of value","code":2}"#;
    assert!(matches!(
        parse_lease_keepalive(bad_json, 1),
        Err(Error::Etcd { code: 2, .. })
    ));
    // A stream's error shape (grpc-gateway): an object under `error`.
    let stream = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
    assert_eq!(
        parse_lease_keepalive(stream, 1),
        Err(Error::Etcd {
            code: 14,
            message: "etcdserver: no leader".into()
        })
    );
    assert_eq!(
        parse_range(br#"{"error":"x"}"#),
        Err(Error::Etcd {
            code: 0,
            message: "x".into()
        })
    );
    assert_eq!(
        Error::Etcd {
            code: 5,
            message: "m".into()
        }
        .to_string(),
        "etcd refused (code 5): m"
    );
}

#[test]
fn not_json_and_not_an_object() {
    for text in [&b"Not Found\n"[..], b"", b"{\"header\":", b"\xff"] {
        let e = parse_range(text).unwrap_err();
        assert!(matches!(e, Error::NotJson(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("etcd's answer is not JSON: "),
            "{e}"
        );
    }
    assert_field_err(parse_txn(b"[]"), "(answer)", "is an array, not an object");
    assert_field_err(parse_put(b"null"), "(answer)", "is null, not an object");
}

#[test]
fn a_missing_or_bad_header_is_refused() {
    assert_field_err(parse_range(b"{}"), "header", "is missing");
    assert_field_err(
        parse_put(br#"{"header":{}}"#),
        "header.revision",
        "is missing",
    );
    assert_field_err(
        parse_put(br#"{"header":"4"}"#),
        "header",
        "is a string, not an object",
    );
    assert_field_err(
        parse_txn(br#"{"header":{"revision":true}}"#),
        "header.revision",
        "is a boolean, not a 64-bit integer",
    );
}

#[test]
fn bad_numbers_are_refused_with_their_path() {
    for bad in [
        r#""x""#,
        r#""-1""#,
        "-1",
        "1.5",
        "18446744073709551615",
        r#""9223372036854775808""#,
        r#""""#,
    ] {
        let text = recorded(&format!(
            r#","kvs":[{{"key":"eA==","mod_revision":{bad}}}]"#
        ));
        assert_field_err(
            parse_range(&text),
            "kvs[0].mod_revision",
            "not a non-negative 64-bit integer",
        );
    }
    assert_field_err(
        parse_range(&recorded(r#","count":null"#)),
        "count",
        "is null, not a 64-bit integer",
    );
    assert_field_err(
        parse_delete(&recorded(r#","deleted":[1]"#)),
        "deleted",
        "is an array, not a 64-bit integer",
    );
    assert_field_err(
        parse_lease_grant(&recorded(r#","ID":"1","TTL":{}"#)),
        "TTL",
        "is an object",
    );
}

#[test]
fn bad_base64_and_wrong_types_in_kvs() {
    assert_field_err(
        parse_range(&recorded(r#","kvs":[{"key":"not base64!"}]"#)),
        "kvs[0].key",
        "is not base64: ",
    );
    assert_field_err(
        parse_range(&recorded(r#","kvs":[{"key":"eA==","value":"eQ"}]"#)),
        "kvs[0].value",
        "is not base64: ",
    );
    assert_field_err(
        parse_range(&recorded(r#","kvs":[{"key":7}]"#)),
        "kvs[0].key",
        "is a number, not a base64 string",
    );
    assert_field_err(
        parse_range(&recorded(r#","kvs":{}"#)),
        "kvs",
        "is an object, not an array",
    );
    assert_field_err(
        parse_range(&recorded(r#","kvs":[1]"#)),
        "kvs[0]",
        "is a number, not an object",
    );
    assert_field_err(
        parse_range(&recorded(r#","more":"true""#)),
        "more",
        "is a string, not a boolean",
    );
}

#[test]
fn bad_txn_answers_name_the_response() {
    assert_field_err(
        parse_txn(&recorded(r#","succeeded":1"#)),
        "succeeded",
        "not a boolean",
    );
    assert_field_err(
        parse_txn(&recorded(r#","responses":[{}]"#)),
        "responses[0]",
        "exactly one response_*",
    );
    assert_field_err(
        parse_txn(&recorded(
            r#","responses":[{"response_put":{"header":{"revision":"1"}},"response_range":{}}]"#,
        )),
        "responses[0]",
        "exactly one response_*",
    );
    assert_field_err(
        parse_txn(&recorded(r#","responses":[{"response_txn":{}}]"#)),
        "responses[0].response_txn",
        "is not a put, range or delete answer",
    );
    assert_field_err(
        parse_txn(&recorded(r#","responses":[{"response_put":[]}]"#)),
        "responses[0].response_put",
        "is an array, not an object",
    );
    assert_field_err(
        parse_txn(&recorded(r#","responses":[{"response_put":{}}]"#)),
        "responses[0].response_put.header",
        "is missing",
    );
    assert_field_err(
        parse_txn(&recorded(
            r#","responses":[{"response_range":{"header":{"revision":"5"},"kvs":[{"key":"%"}]}}]"#,
        )),
        "responses[0].response_range.kvs[0].key",
        "is not base64",
    );
    assert_field_err(
        parse_txn(&recorded(
            r#","responses":[{"response_delete_range":{"header":{"revision":"5"},"deleted":"x"}}]"#,
        )),
        "responses[0].response_delete_range.deleted",
        "non-negative",
    );
}

#[test]
fn bad_lease_answers() {
    assert_field_err(
        parse_lease_grant(&recorded(r#","TTL":"5""#)),
        "ID",
        "no lease was granted",
    );
    assert_field_err(
        parse_lease_keepalive(&recorded(""), 1),
        "result",
        "is missing",
    );
    assert_field_err(
        parse_lease_keepalive(br#"{"result":[]}"#, 1),
        "result",
        "is an array, not an object",
    );
    assert_field_err(
        parse_lease_keepalive(br#"{"result":{"ID":"1","TTL":"soon"}}"#, 1),
        "result.TTL",
        "non-negative",
    );
    // Two stream messages in one body are not one JSON document.
    let two =
        b"{\"result\":{\"ID\":\"1\",\"TTL\":\"5\"}}\n{\"result\":{\"ID\":\"1\",\"TTL\":\"5\"}}\n";
    assert!(matches!(
        parse_lease_keepalive(two, 1),
        Err(Error::NotJson(_))
    ));
}

#[test]
fn field_errors_read_as_sentences() {
    let e = parse_range(&recorded(r#","kvs":[{"key":"%"}]"#)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("etcd's answer: `kvs[0].key` is not base64: "),
        "{e}"
    );
}

/// `devtools/tests/etcd_protocol.rs` sends these exact bodies to a real etcd; keep them equal.
#[test]
fn bodies_are_the_bytes_the_etcd_protocol_test_sends() {
    let a = b"fleet/a";
    let txn_mod = txn(
        &[Compare {
            key: a.to_vec(),
            target: Target::Mod,
            cmp: Cmp::Equal,
            value: 2,
        }],
        &[Op::Put {
            key: a.to_vec(),
            value: b"hello".to_vec(),
            lease: 0,
        }],
        &[Op::Range {
            key: a.to_vec(),
            prefix: false,
            limit: 0,
        }],
    );
    assert_eq!(
        txn_mod.body,
        r#"{"compare":[{"key":"ZmxlZXQvYQ==","mod_revision":"2","result":"EQUAL","target":"MOD"}],"failure":[{"request_range":{"key":"ZmxlZXQvYQ=="}}],"success":[{"request_put":{"key":"ZmxlZXQvYQ==","value":"aGVsbG8="}}]}"#
    );
    let b = b"fleet/b";
    let create = txn(
        &[Compare {
            key: b.to_vec(),
            target: Target::Create,
            cmp: Cmp::Equal,
            value: 0,
        }],
        &[
            Op::Put {
                key: b.to_vec(),
                value: b"hello".to_vec(),
                lease: 0,
            },
            Op::Delete {
                key: a.to_vec(),
                prefix: false,
            },
        ],
        &[],
    );
    assert_eq!(
        create.body,
        r#"{"compare":[{"create_revision":"0","key":"ZmxlZXQvYg==","result":"EQUAL","target":"CREATE"}],"failure":[],"success":[{"request_put":{"key":"ZmxlZXQvYg==","value":"aGVsbG8="}},{"request_delete_range":{"key":"ZmxlZXQvYQ=="}}]}"#
    );
    assert_eq!(
        range_prefix(b"fleet/", 1).body,
        r#"{"key":"ZmxlZXQv","limit":"1","range_end":"ZmxlZXQw"}"#
    );
    assert_eq!(
        put(a, b"hello", 1_640_333_040_672_878_342).body,
        r#"{"key":"ZmxlZXQvYQ==","lease":"1640333040672878342","value":"aGVsbG8="}"#
    );
    assert_eq!(put(b, b"", 0).body, r#"{"key":"ZmxlZXQvYg==","value":""}"#);
    assert_eq!(delete(a, false).body, r#"{"key":"ZmxlZXQvYQ=="}"#);
    assert_eq!(lease_grant(30).body, r#"{"TTL":"30"}"#);
    assert_eq!(lease_keepalive(7).body, r#"{"ID":"7"}"#);
    assert_eq!(lease_revoke(7).body, r#"{"ID":"7"}"#);
    assert_eq!(
        txn(&[], &[], &[]).body,
        r#"{"compare":[],"failure":[],"success":[]}"#
    );
}

#[test]
fn range_query_sends_each_option_only_when_set() {
    let all = RangeQuery {
        key: b"fleet/".to_vec(),
        prefix: true,
        limit: 2,
        min_mod_revision: 9,
        keys_only: true,
        oldest_first: true,
        end: Vec::new(),
        revision: 12,
        count_only: true,
    };
    assert_eq!(
        body(&range_query(&all)),
        json!({"key": "ZmxlZXQv", "range_end": "ZmxlZXQw", "limit": "2",
               "min_mod_revision": "9", "keys_only": true,
               "sort_target": "CREATE", "sort_order": "ASCEND",
               "revision": "12", "count_only": true})
    );
    let plain = RangeQuery {
        key: b"fleet/a".to_vec(),
        ..RangeQuery::default()
    };
    assert_eq!(range_query(&plain), range(b"fleet/a"));
    let page = RangeQuery {
        key: b"fleet/a\0".to_vec(),
        end: b"fleet0".to_vec(),
        limit: 3,
        ..RangeQuery::default()
    };
    assert_eq!(
        body(&range_query(&page)),
        json!({"key": "ZmxlZXQvYQA=", "range_end": "ZmxlZXQw", "limit": "3"})
    );
}

#[test]
fn a_range_since_a_revision_counts_the_whole_range() {
    // etcd 3.4.23: three keys under /p/sub/ written at revisions 2, 3, 4; range with
    // min_mod_revision 4 returns one key and counts three; with 9, no key and still three.
    let since = recorded(
        r#","kvs":[{"key":"L3Avc3ViL2M=","create_revision":"4","mod_revision":"4","version":"1","value":"dmM="}],"count":"3""#,
    );
    let a = parse_range(&since).unwrap();
    assert_eq!((a.kvs.len(), a.count, a.more), (1, 3, false));
    assert_eq!(a.kvs[0].key, b"/p/sub/c");
    let none = parse_range(&recorded(r#","count":"3""#)).unwrap();
    assert_eq!((none.kvs.len(), none.count), (0, 3));
}
