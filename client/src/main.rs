//! `tetherctl`: drive a Tether agent from a shell. Parsing and printing only; every operation
//! is a call into the `tether_client` library, so the CLI and the tests share one code path.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_logging();
    let json = args.json;
    match cli::run(args).await {
        Ok(code) => code,
        Err(err) => cli::report::print_error(&err, json),
    }
}

/// Logs go to stderr, `warn` and up unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
