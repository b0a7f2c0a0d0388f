//! One live terminal and the task that supervises it. The supervisor forwards viewer input and
//! resizes to the PTY, watches for the end (process exit, pty_close, fence, shutdown, idle),
//! then kills what is left, records the exit code for pty_close, tells the pump how the channel
//! ends, and drops the terminal from the table.
//!
//! Idle means unwatched and untouched (`PROTOCOL.md` §5): the clock runs only while the channel
//! has no viewer, and restarts on every pty_write, viewer input or resize, and when the last
//! viewer leaves. A `tail -f` somebody watches is not idle; a shell everybody forgot is.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use portable_pty::MasterPty;
use tether_proto::pb;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::terminal::resize;
use super::{FencedBy, Table};
use crate::error::{OpError, OpResult};
use crate::fence::Fence;
use crate::process::kill_group;
use crate::sandbox::CommandLimits;
use crate::stream::pump::Inbound;

/// After the process exits, how long its last output may take to come out of the PTY.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// How long an ended terminal still answers pty_close with its exit code.
const LINGER: Duration = Duration::from_secs(60);
/// Between SIGHUP and SIGKILL when a terminal is closed.
const HANGUP_GRACE: Duration = Duration::from_secs(1);

/// A live terminal as the ops see it.
pub struct Session {
    pub id: String,
    /// The fence scope of the pty_open that started it: only requests of that scope reach it.
    pub fence_scope: String,
    pub scope_id: String,
    channel: pb::StreamChannel,
    master: Mutex<Option<Box<dyn MasterPty + Send>>>,
    /// To the writer thread, which holds a descriptor of the PTY master until this is dropped:
    /// taken at the end, so an ended terminal lingering for pty_close holds neither.
    input: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// Cancelled by pty_close (or a failed open).
    close: CancellationToken,
    /// The fence token of the open that started it: cancelled by an epoch advance (or shutdown).
    fenced: CancellationToken,
    /// How the relay took the channel: `None` while pty_open still waits for it.
    accepted: watch::Sender<Option<OpResult<()>>>,
    /// The end: `None` while running, then the exit code (-1 when killed).
    exit: watch::Sender<Option<i32>>,
    /// Since when the idle clock runs: the last input or resize, or the last viewer leaving.
    idle_since: Mutex<Instant>,
}

/// What the supervisor owns.
pub struct Supervision {
    pub child: Child,
    pub pgid: Pid,
    pub drained: oneshot::Receiver<()>,
    pub end: oneshot::Sender<pb::StreamClose>,
    pub inbound: mpsc::Receiver<Inbound>,
    /// The channel's viewer count, from the pump.
    pub viewers: watch::Receiver<u32>,
    pub fence: Arc<Fence>,
    pub fenced: FencedBy,
    pub idle_timeout: Duration,
    pub table: Arc<Mutex<Table>>,
    /// The terminal's cgroup and rlimits; settled when it ends.
    pub limits: CommandLimits,
}

