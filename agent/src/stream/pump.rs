//! The pump: one task per channel that keeps it flowing for as long as the channel lives,
//! across relay restarts. It owns the producer connection and reconnects with backoff; after
//! each (re)connect it resends from its [`Outbox`] what the relay asks for, and it drops viewer
//! input below its receive cursor (the relay replays after a resume). The two directions have
//! separate cursors and run concurrently, so a viewer typing into a process that does not read
//! never stops that process's output from flowing.
//!
//! The endpoint (a PTY today) talks to the pump through channels only: output chunks in,
//! [`Inbound`] messages out, the channel's viewer count out, and one final StreamClose that
//! ends the channel.
//!
//! The viewer count is what the relay last said (ViewerPresence) while connected, and zero from
//! the moment the connection is lost: viewers reach the channel through that relay, so a relay
//! that died took them along, and a crashed relay must not keep a terminal alive forever.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tether_proto::frame::{Frame, FrameError};
use tether_proto::pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use super::link::{LinkError, Socket, open_producer};
use super::outbox::Outbox;
use crate::config::RelayLink;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Pause after the relay refused the open for good (a bad or expired producer token): only a
/// relay or token change helps, so retry slowly instead of warning every few seconds.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// After the channel ended, how long the pump keeps trying to reach the relay to deliver the
/// last output and the StreamClose.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
/// The relay pings every 20 s; a connection silent for this long is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Output chunks written before one flush.
const BATCH: usize = 64;
/// How long a finished channel waits for the relay to answer its websocket Close.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// What viewers send to the endpoint, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Data(Bytes),
    Resize { cols: u16, rows: u16 },
    Desktop(pb::DesktopInput),
}

/// One output chunk as the pump sends it: the bytes, and whether the frame is a delta (only
/// updates the frames before it: `StreamFrame.delta`, the desktop's TILES encoding).
pub trait Output: Send + 'static {
    fn into_parts(self) -> (Bytes, bool);
}

/// Terminal output: every chunk stands alone as far as the relay is concerned.
impl Output for Bytes {
    fn into_parts(self) -> (Bytes, bool) {
        (self, false)
    }
}

/// The endpoint's side of a pump.
pub struct Endpoint<O = Bytes> {
    /// Output chunks to stream, in order. Closed when the endpoint has no more output.
    pub output: mpsc::Receiver<O>,
    /// Where viewer input goes.
    pub inbound: mpsc::Sender<Inbound>,
    /// Fires once with the reason the channel ends.
    pub end: oneshot::Receiver<pb::StreamClose>,
    /// How many viewers the channel has (see the module doc). Changed only when it changes,
    /// so a change that ends at zero means a viewer was there since the endpoint last looked.
    pub viewers: watch::Sender<u32>,
}

/// A channel's pump; see the module doc.
pub struct Pump<O = Bytes> {
    relay: RelayLink,
    channel: pb::StreamChannel,
    out: Outgoing<O>,
    inc: Incoming,
}

/// The agent-to-viewer direction.
struct Outgoing<O> {
    channel_id: String,
    outbox: Outbox,
    output: mpsc::Receiver<O>,
    output_open: bool,
    end: Option<oneshot::Receiver<pb::StreamClose>>,
    closing: Option<pb::StreamClose>,
}

/// The viewer-to-agent direction.
struct Incoming {
    /// Next viewer-to-agent seq wanted: the resume point told to the relay.
    next_seq: u64,
    inbound: mpsc::Sender<Inbound>,
    viewers: watch::Sender<u32>,
}

/// How a connected stretch ended.
enum Served {
    /// The StreamClose went out: the channel is over.
    Closed,
    /// The connection was lost; reconnect.
    Lost(String),
}

impl<O: Output> Pump<O> {
    pub fn new(
        relay: RelayLink,
        channel: pb::StreamChannel,
        endpoint: Endpoint<O>,
        outbox_bytes: usize,
    ) -> Self {
        let out = Outgoing {
            channel_id: channel.channel_id.clone(),
            outbox: Outbox::new(outbox_bytes),
            output: endpoint.output,
            output_open: true,
            end: Some(endpoint.end),
            closing: None,
        };
        let inc = Incoming { next_seq: 0, inbound: endpoint.inbound, viewers: endpoint.viewers };
        Pump { relay, channel, out, inc }
    }

