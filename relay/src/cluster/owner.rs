//! The owner's side of links: while a producer is attached here, answer link opens for its
//! channel by attaching a viewer to the registry on the remote viewer's behalf, then pump what
//! the registry hands that viewer to the viewer's replica, within the credit it granted, and
//! feed the input it forwards into the registry. The registry cannot tell such a viewer from
//! a local one, which is the point: every delivery rule stays in one place.

use std::sync::Arc;

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::ViewerMode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::stats::{add, count};
use super::wire::{Ctl, Down, OpenReply, OpenRequest};
use super::{Cluster, HEARTBEAT, LINK_TIMEOUT};
use crate::handshake::{Admission, Peer, Rejection, ViewerGrant};
use crate::metrics::RejectReason;
use crate::registry::{Attachment, ChannelKey, Next};

/// Answers link opens for `key` until `stop` is cancelled (its producer left).
pub(super) async fn serve_opens(cluster: Arc<Cluster>, key: ChannelKey, stop: CancellationToken) {
    let subject = cluster.key_subject("open", &key);
    // A queue group: while a replacing producer's connection overlaps the old one's, each open
    // is still answered once.
    let mut opens = match cluster.nats.queue_subscribe(subject.clone(), "owner".into()).await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, "cannot serve remote viewers of this channel");
            return;
        }
    };
    // Announced once the subscription is in place (flushed), so whoever hears it can open.
    let _ = cluster.nats.flush().await;
    let announce = cluster.key_subject("announce", &key);
    if let Err(e) = cluster.nats.publish(announce, Bytes::from(cluster.replica.clone())).await {
        warn!(error = %e, "cannot announce the channel");
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = opens.next() => match msg {
                Some(msg) => { tokio::spawn(open_link(cluster.clone(), key.clone(), msg)); }
                None => break,
            },
        }
    }
    let _ = opens.unsubscribe().await;
}

async fn open_link(cluster: Arc<Cluster>, key: ChannelKey, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else { return };
    let (reply, link) = match accept(&cluster, &key, msg.payload).await {
        Ok((reply, link)) => (reply, Some(link)),
        Err(rejection) => {
            count(&cluster.stats.refused, 1);
            cluster.metrics.open_rejected(rejection.reason);
            info!(reason = rejection.reason.label(), message = %rejection.message, "remote viewer refused");
            let reply = OpenReply {
                accepted: false,
                reason: rejection.reason.label().to_owned(),
                message: rejection.message,
                ..OpenReply::default()
            };
            (reply, None)
        }
    };
    if let Err(e) = cluster.nats.publish(reply_to, reply.encode_to_vec().into()).await {
        debug!(error = %e, "cannot answer a link open");
        return;
    }
    if let Some(link) = link {
        add(&cluster.stats.served_viewers, 1);
        link.run(&cluster).await;
        add(&cluster.stats.served_viewers, -1);
    }
}

/// One remote viewer attached here.
struct Link {
    att: Arc<Attachment>,
    down: String,
    ctl: Subscriber,
    input: Subscriber,
    credit: u64,
}

async fn accept(cluster: &Cluster, key: &ChannelKey, payload: Bytes) -> Result<(OpenReply, Link), Rejection> {
    let req = OpenRequest::decode(payload)
        .map_err(|e| Rejection::new(RejectReason::BadHandshake, format!("undecodable link open: {e}")))?;
    let named = ChannelKey {
        workspace_id: req.workspace_id.clone(),
        agent_id: req.agent_id.clone(),
        port: req.port,
        channel_id: req.channel_id.clone(),
    };
    if named != *key || req.down_subject.is_empty() || req.credit == 0 {
        return Err(Rejection::new(RejectReason::BadHandshake, "link open names another channel"));
    }
    let grant = ViewerGrant {
        identity: req.identity,
        holder: req.holder,
        lease_epoch: req.lease_epoch,
        authority_epoch: req.authority_epoch,
        mode: if req.control { ViewerMode::Control } else { ViewerMode::View },
        read_only: req.read_only,
    };
    let admission = Admission {
        key: named,
        kind: pb::StreamKind::try_from(req.kind).unwrap_or(pb::StreamKind::Unspecified),
        peer: Peer::Viewer(grant),
        resume_from_seq: req.resume_from_seq,
    };
    let (att, ack) = cluster.registry.attach(&admission).await?;
    let (_, ctl_subject, input_subject) = cluster.link_subjects();
    let subscribe = |s: String| async { cluster.nats.subscribe(s).await };
    let failed =
        |e: async_nats::SubscribeError| Rejection::new(RejectReason::ShuttingDown, format!("NATS: {e}"));
    let ctl = subscribe(ctl_subject.clone()).await.map_err(failed)?;
    let input = subscribe(input_subject.clone()).await.map_err(failed)?;
    let reply = OpenReply {
        accepted: true,
        resume_from_seq: ack,
        ctl_subject,
        input_subject,
        ..OpenReply::default()
    };
    let link = Link { att: Arc::new(att), down: req.down_subject, ctl, input, credit: req.credit };
    Ok((reply, link))
}

