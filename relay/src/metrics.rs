//! Counters of what the relay did, rendered as Prometheus text at `/metrics`. Every refusal and
//! every disconnect the relay decides on is counted under a reason, so an operator can tell a
//! misconfigured control plane (bad signatures) from a slow network (slow-viewer disconnects).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Direction of a channel's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Producer (agent) to viewers: output.
    Down = 0,
    /// Viewers to producer: input.
    Up = 1,
}

impl Dir {
    const ALL: [Dir; 2] = [Dir::Down, Dir::Up];

    fn label(self) -> &'static str {
        match self {
            Dir::Down => "agent_to_viewer",
            Dir::Up => "viewer_to_agent",
        }
    }
}

/// Role of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent = 0,
    Viewer = 1,
}

impl Role {
    const ALL: [Role; 2] = [Role::Agent, Role::Viewer];

    fn label(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
        }
    }
}

macro_rules! labelled_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The Prometheus label value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

labelled_enum!(
    /// Why an open was refused.
    RejectReason {
        BadHandshake => "bad_handshake",
        HandshakeTimeout => "handshake_timeout",
        QueryMismatch => "query_mismatch",
        BadRole => "bad_role",
        BadKind => "bad_kind",
        WrongTokenKind => "wrong_token_kind",
        MalformedToken => "malformed_token",
        BadSignature => "bad_signature",
        Expired => "expired",
        WorkspaceMismatch => "workspace_mismatch",
        AgentMismatch => "agent_mismatch",
        PortMismatch => "port_mismatch",
        ChannelMismatch => "channel_mismatch",
        StaleEpoch => "stale_epoch",
        KindMismatch => "kind_mismatch",
        ChannelEnded => "channel_ended",
        ShuttingDown => "shutting_down",
        TooManyPending => "too_many_pending",
        TooManyPendingFromAddress => "too_many_pending_from_address",
        TooManyWaits => "too_many_waits",
        ProducerLive => "producer_live",
    }
);

labelled_enum!(
    /// Which connection cap a new connection was over.
    OverCap {
        /// `max_connections_per_address`: it went to the overflow lane.
        Address => "address",
        /// `max_connections`: it went to the overflow lane.
        Global => "global",
        /// The overflow lane was full too: it was closed at once.
        Overflow => "overflow_lane",
    }
);

labelled_enum!(
    /// Why a viewer's input message was dropped instead of forwarded.
    DropReason {
        /// A `readOnly` spectator.
        Spectator => "spectator",
        /// A "view" viewer driving a desktop.
        ViewMode => "view_mode",
        /// The viewer repeated a frame it had sent before resuming.
        Repeat => "repeat",
        /// The producer already closed the channel.
        Ended => "channel_ended",
    }
);

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// All counters of one relay process.
#[derive(Debug)]
pub struct Metrics {
    opens_accepted: [AtomicU64; 2],
    opens_rejected: Vec<AtomicU64>,
    frames_in: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
    frames_out: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    replayed: [AtomicU64; 2],
    duplicates: [AtomicU64; 2],
    evicted: [AtomicU64; 2],
    input_dropped: Vec<AtomicU64>,
    resume_gaps: AtomicU64,
    producer_gaps: AtomicU64,
    slow_viewers: AtomicU64,
    handshake_timeouts: AtomicU64,
    fenced_viewers: AtomicU64,
    producers_replaced: AtomicU64,
    channels_reaped: AtomicU64,
    producer_throttled: AtomicU64,
    dead_peers: AtomicU64,
    orphaned_viewers: AtomicU64,
    protocol_violations: AtomicU64,
    over_cap: Vec<AtomicU64>,
    header_read_timeouts: AtomicU64,
    input_held: AtomicU64,
}

