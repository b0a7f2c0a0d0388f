//! Resource limits of commands, end to end through NATS: the per-command process cap holds a
//! fork bomb (root included, which RLIMIT_NPROC would not hold) while the agent keeps answering,
//! and a killed command takes every process it started with it, even those that left its
//! process group; the request's resource policy limits memory and CPU; every per-command cgroup
//! is gone once its command is; a memory limit leaves no room in swap. Hello says which limits
//! are enforced and how, exactly as the machine offers them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{
    Agent, AgentOpts, KillAllIn, KillOnDrop, Nats, eventually, exec_reply, op, pb, pid_alive, processes_in,
    read_pid, text,
};

async fn agent_with_cap(nats: &Nats, cap: u32) -> Agent {
    let opts = AgentOpts { args: vec![format!("--max-processes={cap}")], ..Default::default() };
    Agent::start_with(nats, opts).await
}

/// The agent's cgroup directories (`tether-<agent pid>-*`) and the command cgroups in them,
/// found under /sys/fs/cgroup.
fn agent_cgroups(agent_pid: i32) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(dir: &Path, depth: u32, prefix: &str, bases: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                bases.push(entry.path());
            } else if depth > 0 {
                walk(&entry.path(), depth - 1, prefix, bases);
            }
        }
    }
    let mut bases = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 4, &format!("tether-{agent_pid}-"), &mut bases);
    let commands = bases
        .iter()
        .flat_map(|b| std::fs::read_dir(b).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cmd-")))
        .collect();
    (bases, commands)
}

/// The cgroup version a controller is bound to on this machine, read from /sys/fs/cgroup the
/// way an operator would: a v1 hierarchy mounted for it, else its name in the v2 hierarchy's
/// `cgroup.controllers` (pure v2, or the `unified` mount of a hybrid machine). The agent's
/// cgroup must be delegated on v2 (README), as it is for the tests.
fn offered(controller: &str, v1_probe: &str) -> Option<u32> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join(controller).join(v1_probe).exists() {
        return Some(1);
    }
    let listed = |dir: PathBuf| {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|name| name == controller))
    };
    (listed(root.to_owned()) || listed(root.join("unified"))).then_some(2)
}

#[tokio::test]
async fn a_fork_bomb_is_capped_killed_at_its_deadline_and_the_agent_keeps_answering() {
    const CAP: u32 = 64;
    let nats = Nats::start().await;
    let mut agent = agent_with_cap(&nats, CAP).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let caps = agent.caps().clone();
    assert_eq!(caps.process_limit, pb::LimitEnforcement::Cgroup as i32, "{caps:?}");
    assert_eq!(caps.max_processes, CAP);

    // Eight sleepers leave the process group (setsid), then the classic bomb, then the leader
    // waits in the foreground until the deadline kills it.
    let bomb = "for i in 1 2 3 4 5 6 7 8; do setsid sleep 300 & done; b(){ b|b& }; b; exec sleep 300";
    let exec = agent.call(Op::Exec(pb::ExecRequest { timeout_ms: 3000, ..op::sh(bomb) }));
    let watch = async {
        let (mut peak, mut worst, mut pings) = (0, Duration::ZERO, 0u64);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(2500) {
            tokio::time::sleep(Duration::from_millis(150)).await;
            peak = peak.max(processes_in(&agent.root).len());
            let sent = Instant::now();
            let pong = tokio::time::timeout(Duration::from_secs(5), agent.call(op::ping(pings))).await;
            assert!(matches!(pong, Ok(Ok(Reply::Ping(_)))), "ping {pings} during the bomb: {pong:?}");
            worst = worst.max(sent.elapsed());
            pings += 1;
        }
        (peak, worst, pings)
    };
    let (result, (peak, worst, pings)) = tokio::join!(exec, watch);
    let r = exec_reply("the bomb", &agent, result);
    assert!(r.timed_out, "{r:?}");
    println!("bomb: peak {peak} processes, {pings} pings, slowest {worst:?}");
    assert!(peak > CAP as usize / 2, "the bomb did not run: peak {peak}");
    assert!(peak <= CAP as usize, "the cap of {CAP} did not hold: peak {peak}");
    assert!(worst < Duration::from_secs(2), "the agent answered a ping only after {worst:?}");

    let left = processes_in(&agent.root);
    assert!(left.is_empty(), "bomb processes outlived the command: {left:?}");
    assert!(matches!(agent.call(op::ping(99)).await, Ok(Reply::Ping(_))));
    let (bases, commands) = agent_cgroups(agent.proc.pid());
    assert!(!bases.is_empty(), "the agent keeps its cgroups under /sys/fs/cgroup");
    assert!(commands.is_empty(), "the killed command's cgroup was not removed: {commands:?}");
    let pid = agent.proc.pid();
    agent.proc.stop(tether_tests::WAIT);
    let (bases, _) = agent_cgroups(pid);
    assert!(bases.is_empty(), "the agent left its cgroups behind: {bases:?}");
}