impl Link {
    async fn run(mut self, cluster: &Cluster) {
        let input = tokio::spawn(take_input(cluster.nats.clone(), self.att.clone(), self.input));
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut heard = Instant::now();
        // Sent and not yet credited back: the link's share of the forwarding lag.
        let mut outstanding: u64 = 0;
        loop {
            let down = tokio::select! {
                _ = cluster.shutdown.cancelled() => Down::Close(pb::StreamClose {
                    channel_id: self.att.channel_id().to_owned(),
                    reason: pb::StreamCloseReason::TransportError as i32,
                    message: "relay shutting down; reconnect to resume".into(),
                }),
                msg = self.ctl.next() => {
                    heard = Instant::now();
                    match msg.and_then(|m| Ctl::decode(m.payload)) {
                        Some(Ctl::Credit(n)) => {
                            self.credit = self.credit.saturating_add(n);
                            let back = n.min(outstanding);
                            outstanding -= back;
                            add(&cluster.stats.lag_bytes, -(back as i64));
                            continue;
                        }
                        Some(Ctl::Bye) | None => break,
                    }
                }
                next = self.att.next_up_to(batch_cap(cluster, self.credit)), if self.credit > 0 => match next {
                    Next::Send(batch) => {
                        let bytes: u64 = batch.iter().map(|m| m.len() as u64).sum();
                        self.credit = self.credit.saturating_sub(bytes);
                        outstanding += bytes;
                        add(&cluster.stats.lag_bytes, bytes as i64);
                        count(&cluster.stats.bytes_out, bytes);
                        Down::Frames(batch)
                    }
                    Next::Close(close) => Down::Close(close),
                    Next::Idle | Next::Ping => continue,
                },
                _ = beat.tick() => {
                    if heard.elapsed() > LINK_TIMEOUT {
                        info!("the remote viewer's replica went silent; dropping its viewer");
                        count(&cluster.stats.links_lost, 1);
                        break;
                    }
                    Down::Heartbeat
                }
            };
            let closing = matches!(down, Down::Close(_));
            if let Err(e) = cluster.nats.publish(self.down.clone(), down.encode()).await {
                warn!(error = %e, "cannot forward to a remote viewer; dropping it");
                break;
            }
            if closing {
                break;
            }
        }
        add(&cluster.stats.lag_bytes, -(outstanding as i64));
        input.abort();
        let _ = self.ctl.unsubscribe().await;
    }
}

/// The most bytes to take for one NATS message: the credit left, and room under the server's
/// `max_payload` for the framing (a single relay message larger than that cannot cross; keep
/// `max_payload` above `--max-message-bytes`).
fn batch_cap(cluster: &Cluster, credit: u64) -> usize {
    let payload = cluster.nats.server_info().max_payload;
    let room = if payload == 0 { usize::MAX } else { payload.saturating_sub(4 << 10).max(1) };
    usize::try_from(credit).unwrap_or(usize::MAX).min(room)
}

/// Feeds the input a remote viewer's replica forwards into the registry, in order, answering
/// each once taken (the viewer's replica sends the next only then).
async fn take_input(nats: async_nats::Client, att: Arc<Attachment>, mut input: Subscriber) {
    while let Some(msg) = input.next().await {
        att.wait_viewer_room().await;
        if let Ok(frame) = Frame::decode(msg.payload.clone()) {
            let _detached = crate::splice::viewer_message(&att, frame, msg.payload.clone());
        }
        if let Some(reply) = msg.reply {
            // Nothing to do when this fails: the other end times out and opens a new link.
            let _ = nats.publish(reply, Bytes::new()).await;
        }
    }
}
