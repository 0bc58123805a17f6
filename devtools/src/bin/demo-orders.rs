//! The demo "orders" API (what `make run` puts behind Envoy).

use anyhow::Result;
use clap::Parser;

/// In-memory orders API: POST/GET /orders, GET/PUT/PATCH/DELETE /orders/{id}.
#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = devtools::orders::serve(args.port).await?;
    println!("demo-orders: listening on {}", server.url(""));
    tokio::signal::ctrl_c().await?;
    Ok(())
}