#[tokio::test]
async fn a_fenced_exec_takes_the_processes_that_left_its_group_with_it() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let script = "setsid sleep 300 & echo $! > escaped.pid; echo go > started; exec sleep 60";
    let running = agent.call_fenced(Op::Exec(op::sh(script)), "s1", 5);
    let started = agent.root.join("started");
    let advance = async {
        eventually("the exec to start", || {
            std::fs::read_to_string(&started).is_ok_and(|s| s.ends_with('\n'))
        })
        .await;
        agent.call_fenced(op::ping(1), "s1", 6).await
    };
    let (reply, advanced) = tokio::join!(running, advance);
    advanced.expect("epoch 6 accepted");
    let err = reply.expect_err("the epoch-5 exec is cancelled");
    assert_eq!(err.code, pb::ErrorCode::Fenced as i32, "{err:?}");
    let escaped = read_pid(&agent.root.join("escaped.pid"));
    let _kill = KillOnDrop(escaped);
    assert!(!pid_alive(escaped), "the process that left the group outlived the fenced command");
}

#[tokio::test]
async fn a_command_cannot_fork_past_the_process_cap() {
    const CAP: u32 = 40;
    let nats = Nats::start().await;
    let agent = agent_with_cap(&nats, CAP).await;
    // Forks sleeping children until the kernel refuses, reports how many, and reaps them.
    let script = "import os, signal, time\n\
                  kids = []\n\
                  try:\n    while len(kids) < 1000:\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(60)\n            os._exit(0)\n        kids.append(pid)\n\
                  except OSError as e:\n    print(len(kids), e.errno)\n\
                  for k in kids: os.kill(k, signal.SIGKILL)\n\
                  for k in kids: os.waitpid(k, 0)\n";
    let req = pb::ExecRequest { timeout_ms: 30_000, ..op::exec(&["python3", "-c", script]) };
    let r = exec_reply("the fork counter", &agent, agent.call(Op::Exec(req)).await);
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    // python itself is one of the CAP processes.
    assert_eq!(text(&r.stdout), format!("{} {}\n", CAP - 1, libc::EAGAIN), "{}", text(&r.stderr));
}

#[tokio::test]
async fn a_terminal_cannot_fork_past_the_process_cap_either() {
    use tether_tests::relay::{Relay, Seen, claims_for, collect_until, watch};
    const CAP: u32 = 40;
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts {
        args: vec![format!("--max-processes={CAP}")],
        relay_url: Some(relay.stream_url()),
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    // The terminal runs the fork counter itself: it prints how many children it got, then ends.
    let script = "import os, signal, time\n\
                  kids = []\n\
                  try:\n    while len(kids) < 1000:\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(60)\n            os._exit(0)\n        kids.append(pid)\n\
                  except OSError as e:\n    print('forked', len(kids), 'errno', e.errno)\n\
                  for k in kids: os.kill(k, signal.SIGKILL)\n\
                  for k in kids: os.waitpid(k, 0)\n";
    let command = vec!["python3".into(), "-c".into(), script.into()];
    let pty = match agent.call(Op::PtyOpen(pb::PtyOpenRequest { command, ..Default::default() })).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open: {other:?}\nagent log:\n{}", agent.log()),
    };
    let channel = pty.channel.expect("channel");
    let claims = claims_for(&channel, "v", tether_proto::token::ViewerMode::View);
    let mut viewer = watch(&relay, &channel, &claims).await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, Duration::from_secs(30), |s| s.closed.is_some()).await;
    // python itself is one of the CAP processes.
    let want = format!("forked {} errno {}", CAP - 1, libc::EAGAIN);
    assert!(seen.text().contains(&want), "want {want:?}, the terminal showed: {}", seen.text());
    assert!(agent.call(Op::Ping(pb::PingRequest { nonce: 7 })).await.is_ok(), "the agent keeps answering");
}

