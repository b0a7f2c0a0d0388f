//! Real-process tests of the exec op.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use prost::Message;
use tether_proto::pb::ErrorCode;

use super::*;

const MIB: usize = 1 << 20;

fn launcher() -> Launcher {
    Launcher::from_env(std::env::vars_os(), &[] as &[&str])
}

fn argv_req(command: &[&str]) -> pb::ExecRequest {
    pb::ExecRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn sh(script: &str) -> pb::ExecRequest {
    pb::ExecRequest { command: vec![script.to_owned()], shell: true, ..Default::default() }
}

async fn run(req: pb::ExecRequest) -> OpResult<pb::ExecResponse> {
    run_with(req, MIB).await
}

async fn run_with(req: pb::ExecRequest, budget: usize) -> OpResult<pb::ExecResponse> {
    let launcher = launcher();
    let call =
        exec(&launcher, CommandLimits::none(), PathBuf::from("/"), req, budget, CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(20), call).await.expect("exec hung")
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).expect("utf-8 output")
}

/// Alive and not a zombie (a dead child of a non-reaping init stays a zombie).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

async fn gone_within(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

async fn read_pid(path: &Path) -> i32 {
    for _ in 0..250 {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pid in {}", path.display());
}

#[tokio::test]
async fn argv_is_passed_verbatim() {
    let r = run(argv_req(&["echo", "a  b", "$HOME", "c"])).await.unwrap();
    assert_eq!(text(&r.stdout), "a  b $HOME c\n");
    assert_eq!((r.exit_code, r.signal, r.timed_out), (0, 0, false));
    assert_eq!(r.stdout_total_bytes, 13);
    assert!(!r.stdout_truncated && !r.stderr_truncated);
}

#[tokio::test]
async fn shell_joins_with_spaces_and_sees_env() {
    let mut req = pb::ExecRequest {
        command: ["echo", "$FOO", "|", "tr", "a-z", "A-Z"].map(String::from).to_vec(),
        shell: true,
        ..Default::default()
    };
    req.env.insert("FOO".into(), "bar".into());
    let r = run(req).await.unwrap();
    assert_eq!(text(&r.stdout), "BAR\n");
}

#[tokio::test]
async fn stdin_is_written_then_closed() {
    let mut req = argv_req(&["cat"]);
    req.stdin = Bytes::from_static(b"hello\n");
    assert_eq!(text(&run(req).await.unwrap().stdout), "hello\n");
    // Empty stdin: closed at once, so cat sees EOF instead of hanging.
    assert_eq!(run(argv_req(&["cat"])).await.unwrap().stdout.len(), 0);
    // More stdin than a pipe holds, to a reader and to a child that never reads.
    let big = Bytes::from(vec![b'x'; 3_000_000]);
    let mut req = argv_req(&["wc", "-c"]);
    req.stdin = big.clone();
    assert_eq!(text(&run(req).await.unwrap().stdout).trim(), "3000000");
    let mut req = argv_req(&["true"]);
    req.stdin = big;
    assert_eq!(run(req).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn exit_code_stderr_and_duration() {
    let r = run(sh("echo oops >&2; sleep 0.3; exit 7")).await.unwrap();
    assert_eq!((r.exit_code, r.signal, r.timed_out), (7, 0, false));
    assert_eq!(text(&r.stderr), "oops\n");
    assert!((300..3000).contains(&r.duration_ms), "{}", r.duration_ms);
}

#[tokio::test]
async fn killed_by_signal_reports_it() {
    let r = run(sh("kill -9 $$")).await.unwrap();
    assert_eq!((r.exit_code, r.signal, r.timed_out), (-1, 9, false));
}

#[tokio::test]
async fn timeout_kills_the_group_and_keeps_output() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut req = sh(&format!("echo before; sleep 100 & echo $! > {}; sleep 100", pidfile.display()));
    req.timeout_ms = 300;
    let start = Instant::now();
    let r = run(req).await.unwrap();
    assert!(start.elapsed() < TERM_GRACE, "SIGTERM alone should end it: {:?}", start.elapsed());
    assert_eq!((r.exit_code, r.timed_out), (-1, true));
    assert_eq!(r.signal, libc::SIGTERM);
    assert_eq!(text(&r.stdout), "before\n");
    let grandchild = read_pid(&pidfile).await;
    assert!(
        gone_within(grandchild, Duration::from_secs(2)).await,
        "grandchild {grandchild} survived the timeout"
    );
}

#[tokio::test]
async fn timeout_escalates_to_sigkill() {
    // An ignored SIGTERM is inherited by sleep too: only SIGKILL ends this group.
    let mut req = sh("trap '' TERM; echo started; sleep 100");
    req.timeout_ms = 200;
    let start = Instant::now();
    let r = run(req).await.unwrap();
    let took = start.elapsed();
    assert!(took >= TERM_GRACE && took < TERM_GRACE + Duration::from_secs(3), "{took:?}");
    assert_eq!((r.exit_code, r.timed_out, r.signal), (-1, true, libc::SIGKILL));
    assert_eq!(text(&r.stdout), "started\n");
}

#[tokio::test]
async fn nohup_background_survives_and_returns_at_once() {
    let start = Instant::now();
    let r = run(sh("nohup sleep 30 >/dev/null 2>&1 & echo $!")).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
    let pid: i32 = text(&r.stdout).trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let survived = alive(pid);
    kill(pid);
    assert!(survived, "background process {pid} was killed");
    assert_eq!(r.exit_code, 0);
}

#[tokio::test]
async fn background_holding_stdout_does_not_hold_the_reply() {
    let start = Instant::now();
    let r = run(sh("sleep 5 & echo $!")).await.unwrap();
    let took = start.elapsed();
    let pid: i32 = text(&r.stdout).trim().parse().unwrap();
    let survived = alive(pid);
    kill(pid);
    assert!(took >= DRAIN_GRACE && took < Duration::from_millis(1500), "{took:?}");
    assert!(survived, "background process {pid} was killed");
}

#[tokio::test]
async fn huge_output_is_shaped_to_the_budget() {
    let r = run_with(sh("printf START; head -c 3000000 /dev/zero; printf END; echo warn >&2"), MIB)
        .await
        .unwrap();
    assert!(r.encoded_len() <= MIB, "{}", r.encoded_len());
    assert!(r.encoded_len() > MIB - 200, "budget wasted: {}", r.encoded_len());
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert_eq!(r.stdout_total_bytes, 3_000_008);
    assert!(r.stdout.starts_with(b"START\0") && r.stdout.ends_with(b"\0END"));
    assert_eq!(text(&r.stderr), "warn\n");

    let r = run_with(sh("head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2"), MIB).await.unwrap();
    assert!(r.encoded_len() <= MIB);
    assert!(r.stdout_truncated && r.stderr_truncated);
    assert_eq!((r.stdout_total_bytes, r.stderr_total_bytes), (3_000_000, 2_000_000));
    assert!(r.stdout.len().abs_diff(r.stderr.len()) <= 1);
}

#[tokio::test]
async fn cancel_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let req = sh(&format!("sleep 100 & echo $! > {}; sleep 100", pidfile.display()));
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { exec(&launcher(), CommandLimits::none(), PathBuf::from("/"), req, MIB, cancel).await }
    });
    let grandchild = read_pid(&pidfile).await;
    cancel.cancel();
    let err = tokio::time::timeout(Duration::from_secs(3), task).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err, OpError::cancelled());
    assert!(
        gone_within(grandchild, Duration::from_secs(2)).await,
        "grandchild {grandchild} survived the cancel"
    );
}

