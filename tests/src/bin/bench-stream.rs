//! Long-running commands against raw NATS, same run, same loopback server:
//!
//! 1. latency from a command's write to the chunk reaching the client (the command prints the
//!    wall clock in ns; the client subtracts it from its own on arrival), against a raw
//!    publish -> subscriber of the same-sized message carrying its send time;
//! 2. streamed throughput of `cat` of a big file (from /dev/shm) against raw publishes of the
//!    same bytes in chunks of the same average size the stream delivered (rounds alternating
//!    the two; the round of the median ratio is reported);
//! 3. reattach-and-replay time of 8 MiB of buffered output (attach from 0 after the end,
//!    until the end message), against raw publishes of the same 8 MiB.
//!
//! `cargo build --release -p tether-agent -p tether-client -p tether-tests --bins &&
//!  target/release/bench-stream [FILE_MIB] [LATENCY_ROUNDS]`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use tether_client::{AttachFrom, Client, OutputEvent};
use tether_tests::bench::{self, Row};
use tether_tests::execs::start_sh;
use tether_tests::tree::client;
use tether_tests::{Agent, AgentOpts, Nats};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Write-to-chunk latency in µs of `rounds` lines printed 10 ms apart.
async fn stream_latency(c: &Client, rounds: usize) -> Vec<f64> {
    let script = format!("for i in $(seq 1 {rounds}); do date +%s%N; sleep 0.01; done");
    c.exec_start(start_sh("latency", &script)).await.expect("exec_start");
    let mut out = c.attach("latency", AttachFrom::default()).await.expect("attach");
    let (mut samples, mut pending) = (Vec::new(), Vec::new());
    while let Some(event) = out.next().await {
        match event.expect("event") {
            OutputEvent::Data { data, .. } => {
                let arrived = now_ns();
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if let Ok(sent) = String::from_utf8_lossy(&line).trim().parse::<u128>() {
                        samples.push(arrived.saturating_sub(sent) as f64 / 1e3);
                    }
                }
            }
            OutputEvent::Gap { .. } => {}
            OutputEvent::End(_) => break,
        }
    }
    samples
}

/// The same with a bare publisher and subscriber.
async fn raw_latency(nats: &Nats, rounds: usize) -> Vec<f64> {
    let (publisher, subscriber) = (nats.client().await, nats.client().await);
    let mut sub = subscriber.subscribe("bench.latency").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let sender = tokio::spawn(async move {
        for _ in 0..rounds {
            let payload = format!("{}\n", now_ns());
            publisher.publish("bench.latency", payload.into()).await.expect("publish");
            publisher.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut samples = Vec::new();
    while samples.len() < rounds {
        // Bounded: a baseline that loses a message must not hang the whole run.
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await else {
            println!("raw subscriber stalled after {} of {rounds} messages", samples.len());
            break;
        };
        let arrived = now_ns();
        let sent: u128 = String::from_utf8_lossy(&msg.payload).trim().parse().unwrap_or(arrived);
        samples.push(arrived.saturating_sub(sent) as f64 / 1e3);
    }
    sender.abort();
    samples
}

/// Streams `cat path`; returns (seconds, bytes, chunks).
async fn stream_cat(c: &Client, id: &str, path: &str) -> (f64, u64, u64) {
    let start = Instant::now();
    c.exec_start(start_sh(id, &format!("cat {path}"))).await.expect("exec_start");
    let mut out = c.attach(id, AttachFrom::default()).await.expect("attach");
    let (mut bytes, mut chunks) = (0u64, 0u64);
    while let Some(event) = out.next().await {
        match event.expect("event") {
            OutputEvent::Data { data, .. } => {
                bytes += data.len() as u64;
                chunks += 1;
            }
            OutputEvent::Gap { bytes } => panic!("lost {bytes} bytes"),
            OutputEvent::End(state) => {
                assert_eq!(state.exit_code, 0, "cat failed: {state:?}");
                break;
            }
        }
    }
    (start.elapsed().as_secs_f64(), bytes, chunks)
}

/// Raw publishes of `total` bytes in `chunk`-byte messages to a counting subscriber: the
/// seconds they take (at the rate the subscriber received them).
async fn raw_throughput(nats: &Nats, total: u64, chunk: usize) -> f64 {
    let (publisher, subscriber) = (nats.client().await, nats.client().await);
    let mut sub = subscriber.subscribe("bench.bulk").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let payload = Bytes::from(vec![7u8; chunk]);
    let messages = total.div_ceil(chunk as u64);
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..messages {
            publisher.publish("bench.bulk", payload.clone()).await.expect("publish");
        }
        publisher.flush().await.expect("flush");
    });
    // A bare publisher has no flow control: the server may drop messages for a subscriber that
    // falls behind (a slow consumer). The rate is then that of what did arrive, up to the last.
    let (mut received, mut last) = (0u64, start.elapsed());
    while received < messages {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Some(_)) => (received, last) = (received + 1, start.elapsed()),
            _ => {
                eprintln!(
                    "raw subscriber: {} of {messages} messages lost (slow consumer)",
                    messages - received
                );
                break;
            }
        }
    }
    sender.await.expect("sender");
    last.as_secs_f64() * messages as f64 / received.max(1) as f64
}