    /// Runs until the channel's StreamClose is delivered (or undeliverable). `accepted` learns
    /// how the first open went; if the relay refused it or was unreachable, the pump stops.
    pub async fn run(mut self, accepted: oneshot::Sender<Result<(), LinkError>>) {
        let mut accepted = Some(accepted);
        let mut backoff = MIN_BACKOFF;
        let mut give_up_at = None;
        loop {
            let mut pause_for = backoff;
            let opened = {
                let attempt = open_producer(&self.relay, &self.channel, self.inc.next_seq);
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        opened = &mut attempt => break opened,
                        () = self.out.absorb() => {}
                    }
                }
            };
            match opened {
                Ok((socket, ack)) => {
                    if let Some(tx) = accepted.take() {
                        let _ = tx.send(Ok(()));
                    }
                    backoff = MIN_BACKOFF;
                    let served = self.serve(socket, ack).await;
                    self.inc.set_viewers(0);
                    match served {
                        Served::Closed => return,
                        Served::Lost(why) => info!(why, "relay connection lost; reconnecting"),
                    }
                }
                Err(e) => {
                    if let Some(tx) = accepted.take() {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    if e.is_permanent() {
                        if self.out.closing.is_some() {
                            warn!(error = %e, "the relay refuses the ended channel; its last output is lost");
                            return;
                        }
                        pause_for = REFUSED_BACKOFF;
                        error!(error = %e, retry_in = ?pause_for, "the relay refuses this terminal's channel");
                    } else {
                        warn!(error = %e, retry_in = ?backoff, "relay open failed");
                    }
                }
            }
            if self.out.closing.is_some()
                && *give_up_at.get_or_insert(Instant::now() + CLOSE_DEADLINE) < Instant::now()
            {
                warn!("the relay stayed away; the channel's last output and close are lost");
                return;
            }
            let pause = tokio::time::sleep(pause_for);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    () = self.out.absorb() => {
                        // A channel ending during the long pause after a refusal need not
                        // wait it out: try once more now, and let go if refused again.
                        if pause_for == REFUSED_BACKOFF && self.out.closing.is_some() {
                            break;
                        }
                    }
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connected stretch: resend what the relay lacks, then both directions at once.
    async fn serve(&mut self, socket: Socket, ack: u64) -> Served {
        debug!(resend_from = ack, input_from = self.inc.next_seq, "producer connected");
        let (mut sink, mut source) = socket.split();
        let out = &mut self.out;
        let resend: Vec<Message> = out
            .outbox
            .since(ack)
            .map(|h| data_message(&out.channel_id, h.seq, h.data.clone(), h.delta))
            .collect();
        for msg in resend {
            if let Err(e) = sink.feed(msg).await {
                return Served::Lost(e.to_string());
            }
        }
        if let Err(e) = sink.flush().await {
            return Served::Lost(e.to_string());
        }
        let served = tokio::select! {
            served = out.stream(&mut sink) => served,
            why = self.inc.receive(&mut source) => Served::Lost(why),
        };
        if let Served::Closed = served {
            await_close_reply(&mut source).await;
        }
        served
    }
}

/// Reads until the relay answers our websocket Close (bounded). Dropping the socket with the
/// relay's last messages unread makes the kernel reset the connection, and a reset can discard
/// the StreamClose the relay has not read yet: a late viewer would then wait for a producer.
async fn await_close_reply(source: &mut SplitStream<Socket>) {
    let drained = async {
        while let Some(Ok(msg)) = source.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, drained).await;
}

impl<O: Output> Outgoing<O> {
    /// While disconnected: takes output into the outbox as long as it has room (then the
    /// endpoint is held back), and notes the end. Never resolves when there is nothing to do.
    async fn absorb(&mut self) {
        let room = self.output_open && self.closing.is_none() && self.outbox.has_room();
        tokio::select! {
            chunk = self.output.recv(), if room => match chunk {
                Some(chunk) => {
                    let (data, delta) = chunk.into_parts();
                    self.outbox.push_frame(data, delta);
                }
                None => self.output_open = false,
            },
            close = wait_end(&mut self.end) => self.closing = Some(close),
        }
    }

    /// While connected: streams output until the channel ends, then sends what is still
    /// queued and the StreamClose.
    async fn stream(&mut self, sink: &mut SplitSink<Socket, Message>) -> Served {
        loop {
            if let Some(close) = self.closing.clone() {
                return self.finish(sink, close).await;
            }
            tokio::select! {
                chunk = self.output.recv(), if self.output_open => match chunk {
                    Some(data) => {
                        if let Err(e) = self.send_batch(sink, data).await {
                            return Served::Lost(e.to_string());
                        }
                    }
                    None => self.output_open = false,
                },
                close = wait_end(&mut self.end) => self.closing = Some(close),
            }
        }
    }

