//! Per-connection pumps of `/stream`: handshake, then one loop reading the peer's socket into
//! the registry and one loop writing what the registry hands out. The pumps never decide
//! anything about delivery; they only move messages and stop when told to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::handshake::{self, Peer, Rejection};
use crate::metrics::{RejectReason, Role};
use crate::registry::{Attachment, Input, Next};
use crate::throttle::Throttle;
use crate::{PendingOpen, Shared};

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// How often an idle writer pings its peer (keeps proxies from closing quiet sockets).
const PING_EVERY: Duration = Duration::from_secs(20);
/// A peer silent this long (no data, no pong) is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());
/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Serves one upgraded `/stream` socket to the end. `pending` is its place among the
/// connections in their handshake, given back once the open is decided.
pub async fn run(
    socket: WebSocket,
    query: HashMap<String, String>,
    shared: Arc<Shared>,
    pending: PendingOpen,
) {
    let (mut sink, mut source) = socket.split();
    let opening = async {
        let open = handshake::read_open(&mut source, shared.config.handshake_timeout).await?;
        let admission = handshake::admit(&query, &open, &shared.config, now_unix())?;
        // Cluster mode: a viewer of a channel served elsewhere is served through its owner.
        if matches!(admission.peer, Peer::Viewer(_))
            && !shared.registry.serves_locally(&admission.key)
            && let Some(cluster) = shared.cluster()
        {
            return Ok((admission, Err(cluster)));
        }
        let (att, ack) = shared.registry.attach(&admission).await?;
        Ok::<_, Rejection>((admission, Ok((att, ack))))
    };
    let admitted = tokio::select! {
        admitted = opening => admitted,
        _ = shared.shutdown.cancelled() => Err(Rejection::new(RejectReason::ShuttingDown, "relay is shutting down")),
    };
    drop(pending);
    let (admission, att, ack) = match admitted {
        Ok((admission, Ok((att, ack)))) => (admission, att, ack),
        Ok((admission, Err(cluster))) => {
            return crate::cluster::serve_viewer(sink, source, admission, shared.clone(), cluster).await;
        }
        Err(rejection) => {
            shared.metrics.open_rejected(rejection.reason);
            info!(reason = rejection.reason.label(), message = %rejection.message, "stream open rejected");
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Binary(rejection.ack()))).await;
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
            return;
        }
    };
    shared.metrics.open_accepted(att.role());
    let key = &admission.key;
    let span = tracing::info_span!("stream", ws = %key.workspace_id, agent = %key.agent_id, port = key.port,
        channel = %key.channel_id, role = ?att.role(), conn = att.conn());
    let resume_from_seq = admission.resume_from_seq;
    // Cluster mode: while its producer is here, this replica serves the channel's remote viewers.
    let _owner = match att.role() {
        Role::Agent => shared.cluster().map(|c| c.own(key)),
        Role::Viewer => None,
    };
    pump(sink, source, att, ack, resume_from_seq, &shared).instrument(span).await;
}

