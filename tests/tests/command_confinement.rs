//! Confined mode confines commands too, end to end through NATS: a command run by exec in a
//! confined agent is held by Landlock to the workspace root and its private TMPDIR (it cannot
//! read a key in a fake home directory, nor write beside the root or in /tmp), while the
//! ordinary tools (ls, sh, python3, git) work inside the root; it cannot signal the agent,
//! connect to a Unix socket outside the root, nor open a terminal that is not its own, and
//! does not inherit the addresses of the user's sockets; Hello says so truthfully; with
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
    let elsewhere = tempfile::tempdir().expect("a directory outside the root");
    let repo = elsewhere.path().join("repo");
    let script = format!("git init -q '{0}' && printf 'written outside' > '{0}/notes.txt'", repo.display());
    let r = run(&agent, op::sh(&script)).await;
    assert_eq!(r.exit_code, 0, "git init and a write outside the root: {}", text(&r.stderr));
    assert!(repo.join(".git/HEAD").is_file(), "git init made no repository in {}", repo.display());
    let written = std::fs::read_to_string(repo.join("notes.txt")).expect("the file written outside the root");
    assert_eq!(written, "written outside");
    let r = run(&agent, op::sh("printf %s \"${TMPDIR-}\"")).await;
    assert!(!Path::new(&text(&r.stdout)).starts_with(&agent.state_dir), "no private TMPDIR: {r:?}");
}

/// Types `line` into a fresh PTY shell of `agent` and returns the terminal's output up to the
/// marker the line prints last.
async fn in_a_terminal(relay: &tether_tests::relay::Relay, agent: &Agent, line: &str) -> String {
    in_a_terminal_running(relay, agent, vec!["sh".into()], line).await
}

/// [`in_a_terminal`] with the terminal's `command` (empty: the login shell).
async fn in_a_terminal_running(
    relay: &tether_tests::relay::Relay,
    agent: &Agent,
    command: Vec<String>,
    line: &str,
) -> String {
    use tether_tests::relay::{Seen, claims_for, collect_until, shows_line, watch};
    let req = pb::PtyOpenRequest { command, ..Default::default() };
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

#[tokio::test]
async fn a_login_shell_out_of_reach_is_replaced_by_the_same_shell_from_the_system() {
    let relay = tether_tests::relay::Relay::start(&[]).await;
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let own_bash = home.path().join("bin/bash");
    std::fs::create_dir(home.path().join("bin")).expect("mkdir ~/bin");
    std::fs::copy("/bin/bash", &own_bash).expect("a bash of the user's own");
    let opts = |args: &[&str]| {
        let mut opts = AgentOpts { relay_url: Some(relay.stream_url()), ..home.opts(args) };
        opts.env.push(("SHELL".into(), own_bash.display().to_string()));
        opts
    };

    let agent = Agent::start_with(&nats, opts(&[])).await;
    let shown = in_a_terminal_running(&relay, &agent, vec![], "echo shell=$SHELL").await;
    // The typed line shows `shell=$SHELL`; the shell's answer is the `shell=/...` one.
    let shell = shown.lines().find_map(|l| l.find("shell=/").map(|i| l[i + 6..].trim().to_owned()));
    let shell = shell.unwrap_or_else(|| panic!("the login shell did not run: {shown}\n{}", agent.log()));
    assert!(!shell.starts_with(&home.path().display().to_string()), "{shell}");
    assert!(shell.ends_with("/bash"), "the same shell from the system: {shell}");
    drop(agent);

    let whole = Agent::start_with(&nats, opts(&["--whole-machine"])).await;
    let shown = in_a_terminal_running(&relay, &whole, vec![], "echo shell=$SHELL").await;
    assert!(shown.contains(&format!("shell={}", own_bash.display())), "{shown}");
}

/// Runs `script` with `sh -c` in `agent`, as exec does with `shell`.
async fn sh(agent: &Agent, script: &str) -> pb::ExecResponse {
    run(agent, op::sh(script)).await
}

#[tokio::test]
async fn a_confined_command_cannot_signal_the_agent_but_can_signal_its_own_children() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let agent = Agent::start_with(&nats, home.opts(&[])).await;
    assert!(kernel_landlock_abi() >= 6, "this machine is expected to offer Landlock scopes (ABI 6)");
    assert!(agent.caps().commands_scoped, "{:?}", agent.caps());

    let kill_agent = format!("kill -0 {}", agent.proc.pid());
    let r = sh(&agent, &kill_agent).await;
    assert_ne!(r.exit_code, 0, "a confined command signalled the agent: {r:?}");
    assert!(text(&r.stderr).contains("Operation not permitted"), "stderr {:?}", text(&r.stderr));
    let r = sh(&agent, "sleep 30 & kill $! && wait $!; echo status=$?").await;
    assert_eq!(text(&r.stdout), format!("status={}\n", 128 + libc::SIGTERM), "{}", text(&r.stderr));

    let whole = Agent::start_with(&nats, home.opts(&["--whole-machine"])).await;
    assert!(!whole.caps().commands_scoped, "{:?}", whole.caps());
    let r = sh(&whole, &format!("kill -0 {}", whole.proc.pid())).await;
    assert_eq!(r.exit_code, 0, "with --whole-machine a command signals what the user can: {r:?}");
}

