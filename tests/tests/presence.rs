//! Presence and the serve loop: Hello, heartbeats, going_offline, duplicate runners, bad
//! requests and overload, against a real nats-server and the real agent binary.

use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, WAIT, op, pb};

async fn next_event(sub: &mut async_nats::Subscriber) -> pb::AgentEvent {
    let msg =
        tokio::time::timeout(WAIT, sub.next()).await.expect("event in time").expect("events subscription");
    pb::AgentEvent::decode(msg.payload).expect("decode AgentEvent")
}

#[tokio::test]
async fn hello_tells_the_truth_and_the_agent_answers_right_after_it() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    // Agent::start returns as soon as Hello arrives: the rpc subscription must already be live.
    let pong = agent.call(op::ping(7)).await.expect("ping right after Hello");
    assert!(matches!(pong, Reply::Ping(p) if p.nonce == 7));

    let hello = &agent.hello;
    assert_eq!(hello.agent_id, agent.id);
    assert_eq!(hello.workspace_id, agent.ws);
    assert_eq!(hello.workspace_root, agent.root.display().to_string());
    assert_eq!(hello.os, pb::Os::Linux as i32);
    assert!(!hello.agent_version.is_empty());
    assert_eq!(hello.binary_sha256.len(), 64);
    let caps = hello.capabilities.as_ref().expect("capabilities");
    assert!(caps.exec && caps.filesystem);
    assert!(!caps.pty, "no relay configured, so no terminals");
    assert!(!caps.desktop && !caps.desktop_unavailable_reason.is_empty());
    assert!(!caps.git && !caps.consented_whole_machine && !caps.consented_screen_control);
    assert_eq!(caps.virtual_root, "/workspace");
    assert!(caps.fence_scoped);
    assert_eq!(caps.max_payload, 1024 * 1024);
}

#[tokio::test]
async fn heartbeats_carry_a_real_metrics_sample_and_sigterm_says_going_offline() {
    let nats = Nats::start().await;
    let mut agent = Agent::start(&nats).await;
    let mut events = agent.nc.subscribe(format!("agent.{}.{}.events", agent.ws, agent.id)).await.unwrap();
    agent.nc.flush().await.unwrap();

    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let event = next_event(&mut events).await;
        assert_eq!(event.agent_id, agent.id);
        let Some(pb::agent_event::Event::Heartbeat(beat)) = event.event else {
            panic!("expected heartbeat: {event:?}")
        };
        let m = beat.metrics.expect("heartbeat metrics");
        assert!(m.mem_total_bytes > 0 && m.mem_used_bytes > 0 && m.mem_used_bytes <= m.mem_total_bytes);
        assert!(m.disk_total_bytes > 0 && m.sampled_at_ms > 0);
        assert!(!beat.draining);
        seqs.push(beat.seq);
    }
    assert!(seqs[1] > seqs[0], "heartbeat seq increases: {seqs:?}");

    agent.proc.signal(Signal::SIGTERM);
    let offline = loop {
        let event = next_event(&mut events).await;
        if let Some(pb::agent_event::Event::GoingOffline(g)) = event.event {
            break g;
        }
    };
    assert_eq!(offline.reason, pb::GoingOfflineReason::UserStop as i32);
    let status = agent.proc.wait_exit(WAIT).unwrap();
    assert!(status.success(), "clean stop exits 0: {status:?}\n{}", agent.log());
}

