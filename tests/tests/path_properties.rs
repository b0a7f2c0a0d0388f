//! Path confinement as a property (issue 20, item 7): generated paths — `..`, `.`, runs of
//! slashes, trailing slashes, absolute paths, `~`, the `/workspace` virtual root and the real
//! root as prefixes, unicode, 4 KiB paths, embedded NUL — through every fs op of the agent's
//! own dispatcher (`tether_agent::dispatch`, in process: paths are resolved there, and a case
//! costs microseconds instead of a NATS round trip), confined to a scratch root that holds
//! symlinks leading out (absolute and relative).
//!
//! For every case: each reply decodes and names its request; a path whose lexical mapping
//! (an independent model of PROTOCOL.md §4 below) lies outside the root is refused with
//! CONSENT_REQUIRED; no listing, manifest or read ever shows what lies outside; and an inotify
//! watch on the directories outside sees no access at all (open, read, write, create, delete,
//! attribute change) — atime is no witness on the `relatime` mounts here.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use tether_agent::dispatch::Dispatcher;
use tether_agent::fence::{Fence, FencePolicy};
use tether_agent::ops::pty::Terminals;
use tether_agent::paths::Paths;
use tether_agent::process::Launcher;
use tether_agent::sandbox::{CommandPolicy, Confinement, Sandbox};
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::pb;
use tether_tests::watch::AccessWatch;

const MAX_PAYLOAD: usize = 256 << 10;
const VIRTUAL_ROOT: &str = "/workspace";
const CANARY: &[u8] = b"CANARY: outside the workspace root";

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    runtime: tokio::runtime::Runtime,
    dispatcher: Dispatcher,
    next_id: std::cell::Cell<u64>,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("tether-paths-").tempdir().expect("scratch dir");
        let base = dir.path().canonicalize().expect("canonical scratch dir");
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(outside.join("sub")).expect("outside");
        std::fs::write(outside.join("canary"), CANARY).expect("canary");
        std::fs::write(outside.join("sub/canary"), CANARY).expect("canary in sub");
        std::fs::create_dir(&root).expect("root");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dispatcher = runtime.block_on(async {
            // Home is outside the root: `~` must be refused like any other way out.
            let paths =
                Arc::new(Paths::new(&root, VIRTUAL_ROOT, Some(outside.clone()), true).expect("paths"));
            let fence = Fence::open(
                &base.join("state"),
                FencePolicy::default(),
                tokio_util::sync::CancellationToken::new(),
            );
            let fence = Arc::new(fence.expect("fence"));
            let launcher = Arc::new(Launcher::from_env(std::iter::empty(), &[] as &[&str]));
            let terminals = Arc::new(Terminals::new(
                None,
                launcher.clone(),
                fence.clone(),
                ("ws", "a"),
                Duration::from_secs(60),
            ));
            let refusing = CommandPolicy {
                confinement: Confinement::Unavailable { reason: "path properties: no command runs".into() },
                allow_unconfined: false,
            };
            Dispatcher::new(paths, launcher, Arc::new(Sandbox::from_policy(refusing)), fence, terminals)
        });
        Scratch { _dir: dir, root, outside, runtime, dispatcher, next_id: Default::default() }
    }

    /// Puts the root back as every case starts from it: files, a directory, and three links
    /// (absolute out, relative out, absolute but inside).
    fn reset(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
        std::fs::create_dir_all(self.root.join("a/deep")).expect("root/a");
        std::fs::create_dir(self.root.join("b")).expect("root/b");
        std::fs::write(self.root.join("a/f"), b"inside").expect("root/a/f");
        std::os::unix::fs::symlink(&self.outside, self.root.join("escape")).expect("escape");
        std::os::unix::fs::symlink("../outside", self.root.join("up")).expect("up");
        std::os::unix::fs::symlink(self.root.join("a"), self.root.join("in")).expect("in");
    }

    fn call(&self, op: Op) -> Result<Reply, pb::AgentError> {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let req = pb::ControlRequest { request_id: format!("p{id}"), op: Some(op), ..Default::default() };
        let reply =
            self.runtime.block_on(self.dispatcher.handle(Bytes::from(req.encode_to_vec()), MAX_PAYLOAD));
        let resp = pb::ControlResponse::decode(reply).expect("every reply decodes");
        assert_eq!(resp.request_id, req.request_id, "the reply names another request");
        match (resp.error, resp.result) {
            (Some(e), None) => Err(e),
            (None, Some(r)) => Ok(r),
            other => panic!("exactly one of error and result: {other:?}"),
        }
    }
}

