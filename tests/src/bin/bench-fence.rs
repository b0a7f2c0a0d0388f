//! What an epoch advance costs as fence scopes accumulate. Each advance makes the new epoch
//! durable before acting on it; the agent keeps one small file per scope, so an advance
//! rewrites one file whatever the number of scopes. The baseline, measured in the same run on
//! the same disk, is the layout the agent had before: the whole scope map rewritten (temp file,
//! fsync, rename, directory fsync) on every advance.
//!
//! `cargo build --release -p tether-tests --bins && target/release/bench-fence [SCOPES] [ROUNDS]`

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use tether_agent::fence::{Fence, FencePolicy};
use tether_tests::bench::{self, Row};
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>, baseline: Option<Duration>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    let ratio =
        baseline.map(|b| format!("{:.2}", p50.as_secs_f64() / b.as_secs_f64())).unwrap_or("1.00".into());
    println!("| {what} | {:.0} | {:.0} | {ratio} |", p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6);
    p50
}

/// A fence holding `scopes` scopes (the setup: one durable write each).
async fn fence_with(dir: &Path, scopes: usize) -> Fence {
    let fence = Fence::open(dir, FencePolicy::default(), CancellationToken::new()).expect("fence");
    for n in 0..scopes {
        fence.admit(&format!("session-{n}"), 1).await.expect("admit");
    }
    fence
}

/// The previous layout: the whole map, rewritten durably on each advance.
struct WholeMap {
    map: BTreeMap<String, u32>,
    dir: tempfile::TempDir,
}

impl WholeMap {
    fn new(scopes: usize) -> WholeMap {
        let map = (0..scopes).map(|n| (format!("session-{n}"), 1)).collect();
        WholeMap { map, dir: tempfile::tempdir().expect("tempdir") }
    }

    fn advance(&mut self, epoch: u32) {
        self.map.insert("session-0".into(), epoch);
        write_durably(&self.dir.path().join("fence.json"), &serde_json_like(&self.map)).expect("write");
    }
}

/// `{"scope": epoch, ...}` as the old state file held it.
fn serde_json_like(map: &BTreeMap<String, u32>) -> Vec<u8> {
    let body: Vec<String> = map.iter().map(|(k, v)| format!("  {k:?}: {v}")).collect();
    format!("{{\n{}\n}}", body.join(",\n")).into_bytes()
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let scopes = args.next().unwrap_or(10_000);
    let rounds = args.next().unwrap_or(200);
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let fences = [fence_with(dirs[0].path(), 1).await, fence_with(dirs[1].path(), scopes).await];
    let mut maps = [WholeMap::new(1), WholeMap::new(scopes)];
    // Rounds interleave the four cases, so disk noise from other work falls on all alike.
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for epoch in 2..rounds as u32 + 2 {
        for (i, map) in maps.iter_mut().enumerate() {
            let start = Instant::now();
            map.advance(epoch);
            samples[i].push(start.elapsed());
        }
        for (i, fence) in fences.iter().enumerate() {
            let start = Instant::now();
            fence.admit("session-0", epoch).await.expect("advance");
            samples[2 + i].push(start.elapsed());
        }
    }
    println!("epoch advances, {rounds} rounds, the four cases interleaved\n");
    println!("| layout, scopes | p50 µs | p99 µs | p50 × baseline |");
    println!("|---|---:|---:|---:|");
    let [whole1, whole_n, file1, file_n] = samples;
    let base = report("whole map, 1 (baseline)", whole1, None);
    let whole = report(&format!("whole map, {scopes}"), whole_n, Some(base));
    report("file per scope, 1", file1, Some(base));
    let ours = report(&format!("file per scope, {scopes}"), file_n, Some(base));
    bench::emit(&[Row::new("fencing", format!("epoch advance p50 with {scopes} scopes"), bench::us(ours))
        .times(
            format!("whole scope map rewritten {}", bench::us(whole)),
            ours.as_secs_f64() / whole.as_secs_f64(),
        )]);
}
