//! The etcd v3 HTTP/JSON gateway facts that the plugin's `src/etcd.rs` relies on, each asserted
//! against a real etcd (Debian's etcd-server 3.4; `make etcd`), so that an etcd that changes one
//! fails here loudly. The request bodies are byte for byte what the plugin's builders produce
//! (serde_json writes object keys sorted; `src/etcd/tests.rs` asserts the same bodies), and the
//! plugin's parser tests use answers recorded from this etcd.
//!
//! devtools does not depend on the plugin crate (see `src/lib.rs`), hence literal bodies here.

use anyhow::Result;
use devtools::Etcd;
use serde_json::{json, Value};

/// `fleet/a`, `fleet/b`, `fleet/` and its range end `fleet0`, `hello`, `x`, `y` in base64.
const FLEET_A: &str = "ZmxlZXQvYQ==";
const FLEET_B: &str = "ZmxlZXQvYg==";
const FLEET: &str = "ZmxlZXQv";
const FLEET_END: &str = "ZmxlZXQw";
const HELLO: &str = "aGVsbG8=";

async fn ok(etcd: &Etcd, path: &str, body: &str) -> Result<Value> {
    let (status, text) = etcd.post(path, body).await?;
    assert_eq!(status, 200, "POST {path} {body} answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// The field names of an object, sorted (serde_json's map is sorted).
fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

async fn put(etcd: &Etcd, key: &str, value: &str) -> Result<Value> {
    ok(
        etcd,
        "/v3/kv/put",
        &format!(r#"{{"key":"{key}","value":"{value}"}}"#),
    )
    .await
}

#[tokio::test]
async fn the_harness_names_make_etcd_when_etcd_is_missing() {
    let missing = std::path::Path::new("/nonexistent/etcd");
    let options = devtools::etcd::EtcdOptions {
        bin: Some(missing.into()),
        ..Default::default()
    };
    let err = Etcd::start_with(options)
        .await
        .err()
        .expect("no etcd there");
    let text = format!("{err:#}");
    assert!(text.contains("run `make etcd`"), "{text}");
}

#[tokio::test]
async fn the_harness_gives_etcds_process_id_and_the_new_one_after_a_restart() -> Result<()> {
    // /proc/<pid>/exe is the etcd binary while that process runs.
    let bin = devtools::etcd::etcd_bin();
    let runs_etcd = |pid: u32| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.file_name() == bin.file_name())
    };
    let mut etcd = Etcd::start().await?;
    let first = etcd.pid();
    assert!(runs_etcd(first), "pid {first} runs {}", bin.display());
    etcd.stop().await?;
    assert!(!runs_etcd(first), "gone once stopped");
    etcd.start_again().await?;
    let second = etcd.pid();
    assert_ne!(second, first);
    assert!(runs_etcd(second), "pid {second} runs {}", bin.display());
    Ok(())
}

#[tokio::test]
async fn the_harness_stops_etcd_and_starts_the_same_cluster_again() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    etcd.put("fleet/a", b"hello").await?;
    etcd.put("fleet/b", b"").await?;
    etcd.put("fleet0", b"outside").await?;
    assert_eq!(etcd.get("fleet/a").await?.as_deref(), Some(&b"hello"[..]));
    assert_eq!(etcd.get("fleet/b").await?.as_deref(), Some(&b""[..]));
    assert_eq!(etcd.get("fleet/c").await?, None);
    assert_eq!(etcd.count("fleet/").await?, 2);
    let cluster = |answer: &Value| answer["header"]["cluster_id"].clone();
    let before = cluster(&ok(&etcd, "/v3/kv/range", r#"{"key":"eA=="}"#).await?);

    etcd.stop().await?;
    assert!(!etcd.is_running());
    assert!(
        etcd.post("/v3/kv/range", "{}").await.is_err(),
        "nothing answers"
    );
    assert!(etcd.stop().await.is_err(), "already stopped");

    etcd.start_again().await?;
    assert!(etcd.is_running());
    let after = cluster(&ok(&etcd, "/v3/kv/range", r#"{"key":"eA=="}"#).await?);
    assert_eq!(before, after, "the same cluster");
    let range = etcd.range("fleet/").await?;
    assert_eq!(
        range,
        vec![
            ("fleet/a".to_string(), b"hello".to_vec()),
            ("fleet/b".to_string(), Vec::new())
        ],
        "with what it held"
    );
    assert!(etcd.delete("fleet/a").await?);
    assert!(!etcd.delete("fleet/a").await?);
    assert_eq!(etcd.count("fleet/").await?, 1);
    Ok(())
}

#[tokio::test]
async fn keys_and_values_are_base64_and_64_bit_numbers_are_strings() -> Result<()> {
    let etcd = Etcd::start().await?;
    let wrote = put(&etcd, FLEET_A, HELLO).await?;
    // The header's numbers, the revision included, are strings.
    for name in ["cluster_id", "member_id", "revision", "raft_term"] {
        assert!(wrote["header"][name].is_string(), "header.{name}: {wrote}");
    }
    assert_eq!(
        wrote["header"]["revision"], "2",
        "a fresh etcd is at revision 1"
    );

    let read = ok(&etcd, "/v3/kv/range", &format!(r#"{{"key":"{FLEET_A}"}}"#)).await?;
    assert_eq!(
        read["kvs"],
        json!([{"key": FLEET_A, "create_revision": "2", "mod_revision": "2", "version": "1",
                "value": HELLO}]),
        "{read}"
    );
    assert_eq!(read["count"], "1");
    Ok(())
}

#[tokio::test]
async fn zero_and_empty_fields_are_omitted() -> Result<()> {
    let etcd = Etcd::start().await?;
    // A missing key: neither `kvs` nor `count`.
    let missing = ok(&etcd, "/v3/kv/range", &format!(r#"{{"key":"{FLEET_A}"}}"#)).await?;
    assert_eq!(keys(&missing), ["header"], "{missing}");
    // An empty value is stored, and read back without `value`; no `lease` without one.
    put(&etcd, FLEET_B, "").await?;
    let empty = ok(&etcd, "/v3/kv/range", &format!(r#"{{"key":"{FLEET_B}"}}"#)).await?;
    assert_eq!(
        keys(&empty["kvs"][0]),
        ["create_revision", "key", "mod_revision", "version"],
        "{empty}"
    );
    // Deleting nothing: no `deleted`; deleting one: `deleted` is "1".
    let body = format!(r#"{{"key":"{FLEET_A}"}}"#);
    let nothing = ok(&etcd, "/v3/kv/deleterange", &body).await?;
    assert_eq!(keys(&nothing), ["header"], "{nothing}");
    let one = ok(
        &etcd,
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{FLEET_B}"}}"#),
    )
    .await?;
    assert_eq!(one["deleted"], "1", "{one}");
    // Empty txn branches: the answer has `succeeded` only (no `responses`).
    let t = ok(
        &etcd,
        "/v3/kv/txn",
        r#"{"compare":[],"failure":[],"success":[]}"#,
    )
    .await?;
    assert_eq!(keys(&t), ["header", "succeeded"], "{t}");
    assert_eq!(t["succeeded"], true);
    Ok(())
}

#[tokio::test]
async fn a_prefix_range_with_a_limit_says_more_and_counts_all() -> Result<()> {
    let etcd = Etcd::start().await?;
    put(&etcd, FLEET_A, HELLO).await?;
    put(&etcd, FLEET_B, HELLO).await?;
    put(&etcd, "ZmxlZXQw", HELLO).await?; // `fleet0`: the range end, outside the prefix
    let limited = format!(r#"{{"key":"{FLEET}","limit":"1","range_end":"{FLEET_END}"}}"#);
    let a = ok(&etcd, "/v3/kv/range", &limited).await?;
    assert_eq!(a["kvs"].as_array().map(Vec::len), Some(1), "{a}");
    assert_eq!(a["kvs"][0]["key"], FLEET_A, "key order");
    assert_eq!(
        (&a["more"], &a["count"]),
        (&json!(true), &json!("2")),
        "{a}"
    );
    let all = format!(r#"{{"key":"{FLEET}","range_end":"{FLEET_END}"}}"#);
    let b = ok(&etcd, "/v3/kv/range", &all).await?;
    assert_eq!(b["kvs"].as_array().map(Vec::len), Some(2), "{b}");
    assert!(b.get("more").is_none(), "`more` omitted when false: {b}");
    Ok(())
}

fn txn_mod(rev: &str) -> String {
    // What `etcd::txn` builds for: mod_revision(fleet/a) == rev ? put : range.
    format!(
        r#"{{"compare":[{{"key":"{FLEET_A}","mod_revision":"{rev}","result":"EQUAL","target":"MOD"}}],"failure":[{{"request_range":{{"key":"{FLEET_A}"}}}}],"success":[{{"request_put":{{"key":"{FLEET_A}","value":"{HELLO}"}}}}]}}"#
    )
}

#[tokio::test]
async fn txn_compares_mod_version_and_create_revisions() -> Result<()> {
    let etcd = Etcd::start().await?;
    put(&etcd, FLEET_A, HELLO).await?; // revision 2

    // The current mod_revision: success branch; a put answers with only its header's revision.
    let won = ok(&etcd, "/v3/kv/txn", &txn_mod("2")).await?;
    assert_eq!(won["succeeded"], true, "{won}");
    assert_eq!(
        won["responses"],
        json!([{"response_put": {"header": {"revision": "3"}}}])
    );

    // The same compare again is stale: no `succeeded` at all; the failure branch's range ran.
    let lost = ok(&etcd, "/v3/kv/txn", &txn_mod("2")).await?;
    assert!(lost.get("succeeded").is_none(), "{lost}");
    let range = &lost["responses"][0]["response_range"];
    assert_eq!(range["kvs"][0]["mod_revision"], "3", "{lost}");
    assert_eq!(range["header"], json!({"revision": "3"}), "{lost}");

    // Create-if-absent: CREATE == 0 holds once, then the key exists.
    let create = format!(
        r#"{{"compare":[{{"create_revision":"0","key":"{FLEET_B}","result":"EQUAL","target":"CREATE"}}],"failure":[],"success":[{{"request_put":{{"key":"{FLEET_B}","value":"{HELLO}"}}}},{{"request_delete_range":{{"key":"{FLEET_A}"}}}}]}}"#
    );
    let first = ok(&etcd, "/v3/kv/txn", &create).await?;
    assert_eq!(first["succeeded"], true, "{first}");
    assert_eq!(
        first["responses"][1],
        json!({"response_delete_range": {"header": {"revision": "4"}, "deleted": "1"}}),
        "several ops in one txn share one revision"
    );
    let second = ok(&etcd, "/v3/kv/txn", &create).await?;
    assert!(second.get("succeeded").is_none(), "{second}");

    // VERSION: a deleted key's version is 0 again; an absent key's mod_revision is 0 (not LESS 1).
    let version = format!(
        r#"{{"compare":[{{"key":"{FLEET_A}","result":"EQUAL","target":"VERSION","version":"0"}}],"failure":[],"success":[]}}"#
    );
    assert_eq!(ok(&etcd, "/v3/kv/txn", &version).await?["succeeded"], true);
    let greater = format!(
        r#"{{"compare":[{{"key":"{FLEET_A}","mod_revision":"0","result":"GREATER","target":"MOD"}}],"failure":[],"success":[]}}"#
    );
    assert!(ok(&etcd, "/v3/kv/txn", &greater)
        .await?
        .get("succeeded")
        .is_none());

    // One key twice in a branch is refused as a whole.
    let twice = format!(
        r#"{{"compare":[],"failure":[],"success":[{{"request_put":{{"key":"{FLEET_A}","value":""}}}},{{"request_put":{{"key":"{FLEET_A}","value":""}}}}]}}"#
    );
    let (status, text) = etcd.post("/v3/kv/txn", &twice).await?;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("duplicate key given in txn request"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn leases_grant_keepalive_revoke() -> Result<()> {
    let etcd = Etcd::start().await?;
    let granted = ok(&etcd, "/v3/lease/grant", r#"{"TTL":"30"}"#).await?;
    let id = granted["ID"]
        .as_str()
        .expect("the lease ID is a string")
        .to_string();
    assert!(id.parse::<i64>().is_ok_and(|n| n > 0), "{granted}");
    assert_eq!(granted["TTL"], "30", "{granted}");
    // A TTL below etcd's minimum (1.5 × election timeout, rounded up: 2 s) is raised.
    let short = ok(&etcd, "/v3/lease/grant", r#"{"TTL":"1"}"#).await?;
    assert_eq!(short["TTL"], "2", "{short}");

    put_with_lease(&etcd, &id).await?;
    // keepalive is a stream: one answer wrapped in {"result": ...} and a newline.
    let (status, text) = etcd
        .post("/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#))
        .await?;
    assert_eq!(status, 200);
    assert!(text.ends_with("}\n"), "{text:?}");
    let alive: Value = serde_json::from_str(&text)?;
    assert_eq!(keys(&alive), ["result"], "{text}");
    assert_eq!(
        (&alive["result"]["ID"], &alive["result"]["TTL"]),
        (&json!(id), &json!("30"))
    );

    // Revoking deletes the lease's keys; a keepalive then answers 200 without a TTL.
    let revoked = ok(&etcd, "/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#)).await?;
    assert_eq!(keys(&revoked), ["header"], "{revoked}");
    let gone = ok(&etcd, "/v3/kv/range", &format!(r#"{{"key":"{FLEET_A}"}}"#)).await?;
    assert!(gone.get("kvs").is_none(), "{gone}");
    let (status, text) = etcd
        .post("/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#))
        .await?;
    assert_eq!(status, 200, "{text}");
    let after: Value = serde_json::from_str(&text)?;
    assert_eq!(keys(&after["result"]), ["ID", "header"], "{text}");
    Ok(())
}

async fn put_with_lease(etcd: &Etcd, id: &str) -> Result<()> {
    let body = format!(r#"{{"key":"{FLEET_A}","lease":"{id}","value":"{HELLO}"}}"#);
    ok(etcd, "/v3/kv/put", &body).await?;
    let read = ok(etcd, "/v3/kv/range", &format!(r#"{{"key":"{FLEET_A}"}}"#)).await?;
    assert_eq!(read["kvs"][0]["lease"], json!(id), "{read}");
    Ok(())
}

#[tokio::test]
async fn errors_are_objects_with_a_grpc_code() -> Result<()> {
    let etcd = Etcd::start().await?;
    let cases = [
        // (path, body, HTTP status, gRPC code, message)
        (
            "/v3/kv/put",
            r#"{"key":"eA==","lease":"1","value":"eQ=="}"#,
            404,
            5,
            "etcdserver: requested lease not found",
        ),
        (
            "/v3/lease/revoke",
            r#"{"ID":"1"}"#,
            404,
            5,
            "etcdserver: requested lease not found",
        ),
        (
            "/v3/kv/range",
            "{}",
            400,
            3,
            "etcdserver: key is not provided",
        ),
        (
            "/v3/kv/put",
            r#"{"key":"not base64!"}"#,
            400,
            3,
            "illegal base64 data at input byte 3",
        ),
        (
            "/v3/kv/range",
            "not json",
            400,
            3,
            "invalid character 'o' in literal null (expecting 'u')",
        ),
        // The stream endpoint reports a bad body as code 2 (unknown), HTTP 500.
        (
            "/v3/lease/keepalive",
            "garbage",
            500,
            2,
            "invalid character 'g' looking for beginning of value",
        ),
    ];
    for (path, body, status, code, message) in cases {
        let (got, text) = etcd.post(path, body).await?;
        assert_eq!(got, status, "POST {path} {body}: {text}");
        let v: Value = serde_json::from_str(&text)?;
        assert_eq!(
            v,
            json!({"error": message, "message": message, "code": code}),
            "{path} {body}"
        );
    }
    // An unknown path is plain text, not JSON.
    let (status, text) = etcd.post("/v3/nope", "{}").await?;
    assert_eq!((status, text.trim()), (404, "Not Found"));
    Ok(())
}
