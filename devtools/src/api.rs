//! Calls to the plugin's subscription API through an Envoy, as a client with an API key would
//! make them.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;

use crate::envoy::Envoy;
use crate::stack::Sent;

/// An API call through `envoy` with `key` (sent as `X-API-Key`): the status and the JSON body
/// (`Null` when there is none or it is not JSON).
pub async fn api(
    envoy: &Envoy,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let sent = api_sent(envoy, key, method, path, body).await?;
    let value = serde_json::from_slice(&sent.body).unwrap_or(Value::Null);
    Ok((sent.status.as_u16(), value))
}

/// Like [`api`], the whole answer (status, headers and body), e.g. to read `retry-after`.
pub async fn api_sent(
    envoy: &Envoy,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Sent> {
    let method = Method::from_bytes(method.as_bytes())?;
    let mut request = envoy
        .client()
        .request(method.clone(), envoy.url(path))
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {path} through Envoy"))?;
    Sent::read(response).await
}