#[tokio::test]
async fn memory_max_from_the_resource_policy_fails_a_larger_allocation() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let memory = offered("memory", "memory.limit_in_bytes");
    let expected = if memory.is_some() { pb::LimitEnforcement::Cgroup } else { pb::LimitEnforcement::Rlimit };
    let caps = agent.caps();
    assert_eq!(caps.memory_limit, expected as i32, "memory controller: cgroup v{memory:?}; {caps:?}");
    assert_eq!(caps.memory_high_limit, memory == Some(2), "memory.high needs cgroup v2: {caps:?}");
    let policy = pb::OperationResourcePolicy { memory_max_bytes: Some(64 << 20), ..Default::default() };
    let alloc = |mib: u32| {
        let script = format!("b = bytearray({mib} * 1024 * 1024); print('allocated', len(b) >> 20)");
        Op::Exec(pb::ExecRequest { timeout_ms: 30_000, ..op::exec(&["python3", "-c", &script]) })
    };

    let r = exec_reply("8 MiB", &agent, agent.call_limited(alloc(8), policy).await);
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "allocated 8\n".to_owned()), "{}", text(&r.stderr));
    let r = exec_reply("512 MiB", &agent, agent.call_limited(alloc(512), policy).await);
    assert!(
        r.exit_code != 0 && !text(&r.stdout).contains("allocated"),
        "512 MiB under a 64 MiB limit: {r:?}"
    );
    // Without the policy the same allocation succeeds: it was the limit that stopped it.
    let r = exec_reply("512 MiB unlimited", &agent, agent.call(alloc(512)).await);
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "allocated 512\n".to_owned()), "{}", text(&r.stderr));
    let (_, commands) = agent_cgroups(agent.proc.pid());
    assert!(commands.is_empty(), "finished commands left cgroups: {commands:?}");
}

#[tokio::test]
async fn cpu_max_from_the_resource_policy_throttles_a_busy_loop() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let cpu = offered("cpu", "cpu.cfs_quota_us");
    assert_eq!(agent.caps().cpu_limit, cpu.is_some(), "cpu controller: cgroup v{cpu:?}");
    if cpu.is_none() {
        println!("this machine has no cpu controller, as the capabilities say; nothing to measure");
        return;
    }
    let policy = pb::OperationResourcePolicy { cpu_max_millicores: Some(100), ..Default::default() };
    let script =
        "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint(time.process_time())";
    let req = Op::Exec(pb::ExecRequest { timeout_ms: 30_000, ..op::exec(&["python3", "-c", script]) });
    let r = exec_reply("busy loop", &agent, agent.call_limited(req, policy).await);
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let cpu: f64 = text(&r.stdout).trim().parse().expect("cpu seconds");
    println!("1.5 s of wall time under 100 millicores used {cpu:.2} s of CPU");
    assert!(cpu < 0.6, "100 millicores allow ~0.15 s of CPU in 1.5 s, the loop used {cpu:.2} s");
}

/// While a command with a memory limit runs, its memory cgroup bounds swap too (v2: no swap at
/// all; v1: memory plus swap by the same number), where the kernel accounts swap.
#[tokio::test]
async fn a_memory_limit_leaves_no_room_in_swap() {
    const LIMIT: u64 = 64 << 20;
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    if agent.caps().memory_limit != pb::LimitEnforcement::Cgroup as i32 {
        println!("memory is limited by RLIMIT_AS here (see the test above): no cgroup to inspect");
        return;
    }
    let policy = pb::OperationResourcePolicy { memory_max_bytes: Some(LIMIT), ..Default::default() };
    let script = "echo go > started; exec sleep 3";
    let req = Op::Exec(pb::ExecRequest { timeout_ms: 30_000, ..op::sh(script) });
    let running = agent.call_limited(req, policy);
    let inspect = async {
        eventually("the command to start", || agent.root.join("started").exists()).await;
        let (_, commands) = agent_cgroups(agent.proc.pid());
        let memory = commands
            .iter()
            .find(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists());
        let dir = memory.unwrap_or_else(|| panic!("no memory cgroup among {commands:?}")).clone();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_owned());
        match (read("memory.max"), read("memory.limit_in_bytes")) {
            (Some(max), _) => {
                assert_eq!(max, LIMIT.to_string());
                (read("memory.swap.max"), "0".to_owned())
            }
            (None, Some(max)) => {
                assert_eq!(max, LIMIT.to_string());
                (read("memory.memsw.limit_in_bytes"), LIMIT.to_string())
            }
            (None, None) => unreachable!("found by one of the two files"),
        }
    };
    let (reply, (swap, expected)) = tokio::join!(running, inspect);
    let r = exec_reply("sleep", &agent, reply);
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    match swap {
        Some(swap) => assert_eq!(swap, expected, "the swap bound of a {LIMIT}-byte limit"),
        None => println!("this kernel does not account swap per cgroup: nothing to bound"),
    }
}
