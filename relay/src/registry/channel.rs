//! The state of one channel and every decision about it, with no sockets and no waiting: who
//! is attached, the two replay rings, the seq of each direction, viewer cursors, epoch floors,
//! input rules. The registry wraps it in a lock and wakes waiters; the pumps only move bytes.
//!
//! Agent-to-viewer frames keep the agent's seq and are stored as the agent sent them. Viewer
//! input is renumbered onto the channel's one viewer-to-agent sequence in arrival order. Resize
//! and desktop input carry no seq, so they are delivered live only and never replayed (a
//! replayed click could land twice); the last resize is re-sent to a (re)joining producer
//! because applying it again is harmless.
//!
//! The producer is also told how many viewers the channel has (ViewerPresence): first thing
//! after its OpenAck, then whenever the count changes. It is state, not an event, so it is
//! never queued: each producer connection remembers the count it was last told and gets the
//! current one when they differ. The agent needs it to tell a watched terminal from an idle one.
//!
//! Bounds against a viewer that opens channels no producer serves: a viewer of a channel that
//! never had a producer holds a wait slot of its token (released when the first producer joins
//! or the viewer leaves), and input for a channel without a producer is held up to
//! `unclaimed_input_bytes`; past that the relay stops reading its viewers (nothing is dropped).
//!
//! One producer at a time: a second one is let in only once the registry has found the first
//! silent ([`ChannelState::request_probe`]): the first is pinged, and every message it sends
//! counts as hearing from it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::frame::Frame;
use tether_proto::pb;

use crate::handshake::{Rejection, ViewerGrant};
use crate::metrics::{Dir, Metrics, RejectReason};
use crate::ring::Ring;
use crate::tally::Slot;

/// Identifies one websocket connection.
pub type ConnId = u64;

/// Bounds of a channel and of what one token may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ring_bytes: usize,
    pub viewer_queue_bytes: usize,
    /// Viewer input held while the channel has no producer.
    pub unclaimed_input_bytes: usize,
    /// Viewers of one token waiting on channels that never had a producer.
    pub waits_per_token: usize,
    /// How long a producer has to answer when another connection claims its channel.
    pub probe_timeout: Duration,
}

/// What a pump should do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Write these messages, in order.
    Send(Vec<Bytes>),
    /// Nothing yet; wait for a change.
    Idle,
    /// Write this StreamClose, then close the socket.
    Close(pb::StreamClose),
    /// Ping the peer (a producer whose liveness is being checked).
    Ping,
}

/// One input message of a viewer.
#[derive(Debug)]
pub enum Input {
    Data(pb::StreamFrame),
    /// The raw PtyResize message.
    Resize(Bytes),
    /// The raw DesktopInput message.
    Desktop(Bytes),
}

#[derive(Debug)]
struct ViewerSlot {
    grant: ViewerGrant,
    /// Position in the down ring of the next entry to look at.
    cursor: u64,
    /// Next agent-to-viewer seq this viewer must get.
    expected: u64,
    /// Entries before this position were buffered before the viewer joined.
    replay_end: u64,
    /// Down-ring offset when the viewer joined: replayed bytes do not count as lag.
    join_offset: u64,
    /// Its token's wait slot while the channel has never had a producer.
    wait: Option<Slot<String>>,
    /// Desktop: the viewer missed frames, so delta frames are skipped until a whole one.
    needs_key: bool,
}

#[derive(Debug)]
struct ProducerSlot {
    conn: ConnId,
    cursor: u64,
    replay_end: u64,
    /// The viewer count last sent to this connection (`None` before the first ViewerPresence).
    told_viewers: Option<u32>,
    /// Messages received from this connection (pongs included).
    heard: u64,
    /// A ping is to be sent (liveness check).
    ping_due: bool,
    /// Someone waits to learn whether this connection answers.
    probed: bool,
}

/// Everything the relay knows about one channel.
#[derive(Debug)]
pub struct ChannelState {
    channel_id: String,
    port: u32,
    kind: pb::StreamKind,
    limits: Limits,
    down: Ring,
    /// Next agent-to-viewer seq expected from the producer; `None` until the first frame.
    down_next: Option<u64>,
    up: Ring,
    up_next: u64,
    /// Up-ring position up to which the last producer took input (while none is attached).
    up_taken: u64,
    /// False until a producer said which viewer-to-agent seq it expects next.
    up_base_known: bool,
    producer: Option<ProducerSlot>,
    viewers: HashMap<ConnId, ViewerSlot>,
    /// Connections told to go, with what to tell them.
    kicks: HashMap<ConnId, pb::StreamClose>,
    /// Per viewer identity: the next own input seq accepted (older ones are repeats).
    input_cursors: HashMap<String, u64>,
    lease_floor: u64,
    authority_floor: Option<u64>,
    last_resize: Option<Bytes>,
    ended: Option<pb::StreamClose>,
    idle_since: Option<Instant>,
    /// Since when no producer is attached (`None` while one is).
    no_producer_since: Option<Instant>,
}

