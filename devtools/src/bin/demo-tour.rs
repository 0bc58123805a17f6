//! `make demo-tour`: the demo, scripted. Starts the demo orders API, a receiver and Envoy with the
//! demo's deploy/demo/envoy.yaml (egress as written there) on free ports, then walks through what an API consumer does:
//! register a subscription → change state → see the verified webhooks → read the delivery log.
//! Exits non-zero when a step fails, e.g. when the webhooks never arrive.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use devtools::envoy::{Envoy, EnvoyConfig};
use devtools::files::{load_yaml, plugin_config};
use devtools::receiver::{Received, Receiver};
use devtools::show::webhook_block;
use devtools::{http_client, orders, poll_until, workspace_root};
use serde_json::{json, Value};

/// The demo's Envoy configuration, relative to the workspace root.
const DEMO_ENVOY_YAML: &str = "deploy/demo/envoy.yaml";
/// The demo API key (deploy/demo/envoy.yaml holds its SHA-256).
const API_KEY: &str = "demo-key";
/// How long the webhooks and their log entries may take.
const DEADLINE: Duration = Duration::from_secs(20);
/// Where the subscription registered by the tour receives its webhooks.
const TOUR_PATH: &str = "/tour";

struct Tour {
    envoy: Envoy,
    receiver: Receiver,
    client: reqwest::Client,
}

#[tokio::main]
async fn main() -> Result<()> {
    let orders = orders::serve(0).await?;
    let receiver = Receiver::start().await?;
    let config = demo_plugin_config(&receiver)?;
    let mut envoy_config = EnvoyConfig::new(config, orders.port()).shipped_egress();
    envoy_config.base_config = workspace_root().join(DEMO_ENVOY_YAML);
    let envoy = Envoy::start(envoy_config).await?;
    println!(
        "demo stack: Envoy {} → orders API {}, receiver {}\n",
        envoy.url(""),
        orders.url(""),
        receiver.url("")
    );
    let tour = Tour {
        envoy,
        receiver,
        client: http_client(),
    };
    let result = tour.run().await;
    if result.is_err() {
        eprintln!("Envoy log tail:\n{}", tour.envoy.log_tail(30));
    }
    result
}

/// The plugin configuration of the demo's envoy.yaml, with the demo subscription pointed at
/// this tour's receiver instead of the fixed port 9000.
fn demo_plugin_config(receiver: &Receiver) -> Result<Value> {
    let envoy_yaml = load_yaml(&workspace_root().join(DEMO_ENVOY_YAML))?;
    let mut config = plugin_config(&envoy_yaml)?;
    let subscriptions = config["subscriptions"]
        .as_array_mut()
        .context("the demo's plugin configuration has no subscriptions")?;
    for sub in subscriptions {
        sub["url"] = json!(receiver.url("/webhooks"));
    }
    Ok(config)
}

impl Tour {
    async fn run(&self) -> Result<()> {
        step(1, "register a subscription to order.* with the API key");
        let sub = self
            .call(
                "POST",
                "/webhooks/subscriptions",
                Some(
                    json!({"url": self.receiver.url(TOUR_PATH), "events": ["order.*"],
                            "description": "demo tour"}),
                ),
            )
            .await?;
        let id = sub["id"].as_str().context("no id")?.to_string();
        let secret = sub["secret"].as_str().context("no secret")?.to_string();

        step(
            2,
            "change state through Envoy: create, update and delete an order",
        );
        let order = self
            .call(
                "POST",
                "/orders",
                Some(json!({"item": "book", "total": 12})),
            )
            .await?;
        let order_path = format!("/orders/{}", order["id"]);
        self.call("PATCH", &order_path, Some(json!({"status": "paid"})))
            .await?;
        self.call("DELETE", &order_path, None).await?;

        step(
            3,
            "the webhooks arrive at the receiver, signed with the secret of step 1",
        );
        let hooks = self.wait_for_webhooks(3).await?;
        for hook in &hooks {
            let verified = devtools::receiver::verify(&hook.headers, &hook.body, &secret);
            println!(
                "{}",
                webhook_block(&hook.path, &hook.headers, &hook.body, &verified)
            );
            verified.with_context(|| format!("webhook {:?}", hook.header("webhook-id")))?;
        }
        let types: Vec<String> = hooks.iter().map(Received::event_type).collect();
        ensure!(
            types == ["order.created", "order.updated", "order.deleted"],
            "unexpected event types {types:?}"
        );

        step(4, "the delivery log of the subscription, through the API");
        self.wait_for_log(&id, hooks.len()).await?;
        self.call(
            "GET",
            &format!("/webhooks/subscriptions/{id}/deliveries"),
            None,
        )
        .await?;
        println!("demo tour: OK (every webhook arrived and verified)");
        Ok(())
    }

    /// Sends one request through Envoy, prints it and its answer; fails on a non-2xx answer.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        println!("→ {method} {path}");
        let mut request = self
            .client
            .request(method.parse()?, self.envoy.url(path))
            .header("x-api-key", API_KEY);
        if let Some(body) = &body {
            println!("  {body}");
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        println!("← {status}");
        if !json.is_null() {
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        println!();
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(json)
    }

    /// The webhooks for the tour's subscription, ordered by event time (retries aside, deliveries
    /// of different events may arrive in any order).
    async fn wait_for_webhooks(&self, n: usize) -> Result<Vec<Received>> {
        let mine = || -> Vec<Received> {
            let mut got: Vec<Received> = self
                .receiver
                .received()
                .into_iter()
                .filter(|r| r.path == TOUR_PATH)
                .collect();
            got.sort_by_key(|r| r.json().ok().map(|v| v["timestamp"].to_string()));
            got
        };
        let what = format!("{n} webhooks at the receiver");
        poll_until(DEADLINE, &what, async || mine().len() >= n)
            .await
            .context("the webhooks never arrived")?;
        Ok(mine())
    }

    /// Waits until the dispatcher has logged `n` attempts (it writes the log after each answer).
    async fn wait_for_log(&self, id: &str, n: usize) -> Result<()> {
        let url = self
            .envoy
            .url(&format!("/webhooks/subscriptions/{id}/deliveries"));
        let logged = async || -> Option<usize> {
            let response = self
                .client
                .get(&url)
                .header("x-api-key", API_KEY)
                .send()
                .await
                .ok()?;
            let log: Value = response.json().await.ok()?;
            Some(log["data"].as_array()?.len())
        };
        poll_until(DEADLINE, "the delivery log", async || {
            logged().await.unwrap_or(0) >= n
        })
        .await
    }
}

fn step(n: u32, title: &str) {
    println!("━━━━ {n}. {title}\n");
}
