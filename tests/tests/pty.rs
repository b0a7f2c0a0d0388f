//! Terminals end to end: a real agent opens real PTYs whose bytes stream through the real relay
//! to viewers (the client library's reconnecting viewer) over real websockets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;
use tether_tests::*;

const WITHIN: Duration = Duration::from_secs(20);

/// A relay, NATS, and an agent streaming terminals through that relay.
async fn stack() -> (Relay, Nats, Agent) {
    stack_with(&[]).await
}

/// [`stack`] with extra agent flags.
async fn stack_with(agent_args: &[&str]) -> (Relay, Nats, Agent) {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts {
        relay_url: Some(relay.stream_url()),
        args: agent_args.iter().map(|s| s.to_string()).collect(),
        ..AgentOpts::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    (relay, nats, agent)
}

fn open_req(command: &[&str], scope_id: &str) -> pb::PtyOpenRequest {
    pb::PtyOpenRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        scope_id: scope_id.into(),
        ..Default::default()
    }
}

async fn open(agent: &Agent, req: pb::PtyOpenRequest) -> pb::PtyOpenResponse {
    match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}\nagent log:\n{}", agent.log()),
    }
}

async fn close(agent: &Agent, pty_id: &str) -> Result<i32, pb::AgentError> {
    match agent.call(Op::PtyClose(pb::PtyCloseRequest { pty_id: pty_id.into() })).await {
        Ok(Reply::PtyClose(r)) => Ok(r.exit_code),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e),
    }
}

#[tokio::test]
async fn typed_command_output_and_viewer_resize_reach_the_viewer() {
    let (relay, _nats, agent) = stack().await;
    assert!(agent.hello.capabilities.as_ref().unwrap().pty, "a relay is configured: pty is served");
    let pty = open(&agent, pb::PtyOpenRequest::default()).await;
    let channel = pty.channel.expect("channel");
    assert_eq!((channel.port, channel.kind), (tether_proto::PTY_PORT, pb::StreamKind::Pty as i32));
    // A "view" token, as the existing control plane mints: it may type into a terminal.
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v1", ViewerMode::View)).await;
    viewer.send("echo hello-pty\n").await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "hello-pty")).await;

    viewer.resize(100, 40).await;
    viewer.send("stty size\n").await;
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "40 100")).await;
    assert_eq!(close(&agent, &pty.pty_id).await.unwrap(), -1, "a running shell is killed: -1");
}

#[tokio::test]
async fn a_resize_applies_before_the_keystrokes_typed_after_it() {
    let (relay, _nats, agent) = stack().await;
    let pty = open(&agent, open_req(&["sh"], "")).await;
    let channel = pty.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v1", ViewerMode::View)).await;
    viewer.send("echo ready-$((6*7))\n").await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "ready-42")).await;
    // Each round resizes and at once types a command that reads the size: the viewer must not
    // let the keystrokes overtake the resize (nor a resize overtake earlier keystrokes).
    for round in 0..10u32 {
        let (cols, rows) = (90 + round, 30 + round);
        viewer.resize(cols, rows).await;
        viewer.send(format!("stty size; echo done-{round}\n")).await;
        let mut seen = Seen::default();
        let done = format!("done-{round}");
        collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), &done)).await;
        assert!(
            shows_line(&seen.text(), &format!("{rows} {cols}")),
            "round {round}: `stty size` must report {rows} {cols}; saw:\n{}",
            seen.text()
        );
    }
    assert_eq!(close(&agent, &pty.pty_id).await.unwrap(), -1);
}

#[tokio::test]
async fn output_survives_a_relay_restart_exactly_once_and_in_order() {
    let (mut relay, _nats, agent) = stack().await;
    let script = "i=1; while [ $i -le 3000 ]; do echo L$i; i=$((i+1)); sleep 0.001; done";
    let pty = open(&agent, open_req(&["sh", "-c", script], "")).await;
    let channel = pty.channel.expect("channel");
    let claims = claims_for(&channel, "v1", ViewerMode::View);
    let mut viewer = watch(&relay, &channel, &claims).await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "L300")).await;
    assert!(!shows_line(&seen.text(), "L3000"), "the loop must still be running when the relay dies");

    relay.kill_and_restart().await;
    collect_until(&mut viewer, &mut seen, Duration::from_secs(60), |_| false).await;
    let (reason, message) = seen.closed.clone().expect("closed");
    assert_eq!(reason, pb::StreamCloseReason::ProcessExit, "{message}");
    assert_eq!(seen.gaps, 0, "nothing was evicted, so no gap may be announced");
    let lines: Vec<String> =
        seen.text().split(['\r', '\n']).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let want: Vec<String> = (1..=3000).map(|i| format!("L{i}")).collect();
    assert_eq!(lines.len(), want.len(), "every line exactly once");
    assert!(lines == want, "lines out of order or altered");
    assert!(agent.log().contains("reconnecting"), "the agent's pump reconnected:\n{}", agent.log());
}

