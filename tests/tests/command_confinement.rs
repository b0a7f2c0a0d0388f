//! Confined mode confines commands too, end to end through NATS: a command run by exec in a
//! confined agent is held by Landlock to the workspace root and its private TMPDIR (it cannot
//! read a key in a fake home directory, nor write beside the root or in /tmp), while the
//! ordinary tools (ls, sh, python3, git) work inside the root; Hello says so truthfully; with
//! `--whole-machine` the same commands reach what the user can.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, op, pb};

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY----- fake";

/// A fake home directory outside the workspace root, holding `~/.ssh/id_ed25519`, and a
/// directory beside it where nothing may be written.
struct FakeHome {
    dir: tempfile::TempDir,
}

impl FakeHome {
    fn new() -> FakeHome {
        let dir = tempfile::tempdir().expect("fake home");
        std::fs::create_dir(dir.path().join(".ssh")).expect("mkdir .ssh");
        std::fs::write(dir.path().join(".ssh/id_ed25519"), KEY).expect("write the fake key");
        FakeHome { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical fake home")
    }

    fn key(&self) -> PathBuf {
        self.path().join(".ssh/id_ed25519")
    }

    fn opts(&self, args: &[&str]) -> AgentOpts {
        AgentOpts {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("HOME".into(), self.path().display().to_string())],
            ..Default::default()
        }
    }
}

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

/// Fails unless `r` is a command refused by the kernel with EACCES.
fn assert_denied(what: &str, r: &pb::ExecResponse) {
    assert_ne!(r.exit_code, 0, "{what} succeeded in a confined agent: {r:?}");
    assert!(text(&r.stderr).contains("Permission denied"), "{what}: stderr {:?}", text(&r.stderr));
}

/// The Landlock ABI the running kernel offers (0 without Landlock).
fn kernel_landlock_abi() -> u32 {
    // SAFETY: the version query passes a null attribute and size 0; it touches no memory.
    let v = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, 1u32)
    };
    u32::try_from(v).unwrap_or(0)
}

#[tokio::test]
async fn a_confined_command_cannot_read_the_home_directory_or_write_outside_the_root() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let agent = Agent::start_with(&nats, home.opts(&[])).await;
    let caps = agent.caps();
    assert!(caps.commands_confined, "{caps:?}");
    assert!(kernel_landlock_abi() > 0, "this machine is expected to offer Landlock");
    assert_eq!(caps.landlock_abi, kernel_landlock_abi().min(10), "{caps:?}");
    assert!(!caps.consented_whole_machine && !caps.unconfined_commands_allowed, "{caps:?}");
    assert_eq!(caps.commands_unconfined_reason, "");

    let key = home.key().display().to_string();
    let ssh_dir = home.path().join(".ssh").display().to_string();
    for req in [op::exec(&["cat", &key]), op::sh("cat ~/.ssh/id_ed25519"), op::exec(&["ls", "-a", &ssh_dir])]
    {
        let r = run(&agent, req.clone()).await;
        assert_denied(&format!("{:?}", req.command), &r);
        assert!(!text(&r.stdout).contains(KEY), "the key leaked: {r:?}");
    }
    let r = run(&agent, op::sh("head -c 4 /etc/shadow")).await;
    assert_denied("reading /etc/shadow", &r);

    let planted = home.path().join("planted");
    let r = run(&agent, op::sh(&format!("echo x > {}", planted.display()))).await;
    assert_denied("writing beside the root", &r);
    let in_tmp = PathBuf::from(format!("/tmp/tether-confined-{}", std::process::id()));
    let r = run(&agent, op::exec(&["touch", &in_tmp.display().to_string()])).await;
    assert_denied("writing in /tmp", &r);
    assert!(!planted.exists() && !in_tmp.exists(), "a confined command created a file outside the root");

    // The agent's own file ops are confined by the path layer as before.
    assert!(agent.call(op::read(&key)).await.is_err());
}

#[tokio::test]
async fn ordinary_tools_work_inside_the_root() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let agent = Agent::start_with(&nats, home.opts(&[])).await;

    let r = run(&agent, op::exec(&["ls", "/usr/bin"])).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(text(&r.stdout).lines().any(|l| l == "sh"), "ls /usr/bin lists sh");

    let r = run(&agent, op::exec(&["sh", "-c", "echo $((6 * 7)) > answer; cat answer"])).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "42\n".to_owned()), "{r:?}");

    let script = "import json, pathlib, sys; pathlib.Path('py.json').write_text(json.dumps(sys.version_info[:2])); print(sum(range(10)))";
    let r = run(&agent, op::sh(&format!("python3 -c \"{script}\""))).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "45\n".to_owned()), "python3: {}", text(&r.stderr));
    assert!(agent.root.join("py.json").exists());

    let git = "git init -q repo && cd repo && echo hi > a && git add a \
               && git -c user.name=t -c user.email=t@example.invalid commit -qm first && git log --format=%s";
    let r = run(&agent, op::sh(git)).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "first\n".to_owned()), "git: {}", text(&r.stderr));
    assert!(agent.root.join("repo/.git/HEAD").is_file());
}

