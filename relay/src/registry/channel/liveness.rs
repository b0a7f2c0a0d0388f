//! Is the producer there? When another connection opens a channel that has a producer, the
//! registry asks the one attached to prove it is alive: its writer sends a ping
//! (`Next::Ping`), and any message read from it afterwards (the pong, or data) counts as the
//! answer. A link that died without a close answers nothing, and its successor gets in.

use super::{ChannelState, ConnId};

impl ChannelState {
    /// The attached producer's connection.
    pub fn producer_conn(&self) -> Option<ConnId> {
        self.producer.as_ref().map(|p| p.conn)
    }

    /// Asks the attached producer to show it is alive: it is pinged, and the answer (any
    /// message) is seen by [`Self::producer_answered`]. Returns its connection and how much
    /// was heard from it so far.
    pub fn request_probe(&mut self) -> Option<(ConnId, u64)> {
        let p = self.producer.as_mut()?;
        p.ping_due = true;
        p.probed = true;
        Some((p.conn, p.heard))
    }

    /// The producer `conn` sent something. Returns true when a probe waits for that.
    pub fn heard_from_producer(&mut self, conn: ConnId) -> bool {
        match self.producer.as_mut().filter(|p| p.conn == conn) {
            Some(p) => {
                p.heard += 1;
                std::mem::take(&mut p.probed)
            }
            None => false,
        }
    }

    /// Whether the producer probed at `heard` answered since.
    pub fn producer_answered(&self, conn: ConnId, heard: u64) -> bool {
        self.producer.as_ref().is_some_and(|p| p.conn == conn && p.heard > heard)
    }

    /// Whether a probe of `conn` has its answer: it answered, or it is gone.
    pub fn probe_settled(&self, conn: ConnId, heard: u64) -> bool {
        self.producer_conn() != Some(conn) || self.producer_answered(conn, heard)
    }

    /// Whether this relay serves the channel itself: a producer is attached, or it ended it.
    pub fn served_here(&self) -> bool {
        self.producer.is_some() || self.ended.is_some()
    }

    /// Cluster mode: the channel's producer now feeds another replica. Viewers still waiting
    /// here for it to come back are told to reconnect (through the load balancer they reach
    /// the channel wherever it is now). Returns how many were told; none while a producer is
    /// attached here or the channel has ended.
    pub fn release_moved(&mut self) -> usize {
        if self.served_here() {
            return 0;
        }
        let conns: Vec<ConnId> = self.viewers.keys().copied().collect();
        for &conn in &conns {
            let why = "the channel's producer moved to another relay; reconnect to resume".to_owned();
            self.kick(conn, tether_proto::pb::StreamCloseReason::TransportError, why);
        }
        conns.len()
    }
}
