//! The channel registry: the only place channel state lives. Everything a pump may do to a
//! channel goes through `Registry::attach` and the returned `Attachment`, so the backing (today
//! an in-process map; for scale-out, state shared through NATS) can change without touching the
//! socket code. Channels are keyed by {ws, agent, port, channel}; one with neither producer nor
//! viewer is forgotten after `reap_after`, one that never had a producer as soon as its last
//! viewer leaves.
//!
//! What one viewer token can make the relay hold is bounded: viewers may wait for a channel's
//! first producer (after a relay restart viewers and agents come back in any order), but one
//! token holds at most `waits_per_token` such waits. A producer gets a channel that already has
//! one only if that one does not answer a ping within `probe_timeout` (a link that died
//! without a close); while it answers, the newcomer is refused, retryable, so no second
//! connection can take over a live channel and the viewers' input history.

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
use crate::metrics::{Gauges, Metrics, RejectReason, Role};
use crate::tally::Tally;

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
    /// Wait slots per viewer token holder (`ws/session/viewer`).
    waits: Tally<String>,
}

/// Largest batch a pump takes from a ring at once.
const BATCH_BYTES: usize = 256 << 10;

impl Registry {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let waits = Tally::new(limits.waits_per_token);
        Arc::new(Registry {
            channels: Mutex::default(),
            limits,
            metrics,
            next_conn: AtomicU64::new(1),
            waits,
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ChannelKey, Arc<Channel>>> {
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins an admitted peer to its channel (creating the channel if needed). Returns the
    /// attachment and the `resume_from_seq` for the peer's OpenAck. A producer of a channel
    /// that has one waits for the probe of the one there (see the module doc).
    pub async fn attach(self: &Arc<Self>, admission: &Admission) -> Result<(Attachment, u64), Rejection> {
        let replacing = match admission.peer {
            Peer::Producer => self.probe_producer(&admission.key).await?,
            Peer::Viewer(_) => None,
        };
        self.join(admission, replacing)
    }

    /// Pings the producer attached to `key`, if any, and waits up to `probe_timeout` for any
    /// message from it. One that answers keeps the channel (`Err`); returns the connection of
    /// one that did not, which the caller may replace.
    async fn probe_producer(&self, key: &ChannelKey) -> Result<Option<ConnId>, Rejection> {
        let Some(chan) = self.map().get(key).cloned() else { return Ok(None) };
        let Some((old, heard)) = chan.lock().request_probe() else { return Ok(None) };
        chan.changed.notify_waiters();
        let settled = wait_until(&chan, &chan.changed, |s| s.probe_settled(old, heard));
        let _timed_out = tokio::time::timeout(self.limits.probe_timeout, settled).await;
        if chan.lock().producer_answered(old, heard) {
            return Err(Rejection::new(
                RejectReason::ProducerLive,
                "the channel's producer is connected and answering; retry once it is gone",
            ));
        }
        Ok(Some(old))
    }

    fn join(
        self: &Arc<Self>,
        admission: &Admission,
        replacing: Option<ConnId>,
    ) -> Result<(Attachment, u64), Rejection> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map();
        let key = &admission.key;
        // Taken before the channel exists, so a refused viewer creates nothing.
        let wait = match &admission.peer {
            Peer::Viewer(grant) if map.get(key).is_none_or(|c| c.lock().awaits_first_producer()) => {
                let slot = self.waits.try_acquire(grant.holder.clone()).ok_or_else(|| {
                    Rejection::new(
                        RejectReason::TooManyWaits,
                        format!(
                            "this token already waits on {} channels that no producer has opened; retry once one is served or closed",
                            self.limits.waits_per_token
                        ),
                    )
                })?;
                Some(slot)
            }
            _ => None,
        };
        let chan = map
            .entry(key.clone())
            .or_insert_with(|| {
                let state = ChannelState::new(&key.channel_id, key.port, self.limits, Instant::now());
                Arc::new(Channel { state: Mutex::new(state), changed: Notify::new(), drained: Notify::new() })
            })
            .clone();
        let mut state = chan.lock();
        let joined = match &admission.peer {
            Peer::Producer if state.producer_conn().is_some_and(|c| Some(c) != replacing) => Err(
                Rejection::new(RejectReason::ProducerLive, "another producer got the channel first; retry"),
            ),
            Peer::Producer => {
                state.join_producer(conn, admission.kind, admission.resume_from_seq, &self.metrics)
            }
            Peer::Viewer(grant) => state
                .join_viewer(conn, admission.kind, grant.clone(), admission.resume_from_seq, &self.metrics)
                .inspect(|_| {
                    if let Some(slot) = wait {
                        state.hold_wait(conn, slot);
                    }
                }),
        };
        let forget = joined.is_err() && state.forgettable();
        drop(state);
        if forget {
            map.remove(key);
        }
        drop(map);
        let ack = joined?;
        // A join may have kicked someone (replaced producer, fenced viewers).
        chan.wake_all();
        let role = match admission.peer {
            Peer::Producer => Role::Agent,
            Peer::Viewer(_) => Role::Viewer,
        };
        let attachment = Attachment { registry: self.clone(), chan, conn, role, key: key.clone() };
        Ok((attachment, ack))
    }

    /// Whether this relay serves `key` itself (a producer is attached or ended it). In cluster
    /// mode a viewer of any other channel is served from the replica that holds its producer.
    pub fn serves_locally(&self, key: &ChannelKey) -> bool {
        self.map().get(key).is_some_and(|c| c.lock().served_here())
    }

    /// Cluster mode: `key`'s producer joined another replica; viewers waiting here for it are
    /// told to reconnect. Returns how many.
    pub fn release_moved(&self, key: &ChannelKey) -> usize {
        let Some(chan) = self.map().get(key).cloned() else { return 0 };
        let n = chan.lock().release_moved();
        if n > 0 {
            chan.wake_all();
        }
        n
    }

    /// A wait slot of the viewer token `holder` (cluster mode: a viewer waiting for a producer
    /// on no replica yet holds one, as one waiting on this relay does).
    pub fn wait_slot(&self, holder: &str) -> Option<crate::tally::Slot<String>> {
        self.waits.try_acquire(holder.to_owned())
    }

    /// Channel, producer and viewer counts for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let map = self.map();
        let mut g = Gauges { channels: map.len() as u64, ..Gauges::default() };
        for chan in map.values() {
            let state = chan.lock();
            let (p, v) = state.counts();
            g.producers += p;
            g.viewers += v;
            g.waiting_viewers += state.waiting();
            g.unclaimed_input_bytes += state.unclaimed_input();
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
    key: ChannelKey,
}

/// Waits until `ready` holds for `chan`'s state, re-checking whenever `notify` fires.
async fn wait_until(chan: &Channel, notify: &Notify, mut ready: impl FnMut(&mut ChannelState) -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready(&mut chan.lock()) {
            return;
        }
        notified.await;
    }
}

impl Attachment {
    pub fn channel_id(&self) -> &str {
        &self.key.channel_id
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
    async fn wait_for(&self, notify: &Notify, ready: impl FnMut(&mut ChannelState) -> bool) {
        wait_until(&self.chan, notify, ready).await;
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
    pub fn producer_frame(&self, seq: u64, delta: bool, msg: bytes::Bytes) {
        self.chan.lock().producer_frame(self.conn, seq, delta, msg, self.metrics());
        self.chan.wake_all();
    }

    /// The producer ended the channel.
    pub fn producer_close(&self, close: pb::StreamClose) {
        self.chan.lock().producer_close(self.conn, close);
        self.chan.wake_all();
    }

    /// Viewer backpressure: returns when the producer has room for more input, or, with no
    /// producer, when the input held for one is below its cap again.
    pub async fn wait_viewer_room(&self) {
        if self.chan.lock().holds_unclaimed_input() {
            self.metrics().input_held();
        }
        self.wait_for(&self.chan.drained, |s| s.viewer_may_send()).await;
    }

    /// The producer sent something (a pong included): it is alive.
    pub fn heard_from_producer(&self) {
        if self.chan.lock().heard_from_producer(self.conn) {
            self.chan.changed.notify_waiters();
        }
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
        self.next_up_to(BATCH_BYTES).await
    }

    /// [`Self::next`] with a batch of about `max_bytes` at most (at least one message).
    pub async fn next_up_to(&self, max_bytes: usize) -> Next {
        let max_bytes = max_bytes.clamp(1, BATCH_BYTES);
        let mut next = Next::Idle;
        let (conn, role, m) = (self.conn, self.role, self.metrics());
        self.wait_for(&self.chan.changed, |s| {
            next = match role {
                Role::Agent => s.next_for_producer(conn, max_bytes, m),
                Role::Viewer => s.next_for_viewer(conn, max_bytes, m),
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
        let mut map = self.registry.map();
        let mut state = self.chan.lock();
        state.leave(self.conn, Instant::now());
        let forget = state.forgettable();
        drop(state);
        if forget && map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.chan)) {
            map.remove(&self.key);
        }
        drop(map);
        self.chan.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::ViewerGrant;
    use tether_proto::token::ViewerMode;

    fn limits() -> Limits {
        Limits {
            ring_bytes: 1 << 16,
            viewer_queue_bytes: 1 << 12,
            unclaimed_input_bytes: 1 << 12,
            waits_per_token: 2,
            probe_timeout: Duration::from_millis(50),
        }
    }

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

    fn viewer_of(holder: &str) -> Peer {
        Peer::Viewer(ViewerGrant {
            identity: "s/v".into(),
            holder: holder.into(),
            lease_epoch: 0,
            authority_epoch: None,
            mode: ViewerMode::View,
            read_only: false,
        })
    }

    fn viewer() -> Peer {
        viewer_of("w/s/v")
    }

    #[tokio::test]
    async fn channels_are_shared_by_key_and_reaped_only_when_nobody_is_left() {
        let reg = Registry::new(limits(), Arc::default());
        let after = Duration::from_secs(30);
        let (producer, _) = reg.attach(&admission("c1", Peer::Producer)).await.unwrap();
        let (v1, _) = reg.attach(&admission("c1", viewer())).await.unwrap();
        let (v2, _) = reg.attach(&admission("c2", viewer())).await.unwrap();
        let g = reg.gauges();
        assert_eq!((g.channels, g.producers, g.viewers, g.waiting_viewers), (2, 1, 2, 1));
        let later = Instant::now() + after * 2;
        assert_eq!(reg.reap(later, after), 0, "attached channels stay");
        drop((producer, v2));
        assert_eq!(reg.gauges().channels, 1, "c2 never had a producer: forgotten with its last viewer");
        assert_eq!(reg.reap(Instant::now(), after), 0, "c1 still has a viewer");
        drop(v1);
        assert_eq!(reg.reap(Instant::now(), after), 0, "c1 has not been idle long enough");
        assert_eq!(reg.reap(Instant::now() + after * 3, after), 1);
        assert_eq!(reg.gauges().channels, 0);
    }

    #[tokio::test]
    async fn a_token_waits_on_a_bounded_number_of_channels_no_producer_opened() {
        let reg = Registry::new(limits(), Arc::default());
        let (_a, _) = reg.attach(&admission("a", viewer())).await.unwrap();
        let (_b, _) = reg.attach(&admission("b", viewer())).await.unwrap();
        let refused = reg.attach(&admission("c", viewer())).await.unwrap_err();
        assert_eq!(refused.reason, RejectReason::TooManyWaits);
        assert_eq!(reg.gauges().channels, 2, "a refused viewer creates no channel");
        let other = reg.attach(&admission("c", viewer_of("w/s/other"))).await;
        assert!(other.is_ok(), "other tokens are counted apart");
        // A producer serving `a` ends that wait: the token may wait on another channel.
        let (_p, _) = reg.attach(&admission("a", Peer::Producer)).await.unwrap();
        assert_eq!(reg.gauges().waiting_viewers, 2);
        assert!(reg.attach(&admission("c", viewer())).await.is_ok());
    }

    #[tokio::test]
    async fn a_producer_that_answers_keeps_its_channel_one_that_does_not_is_replaced() {
        let reg = Registry::new(limits(), Arc::default());
        let (live, _) = reg.attach(&admission("c", Peer::Producer)).await.unwrap();
        let answering = tokio::spawn(async move {
            loop {
                match live.next().await {
                    Next::Ping => live.heard_from_producer(),
                    Next::Close(_) => return live,
                    _ => {}
                }
            }
        });
        let refused = reg.attach(&admission("c", Peer::Producer)).await.unwrap_err();
        assert_eq!(refused.reason, RejectReason::ProducerLive);
        answering.abort();
        let _ = answering.await;
        // The aborted task dropped `live`: the channel is free again.
        assert!(reg.attach(&admission("c", Peer::Producer)).await.is_ok());
    }

    #[tokio::test]
    async fn a_kicked_writer_is_woken_with_its_close() {
        let reg = Registry::new(limits(), Arc::default());
        let (old, _) = reg.attach(&admission("c", Peer::Producer)).await.unwrap();
        let waiter = tokio::spawn(async move {
            old.kicked().await;
            old.next().await
        });
        tokio::task::yield_now().await;
        // `old` never answers the probe: it is taken for dead and replaced.
        let (_new, _) = reg.attach(&admission("c", Peer::Producer)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        let Next::Close(close) = next else { panic!("expected a close, got {next:?}") };
        assert_eq!(close.reason, pb::StreamCloseReason::TransportError as i32);
    }
}
