//! The agent's own faults (issue 20, items 2 and 3), end to end through NATS against the real
//! agent and relay. A crash (SIGKILL) with a unary exec, a streamed exec, a command's
//! leftovers and a terminal running: the next agent kills everything of its predecessor's,
//! removes the predecessor's cgroups, keeps its held epochs and serves again. A graceful stop
//! (SIGTERM) with 50 requests in flight: every request gets a reply (its result, or DRAINING
//! once the grace is over), going_offline is published, no child survives and the agent exits
//! within its grace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::execs::start_sh;
use tether_tests::relay::Relay;
use tether_tests::tree::client;
use tether_tests::{
    Agent, AgentOpts, KillAllIn, Nats, WAIT, error_code, eventually, op, pb, pid_alive, processes_in,
    read_pid,
};

/// The `tether-<agent pid>-*` cgroup directories of an agent, anywhere under /sys/fs/cgroup.
fn agent_cgroups(agent_pid: i32) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, prefix: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(entry.path());
            } else if depth > 0 {
                walk(&entry.path(), depth - 1, prefix, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 4, &format!("tether-{agent_pid}-"), &mut found);
    found
}

/// Sends `op` in (`scope`, `epoch`) without waiting for its reply (the agent may die first).
fn fire(agent: &Agent, scope: &str, epoch: u32, op: Op) -> tokio::task::JoinHandle<()> {
    let req = pb::ControlRequest {
        request_id: format!("fire-{scope}-{epoch}-{}", std::process::id()),
        epoch,
        fence_scope: scope.to_owned(),
        op: Some(op),
        ..Default::default()
    };
    let (nc, subject) = (agent.nc.clone(), agent.rpc_subject());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(WAIT, nc.request(subject, req.encode_to_vec().into())).await;
    })
}

#[tokio::test]
async fn after_a_sigkill_the_next_agent_kills_every_leftover_drops_the_cgroups_and_keeps_epochs() {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() };
    let mut first = Agent::start_with(&nats, opts.clone()).await;
    let _cleanup = KillAllIn(first.root.clone());
    let root = first.root.clone();

    // A held epoch, and one of each kind of running work, all in the workspace root.
    first.call_fenced(op::ping(1), "lease", 7).await.expect("scope lease takes epoch 7");
    let unary = fire(&first, "lease", 7, Op::Exec(op::sh("echo $$ > unary.started; exec sleep 300")));
    let left = first
        .call(Op::Exec(op::sh("setsid nohup sleep 300 >/dev/null 2>&1 & echo left")))
        .await
        .expect("an exec leaving a detached sleeper");
    assert!(matches!(left, Reply::Exec(ref r) if r.exit_code == 0), "{left:?}");
    let c = client(&nats, &first, "crash", 0).await;
    c.exec_start(start_sh("streamed", "echo $$ > streamed.started; exec sleep 300"))
        .await
        .expect("exec_start");
    let pty = pb::PtyOpenRequest {
        command: ["sh", "-c", "touch pty.started; exec sleep 300"].map(String::from).to_vec(),
        ..Default::default()
    };
    match first.call(Op::PtyOpen(pty)).await {
        Ok(Reply::PtyOpen(_)) => {}
        other => panic!("pty_open: {other:?}\n{}", first.log()),
    }
    let written = |marker: &str| std::fs::read_to_string(root.join(marker)).is_ok_and(|t| t.ends_with('\n'));
    eventually("the commands to start", || written("unary.started") && written("streamed.started")).await;
    eventually("the terminal to start", || root.join("pty.started").exists()).await;
    let before = processes_in(&root);
    assert!(before.len() >= 4, "unary, detached, streamed and terminal run: {before:?}");
    let commands: Vec<i32> =
        ["unary", "streamed"].iter().map(|m| read_pid(&root.join(format!("{m}.started")))).collect();
    let old_pid = first.proc.pid();
    let cgroups = agent_cgroups(old_pid);

    first.proc.signal(Signal::SIGKILL);
    first.proc.wait_exit(WAIT).expect("the SIGKILLed agent exits");
    unary.abort();
    // (The terminal's shell may be hung up by the kernel as its terminal closes: not so the
    // commands, which are in sessions of their own without a terminal.)
    assert!(commands.iter().all(|&p| pid_alive(p)), "a SIGKILLed agent kills nothing itself");
    assert!(processes_in(&root).len() >= 3, "the commands and the detached sleeper outlive the crash");

    let opts = AgentOpts {
        state_dir: Some(first.state_dir.clone()),
        root: Some(root.clone()),
        agent_id: Some(first.id.clone()),
        ..opts
    };
    let second = Agent::start_with(&nats, opts).await;
    eventually("every process of the old instance to be gone", || processes_in(&root).is_empty()).await;
    let left: Vec<PathBuf> = cgroups.iter().filter(|d| d.exists()).cloned().collect();
    assert!(left.is_empty(), "the dead agent's cgroups stay: {left:?}\n{}", second.log());
    eprintln!(
        "crash: {} processes of the old instance killed, {} cgroups removed",
        before.len(),
        cgroups.len()
    );

    let err = second.call_fenced(op::ping(2), "lease", 6).await.expect_err("epoch 7 is still held");
    assert_eq!(error_code(&err), pb::ErrorCode::Fenced, "{err:?}");
    assert_eq!(err.detail["held_epoch"], "7");
    second.call_fenced(op::ping(3), "lease", 7).await.expect("the holder of 7 is served");
    assert!(second.call(op::ping(4)).await.is_ok(), "serves again");
}

