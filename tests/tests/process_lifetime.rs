//! Nothing a command started outlives its session or the agent, end to end through NATS:
//! processes an exec left running (`sleep &`, `setsid nohup sleep &`) survive the exec, die
//! when its fence scope advances (and only its own scope), die when the agent is stopped, and
//! die when an agent that was SIGKILLed is started again. A confined command cannot move
//! itself out of its cgroup. And the host-wide limits: the processes of all commands together
//! are capped, and a command whose request sets no memory limit gets the agent's default one.

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{
    Agent, AgentOpts, KillAllIn, KillOnDrop, Nats, WAIT, eventually, exec_reply, op, pb, pid_alive, read_pid,
    text,
};
use tokio::sync::RwLock;

/// An agent starting up kills what dead agents' commands left in the cgroups it shares with
/// them. The test of that (a write lock) needs no other agent to start while it looks at a
/// killed agent's leftovers; the other tests start agents under a read lock.
static AGENT_STARTS: RwLock<()> = RwLock::const_new(());

/// A shell script that leaves two sleepers running and returns: one in the command's process
/// group, one in a session of its own. Their pids go to `<tag>-bg.pid` and `<tag>-detached.pid`.
fn leave_running(tag: &str) -> pb::ExecRequest {
    op::sh(&format!(
        "sleep 1000 >/dev/null 2>&1 & echo $! > {tag}-bg.pid; \
         setsid nohup sleep 1000 >/dev/null 2>&1 & echo $! > {tag}-detached.pid"
    ))
}

/// The sleepers `leave_running(tag)` left, each killed when the test ends whatever happens.
struct Sleepers {
    pids: [i32; 2],
    _kill: [KillOnDrop; 2],
}

impl Sleepers {
    fn read(agent: &Agent, tag: &str) -> Sleepers {
        let bg = read_pid(&agent.root.join(format!("{tag}-bg.pid")));
        let detached = read_pid(&agent.root.join(format!("{tag}-detached.pid")));
        Sleepers { pids: [bg, detached], _kill: [KillOnDrop(bg), KillOnDrop(detached)] }
    }

    fn alive(&self) -> [bool; 2] {
        self.pids.map(pid_alive)
    }
}

/// Runs `leave_running(tag)` in (`scope`, `epoch`) and checks the exec returned and left its
/// sleepers running, one of them outside the command's session.
async fn exec_leaving_running(agent: &Agent, tag: &str, scope: &str, epoch: u32) -> Sleepers {
    match agent.call_fenced(Op::Exec(leave_running(tag)), scope, epoch).await {
        Ok(Reply::Exec(r)) => assert_eq!(r.exit_code, 0, "{r:?}"),
        other => panic!("exec {tag}: {other:?}\nagent log:\n{}", agent.log()),
    }
    let sleepers = Sleepers::read(agent, tag);
    assert_eq!(sleepers.alive(), [true, true], "{tag}: what the exec left running survives the exec");
    let session = |pid: i32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).expect("getsid");
    // The exec may return before the detached one has run setsid.
    eventually("the detached sleeper to leave the session", || {
        session(sleepers.pids[0]) != session(sleepers.pids[1])
    })
    .await;
    sleepers
}

#[tokio::test]
async fn an_epoch_advance_kills_what_its_scopes_commands_left_running_and_nothing_else() {
    let _starts = AGENT_STARTS.read().await;
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let in_s = exec_leaving_running(&agent, "s", "S", 1).await;
    let in_t = exec_leaving_running(&agent, "t", "T", 1).await;
    let unfenced = exec_leaving_running(&agent, "none", "", 0).await;

    agent.call_fenced(op::ping(1), "T", 2).await.expect("T moves to epoch 2");
    eventually("T's sleepers to die", || in_t.alive() == [false, false]).await;
    assert_eq!(in_s.alive(), [true, true], "T's advance must not touch scope S");

    agent.call_fenced(op::ping(2), "S", 2).await.expect("S moves to epoch 2");
    eventually("S's sleepers to die", || in_s.alive() == [false, false]).await;
    assert_eq!(unfenced.alive(), [true, true], "unfenced commands' leftovers live until the agent stops");
}

