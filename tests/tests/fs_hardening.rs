//! The file API cannot be turned against the machine or the agent (issue 21, items 2, 3 and 10),
//! end to end through NATS against the real agent (as root, confined, its default): no setuid
//! or special bits through requested or copied modes; FIFOs, sockets and devices are refused
//! and listed as what they are, and never wedge the agent or its fence; a mutation that blocks
//! anyway (a frozen filesystem) answers TIMEOUT, lets its scope advance and never commits
//! afterwards; doubled slashes, contradictory or far-reaching positional writes, failed writes
//! into new files and in-place writes through hard links all behave.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, error_code, eventually, op, pb};

fn write_req(path: &str, content: &[u8]) -> pb::FsWriteRequest {
    pb::FsWriteRequest { path: path.into(), content: content.to_vec().into(), ..Default::default() }
}

fn write_mode(path: &str, mode: u32) -> Op {
    Op::FsWrite(pb::FsWriteRequest { mode, ..write_req(path, b"#!/bin/sh\nid\n") })
}

fn append(path: &str, content: &[u8]) -> Op {
    Op::FsWrite(pb::FsWriteRequest { append: true, ..write_req(path, content) })
}

fn write_at(path: &str, offset: u64, content: &[u8]) -> Op {
    Op::FsWrite(pb::FsWriteRequest { use_offset: true, offset, ..write_req(path, content) })
}

fn mkdir(path: &str, mode: u32) -> Op {
    Op::FsMkdir(pb::FsMkdirRequest { path: path.into(), parents: false, mode })
}

fn mv(from: &str, to: &str) -> Op {
    Op::FsMove(pb::FsMoveRequest { from: from.into(), to: to.into(), overwrite: true })
}

fn list(path: &str) -> Op {
    Op::FsList(pb::FsListRequest { path: path.into(), ..Default::default() })
}

/// The error `reply` must be, with `code`; the agent log on anything else.
fn refused(
    what: &str,
    reply: Result<Reply, pb::AgentError>,
    code: pb::ErrorCode,
    agent: &Agent,
) -> pb::AgentError {
    match reply {
        Err(e) if error_code(&e) == code => e,
        other => panic!("{what}: expected {code:?}, got {other:?}\nagent log:\n{}", agent.log()),
    }
}