impl ChannelState {
    pub fn new(channel_id: &str, port: u32, limits: Limits, now: Instant) -> Self {
        ChannelState {
            channel_id: channel_id.to_owned(),
            port,
            kind: pb::StreamKind::Unspecified,
            limits,
            down: Ring::new(limits.ring_bytes),
            down_next: None,
            up: Ring::new(limits.ring_bytes),
            up_next: 0,
            up_taken: 0,
            up_base_known: false,
            producer: None,
            viewers: HashMap::new(),
            kicks: HashMap::new(),
            input_cursors: HashMap::new(),
            lease_floor: 0,
            authority_floor: None,
            last_resize: None,
            ended: None,
            idle_since: Some(now),
            no_producer_since: Some(now),
        }
    }

    /// When the channel lost its last peer (`None` while anyone is attached).
    pub fn idle_since(&self) -> Option<Instant> {
        self.idle_since
    }

    /// Whether `conn` has been told to go.
    pub fn is_kicked(&self, conn: ConnId) -> bool {
        self.kicks.contains_key(&conn)
    }

    /// (producers, viewers) attached.
    pub fn counts(&self) -> (u64, u64) {
        (u64::from(self.producer.is_some()), self.viewers.len() as u64)
    }

    /// Viewers holding a wait slot (the channel never had a producer).
    pub fn waiting(&self) -> u64 {
        self.viewers.values().filter(|v| v.wait.is_some()).count() as u64
    }

    /// True until a producer first joins (only a producer's join sets the kind).
    pub fn awaits_first_producer(&self) -> bool {
        self.kind == pb::StreamKind::Unspecified && self.ended.is_none()
    }

    /// A channel no producer ever served and nobody watches holds nothing worth keeping.
    pub fn forgettable(&self) -> bool {
        self.awaits_first_producer() && self.viewers.is_empty()
    }

    /// Keeps `conn`'s wait slot until a producer joins or the viewer leaves.
    pub fn hold_wait(&mut self, conn: ConnId, slot: Slot<String>) {
        if let Some(v) = self.viewers.get_mut(&conn) {
            v.wait = Some(slot);
        }
    }

    fn close(&self, reason: pb::StreamCloseReason, message: impl Into<String>) -> pb::StreamClose {
        pb::StreamClose {
            channel_id: self.channel_id.clone(),
            reason: reason as i32,
            message: message.into(),
        }
    }

    fn kick(&mut self, conn: ConnId, reason: pb::StreamCloseReason, message: String) {
        let close = self.close(reason, message);
        self.viewers.remove(&conn);
        self.drop_producer(conn, Instant::now());
        self.kicks.insert(conn, close);
    }

    /// Forgets the producer if it is `conn`, remembering how far it took input.
    fn drop_producer(&mut self, conn: ConnId, now: Instant) {
        if let Some(p) = self.producer.take_if(|p| p.conn == conn) {
            self.up_taken = p.cursor;
            self.no_producer_since = Some(now);
        }
    }

    fn is_desktop(&self) -> bool {
        self.kind == pb::StreamKind::Desktop || self.port == tether_proto::DESKTOP_PORT
    }

    fn queue_bytes(&self) -> u64 {
        (self.limits.viewer_queue_bytes as u64).max(1)
    }

