//! Whole-file transfer throughput (`tetherctl put` and `tetherctl get`, each a real process
//! against the real agent) against raw NATS request/reply measured in the same run, on the same
//! nats-server, at the same message size and with the same number of requests in flight, to a
//! responder in a process of its own (`nats-responder`, as the agent is one): the
//! ratio is what the transfer path (file I/O, hashing, the fsync, the protocol) costs over the
//! transport itself. Peak RSS of both processes shows that neither holds the file in memory.
//!
//! Both ends write durably (the agent fsyncs before its rename, `get` before its rename), so on
//! a slow disk the disk's write bandwidth bounds both; DIR (default: the system temp dir) holds
//! the agent's workspace and the local files: give `/dev/shm` to measure the transfer path
//! without the disk.
//!
//! `cargo build --release -p tether-agent -p tether-client -p tether-tests --bins &&
//!  target/release/bench-transfer [MIB] [DIR] [ROUNDS]` (default 1024 MiB, temp dir, 3 rounds)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tether_client::{chunk_size, window_for};
use tether_tests::bench::{self, Row};
use tether_tests::ssh::Ssh;
use tether_tests::watch::status_field;
use tether_tests::{Agent, AgentOpts, Nats};

/// Writes `len` bytes of xorshift noise (incompressible, cheap to make).
fn write_noise(path: &Path, len: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// `count` requests of `request` bytes answered with `reply` bytes, `window` in flight.
async fn raw(nc: &async_nats::Client, subject: &str, count: u64, request: Bytes, window: usize) -> Duration {
    let start = Instant::now();
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    let send = |payload: Bytes| nc.request(subject.to_owned(), payload);
    for _ in 0..count {
        while in_flight.len() >= window {
            let done: Result<async_nats::Message, _> = in_flight.next().await.expect("a request");
            done.expect("raw request");
        }
        in_flight.push(send(request.clone()));
    }
    while let Some(done) = in_flight.next().await {
        done.expect("raw request");
    }
    start.elapsed()
}

/// Runs `cmd` to success; its wall time and peak RSS (KiB).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> (Duration, i64, String) {
    let start = Instant::now();
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let output = child.stdout.map(std::io::read_to_string);
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(waited, pid, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed");
    let stdout = output.and_then(Result::ok).unwrap_or_default();
    (elapsed, usage.ru_maxrss, stdout)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn blake3_of(json: &str) -> String {
    let at = json.find("\"blake3\":\"").expect("a blake3 in the report") + 10;
    json[at..at + 64].to_owned()
}

/// A durable local copy of `from` (copy, fsync): what the disk allows a durable write.
fn local_copy(from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    let mut src = std::fs::File::open(from).expect("open");
    let mut dst = std::fs::File::create(to).expect("create");
    std::io::copy(&mut src, &mut dst).expect("copy");
    dst.sync_all().expect("fsync");
    let took = start.elapsed();
    drop(dst);
    std::fs::remove_file(to).expect("remove");
    took
}

/// The median of `samples` (sorted in place).
fn median<T: Copy + PartialOrd>(samples: &mut [T]) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    samples[samples.len() / 2]
}

/// One measured case: wall times and peak RSS (KiB) of the client process, per round.
#[derive(Default)]
struct Case {
    times: Vec<Duration>,
    rss: Vec<i64>,
}

impl Case {
    fn add(&mut self, (time, rss, _): (Duration, i64, String)) {
        self.times.push(time);
        self.rss.push(rss);
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let base = args.next().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let nats = Nats::start().await;
    let root = tempfile::tempdir_in(&base).expect("tempdir");
    let opts = AgentOpts { root: Some(root.path().canonicalize().expect("root")), ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let local = tempfile::tempdir_in(&base).expect("tempdir");
    let original = local.path().join("big.bin");
    write_noise(&original, size).expect("write the test file");

    let nc = nats.client().await;
    let chunk = chunk_size(nc.max_payload());
    let window = window_for(chunk).min(agent.caps().transfer_window as usize);
    let count = size.div_ceil(chunk as u64);
    println!(
        "{mib} MiB in {}, max_payload {}, {chunk}-byte messages, {window} in flight, {rounds} rounds",
        base.display(),
        nc.max_payload()
    );
    let payload = Bytes::from(vec![0x5au8; chunk]);
    // The raw responders run in processes of their own, as the agent does.
    let _sink = bench::Responder::start(&nats, "bench.sink", Some(2));
    let _source = bench::Responder::start(&nats, "bench.source", Some(chunk));

    let (mut raw_write, mut raw_read, mut disk) = (Vec::new(), Vec::new(), Vec::new());
    // The way the backends Tether replaces move a file: scp to and from a loopback sshd.
    let ssh = Ssh::start();
    let (mut scp_put, mut scp_get) = (Vec::new(), Vec::new());
    let scp_remote = format!("127.0.0.1:{}", root.path().join("scp.bin").display());
    let (mut put, mut get_known, mut get_cold) = (Case::default(), Case::default(), Case::default());
    let copy = local.path().join("copy.bin");
    let remote = root.path().join("big.bin");
    let (put_cmd, get_cmd) = (
        || {
            let mut cmd = agent.tetherctl(&nats);
            cmd.args(["--json", "put", "--quiet"]).arg(&original).arg("/workspace/big.bin");
            cmd
        },
        || {
            let mut cmd = agent.tetherctl(&nats);
            cmd.args(["--json", "get", "--quiet", "/workspace/big.bin"]).arg(&copy);
            cmd
        },
    );
    // Each transfer (as the local copy) writes a new file into memory freed just before it,
    // and a first put and get, untimed, free such memory for the first round. On a VM that
    // hands memory the guest freed back to the host (virtio-balloon free page reporting),
    // a page freed seconds ago costs a host fault on first touch, which halved the rate of
    // writing 1 GiB in some runs; the raw baselines allocate nothing.
    timed(&mut put_cmd());
    timed(&mut get_cmd());
    // Rounds interleave the cases, so load from other work falls on all alike.
    for _ in 0..rounds {
        disk.push(local_copy(&original, &local.path().join("disk.bin")));
        raw_write.push(raw(&nc, "bench.sink", count, payload.clone(), window).await);
        let _ = std::fs::remove_file(&remote);
        let sent = timed(&mut put_cmd());
        let sent_digest = blake3_of(&sent.2);
        put.add(sent);
        raw_read.push(raw(&nc, "bench.source", count, Bytes::from_static(b"read"), window).await);
        let _ = std::fs::remove_file(&copy);
        let got = timed(&mut get_cmd());
        assert_eq!(blake3_of(&got.2), sent_digest, "the round trip changed the content");
        get_known.add(got);
        // A metadata change the agent did not make: its remembered digest no longer holds.
        let mode = std::fs::metadata(&remote).expect("remote file").permissions();
        std::fs::set_permissions(&remote, mode).expect("chmod");
        std::os::unix::fs::chown(&remote, None, None).expect("touch ctime");
        let _ = std::fs::remove_file(&copy);
        let got = timed(&mut get_cmd());
        assert_eq!(blake3_of(&got.2), sent_digest, "the round trip changed the content");
        get_cold.add(got);
        if let Ok(ssh) = &ssh {
            scp_put.push(ssh.scp(&original.display().to_string(), &scp_remote));
            scp_get.push(ssh.scp(&scp_remote, &local.path().join("scp-copy.bin").display().to_string()));
        }
    }
    let agent_rss = status_field(agent.proc.pid(), "VmHWM").unwrap_or(0) as i64;

    println!();
    println!(
        "| transfer (median of {rounds}) | MiB/s | × raw NATS | client peak RSS MiB | agent peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|");
    let rss = |kib: i64| format!("{:.0}", kib as f64 / 1024.0);
    let row = |what: &str, case: &mut Case, base: Duration| {
        let t = median(&mut case.times);
        let ratio = base.as_secs_f64() / t.as_secs_f64();
        let peak = case.rss.iter().copied().max().unwrap_or(0);
        println!("| {what} | {:.0} | {ratio:.2} | {} | {} |", mib_s(size, t), rss(peak), rss(agent_rss));
    };
    let read_base = median(&mut raw_read);
    let write_base = median(&mut raw_write);
    println!("| raw NATS request/reply, {chunk} B replies | {:.0} | 1.00 | | |", mib_s(size, read_base));
    row("`tetherctl get` (digest known from the upload)", &mut get_known, read_base);
    row("`tetherctl get` (agent hashes the file meanwhile)", &mut get_cold, read_base);
    println!("| raw NATS request/reply, {chunk} B requests | {:.0} | 1.00 | | |", mib_s(size, write_base));
    row("`tetherctl put`", &mut put, write_base);
    let disk = median(&mut disk);
    println!(
        "| local copy + fsync in {} (the disk's ceiling) | {:.0} | | | |",
        base.display(),
        mib_s(size, disk)
    );
    let scp = (!scp_put.is_empty()).then(|| (median(&mut scp_get), median(&mut scp_put)));
    match scp {
        Some((g, p)) => println!(
            "| scp from / to a loopback sshd | {:.0} / {:.0} | | | |",
            mib_s(size, g),
            mib_s(size, p)
        ),
        None => println!("scp baseline skipped: {}", ssh.as_ref().err().map_or("", String::as_str)),
    }
    emit_rows(mib, (&mut get_known, &mut get_cold, &mut put), (read_base, write_base), scp, agent_rss);
}

/// `tether-bench`'s rows: each transfer beside raw NATS and beside scp.
fn emit_rows(
    mib: u64,
    (get_known, get_cold, put): (&mut Case, &mut Case, &mut Case),
    (read_base, write_base): (Duration, Duration),
    scp: Option<(Duration, Duration)>,
    agent_rss: i64,
) {
    let size = mib << 20;
    let rate = |t: Duration| format!("{:.0} MiB/s", mib_s(size, t));
    let area = "transfers";
    let mut rows = Vec::new();
    let cases = [
        ("`tetherctl get`", get_known, read_base, "replies", "≥ 0.70×", scp.map(|s| s.0)),
        ("`tetherctl get`, agent hashes meanwhile", get_cold, read_base, "replies", "", None),
        ("`tetherctl put`", put, write_base, "requests", "≥ 0.60×", scp.map(|s| s.1)),
    ];
    for (what, case, base, dir, goal, scp) in cases {
        let t = median(&mut case.times);
        let ours = rate(t);
        rows.push(
            Row::new(area, format!("{what}, {mib} MiB"), &ours)
                .times(
                    format!("raw NATS request/reply, 1 MiB {dir}: {}", rate(base)),
                    base.as_secs_f64() / t.as_secs_f64(),
                )
                .goal(goal),
        );
        if let Some(scp) = scp {
            rows.push(
                Row::new(area, format!("{what}, {mib} MiB, against scp"), ours).times(
                    format!("scp over loopback ssh {}", rate(scp)),
                    scp.as_secs_f64() / t.as_secs_f64(),
                ),
            );
        }
        let peak = case.rss.iter().copied().max().unwrap_or(0);
        rows.push(Row::new(
            area,
            format!("{what}, {mib} MiB: peak RSS of `tetherctl`"),
            bench::mib(peak as u64),
        ));
    }
    rows.push(Row::new(
        area,
        format!("agent peak RSS over the {mib} MiB transfers"),
        bench::mib(agent_rss as u64),
    ));
    bench::emit(&rows);
}
