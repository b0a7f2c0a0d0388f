//! The channel registry: the only place channel state lives. Everything a pump may do to a
//! channel goes through `Registry::attach` and the returned `Attachment`, so the backing (today
//! an in-process map; for scale-out, state shared through NATS) can change without touching the
//! socket code. Channels are keyed by {ws, agent, port, channel}; one with neither producer nor
//! viewer is forgotten after `reap_after`.

mod channel;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tether_proto::pb;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use channel::ChannelState;
pub use channel::{ConnId, Input, Limits, Next};

use crate::handshake::{Admission, Peer, Rejection};
use crate::metrics::{Gauges, Metrics, Role};

/// The pairing key of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub workspace_id: String,
    pub agent_id: String,
    pub port: u32,
    pub channel_id: String,
}

#[derive(Debug)]
struct Channel {
    state: Mutex<ChannelState>,
    /// New content, a kick or an end: pumps waiting to write re-check.
    changed: Notify,
    /// A cursor moved or a peer left: readers held back by backpressure re-check.
    drained: Notify,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        // A panic while holding the lock would be a bug in `ChannelState`; its data stays
        // consistent per call, so keep serving rather than poisoning every later peer.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake_all(&self) {
        self.changed.notify_waiters();
        self.drained.notify_waiters();
    }
}

/// All channels of this relay process.
#[derive(Debug)]
pub struct Registry {
    channels: Mutex<HashMap<ChannelKey, Arc<Channel>>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
}

/// Largest batch a pump takes from a ring at once.
const BATCH_BYTES: usize = 256 << 10;

impl Registry {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Registry { channels: Mutex::default(), limits, metrics, next_conn: AtomicU64::new(1) })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ChannelKey, Arc<Channel>>> {
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins an admitted peer to its channel (creating the channel if needed). Returns the
    /// attachment and the `resume_from_seq` for the peer's OpenAck.
    pub fn attach(self: &Arc<Self>, admission: &Admission) -> Result<(Attachment, u64), Rejection> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map();
        let key = &admission.key;
        let chan = map
            .entry(key.clone())
            .or_insert_with(|| {
                let state = ChannelState::new(&key.channel_id, key.port, self.limits, Instant::now());
                Arc::new(Channel { state: Mutex::new(state), changed: Notify::new(), drained: Notify::new() })
            })
            .clone();
        let mut state = chan.lock();
        let joined = match &admission.peer {
            Peer::Producer => {
                state.join_producer(conn, admission.kind, admission.resume_from_seq, &self.metrics)
            }
            Peer::Viewer(grant) => state.join_viewer(
                conn,
                admission.kind,
                grant.clone(),
                admission.resume_from_seq,
                &self.metrics,
            ),
        };
        drop(state);
        let ack = joined?;
        // A join may have kicked someone (replaced producer, fenced viewers).
        chan.wake_all();
        let role = match admission.peer {
            Peer::Producer => Role::Agent,
            Peer::Viewer(_) => Role::Viewer,
        };
        let channel_id = key.channel_id.clone();
        Ok((Attachment { registry: self.clone(), chan, conn, role, channel_id }, ack))
    }

    /// Channel, producer and viewer counts for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let map = self.map();
        let mut g = Gauges { channels: map.len() as u64, ..Gauges::default() };
        for chan in map.values() {
            let (p, v) = chan.lock().counts();
            g.producers += p;
            g.viewers += v;
        }
        g
    }

    /// Closes viewers of channels that have had no producer for `after`, and forgets channels
    /// that have had no peer for `after`. Returns how many channels were forgotten.
    pub fn reap(&self, now: Instant, after: Duration) -> usize {
        let mut map = self.map();
        for chan in map.values() {
            if chan.lock().release_orphans(now, after, &self.metrics) > 0 {
                chan.wake_all();
            }
        }
        let before = map.len();
        map.retain(|_, chan| chan.lock().idle_since().is_none_or(|t| now.duration_since(t) < after));
        let reaped = before - map.len();
        for _ in 0..reaped {
            self.metrics.channel_reaped();
        }
        reaped
    }

    /// Reaps idle channels until `stop` is cancelled.
    pub async fn run_reaper(self: Arc<Self>, after: Duration, stop: CancellationToken) {
        let every = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let n = self.reap(Instant::now(), after);
                    if n > 0 {
                        tracing::debug!(reaped = n, "forgot idle channels");
                    }
                }
            }
        }
    }
}

/// One connection's membership in a channel. Dropping it leaves the channel.
#[derive(Debug)]
pub struct Attachment {
    registry: Arc<Registry>,
    chan: Arc<Channel>,
    conn: ConnId,
    role: Role,
    channel_id: String,
}

impl Attachment {
    pub fn channel_id(&self) -> &str {
        &self.channel_id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn conn(&self) -> ConnId {
        self.conn
    }

    fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }

