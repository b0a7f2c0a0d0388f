//! `Client`: one typed async method per agent op over a single NATS connection.
//!
//! Every method funnels into [`Client::call_with_timeout`], which builds the envelope (unique
//! request id, the client's epoch and fence scope), sends it with NATS request/reply on
//! `agent.<ws>.<id>.rpc`, and opens the reply. A call that gets no reply in time is sent again
//! byte for byte, request id included: the agent remembers the replies of mutating requests by
//! that id (README "Retries and request deduplication"), so a retry never runs an op twice.
//! Chunked file transfer lives in `transfer.rs`, the hello/events subscription in `events.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as OpResult;
use tether_proto::subjects::AgentSubjects;
use tracing::Instrument;

use crate::config::{ClientConfig, EXEC_TIMEOUT_MARGIN};
use crate::envelope;
use crate::error::ClientError;
use crate::unique;

/// A connection to one agent. Cheap to clone: clones share the NATS connection and the epoch.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    subjects: AgentSubjects,
    rpc_subject: String,
    fence_scope: String,
    epoch: AtomicU32,
    request_timeout: Duration,
    retries: u32,
    id_prefix: String,
    next_id: AtomicU64,
}

/// First pause before asking again about a request the agent reports in progress; it doubles
/// up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Shortest wait given to a send at the end of an attempt.
const MIN_WAIT: Duration = Duration::from_millis(100);

/// Picks the result variant an op must answer with, or fails with a protocol error.
macro_rules! expect_result {
    ($result:expr, $variant:ident, $name:literal) => {
        match $result {
            OpResult::$variant(value) => Ok(value),
            other => Err(envelope::unexpected_result($name, &other)),
        }
    };
}

