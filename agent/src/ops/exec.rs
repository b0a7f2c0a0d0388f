//! The exec op (PROTOCOL.md §5 ExecRequest): run one command in its own process group, feed
//! its stdin, capture its output within the reply budget, enforce the deadline, and answer
//! with its exit. The group is killed on timeout and on cancel (fence, shutdown), never after
//! a normal exit: what a command deliberately left running in the background (`nohup srv &`)
//! keeps running, until its fence scope advances or the agent stops (its cgroup, see
//! `sandbox::CommandLimits`). Capture (`capture`) and reply shaping (`shape`) are separate so
//! a streaming exec can reuse the first.

mod capture;
mod shape;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tether_proto::pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

pub use capture::Capture;
pub use shape::shape;

use crate::error::{OpError, OpResult};
use crate::process::{Launcher, kill_group};
use crate::sandbox::CommandLimits;

/// Between SIGTERM and SIGKILL when a command times out.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long after the leader exits its pipes may stay open (held by a background process)
/// before the reply goes out with what was read.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);
/// Size of one read from a pipe.
const READ_CHUNK: usize = 64 * 1024;
/// How long a cancelled exec waits for its killed leader to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Runs `req` in `cwd` (already resolved and checked) under `limits` (see `sandbox`). `budget`
/// is the most the encoded `ExecResponse` may take. `cancel` kills the group and makes the op
/// fail as cancelled.
pub async fn exec(
    launcher: &Launcher,
    limits: CommandLimits,
    cwd: PathBuf,
    req: pb::ExecRequest,
    budget: usize,
    cancel: CancellationToken,
) -> OpResult<pb::ExecResponse> {
    let (program, args) = argv(launcher, &req)?;
    check_env(&req.env)?;
    if cancel.is_cancelled() {
        return Err(OpError::cancelled());
    }
    // Forking a confined child can take tens of milliseconds (Landlock copies every rule into
    // the child's new domain), so it happens on the blocking pool, not an async worker.
    let mut cmd = launcher.command(&program, &args, &cwd, &req.env, &limits.hooks());
    let spawned = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the spawn task failed: {e}"))));
    let mut child = spawned.map_err(|e| spawn_error(&e, &program, &cwd))?;
    let started = Instant::now();
    // Invariant: `id()` is None only after the child was reaped, and nothing has waited yet.
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| OpError::os("spawned child has no pid"))?;
    let pgid = Pid::from_raw(pid);
    tracing::debug!(pid, program = %Path::new(&program).display(), "exec spawned");
    let mut guard = GroupGuard { pgid, armed: true };
    let stdin_task = feed_stdin(child.stdin.take(), req.stdin);
    let deadline = (req.timeout_ms > 0).then(|| started + Duration::from_millis(req.timeout_ms.into()));
    let mut run = Run::new(pgid, deadline, budget);
    let ended = run.drive(&mut child, &mut guard, &cancel).await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    let status = match ended? {
        Ended::Exited(status) => status,
        Ended::Cancelled => {
            // SIGKILL was sent to the group; reap the leader so no zombie is left behind, and
            // kill what left the group (its cgroup knows) — unless the leader had already
            // exited normally, leaving only what it started on purpose.
            if let Ok(Ok(_)) = tokio::time::timeout(REAP_WAIT, child.wait()).await {
                guard.armed = false;
            }
            limits.settle(run.status.is_none() || run.timed_out).await;
            return Err(OpError::cancelled());
        }
    };
    // A command killed for its deadline takes everything it started with it; after a normal
    // exit what it left running on purpose keeps running.
    limits.settle(run.timed_out).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) if !run.timed_out => (code, 0),
        (_, signal) => (-1, signal.unwrap_or(0)),
    };
    let base =
        pb::ExecResponse { exit_code, signal, timed_out: run.timed_out, duration_ms, ..Default::default() };
    Ok(shape(base, &run.out, &run.err, budget))
}

/// Program and arguments: argv direct, or the joined command run by the user's shell.
fn argv(launcher: &Launcher, req: &pb::ExecRequest) -> OpResult<(OsString, Vec<OsString>)> {
    let empty = || OpError::os("the command is empty");
    if req.shell {
        let joined = req.command.join(" ");
        if joined.trim().is_empty() {
            return Err(empty());
        }
        return Ok((launcher.shell().into_os_string(), vec!["-c".into(), joined.into()]));
    }
    match req.command.split_first() {
        Some((program, args)) if !program.is_empty() => {
            Ok((program.into(), args.iter().map(OsString::from).collect()))
        }
        _ => Err(empty()),
    }
}

/// Names and values the OS cannot carry get a clear error rather than a failed spawn.
pub(crate) fn check_env(env: &HashMap<String, String>) -> OpResult<()> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(OpError::os(format!("invalid environment variable {name:?}")).with("env", name));
        }
    }
    Ok(())
}

pub(crate) fn spawn_error(err: &io::Error, program: &OsStr, cwd: &Path) -> OpError {
    let name = Path::new(program).display().to_string();
    let e = match err.kind() {
        // The path layer checked the cwd, but it may have vanished since: say so, never
        // "executable not found".
        io::ErrorKind::NotFound if !cwd.is_dir() => return OpError::not_found("working directory", cwd),
        io::ErrorKind::NotFound => OpError::os(format!("executable not found: {name}")),
        io::ErrorKind::PermissionDenied => OpError::os(format!("permission denied executing {name}")),
        _ => OpError::os(format!("cannot start {name}: {err}")),
    };
    let e = e.with("program", name);
    match err.raw_os_error() {
        Some(errno) => e.with("errno", errno),
        None => e,
    }
}