/// The model: where `raw` lands lexically (PROTOCOL.md §4: runs of slashes are one; the
/// virtual root and `~` are prefixes only as whole components; relative is under the root).
fn lands(raw: &str, root: &Path, home: &Path) -> PathBuf {
    let mut s = String::new();
    for c in raw.chars() {
        if !(c == '/' && s.ends_with('/')) {
            s.push(c);
        }
    }
    let joined = if s.is_empty() || s == VIRTUAL_ROOT {
        root.to_owned()
    } else if let Some(rest) = s.strip_prefix("/workspace/") {
        root.join(rest)
    } else if s == "~" || s.starts_with("~/") {
        home.join(s.trim_start_matches('~').trim_start_matches('/'))
    } else if s.starts_with('/') {
        PathBuf::from(&s)
    } else {
        root.join(&s)
    };
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn path_strategy(root: &Path, outside: &Path) -> BoxedStrategy<String> {
    let long_name = "n".repeat(255);
    let component = prop_oneof![
        4 => Just("..".to_owned()),
        2 => Just(".".to_owned()),
        1 => Just(String::new()),
        3 => Just("escape".to_owned()),
        2 => Just("up".to_owned()),
        2 => Just("in".to_owned()),
        3 => Just("a".to_owned()),
        1 => Just("b".to_owned()),
        1 => Just("f".to_owned()),
        1 => Just("deep".to_owned()),
        1 => Just("canary".to_owned()),
        1 => Just("sub".to_owned()),
        1 => Just("outside".to_owned()),
        1 => Just("~".to_owned()),
        1 => Just("workspace".to_owned()),
        1 => Just("é日本語".to_owned()),
        1 => Just("\u{202e}txt.exe".to_owned()),
        1 => Just("x\0y".to_owned()),
        1 => Just(long_name),
        2 => "[a-z]{1,6}",
    ];
    let prefix = prop_oneof![
        4 => Just(String::new()),
        2 => Just("/".to_owned()),
        2 => Just("~/".to_owned()),
        1 => Just("~".to_owned()),
        3 => Just("/workspace/".to_owned()),
        1 => Just("/workspace".to_owned()),
        1 => Just("//workspace//".to_owned()),
        1 => Just("/workspace/../".to_owned()),
        2 => Just(format!("{}/", root.display())),
        1 => Just(format!("{}/", outside.display())),
        1 => Just("/etc/".to_owned()),
    ];
    let separator = prop_oneof![6 => Just("/"), 1 => Just("//"), 1 => Just("/./")];
    let generated = (prefix, prop::collection::vec((component, separator), 0..7), any::<bool>()).prop_map(
        |(prefix, parts, trailing)| {
            let mut s = prefix;
            for (i, (c, sep)) in parts.iter().enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push_str(c);
            }
            if trailing {
                s.push('/');
            }
            s
        },
    );
    // 4 KiB paths: many short components, one that climbs out, one over-long name.
    let long = prop_oneof![
        Just("a/".repeat(2048)),
        Just(format!("{}escape/canary", "a/../".repeat(800))),
        Just(format!("{}outside/canary", "../".repeat(1400))),
        Just("x".repeat(4096)),
        Just(format!("/workspace/{}", "é".repeat(2000))),
    ];
    prop_oneof![20 => generated, 1 => long].boxed()
}