/// An exec whose reply the test can check: quick ones print their tag, slow ones outlast the
/// grace (and leave a sleeper behind in their process group).
fn in_flight_exec(i: usize) -> Op {
    match i % 2 {
        0 => Op::Exec(op::sh(&format!("touch s{i}; sleep 0.3; echo {i}"))),
        _ => Op::Exec(op::sh(&format!("sleep 300 & touch s{i}; wait"))),
    }
}

#[tokio::test]
async fn sigterm_with_50_requests_in_flight_answers_each_says_going_offline_and_leaves_no_child() {
    const N: usize = 50;
    let grace = Duration::from_millis(1500);
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--shutdown-grace".into(), "1500ms".into()], ..Default::default() };
    let mut agent = Agent::start_with(&nats, opts).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let root = agent.root.clone();
    let mut events = agent.nc.subscribe(format!("agent.{}.{}.events", agent.ws, agent.id)).await.unwrap();
    agent.nc.flush().await.unwrap();

    // Half quick execs, half that outlast the grace; plus fs writes and pings after them.
    let requests: Vec<_> = (0..N)
        .map(|i| {
            let op = match i {
                _ if i < 40 => in_flight_exec(i),
                _ => op::write(&format!("w{i}.txt"), b"written"),
            };
            let (nc, subject) = (agent.nc.clone(), agent.rpc_subject());
            let req = pb::ControlRequest { request_id: format!("r{i}"), op: Some(op), ..Default::default() };
            tokio::spawn(async move {
                let msg = tokio::time::timeout(
                    Duration::from_secs(30),
                    nc.request(subject, req.encode_to_vec().into()),
                )
                .await
                .map_err(|_| "no reply within 30 s".to_owned())?
                .map_err(|e| format!("request failed: {e}"))?;
                pb::ControlResponse::decode(msg.payload).map_err(|e| e.to_string())
            })
        })
        .collect();
    eventually("the 40 execs to run", || (0..40).all(|i| root.join(format!("s{i}")).exists())).await;
    let in_flight = processes_in(&root);
    let stopped = Instant::now();
    agent.proc.signal(Signal::SIGTERM);

    let (mut results, mut drained) = (0, 0);
    for (i, handle) in requests.into_iter().enumerate() {
        let resp = handle.await.unwrap().unwrap_or_else(|e| panic!("request {i}: {e}\n{}", agent.log()));
        assert_eq!(resp.request_id, format!("r{i}"));
        match (resp.result, resp.error) {
            (Some(Reply::Exec(r)), None) => {
                assert_eq!(i % 2, 0, "request {i} outlasts the grace: {r:?}");
                assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{i}\n"));
                results += 1;
            }
            (Some(Reply::FsWrite(_)), None) => results += 1,
            (None, Some(err)) => {
                assert_eq!(error_code(&err), pb::ErrorCode::Draining, "request {i}: {err:?}");
                assert!(err.retryable);
                drained += 1;
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    eprintln!("graceful stop: {results} results, {drained} DRAINING, of {N} in flight");
    assert_eq!(drained, 20, "exactly the 20 execs that outlast the grace are cancelled");

    let offline = async {
        loop {
            let msg = events.next().await.expect("events subscription");
            let event = pb::AgentEvent::decode(msg.payload).expect("AgentEvent");
            if let Some(pb::agent_event::Event::GoingOffline(g)) = event.event {
                return g;
            }
        }
    };
    let offline = tokio::time::timeout(WAIT, offline).await.expect("going_offline published");
    assert_eq!(offline.reason, pb::GoingOfflineReason::UserStop as i32);
    let status = agent.proc.wait_exit(WAIT).expect("the agent exits");
    let took = stopped.elapsed();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    eprintln!("graceful stop: exited {took:?} after SIGTERM (grace {grace:?})");
    let survivors: Vec<i32> = in_flight.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(survivors.is_empty(), "children outlived the agent: {survivors:?}");
    assert!(processes_in(&root).is_empty(), "nothing runs in the root: {:?}", processes_in(&root));
}
