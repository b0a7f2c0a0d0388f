//! The symlink-swap race (issue 20, item 7), end to end through NATS against the real confined
//! agent: while a thread keeps swapping a directory of the root for a symlink pointing outside
//! (and back), reads, writes, moves, listings and execs with that directory as their cwd run
//! against it. Not one of them may touch what lies outside: an inotify watch on the outside
//! directories sees no access, the canary there never changes, no listing or read shows it,
//! and no command ever runs with its working directory outside the root (`/proc/<pid>/cwd`
//! says where the kernel put it, whatever path it was given; the shell's `pwd -P` does not: it
//! resolves `$PWD` again, through the symlink swapped in since).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::watch::AccessWatch;
use tether_tests::{Agent, KillAllIn, Nats, op, pb, text};

const CANARY: &[u8] = b"CANARY: outside the workspace root";
/// How long the operations race the swapper.
const RACE: Duration = Duration::from_secs(6);
/// Commands that must really run (not be refused mid-swap) before the race may end: on a loaded
/// machine most starts land mid-swap, so the race runs on, up to `RACE_CAP`, until this many ran.
const MIN_COMMANDS: u64 = 20;
const RACE_CAP: Duration = Duration::from_secs(30);

/// Swaps `root/d` for a symlink to `outside` and back until told to stop; returns the swaps.
fn swapper(root: PathBuf, outside: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let (d, hold) = (root.join("d"), root.join("d.hold"));
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            if hold.exists() {
                // The race's own mkdir or move made a new `d` while the real one was held.
                match std::fs::symlink_metadata(&d) {
                    Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(&d)),
                    Ok(_) => drop(std::fs::remove_file(&d)),
                    Err(_) => {}
                }
                let _ = std::fs::rename(&hold, &d);
                continue;
            }
            if std::fs::rename(&d, &hold).is_ok() {
                let _ = std::os::unix::fs::symlink(&outside, &d);
                std::thread::yield_now();
                if std::fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()) {
                    let _ = std::fs::remove_file(&d);
                }
                if std::fs::rename(&hold, &d).is_ok() {
                    swaps += 1;
                }
            } else {
                let _ = std::fs::create_dir(&d);
            }
        }
        swaps
    })
}

fn shows_outside(reply: &Result<Reply, pb::AgentError>, outside: &Path) -> Option<String> {
    let out = outside.display().to_string();
    match reply {
        Ok(Reply::FsList(l)) => l
            .entries
            .iter()
            .find(|e| e.name == "canary" || e.name == "sub" || e.path.starts_with(&out))
            .map(|e| format!("listed {e:?}")),
        Ok(Reply::FsRead(r)) if r.content.as_ref() == CANARY => Some("read the canary".into()),
        Ok(Reply::Exec(r)) => {
            let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
            (stdout.contains(&out) || stdout.contains("CANARY") || stdout.lines().any(|l| l == "canary"))
                .then(|| format!("a command ran outside: stdout {stdout:?} stderr {stderr:?}"))
        }
        _ => None,
    }
}

#[tokio::test]
async fn swapping_a_directory_for_a_symlink_out_lets_no_operation_touch_what_lies_outside() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let outer = tempfile::tempdir().expect("outside");
    let outside = outer.path().canonicalize().expect("canonical").join("outside");
    std::fs::create_dir_all(outside.join("sub")).expect("outside/sub");
    std::fs::write(outside.join("canary"), CANARY).expect("canary");
    std::fs::write(outside.join("f"), CANARY).expect("outside/f, named as the file inside is");
    let root = agent.root.clone();
    std::fs::create_dir(root.join("d")).expect("d");
    std::fs::write(root.join("d/f"), b"inside").expect("d/f");
    let watch = AccessWatch::new(&[&outside, &outside.join("sub")]);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(root.clone(), outside.clone(), stop.clone());
    let agent = Arc::new(agent);
    let calls = Arc::new(AtomicU64::new(0));
    let execs = Arc::new(AtomicU64::new(0));
    let ops: Vec<fn(u64) -> Op> = vec![
        |_| op::read("d/f"),
        |i| op::write(&format!("d/w{}", i % 4), b"written"),
        |_| Op::FsMove(pb::FsMoveRequest { from: "d/f".into(), to: "d/g".into(), overwrite: true }),
        |_| Op::FsMove(pb::FsMoveRequest { from: "d/g".into(), to: "d/f".into(), overwrite: true }),
        |_| Op::FsList(pb::FsListRequest { path: "d".into(), recursive: true, max_entries: 0 }),
        |_| Op::FsList(pb::FsListRequest { path: "/workspace/d/".into(), recursive: false, max_entries: 0 }),
        |i| Op::FsMkdir(pb::FsMkdirRequest { path: format!("d/m{}", i % 3), parents: true, mode: 0 }),
        |_| {
            Op::Exec(pb::ExecRequest {
                cwd: "d".into(),
                ..op::sh("readlink /proc/$$/cwd; cat f; ls; echo x > made")
            })
        },
        |_| Op::Exec(pb::ExecRequest { cwd: "/workspace/d".into(), ..op::exec(&["ls", "-a"]) }),
    ];
    let mut tasks = Vec::new();
    for (k, make) in ops.into_iter().enumerate() {
        let (agent, outside, calls, execs) = (agent.clone(), outside.clone(), calls.clone(), execs.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            let racing = |execs: &AtomicU64| {
                let t = started.elapsed();
                t < RACE || (t < RACE_CAP && execs.load(Ordering::Relaxed) < MIN_COMMANDS)
            };
            while racing(&execs) {
                let reply = agent.call(make(i)).await;
                if let Some(leak) = shows_outside(&reply, &outside) {
                    panic!("op {k}, round {i}: {leak}");
                }
                if let Err(e) = &reply
                    && e.code == pb::ErrorCode::Unspecified as i32
                {
                    panic!("op {k}: untyped error {e:?}");
                }
                // A command whose cwd is, or turns into, the link out is refused as such; one
                // that finds it missing (mid-swap) says which directory.
                if let (Op::Exec(_), Err(e)) = (make(i), &reply) {
                    let code = tether_tests::error_code(e);
                    assert!(
                        matches!(code, pb::ErrorCode::ConsentRequired | pb::ErrorCode::NotFound),
                        "op {k}: a command refused with {e:?}"
                    );
                }
                if matches!(reply, Ok(Reply::Exec(_))) {
                    execs.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut failure = None;
    for t in tasks {
        if let Err(e) = t.await {
            failure.get_or_insert(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().expect("swapper");
    let events = watch.take();
    if let Some(e) = failure {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(events.is_empty(), "accesses outside the root: {events:?}");
    let mut names: Vec<_> =
        std::fs::read_dir(&outside).expect("list outside").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["canary", "f", "sub"], "something appeared outside the root");
    assert_eq!(std::fs::read(outside.join("canary")).expect("canary"), CANARY);
    assert_eq!(std::fs::read(outside.join("f")).expect("outside/f"), CANARY);
    assert_eq!(std::fs::read_dir(outside.join("sub")).expect("sub").count(), 0);
    let calls = calls.load(Ordering::Relaxed);
    let execs = execs.load(Ordering::Relaxed);
    eprintln!("{calls} operations ({execs} commands ran) raced {swaps} swaps; nothing outside was touched");
    assert!(
        swaps > 100 && calls > 100 && execs >= MIN_COMMANDS,
        "the race hardly ran: {calls} ops, {execs} commands, {swaps} swaps"
    );
}
