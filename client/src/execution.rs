//! Long-running commands (README "Long-running commands"): start one under an id of our choice
//! (a retried start never runs it twice), follow its output as a [`Stream`] of
//! [`OutputEvent`]s, feed its stdin, signal it, wait for it, list them.
//!
//! [`Client::attach`] subscribes to a subject of its own (under the agent's), attaches from a seq and acknowledges
//! what it received, so the agent never runs more than a window ahead of a slow consumer. It
//! re-attaches from the next seq it expects whenever chunks are missing (a seq jump) or nothing
//! arrived for [`SILENCE`] (a NATS restart, a lost message, or merely a quiet command, which the
//! re-attach also keeps attached), so the consumer gets every chunk exactly once and in order,
//! across reconnects, or a [`OutputEvent::Gap`] saying how many bytes the agent had to drop.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as OpResult;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::envelope::unexpected_result;
use crate::error::ClientError;

/// With nothing received for this long, the stream attaches again from where it is.
pub const SILENCE: Duration = Duration::from_secs(2);
/// Acknowledge after this many bytes received (the agent's default window is 8 MiB).
const ACK_EVERY: u64 = 256 << 10;
/// How long attaching keeps retrying while the agent cannot be reached (NATS restarting).
const REATTACH_PATIENCE: Duration = Duration::from_secs(120);
/// Events buffered between the stream's task and its consumer.
const EVENT_QUEUE: usize = 64;
/// Longest wait one exec_wait request asks the agent for.
const WAIT_SLICE: Duration = Duration::from_secs(20);

/// One item of an execution's output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Bytes the command wrote, in order.
    Data { seq: u64, stream: pb::ExecStream, data: Bytes },
    /// The agent dropped this many bytes (past its spill cap) before the next data.
    Gap { bytes: u64 },
    /// The execution ended; nothing follows.
    End(pb::ExecState),
}

/// Where to attach from.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachFrom {
    /// First chunk wanted.
    pub seq: u64,
    /// Output bytes already held below `seq` (for exact gap sizes; 0 if unknown).
    pub offset: u64,
}

