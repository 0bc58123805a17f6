//! `proxy-webhooks`: the plugin's command line (docs/openapi-rules.md).
//!
//! Exit status: 0 done; 1 the input is not valid (`check`: the plugin refuses the
//! configuration; `rules`: not an OpenAPI 3.0 or 3.1 document); 2 a usage error or a file that
//! cannot be read.

use clap::{Parser, Subcommand};
use proxy_webhooks_cli::{check, document, pretty, rules};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "proxy-webhooks",
    version,
    about = "proxy-webhooks on the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a plugin configuration (JSON) with one event rule per state-changing operation of
    /// an OpenAPI 3.0 or 3.1 document (YAML or JSON); warnings go to stderr.
    Rules {
        /// The API's OpenAPI document.
        openapi: PathBuf,
    },
    /// Check a plugin configuration with the plugin's own parser: a JSON file, or an Envoy
    /// configuration (YAML or JSON) whose proxy-webhooks Wasm configurations are all checked.
    Check {
        /// A plugin configuration or an envoy.yaml.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Rules { openapi } => run_rules(&openapi),
        Command::Check { config } => run_check(&config),
    }
}

fn run_rules(path: &Path) -> ExitCode {
    let doc = match document::load(path) {
        Ok(doc) => doc,
        Err(e) => return fail(2, &e),
    };
    let generated = match rules::generate(&doc) {
        Ok(generated) => generated,
        Err(e) => return fail(1, &format!("{}: {e}", path.display())),
    };
    for warning in &generated.warnings {
        eprintln!("warning: {warning}");
    }
    match serde_json::to_value(&generated.config) {
        Ok(config) => {
            println!("{}", pretty::to_string(&config));
            eprintln!(
                "{}: {} event rules, {} warnings",
                path.display(),
                generated.config.events.len(),
                generated.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e.to_string()),
    }
}

fn run_check(path: &Path) -> ExitCode {
    let shown = path.display();
    let text = match std::fs::metadata(path).and_then(|m| {
        if m.len() > document::MAX_FILE_BYTES {
            Err(std::io::Error::other(format!(
                "larger than {} bytes",
                document::MAX_FILE_BYTES
            )))
        } else {
            std::fs::read(path)
        }
    }) {
        Ok(text) => text,
        Err(e) => return fail(2, &format!("{shown}: {e}")),
    };
    match check::check(&text) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("warning: {shown}: {warning}");
            }
            println!("{shown}: {}", checked.summary);
            ExitCode::SUCCESS
        }
        Err(check::Invalid(message)) => fail(1, &format!("{shown}: {message}")),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(status)
}
