//! What a confined command cannot do even with the machine's own user's rights, end to end
//! through NATS against the real agent, nats-server and relay: connect to the agent's NATS
//! server or relay (a listener of its own on loopback it can reach), plant a setuid or setgid
//! program or enter a user namespace (while ordinary modes, threads, pipelines and child
//! processes work), or read what any other user of the machine could not, even under a root
//! agent. Each is checked against an agent where it does not hold (a flag, or
//! `--whole-machine`), so the test shows it would notice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, op, pb};

async fn sh(agent: &Agent, script: &str) -> pb::ExecResponse {
    match agent.call(Op::Exec(op::sh(script))).await {
        Ok(Reply::Exec(r)) => r,
        other => {
            panic!("exec {script:?}: expected an ExecResponse, got {other:?}\nagent log:\n{}", agent.log())
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Landlock ABI the running kernel offers (0 without Landlock).
fn kernel_landlock_abi() -> u32 {
    // SAFETY: the version query passes a null attribute and size 0; it touches no memory.
    let v = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, 1u32)
    };
    u32::try_from(v).unwrap_or(0)
}

fn with_args(args: &[&str], relay_url: Option<String>) -> AgentOpts {
    AgentOpts { args: args.iter().map(|a| a.to_string()).collect(), relay_url, ..Default::default() }
}

/// A python one-liner printing, for each `name=port`, `name ok` or `name <errno>` of a TCP
/// connect to 127.0.0.1.
fn connect_script(ports: &[(&str, u16)]) -> String {
    let targets: Vec<String> = ports.iter().map(|(name, port)| format!("('{name}', {port})")).collect();
    format!(
        "python3 -c \"
import socket
for name, port in [{}]:
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', port)); print(name, 'ok')
    except OSError as e:
        print(name, e.errno)
\"",
        targets.join(", ")
    )
}

/// A relay, a nats-server and another loopback listener, and the script that tries all three.
async fn servers_and_connects() -> (tether_tests::relay::Relay, Nats, std::net::TcpListener, String) {
    let relay = tether_tests::relay::Relay::start(&[]).await;
    let nats = Nats::start().await;
    // Connects complete against the listen backlog: nothing needs to accept them.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let other_port = other.local_addr().expect("its address").port();
    let script = connect_script(&[("nats", nats.port), ("relay", relay.addr.port()), ("other", other_port)]);
    (relay, nats, other, script)
}

#[tokio::test]
async fn a_confined_command_cannot_connect_to_the_agents_nats_or_relay_but_to_other_ports() {
    assert!(kernel_landlock_abi() >= 4, "this machine is expected to offer Landlock TCP rules (ABI 4)");
    let (relay, nats, _other, script) = servers_and_connects().await;
    let agent = Agent::start_with(&nats, with_args(&[], Some(relay.stream_url()))).await;
    let r = sh(&agent, &script).await;
    let eacces = libc::EACCES;
    assert_eq!(text(&r.stdout), format!("nats {eacces}\nrelay {eacces}\nother ok\n"), "{}", text(&r.stderr));
    assert!(agent.caps().network_confined && agent.caps().commands_confined, "{:?}", agent.caps());
    drop(agent);

    let open =
        Agent::start_with(&nats, with_args(&["--allow-agent-server-ports"], Some(relay.stream_url()))).await;
    assert!(!open.caps().network_confined && open.caps().commands_confined, "{:?}", open.caps());
    let r = sh(&open, &script).await;
    assert_eq!(text(&r.stdout), "nats ok\nrelay ok\nother ok\n", "{}", text(&r.stderr));
}

/// Every confined child gets the network layer, not only a one-shot exec's: a streamed command
/// and a terminal's shell (which has a file-system ruleset of its own) are held to it too.
#[tokio::test]
async fn streamed_commands_and_terminals_cannot_connect_to_the_agents_ports_either() {
    use tether_tests::relay::{Seen, claims_for, collect_until, watch};
    let (relay, nats, _other, script) = servers_and_connects().await;
    let agent = Agent::start_with(&nats, with_args(&[], Some(relay.stream_url()))).await;
    let expected = format!("nats {e}\nrelay {e}\nother ok\n", e = libc::EACCES);

    let c = tether_tests::tree::client(&nats, &agent, "hardening", 0).await;
    c.exec_start(tether_tests::execs::start_sh("connects", &script)).await.expect("exec_start");
    let streamed = tether_tests::execs::collect(&c, "connects", std::time::Duration::from_secs(30)).await;
    assert_eq!(text(&streamed.stdout()), expected);

    let open = pb::PtyOpenRequest { command: vec!["sh".into(), "-c".into(), script], ..Default::default() };
    let pty = match agent.call(Op::PtyOpen(open)).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}"),
    };
    let channel = pty.channel.expect("a channel");
    let mut viewer =
        watch(&relay, &channel, &claims_for(&channel, "v", tether_proto::token::ViewerMode::View)).await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, std::time::Duration::from_secs(30), |_| false).await;
    assert_eq!(seen.text().replace("\r\n", "\n"), expected);
}

#[tokio::test]
async fn a_confined_command_cannot_set_setuid_or_setgid_bits_nor_enter_a_user_namespace() {
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, AgentOpts::default()).await;
    let attempts = "touch f && chmod 644 f; \
        for m in u+s g+s 4755 2755; do chmod $m f 2>/dev/null && echo chmod-$m ok || echo chmod-$m refused; done; \
        python3 -c \"