#[tokio::test]
async fn viewers_see_identical_bytes_and_a_spectator_cannot_type() {
    let (relay, _nats, agent) = stack().await;
    let pty = open(&agent, open_req(&["sh"], "")).await;
    let channel = pty.channel.expect("channel");
    let mut typist = watch(&relay, &channel, &claims_for(&channel, "typist", ViewerMode::View)).await;
    let mut second = watch(&relay, &channel, &claims_for(&channel, "second", ViewerMode::Control)).await;
    let spectator_claims = tether_proto::token::ViewerClaims {
        read_only: true,
        ..claims_for(&channel, "spectator", ViewerMode::Control)
    };
    let mut spectator = watch(&relay, &channel, &spectator_claims).await;

    spectator.send("echo spectator-$((40+2))\n").await;
    typist.send("echo typed-$((6*7))\n").await;
    let mut seen = Seen::default();
    collect_until(&mut typist, &mut seen, WITHIN, |s| shows_line(&s.text(), "typed-42")).await;
    let dropped = relay.metric("tether_relay_input_dropped_total{reason=\"spectator\"}").await;
    assert!(dropped >= 1, "the spectator's input is counted as dropped");
    assert_eq!(close(&agent, &pty.pty_id).await.unwrap(), -1);

    let mut views = Vec::new();
    for (viewer, mut seen) in
        [(&mut typist, seen), (&mut second, Seen::default()), (&mut spectator, Seen::default())]
    {
        collect_until(viewer, &mut seen, WITHIN, |_| false).await;
        assert_eq!(seen.closed.as_ref().map(|c| c.0), Some(pb::StreamCloseReason::Normal));
        views.push(seen.bytes);
    }
    assert!(shows_line(&String::from_utf8_lossy(&views[0]), "typed-42"));
    assert!(!shows_line(&String::from_utf8_lossy(&views[0]), "spectator-42"), "spectator input never ran");
    assert_eq!(views[0], views[1], "two viewers get byte-identical output");
    assert_eq!(views[0], views[2], "a spectator sees the same bytes");
}

#[tokio::test]
async fn a_scope_id_reopens_the_same_terminal_and_exit_closes_with_its_code() {
    let (relay, _nats, agent) = stack().await;
    let script = "echo started >> starts.log; exec sh";
    let first = open(&agent, open_req(&["sh", "-c", script], "scope-a")).await;
    let again = open(&agent, open_req(&["sh", "-c", script], "scope-a")).await;
    assert_eq!(first.pty_id, again.pty_id, "same scope, same terminal");
    assert_eq!(first.channel, again.channel);
    let other = open(&agent, open_req(&["sh", "-c", script], "scope-b")).await;
    assert_ne!(other.pty_id, first.pty_id);
    let channel = first.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v", ViewerMode::View)).await;
    viewer.send("exit 3\n").await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |_| false).await;
    let (reason, message) = seen.closed.expect("closed");
    assert_eq!(reason, pb::StreamCloseReason::ProcessExit, "{message}");
    assert_eq!(close(&agent, &first.pty_id).await.unwrap(), 3, "pty_close reports the exit code");
    // scope-b's shell runs unwatched: wait until it has written its line before counting.
    let log = agent.root.join("starts.log");
    let lines = || std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    eventually("both scopes' shells to start", || lines() >= 2).await;
    let starts = std::fs::read_to_string(&log).unwrap();
    assert_eq!(starts.lines().count(), 2, "one shell per scope, not per open: {starts:?}");

    // The scope's terminal ended: a new open starts a new one.
    let fresh = open(&agent, open_req(&["sh", "-c", script], "scope-a")).await;
    assert_ne!(fresh.pty_id, first.pty_id);
    let err = close(&agent, "pty-nope").await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound);
}

