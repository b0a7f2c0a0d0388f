//! Workspace sync end to end (README "Workspace sync"): a real agent and nats-server, the
//! `tether-client` library and `tetherctl sync`. Byte-identical round trips of an awkward tree,
//! re-syncs that send (and read) only what changed, excludes and preserves on both ends,
//! symlinks synced as links and never followed, and a stale epoch that changes nothing.

use std::os::unix::fs::symlink;
use std::time::Duration;

use tether_client::sync::{self, DownOptions, UpOptions};
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::tree::{assert_same_tree, client, noise, put, snapshot};
use tether_tests::{Agent, AgentOpts, Nats, pb};

fn up() -> UpOptions {
    UpOptions::default()
}

#[tokio::test]
async fn an_awkward_tree_round_trips_byte_identical_through_sync_up_and_down() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    assert!(agent.caps().tree_sync, "Hello must announce the tree ops");
    let c = client(&nats, &agent, "round-trip", 1).await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    put(l, "src/main.rs", b"fn main() {}\n", 0o644);
    put(l, "src/deep/er/still/file.txt", &noise(5000, 1), 0o600);
    put(l, "bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    put(l, "empty.txt", b"", 0o644);
    put(l, "with space/ünïcödé name ✓.txt", "grüße".as_bytes(), 0o644);
    std::fs::create_dir_all(l.join("empty/dir")).unwrap();
    symlink("../src/main.rs", l.join("bin/main-link")).unwrap();
    symlink(l.join("src/main.rs"), l.join("absolute-link")).unwrap();
    symlink("does/not/exist", l.join("dangling")).unwrap();
    // 200 MiB in 1 MiB blocks, each block distinct.
    let block = noise(1 << 20, 7);
    let mut big = Vec::with_capacity(200 << 20);
    for i in 0..200u64 {
        big.extend_from_slice(&i.to_le_bytes());
        big.extend_from_slice(&block[8..]);
    }
    put(l, "data/big.bin", &big, 0o640);
    drop(big);

    let report = sync::sync_up(&c, l, "proj", &up()).await.expect("sync up");
    assert_eq!(report.large_files, 1, "{report:?}");
    assert_eq!(report.files_sent, 6, "{report:?}");
    assert_same_tree(l, &agent.root.join("proj"));

    let back = tempfile::tempdir().unwrap();
    let down = sync::sync_down(&c, "proj", back.path(), &DownOptions::default()).await.expect("sync down");
    assert_eq!(down.files_received, 6, "{down:?}");
    assert_same_tree(l, back.path());
}

#[tokio::test]
async fn a_resync_sends_only_what_changed_and_the_agent_reads_no_unchanged_file() {
    let nats = Nats::start().await;
    let (state, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = root.path().canonicalize().unwrap();
    let opts = AgentOpts { state_dir: Some(state.path().to_owned()), root: Some(root), ..Default::default() };
    let agent = Agent::start_with(&nats, opts.clone()).await;
    let c = client(&nats, &agent, "resync", 1).await;
    let local = tempfile::tempdir().unwrap();
    for i in 0..300 {
        put(local.path(), &format!("d{}/f{i}.txt", i % 7), &noise(100 + i, i as u64), 0o644);
    }
    let first = sync::sync_up(&c, local.path(), "w", &up()).await.unwrap();
    assert_eq!(first.files_sent, 300);

    let again = sync::sync_up(&c, local.path(), "w", &up()).await.unwrap();
    assert!(again.plan.is_empty(), "{:?}", again.plan);
    assert_eq!((again.files_sent, again.batches), (0, 0));
    assert_eq!(again.remote.files_hashed, 0, "the agent knew every digest it had written");

    put(local.path(), "d3/f10.txt", b"changed", 0o644);
    let one = sync::sync_up(&c, local.path(), "w", &up()).await.unwrap();
    assert_eq!(one.plan.files, ["d3/f10.txt"]);
    assert_eq!((one.files_sent, one.bytes_sent, one.batches), (1, 7, 1));
    assert_eq!(one.remote.files_hashed, 0);
    assert_same_tree(local.path(), &agent.root.join("w"));

    // The digest cache lives in the state directory: a restarted agent reads nothing either.
    drop(agent);
    let agent = Agent::start_with(&nats, opts).await;
    let c = client(&nats, &agent, "resync", 1).await;
    let (manifest, scan) = c.remote_manifest("w", &[]).await.unwrap();
    assert_eq!(manifest.entries.len(), 307);
    assert_eq!((scan.files_hashed, scan.digests_cached), (0, 300), "{scan:?}");
}

#[tokio::test]
async fn a_second_manifest_of_an_unchanged_tree_reads_no_file_and_pages_cover_it_all() {
    // A small max_payload forces many pages.
    let nats = Nats::start_with("max_payload: 65536").await;
    let agent = Agent::start(&nats).await;
    let c = client(&nats, &agent, "manifest", 1).await;
    for i in 0..2_000 {
        put(
            &agent.root,
            &format!("t/{:02}/file-{i:05}.txt", i % 13),
            format!("content {i}").as_bytes(),
            0o644,
        );
    }
    // Files changed within the racy window are not remembered (see README); let it pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (first, scan1) = c.remote_manifest("t", &[]).await.unwrap();
    assert_eq!(first.entries.len(), 2_013);
    assert!(scan1.pages > 1, "{scan1:?}");
    assert_eq!(scan1.files_hashed, 2_000);
    let (second, scan2) = c.remote_manifest("t", &[]).await.unwrap();
    assert_eq!(second, first);
    assert_eq!((scan2.files_hashed, scan2.bytes_hashed, scan2.digests_cached), (0, 0, 2_000), "{scan2:?}");
    // One changed file is read again, and only it.
    put(&agent.root, "t/05/file-00005.txt", b"new", 0o644);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, scan3) = c.remote_manifest("t", &[]).await.unwrap();
    assert_eq!(scan3.files_hashed, 1, "{scan3:?}");
}

