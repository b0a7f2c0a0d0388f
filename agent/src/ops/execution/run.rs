//! One execution while and after it runs: its journal, its attachments (who reads its output
//! from where, and how far they have acknowledged), its stdin and its end. The pipes are read
//! by the same [`Run`] the one-shot exec uses, into a [`JournalOutput`] that refuses more output
//! (so the command blocks on its pipe) while memory is over its cap and the spiller has not
//! caught up, or while a live attachment is a whole window behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use nix::unistd::Pid;
use tether_proto::pb;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::watch;
use tokio::time::Instant;

use super::journal::Journal;
use super::spill::SpillFile;
use crate::error::{OpError, OpResult};
use crate::ops::exec::drive::Output;

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct End {
    pub status: pb::ExecStatus,
    pub reason: String,
    pub exit_code: i32,
    pub signal: i32,
    pub timed_out: bool,
    pub duration: Duration,
    pub at: Instant,
}

/// One reader of the output: where it gets chunks and how far it has acknowledged.
#[derive(Debug)]
pub struct Attachment {
    /// Next chunk to publish: (seq, offset).
    pub cursor: (u64, u64),
    /// Bumped by a re-attach, so a publish of the old cursor does not move the new one.
    pub generation: u64,
    pub acked: u64,
    pub window: u64,
    pub lease: Instant,
    /// Bytes dropped before the cursor, to announce on the next chunk.
    pub gap: u64,
}

/// What the lock guards.
pub struct Inner {
    pub journal: Journal,
    pub end: Option<End>,
    pub attachments: HashMap<String, Attachment>,
}

/// The stdin side: bytes taken so far, so a retried write is applied once.
pub struct Stdin {
    pub pipe: Option<ChildStdin>,
    pub written: u64,
    pub closed: bool,
}

/// One execution; see the module doc.
pub struct Execution {
    pub id: String,
    pub scope: String,
    pub command: Vec<String>,
    pub started_at_ms: u64,
    pub started: Instant,
    pub pgid: Pid,
    pub spill: Option<SpillFile>,
    inner: Mutex<Inner>,
    /// Bumped on every change a waiter may care about (output, acks, attachments, the end).
    changed: watch::Sender<u64>,
    pub stdin: tokio::sync::Mutex<Stdin>,
}

