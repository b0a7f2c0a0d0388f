//! The viewer's side of links: a viewer connected to this replica whose channel this replica
//! does not serve. It is acknowledged at once (from its own cursor, as a lone relay
//! acknowledges a viewer that waits for a producer), then served through a link to the owner.
//! When the owner goes silent the viewer stays connected and a new link is opened from its
//! cursor as soon as an owner answers again; frames below the cursor (a resumed producer
//! resends what its buffer holds) are dropped here, so none is repeated.
//!
//! What this side holds per viewer is bounded: the link's credit window (the viewer queue
//! size) of output, and `--unclaimed-input-bytes` of input read from the viewer and not yet
//! taken by the owner (past that the viewer is read no further).

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Request, Subscriber, client::RequestErrorKind};
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::ViewerMode;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::stats::{add, count};
use super::wire::{Ctl, Down, OpenReply, OpenRequest};
use super::{Cluster, HEARTBEAT, LINK_TIMEOUT};
use crate::Shared;
use crate::handshake::{Admission, Peer, Rejection};
use crate::metrics::{RejectReason, Role};

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;
type Input = (Bytes, OwnedSemaphorePermit);

/// How long an owner has to answer a link open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a viewer waiting for an owner asks again (besides hearing an announce).
const POLL: Duration = Duration::from_secs(2);
/// How long the owner may take one input message (it holds input back while its producer
/// has no room, like a lone relay stops reading its viewers).
const INPUT_TIMEOUT: Duration = Duration::from_secs(30);
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a link ended.
enum End {
    /// The owner went silent or away: find the channel again.
    OwnerLost,
    /// The viewer is done (left, closed, or told to go).
    Done,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Waiting,
    Linked,
}

/// Serves an admitted viewer of a channel this replica does not serve, to the end.
pub async fn serve_viewer(
    mut sink: Sink,
    source: Source,
    admission: Admission,
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
) {
    let Peer::Viewer(grant) = &admission.peer else { return };
    // Held while no owner has served this viewer yet, as a lone relay holds one for a viewer
    // of a channel no producer has opened.
    let Some(slot) = shared.registry.wait_slot(&grant.holder) else {
        let rejection = Rejection::new(
            RejectReason::TooManyWaits,
            format!(
                "this token already waits on {} channels that no producer has opened; retry once one is served or closed",
                shared.config.max_waits_per_token
            ),
        );
        shared.metrics.open_rejected(rejection.reason);
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Binary(rejection.ack()))).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        return;
    };
    shared.metrics.open_accepted(Role::Viewer);
    let ack = pb::StreamOpenAck { accepted: true, error: None, resume_from_seq: admission.resume_from_seq };
    if sink.send(Message::Binary(Frame::OpenAck(ack).encode())).await.is_err() {
        return;
    }
    let (tx, rx) = mpsc::channel(64);
    let gone = CancellationToken::new();
    let room = Arc::new(Semaphore::new(shared.config.unclaimed_input_bytes));
    let reader =
        tokio::spawn(read_viewer(source, tx, room, shared.config.unclaimed_input_bytes, gone.clone()));
    add(&cluster.stats.waiting_viewers, 1);
    let mut session = Session {
        sink,
        cursor: admission.resume_from_seq,
        admission: admission.clone(),
        input: Arc::new(Mutex::new((rx, None))),
        gone,
        cluster: cluster.clone(),
        shared: shared.clone(),
        state: State::Waiting,
        last_ping: Instant::now(),
    };
    let mut slot = Some(slot);
    session.run(&mut slot).await;
    match session.state {
        State::Waiting => add(&cluster.stats.waiting_viewers, -1),
        State::Linked => add(&cluster.stats.remote_viewers, -1),
    }
    reader.abort();
    let _ = tokio::time::timeout(CLOSE_WAIT, session.sink.close()).await;
}

/// Input read from the viewer, and one message the last owner did not take (sent first).
type InputQueue = Arc<Mutex<(mpsc::Receiver<Input>, Option<Input>)>>;

struct Session {
    sink: Sink,
    /// The next seq the viewer needs.
    cursor: u64,
    admission: Admission,
    input: InputQueue,
    /// Cancelled when the viewer left.
    gone: CancellationToken,
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    state: State,
    last_ping: Instant,
}

impl Session {
    fn set_state(&mut self, state: State) {
        if self.state == state {
            return;
        }
        let stats = &self.cluster.stats;
        let (from, to) = match state {
            State::Linked => (&stats.waiting_viewers, &stats.remote_viewers),
            State::Waiting => (&stats.remote_viewers, &stats.waiting_viewers),
        };
        add(from, -1);
        add(to, 1);
        self.state = state;
    }