    /// Waits until `ready` holds, re-checking whenever `notify` fires.
    async fn wait_for(&self, notify: &Notify, mut ready: impl FnMut(&mut ChannelState) -> bool) {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&mut self.chan.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// Producer backpressure: returns when the producer may read its next frame. If every
    /// viewer stays stalled for `grace`, the stalled viewers are disconnected instead.
    pub async fn wait_producer_room(&self, grace: Duration) {
        let room = self.wait_for(&self.chan.drained, |s| s.producer_may_read());
        if tokio::time::timeout(grace, room).await.is_err() {
            self.chan.lock().kick_stalled(self.metrics());
            self.chan.wake_all();
        }
    }

    /// A data frame from the producer; `msg` is the relay message exactly as received.
    pub fn producer_frame(&self, seq: u64, msg: bytes::Bytes) {
        self.chan.lock().producer_frame(self.conn, seq, msg, self.metrics());
        self.chan.wake_all();
    }

    /// The producer ended the channel.
    pub fn producer_close(&self, close: pb::StreamClose) {
        self.chan.lock().producer_close(self.conn, close);
        self.chan.wake_all();
    }

    /// Viewer backpressure: returns when the producer has room for more input.
    pub async fn wait_viewer_room(&self) {
        self.wait_for(&self.chan.drained, |s| s.viewer_may_send()).await;
    }

    /// An input message from a viewer.
    pub fn viewer_input(&self, input: Input) {
        self.chan.lock().viewer_input(self.conn, input, self.metrics());
        self.chan.changed.notify_waiters();
    }

    /// Resolves once this connection has been told to go (slow, fenced, replaced), so a writer
    /// blocked on a stalled socket can give up its batch and deliver the StreamClose instead.
    pub async fn kicked(&self) {
        let conn = self.conn;
        self.wait_for(&self.chan.changed, |s| s.is_kicked(conn)).await;
    }

    /// The next messages to write to this peer; waits while there are none.
    pub async fn next(&self) -> Next {
        let mut next = Next::Idle;
        let (conn, role, m) = (self.conn, self.role, self.metrics());
        self.wait_for(&self.chan.changed, |s| {
            next = match role {
                Role::Agent => s.next_for_producer(conn, BATCH_BYTES, m),
                Role::Viewer => s.next_for_viewer(conn, BATCH_BYTES, m),
            };
            next != Next::Idle
        })
        .await;
        // Cursors moved: the producer or viewers held back may go on.
        self.chan.drained.notify_waiters();
        next
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.chan.lock().leave(self.conn, Instant::now());
        self.chan.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::ViewerGrant;
    use tether_proto::token::ViewerMode;

    fn admission(channel: &str, peer: Peer) -> Admission {
        Admission {
            key: ChannelKey {
                workspace_id: "w".into(),
                agent_id: "a".into(),
                port: 7681,
                channel_id: channel.into(),
            },
            kind: pb::StreamKind::Pty,
            peer,
            resume_from_seq: 0,
        }
    }

    fn viewer() -> Peer {
        Peer::Viewer(ViewerGrant {
            identity: "s/v".into(),
            lease_epoch: 0,
            authority_epoch: None,
            mode: ViewerMode::View,
            read_only: false,
        })
    }

    #[test]
    fn channels_are_shared_by_key_and_reaped_only_when_nobody_is_left() {
        let reg = Registry::new(Limits { ring_bytes: 1 << 16, viewer_queue_bytes: 1 << 12 }, Arc::default());
        let after = Duration::from_secs(30);
        let (producer, _) = reg.attach(&admission("c1", Peer::Producer)).unwrap();
        let (v1, _) = reg.attach(&admission("c1", viewer())).unwrap();
        let (v2, _) = reg.attach(&admission("c2", viewer())).unwrap();
        let g = reg.gauges();
        assert_eq!((g.channels, g.producers, g.viewers), (2, 1, 2));
        let later = Instant::now() + after * 2;
        assert_eq!(reg.reap(later, after), 0, "attached channels stay");
        drop((producer, v2));
        assert_eq!(reg.reap(Instant::now(), after), 0, "c2 has not been idle long enough");
        assert_eq!(reg.reap(later, after), 1, "c2 is forgotten, c1 still has a viewer");
        drop(v1);
        assert_eq!(reg.reap(Instant::now() + after * 3, after), 1);
        assert_eq!(reg.gauges().channels, 0);
    }

    #[tokio::test]
    async fn a_kicked_writer_is_woken_with_its_close() {
        let reg = Registry::new(Limits { ring_bytes: 1 << 16, viewer_queue_bytes: 1 << 12 }, Arc::default());
        let (old, _) = reg.attach(&admission("c", Peer::Producer)).unwrap();
        let waiter = tokio::spawn(async move {
            old.kicked().await;
            old.next().await
        });
        tokio::task::yield_now().await;
        let (_new, _) = reg.attach(&admission("c", Peer::Producer)).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        let Next::Close(close) = next else { panic!("expected a close, got {next:?}") };
        assert_eq!(close.reason, pb::StreamCloseReason::TransportError as i32);
    }
}
