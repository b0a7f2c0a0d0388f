//! Workspace sync against `rsync -a` over ssh and `tar | ssh | tar`, measured in the same run on
//! a generated tree of 10 000 files / ~100 MiB: first sync up, a re-sync with no change, a
//! re-sync after one file changed, and sync down with a baseline merge. Tether runs through
//! the library (`tether_client::sync`) against a real agent and nats-server on loopback, and
//! once through `tetherctl` for the no-change case (process start and NATS connect included).
//! The baselines need `rsync` and `sshd` (a private sshd on a free loopback port is started
//! with a throwaway key); without them they are skipped with a note.
//!
//! `cargo build --release -p tether-tests -p tether-agent -p tether-client --bins &&
//!  target/release/bench-sync [FILES] [MIB] [ROUNDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use tether_client::sync::{self, DownOptions, UpOptions};
use tether_tests::bench::{self, Row};
use tether_tests::ssh::{Ssh, which};
use tether_tests::tree::{client, noise, put};
use tether_tests::{Agent, Nats};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `files` files of about `mib` MiB in all, 100 to a directory; ten of them 1 MiB.
fn generate(root: &Path, files: usize, mib: usize) {
    let big = 10.min(files);
    let small_total = (mib << 20).saturating_sub(big << 20);
    let avg = small_total / (files - big).max(1);
    let pool = noise(4 << 20, 42);
    for i in 0..files {
        let len = if i < big { 1 << 20 } else { avg / 2 + (i * 7919) % avg.max(1) };
        let start = (i * 4099) % (pool.len() - len.min(pool.len()) + 1);
        let mut content = pool[start..start + len].to_vec();
        content.extend_from_slice(&(i as u64).to_le_bytes());
        put(root, &format!("d{:03}/f{i:05}.dat", i / 100), &content, 0o644);
    }
}

/// The `i`-th of the 100 files the remote job changes: spread over the tree, two apart at
/// least (the local edits take the file after each of the first ten).
fn remote_change(files: usize, i: usize) -> usize {
    i * files / 100
}

