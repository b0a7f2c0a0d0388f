//! `tether-agent`: the command line over the library. Parsing and logging setup only.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tether_agent::config::{Config, RunArgs};
use tether_agent::fence;
use tracing_subscriber::EnvFilter;

/// Turns this machine into a sandbox a control plane drives over NATS.
#[derive(Parser)]
#[command(name = "tether-agent", version, about)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, global = true, env = "TETHER_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to NATS and serve requests until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Inspect or reset held fence epochs (only while the agent is stopped).
    #[command(subcommand)]
    Fence(FenceCommand),
    /// Enroll this machine with the bundle an operator sent (`tetherctl enrollment create`).
    Enroll(tether_agent::enroll::EnrollArgs),
    /// What the agent on a state directory is doing: ids, NATS and relay, consents, epochs.
    Status(tether_agent::status::StatusArgs),
    /// Run an enrolled agent as a service (systemd unit, or a LaunchAgent on macOS).
    #[command(subcommand)]
    Service(tether_agent::service::ServiceCommand),
}

#[derive(Subcommand)]
enum FenceCommand {
    /// Print every fence scope and its held epoch.
    List {
        /// The agent's state directory.
        #[arg(long, env = "TETHER_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Forget one scope's held epoch, so its control plane may start again from any epoch
    /// (`''` names the default scope).
    Reset {
        scope: String,
        /// The agent's state directory.
        #[arg(long, env = "TETHER_STATE_DIR")]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format.as_str() {
        "json" => logs.json().init(),
        _ => logs.init(),
    }
    harden_process();
    let result = match cli.command {
        Command::Run(args) => Config::resolve(*args, |k| std::env::var(k).ok())
            .and_then(|config| tokio::runtime::Runtime::new()?.block_on(tether_agent::serve::run(config))),
        Command::Enroll(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tether_agent::enroll::enroll(args)))
            .map(|enrolled| {
                println!(
                    "enrolled: config {}, workspace {}\nstart the agent with:\n  tether-agent run --config {}",
                    enrolled.config_file.display(),
                    enrolled.workspace_root.display(),
                    enrolled.config_file.display()
                );
            }),
        Command::Service(command) => tether_agent::service::run(command),
        Command::Status(args) => tether_agent::status::run(args),
        Command::Fence(FenceCommand::List { state_dir }) => fence::list(&state_dir).map(|scopes| {
            for (scope, held) in scopes {
                println!("{held}\t{scope:?}");
            }
        }),
        Command::Fence(FenceCommand::Reset { scope, state_dir }) => {
            fence::reset(&state_dir, &scope).map(|held| match held {
                Some(held) => println!("fence scope {scope:?} reset (it held epoch {held})"),
                None => println!("fence scope {scope:?} held no epoch; nothing to reset"),
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agent holds credentials in memory and its environment; commands it runs share its
/// user. Marking it non-dumpable makes /proc/<pid>/environ and /proc/<pid>/mem unreadable to
/// them and forbids them to ptrace it.
fn harden_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and only changes this process's flag.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!("prctl(PR_SET_DUMPABLE) failed: {}", std::io::Error::last_os_error());
        }
    }
}