#[tokio::test]
async fn a_second_agent_on_the_same_subject_refuses_to_start() {
    let nats = Nats::start().await;
    let first = Agent::start(&nats).await;
    let mut second = std::process::Command::new(tether_tests::bin("tether-agent"));
    let mut second = nats
        .auth_env(&mut second)
        .args(["run", "--nats-url", &nats.url, "--workspace-id", &first.ws, "--agent-id", &first.id])
        .arg("--workspace-root")
        .arg(&first.root)
        .arg("--state-dir")
        .arg(first.state_dir.join("second"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("the second agent kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains(&first.rpc_subject()), "names the subject: {stderr}");
    assert!(first.call(op::ping(1)).await.is_ok(), "the first agent keeps serving");
}

#[tokio::test]
async fn malformed_requests_get_typed_errors_and_the_agent_survives() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let resp = agent.request_raw(vec![0xff, 0xff, 0xff, 0x0f]).await;
    assert_eq!(resp.request_id, "");
    assert_eq!(resp.error.expect("error").code, pb::ErrorCode::Protocol as i32);

    let no_op = pb::ControlRequest { request_id: "r-none".into(), ..Default::default() };
    let resp = agent.request_raw(no_op.encode_to_vec()).await;
    assert_eq!(resp.request_id, "r-none");
    assert_eq!(resp.error.expect("error").code, pb::ErrorCode::Protocol as i32);

    let pty = Op::PtyOpen(pb::PtyOpenRequest::default());
    assert_eq!(agent.call(pty).await.unwrap_err().code, pb::ErrorCode::Unsupported as i32);
    let git = Op::Git(pb::GitRequest::default());
    assert_eq!(agent.call(git).await.unwrap_err().code, pb::ErrorCode::Unsupported as i32);

    assert!(agent.call(op::ping(2)).await.is_ok());
}

#[tokio::test]
async fn overload_answers_draining_instead_of_queueing() {
    let nats = Nats::start().await;
    let agent = Agent::start_with(
        &nats,
        AgentOpts { args: vec!["--max-in-flight".into(), "2".into()], ..Default::default() },
    )
    .await;
    let sleep = || Op::Exec(op::sh("sleep 3"));
    let (a, b) = (agent.call(sleep()), agent.call(sleep()));
    let third = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        agent.call(op::stat("x")).await
    };
    let (a, b, third) = tokio::join!(a, b, third);
    let err = third.expect_err("a third request while two are running is refused");
    assert_eq!(err.code, pb::ErrorCode::Draining as i32);
    assert!(err.retryable);
    assert!(a.is_ok() && b.is_ok());
    assert!(agent.call(op::stat("x")).await.is_ok(), "served again once there is room");
}

#[tokio::test]
async fn after_nats_comes_back_the_agent_says_hello_again_and_serves() {
    let mut nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    nats.restart().await;
    // Which client reconnects first is up to timing, so a subscriber may miss the second
    // Hello; the agent's own log says whether it re-announced after reconnecting.
    tether_tests::eventually("a second Hello after the reconnect", || {
        let log = agent.log();
        log.contains("reconnected to NATS") && log.matches("hello published").count() >= 2
    })
    .await;
    let pong = agent.call(op::ping(9)).await.expect("served after the reconnect");
    assert!(matches!(pong, Reply::Ping(p) if p.nonce == 9));
}

#[tokio::test]
async fn sigterm_cancels_work_past_the_grace_and_still_says_going_offline() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--shutdown-grace".into(), "300ms".into()], ..Default::default() };
    let mut agent = Agent::start_with(&nats, opts).await;
    let mut events = agent.nc.subscribe(format!("agent.{}.{}.events", agent.ws, agent.id)).await.unwrap();
    agent.nc.flush().await.unwrap();
    let marker = agent.root.join("started");
    let long = agent.call(Op::Exec(op::sh("touch started; exec sleep 60")));
    let stop = async {
        tether_tests::eventually("the exec to start", || marker.exists()).await;
        agent.proc.signal(Signal::SIGTERM);
    };
    let (reply, ()) = tokio::join!(long, stop);
    let err = reply.expect_err("the exec outlived the grace and was cancelled");
    assert_eq!(err.code, pb::ErrorCode::Draining as i32);
    assert!(err.retryable);
    loop {
        if let Some(pb::agent_event::Event::GoingOffline(_)) = next_event(&mut events).await.event {
            break;
        }
    }
    assert!(agent.proc.wait_exit(WAIT).unwrap().success());
}

#[tokio::test]
async fn a_storm_of_garbage_and_truncated_requests_never_wedges_the_agent() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let valid = pb::ControlRequest {
        request_id: "r".into(),
        op: Some(Op::FsRead(pb::FsReadRequest {
            path: "/workspace/x".into(),
            offset: u64::MAX,
            length: u64::MAX,
        })),
        ..Default::default()
    }
    .encode_to_vec();
    // A fixed-seed generator: the same storm on every run.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..300 {
        let payload = match i % 3 {
            0 => valid[..(next() as usize % valid.len())].to_vec(),
            1 => (0..next() % 64).map(|_| next() as u8).collect(),
            _ => {
                let mut v = valid.clone();
                let at = next() as usize % v.len();
                v[at] ^= next() as u8;
                v
            }
        };
        let resp = agent.request_raw(payload).await;
        assert!(resp.error.is_some() || resp.result.is_some(), "every request gets an answer: {resp:?}");
    }
    assert!(agent.call(op::ping(5)).await.is_ok(), "still serving\n{}", agent.log());
}
