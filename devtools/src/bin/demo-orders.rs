//! The demo "orders" API (what `make run` puts behind Envoy).

use anyhow::Result;
use clap::Parser;

/// In-memory orders API: POST/GET /orders, GET/PUT/PATCH/DELETE /orders/{id}.
#[derive(Parser)]
struct Args {
    /// Address to listen on (`0.0.0.0` in a container).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = devtools::orders::serve_on(&args.host, args.port).await?;
    println!("demo-orders: listening on {}", server.url(""));
    devtools::util::shutdown_signal().await?;
    Ok(())
}
