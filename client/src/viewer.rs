//! A relay viewer (`PROTOCOL.md` §7) that survives relay restarts: it keeps the cursor of the
//! next agent-to-viewer seq it wants, reconnects with backoff when the connection is lost or the
//! relay says TRANSPORT_ERROR, resumes from that cursor, and drops any frame below it, so the
//! output it hands out has no repeats; a gap the relay announces is reported, never hidden.
//! Input typed while disconnected waits in a queue and goes out on reconnect.
//!
//! Keystrokes and resizes share that one queue: the user's order (resize, then type a command
//! that reads the size) is the order the relay, and so the agent's PTY, sees them in.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::stream::{open, stream_url};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a viewer that is done may take to write what was typed before it hangs up.
const HANG_UP_WAIT: Duration = Duration::from_secs(2);

mod writer;
use writer::Writer;

/// Where and how to watch a channel.
#[derive(Clone)]
pub struct ViewerConfig {
    /// The relay's `/stream` URL (`ws://` or `wss://`).
    pub relay_url: String,
    pub channel: pb::StreamChannel,
    /// An `ogs_` viewer token.
    pub token: String,
    /// The first agent-to-viewer seq wanted (0 = everything the relay still holds).
    pub resume_from_seq: u64,
}

impl std::fmt::Debug for ViewerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerConfig")
            .field("relay_url", &self.relay_url)
            .field("channel", &self.channel.channel_id)
            .field("token", &"<redacted>")
            .field("resume_from_seq", &self.resume_from_seq)
            .finish()
    }
}

/// What happens on the channel, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewerEvent {
    /// Agent output.
    Output(Bytes),
    /// Frames `from..to` are gone from the relay's buffer; the stream goes on at `to`.
    Gap { from: u64, to: u64 },
    /// The connection was lost; the viewer is reconnecting.
    Reconnecting(String),
    /// Connected again (after a `Reconnecting`).
    Resumed,
    /// The channel is over (process exit, close, fence) or the relay refused the viewer.
    Closed { reason: pb::StreamCloseReason, message: String },
}

/// A fresh `viewerId` claim for a viewer token, `<prefix>-<16 hex digits>`. The relay tells
/// viewers apart (and drops one viewer's repeated input after it resumes) by the token's
/// sessionId/viewerId, so two live viewers must never share one: a pid would repeat across
/// machines and containers, 64 random bits do not in practice.
pub fn new_viewer_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", crate::unique::random_u64())
}

/// Why the first connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("the relay refused the viewer: {0}")]
    Refused(String),
    /// A refusal the relay marks retryable (shutting down, too many waits): worth another try.
    #[error("the relay cannot take the viewer now: {0}")]
    Busy(String),
    #[error("cannot reach the relay: {0}")]
    Unreachable(String),
}

/// A connected viewer; dropping it disconnects.
pub struct Viewer {
    events: mpsc::Receiver<ViewerEvent>,
    input: mpsc::Sender<Input>,
    follower: tokio::task::JoinHandle<()>,
}

/// What the viewer sends towards the agent, queued in the order it was produced.
#[derive(Debug)]
enum Input {
    Data(Bytes),
    Resize { cols: u32, rows: u32 },
}

impl Viewer {
    /// Connects (the first attempt must succeed) and starts following the channel.
    pub async fn connect(config: ViewerConfig) -> Result<Viewer, ViewerError> {
        let (socket, ack) = open_viewer(&config, config.resume_from_seq).await?;
        let (events_tx, events) = mpsc::channel(256);
        let (input, input_rx) = mpsc::channel(256);
        let mut follower = Follower {
            config,
            next_seq: 0,
            input_seq: 0,
            pending: VecDeque::new(),
            events: events_tx,
            input: input_rx,
            last_size: None,
        };
        follower.next_seq = follower.config.resume_from_seq;
        follower.note_ack(ack).await;
        let follower = tokio::spawn(follower.run(socket));
        Ok(Viewer { events, input, follower })
    }

