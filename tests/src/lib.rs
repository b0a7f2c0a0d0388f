//! Test harness: real `nats-server` on a free loopback port, the real `tether-agent` and
//! `tetherctl` binaries, and a raw NATS control-plane helper. Every process started here is
//! killed when its handle drops, so a failing test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod bench;
pub mod browser;
pub mod execs;
pub mod relay;
pub mod relay_cluster;
pub mod rr_proxy;
pub mod ssh;
pub mod tree;
pub mod watch;
pub mod xvfb;

use anyhow::{Context, bail};
use futures::StreamExt;
use prost::Message;
pub use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;

/// How long any wait in the harness may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A path to a binary of this workspace, built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from target/<profile>/deps/, a harness binary from target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The client port in a nats-server ports file (`{"nats":["nats://127.0.0.1:4222"],...}`).
fn client_port(ports_file: &str) -> Option<u16> {
    // `nats://host:port`, or `tls://host:port` for a server with TLS.
    let (at, scheme) = ["nats://", "tls://"].iter().find_map(|s| Some((ports_file.find(s)?, s.len())))?;
    let rest = &ports_file[at + scheme..];
    let addr = &rest[..rest.find('"')?];
    addr.rsplit(':').next()?.parse().ok()
}

/// Nanoseconds of the wall clock: with the pid and a counter, unique enough for test tokens.
fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A number unique within this test process.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    child: Option<Child>,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { child: Some(child), name })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("already reaped")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's stdout, when it was piped (to feed another process, say).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits (bounded) for the exit; a process still running after that is
    /// killed on drop as usual. Nothing happens once the process was reaped.
    pub fn stop(&mut self, within: Duration) {
        if self.child.is_some() && self.try_status().is_none() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = self.wait_exit(within);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A real nats-server on a free loopback port.
pub struct Nats {
    pub url: String,
    pub port: u16,
    /// The token clients must present, when the server requires one.
    pub token: Option<String>,
    extra: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Nats {
    /// A server that requires a token from every client, as every real deployment must (the
    /// agent refuses an open server): the harness passes it to the agents and tools it starts.
    pub async fn start() -> Nats {
        Self::start_with("").await
    }

    /// Starts with extra server configuration, e.g. `max_payload: 65536`, and a fresh token.
    /// The server picks its own free port and reports it in a ports file, so parallel tests
    /// cannot collide.
    pub async fn start_with(extra_config: &str) -> Nats {
        let token = format!("test-token-{}-{}-{}", std::process::id(), next_id(), nanos());
        Self::start_with_token_and(&token, extra_config).await
    }

    /// Starts a server that lets anyone in without credentials (what the agent refuses).
    pub async fn start_open() -> Nats {
        Self::start_raw("", None).await
    }

    /// Starts a server that requires `token` from every client.
    pub async fn start_with_token(token: &str) -> Nats {
        Self::start_with_token_and(token, "").await
    }

    async fn start_with_token_and(token: &str, extra_config: &str) -> Nats {
        let config = format!("authorization {{ token: \"{token}\" }}\n{extra_config}");
        Self::start_raw(&config, Some(token.to_owned())).await
    }

    async fn start_raw(extra_config: &str, token: Option<String>) -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let (proc, port) = Self::launch(dir.path(), "-1", extra_config).await;
        Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            token,
            extra: extra_config.to_owned(),
            _dir: dir,
            _proc: proc,
        }
    }

    /// Starts a server whose configuration `include`s the authorization file `auth` (as
    /// `tetherctl enrollment create` writes it) on a free loopback port; [`Nats::reload`] makes
    /// it read the file again. Clients need their own credentials (no harness token).
    pub async fn start_including(auth: &Path) -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("auth.conf");
        std::os::unix::fs::symlink(auth, &local).expect("link the auth file beside nats.conf");
        let extra = "include \"auth.conf\"".to_owned();
        let (proc, port) = Self::launch(dir.path(), "-1", &extra).await;
        Nats { url: format!("nats://127.0.0.1:{port}"), port, token: None, extra, _dir: dir, _proc: proc }
    }

    /// Makes the server read its configuration (and the files it includes) again.
    pub fn reload(&self) {
        self._proc.signal(nix::sys::signal::Signal::SIGHUP);
    }

    /// Gives `cmd` (an agent, tetherctl) this server's credentials, the way an operator would:
    /// in the environment, never on the command line.
    pub fn auth_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        if let Some(token) = &self.token {
            cmd.env("TETHER_NATS_TOKEN", token);
        }
        cmd
    }

    async fn launch(dir: &Path, port: &str, extra_config: &str) -> (Proc, u16) {
        let conf = dir.join("nats.conf");
        let config = format!("listen: \"127.0.0.1:{port}\"\nports_file_dir: {dir:?}\n{extra_config}\n");
        std::fs::write(&conf, config).expect("write nats.conf");
        let mut proc = Proc::spawn(
            "nats-server",
            Command::new("nats-server").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()),
        )
        .unwrap_or_else(|e| {
            panic!("{e:#}: is nats-server installed? (apt-get install nats-server, or scripts/setup.sh)")
        });
        let ports_file = dir.join(format!("nats-server_{}.ports", proc.pid()));
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(proc.try_status().is_none(), "nats-server exited at start (port {port} taken?)");
            let reported = std::fs::read_to_string(&ports_file).ok().and_then(|text| client_port(&text));
            if let Some(port) = reported.filter(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()) {
                return (proc, port);
            }
            assert!(Instant::now() < deadline, "nats-server did not report a listening port");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server and starts a new one on the same port: every client must reconnect.
    /// Kills the server (until [`Nats::restart`]): clients lose their connection.
    pub fn stop(&mut self) {
        self._proc = Proc { child: None, name: "nats-server" };
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// Kills the server (an outage); [`Nats::start_again`] brings it back on the same port.
    pub fn kill(&mut self) {
        self._proc = Proc { child: None, name: "nats-server" };
    }

    /// Starts the server again on its port (after [`Nats::kill`]); returns once it listens.
    pub async fn start_again(&mut self) {
        let (proc, _) = Self::launch(self._dir.path(), &self.port.to_string(), &self.extra).await;
        self._proc = proc;
    }

    pub async fn client(&self) -> async_nats::Client {
        let options = match &self.token {
            Some(token) => async_nats::ConnectOptions::with_token(token.clone()),
            None => async_nats::ConnectOptions::new(),
        };
        // Requests are bounded by the callers' own (longer) timeouts: the client's 10 s default
        // failed slow-but-correct requests (300 remapped characters typed) on a loaded machine.
        options
            .request_timeout(Some(Duration::from_secs(60)))
            .connect(&self.url)
            .await
            .expect("connect to test nats-server")
    }
}

