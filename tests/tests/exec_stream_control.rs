//! Long-running commands, control side: stdin streaming, signals to the whole group, fencing,
//! the agent restarting under them, and `tetherctl run / attach / ps / kill / wait`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tether_client::Client;
use tether_tests::execs::{collect, start_sh};
use tether_tests::tree::{client, noise};
use tether_tests::{Agent, AgentOpts, KillOnDrop, Nats, eventually, op, pb, pid_alive, read_pid, text};

const LONG: Duration = Duration::from_secs(180);

async fn setup(nats: &Nats) -> (Agent, Client) {
    let agent = Agent::start(nats).await;
    let c = client(nats, &agent, "control-tests", 0).await;
    (agent, c)
}

#[tokio::test]
async fn stdin_streamed_to_sha256sum_gives_the_right_digest_for_50_mib() {
    let nats = Nats::start().await;
    let (_agent, c) = setup(&nats).await;
    let mut req = start_sh("digest", "sha256sum");
    req.stdin_open = true;
    c.exec_start(req).await.expect("exec_start");
    let data = Bytes::from(noise(50 << 20, 7));
    let mut writer = c.stdin_writer("digest");
    for piece in data.chunks(1 << 20) {
        writer.write(Bytes::copy_from_slice(piece)).await.expect("stdin");
    }
    writer.close().await.expect("close");
    // A retried write of bytes already taken is applied once, never twice.
    let again = c.exec_stdin("digest", data.slice(..10), 0, false).await;
    assert!(again.is_err() || again.is_ok_and(|r| r.written == 50 << 20));
    let got = collect(&c, "digest", LONG).await;
    let want: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(text(&got.stdout()).split_whitespace().next(), Some(want.as_str()));
    assert_eq!(got.state().exit_code, 0);
}

/// The process group of `pid` (field 5 of /proc/PID/stat), if it still runs.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(2)?.parse().ok()
}

