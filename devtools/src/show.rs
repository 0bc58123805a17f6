//! How the demo shows a webhook: one readable block per delivery (used by `demo-receiver` and
//! `demo-tour`).

use axum::http::HeaderMap;
use serde_json::Value;

/// The block for one webhook: event type and path, `webhook-id`, `webhook-timestamp`, whether
/// the signature verified (and why not), then the body as pretty JSON (raw text if not JSON).
pub fn webhook_block(
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    verified: &anyhow::Result<()>,
) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let event_type = json
        .as_ref()
        .and_then(|v| v["type"].as_str())
        .unwrap_or("?");
    let pretty = json
        .as_ref()
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let check = match verified {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("NO ({e})"),
    };
    format!(
        "──── webhook {event_type} → {path}\n\
         webhook-id:         {}\n\
         webhook-timestamp:  {}\n\
         signature verified: {check}\n\
         {pretty}\n",
        header("webhook-id"),
        header("webhook-timestamp"),
    )
}