    /// Registers the producer; returns the next agent-to-viewer seq the relay expects.
    pub fn join_producer(
        &mut self,
        conn: ConnId,
        kind: pb::StreamKind,
        resume_from_seq: u64,
        m: &Metrics,
    ) -> Result<u64, Rejection> {
        if self.ended.is_some() {
            return Err(Rejection::new(
                RejectReason::ChannelEnded,
                "the producer already closed this channel",
            ));
        }
        if self.kind != pb::StreamKind::Unspecified && self.kind != kind {
            return Err(Rejection::new(
                RejectReason::KindMismatch,
                format!("channel is {}, the open says {}", self.kind.as_str_name(), kind.as_str_name()),
            ));
        }
        self.kind = kind;
        if let Some(old) = self.producer.take() {
            m.producer_replaced();
            let why = "replaced by a newer connection of the producer".to_owned();
            self.kick(old.conn, pb::StreamCloseReason::TransportError, why);
        }
        if !self.up_base_known {
            self.rebase_up(resume_from_seq);
        }
        self.up_next = self.up_next.max(resume_from_seq);
        let cursor = self.up.pos_of_seq(resume_from_seq);
        let replay_end = self.up.head_pos();
        self.producer = Some(ProducerSlot {
            conn,
            cursor,
            replay_end,
            told_viewers: None,
            heard: 0,
            ping_due: false,
            probed: false,
        });
        self.no_producer_since = None;
        // Served now: the viewers that waited for this channel no longer count as waiting.
        for v in self.viewers.values_mut() {
            v.wait = None;
        }
        if let Some(resize) = self.last_resize.clone() {
            self.up.push(self.up_next, false, resize);
        }
        self.idle_since = None;
        Ok(self.down_next.unwrap_or(0))
    }

    /// Input buffered before any producer joined this relay was numbered from 0; the first
    /// producer says where its sequence really is, so renumber it from there.
    fn rebase_up(&mut self, base: u64) {
        let mut next = base;
        self.up.rewrite(|seq, sequenced, msg| {
            if !sequenced {
                *seq = next;
                return;
            }
            if let Ok(Frame::Data(mut f)) = Frame::decode(msg.clone()) {
                f.seq = next;
                *msg = Frame::Data(f).encode();
            }
            *seq = next;
            // Only a producer claiming a cursor at the very end of the seq space gets here;
            // its first input then hits the exhausted check in `viewer_input`.
            next = next.saturating_add(1);
        });
        self.up_next = next;
        self.up_base_known = true;
    }

    /// Registers a viewer; returns the seq its stream really resumes from.
    pub fn join_viewer(
        &mut self,
        conn: ConnId,
        kind: pb::StreamKind,
        grant: ViewerGrant,
        resume_from_seq: u64,
        m: &Metrics,
    ) -> Result<u64, Rejection> {
        if kind != pb::StreamKind::Unspecified
            && self.kind != pb::StreamKind::Unspecified
            && kind != self.kind
        {
            return Err(Rejection::new(
                RejectReason::KindMismatch,
                format!("channel is {}, the open says {}", self.kind.as_str_name(), kind.as_str_name()),
            ));
        }
        if grant.lease_epoch < self.lease_floor {
            return Err(Rejection::new(
                RejectReason::StaleEpoch,
                format!(
                    "leaseEpoch {} is below this channel's floor {}",
                    grant.lease_epoch, self.lease_floor
                ),
            ));
        }
        if let (Some(a), Some(floor)) = (grant.authority_epoch, self.authority_floor)
            && a < floor
        {
            return Err(Rejection::new(
                RejectReason::StaleEpoch,
                format!("authorityEpoch {a} is below this channel's floor {floor}"),
            ));
        }
        self.raise_floors(&grant, m);
        let start = self.down.pos_of_seq(resume_from_seq);
        let ack = match self.down.get(start) {
            Some(e) if e.seq > resume_from_seq => {
                m.resume_gap();
                e.seq
            }
            _ => resume_from_seq,
        };
        if resume_from_seq == 0 {
            // A viewer starting from scratch is a new instance: its input seq starts over too.
            self.input_cursors.remove(&grant.identity);
        }
        let slot = ViewerSlot {
            grant,
            cursor: start,
            expected: ack,
            replay_end: self.down.head_pos(),
            join_offset: self.down.head_offset(),
            wait: None,
            needs_key: ack > resume_from_seq,
        };
        self.viewers.insert(conn, slot);
        self.idle_since = None;
        Ok(ack)
    }

