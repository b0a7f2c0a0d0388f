//! Who may act as the control plane, and what one request may do to the agent's state: the
//! agent refuses an open NATS server, keeps its state and credentials out of reach, bounds
//! what a single request can do to a fence scope (and lets an operator undo it), keeps scope
//! names out of its log, and answers pings while long commands hold every request slot.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, Proc, WAIT, bin, error_code, op, pb, read_log};

/// Runs `tether-agent run` with `args` against `nats` until it exits; returns its stderr.
fn agent_refusal(nats: &Nats, root: &Path, args: &[String]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr");
    let mut cmd = Command::new(bin("tether-agent"));
    nats.auth_env(&mut cmd)
        .args(["run", "--nats-url", &nats.url, "--workspace-id", "ws", "--agent-id", "refused"])
        .arg("--workspace-root")
        .arg(root)
        .args(args)
        .stderr(std::fs::File::create(&log).expect("agent log"));
    let mut proc = Proc::spawn("tether-agent", &mut cmd).expect("spawn tether-agent");
    let status = proc.wait_exit(WAIT).expect("the agent refuses to start");
    assert!(!status.success(), "the agent must not start: {}", read_log(&log));
    read_log(&log)
}

#[tokio::test]
async fn an_open_nats_server_is_refused_unless_explicitly_allowed_and_then_hello_says_so() {
    let open = Nats::start_open().await;
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let stderr = agent_refusal(&open, root.path(), &[format!("--state-dir={}", state.path().display())]);
    assert!(stderr.contains("without credentials"), "says why: {stderr}");
    assert!(stderr.contains("--allow-unauthenticated-nats"), "says how to override: {stderr}");

    let opts = AgentOpts { args: vec!["--allow-unauthenticated-nats".into()], ..Default::default() };
    let unprotected = Agent::start_with(&open, opts).await;
    assert!(unprotected.caps().nats_unauthenticated, "Hello tells the control plane");
    assert!(unprotected.log().contains("UNPROTECTED"), "the log says it loudly:\n{}", unprotected.log());

    let nats = Nats::start().await;
    let protected = Agent::start(&nats).await;
    assert!(!protected.caps().nats_unauthenticated);
}

#[tokio::test]
async fn state_and_credentials_inside_the_root_or_a_granted_path_are_refused_by_name() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let state = root.join(".tether-state");
    let stderr = agent_refusal(&nats, &root, &[format!("--state-dir={}", state.display())]);
    assert!(stderr.contains("state directory") && stderr.contains(".tether-state"), "{stderr}");
    assert!(!state.exists(), "nothing was created before the refusal");

    let outside = tempfile::tempdir().unwrap();
    let shared = outside.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("relay.token"), "ogr_x.y").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.join("relay.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = [
        format!("--state-dir={}", outside.path().join("state").display()),
        format!("--confine-read={}", shared.display()),
        "--relay-url=ws://127.0.0.1:9/stream".to_owned(),
        format!("--relay-token-file={}", shared.join("relay.token").display()),
    ];
    let stderr = agent_refusal(&nats, &root, &args);
    assert!(stderr.contains("credentials file") && stderr.contains("relay.token"), "{stderr}");
}

#[tokio::test]
async fn one_request_cannot_push_a_scope_out_of_reach_and_an_operator_can_reset_it() {
    let nats = Nats::start().await;
    let state = tempfile::tempdir().unwrap();
    let opts = AgentOpts { state_dir: Some(state.path().to_owned()), ..Default::default() };
    let mut agent = Agent::start_with(&nats, opts.clone()).await;

    let err = agent.call_fenced(op::ping(1), "s1", u32::MAX).await.expect_err("an absurd jump");
    assert_eq!(error_code(&err), pb::ErrorCode::Protocol, "{err:?}");
    assert_eq!(err.detail["max_epoch_jump"], "65536");
    agent.call_fenced(op::ping(1), "s1", 1).await.expect("the scope was not moved");

    let long_scope = "x".repeat(257);
    let err = agent.call_fenced(op::ping(1), &long_scope, 1).await.expect_err("an overlong scope");
    assert_eq!(error_code(&err), pb::ErrorCode::Protocol, "{err:?}");

    // A forged request moves the scope as far as it may; its real control plane is now stale.
    agent.call_fenced(op::ping(1), "s1", 1 + 65536).await.expect("a jump within the ceiling");
    assert!(agent.call_fenced(op::ping(1), "s1", 2).await.is_err());

    let reset = |state: &Path| {
        Command::new(bin("tether-agent"))
            .args(["fence", "reset", "s1", "--state-dir"])
            .arg(state)
            .output()
            .expect("tether-agent fence reset")
    };
    let refused = reset(state.path());
    assert!(!refused.status.success(), "no reset under a running agent");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another tether-agent"));

    agent.proc.stop(WAIT);
    let done = reset(state.path());
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("65537"), "says what was held");
    drop(agent);
    let agent = Agent::start_with(&nats, opts).await;
    agent.call_fenced(op::ping(1), "s1", 2).await.expect("the real control plane is back in");
}

#[tokio::test]
async fn fence_scope_names_stay_out_of_the_log() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let scope = "lease-7f3e9a1c-d2b4-secret-part";
    agent.call_fenced(op::write("a.txt", b"1"), scope, 3).await.expect("write");
    agent.call_fenced(op::ping(1), scope, 4).await.expect("advance");
    agent.call_fenced(op::ping(1), scope, 2).await.expect_err("stale");
    agent.call_fenced(op::read("missing.txt"), scope, 4).await.expect_err("failing op is logged");
    let log = agent.log();
    assert!(log.contains("epoch advanced"), "the advance is logged:\n{log}");
    assert!(!log.contains("secret-part"), "the scope is logged in full:\n{log}");
}

#[tokio::test]
async fn pings_and_metrics_answer_while_long_commands_hold_every_slot() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--max-in-flight=2".into()], ..Default::default() };
    let agent = std::sync::Arc::new(Agent::start_with(&nats, opts).await);
    let long = |agent: std::sync::Arc<Agent>| {
        tokio::spawn(async move { agent.call(Op::Exec(op::sh("sleep 2"))).await })
    };
    let busy = [long(agent.clone()), long(agent.clone())];
    tether_tests::eventually("both commands to be running", || {
        tether_tests::processes_in(&agent.root).len() >= 2
    })
    .await;

    let err = agent.call(Op::Exec(op::exec(&["true"]))).await.expect_err("every slot is taken");
    assert_eq!(error_code(&err), pb::ErrorCode::Draining, "{err:?}");
    for nonce in 0..20 {
        let reply = agent.call(op::ping(nonce)).await.expect("ping answers while busy");
        assert!(matches!(reply, Reply::Ping(p) if p.nonce == nonce));
    }
    let reply = agent.call(Op::Metrics(pb::MetricsRequest {})).await.expect("metrics answer while busy");
    assert!(matches!(reply, Reply::Metrics(_)));
    for exec in busy {
        let reply = tokio::time::timeout(Duration::from_secs(30), exec).await.unwrap().unwrap();
        assert!(matches!(&reply, Ok(Reply::Exec(out)) if out.exit_code == 0), "{reply:?}");
    }
}
