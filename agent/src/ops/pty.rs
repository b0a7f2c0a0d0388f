//! Terminals (`PROTOCOL.md` §5): pty_open / pty_write / pty_resize / pty_close. Each terminal
//! is a shell in a pseudo-terminal ([`terminal`]) whose bytes stream through the relay on its
//! own channel (a [`Pump`]); a supervisor task ([`session`]) ends it when the process exits, on
//! pty_close, on an epoch advance of its fence scope, on agent shutdown, or when idle.
//!
//! A non-empty scope_id makes pty_open idempotent: while that scope's terminal lives, the same
//! pty_id and channel come back and no second shell starts. A terminal belongs to the fence
//! scope (the control-plane session) that opened it: its scope_id names it only within that
//! fence scope, and pty_write, pty_resize and pty_close of another fence scope find no such
//! terminal (NOT_FOUND, as for one that never was), so one session cannot type into, watch the
//! channel of, or close another's shell. Opens are serialised only while
//! they look up the scope and register a new terminal, not while they wait for the relay to
//! accept its channel (up to `OPEN_WAIT`): a reopen of a live scope waits for that terminal's
//! own acceptance, never behind an unrelated open.

mod session;
pub mod terminal;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether_proto::pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use self::session::{Session, Supervision};
use self::terminal::{Spec, Terminal};
use crate::config::RelayLink;
use crate::error::{OpError, OpResult};
use crate::fence::Fence;
use crate::ops::exec::{check_env, spawn_error};
use crate::process::Launcher;
use crate::sandbox::CommandLimits;
use crate::stream::link::LinkError;
use crate::stream::pump::{Endpoint, Pump};

/// How long pty_open waits for the relay to accept the channel.
const OPEN_WAIT: Duration = Duration::from_secs(15);
/// Bytes of recent output each terminal keeps to resend after a relay restart.
const OUTBOX_BYTES: usize = 4 << 20;
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;
const DEFAULT_TERM: &str = "xterm-256color";

/// The fence position of the pty_open that started a terminal.
pub struct FencedBy {
    pub scope: String,
    pub epoch: u32,
    /// Fires on an advance of `scope` past `epoch`, or on agent shutdown.
    pub cancel: CancellationToken,
    /// Held until the work has ended: an advance of `scope` waits for it (see `fence`).
    pub running: Option<TaskTrackerToken>,
}

impl FencedBy {
    /// The fence of work admitted by `admission` at (`scope`, `epoch`).
    pub fn of(scope: &str, epoch: u32, admission: &crate::fence::Admission) -> FencedBy {
        FencedBy {
            scope: scope.to_owned(),
            epoch,
            cancel: admission.cancel.clone(),
            running: admission.running(),
        }
    }
}

/// Live terminals, by pty_id and by (fence scope, scope_id).
#[derive(Default)]
pub(crate) struct Table {
    by_id: HashMap<String, Arc<Session>>,
    by_scope: HashMap<(String, String), String>,
}

impl Table {
    /// The scope no longer maps to this (ended) terminal.
    fn release_scope(&mut self, session: &Session) {
        let key = (session.fence_scope.clone(), session.scope_id.clone());
        if self.by_scope.get(&key).is_some_and(|id| *id == session.id) {
            self.by_scope.remove(&key);
        }
    }

    fn remove(&mut self, session: &Session) {
        self.release_scope(session);
        self.by_id.remove(&session.id);
    }
}

/// Every terminal of this agent.
pub struct Terminals {
    relay: Option<RelayLink>,
    launcher: Arc<Launcher>,
    fence: Arc<Fence>,
    workspace_id: String,
    agent_id: String,
    idle_timeout: Duration,
    table: Arc<Mutex<Table>>,
    /// Held from a scope lookup to the registration of the terminal it starts, so two
    /// concurrent opens of one scope_id start one shell.
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// The pumps, so shutdown can let them deliver their StreamClose.
    pumps: TaskTracker,
}

impl Terminals {
    pub fn new(
        relay: Option<RelayLink>,
        launcher: Arc<Launcher>,
        fence: Arc<Fence>,
        (workspace_id, agent_id): (&str, &str),
        idle_timeout: Duration,
    ) -> Self {
        Terminals {
            relay,
            launcher,
            fence,
            workspace_id: workspace_id.to_owned(),
            agent_id: agent_id.to_owned(),
            idle_timeout,
            table: Arc::default(),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
            pumps: TaskTracker::new(),
        }
    }

