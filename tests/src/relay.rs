//! The relay under test: runs the real `tether-relay` binary on a free loopback port, and talks
//! to it as a fake agent or fake viewers over real websockets, so each test reads like the story
//! it proves. Tokens are minted with the shared `tether_proto::token` code.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{self, ProducerClaims, ViewerClaims, ViewerMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PRODUCER_SECRET: &str = "e2e-producer-secret-0123456789";
pub const VIEWER_SECRET: &str = "e2e-viewer-secret-9876543210";
pub const WS: &str = "ws-e2e";
pub const AGENT: &str = "agent-e2e";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running relay process.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    args: Vec<String>,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    /// Starts the relay on a free port with extra flags.
    pub async fn start(args: &[&str]) -> Relay {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Self::try_spawn("127.0.0.1:0", args).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_spawn(bind: &str, args: Vec<String>) -> Result<Relay, String> {
        let mut child = Command::new(crate::bin("tether-relay"))
            .arg("--bind")
            .arg(bind)
            .args(&args)
            .env("TETHER_RELAY_PRODUCER_SECRET", PRODUCER_SECRET)
            .env("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn tether-relay: {e}"))?;
        let stderr = child.stderr.take().ok_or("stderr not piped")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                return Err(format!(
                    "relay exited before listening:\n{}",
                    log.lock().expect("log lock").join("\n")
                ));
            }
            Err(_) => return Err("relay did not log its address within 30 s".into()),
        };
        let addr = addr.parse().map_err(|e| format!("logged address {addr:?}: {e}"))?;
        Ok(Relay { child, addr, args, log })
    }

    /// Kills the process (SIGKILL) and starts a new one on the same port: all state is gone.
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().await.expect("kill relay");
        let bind = self.addr.to_string();
        let mut last = String::new();
        for _ in 0..50 {
            match Self::try_spawn(&bind, self.args.clone()).await {
                Ok(relay) => {
                    *self = relay;
                    return;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("relay did not come back on {bind}: {last}");
    }

    /// Kills the process (SIGKILL) for good, as a crashed replica.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill relay");
    }

    /// Still running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.id().is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("relay exits after SIGTERM")
            .expect("wait relay")
    }

    /// The relay's (resident, peak resident) memory in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.pid().expect("the relay runs");
        let field = |name| crate::watch::status_field(pid, name).unwrap_or(0);
        (field("VmRSS"), field("VmHWM"))
    }

    /// The relay's `/stream` URL, as the agent and viewers are configured with.
    pub fn stream_url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    pub fn url(&self, port: u32, channel: &str) -> String {
        self.url_for(WS, AGENT, port, channel)
    }

    pub fn url_for(&self, ws: &str, agent: &str, port: u32, channel: &str) -> String {
        format!("ws://{}/stream?ws={ws}&agent={agent}&port={port}&channel={channel}", self.addr)
    }

    /// GET a path with plain HTTP/1.1; returns (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read response");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// The value of one Prometheus sample line (`name{labels}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> u64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs()
}

pub fn producer_token() -> String {
    producer_token_for(WS, AGENT)
}

/// An `ogr_` token for agent `agent` of workspace `ws`, valid for an hour.
pub fn producer_token_for(ws: &str, agent: &str) -> String {
    token::mint_producer(
        PRODUCER_SECRET.as_bytes(),
        &ProducerClaims { workspace_id: ws.into(), agent_id: agent.into(), exp: now_unix() + 3600 },
    )
}

pub fn viewer_claims(viewer_id: &str, mode: ViewerMode) -> ViewerClaims {
    ViewerClaims {
        workspace_id: WS.into(),
        session_id: "sess-1".into(),
        viewer_id: viewer_id.into(),
        lease_epoch: 1,
        mode,
        port: tether_proto::PTY_PORT,
        exp: now_unix() + 300,
        subject_id: None,
        authority_epoch: None,
        agent_id: None,
        channel_id: None,
        read_only: false,
    }
}

pub fn viewer_token(claims: &ViewerClaims) -> String {
    token::mint_viewer(VIEWER_SECRET.as_bytes(), claims)
}