/// Point-in-time values read from the registry at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub channels: u64,
    pub producers: u64,
    pub viewers: u64,
    /// Connections served in full / in the overflow lane.
    pub connections: u64,
    pub overflow_connections: u64,
    /// Connections in their stream handshake.
    pub pending_opens: u64,
    /// Viewers waiting on a channel no producer has opened yet.
    pub waiting_viewers: u64,
    /// Viewer input held for channels without a producer.
    pub unclaimed_input_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            opens_accepted: counters(),
            opens_rejected: RejectReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            frames_in: counters(),
            bytes_in: counters(),
            frames_out: counters(),
            bytes_out: counters(),
            replayed: counters(),
            duplicates: counters(),
            evicted: counters(),
            input_dropped: DropReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            resume_gaps: AtomicU64::new(0),
            producer_gaps: AtomicU64::new(0),
            slow_viewers: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            fenced_viewers: AtomicU64::new(0),
            producers_replaced: AtomicU64::new(0),
            channels_reaped: AtomicU64::new(0),
            producer_throttled: AtomicU64::new(0),
            dead_peers: AtomicU64::new(0),
            orphaned_viewers: AtomicU64::new(0),
            protocol_violations: AtomicU64::new(0),
            over_cap: OverCap::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            header_read_timeouts: AtomicU64::new(0),
            input_held: AtomicU64::new(0),
        }
    }
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn open_accepted(&self, role: Role) {
        inc(&self.opens_accepted[role as usize], 1);
    }
    pub fn open_rejected(&self, reason: RejectReason) {
        inc(&self.opens_rejected[reason as usize], 1);
        if reason == RejectReason::HandshakeTimeout {
            inc(&self.handshake_timeouts, 1);
        }
    }
    /// A frame the relay accepted from a peer.
    pub fn received(&self, dir: Dir, bytes: usize) {
        inc(&self.frames_in[dir as usize], 1);
        inc(&self.bytes_in[dir as usize], bytes as u64);
    }
    /// Messages written to a peer (`replayed` of them from before it joined).
    pub fn sent(&self, dir: Dir, frames: u64, bytes: u64, replayed: u64) {
        inc(&self.frames_out[dir as usize], frames);
        inc(&self.bytes_out[dir as usize], bytes);
        inc(&self.replayed[dir as usize], replayed);
    }
    pub fn duplicate(&self, dir: Dir) {
        inc(&self.duplicates[dir as usize], 1);
    }
    pub fn evicted(&self, dir: Dir, frames: u64) {
        inc(&self.evicted[dir as usize], frames);
    }
    pub fn input_dropped(&self, reason: DropReason) {
        inc(&self.input_dropped[reason as usize], 1);
    }
    pub fn resume_gap(&self) {
        inc(&self.resume_gaps, 1);
    }
    pub fn producer_gap(&self) {
        inc(&self.producer_gaps, 1);
    }
    pub fn slow_viewer(&self) {
        inc(&self.slow_viewers, 1);
    }
    pub fn fenced_viewer(&self) {
        inc(&self.fenced_viewers, 1);
    }
    pub fn producer_replaced(&self) {
        inc(&self.producers_replaced, 1);
    }
    pub fn channel_reaped(&self) {
        inc(&self.channels_reaped, 1);
    }
    pub fn producer_throttled(&self) {
        inc(&self.producer_throttled, 1);
    }
    pub fn dead_peer(&self) {
        inc(&self.dead_peers, 1);
    }
    pub fn orphaned_viewer(&self) {
        inc(&self.orphaned_viewers, 1);
    }
    pub fn protocol_violation(&self) {
        inc(&self.protocol_violations, 1);
    }
    pub fn over_cap(&self, cap: OverCap) {
        inc(&self.over_cap[cap as usize], 1);
    }
    pub fn header_read_timeout(&self) {
        inc(&self.header_read_timeouts, 1);
    }
    pub fn input_held(&self) {
        inc(&self.input_held, 1);
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        let by_dir = |c: &[AtomicU64; 2]| -> Vec<(String, u64)> {
            Dir::ALL
                .iter()
                .map(|d| (format!("{{direction=\"{}\"}}", d.label()), get(&c[*d as usize])))
                .collect()
        };
        family("tether_relay_channels", "gauge", "Channels the relay holds state for.", &one(g.channels));
        family("tether_relay_producers", "gauge", "Connected producers (agents).", &one(g.producers));
        family("tether_relay_viewers", "gauge", "Connected viewers.", &one(g.viewers));
        family(
            "tether_relay_waiting_viewers",
            "gauge",
            "Viewers waiting on a channel no producer has opened yet.",
            &one(g.waiting_viewers),
        );
        family(
            "tether_relay_unclaimed_input_bytes",
            "gauge",
            "Viewer input held for channels that have no producer.",
            &one(g.unclaimed_input_bytes),
        );
        family(
            "tether_relay_connections",
            "gauge",
            "TCP connections served in full (HTTP and websocket).",
            &one(g.connections),
        );
        family(
            "tether_relay_overflow_connections",
            "gauge",
            "Connections over a cap, served /healthz and /metrics only.",
            &one(g.overflow_connections),
        );
        family(
            "tether_relay_pending_opens",
            "gauge",
            "Stream connections upgraded but not yet past their StreamOpen.",
            &one(g.pending_opens),
        );
        let over: Vec<_> = OverCap::ALL
            .iter()
            .map(|c| (format!("{{cap=\"{}\"}}", c.label()), get(&self.over_cap[*c as usize])))
            .collect();
        family(
            "tether_relay_connections_over_cap_total",
            "counter",
            "Connections over a cap (address, global: sent to the overflow lane; overflow_lane: closed).",
            &over,
        );
        family(
            "tether_relay_header_read_timeouts_total",
            "counter",
            "Connections closed for not sending a request head in time.",
            &one(get(&self.header_read_timeouts)),
        );
        family(
            "tether_relay_input_held_total",
            "counter",
            "Times a viewer's input was held back: its channel has no producer and the unclaimed input cap is reached.",
            &one(get(&self.input_held)),
        );
        let opens: Vec<_> = Role::ALL
            .iter()
            .map(|r| (format!("{{role=\"{}\"}}", r.label()), get(&self.opens_accepted[*r as usize])))
            .collect();
        family("tether_relay_opens_accepted_total", "counter", "Accepted StreamOpens.", &opens);
        let rejected: Vec<_> = RejectReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), get(&self.opens_rejected[*r as usize])))
            .collect();
        family("tether_relay_opens_rejected_total", "counter", "Refused opens by reason.", &rejected);
        family(
            "tether_relay_frames_received_total",
            "counter",
            "Frames accepted from peers.",
            &by_dir(&self.frames_in),
        );
        family(
            "tether_relay_bytes_received_total",
            "counter",
            "Bytes accepted from peers.",
            &by_dir(&self.bytes_in),
        );
        family(
            "tether_relay_frames_sent_total",
            "counter",
            "Messages written to peers.",
            &by_dir(&self.frames_out),
        );
        family(
            "tether_relay_bytes_sent_total",
            "counter",
            "Bytes written to peers.",
            &by_dir(&self.bytes_out),
        );
        family(
            "tether_relay_replayed_frames_total",
            "counter",
            "Buffered frames replayed to a peer that (re)joined.",
            &by_dir(&self.replayed),
        );
        family(
            "tether_relay_duplicate_frames_total",
            "counter",
            "Inbound frames dropped as already seen.",
            &by_dir(&self.duplicates),
        );
        family(
            "tether_relay_ring_evicted_frames_total",
            "counter",
            "Frames pushed out of a replay ring by its byte bound.",
            &by_dir(&self.evicted),
        );
        let dropped: Vec<_> = DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), get(&self.input_dropped[*r as usize])))
            .collect();
        family(
            "tether_relay_input_dropped_total",
            "counter",
            "Viewer input not forwarded, by reason.",
            &dropped,
        );
        family(
            "tether_relay_resume_gaps_total",
            "counter",
            "Viewer resumes whose requested seq was no longer held (gap announced in the ack).",
            &one(get(&self.resume_gaps)),
        );
        family(
            "tether_relay_producer_gaps_total",
            "counter",
            "Producer frames that skipped ahead of the expected seq.",
            &one(get(&self.producer_gaps)),
        );
        family(
            "tether_relay_slow_viewer_disconnects_total",
            "counter",
            "Viewers disconnected for falling behind.",
            &one(get(&self.slow_viewers)),
        );
        family(
            "tether_relay_handshake_timeouts_total",
            "counter",
            "Connections that sent no StreamOpen in time.",
            &one(get(&self.handshake_timeouts)),
        );
        family(
            "tether_relay_fenced_viewers_total",
            "counter",
            "Viewers closed because a newer epoch joined.",
            &one(get(&self.fenced_viewers)),
        );
        family(
            "tether_relay_producers_replaced_total",
            "counter",
            "Producer connections replaced by a newer one.",
            &one(get(&self.producers_replaced)),
        );
        family(
            "tether_relay_channels_reaped_total",
            "counter",
            "Idle channels forgotten.",
            &one(get(&self.channels_reaped)),
        );
        family(
            "tether_relay_producer_throttled_total",
            "counter",
            "Times a producer over the rate limit was made to wait.",
            &one(get(&self.producer_throttled)),
        );
        family(
            "tether_relay_dead_peers_total",
            "counter",
            "Connections dropped after going silent (no data, no pong).",
            &one(get(&self.dead_peers)),
        );
        family(
            "tether_relay_orphaned_viewers_total",
            "counter",
            "Viewers closed because their channel had no producer for the reap timeout.",
            &one(get(&self.orphaned_viewers)),
        );
        family(
            "tether_relay_protocol_violations_total",
            "counter",
            "Peers closed for breaking the protocol (a frame seq of u64::MAX, which nothing can follow).",
            &one(get(&self.protocol_violations)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.open_rejected(RejectReason::BadSignature);
        m.open_rejected(RejectReason::HandshakeTimeout);
        m.input_dropped(DropReason::Spectator);
        m.received(Dir::Up, 10);
        m.sent(Dir::Down, 3, 300, 2);
        let text =
            m.render(Gauges { channels: 2, producers: 1, viewers: 3, connections: 7, ..Gauges::default() });
        for line in [
            "tether_relay_channels 2",
            "tether_relay_viewers 3",
            "tether_relay_connections 7",
            "tether_relay_opens_rejected_total{reason=\"bad_signature\"} 1",
            "tether_relay_opens_rejected_total{reason=\"expired\"} 0",
            "tether_relay_handshake_timeouts_total 1",
            "tether_relay_input_dropped_total{reason=\"spectator\"} 1",
            "tether_relay_bytes_received_total{direction=\"viewer_to_agent\"} 10",
            "tether_relay_replayed_frames_total{direction=\"agent_to_viewer\"} 2",
            "# TYPE tether_relay_slow_viewer_disconnects_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
