//! The demo webhook receiver: verifies each webhook with the `standardwebhooks` crate and prints it.

use anyhow::Result;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use clap::Parser;
use devtools::receiver::verify;
use devtools::server::Server;
use devtools::show::webhook_block;

/// Prints one block per webhook; answers 204 when the signature verifies, 401 when not.
#[derive(Parser)]
struct Args {
    /// Address to listen on (`0.0.0.0` in a container).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
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
    let server = Server::start_on(app, &args.host, args.port).await?;
    println!("demo-receiver: listening on {}", server.url(""));
    devtools::util::shutdown_signal().await?;
    Ok(())
}

fn handle(uri: &Uri, headers: &HeaderMap, body: &[u8], secret: &str) -> StatusCode {
    let verified = verify(headers, body, secret);
    println!("{}", webhook_block(uri.path(), headers, body, &verified));
    match verified {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}
