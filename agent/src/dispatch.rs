//! From request bytes to reply bytes: decode the envelope, pass the fence, consult the reply
//! cache (`dedup`) for mutating ops, route to one op family, and shape the reply so it always
//! fits the server's `max_payload`. Knows nothing of NATS (that is `serve`) and nothing of how an
//! op works (that is `ops`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tether_proto::pb::{self, control_request::Op, control_response::Result as Reply};
use tracing::Instrument;

use crate::dedup::{self, Begin, Replies, Ticket};
use crate::error::{OpError, OpResult};
use crate::fence::{Admission, Fence, scope_label};
use crate::ops::desktop::Desktop;
use crate::ops::execution::{ExecSettings, Executions};
use crate::ops::pty::{FencedBy, Terminals};
use crate::ops::tree::{self, Trees};
use crate::ops::{exec, fs, metrics::MetricsSampler};
use crate::paths::Paths;
use crate::process::Launcher;
use crate::sandbox::{CommandLimits, Sandbox};

/// Bytes reserved for the envelope around an op's result (request_id aside): the oneof tag and
/// length prefix, the error slot, and room to spare.
const ENVELOPE_OVERHEAD: usize = 64;

/// Everything the ops need, shared by all requests.
pub struct Dispatcher {
    pub paths: Arc<Paths>,
    pub launcher: Arc<Launcher>,
    /// Confinement and limits of every child; `sandbox.admit()` gates every op that starts one.
    pub sandbox: Arc<Sandbox>,
    pub fence: Arc<Fence>,
    pub terminals: Arc<Terminals>,
    pub metrics: Arc<Mutex<MetricsSampler>>,
    /// Open verified uploads (transfer_open .. transfer_commit).
    pub transfers: Arc<fs::Transfers>,
    /// How long a file mutation may hold its fence scope before it answers TIMEOUT.
    pub mutation_deadline: Duration,
    /// The screen (or why there is none).
    pub desktop: Arc<Desktop>,
    /// The tree ops' digest cache (workspace sync).
    pub trees: Arc<Trees>,
    /// Replies of mutating requests, so a retry is answered without running again.
    pub replies: Arc<Replies>,
    /// Long-running commands (exec_start ..).
    pub executions: Arc<Executions>,
    started: Instant,
}

impl Dispatcher {
    pub fn new(
        paths: Arc<Paths>,
        launcher: Arc<Launcher>,
        sandbox: Arc<Sandbox>,
        fence: Arc<Fence>,
        terminals: Arc<Terminals>,
    ) -> Self {
        Dispatcher {
            paths,
            launcher: launcher.clone(),
            sandbox,
            fence: fence.clone(),
            terminals,
            metrics: Arc::new(Mutex::new(MetricsSampler::new())),
            transfers: Arc::new(fs::Transfers::default()),
            mutation_deadline: fs::DEFAULT_MUTATION_DEADLINE,
            desktop: Arc::new(Desktop::unavailable("no display is configured", false)),
            trees: Arc::new(Trees::in_memory()),
            replies: Replies::new(dedup::DedupLimits::default()),
            executions: Arc::new(Executions::open(
                ExecSettings::default(),
                launcher.clone(),
                fence.clone(),
                None,
                None,
            )),
            started: Instant::now(),
        }
    }

    /// Serves one request and returns the encoded `ControlResponse`, never larger than
    /// `max_payload`.
    pub async fn handle(&self, payload: Bytes, max_payload: usize) -> Bytes {
        match decode(payload, max_payload) {
            Ok(request) => self.handle_request(request, max_payload).await,
            Err(reply) => reply,
        }
    }

    /// [`Dispatcher::handle`] for a request already decoded.
    pub async fn handle_request(&self, request: pb::ControlRequest, max_payload: usize) -> Bytes {
        let span = tracing::info_span!(
            "request",
            request_id = %request.request_id,
            op = op_name(request.op.as_ref()),
            epoch = request.epoch,
            fence_scope = %scope_label(&request.fence_scope),
        );
        self.transfers.note_max_payload(max_payload);
        self.serve(request, max_payload).instrument(span).await
    }

