//! Self-tests of the harness, with plain Envoy (no plugin): they show that a failure in
//! `foundation.rs` is the plugin's, not the harness's.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use devtools::{http_client, Envoy, EnvoyConfig, Receiver, Reply, Upstream};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread")]
async fn plain_envoy_proxies_to_the_upstream() -> Result<()> {
    let upstream = Upstream::start().await?;
    let envoy = Envoy::start(EnvoyConfig::plain(upstream.port())).await?;
    let response = http_client().post(envoy.url("/orders?x=1")).send().await?;
    ensure!(response.status() == 201, "status {}", response.status());
    let body: Value = response.json().await?;
    ensure!(
        body == json!({"id": 42, "path": "/orders", "method": "POST"}),
        "{body}"
    );
    let seen = upstream.requests();
    ensure!(seen.len() == 1 && seen[0].path == "/orders?x=1", "{seen:?}");
    ensure!(envoy.counter("http.api.downstream_rq_completed").await? >= 1);
    ensure!(envoy.stat("no.such.stat").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_killed_with_sigkill_is_gone_at_once_and_answers_nothing() -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let upstream = Upstream::start().await?;
    let mut envoy = Envoy::start(EnvoyConfig::plain(upstream.port())).await?;
    ensure!(envoy.is_running());
    let status = envoy.kill().await?;
    ensure!(status.signal() == Some(9), "killed by SIGKILL: {status}");
    ensure!(!envoy.is_running());
    ensure!(
        http_client().get(envoy.url("/x")).send().await.is_err(),
        "nothing listens any more"
    );
    ensure!(envoy.kill().await.is_err(), "a second kill is an error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_streams_chunks_through_plain_envoy() -> Result<()> {
    let upstream = Upstream::start().await?;
    let envoy = Envoy::start(EnvoyConfig::plain(upstream.port())).await?;
    let response = http_client()
        .post(envoy.url("/orders"))
        .header("x-test-chunks", "4")
        .header("x-test-chunk-delay-ms", "200")
        .send()
        .await?;
    let (body, arrivals) = read_chunks(response).await?;
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    ensure!(
        spread >= Duration::from_millis(450),
        "chunks arrived together ({spread:?})"
    );
    let json: Value = serde_json::from_slice(&body)?;
    ensure!(json["path"] == "/orders", "{json}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_sizes_bodies_and_sets_headers() -> Result<()> {
    let upstream = Upstream::start().await?;
    let client = http_client();
    let big = client
        .put(upstream.url("/x"))
        .header("x-test-body-size", "5000")
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(big.len() == 5000, "{}", big.len());
    let text = client
        .delete(upstream.url("/x"))
        .header("x-test-status", "202")
        .header("x-test-body", "hello")
        .header("x-test-content-type", "text/plain")
        .send()
        .await?;
    ensure!(text.status() == 202);
    ensure!(text.headers()["content-type"] == "text/plain");
    ensure!(text.text().await? == "hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_records_verifies_and_follows_its_script() -> Result<()> {
    let receiver = Receiver::start().await?;
    receiver.push_replies([
        Reply::status(500).retry_after("7"),
        Reply::status(302).location("/x"),
    ]);
    let client = http_client();
    let body = r#"{"type":"t"}"#;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = signed_post(&client, &receiver.url("/hook"), body).await?;
        statuses.push((response.status().as_u16(), response.headers().clone()));
    }
    ensure!(statuses[0].0 == 500 && statuses[0].1["retry-after"] == "7");
    ensure!(statuses[1].0 == 302 && statuses[1].1["location"] == "/x");
    ensure!(statuses[2].0 == 204);
    let got = receiver.wait_for(3, Duration::from_secs(5)).await?;
    ensure!(receiver.verify(&got[0], SECRET)? == json!({"type": "t"}));
    ensure!(got[0]
        .verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .is_err());
    ensure!(got[0].path == "/hook" && got[0].event_type() == "t");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_handles_hundreds_of_concurrent_requests() -> Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_default(Reply::status(200).delay(Duration::from_millis(300)));
    let client = http_client();
    let started = Instant::now();
    let sends = (0..300).map(|_| client.post(receiver.url("/hook")).body("{}").send());
    for response in futures_util::future::join_all(sends).await {
        ensure!(response?.status() == 200);
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    ensure!(receiver.received().len() == 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_api_behaves_like_a_rest_api() -> Result<()> {
    let server = devtools::orders::serve(0).await?;
    let client = http_client();
    let created = client
        .post(server.url("/orders"))
        .json(&json!({"total": 10, "id": 999}))
        .send()
        .await?;
    ensure!(created.status() == 201);
    ensure!(created.json::<Value>().await? == json!({"id": 1, "total": 10}));
    let patched = client
        .patch(server.url("/orders/1"))
        .json(&json!({"status": "paid"}))
        .send()
        .await?;
    ensure!(patched.json::<Value>().await? == json!({"id": 1, "total": 10, "status": "paid"}));
    let put = client
        .put(server.url("/orders/1"))
        .json(&json!({"total": 3}))
        .send()
        .await?;
    ensure!(put.json::<Value>().await? == json!({"id": 1, "total": 3}));
    let list: Value = client
        .get(server.url("/orders"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(list["data"].as_array().map(Vec::len) == Some(1), "{list}");
    ensure!(
        client
            .delete(server.url("/orders/1"))
            .send()
            .await?
            .status()
            == 204
    );
    let gone = client.get(server.url("/orders/1")).send().await?;
    ensure!(gone.status() == 404);
    ensure!(gone.json::<Value>().await?["error"]["code"] == "not_found");
    let bad = client.post(server.url("/orders")).body("{").send().await?;
    ensure!(bad.status() == 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_config_puts_the_plugin_config_in_both_places() -> Result<()> {
    let config = EnvoyConfig::new(json!({"infer_events": true}), 1234).render()?;
    let text = config.to_string();
    ensure!(
        text.matches(r#"{\"infer_events\":true}"#).count() == 2,
        "{text}"
    );
    ensure!(
        text.matches("/target/wasm32-wasip1/release/proxy_webhooks.wasm")
            .count()
            == 2
    );
    ensure!(text.contains("1234"));
    // Everything listens on 127.0.0.1 (the shipped listener binds 0.0.0.0).
    for pointer in [
        "/admin/address/socket_address/address",
        "/static_resources/listeners/0/address/socket_address/address",
    ] {
        ensure!(
            config.pointer(pointer) == Some(&json!("127.0.0.1")),
            "{pointer}"
        );
    }
    let plain = EnvoyConfig::plain(1234).render()?.to_string();
    ensure!(!plain.contains("envoy.filters.http.wasm") && !plain.contains("envoy.bootstrap.wasm"));
    Ok(())
}

/// Tests reach receivers on 127.0.0.1 and nothing else: the rendered egress filter refuses every
/// address but loopback; `shipped_egress` keeps the shipped filter (loopback refused) whole.
#[test]
fn rendered_egress_reaches_only_loopback_unless_shipped_egress() -> Result<()> {
    let ranges = |config: &EnvoyConfig| -> Result<Vec<Vec<String>>> {
        let rendered = config.render()?;
        let clusters = rendered["static_resources"]["clusters"].as_array().cloned();
        Ok(clusters
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let ranges = c
                    .pointer("/cluster_type/typed_config/dns_cache_config/resolved_address_filter/ranges")?
                    .as_array()?
                    .iter()
                    .map(|r| format!("{}/{}", r["address_prefix"].as_str().unwrap_or(""), r["prefix_len"]))
                    .collect();
                Some(ranges)
            })
            .collect())
    };
    let tests = ranges(&EnvoyConfig::new("{}", 1234))?;
    let shipped = ranges(&EnvoyConfig::new("{}", 1234).shipped_egress())?;
    ensure!(
        tests.len() == 2 && shipped.len() == 2,
        "both egress clusters filter"
    );
    let all_but_loopback: Vec<String> = devtools::envoy::ALL_BUT_LOOPBACK
        .iter()
        .map(|(prefix, len)| format!("{prefix}/{len}"))
        .collect();
    for (test, shipped) in tests.iter().zip(&shipped) {
        ensure!(shipped.contains(&"127.0.0.0/8".to_string()), "{shipped:?}");
        ensure!(*test == all_but_loopback, "{test:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_config_inserts_filters_before_the_plugin() -> Result<()> {
    let config = EnvoyConfig::new("{}", 1234)
        .with_filter_before_plugin(json!({"name": "first"}))
        .with_filter_before_plugin(json!({"name": "second"}))
        .render()?;
    let filters = config
        .pointer(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array)
        .context("no http_filters")?;
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    ensure!(
        names.starts_with(&["first", "second", "envoy.filters.http.wasm"]),
        "{names:?}"
    );
    Ok(())
}

async fn signed_post(client: &reqwest::Client, url: &str, body: &str) -> Result<reqwest::Response> {
    let hook = standardwebhooks::Webhook::new(SECRET)?;
    let id = "msg_test";
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = hook.sign(id, ts, body.as_bytes())?;
    Ok(client
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await?)
}

/// The body and the arrival time of each piece of it.
async fn read_chunks(mut response: reqwest::Response) -> Result<(Vec<u8>, Vec<Instant>)> {
    let mut body = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        arrivals.push(Instant::now());
        body.extend_from_slice(&chunk);
    }
    ensure!(!arrivals.is_empty(), "empty body");
    Ok((body, arrivals))
}