/// Acknowledges an accepted open, then runs both pumps until either side is done.
async fn pump(
    mut sink: Sink,
    mut source: Source,
    att: Attachment,
    ack: u64,
    resume_from_seq: u64,
    shared: &Shared,
) {
    info!(resume_from_seq, ack, "stream open accepted");
    let ack =
        Frame::OpenAck(pb::StreamOpenAck { accepted: true, error: None, resume_from_seq: ack }).encode();
    if sink.send(Message::Binary(ack)).await.is_err() {
        return;
    }
    tokio::select! {
        _ = read_peer(&mut source, &att, shared) => {}
        _ = write_peer(&mut sink, &att, shared) => {}
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    debug!("stream connection ended");
}

/// Reads the peer until it closes, feeding the registry. Stops reading while the other side
/// is saturated (backpressure), never drops what it read.
async fn read_peer(source: &mut Source, att: &Attachment, shared: &Shared) {
    let mut throttle = Throttle::new(shared.config.producer_rate, Instant::now());
    loop {
        match att.role() {
            Role::Agent => att.wait_producer_room(shared.config.stall_grace).await,
            Role::Viewer => att.wait_viewer_room().await,
        }
        // Our pings make a live peer answer at least every PING_EVERY.
        let bytes = match tokio::time::timeout(SILENCE_LIMIT, source.next()).await {
            Err(_) => {
                info!(silent_for = ?SILENCE_LIMIT, "peer stopped answering; dropping it");
                shared.metrics.dead_peer();
                return;
            }
            Ok(Some(Ok(Message::Close(_))) | None) => return,
            Ok(Some(Ok(msg))) => {
                if att.role() == Role::Agent {
                    att.heard_from_producer();
                }
                match msg {
                    Message::Binary(bytes) => bytes,
                    _ => continue,
                }
            }
            Ok(Some(Err(e))) => {
                info!(error = %e, "socket read failed");
                return;
            }
        };
        if att.role() == Role::Agent {
            let wait = throttle.charge(bytes.len(), Instant::now());
            if !wait.is_zero() {
                shared.metrics.producer_throttled();
                tokio::time::sleep(wait).await;
            }
        }
        let frame = match Frame::decode(bytes.clone()) {
            Ok(frame) => frame,
            Err(e) => {
                warn!(error = %e, "ignoring an undecodable relay message");
                continue;
            }
        };
        let done = match att.role() {
            Role::Agent => producer_message(att, frame, bytes),
            Role::Viewer => viewer_message(att, frame, bytes),
        };
        if done {
            return;
        }
    }
}

/// Returns true when the producer ended the channel.
fn producer_message(att: &Attachment, frame: Frame, raw: Bytes) -> bool {
    match frame {
        Frame::Data(f) => att.producer_frame(f.seq, f.delta, raw),
        Frame::Close(close) => {
            info!(reason = close.reason, message = %close.message, "producer closed the channel");
            att.producer_close(close);
            return true;
        }
        other => debug!(tag = other.tag(), "ignoring a producer message that only viewers send"),
    }
    false
}

/// Returns true when the viewer detached.
pub(crate) fn viewer_message(att: &Attachment, frame: Frame, raw: Bytes) -> bool {
    match frame {
        Frame::Data(f) => att.viewer_input(Input::Data(f)),
        Frame::PtyResize(_) => att.viewer_input(Input::Resize(raw)),
        Frame::DesktopInput(_) => att.viewer_input(Input::Desktop(raw)),
        Frame::Close(_) => return true,
        other => debug!(tag = other.tag(), "ignoring a viewer message that only producers send"),
    }
    false
}

/// Writes what the registry hands out until a StreamClose is due or the relay shuts down.
async fn write_peer(sink: &mut Sink, att: &Attachment, shared: &Shared) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        let next = tokio::select! {
            next = att.next() => next,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                continue;
            }
            _ = shared.shutdown.cancelled() => Next::Close(pb::StreamClose {
                channel_id: String::new(),
                reason: pb::StreamCloseReason::TransportError as i32,
                message: "relay shutting down; reconnect to resume".into(),
            }),
        };
        match next {
            Next::Send(batch) => {
                // A peer that stops reading blocks this send; being kicked or a shutdown
                // abandons the wait (the socket keeps what it buffered) to deliver the close.
                let sent = tokio::select! {
                    r = send_batch(sink, batch) => r,
                    _ = att.kicked() => Ok(()),
                    _ = shared.shutdown.cancelled() => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
                ping.reset();
            }
            Next::Idle => {}
            Next::Ping => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            Next::Close(mut close) => {
                if close.channel_id.is_empty() {
                    close.channel_id = att.channel_id().to_owned();
                }
                debug!(reason = close.reason, message = %close.message, "closing peer");
                let msg = Message::Binary(Frame::Close(close).encode());
                let grace = shared.config.stall_grace.min(shared.config.shutdown_grace);
                if tokio::time::timeout(grace, sink.send(msg)).await.is_err() {
                    debug!("peer did not take its StreamClose in time");
                }
                return;
            }
        }
    }
}

async fn send_batch(sink: &mut Sink, batch: Vec<Bytes>) -> Result<(), axum::Error> {
    for msg in batch {
        sink.feed(Message::Binary(msg)).await?;
    }
    sink.flush().await
}