impl Client {
    /// Connects to NATS as `config` says. Fails if no server accepts the connection; does not
    /// check that the agent is online (use [`Client::ping`]).
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let options = config.connect_options().await?;
        let urls = config.nats_urls().to_vec();
        let nats = options
            .connect(urls.clone())
            .await
            .map_err(|source| ClientError::Connect { urls: urls.join(","), source })?;
        Ok(Self::from_nats(nats, &config))
    }

    /// Wraps an existing NATS connection (its auth and servers are the caller's business; only
    /// the agent address, timeout, scope and epoch of `config` are used).
    pub fn from_nats(nats: async_nats::Client, config: &ClientConfig) -> Self {
        let subjects = config.subjects().clone();
        Self {
            inner: Arc::new(Inner {
                rpc_subject: subjects.rpc(),
                subjects,
                nats,
                fence_scope: config.fence_scope().to_owned(),
                epoch: AtomicU32::new(config.epoch()),
                request_timeout: config.request_timeout(),
                retries: config.retries(),
                id_prefix: format!("{:016x}", unique::random_u64()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.inner.nats
    }

    /// The agent's subjects.
    pub fn subjects(&self) -> &AgentSubjects {
        &self.inner.subjects
    }

    /// The fence scope sent with every request.
    pub fn fence_scope(&self) -> &str {
        &self.inner.fence_scope
    }

    /// The epoch sent with every request.
    pub fn epoch(&self) -> u32 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Changes the epoch for all later requests (of this client and its clones).
    pub fn set_epoch(&self, epoch: u32) {
        self.inner.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The default time to wait for a reply.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The connection's negotiated maximum message size (bytes).
    pub fn max_payload(&self) -> usize {
        self.inner.nats.max_payload()
    }

    fn next_request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.id_prefix)
    }

    /// Sends one op with the default timeout and returns its result (or the agent's error).
    pub async fn call(&self, op: Op) -> Result<OpResult, ClientError> {
        self.call_with_timeout(op, self.inner.request_timeout).await
    }

    /// Sends one op, waiting at most `timeout` for the reply; with no reply by then (or an "in
    /// progress" answer to a retry) it is sent again with the same request id, up to the
    /// configured number of retries ([`crate::ClientConfig::with_retries`]).
    pub async fn call_with_timeout(&self, op: Op, timeout: Duration) -> Result<OpResult, ClientError> {
        let request_id = self.next_request_id();
        let epoch = self.epoch();
        let op_name = envelope::op_name(&op);
        let span = tracing::debug_span!("request", request_id = %request_id, op = op_name, epoch);
        async {
            let request = envelope::build_request(request_id.clone(), epoch, &self.inner.fence_scope, op);
            let result = self.exchange(&request_id, envelope::encode_request(&request), timeout).await;
            if let Err(err) = &result {
                tracing::debug!(error = %err, "request failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Sends a caller-built envelope unchanged (no id, epoch or scope is filled in) and returns
    /// the decoded reply unchecked. For tests of the protocol itself, e.g. scope-less requests.
    pub async fn request_raw(
        &self,
        request: &pb::ControlRequest,
        timeout: Option<Duration>,
    ) -> Result<pb::ControlResponse, ClientError> {
        let timeout = timeout.unwrap_or(self.inner.request_timeout);
        let reply = self.send(envelope::encode_request(request), timeout).await?;
        pb::ControlResponse::decode(reply)
            .map_err(|e| ClientError::Protocol(format!("undecodable ControlResponse: {e}")))
    }

    /// Sends `payload` (the encoded request `request_id`) until it is answered: each attempt
    /// waits up to `timeout`; an "in progress" answer (the first send of the same request is
    /// still running on the agent) is asked again after a pause within the same attempt. The
    /// very same bytes go every time, so the agent sees the same request and replays its reply.
    async fn exchange(
        &self,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<OpResult, ClientError> {
        let mut retries_left = self.inner.retries;
        let mut deadline = Instant::now() + timeout;
        let mut pause = FIRST_PAUSE;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()).max(MIN_WAIT);
            let result = match self.send(payload.clone(), wait).await {
                Ok(reply) => envelope::open_response(request_id, reply),
                Err(e) => Err(e),
            };
            let in_progress = result.as_ref().is_err_and(ClientError::in_progress);
            if in_progress && Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
            let timed_out = matches!(result, Err(ClientError::Timeout { .. }));
            if (timed_out || in_progress) && retries_left > 0 {
                retries_left -= 1;
                tracing::debug!(retries_left, "no reply yet: sending the request again with the same id");
                deadline = Instant::now() + timeout;
                pause = FIRST_PAUSE;
                continue;
            }
            return result;
        }
    }

    async fn send(&self, payload: Bytes, timeout: Duration) -> Result<Bytes, ClientError> {
        let subject = &self.inner.rpc_subject;
        let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        let message = self
            .inner
            .nats
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| ClientError::from_request(e, subject, timeout))?;
        Ok(message.payload)
    }

    /// Round trip to the agent; checks the nonce is echoed.
    pub async fn ping(&self, nonce: u64) -> Result<pb::PingResponse, ClientError> {
        let result = self.call(Op::Ping(pb::PingRequest { nonce })).await?;
        let pong = expect_result!(result, Ping, "ping")?;
        if pong.nonce != nonce {
            return Err(ClientError::Protocol(format!("ping nonce {} echoed as {}", nonce, pong.nonce)));
        }
        Ok(pong)
    }

    /// Runs a command. With `timeout_ms > 0` the reply is awaited for that long plus
    /// [`EXEC_TIMEOUT_MARGIN`] (at least the default timeout); with 0 (no deadline on the agent)
    /// for the default request timeout only: use [`Client::exec_with_timeout`] to wait longer.
    pub async fn exec(&self, request: pb::ExecRequest) -> Result<pb::ExecResponse, ClientError> {
        let timeout = exec_reply_timeout(request.timeout_ms, self.inner.request_timeout);
        self.exec_with_timeout(request, timeout).await
    }

    /// Runs a command, waiting at most `timeout` for its reply.
    pub async fn exec_with_timeout(
        &self,
        request: pb::ExecRequest,
        timeout: Duration,
    ) -> Result<pb::ExecResponse, ClientError> {
        let result = self.call_with_timeout(Op::Exec(request), timeout).await?;
        expect_result!(result, Exec, "exec")
    }

    /// One ranged read (`length` 0 = to EOF, which fails with PAYLOAD_TOO_LARGE when the rest
    /// does not fit one reply). The agent may return fewer bytes than asked; see
    /// [`Client::read_file`] for whole files.
    pub async fn read(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<pb::FsReadResponse, ClientError> {
        let op = Op::FsRead(pb::FsReadRequest { path: path.to_owned(), offset, length });
        expect_result!(self.call(op).await?, FsRead, "fs_read")
    }

    /// One fs_write as given (it must fit one message; see [`Client::write_file`]).
    pub async fn write(&self, request: pb::FsWriteRequest) -> Result<pb::FsWriteResponse, ClientError> {
        expect_result!(self.call(Op::FsWrite(request)).await?, FsWrite, "fs_write")
    }

    /// Opens (or, with the id of one still open, resumes) a verified upload; see
    /// [`Client::put_from`] for whole uploads.
    pub async fn transfer_open(
        &self,
        request: pb::TransferOpenRequest,
    ) -> Result<pb::TransferOpenResponse, ClientError> {
        expect_result!(self.call(Op::TransferOpen(request)).await?, TransferOpen, "transfer_open")
    }

    /// Commits a verified upload: the agent checks the digest, then renames it into place.
    pub async fn transfer_commit(
        &self,
        request: pb::TransferCommitRequest,
        timeout: Duration,
    ) -> Result<pb::TransferCommitResponse, ClientError> {
        let result = self.call_with_timeout(Op::TransferCommit(request), timeout).await?;
        expect_result!(result, TransferCommit, "transfer_commit")
    }

    /// Discards an open upload and its temp file; false if none was open under that id.
    pub async fn transfer_abort(&self, transfer_id: &str) -> Result<bool, ClientError> {
        let op = Op::TransferAbort(pb::TransferAbortRequest { transfer_id: transfer_id.to_owned() });
        Ok(expect_result!(self.call(op).await?, TransferAbort, "transfer_abort")?.found)
    }

    /// The size, modification time and BLAKE3 digest of a remote file (the agent reads it
    /// whole: allow `timeout` for that).
    pub async fn digest(&self, path: &str, timeout: Duration) -> Result<pb::FsDigestResponse, ClientError> {
        let op = Op::FsDigest(pb::FsDigestRequest { path: path.to_owned() });
        expect_result!(self.call_with_timeout(op, timeout).await?, FsDigest, "fs_digest")
    }

    /// Lists a directory (`max_entries` 0 = as many as fit one reply; see `truncated`).
    pub async fn list(
        &self,
        path: &str,
        recursive: bool,
        max_entries: u32,
    ) -> Result<pb::FsListResponse, ClientError> {
        let op = Op::FsList(pb::FsListRequest { path: path.to_owned(), recursive, max_entries });
        expect_result!(self.call(op).await?, FsList, "fs_list")
    }

    /// Stats a path; a missing path is `exists: false`, not an error.
    pub async fn stat(&self, path: &str) -> Result<pb::FsStatResponse, ClientError> {
        let op = Op::FsStat(pb::FsStatRequest { path: path.to_owned() });
        expect_result!(self.call(op).await?, FsStat, "fs_stat")
    }

    /// Creates a directory (`mode` 0 = default).
    pub async fn mkdir(&self, path: &str, parents: bool, mode: u32) -> Result<(), ClientError> {
        let op = Op::FsMkdir(pb::FsMkdirRequest { path: path.to_owned(), parents, mode });
        expect_result!(self.call(op).await?, FsMkdir, "fs_mkdir").map(drop)
    }

    /// Moves `from` to `to` (fs_move); `overwrite` replaces an existing target.
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), ClientError> {
        let op = Op::FsMove(pb::FsMoveRequest { from: from.to_owned(), to: to.to_owned(), overwrite });
        expect_result!(self.call(op).await?, FsMove, "fs_move").map(drop)
    }

    /// Removes a file, symlink or (with `recursive`, or when empty) directory.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        let op = Op::FsRemove(pb::FsRemoveRequest { path: path.to_owned(), recursive });
        expect_result!(self.call(op).await?, FsRemove, "fs_remove").map(drop)
    }

    /// Opens a terminal (pty_open); the reply names its relay channel. With a `scope_id`, a
    /// live terminal of that scope is returned instead of starting another.
    pub async fn pty_open(&self, request: pb::PtyOpenRequest) -> Result<pb::PtyOpenResponse, ClientError> {
        expect_result!(self.call(Op::PtyOpen(request)).await?, PtyOpen, "pty_open")
    }

    /// Types `data` into a terminal.
    pub async fn pty_write(&self, pty_id: &str, data: bytes::Bytes) -> Result<u64, ClientError> {
        let op = Op::PtyWrite(pb::PtyWriteRequest { pty_id: pty_id.to_owned(), data });
        Ok(expect_result!(self.call(op).await?, PtyWrite, "pty_write")?.bytes_written)
    }

    /// Resizes a terminal.
    pub async fn pty_resize(&self, pty_id: &str, cols: u32, rows: u32) -> Result<(), ClientError> {
        let op = Op::PtyResize(pb::PtyResizeRequest { pty_id: pty_id.to_owned(), cols, rows });
        expect_result!(self.call(op).await?, PtyResize, "pty_resize").map(drop)
    }

    /// Ends a terminal; returns its exit code (-1 if it was still running and was killed).
    pub async fn pty_close(&self, pty_id: &str) -> Result<i32, ClientError> {
        let op = Op::PtyClose(pb::PtyCloseRequest { pty_id: pty_id.to_owned() });
        Ok(expect_result!(self.call(op).await?, PtyClose, "pty_close")?.exit_code)
    }

    /// Samples the machine's metrics.
    pub async fn metrics(&self) -> Result<pb::MetricsSample, ClientError> {
        expect_result!(self.call(Op::Metrics(pb::MetricsRequest {})).await?, Metrics, "metrics")
    }

    /// Takes a screenshot (PNG unless the request asks for JPEG).
    pub async fn screenshot(
        &self,
        request: pb::DesktopScreenshotRequest,
    ) -> Result<pb::DesktopScreenshotResponse, ClientError> {
        expect_result!(
            self.call(Op::DesktopScreenshot(request)).await?,
            DesktopScreenshot,
            "desktop_screenshot"
        )
    }

    /// Injects one input event (needs the agent's screen-control consent).
    pub async fn desktop_input(&self, event: pb::desktop_input_request::Event) -> Result<(), ClientError> {
        let op = Op::DesktopInput(pb::DesktopInputRequest { event: Some(event) });
        expect_result!(self.call(op).await?, DesktopInput, "desktop_input").map(|_| ())
    }

    /// Ensures the agent's desktop stream; returns its channel and display.
    pub async fn desktop_ensure(
        &self,
        request: pb::DesktopEnsureRequest,
    ) -> Result<pb::DesktopEnsureResponse, ClientError> {
        expect_result!(self.call(Op::DesktopEnsure(request)).await?, DesktopEnsure, "desktop_ensure")
    }

    /// Runs input actions, then takes a screenshot once the screen has settled.
    pub async fn desktop_act(
        &self,
        request: pb::DesktopActRequest,
    ) -> Result<pb::DesktopActResponse, ClientError> {
        let wait = request.actions.iter().filter_map(|a| match a.action {
            Some(pb::desktop_action::Action::WaitMs(ms)) => Some(u64::from(ms)),
            _ => None,
        });
        let timeout = self.request_timeout() + Duration::from_millis(wait.sum::<u64>() + 10_000);
        expect_result!(
            self.call_with_timeout(Op::DesktopAct(request), timeout).await?,
            DesktopAct,
            "desktop_act"
        )
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("subject", &self.inner.rpc_subject)
            .field("fence_scope", &self.inner.fence_scope)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// How long to wait for an exec reply: the command's own deadline plus a margin, never less
/// than the default timeout.
pub fn exec_reply_timeout(timeout_ms: u32, default: Duration) -> Duration {
    if timeout_ms == 0 {
        return default;
    }
    default.max(Duration::from_millis(u64::from(timeout_ms)) + EXEC_TIMEOUT_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_timeout_covers_the_command_deadline() {
        let d = Duration::from_secs(30);
        assert_eq!(exec_reply_timeout(0, d), d);
        assert_eq!(exec_reply_timeout(1_000, d), d);
        assert_eq!(exec_reply_timeout(120_000, d), Duration::from_secs(120) + EXEC_TIMEOUT_MARGIN);
    }
}
