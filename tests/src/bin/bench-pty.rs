//! Terminal latency and throughput through the real relay and agent, next to a raw websocket
//! echo and a raw websocket stream measured in the same run on the same loopback:
//!
//! - keystroke echo: a viewer types one byte into `cat` running in a PTY switched to raw mode
//!   with local echo off, and waits for `cat` to write that byte back (viewer -> relay -> agent ->
//!   PTY -> cat -> PTY -> agent -> relay -> viewer), the way a shell in raw mode echoes what is
//!   typed. In raw mode the line discipline neither buffers until a newline nor echoes by itself,
//!   so each round's output is exactly its one byte; the byte rotates through a set, and anything
//!   else arriving fails the run instead of being timed as an echo;
//! - bulk output: a PTY command writes N MiB, the viewer counts bytes until the channel closes;
//!   a count short of what was written fails the run.
//!
//! Every wait is bounded: a stalled or closed connection ends the run with an error.
//!
//! `cargo build --release -p tether-agent -p tether-relay -p tether-tests --bins &&
//! target/release/bench-pty [ROUNDS] [MIB]`

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_client::{Viewer, ViewerEvent};
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::bench::{self, Row};
use tether_tests::relay::{Relay, Ws, claims_for, watch};
use tether_tests::{Agent, AgentOpts, Nats, pb};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The longest any single wait may take before the run fails.
const STALL: Duration = Duration::from_secs(30);
/// Bytes typed in turn, one per round: a round only ends on its own byte.
const ROTATION: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// What the PTY command prints once its terminal is raw, before `cat` takes over.
const READY: &[u8] = b"bench-ready";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A loopback websocket server: echoes every message, or streams `mib` MiB when asked "bulk".
async fn raw_server() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let addr = listener.local_addr().context("addr")?;
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
    Ok(format!("ws://{addr}/"))
}

/// The next message on the raw socket; an error when it stalls or closes.
async fn raw_next(raw: &mut Ws) -> anyhow::Result<Message> {
    match tokio::time::timeout(STALL, raw.next()).await {
        Err(_) => bail!("the raw websocket sent nothing for {STALL:?}"),
        Ok(None) => bail!("the raw websocket closed"),
        Ok(Some(Err(e))) => bail!("the raw websocket failed: {e}"),
        Ok(Some(Ok(msg))) => Ok(msg),
    }
}

/// The next event of a viewer; an error when it stalls or ends.
async fn viewer_next(viewer: &mut Viewer) -> anyhow::Result<ViewerEvent> {
    match tokio::time::timeout(STALL, viewer.next()).await {
        Err(_) => bail!("the viewer saw nothing for {STALL:?}"),
        Ok(None) => bail!("the viewer ended without the channel closing"),
        Ok(Some(event)) => Ok(event),
    }
}

/// The next output of a viewer; anything else (gap, reconnect, close) fails the run.
async fn viewer_output(viewer: &mut Viewer) -> anyhow::Result<Bytes> {
    match viewer_next(viewer).await? {
        ViewerEvent::Output(data) => Ok(data),
        other => bail!("expected terminal output, got {other:?}"),
    }
}

async fn open_pty(agent: &Agent, command: &[&str]) -> anyhow::Result<pb::StreamChannel> {
    let req =
        pb::PtyOpenRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r.channel.context("pty_open named no channel"),
        other => bail!("pty_open: {other:?}"),
    }
}

/// The same command in a PTY read directly by this process: what the PTY itself sustains.
fn local_pty(script: &str) -> anyhow::Result<(usize, f64)> {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    let pair = native_pty_system().openpty(PtySize::default()).context("openpty")?;
    let mut cmd = CommandBuilder::new("sh");
    cmd.args(["-c", script]);
    let start = Instant::now();
    let mut child = pair.slave.spawn_command(cmd).context("spawn")?;
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().context("reader")?;
    let (mut total, mut buf) = (0usize, vec![0u8; 64 * 1024]);
    // Ends at EOF, or EIO once the child is gone and the slave closed (Linux).
    while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    let _ = child.wait();
    Ok((total, start.elapsed().as_secs_f64()))
}