#[tokio::test]
async fn an_epoch_advance_closes_the_terminal_fenced() {
    let (relay, _nats, agent) = stack().await;
    let req = open_req(&["sh", "-c", "echo $$ > shell.pid; exec sleep 300"], "");
    let pty = match agent.call_fenced(Op::PtyOpen(req), "lease-1", 1).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}"),
    };
    let channel = pty.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v", ViewerMode::View)).await;
    eventually("the shell wrote its pid", || agent.root.join("shell.pid").exists()).await;
    let pid: i32 = std::fs::read_to_string(agent.root.join("shell.pid")).unwrap().trim().parse().unwrap();

    agent.call_fenced(Op::Ping(pb::PingRequest { nonce: 1 }), "lease-1", 2).await.expect("newer epoch");
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |_| false).await;
    assert_eq!(seen.closed.map(|c| c.0), Some(pb::StreamCloseReason::Fenced));
    eventually("the fenced shell is gone", || !pid_alive(pid)).await;
    let write = pb::PtyWriteRequest { pty_id: pty.pty_id.clone(), data: Bytes::from_static(b"x") };
    let err = agent.call_fenced(Op::PtyWrite(write), "lease-1", 2).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{}", err.message);
}

#[tokio::test]
async fn pty_write_types_into_the_terminal_and_bad_requests_get_typed_errors() {
    let (relay, _nats, agent) = stack().await;
    let pty = open(&agent, open_req(&["sh"], "")).await;
    let channel = pty.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v", ViewerMode::View)).await;
    let typed = Bytes::from_static(b"echo via-$((2+3))\n");
    let write = pb::PtyWriteRequest { pty_id: pty.pty_id.clone(), data: typed.clone() };
    match agent.call(Op::PtyWrite(write)).await {
        Ok(Reply::PtyWrite(r)) => assert_eq!(r.bytes_written, typed.len() as u64),
        other => panic!("pty_write failed: {other:?}"),
    }
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "via-5")).await;

    let resize = pb::PtyResizeRequest { pty_id: pty.pty_id.clone(), cols: 0, rows: 10 };
    let err = agent.call(Op::PtyResize(resize)).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::Protocol);
    let bad_cwd = pb::PtyOpenRequest { cwd: "no/such/dir".into(), ..Default::default() };
    let err = agent.call(Op::PtyOpen(bad_cwd)).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{}", err.message);
    let outside = pb::PtyOpenRequest { cwd: "/etc".into(), ..Default::default() };
    let err = agent.call(Op::PtyOpen(outside)).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::ConsentRequired, "{}", err.message);
    let missing = open_req(&["/no/such/program"], "");
    let err = agent.call(Op::PtyOpen(missing)).await.unwrap_err();
    assert!(err.message.contains("not found"), "{}", err.message);
    assert_eq!(close(&agent, &pty.pty_id).await.unwrap(), -1);
}

#[tokio::test]
async fn without_a_relay_terminals_are_unsupported() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    assert!(!agent.hello.capabilities.as_ref().unwrap().pty);
    let err = agent.call(Op::PtyOpen(pb::PtyOpenRequest::default())).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::Unsupported);
    assert!(err.message.contains("--relay-url"), "{}", err.message);
}

#[tokio::test]
async fn agent_shutdown_ends_terminals_and_tells_their_viewers() {
    let (relay, _nats, mut agent) = stack().await;
    let pty = open(&agent, open_req(&["sh", "-c", "echo $$ > shell.pid; exec sleep 300"], "")).await;
    let channel = pty.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v", ViewerMode::View)).await;
    eventually("the shell wrote its pid", || agent.root.join("shell.pid").exists()).await;
    let pid: i32 = std::fs::read_to_string(agent.root.join("shell.pid")).unwrap().trim().parse().unwrap();

    agent.proc.signal(nix::sys::signal::Signal::SIGTERM);
    agent.proc.wait_exit(WITHIN).expect("agent exits on SIGTERM");
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |_| false).await;
    let (reason, message) = seen.closed.expect("closed");
    assert_eq!(reason, pb::StreamCloseReason::Normal);
    assert!(message.contains("shutting down"), "{message}");
    assert!(!pid_alive(pid), "the terminal's process is gone with the agent");
}

async fn write(agent: &Agent, pty_id: &str, data: &'static [u8]) -> Result<u64, pb::AgentError> {
    let req = pb::PtyWriteRequest { pty_id: pty_id.into(), data: Bytes::from_static(data) };
    match agent.call(Op::PtyWrite(req)).await {
        Ok(Reply::PtyWrite(r)) => Ok(r.bytes_written),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e),
    }
}

/// Whether the agent logged the end of a terminal (the only one of the test).
fn a_terminal_ended(agent: &Agent) -> bool {
    agent.log().contains("terminal ended")
}

