//! `tetherctl` as a user runs it: exit codes, error names, JSON output, following events.

use std::process::Stdio;

use nix::sys::signal::Signal;
use tether_tests::{Agent, Nats, Proc, eventually, read_log};

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