fn change_one(root: &Path, i: usize, round: usize) {
    let path = root.join(format!("d{:03}/f{i:05}.dat", i / 100));
    let mut content = std::fs::read(&path).expect("read");
    content[0] = content[0].wrapping_add(1 + round as u8);
    std::fs::write(&path, content).expect("write");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let files = args.next().unwrap_or(10_000);
    let mib = args.next().unwrap_or(100);
    let rounds = args.next().unwrap_or(5).max(1);
    assert!(files >= 200, "the remote job changes 100 files two apart: FILES must be at least 200");
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("local");
    generate(&local, files, mib);
    let (n, bytes) = sync::snapshot(&local, &[], None).expect("snapshot").totals();
    println!(
        "tree: {n} files, {:.1} MiB, {rounds} rounds per re-sync case\n",
        bytes as f64 / (1 << 20) as f64
    );
    // Let the generated files leave the digest caches' racy window (50 ms) before timing.
    std::thread::sleep(Duration::from_millis(200));

    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let c = client(&nats, &agent, "bench", 1).await;
    let cache = work.path().join("digests.bin");
    let base = work.path().join("base.json");
    let opts = UpOptions {
        digest_cache: Some(cache.clone()),
        baseline_out: Some(base.clone()),
        ..Default::default()
    };

    println!("| case | tether (ms) | rsync -a over ssh (ms) | tar \\| ssh \\| tar (ms) | tether / rsync |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let first = sync::sync_up(&c, &local, "bench", &opts).await.expect("first sync up");
    let ssh = which("rsync").and_then(|_| Ssh::start());
    let rsync_dst = work.path().join("rsync-dst");
    let (rsync_first, tar_first) = match &ssh {
        Ok(ssh) => (
            Some(ssh.rsync(&format!("{}/", local.display()), &format!("127.0.0.1:{}/", rsync_dst.display()))),
            Some(ssh.tar_over_ssh(&local, &work.path().join("tar-dst"))),
        ),
        Err(_) => (None, None),
    };
    row(&mut rows, "first sync up", first.elapsed, rsync_first, tar_first, "faster than rsync");
    eprintln!(
        "  (first: {} files sent in {} batches, {} large)",
        first.files_sent, first.batches, first.large_files
    );

    // The first re-sync after the upload: the agent hashes the large files, which came through
    // the chunked transfer (it remembers the digests of what batch_write wrote, not of those).
    let after = sync::sync_up(&c, &local, "bench", &opts).await.expect("re-sync");
    assert!(after.plan.is_empty(), "{after:?}");
    row(
        &mut rows,
        &format!(
            "first re-sync after it (agent hashes {} files uploaded by the transfer)",
            after.remote.files_hashed
        ),
        after.elapsed,
        None,
        None,
        "",
    );
    let mut same = Vec::new();
    for _ in 0..rounds {
        let r = sync::sync_up(&c, &local, "bench", &opts).await.expect("re-sync");
        assert!(r.plan.is_empty() && r.remote.files_hashed == 0 && r.local_files_hashed == 0, "{r:?}");
        same.push(r.elapsed);
    }
    let rsync_same = ssh.as_ref().ok().map(|s| {
        median(
            (0..rounds)
                .map(|_| {
                    s.rsync(&format!("{}/", local.display()), &format!("127.0.0.1:{}/", rsync_dst.display()))
                })
                .collect(),
        )
    });
    row(&mut rows, "no-change re-sync (median)", median(same), rsync_same, None, "≤ 100 ms");
    let cli = cli_no_change(&nats, &agent, &local, &work.path().join("cli-cache"), rounds);
    row(&mut rows, "no-change re-sync, `tetherctl` process (median)", cli, None, None, "");

    let mut one = Vec::new();
    let mut rsync_one = Vec::new();
    for round in 0..rounds {
        change_one(&local, files / 2 + round, round);
        let r = sync::sync_up(&c, &local, "bench", &opts).await.expect("one-change re-sync");
        assert_eq!((r.files_sent, r.remote.files_hashed), (1, 0), "{r:?}");
        one.push(r.elapsed);
        if let Ok(s) = &ssh {
            rsync_one.push(
                s.rsync(&format!("{}/", local.display()), &format!("127.0.0.1:{}/", rsync_dst.display())),
            );
        }
    }
    row(
        &mut rows,
        "one-file-changed re-sync (median)",
        median(one),
        (!rsync_one.is_empty()).then(|| median(rsync_one)),
        None,
        "≤ 120 ms",
    );

    // The job changes 100 files and adds 10 remotely; meanwhile 10 local edits. Then pull.
    sync::sync_up(&c, &local, "bench", &opts).await.expect("baseline sync up");
    let remote = agent.root.join("bench");
    for i in 0..100 {
        change_one(&remote, remote_change(files, i), 9);
    }
    for i in 0..10 {
        put(&remote, &format!("out/result-{i}.txt"), &noise(4096, i), 0o644);
    }
    for i in 0..10 {
        change_one(&local, remote_change(files, i) + 1, 3);
    }
    std::thread::sleep(Duration::from_millis(100));
    let down_opts =
        DownOptions { baseline: Some(base.clone()), digest_cache: Some(cache.clone()), ..Default::default() };
    let down = sync::sync_down(&c, "bench", &local, &down_opts).await.expect("sync down");
    assert_eq!((down.files_received, down.unresolved()), (110, 0), "{down:?}");
    let rsync_down = ssh.as_ref().ok().map(|s| {
        for i in 0..100 {
            change_one(&rsync_dst, remote_change(files, i), 9);
        }
        s.rsync(
            &format!("127.0.0.1:{}/", rsync_dst.display()),
            &format!("{}/", work.path().join("rsync-back").display()),
        )
    });
    row(
        &mut rows,
        "sync down, baseline merge (110 remote changes, 10 local)",
        down.elapsed,
        rsync_down,
        None,
        "",
    );
    match &ssh {
        Ok(_) => println!(
            "\nrsync down is a plain `rsync -a` of the remote tree into a fresh directory (it has no merge: it would overwrite the local edits)."
        ),
        Err(why) => println!("\nbaselines skipped: {why} (apt-get install -y openssh-server rsync)"),
    }
    bench::emit(&rows);
}

/// The no-change re-sync as a user runs it: a `tetherctl sync up` process.
fn cli_no_change(nats: &Nats, agent: &Agent, local: &Path, cache: &Path, rounds: usize) -> Duration {
    let run = || {
        let started = Instant::now();
        let out = agent
            .tetherctl(nats)
            .env("XDG_CACHE_HOME", cache)
            .args(["--fence-scope", "bench", "--epoch", "1", "sync", "up"])
            .arg(local)
            .arg("bench")
            .output()
            .expect("tetherctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    };
    run(); // fills this cache directory
    median((0..rounds).map(|_| run()).collect())
}

/// Prints one line of this program's table and keeps it as a row of `tether-bench`'s.
fn row(
    rows: &mut Vec<Row>,
    case: &str,
    tether: Duration,
    rsync: Option<Duration>,
    tar: Option<Duration>,
    goal: &str,
) {
    let cell = |d: Option<Duration>| d.map_or("—".to_owned(), |d| format!("{:.0}", ms(d)));
    let ratio = rsync.map_or("—".to_owned(), |r| format!("{:.2}", tether.as_secs_f64() / r.as_secs_f64()));
    println!("| {case} | {:.0} | {} | {} | {ratio} |", ms(tether), cell(rsync), cell(tar));
    let mut row = Row::new("workspace sync", case, bench::ms(tether)).goal(goal);
    if let Some(r) = rsync {
        row =
            row.times(format!("rsync -a over ssh {}", bench::ms(r)), tether.as_secs_f64() / r.as_secs_f64());
    }
    rows.push(row);
}