    /// The next event; `None` after `Closed` (or if the viewer task ended).
    pub async fn next(&mut self) -> Option<ViewerEvent> {
        self.events.recv().await
    }

    /// Types into the channel (queued while reconnecting). Waits while the queue is full: a
    /// caller that must keep reading [`Viewer::next`] meanwhile uses [`Viewer::input`].
    pub async fn send(&self, data: impl Into<Bytes>) {
        let _ = self.input.send(Input::Data(data.into())).await;
    }

    /// Asks the agent to resize the terminal, after any input sent before (the last size is
    /// re-sent after a reconnect).
    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.input.send(Input::Resize { cols, rows }).await;
    }

    /// Disconnects once what was typed has been written (dropping the viewer may cut it off),
    /// waiting at most `within`; output arriving meanwhile is discarded.
    pub async fn close(self, within: Duration) {
        let Viewer { mut events, input, follower } = self;
        drop(input);
        let discard = async { while events.recv().await.is_some() {} };
        let _ = tokio::time::timeout(within, async { tokio::join!(follower, discard) }).await;
    }

    /// A handle on the input queue apart from the viewer, so one task can wait for room in it
    /// ([`ViewerInput::reserve`]) while it goes on taking the viewer's events.
    pub fn input(&self) -> ViewerInput {
        ViewerInput { tx: self.input.clone() }
    }
}

/// The input side of a [`Viewer`]: see [`Viewer::input`].
#[derive(Clone)]
pub struct ViewerInput {
    tx: mpsc::Sender<Input>,
}

/// Room for one input message, reserved in the queue.
pub struct InputSlot<'a>(mpsc::Permit<'a, Input>);

impl ViewerInput {
    /// Waits for room for one message; `None` once the viewer has ended.
    pub async fn reserve(&self) -> Option<InputSlot<'_>> {
        self.tx.reserve().await.ok().map(InputSlot)
    }
}

impl InputSlot<'_> {
    /// Queues keystrokes.
    pub fn send(self, data: Bytes) {
        self.0.send(Input::Data(data));
    }

    /// Queues a resize.
    pub fn resize(self, cols: u32, rows: u32) {
        self.0.send(Input::Resize { cols, rows });
    }
}

/// The task behind a [`Viewer`].
struct Follower {
    config: ViewerConfig,
    /// Next agent-to-viewer seq wanted.
    next_seq: u64,
    /// Seq of this viewer's next input frame.
    input_seq: u64,
    /// Input not yet written to a connection.
    pending: VecDeque<Message>,
    events: mpsc::Sender<ViewerEvent>,
    /// Keystrokes and resizes, in the order the user produced them.
    input: mpsc::Receiver<Input>,
    last_size: Option<(u32, u32)>,
}

/// How a connected stretch ended.
enum Stretch {
    Over,
    Lost(String),
}

impl Follower {
    async fn run(mut self, mut socket: Socket) {
        loop {
            match self.follow(socket).await {
                Stretch::Over => return,
                Stretch::Lost(why) => {
                    if self.events.send(ViewerEvent::Reconnecting(why)).await.is_err() {
                        return;
                    }
                }
            }
            match self.reconnect().await {
                Some(s) => socket = s,
                None => return,
            }
        }
    }

    /// Reconnects with backoff; `None` when the viewer was dropped or the relay refused.
    async fn reconnect(&mut self) -> Option<Socket> {
        let mut backoff = MIN_BACKOFF;
        loop {
            tokio::time::sleep(backoff).await;
            if self.events.is_closed() {
                return None;
            }
            match open_viewer(&self.config, self.next_seq).await {
                Ok((socket, ack)) => {
                    self.note_ack(ack).await;
                    let _ = self.events.send(ViewerEvent::Resumed).await;
                    if let Some((cols, rows)) = self.last_size {
                        self.pending.push_front(resize_message(cols, rows));
                    }
                    return Some(socket);
                }
                Err(ViewerError::Refused(message)) => {
                    let reason = pb::StreamCloseReason::Unspecified;
                    let _ = self.events.send(ViewerEvent::Closed { reason, message }).await;
                    return None;
                }
                Err(ViewerError::Unreachable(_) | ViewerError::Busy(_)) => {
                    backoff = (backoff * 2).min(MAX_BACKOFF)
                }
            }
        }
    }