/// A viewer that comes after the end still learns how the channel ended: returns that reason.
async fn late_close(relay: &Relay, channel: &pb::StreamChannel) -> (pb::StreamCloseReason, String) {
    let mut viewer = watch(relay, channel, &claims_for(channel, "late", ViewerMode::View)).await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |_| false).await;
    seen.closed.expect("closed")
}

#[tokio::test]
async fn an_unwatched_terminal_nobody_types_into_is_closed_after_the_idle_time() {
    let (relay, _nats, agent) = stack_with(&["--pty-idle-timeout", "1s"]).await;
    let opened = Instant::now();
    let pty = open(&agent, open_req(&["sh"], "")).await;
    eventually("the idle terminal was reaped", || a_terminal_ended(&agent)).await;
    assert!(opened.elapsed() >= Duration::from_secs(1), "not before the idle time");
    let err = write(&agent, &pty.pty_id, b"echo too late\n").await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{}", err.message);
    let (reason, message) = late_close(&relay, &pty.channel.expect("channel")).await;
    assert_eq!(reason, pb::StreamCloseReason::Normal, "{message}");
    assert!(message.contains("idle"), "{message}");
}

#[tokio::test]
async fn a_watched_terminal_outlives_the_idle_time_and_is_reaped_once_its_viewer_leaves() {
    const IDLE: Duration = Duration::from_secs(2);
    let (relay, _nats, agent) = stack_with(&["--pty-idle-timeout", "2s"]).await;
    let pty = open(&agent, open_req(&["sh"], "")).await;
    let channel = pty.channel.expect("channel");
    let viewer = watch(&relay, &channel, &claims_for(&channel, "watcher", ViewerMode::View)).await;
    // Nobody types for three idle periods; somebody is watching (a `tail -f`, a long build).
    tokio::time::sleep(IDLE * 3).await;
    assert!(!a_terminal_ended(&agent), "a watched terminal is not idle:\n{}", agent.log());
    assert_eq!(write(&agent, &pty.pty_id, b"echo still-here\n").await, Ok(16));

    let left = Instant::now();
    drop(viewer);
    eventually("the terminal was reaped after its viewer left", || a_terminal_ended(&agent)).await;
    assert!(left.elapsed() >= IDLE, "the idle clock restarted when the last viewer left");
    let err = write(&agent, &pty.pty_id, b"x").await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{}", err.message);
    let (reason, message) = late_close(&relay, &channel).await;
    assert_eq!(reason, pb::StreamCloseReason::Normal, "{message}");
}

#[tokio::test]
async fn a_terminal_watched_through_a_relay_that_went_away_is_reaped() {
    const IDLE: Duration = Duration::from_secs(2);
    let (relay, _nats, agent) = stack_with(&["--pty-idle-timeout", "2s"]).await;
    let pty = open(&agent, open_req(&["sh"], "")).await;
    let channel = pty.channel.expect("channel");
    let _viewer = watch(&relay, &channel, &claims_for(&channel, "watcher", ViewerMode::View)).await;
    tokio::time::sleep(IDLE * 2).await;
    assert!(!a_terminal_ended(&agent), "watched through a live relay: not idle:\n{}", agent.log());

    // Its viewers went with the relay: from then on the terminal counts as unwatched.
    let gone = Instant::now();
    assert!(relay.terminate().await.success());
    eventually("the terminal was reaped with its relay gone", || a_terminal_ended(&agent)).await;
    assert!(gone.elapsed() >= IDLE, "the idle clock started when the relay link dropped");
}

