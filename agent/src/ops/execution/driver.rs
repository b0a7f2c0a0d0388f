//! The task that runs one execution to its end: the shared [`Run`] loop over its pipes into
//! its journal, then the end (exit, timeout, or killed by the fence or the shutdown) recorded
//! in memory, for waiters, and in the state directory.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto::pb;
use tokio::time::Instant;

use super::Pipe;
use super::record::{EndRecord, Record, Records};
use super::run::{End, Execution, JournalOutput, duration_ms, unix_ms};
use crate::fence::Fence;
use crate::ops::exec;
use crate::ops::exec::drive::{Ended, GroupGuard, Run};
use crate::ops::pty::FencedBy;
use crate::sandbox::CommandLimits;

/// How long a killed leader gets to be reaped.
const REAP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest an end waits for the spiller to catch up (a slow disk).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one execution to its end and records it.
pub struct Driver {
    pub exec: Arc<Execution>,
    pub limits: CommandLimits,
    pub fenced: FencedBy,
    pub fence: Arc<Fence>,
    pub records: Records,
}

impl Driver {
    pub async fn run(
        self,
        mut child: tokio::process::Child,
        deadline: Option<Instant>,
        pipes: (Option<Pipe>, Option<Pipe>),
    ) {
        let Driver { exec, limits, fenced, fence, records } = self;
        let pgid = exec.pgid;
        let mut guard = GroupGuard { pgid, armed: true };
        let mut run = Run::new(pgid, deadline, JournalOutput(exec.clone()));
        let ended = run.drive(&mut child, &mut guard, &fenced.cancel, pipes).await;
        let (status, reason, exit_code, signal) = match ended {
            Ok(Ended::Exited(status)) => {
                limits.settle(run.timed_out).await;
                let (code, signal) = exec::exit_of(status, run.timed_out);
                let reason = match (run.timed_out, signal) {
                    (true, _) => "timed out".to_owned(),
                    (false, 0) => format!("exited with code {code}"),
                    (false, s) => format!("killed by signal {s}"),
                };
                (pb::ExecStatus::Exited, reason, code, signal)
            }
            Ok(Ended::Cancelled) | Err(_) => {
                if let Ok(Ok(_)) = tokio::time::timeout(REAP_WAIT, child.wait()).await {
                    guard.armed = false;
                }
                limits.settle(run.status.is_none() || run.timed_out).await;
                let reason = if fence.is_stale(&fenced.scope, fenced.epoch).await {
                    "killed: its fence scope advanced to a newer epoch"
                } else {
                    "killed: the agent is shutting down"
                };
                (pb::ExecStatus::Killed, reason.to_owned(), -1, libc::SIGKILL)
            }
        };
        let duration = exec.started.elapsed();
        tracing::info!(exec_id = %exec.id, %reason, "execution ended");
        let (stdout_bytes, stderr_bytes) = exec.lock().journal.totals();
        let record = Record {
            scope: exec.scope.clone(),
            exec_id: exec.id.clone(),
            command: exec.command.clone(),
            started_at_ms: exec.started_at_ms,
            pid: pgid.as_raw(),
            proc_start: None,
            end: Some(EndRecord {
                status: status as i32,
                reason: reason.clone(),
                exit_code,
                signal,
                timed_out: run.timed_out,
                duration_ms: duration_ms(duration),
                stdout_bytes,
                stderr_bytes,
                ended_at_ms: unix_ms(SystemTime::now()),
            }),
        };
        // Recorded before anyone is told: a wait answered, then a crash, must still find the
        // end on disk (else the next agent would call it lost).
        let _ = tokio::task::spawn_blocking(move || records.write(&record)).await;
        spill_settled(&exec).await;
        exec.finish(End {
            status,
            reason,
            exit_code,
            signal,
            timed_out: run.timed_out,
            duration,
            at: Instant::now(),
        });
        if let Ok(mut stdin) = exec.stdin.try_lock() {
            stdin.pipe = None;
        }
    }
}

/// Waits (bounded) until the spiller has moved to disk what memory holds over its share. The
/// spiller works in batches behind the output, so at the command's exit it may still owe one;
/// a reader told of the end before it is paid would see output it is reading dropped under it
/// (a second gap), where one that comes after sees a journal that no longer changes.
async fn spill_settled(exec: &Execution) {
    let mut changed = exec.watch();
    let deadline = Instant::now() + SETTLE_WAIT;
    while exec.lock().journal.spill_pending() {
        if !matches!(tokio::time::timeout_at(deadline, changed.changed()).await, Ok(Ok(()))) {
            break;
        }
    }
}