/// Options for one agent under test.
#[derive(Default, Clone)]
pub struct AgentOpts {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reuse a state directory (restart tests).
    pub state_dir: Option<PathBuf>,
    /// Reuse a workspace root.
    pub root: Option<PathBuf>,
    pub agent_id: Option<String>,
    /// Stream terminals through this relay (`ws://.../stream`); the harness mints the agent's
    /// producer token with [`relay::PRODUCER_SECRET`].
    pub relay_url: Option<String>,
    /// Run this agent binary instead of the workspace's `tether-agent` (a build with other
    /// features, e.g. `tether-agent-portable`).
    pub program: Option<PathBuf>,
}

/// A running `tether-agent` and a control-plane connection to it.
pub struct Agent {
    pub ws: String,
    pub id: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub hello: pb::Hello,
    pub nc: async_nats::Client,
    pub proc: Proc,
    pub log: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

/// An agent is stopped the way an operator stops it (SIGTERM), so it cleans up after itself
/// (its cgroups, its private temp directory) as it would in production.
impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

impl Agent {
    /// Starts an agent and waits for its Hello.
    pub async fn start(nats: &Nats) -> Agent {
        Self::start_with(nats, AgentOpts::default()).await
    }

    pub async fn start_with(nats: &Nats, opts: AgentOpts) -> Agent {
        let mut dirs = Vec::new();
        let mut dir_or_temp = |given: Option<PathBuf>| {
            given.unwrap_or_else(|| {
                let d = tempfile::tempdir().expect("tempdir");
                let p = d.path().canonicalize().expect("canonical tempdir");
                dirs.push(d);
                p
            })
        };
        let root = dir_or_temp(opts.root.clone());
        let state_dir = dir_or_temp(opts.state_dir.clone());
        let logs = dir_or_temp(None);
        let ws = "ws1".to_owned();
        let id =
            opts.agent_id.clone().unwrap_or_else(|| format!("agent{}-{}", std::process::id(), next_id()));
        let nc = nats.client().await;
        let mut hellos = nc.subscribe(format!("agent.{ws}.{id}.hello")).await.expect("subscribe hello");
        nc.flush().await.expect("flush");
        let (proc, log) = spawn_agent(nats, &ws, &id, &root, &state_dir, &logs, &opts).expect("spawn agent");
        let msg = tokio::time::timeout(WAIT, hellos.next())
            .await
            .unwrap_or_else(|_| panic!("no Hello within {WAIT:?}; agent log:\n{}", read_log(&log)))
            .expect("hello subscription");
        let hello = pb::Hello::decode(msg.payload).expect("decode Hello");
        Agent { ws, id, root, state_dir, hello, nc, proc, log, _dirs: dirs }
    }

