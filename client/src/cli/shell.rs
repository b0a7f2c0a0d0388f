//! `tetherctl shell`: an interactive terminal on the agent's machine. Opens a PTY over NATS,
//! watches its channel through the relay with the client library's reconnecting viewer, puts
//! the local terminal in raw mode, and forwards keystrokes and window resizes until the remote
//! process exits or the user detaches with Ctrl-]. The local terminal is restored on every way
//! out; a relay restart shows a one-line notice and the session carries on where it was.
//!
//! The viewer credential is settled before the PTY is opened, and once it is open every way out
//! but a detach from a `--scope` session closes it: a failed attach leaves no remote shell behind.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tether_client::{Client, InputSlot, Viewer, ViewerConfig, ViewerError, ViewerEvent, ViewerInput, pb};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::credential::{EnvSecrets, TokenArgs, ViewerCredential};
use super::page::page_url;
use super::tty::{RawMode, window_size};

/// Ctrl-]: leave the remote shell (it keeps running when it has a --scope).
const DETACH: u8 = 0x1d;
/// How long a token minted for this session is valid.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The relay's /stream URL, e.g. ws://127.0.0.1:8443/stream.
    #[arg(long, env = "TETHER_RELAY_URL")]
    relay_url: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Reattachable session name: the same scope reattaches to the same shell, and detaching
    /// (Ctrl-]) leaves it running.
    #[arg(long)]
    scope: Option<String>,
    /// Do not attach here: print the relay's browser page for the new terminal (with a fresh
    /// viewer token valid for --url-ttl) and leave the terminal running for it.
    #[arg(long)]
    print_url: bool,
    /// How long the token in the --print-url page URL is valid, e.g. 15m, 2h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "print_url")]
    url_ttl: Duration,
    /// Working directory on the agent (default: the workspace root).
    #[arg(long)]
    cwd: Option<String>,
    /// Program and arguments to run instead of the login shell.
    #[arg(last = true)]
    command: Vec<String>,
}

impl ShellArgs {
    /// The fence scope of a reattachable (`--scope`) session: the same on every run, so the
    /// terminal (owned by the fence scope that opened it) can be found again.
    pub fn reattach_fence_scope(&self) -> Option<String> {
        self.scope.as_ref().map(|scope| format!("tetherctl-shell-{scope}"))
    }
}

/// Runs the session; the exit code is the remote process's when it exited.
pub async fn run(client: &Client, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let credential = ViewerCredential::resolve(&args.token, EnvSecrets::from_env())?;
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let request = pb::PtyOpenRequest {
        command: args.command,
        cwd: args.cwd.unwrap_or_default(),
        cols: cols.into(),
        rows: rows.into(),
        term: std::env::var("TERM").unwrap_or_default(),
        scope_id: args.scope.clone().unwrap_or_default(),
        ..Default::default()
    };
    let opened = client.pty_open(request).await.context("opening a terminal")?;
    if args.print_url {
        return print_url(client, opened, &credential, &args.relay_url, args.url_ttl).await;
    }
    let session = Session { client, pty_id: opened.pty_id, keep: args.scope.is_some() };
    match attach(&session, opened.channel, &credential, args.relay_url).await {
        Ok(ended) => session.finish(ended).await,
        Err(e) => {
            session.abandon().await;
            Err(e)
        }
    }
}

/// `--print-url`: the page URL of the opened terminal on stdout; the terminal is left for the
/// page (it ends when its process exits, or after the agent's idle timeout with no viewer).
async fn print_url(
    client: &Client,
    opened: pb::PtyOpenResponse,
    credential: &ViewerCredential,
    relay_url: &str,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let made = opened.channel.context("the agent named no channel for the terminal").and_then(|channel| {
        let token = credential.token_for(&channel, &opened.pty_id, ttl);
        page_url(relay_url, &channel, &token)
    });
    match made {
        Ok(url) => {
            println!("{url}");
            eprintln!(
                "tetherctl: terminal {} is open; the URL's token is valid for {}",
                opened.pty_id,
                humantime::format_duration(ttl)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = client.pty_close(&opened.pty_id).await;
            Err(e)
        }
    }
}

/// From the opened terminal to the end of the interactive part; on an error the caller
/// abandons the session.
async fn attach(
    session: &Session<'_>,
    channel: Option<pb::StreamChannel>,
    credential: &ViewerCredential,
    relay_url: String,
) -> anyhow::Result<Ended> {
    let channel = channel.context("the agent named no channel for the terminal")?;
    let token = credential.token_for(&channel, &session.pty_id, TOKEN_TTL);
    let config = ViewerConfig { relay_url, channel, token, resume_from_seq: 0 };
    let viewer = connect(config).await.context("connecting to the relay")?;
    let raw = RawMode::enter().context("switching the terminal to raw mode")?;
    let ended = interact(viewer, &raw).await;
    drop(raw);
    ended
}

/// Tries to reach the relay for a few seconds: one that just restarted may be busy (503)
/// while every agent and viewer reconnects at once, or refuse for now (retryable). Any other
/// refusal is final.
async fn connect(config: ViewerConfig) -> Result<Viewer, ViewerError> {
    let mut pause = Duration::from_millis(200);
    for _ in 0..5 {
        match Viewer::connect(config.clone()).await {
            Err(ViewerError::Unreachable(_) | ViewerError::Busy(_)) => tokio::time::sleep(pause).await,
            done => return done,
        }
        pause *= 2;
    }
    Viewer::connect(config).await
}

/// How the interactive part ended.
enum Ended {
    Detached,
    Closed { reason: pb::StreamCloseReason, message: String },
}

/// The open terminal and what to do with it at the end.
struct Session<'a> {
    client: &'a Client,
    pty_id: String,
    /// A scoped terminal outlives a detach.
    keep: bool,
}

