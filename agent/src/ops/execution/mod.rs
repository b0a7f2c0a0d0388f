//! Long-running commands (README "Long-running commands"): exec_start / exec_attach / exec_ack
//! / exec_stdin / exec_signal / exec_wait / exec_list. An execution is named by its client
//! (exec_id, unique in its fence scope, so a retried start never runs a command twice), runs
//! exactly like a one-shot exec (same launcher, argv/shell, cwd, env, confinement, limits,
//! process group, deadline, fencing: an epoch advance kills it), and journals its output
//! (`journal`) for any number of attachments that replay and follow it (`pump`). Ended
//! executions are kept for a while so a late reader still gets the exit and the tail; the
//! state directory remembers them across an agent restart (`record`).

mod driver;
mod journal;
mod pump;
mod record;
mod run;
mod settings;
mod spill;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tether_proto::pb;
use tether_proto::subjects::{AgentSubjects, validate_token};
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::journal::Journal;
pub use self::pump::Publish;
use self::record::{Record, Records};
use self::run::{Attachment, Execution, duration_ms, unix_ms};
pub use self::settings::{ExecArgs, ExecFile, ExecSettings};
use self::spill::SpillFile;
use crate::error::{OpError, OpResult};
use crate::fence::Fence;
use crate::ops::exec::{self, check_env};
use crate::ops::pty::FencedBy;
use crate::process::{Launcher, kill_group};
use crate::sandbox::CommandLimits;

/// Longest exec_id, in bytes.
pub const MAX_EXEC_ID: usize = 128;
/// Largest chunk of output in one message (smaller when the server's max_payload is).
const CHUNK_MAX: usize = 128 << 10;
/// Room for the rest of an `ExecOutput` around its data.
const OUTPUT_OVERHEAD: usize = 512;
/// Smallest window an attachment may ask for.
const MIN_WINDOW: u64 = 64 << 10;
/// An attachment without an ack or attach for this long stops holding the pipes back.
pub const ATTACH_LEASE: Duration = Duration::from_secs(30);
/// Longest exec_wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long exec_stdin waits for the command to take its bytes.
const STDIN_WAIT: Duration = Duration::from_secs(30);
/// Pipe buffer asked of the kernel for stdout (fewer wakeups for fast producers).
const PIPE_BYTES: i32 = 1 << 20;

type Key = (String, String);

/// Every execution of this agent, and what is known of a previous instance's.
pub struct Executions {
    settings: ExecSettings,
    launcher: Arc<Launcher>,
    fence: Arc<Fence>,
    publish: Option<Publish>,
    subjects: Option<AgentSubjects>,
    /// `<state>/exec`, if there is a state directory.
    dir: Option<PathBuf>,
    records: Records,
    table: Mutex<HashMap<Key, Arc<Execution>>>,
    previous: Mutex<HashMap<Key, Record>>,
    /// Held from the lookup of an exec_id to its registration: two starts of one id run one.
    starting: tokio::sync::Mutex<()>,
    tasks: TaskTracker,
    /// Stops the publishers and spillers at shutdown, once the executions have ended.
    closing: CancellationToken,
}