    /// Sends `first` and whatever else is already queued, with one flush.
    async fn send_batch(
        &mut self,
        sink: &mut SplitSink<Socket, Message>,
        first: O,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(chunk) = next.take() {
            let (data, delta) = chunk.into_parts();
            let seq = self.outbox.push_frame(data.clone(), delta);
            sink.feed(data_message(&self.channel_id, seq, data, delta)).await?;
            count += 1;
            if count < BATCH {
                next = self.output.try_recv().ok();
            }
        }
        sink.flush().await
    }

    async fn finish(&mut self, sink: &mut SplitSink<Socket, Message>, close: pb::StreamClose) -> Served {
        while let Ok(chunk) = self.output.try_recv() {
            let (data, delta) = chunk.into_parts();
            let seq = self.outbox.push_frame(data.clone(), delta);
            if let Err(e) = sink.feed(data_message(&self.channel_id, seq, data, delta)).await {
                return Served::Lost(e.to_string());
            }
        }
        info!(reason = close.reason, message = %close.message, "closing the channel");
        let close = pb::StreamClose { channel_id: self.channel_id.clone(), ..close };
        if let Err(e) = sink.send(Message::Binary(Frame::Close(close).encode())).await {
            return Served::Lost(e.to_string());
        }
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, sink.close()).await;
        Served::Closed
    }
}

impl Incoming {
    /// Forwards viewer input to the endpoint until the connection ends; returns why it ended.
    async fn receive(&mut self, source: &mut SplitStream<Socket>) -> String {
        loop {
            let msg = match tokio::time::timeout(SILENCE_LIMIT, source.next()).await {
                Err(_) => return format!("nothing from the relay for {SILENCE_LIMIT:?}"),
                Ok(None) => return "the relay closed the connection".into(),
                Ok(Some(Err(e))) => return e.to_string(),
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                Ok(Some(Ok(Message::Close(_)))) => return "the relay closed the connection".into(),
                Ok(Some(Ok(_))) => continue,
            };
            let inbound = match Frame::decode(msg) {
                Ok(Frame::Data(frame)) => {
                    if frame.seq < self.next_seq {
                        continue; // a replay of input already delivered
                    }
                    let Some(next_seq) = frame.seq.checked_add(1) else {
                        return format!("protocol error: the relay sent input seq {}", frame.seq);
                    };
                    self.next_seq = next_seq;
                    Inbound::Data(frame.data)
                }
                Ok(Frame::ViewerPresence(presence)) => {
                    self.set_viewers(presence.viewers);
                    continue;
                }
                Ok(Frame::PtyResize(r)) => {
                    Inbound::Resize { cols: clamp_u16(r.cols), rows: clamp_u16(r.rows) }
                }
                Ok(Frame::DesktopInput(d)) => Inbound::Desktop(d),
                Ok(Frame::Close(close)) => return format!("the relay closed the stream: {}", close.message),
                Ok(other) => {
                    debug!(tag = other.tag(), "ignoring a relay message a producer does not expect");
                    continue;
                }
                Err(FrameError::UnknownTag(tag)) => {
                    debug!(tag, "ignoring a relay message of a kind this agent does not know");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "ignoring an undecodable relay message");
                    continue;
                }
            };
            // When the endpoint is gone its input has nowhere to go; keep reading until closed.
            let _ = self.inbound.send(inbound).await;
        }
    }

    /// Tells the endpoint the viewer count, if it changed.
    fn set_viewers(&self, viewers: u32) {
        self.viewers.send_if_modified(|known| {
            let changed = *known != viewers;
            *known = viewers;
            changed
        });
    }
}

/// Resolves with the end reason once (a dropped sender means the endpoint vanished: NORMAL);
/// afterwards never.
async fn wait_end(end: &mut Option<oneshot::Receiver<pb::StreamClose>>) -> pb::StreamClose {
    let Some(rx) = end.as_mut() else { return std::future::pending().await };
    let close = rx.await.unwrap_or_else(|_| pb::StreamClose {
        channel_id: String::new(),
        reason: pb::StreamCloseReason::Normal as i32,
        message: "the stream's source went away".into(),
    });
    *end = None;
    close
}

fn data_message(channel_id: &str, seq: u64, data: Bytes, delta: bool) -> Message {
    let produced_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Message::Binary(
        Frame::Data(pb::StreamFrame { channel_id: channel_id.to_owned(), seq, data, produced_at_ms, delta })
            .encode(),
    )
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}
