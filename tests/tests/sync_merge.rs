//! Push, run, pull without losing local edits (README "Workspace sync"): `tetherctl sync up
//! --baseline-out`, changes on both sides, then `tetherctl sync down --baseline`, covering every
//! case of the three-way merge, conflicts (local kept, remote saved beside, exit status 3) and
//! `--prefer`, and a mirror without a baseline.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use tether_tests::tree::put;
use tether_tests::{Agent, Nats};

/// `tetherctl sync ARGS`, its local digest cache in a directory of the test's own.
fn sync(agent: &Agent, nats: &Nats, args: &[&str]) -> Output {
    let cache = agent.state_dir.join("client-cache");
    let mut cmd = agent.tetherctl(nats);
    cmd.env("XDG_CACHE_HOME", cache).args(["--fence-scope", "merge", "sync"]).args(args);
    cmd.output().expect("run tetherctl")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[tokio::test]
async fn every_merge_case_of_sync_down_against_a_baseline() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let (local, base) = (dir.path().join("work"), dir.path().join("base.json"));
    for name in
        ["r_only", "l_only", "same", "both", "r_del", "l_del", "del_vs_mod", "mod_vs_del", "exe", "stay"]
    {
        put(&local, name, format!("{name} v0").as_bytes(), 0o644);
    }
    put(&local, "gone/inner.txt", b"inner", 0o644);
    let base_arg = base.to_str().unwrap();
    let out = sync(&agent, &nats, &["up", local.to_str().unwrap(), "job", "--baseline-out", base_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(base.exists());

    // Remote changes (what the job did).
    let remote = agent.root.join("job");
    std::fs::write(remote.join("r_only"), "r_only remote").unwrap();
    std::fs::write(remote.join("same"), "same both").unwrap();
    std::fs::write(remote.join("both"), "both remote").unwrap();
    std::fs::remove_file(remote.join("r_del")).unwrap();
    std::fs::write(remote.join("del_vs_mod"), "del_vs_mod remote").unwrap();
    std::fs::remove_file(remote.join("mod_vs_del")).unwrap();
    std::fs::set_permissions(remote.join("exe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(remote.join("gone")).unwrap();
    put(&remote, "out/result.txt", b"result", 0o644);
    // Local edits made meanwhile.
    std::fs::write(local.join("l_only"), "l_only local").unwrap();
    std::fs::write(local.join("same"), "same both").unwrap();
    std::fs::write(local.join("both"), "both local").unwrap();
    std::fs::remove_file(local.join("l_del")).unwrap();
    std::fs::remove_file(local.join("del_vs_mod")).unwrap();
    std::fs::write(local.join("mod_vs_del"), "mod_vs_del local").unwrap();

    // A dry run reports and touches nothing.
    let dry = sync(&agent, &nats, &["down", "job", local.to_str().unwrap(), "--baseline", base_arg, "-n"]);
    assert_eq!(dry.status.code(), Some(3), "{}", text(&dry));
    assert_eq!(read(&local.join("r_only")).as_deref(), Some("r_only v0"));

    let out = sync(&agent, &nats, &["down", "job", local.to_str().unwrap(), "--baseline", base_arg]);
    assert_eq!(out.status.code(), Some(3), "unsettled conflicts exit 3: {}", text(&out));
    let report = text(&out);
    for conflict in ["both", "del_vs_mod", "mod_vs_del"] {
        assert!(report.contains(&format!("CONFLICT: {conflict} ")), "{conflict} reported: {report}");
    }
    assert_eq!(read(&local.join("r_only")).as_deref(), Some("r_only remote"), "changed only remotely: taken");
    assert_eq!(read(&local.join("l_only")).as_deref(), Some("l_only local"), "changed only locally: kept");
    assert_eq!(read(&local.join("same")).as_deref(), Some("same both"));
    assert!(!local.join("same.remote").exists(), "the same change on both sides is no conflict");
    assert_eq!(read(&local.join("both")).as_deref(), Some("both local"), "a conflict keeps the local file");
    assert_eq!(
        read(&local.join("both.remote")).as_deref(),
        Some("both remote"),
        "and saves the remote beside"
    );
    assert!(!local.join("r_del").exists(), "deleted only remotely: deleted");
    assert!(!local.join("l_del").exists(), "deleted only locally: stays deleted");
    assert!(!local.join("del_vs_mod").exists(), "deleted here, changed there: local state kept");
    assert_eq!(read(&local.join("del_vs_mod.remote")).as_deref(), Some("del_vs_mod remote"));
    assert_eq!(
        read(&local.join("mod_vs_del")).as_deref(),
        Some("mod_vs_del local"),
        "changed here, deleted there"
    );
    let mode = std::fs::metadata(local.join("exe")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "a remote mode change is taken");
    assert!(!local.join("gone").exists(), "a directory deleted remotely goes once empty");
    assert_eq!(read(&local.join("out/result.txt")).as_deref(), Some("result"), "a remote addition arrives");
    assert_eq!(read(&local.join("stay")).as_deref(), Some("stay v0"));
}

#[tokio::test]
async fn prefer_settles_conflicts_and_without_a_baseline_down_mirrors() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let (local, base) = (dir.path().join("work"), dir.path().join("base.json"));
    put(&local, "a.txt", b"v0", 0o644);
    put(&local, "b.txt", b"v0", 0o644);
    let snap = sync(&agent, &nats, &["snapshot", local.to_str().unwrap(), "-o", base.to_str().unwrap()]);
    assert!(snap.status.success(), "{}", text(&snap));
    let up = sync(&agent, &nats, &["up", local.to_str().unwrap(), "job"]);
    assert!(up.status.success(), "{}", text(&up));
    std::fs::write(agent.root.join("job/a.txt"), "remote").unwrap();
    std::fs::write(local.join("a.txt"), "local").unwrap();
    std::fs::remove_file(agent.root.join("job/b.txt")).unwrap();
    std::fs::write(local.join("b.txt"), "local b").unwrap();

    let base_arg = base.to_str().unwrap();
    let args = ["down", "job", local.to_str().unwrap(), "--baseline", base_arg, "--prefer", "remote"];
    let out = sync(&agent, &nats, &args);
    assert!(out.status.success(), "settled conflicts exit 0: {}", text(&out));
    assert_eq!(read(&local.join("a.txt")).as_deref(), Some("remote"));
    assert!(!local.join("b.txt").exists(), "the remote deletion wins");
    assert!(!local.join("a.txt.remote").exists());

    // Without a baseline: a mirror; local-only files stay unless --delete.
    put(&local, "extra.txt", b"mine", 0o644);
    let out = sync(&agent, &nats, &["down", "job", local.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(local.join("extra.txt").exists());
    let out = sync(&agent, &nats, &["down", "job", local.to_str().unwrap(), "--delete", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!local.join("extra.txt").exists());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(json["removed"], 1, "{json}");
}
