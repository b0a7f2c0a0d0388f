//! Working with files on the machine (PROTOCOL.md §4 path mapping, §5 fs ops), end to end
//! through NATS: writes that land under the workspace root, whole and ranged reads, stat,
//! sorted typed listings, move, remove, reads too large for one reply, and a 20 MB file
//! round-tripping through `tetherctl put` / `tetherctl get`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, error_code, op, pb};

fn read_range(path: &str, offset: u64, length: u64) -> Op {
    Op::FsRead(pb::FsReadRequest { path: path.into(), offset, length })
}

fn list(path: &str, recursive: bool) -> Op {
    Op::FsList(pb::FsListRequest { path: path.into(), recursive, ..Default::default() })
}

fn mv(from: &str, to: &str, overwrite: bool) -> Op {
    Op::FsMove(pb::FsMoveRequest { from: from.into(), to: to.into(), overwrite })
}

fn rm(path: &str, recursive: bool) -> Op {
    Op::FsRemove(pb::FsRemoveRequest { path: path.into(), recursive })
}

/// Calls `op`, failing the test with the agent log when it errs.
async fn ok(agent: &Agent, op: Op) -> Reply {
    let what = format!("{op:?}");
    let what = what.chars().take(200).collect::<String>();
    agent.call(op).await.unwrap_or_else(|e| panic!("{what} failed: {e:?}\nagent log:\n{}", agent.log()))
}

async fn read(agent: &Agent, op: Op) -> pb::FsReadResponse {
    match ok(agent, op).await {
        Reply::FsRead(r) => r,
        other => panic!("expected FsReadResponse, got {other:?}"),
    }
}

async fn listing(agent: &Agent, path: &str, recursive: bool) -> Vec<pb::FsEntry> {
    match ok(agent, list(path, recursive)).await {
        Reply::FsList(r) => {
            assert!(!r.truncated, "a small listing is not truncated");
            r.entries
        }
        other => panic!("expected FsListResponse, got {other:?}"),
    }
}

/// Deterministic bytes that no compression or pattern shortcut could fake.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn a_write_to_the_virtual_root_lands_under_the_workspace_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let req = pb::FsWriteRequest {
        path: "/workspace/sub/f.txt".into(),
        content: b"hello".to_vec().into(),
        create_parents: true,
        ..Default::default()
    };
    let reply = ok(&agent, Op::FsWrite(req)).await;
    assert!(matches!(reply, Reply::FsWrite(ref w) if w.bytes_written == 5), "{reply:?}");
    assert_eq!(std::fs::read(agent.root.join("sub/f.txt")).unwrap(), b"hello");

    // A relative path is relative to the workspace root too; a rewrite replaces the content.
    ok(&agent, op::write("sub/f.txt", b"bye")).await;
    assert_eq!(std::fs::read(agent.root.join("sub/f.txt")).unwrap(), b"bye");

    // Appending adds to the end.
    let req = pb::FsWriteRequest {
        path: "sub/f.txt".into(),
        content: b"!".to_vec().into(),
        append: true,
        ..Default::default()
    };
    ok(&agent, Op::FsWrite(req)).await;
    assert_eq!(std::fs::read(agent.root.join("sub/f.txt")).unwrap(), b"bye!");
}