    /// Serves one request to its encoded reply. The fence comes first, then the reply cache
    /// (so a remembered reply never hides a FENCED answer from a stale retry; see `dedup`).
    async fn serve(&self, request: pb::ControlRequest, max_payload: usize) -> Bytes {
        let request_id = request.request_id.clone();
        let budget = max_payload.saturating_sub(ENVELOPE_OVERHEAD + request_id.len());
        let remembered = self.replies.enabled()
            && !request_id.is_empty()
            && request.op.as_ref().is_some_and(dedup::remembered);
        let (request, fingerprint) = match remembered {
            true => match dedup::fingerprint(request).await {
                Ok((request, print)) => (request, Some(print)),
                Err(e) => return reply(request_id, Err(e), max_payload, None),
            },
            false => (request, None),
        };
        let Some(op) = request.op else {
            let e = OpError::protocol("request carries no known op");
            return reply(request_id, Err(e), max_payload, None);
        };
        let (scope, epoch) = (request.fence_scope, request.epoch);
        let admission = match self.admit(&op, &scope, epoch).await {
            Ok(admission) => admission,
            Err(e) => return reply(request_id, Err(e), max_payload, None),
        };
        let ticket = match fingerprint {
            Some(print) => match self.look_up(&scope, &request_id, print, max_payload) {
                Ok(ticket) => Some(ticket),
                Err(answered) => return answered,
            },
            None => None,
        };
        let result = self.run_admitted(op, request.resource_policy, admission, (&scope, epoch), budget).await;
        reply(request_id, result, max_payload, ticket)
    }

    /// Looks an admitted request up in the reply cache: a ticket to run it, or the answer it
    /// already has (its remembered reply, or a refusal: in progress, id reused, reply dropped).
    fn look_up(
        &self,
        scope: &str,
        request_id: &str,
        print: dedup::Fingerprint,
        max_payload: usize,
    ) -> Result<Ticket, Bytes> {
        let refusal = match self.replies.begin(scope, request_id, print) {
            Begin::Run(ticket) => return Ok(ticket),
            Begin::Replay(bytes) if bytes.len() <= max_payload => {
                tracing::info!(bytes = bytes.len(), "answered a retry with the remembered reply");
                return Err(bytes);
            }
            // Remembered under a server that allowed more (the agent reconnected elsewhere).
            Begin::Replay(bytes) => OpError::payload_too_large(
                format!("the remembered reply is {} bytes, over this server's max_payload", bytes.len()),
                bytes.len(),
                max_payload,
            ),
            Begin::Refuse(e) => e,
        };
        Err(reply(request_id.to_owned(), Err(refusal), max_payload, None))
    }

    /// Passes the fence; a short mutation keeps holding it (shared) until it commits.
    async fn admit(&self, op: &Op, scope: &str, epoch: u32) -> OpResult<Admission> {
        if let Some(unsupported) = unsupported(op) {
            return Err(unsupported);
        }
        let mut admission = self.fence.admit(scope, epoch).await?;
        if !mutates_briefly(op) {
            admission.release_hold();
        }
        Ok(admission)
    }

    /// Runs an admitted op; work cancelled by an epoch advance answers FENCED.
    async fn run_admitted(
        &self,
        op: Op,
        resources: Option<pb::OperationResourcePolicy>,
        admission: Admission,
        (scope, epoch): (&str, u32),
        budget: usize,
    ) -> OpResult<Answer> {
        match self.run(op, resources, admission, (scope, epoch), budget).await {
            Err(e) if e == OpError::cancelled() && self.fence.is_stale(scope, epoch).await => {
                let held = self.fence.held(scope).await;
                Err(OpError::fenced(scope, epoch, held).with("reason", "cancelled by an epoch advance"))
            }
            other => other,
        }
    }