/// Attach-from-0-to-end time of an ended execution holding `total` bytes.
async fn replay(c: &Client, id: &str) -> (f64, u64) {
    let start = Instant::now();
    let mut out = c.attach(id, AttachFrom::default()).await.expect("attach");
    let mut bytes = 0u64;
    while let Some(event) = out.next().await {
        match event.expect("event") {
            OutputEvent::Data { data, .. } => bytes += data.len() as u64,
            OutputEvent::Gap { bytes } => panic!("lost {bytes} bytes"),
            OutputEvent::End(_) => break,
        }
    }
    (start.elapsed().as_secs_f64(), bytes)
}

/// Rounds of the `cat` throughput measure (each a `cat` and a raw publish of the same bytes).
const CAT_ROUNDS: usize = 3;

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let file_mib = args.next().unwrap_or(1024);
    let rounds = args.next().unwrap_or(300) as usize;
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    // A directory of our own for the big file, made before the agent starts: commands are
    // confined to the workspace, and a read location shares only what anyone may read when the
    // agent starts (a shared /dev/shm holding someone's private file is shared entry by entry,
    // and a file made there later stays unreadable).
    let held = tempfile::Builder::new().prefix("tether-bench-stream-").tempdir_in(base).expect("a directory");
    std::fs::set_permissions(held.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let dir = held.path().to_str().expect("utf-8 path").to_owned();
    let nats = Nats::start().await;
    let mut args = vec!["--confine-read".to_owned(), dir.clone()];
    if let Ok(window) = std::env::var("BENCH_EXEC_WINDOW") {
        args.extend(["--exec-window".to_owned(), window]);
    }
    let opts = AgentOpts { args, ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let c = client(&nats, &agent, "bench", 0).await;

    let mut ours = stream_latency(&c, rounds).await;
    let mut raw = raw_latency(&nats, rounds).await;
    ours.sort_by(f64::total_cmp);
    raw.sort_by(f64::total_cmp);
    let (o50, r50) = (percentile(&ours, 0.5), percentile(&raw, 0.5));
    println!("## write -> chunk latency ({} / {} samples)", ours.len(), raw.len());
    println!("| path | p50 µs | p99 µs | p50 × raw |");
    println!("|---|---:|---:|---:|");
    println!("| raw NATS publish -> subscriber | {r50:.0} | {:.0} | 1.00 |", percentile(&raw, 0.99));
    println!(
        "| command write -> client chunk | {o50:.0} | {:.0} | {:.2} |",
        percentile(&ours, 0.99),
        o50 / r50
    );

    let path = format!("{dir}/big");
    {
        let block = vec![0x5au8; 1 << 20];
        let mut file = std::fs::File::create(&path).expect("create the file");
        for _ in 0..file_mib {
            std::io::Write::write_all(&mut file, &block).expect("write the file");
        }
    }
    // Rounds alternate the two, so memory and load fall on both alike; the round of the median
    // ratio is reported (a pair measured together, not two medians from different rounds).
    let (mut rounds, mut bytes, mut chunks) = (Vec::new(), 0, 0);
    for round in 0..CAT_ROUNDS {
        let secs;
        (secs, bytes, chunks) = stream_cat(&c, &format!("cat-{round}"), &path).await;
        let raw_secs = raw_throughput(&nats, bytes, (bytes / chunks.max(1)) as usize).await;
        eprintln!("cat round {round}: {:.2} × raw", raw_secs / secs);
        rounds.push((secs, raw_secs));
    }
    let _ = std::fs::remove_file(&path);
    let chunk = (bytes / chunks.max(1)) as usize;
    rounds.sort_by(|(a, ra), (b, rb)| (ra / a).total_cmp(&(rb / b)));
    let (secs, raw_secs) = rounds[rounds.len() / 2];
    println!(
        "\n## streamed `cat` of {file_mib} MiB ({dir}), {chunks} chunks of {} KiB on average, the median of {CAT_ROUNDS} rounds",
        chunk >> 10
    );
    println!("| path | MiB/s | × raw |");
    println!("|---|---:|---:|");
    println!("| raw NATS publish, {} KiB messages | {:.0} | 1.00 |", chunk >> 10, mib_s(bytes, raw_secs));
    println!("| exec_start + attach, `cat` | {:.0} | {:.2} |", mib_s(bytes, secs), raw_secs / secs);

    c.exec_start(start_sh("buffered", "head -c 8388608 /dev/urandom")).await.expect("exec_start");
    c.exec_wait("buffered").await.expect("wait");
    let mut times = Vec::new();
    let mut replayed = 0;
    for _ in 0..5 {
        let (secs, bytes) = replay(&c, "buffered").await;
        times.push(secs * 1e3);
        replayed = bytes;
    }
    times.sort_by(f64::total_cmp);
    let raw_ms = raw_throughput(&nats, replayed, 128 << 10).await * 1e3;
    println!("\n## reattach and replay of {} MiB buffered output (5 runs)", replayed >> 20);
    println!("| path | ms (p50) | × raw |");
    println!("|---|---:|---:|");
    println!("| raw NATS publish of the same bytes, 128 KiB messages | {raw_ms:.1} | 1.00 |");
    println!(
        "| exec_attach from 0 to the end message | {:.1} | {:.2} |",
        percentile(&times, 0.5),
        percentile(&times, 0.5) / raw_ms
    );
    let area = "streamed output";
    let replay_ms = percentile(&times, 0.5);
    bench::emit(&[
        Row::new(area, "command write → chunk at the client, p50", format!("{o50:.0} µs"))
            .times(format!("raw NATS publish → subscriber {r50:.0} µs"), o50 / r50)
            .goal("≤ 2 ms"),
        Row::new(
            area,
            format!("`cat` of {file_mib} MiB, exec_start + attach"),
            format!("{:.0} MiB/s", mib_s(bytes, secs)),
        )
        .times(
            format!("raw NATS publish, {} KiB messages: {:.0} MiB/s", chunk >> 10, mib_s(bytes, raw_secs)),
            raw_secs / secs,
        )
        .goal("≥ 0.70×"),
        Row::new(
            area,
            format!("reattach and replay of {} MiB", replayed >> 20),
            format!("{replay_ms:.1} ms"),
        )
        .times(format!("raw NATS publish of the same bytes {raw_ms:.1} ms"), replay_ms / raw_ms),
    ]);
}
