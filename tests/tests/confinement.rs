//! Path confinement (PROTOCOL.md §4), end to end through NATS: an agent without whole-machine
//! consent refuses every path that resolves outside its workspace root (an absolute path
//! elsewhere, a `..` escape, a symlink pointing out) with CONSENT_REQUIRED before any I/O, so
//! nothing outside is read or changed; with `--whole-machine` the same paths work.

use std::path::PathBuf;

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, error_code, op, pb};

const SECRET: &[u8] = b"outside secret\n";

/// A directory beside the workspace root (so `/workspace/../<name>` reaches it) holding
/// `secret.txt`, plus symlinks inside the root pointing at it.
struct Outside {
    dir: tempfile::TempDir,
    name: String,
}

impl Outside {
    fn beside(agent: &Agent) -> Outside {
        let parent = agent.root.parent().expect("the root has a parent");
        let dir = tempfile::tempdir_in(parent).expect("outside tempdir");
        std::fs::write(dir.path().join("secret.txt"), SECRET).expect("write the outside file");
        std::os::unix::fs::symlink(dir.path(), agent.root.join("escape")).expect("directory symlink");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), agent.root.join("secret-link"))
            .expect("file symlink");
        let name = dir.path().file_name().expect("a tempdir has a name").to_string_lossy().into_owned();
        Outside { dir, name }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret.txt")
    }

    /// Three spellings of paths that resolve outside the root, each reaching `file`.
    fn escapes(&self, file: &str) -> Vec<String> {
        vec![
            self.dir.path().join(file).display().to_string(),
            format!("/workspace/../{}/{file}", self.name),
            format!("/workspace/escape/{file}"),
        ]
    }

    /// What the outside directory holds, sorted.
    fn contents(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("list the outside directory")
            .map(|e| e.expect("outside entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Fails unless the outside directory is exactly as `beside` left it.
    fn assert_untouched(&self) {
        assert_eq!(self.contents(), ["secret.txt"], "a file appeared outside the root");
        assert_eq!(
            std::fs::read(self.secret()).expect("the outside file is still there"),
            SECRET,
            "the outside file changed"
        );
    }
}

/// Fails unless `result` is CONSENT_REQUIRED naming a path.
fn assert_refused(what: &str, result: Result<Reply, pb::AgentError>, agent: &Agent) {
    match result {
        Err(err) => {
            assert_eq!(error_code(&err), pb::ErrorCode::ConsentRequired, "{what}: {err:?}");
            assert!(err.detail.contains_key("path"), "{what}: the refusal names the path: {err:?}");
        }
        Ok(reply) => panic!("{what}: confined agent allowed it: {reply:?}\nagent log:\n{}", agent.log()),
    }
}

fn write_op(path: &str, content: &[u8], create_parents: bool) -> Op {
    Op::FsWrite(pb::FsWriteRequest {
        path: path.into(),
        content: content.to_vec().into(),
        create_parents,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_confined_agent_refuses_to_read_outside_its_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    assert!(!agent.hello.capabilities.as_ref().unwrap().consented_whole_machine);
    let outside = Outside::beside(&agent);

    let mut paths = outside.escapes("secret.txt");
    paths.push("secret-link".into());
    paths.push("/workspace/secret-link".into());
    for path in &paths {
        assert_refused(&format!("read {path}"), agent.call(op::read(path)).await, &agent);
        assert_refused(&format!("stat {path}"), agent.call(op::stat(path)).await, &agent);
    }
    for dir in [outside.dir.path().display().to_string(), "/workspace/escape".into(), "/workspace/..".into()]
    {
        let list = Op::FsList(pb::FsListRequest { path: dir.clone(), ..Default::default() });
        assert_refused(&format!("list {dir}"), agent.call(list).await, &agent);
    }

    // The root itself, and a symlink that stays inside it, are fine.
    std::fs::write(agent.root.join("inside.txt"), b"in").unwrap();
    std::os::unix::fs::symlink("inside.txt", agent.root.join("inside-link")).unwrap();
    let reply = agent.call(op::read("/workspace/inside-link")).await;
    assert!(matches!(reply, Ok(Reply::FsRead(ref r)) if &r.content[..] == b"in"), "{reply:?}");
    let reply = agent.call(op::read("/workspace/sub/../inside.txt")).await;
    assert!(matches!(reply, Ok(Reply::FsRead(ref r)) if &r.content[..] == b"in"), "{reply:?}");
}

#[tokio::test]
async fn a_confined_agent_changes_nothing_outside_its_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let outside = Outside::beside(&agent);

    // New files through every escape, with and without parents.
    for path in outside.escapes("planted.txt") {
        for parents in [false, true] {
            let result = agent.call(write_op(&path, b"planted", parents)).await;
            assert_refused(&format!("write {path} (create_parents={parents})"), result, &agent);
        }
    }
    // Overwriting and appending to the outside file through every escape and the file symlink.
    let mut targets = outside.escapes("secret.txt");
    targets.push("secret-link".into());
    for path in &targets {
        let result = agent.call(write_op(path, b"overwritten", false)).await;
        assert_refused(&format!("write {path}"), result, &agent);
        let append = Op::FsWrite(pb::FsWriteRequest {
            path: path.clone(),
            content: b"appended".to_vec().into(),
            append: true,
            ..Default::default()
        });
        assert_refused(&format!("append {path}"), agent.call(append).await, &agent);
    }
    outside.assert_untouched();
    let link = std::fs::symlink_metadata(agent.root.join("secret-link")).expect("file symlink");
    assert!(link.file_type().is_symlink(), "a refused write leaves the symlink as it was");

    // Moving a file out, moving the secret in, removing it, making a directory out there.
    std::fs::write(agent.root.join("mine.txt"), b"mine").unwrap();
    let [abs, dotdot, via_link] = <[String; 3]>::try_from(outside.escapes("moved.txt")).unwrap();
    for to in [&abs, &dotdot, &via_link] {
        let mv = Op::FsMove(pb::FsMoveRequest { from: "mine.txt".into(), to: to.clone(), overwrite: true });
        assert_refused(&format!("move to {to}"), agent.call(mv).await, &agent);
    }
    assert_eq!(std::fs::read(agent.root.join("mine.txt")).unwrap(), b"mine");
    for from in outside.escapes("secret.txt") {
        let mv =
            Op::FsMove(pb::FsMoveRequest { from: from.clone(), to: "stolen.txt".into(), overwrite: false });
        assert_refused(&format!("move from {from}"), agent.call(mv).await, &agent);
        let rm = Op::FsRemove(pb::FsRemoveRequest { path: from.clone(), recursive: true });
        assert_refused(&format!("remove {from}"), agent.call(rm).await, &agent);
    }
    for path in outside.escapes("newdir") {
        let mkdir = Op::FsMkdir(pb::FsMkdirRequest { path: path.clone(), parents: true, mode: 0 });
        assert_refused(&format!("mkdir {path}"), agent.call(mkdir).await, &agent);
    }
    outside.assert_untouched();
    assert!(!agent.root.join("stolen.txt").exists());
}

#[tokio::test]
async fn a_confined_agent_refuses_a_working_directory_outside_its_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let outside = Outside::beside(&agent);
    for cwd in [outside.dir.path().display().to_string(), "/workspace/escape".into()] {
        let exec = pb::ExecRequest { cwd: cwd.clone(), ..op::sh("touch from-exec") };
        assert_refused(&format!("exec in {cwd}"), agent.call(Op::Exec(exec)).await, &agent);
    }
    outside.assert_untouched();
}

#[tokio::test]
async fn whole_machine_consent_lifts_confinement() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--whole-machine".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    assert!(agent.hello.capabilities.as_ref().unwrap().consented_whole_machine);
    let outside = Outside::beside(&agent);

    let mut paths = outside.escapes("secret.txt");
    paths.push("secret-link".into());
    for path in &paths {
        match agent.call(op::read(path)).await {
            Ok(Reply::FsRead(r)) => assert_eq!(&r.content[..], SECRET, "read {path}"),
            other => panic!("read {path} with whole-machine consent: {other:?}\nagent log:\n{}", agent.log()),
        }
    }

    let target = outside.dir.path().join("written.txt");
    let reply = agent.call(write_op(&target.display().to_string(), b"allowed", false)).await;
    assert!(matches!(reply, Ok(Reply::FsWrite(_))), "{reply:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"allowed");
}

/// PROTOCOL §4 allows a path whose every symlink, resolved, stays inside the root: a link
/// spelled with an absolute target inside the root is such a path (RESOLVE_BENEATH alone
/// refuses every absolute link); one whose absolute target leaves is still refused.
#[tokio::test]
async fn a_confined_agent_follows_an_absolute_symlink_that_stays_inside_its_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let outside = Outside::beside(&agent);
    let root = &agent.root;
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/f.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(root.join("sub"), root.join("abs-dir")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/f.txt"), root.join("abs-file")).unwrap();
    std::os::unix::fs::symlink(root.join("../").join(&outside.name).join("secret.txt"), root.join("abs-out"))
        .unwrap();

    for path in ["abs-file", "/workspace/abs-dir/f.txt"] {
        let reply = agent.call(op::read(path)).await;
        assert!(
            matches!(reply, Ok(Reply::FsRead(ref r)) if &r.content[..] == b"inside"),
            "{path}: {reply:?}"
        );
    }
    let reply = agent.call(write_op("abs-dir/deep/new.txt", b"new", true)).await;
    assert!(matches!(reply, Ok(Reply::FsWrite(_))), "{reply:?}\n{}", agent.log());
    assert_eq!(std::fs::read(root.join("sub/deep/new.txt")).unwrap(), b"new");
    let reply = agent.call(write_op("abs-file", b"rewritten", false)).await;
    assert!(matches!(reply, Ok(Reply::FsWrite(_))), "{reply:?}");
    assert_eq!(std::fs::read(root.join("sub/f.txt")).unwrap(), b"rewritten");
    assert!(std::fs::symlink_metadata(root.join("abs-file")).unwrap().file_type().is_symlink());
    let list = Op::FsList(pb::FsListRequest { path: "abs-dir".into(), ..Default::default() });
    let reply = agent.call(list).await;
    assert!(matches!(reply, Ok(Reply::FsList(ref l)) if l.entries.len() == 2), "{reply:?}");
    let exec = pb::ExecRequest { cwd: "abs-dir".into(), ..op::sh("cat f.txt") };
    let reply = agent.call(Op::Exec(exec)).await;
    assert!(matches!(reply, Ok(Reply::Exec(ref e)) if &e.stdout[..] == b"rewritten"), "{reply:?}");

    assert_refused("read abs-out", agent.call(op::read("abs-out")).await, &agent);
    assert_refused("write abs-out", agent.call(write_op("abs-out", b"x", false)).await, &agent);
    outside.assert_untouched();
}

/// A tmpfs mounted at `dir` for the life of the value (unmounted lazily on drop).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: PathBuf) -> Option<Mount> {
        std::fs::create_dir(&dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tether-test"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Mount(dir)),
            other => {
                eprintln!("skipped: cannot mount a tmpfs inside the root here ({other:?})");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A move onto another filesystem inside the root (a mount) falls back to copying; the copy
/// must replace a symlink at the target, never write through it to a file outside the root.
#[tokio::test]
async fn a_confined_move_across_a_mount_never_writes_through_a_symlink_out_of_the_root() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let outside = Outside::beside(&agent);
    let Some(mount) = Mount::tmpfs(agent.root.join("mnt")) else { return };
    std::os::unix::fs::symlink(outside.secret(), mount.0.join("target")).unwrap();
    std::fs::create_dir(mount.0.join("tree-target")).unwrap();
    std::os::unix::fs::symlink(outside.dir.path(), mount.0.join("tree-target/sub")).unwrap();
    std::fs::write(agent.root.join("mine.txt"), b"mine").unwrap();
    std::fs::create_dir_all(agent.root.join("tree/sub")).unwrap();
    std::fs::write(agent.root.join("tree/sub/planted.txt"), b"planted").unwrap();

    let mv = |from: &str, to: &str| {
        Op::FsMove(pb::FsMoveRequest { from: from.into(), to: to.into(), overwrite: true })
    };
    let _ = agent.call(mv("mine.txt", "mnt/target")).await;
    let _ = agent.call(mv("tree", "mnt/tree-target")).await;
    outside.assert_untouched();
    let target = std::fs::symlink_metadata(mount.0.join("target")).unwrap();
    assert!(target.is_file(), "the symlink at the target was replaced by the moved file");
    assert_eq!(std::fs::read(mount.0.join("target")).unwrap(), b"mine");
}

/// rename(2) says EXDEV, not EINVAL, for a directory moved into itself across a mount inside
/// it; the copy fallback must refuse instead of copying its own copy, level after level.
#[tokio::test]
async fn a_directory_moved_into_a_mount_inside_itself_is_refused() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    std::fs::create_dir(agent.root.join("a")).unwrap();
    std::fs::write(agent.root.join("a/file"), b"kept").unwrap();
    let Some(mount) = Mount::tmpfs(agent.root.join("a/mnt")) else { return };
    let mv = Op::FsMove(pb::FsMoveRequest { from: "a".into(), to: "a/mnt/b".into(), overwrite: false });
    let err = agent.call(mv).await.expect_err("a directory cannot move into itself");
    assert_eq!(err.code, pb::ErrorCode::Os as i32, "{err:?}");
    assert_eq!(err.detail.get("errno"), Some(&libc::EINVAL.to_string()), "{err:?}");
    let left: Vec<_> = std::fs::read_dir(&mount.0).unwrap().collect();
    assert!(left.is_empty(), "nothing was copied into the mount: {left:?}");
    assert_eq!(std::fs::read(agent.root.join("a/file")).unwrap(), b"kept", "the source is untouched");
    assert!(agent.call(Op::Ping(pb::PingRequest { nonce: 1 })).await.is_ok());
}