    /// Runs the op while `admission` is held: a mutation keeps the scope from advancing until
    /// it has committed.
    async fn run(
        &self,
        op: Op,
        resources: Option<pb::OperationResourcePolicy>,
        admission: Admission,
        (scope, epoch): (&str, u32),
        budget: usize,
    ) -> OpResult<Answer> {
        let paths = self.paths.clone();
        Ok(Answer::Reply(match op {
            Op::Ping(ping) => Reply::Ping(pb::PingResponse {
                nonce: ping.nonce,
                agent_monotonic_ms: self.started.elapsed().as_millis() as u64,
            }),
            Op::Exec(req) => {
                self.sandbox.admit()?;
                let cwd = paths.resolve_cwd(&req.cwd)?;
                let limits = self.command_limits(resources, &admission).await?;
                Reply::Exec(
                    exec::exec(&self.launcher, limits, cwd, req, budget, admission.cancel.clone()).await?,
                )
            }
            Op::FsRead(req) => return Ok(Answer::Read(fs::read(paths, req, budget).await?)),
            Op::FsWrite(req) if !req.transfer_id.is_empty() => {
                Reply::FsWrite(self.transfers.write_chunk(req, self.mutation_deadline).await?)
            }
            Op::FsWrite(req) => Reply::FsWrite(fs::write(paths, req, self.mutation_deadline).await?),
            Op::TransferOpen(req) => {
                Reply::TransferOpen(self.transfers.open(paths, req, self.mutation_deadline).await?)
            }
            Op::TransferCommit(req) => {
                Reply::TransferCommit(self.transfers.commit(paths, req, self.mutation_deadline).await?)
            }
            Op::TransferAbort(req) => Reply::TransferAbort(self.transfers.abort(req).await?),
            Op::FsDigest(req) => Reply::FsDigest(fs::digest(paths, req, self.transfers.digests()).await?),
            Op::FsList(req) => Reply::FsList(fs::list(paths, req, budget).await?),
            Op::FsStat(req) => Reply::FsStat(fs::stat(paths, req).await?),
            Op::FsMkdir(req) => Reply::FsMkdir(fs::mkdir(paths, req, self.mutation_deadline).await?),
            Op::FsMove(req) => Reply::FsMove(fs::rename(paths, req, self.mutation_deadline).await?),
            Op::FsRemove(req) => Reply::FsRemove(fs::remove(paths, req, self.mutation_deadline).await?),
            Op::Metrics(_) => Reply::Metrics(self.sample_metrics().await?),
            Op::TreeManifest(req) => {
                Reply::TreeManifest(tree::manifest::manifest(paths, self.trees.clone(), req, budget).await?)
            }
            Op::BatchWrite(req) => Reply::BatchWrite(
                tree::write::write(paths, self.trees.clone(), req, self.mutation_deadline).await?,
            ),
            Op::BatchRead(req) => Reply::BatchRead(tree::read::read(paths, req, budget).await?),
            Op::PtyOpen(req) => {
                self.sandbox.admit()?;
                let cwd = paths.resolve_cwd(&req.cwd)?;
                let limits = self.command_limits(resources, &admission).await?;
                let fenced = FencedBy::of(scope, epoch, &admission);
                Reply::PtyOpen(self.terminals.open(req, cwd, limits, fenced).await?)
            }
            Op::PtyWrite(req) => Reply::PtyWrite(self.terminals.write(scope, req).await?),
            Op::PtyResize(req) => Reply::PtyResize(self.terminals.resize(scope, req)?),
            Op::PtyClose(req) => Reply::PtyClose(self.terminals.close(scope, req).await?),
            Op::DesktopScreenshot(req) => {
                Reply::DesktopScreenshot(self.desktop.screenshot(req, budget).await?)
            }
            Op::DesktopInput(req) => Reply::DesktopInput(self.desktop.input(req).await?),
            Op::DesktopEnsure(req) => {
                let fenced = FencedBy::of(scope, epoch, &admission);
                Reply::DesktopEnsure(self.desktop.ensure(req, fenced).await?)
            }
            Op::DesktopAct(req) => {
                Reply::DesktopAct(self.desktop.act(req, budget, admission.cancel.clone()).await?)
            }
            Op::ExecStart(req) => {
                if let Some(state) = self.executions.existing(scope, &req.exec_id)? {
                    return Ok(Answer::Reply(Reply::ExecStart(pb::ExecStartResponse {
                        state: Some(state),
                        created: false,
                    })));
                }
                self.sandbox.admit()?;
                let cwd = paths.resolve_cwd(&req.exec.as_ref().map(|e| e.cwd.clone()).unwrap_or_default())?;
                let limits = self.command_limits(resources, &admission).await?;
                let fenced = FencedBy::of(scope, epoch, &admission);
                Reply::ExecStart(self.executions.start(req, cwd, limits, fenced, budget).await?)
            }
            Op::ExecAttach(req) => Reply::ExecAttach(self.executions.attach(scope, req).await?),
            Op::ExecAck(req) => Reply::ExecAck(self.executions.ack(scope, req)?),
            Op::ExecStdin(req) => Reply::ExecStdin(self.executions.stdin(scope, req).await?),
            Op::ExecSignal(req) => Reply::ExecSignal(self.executions.signal(scope, req)?),
            Op::ExecWait(req) => Reply::ExecWait(self.executions.wait(scope, req).await?),
            Op::ExecList(_) => Reply::ExecList(self.executions.list(scope).await),
            other => return Err(unsupported(&other).unwrap_or_else(|| OpError::unsupported("not served"))),
        }))
    }

