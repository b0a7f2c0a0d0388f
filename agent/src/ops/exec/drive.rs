//! The lifecycle of one running command, shared by the one-shot exec and streamed executions:
//! read both pipes into an [`Output`], wait for the leader, fire the timeout's SIGTERM then
//! SIGKILL, kill the group on cancel, and give the pipes a short grace after the leader exits
//! (a background process may hold them). Where the bytes go is the [`Output`]'s business: exec
//! captures a head and a tail for its reply; a streamed execution journals every byte and may
//! ask the pipes to pause (flow control), which the drain grace then waits for.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tether_proto::pb::ExecStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{Capture, DRAIN_GRACE, TERM_GRACE};
use crate::error::{OpError, OpResult};
use crate::process::kill_group;

/// Size of one read from a pipe.
const READ_CHUNK: usize = 64 * 1024;
/// Reads land one after another in buffers of this many bytes (at least the read size), and
/// each read's bytes are handed over as a slice of it: kept output is never copied again.
const READ_BUFFER: usize = 1 << 20;

/// Where a command's output goes while it runs.
pub trait Output: Send {
    /// Takes bytes the command wrote on `stream` (a slice of the read buffer, kept as is by an
    /// output that stores it).
    fn push(&mut self, stream: ExecStream, data: Bytes);

    /// `None` while more output can be taken; otherwise a future that resolves when there may
    /// be room again. Meanwhile the pipes are not read, so the command blocks writing.
    fn wait_for_room(&mut self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// Bytes asked of a pipe per read.
    fn read_size(&self) -> usize {
        READ_CHUNK
    }
}

/// The one-shot exec's output: a bounded head and tail of each stream.
pub struct Captures {
    pub out: Capture,
    pub err: Capture,
}

impl Output for Captures {
    fn push(&mut self, stream: ExecStream, data: Bytes) {
        match stream {
            ExecStream::Stdout => self.out.push(&data),
            ExecStream::Stderr => self.err.push(&data),
        }
    }
}

/// Kills the group if the exec future is dropped (or fails) while the leader is unreaped; an
/// unreaped leader keeps its pid, so the group id cannot have been reused.
pub struct GroupGuard {
    pub pgid: Pid,
    pub armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// How [`Run::drive`] ended.
pub enum Ended {
    /// The command is settled and drained.
    Exited(ExitStatus),
    /// `cancel` fired; the group was killed unless the leader had already exited normally.
    Cancelled,
}

/// The state of one running command: where its output goes and where its lifecycle stands.
pub struct Run<O> {
    pgid: Pid,
    pub output: O,
    deadline: Option<Instant>,
    pub timed_out: bool,
    /// When SIGKILL follows the SIGTERM of a timeout.
    kill_at: Option<Instant>,
    killed: bool,
    pub status: Option<ExitStatus>,
    /// When the leader exited (or, later, the output last paused); the pipes get
    /// `DRAIN_GRACE` from here.
    settled_at: Option<Instant>,
}

impl<O: Output> Run<O> {
    pub fn new(pgid: Pid, deadline: Option<Instant>, output: O) -> Self {
        Self {
            pgid,
            output,
            deadline,
            timed_out: false,
            kill_at: None,
            killed: false,
            status: None,
            settled_at: None,
        }
    }

    /// Reads both pipes and waits for the leader until the command is settled and drained.
    pub async fn drive<R1, R2>(
        &mut self,
        child: &mut Child,
        guard: &mut GroupGuard,
        cancel: &CancellationToken,
        (mut stdout, mut stderr): (Option<R1>, Option<R2>),
    ) -> OpResult<Ended>
    where
        R1: AsyncRead + Unpin,
        R2: AsyncRead + Unpin,
    {
        let size = self.output.read_size().max(1);
        let mut out_buf = ReadBuffer::new(size);
        let mut err_buf = ReadBuffer::new(size);
        loop {
            // Time-driven steps run here, not only in the sleep branch, so a child that floods
            // its pipes (always-ready reads) cannot starve them.
            let now = Instant::now();
            self.advance(now);
            let pipes_open = stdout.is_some() || stderr.is_some();
            let room = self.output.wait_for_room();
            if room.is_some()
                && let Some(settled) = self.settled_at.as_mut()
            {
                // Output held back by flow control is not drained away: the grace restarts.
                *settled = now;
            }
            if let Some(settled) = self.settled_at
                && (!pipes_open || now >= settled + DRAIN_GRACE)
            {
                // Invariant: `settled_at` is set only once `status` is.
                return self
                    .status
                    .map(Ended::Exited)
                    .ok_or_else(|| OpError::os("exec ended without an exit status"));
            }
            let reading = room.is_none();
            let room = async move {
                match room {
                    Some(room) => room.await,
                    None => std::future::pending().await,
                }
            };
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
                r = read_from(&mut stdout, &mut out_buf), if reading => {
                    on_read(&mut stdout, &mut self.output, ExecStream::Stdout, r, &mut out_buf)
                }
                r = read_from(&mut stderr, &mut err_buf), if reading => {
                    on_read(&mut stderr, &mut self.output, ExecStream::Stderr, r, &mut err_buf)
                }
                r = child.wait(), if self.status.is_none() => {
                    let status = r.map_err(|e| OpError::os(format!("waiting for the command: {e}")))?;
                    guard.armed = false;
                    self.on_leader_exit(status, Instant::now());
                }
                () = room => {}
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

/// Where one pipe's reads land: consecutive reads fill one big buffer, each read's bytes split
/// off as their own `Bytes` (sharing it), and a fresh buffer is taken when one is full.
struct ReadBuffer {
    buf: BytesMut,
    size: usize,
}

impl ReadBuffer {
    fn new(size: usize) -> Self {
        ReadBuffer { buf: BytesMut::new(), size }
    }

    /// Room for one read of `size` bytes.
    fn room(&mut self) -> &mut BytesMut {
        if self.buf.capacity() < self.size {
            self.buf = BytesMut::with_capacity(READ_BUFFER.max(self.size));
        }
        &mut self.buf
    }

    /// The bytes of the last read.
    fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// One read from `pipe`, or never if it is already closed.
async fn read_from<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut ReadBuffer) -> io::Result<usize> {
    let size = buf.size;
    match pipe {
        Some(p) => p.read_buf(&mut buf.room().limit(size)).await,
        None => std::future::pending().await,
    }
}

fn on_read<R, O: Output>(
    pipe: &mut Option<R>,
    output: &mut O,
    stream: ExecStream,
    result: io::Result<usize>,
    buf: &mut ReadBuffer,
) {
    match result {
        Ok(0) => *pipe = None,
        Ok(_) => output.push(stream, buf.take()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            tracing::debug!(error = %e, "reading exec output");
            *pipe = None;
        }
    }
}
