//! File mutations under a deadline (README "Security model"; `PROTOCOL.md` §3).
//!
//! A mutation holds its fence scope (shared) until it has committed, so that an epoch advance
//! waits for it. One that blocks for ever (a hung or frozen filesystem) would then keep its
//! scope from ever advancing. So every mutation runs on the blocking pool under a deadline, and
//! every step that makes its effect visible (the rename, the write into a file, the mkdir, the
//! unlink) goes through its [`Gate`]:
//!
//! - deadline passed before a commit step started: the gate is shut, the op answers TIMEOUT
//!   and the fence is released at once. The thread may stay blocked, but it can never commit
//!   afterwards: at the gate it gives up (and removes its temporary files), so nothing of an op
//!   admitted under an old epoch appears after an advance;
//! - deadline passed while a commit step is in the kernel: that cannot be taken back, so the
//!   reply (and the fence) waits for the step, then the gate is shut as above. The deadline
//!   bounds the wait for a commit to start, not a commit itself.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether_proto::pb::ErrorCode;

use crate::error::{OpError, OpResult};

/// How long a file mutation may take before it answers TIMEOUT (`--fs-mutation-deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Where a mutation stands, for the one deciding at its deadline.
#[derive(Default)]
struct State {
    /// A commit step is in the kernel.
    committing: bool,
    /// Commit steps done so far.
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
    /// Runs `step` (one commit of a side effect) unless the deadline has passed.
    pub fn commit<T>(&self, step: impl FnOnce() -> T) -> OpResult<T> {
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
        state.committed += 1;
        Ok(done)
    }

    /// True once the deadline has passed: long preparation (a copy) may stop early.
    pub fn is_shut(&self) -> bool {
        self.lock().shut
    }

    /// Shuts the gate unless a commit step is under way; the commit steps done by then.
    fn shut(&self) -> Option<u32> {
        let mut state = self.lock();
        if state.committing {
            return None;
        }
        state.shut = true;
        Some(state.committed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
    loop {
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(joined) => {
                return joined.map_err(|e| OpError::os(format!("filesystem task failed: {e}")))?;
            }
            Err(_) => {
                // A commit step still in the kernel is waited for, one deadline at a time.
                if let Some(committed) = gate.shut() {
                    tokio::spawn(async move {
                        let _ = task.await;
                        tracing::info!(
                            "a file operation that missed its deadline has ended; it committed nothing after it"
                        );
                    });
                    return Err(timed_out(deadline, committed));
                }
            }
        }
    }
}

fn timed_out(deadline: Duration, committed: u32) -> OpError {
    let what = if committed == 0 {
        "nothing of it took effect"
    } else {
        "part of it took effect before; nothing more will"
    };
    OpError::new(ErrorCode::Timeout, format!("the file operation did not finish within {deadline:?}: {what}"))
        .retryable()
        .with("deadline_ms", deadline.as_millis())
        .with("committed_steps", committed)
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
            let _ = report.send(gate.commit(|| "committed"));
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
    async fn a_commit_under_way_at_the_deadline_is_waited_for() {
        let (unblock, blocked) = mpsc::channel::<()>();
        let (started, starting) = tokio::sync::oneshot::channel();
        let running = tokio::spawn(under_deadline(Duration::from_millis(20), move |gate| {
            gate.commit(|| {
                let _ = started.send(());
                let _ = blocked.recv();
                7
            })
        }));
        starting.await.unwrap();
        // Several deadlines pass while the step is in the kernel; nobody answers TIMEOUT.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!running.is_finished());
        unblock.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn a_quick_mutation_answers_normally() {
        let done = under_deadline(DEFAULT_DEADLINE, |gate| gate.commit(|| 1)).await;
        assert_eq!(done.unwrap(), 1);
    }
}
