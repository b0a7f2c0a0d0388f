//! Running commands on the machine (PROTOCOL.md §5 exec), end to end through NATS: argv and
//! shell, env and stdin, exit codes and signals, timeouts that kill the whole process group
//! but keep the output, background children that are left alone, output too large for one
//! reply, and an agent that keeps answering while a command runs.

use std::path::Path;
use std::time::{Duration, Instant};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, KillOnDrop, Nats, error_code, eventually, op, pb, pid_alive, read_pid};

/// Runs `req` and returns its ExecResponse, failing the test (with the agent log) otherwise.
async fn run(agent: &Agent, req: pb::ExecRequest) -> pb::ExecResponse {
    let what = format!("{:?}", req.command);
    match agent.call(Op::Exec(req)).await {
        Ok(Reply::Exec(r)) => r,
        other => panic!("exec {what}: expected an ExecResponse, got {other:?}\nagent log:\n{}", agent.log()),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits (bounded) until the file a script writes holds a complete line.
async fn written(path: &Path) {
    eventually(&format!("{} to be written", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
}

#[tokio::test]
async fn a_command_runs_with_its_argv_untouched() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let r = run(&agent, op::exec(&["echo", "hi"])).await;
    assert_eq!(text(&r.stdout), "hi\n");
    assert_eq!(r.exit_code, 0);
    assert!(!r.timed_out && !r.stdout_truncated && r.signal == 0, "{r:?}");

    // Direct argv: no shell splits "a b" or expands the `$`.
    let r = run(&agent, op::exec(&["printf", "%s|", "a b", "$HOME"])).await;
    assert_eq!(text(&r.stdout), "a b|$HOME|");

    // stderr is its own stream.
    let r = run(&agent, op::exec(&["sh", "-c", "echo out; echo err >&2"])).await;
    assert_eq!(text(&r.stdout), "out\n");
    assert_eq!(text(&r.stderr), "err\n");
}

#[tokio::test]
async fn a_shell_command_sees_the_env_it_was_given_and_runs_in_the_workspace() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let mut req = op::sh("echo $FOO");
    req.env.insert("FOO".into(), "bar".into());
    let r = run(&agent, req).await;
    assert_eq!(text(&r.stdout), "bar\n", "stderr: {}", text(&r.stderr));
    assert_eq!(r.exit_code, 0);

    // Shell elements are joined by single spaces.
    let r = run(&agent, pb::ExecRequest { shell: true, ..op::exec(&["echo", "a", "&&", "echo", "b"]) }).await;
    assert_eq!(text(&r.stdout), "a\nb\n");

    // An empty cwd is the workspace root; `/workspace/sub` maps onto root/sub.
    let r = run(&agent, op::sh("pwd")).await;
    assert_eq!(text(&r.stdout).trim_end(), agent.root.display().to_string());
    std::fs::create_dir(agent.root.join("sub")).unwrap();
    let r = run(&agent, pb::ExecRequest { cwd: "/workspace/sub".into(), ..op::sh("pwd") }).await;
    assert_eq!(text(&r.stdout).trim_end(), agent.root.join("sub").display().to_string());
}

#[tokio::test]
async fn stdin_is_fed_to_the_command_and_closed_when_empty() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let input = b"line one\nline two\n\x00binary\xff";
    let r = run(&agent, pb::ExecRequest { stdin: input.to_vec().into(), ..op::exec(&["cat"]) }).await;
    assert_eq!(&r.stdout[..], &input[..]);
    assert_eq!(r.exit_code, 0);

    // No stdin: `cat` must see EOF at once rather than wait for input that never comes.
    let r = run(&agent, pb::ExecRequest { timeout_ms: 10_000, ..op::exec(&["cat"]) }).await;
    assert!(!r.timed_out, "cat waited on an open stdin: {r:?}");
    assert_eq!(r.exit_code, 0);
    assert!(r.stdout.is_empty());
}

#[tokio::test]
async fn a_failing_command_reports_its_exit_code_or_signal() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let r = run(&agent, op::sh("echo partial; exit 3")).await;
    assert_eq!(r.exit_code, 3);
    assert_eq!(text(&r.stdout), "partial\n");
    assert!(!r.timed_out && r.signal == 0, "{r:?}");

    let r = run(&agent, op::exec(&["false"])).await;
    assert_eq!(r.exit_code, 1);

    let r = run(&agent, op::sh("kill -9 $$")).await;
    assert_eq!(r.exit_code, -1, "killed by a signal: {r:?}");
    assert_eq!(r.signal, 9, "{r:?}");
    assert!(!r.timed_out);
}

#[tokio::test]
async fn an_empty_command_is_an_os_error() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let err = agent.call(Op::Exec(op::exec(&[]))).await.expect_err("nothing to run");
    assert_eq!(error_code(&err), pb::ErrorCode::Os, "{err:?}");
}