    pub fn rpc_subject(&self) -> String {
        format!("agent.{}.{}.rpc", self.ws, self.id)
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Sends raw bytes as a request and decodes the reply.
    pub async fn request_raw(&self, payload: Vec<u8>) -> pb::ControlResponse {
        let msg = tokio::time::timeout(
            Duration::from_secs(60),
            self.nc.request(self.rpc_subject(), payload.into()),
        )
        .await
        .expect("request timed out")
        .expect("request failed");
        pb::ControlResponse::decode(msg.payload).expect("decode ControlResponse")
    }

    /// Sends `op` with a fence scope and epoch; returns the result or the agent's error.
    pub async fn call_fenced(&self, op: Op, scope: &str, epoch: u32) -> Result<Reply, pb::AgentError> {
        let request_id = format!("t-{}", next_id());
        let req = pb::ControlRequest {
            request_id: request_id.clone(),
            epoch,
            fence_scope: scope.to_owned(),
            op: Some(op),
            ..Default::default()
        };
        let resp = self.request_raw(req.encode_to_vec()).await;
        assert_eq!(resp.request_id, request_id, "reply must echo the request id");
        match (resp.error, resp.result) {
            (Some(err), None) => Err(err),
            (None, Some(result)) => Ok(result),
            other => panic!("reply must carry exactly one of error/result: {other:?}"),
        }
    }

    /// Sends `op` unfenced (epoch 0, no scope).
    pub async fn call(&self, op: Op) -> Result<Reply, pb::AgentError> {
        self.call_fenced(op, "", 0).await
    }

    /// Sends `op` unfenced with a resource policy.
    pub async fn call_limited(
        &self,
        op: Op,
        policy: pb::OperationResourcePolicy,
    ) -> Result<Reply, pb::AgentError> {
        let request_id = format!("t-{}", next_id());
        let req = pb::ControlRequest {
            request_id: request_id.clone(),
            resource_policy: Some(policy),
            op: Some(op),
            ..Default::default()
        };
        let resp = self.request_raw(req.encode_to_vec()).await;
        assert_eq!(resp.request_id, request_id, "reply must echo the request id");
        match (resp.error, resp.result) {
            (Some(err), None) => Err(err),
            (None, Some(result)) => Ok(result),
            other => panic!("reply must carry exactly one of error/result: {other:?}"),
        }
    }

    /// The capabilities the agent announced.
    pub fn caps(&self) -> &pb::Capabilities {
        self.hello.capabilities.as_ref().expect("Hello carries capabilities")
    }

    /// `tetherctl` preconfigured for this agent.
    pub fn tetherctl(&self, nats: &Nats) -> Command {
        let mut cmd = tetherctl();
        cmd.env("TETHER_NATS_URL", &nats.url)
            .env("TETHER_WORKSPACE_ID", &self.ws)
            .env("TETHER_AGENT_ID", &self.id);
        nats.auth_env(&mut cmd);
        cmd
    }
}

/// `tetherctl` inheriting none of the `TETHER_*` settings and secrets of the environment the
/// tests run in: each test sets exactly what its story needs.
pub fn tetherctl() -> Command {
    let mut cmd = Command::new(bin("tetherctl"));
    without_tether_env(&mut cmd);
    cmd
}

/// Keeps the `TETHER_*` variables of the test environment from `cmd`.
pub fn without_tether_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn spawn_agent(
    nats: &Nats,
    ws: &str,
    id: &str,
    root: &Path,
    state_dir: &Path,
    logs: &Path,
    opts: &AgentOpts,
) -> anyhow::Result<(Proc, PathBuf)> {
    let log = logs.join("agent.log");
    let mut cmd = Command::new(opts.program.clone().unwrap_or_else(|| bin("tether-agent")));
    cmd.arg("run")
        .args(["--nats-url", &nats.url, "--workspace-id", ws, "--agent-id", id])
        .arg("--workspace-root")
        .arg(root)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--heartbeat-interval", "200ms"]);
    let own_auth = ["--nats-token-file", "--nats-creds", "--nats-user", "--allow-unauthenticated-nats"];
    if !opts.args.iter().any(|a| own_auth.iter().any(|flag| a.starts_with(flag))) {
        nats.auth_env(&mut cmd);
    }
    cmd.args(&opts.args)
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .env("TETHER_LOG", "info,async_nats=warn")
        .env_remove("TETHER_RELAY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if let Some(url) = &opts.relay_url {
        cmd.args(["--relay-url", url]).env("TETHER_RELAY_TOKEN", relay::producer_token_for(ws, id));
    }
    Ok((Proc::spawn("tether-agent", &mut cmd)?, log))
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `cond` holds, polling; fails the test after `WAIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Convenience constructors for ops.
pub mod op {
    use super::*;

    pub fn ping(nonce: u64) -> Op {
        Op::Ping(pb::PingRequest { nonce })
    }

    pub fn exec(argv: &[&str]) -> pb::ExecRequest {
        pb::ExecRequest { command: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    pub fn sh(script: &str) -> pb::ExecRequest {
        pb::ExecRequest { command: vec![script.to_owned()], shell: true, ..Default::default() }
    }

    pub fn read(path: &str) -> Op {
        Op::FsRead(pb::FsReadRequest { path: path.to_owned(), ..Default::default() })
    }

    pub fn write(path: &str, content: &[u8]) -> Op {
        Op::FsWrite(pb::FsWriteRequest {
            path: path.to_owned(),
            content: content.to_vec().into(),
            ..Default::default()
        })
    }

    pub fn stat(path: &str) -> Op {
        Op::FsStat(pb::FsStatRequest { path: path.to_owned() })
    }
}

impl Agent {
    /// Sends `op` unfenced and also returns the size in bytes of the raw reply as it came off
    /// the wire (to check it against the negotiated `max_payload`).
    pub async fn call_sized(&self, op: Op) -> (usize, Result<Reply, pb::AgentError>) {
        let request_id = format!("t-{}", next_id());
        let req = pb::ControlRequest { request_id: request_id.clone(), op: Some(op), ..Default::default() };
        let msg = tokio::time::timeout(
            Duration::from_secs(60),
            self.nc.request(self.rpc_subject(), req.encode_to_vec().into()),
        )
        .await
        .expect("request timed out")
        .expect("request failed");
        let size = msg.payload.len();
        let resp = pb::ControlResponse::decode(msg.payload).expect("decode ControlResponse");
        assert_eq!(resp.request_id, request_id, "reply must echo the request id");
        match (resp.error, resp.result) {
            (Some(err), None) => (size, Err(err)),
            (None, Some(result)) => (size, Ok(result)),
            other => panic!("reply must carry exactly one of error/result: {other:?}"),
        }
    }
}

/// The error code of an agent error (UNSPECIFIED for a number this build does not know).
pub fn error_code(err: &pb::AgentError) -> pb::ErrorCode {
    pb::ErrorCode::try_from(err.code).unwrap_or(pb::ErrorCode::Unspecified)
}

/// Whether `pid` names a live process: false once it is gone or is a zombie (dead, not yet
/// reaped: in a container nobody may ever reap an orphan).
pub fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        _ => {
            // /proc/<pid>/stat is "pid (comm) S ...": the state follows the last ')'.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }
    }
}

/// SIGKILLs a process the test caused to exist (e.g. a background child of an exec) when
/// dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Reads a pid a test script wrote into a file (`echo $! > x.pid`).
pub fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("{} holds {text:?}, not a pid: {e}", path.display()))
}

/// Live (not zombie) processes whose working directory is `dir` or beneath it: the processes a
/// command run in `dir` left behind.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .filter(|&pid| pid_alive(pid))
        .collect()
}

/// SIGKILLs, when dropped, every live process whose working directory is beneath a directory
/// (see [`processes_in`]), so a failing test leaves none of the processes its commands started.
pub struct KillAllIn(pub PathBuf);

impl Drop for KillAllIn {
    fn drop(&mut self) {
        for pid in processes_in(&self.0) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The ExecResponse of `result`, or a failure naming `what` with the agent's log.
pub fn exec_reply(what: &str, agent: &Agent, result: Result<Reply, pb::AgentError>) -> pb::ExecResponse {
    match result {
        Ok(Reply::Exec(r)) => r,
        other => panic!("{what}: expected an ExecResponse, got {other:?}\nagent log:\n{}", agent.log()),
    }
}

/// Command output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
