//! Per-replica cluster figures for `/metrics` (appended to the relay's own): who is served
//! across replicas, how many bytes crossed NATS, how far behind the links are, and what was
//! refused. Channels, producers and local viewers are the relay's existing gauges.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Viewers connected here whose channel another replica owns (linked now).
    pub remote_viewers: AtomicI64,
    /// Viewers connected here waiting for an owner to appear or come back.
    pub waiting_viewers: AtomicI64,
    /// Viewers of channels owned here that are connected to other replicas.
    pub served_viewers: AtomicI64,
    /// Bytes this replica sent to remote viewers' replicas (relay messages).
    pub bytes_out: AtomicU64,
    /// Bytes this replica received from owners for its remote viewers.
    pub bytes_in: AtomicU64,
    /// Input bytes forwarded to owners.
    pub input_bytes: AtomicU64,
    /// Bytes sent over NATS that the viewer's replica has not yet written to its viewer.
    pub lag_bytes: AtomicI64,
    /// Link opens this replica's channels refused.
    pub refused: AtomicU64,
    /// Links whose other end went silent (owner or viewer's replica lost).
    pub links_lost: AtomicU64,
    /// Links opened from here.
    pub links_opened: AtomicU64,
}

pub fn add(c: &AtomicI64, n: i64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn render(&self, connected: bool) -> String {
        let g = |c: &AtomicI64| c.load(Ordering::Relaxed).max(0);
        let c = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        line(
            "tether_relay_cluster_nats_connected",
            "gauge",
            "1 while this replica is connected to NATS.",
            u8::from(connected).to_string(),
        );
        line(
            "tether_relay_cluster_remote_viewers",
            "gauge",
            "Viewers connected here, served from the replica owning their channel.",
            g(&self.remote_viewers).to_string(),
        );
        line(
            "tether_relay_cluster_waiting_viewers",
            "gauge",
            "Viewers connected here waiting for their channel's owner to appear.",
            g(&self.waiting_viewers).to_string(),
        );
        line(
            "tether_relay_cluster_served_viewers",
            "gauge",
            "Viewers of channels owned here that are connected to other replicas.",
            g(&self.served_viewers).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP tether_relay_cluster_forwarded_bytes_total Relay message bytes forwarded over NATS.\n\
             # TYPE tether_relay_cluster_forwarded_bytes_total counter\n\
             tether_relay_cluster_forwarded_bytes_total{{dir=\"out\"}} {}\n\
             tether_relay_cluster_forwarded_bytes_total{{dir=\"in\"}} {}\n\
             tether_relay_cluster_forwarded_bytes_total{{dir=\"input\"}} {}",
            c(&self.bytes_out),
            c(&self.bytes_in),
            c(&self.input_bytes)
        );
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        line(
            "tether_relay_cluster_forward_lag_bytes",
            "gauge",
            "Bytes sent to remote viewers' replicas not yet written to those viewers.",
            g(&self.lag_bytes).to_string(),
        );
        line(
            "tether_relay_cluster_refusals_total",
            "counter",
            "Link opens refused by channels owned here.",
            c(&self.refused).to_string(),
        );
        line(
            "tether_relay_cluster_links_lost_total",
            "counter",
            "Links whose other replica went silent.",
            c(&self.links_lost).to_string(),
        );
        line(
            "tether_relay_cluster_links_opened_total",
            "counter",
            "Links opened from this replica to channel owners.",
            c(&self.links_opened).to_string(),
        );
        out
    }
}
