//! Fast, verified, resumable transfers (README "Transfers") through `tetherctl get/put`, against
//! the real agent and nats-server: a large file round trip, byte-identical; a chunk corrupted
//! on the way (by a NATS-side interceptor standing in for the agent) is caught by the BLAKE3
//! check and the target is untouched; an upload killed half-way resumes and sends only the rest;
//! a download killed half-way continues its partial file; a precondition that no longer holds
//! writes nothing; a stale epoch commits nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, Nats, Proc, error_code, eventually, pb};

/// Deterministic bytes that no compression or pattern shortcut could fake.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run tetherctl")
}

/// Runs `tetherctl --json ARGS` to success and returns its JSON report.
fn json_ok(agent: &Agent, nats: &Nats, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let mut cmd = agent.tetherctl(nats);
    cmd.arg("--json").args(args);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "tetherctl {args:?} failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).expect("tetherctl prints one JSON object")
}

fn same_bytes(a: &Path, expected: &[u8]) {
    let got = std::fs::read(a).unwrap_or_else(|e| panic!("reading {}: {e}", a.display()));
    assert_eq!(got.len(), expected.len(), "{} has the wrong size", a.display());
    assert!(got == expected, "{} differs from the original", a.display());
}

/// Hidden upload temp files left in `dir`.
fn upload_temps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tether-xfer-")))
        .collect()
}

