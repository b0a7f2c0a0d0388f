//! Viewer input: what a viewer may send (spectators, view mode, repeats after a resume), the
//! renumbering onto the channel's one viewer-to-agent sequence, and backpressure: a producer's
//! unread input, or without a producer the input held for nobody, stops the relay reading
//! viewers, so nothing is dropped and nothing piles up.

use bytes::Bytes;
use tether_proto::frame::Frame;
use tether_proto::token::ViewerMode;

use super::{ChannelState, ConnId, Input};
use crate::metrics::{Dir, DropReason, Metrics};

impl ChannelState {
    /// Viewer input held for no producer: what came after the last producer's cursor.
    pub fn unclaimed_input(&self) -> u64 {
        if self.producer.is_some() {
            return 0;
        }
        self.up.bytes_from(self.up_taken).unwrap_or(self.up.held_bytes() as u64)
    }

    /// Backpressure on viewers: while the producer has a queue of input unread, stop reading
    /// viewer sockets. With no producer, input is buffered in the ring up to
    /// `unclaimed_input_bytes`.
    pub fn viewer_may_send(&self) -> bool {
        match &self.producer {
            Some(p) => self.up.bytes_from(p.cursor).is_none_or(|b| b < self.queue_bytes()),
            // After the end input is dropped, not held: keep reading (a Close may follow).
            None if self.ended.is_some() => true,
            None => self.unclaimed_input() < self.limits.unclaimed_input_bytes as u64,
        }
    }

    /// Whether a viewer held back is held for want of a producer.
    pub fn holds_unclaimed_input(&self) -> bool {
        self.producer.is_none() && !self.viewer_may_send()
    }

    /// Applies the input rules and queues the message for the producer.
    pub fn viewer_input(&mut self, conn: ConnId, input: Input, m: &Metrics) {
        let Some(v) = self.viewers.get(&conn) else { return };
        let drop = if self.ended.is_some() {
            Some(DropReason::Ended)
        } else if v.grant.read_only {
            Some(DropReason::Spectator)
        } else if v.grant.mode == ViewerMode::View
            && (self.is_desktop() || matches!(input, Input::Desktop(_)))
        {
            Some(DropReason::ViewMode)
        } else {
            None
        };
        if let Some(reason) = drop {
            return m.input_dropped(reason);
        }
        match input {
            Input::Data(mut f) => {
                let identity = &v.grant.identity;
                if self.input_cursors.get(identity).is_some_and(|next| f.seq < *next) {
                    m.duplicate(Dir::Up);
                    return m.input_dropped(DropReason::Repeat);
                }
                let Some(after) = f.seq.checked_add(1) else {
                    return self.kick_for_seq(conn, f.seq, m);
                };
                let seq = self.up_next;
                let Some(up_after) = seq.checked_add(1) else {
                    // The producer announced a cursor at the end of the seq space.
                    if let Some(producer) = self.producer.as_ref().map(|p| p.conn) {
                        self.kick_for_seq(producer, seq, m);
                    }
                    return;
                };
                self.input_cursors.insert(identity.clone(), after);
                f.seq = seq;
                f.channel_id = self.channel_id.clone();
                self.up_next = up_after;
                let msg = Frame::Data(f).encode();
                m.received(Dir::Up, msg.len());
                m.evicted(Dir::Up, self.up.push(seq, true, msg));
            }
            Input::Resize(msg) => {
                self.last_resize = Some(msg.clone());
                self.push_live(msg, m);
            }
            Input::Desktop(msg) => self.push_live(msg, m),
        }
    }

    /// Control messages reach a connected producer only; they are never replayed.
    fn push_live(&mut self, msg: Bytes, m: &Metrics) {
        if self.producer.is_some() {
            m.received(Dir::Up, msg.len());
            m.evicted(Dir::Up, self.up.push(self.up_next, false, msg));
        }
    }
}