/// The StreamOpen a peer sends for `channel` on the PTY port.
pub fn open_msg(channel: &str, role: pb::StreamRole, token: String, resume_from_seq: u64) -> Frame {
    open_msg_on(channel, tether_proto::PTY_PORT, pb::StreamKind::Pty, role, token, resume_from_seq)
}

pub fn open_msg_on(
    channel: &str,
    port: u32,
    kind: pb::StreamKind,
    role: pb::StreamRole,
    token: String,
    resume_from_seq: u64,
) -> Frame {
    Frame::Open(pb::StreamOpen {
        channel: Some(pb::StreamChannel {
            channel_id: channel.into(),
            workspace_id: WS.into(),
            agent_id: AGENT.into(),
            kind: kind as i32,
            port,
        }),
        token,
        role: role as i32,
        resume_from_seq,
    })
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
    ws
}

pub async fn send(ws: &mut Ws, frame: Frame) {
    ws.send(Message::Binary(frame.encode())).await.expect("send");
}

/// The next relay frame other than a ViewerPresence (a producer gets one whenever the viewer
/// count changes; [`recv_any`] sees those), or `None` when the socket closed. Panics after 20 s
/// of silence.
pub async fn recv(ws: &mut Ws) -> Option<Frame> {
    loop {
        match recv_any(ws).await {
            Some(Frame::ViewerPresence(_)) => continue,
            other => return other,
        }
    }
}

/// The next relay frame of any kind, or `None` when the socket closed. Panics after 20 s of
/// silence.
pub async fn recv_any(ws: &mut Ws) -> Option<Frame> {
    loop {
        let msg =
            tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("relay answered in time");
        match msg {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(b).expect("relay sent a valid frame")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Connects, sends the open and returns the socket with the relay's ack.
pub async fn open(url: &str, open: Frame) -> (Ws, pb::StreamOpenAck) {
    let mut ws = connect(url).await;
    send(&mut ws, open).await;
    // recv_any: nothing, not even a ViewerPresence, may come before the ack.
    match recv_any(&mut ws).await {
        Some(Frame::OpenAck(ack)) => (ws, ack),
        other => panic!("expected StreamOpenAck, got {other:?}"),
    }
}

/// Opens as the producer of `channel`; asserts acceptance and returns the ack's resume seq.
pub async fn producer(relay: &Relay, channel: &str, resume_from_seq: u64) -> (Ws, u64) {
    let msg = open_msg(channel, pb::StreamRole::Agent, producer_token(), resume_from_seq);
    let (ws, ack) = open(&relay.url(tether_proto::PTY_PORT, channel), msg).await;
    assert!(ack.accepted, "producer rejected: {:?}", ack.error);
    (ws, ack.resume_from_seq)
}

/// Opens as a viewer of `channel`; asserts acceptance and returns the ack's resume seq.
pub async fn viewer(relay: &Relay, channel: &str, claims: &ViewerClaims, resume_from_seq: u64) -> (Ws, u64) {
    let msg = open_msg(channel, pb::StreamRole::Client, viewer_token(claims), resume_from_seq);
    let (ws, ack) = open(&relay.url(tether_proto::PTY_PORT, channel), msg).await;
    assert!(ack.accepted, "viewer rejected: {:?}", ack.error);
    (ws, ack.resume_from_seq)
}

pub fn data(channel: &str, seq: u64, body: impl Into<Bytes>) -> Frame {
    Frame::Data(pb::StreamFrame {
        channel_id: channel.into(),
        seq,
        data: body.into(),
        produced_at_ms: 0,
        delta: false,
    })
}

/// Receives data frames until `n` arrived; returns (seq, data) pairs. Panics on anything else.
pub async fn recv_data(ws: &mut Ws, n: usize) -> Vec<(u64, Bytes)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match recv(ws).await {
            Some(Frame::Data(f)) => out.push((f.seq, f.data)),
            other => panic!("expected data frame {} of {n}, got {other:?}", out.len()),
        }
    }
    out
}

/// Viewer claims for `channel` (its workspace, port, agent and channel), valid for an hour.
pub fn claims_for(channel: &pb::StreamChannel, viewer_id: &str, mode: ViewerMode) -> ViewerClaims {
    ViewerClaims {
        workspace_id: channel.workspace_id.clone(),
        session_id: "sess-e2e".into(),
        viewer_id: viewer_id.into(),
        lease_epoch: 0,
        mode,
        port: channel.port,
        exp: now_unix() + 3600,
        subject_id: None,
        authority_epoch: None,
        agent_id: Some(channel.agent_id.clone()),
        channel_id: Some(channel.channel_id.clone()),
        read_only: false,
    }
}

/// A reconnecting viewer (the client library's) of `channel` through `relay`, from seq 0.
pub async fn watch(
    relay: &Relay,
    channel: &pb::StreamChannel,
    claims: &ViewerClaims,
) -> tether_client::Viewer {
    let config = tether_client::ViewerConfig {
        relay_url: relay.stream_url(),
        channel: channel.clone(),
        token: viewer_token(claims),
        resume_from_seq: 0,
    };
    tether_client::Viewer::connect(config).await.expect("viewer accepted")
}

/// [`watch`] through any `/stream` URL (a replica, a balancer).
pub async fn watch_url(
    url: &str,
    channel: &pb::StreamChannel,
    claims: &ViewerClaims,
) -> tether_client::Viewer {
    let config = tether_client::ViewerConfig {
        relay_url: url.to_owned(),
        channel: channel.clone(),
        token: viewer_token(claims),
        resume_from_seq: 0,
    };
    tether_client::Viewer::connect(config).await.expect("viewer accepted")
}

/// Everything a viewer saw, as text, and how the channel closed (if it did).
#[derive(Debug, Default)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub closed: Option<(pb::StreamCloseReason, String)>,
    pub gaps: usize,
}