#[tokio::test]
async fn reopening_a_live_scope_does_not_wait_behind_an_unrelated_open() {
    let relay = Relay::start(&[]).await;
    let proxy = StallingProxy::start(relay.addr).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(proxy.stream_url()), ..AgentOpts::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let live = open(&agent, open_req(&["sh"], "scope-live")).await;

    // Another terminal's channel hangs at the relay (pty_open waits up to 15 s for it).
    proxy.stall();
    let unrelated = agent.call(Op::PtyOpen(open_req(&["sh"], "scope-other")));
    tokio::pin!(unrelated);
    let reached_the_relay = async {
        while proxy.held() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = &mut unrelated => panic!("the unrelated open should hang, got {r:?}"),
        waited = tokio::time::timeout(WITHIN, reached_the_relay) => waited.expect("the unrelated open dialled"),
    }

    let started = Instant::now();
    let again = tokio::select! {
        again = open(&agent, open_req(&["sh"], "scope-live")) => again,
        r = &mut unrelated => panic!("the reopen waited for the unrelated open to give up ({r:?})"),
    };
    assert_eq!(again.pty_id, live.pty_id, "the live scope's terminal");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn reopening_a_scope_under_a_newer_epoch_starts_a_fresh_terminal() {
    let (relay, _nats, agent) = stack().await;
    // The old shell ignores SIGHUP, so it lingers for the whole hang-up grace after the fence:
    // the reopen lands while it is dying.
    let req = || Op::PtyOpen(open_req(&["sh", "-c", "trap '' HUP; exec sh"], "scope-r"));
    let opened = |reply| match reply {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}"),
    };
    let old = opened(agent.call_fenced(req(), "lease-r", 1).await);
    let old_channel = old.channel.clone().expect("channel");
    let mut old_viewer = watch(&relay, &old_channel, &claims_for(&old_channel, "v", ViewerMode::View)).await;

    let new = opened(agent.call_fenced(req(), "lease-r", 2).await);
    assert_ne!(new.pty_id, old.pty_id, "the fenced terminal is not handed out again");
    let new_channel = new.channel.expect("channel");
    assert_ne!(new_channel.channel_id, old_channel.channel_id);
    let mut seen = Seen::default();
    collect_until(&mut old_viewer, &mut seen, WITHIN, |_| false).await;
    assert_eq!(seen.closed.map(|c| c.0), Some(pb::StreamCloseReason::Fenced));

    let mut viewer = watch(&relay, &new_channel, &claims_for(&new_channel, "v", ViewerMode::View)).await;
    viewer.send("echo fresh-$((6*7))\n").await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "fresh-42")).await;
    assert!(seen.closed.is_none(), "the new terminal lives: {:?}", seen.closed);
}

/// A terminal belongs to the fence scope (the control-plane session) that opened it: another
/// scope reusing its scope_id gets a terminal of its own, and cannot type into, resize or close
/// it by its pty_id (NOT_FOUND, as if it did not exist); its own scope still can.
#[tokio::test]
async fn a_terminal_belongs_to_the_fence_scope_that_opened_it() {
    let (_relay, _nats, agent) = stack().await;
    let agent = &agent;
    let a = |op: Op| agent.call_fenced(op, "lease-a", 1);
    let b = |op: Op| agent.call_fenced(op, "lease-b", 1);
    let unscoped = |op: Op| agent.call(op);
    let script = "echo $$ >> shells.pid; exec cat";
    let opened = |reply: Result<Reply, pb::AgentError>| match reply {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}\nagent log:\n{}", agent.log()),
    };
    let mine = opened(a(Op::PtyOpen(open_req(&["sh", "-c", script], "shared"))).await);
    let theirs = opened(b(Op::PtyOpen(open_req(&["sh", "-c", script], "shared"))).await);
    assert_ne!(theirs.pty_id, mine.pty_id, "another scope's scope_id names its own terminal");
    assert_ne!(theirs.channel, mine.channel);
    let again = opened(a(Op::PtyOpen(open_req(&["sh", "-c", script], "shared"))).await);
    assert_eq!(again.pty_id, mine.pty_id, "the opening scope still reattaches");

    let id = mine.pty_id.clone();
    let write = || Op::PtyWrite(pb::PtyWriteRequest { pty_id: id.clone(), data: Bytes::from_static(b"x") });
    let resize = || Op::PtyResize(pb::PtyResizeRequest { pty_id: id.clone(), cols: 100, rows: 30 });
    let close_op = || Op::PtyClose(pb::PtyCloseRequest { pty_id: id.clone() });
    for (what, reply) in [
        ("write from another scope", b(write()).await),
        ("resize from another scope", b(resize()).await),
        ("close from another scope", b(close_op()).await),
        ("write unscoped", unscoped(write()).await),
        ("close unscoped", unscoped(close_op()).await),
    ] {
        match reply {
            Err(e) => assert_eq!(error_code(&e), pb::ErrorCode::NotFound, "{what}: {e:?}"),
            Ok(r) => panic!("{what} reached the terminal: {r:?}"),
        }
    }
    assert!(matches!(a(write()).await, Ok(Reply::PtyWrite(_))), "the owner still types into it");
    assert!(matches!(a(resize()).await, Ok(Reply::PtyResize(_))));
    assert!(matches!(a(close_op()).await, Ok(Reply::PtyClose(_))), "the owner closes it");
    let theirs_closed = b(Op::PtyClose(pb::PtyCloseRequest { pty_id: theirs.pty_id.clone() })).await;
    assert!(matches!(theirs_closed, Ok(Reply::PtyClose(_))), "{theirs_closed:?}");
}