    /// The relay's ack says where the stream really resumes; a jump past our cursor is a gap.
    async fn note_ack(&mut self, ack: u64) {
        if ack > self.next_seq {
            let _ = self.events.send(ViewerEvent::Gap { from: self.next_seq, to: ack }).await;
            self.next_seq = ack;
        }
    }

    /// One connection: output in, input out (through a [`Writer`], so a send that waits never
    /// stops the reading), until the connection is lost or the viewer is done.
    async fn follow(&mut self, socket: Socket) -> Stretch {
        let (sink, mut stream) = socket.split();
        let writer = Writer::spawn(sink);
        // The next message for the writer: input not yet handed over (resent ones first).
        let mut next: Option<Message> = None;
        // `None`: the viewer is done.
        let ended = loop {
            if next.is_none() {
                next = self.pending.pop_front();
            }
            tokio::select! {
                msg = stream.next() => if let Some(stretch) = self.on_message(msg).await {
                    break Some(stretch);
                },
                input = self.input.recv(), if next.is_none() => match input {
                    Some(Input::Data(data)) => next = Some(self.input_message(data)),
                    Some(Input::Resize { cols, rows }) => {
                        self.last_size = Some((cols, rows));
                        next = Some(resize_message(cols, rows));
                    }
                    None => break None,
                },
                permit = writer.queue.reserve(), if next.is_some() => match (permit, next.take()) {
                    (Ok(permit), Some(msg)) => permit.send(msg),
                    (_, msg) => {
                        next = msg;
                        break Some(Stretch::Lost("the connection stopped taking input".into()));
                    }
                },
            }
        };
        let Some(stretch) = ended else {
            // The viewer is done: write what it typed, then hang up.
            writer.finish(HANG_UP_WAIT).await;
            return Stretch::Over;
        };
        // Not known to have arrived: first in line on the next connection, in order.
        let unsent = writer.abandon().await;
        for msg in unsent.into_iter().chain(next).rev() {
            self.pending.push_front(msg);
        }
        stretch
    }

    fn input_message(&mut self, data: Bytes) -> Message {
        let frame = pb::StreamFrame {
            channel_id: self.config.channel.channel_id.clone(),
            seq: self.input_seq,
            data,
            produced_at_ms: 0,
            delta: false,
        };
        self.input_seq += 1;
        Message::Binary(Frame::Data(frame).encode())
    }

    /// Handles one socket message; `Some` ends the stretch.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Stretch> {
        let bytes = match msg {
            None | Some(Ok(Message::Close(_))) => {
                return Some(Stretch::Lost("the relay closed the connection".into()));
            }
            Some(Err(e)) => return Some(Stretch::Lost(e.to_string())),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(_)) => return None,
        };
        match Frame::decode(bytes) {
            Ok(Frame::Data(f)) => {
                if f.seq < self.next_seq {
                    return None; // already handed out
                }
                if f.seq > self.next_seq {
                    let gap = ViewerEvent::Gap { from: self.next_seq, to: f.seq };
                    if self.events.send(gap).await.is_err() {
                        return Some(Stretch::Over);
                    }
                }
                self.next_seq = f.seq.saturating_add(1); // the relay never forwards u64::MAX
                if self.events.send(ViewerEvent::Output(f.data)).await.is_err() {
                    return Some(Stretch::Over);
                }
                None
            }
            Ok(Frame::Close(close)) => {
                let reason = pb::StreamCloseReason::try_from(close.reason).unwrap_or_default();
                if reason == pb::StreamCloseReason::TransportError {
                    return Some(Stretch::Lost(close.message));
                }
                let _ = self.events.send(ViewerEvent::Closed { reason, message: close.message }).await;
                Some(Stretch::Over)
            }
            _ => None,
        }
    }
}