#[tokio::test]
async fn a_rewrite_keeps_the_existing_mode_unless_told_otherwise() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let file = agent.root.join("secret.txt");
    std::fs::write(&file, b"old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    ok(&agent, op::write("secret.txt", b"new")).await;
    assert_eq!(std::fs::read(&file).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    let req = pb::FsWriteRequest {
        path: "secret.txt".into(),
        content: b"newer".to_vec().into(),
        mode: 0o640,
        ..Default::default()
    };
    ok(&agent, Op::FsWrite(req)).await;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
}

#[tokio::test]
async fn a_file_reads_whole_or_by_range_with_its_total_size() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    std::fs::write(agent.root.join("digits.txt"), b"0123456789").unwrap();

    let r = read(&agent, op::read("/workspace/digits.txt")).await;
    assert_eq!(&r.content[..], b"0123456789");
    assert_eq!(r.total_size, 10);

    let r = read(&agent, read_range("digits.txt", 3, 4)).await;
    assert_eq!(&r.content[..], b"3456");
    assert_eq!(r.total_size, 10);

    let r = read(&agent, read_range("digits.txt", 7, 0)).await;
    assert_eq!(&r.content[..], b"789", "length 0 reads to EOF");

    let r = read(&agent, read_range("digits.txt", 8, 100)).await;
    assert_eq!(&r.content[..], b"89", "a range past EOF stops at EOF");

    let r = read(&agent, read_range("digits.txt", 50, 4)).await;
    assert!(r.content.is_empty(), "an offset past EOF reads nothing");
    assert_eq!(r.total_size, 10);
}

#[tokio::test]
async fn a_missing_file_is_not_found_for_read_and_absent_for_stat() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;

    let err = agent.call(op::read("/workspace/nope.txt")).await.expect_err("missing");
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{err:?}");

    let reply = ok(&agent, op::stat("/workspace/nope.txt")).await;
    assert!(matches!(reply, Reply::FsStat(ref s) if !s.exists), "{reply:?}");

    // A directory is not readable as a file: an OS error carrying the errno.
    std::fs::create_dir(agent.root.join("dir")).unwrap();
    let err = agent.call(op::read("dir")).await.expect_err("a directory");
    assert_eq!(error_code(&err), pb::ErrorCode::Os, "{err:?}");
    assert!(err.detail.contains_key("errno"), "{err:?}");

    // And an existing file stats as one.
    std::fs::write(agent.root.join("here.txt"), b"12345").unwrap();
    let Reply::FsStat(s) = ok(&agent, op::stat("here.txt")).await else { panic!("expected FsStat") };
    let entry = s.entry.expect("an existing path has an entry");
    assert!(s.exists);
    assert_eq!(entry.kind, pb::FsEntryKind::File as i32);
    assert_eq!(entry.size, 5);
    assert_eq!(entry.name, "here.txt");
    assert_eq!(entry.path, agent.root.join("here.txt").display().to_string());
}