impl Session {
    pub fn new(
        id: String,
        (fence_scope, scope_id): (String, String),
        channel: pb::StreamChannel,
        master: Box<dyn MasterPty + Send>,
        input: mpsc::Sender<Bytes>,
        fenced: CancellationToken,
    ) -> Self {
        Session {
            id,
            fence_scope,
            scope_id,
            channel,
            master: Mutex::new(Some(master)),
            input: Mutex::new(Some(input)),
            close: CancellationToken::new(),
            fenced,
            accepted: watch::Sender::new(None),
            exit: watch::Sender::new(None),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// The pty_open reply for this terminal.
    pub fn opened(&self) -> pb::PtyOpenResponse {
        pb::PtyOpenResponse { pty_id: self.id.clone(), channel: Some(self.channel.clone()) }
    }

    /// True once the terminal is on its way out (a reopen of its scope starts a new one). A
    /// fenced terminal is: its supervisor may still be hanging it up, but its channel is
    /// about to close FENCED, so it must never be handed out again.
    pub fn is_ending(&self) -> bool {
        self.close.is_cancelled() || self.fenced.is_cancelled() || self.exit.borrow().is_some()
    }

    /// Records how the relay took the channel; reopens of the scope wait for it.
    pub fn set_accepted(&self, outcome: OpResult<()>) {
        self.accepted.send_replace(Some(outcome));
    }

    /// Waits, at most `within`, until the relay holds the channel (pty_open returns only then).
    pub async fn wait_accepted(&self, within: Duration) -> OpResult<()> {
        let mut rx = self.accepted.subscribe();
        match tokio::time::timeout(within, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Ok(())),
            // The sender lives in `self`: it cannot be gone while we wait.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(not_accepted(format!(
                "the relay did not accept the terminal's channel within {within:?}"
            ))),
        }
    }

    pub fn request_close(&self) {
        self.close.cancel();
    }

    /// Types `data` into the terminal.
    pub async fn type_in(&self, data: Bytes) -> OpResult<()> {
        self.touch();
        if self.exit.borrow().is_some() {
            return Err(self.gone());
        }
        if data.is_empty() {
            return Ok(());
        }
        let input = self.input.lock().unwrap_or_else(PoisonError::into_inner).clone();
        input.ok_or_else(|| self.gone())?.send(data).await.map_err(|_| self.gone())
    }

    pub fn resize(&self, cols: u16, rows: u16) -> OpResult<()> {
        self.touch();
        let master = self.master.lock().unwrap_or_else(PoisonError::into_inner);
        let master = master.as_ref().ok_or_else(|| self.gone())?;
        resize(master.as_ref(), cols, rows).map_err(|e| OpError::os(format!("resizing the terminal: {e}")))
    }

    /// Waits for the end and returns the exit code (-1 if killed).
    pub async fn exit_code(&self) -> i32 {
        let mut rx = self.exit.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(-1),
            Err(_) => -1,
        }
    }

    fn gone(&self) -> OpError {
        OpError::new(pb::ErrorCode::NotFound, format!("terminal {} has ended", self.id))
            .with("pty_id", &self.id)
    }

    /// Restarts the idle clock.
    fn touch(&self) {
        *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner) + idle_timeout
    }

    /// Runs the terminal to its end; see the module doc.
    pub async fn supervise(self: Arc<Self>, mut s: Supervision) {
        let ended = tokio::select! {
            status = s.child.wait() => {
                let _ = tokio::time::timeout(DRAIN_WAIT, &mut s.drained).await;
                let code = status.ok().and_then(|st| st.code()).unwrap_or(-1);
                Ended { reason: pb::StreamCloseReason::ProcessExit, message: format!("the process exited with code {code}"), code: Some(code) }
            }
            () = self.close.cancelled() => Ended::killed(pb::StreamCloseReason::Normal, "closed by pty_close"),
            () = s.fenced.cancel.cancelled() => {
                if s.fence.is_stale(&s.fenced.scope, s.fenced.epoch).await {
                    Ended::killed(pb::StreamCloseReason::Fenced, "an epoch advance fenced this terminal")
                } else {
                    Ended::killed(pb::StreamCloseReason::Normal, "the agent is shutting down")
                }
            }
            never = self.forward_input(&mut s.inbound) => match never {},
            () = self.idle(s.idle_timeout, &mut s.viewers) => Ended::killed(pb::StreamCloseReason::Normal, "idle: no viewer and no input for the idle timeout"),
        };
        let code = match ended.code {
            Some(code) => code,
            None => {
                hang_up(&mut s.child, s.pgid).await;
                -1
            }
        };
        // A terminal that was ended takes everything it started along; after its process
        // exited on its own, what it left running on purpose keeps running.
        std::mem::take(&mut s.limits).settle(ended.code.is_none()).await;
        // Ended: an advance of its scope need not wait for the linger below.
        s.fenced.running.take();
        tracing::info!(pty_id = %self.id, code, why = %ended.message, "terminal ended");
        self.exit.send_replace(Some(code));
        let _ = s.end.send(pb::StreamClose {
            channel_id: self.channel.channel_id.clone(),
            reason: ended.reason as i32,
            message: ended.message,
        });
        // Frees the PTY: the reader thread sees EOF once the master is gone too, and the
        // writer thread ends (closing its copy of the master) once its sender is.
        self.master.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.input.lock().unwrap_or_else(PoisonError::into_inner).take();
        // A reopen of the scope starts afresh at once; pty_close may still ask for the code.
        s.table.lock().unwrap_or_else(PoisonError::into_inner).release_scope(&self);
        tokio::time::sleep(LINGER).await;
        s.table.lock().unwrap_or_else(PoisonError::into_inner).remove(&self);
    }

    /// Viewer input to the PTY, in arrival order, for as long as the terminal lives.
    async fn forward_input(&self, inbound: &mut mpsc::Receiver<Inbound>) -> Infallible {
        while let Some(msg) = inbound.recv().await {
            match msg {
                Inbound::Data(data) => {
                    if self.type_in(data).await.is_err() {
                        break;
                    }
                }
                Inbound::Resize { cols, rows } => {
                    if let Err(e) = self.resize(cols, rows) {
                        tracing::debug!(error = %e.message, "viewer resize failed");
                    }
                }
                Inbound::Desktop(_) => tracing::debug!("ignoring desktop input on a terminal"),
            }
        }
        // The pump drops its sender only once the channel is over; the end comes from elsewhere.
        std::future::pending().await
    }

    /// Resolves once the terminal has had no viewer, input or resize for `idle_timeout`.
    async fn idle(&self, idle_timeout: Duration, viewers: &mut watch::Receiver<u32>) {
        // False once the pump is gone: nobody can watch any more.
        let mut reported = true;
        loop {
            let watched = reported && *viewers.borrow_and_update() > 0;
            let deadline = self.idle_deadline(idle_timeout);
            if !watched && deadline <= Instant::now() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline), if !watched => {}
                changed = viewers.changed(), if reported => match changed {
                    // The pump reports real changes only: landing on zero means somebody was
                    // watching since the last look and has left (or the relay link dropped).
                    Ok(()) => {
                        if *viewers.borrow() == 0 {
                            self.touch();
                        }
                    }
                    Err(_) => reported = false,
                },
            }
        }
    }
}

/// How a terminal ended.
struct Ended {
    reason: pb::StreamCloseReason,
    message: String,
    /// The exit code if the process exited on its own; `None` if it must be killed.
    code: Option<i32>,
}

impl Ended {
    fn killed(reason: pb::StreamCloseReason, message: &str) -> Self {
        Ended { reason, message: message.to_owned(), code: None }
    }
}

/// SIGHUP to the terminal's process group (what closing a terminal means), SIGKILL if it is
/// still there after a grace, then reap the leader.
async fn hang_up(child: &mut Child, pgid: Pid) {
    let _ = kill_group(pgid, Signal::SIGHUP);
    if tokio::time::timeout(HANGUP_GRACE, child.wait()).await.is_err() {
        let _ = kill_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

/// pty_open's answer when the relay did not take the channel (retryable: the relay may be back).
pub fn not_accepted(message: String) -> OpError {
    OpError::new(pb::ErrorCode::Stream, message).retryable()
}