/// The output of an execution; see the module doc. Dropping it stops following.
pub struct OutputStream {
    events: mpsc::Receiver<Result<OutputEvent, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for OutputStream {
    type Item = Result<OutputEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The result variant an op must answer with, or a protocol error.
macro_rules! pick {
    ($result:expr, $variant:ident, $name:literal) => {
        match $result {
            OpResult::$variant(value) => Ok(value),
            other => Err(unexpected_result($name, &other)),
        }
    };
}

impl Client {
    /// exec_start: starts `request` under its exec_id, or returns the state of the execution
    /// that already has that id (`created: false`) without starting anything.
    pub async fn exec_start(
        &self,
        request: pb::ExecStartRequest,
    ) -> Result<pb::ExecStartResponse, ClientError> {
        let r = self.call(Op::ExecStart(request)).await?;
        pick!(r, ExecStart, "exec_start")
    }

    /// exec_attach as given (see [`Client::attach`] for a followed stream).
    pub async fn exec_attach(
        &self,
        request: pb::ExecAttachRequest,
    ) -> Result<pb::ExecAttachResponse, ClientError> {
        let r = self.call(Op::ExecAttach(request)).await?;
        pick!(r, ExecAttach, "exec_attach")
    }

    /// exec_ack: every chunk below `seq` arrived on `subject`; false if that attachment is gone.
    pub async fn exec_ack(&self, exec_id: &str, subject: &str, seq: u64) -> Result<bool, ClientError> {
        let op =
            Op::ExecAck(pb::ExecAckRequest { exec_id: exec_id.to_owned(), subject: subject.to_owned(), seq });
        let r = self.call(op).await?;
        pick!(r, ExecAck, "exec_ack").map(|v| v.attached)
    }

    /// exec_stdin: `data` at stdin position `offset` (bytes the agent already took are skipped,
    /// so a retry is safe), then close if asked. See [`Client::stdin_writer`].
    pub async fn exec_stdin(
        &self,
        exec_id: &str,
        data: Bytes,
        offset: u64,
        close: bool,
    ) -> Result<pb::ExecStdinResponse, ClientError> {
        let op = Op::ExecStdin(pb::ExecStdinRequest { exec_id: exec_id.to_owned(), data, offset, close });
        let r = self.call(op).await?;
        pick!(r, ExecStdin, "exec_stdin")
    }

    /// exec_signal: sends `signal` to the execution's process group.
    pub async fn exec_signal(&self, exec_id: &str, signal: pb::ExecSignal) -> Result<(), ClientError> {
        let op = Op::ExecSignal(pb::ExecSignalRequest { exec_id: exec_id.to_owned(), signal: signal as i32 });
        let r = self.call(op).await?;
        pick!(r, ExecSignal, "exec_signal").map(drop)
    }

    /// exec_wait once: the state when it ends or after `timeout` (the agent caps it at 60 s).
    pub async fn exec_wait_once(
        &self,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<pb::ExecState, ClientError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let op = Op::ExecWait(pb::ExecWaitRequest { exec_id: exec_id.to_owned(), timeout_ms });
        let r = self.call_with_timeout(op, self.request_timeout() + timeout).await?;
        pick!(r, ExecWait, "exec_wait")
    }

    /// Waits until the execution ends, however long that takes; returns its final state.
    pub async fn exec_wait(&self, exec_id: &str) -> Result<pb::ExecState, ClientError> {
        loop {
            let state = self.exec_wait_once(exec_id, WAIT_SLICE).await?;
            if state.status != pb::ExecStatus::Running as i32 {
                return Ok(state);
            }
        }
    }

    /// exec_list: the executions of our fence scope, running and recently ended.
    pub async fn exec_list(&self) -> Result<Vec<pb::ExecState>, ClientError> {
        let r = self.call(Op::ExecList(pb::ExecListRequest {})).await?;
        pick!(r, ExecList, "exec_list").map(|v| v.executions)
    }

    /// Follows an execution's output from `from`; see the module doc.
    pub async fn attach(&self, exec_id: &str, from: AttachFrom) -> Result<OutputStream, ClientError> {
        let nats = self.nats().clone();
        // Under the agent's own subjects, unique to this attachment: where an agent with a
        // least-privilege identity may publish (it may not publish to a client's `_INBOX`;
        // README "Enroll your laptop") and a control plane of the workspace may subscribe.
        let unique = nats.new_inbox().rsplit('.').next().unwrap_or_default().to_owned();
        let inbox = format!("{}.exec.{exec_id}.{unique}", self.subjects());
        let subscription = nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ClientError::Protocol(format!("subscribing to the output inbox: {e}")))?;
        let mut follow = Follow {
            client: self.clone(),
            exec_id: exec_id.to_owned(),
            subject: inbox,
            next: from.seq,
            offset: from.offset,
            acked: from.offset,
        };
        // The subscription must be live on the server before the agent publishes to it.
        nats.flush().await.map_err(|e| ClientError::Protocol(format!("flushing the subscription: {e}")))?;
        let first = follow.attach_now().await?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            if let Err(e) = follow.run(subscription, first, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(OutputStream { events, task })
    }

    /// A writer of the execution's stdin that keeps its own position (so it may retry safely).
    pub fn stdin_writer(&self, exec_id: &str) -> StdinWriter {
        StdinWriter { client: self.clone(), exec_id: exec_id.to_owned(), offset: 0 }
    }
}

/// The state of one followed attachment.
struct Follow {
    client: Client,
    exec_id: String,
    subject: String,
    /// Next seq expected.
    next: u64,
    /// Output bytes received (offset of the next chunk).
    offset: u64,
    acked: u64,
}

impl Follow {
    fn request(&self) -> pb::ExecAttachRequest {
        pb::ExecAttachRequest {
            exec_id: self.exec_id.clone(),
            from_seq: self.next,
            subject: self.subject.clone(),
            window_bytes: 0,
            from_offset: self.offset,
        }
    }

    async fn attach_now(&mut self) -> Result<pb::ExecAttachResponse, ClientError> {
        let reply = self.client.exec_attach(self.request()).await?;
        self.acked = self.offset;
        Ok(reply)
    }

    /// Attaches again, retrying while the agent is unreachable.
    async fn reattach(&mut self) -> Result<pb::ExecAttachResponse, ClientError> {
        let give_up = tokio::time::Instant::now() + REATTACH_PATIENCE;
        loop {
            match self.attach_now().await {
                Ok(reply) => return Ok(reply),
                Err(e) if tokio::time::Instant::now() < give_up && transient(&e) => {
                    tracing::debug!(error = %e, "re-attaching");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run(
        &mut self,
        mut subscription: async_nats::Subscriber,
        first: pb::ExecAttachResponse,
        events: &mpsc::Sender<Result<OutputEvent, ClientError>>,
    ) -> Result<(), ClientError> {
        if let Some(state) = ended_elsewhere(&first) {
            let _ = events.send(Ok(OutputEvent::End(state))).await;
            return Ok(());
        }
        loop {
            let msg = match tokio::time::timeout(SILENCE, subscription.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err(ClientError::Protocol("the output subscription ended".into())),
                Err(_) => {
                    let reply = self.reattach().await?;
                    if let Some(state) = ended_elsewhere(&reply) {
                        let _ = events.send(Ok(OutputEvent::End(state))).await;
                        return Ok(());
                    }
                    continue;
                }
            };
            let Ok(out) = pb::ExecOutput::decode(msg.payload) else { continue };
            if out.seq < self.next {
                continue; // a replay of what we have
            }
            // A seq jump is legitimate only over output the agent dropped (announced as a gap
            // that accounts for every byte); otherwise chunks went missing on the way: ask
            // again from the first one we lack.
            if out.seq > self.next && out.offset != self.offset + out.gap_bytes {
                self.reattach().await?;
                continue;
            }
            if let Some(state) = out.end {
                let _ = events.send(Ok(OutputEvent::End(state))).await;
                return Ok(());
            }
            if out.gap_bytes > 0 && events.send(Ok(OutputEvent::Gap { bytes: out.gap_bytes })).await.is_err()
            {
                return Ok(());
            }
            self.next = out.seq + 1;
            self.offset = out.offset + out.data.len() as u64;
            let stream = pb::ExecStream::try_from(out.stream).unwrap_or(pb::ExecStream::Stdout);
            let data = OutputEvent::Data { seq: out.seq, stream, data: out.data };
            if events.send(Ok(data)).await.is_err() {
                return Ok(()); // the consumer is gone
            }
            if self.offset - self.acked >= ACK_EVERY {
                self.acked = self.offset;
                let (client, exec_id, subject, seq) =
                    (self.client.clone(), self.exec_id.clone(), self.subject.clone(), self.next);
                tokio::spawn(async move {
                    if let Err(e) = client.exec_ack(&exec_id, &subject, seq).await {
                        tracing::debug!(error = %e, "acknowledging output");
                    }
                });
            }
        }
    }
}

/// The end, when the attach reply says the execution is over and no chunk will come (one of
/// a previous agent instance).
fn ended_elsewhere(reply: &pb::ExecAttachResponse) -> Option<pb::ExecState> {
    reply.state.clone().filter(|s| s.previous_instance)
}

/// Errors worth retrying an attach for: the agent or NATS is briefly away.
fn transient(e: &ClientError) -> bool {
    matches!(e, ClientError::AgentOffline { .. } | ClientError::Timeout { .. }) || e.retryable()
}

/// Writes an execution's stdin in chunks that fit a message; see [`Client::stdin_writer`].
pub struct StdinWriter {
    client: Client,
    exec_id: String,
    offset: u64,
}

impl StdinWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.offset
    }

    /// Writes all of `data`, retrying a timed-out chunk at the same offset.
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        let chunk = self.client.max_payload().saturating_sub(1024).clamp(1024, 256 << 10);
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(chunk.min(rest.len()));
            self.send(piece, false).await?;
        }
        Ok(())
    }

    /// Closes stdin (the command reads EOF).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.send(Bytes::new(), true).await
    }

    async fn send(&mut self, piece: Bytes, close: bool) -> Result<(), ClientError> {
        let end = self.offset + piece.len() as u64;
        let mut attempts = 0;
        loop {
            match self.client.exec_stdin(&self.exec_id, piece.clone(), self.offset, close).await {
                Ok(reply) if reply.written >= end => {
                    self.offset = end;
                    return Ok(());
                }
                Ok(reply) => {
                    return Err(ClientError::Protocol(format!("stdin stopped at {}", reply.written)));
                }
                Err(e) if attempts < 5 && transient(&e) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