fn resize_message(cols: u32, rows: u32) -> Message {
    Message::Binary(Frame::PtyResize(pb::PtyResize { cols, rows }).encode())
}

/// Dials the relay and opens the channel as a viewer from `resume_from_seq`.
async fn open_viewer(config: &ViewerConfig, resume_from_seq: u64) -> Result<(Socket, u64), ViewerError> {
    let attempt = async {
        let url = stream_url(&config.relay_url, &config.channel);
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| ViewerError::Unreachable(format!("{}: {e}", config.relay_url)))?;
        let hello = open(&config.channel, pb::StreamRole::Client, &config.token, resume_from_seq);
        ws.send(Message::Binary(hello.encode()))
            .await
            .map_err(|e| ViewerError::Unreachable(e.to_string()))?;
        while let Some(msg) = ws.next().await {
            let bytes = match msg {
                Ok(Message::Binary(bytes)) => bytes,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => return Err(ViewerError::Unreachable(e.to_string())),
            };
            return match Frame::decode(bytes) {
                Ok(Frame::OpenAck(ack)) if ack.accepted => Ok((ws, ack.resume_from_seq)),
                Ok(Frame::OpenAck(ack)) => Err(refusal(ack.error)),
                _ => Err(ViewerError::Unreachable("the relay did not answer with StreamOpenAck".into())),
            };
        }
        Err(ViewerError::Unreachable("the relay closed the connection during the handshake".into()))
    };
    tokio::time::timeout(OPEN_TIMEOUT, attempt).await.unwrap_or_else(|_| {
        Err(ViewerError::Unreachable(format!("no StreamOpenAck within {OPEN_TIMEOUT:?}")))
    })
}