#[tokio::test]
async fn stopping_the_agent_kills_what_its_commands_left_running() {
    let _starts = AGENT_STARTS.read().await;
    let nats = Nats::start().await;
    let mut agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let fenced = exec_leaving_running(&agent, "s", "S", 1).await;
    let unfenced = exec_leaving_running(&agent, "none", "", 0).await;

    agent.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.proc.wait_exit(WAIT).expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", agent.log());
    // The agent kills them before it exits: nothing to wait for.
    assert_eq!(fenced.alive(), [false, false], "a fenced command's leftovers outlived the agent");
    assert_eq!(unfenced.alive(), [false, false], "an unfenced command's leftovers outlived the agent");
}

#[tokio::test]
async fn an_agent_started_after_a_sigkill_kills_what_its_predecessors_commands_left() {
    let _starts = AGENT_STARTS.write().await;
    let nats = Nats::start().await;
    let mut first = Agent::start(&nats).await;
    let _cleanup = KillAllIn(first.root.clone());
    let left = exec_leaving_running(&first, "s", "S", 1).await;

    first.proc.signal(nix::sys::signal::Signal::SIGKILL);
    first.proc.wait_exit(WAIT).expect("the SIGKILLed agent exits");
    assert_eq!(left.alive(), [true, true], "a SIGKILLed agent cannot kill anything itself");

    let opts = AgentOpts {
        state_dir: Some(first.state_dir.clone()),
        root: Some(first.root.clone()),
        agent_id: Some(first.id.clone()),
        ..Default::default()
    };
    let second = Agent::start_with(&nats, opts).await;
    // The new agent kills them while it sets up, before it says Hello.
    assert_eq!(
        left.alive(),
        [false, false],
        "the predecessor's leftovers outlived its restart:\n{}",
        second.log()
    );
}

#[tokio::test]
async fn a_confined_command_cannot_move_itself_out_of_its_cgroup() {
    let _starts = AGENT_STARTS.read().await;
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    assert!(agent.caps().commands_confined, "this test needs Landlock");
    // The roots of the hierarchies, and the agent's own base, where commands' cgroups live.
    let targets = [
        "/sys/fs/cgroup/cgroup.procs".to_owned(),
        "/sys/fs/cgroup/unified/cgroup.procs".to_owned(),
        "/sys/fs/cgroup/pids/cgroup.procs".to_owned(),
        format!("/sys/fs/cgroup/pids/tether-{}-{}.{}/cgroup.procs", agent.proc.pid(), agent.ws, agent.id),
    ];
    let existing: Vec<&String> = targets.iter().filter(|t| std::path::Path::new(t).exists()).collect();
    assert!(!existing.is_empty(), "none of {targets:?} exists here: nothing to try");
    let tries: Vec<String> = existing
        .iter()
        .map(|t| format!("if echo $$ 2>/dev/null > {t}; then echo moved {t}; else echo refused {t}; fi"))
        .collect();
    let script = format!("{}; cat /proc/self/cgroup", tries.join("; "));
    let r = match agent.call(Op::Exec(op::sh(&script))).await {
        Ok(Reply::Exec(r)) => r,
        other => panic!("exec: {other:?}\nagent log:\n{}", agent.log()),
    };
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("moved"), "a confined command moved itself:\n{out}");
    assert_eq!(out.matches("refused").count(), existing.len(), "{out}");
    let pids_line = out.lines().find(|l| l.split(':').nth(1) == Some("pids"));
    if let Some(line) = pids_line {
        assert!(line.contains("/tether-") && line.contains("/cmd-"), "still in its own cgroup: {line}");
    }
}

/// Forks sleeping children until the kernel refuses, prints how many it got, and reaps them.
const FORK_COUNTER: &str = "import os, signal, time\n\
    kids = []\n\
    try:\n    while len(kids) < 1000:\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(60)\n            os._exit(0)\n        kids.append(pid)\n\
    except OSError as e:\n    print(len(kids), e.errno)\n\
    for k in kids: os.kill(k, signal.SIGKILL)\n\
    for k in kids: os.waitpid(k, 0)\n";

/// Forks 30 sleeping children, says so in `holding`, and keeps them until `release` appears
/// (or a minute passes), then reaps them.
const HOLDER: &str = "import os, signal, time\n\
    kids = []\n\
    for _ in range(30):\n    pid = os.fork()\n    if pid == 0:\n        time.sleep(120)\n        os._exit(0)\n    kids.append(pid)\n\
    open('holding', 'w').write('held')\n\
    deadline = time.time() + 60\n\
    while not os.path.exists('release') and time.time() < deadline: time.sleep(0.05)\n\
    for k in kids: os.kill(k, signal.SIGKILL)\n\
    for k in kids: os.waitpid(k, 0)\n\
    print('held', len(kids))\n";