#[tokio::test]
async fn empty_command_is_an_os_error() {
    for req in [argv_req(&[]), argv_req(&["", "x"]), sh("  ")] {
        let err = run(req).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Os);
        assert!(err.message.contains("empty"), "{}", err.message);
    }
}

#[tokio::test]
async fn missing_program_is_named() {
    let err = run(argv_req(&["no-such-program-xyz", "arg"])).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Os);
    assert_eq!(err.message, "executable not found: no-such-program-xyz");
    assert_eq!(err.detail["errno"], libc::ENOENT.to_string());
    assert_eq!(err.detail["program"], "no-such-program-xyz");
}

#[tokio::test]
async fn vanished_cwd_is_not_found_not_a_missing_program() {
    let cwd = PathBuf::from("/no/such/dir/for/exec");
    let err =
        exec(&launcher(), CommandLimits::none(), cwd, argv_req(&["true"]), MIB, CancellationToken::new())
            .await
            .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("working directory"), "{}", err.message);
}

#[tokio::test]
async fn agent_secrets_never_reach_the_child() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let vars = [
        ("PATH".into(), path),
        ("TETHER_NATS_TOKEN".into(), "tok-secret".into()),
        ("MY_RELAY_KEY".into(), "key-secret".into()),
        ("KEEP_ME".into(), "kept".into()),
    ];
    let launcher = Launcher::from_env(vars, &["MY_RELAY_KEY".to_owned()]);
    let mut req = argv_req(&["env"]);
    req.env = HashMap::from([("ADDED".to_owned(), "yes".to_owned())]);
    let r = exec(&launcher, CommandLimits::none(), PathBuf::from("/"), req, MIB, CancellationToken::new())
        .await
        .unwrap();
    let env = text(&r.stdout);
    assert!(env.contains("KEEP_ME=kept") && env.contains("ADDED=yes"), "{env}");
    assert!(!env.contains("secret"), "{env}");
}

#[tokio::test]
async fn invalid_env_name_is_refused() {
    let mut req = argv_req(&["true"]);
    req.env.insert("A=B".into(), "x".into());
    assert_eq!(run(req).await.unwrap_err().code, ErrorCode::Os);
}
