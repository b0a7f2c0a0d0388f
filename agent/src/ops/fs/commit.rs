//! File mutations under a deadline (README "Security model"; `PROTOCOL.md` §3).
//!
//! A mutation holds its fence scope (shared) until it has committed, so that an epoch advance
//! waits for it. One that blocks for ever (a hung or frozen filesystem) would then keep its
//! scope from ever advancing. So every mutation runs on the blocking pool under a deadline, and
//! every step that makes its effect visible (the rename, the write into a file, the mkdir, the
//! unlink) goes through its [`Gate`]. At the deadline the gate is shut, the op answers TIMEOUT
//! and the fence is released at once, whatever the thread is doing. The thread may stay
//! blocked, but it can never start a commit step afterwards: at the gate it gives up (and
//! removes its temporary files), so nothing of an op admitted under an old epoch appears after
//! an advance.
//!
//! The limit: a commit step already in the kernel cannot be taken back. Filesystems block
//! their writers at the entry of a syscall (a frozen one in `sb_start_write`), so a commit step
//! could sit there and complete after the advance. To keep that window to a race, the gate
//! first probes the directory the step will change with an `O_TMPFILE` open, which needs the
//! same write access but creates nothing visible: on a frozen or hung filesystem the probe is
//! what blocks, before the gate, and the step never starts. Where `O_TMPFILE` is not supported
//! the probe is skipped. A TIMEOUT says in its detail (`in_flight`) whether a step was in the
//! kernel at the deadline.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use tether_proto::pb::ErrorCode;

use crate::error::{OpError, OpResult};

/// How long a file mutation may take before it answers TIMEOUT (`--fs-mutation-deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Where a mutation stands, for the one deciding at its deadline.
#[derive(Default)]
struct State {
    /// A commit step is in the kernel.
    committing: bool,
    /// Commit steps that succeeded so far.
    committed: u32,
    /// The deadline passed: no commit step may start.
    shut: bool,
}

/// What lets one mutation's commit steps through until its deadline.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
}

impl Gate {
    /// Runs `step`, a commit of a side effect in `dir` (a descriptor, O_PATH will do), unless
    /// the deadline has passed; the directory is probed first (see the module doc).
    pub fn commit_in<T, E>(
        &self,
        dir: BorrowedFd<'_>,
        step: impl FnOnce() -> Result<T, E>,
    ) -> OpResult<Result<T, E>> {
        probe(dir);
        self.commit(step)
    }

    /// Runs `step` (one commit of a side effect) unless the deadline has passed; it counts as
    /// committed when it succeeds.
    fn commit<T, E>(&self, step: impl FnOnce() -> Result<T, E>) -> OpResult<Result<T, E>> {
        {
            let mut state = self.lock();
            if state.shut {
                return Err(abandoned());
            }
            state.committing = true;
        }
        let done = step();
        let mut state = self.lock();
        state.committing = false;
        state.committed += u32::from(done.is_ok());
        Ok(done)
    }

    /// True once the deadline has passed: long preparation (a copy) may stop early.
    pub fn is_shut(&self) -> bool {
        self.lock().shut
    }

    /// Shuts the gate; the commit steps done by then, and whether one is in the kernel.
    fn shut(&self) -> (u32, bool) {
        let mut state = self.lock();
        state.shut = true;
        (state.committed, state.committing)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits until the filesystem of `dir` lets a writer in, creating nothing visible (an unnamed
/// O_TMPFILE inode, freed at once). Whatever it says (unsupported, not permitted), it has
/// waited for the filesystem.
pub fn probe(dir: BorrowedFd<'_>) {
    let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    drop(nix::fcntl::openat(dir, ".", flags, Mode::from_bits_truncate(0o600)));
}

/// What the mutation's own thread meets at a shut gate; nobody waits for it any more.
fn abandoned() -> OpError {
    OpError::new(ErrorCode::Timeout, "the operation's deadline passed before it could commit")
}

/// Runs `op` on the blocking pool; past `deadline` it answers TIMEOUT (see the module doc).
pub async fn under_deadline<T: Send + 'static>(
    deadline: Duration,
    op: impl FnOnce(&Gate) -> OpResult<T> + Send + 'static,
) -> OpResult<T> {
    let gate = Arc::new(Gate::default());
    let mut task = tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || op(&gate)
    });
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(joined) => joined.map_err(|e| OpError::os(format!("filesystem task failed: {e}")))?,
        Err(_) => {
            let (committed, in_flight) = gate.shut();
            tokio::spawn(async move {
                let _ = task.await;
                if in_flight {
                    tracing::warn!(
                        "a file operation that missed its deadline has ended; a change it had in the kernel may have completed"
                    );
                } else {
                    tracing::info!(
                        "a file operation that missed its deadline has ended; it committed nothing after it"
                    );
                }
            });
            Err(timed_out(deadline, committed, in_flight))
        }
    }
}

fn timed_out(deadline: Duration, committed: u32, in_flight: bool) -> OpError {
    let what = match (committed, in_flight) {
        (_, true) => "a change it had started in the kernel may still complete; nothing else of it will",
        (0, false) => "nothing of it took effect",
        (_, false) => "part of it took effect before; nothing more will",
    };
    OpError::new(ErrorCode::Timeout, format!("the file operation did not finish within {deadline:?}: {what}"))
        .retryable()
        .with("deadline_ms", deadline.as_millis())
        .with("committed_steps", committed)
        .with("in_flight", in_flight)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_mutation_blocked_past_its_deadline_times_out_and_can_never_commit() {
        let (unblock, blocked) = mpsc::channel::<()>();
        let (report, outcome) = mpsc::channel();
        let result = under_deadline(Duration::from_millis(50), move |gate| {
            let _ = blocked.recv();
            let _ = report.send(gate.commit(|| Ok::<_, ()>("committed")));
            Ok(())
        })
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout, "{err:?}");
        assert_eq!(err.detail["committed_steps"], "0");
        unblock.send(()).unwrap();
        let late = tokio::task::spawn_blocking(move || outcome.recv().unwrap()).await.unwrap();
        assert_eq!(late.unwrap_err().code, ErrorCode::Timeout, "the gate must stay shut");
    }

    #[tokio::test]
    async fn a_commit_under_way_at_the_deadline_is_reported_in_flight_and_the_gate_stays_shut() {
        let (unblock, blocked) = mpsc::channel::<()>();
        let (started, starting) = tokio::sync::oneshot::channel();
        let (report, outcome) = mpsc::channel();
        let running = tokio::spawn(under_deadline(Duration::from_millis(20), move |gate| {
            let _ = gate.commit(|| {
                let _ = started.send(());
                blocked.recv()
            })?;
            let _ = report.send(gate.commit(|| Ok::<_, ()>(())));
            Ok(())
        }));
        starting.await.unwrap();
        let err = running.await.unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert_eq!(err.detail["in_flight"], "true");
        unblock.send(()).unwrap();
        let late = tokio::task::spawn_blocking(move || outcome.recv().unwrap()).await.unwrap();
        assert_eq!(late.unwrap_err().code, ErrorCode::Timeout, "no further step after the deadline");
    }

    #[test]
    fn the_probe_creates_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let fd = nix::fcntl::open(dir.path(), OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let made = Gate::default().commit_in(std::os::fd::AsFd::as_fd(&fd), || Ok::<_, ()>(5)).unwrap();
        assert_eq!(made, Ok(5));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_quick_mutation_answers_normally() {
        let done = under_deadline(DEFAULT_DEADLINE, |gate| gate.commit(|| Ok::<_, ()>(1))).await;
        assert_eq!(done.unwrap(), Ok(1));
    }
}
