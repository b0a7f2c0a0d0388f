//! The command line: global flags, subcommands, and the dispatch from one to the other.

mod connect;
mod credential;
mod exec;
mod format;
mod fs;
mod info;
mod mint;
pub mod report;
mod shell;
mod sync;
mod tty;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use connect::ConnArgs;

/// Drive a Tether agent over NATS.
///
/// Secrets are read from the environment only: TETHER_NATS_PASSWORD (with --nats-user) and
/// TETHER_NATS_TOKEN.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print JSON objects instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trip to the agent; prints the round-trip time.
    Ping,
    /// Run a command on the agent; its output becomes ours and its exit code our exit code.
    Exec(exec::ExecArgs),
    /// Print a remote file to stdout.
    Cat { path: String },
    /// Download a remote file (LOCAL defaults to the remote file's name; `-` is stdout).
    Get { remote: String, local: Option<PathBuf> },
    /// Upload a local file (`-` reads stdin); the remote file is replaced atomically.
    Put {
        local: PathBuf,
        /// Remote path; ending in `/` keeps the local file name.
        remote: String,
        /// Permission bits in octal (e.g. 644); default keeps the existing file's mode.
        #[arg(long, value_parser = fs::parse_mode)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[arg(long, short = 'p')]
        parents: bool,
    },
    /// List a directory (default: the agent's workspace root).
    Ls {
        /// Recurse into subdirectories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Stop after this many entries (0 = as many as fit one reply).
        #[arg(long, default_value_t = 0)]
        max_entries: u32,
        path: Option<String>,
    },
    /// Show one path's metadata (exits 1 if it does not exist).
    Stat { path: String },
    /// Create a directory.
    Mkdir {
        /// Create parents as needed; no error if it exists.
        #[arg(short = 'p', long)]
        parents: bool,
        /// Permission bits in octal (e.g. 755).
        #[arg(long, value_parser = fs::parse_mode)]
        mode: Option<u32>,
        path: String,
    },
    /// Move or rename a path.
    Mv {
        /// Replace an existing target.
        #[arg(short = 'f', long)]
        force: bool,
        from: String,
        to: String,
    },
    /// Remove a file, symlink or empty directory (`-r` for a tree).
    Rm {
        #[arg(short = 'r', long)]
        recursive: bool,
        path: String,
    },
    /// Sample the machine's metrics.
    Metrics,
    /// Follow the agent's hello, heartbeat and going-offline announcements until Ctrl-C.
    Events,
    /// An interactive terminal on the agent's machine, through the relay (Ctrl-] detaches).
    Shell(shell::ShellArgs),
    /// Print a relay token: `producer` for an agent, `viewer` for a viewer.
    MintToken(mint::MintArgs),
    /// Sync a directory tree with the agent: `up`, `down` (three-way with a baseline), `snapshot`.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
}

/// Runs one parsed command line; returns the process exit code.
pub async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::MintToken(args) = cli.command {
        mint::run(args, cli.conn.workspace_id.as_deref(), cli.conn.agent_id.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Sync(sub) = cli.command {
        if !sync::needs_agent(&sub) {
            return sync::snapshot(sub, cli.json);
        }
        let client = connect::connect(&cli.conn).await?;
        return sync::run(&client, sub, cli.json).await;
    }
    if let (Command::Shell(shell), None) = (&cli.command, &cli.conn.fence_scope) {
        // A terminal belongs to the fence scope that opened it: a reattachable one needs the
        // same fence scope on every run.
        cli.conn.fence_scope = shell.reattach_fence_scope();
    }
    let client = connect::connect(&cli.conn).await?;
    let json = cli.json;
    match cli.command {
        Command::Ping => info::ping(&client, json).await,
        Command::Exec(args) => exec::run(&client, args, json).await,
        Command::Cat { path } => fs::cat(&client, &path).await,
        Command::Get { remote, local } => fs::get(&client, &remote, local, json).await,
        Command::Put { local, remote, mode, parents } => {
            fs::put(&client, &local, &remote, mode.unwrap_or(0), parents, json).await
        }
        Command::Ls { recursive, max_entries, path } => {
            fs::ls(&client, path.as_deref().unwrap_or(""), recursive, max_entries, json).await
        }
        Command::Stat { path } => fs::stat(&client, &path, json).await,
        Command::Mkdir { parents, mode, path } => {
            fs::mkdir(&client, &path, parents, mode.unwrap_or(0), json).await
        }
        Command::Mv { force, from, to } => fs::mv(&client, &from, &to, force, json).await,
        Command::Rm { recursive, path } => fs::rm(&client, &path, recursive, json).await,
        Command::Metrics => info::metrics(&client, json).await,
        Command::Events => info::events(&client, json).await,
        Command::Shell(args) => shell::run(&client, args).await,
        Command::MintToken(_) | Command::Sync(_) => unreachable!("handled before"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reattachable_shell_keeps_one_fence_scope_unless_given_one() {
        let shell = |args: &[&str]| {
            Cli::try_parse_from([&["tetherctl", "shell", "--relay-url", "ws://r/stream"], args].concat())
                .unwrap()
        };
        let Command::Shell(a) = shell(&["--scope", "work"]).command else { panic!("shell") };
        let Command::Shell(b) = shell(&["--scope", "work"]).command else { panic!("shell") };
        assert_eq!(a.reattach_fence_scope(), b.reattach_fence_scope());
        assert!(a.reattach_fence_scope().is_some());
        let Command::Shell(plain) = shell(&[]).command else { panic!("shell") };
        assert_eq!(plain.reattach_fence_scope(), None);
    }

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["tetherctl", "ls", "-R", "--json", "--epoch", "4", "/w"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.conn.epoch, Some(4));
        assert!(
            matches!(cli.command, Command::Ls { recursive: true, ref path, .. } if path.as_deref() == Some("/w"))
        );
    }

    #[test]
    fn put_parses_octal_modes() {
        let cli = Cli::try_parse_from(["tetherctl", "put", "--mode", "0755", "a", "b"]).unwrap();
        assert!(matches!(cli.command, Command::Put { mode: Some(0o755), .. }));
        assert!(Cli::try_parse_from(["tetherctl", "put", "--mode", "9", "a", "b"]).is_err());
    }
}
