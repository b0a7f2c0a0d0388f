//! Terminal latency and throughput through the real relay and agent, next to a raw websocket
//! echo and a raw websocket stream measured in the same run on the same loopback:
//!
//! - keystroke echo: a viewer types one byte into `cat` in a PTY and waits for the terminal's
//!   echo (viewer -> relay -> agent -> PTY -> agent -> relay -> viewer);
//! - bulk output: a PTY command writes N MiB, the viewer counts bytes until the channel closes.
//!
//! `cargo build --release --workspace --bins && target/release/bench-pty [ROUNDS] [MIB]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_client::ViewerEvent;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::relay::{Relay, claims_for, watch};
use tether_tests::{Agent, AgentOpts, Nats, pb};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A loopback websocket server: echoes every message, or streams `mib` MiB when asked "bulk".
async fn raw_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str().starts_with("bulk ") => {
                            let mib: usize = t.as_str()[5..].parse().unwrap_or(1);
                            let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
                            for _ in 0..mib * 64 {
                                if ws.feed(Message::Binary(chunk.clone())).await.is_err() {
                                    return;
                                }
                            }
                            let _ = ws.send(Message::Text("end".into())).await;
                        }
                        Message::Binary(b) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

async fn open_pty(agent: &Agent, command: &[&str]) -> pb::StreamChannel {
    let req =
        pb::PtyOpenRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r.channel.expect("channel"),
        other => panic!("pty_open: {other:?}"),
    }
}

/// The same command in a PTY read directly by this process: what the PTY itself sustains.
fn local_pty(script: &str) -> (usize, f64) {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    let pair = native_pty_system().openpty(PtySize::default()).expect("openpty");
    let mut cmd = CommandBuilder::new("sh");
    cmd.args(["-c", script]);
    let start = Instant::now();
    let mut child = pair.slave.spawn_command(cmd).expect("spawn");
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().expect("reader");
    let (mut total, mut buf) = (0usize, vec![0u8; 64 * 1024]);
    while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    let _ = child.wait();
    (total, start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let raw_url = raw_server().await;
    // Unlimited producer rate so the relay's own capacity shows (the default caps at 32 MiB/s).
    let relay = Relay::start(&["--producer-rate", "0"]).await;
    let nats = Nats::start().await;
    let agent =
        Agent::start_with(&nats, AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() })
            .await;

    // Raw websocket echo of one byte.
    let (mut raw, _) = tokio_tungstenite::connect_async(raw_url.as_str()).await.expect("raw connect");
    let mut raw_samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let start = Instant::now();
        raw.send(Message::Binary(Bytes::from_static(b"a"))).await.expect("send");
        while !matches!(raw.next().await, Some(Ok(Message::Binary(_)))) {}
        if i >= rounds / 10 {
            raw_samples.push(start.elapsed());
        }
    }
    raw_samples.sort();

    // Keystroke echo through viewer -> relay -> agent -> PTY (`cat`, echo on) and back.
    let channel = open_pty(&agent, &["cat"]).await;
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "bench", ViewerMode::View)).await;
    let mut pty_samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let start = Instant::now();
        viewer.send(Bytes::from_static(b"a")).await;
        loop {
            match viewer.next().await {
                Some(ViewerEvent::Output(data)) if data.contains(&b'a') => break,
                Some(ViewerEvent::Output(_)) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        if i >= rounds / 10 {
            pty_samples.push(start.elapsed());
        }
        if i % 64 == 63 {
            viewer.send(Bytes::from_static(b"\n")).await; // keep cat's line short
        }
    }
    pty_samples.sort();

    // Bulk: raw websocket stream vs PTY output through the agent and relay.
    let start = Instant::now();
    raw.send(Message::Text(format!("bulk {mib}").into())).await.expect("send");
    let mut raw_bytes = 0usize;
    loop {
        match raw.next().await {
            Some(Ok(Message::Binary(b))) => raw_bytes += b.len(),
            Some(Ok(Message::Text(_))) => break,
            other => panic!("raw stream: {other:?}"),
        }
    }
    let raw_secs = start.elapsed().as_secs_f64();

    let script = format!("head -c {} /dev/zero | tr '\\0' x", mib << 20);
    let (local_bytes, local_secs) = tokio::task::spawn_blocking({
        let script = script.clone();
        move || local_pty(&script)
    })
    .await
    .expect("local pty");
    let start = Instant::now();
    let channel = open_pty(&agent, &["sh", "-c", &script]).await;
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "bulk", ViewerMode::View)).await;
    let mut pty_bytes = 0usize;
    loop {
        match viewer.next().await {
            Some(ViewerEvent::Output(data)) => pty_bytes += data.len(),
            Some(ViewerEvent::Closed { .. }) | None => break,
            Some(_) => {}
        }
    }
    let pty_secs = start.elapsed().as_secs_f64();

    println!("keystroke echo, {rounds} rounds after {} warm-up, one byte at a time, loopback", rounds / 10);
    println!("{:<34} {:>9} {:>9} {:>10} {:>10}", "path", "p50 µs", "p99 µs", "p50 ×raw", "p99 ×raw");
    let (r50, r99) = (percentile(&raw_samples, 0.5), percentile(&raw_samples, 0.99));
    let (p50, p99) = (percentile(&pty_samples, 0.5), percentile(&pty_samples, 0.99));
    println!("{:<34} {:>9.0} {:>9.0} {:>10.2} {:>10.2}", "raw websocket echo", us(r50), us(r99), 1.0, 1.0);
    println!(
        "{:<34} {:>9.0} {:>9.0} {:>10.2} {:>10.2}",
        "PTY echo via relay + agent",
        us(p50),
        us(p99),
        us(p50) / us(r50),
        us(p99) / us(r99)
    );
    let raw_rate = raw_bytes as f64 / raw_secs / (1 << 20) as f64;
    let pty_rate = pty_bytes as f64 / pty_secs / (1 << 20) as f64;
    println!("bulk output, {mib} MiB");
    let local_rate = local_bytes as f64 / local_secs / (1 << 20) as f64;
    println!("{:<34} {:>9.1} MiB/s", "raw websocket stream", raw_rate);
    println!(
        "{:<34} {:>9.1} MiB/s  ({:.2} × raw)",
        "same command, local PTY read",
        local_rate,
        local_rate / raw_rate
    );
    println!(
        "{:<34} {:>9.1} MiB/s  ({:.2} × raw)",
        "PTY output via agent + relay",
        pty_rate,
        pty_rate / raw_rate
    );
}