/// One-byte round trips on the raw websocket; the samples after a tenth of warm-up, sorted.
async fn raw_echo(raw: &mut Ws, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let byte = ROTATION[i % ROTATION.len()];
        let start = Instant::now();
        raw.send(Message::Binary(Bytes::copy_from_slice(&[byte]))).await.context("raw send")?;
        loop {
            match raw_next(raw).await? {
                Message::Binary(b) if b[..] == [byte] => break,
                Message::Binary(b) => bail!("raw echo round {i}: sent {:?}, got {b:?}", byte as char),
                _ => continue,
            }
        }
        if i >= rounds / 10 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    Ok(samples)
}

/// One-byte round trips through the relay, the agent and `cat` in a raw PTY; sorted samples.
async fn pty_echo(relay: &Relay, agent: &Agent, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let script = format!("stty raw -echo && printf {} && exec cat", String::from_utf8_lossy(READY));
    let channel = open_pty(agent, &["sh", "-c", &script]).await?;
    let mut viewer = watch(relay, &channel, &claims_for(&channel, "bench", ViewerMode::View)).await;
    // Nothing is typed before the terminal is raw: typed earlier, it would be echoed by the line
    // discipline and held back from `cat` until a newline.
    let mut shown = Vec::new();
    while !shown.ends_with(READY) {
        shown.extend_from_slice(&viewer_output(&mut viewer).await?);
        ensure!(shown.len() <= 4096, "the PTY command never said it was ready: {shown:?}");
    }
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let byte = ROTATION[i % ROTATION.len()];
        let start = Instant::now();
        viewer.send(Bytes::copy_from_slice(&[byte])).await;
        let echo = viewer_output(&mut viewer).await?;
        ensure!(echo[..] == [byte], "PTY echo round {i}: typed {:?}, got {echo:?}", byte as char);
        if i >= rounds / 10 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    Ok(samples)
}

/// Bytes streamed by the raw server for "bulk", and the seconds it took.
async fn raw_bulk(raw: &mut Ws, mib: usize) -> anyhow::Result<(usize, f64)> {
    let start = Instant::now();
    raw.send(Message::Text(format!("bulk {mib}").into())).await.context("raw send")?;
    let mut bytes = 0usize;
    loop {
        match raw_next(raw).await? {
            Message::Binary(b) => bytes += b.len(),
            Message::Text(_) => break,
            _ => {}
        }
    }
    Ok((bytes, start.elapsed().as_secs_f64()))
}

/// Bytes a PTY running `script` delivered to a viewer until the channel closed, the seconds
/// from opening the PTY to the close, and how often the viewer had to resume (a viewer too slow
/// for the relay is disconnected and resumes from its cursor: slower, but nothing is lost).
async fn pty_bulk(relay: &Relay, agent: &Agent, script: &str) -> anyhow::Result<(usize, f64, usize)> {
    let start = Instant::now();
    let channel = open_pty(agent, &["sh", "-c", script]).await?;
    let mut viewer = watch(relay, &channel, &claims_for(&channel, "bulk", ViewerMode::View)).await;
    let (mut bytes, mut resumes) = (0usize, 0usize);
    loop {
        match viewer_next(&mut viewer).await? {
            ViewerEvent::Output(data) => bytes += data.len(),
            ViewerEvent::Closed { reason: pb::StreamCloseReason::ProcessExit, .. } => break,
            ViewerEvent::Reconnecting(why) => {
                resumes += 1;
                ensure!(resumes <= 100, "the viewer resumed {resumes} times without finishing: {why}");
            }
            ViewerEvent::Resumed => {}
            other => bail!("bulk output after {bytes} bytes: {other:?}"),
        }
    }
    Ok((bytes, start.elapsed().as_secs_f64(), resumes))
}