    /// Live terminals.
    pub fn count(&self) -> usize {
        self.lock().by_id.values().filter(|s| !s.is_ending()).count()
    }

    /// At shutdown (once the fence tokens are cancelled, which ends every terminal): waits up to
    /// `grace` for the pumps to tell the relay their channels are closed.
    pub async fn wait_closed(&self, grace: Duration) {
        self.pumps.close();
        if tokio::time::timeout(grace, self.pumps.wait()).await.is_err() {
            tracing::warn!(left = self.pumps.len(), "some terminal channels were not closed on the relay");
        }
    }

    /// pty_open: `cwd` is already resolved through the path rules, `limits` prepared.
    pub async fn open(
        &self,
        req: pb::PtyOpenRequest,
        cwd: PathBuf,
        limits: CommandLimits,
        fenced: FencedBy,
    ) -> OpResult<pb::PtyOpenResponse> {
        let checked = self.check(&req);
        let one_at_a_time = self.opening.lock().await;
        let checked = match (checked, self.by_scope(&fenced.scope, &req.scope_id)) {
            (Ok(_), Some(live)) => {
                drop(one_at_a_time);
                limits.settle(false).await;
                live.wait_accepted(OPEN_WAIT).await?;
                return Ok(live.opened());
            }
            (Ok(_), None) if fenced.cancel.is_cancelled() => Err(OpError::cancelled()),
            (checked, _) => checked,
        };
        let (relay, program, args) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                drop(one_at_a_time);
                limits.settle(false).await;
                return Err(e);
            }
        };
        let mut env = req.env;
        env.insert("TERM".into(), if req.term.is_empty() { DEFAULT_TERM.into() } else { req.term });
        let spec = Spec {
            program,
            args,
            cwd: cwd.clone(),
            env,
            cols: dimension(req.cols, DEFAULT_COLS),
            rows: dimension(req.rows, DEFAULT_ROWS),
            hooks: limits.hooks(),
        };
        let program_name = spec.program.clone();
        let launcher = self.launcher.clone();
        let turn = super::exec::spawn_turn().await;
        let spawned = tokio::task::spawn_blocking(move || Terminal::spawn(&launcher, spec)).await;
        drop(turn);
        let spawned =
            spawned.unwrap_or_else(|e| Err(std::io::Error::other(format!("spawning the terminal: {e}"))));
        let terminal = match spawned {
            Ok(terminal) => terminal,
            Err(e) => {
                drop(one_at_a_time);
                limits.settle(true).await;
                return Err(spawn_error(&e, &program_name, &cwd));
            }
        };
        let id = self.new_id();
        let channel = pb::StreamChannel {
            channel_id: id.clone(),
            workspace_id: self.workspace_id.clone(),
            agent_id: self.agent_id.clone(),
            kind: pb::StreamKind::Pty as i32,
            port: tether_proto::PTY_PORT,
        };
        let Terminal { master, child, pgid, output, input, drained } = terminal;
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        let (end_tx, end_rx) = oneshot::channel();
        let (viewers_tx, viewers_rx) = watch::channel(0);
        let endpoint = Endpoint { output, inbound: inbound_tx, end: end_rx, viewers: viewers_tx };
        let (accepted_tx, accepted_rx) = oneshot::channel();
        let pump = Pump::new(relay, channel.clone(), endpoint, OUTBOX_BYTES);
        // The terminal outlives the request that opened it: its tasks log under their own span.
        let span = tracing::info_span!(parent: None, "terminal", pty_id = %id);
        self.pumps.spawn(pump.run(accepted_tx).instrument(span.clone()));

        let fence_token = fenced.cancel.clone();
        let owner = (fenced.scope.clone(), req.scope_id.clone());
        let session = Arc::new(Session::new(id.clone(), owner.clone(), channel, master, input, fence_token));
        {
            let mut table = self.lock();
            table.by_id.insert(id.clone(), session.clone());
            if !req.scope_id.is_empty() {
                table.by_scope.insert(owner, id.clone());
            }
        }
        // Registered: a reopen of the scope finds this terminal and waits for its acceptance.
        drop(one_at_a_time);
        let supervision = Supervision {
            child,
            pgid,
            drained,
            end: end_tx,
            inbound: inbound_rx,
            viewers: viewers_rx,
            fence: self.fence.clone(),
            fenced,
            idle_timeout: self.idle_timeout,
            table: self.table.clone(),
            limits,
        };
        tokio::spawn(session.clone().supervise(supervision).instrument(span));
        tracing::info!(pty_id = %id, pid = pgid.as_raw(), "terminal started");

        let accepted = match tokio::time::timeout(OPEN_WAIT, accepted_rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            failed => {
                session.request_close();
                let message = match failed {
                    Ok(Ok(Err(LinkError::Refused(e)))) => {
                        format!("the relay refused the terminal's channel: {}", e.message)
                    }
                    Ok(Ok(Err(e))) => e.to_string(),
                    _ => format!("the relay did not accept the terminal's channel within {OPEN_WAIT:?}"),
                };
                Err(session::not_accepted(message))
            }
        };
        session.set_accepted(accepted.clone());
        accepted.map(|()| session.opened())
    }

    /// pty_write: the bytes are queued for the terminal in order; returns how many.
    pub async fn write(&self, fence_scope: &str, req: pb::PtyWriteRequest) -> OpResult<pb::PtyWriteResponse> {
        let session = self.get(fence_scope, &req.pty_id)?;
        let len = req.data.len() as u64;
        session.type_in(req.data).await?;
        Ok(pb::PtyWriteResponse { bytes_written: len })
    }

    /// pty_resize.
    pub fn resize(&self, fence_scope: &str, req: pb::PtyResizeRequest) -> OpResult<pb::PtyResizeResponse> {
        if req.cols == 0 || req.rows == 0 {
            return Err(OpError::protocol(format!("a terminal cannot be {}x{}", req.cols, req.rows)));
        }
        let session = self.get(fence_scope, &req.pty_id)?;
        session.resize(dimension(req.cols, DEFAULT_COLS), dimension(req.rows, DEFAULT_ROWS))?;
        Ok(pb::PtyResizeResponse {})
    }

    /// pty_close: ends the terminal (hang-up, then kill) and returns its exit code, -1 if it
    /// was still running and had to be killed.
    pub async fn close(&self, fence_scope: &str, req: pb::PtyCloseRequest) -> OpResult<pb::PtyCloseResponse> {
        let session = self.get(fence_scope, &req.pty_id)?;
        session.request_close();
        Ok(pb::PtyCloseResponse { exit_code: session.exit_code().await })
    }

    /// What pty_open needs before it spawns: a relay, an environment the OS can carry, a program.
    fn check(&self, req: &pb::PtyOpenRequest) -> OpResult<(RelayLink, OsString, Vec<OsString>)> {
        let relay = self.relay.clone().ok_or_else(|| {
            OpError::unsupported(
                "terminals need a relay: start the agent with --relay-url (TETHER_RELAY_URL)",
            )
        })?;
        check_env(&req.env)?;
        let (program, args) = self.argv(req)?;
        Ok((relay, program, args))
    }

    fn argv(&self, req: &pb::PtyOpenRequest) -> OpResult<(OsString, Vec<OsString>)> {
        match req.command.split_first() {
            None => Ok((self.launcher.shell().into_os_string(), vec!["-l".into()])),
            Some((program, args)) if !program.is_empty() => {
                Ok((program.into(), args.iter().map(OsString::from).collect()))
            }
            Some(_) => Err(OpError::os("the command's program is empty")),
        }
    }

    fn by_scope(&self, fence_scope: &str, scope_id: &str) -> Option<Arc<Session>> {
        if scope_id.is_empty() {
            return None;
        }
        let table = self.lock();
        let key = (fence_scope.to_owned(), scope_id.to_owned());
        table.by_scope.get(&key).and_then(|id| table.by_id.get(id)).filter(|s| !s.is_ending()).cloned()
    }

    /// The terminal `pty_id` if `fence_scope` opened it: another scope's is NOT_FOUND, exactly
    /// as one that never existed, so its existence does not leak either.
    fn get(&self, fence_scope: &str, pty_id: &str) -> OpResult<Arc<Session>> {
        let table = self.lock();
        let owned = table.by_id.get(pty_id).filter(|s| s.fence_scope == fence_scope);
        owned.cloned().ok_or_else(|| {
            OpError::new(pb::ErrorCode::NotFound, format!("no terminal {pty_id:?} (it may have ended)"))
                .with("pty_id", pty_id)
        })
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("pty-{nanos:x}-{n}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A terminal dimension from the wire: 0 means the default, and the kernel takes 16 bits.
fn dimension(v: u32, default: u16) -> u16 {
    if v == 0 { default } else { u16::try_from(v).unwrap_or(u16::MAX) }
}
