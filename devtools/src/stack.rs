//! The usual test set-up in one value: a test API, a webhook receiver and Envoy with the plugin
//! in front of the API, all on free ports of 127.0.0.1.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::envoy::{Envoy, EnvoyConfig};
use crate::receiver::{Received, Receiver};
use crate::upstream::Upstream;
use crate::util::http_client;

/// A response as the API client saw it through Envoy.
#[derive(Debug)]
pub struct Sent {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Sent {
    /// Reads a whole response.
    pub async fn read(response: reqwest::Response) -> Result<Sent> {
        Ok(Sent {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await?,
        })
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Upstream + receiver + Envoy with the plugin. Field order is drop order: Envoy stops first.
pub struct Stack {
    pub envoy: Envoy,
    pub receiver: Receiver,
    pub upstream: Upstream,
    pub client: reqwest::Client,
}

impl Stack {
    /// Starts everything; `plugin_config` gets the receiver so it can name its URLs.
    pub async fn start(plugin_config: impl FnOnce(&Receiver) -> Value) -> Result<Stack> {
        Stack::start_with(plugin_config, |cfg| cfg).await
    }

    /// Like [`Stack::start`], with a last change to the Envoy configuration.
    pub async fn start_with(
        plugin_config: impl FnOnce(&Receiver) -> Value,
        tweak: impl FnOnce(EnvoyConfig) -> EnvoyConfig,
    ) -> Result<Stack> {
        let upstream = Upstream::start().await?;
        let receiver = Receiver::start().await?;
        let config = EnvoyConfig::new(plugin_config(&receiver), upstream.port());
        let envoy = Envoy::start(tweak(config)).await?;
        Ok(Stack {
            envoy,
            receiver,
            upstream,
            client: http_client(),
        })
    }

    /// Sends a request through Envoy with `x-test-*` (or any) headers and reads the whole answer.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Sent> {
        let method = Method::from_bytes(method.as_bytes())?;
        let mut request = self.client.request(method.clone(), self.envoy.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path} through Envoy"))?;
        Sent::read(response).await
    }

    /// Produces one event: `POST /orders` answered 201 with `data.object` `{"n": n}`, so that
    /// events can be told apart.
    pub async fn produce(&self, n: usize) -> Result<()> {
        self.produce_with(json!({ "n": n })).await
    }

    /// Produces one event whose `data.object` is `object`.
    pub async fn produce_with(&self, object: Value) -> Result<()> {
        let body = object.to_string();
        let sent = self
            .send("POST", "/orders", &[("x-test-body", body.as_str())])
            .await?;
        ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
        Ok(())
    }

    /// Waits for `n` webhooks; on timeout the error also shows the end of Envoy's log.
    pub async fn webhooks(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.receiver
            .wait_for(n, timeout)
            .await
            .with_context(|| format!("Envoy log tail:\n{}", self.envoy.log_tail(30)))
    }
}