    /// The limits of one command (its cgroup is made off the async workers); what it leaves
    /// running is killed when its admission is cancelled (an epoch advance, shutdown).
    async fn command_limits(
        &self,
        resources: Option<pb::OperationResourcePolicy>,
        admission: &Admission,
    ) -> OpResult<CommandLimits> {
        let (sandbox, until) = (self.sandbox.clone(), admission.cancel.clone());
        tokio::task::spawn_blocking(move || sandbox.limits(resources.as_ref(), until))
            .await
            .map_err(|e| OpError::os(format!("preparing the command's limits failed: {e}")))?
    }

    /// One metrics sample, taken off the async workers.
    pub async fn sample_metrics(&self) -> OpResult<pb::MetricsSample> {
        let sampler = self.metrics.clone();
        let root = self.paths.workspace_root().to_owned();
        tokio::task::spawn_blocking(move || {
            sampler.lock().unwrap_or_else(PoisonError::into_inner).sample(&root)
        })
        .await
        .map_err(|e| OpError::os(format!("metrics sampling failed: {e}")))
    }
}

/// What an op answers with: a reply, or a read's content already laid out as its reply.
enum Answer {
    Reply(Reply),
    Read(fs::ReadContent),
}

/// Encodes the answer to a request and, when it holds a cache ticket, hands the reply to the
/// cache: remembered unless it is a retryable failure, which invites a retry that must run.
fn reply(request_id: String, result: OpResult<Answer>, max_payload: usize, ticket: Option<Ticket>) -> Bytes {
    if let Err(e) = &result {
        tracing::info!(code = e.code.as_str_name(), message = %e.message, "op failed");
    }
    let remember = !matches!(&result, Err(e) if e.retryable);
    let bytes = match result {
        Ok(Answer::Read(content)) => content.into_response(request_id, max_payload),
        Ok(Answer::Reply(reply)) => encode(request_id, Ok(reply), max_payload),
        Err(e) => encode(request_id, Err(e), max_payload),
    };
    if let Some(ticket) = ticket {
        ticket.finish(&bytes, remember);
    }
    bytes
}

/// Ops that commit a side effect quickly and so keep the fence shared until they commit (under
/// `mutation_deadline`, so one that blocks cannot keep its scope from advancing).
fn mutates_briefly(op: &Op) -> bool {
    matches!(
        op,
        Op::FsWrite(_)
            | Op::FsMkdir(_)
            | Op::FsMove(_)
            | Op::FsRemove(_)
            | Op::TransferOpen(_)
            | Op::TransferCommit(_)
            | Op::TransferAbort(_)
            | Op::DesktopInput(_)
            | Op::BatchWrite(_)
    )
}

/// Known ops this agent does not serve yet answer UNSUPPORTED before touching the fence.
fn unsupported(op: &Op) -> Option<OpError> {
    let what = match op {
        Op::Git(_) => "git",
        _ => return None,
    };
    Some(OpError::unsupported(format!("this agent does not serve {what} yet")).with("op", op_name(Some(op))))
}