#[tokio::test]
async fn a_confined_command_holds_no_capabilities_even_under_a_root_agent() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let caps_of = async |agent: &Agent| {
        let r = sh(agent, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status").await;
        assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
        text(&r.stdout)
    };
    let agent = Agent::start_with(&nats, home.opts(&[])).await;
    let confined = caps_of(&agent).await;
    assert_eq!(confined.lines().count(), 5, "{confined}");
    for line in confined.lines() {
        assert!(line.ends_with("0000000000000000"), "a confined command holds capabilities: {line}");
    }
    // What that means: giving a file away needs CAP_CHOWN, which uid 0 no longer brings.
    let r = sh(&agent, "python3 -c 'import os; os.chown(\".\", 12345, -1)'").await;
    assert_ne!(r.exit_code, 0, "chown to another user needs CAP_CHOWN: {r:?}");
    assert!(text(&r.stderr).contains("Operation not permitted"), "{}", text(&r.stderr));

    if nix::unistd::geteuid().is_root() {
        let whole = Agent::start_with(&nats, home.opts(&["--whole-machine"])).await;
        let unconfined = caps_of(&whole).await;
        assert!(
            !unconfined.contains("CapEff:\t0000000000000000"),
            "root's own commands keep root: {unconfined}"
        );
    }
}

/// A Unix socket listening in a directory outside any agent's root, accepting in a thread and
/// counting the connections it accepted.
struct Listening {
    _dir: tempfile::TempDir,
    path: PathBuf,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Listening {
    fn new() -> Listening {
        let dir = tempfile::tempdir().expect("socket dir");
        let path = dir.path().canonicalize().expect("canonical").join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind the Unix socket");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Listening { _dir: dir, path, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_confined_command_cannot_reach_a_unix_socket_outside_the_root_nor_find_its_address() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let socket = Listening::new();
    let address = socket.path.display().to_string();
    let with_sockets = |args: &[&str]| {
        let mut opts = home.opts(args);
        opts.env.push(("SSH_AUTH_SOCK".into(), address.clone()));
        opts.env.push(("DBUS_SESSION_BUS_ADDRESS".into(), format!("unix:path={address}")));
        opts
    };
    let connect = format!(
        "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{address}'); print('connected')\""
    );
    let pair = "python3 -c \"import socket; a, b = socket.socketpair(); a.sendall(b'through the pair'); print(b.recv(64).decode())\"";
    let addresses = "env | grep -E '^(SSH_AUTH_SOCK|DBUS_SESSION_BUS_ADDRESS)=' | cut -d= -f1 | sort";

    let agent = Agent::start_with(&nats, with_sockets(&[])).await;
    let expected = if kernel_landlock_abi() >= 9 {
        pb::UnixSocketConfinement::Landlock
    } else {
        pb::UnixSocketConfinement::Seccomp
    };
    assert_eq!(agent.caps().unix_sockets, expected as i32, "{:?}", agent.caps());
    let r = sh(&agent, &connect).await;
    assert_denied("connecting to a Unix socket outside the root", &r);
    assert!(!text(&r.stdout).contains("connected"), "{r:?}");
    let r = sh(&agent, pair).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "through the pair\n".to_owned()), "{}", text(&r.stderr));
    let r = sh(&agent, addresses).await;
    assert_eq!(text(&r.stdout), "", "socket addresses reached a confined command");
    assert_eq!(socket.accepted(), 0, "a confined command connected to the socket");