#[tokio::test]
async fn commands_together_cannot_fork_past_the_total_process_cap() {
    const PER_COMMAND: u32 = 40;
    const TOTAL: u32 = 50;
    let _starts = AGENT_STARTS.read().await;
    let nats = Nats::start().await;
    let args = vec![format!("--max-processes={PER_COMMAND}"), format!("--max-total-processes={TOTAL}")];
    let agent = Agent::start_with(&nats, AgentOpts { args, ..Default::default() }).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let caps = agent.caps();
    assert_eq!(caps.process_limit, pb::LimitEnforcement::Cgroup as i32, "{caps:?}");
    assert_eq!((caps.max_processes, caps.max_total_processes), (PER_COMMAND, TOTAL), "{caps:?}");
    let count =
        || Op::Exec(pb::ExecRequest { timeout_ms: 30_000, ..op::exec(&["python3", "-c", FORK_COUNTER]) });

    // Alone, a command reaches its own cap (python itself is one of the processes).
    let r = exec_reply("alone", &agent, agent.call(count()).await);
    assert_eq!(text(&r.stdout), format!("{} {}\n", PER_COMMAND - 1, libc::EAGAIN), "{}", text(&r.stderr));

    // Beside one holding 31 processes, it gets what is left of the total.
    let holder =
        agent.call(Op::Exec(pb::ExecRequest { timeout_ms: 90_000, ..op::exec(&["python3", "-c", HOLDER]) }));
    let beside = async {
        eventually("the holder to fork its children", || agent.root.join("holding").exists()).await;
        let r = exec_reply("beside the holder", &agent, agent.call(count()).await);
        std::fs::write(agent.root.join("release"), "").expect("release the holder");
        r
    };
    let (held, r) = tokio::join!(holder, beside);
    let held = exec_reply("the holder", &agent, held);
    assert_eq!(text(&held.stdout), "held 30\n", "{}", text(&held.stderr));
    let left = TOTAL - 31 - 1;
    assert_eq!(text(&r.stdout), format!("{left} {}\n", libc::EAGAIN), "{}", text(&r.stderr));
}

#[tokio::test]
async fn a_command_without_a_memory_limit_gets_the_default_one() {
    const DEFAULT: u64 = 64 << 20;
    let _starts = AGENT_STARTS.read().await;
    let nats = Nats::start().await;
    let agent = Agent::start_with(
        &nats,
        AgentOpts { args: vec!["--default-memory-max=64M".into()], ..Default::default() },
    )
    .await;
    let caps = agent.caps();
    assert_eq!(caps.memory_limit, pb::LimitEnforcement::Cgroup as i32, "needs a memory cgroup: {caps:?}");
    assert_eq!(caps.default_memory_max_bytes, DEFAULT, "{caps:?}");
    let alloc = |mib: u32| {
        let script = format!("b = bytearray({mib} * 1024 * 1024); print('allocated', len(b) >> 20)");
        Op::Exec(pb::ExecRequest { timeout_ms: 30_000, ..op::exec(&["python3", "-c", &script]) })
    };

    let r = exec_reply("8 MiB", &agent, agent.call(alloc(8)).await);
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "allocated 8\n".to_owned()), "{}", text(&r.stderr));
    let r = exec_reply("256 MiB, no policy", &agent, agent.call(alloc(256)).await);
    assert!(
        r.exit_code != 0 && !text(&r.stdout).contains("allocated"),
        "256 MiB under the 64 MiB default: {r:?}"
    );
    // A request that sets its own limit is not held to the default.
    let policy = pb::OperationResourcePolicy { memory_max_bytes: Some(1 << 30), ..Default::default() };
    let r = exec_reply("256 MiB, 1 GiB policy", &agent, agent.call_limited(alloc(256), policy).await);
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "allocated 256\n".to_owned()), "{}", text(&r.stderr));

    // An agent with the defaults limits commands to half the machine's RAM.
    drop(agent);
    let agent = Agent::start(&nats).await;
    let half = agent.caps().default_memory_max_bytes;
    assert!(half >= 64 << 20, "the default is half the RAM: {half}");
}