/// Fails the run when a bulk path delivered a different number of bytes than were produced.
fn check_count(path: &str, got: usize, want: usize) -> anyhow::Result<()> {
    println!("{path:<34} {got:>12} of {want} bytes");
    ensure!(got == want, "{path} delivered {got} bytes, {want} were produced: the figures are void");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    ensure!(rounds > 0 && mib > 0, "usage: bench-pty [ROUNDS>0] [MIB>0]");
    let raw_url = raw_server().await?;
    // Unlimited producer rate so the relay's own capacity shows (the default caps at 32 MiB/s).
    let relay = Relay::start(&["--producer-rate", "0"]).await;
    let nats = Nats::start().await;
    let agent =
        Agent::start_with(&nats, AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() })
            .await;
    let (mut raw, _) = tokio_tungstenite::connect_async(raw_url.as_str()).await.context("raw connect")?;

    let raw_samples = raw_echo(&mut raw, rounds).await?;
    let pty_samples = pty_echo(&relay, &agent, rounds).await?;

    let want = mib << 20;
    let (raw_bytes, raw_secs) = raw_bulk(&mut raw, mib).await?;
    let script = format!("head -c {want} /dev/zero | tr '\\0' x");
    let (local_bytes, local_secs) = tokio::task::spawn_blocking({
        let script = script.clone();
        move || local_pty(&script)
    })
    .await
    .context("local pty thread")??;
    let (pty_bytes, pty_secs, resumes) = pty_bulk(&relay, &agent, &script).await?;

    println!("keystroke echo, {rounds} rounds after {} warm-up, one byte at a time, loopback", rounds / 10);
    println!("{:<34} {:>9} {:>9} {:>10} {:>10}", "path", "p50 µs", "p99 µs", "p50 ×raw", "p99 ×raw");
    let (r50, r99) = (percentile(&raw_samples, 0.5), percentile(&raw_samples, 0.99));
    let (p50, p99) = (percentile(&pty_samples, 0.5), percentile(&pty_samples, 0.99));
    println!("{:<34} {:>9.0} {:>9.0} {:>10.2} {:>10.2}", "raw websocket echo", us(r50), us(r99), 1.0, 1.0);
    println!(
        "{:<34} {:>9.0} {:>9.0} {:>10.2} {:>10.2}",
        "PTY (raw, cat) echo via relay+agent",
        us(p50),
        us(p99),
        us(p50) / us(r50),
        us(p99) / us(r99)
    );
    println!("bulk output, {mib} MiB (the viewer resumed {resumes} times)");
    check_count("raw websocket stream", raw_bytes, want)?;
    check_count("same command, local PTY read", local_bytes, want)?;
    check_count("PTY output via agent + relay", pty_bytes, want)?;
    let rate = |bytes: usize, secs: f64| bytes as f64 / secs / (1 << 20) as f64;
    let (raw_rate, local_rate, pty_rate) =
        (rate(raw_bytes, raw_secs), rate(local_bytes, local_secs), rate(pty_bytes, pty_secs));
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
    let area = "terminals";
    let mibs = |r: f64| format!("{r:.0} MiB/s");
    bench::emit(&[
        Row::new(area, "keystroke echo p50 (viewer → relay → agent → PTY → back)", bench::us(p50))
            .times(format!("raw websocket echo {}", bench::us(r50)), us(p50) / us(r50)),
        Row::new(area, "keystroke echo p99", bench::us(p99))
            .times(format!("raw websocket echo {}", bench::us(r99)), us(p99) / us(r99)),
        Row::new(area, format!("bulk output, {mib} MiB"), mibs(pty_rate))
            .times(format!("raw websocket stream {}", mibs(raw_rate)), pty_rate / raw_rate),
        Row::new(
            area,
            format!("bulk output, {mib} MiB, against the same command in a local PTY"),
            mibs(pty_rate),
        )
        .times(format!("local PTY read {}", mibs(local_rate)), pty_rate / local_rate),
    ]);
    Ok(())
}
