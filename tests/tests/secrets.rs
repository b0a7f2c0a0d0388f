//! Secrets: the NATS token reaches the server, and nothing else — not the agent's log, not its
//! command line, not the environment of the commands it runs.

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, op};

const TOKEN: &str = "s3cret-tether-token-0042";

#[tokio::test]
async fn the_nats_token_authenticates_and_never_leaks() {
    let nats = Nats::start_with_token(TOKEN).await;
    let opts = AgentOpts {
        env: vec![
            ("TETHER_NATS_TOKEN".into(), TOKEN.into()),
            ("TETHER_RELAY_TOKEN".into(), format!("relay-{TOKEN}")),
            ("HARMLESS_SETTING".into(), "kept".into()),
        ],
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;

    let reply = agent.call(Op::Exec(op::exec(&["env"]))).await.expect("exec env");
    let Reply::Exec(out) = reply else { panic!("exec reply expected") };
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("HARMLESS_SETTING=kept"), "ordinary variables pass through:\n{env}");
    assert!(!env.contains(TOKEN), "a command saw the token:\n{env}");
    assert!(!env.contains("TETHER_NATS_TOKEN") && !env.contains("TETHER_RELAY_TOKEN"));

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.proc.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(TOKEN), "the token is not in argv");
    assert!(!agent.log().contains(TOKEN), "the token is not logged");
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_startup_failure() {
    let nats = Nats::start_with_token(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut cmd = std::process::Command::new(tether_tests::bin("tether-agent"));
    cmd.args(["run", "--nats-url", &nats.url, "--workspace-id", "ws", "--agent-id", "a"])
        .arg("--state-dir")
        .arg(dir.path())
        .env("TETHER_NATS_TOKEN", "wrong-token-value")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut proc = tether_tests::Proc::spawn("tether-agent", &mut cmd).unwrap();
    let status = proc.wait_exit(tether_tests::WAIT).expect("the agent gives up on bad credentials");
    let stderr = tether_tests::read_log(&log);
    assert!(!status.success());
    assert!(stderr.to_lowercase().contains("authorization"), "says why: {stderr}");
    assert!(!stderr.contains("wrong-token-value"), "never echoes the secret: {stderr}");
}

#[tokio::test]
async fn a_token_file_beside_files_commands_may_read_is_refused_at_startup() {
    let nats = Nats::start_with_token(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::write(dir.join("nats.token"), TOKEN).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let log = elsewhere.path().join("stderr");
    let mut cmd = std::process::Command::new(tether_tests::bin("tether-agent"));
    cmd.args(["run", "--nats-url", &nats.url, "--workspace-id", "ws", "--agent-id", "a"])
        .arg(format!("--state-dir={}", elsewhere.path().join("state").display()))
        .arg(format!("--nats-token-file={}", dir.join("nats.token").display()))
        .arg(format!("--confine-read={}", dir.display()))
        .stderr(std::fs::File::create(&log).unwrap());
    let mut proc = tether_tests::Proc::spawn("tether-agent", &mut cmd).unwrap();
    let status = proc.wait_exit(tether_tests::WAIT).expect("the agent refuses the layout");
    let stderr = tether_tests::read_log(&log);
    assert!(!status.success(), "commands could read the token: {stderr}");
    assert!(stderr.contains("nats.token") && stderr.contains("--confine-read"), "names the file: {stderr}");
    assert!(!stderr.contains(TOKEN), "never echoes the secret: {stderr}");
}