impl Executions {
    /// Opens the registry: takes over the records a previous instance left in `state_dir`
    /// (killing what it left running) and clears its spill files. Blocking.
    pub fn open(
        settings: ExecSettings,
        launcher: Arc<Launcher>,
        fence: Arc<Fence>,
        state_dir: Option<&Path>,
        publish: Option<(Publish, AgentSubjects)>,
    ) -> Self {
        let dir = state_dir.map(|d| d.join("exec"));
        let records = Records::new(dir.as_ref().map(|d| d.join("records")));
        if let Some(dir) = &dir {
            spill::remove_tree(&dir.join("spill"));
        }
        let previous =
            records.take_over().into_iter().map(|r| ((r.scope.clone(), r.exec_id.clone()), r)).collect();
        let (publish, subjects) = publish.map_or((None, None), |(p, s)| (Some(p), Some(s)));
        Executions {
            settings,
            launcher,
            fence,
            publish,
            subjects,
            dir,
            records,
            table: Mutex::default(),
            previous: Mutex::new(previous),
            starting: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    pub fn settings(&self) -> &ExecSettings {
        &self.settings
    }

    /// Running executions.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|e| !e.is_ended()).count()
    }

    /// At shutdown (once the fence tokens are cancelled, which kills every execution): waits
    /// up to `grace` for them to be reaped and recorded.
    pub async fn wait_ended(&self, grace: Duration) {
        self.tasks.close();
        let deadline = Instant::now() + grace;
        while self.running() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A moment for the publishers to send the end; then they and the spillers stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.closing.cancel();
        if tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "some executions did not settle at shutdown");
        }
    }

    /// The state of an execution of that id, if one exists (or existed before a restart).
    pub fn existing(&self, scope: &str, exec_id: &str) -> OpResult<Option<pb::ExecState>> {
        check_id(exec_id)?;
        let key = (scope.to_owned(), exec_id.to_owned());
        if let Some(exec) = self.lock().get(&key) {
            return Ok(Some(exec.state()));
        }
        Ok(self.lock_previous().get(&key).map(Record::previous_state))
    }

    /// exec_start: `cwd` is resolved, `limits` prepared; `budget` bounds one chunk's message.
    pub async fn start(
        &self,
        req: pb::ExecStartRequest,
        cwd: PathBuf,
        limits: CommandLimits,
        fenced: FencedBy,
        budget: usize,
    ) -> OpResult<pb::ExecStartResponse> {
        self.prune().await;
        let one_at_a_time = self.starting.lock().await;
        let checked = self.check_start(&req, &fenced);
        let (program, args, spec) = match checked {
            Ok(Ok(checked)) => checked,
            Ok(Err(state)) => {
                drop(one_at_a_time);
                limits.settle(false).await;
                return Ok(pb::ExecStartResponse { state: Some(state), created: false });
            }
            Err(e) => {
                drop(one_at_a_time);
                limits.settle(false).await;
                return Err(e);
            }
        };
        let (cmd, merged) = match self.command(&program, &args, &cwd, &spec, &limits, req.merge_output) {
            Ok(built) => built,
            Err(e) => {
                limits.settle(false).await;
                return Err(OpError::os(format!("preparing the output pipe: {e}")));
            }
        };
        let (mut child, pgid) = match exec::spawn(cmd, &program, &cwd).await {
            Ok(spawned) => spawned,
            Err(e) => {
                limits.settle(true).await;
                return Err(e);
            }
        };
        let key = (fenced.scope.clone(), req.exec_id.clone());
        let spill = self.dir.as_ref().map(|d| SpillFile::new(d.join("spill").join(spill_name(&key))));
        let chunk_cap = CHUNK_MAX.min(budget.saturating_sub(OUTPUT_OVERHEAD + req.exec_id.len())).max(1024);
        let spill_cap = if spill.is_some() { self.settings.spill_bytes } else { 0 };
        let journal = Journal::new(chunk_cap, self.settings.memory_bytes, spill_cap);
        let command = spec.command.clone();
        let exec = Arc::new(Execution::new(key.clone(), command, pgid, journal, spill, child.stdin.take()));
        self.lock().insert(key, exec.clone());
        drop(one_at_a_time);
        tracing::info!(exec_id = %exec.id, pid = pgid.as_raw(), "execution started");

        self.record_start(&exec).await;
        let pipes: (Option<Pipe>, Option<Pipe>) = match merged {
            Some(rx) => (Some(Box::new(rx)), None),
            None => {
                if let Some(out) = &child.stdout {
                    grow_pipe(out);
                }
                (
                    child.stdout.take().map(|p| Box::new(p) as Pipe),
                    child.stderr.take().map(|p| Box::new(p) as Pipe),
                )
            }
        };
        if spec.stdin.is_empty() && !req.stdin_open {
            let _ = exec.write_stdin(Bytes::new(), 0, true, STDIN_WAIT).await;
        } else if !spec.stdin.is_empty() {
            let (feeder, close) = (exec.clone(), !req.stdin_open);
            self.tasks.spawn(async move {
                let forever = Duration::from_secs(365 * 24 * 3600);
                if let Err(e) = feeder.write_stdin(spec.stdin, 0, close, forever).await {
                    tracing::debug!(error = %e.message, "feeding an execution's stdin");
                }
            });
        }
        let deadline =
            (spec.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(spec.timeout_ms.into()));
        let driver = driver::Driver {
            exec: exec.clone(),
            limits,
            fenced,
            fence: self.fence.clone(),
            records: self.records.clone(),
        };
        self.tasks.spawn(driver.run(child, deadline, pipes));
        self.tasks.spawn(pump::spill_loop(exec.clone(), self.closing.clone()));
        Ok(pb::ExecStartResponse { state: Some(exec.state()), created: true })
    }

    /// What exec_start needs: an existing execution's state (nothing is started), or the
    /// program, arguments and request to run.
    #[allow(clippy::type_complexity)]
    fn check_start(
        &self,
        req: &pb::ExecStartRequest,
        fenced: &FencedBy,
    ) -> OpResult<Result<(OsString, Vec<OsString>, pb::ExecRequest), pb::ExecState>> {
        if let Some(state) = self.existing(&fenced.scope, &req.exec_id)? {
            return Ok(Err(state));
        }
        if fenced.cancel.is_cancelled() {
            return Err(OpError::cancelled());
        }
        let spec = req.exec.clone().ok_or_else(|| OpError::protocol("exec_start carries no command"))?;
        let (program, args) = exec::argv(&self.launcher, &spec)?;
        check_env(&spec.env)?;
        Ok(Ok((program, args, spec)))
    }

    /// The launcher's command, with stdout and stderr in one pipe when `merge` asks.
    fn command(
        &self,
        program: &OsString,
        args: &[OsString],
        cwd: &Path,
        spec: &pb::ExecRequest,
        limits: &CommandLimits,
        merge: bool,
    ) -> io::Result<(tokio::process::Command, Option<tokio::net::unix::pipe::Receiver>)> {
        let mut cmd = self.launcher.command(program, args, cwd, &spec.env, &limits.hooks());
        if !merge {
            return Ok((cmd, None));
        }
        let (tx, rx) = tokio::net::unix::pipe::pipe()?;
        let write = tx.into_blocking_fd()?;
        cmd.stdout(Stdio::from(write.try_clone()?)).stderr(Stdio::from(write));
        grow_pipe(&rx);
        Ok((cmd, Some(rx)))
    }

    async fn record_start(&self, exec: &Execution) {
        let record = Record {
            scope: exec.scope.clone(),
            exec_id: exec.id.clone(),
            command: exec.command.clone(),
            started_at_ms: exec.started_at_ms,
            pid: exec.pgid.as_raw(),
            proc_start: None,
            end: None,
        };
        let records = self.records.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let proc_start = record::proc_start(record.pid);
            records.write(&Record { proc_start, ..record });
        })
        .await;
    }

    /// exec_attach: (re)starts publishing from `from_seq` to the attachment's subject.
    pub async fn attach(&self, scope: &str, req: pb::ExecAttachRequest) -> OpResult<pb::ExecAttachResponse> {
        let subject = self.subject(scope, &req.exec_id, &req.subject)?;
        let exec = match self.get(scope, &req.exec_id)? {
            Found::Live(exec) => exec,
            Found::Previous(state) => {
                return Ok(pb::ExecAttachResponse {
                    state: Some(state),
                    subject,
                    first_seq: 0,
                    max_chunk: 0,
                });
            }
        };
        let Some(publish) = self.publish.clone() else {
            return Err(OpError::unsupported("this agent has no connection to publish output on"));
        };
        let window = match req.window_bytes {
            0 => self.settings.window_bytes,
            w => w.clamp(MIN_WINDOW, self.settings.memory_bytes as u64),
        };
        let (spawn, response) = {
            let mut inner = exec.lock();
            let journal = &inner.journal;
            let from = req.from_seq.min(journal.next_seq());
            let (first_seq, _) = journal.first();
            let pos =
                if from < first_seq { req.from_offset.min(journal.first().1) } else { journal.pos_of(from) };
            let lease = Instant::now() + ATTACH_LEASE;
            let state = exec.state_of(&inner);
            let spawn = match inner.attachments.get_mut(&subject) {
                Some(a) => {
                    *a = Attachment {
                        cursor: (from, pos),
                        generation: a.generation + 1,
                        acked: pos,
                        window,
                        lease,
                        gap: 0,
                    };
                    false
                }
                None => {
                    let a =
                        Attachment { cursor: (from, pos), generation: 0, acked: pos, window, lease, gap: 0 };
                    inner.attachments.insert(subject.clone(), a);
                    true
                }
            };
            let max_chunk = CHUNK_MAX as u64;
            (
                spawn,
                pb::ExecAttachResponse { state: Some(state), subject: subject.clone(), first_seq, max_chunk },
            )
        };
        if spawn {
            self.tasks.spawn(pump::publish_loop(exec.clone(), subject, publish, self.closing.clone()));
        }
        exec.bump();
        Ok(response)
    }

    /// exec_ack: the attachment received every chunk below `seq`.
    pub fn ack(&self, scope: &str, req: pb::ExecAckRequest) -> OpResult<pb::ExecAckResponse> {
        let subject = self.subject(scope, &req.exec_id, &req.subject)?;
        let Found::Live(exec) = self.get(scope, &req.exec_id)? else {
            return Ok(pb::ExecAckResponse { attached: false });
        };
        let attached = {
            let mut inner = exec.lock();
            let pos = inner.journal.pos_of(req.seq);
            match inner.attachments.get_mut(&subject) {
                Some(a) => {
                    a.acked = a.acked.max(pos.min(a.cursor.1));
                    a.lease = Instant::now() + ATTACH_LEASE;
                    true
                }
                None => false,
            }
        };
        exec.bump();
        Ok(pb::ExecAckResponse { attached })
    }

    /// exec_stdin.
    pub async fn stdin(&self, scope: &str, req: pb::ExecStdinRequest) -> OpResult<pb::ExecStdinResponse> {
        let exec = self.live(scope, &req.exec_id)?;
        exec.write_stdin(req.data, req.offset, req.close, STDIN_WAIT).await
    }

    /// exec_signal: to the whole process group, while the command runs.
    pub fn signal(&self, scope: &str, req: pb::ExecSignalRequest) -> OpResult<pb::ExecSignalResponse> {
        let exec = self.live(scope, &req.exec_id)?;
        let signal = match pb::ExecSignal::try_from(req.signal) {
            Ok(pb::ExecSignal::Term) => Signal::SIGTERM,
            Ok(pb::ExecSignal::Int) => Signal::SIGINT,
            Ok(pb::ExecSignal::Kill) => Signal::SIGKILL,
            Ok(pb::ExecSignal::Hup) => Signal::SIGHUP,
            _ => return Err(OpError::protocol(format!("unknown signal {}", req.signal))),
        };
        kill_group(exec.pgid, signal).map_err(|e| OpError::os(format!("signalling {:?}: {e}", exec.id)))?;
        Ok(pb::ExecSignalResponse {})
    }

    /// exec_wait: the state once the execution ends, or after `timeout_ms` (at most 60 s).
    pub async fn wait(&self, scope: &str, req: pb::ExecWaitRequest) -> OpResult<pb::ExecState> {
        let exec = match self.get(scope, &req.exec_id)? {
            Found::Live(exec) => exec,
            Found::Previous(state) => return Ok(state),
        };
        let until = Instant::now() + Duration::from_millis(req.timeout_ms.into()).min(MAX_WAIT);
        let mut changed = exec.watch();
        loop {
            changed.borrow_and_update();
            if exec.is_ended() || Instant::now() >= until {
                return Ok(exec.state());
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// exec_list: the scope's executions, oldest first.
    pub async fn list(&self, scope: &str) -> pb::ExecListResponse {
        self.prune().await;
        let mut executions: Vec<pb::ExecState> =
            self.lock().values().filter(|e| e.scope == scope).map(|e| e.state()).collect();
        executions
            .extend(self.lock_previous().values().filter(|r| r.scope == scope).map(Record::previous_state));
        executions.sort_by(|a, b| (a.started_at_ms, &a.exec_id).cmp(&(b.started_at_ms, &b.exec_id)));
        pb::ExecListResponse { executions }
    }

    /// Forgets ended executions past the retention time or count, oldest first.
    async fn prune(&self) {
        let now = Instant::now();
        let retention = self.settings.retention;
        let forgotten: Vec<Arc<Execution>> = {
            let mut table = self.lock();
            let mut ended: Vec<(Instant, Key)> = table
                .iter()
                .filter_map(|(k, e)| e.lock().end.as_ref().map(|end| (end.at, k.clone())))
                .collect();
            ended.sort();
            let over = ended.len().saturating_sub(self.settings.retained);
            let expired =
                |(i, (at, _)): &(usize, &(Instant, Key))| *i < over || now.duration_since(*at) > retention;
            let keys: Vec<Key> =
                ended.iter().enumerate().filter(expired).map(|(_, (_, k))| k.clone()).collect();
            keys.iter().filter_map(|k| table.remove(k)).collect()
        };
        let cutoff = unix_ms(SystemTime::now()).saturating_sub(duration_ms(retention));
        let stale: Vec<Record> = {
            let mut previous = self.lock_previous();
            let keys: Vec<Key> =
                previous.iter().filter(|(_, r)| r.last_ms() < cutoff).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| previous.remove(k)).collect()
        };
        if forgotten.is_empty() && stale.is_empty() {
            return;
        }
        let records = self.records.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for exec in forgotten {
                if let Some(spill) = &exec.spill {
                    spill.remove();
                }
                records.remove(&exec.scope, &exec.id);
            }
            for r in stale {
                records.remove(&r.scope, &r.exec_id);
            }
        })
        .await;
    }

    fn get(&self, scope: &str, exec_id: &str) -> OpResult<Found> {
        check_id(exec_id)?;
        let key = (scope.to_owned(), exec_id.to_owned());
        if let Some(exec) = self.lock().get(&key) {
            return Ok(Found::Live(exec.clone()));
        }
        if let Some(record) = self.lock_previous().get(&key) {
            return Ok(Found::Previous(record.previous_state()));
        }
        Err(OpError::new(pb::ErrorCode::NotFound, format!("no execution {exec_id:?} in this fence scope"))
            .with("exec_id", exec_id))
    }

    /// A running execution; one that ended (in this instance or before a restart) is an OS
    /// error that says so.
    fn live(&self, scope: &str, exec_id: &str) -> OpResult<Arc<Execution>> {
        let state = match self.get(scope, exec_id)? {
            Found::Live(exec) if !exec.is_ended() => return Ok(exec),
            Found::Live(exec) => exec.state(),
            Found::Previous(state) => state,
        };
        Err(OpError::os(format!("execution {exec_id:?} has ended: {}", state.end_reason))
            .with("exec_id", exec_id)
            .with("status", pb::ExecStatus::try_from(state.status).map_or("unknown", |s| s.as_str_name())))
    }

    /// The subject an attachment publishes to: the client's inbox, or the default one.
    fn subject(&self, scope: &str, exec_id: &str, asked: &str) -> OpResult<String> {
        check_id(exec_id)?;
        let Some(subjects) = &self.subjects else { return Ok(asked.to_owned()) };
        if asked.is_empty() {
            return Ok(match scope {
                "" => subjects.exec_output(exec_id),
                _ => subjects.exec_output(&format!(
                    "{exec_id}-{}",
                    &spill_name(&(scope.to_owned(), String::new()))[..8]
                )),
            });
        }
        let own = format!("{subjects}.exec.");
        let valid =
            asked.len() <= 256 && asked.split('.').all(|t| validate_token("subject token", t).is_ok());
        if !valid || !(asked.starts_with("_INBOX.") || asked.starts_with(&own)) {
            return Err(OpError::protocol(format!(
                "an output subject must be a literal subject under _INBOX. or {own}"
            ))
            .with("subject", asked));
        }
        Ok(asked.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Execution>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_previous(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.previous.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Found {
    Live(Arc<Execution>),
    Previous(pb::ExecState),
}

pub(crate) type Pipe = Box<dyn AsyncRead + Unpin + Send>;

/// An exec_id is one NATS token of at most [`MAX_EXEC_ID`] bytes.
fn check_id(exec_id: &str) -> OpResult<()> {
    if exec_id.len() > MAX_EXEC_ID || validate_token("exec_id", exec_id).is_err() {
        return Err(OpError::protocol(format!(
            "exec_id {exec_id:?} must be one NATS token (no '.', '*', '>' or whitespace) of at most {MAX_EXEC_ID} bytes"
        )));
    }
    Ok(())
}

/// A file-system-safe name for an execution's spill file.
fn spill_name((scope, id): &Key) -> String {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks for a bigger pipe buffer (best effort).
fn grow_pipe(pipe: &impl AsFd) {
    #[cfg(target_os = "linux")]
    let _ = nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
}