#[tokio::test]
async fn tmpdir_is_private_writable_and_removed_when_the_agent_stops() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let mut agent = Agent::start_with(&nats, home.opts(&[])).await;

    let script = "printf '%s\\n' \"$TMPDIR\"; echo scratch > \"$TMPDIR/f\" && cat \"$TMPDIR/f\"; \
                  python3 -c 'import tempfile; print(tempfile.mkstemp()[1])'";
    let r = run(&agent, op::sh(script)).await;
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let out = text(&r.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let tmpdir = PathBuf::from(lines[0]);
    assert!(tmpdir.starts_with(&agent.state_dir), "TMPDIR {} is the agent's own", tmpdir.display());
    assert_eq!(lines[1], "scratch");
    assert!(Path::new(lines[2]).starts_with(&tmpdir), "python's tempfile uses it: {}", lines[2]);
    let mode = std::fs::metadata(&tmpdir).expect("TMPDIR exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "TMPDIR must be private");

    agent.proc.stop(tether_tests::WAIT);
    assert!(!tmpdir.exists(), "the agent removes its TMPDIR when it stops");
}

#[tokio::test]
async fn allowing_unconfined_commands_does_not_weaken_a_working_sandbox() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let agent = Agent::start_with(&nats, home.opts(&["--allow-unconfined-commands"])).await;
    let caps = agent.caps();
    assert!(caps.unconfined_commands_allowed && caps.commands_confined, "{caps:?}");
    let r = run(&agent, op::exec(&["cat", &home.key().display().to_string()])).await;
    assert_denied("reading the key", &r);
}

#[tokio::test]
async fn confine_read_and_write_widen_the_sandbox() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let shared = tempfile::tempdir().expect("shared dir");
    let shared = shared.path().canonicalize().expect("canonical");
    std::fs::write(shared.join("data.txt"), "shared data").expect("write shared data");
    let out = tempfile::tempdir().expect("output dir");
    let out = out.path().canonicalize().expect("canonical");
    let confine_read = format!("--confine-read={}", shared.display());
    let confine_write = format!("--confine-write={}", out.display());
    let agent = Agent::start_with(&nats, home.opts(&[&confine_read, &confine_write])).await;

    let r = run(&agent, op::exec(&["cat", &shared.join("data.txt").display().to_string()])).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "shared data".to_owned()), "{r:?}");
    let r = run(&agent, op::exec(&["touch", &shared.join("new").display().to_string()])).await;
    assert_denied("writing in a read-only addition", &r);
    let r = run(&agent, op::exec(&["touch", &out.join("new").display().to_string()])).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(out.join("new").exists());
    let r = run(&agent, op::exec(&["cat", &home.key().display().to_string()])).await;
    assert_denied("the rest stays out of reach", &r);
}

#[tokio::test]
async fn whole_machine_commands_reach_what_the_user_can() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let agent = Agent::start_with(&nats, home.opts(&["--whole-machine"])).await;
    let caps = agent.caps();
    assert!(caps.consented_whole_machine && !caps.commands_confined, "{caps:?}");
    assert_eq!(caps.landlock_abi, 0);
    assert!(caps.commands_unconfined_reason.contains("whole-machine"), "{caps:?}");

    let r = run(&agent, op::sh("cat ~/.ssh/id_ed25519")).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, KEY.to_owned()), "{}", text(&r.stderr));
    let planted = home.path().join("planted");
    let r = run(&agent, op::sh(&format!("echo x > {}", planted.display()))).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(planted.exists());
    let r = run(
        &agent,
        op::sh("ls /usr/bin | grep -cx sh; python3 -c 'print(1)'; git --version >/dev/null && echo git"),
    )
    .await;
    assert_eq!(text(&r.stdout), "1\n1\ngit\n", "{}", text(&r.stderr));
    let r = run(&agent, op::sh("printf %s \"${TMPDIR-}\"")).await;
    assert!(!Path::new(&text(&r.stdout)).starts_with(&agent.state_dir), "no private TMPDIR: {r:?}");
}

/// Types `line` into a fresh PTY shell of `agent` and returns the terminal's output up to the
/// marker the line prints last.
async fn in_a_terminal(relay: &tether_tests::relay::Relay, agent: &Agent, line: &str) -> String {
    use tether_tests::relay::{Seen, claims_for, collect_until, shows_line, watch};
    let req = pb::PtyOpenRequest { command: vec!["sh".into()], ..Default::default() };
    let pty = match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open: {other:?}\nagent log:\n{}", agent.log()),
    };
    let channel = pty.channel.expect("channel");
    let claims = claims_for(&channel, "v", tether_proto::token::ViewerMode::View);
    let mut viewer = watch(relay, &channel, &claims).await;
    viewer.send(format!("{line}; echo; echo end-of-$((20+1))\n")).await;
    let mut seen = Seen::default();
    let within = std::time::Duration::from_secs(20);
    collect_until(&mut viewer, &mut seen, within, |s| shows_line(&s.text(), "end-of-21")).await;
    seen.text()
}

#[tokio::test]
async fn a_confined_terminal_cannot_read_the_home_directory_either() {
    let relay = tether_tests::relay::Relay::start(&[]).await;
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let with_relay = |args: &[&str]| AgentOpts { relay_url: Some(relay.stream_url()), ..home.opts(args) };

    let agent = Agent::start_with(&nats, with_relay(&[])).await;
    let shown = in_a_terminal(&relay, &agent, &format!("cat '{}'", home.key().display())).await;
    assert!(shown.contains("Permission denied"), "{shown}");
    assert!(!shown.contains(KEY), "the key leaked into the terminal: {shown}");
    drop(agent);

    let agent = Agent::start_with(&nats, with_relay(&["--whole-machine"])).await;
    let shown = in_a_terminal(&relay, &agent, &format!("cat '{}'", home.key().display())).await;
    assert!(shown.contains(KEY), "with --whole-machine the terminal reads what the user can: {shown}");
}