/// Classifies a refused open: retryable refusals other than an expired token are `Busy`.
fn refusal(error: Option<pb::AgentError>) -> ViewerError {
    let Some(error) = error else {
        return ViewerError::Refused("no reason given".into());
    };
    let expired = error.detail.get("reason").is_some_and(|r| r == "expired");
    if error.retryable && !expired {
        ViewerError::Busy(error.message)
    } else {
        ViewerError::Refused(error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_refusals_are_retried_unless_the_token_expired() {
        let error = |retryable: bool, reason: &str| pb::AgentError {
            retryable,
            message: reason.to_owned(),
            detail: [("reason".to_owned(), reason.to_owned())].into(),
            ..Default::default()
        };
        assert!(matches!(refusal(Some(error(true, "shutting_down"))), ViewerError::Busy(_)));
        assert!(matches!(refusal(Some(error(true, "expired"))), ViewerError::Refused(_)));
        assert!(matches!(refusal(Some(error(false, "bad_signature"))), ViewerError::Refused(_)));
        assert!(matches!(refusal(None), ViewerError::Refused(_)));
    }

    #[test]
    fn viewer_ids_are_fresh_and_named() {
        let a = new_viewer_id("tetherctl");
        let b = new_viewer_id("tetherctl");
        assert_ne!(a, b);
        let digits = a.strip_prefix("tetherctl-").expect("prefix kept");
        assert!(digits.len() == 16 && digits.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[tokio::test]
    async fn wss_urls_get_a_tls_handshake() {
        // A server that accepts and hangs up: the TLS handshake fails, which proves there is one.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let config = ViewerConfig {
            relay_url: format!("wss://{addr}/stream"),
            channel: pb::StreamChannel::default(),
            token: "ogs_x.y".into(),
            resume_from_seq: 0,
        };
        let Err(ViewerError::Unreachable(message)) = open_viewer(&config, 0).await else {
            panic!("a server that hangs up cannot accept a viewer");
        };
        assert!(!message.contains("TLS support not compiled"), "{message}");
    }

    type Peer = WebSocketStream<TcpStream>;

    /// A stand-in relay on a free loopback port: accepts one viewer, acks its StreamOpen, and
    /// hands the socket to `serve`. Returns the config of a viewer for it.
    async fn stand_in_relay<F>(serve: impl FnOnce(Peer) -> F + Send + 'static) -> ViewerConfig
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _open = ws.next().await;
            let ack = pb::StreamOpenAck { accepted: true, error: None, resume_from_seq: 0 };
            ws.send(Message::Binary(Frame::OpenAck(ack).encode())).await.unwrap();
            serve(ws).await;
        });
        ViewerConfig {
            relay_url: format!("ws://{addr}/stream"),
            channel: pb::StreamChannel::default(),
            token: "ogs_x.y".into(),
            resume_from_seq: 0,
        }
    }

    /// A stand-in relay handing every frame the viewer sends to the test, in arrival order.
    async fn recording_relay() -> (ViewerConfig, mpsc::UnboundedReceiver<Frame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = stand_in_relay(|mut ws| async move {
            while let Some(Ok(Message::Binary(bytes))) = ws.next().await {
                if tx.send(Frame::decode(bytes).unwrap()).is_err() {
                    return;
                }
            }
        })
        .await;
        (config, rx)
    }

    async fn next_frame(frames: &mut mpsc::UnboundedReceiver<Frame>) -> Frame {
        let next = tokio::time::timeout(Duration::from_secs(10), frames.recv()).await;
        next.expect("the viewer sends within 10 s").expect("the relay stand-in is running")
    }

    /// A stand-in relay that never reads the viewer's input and, after a second (time for the
    /// viewer's sends to fill the socket), sends `frames` output frames.
    async fn deaf_relay(frames: u64) -> ViewerConfig {
        stand_in_relay(move |mut ws| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for seq in 0..frames {
                let frame = pb::StreamFrame { seq, data: Bytes::from_static(b"out"), ..Default::default() };
                if ws.send(Message::Binary(Frame::Data(frame).encode())).await.is_err() {
                    return;
                }
            }
            // Hold the connection (unread) until the test ends.
            std::future::pending::<()>().await;
        })
        .await
    }

    #[tokio::test]
    async fn output_keeps_coming_while_the_relay_takes_no_input() {
        const FRAMES: u64 = 500;
        let mut viewer = Viewer::connect(deaf_relay(FRAMES).await).await.unwrap();
        // Far more input than the sockets between us can hold.
        let input = viewer.input();
        tokio::spawn(async move {
            for _ in 0..512 {
                let Some(slot) = input.reserve().await else { return };
                slot.send(Bytes::from(vec![b'x'; 64 * 1024]));
            }
        });
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while seen < FRAMES {
            match tokio::time::timeout_at(deadline, viewer.next()).await {
                Ok(Some(ViewerEvent::Output(_))) => seen += 1,
                Ok(other) => panic!("after {seen} frames: {other:?}"),
                Err(_) => panic!("output stalled after {seen} of {FRAMES} frames behind unread input"),
            }
        }
    }

    #[tokio::test]
    async fn keystrokes_and_resizes_leave_in_the_order_they_were_given() {
        let (config, mut frames) = recording_relay().await;
        let viewer = Viewer::connect(config).await.unwrap();
        // Both kinds queued back to back before the viewer task runs: a task choosing between
        // two queues would reorder some of them.
        for i in 0..50u32 {
            viewer.resize(100 + i, 40).await;
            viewer.send(format!("k{i}")).await;
        }
        for i in 0..50u32 {
            match next_frame(&mut frames).await {
                Frame::PtyResize(r) => assert_eq!((r.cols, r.rows), (100 + i, 40), "resize {i}"),
                other => panic!("resize {i} expected, got {other:?}"),
            }
            match next_frame(&mut frames).await {
                Frame::Data(f) => {
                    assert_eq!(f.data, format!("k{i}").as_bytes(), "keystroke {i}");
                    assert_eq!(f.seq, u64::from(i), "input seq {i}");
                }
                other => panic!("keystroke {i} expected, got {other:?}"),
            }
        }
    }
}
