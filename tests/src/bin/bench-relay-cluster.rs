//! Relay replicas paired through NATS against the local path of one replica, same run, same
//! loopback nats-server, three replicas (release build, `--producer-rate 0`):
//!
//! 1. keystroke echo: a viewer sends one input frame, the (fake) producer answers it with one
//!    output frame, the viewer receives it; p50/p99 round trip with the viewer on the
//!    producer's replica vs on another replica, in turns with a raw NATS request to a
//!    responder process: the two NATS hops a keystroke across replicas cannot avoid;
//! 2. bulk throughput: the producer sends BULK_MIB in 16 KiB frames, MiB/s until the viewer
//!    has the last, viewer local vs remote; and the same bytes over one raw NATS hop (one
//!    connection to another, 1 MiB in flight like a link's credit), the hop a remote viewer
//!    adds;
//! 3. CHANNELS concurrent channels spread over the three replicas, each with its producer on
//!    one replica and its viewer on the next: frames/s delivered to all viewers, and the RSS
//!    of each replica after.
//!
//! `cargo build --release -p tether-relay -p tether-tests --bin tether-relay --bin bench-relay-cluster &&
//!  target/release/bench-relay-cluster [ECHO_ROUNDS] [BULK_MIB] [CHANNELS] [FRAMES_PER_CHANNEL]`

use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::token::ViewerMode;
use tether_tests::Nats;
use tether_tests::bench::{self, Row};
use tether_tests::relay::*;
use tether_tests::relay_cluster::RelayCluster;
use tokio_tungstenite::tungstenite::Message;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn recv_data_frame(ws: &mut Ws) -> (u64, usize) {
    loop {
        match recv(ws).await {
            Some(Frame::Data(f)) => return (f.seq, f.data.len()),
            Some(_) => continue,
            None => panic!("socket closed"),
        }
    }
}

/// A keystroke's round trip: viewer input -> producer -> output frame -> viewer.
struct Keystrokes {
    prod: Ws,
    view: Ws,
    ch: &'static str,
    n: u64,
}

impl Keystrokes {
    async fn open(cluster: &RelayCluster, p: usize, v: usize, ch: &'static str) -> Keystrokes {
        let (prod, _) = producer(&cluster.replicas[p], ch, 0).await;
        let (view, _) = viewer(&cluster.replicas[v], ch, &viewer_claims(ch, ViewerMode::View), 0).await;
        Keystrokes { prod, view, ch, n: 0 }
    }

    async fn round_trip(&mut self) {
        send(&mut self.view, data(self.ch, self.n, Bytes::from_static(b"k"))).await;
        loop {
            if let Some(Frame::Data(_)) = recv(&mut self.prod).await {
                break;
            }
        }
        send(&mut self.prod, data(self.ch, self.n, Bytes::from_static(b"k"))).await;
        self.n += 1;
        recv_data_frame(&mut self.view).await;
    }
}