impl Session<'_> {
    /// Closes the terminal after a failed attach, unless it is a scoped one meant to outlive us.
    async fn abandon(&self) {
        if !self.keep {
            let _ = self.client.pty_close(&self.pty_id).await;
        }
    }

    async fn finish(self, ended: Ended) -> anyhow::Result<ExitCode> {
        match ended {
            Ended::Detached if self.keep => {
                eprintln!("tetherctl: detached; the shell keeps running (same --scope reattaches)");
                Ok(ExitCode::SUCCESS)
            }
            Ended::Detached => {
                let code = self.client.pty_close(&self.pty_id).await?;
                eprintln!("tetherctl: detached; the shell was closed");
                Ok(exit_code(code))
            }
            Ended::Closed { reason: pb::StreamCloseReason::ProcessExit, .. } => {
                // The agent keeps an ended terminal's exit code for pty_close for a while.
                let code = self.client.pty_close(&self.pty_id).await.unwrap_or(-1);
                Ok(exit_code(code))
            }
            Ended::Closed { reason, message } => {
                eprintln!("tetherctl: the terminal was closed ({}): {message}", reason.as_str_name());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Input read from the terminal but not yet in the viewer's queue (its queue is full while the
/// relay is away or slow). Reading stdin stops once this many bytes wait.
const MAX_WAITING_INPUT: usize = 1 << 20;

/// Keys -> viewer, output -> stdout, window changes -> resize, until the end. Nothing here
/// waits on the viewer's input queue: input goes through a local queue of its own, drained as
/// the viewer makes room, so output, signals and Ctrl-] are handled even when the relay is
/// away or the remote side does not read (a big paste into a busy terminal).
async fn interact(mut viewer: Viewer, raw: &RawMode) -> anyhow::Result<Ended> {
    let input = viewer.input();
    let mut waiting = Waiting::default();
    let mut keys = read_stdin();
    let mut stdin_open = true;
    let mut winch = signal(SignalKind::window_change()).context("watching window size changes")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            event = viewer.next() => match event {
                Some(ViewerEvent::Output(data)) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                Some(ViewerEvent::Closed { reason, message }) => return Ok(Ended::Closed { reason, message }),
                Some(ViewerEvent::Gap { from, to }) => notice(raw, &format!("output {from}..{to} was lost by the relay")),
                Some(ViewerEvent::Reconnecting(why)) => notice(raw, &format!("relay connection lost ({why}); reconnecting")),
                Some(ViewerEvent::Resumed) => notice(raw, "reconnected"),
                None => anyhow::bail!("the viewer stopped unexpectedly"),
            },
            slot = input.reserve(), if !waiting.is_empty() => match slot {
                Some(slot) => waiting.send_first(slot),
                None => anyhow::bail!("the viewer stopped unexpectedly"),
            },
            key = keys.recv(), if stdin_open && waiting.bytes < MAX_WAITING_INPUT => match key {
                Some(data) => match data.iter().position(|b| *b == DETACH) {
                    Some(at) => {
                        waiting.push(Pending::Data(data.slice(..at)));
                        waiting.flush(&input, DETACH_FLUSH).await;
                        viewer.close(DETACH_FLUSH).await;
                        return Ok(Ended::Detached);
                    }
                    None => waiting.push(Pending::Data(data)),
                },
                // Input ended (a pipe): keep showing output until the process exits.
                None => stdin_open = false,
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    waiting.push(Pending::Resize(cols.into(), rows.into()));
                }
            }
            _ = hangup.recv() => return Ok(Ended::Detached),
            _ = terminate.recv() => return Ok(Ended::Detached),
        }
    }
}

/// How long a detach waits to hand over what was typed before Ctrl-].
const DETACH_FLUSH: std::time::Duration = Duration::from_secs(1);

/// One input message waiting for room in the viewer's queue.
enum Pending {
    Data(Bytes),
    Resize(u32, u32),
}

/// The local input queue of [`interact`], in the order the user produced it.
#[derive(Default)]
struct Waiting {
    queue: std::collections::VecDeque<Pending>,
    bytes: usize,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn push(&mut self, item: Pending) {
        match item {
            Pending::Data(data) if data.is_empty() => {}
            Pending::Data(data) => {
                self.bytes += data.len();
                self.queue.push_back(Pending::Data(data));
            }
            // Only the latest of several waiting sizes matters.
            Pending::Resize(cols, rows) => match self.queue.back_mut() {
                Some(last @ Pending::Resize(..)) => *last = Pending::Resize(cols, rows),
                _ => self.queue.push_back(Pending::Resize(cols, rows)),
            },
        }
    }

    fn send_first(&mut self, slot: InputSlot<'_>) {
        match self.queue.pop_front() {
            Some(Pending::Data(data)) => {
                self.bytes -= data.len();
                slot.send(data);
            }
            Some(Pending::Resize(cols, rows)) => slot.resize(cols, rows),
            None => {}
        }
    }

    /// Hands over what waits, for at most `within`.
    async fn flush(&mut self, input: &ViewerInput, within: Duration) {
        let drain = async {
            while !self.is_empty() {
                match input.reserve().await {
                    Some(slot) => self.send_first(slot),
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
    }
}

/// Stdin on a plain thread (a blocking read must not keep the runtime from exiting).
fn read_stdin() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    let _ = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A one-line notice on stderr that reads right in raw mode too.
fn notice(raw: &RawMode, text: &str) {
    let end = if raw.is_raw() { "\r\n" } else { "\n" };
    eprint!("{end}[tetherctl: {text}]{end}");
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