/// `ps` lines of the processes in `group`, for a failure message.
fn processes_of(group: Option<i32>) -> String {
    let out = std::process::Command::new("ps").args(["-eo", "pid,ppid,pgid,stat,args"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let group = group.map(|g| g.to_string()).unwrap_or_default();
    let signals = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .filter(|l| l.starts_with("Sig") || l.starts_with("ShdPnd"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    text.lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(group.as_str()))
        .map(|l| format!("{l}\n    {}", signals(l.split_whitespace().next().unwrap_or_default())))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn signals_reach_the_whole_process_group() {
    // As under `nohup`: the agent starts with SIGHUP ignored, which its commands must not
    // inherit (SIG_IGN survives exec), or HUP would reach no one.
    // SAFETY: setting a signal to SIG_IGN touches no memory; the agent started below inherits it.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let nats = Nats::start().await;
    let (agent, c) = setup(&nats).await;
    for (i, signal) in [pb::ExecSignal::Term, pb::ExecSignal::Int, pb::ExecSignal::Hup, pb::ExecSignal::Kill]
        .into_iter()
        .enumerate()
    {
        let id = format!("group{i}");
        let pid_file = agent.root.join(format!("{id}.pid"));
        // The leader waits for a child of its own (in the foreground: a background job of a
        // non-interactive shell ignores SIGINT); both must get the signal.
        let script = format!("sh -c 'echo $$ > {id}.pid; exec sleep 300'; echo not-reached");
        c.exec_start(start_sh(&id, &script)).await.expect("exec_start");
        eventually("the child's pid file", || {
            std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        let child = read_pid(&pid_file);
        let _guard = KillOnDrop(child);
        let group = process_group(child);
        c.exec_signal(&id, signal).await.expect("exec_signal");
        let Ok(state) = tokio::time::timeout(LONG, c.exec_wait(&id)).await else {
            panic!(
                "{signal:?}: the execution did not end; its process group {group:?} now:\n{}\nagent log:\n{}",
                processes_of(group),
                agent.log()
            );
        };
        let state = state.expect("wait");
        assert_eq!(state.status, pb::ExecStatus::Exited as i32, "{signal:?}: {state:?}");
        assert!(state.signal > 0, "{signal:?}: the leader died of the signal: {state:?}");
        eventually("the background child died too", || !pid_alive(child)).await;
        let err = c.exec_signal(&id, signal).await.expect_err("it has ended");
        assert!(err.to_string().contains("has ended"), "{err}");
    }
}

#[tokio::test]
async fn an_epoch_advance_ends_the_older_scope_executions() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let old = client(&nats, &agent, "fenced", 1).await;
    old.exec_start(start_sh("sleeper", "sleep 300 & echo $! > bg.pid; sleep 300")).await.expect("exec_start");
    let pid_file = agent.root.join("bg.pid");
    eventually("the pid file", || std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))).await;
    let bg = read_pid(&pid_file);
    let _guard = KillOnDrop(bg);
    agent.call_fenced(op::ping(1), "fenced", 2).await.expect("epoch 2 takes the scope");
    let new = client(&nats, &agent, "fenced", 2).await;
    let state = tokio::time::timeout(LONG, new.exec_wait("sleeper")).await.expect("ends").expect("wait");
    assert_eq!(state.status, pb::ExecStatus::Killed as i32, "{state:?}");
    assert!(state.end_reason.contains("epoch"), "{state:?}");
    eventually("the whole group is gone", || !pid_alive(bg)).await;
    let listed = new.exec_list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, pb::ExecStatus::Killed as i32);
}

#[tokio::test]
async fn after_a_crash_the_new_agent_kills_leftovers_and_answers_for_the_previous_instance() {
    let nats = Nats::start().await;
    let state = tempfile::tempdir().unwrap();
    let opts = AgentOpts { state_dir: Some(state.path().to_owned()), ..Default::default() };
    let mut first = Agent::start_with(&nats, opts.clone()).await;
    let c = client(&nats, &first, "restart", 0).await;
    c.exec_start(start_sh("survivor", "echo $$ > leader.pid; exec sleep 300")).await.expect("exec_start");
    c.exec_start(start_sh("finished", "exit 4")).await.expect("exec_start");
    assert_eq!(c.exec_wait("finished").await.expect("wait").exit_code, 4);
    let pid_file = first.root.join("leader.pid");
    eventually("the pid file", || std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))).await;
    let leader = read_pid(&pid_file);
    let _guard = KillOnDrop(leader);
    // A crash: nothing is cleaned up; the command (its own session) keeps running.
    first.proc.signal(Signal::SIGKILL);
    first.proc.wait_exit(Duration::from_secs(10)).expect("agent died");
    assert!(pid_alive(leader), "the command outlived the crashed agent");
    let opts = AgentOpts { agent_id: Some(first.id.clone()), root: Some(first.root.clone()), ..opts };
    let second = Agent::start_with(&nats, opts).await;
    eventually("the new agent killed the leftover", || !pid_alive(leader)).await;
    let c = client(&nats, &second, "restart", 0).await;
    let lost = c.exec_wait_once("survivor", Duration::ZERO).await.expect("a typed answer, not NOT_FOUND");
    assert_eq!(lost.status, pb::ExecStatus::Lost as i32, "{lost:?}");
    assert!(lost.previous_instance && lost.end_reason.contains("agent restarted"), "{lost:?}");
    let finished = c.exec_wait_once("finished", Duration::ZERO).await.expect("wait");
    assert_eq!((finished.status, finished.exit_code), (pb::ExecStatus::Exited as i32, 4));
    let again = c.exec_start(start_sh("survivor", "echo ran > again.txt")).await.expect("start");
    assert!(!again.created, "an id of the previous instance is never run again");
    let err = c.exec_signal("survivor", pb::ExecSignal::Term).await.expect_err("ended");
    assert_ne!(err.code(), Some(pb::ErrorCode::NotFound));
    let got = collect(&c, "survivor", LONG).await;
    assert_eq!(got.state().status, pb::ExecStatus::Lost as i32);
    drop(second);
    assert!(!first.root.join("again.txt").exists());
}

#[tokio::test]
async fn tetherctl_runs_streams_detaches_lists_waits_and_kills() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    // stdin forwarded when it is not a terminal; the exit code is the command's.
    let mut wc = agent
        .tetherctl(&nats)
        .args(["run", "--", "wc", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tetherctl run");
    wc.stdin.take().expect("stdin").write_all(b"a\nb\nc\n").expect("feed");
    let out = wc.wait_with_output().expect("tetherctl run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "3");
    let out = agent
        .tetherctl(&nats)
        .args(["run", "--shell", "--", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("out\n".to_owned(), "err\n".to_owned()));

    let out = agent
        .tetherctl(&nats)
        .args(["run", "--detach", "--id", "bg1", "--shell", "--", "echo started; sleep 300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "bg1");
    let ps = agent.tetherctl(&nats).arg("ps").output().unwrap();
    let listing = text(&ps.stdout);
    assert!(listing.contains("bg1") && listing.contains("running"), "{listing}");
    let kill = agent.tetherctl(&nats).args(["kill", "bg1", "-s", "KILL"]).output().unwrap();
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let wait = agent.tetherctl(&nats).args(["wait", "bg1"]).output().unwrap();
    assert_eq!(wait.status.code(), Some(137), "{}", text(&wait.stderr));
    let attach = agent.tetherctl(&nats).args(["attach", "bg1", "--from", "0"]).output().unwrap();
    assert_eq!(text(&attach.stdout), "started\n");
    assert_eq!(attach.status.code(), Some(137));
}
