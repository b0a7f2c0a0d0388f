//! `tetherctl` as a user runs it: exit codes, error names, JSON output, following events, minting
//! relay tokens, and where `tetherctl shell` takes its viewer token from.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use prost::Message;
use tether_proto::token::{self, ViewerClaims, ViewerMode};
use tether_tests::relay::{
    PRODUCER_SECRET, Relay, VIEWER_SECRET, now_unix, producer_token_for, shows_line, viewer_token,
};
use tether_tests::{
    Agent, AgentOpts, Nats, Proc, WAIT, bin, eventually, pb, read_log, tetherctl, without_tether_env,
};

#[tokio::test]
async fn exec_passes_output_and_exit_code_through() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let out = agent
        .tetherctl(&nats)
        .args(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
}

#[tokio::test]
async fn errors_name_the_error_code_and_exit_non_zero() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let out = agent.tetherctl(&nats).args(["cat", "/workspace/missing.txt"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR_CODE_NOT_FOUND") && stderr.contains("missing.txt"), "{stderr}");

    let out = agent.tetherctl(&nats).args(["--agent-id", "nobody-home", "ping"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.ws1.nobody-home.rpc"), "names the subject");
}

#[tokio::test]
async fn json_output_is_machine_readable() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    std::fs::write(agent.root.join("a.txt"), b"hello").unwrap();
    let out = agent.tetherctl(&nats).args(["--json", "stat", "/workspace/a.txt"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_start().starts_with('{') && text.contains("\"size\":5"), "{text}");
}

#[tokio::test]
async fn events_follows_heartbeats_and_going_offline() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let mut cmd = agent.tetherctl(&nats);
    cmd.args(["--json", "events"]).stdout(std::fs::File::create(&log).unwrap()).stderr(Stdio::null());
    let _follower = Proc::spawn("tetherctl events", &mut cmd).unwrap();
    eventually("a heartbeat line", || read_log(&log).contains("\"type\":\"heartbeat\"")).await;
    agent.proc.signal(Signal::SIGTERM);
    eventually("a going_offline line", || read_log(&log).contains("\"type\":\"going_offline\"")).await;
}

/// `tetherctl mint-token` for agent `laptop-9` of workspace `ws9`, with only `env` set.
fn mint(args: &[&str], env: &[(&str, &str)]) -> Output {
    tetherctl()
        .args(["--workspace-id", "ws9", "--agent-id", "laptop-9", "mint-token"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("tetherctl runs")
}

/// The one token line a successful mint printed.
fn printed_token(out: &Output) -> String {
    assert!(out.status.success(), "mint-token failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout.clone()).expect("a token is ASCII");
    assert_eq!(text.lines().count(), 1, "exactly one line: {text:?}");
    text.trim().to_owned()
}

/// `exp` is now + ttl, give or take the seconds a test run may take.
fn assert_expires_in(exp: u64, ttl_secs: u64) {
    let want = now_unix() + ttl_secs;
    assert!(exp.abs_diff(want) <= 10, "exp {exp}, expected about {want}");
}

#[test]
fn mint_token_producer_signs_the_agents_claims() {
    let out = mint(&["producer", "--ttl", "2h"], &[("TETHER_RELAY_PRODUCER_SECRET", PRODUCER_SECRET)]);
    let token = printed_token(&out);
    assert!(token.starts_with(token::PRODUCER_PREFIX), "{token}");
    let claims = token::verify_producer(PRODUCER_SECRET.as_bytes(), &token, now_unix()).unwrap();
    assert_eq!((claims.workspace_id.as_str(), claims.agent_id.as_str()), ("ws9", "laptop-9"));
    assert_expires_in(claims.exp, 2 * 3600);
    assert!(token::verify_producer(VIEWER_SECRET.as_bytes(), &token, now_unix()).is_err(), "other secret");
}

#[test]
fn mint_token_viewer_signs_the_requested_claims() {
    let env = [("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET)];
    let token = printed_token(&mint(&["viewer", "--ttl", "30m"], &env));
    assert!(token.starts_with(token::VIEWER_PREFIX), "{token}");
    let claims = token::verify_viewer(VIEWER_SECRET.as_bytes(), &token, now_unix()).unwrap();
    assert_eq!(claims.workspace_id, "ws9");
    assert_eq!(claims.agent_id.as_deref(), Some("laptop-9"));
    assert_eq!((claims.port, claims.mode), (tether_proto::PTY_PORT, ViewerMode::Control), "defaults");
    assert_eq!((claims.session_id.as_str(), claims.lease_epoch), ("tetherctl", 0));
    assert_eq!((claims.channel_id, claims.read_only), (None, false));
    assert_expires_in(claims.exp, 30 * 60);

    let args = [
        "viewer",
        "--port",
        "6080",
        "--mode",
        "view",
        "--read-only",
        "--channel",
        "ch-1",
        "--session",
        "sess-7",
        "--lease-epoch",
        "3",
        "--ttl",
        "1h",
    ];
    let token = printed_token(&mint(&args, &env));
    let claims = token::verify_viewer(VIEWER_SECRET.as_bytes(), &token, now_unix()).unwrap();
    assert_eq!((claims.port, claims.mode, claims.read_only), (6080, ViewerMode::View, true));
    assert_eq!((claims.channel_id.as_deref(), claims.session_id.as_str()), (Some("ch-1"), "sess-7"));
    assert_eq!(claims.lease_epoch, 3);
    assert_expires_in(claims.exp, 3600);
}

/// The relay tells live viewers apart by sessionId/viewerId: two tokens must never share an
/// identity, not even when minted by processes with the same pid (two containers, two
/// machines), which each run in its own PID namespace reproduces.
#[test]
fn every_viewer_token_gets_its_own_viewer_id() {
    let viewer_id = |cmd: &mut Command| {
        let out = cmd.env("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET).output().unwrap();
        let claims =
            token::verify_viewer(VIEWER_SECRET.as_bytes(), &printed_token(&out), now_unix()).unwrap();
        claims.viewer_id
    };
    let minting = |cmd: &mut Command| {
        cmd.args(["--workspace-id", "ws9", "--agent-id", "laptop-9", "mint-token", "viewer"]);
    };
    let in_a_row: Vec<String> = (0..2)
        .map(|_| {
            let mut cmd = tetherctl();
            minting(&mut cmd);
            viewer_id(&mut cmd)
        })
        .collect();
    assert_ne!(in_a_row[0], in_a_row[1], "two tokens minted in a row");

    let probe = Command::new("unshare").args(["--pid", "--fork", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "`unshare --pid --fork` must work (root, util-linux) to give two mints the same pid"
    );
    let same_pid: Vec<String> = (0..2)
        .map(|_| {
            let mut cmd = Command::new("unshare");
            without_tether_env(cmd.args(["--pid", "--fork"]).arg(bin("tetherctl")));
            minting(&mut cmd);
            viewer_id(&mut cmd)
        })
        .collect();
    assert_ne!(same_pid[0], same_pid[1], "two tokens minted by processes with the same pid");
    for id in in_a_row.iter().chain(&same_pid) {
        assert!(id.starts_with("tetherctl-"), "{id}");
    }
}

#[test]
fn mint_token_without_its_secret_fails_naming_it() {
    for (kind, secret_env) in
        [("producer", "TETHER_RELAY_PRODUCER_SECRET"), ("viewer", "TETHER_RELAY_VIEWER_SECRET")]
    {
        for env in [&[][..], &[(secret_env, "")][..]] {
            let out = mint(&[kind], env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{kind} with {env:?}: {stderr}");
            assert!(out.stdout.is_empty(), "no token printed");
            assert!(stderr.contains(secret_env), "{kind}: the error names {secret_env}: {stderr}");
        }
    }
    // The other kind's secret is no substitute.
    let out = mint(&["viewer"], &[("TETHER_RELAY_PRODUCER_SECRET", PRODUCER_SECRET)]);
    assert_eq!(out.status.code(), Some(1));
}

/// A terminal agent and `tetherctl shell` pointed at its relay.
async fn terminal_agent() -> (Relay, Nats, Agent) {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let agent =
        Agent::start_with(&nats, AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() })
            .await;
    (relay, nats, agent)
}

/// The terminals the agent counts in its next two heartbeats (published after this call).
async fn terminals_in_heartbeats(agent: &Agent) -> Vec<u32> {
    let subject = format!("agent.{}.{}.events", agent.ws, agent.id);
    let mut events = agent.nc.subscribe(subject).await.expect("subscribe to events");
    agent.nc.flush().await.expect("flush");
    let mut counts = Vec::new();
    while counts.len() < 2 {
        let msg = tokio::time::timeout(WAIT, events.next()).await.expect("a heartbeat in time");
        let event = pb::AgentEvent::decode(msg.expect("subscribed").payload).expect("an AgentEvent");
        if let Some(pb::agent_event::Event::Heartbeat(beat)) = event.event {
            counts.push(beat.active_sessions);
        }
    }
    counts
}

#[tokio::test]
async fn shell_without_a_usable_viewer_credential_fails_before_opening_a_terminal() {
    let (relay, nats, agent) = terminal_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let producer_token = dir.path().join("producer-token");
    std::fs::write(&producer_token, producer_token_for(&agent.ws, &agent.id)).unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&[], "TETHER_RELAY_VIEWER_SECRET"),
        (&["--token-file", missing.to_str().unwrap()], "no-such-token"),
        (&["--token-file", producer_token.to_str().unwrap()], "ogs_"),
    ];
    for (flags, named) in cases {
        let out = agent
            .tetherctl(&nats)
            .args(["shell", "--relay-url", &relay.stream_url()])
            .args(flags)
            .args(["--", "sleep", "30"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert_eq!(terminals_in_heartbeats(&agent).await, [0, 0], "{flags:?}: no terminal left open");
        assert!(stderr.contains(named), "{flags:?}: the error names {named}: {stderr}");
    }
}

#[tokio::test]
async fn shell_takes_its_token_from_a_file_or_the_environment() {
    let (relay, nats, agent) = terminal_agent().await;
    let claims = ViewerClaims {
        workspace_id: agent.ws.clone(),
        session_id: "sess-file".into(),
        viewer_id: "operator".into(),
        lease_epoch: 0,
        mode: ViewerMode::View,
        port: tether_proto::PTY_PORT,
        exp: now_unix() + 600,
        subject_id: None,
        authority_epoch: None,
        agent_id: Some(agent.id.clone()),
        channel_id: None,
        read_only: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", viewer_token(&claims))).unwrap();
    let script = "echo via-$((6*7)); exit 5";
    let by_file = agent
        .tetherctl(&nats)
        .args(["shell", "--relay-url", &relay.stream_url(), "--token-file"])
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let by_env = agent
        .tetherctl(&nats)
        .env("TETHER_RELAY_VIEWER_TOKEN", viewer_token(&claims))
        .args(["shell", "--relay-url", &relay.stream_url(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    for (how, out) in [("--token-file", by_file), ("TETHER_RELAY_VIEWER_TOKEN", by_env)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(shows_line(&String::from_utf8_lossy(&out.stdout), "via-42"), "{how}: {out:?}");
        assert_eq!(
            out.status.code(),
            Some(5),
            "{how}: the remote exit code; {stderr}\nagent log:\n{}\nrelay log:\n{}",
            agent.log(),
            relay.log_text()
        );
        assert!(!stderr.contains("warning"), "{how}: no warning for a secret kept off argv: {stderr}");
    }
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process is alive");
    // "pid (comm) S ppid ...": utime and stime are fields 14 and 15, the 12th and 13th after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

#[tokio::test]
async fn shell_with_its_input_at_end_of_file_waits_without_spinning() {
    let (relay, nats, agent) = terminal_agent().await;
    let mut cmd = agent.tetherctl(&nats);
    cmd.env("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET)
        .args(["shell", "--relay-url", &relay.stream_url(), "--", "sh", "-c", "sleep 3; exit 4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut shell = Proc::spawn("tetherctl shell", &mut cmd).expect("tetherctl starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(shell.pid() as u32);
    // Waiting for output is idle; a loop polling a closed stdin burns a whole core.
    assert!(used < 0.5, "tetherctl used {used:.2} s of CPU in 2 s while waiting");
    let status = shell.wait_exit(WAIT).expect("tetherctl exits after the remote command");
    assert_eq!(status.code(), Some(4));
}

#[tokio::test]
async fn a_shell_flooded_with_input_the_remote_never_reads_still_answers_sigterm() {
    // `yes` types far more than the agent, the relay and the sockets can hold, into a command
    // that never reads it: every queue on the way fills. tetherctl must still take its signals
    // (and Ctrl-]) instead of waiting for room forever.
    let (relay, nats, agent) = terminal_agent().await;
    let mut yes = Proc::spawn("yes", Command::new("yes").stdout(Stdio::piped())).expect("yes starts");
    let typed = yes.take_stdout().expect("yes's output");
    let mut cmd = agent.tetherctl(&nats);
    cmd.env("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET)
        .args(["shell", "--relay-url", &relay.stream_url(), "--", "sleep", "60"])
        .stdin(typed)
        .stdout(Stdio::null());
    let mut shell = Proc::spawn("tetherctl shell", &mut cmd).expect("tetherctl starts");
    tokio::time::sleep(Duration::from_secs(4)).await;
    shell.signal(nix::sys::signal::Signal::SIGTERM);
    let status = shell.wait_exit(Duration::from_secs(10)).expect("tetherctl ends on SIGTERM");
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(terminals_in_heartbeats(&agent).await, [0, 0], "the remote terminal was closed");
}