#[tokio::test]
async fn a_listing_is_sorted_typed_and_optionally_recursive() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    std::fs::write(root.join("b.txt"), b"bb").unwrap();
    std::fs::write(root.join("a.txt"), b"a").unwrap();
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::write(root.join("d/c.txt"), b"ccc").unwrap();
    std::fs::write(root.join("d/e/f.txt"), b"").unwrap();
    std::os::unix::fs::symlink("d", root.join("link")).unwrap();

    let entries = listing(&agent, "/workspace", false).await;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.txt", "b.txt", "d", "link"]);
    let kind = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.kind);
    assert_eq!(kind("a.txt"), Some(pb::FsEntryKind::File as i32));
    assert_eq!(kind("d"), Some(pb::FsEntryKind::Directory as i32));
    assert_eq!(kind("link"), Some(pb::FsEntryKind::Symlink as i32));
    let link = entries.iter().find(|e| e.name == "link").unwrap();
    assert_eq!(link.symlink_target, "d");
    let b = entries.iter().find(|e| e.name == "b.txt").unwrap();
    assert_eq!(b.size, 2);
    assert_eq!(b.path, root.join("b.txt").display().to_string(), "the full path, as resolved");
    assert_eq!(b.mode & 0o170000, 0o100000, "mode carries the file type, as st_mode");

    let entries = listing(&agent, "", true).await;
    let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    let expected: Vec<String> = ["a.txt", "b.txt", "d", "d/c.txt", "d/e", "d/e/f.txt", "link"]
        .iter()
        .map(|p| root.join(p).display().to_string())
        .collect();
    assert_eq!(paths, expected, "recursive, sorted by path, and the symlink is not followed");
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[tokio::test]
async fn a_move_renames_and_refuses_to_overwrite_unless_asked() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    std::fs::write(root.join("one.txt"), b"one").unwrap();
    std::fs::write(root.join("two.txt"), b"two").unwrap();

    ok(&agent, mv("/workspace/one.txt", "/workspace/moved.txt", false)).await;
    assert!(!root.join("one.txt").exists());
    assert_eq!(std::fs::read(root.join("moved.txt")).unwrap(), b"one");

    let err = agent.call(mv("moved.txt", "two.txt", false)).await.expect_err("the target exists");
    assert_ne!(error_code(&err), pb::ErrorCode::Unspecified, "{err:?}");
    assert_eq!(std::fs::read(root.join("moved.txt")).unwrap(), b"one", "the source is untouched");
    assert_eq!(std::fs::read(root.join("two.txt")).unwrap(), b"two", "the target is untouched");

    ok(&agent, mv("moved.txt", "two.txt", true)).await;
    assert!(!root.join("moved.txt").exists());
    assert_eq!(std::fs::read(root.join("two.txt")).unwrap(), b"one");

    let err = agent.call(mv("gone.txt", "x.txt", false)).await.expect_err("no source");
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_tree_is_removed_only_when_recursive_and_symlinks_are_never_followed() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let root = &agent.root;
    std::fs::create_dir_all(root.join("tree/x/y")).unwrap();
    std::fs::write(root.join("tree/x/y/leaf.txt"), b"leaf").unwrap();
    std::fs::create_dir(root.join("keep")).unwrap();
    std::fs::write(root.join("keep/kept.txt"), b"kept").unwrap();
    std::os::unix::fs::symlink(root.join("keep"), root.join("tree/to-keep")).unwrap();

    let err = agent.call(rm("tree", false)).await.expect_err("a non-empty directory needs recursive");
    assert_ne!(error_code(&err), pb::ErrorCode::Unspecified, "{err:?}");
    assert!(root.join("tree/x/y/leaf.txt").exists());

    ok(&agent, rm("/workspace/tree", true)).await;
    assert!(!root.join("tree").exists());
    assert_eq!(std::fs::read(root.join("keep/kept.txt")).unwrap(), b"kept", "the symlink's target survives");

    // Removing a symlink to a directory removes the link only.
    std::os::unix::fs::symlink(root.join("keep"), root.join("keep-link")).unwrap();
    ok(&agent, rm("keep-link", true)).await;
    assert!(root.join("keep-link").symlink_metadata().is_err());
    assert!(root.join("keep/kept.txt").exists());

    let err = agent.call(rm("tree", true)).await.expect_err("already gone");
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_whole_read_too_large_for_one_reply_is_refused_but_a_range_is_capped() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let max_payload = agent.hello.capabilities.as_ref().expect("capabilities").max_payload;
    let size = max_payload as usize * 2 + 123;
    let data = noise(size);
    std::fs::write(agent.root.join("big.bin"), &data).unwrap();

    let err = agent.call(op::read("/workspace/big.bin")).await.expect_err("cannot fit one reply");
    assert_eq!(error_code(&err), pb::ErrorCode::PayloadTooLarge, "{err:?}");
    assert_eq!(err.detail.get("total_size").map(String::as_str), Some(size.to_string().as_str()), "{err:?}");
    assert!(err.detail.contains_key("max_payload"), "{err:?}");

    // An explicit length is capped to fit: fewer bytes, the true total, never a wrong byte.
    let (reply_size, result) = agent.call_sized(read_range("big.bin", 0, size as u64)).await;
    let Ok(Reply::FsRead(r)) = result else { panic!("expected FsRead, got {result:?}") };
    assert!(reply_size as u64 <= max_payload);
    assert!(!r.content.is_empty() && r.content.len() < size, "{}", r.content.len());
    assert_eq!(&r.content[..], &data[..r.content.len()]);
    assert_eq!(r.total_size, size as u64);

    // The rest of the file from a late offset fits, and is exactly the tail.
    let offset = size - 1000;
    let r = read(&agent, read_range("big.bin", offset as u64, 0)).await;
    assert_eq!(&r.content[..], &data[offset..]);
}

