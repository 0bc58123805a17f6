//! The demo webhook receiver: verifies each webhook with the `standardwebhooks` crate and prints it.

use anyhow::Result;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use clap::Parser;
use devtools::receiver::verify;
use devtools::server::Server;

/// Prints one block per webhook; answers 204 when the signature verifies, 401 when not.
#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// The subscription's signing secret (`whsec_…`).
    #[arg(long, default_value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Fail now, not at the first webhook, when the secret is malformed.
    standardwebhooks::Webhook::new(&args.secret)
        .map_err(|e| anyhow::anyhow!("bad --secret: {e}"))?;
    let secret = args.secret.clone();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let secret = secret.clone();
        async move { handle(&uri, &headers, &body, &secret) }
    });
    let server = Server::start(app, args.port).await?;
    println!("demo-receiver: listening on {}", server.url(""));
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn handle(uri: &Uri, headers: &HeaderMap, body: &[u8], secret: &str) -> StatusCode {
    let verified = verify(headers, body, secret);
    print_block(uri, headers, body, &verified);
    match verified {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

fn print_block(uri: &Uri, headers: &HeaderMap, body: &[u8], verified: &Result<()>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
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
    println!("──── webhook {event_type} → {}", uri.path());
    println!("webhook-id:         {}", header("webhook-id"));
    println!("webhook-timestamp:  {}", header("webhook-timestamp"));
    println!("signature verified: {check}");
    println!("{pretty}\n");
}