/// `agent.call_fenced`, failing with the agent log when no reply comes within a few seconds
/// (a wedged agent would otherwise only show as a client timeout).
async fn fenced(agent: &Agent, op: Op, scope: &str, epoch: u32) -> Result<Reply, pb::AgentError> {
    let what = format!("{op:?}").chars().take(120).collect::<String>();
    tokio::time::timeout(std::time::Duration::from_secs(8), agent.call_fenced(op, scope, epoch))
        .await
        .unwrap_or_else(|_| panic!("no reply to {what}\nagent log:\n{}", agent.log()))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A filesystem mounted inside the root for the life of the value (unmounted on drop).
struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` at `dir`, or None (the test is skipped) where mounting is not allowed.
    fn tmpfs(dir: PathBuf, size: &str) -> Option<Mount> {
        std::fs::create_dir(&dir).expect("mount point");
        let ok = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tether-test"])
            .arg(&dir));
        ok.then_some(Mount(dir)).or_else(|| skipped("cannot mount a tmpfs inside the root"))
    }

    /// A small ext4 image (in `scratch`) loop-mounted at `dir`: unlike tmpfs it can be frozen.
    fn ext4(dir: PathBuf, scratch: &Path) -> Option<Mount> {
        let image = scratch.join("fs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(16 << 20)).expect("image file");
        std::fs::create_dir(&dir).expect("mount point");
        let ok = run(Command::new("mkfs.ext4").arg("-q").arg(&image))
            && run(Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&dir));
        ok.then_some(Mount(dir)).or_else(|| skipped("cannot loop-mount an ext4 image inside the root"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The mount frozen (every write into it blocks) until the value is dropped.
struct Frozen<'a>(&'a Mount);

impl<'a> Frozen<'a> {
    fn freeze(mount: &'a Mount) -> Option<Frozen<'a>> {
        let ok = run(Command::new("fsfreeze").arg("-f").arg(&mount.0));
        ok.then_some(Frozen(mount)).or_else(|| skipped("cannot freeze the mount"))
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0.0).status();
    }
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn skipped<T>(why: &str) -> Option<T> {
    eprintln!("skipped: {why} here");
    None
}

// ------------------------------------------------------------------ item 2: modes

#[tokio::test]
async fn modes_beyond_permission_bits_are_protocol_errors_naming_the_field() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    for (what, mode) in [("setuid", 0o4755), ("setgid", 0o2755), ("sticky", 0o1755), ("file type", 0o100755)]
    {
        let e = refused(what, agent.call(write_mode("planted", mode)).await, pb::ErrorCode::Protocol, &agent);
        assert_eq!(e.detail.get("field").map(String::as_str), Some("fs_write.mode"), "{e:?}");
        let e = refused(what, agent.call(mkdir("planted-dir", mode)).await, pb::ErrorCode::Protocol, &agent);
        assert_eq!(e.detail.get("field").map(String::as_str), Some("fs_mkdir.mode"), "{e:?}");
    }
    assert!(
        !root.join("planted").exists() && !root.join("planted-dir").exists(),
        "a refused op changed nothing"
    );
    agent.call(write_mode("tool", 0o750)).await.expect("permission bits are fine");
    assert_eq!(mode_of(&root.join("tool")), 0o750);
    agent.call(mkdir("dir", 0o700)).await.expect("permission bits are fine");
    assert_eq!(mode_of(&root.join("dir")), 0o700);
}

/// A setuid file already there (a whole-machine session, an unpacked archive): rewriting it
/// keeps its permissions but not its setuid bit.
#[tokio::test]
async fn a_rewrite_keeps_the_permission_bits_but_not_setuid() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let suid = agent.root.join("suid");
    std::fs::write(&suid, b"old").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    agent.call(op::write("suid", b"new")).await.expect("rewrite");
    assert_eq!(std::fs::read(&suid).unwrap(), b"new");
    assert_eq!(mode_of(&suid), 0o755, "the rewrite dropped setuid");
}

/// Moved across filesystems, a setuid file (or a setgid directory) is copied without it: the
/// copy is made by the agent's user (root), so it would otherwise be a root setuid program.
#[tokio::test]
async fn a_move_across_filesystems_copies_permission_bits_only() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    let Some(mount) = Mount::tmpfs(root.join("mnt"), "16m") else { return };
    std::fs::write(root.join("suid"), b"x").unwrap();
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(root.join("sgid-dir")).unwrap();
    std::fs::set_permissions(root.join("sgid-dir"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    agent.call(mv("suid", "mnt/suid")).await.expect("move across the mount");
    agent.call(mv("sgid-dir", "mnt/sgid-dir")).await.expect("move across the mount");
    assert_eq!(mode_of(&mount.0.join("suid")), 0o755, "the copy dropped setuid");
    assert_eq!(mode_of(&mount.0.join("sgid-dir")), 0o775, "the copy dropped setgid");
}

// ------------------------------------------------------------------ item 3: special files

/// A FIFO, a socket and (where the test may make one) a character device in the root.
struct Specials {
    device: bool,
    _socket: std::os::unix::net::UnixListener,
}

fn make_specials(root: &Path) -> Specials {
    let fifo_mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
    nix::unistd::mkfifo(&root.join("pipe"), fifo_mode).expect("mkfifo");
    nix::unistd::mkfifo(&root.join("pipe2"), fifo_mode).expect("mkfifo");
    let socket = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("bind a socket");
    let device = nix::sys::stat::mknod(
        &root.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .is_ok();
    Specials { device, _socket: socket }
}

/// Every write to a FIFO, a socket or a device is refused with its kind named, and none
/// blocks: after them the fenced scope still answers and advances.
#[tokio::test]
async fn writes_to_special_files_are_refused_and_never_wedge_the_fence() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let specials = make_specials(&agent.root);
    let scope = "lease-fs";
    let call = |op| fenced(&agent, op, scope, 1);
    let mut writes = vec![
        ("append to a FIFO", append("pipe", b"x"), "FS_ENTRY_KIND_FIFO"),
        ("offset write to a FIFO", write_at("pipe", 3, b"x"), "FS_ENTRY_KIND_FIFO"),
        ("whole write to a FIFO", op::write("pipe", b"x"), "FS_ENTRY_KIND_FIFO"),
        ("append to a socket", append("sock", b"x"), "FS_ENTRY_KIND_SOCKET"),
        ("whole write to a socket", op::write("sock", b"x"), "FS_ENTRY_KIND_SOCKET"),
    ];
    if specials.device {
        writes.push(("append to a device", append("null", b"x"), "FS_ENTRY_KIND_CHAR_DEVICE"));
        writes.push(("offset write to a device", write_at("null", 0, b"x"), "FS_ENTRY_KIND_CHAR_DEVICE"));
    }
    for (what, op, kind) in writes {
        let e = refused(what, call(op).await, pb::ErrorCode::Os, &agent);
        assert_eq!(e.detail.get("kind").map(String::as_str), Some(kind), "{what}: {e:?}");
    }
    if specials.device {
        refused("read a device", call(op::read("null")).await, pb::ErrorCode::Os, &agent);
    }
    assert!(
        std::fs::symlink_metadata(agent.root.join("pipe")).unwrap().file_type().is_fifo(),
        "the FIFO is still there"
    );
    fenced(&agent, op::ping(1), scope, 1).await.expect("ping");
    fenced(&agent, op::ping(2), scope, 2).await.expect("the epoch advance goes through");
}

#[tokio::test]
async fn special_files_are_listed_and_stated_as_what_they_are() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let specials = make_specials(&agent.root);
    let entries = match agent.call(list("")).await {
        Ok(Reply::FsList(l)) => l.entries,
        other => panic!("list: {other:?}"),
    };
    let kind = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.kind);
    assert_eq!(kind("pipe"), Some(pb::FsEntryKind::Fifo as i32));
    assert_eq!(kind("sock"), Some(pb::FsEntryKind::Socket as i32));
    if specials.device {
        assert_eq!(kind("null"), Some(pb::FsEntryKind::CharDevice as i32));
    }
    match agent.call(op::stat("pipe")).await {
        Ok(Reply::FsStat(s)) => assert_eq!(s.entry.map(|e| e.kind), Some(pb::FsEntryKind::Fifo as i32)),
        other => panic!("stat: {other:?}"),
    }
}

/// A move renames a FIFO (nothing opens it), a file moved over one replaces it, and across
/// filesystems (where it would have to be read) it is refused and left where it was.
#[tokio::test]
async fn moves_of_and_onto_fifos_never_open_them() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    let _specials = make_specials(root);
    let scope = "lease-mv";
    let call = |op| fenced(&agent, op, scope, 1);
    call(mv("pipe", "pipe-moved")).await.expect("a FIFO can be renamed");
    std::fs::write(root.join("plain"), b"plain").unwrap();
    call(mv("plain", "pipe2")).await.expect("a file can replace a FIFO");
    assert_eq!(std::fs::read(root.join("pipe2")).unwrap(), b"plain");
    if let Some(_mount) = Mount::tmpfs(root.join("mnt"), "1m") {
        let reply = call(mv("pipe-moved", "mnt/pipe")).await;
        refused("copy a FIFO across a mount", reply, pb::ErrorCode::Os, &agent);
        assert!(root.join("pipe-moved").exists());
    }
    fenced(&agent, op::ping(2), scope, 2).await.expect("the epoch advance goes through");
}

/// A write into a frozen filesystem blocks in the kernel. The agent answers TIMEOUT at its
/// deadline, the fence scope advances at once, and once the filesystem thaws the write that
/// was left behind commits nothing.
#[tokio::test]
async fn a_blocked_mutation_times_out_releases_its_scope_and_never_commits_later() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--fs-mutation-deadline".into(), "1s".into()], ..AgentOpts::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let scratch = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::ext4(agent.root.join("frozen"), scratch.path()) else { return };
    let before: Vec<_> = std::fs::read_dir(&mount.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    let scope = "lease-frozen";
    {
        let Some(_frozen) = Frozen::freeze(&mount) else { return };
        let reply = fenced(&agent, op::write("frozen/late.txt", b"late"), scope, 1).await;
        let e = refused("a write into a frozen filesystem", reply, pb::ErrorCode::Timeout, &agent);
        assert_eq!(e.detail.get("committed_steps").map(String::as_str), Some("0"), "{e:?}");
        let reply = fenced(&agent, mkdir("frozen/late-dir", 0), scope, 1).await;
        refused("a mkdir in a frozen filesystem", reply, pb::ErrorCode::Timeout, &agent);
        agent
            .call_fenced(op::ping(1), scope, 2)
            .await
            .expect("the scope advances past the blocked mutations");
        agent.call_fenced(op::write("elsewhere.txt", b"ok"), scope, 2).await.expect("other files still work");
    }
    // Thawed: the blocked threads go on, meet their shut gates and give up.
    eventually("both abandoned mutations ended", || {
        agent.log().matches("missed its deadline has ended").count() >= 2
    })
    .await;
    let after: Vec<_> = std::fs::read_dir(&mount.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(after, before, "nothing of the timed-out mutations appeared, not even a temp file");
}

// ------------------------------------------------------------------ item 10: smaller holes

#[tokio::test]
async fn doubled_slashes_resolve_under_the_root_like_single_ones() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let req = pb::FsWriteRequest { create_parents: true, ..write_req("/workspace//sub//f.txt", b"in") };
    agent.call(Op::FsWrite(req)).await.expect("a doubled slash after the virtual root");
    assert_eq!(std::fs::read(agent.root.join("sub/f.txt")).unwrap(), b"in");
    match agent.call(op::read("//workspace/sub/f.txt/")).await {
        Ok(Reply::FsRead(r)) => assert_eq!(&r.content[..], b"in"),
        other => panic!("read: {other:?}"),
    }
}

#[tokio::test]
async fn append_with_an_offset_and_writes_past_the_sparse_maximum_are_protocol_errors() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    std::fs::write(root.join("f"), b"0123456789").unwrap();
    let both =
        Op::FsWrite(pb::FsWriteRequest { append: true, use_offset: true, offset: 2, ..write_req("f", b"x") });
    refused("append with an offset", agent.call(both).await, pb::ErrorCode::Protocol, &agent);
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"0123456789", "the refused write changed nothing");

    let far = write_at("f", (64 << 30) + 1, b"x");
    let e =
        refused("an offset past the sparse maximum", agent.call(far).await, pb::ErrorCode::Protocol, &agent);
    assert_eq!(e.detail.get("max_end").map(String::as_str), Some("68719476736"), "{e:?}");
    assert_eq!(std::fs::metadata(root.join("f")).unwrap().len(), 10, "no 64 GiB sparse file");

    agent.call(write_at("f", 2, b"ab")).await.expect("a positional write");
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"01ab456789");
    agent.call(write_at("fresh", 3, b"x")).await.expect("a positional write into a new file");
    assert_eq!(std::fs::read(root.join("fresh")).unwrap(), b"\0\0\0x");
}

/// A positional write into a new file that fails (the filesystem is full) leaves nothing,
/// not an empty or half-written file.
#[tokio::test]
async fn a_failed_positional_write_into_a_new_file_leaves_nothing() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let Some(mount) = Mount::tmpfs(agent.root.join("small"), "64k") else { return };
    let reply = agent.call(write_at("small/big", 0, &vec![7u8; 256 << 10])).await;
    refused("a write that does not fit", reply, pb::ErrorCode::Os, &agent);
    let left: Vec<_> = std::fs::read_dir(&mount.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed write left {left:?}");
}

/// A command can hard-link into the root a file outside it that it could read; an in-place
/// write through that link would change the outside file. Confined, it is refused; a whole-file
/// write replaces the link by rename and leaves the other file alone.
#[tokio::test]
async fn in_place_writes_through_a_hard_link_are_refused_when_confined() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let outside = tempfile::tempdir_in(agent.root.parent().unwrap()).unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"secret").unwrap();
    std::fs::hard_link(&secret, agent.root.join("link")).unwrap();
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 2);

    for (what, op) in [("append", append("link", b"!")), ("offset write", write_at("link", 0, b"S"))] {
        let e = refused(what, agent.call(op).await, pb::ErrorCode::ConsentRequired, &agent);
        assert_eq!(e.detail.get("links").map(String::as_str), Some("2"), "{e:?}");
    }
    assert_eq!(std::fs::read(&secret).unwrap(), b"secret");

    agent.call(op::write("link", b"mine")).await.expect("a whole-file write replaces the link");
    assert_eq!(std::fs::read(agent.root.join("link")).unwrap(), b"mine");
    assert_eq!(std::fs::read(&secret).unwrap(), b"secret", "the outside file is untouched");
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
}