fn op_name(op: Option<&Op>) -> &'static str {
    match op {
        None => "none",
        Some(Op::Ping(_)) => "ping",
        Some(Op::Exec(_)) => "exec",
        Some(Op::FsRead(_)) => "fs_read",
        Some(Op::FsWrite(_)) => "fs_write",
        Some(Op::FsList(_)) => "fs_list",
        Some(Op::FsMkdir(_)) => "fs_mkdir",
        Some(Op::FsMove(_)) => "fs_move",
        Some(Op::FsStat(_)) => "fs_stat",
        Some(Op::FsRemove(_)) => "fs_remove",
        Some(Op::Git(_)) => "git",
        Some(Op::PtyOpen(_)) => "pty_open",
        Some(Op::PtyWrite(_)) => "pty_write",
        Some(Op::PtyResize(_)) => "pty_resize",
        Some(Op::PtyClose(_)) => "pty_close",
        Some(Op::DesktopEnsure(_)) => "desktop_ensure",
        Some(Op::Metrics(_)) => "metrics",
        Some(Op::DesktopInput(_)) => "desktop_input",
        Some(Op::DesktopScreenshot(_)) => "desktop_screenshot",
        Some(Op::TransferOpen(_)) => "transfer_open",
        Some(Op::TransferCommit(_)) => "transfer_commit",
        Some(Op::TransferAbort(_)) => "transfer_abort",
        Some(Op::FsDigest(_)) => "fs_digest",
        Some(Op::DesktopAct(_)) => "desktop_act",
        Some(Op::TreeManifest(_)) => "tree_manifest",
        Some(Op::BatchWrite(_)) => "batch_write",
        Some(Op::BatchRead(_)) => "batch_read",
        Some(Op::ExecStart(_)) => "exec_start",
        Some(Op::ExecAttach(_)) => "exec_attach",
        Some(Op::ExecAck(_)) => "exec_ack",
        Some(Op::ExecStdin(_)) => "exec_stdin",
        Some(Op::ExecSignal(_)) => "exec_signal",
        Some(Op::ExecWait(_)) => "exec_wait",
        Some(Op::ExecList(_)) => "exec_list",
    }
}

/// Encodes the response; one that would not fit `max_payload` becomes PAYLOAD_TOO_LARGE.
pub fn encode(request_id: String, result: OpResult<Reply>, max_payload: usize) -> Bytes {
    let response = match result {
        Ok(reply) => pb::ControlResponse { request_id, error: None, result: Some(reply) },
        Err(e) => pb::ControlResponse { request_id, error: Some(e.into_proto()), result: None },
    };
    let len = response.encoded_len();
    if len <= max_payload {
        return response.encode_to_vec().into();
    }
    let err = OpError::payload_too_large(
        format!("the reply would be {len} bytes, over the server's max_payload of {max_payload}"),
        len,
        max_payload,
    );
    pb::ControlResponse { request_id: response.request_id, error: Some(err.into_proto()), result: None }
        .encode_to_vec()
        .into()
}

/// Decodes a request; an undecodable one gets its (PROTOCOL error) reply instead.
pub fn decode(payload: Bytes, max_payload: usize) -> Result<pb::ControlRequest, Bytes> {
    pb::ControlRequest::decode(payload).map_err(|e| {
        let err = OpError::protocol(format!("undecodable ControlRequest: {e}"));
        encode(String::new(), Err(err), max_payload)
    })
}