    /// A newer epoch fences every viewer below it.
    fn raise_floors(&mut self, grant: &ViewerGrant, m: &Metrics) {
        self.lease_floor = self.lease_floor.max(grant.lease_epoch);
        if let Some(a) = grant.authority_epoch {
            self.authority_floor = Some(self.authority_floor.map_or(a, |f| f.max(a)));
        }
        let stale: Vec<ConnId> = self
            .viewers
            .iter()
            .filter(|(_, v)| {
                v.grant.lease_epoch < self.lease_floor
                    || matches!((v.grant.authority_epoch, self.authority_floor), (Some(a), Some(f)) if a < f)
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in stale {
            m.fenced_viewer();
            let why = "a viewer with a newer epoch joined this channel".to_owned();
            self.kick(conn, pb::StreamCloseReason::Fenced, why);
        }
    }

    /// A connection went away.
    pub fn leave(&mut self, conn: ConnId, now: Instant) {
        self.viewers.remove(&conn);
        self.kicks.remove(&conn);
        self.drop_producer(conn, now);
        if self.producer.is_none() && self.viewers.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// Viewers of a live channel that has had no producer for `after` wait for nothing: they
    /// are closed (NORMAL, with the reason). Returns how many.
    pub fn release_orphans(&mut self, now: Instant, after: std::time::Duration, m: &Metrics) -> usize {
        let orphaned = self.ended.is_none()
            && self.no_producer_since.is_some_and(|since| now.saturating_duration_since(since) >= after);
        if !orphaned {
            return 0;
        }
        let conns: Vec<ConnId> = self.viewers.keys().copied().collect();
        for &conn in &conns {
            m.orphaned_viewer();
            let why = format!("no producer attached for {after:?}; the channel is presumed gone");
            self.kick(conn, pb::StreamCloseReason::Normal, why);
        }
        conns.len()
    }

    /// Bytes produced since the viewer joined that it has not taken yet (`MAX` when its next
    /// frame was evicted).
    fn backlog(&self, v: &ViewerSlot) -> u64 {
        match self.down.offset_of(v.cursor) {
            Some(offset) => self.down.head_offset() - offset.max(v.join_offset),
            None => u64::MAX,
        }
    }

    /// Backpressure: the producer may read its next frame while every viewer's queue has room,
    /// so a burst is paced to the viewers instead of overrunning one of them.
    pub fn producer_may_read(&self) -> bool {
        // A desktop viewer behind the newest frame skips to it instead of holding anyone up.
        self.is_desktop() || self.viewers.values().all(|v| self.backlog(v) < self.queue_bytes())
    }

    /// The producer waited the whole stall grace for room: the viewers whose queue is still
    /// full are too slow; drop them so the others (and the producer) go on.
    pub fn kick_stalled(&mut self, m: &Metrics) {
        if self.is_desktop() {
            return;
        }
        let full = self.queue_bytes();
        let stalled: Vec<ConnId> =
            self.viewers.iter().filter(|(_, v)| self.backlog(v) >= full).map(|(c, _)| *c).collect();
        for conn in stalled {
            self.kick_slow(conn, m);
        }
    }

    /// A peer used the last seq there is (`u64::MAX`): nothing could follow it, so the stream
    /// cannot go on. A protocol error of that peer: it is closed, the frame is dropped.
    fn kick_for_seq(&mut self, conn: ConnId, seq: u64, m: &Metrics) {
        m.protocol_violation();
        let why = format!("protocol error: seq {seq} leaves no next seq");
        self.kick(conn, pb::StreamCloseReason::TransportError, why);
    }

    fn kick_slow(&mut self, conn: ConnId, m: &Metrics) {
        m.slow_viewer();
        let why = format!(
            "viewer left {} bytes unread for too long; reconnect with resume_from_seq to continue",
            self.limits.viewer_queue_bytes
        );
        self.kick(conn, pb::StreamCloseReason::TransportError, why);
    }

    /// A frame from the producer (`msg` is the whole relay message as received; `delta` its
    /// `StreamFrame.delta`).
    pub fn producer_frame(&mut self, conn: ConnId, seq: u64, delta: bool, msg: Bytes, m: &Metrics) {
        if self.producer.as_ref().is_none_or(|p| p.conn != conn) || self.ended.is_some() {
            return;
        }
        match self.down_next {
            Some(next) if seq < next => return m.duplicate(Dir::Down),
            Some(next) if seq > next => m.producer_gap(),
            _ => {}
        }
        let Some(after) = seq.checked_add(1) else {
            return self.kick_for_seq(conn, seq, m);
        };
        m.received(Dir::Down, msg.len());
        m.evicted(Dir::Down, self.down.push_entry(seq, true, delta, msg));
        self.down_next = Some(after);
        if self.is_desktop() {
            // Latest wins: a whole image makes every older frame stale, so the channel holds
            // the newest whole image and the deltas after it (still bounded by the ring's
            // bytes), and a viewer behind skips to the newest whole image (see
            // `next_for_viewer`), never kicked.
            if !delta {
                m.evicted(Dir::Down, self.down.keep_newest());
            }
            return;
        }
        // A viewer still replaying from before it joined can be overtaken by eviction.
        let first = self.down.first_pos();
        let evicted: Vec<ConnId> =
            self.viewers.iter().filter(|(_, v)| v.cursor < first).map(|(c, _)| *c).collect();
        for conn in evicted {
            self.kick_slow(conn, m);
        }
    }

    /// The producer closed the channel: viewers get everything buffered, then this close.
    pub fn producer_close(&mut self, conn: ConnId, mut close: pb::StreamClose) {
        if self.producer.as_ref().is_none_or(|p| p.conn != conn) {
            return;
        }
        close.channel_id = self.channel_id.clone();
        self.ended = Some(close);
        self.producer = None;
    }

    /// What the viewer `conn` should write next (at most about `max_bytes`).
    pub fn next_for_viewer(&mut self, conn: ConnId, max_bytes: usize, m: &Metrics) -> Next {
        if let Some(close) = self.kicks.get(&conn) {
            return Next::Close(close.clone());
        }
        let first = self.down.first_pos();
        let head = self.down.head_pos();
        let latest_wins = self.is_desktop();
        let Some(v) = self.viewers.get_mut(&conn) else {
            return Next::Close(self.close(pb::StreamCloseReason::TransportError, "not attached"));
        };
        let (mut out, mut bytes, mut replayed) = (Vec::new(), 0, 0);
        let mut gap = None;
        // A cursor below the ring's start only skips evicted entries; a hole shows as a seq jump.
        if latest_wins && v.cursor < first {
            v.needs_key = true;
        }
        let mut pos = v.cursor.max(first);
        while pos < head && bytes < max_bytes {
            let Some(e) = self.down.get(pos) else { break };
            if latest_wins {
                // A desktop viewer that missed frames resumes at a whole image: a delta only
                // updates the picture the frames before it drew.
                if e.seq > v.expected {
                    v.needs_key = true;
                }
                if v.needs_key {
                    if e.delta {
                        pos += 1;
                        continue;
                    }
                    v.needs_key = false;
                    v.expected = e.seq;
                }
            }
            if e.seq > v.expected {
                if out.is_empty() {
                    gap = Some(e.seq);
                }
                break;
            }
            if e.seq == v.expected {
                bytes += e.msg.len();
                replayed += u64::from(pos < v.replay_end);
                out.push(e.msg.clone());
                v.expected += 1;
            }
            pos += 1;
        }
        v.cursor = pos;
        if let Some(seq) = gap {
            let why = format!(
                "frames from seq {} on are not held (next held is {seq}); reconnect with resume_from_seq to learn where the stream resumes",
                v.expected
            );
            self.kick(conn, pb::StreamCloseReason::TransportError, why);
            return self.kicks.get(&conn).cloned().map_or(Next::Idle, Next::Close);
        }
        if !out.is_empty() {
            m.sent(Dir::Down, out.len() as u64, bytes as u64, replayed);
            return Next::Send(out);
        }
        match &self.ended {
            Some(close) => Next::Close(close.clone()),
            None => Next::Idle,
        }
    }

    /// What the producer `conn` should write next.
    pub fn next_for_producer(&mut self, conn: ConnId, max_bytes: usize, m: &Metrics) -> Next {
        if let Some(close) = self.kicks.get(&conn) {
            return Next::Close(close.clone());
        }
        let first = self.up.first_pos();
        let head = self.up.head_pos();
        let viewers = u32::try_from(self.viewers.len()).unwrap_or(u32::MAX);
        let Some(p) = self.producer.as_mut().filter(|p| p.conn == conn) else {
            return match &self.ended {
                Some(close) => Next::Close(close.clone()),
                None => Next::Close(self.close(pb::StreamCloseReason::TransportError, "not attached")),
            };
        };
        if std::mem::take(&mut p.ping_due) {
            return Next::Ping;
        }
        let (mut out, mut bytes, mut replayed) = (Vec::new(), 0, 0);
        // First after the OpenAck, then on every change: the producer's idle reaping needs it.
        if p.told_viewers != Some(viewers) {
            p.told_viewers = Some(viewers);
            let presence = pb::ViewerPresence { channel_id: self.channel_id.clone(), viewers };
            let msg = Frame::ViewerPresence(presence).encode();
            bytes += msg.len();
            out.push(msg);
        }
        let mut pos = p.cursor.max(first);
        while pos < head && bytes < max_bytes {
            let Some(e) = self.up.get(pos) else { break };
            let replay = pos < p.replay_end;
            if e.sequenced || !replay {
                bytes += e.msg.len();
                replayed += u64::from(replay);
                out.push(e.msg.clone());
            }
            pos += 1;
        }
        p.cursor = pos;
        if out.is_empty() {
            return Next::Idle;
        }
        m.sent(Dir::Up, out.len() as u64, bytes as u64, replayed);
        Next::Send(out)
    }
}

mod input;
mod liveness;

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