    async fn run(&mut self, slot: &mut Option<crate::tally::Slot<String>>) {
        let cluster = self.cluster.clone();
        let announce_subject = cluster.key_subject("announce", &self.admission.key);
        let mut waiting_since: Option<Instant> = None;
        loop {
            // Listening before asking, so an owner that appears in between is heard.
            let announces = cluster.nats.subscribe(announce_subject.clone()).await.ok();
            match self.open().await {
                Ok(Some((down, reply))) => {
                    drop(announces);
                    slot.take();
                    waiting_since = None;
                    self.set_state(State::Linked);
                    let end = self.link(down, reply).await;
                    match end {
                        End::Done => return,
                        End::OwnerLost => {
                            self.set_state(State::Waiting);
                            // An owner that answers opens but fails links is not asked in a hot loop.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                Ok(None) => {}
                Err(close) => return self.close(close).await,
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let after = self.shared.config.reap_after;
            if since.elapsed() >= after {
                self.shared.metrics.orphaned_viewer();
                let why = format!("no producer attached for {after:?}; the channel is presumed gone");
                return self.close(self.closing(pb::StreamCloseReason::Normal, why)).await;
            }
            let announced = async {
                match announces {
                    Some(mut sub) => {
                        let _ = sub.next().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = announced => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.gone.cancelled() => return,
                _ = cluster.shutdown.cancelled() => {
                    let close = self.closing(pb::StreamCloseReason::TransportError, "relay shutting down; reconnect to resume");
                    return self.close(close).await;
                }
            }
            if self.last_ping.elapsed() >= PING_EVERY {
                self.last_ping = Instant::now();
                if self.sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }

    fn closing(&self, reason: pb::StreamCloseReason, message: impl Into<String>) -> pb::StreamClose {
        pb::StreamClose {
            channel_id: self.admission.key.channel_id.clone(),
            reason: reason as i32,
            message: message.into(),
        }
    }

    async fn close(&mut self, close: pb::StreamClose) {
        let msg = Message::Binary(Frame::Close(close).encode());
        let _ = tokio::time::timeout(CLOSE_WAIT, self.sink.send(msg)).await;
    }

    /// Asks the channel's owner for a link. `Ok(None)`: no owner (now); `Err`: refused.
    async fn open(&mut self) -> Result<Option<(Subscriber, OpenReply)>, pb::StreamClose> {
        let cluster = &self.cluster;
        let Peer::Viewer(grant) = &self.admission.peer else { return Ok(None) };
        let (down_subject, _, _) = cluster.link_subjects();
        let Ok(down) = cluster.nats.subscribe(down_subject.clone()).await else { return Ok(None) };
        let key = &self.admission.key;
        let req = OpenRequest {
            workspace_id: key.workspace_id.clone(),
            agent_id: key.agent_id.clone(),
            port: key.port,
            channel_id: key.channel_id.clone(),
            kind: self.admission.kind as i32,
            resume_from_seq: self.cursor,
            identity: grant.identity.clone(),
            holder: grant.holder.clone(),
            lease_epoch: grant.lease_epoch,
            authority_epoch: grant.authority_epoch,
            control: grant.mode == ViewerMode::Control,
            read_only: grant.read_only,
            down_subject,
            credit: self.shared.config.viewer_queue_bytes as u64,
        };
        let request = Request::new().payload(req.encode_to_vec().into()).timeout(Some(OPEN_TIMEOUT));
        let reply = match cluster.nats.send_request(cluster.key_subject("open", key), request).await {
            Ok(msg) => msg,
            Err(e) => {
                if !matches!(e.kind(), RequestErrorKind::NoResponders) {
                    debug!(error = %e, "link open got no answer");
                }
                return Ok(None);
            }
        };
        let Ok(reply) = OpenReply::decode(reply.payload) else { return Ok(None) };
        if reply.accepted {
            count(&cluster.stats.links_opened, 1);
            return Ok(Some((down, reply)));
        }
        info!(reason = %reply.reason, message = %reply.message, "the channel's owner refused this viewer");
        let reason = if reply.reason == RejectReason::StaleEpoch.label() {
            pb::StreamCloseReason::Fenced
        } else {
            pb::StreamCloseReason::Normal
        };
        Err(self.closing(reason, format!("refused: {}: {}", reply.reason, reply.message)))
    }

    /// Serves the viewer through one link until it ends.
    async fn link(&mut self, mut down: Subscriber, reply: OpenReply) -> End {
        let cluster = self.cluster.clone();
        let nats = &cluster.nats;
        let lost = CancellationToken::new();
        let input = tokio::spawn(forward_input(
            cluster.clone(),
            reply.input_subject.clone(),
            self.input.clone(),
            lost.clone(),
        ));
        let ctl = reply.ctl_subject;
        let write_limit = self.shared.config.stall_grace * 2;
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut heard = Instant::now();
        let end = loop {
            tokio::select! {
                _ = self.gone.cancelled() => {
                    let _ = nats.publish(ctl.clone(), Ctl::Bye.encode()).await;
                    break End::Done;
                }
                _ = lost.cancelled() => break End::OwnerLost,
                _ = cluster.shutdown.cancelled() => {
                    let _ = nats.publish(ctl.clone(), Ctl::Bye.encode()).await;
                    let close = self.closing(pb::StreamCloseReason::TransportError, "relay shutting down; reconnect to resume");
                    self.close(close).await;
                    break End::Done;
                }
                msg = down.next() => {
                    heard = Instant::now();
                    let Some(msg) = msg else { break End::OwnerLost };
                    match Down::decode(msg.payload) {
                        Some(Down::Frames(msgs)) => {
                            let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
                            count(&cluster.stats.bytes_in, bytes);
                            let fresh = self.keep_fresh(msgs);
                            let written = tokio::time::timeout(write_limit, send_batch(&mut self.sink, fresh)).await;
                            if !matches!(written, Ok(Ok(()))) {
                                let _ = nats.publish(ctl.clone(), Ctl::Bye.encode()).await;
                                break End::Done;
                            }
                            // A slow socket is no sign of a silent owner.
                            heard = Instant::now();
                            self.last_ping = heard;
                            let _ = nats.publish(ctl.clone(), Ctl::Credit(bytes).encode()).await;
                        }
                        Some(Down::Heartbeat) | None => {}
                        Some(Down::Close(close)) => {
                            self.close(close).await;
                            break End::Done;
                        }
                    }
                }
                _ = beat.tick() => {
                    if heard.elapsed() > LINK_TIMEOUT {
                        info!("the channel's owner went silent; finding the channel again");
                        count(&cluster.stats.links_lost, 1);
                        break End::OwnerLost;
                    }
                    let _ = nats.publish(ctl.clone(), Ctl::Credit(0).encode()).await;
                    if self.last_ping.elapsed() >= PING_EVERY {
                        self.last_ping = Instant::now();
                        if self.sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            break End::Done;
                        }
                    }
                }
            }
        };
        input.abort();
        // The task may hold the queue lock until it has seen the abort.
        let _ = input.await;
        let _ = down.unsubscribe().await;
        end
    }

    /// Drops data frames the viewer already has (a resumed producer resends its buffer) and
    /// advances the cursor past the rest.
    fn keep_fresh(&mut self, msgs: Vec<Bytes>) -> Vec<Bytes> {
        msgs.into_iter()
            .filter(|m| match Frame::decode(m.clone()) {
                Ok(Frame::Data(f)) if f.seq < self.cursor => false,
                Ok(Frame::Data(f)) => {
                    self.cursor = f.seq.saturating_add(1);
                    true
                }
                _ => true,
            })
            .collect()
    }
}

async fn send_batch(sink: &mut Sink, batch: Vec<Bytes>) -> Result<(), axum::Error> {
    for msg in batch {
        sink.feed(Message::Binary(msg)).await?;
    }
    sink.flush().await
}

/// Forwards the viewer's input to the owner, one message at a time, each once the previous was
/// taken. One the owner did not answer stays first in line for the next link.
async fn forward_input(cluster: Arc<Cluster>, subject: String, queue: InputQueue, lost: CancellationToken) {
    let mut queue = queue.lock().await;
    loop {
        let next = match queue.1.take() {
            Some(held) => held,
            None => match queue.0.recv().await {
                Some(input) => input,
                None => return,
            },
        };
        let request = Request::new().payload(next.0.clone()).timeout(Some(INPUT_TIMEOUT));
        match cluster.nats.send_request(subject.clone(), request).await {
            Ok(_) => count(&cluster.stats.input_bytes, next.0.len() as u64),
            Err(e) => {
                debug!(error = %e, "the owner did not take input");
                queue.1 = Some(next);
                lost.cancel();
                return;
            }
        }
    }
}

/// Reads the viewer's input (bounded in bytes by `room`) until it leaves, then cancels `gone`.
async fn read_viewer(
    mut source: Source,
    tx: mpsc::Sender<Input>,
    room: Arc<Semaphore>,
    cap: usize,
    gone: CancellationToken,
) {
    loop {
        let bytes = match tokio::time::timeout(SILENCE_LIMIT, source.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) | Err(_) => break,
            Ok(Some(Ok(_))) => continue,
        };
        match Frame::decode(bytes.clone()) {
            Ok(Frame::Close(_)) => break,
            Ok(Frame::Data(_) | Frame::PtyResize(_) | Frame::DesktopInput(_)) => {
                let want = u32::try_from(bytes.len().clamp(1, cap)).unwrap_or(u32::MAX);
                let Ok(permit) = room.clone().acquire_many_owned(want).await else { break };
                if tx.send((bytes, permit)).await.is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    gone.cancel();
}