/// A NATS-side interceptor standing in for the agent under another agent id: every request is
/// decoded and handed to `rule`, which may change it, and is forwarded to the real agent when
/// the rule says so (else it is never answered).
struct Proxy {
    id: String,
    forwarded: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(
        agent: &Agent,
        nats: &Nats,
        rule: impl Fn(&mut pb::ControlRequest) -> bool + Send + Sync + 'static,
    ) -> Proxy {
        let id = format!("{}-proxy", agent.id);
        let nc = nats.client().await;
        let mut requests = nc.subscribe(format!("agent.{}.{id}.rpc", agent.ws)).await.expect("subscribe");
        nc.flush().await.expect("flush");
        let real = agent.rpc_subject();
        let (forwarded, answered, dropped) = Default::default();
        let counts: (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&forwarded), Arc::clone(&answered), Arc::clone(&dropped));
        let task = tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                let (Some(reply), Ok(mut request)) = (msg.reply, pb::ControlRequest::decode(msg.payload))
                else {
                    continue;
                };
                if !rule(&mut request) {
                    counts.2.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                counts.0.fetch_add(1, Ordering::SeqCst);
                let (nc, real, answered) = (nc.clone(), real.clone(), counts.1.clone());
                tokio::spawn(async move {
                    if let Ok(answer) = nc.request(real, request.encode_to_vec().into()).await {
                        let _ = nc.publish(reply, answer.payload).await;
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Proxy { id, forwarded, answered, dropped, task }
    }

    /// `tetherctl` aimed at the proxy instead of the agent.
    fn tetherctl(&self, agent: &Agent, nats: &Nats) -> Command {
        let mut cmd = agent.tetherctl(nats);
        cmd.env("TETHER_AGENT_ID", &self.id);
        cmd
    }
}

/// The offset of an upload chunk (an fs_write naming a transfer), if `request` is one.
fn upload_chunk(request: &mut pb::ControlRequest) -> Option<&mut pb::FsWriteRequest> {
    match &mut request.op {
        Some(Op::FsWrite(w)) if !w.transfer_id.is_empty() => Some(w),
        _ => None,
    }
}

#[tokio::test]
async fn a_large_file_round_trips_windowed_verified_and_byte_identical() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let caps = agent.caps();
    assert!(caps.transfers && caps.transfer_window > 1, "{caps:?}");
    let local = tempfile::tempdir().unwrap();
    let data = noise(96 << 20);
    let original = local.path().join("big.bin");
    std::fs::write(&original, &data).unwrap();
    let expected = blake3::hash(&data).to_hex().to_string();

    let put = json_ok(&agent, &nats, &["put".as_ref(), original.as_os_str(), "/workspace/big.bin".as_ref()]);
    assert_eq!(put["transfer"]["blake3"], expected.as_str(), "{put}");
    assert_eq!(put["transfer"]["verified"], true);
    assert_eq!(put["transfer"]["sent"], data.len() as u64);
    assert_eq!(put["transfer"]["agent_received"], data.len() as u64);
    same_bytes(&agent.root.join("big.bin"), &data);
    assert!(upload_temps(&agent.root).is_empty());

    let copy = local.path().join("copy.bin");
    let get = json_ok(&agent, &nats, &["get".as_ref(), "/workspace/big.bin".as_ref(), copy.as_os_str()]);
    assert_eq!(get["transfer"]["blake3"], expected.as_str(), "{get}");
    assert_eq!(get["transfer"]["verified"], true);
    same_bytes(&copy, &data);
    assert!(!tether_client::partial_path(&copy).unwrap().exists(), "the partial file was renamed");
}

// Multi-threaded: the proxy must run while the test blocks on tetherctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_on_the_way_fails_the_upload_and_leaves_the_target_untouched() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    std::fs::write(agent.root.join("t.bin"), b"the old content").unwrap();
    let flipped = Arc::new(AtomicU64::new(0));
    let flips = flipped.clone();
    let proxy = Proxy::start(&agent, &nats, move |request| {
        if let Some(chunk) = upload_chunk(request)
            && chunk.offset > 0
            && flips.fetch_add(1, Ordering::SeqCst) == 0
        {
            let mut content = chunk.content.to_vec();
            content[17] ^= 0x40;
            chunk.content = content.into();
        }
        true
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    let original = local.path().join("t.bin");
    std::fs::write(&original, noise(5 << 20)).unwrap();

    let mut cmd = proxy.tetherctl(&agent, &nats);
    cmd.args(["put".as_ref(), original.as_os_str(), "/workspace/t.bin".as_ref()]);
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupted upload must fail");
    assert!(flipped.load(Ordering::SeqCst) >= 1, "the interceptor flipped a byte");
    assert!(stderr.contains("BLAKE3"), "the failure names the digest: {stderr}");
    assert_eq!(std::fs::read(agent.root.join("t.bin")).unwrap(), b"the old content");
    assert!(upload_temps(&agent.root).is_empty(), "the discarded upload left its temp file");
}

#[tokio::test]
async fn an_upload_killed_half_way_resumes_and_sends_only_the_rest() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    const CUT: u64 = 24 << 20;
    // Chunks below CUT reach the agent; the rest are swallowed, so the upload stalls half-way.
    let proxy =
        Proxy::start(&agent, &nats, |request| upload_chunk(request).is_none_or(|c| c.offset < CUT)).await;
    let local = tempfile::tempdir().unwrap();
    let data = noise(64 << 20);
    let original = local.path().join("r.bin");
    std::fs::write(&original, &data).unwrap();

    let mut cmd = proxy.tetherctl(&agent, &nats);
    cmd.args(["put".as_ref(), original.as_os_str(), "/workspace/r.bin".as_ref()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = Proc::spawn("tetherctl", &mut cmd).unwrap();
    eventually("the upload to stall at the cut", || proxy.dropped.load(Ordering::SeqCst) > 0).await;
    eventually("every forwarded request to be answered", || {
        proxy.answered.load(Ordering::SeqCst) == proxy.forwarded.load(Ordering::SeqCst)
    })
    .await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!agent.root.join("r.bin").exists(), "nothing is committed half-way");
    assert_eq!(upload_temps(&agent.root).len(), 1, "the upload's temp file waits for the re-run");

    // The same command again, straight to the agent: the derived transfer id finds the upload.
    let put = json_ok(&agent, &nats, &["put".as_ref(), original.as_os_str(), "/workspace/r.bin".as_ref()]);
    let t = &put["transfer"];
    let (sent, skipped) = (t["sent"].as_u64().unwrap(), t["skipped"].as_u64().unwrap());
    assert_eq!(t["resumed"], true, "{put}");
    assert!(skipped >= CUT, "the bytes already on the agent are not sent again: {put}");
    assert_eq!(sent + skipped, data.len() as u64, "{put}");
    assert_eq!(t["agent_received"], data.len() as u64, "no byte reached the agent twice: {put}");
    same_bytes(&agent.root.join("r.bin"), &data);
    assert!(upload_temps(&agent.root).is_empty());
}

#[tokio::test]
async fn a_download_killed_half_way_continues_its_partial_file() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let data = noise(48 << 20);
    std::fs::write(agent.root.join("d.bin"), &data).unwrap();
    const CUT: u64 = 20 << 20;
    let proxy = Proxy::start(&agent, &nats, |request| match &request.op {
        Some(Op::FsRead(r)) => r.offset < CUT,
        _ => true,
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    let copy = local.path().join("d.bin");
    let partial = tether_client::partial_path(&copy).unwrap();

    let mut cmd = proxy.tetherctl(&agent, &nats);
    cmd.args(["get".as_ref(), "/workspace/d.bin".as_ref(), copy.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = Proc::spawn("tetherctl", &mut cmd).unwrap();
    eventually("the partial file to reach the cut", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() >= CUT)
    })
    .await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!copy.exists(), "nothing is renamed into place half-way");
    let kept = std::fs::metadata(&partial).unwrap().len();

    let get = json_ok(&agent, &nats, &["get".as_ref(), "/workspace/d.bin".as_ref(), copy.as_os_str()]);
    let t = &get["transfer"];
    assert_eq!(t["resumed"], true, "{get}");
    assert_eq!(t["skipped"], kept, "{get}");
    assert_eq!(t["sent"], data.len() as u64 - kept, "only the rest was read: {get}");
    assert_eq!(t["verified"], true);
    same_bytes(&copy, &data);
    assert!(!partial.exists());
}

#[tokio::test]
async fn a_precondition_that_no_longer_holds_writes_nothing() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let target = agent.root.join("p.txt");
    std::fs::write(&target, noise(3 << 20)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let copy = local.path().join("p.txt");
    let read = json_ok(&agent, &nats, &["get".as_ref(), "/workspace/p.txt".as_ref(), copy.as_os_str()]);
    let seen = read["transfer"]["blake3"].as_str().unwrap().to_owned();

    // Someone else changes the file after we read it; our edit must not overwrite theirs.
    let theirs = noise(2 << 20).into_iter().rev().collect::<Vec<u8>>();
    std::fs::write(&target, &theirs).unwrap();
    let mine = local.path().join("mine.txt");
    std::fs::write(&mine, b"my edit of the version I read").unwrap();
    for guard in [vec!["--if-match", seen.as_str()], vec!["--if-absent"]] {
        let mut cmd = agent.tetherctl(&nats);
        cmd.arg("put").args(&guard).arg(&mine).arg("/workspace/p.txt");
        let out = run(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{guard:?} must refuse");
        assert!(stderr.contains("nothing was written"), "{guard:?}: {stderr}");
        assert_eq!(std::fs::read(&target).unwrap(), theirs, "{guard:?} changed the target");
    }
    assert!(upload_temps(&agent.root).is_empty());

    // Against the version that is there, the same upload goes through.
    let current = blake3::hash(&theirs).to_hex().to_string();
    json_ok(
        &agent,
        &nats,
        &[
            "put".as_ref(),
            "--if-match".as_ref(),
            current.as_ref(),
            mine.as_os_str(),
            "/workspace/p.txt".as_ref(),
        ],
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"my edit of the version I read");
}

fn open_req(id: &str, path: &str) -> Op {
    Op::TransferOpen(pb::TransferOpenRequest {
        transfer_id: id.into(),
        path: path.into(),
        ..Default::default()
    })
}

fn chunk(id: &str, path: &str, offset: u64, content: &[u8]) -> Op {
    Op::FsWrite(pb::FsWriteRequest {
        path: path.into(),
        content: content.to_vec().into(),
        offset,
        use_offset: true,
        transfer_id: id.into(),
        ..Default::default()
    })
}

fn commit_req(id: &str, path: &str, content: &[u8]) -> Op {
    Op::TransferCommit(pb::TransferCommitRequest {
        transfer_id: id.into(),
        path: path.into(),
        size: content.len() as u64,
        blake3: blake3::hash(content).as_bytes().to_vec().into(),
    })
}

#[tokio::test]
async fn an_upload_under_a_stale_epoch_is_refused_and_commits_nothing() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let (scope, id, path) = ("lease-7", "stale-upload-1", "/workspace/f.bin");
    std::fs::write(agent.root.join("f.bin"), b"v1").unwrap();
    let content = noise(300_000);
    agent.call_fenced(open_req(id, path), scope, 1).await.unwrap();
    agent.call_fenced(chunk(id, path, 0, &content), scope, 1).await.unwrap();
    // A newer lease of the same session takes over.
    agent.call_fenced(Op::Ping(pb::PingRequest { nonce: 1 }), scope, 2).await.unwrap();

    for op in [commit_req(id, path, &content), chunk(id, path, 0, &content), open_req(id, path)] {
        let err = agent.call_fenced(op, scope, 1).await.unwrap_err();
        assert_eq!(error_code(&err), pb::ErrorCode::Fenced, "{err:?}");
    }
    assert_eq!(
        std::fs::read(agent.root.join("f.bin")).unwrap(),
        b"v1",
        "the stale commit changed the target"
    );

    // tetherctl under the stale epoch is refused the same way, before anything is written.
    let local = tempfile::tempdir().unwrap();
    let mine = local.path().join("f.bin");
    std::fs::write(&mine, &content).unwrap();
    let mut cmd = agent.tetherctl(&nats);
    cmd.args(["--fence-scope", scope, "--epoch", "1", "put"]).arg(&mine).arg(path);
    let out = run(cmd);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FENCED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(agent.root.join("f.bin")).unwrap(), b"v1");

    // The current lease may finish the same upload.
    let done = agent.call_fenced(commit_req(id, path, &content), scope, 2).await.unwrap();
    let Reply::TransferCommit(done) = done else { panic!("{done:?}") };
    assert_eq!(done.bytes_received, content.len() as u64);
    assert_eq!(std::fs::read(agent.root.join("f.bin")).unwrap(), content);
}

#[tokio::test]
async fn a_commit_with_bytes_missing_names_them_and_keeps_the_upload() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let (id, path) = ("holes-upload-1", "/workspace/h.bin");
    let content = noise(10_000);
    agent.call(open_req(id, path)).await.unwrap();
    agent.call(chunk(id, path, 0, &content[..4000])).await.unwrap();
    agent.call(chunk(id, path, 6000, &content[6000..])).await.unwrap();
    let err = agent.call(commit_req(id, path, &content)).await.unwrap_err();
    assert_eq!(err.detail["missing"], "4000+2000", "{err:?}");
    let Reply::TransferOpen(again) = agent.call(open_req(id, path)).await.unwrap() else { panic!() };
    assert!(again.resumed);
    let held: Vec<(u64, u64)> = again.held.iter().map(|r| (r.offset, r.length)).collect();
    assert_eq!(held, vec![(0, 4000), (6000, 4000)]);
    agent.call(chunk(id, path, 4000, &content[4000..6000])).await.unwrap();
    agent.call(commit_req(id, path, &content)).await.unwrap();
    assert_eq!(std::fs::read(agent.root.join("h.bin")).unwrap(), content);
}

#[tokio::test]
async fn an_abandoned_upload_is_discarded_with_its_temp_file_after_the_idle_time() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--transfer-idle-timeout".into(), "1s".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    assert_eq!(agent.caps().transfer_idle_ms, 1000);
    let (id, path) = ("abandoned-upload-1", "/workspace/a.bin");
    agent.call(open_req(id, path)).await.unwrap();
    agent.call(chunk(id, path, 0, b"half of it")).await.unwrap();
    assert_eq!(upload_temps(&agent.root).len(), 1);
    eventually("the idle upload's temp file to go", || upload_temps(&agent.root).is_empty()).await;
    let err = agent.call(chunk(id, path, 10, b"the rest")).await.unwrap_err();
    assert_eq!(error_code(&err), pb::ErrorCode::NotFound, "{err:?}");
    assert!(!agent.root.join("a.bin").exists());
}
