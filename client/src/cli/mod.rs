//! The command line: global flags, subcommands, and the dispatch from one to the other.

mod connect;
mod credential;
mod desktop;
mod enrollment;
mod exec;
mod format;
mod fs;
mod info;
mod mcp;
mod mcp_desktop;
mod mcp_text;
mod mint;
mod nats_config;
mod page;
mod progress;
pub mod report;
mod run;
mod shell;
mod sync;
mod tty;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_proto::pb;
use tether_proto::token::ViewerMode;

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
    /// Run a long command on the agent: its output streams live, our exit code is its code;
    /// Ctrl-C sends it SIGINT, a second Ctrl-C detaches (`--detach` starts it and prints its id).
    Run(run::RunArgs),
    /// Follow a long command's output again (from chunk SEQ; Ctrl-C detaches).
    Attach {
        id: String,
        /// First chunk wanted (0 = everything still kept).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// List the long commands of this fence scope, running and recently ended.
    Ps,
    /// Send a signal to a long command's process group.
    Kill {
        id: String,
        #[arg(short = 's', long, value_enum, default_value = "TERM")]
        signal: run::SignalArg,
    },
    /// Wait for a long command to end; exit with its code.
    Wait { id: String },
    /// Print a remote file to stdout.
    Cat { path: String },
    /// Download a remote file (LOCAL defaults to the remote file's name; `-` is stdout),
    /// checked against the agent's BLAKE3; an interrupted download resumes.
    Get {
        remote: String,
        local: Option<PathBuf>,
        #[command(flatten)]
        flags: fs::GetFlags,
    },
    /// Upload a local file (`-` reads stdin); the remote file is replaced atomically once the
    /// agent has checked its BLAKE3; an interrupted upload resumes.
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
        #[command(flatten)]
        flags: fs::PutFlags,
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
    /// Enroll an agent: its own NATS identity, and the one line to paste on its machine.
    #[command(subcommand)]
    Enrollment(enrollment::EnrollmentCommand),
    /// Create NATS identities for control planes.
    #[command(subcommand)]
    Credentials(enrollment::CredentialsCommand),
    /// Save a screenshot of the agent's display (PNG, or JPEG with --jpeg).
    Screenshot(desktop::ScreenshotArgs),
    /// Click at X Y (needs the agent's screen-control consent).
    Click {
        x: i32,
        y: i32,
        #[arg(long, value_enum, default_value_t)]
        button: desktop::ButtonArg,
        /// Double-click.
        #[arg(long)]
        double: bool,
        #[command(flatten)]
        space: desktop::SpaceArg,
    },
    /// Move the pointer to X Y.
    Move {
        x: i32,
        y: i32,
        #[command(flatten)]
        space: desktop::SpaceArg,
    },
    /// Press at X1 Y1, move to X2 Y2 with the button held, release.
    Drag {
        x1: i32,
        y1: i32,
        x2: i32,
        y2: i32,
        #[arg(long, value_enum, default_value_t)]
        button: desktop::ButtonArg,
        #[command(flatten)]
        space: desktop::SpaceArg,
    },
    /// Scroll by wheel notches (positive DY = down, DX = right), where the pointer is or --at X Y.
    Scroll {
        #[arg(allow_negative_numbers = true)]
        dx: i32,
        #[arg(allow_negative_numbers = true)]
        dy: i32,
        #[arg(long, num_args = 2, value_names = ["X", "Y"])]
        at: Option<Vec<i32>>,
        #[command(flatten)]
        space: desktop::SpaceArg,
    },
    /// Press a key or chord: Enter, ctrl+c, shift+Tab, ctrl+alt+t, F5, PageDown, super.
    Key {
        chord: String,
        /// Only press (hold) the keys.
        #[arg(long, conflicts_with = "up")]
        down: bool,
        /// Only release the keys.
        #[arg(long)]
        up: bool,
    },
    /// Type text (any Unicode).
    Type { text: String },
    /// Ensure the agent's desktop stream; print its channel, viewer URL and token command.
    Desktop {
        /// The relay's /stream URL, for the viewer URL.
        #[arg(long, env = "TETHER_RELAY_URL")]
        relay_url: Option<String>,
        /// Scale the stream down to fit this width (0 = native).
        #[arg(long, default_value_t = 0)]
        width: u32,
        /// Scale the stream down to fit this height (0 = native).
        #[arg(long, default_value_t = 0)]
        height: u32,
        /// Open the stream with the TILES encoding (key frames, then only the changed
        /// rectangles; the relay's /view page draws both). Only the ensure that opens the
        /// channel chooses; viewers that expect a whole image per frame need the default.
        #[arg(long)]
        tiles: bool,
        /// Print only the relay's browser page for the desktop, with a fresh viewer token
        /// (minted from TETHER_RELAY_VIEWER_SECRET, valid for --url-ttl).
        #[arg(long)]
        print_url: bool,
        /// With --print-url: the token may watch but not drive the desktop (mode "view").
        #[arg(long, requires = "print_url")]
        view_only: bool,
        /// How long the token in the --print-url page URL is valid, e.g. 15m, 2h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "print_url")]
        url_ttl: std::time::Duration,
        #[command(flatten)]
        token: credential::TokenArgs,
    },
    /// Run the actions of a JSON file, then save one screenshot taken once the screen settled.
    Act {
        file: PathBuf,
        /// Where to save the screenshot [default: act.png or act.jpeg].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Serve the agent to AI assistants as Model Context Protocol tools on stdin/stdout
    /// (run_command, read_file, write_file, list_directory, screenshot, click, type_text,
    /// press_keys, scroll, desktop_act).
    Mcp(mcp::McpArgs),
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
    if let Command::Enrollment(command) = cli.command {
        enrollment::enrollment(command)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Credentials(command) = cli.command {
        enrollment::credentials(command)?;
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
    let long_command = matches!(
        cli.command,
        Command::Run(_) | Command::Attach { .. } | Command::Ps | Command::Kill { .. } | Command::Wait { .. }
    );
    if long_command && cli.conn.fence_scope.is_none() {
        // An execution belongs to its fence scope: later runs must use the same one to find it.
        cli.conn.fence_scope = Some(run::RUN_FENCE_SCOPE.to_owned());
    }
    let client = connect::connect(&cli.conn).await?;
    let json = cli.json;
    match cli.command {
        Command::Ping => info::ping(&client, json).await,
        Command::Exec(args) => exec::run(&client, args, json).await,
        Command::Run(args) => run::run(&client, args, json).await,
        Command::Attach { id, from } => run::attach(&client, &id, from).await,
        Command::Ps => run::ps(&client, json).await,
        Command::Kill { id, signal } => run::kill(&client, &id, signal).await,
        Command::Wait { id } => run::wait(&client, &id, json).await,
        Command::Cat { path } => fs::cat(&client, &path).await,
        Command::Get { remote, local, flags } => fs::get(&client, &remote, local, &flags, json).await,
        Command::Put { local, remote, mode, parents, flags } => {
            let write = tether_client::WriteOptions { mode: mode.unwrap_or(0), create_parents: parents };
            fs::put(&client, &local, &remote, write, &flags, json).await
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
        Command::Screenshot(args) => desktop::screenshot(&client, args, json).await,
        Command::Click { x, y, button, double, space } => {
            let action = if double { pb::PointerAction::DoubleClick } else { pb::PointerAction::Click };
            desktop::input(&client, desktop::pointer_event(x, y, action, button, space.get()), json).await
        }
        Command::Move { x, y, space } => {
            let event =
                desktop::pointer_event(x, y, pb::PointerAction::Move, Default::default(), space.get());
            desktop::input(&client, event, json).await
        }
        Command::Drag { x1, y1, x2, y2, button, space } => {
            desktop::drag(&client, (x1, y1, x2, y2), button, space.get(), json).await
        }
        Command::Scroll { dx, dy, at, space } => {
            let at = at.map(|v| (v[0], v[1]));
            desktop::input(&client, desktop::scroll_event(dx, dy, at, space.get()), json).await
        }
        Command::Key { chord, down, up } => {
            let action = match (down, up) {
                (true, _) => pb::KeyAction::Down,
                (_, true) => pb::KeyAction::Up,
                _ => pb::KeyAction::Press,
            };
            desktop::input(&client, desktop::key_event(&chord, action), json).await
        }
        Command::Type { text } => desktop::input(&client, desktop::text_event(&text), json).await,
        Command::Act { file, output } => desktop::act(&client, &file, output, json).await,
        Command::Desktop { relay_url, width, height, tiles, print_url, view_only, url_ttl, token } => {
            let page = match print_url {
                true => Some(desktop::PageToken {
                    credential: credential::ViewerCredential::resolve(
                        &token,
                        credential::EnvSecrets::from_env(),
                    )?,
                    ttl: url_ttl,
                    mode: if view_only { ViewerMode::View } else { ViewerMode::Control },
                }),
                false => None,
            };
            let encoding = match tiles {
                true => pb::DesktopFrameEncoding::Tiles,
                false => pb::DesktopFrameEncoding::Whole,
            };
            let request = pb::DesktopEnsureRequest { width, height, frame_encoding: encoding as i32 };
            desktop::ensure(&client, relay_url.as_deref(), request, page, json).await
        }
        Command::Mcp(args) => mcp::run(client, args).await,
        Command::MintToken(_) | Command::Enrollment(_) | Command::Credentials(_) | Command::Sync(_) => {
            unreachable!("handled before connecting")
        }
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
