//! What request deduplication costs on the fs_write path. Every remembered request is hashed
//! (BLAKE3 of its canonical form; off the async workers above 64 KiB) and its reply stored,
//! so a plain fs_write pays for both. Measured in process through the agent's own dispatcher
//! (`tether_agent::dispatch`), no NATS in between, so the difference is not lost in transport
//! noise. Baseline, in the same run on the same directory: the same dispatcher with
//! deduplication off (`--dedup-max-entries 0`). Rounds interleave the cases; every request has
//! a fresh id, so each one runs (the cost of a first run, not of a replay). A replay's cost is
//! printed last: a retry answered from the cache.
//!
//! `cargo build --release -p tether-tests --bins && target/release/bench-dedup [ROUNDS] [DIR]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tether_agent::dedup::{DedupLimits, Replies};
use tether_agent::dispatch::Dispatcher;
use tether_agent::fence::{Fence, FencePolicy};
use tether_agent::ops::pty::Terminals;
use tether_agent::paths::Paths;
use tether_agent::process::Launcher;
use tether_agent::sandbox::{CommandPolicy, Confinement, Sandbox};
use tether_proto::pb::{self, control_request::Op};
use tether_tests::bench::{self, Row};
use tokio_util::sync::CancellationToken;

const MAX_PAYLOAD: usize = 1 << 20;

fn dispatcher(dir: &Path, limits: DedupLimits) -> Dispatcher {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let paths = Arc::new(Paths::new(&root, "/workspace", None, true).expect("paths"));
    let fence = Fence::open(&dir.join("state"), FencePolicy::default(), CancellationToken::new());
    let fence = Arc::new(fence.expect("fence"));
    let launcher = Arc::new(Launcher::from_env(std::env::vars_os(), &[] as &[&str]));
    let terminals =
        Arc::new(Terminals::new(None, launcher.clone(), fence.clone(), ("ws", "a"), Duration::from_secs(60)));
    let policy = CommandPolicy { confinement: Confinement::WholeMachine, allow_unconfined: false };
    let mut d = Dispatcher::new(paths, launcher, Arc::new(Sandbox::from_policy(policy)), fence, terminals);
    d.replies = Replies::new(limits);
    d
}

fn write(id: &str, size: usize) -> bytes::Bytes {
    let op = Op::FsWrite(pb::FsWriteRequest {
        path: format!("f-{size}"),
        content: vec![0x5a; size].into(),
        ..Default::default()
    });
    let req = pb::ControlRequest {
        request_id: id.into(),
        fence_scope: "bench".into(),
        op: Some(op),
        ..Default::default()
    };
    req.encode_to_vec().into()
}

async fn timed(d: &Dispatcher, payload: bytes::Bytes) -> Duration {
    let start = Instant::now();
    let reply = d.handle(payload, MAX_PAYLOAD).await;
    let elapsed = start.elapsed();
    let resp = pb::ControlResponse::decode(reply).expect("reply");
    assert!(resp.error.is_none(), "{:?}", resp.error);
    elapsed
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse().expect("rounds")).unwrap_or(200);
    let base = args.next().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dirs = [tempfile::tempdir_in(&base).expect("dir"), tempfile::tempdir_in(&base).expect("dir")];
    let off = dispatcher(dirs[0].path(), DedupLimits { max_entries: 0, ..DedupLimits::default() });
    let on = dispatcher(dirs[1].path(), DedupLimits::default());
    println!("fs_write through the dispatcher, {rounds} rounds interleaved, dir {}\n", base.display());
    println!("| content | dedup off p50 µs (baseline) | dedup on p50 µs | on × off | replay p50 µs |");
    println!("|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for size in [4 << 10, 256 << 10, 1000 << 10] {
        let (mut a, mut b, mut replay) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let id = format!("w-{size}-{round}");
            a.push(timed(&off, write(&id, size)).await);
            b.push(timed(&on, write(&id, size)).await);
            replay.push(timed(&on, write(&id, size)).await);
        }
        let (a, b, replay) = (p50(a), p50(b), p50(replay));
        println!(
            "| {} KiB | {:.0} | {:.0} | {:.2} | {:.0} |",
            size >> 10,
            micros(a),
            micros(b),
            b.as_secs_f64() / a.as_secs_f64(),
            micros(replay)
        );
        rows.push(
            Row::new(
                "deduplication",
                format!("fs_write {} KiB p50, replies remembered", size >> 10),
                bench::us(b),
            )
            .times(format!("deduplication off {}", bench::us(a)), b.as_secs_f64() / a.as_secs_f64()),
        );
    }
    bench::emit(&rows);
    let stats = on.replies.stats();
    println!("\ncache after the run: {} entries, {} bytes", stats.entries, stats.bytes);
}