impl Seen {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The last `n` bytes as text: what a check after each event of a long output looks at
    /// (the whole text each time makes collecting quadratic).
    pub fn tail(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.bytes[self.bytes.len().saturating_sub(n)..]).into_owned()
    }
}

/// Collects viewer events until `done` holds for what was seen so far (checked after each
/// event) or the channel closes. Panics after `within` with what it saw.
pub async fn collect_until(
    viewer: &mut tether_client::Viewer,
    seen: &mut Seen,
    within: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) {
    use tether_client::ViewerEvent;
    let deadline = tokio::time::Instant::now() + within;
    while !done(seen) && seen.closed.is_none() {
        let event = tokio::time::timeout_at(deadline, viewer.next()).await;
        match event {
            Err(_) => panic!(
                "viewer waited {within:?}; saw {} bytes, ending:\n{}",
                seen.bytes.len(),
                seen.tail(4096)
            ),
            Ok(None) => panic!(
                "viewer ended without a close; saw {} bytes, ending:\n{}",
                seen.bytes.len(),
                seen.tail(4096)
            ),
            Ok(Some(ViewerEvent::Output(data))) => seen.bytes.extend_from_slice(&data),
            Ok(Some(ViewerEvent::Closed { reason, message })) => seen.closed = Some((reason, message)),
            Ok(Some(ViewerEvent::Gap { .. })) => seen.gaps += 1,
            Ok(Some(ViewerEvent::Reconnecting(_) | ViewerEvent::Resumed)) => {}
        }
    }
}

/// Whether a terminal's `text` shows `output` as a line of output: a line ending with it that is
/// not the echo of a typed command. A shell may print its prompt after the terminal echoed early
/// typing, so an output line can start with the prompt ("# output").
pub fn shows_line(text: &str, output: &str) -> bool {
    text.split(['\r', '\n']).any(|l| l.ends_with(output) && !l.contains("echo "))
}

/// A TCP forwarder in front of a relay that can stop serving: once stalled, new connections
/// are accepted and then left unanswered (held open), like a relay too busy to take a channel,
/// while connections made before keep flowing.
pub struct StallingProxy {
    pub addr: SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(target: SocketAddr) -> StallingProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stall, count) = (stalled.clone(), held.clone());
        let task = tokio::spawn(async move {
            let mut unanswered = Vec::new();
            // Owned here, so aborting the proxy cuts the forwarded connections too.
            let mut forwarding = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if stall.load(Ordering::SeqCst) {
                    unanswered.push(inbound);
                    count.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                forwarding.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        StallingProxy { addr, stalled, held, task }
    }

    /// The `/stream` URL through this proxy.
    pub fn stream_url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// From now on, new connections hang.
    pub fn stall(&self) {
        self.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections left hanging so far.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
