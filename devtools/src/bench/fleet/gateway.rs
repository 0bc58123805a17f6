//! etcd's HTTP/JSON gateway spoken the way the plugin speaks it (POST `/v3/kv/…`, keys and values
//! in base64, 64-bit numbers as strings), over plain HTTP/1.1 keep-alive connections like
//! Envoy's callouts; the requests are built from the same messages as the gRPC client's.

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::grpc::{Compare, RangeRequest, Request, RequestOp, TargetUnion, TxnRequest};
use crate::util::http_client;

#[derive(Clone)]
pub struct Gateway {
    client: reqwest::Client,
    base: String,
}

/// A range answer as the plugin reads it: the pairs (base64 decoded), the count, the revision.
pub struct Range {
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    pub count: i64,
    pub revision: i64,
}

impl Gateway {
    pub fn new(port: u16) -> Gateway {
        Gateway {
            client: http_client(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// POSTs `body` to `path` and parses the JSON answer (which must be a 200).
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {path} to etcd's gateway"))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        ensure!(
            status == 200,
            "etcd's gateway answered {path} with {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
        serde_json::from_slice(&bytes).context("etcd's gateway answer is not JSON")
    }

    /// The txn as JSON; true when it succeeded.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<bool> {
        let body = serde_json::to_vec(&txn_json(txn))?;
        let answer = self.post("/v3/kv/txn", body).await?;
        Ok(answer["succeeded"] == true)
    }

    pub async fn range(&self, range: &RangeRequest) -> Result<Range> {
        let mut body = json!({"key": STANDARD.encode(&range.key)});
        if !range.range_end.is_empty() {
            body["range_end"] = json!(STANDARD.encode(&range.range_end));
        }
        if range.limit > 0 {
            body["limit"] = json!(range.limit.to_string());
        }
        if range.keys_only {
            body["keys_only"] = json!(true);
        }
        let answer = self
            .post("/v3/kv/range", serde_json::to_vec(&body)?)
            .await?;
        let decode =
            |v: &Value| -> Result<Vec<u8>> { Ok(STANDARD.decode(v.as_str().unwrap_or_default())?) };
        let mut kvs = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            kvs.push((decode(&kv["key"])?, decode(&kv["value"])?));
        }
        let number = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(Range {
            kvs,
            count: number(&answer["count"]),
            revision: number(&answer["header"]["revision"]),
        })
    }
}

fn compare_json(compare: &Compare) -> Value {
    let target = ["VERSION", "CREATE", "MOD"]
        .get(usize::try_from(compare.target).unwrap_or(0))
        .copied()
        .unwrap_or("VERSION");
    let mut out = json!({"key": STANDARD.encode(&compare.key), "target": target,
                         "result": "EQUAL"});
    match compare.target_union {
        Some(TargetUnion::Version(v)) => out["version"] = json!(v.to_string()),
        Some(TargetUnion::CreateRevision(v)) => out["create_revision"] = json!(v.to_string()),
        Some(TargetUnion::ModRevision(v)) => out["mod_revision"] = json!(v.to_string()),
        None => {}
    }
    out
}

fn op_json(op: &RequestOp) -> Value {
    match &op.request {
        Some(Request::RequestPut(put)) => {
            let mut body =
                json!({"key": STANDARD.encode(&put.key), "value": STANDARD.encode(&put.value)});
            if put.lease != 0 {
                body["lease"] = json!(put.lease.to_string());
            }
            json!({"request_put": body})
        }
        Some(Request::RequestRange(range)) => json!({"request_range": {
            "key": STANDARD.encode(&range.key), "range_end": STANDARD.encode(&range.range_end)}}),
        Some(Request::RequestDeleteRange(delete)) => json!({"request_delete_range": {
            "key": STANDARD.encode(&delete.key), "range_end": STANDARD.encode(&delete.range_end)}}),
        None => json!({}),
    }
}

/// A txn in the gateway's JSON (what the plugin's `etcd::txn` builds).
pub fn txn_json(txn: &TxnRequest) -> Value {
    json!({
        "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
        "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
        "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
    })
}