#[tokio::test]
async fn excludes_are_honoured_on_both_ends_and_preserves_survive_delete() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let c = client(&nats, &agent, "excl", 1).await;
    let local = tempfile::tempdir().unwrap();
    put(local.path(), "src/a.rs", b"a", 0o644);
    put(local.path(), "x.log", b"log", 0o644);
    put(local.path(), "build/out.o", b"obj", 0o644);
    put(&agent.root, "p/remote.log", b"theirs", 0o644);
    put(&agent.root, "p/stale.txt", b"old", 0o644);
    put(&agent.root, "p/.env", b"SECRET=1", 0o600);
    put(&agent.root, "p/data/cache.bin", b"cache", 0o644);
    let excludes = vec!["*.log".to_owned(), "build/".to_owned()];

    let keep = UpOptions { excludes: excludes.clone(), ..up() };
    sync::sync_up(&c, local.path(), "p", &keep).await.unwrap();
    assert!(agent.root.join("p/stale.txt").exists(), "nothing is removed without --delete");

    let cli = agent
        .tetherctl(&nats)
        .env("XDG_CACHE_HOME", agent.state_dir.join("client-cache"))
        .args([
            "--fence-scope",
            "excl",
            "sync",
            "up",
            "--delete",
            "--preserve",
            ".env",
            "--preserve",
            "data/",
        ])
        .args(["--exclude", "*.log", "--exclude", "build/"])
        .arg(local.path())
        .arg("p")
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(stdout.contains("1 removed"), "{stdout}");
    let remote = snapshot(&agent.root.join("p"));
    let paths: Vec<&str> = remote.keys().map(String::as_str).collect();
    assert_eq!(paths, [".env", "data", "data/cache.bin", "remote.log", "src", "src/a.rs"]);

    let back = tempfile::tempdir().unwrap();
    let opts = DownOptions { excludes, ..Default::default() };
    sync::sync_down(&c, "p", back.path(), &opts).await.unwrap();
    assert!(!back.path().join("remote.log").exists(), "excluded on the way down too");
    assert!(back.path().join(".env").exists() && back.path().join("src/a.rs").exists());

    // A dry run lists and changes nothing.
    put(local.path(), "src/new.rs", b"n", 0o644);
    let dry = UpOptions { dry_run: true, ..up() };
    let report = sync::sync_up(&c, local.path(), "p", &dry).await.unwrap();
    assert!(report.plan.files.contains(&"src/new.rs".to_owned()));
    assert!(!agent.root.join("p/src/new.rs").exists());
}