/// Writes stdin in its own task (a child that never reads must not block us), then closes it.
fn feed_stdin(stdin: Option<ChildStdin>, data: Bytes) -> Option<JoinHandle<()>> {
    let mut stdin = stdin?;
    if data.is_empty() {
        return None; // dropping `stdin` closes it: the child reads EOF at once
    }
    Some(tokio::spawn(async move {
        // EPIPE (the child exited or closed stdin without reading it all) is not our failure.
        if let Err(e) = stdin.write_all(&data).await
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::debug!(error = %e, "writing exec stdin");
        }
        let _ = stdin.shutdown().await;
    }))
}

/// Kills the group if the exec future is dropped (or fails) while the leader is unreaped; an
/// unreaped leader keeps its pid, so the group id cannot have been reused.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// How [`Run::drive`] ended.
enum Ended {
    /// The command is settled and drained.
    Exited(ExitStatus),
    /// `cancel` fired; the group was killed unless the leader had already exited normally.
    Cancelled,
}

/// The state of one running command: its output so far and where its lifecycle stands.
struct Run {
    pgid: Pid,
    out: Capture,
    err: Capture,
    deadline: Option<Instant>,
    timed_out: bool,
    /// When SIGKILL follows the SIGTERM of a timeout.
    kill_at: Option<Instant>,
    killed: bool,
    status: Option<ExitStatus>,
    /// When the leader exited; the pipes get `DRAIN_GRACE` from here.
    settled_at: Option<Instant>,
}

impl Run {
    fn new(pgid: Pid, deadline: Option<Instant>, budget: usize) -> Self {
        Self {
            pgid,
            out: Capture::new(budget),
            err: Capture::new(budget),
            deadline,
            timed_out: false,
            kill_at: None,
            killed: false,
            status: None,
            settled_at: None,
        }
    }

    /// Reads both pipes and waits for the leader until the command is settled and drained.
    async fn drive(
        &mut self,
        child: &mut Child,
        guard: &mut GroupGuard,
        cancel: &CancellationToken,
    ) -> OpResult<Ended> {
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (mut out_buf, mut err_buf) = (vec![0; READ_CHUNK], vec![0; READ_CHUNK]);
        loop {
            // Time-driven steps run here, not only in the sleep branch, so a child that floods
            // its pipes (always-ready reads) cannot starve them.
            let now = Instant::now();
            self.advance(now);
            let pipes_open = stdout.is_some() || stderr.is_some();
            if let Some(settled) = self.settled_at
                && (!pipes_open || now >= settled + DRAIN_GRACE)
            {
                // Invariant: `settled_at` is set only once `status` is.
                return self
                    .status
                    .map(Ended::Exited)
                    .ok_or_else(|| OpError::os("exec ended without an exit status"));
            }
            let wake = self.next_wakeup();
            tokio::select! {
                () = cancel.cancelled() => {
                    // Once the leader has exited, what is left was started on purpose (or
                    // was already killed by the timeout) and its group id may be stale.
                    if self.status.is_none() {
                        self.signal(Signal::SIGKILL);
                    }
                    return Ok(Ended::Cancelled);
                }
                r = read_from(&mut stdout, &mut out_buf) => on_read(&mut stdout, &mut self.out, r, &out_buf),
                r = read_from(&mut stderr, &mut err_buf) => on_read(&mut stderr, &mut self.err, r, &err_buf),
                r = child.wait(), if self.status.is_none() => {
                    let status = r.map_err(|e| OpError::os(format!("waiting for the command: {e}")))?;
                    guard.armed = false;
                    self.on_leader_exit(status, Instant::now());
                }
                () = sleep_until(wake.unwrap_or(now + Duration::from_secs(3600))), if wake.is_some() => {}
            }
        }
    }

    /// Fires the timeout's SIGTERM, and its SIGKILL once the grace is over.
    fn advance(&mut self, now: Instant) {
        if self.status.is_some() {
            return;
        }
        if !self.timed_out && self.deadline.is_some_and(|d| now >= d) {
            self.timed_out = true;
            self.signal(Signal::SIGTERM);
            self.kill_at = Some(now + TERM_GRACE);
        }
        if !self.killed && self.kill_at.is_some_and(|k| now >= k) {
            self.signal(Signal::SIGKILL);
            self.killed = true;
        }
    }

    fn on_leader_exit(&mut self, status: ExitStatus, now: Instant) {
        self.status = Some(status);
        // After a normal exit the rest of the group is left alone. After a timeout, whatever
        // outlived the leader got the same SIGTERM and is killed now (its leader's pid is
        // only just reaped, so the group id cannot have been reused yet).
        if self.timed_out && !self.killed {
            self.signal(Signal::SIGKILL);
            self.killed = true;
        }
        self.settled_at = Some(now);
    }

    /// The next instant at which `advance` or the drain grace has something to do.
    fn next_wakeup(&self) -> Option<Instant> {
        match (self.settled_at, self.timed_out) {
            (Some(settled), _) => Some(settled + DRAIN_GRACE),
            (None, false) => self.deadline,
            (None, true) => self.kill_at.filter(|_| !self.killed),
        }
    }

    fn signal(&self, signal: Signal) {
        if let Err(e) = kill_group(self.pgid, signal) {
            tracing::warn!(pgid = self.pgid.as_raw(), %signal, error = %e, "signalling exec process group");
        }
    }
}

/// One read from `pipe`, or never if it is already closed.
async fn read_from<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

fn on_read<R>(pipe: &mut Option<R>, capture: &mut Capture, result: io::Result<usize>, buf: &[u8]) {
    match result {
        Ok(0) => *pipe = None,
        Ok(n) => capture.push(&buf[..n]),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            tracing::debug!(error = %e, "reading exec output");
            *pipe = None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