    let whole = Agent::start_with(&nats, with_sockets(&["--whole-machine"])).await;
    assert_eq!(whole.caps().unix_sockets, pb::UnixSocketConfinement::None as i32, "{:?}", whole.caps());
    let r = sh(&whole, &connect).await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "connected\n".to_owned()), "{}", text(&r.stderr));
    let r = sh(&whole, addresses).await;
    assert_eq!(text(&r.stdout), "DBUS_SESSION_BUS_ADDRESS\nSSH_AUTH_SOCK\n", "{}", text(&r.stderr));
    tether_tests::eventually("the whole-machine connection is accepted", || socket.accepted() == 1).await;
}

/// A terminal the test holds open, as a user's shell would: its master and its device path.
struct OtherTerminal {
    master: std::os::fd::OwnedFd,
    _slave: std::os::fd::OwnedFd,
    path: String,
}

impl OtherTerminal {
    fn open() -> OtherTerminal {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(&pty.slave).expect("ttyname").display().to_string();
        let flags = nix::fcntl::OFlag::from_bits_truncate(
            nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL"),
        );
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK))
            .expect("O_NONBLOCK");
        OtherTerminal { master: pty.master, _slave: pty.slave, path }
    }

    /// What reached the terminal so far.
    fn shown(&self) -> String {
        let mut buf = [0u8; 4096];
        match nix::unistd::read(&self.master, &mut buf) {
            Ok(n) => text(&buf[..n]),
            Err(_) => String::new(),
        }
    }
}

#[tokio::test]
async fn a_confined_command_cannot_open_another_terminal() {
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let other = OtherTerminal::open();
    let write = format!("echo typed-by-a-command > {}", other.path);

    let agent = Agent::start_with(&nats, home.opts(&[])).await;
    let r = sh(&agent, &write).await;
    assert_denied("writing to another terminal", &r);
    let r = sh(&agent, &format!("head -c 1 {}", other.path)).await;
    assert_denied("reading another terminal", &r);
    assert!(!other.shown().contains("typed-by-a-command"), "a confined command wrote to the terminal");

    let whole = Agent::start_with(&nats, home.opts(&["--whole-machine"])).await;
    let r = sh(&whole, &write).await;
    assert_eq!(r.exit_code, 0, "with --whole-machine a command opens the user's terminals: {r:?}");
    assert!(other.shown().contains("typed-by-a-command"), "the write reached the terminal");
}

#[tokio::test]
async fn a_confined_terminal_can_open_its_own_device_and_no_other() {
    let relay = tether_tests::relay::Relay::start(&[]).await;
    let nats = Nats::start().await;
    let home = FakeHome::new();
    let other = OtherTerminal::open();
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..home.opts(&[]) };
    let agent = Agent::start_with(&nats, opts).await;

    let line = format!(
        "echo own-$((1+1))-ok > $(tty); echo typed-by-a-terminal > {} || echo other-$((2+2))-refused",
        other.path
    );
    let shown = in_a_terminal(&relay, &agent, &line).await;
    assert!(shown.contains("own-2-ok"), "the shell could not open its own terminal: {shown}");
    assert!(shown.contains("other-4-refused") && shown.contains("Permission denied"), "{shown}");
    assert!(!other.shown().contains("typed-by-a-terminal"), "a confined terminal wrote to another");
}