async fn tetherctl(agent: &Agent, nats: &Nats, args: &[&std::ffi::OsStr]) {
    let mut cmd = tokio::process::Command::from(agent.tetherctl(nats));
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("tetherctl finished in time")
        .expect("tetherctl ran");
    assert!(
        out.status.success(),
        "tetherctl {args:?}: {}\nstderr: {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
}

fn same_bytes(a: &Path, expected: &[u8]) {
    let got = std::fs::read(a).unwrap_or_else(|e| panic!("reading {}: {e}", a.display()));
    assert_eq!(got.len(), expected.len(), "{} has the wrong size", a.display());
    assert!(got == expected, "{} differs from the original", a.display());
}

#[tokio::test]
async fn a_twenty_megabyte_file_round_trips_through_put_and_get() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let local = tempfile::tempdir().unwrap();
    let data = noise(20 * 1024 * 1024);
    let original = local.path().join("big.bin");
    std::fs::write(&original, &data).unwrap();

    tetherctl(&agent, &nats, &["put".as_ref(), original.as_os_str(), "/workspace/big.bin".as_ref()]).await;
    same_bytes(&agent.root.join("big.bin"), &data);

    let copy = local.path().join("copy.bin");
    tetherctl(&agent, &nats, &["get".as_ref(), "/workspace/big.bin".as_ref(), copy.as_os_str()]).await;
    same_bytes(&copy, &data);
}

/// A directory on another filesystem than the agent's root (in /dev/shm), or None with the
/// reason printed when this machine has no second filesystem there.
fn second_filesystem(agent: &Agent) -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if !shm.is_dir() || dev(shm) == dev(&agent.root) {
        eprintln!("skipped: /dev/shm is not a second filesystem here");
        return None;
    }
    Some(tempfile::tempdir_in(shm).expect("a tempdir in /dev/shm"))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_move_across_filesystems_copies_the_tree_then_removes_the_source() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--whole-machine".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let Some(target) = second_filesystem(&agent) else { return };
    std::fs::create_dir_all(agent.root.join("tree/sub")).unwrap();
    std::fs::write(agent.root.join("tree/sub/f.txt"), b"payload").unwrap();
    std::os::unix::fs::symlink("sub/f.txt", agent.root.join("tree/link")).unwrap();
    let to = target.path().join("moved");
    let mv = Op::FsMove(pb::FsMoveRequest {
        from: "/workspace/tree".into(),
        to: to.display().to_string(),
        overwrite: false,
    });
    agent.call(mv).await.expect("move across filesystems");
    assert!(!agent.root.join("tree").exists(), "the source is gone");
    assert_eq!(std::fs::read(to.join("sub/f.txt")).unwrap(), b"payload");
    assert_eq!(std::fs::read_link(to.join("link")).unwrap(), Path::new("sub/f.txt"), "links stay links");
}