#[tokio::test]
async fn a_missing_cwd_is_not_found_naming_the_cwd() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let req = pb::ExecRequest { cwd: "/workspace/no-such-dir-here".into(), ..op::exec(&["true"]) };
    let err = agent.call(Op::Exec(req)).await.expect_err("the cwd does not exist");
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{err:?}");
    assert!(err.message.contains("no-such-dir-here"), "the message must name the cwd: {err:?}");

    // A cwd that is a file is not a directory: refused before spawning, not NOT_FOUND for `true`.
    std::fs::write(agent.root.join("plain"), b"x").unwrap();
    let req = pb::ExecRequest { cwd: "plain".into(), ..op::exec(&["true"]) };
    let err = agent.call(Op::Exec(req)).await.expect_err("the cwd is a file");
    assert!(err.message.contains("plain"), "the message must name the cwd: {err:?}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let script = "echo $$ > leader.pid; sleep 300 & echo $! > child.pid; sleep 300";
    let r = run(&agent, pb::ExecRequest { timeout_ms: 500, ..op::sh(script) }).await;

    let leader = read_pid(&agent.root.join("leader.pid"));
    let child = read_pid(&agent.root.join("child.pid"));
    let _cleanup = (KillOnDrop(leader), KillOnDrop(child));
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, -1, "{r:?}");
    eventually("the shell leader to be killed", || !pid_alive(leader)).await;
    eventually("the background child in the same group to be killed", || !pid_alive(child)).await;
}

#[tokio::test]
async fn a_timeout_keeps_the_output_captured_before_it() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let r =
        run(&agent, pb::ExecRequest { timeout_ms: 500, ..op::sh("echo before; echo oops >&2; sleep 300") })
            .await;
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, -1);
    assert_eq!(text(&r.stdout), "before\n");
    assert_eq!(text(&r.stderr), "oops\n");
}

#[tokio::test]
async fn a_deliberately_backgrounded_child_survives_and_does_not_hold_the_reply() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let script = "nohup sleep 30 >/dev/null 2>&1 & echo $! > bg.pid; echo done";
    let r = run(&agent, op::sh(script)).await;
    let bg = read_pid(&agent.root.join("bg.pid"));
    let _cleanup = KillOnDrop(bg);

    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(!r.timed_out);
    assert_eq!(text(&r.stdout), "done\n");
    // A sanity bound, far below the child's 30 s: the reply did not wait for the child.
    assert!(r.duration_ms < 5_000, "the reply waited for the background child: {r:?}");
    assert!(pid_alive(bg), "a background child started on purpose must not be killed");
    // ...and it is not killed shortly after the reply either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pid_alive(bg), "the background child was killed after the reply");
}

#[tokio::test]
async fn output_too_large_for_one_reply_keeps_head_and_tail_and_the_true_total() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let max_payload = agent.hello.capabilities.as_ref().expect("capabilities").max_payload;
    assert_eq!(max_payload, agent.nc.server_info().max_payload as u64, "Hello reports the negotiated max");

    let req = op::sh("echo HEAD; yes | head -c 3000000; echo TAIL");
    let (size, result) = agent.call_sized(Op::Exec(req)).await;
    let Ok(Reply::Exec(r)) = result else { panic!("expected an ExecResponse, got {result:?}") };
    assert!(size as u64 <= max_payload, "reply of {size} bytes exceeds max_payload {max_payload}");
    assert_eq!(r.exit_code, 0);
    assert!(r.stdout_truncated, "{:?}", (r.stdout.len(), r.stdout_total_bytes));
    assert_eq!(r.stdout_total_bytes, 5 + 3_000_000 + 5);
    assert!(r.stdout.len() < 3_000_000);
    assert!(r.stdout.starts_with(b"HEAD\ny\ny\n"), "the head is kept");
    assert!(r.stdout.ends_with(b"y\ny\nTAIL\n"), "the tail is kept");
    assert!(!r.stderr_truncated);
}

#[tokio::test]
async fn both_streams_are_shaped_to_fit_a_small_max_payload() {
    let nats = Nats::start_with("max_payload: 65536").await;
    let agent = Agent::start(&nats).await;
    assert_eq!(agent.hello.capabilities.as_ref().expect("capabilities").max_payload, 65536);

    let req = op::sh("echo OUT; yes | head -c 2000000; echo END; echo ERR >&2; yes e | head -c 2000000 >&2");
    let (size, result) = agent.call_sized(Op::Exec(req)).await;
    let Ok(Reply::Exec(r)) = result else { panic!("expected an ExecResponse, got {result:?}") };
    assert!(size <= 65536, "reply of {size} bytes exceeds max_payload 65536");
    assert!(r.stdout_truncated && r.stderr_truncated, "{r:?}");
    assert_eq!(r.stdout_total_bytes, 4 + 2_000_000 + 4);
    assert_eq!(r.stderr_total_bytes, 4 + 2_000_000);
    assert!(r.stdout.starts_with(b"OUT\n") && r.stdout.ends_with(b"END\n"));
    assert!(r.stderr.starts_with(b"ERR\n") && r.stderr.ends_with(b"e\ne\n"));
}

#[tokio::test]
async fn the_agent_answers_a_ping_while_a_command_runs() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let marker = agent.root.join("started");

    let long = async {
        let r = run(&agent, op::sh("echo go > started; sleep 5")).await;
        (Instant::now(), r)
    };
    let ping = async {
        written(&marker).await;
        let pong = agent.call(op::ping(42)).await;
        (Instant::now(), pong)
    };
    let ((exec_done, r), (ping_done, pong)) = tokio::join!(long, ping);

    assert!(matches!(pong, Ok(Reply::Ping(ref p)) if p.nonce == 42), "{pong:?}");
    assert_eq!(r.exit_code, 0);
    assert!(ping_done < exec_done, "the ping waited for the running exec");
}