import os
for mode in (0o4755, 0o2755):
    try:
        os.chmod('f', mode); print('os.chmod', oct(mode), 'ok')
    except OSError as e:
        print('os.chmod', oct(mode), e.errno)
try:
    os.close(os.open('g', os.O_CREAT | os.O_WRONLY, 0o4755)); print('create-setuid ok')
except OSError as e:
    print('create-setuid', e.errno)
\"; \
        unshare -U true 2>/dev/null && echo unshare ok || echo unshare refused; \
        python3 -c \"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('unshare(CLONE_NEWUSER)', 'ok' if libc.unshare(0x10000000) == 0 else ctypes.get_errno())
\"; \
        chmod 755 f && stat -c 'mode %a' f";
    let r = sh(&agent, attempts).await;
    let eperm = libc::EPERM;
    assert_eq!(
        text(&r.stdout),
        format!(
            "chmod-u+s refused\nchmod-g+s refused\nchmod-4755 refused\nchmod-2755 refused\n\
             os.chmod 0o4755 {eperm}\nos.chmod 0o2755 {eperm}\ncreate-setuid {eperm}\n\
             unshare refused\nunshare(CLONE_NEWUSER) {eperm}\nmode 755\n"
        ),
        "{}",
        text(&r.stderr)
    );
    assert!(!agent.root.join("g").exists(), "the setuid file was created");

    // What still works: threads, a pipeline, child processes, and raw sockets stay closed.
    let ordinary = "seq 1 2000 | sort -rn | head -1; \
        python3 -c \"
import socket, subprocess, threading
seen = []
threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print('threads', len(seen))
print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw ok')
except OSError as e:
    print('raw', e.errno)
\"";
    let r = sh(&agent, ordinary).await;
    assert_eq!(text(&r.stdout), format!("2000\nthreads 8\nchild\nraw {eperm}\n"), "{}", text(&r.stderr));

    if nix::unistd::geteuid().is_root() {
        let whole = Agent::start_with(&nats, with_args(&["--whole-machine"], None)).await;
        let r =
            sh(&whole, "touch f && chmod u+s f && stat -c %a f && unshare -U true && echo unshared").await;
        assert_eq!(
            text(&r.stdout),
            "4644\nunshared\n",
            "a root agent's own commands can: {}",
            text(&r.stderr)
        );
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn a_confined_command_reads_in_granted_locations_only_what_others_could() {
    let nats = Nats::start().await;
    let shared = tempfile::tempdir().expect("a directory to share");
    let dir = shared.path().canonicalize().expect("canonical");
    for (name, mode) in [("open.txt", 0o644), ("private.txt", 0o600), ("group.txt", 0o640)] {
        std::fs::write(dir.join(name), name).expect("write");
        chmod(&dir.join(name), mode);
    }
    std::fs::create_dir(dir.join("closed")).expect("mkdir");
    std::fs::write(dir.join("closed/inside.txt"), "inside").expect("write");
    chmod(&dir.join("closed/inside.txt"), 0o644);
    chmod(&dir.join("closed"), 0o700);
    // The named location itself may be private (a tempdir is 0700): it is granted as named.
    let script = format!(
        "cd '{}'; for f in open.txt private.txt group.txt closed/inside.txt; do \
         cat $f >/dev/null 2>&1 && echo $f read || echo $f refused; done; \
         ls closed >/dev/null 2>&1 && echo closed listed || echo closed refused; \
         head -c1 /etc/shadow >/dev/null 2>&1 && echo shadow read || echo shadow refused; \
         if [ -d /etc/ssl/private ]; then ls /etc/ssl/private >/dev/null 2>&1 && echo ssl-private listed; fi; \
         cat /etc/passwd >/dev/null && echo passwd read",
        dir.display()
    );
    let confine_read = format!("--confine-read={}", dir.display());
    let agent = Agent::start_with(&nats, with_args(&[&confine_read], None)).await;
    let r = sh(&agent, &script).await;
    assert_eq!(
        text(&r.stdout),
        "open.txt read\nprivate.txt refused\ngroup.txt refused\nclosed/inside.txt refused\nclosed refused\n\
         shadow refused\npasswd read\n",
        "{}\nagent log:\n{}",
        text(&r.stderr),
        agent.log()
    );
    // The system's own private keys, named one by one (listing their directory is refused).
    let keys: Vec<String> = std::fs::read_dir("/etc/ssl/private")
        .map(|d| d.flatten().map(|e| e.path().display().to_string()).collect())
        .unwrap_or_default();
    for key in &keys {
        let r = sh(&agent, &format!("cat '{key}'")).await;
        assert!(r.exit_code != 0 && text(&r.stderr).contains("Permission denied"), "{key}: {r:?}");
    }

    let whole = Agent::start_with(&nats, with_args(&["--whole-machine"], None)).await;
    let r = sh(&whole, &script).await;
    assert!(
        text(&r.stdout).starts_with(
            "open.txt read\nprivate.txt read\ngroup.txt read\nclosed/inside.txt read\nclosed listed\n"
        ),
        "the user's own commands read the user's files: {}",
        text(&r.stdout)
    );
}