impl Execution {
    pub fn new(
        (scope, id): (String, String),
        command: Vec<String>,
        pgid: Pid,
        journal: Journal,
        spill: Option<SpillFile>,
        stdin: Option<ChildStdin>,
    ) -> Self {
        Execution {
            id,
            scope,
            command,
            started_at_ms: unix_ms(SystemTime::now()),
            started: Instant::now(),
            pgid,
            spill,
            inner: Mutex::new(Inner { journal, end: None, attachments: HashMap::new() }),
            changed: watch::channel(0).0,
            stdin: tokio::sync::Mutex::new(Stdin { pipe: stdin, written: 0, closed: false }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every waiter.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every change from now on.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn is_ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Records the end: the open tail becomes a chunk and every waiter learns of it.
    pub fn finish(&self, end: End) {
        {
            let mut inner = self.lock();
            inner.journal.seal();
            inner.end = Some(end);
        }
        self.bump();
    }

    /// The state as the protocol reports it.
    pub fn state(&self) -> pb::ExecState {
        let inner = self.lock();
        self.state_of(&inner)
    }

    pub fn state_of(&self, inner: &Inner) -> pb::ExecState {
        let (stdout_bytes, stderr_bytes) = inner.journal.totals();
        let mut state = pb::ExecState {
            exec_id: self.id.clone(),
            command: self.command.clone(),
            status: pb::ExecStatus::Running as i32,
            exit_code: -1,
            started_at_ms: self.started_at_ms,
            duration_ms: duration_ms(self.started.elapsed()),
            stdout_bytes,
            stderr_bytes,
            next_seq: inner.journal.next_seq(),
            dropped_bytes: inner.journal.dropped(),
            pid: u32::try_from(self.pgid.as_raw()).unwrap_or(0),
            ..Default::default()
        };
        if let Some(end) = &inner.end {
            state.status = end.status as i32;
            state.end_reason = end.reason.clone();
            state.exit_code = end.exit_code;
            state.signal = end.signal;
            state.timed_out = end.timed_out;
            state.duration_ms = duration_ms(end.duration);
            state.pid = 0;
        }
        state
    }

    /// Whether the pipes may be read now: memory is under its cap (or the journal drops) and
    /// no live attachment is a window behind. Otherwise the earliest lease expiry, which
    /// frees the pipes as well.
    fn room(&self, inner: &Inner, now: Instant) -> Result<(), Option<Instant>> {
        if inner.journal.over_memory() {
            return Err(None);
        }
        let end = inner.journal.end_pos();
        let mut blocked = false;
        let mut next_expiry: Option<Instant> = None;
        for a in inner.attachments.values().filter(|a| a.lease > now) {
            next_expiry = Some(next_expiry.map_or(a.lease, |e| e.min(a.lease)));
            blocked |= end >= a.acked.saturating_add(a.window);
        }
        if blocked { Err(next_expiry) } else { Ok(()) }
    }

    /// Writes `data` to stdin at `offset` (bytes below what was already taken are skipped),
    /// then closes it if asked. Waits at most `deadline` for the command to take the bytes.
    pub async fn write_stdin(
        &self,
        data: Bytes,
        offset: u64,
        close: bool,
        deadline: Duration,
    ) -> OpResult<pb::ExecStdinResponse> {
        let until = Instant::now() + deadline;
        let mut stdin = tokio::time::timeout_at(until, self.stdin.lock())
            .await
            .map_err(|_| timeout_error(format!("stdin of {:?} is busy with another write", self.id)))?;
        if offset > stdin.written {
            return Err(OpError::protocol(format!(
                "stdin offset {offset} is past the {} bytes written so far",
                stdin.written
            ))
            .with("written", stdin.written));
        }
        let skip = usize::try_from(stdin.written - offset).unwrap_or(usize::MAX).min(data.len());
        let data = data.slice(skip..);
        if !data.is_empty() {
            let Some(pipe) = stdin.pipe.as_mut() else {
                return Err(OpError::os(format!("the stdin of {:?} is closed", self.id))
                    .with("written", stdin.written));
            };
            let mut done = 0;
            while done < data.len() {
                match tokio::time::timeout_at(until, pipe.write(&data[done..])).await {
                    Ok(Ok(n)) => done += n,
                    Ok(Err(e)) => {
                        stdin.written += done as u64;
                        stdin.pipe = None;
                        stdin.closed = true;
                        return Err(OpError::os(format!("writing the stdin of {:?}: {e}", self.id))
                            .with("written", stdin.written));
                    }
                    Err(_) => {
                        stdin.written += done as u64;
                        return Err(timeout_error(format!(
                            "the command took {done} of {} stdin bytes within {deadline:?}",
                            data.len()
                        ))
                        .with("written", stdin.written));
                    }
                }
            }
            stdin.written += done as u64;
        }
        if close && let Some(mut pipe) = stdin.pipe.take() {
            let _ = pipe.shutdown().await;
            stdin.closed = true;
        }
        Ok(pb::ExecStdinResponse { written: stdin.written, closed: stdin.closed || stdin.pipe.is_none() })
    }
}

/// The [`Output`] that journals a streamed execution's pipes.
pub struct JournalOutput(pub Arc<Execution>);

impl Output for JournalOutput {
    fn push(&mut self, stream: pb::ExecStream, data: Bytes) {
        {
            let mut inner = self.0.lock();
            inner.journal.push(stream, data);
            if !inner.journal.spills() {
                // Nothing to spill to: the journal drops the oldest output itself.
                let _ = inner.journal.plan_spill();
            }
        }
        self.0.bump();
    }

    /// One chunk per read: a read that fills a chunk is kept as it is, never copied.
    fn read_size(&self) -> usize {
        self.0.lock().journal.chunk_cap()
    }

    fn wait_for_room(&mut self) -> Option<BoxFuture<'static, ()>> {
        let mut changed = self.0.watch();
        let now = Instant::now();
        let blocked = {
            let inner = self.0.lock();
            self.0.room(&inner, now).err()
        }?;
        Some(Box::pin(async move {
            match blocked {
                Some(expiry) => {
                    tokio::select! {
                        _ = changed.changed() => {}
                        () = tokio::time::sleep_until(expiry) => {}
                    }
                }
                None => {
                    let _ = changed.changed().await;
                }
            }
        }))
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, duration_ms)
}

pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// TIMEOUT (retryable): the command did not take its stdin in time.
fn timeout_error(message: String) -> OpError {
    OpError::new(pb::ErrorCode::Timeout, message).retryable()
}