/// Sorted round trips in µs of the local path, the cross-replica path and a raw NATS request to
/// a responder process (the two NATS hops a cross-replica keystroke cannot avoid), measured in
/// turns so the three see the same machine.
async fn echo(cluster: &RelayCluster, nats: &Nats, rounds: usize) -> [Vec<f64>; 3] {
    let mut local = Keystrokes::open(cluster, 0, 0, "echo-local").await;
    let mut remote = Keystrokes::open(cluster, 0, 1, "echo-remote").await;
    let _responder = bench::Responder::start(nats, "bench.echo", None);
    let nc = nats.client().await;
    let mut samples: [Vec<f64>; 3] = Default::default();
    for i in 0..rounds + 50 {
        for (which, out) in samples.iter_mut().enumerate() {
            let start = Instant::now();
            match which {
                0 => local.round_trip().await,
                1 => remote.round_trip().await,
                _ => drop(nc.request("bench.echo", Bytes::from_static(b"k")).await.expect("raw NATS echo")),
            }
            if i >= 50 {
                out.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    samples
}

/// MiB/s of `mib` MiB in 16 KiB frames from a producer on `p` to a viewer on `v`.
async fn bulk(cluster: &RelayCluster, p: usize, v: usize, ch: &str, mib: usize) -> f64 {
    let (mut prod, _) = producer(&cluster.replicas[p], ch, 0).await;
    let (mut view, _) = viewer(&cluster.replicas[v], ch, &viewer_claims(ch, ViewerMode::View), 0).await;
    // Warm the path (the remote link opens on the first frames).
    send(&mut prod, data(ch, 0, Bytes::from_static(b"w"))).await;
    recv_data_frame(&mut view).await;
    let frames = (mib << 20) / (16 << 10);
    let body = Bytes::from(vec![b'x'; 16 << 10]);
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for seq in 1..=frames as u64 {
            prod.feed(Message::Binary(data("bulk", seq, body.clone()).encode())).await.expect("send");
        }
        prod.flush().await.expect("flush");
        prod
    });
    let mut got = 0;
    while got < frames {
        let (_, len) = recv_data_frame(&mut view).await;
        if len > 1 {
            got += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(sender.await);
    mib as f64 / secs
}

/// MiB/s of `mib` MiB in 16 KiB messages from one NATS connection to another through the
/// server, at most `window` bytes in flight (a link's credit): what one NATS hop costs. `None`
/// when the messages stop arriving for 20 s (said on stderr, with how many arrived).
async fn raw_nats_bulk(nats: &Nats, mib: usize, window: usize) -> Option<f64> {
    let (publisher, subscriber) = (nats.client().await, nats.client().await);
    let mut sub = subscriber.subscribe("bench.bulk").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let frames = (mib << 20) / (16 << 10);
    let (got_tx, mut got_rx) = tokio::sync::watch::channel(0usize);
    let counter = tokio::spawn(async move {
        for n in 1..=frames {
            sub.next().await.expect("bulk message");
            got_tx.send_replace(n);
        }
    });
    let body = Bytes::from(vec![b'x'; 16 << 10]);
    let in_flight = window / (16 << 10);
    let stalled = std::time::Duration::from_secs(20);
    let start = Instant::now();
    for sent in 0..=frames {
        let room = sent - *got_rx.borrow() < in_flight;
        if !room || sent == frames {
            let want = if sent == frames { frames } else { sent + 1 - in_flight };
            if tokio::time::timeout(stalled, got_rx.wait_for(|got| *got >= want)).await.is_err() {
                // Spoiled either way; say whether an explicit flush of the publisher (a PING
                // and its PONG) lets the rest through, which tells where they were held.
                let before = *got_rx.borrow();
                let flushed = tokio::time::timeout(stalled, publisher.flush()).await;
                let after = tokio::time::timeout(stalled, got_rx.wait_for(|got| *got >= want)).await.is_ok();
                eprintln!(
                    "raw NATS bulk: {before} of {frames} messages arrived, then none for {stalled:?}; a flush of the publisher ({flushed:?}) {}",
                    if after { "let the rest through" } else { "did not help" }
                );
                counter.abort();
                return None;
            }
        }
        if sent < frames {
            publisher.publish("bench.bulk", body.clone()).await.expect("publish");
        }
    }
    Some(mib as f64 / start.elapsed().as_secs_f64())
}

/// Frames/s and RSS per replica (KiB) with `channels` channels, the viewer on the next replica
/// after the producer's (`cross`) or on the same one.
async fn many(cluster: &RelayCluster, channels: usize, frames: usize, cross: bool) -> (f64, Vec<u64>) {
    let mut pairs = Vec::new();
    for i in 0..channels {
        let ch = format!("many-{i}");
        let (p, v) = (i % 3, (i + usize::from(cross)) % 3);
        let (prod, _) = producer(&cluster.replicas[p], &ch, 0).await;
        let claims = ViewerClaims { viewer_id: format!("v{i}"), ..viewer_claims(&ch, ViewerMode::View) };
        let (view, _) = viewer(&cluster.replicas[v], &ch, &claims, 0).await;
        pairs.push((ch, prod, view));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (ch, mut prod, mut view) in pairs {
        tasks.spawn(async move {
            let body = Bytes::from(vec![b'y'; 100]);
            for seq in 0..frames as u64 {
                send(&mut prod, data(&ch, seq, body.clone())).await;
            }
            for _ in 0..frames {
                recv_data_frame(&mut view).await;
            }
            (prod, view)
        });
    }
    let mut kept = Vec::new();
    while let Some(done) = tasks.join_next().await {
        kept.push(done.expect("channel task"));
    }
    let rate = (channels * frames) as f64 / start.elapsed().as_secs_f64();
    let rss = cluster.rss_kib();
    drop(kept);
    (rate, rss)
}

use tether_proto::token::ViewerClaims;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(2000);
    let mib = args.get(1).copied().unwrap_or(256);
    let channels = args.get(2).copied().unwrap_or(1000);
    let frames = args.get(3).copied().unwrap_or(100);
    let nats = Nats::start().await;
    let flags =
        ["--producer-rate", "0", "--max-connections-per-address", "4096", "--max-waits-per-token", "4096"];
    let cluster = RelayCluster::start(&nats, 3, &flags).await;

    let [local, remote, raw] = echo(&cluster, &nats, rounds).await;
    let p = |s: &[f64]| (percentile(s, 0.5), percentile(s, 0.99));
    let ((lp50, lp99), (rp50, rp99), (np50, np99)) = (p(&local), p(&remote), p(&raw));
    println!(
        "keystroke echo ({rounds} rounds), µs: local p50 {lp50:.0} p99 {lp99:.0}; cross-replica p50 {rp50:.0} p99 {rp99:.0}"
    );
    println!(
        "  cross-replica adds {:.0} µs at p50; a raw NATS round trip to another process, same run: p50 {np50:.0} p99 {np99:.0} (the added time is {:.2}× it)",
        rp50 - lp50,
        (rp50 - lp50) / np50
    );

    let bl = bulk(&cluster, 1, 1, "bulk-local", mib).await;
    let br = bulk(&cluster, 1, 2, "bulk-remote", mib).await;
    let raw = tokio::time::timeout(std::time::Duration::from_secs(300), raw_nats_bulk(&nats, mib, 1 << 20));
    let bn = raw.await.unwrap_or_else(|_| {
        eprintln!("raw NATS bulk: not done in 300 s");
        None
    });
    let bn = bn.unwrap_or(f64::NAN);
    // Were costs simply additive, a path through a relay and then one NATS hop would move
    // a MiB in the time of both.
    let additive = 1.0 / (1.0 / bl + 1.0 / bn);
    println!(
        "bulk {mib} MiB in 16 KiB frames: local {bl:.0} MiB/s, cross-replica {br:.0} MiB/s (ratio {:.2}); raw NATS one hop {bn:.0} MiB/s, local and one hop added {additive:.0} MiB/s (ratio {:.2})",
        br / bl,
        additive / bl
    );

    let mib = |rss: &[u64]| {
        rss.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(" / ")
    };
    drop(cluster);
    // Fresh replicas for each, so neither run inherits the other's memory.
    let mut many_runs = Vec::new();
    for cross in [false, true] {
        let cluster = RelayCluster::start(&nats, 3, &flags).await;
        let idle = cluster.rss_kib();
        let (rate, rss) = many(&cluster, channels, frames, cross).await;
        let how = if cross { "on different replicas" } else { "on the same replica" };
        println!(
            "{channels} channels x {frames} frames (100 B), producer and viewer {how}: {rate:.0} frames/s; RSS per replica MiB idle {} -> {}",
            mib(&idle),
            mib(&rss)
        );
        many_runs.push((rate, rss));
    }
    let area = "relay replicas";
    let (local_many, cross_many) = (&many_runs[0], &many_runs[1]);
    let max_mib = |rss: &[u64]| format!("{:.1} MiB", rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0);
    bench::emit(&[
        Row::new(area, "keystroke echo p50, viewer on another replica", format!("{rp50:.0} µs"))
            .beside(format!("same replica {lp50:.0} µs"), format!("+{:.0} µs", rp50 - lp50))
            .goal("≤ +150 µs"),
        Row::new(area, "keystroke echo p99, viewer on another replica", format!("{rp99:.0} µs"))
            .beside(format!("same replica {lp99:.0} µs"), format!("+{:.0} µs", rp99 - lp99)),
        Row::new(area, "keystroke echo p50, time added across replicas", format!("+{:.0} µs", rp50 - lp50))
            .times(format!("raw NATS round trip {np50:.0} µs"), (rp50 - lp50) / np50),
        Row::new(area, "bulk, viewer on another replica", format!("{br:.0} MiB/s"))
            .times(format!("same replica {bl:.0} MiB/s"), br / bl)
            .goal("≥ 0.5×"),
        Row::new(area, "bulk, raw NATS one hop (16 KiB messages, 1 MiB in flight)", format!("{bn:.0} MiB/s"))
            .times(format!("same replica {bl:.0} MiB/s"), bn / bl),
        Row::new(
            area,
            format!("{channels} channels across replicas"),
            format!("{:.0} frames/s", cross_many.0),
        )
        .times(format!("same replica {:.0} frames/s", local_many.0), cross_many.0 / local_many.0),
        Row::new(
            area,
            format!("largest replica RSS, {channels} channels across replicas"),
            max_mib(&cross_many.1),
        )
        .beside(format!("same replica {}", max_mib(&local_many.1)), "")
        .goal("≤ 50 MiB"),
    ]);
}