/// Ops a control plane uses to tell a busy agent from a dead one: they are served from slots
/// of their own, so long commands filling every request slot never make them answer DRAINING.
pub fn is_probe(request: &pb::ControlRequest) -> bool {
    matches!(request.op, Some(Op::Ping(_) | Op::Metrics(_)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::fence::FencePolicy;
    use crate::sandbox::{CommandPolicy, Confinement};

    /// A dispatcher over temporary directories whose command policy is `policy`.
    fn dispatcher(policy: CommandPolicy, dirs: &tempfile::TempDir) -> Dispatcher {
        let root = dirs.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let paths = Arc::new(Paths::new(&root, "/workspace", None, true).unwrap());
        let fence = Fence::open(&dirs.path().join("state"), FencePolicy::default(), CancellationToken::new());
        let launcher = Arc::new(Launcher::from_env(std::env::vars_os(), &[] as &[&str]));
        let fence = Arc::new(fence.unwrap());
        let terminals = Arc::new(Terminals::new(
            None,
            launcher.clone(),
            fence.clone(),
            ("ws", "a"),
            std::time::Duration::from_secs(60),
        ));
        Dispatcher::new(paths, launcher, Arc::new(Sandbox::from_policy(policy)), fence, terminals)
    }

    async fn call(d: &Dispatcher, op: Op) -> pb::ControlResponse {
        let req = pb::ControlRequest { request_id: "r".into(), op: Some(op), ..Default::default() };
        pb::ControlResponse::decode(d.handle(req.encode_to_vec().into(), 1 << 20).await).unwrap()
    }

    fn touch(file: &str) -> Op {
        let command = vec!["sh".into(), "-c".into(), format!("touch {file}")];
        Op::Exec(pb::ExecRequest { command, env: HashMap::new(), ..Default::default() })
    }

    #[tokio::test]
    async fn without_landlock_exec_is_refused_before_anything_runs_unless_allowed() {
        let dirs = tempfile::tempdir().unwrap();
        let missing = Confinement::Unavailable { reason: "this kernel has no Landlock".into() };
        let refusing = CommandPolicy { confinement: missing.clone(), allow_unconfined: false };
        assert!(!Sandbox::from_policy(refusing.clone()).capabilities().admitted, "Hello must not offer exec");
        let d = dispatcher(refusing, &dirs);
        let resp = call(&d, touch("refused")).await;
        let err = resp.error.expect("exec is refused");
        assert_eq!(err.code, pb::ErrorCode::ConsentRequired as i32, "{err:?}");
        assert!(err.message.contains("no Landlock"), "{err:?}");
        assert!(!dirs.path().join("root/refused").exists(), "the command ran anyway");
        assert!(
            call(&d, Op::Ping(pb::PingRequest { nonce: 1 })).await.error.is_none(),
            "other ops still work"
        );

        let dirs = tempfile::tempdir().unwrap();
        let allowing = CommandPolicy { confinement: missing, allow_unconfined: true };
        assert!(Sandbox::from_policy(allowing.clone()).capabilities().admitted);
        let d = dispatcher(allowing, &dirs);
        let resp = call(&d, touch("allowed")).await;
        assert!(resp.error.is_none(), "{resp:?}");
        assert!(dirs.path().join("root/allowed").exists());
    }

    #[tokio::test]
    async fn a_remembered_failure_is_replayed_and_a_retry_after_a_new_id_runs() {
        let dirs = tempfile::tempdir().unwrap();
        let d = dispatcher(
            CommandPolicy { confinement: Confinement::WholeMachine, allow_unconfined: false },
            &dirs,
        );
        let write = |id: &str| {
            let op = Op::FsWrite(pb::FsWriteRequest {
                path: "missing/f".into(),
                content: Bytes::from_static(b"x"),
                ..Default::default()
            });
            pb::ControlRequest {
                request_id: id.into(),
                fence_scope: "s".into(),
                op: Some(op),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let first = d.handle(write("w1").into(), 1 << 20).await;
        let err = pb::ControlResponse::decode(first.clone()).unwrap().error.expect("no parent directory");
        assert_eq!(err.code, pb::ErrorCode::NotFound as i32, "{err:?}");
        std::fs::create_dir(dirs.path().join("root/missing")).unwrap();
        assert_eq!(d.handle(write("w1").into(), 1 << 20).await, first, "the same answer, not a second run");
        assert!(!dirs.path().join("root/missing/f").exists());
        let fresh = pb::ControlResponse::decode(d.handle(write("w2").into(), 1 << 20).await).unwrap();
        assert!(fresh.error.is_none(), "{fresh:?}");
        assert_eq!(d.replies.stats().entries, 2);
    }

    #[test]
    fn oversized_replies_become_payload_too_large() {
        let big =
            Reply::FsRead(pb::FsReadResponse { content: Bytes::from(vec![7u8; 2000]), total_size: 2000 });
        let bytes = encode("r1".into(), Ok(big), 1000);
        assert!(bytes.len() <= 1000);
        let resp = pb::ControlResponse::decode(bytes).unwrap();
        assert_eq!(resp.request_id, "r1");
        let err = resp.error.unwrap();
        assert_eq!(err.code, pb::ErrorCode::PayloadTooLarge as i32);
        assert_eq!(err.detail["max_payload"], "1000");
        assert!(err.detail["encoded_bytes"].parse::<usize>().unwrap() > 1000);
    }

    #[test]
    fn only_pings_and_metrics_are_probes_and_garbage_gets_a_protocol_reply() {
        let req = |op| pb::ControlRequest { request_id: "abc".into(), op: Some(op), ..Default::default() };
        assert!(is_probe(&req(Op::Ping(pb::PingRequest { nonce: 1 }))));
        assert!(is_probe(&req(Op::Metrics(pb::MetricsRequest {}))));
        assert!(!is_probe(&req(touch("x"))));
        let reply = decode(Bytes::from_static(&[0xff, 0xff, 0xff]), 1 << 20).unwrap_err();
        let resp = pb::ControlResponse::decode(reply).unwrap();
        assert_eq!(resp.error.unwrap().code, pb::ErrorCode::Protocol as i32);
    }
}
