//! `make bench` and `make bench-smoke`: proxy-webhooks measured side by side with plain Envoy.
//!
//! Needs the release `.wasm` (`make wasm`) and Envoy (`make envoy`); see `BENCHMARKS.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use devtools::bench::scenarios::{self, Selection};
use devtools::bench::{sites, smoke, Options};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks proxy-webhooks against plain Envoy (everything on 127.0.0.1)")]
struct Args {
    /// A few seconds of scenario 2 against the plugin only, checking every event is delivered.
    #[arg(long)]
    smoke: bool,
    /// Rounds per side in the interleaved comparisons.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of measured load per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Client connections in closed-loop runs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Only these scenarios (numbers 1–15 and 17, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<u8>>,
    /// Start every Envoy from this configuration instead of the workspace's `envoy.yaml`.
    #[arg(long)]
    envoy_yaml: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// True when the run completed (the full bench reports unmet targets but does not fail on them:
/// they depend on the machine).
async fn run(args: &Args) -> Result<bool> {
    if let Some(path) = &args.envoy_yaml {
        sites::use_base_config(path.clone());
    }
    if args.smoke {
        return smoke::run().await;
    }
    let opts = Options {
        rounds: args.rounds.max(1),
        duration: Duration::from_secs(args.seconds.max(1)),
        connections: args.connections.max(1),
        ..Options::default()
    };
    let selection = args.only.clone().map_or_else(Selection::all, Selection);
    let started = Instant::now();
    let report = scenarios::run(&opts, &selection).await?;
    println!("{}", report.markdown());
    println!(
        "({} rounds × {} s per side, {} connections; the bench took {:.0} s)",
        opts.rounds,
        opts.duration.as_secs(),
        opts.connections,
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}
