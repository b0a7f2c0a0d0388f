//! The exec op (PROTOCOL.md §5 ExecRequest): run one command in its own process group, feed
//! its stdin, capture its output within the reply budget, enforce the deadline, and answer
//! with its exit. The group is killed on timeout and on cancel (fence, shutdown), never after
//! a normal exit: what a command deliberately left running in the background (`nohup srv &`)
//! keeps running, until its fence scope advances or the agent stops (its cgroup, see
//! `sandbox::CommandLimits`). Capture (`capture`) and reply shaping (`shape`) are separate so
//! a streaming exec can reuse the first.

mod capture;
pub(crate) mod drive;
mod shape;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use nix::unistd::Pid;
use tether_proto::pb;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use capture::Capture;
pub use shape::shape;

use self::drive::{Captures, Ended, GroupGuard, Run};
use crate::error::{OpError, OpResult};
use crate::process::Launcher;
use crate::sandbox::CommandLimits;

/// Between SIGTERM and SIGKILL when a command times out.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long after the leader exits its pipes may stay open (held by a background process)
/// before the reply goes out with what was read.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);
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
    let cmd = launcher.command(&program, &args, &cwd, &req.env, &limits.hooks());
    let (mut child, pgid) = spawn(cmd, &program, &cwd).await?;
    let started = Instant::now();
    let mut guard = GroupGuard { pgid, armed: true };
    let stdin_task = feed_stdin(child.stdin.take(), req.stdin);
    let deadline = (req.timeout_ms > 0).then(|| started + Duration::from_millis(req.timeout_ms.into()));
    let output = Captures { out: Capture::new(budget), err: Capture::new(budget) };
    let mut run = Run::new(pgid, deadline, output);
    let pipes = (child.stdout.take(), child.stderr.take());
    let ended = run.drive(&mut child, &mut guard, &cancel, pipes).await;
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
    let (exit_code, signal) = exit_of(status, run.timed_out);
    let base =
        pb::ExecResponse { exit_code, signal, timed_out: run.timed_out, duration_ms, ..Default::default() };
    Ok(shape(base, &run.output.out, &run.output.err, budget))
}

/// Exit code and terminating signal as the protocol reports them: a command that timed out has
/// exit code -1 even if it exited by itself on SIGTERM.
pub(crate) fn exit_of(status: std::process::ExitStatus, timed_out: bool) -> (i32, i32) {
    match (status.code(), status.signal()) {
        (Some(code), _) if !timed_out => (code, 0),
        (_, signal) => (-1, signal.unwrap_or(0)),
    }
}

/// A turn to spawn a child. A confined child spends tens of milliseconds of kernel time
/// entering its Landlock domain before it execs (every rule is copied into its new domain);
/// hundreds of them at once take every core from the agent's own threads, and a ping then
/// waits seconds. So at most one spawn per core but one is under way (one on a single core);
/// the others wait their turn, which costs them nothing overall (the cores were the limit) and
/// keeps a core for the agent's own threads (`bench-latency`: ping p99 under 256 concurrent
/// execs 4.9 s without turns, 75 ms with two per core, 0.2-42 ms with one per core, 0.26-18 ms
/// with one per core but one; BENCHMARKS.md).
pub(crate) async fn spawn_turn() -> SemaphorePermit<'static> {
    static TURNS: OnceLock<Semaphore> = OnceLock::new();
    let turns = TURNS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Semaphore::new(cores.saturating_sub(1).max(1))
    });
    turns.acquire().await.expect("the spawn semaphore is never closed")
}

/// Spawns `cmd` (a command of the [`Launcher`]) and returns the child and its process group.
/// Forking a confined child can take tens of milliseconds (Landlock copies every rule into the
/// child's new domain), so it happens on the blocking pool, not an async worker, in its
/// [`spawn_turn`].
pub(crate) async fn spawn(
    mut cmd: tokio::process::Command,
    program: &OsStr,
    cwd: &Path,
) -> OpResult<(Child, Pid)> {
    let turn = spawn_turn().await;
    let spawned = tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the spawn task failed: {e}"))));
    drop(turn);
    let child = spawned.map_err(|e| spawn_error(&e, program, cwd))?;
    // Invariant: `id()` is None only after the child was reaped, and nothing has waited yet.
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| OpError::os("spawned child has no pid"))?;
    tracing::debug!(pid, program = %Path::new(program).display(), "exec spawned");
    Ok((child, Pid::from_raw(pid)))
}

/// Program and arguments: argv direct, or the joined command run by the user's shell.
pub(crate) fn argv(launcher: &Launcher, req: &pb::ExecRequest) -> OpResult<(OsString, Vec<OsString>)> {
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
        _ if err.raw_os_error() == Some(crate::process::CWD_GONE) => {
            return OpError::not_found("working directory", cwd);
        }
        io::ErrorKind::NotFound if !cwd.is_dir() => return OpError::not_found("working directory", cwd),
        // The child found itself outside the root after its chdir (`Launcher::confine_cwd_to`):
        // the cwd was swapped for a link out since the path layer checked it.
        _ if err.raw_os_error() == Some(libc::EXDEV) => {
            return OpError::consent_required(cwd)
                .with("reason", "the working directory led outside the root when the command entered it");
        }
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
pub(crate) fn feed_stdin(stdin: Option<ChildStdin>, data: Bytes) -> Option<JoinHandle<()>> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