/// The copy fallback behaves like rename(2): what is at the target is replaced (a symlink
/// there is replaced, never written through), a non-empty directory is not, and nothing is
/// left behind when it refuses.
#[tokio::test]
async fn a_move_across_filesystems_replaces_the_target_and_never_writes_through_it() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--whole-machine".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let Some(shm) = second_filesystem(&agent) else { return };
    let shm = shm.path();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("victim.txt"), b"victim").unwrap();
    std::fs::create_dir(victim.path().join("vdir")).unwrap();
    let to = |name: &str| shm.join(name).display().to_string();

    // A file moved over a symlink replaces the link; the link's target is untouched.
    std::os::unix::fs::symlink(victim.path().join("victim.txt"), shm.join("file-target")).unwrap();
    std::fs::write(agent.root.join("new.txt"), b"payload").unwrap();
    ok(&agent, mv("new.txt", &to("file-target"), true)).await;
    assert_eq!(std::fs::read(victim.path().join("victim.txt")).unwrap(), b"victim", "wrote through the link");
    assert!(std::fs::symlink_metadata(shm.join("file-target")).unwrap().is_file(), "the link was replaced");
    assert_eq!(std::fs::read(shm.join("file-target")).unwrap(), b"payload");
    assert!(!agent.root.join("new.txt").exists(), "the source is gone");

    // A tree over a non-empty directory holding a symlink out: refused, nothing written.
    std::fs::create_dir_all(agent.root.join("tree/sub")).unwrap();
    std::fs::write(agent.root.join("tree/sub/f.txt"), b"tree").unwrap();
    std::fs::create_dir(shm.join("dir-target")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("vdir"), shm.join("dir-target/sub")).unwrap();
    let err = agent.call(mv("tree", &to("dir-target"), true)).await.expect_err("a non-empty directory");
    assert_eq!(error_code(&err), pb::ErrorCode::Os, "{err:?}");
    assert!(names_in(&victim.path().join("vdir")).is_empty(), "wrote through a link inside the target");
    assert_eq!(std::fs::read(agent.root.join("tree/sub/f.txt")).unwrap(), b"tree", "the source stays");
    assert_eq!(names_in(shm), ["dir-target", "file-target"], "no temp copy left behind");

    // Without overwrite an existing target is refused; an empty directory is replaced with it.
    let err = agent.call(mv("tree", &to("file-target"), false)).await.expect_err("the target exists");
    assert_eq!(error_code(&err), pb::ErrorCode::Os, "{err:?}");
    assert_eq!(std::fs::read(shm.join("file-target")).unwrap(), b"payload");
    std::fs::create_dir(shm.join("empty")).unwrap();
    ok(&agent, mv("tree", &to("empty"), true)).await;
    assert_eq!(std::fs::read(shm.join("empty/sub/f.txt")).unwrap(), b"tree");
    assert!(!agent.root.join("tree").exists());
    assert_eq!(names_in(shm), ["dir-target", "empty", "file-target"]);
}

/// A new file gets the mode any program creating it would (0o666 less the umask), and
/// learning the umask never changes it for the rest of the process.
#[tokio::test]
async fn a_new_file_gets_the_mode_the_umask_allows() {
    use nix::sys::stat::{Mode, umask};
    let nats = Nats::start().await;
    // The agent inherits the umask it is started with.
    let before = umask(Mode::from_bits_truncate(0o002));
    let agent = Agent::start(&nats).await;
    umask(before);
    let mode = |name: &str| std::fs::metadata(agent.root.join(name)).unwrap().permissions().mode() & 0o777;

    ok(&agent, op::write("fresh.txt", b"new")).await;
    assert_eq!(mode("fresh.txt"), 0o664, "an atomic write of a new file");
    let append = pb::FsWriteRequest {
        path: "appended.txt".into(),
        content: b"x".to_vec().into(),
        append: true,
        ..Default::default()
    };
    ok(&agent, Op::FsWrite(append)).await;
    assert_eq!(mode("appended.txt"), 0o664, "an append creating the file");
    let exec = ok(&agent, Op::Exec(op::sh("umask"))).await;
    let Reply::Exec(out) = exec else { panic!("expected Exec, got {exec:?}") };
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0002", "a command still sees the agent's umask");
}

#[tokio::test]
async fn a_root_under_the_virtual_root_path_is_not_mapped_twice() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let parent = root_path.parent().unwrap().display().to_string();
    let opts = AgentOpts {
        root: Some(root_path.clone()),
        args: vec!["--virtual-root".into(), parent],
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    let write = Op::FsWrite(pb::FsWriteRequest {
        path: "sub/f.txt".into(),
        content: b"here".to_vec().into(),
        create_parents: true,
        ..Default::default()
    });
    agent.call(write).await.expect("write with parents");
    assert_eq!(std::fs::read(root_path.join("sub/f.txt")).unwrap(), b"here");
}

#[tokio::test]
async fn reading_a_fifo_is_refused_instead_of_hanging() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    nix::unistd::mkfifo(&agent.root.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = agent.call(op::read("pipe")).await.expect_err("a FIFO is not a file to read");
    assert_eq!(error_code(&err), pb::ErrorCode::Os);
    assert!(agent.call(op::ping(1)).await.is_ok());
}