#[tokio::test]
async fn a_symlink_pointing_outside_is_synced_as_a_link_and_never_followed() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let c = client(&nats, &agent, "links", 1).await;
    let outside = tempfile::tempdir().unwrap();
    put(outside.path(), "secret.txt", b"do not copy", 0o644);

    let local = tempfile::tempdir().unwrap();
    put(local.path(), "a.txt", b"a", 0o644);
    symlink(outside.path(), local.path().join("out")).unwrap();
    sync::sync_up(&c, local.path(), "s", &up()).await.unwrap();
    let link = agent.root.join("s/out");
    assert_eq!(std::fs::read_link(&link).unwrap(), outside.path());

    // On the agent: a link out of the tree is listed, not walked, not read, not written through.
    let (manifest, _) = c.remote_manifest("s", &[]).await.unwrap();
    let keys: Vec<&str> = manifest.entries.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a.txt", "out"]);
    let read = c.batch_read("s", vec!["out/secret.txt".into()]).await.unwrap();
    assert!(read.files[0].missing && read.files[0].content.is_empty(), "{read:?}");
    let through = pb::BatchWriteRequest {
        root: "s".into(),
        entries: vec![pb::BatchEntry {
            path: "out/planted.txt".into(),
            kind: pb::FsEntryKind::File as i32,
            content: b"x".to_vec().into(),
            ..Default::default()
        }],
        remove: vec![],
    };
    let err = c.batch_write(through).await.unwrap_err();
    assert_eq!(err.code(), Some(pb::ErrorCode::Os), "{err}");
    let removal =
        pb::BatchWriteRequest { root: "s".into(), entries: vec![], remove: vec!["out/secret.txt".into()] };
    c.batch_write(removal).await.unwrap();
    assert!(!outside.path().join("planted.txt").exists());
    assert!(outside.path().join("secret.txt").exists(), "a removal below a link must not follow it");

    // And on the way down the link comes back as a link, with nothing of what it points at.
    let back = tempfile::tempdir().unwrap();
    sync::sync_down(&c, "s", back.path(), &DownOptions::default()).await.unwrap();
    assert_eq!(std::fs::read_link(back.path().join("out")).unwrap(), outside.path());
    assert_same_tree(local.path(), back.path());

    // A tree root outside the workspace is refused like any path.
    let err = c.remote_manifest(&outside.path().display().to_string(), &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(pb::ErrorCode::ConsentRequired), "{err}");
}

#[tokio::test]
async fn a_sync_under_a_stale_epoch_changes_nothing() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let current = client(&nats, &agent, "lease", 5).await;
    current.ping(1).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    put(local.path(), "f.txt", b"from a stale session", 0o644);
    let stale = client(&nats, &agent, "lease", 4).await;

    let err = sync::sync_up(&stale, local.path(), "fenced", &up()).await.unwrap_err();
    let sync::SyncError::Client(err) = err else { panic!("expected the agent's refusal, got {err:?}") };
    assert_eq!(err.code(), Some(pb::ErrorCode::Fenced), "{err}");
    assert!(!agent.root.join("fenced").exists());

    // A batch_write alone under the old epoch is refused whole, before anything is touched.
    let batch = Op::BatchWrite(pb::BatchWriteRequest {
        root: "fenced".into(),
        entries: vec![pb::BatchEntry {
            path: "a".into(),
            kind: pb::FsEntryKind::File as i32,
            content: b"a".to_vec().into(),
            ..Default::default()
        }],
        remove: vec![],
    });
    let refused = agent.call_fenced(batch.clone(), "lease", 4).await.unwrap_err();
    assert_eq!(refused.code, pb::ErrorCode::Fenced as i32);
    assert!(!agent.root.join("fenced").exists());
    let accepted = agent.call_fenced(batch, "lease", 5).await;
    assert!(matches!(accepted, Ok(Reply::BatchWrite(ref r)) if r.written == 1), "{accepted:?}");
}

#[tokio::test]
async fn malformed_tree_requests_get_protocol_errors() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let bad_path = Op::BatchWrite(pb::BatchWriteRequest {
        root: String::new(),
        entries: vec![pb::BatchEntry {
            path: "a/../../x".into(),
            kind: pb::FsEntryKind::File as i32,
            ..Default::default()
        }],
        remove: vec![],
    });
    let bad_mode = Op::BatchWrite(pb::BatchWriteRequest {
        root: String::new(),
        entries: vec![pb::BatchEntry {
            path: "x".into(),
            kind: pb::FsEntryKind::File as i32,
            mode: 0o4755,
            ..Default::default()
        }],
        remove: vec![],
    });
    let bad_cursor = Op::TreeManifest(pb::TreeManifestRequest { after: "/etc".into(), ..Default::default() });
    let bad_read = Op::BatchRead(pb::BatchReadRequest { root: String::new(), paths: vec!["..".into()] });
    for op in [bad_path, bad_mode, bad_cursor, bad_read] {
        let err = agent.call(op.clone()).await.unwrap_err();
        assert_eq!(err.code, pb::ErrorCode::Protocol as i32, "{op:?}: {err:?}");
    }
    assert!(std::fs::read_dir(&agent.root).unwrap().next().is_none(), "nothing was written");
}