/// Every fs op with `p` (and `q` as a second path); each reply checked against the model.
fn run_case(s: &Scratch, p: &str, q: &str) -> Result<(), String> {
    let out_p = !lands(p, &s.root, &s.outside).starts_with(&s.root);
    let out_q = !lands(q, &s.root, &s.outside).starts_with(&s.root);
    let file = |path: &str| pb::BatchEntry {
        path: path.to_owned(),
        kind: pb::FsEntryKind::File as i32,
        content: b"batch".to_vec().into(),
        ..Default::default()
    };
    let ops: Vec<(&str, Op, bool)> = vec![
        ("stat", Op::FsStat(pb::FsStatRequest { path: p.into() }), out_p),
        ("read", Op::FsRead(pb::FsReadRequest { path: p.into(), ..Default::default() }), out_p),
        ("digest", Op::FsDigest(pb::FsDigestRequest { path: p.into() }), out_p),
        ("list", Op::FsList(pb::FsListRequest { path: p.into(), recursive: true, max_entries: 0 }), out_p),
        (
            "manifest",
            Op::TreeManifest(pb::TreeManifestRequest { root: p.into(), ..Default::default() }),
            out_p,
        ),
        (
            "batch_read",
            Op::BatchRead(pb::BatchReadRequest { root: p.into(), paths: vec!["f".into()] }),
            out_p,
        ),
        (
            "batch_read entries",
            Op::BatchRead(pb::BatchReadRequest { root: String::new(), paths: vec![p.into()] }),
            false,
        ),
        (
            "write",
            Op::FsWrite(pb::FsWriteRequest {
                path: p.into(),
                content: b"w".to_vec().into(),
                create_parents: true,
                ..Default::default()
            }),
            out_p,
        ),
        (
            "append",
            Op::FsWrite(pb::FsWriteRequest {
                path: p.into(),
                content: b"a".to_vec().into(),
                append: true,
                ..Default::default()
            }),
            out_p,
        ),
        (
            "write at",
            Op::FsWrite(pb::FsWriteRequest {
                path: p.into(),
                content: b"o".to_vec().into(),
                offset: 3,
                use_offset: true,
                ..Default::default()
            }),
            out_p,
        ),
        (
            "transfer_open",
            Op::TransferOpen(pb::TransferOpenRequest {
                transfer_id: "prop-transfer-1".into(),
                path: p.into(),
                create_parents: true,
                ..Default::default()
            }),
            out_p,
        ),
        (
            "transfer_abort",
            Op::TransferAbort(pb::TransferAbortRequest { transfer_id: "prop-transfer-1".into() }),
            false,
        ),
        ("mkdir", Op::FsMkdir(pb::FsMkdirRequest { path: p.into(), parents: true, mode: 0 }), out_p),
        (
            "batch_write root",
            Op::BatchWrite(pb::BatchWriteRequest {
                root: p.into(),
                entries: vec![file("n")],
                remove: vec![],
            }),
            out_p,
        ),
        (
            "batch_write entries",
            Op::BatchWrite(pb::BatchWriteRequest {
                root: String::new(),
                entries: vec![file(p)],
                remove: vec![q.into()],
            }),
            false,
        ),
        (
            "move",
            Op::FsMove(pb::FsMoveRequest { from: p.into(), to: q.into(), overwrite: true }),
            out_p || out_q,
        ),
        (
            "move back",
            Op::FsMove(pb::FsMoveRequest { from: q.into(), to: p.into(), overwrite: false }),
            out_p || out_q,
        ),
        ("remove", Op::FsRemove(pb::FsRemoveRequest { path: p.into(), recursive: true }), out_p),
    ];
    for (name, op, must_refuse) in ops {
        let result = s.call(op);
        let what = format!("{name} {p:?} (to {q:?})");
        let entries = matches!(name, "batch_read entries" | "batch_write entries" | "transfer_abort");
        let nul = (p.contains('\0') && !entries) || (name.starts_with("move") && q.contains('\0'));
        let code = |c: pb::ErrorCode| matches!(&result, Err(e) if e.code == c as i32);
        match &result {
            Err(e) if e.code == pb::ErrorCode::Unspecified as i32 => {
                return Err(format!("{what}: untyped error {e:?}"));
            }
            // A NUL names no file: malformed (unless the other path is refused first).
            Err(e) if nul && !code(pb::ErrorCode::Protocol) && !code(pb::ErrorCode::ConsentRequired) => {
                return Err(format!("{what}: a path with NUL is malformed, yet {e:?}"));
            }
            Err(_) if nul => {}
            Ok(r) if nul => return Err(format!("{what}: a path with NUL names no file, yet {r:?}")),
            Err(e) if must_refuse && e.code != pb::ErrorCode::ConsentRequired as i32 => {
                return Err(format!("{what}: lies outside the root, refused with {e:?}"));
            }
            Ok(r) if must_refuse => return Err(format!("{what}: lies outside the root, yet {r:?}")),
            _ => {}
        }
        if let Ok(r) = &result {
            shows_nothing_outside(s, r).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    Ok(())
}

/// No listing, manifest or read shows what lies outside.
fn shows_nothing_outside(s: &Scratch, reply: &Reply) -> Result<(), String> {
    let outside = s.outside.display().to_string();
    let entry_ok = |e: &pb::FsEntry| {
        e.name != "canary"
            && e.name != "sub"
            && !e.path.starts_with(&outside)
            && (e.path.starts_with(&*s.root.to_string_lossy()) || e.path.starts_with(VIRTUAL_ROOT))
    };
    match reply {
        Reply::FsList(l) => match l.entries.iter().find(|e| !entry_ok(e)) {
            Some(e) => Err(format!("listed {e:?}")),
            None => Ok(()),
        },
        Reply::FsStat(st) => match &st.entry {
            Some(e) if !entry_ok(e) => Err(format!("stat {e:?}")),
            _ => Ok(()),
        },
        Reply::TreeManifest(m) => {
            match m.entries.iter().find(|e| e.path.contains("canary") || e.path == "sub") {
                Some(e) => Err(format!("manifest {e:?}")),
                None => Ok(()),
            }
        }
        Reply::FsRead(r) if r.content.as_ref() == CANARY => Err("read the canary".into()),
        Reply::BatchRead(b) if b.files.iter().any(|f| f.content.as_ref() == CANARY) => {
            Err("read the canary".into())
        }
        _ => Ok(()),
    }
}

fn outside_state(outside: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    for p in [outside.to_owned(), outside.join("canary"), outside.join("sub"), outside.join("sub/canary")] {
        // stat(2) raises no inotify event.
        let m = std::fs::symlink_metadata(&p).expect("outside entry");
        v.push((
            p,
            m.size(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000,
        ));
    }
    v
}

#[test]
fn generated_paths_through_every_fs_op_never_leave_the_root() {
    let s = Scratch::new();
    let before = outside_state(&s.outside);
    let watch = AccessWatch::new(&[&s.outside, &s.outside.join("sub")]);
    let cases: u32 = std::env::var("TETHER_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (path_strategy(&s.root, &s.outside), path_strategy(&s.root, &s.outside));
    let refused = std::cell::Cell::new(0u64);
    let result = runner.run(&strategy, |(p, q)| {
        s.reset();
        let _ = watch.take();
        run_case(&s, &p, &q).map_err(TestCaseError::fail)?;
        let events = watch.take();
        if !events.is_empty() {
            return Err(TestCaseError::fail(format!("{p:?} / {q:?}: accesses outside the root: {events:?}")));
        }
        if !lands(&p, &s.root, &s.outside).starts_with(&s.root) {
            refused.set(refused.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(outside_state(&s.outside), before, "something outside the root changed");
    let _ = watch.take();
    assert_eq!(std::fs::read(s.outside.join("canary")).expect("canary"), CANARY);
    let refused = refused.get();
    eprintln!("{cases} cases × 18 ops; {refused} first paths lay outside the root and were refused");
    assert!(refused > cases as u64 / 10, "the generator reaches outside the root too rarely: {refused}");
}
