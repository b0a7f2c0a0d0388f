//! What each fuzz target checks, one function per target, so the targets in `fuzz_targets/` are
//! one line each and a failing input can be replayed by running a target binary on its file.
//!
//! - [`control_request`]: any bytes through the agent's own dispatcher (decode, fence, reply
//!   cache, every op, path resolution) over a scratch workspace. Commands cannot start (the
//!   command policy refuses them, as an agent without a sandbox does), so every input is safe to
//!   run; the checks are that a reply always comes, decodes, fits `max_payload` and names the
//!   request, and that nothing outside the workspace root ever changes.
//! - [`relay_frames`]: any bytes as a relay websocket message: decoding never panics, a decoded
//!   frame re-encodes to bytes that decode to the same frame, and a StreamOpen is admitted only
//!   with a token minted by the relay's secrets (the fuzzer cannot forge an HMAC, so any other
//!   admission is a hole).
//! - [`tokens`]: any string as a producer and a viewer token: accepted only when it is one of
//!   the tokens minted here (the seed corpus holds them, so mutations start from valid ones).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tether_agent::dispatch::Dispatcher;
use tether_agent::fence::{Fence, FencePolicy};
use tether_agent::ops::pty::Terminals;
use tether_agent::paths::Paths;
use tether_agent::process::Launcher;
use tether_agent::sandbox::{CommandPolicy, Confinement, Sandbox};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{self, ProducerClaims, ViewerClaims, ViewerMode};
use tether_relay::{RelayConfig, Secret};

/// The reply budget the dispatcher is given: small, so oversized replies are exercised too.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Inputs between two wipes of the scratch workspace (keeps listings and the disk small).
const WIPE_EVERY: u64 = 2_000;
/// The clock every token check uses (tokens minted here expire an hour after it).
pub const NOW: u64 = 1_800_000_000;
const PRODUCER_SECRET: &[u8] = b"fuzz-producer-secret";
const VIEWER_SECRET: &[u8] = b"fuzz-viewer-secret";

struct Agent {
    runtime: tokio::runtime::Runtime,
    dispatcher: Dispatcher,
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// A directory beside the root, with a canary file: it must never change.
    outside: PathBuf,
    canary: Vec<u8>,
    inputs: std::sync::atomic::AtomicU64,
}

/// A scratch directory under `$TMPDIR`: `scripts/fuzz.sh` points that at a directory of its own
/// (in /dev/shm where there is one) and removes it after the run, since a fuzzer stopped by its
/// time limit never drops this.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tether-fuzz-").tempdir().expect("a scratch directory")
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let dir = scratch_dir();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).expect("root");
        std::fs::create_dir(&outside).expect("outside");
        let canary = b"nothing may change me".to_vec();
        std::fs::write(outside.join("canary"), &canary).expect("canary");
        std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dispatcher = runtime.block_on(async {
            let paths = Arc::new(Paths::new(&root, "/workspace", None, true).expect("paths"));
            let fence = Fence::open(
                &dir.path().join("state"),
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
                confinement: Confinement::Unavailable { reason: "fuzzing: no command may run".into() },
                allow_unconfined: false,
            };
            Dispatcher::new(paths, launcher, Arc::new(Sandbox::from_policy(refusing)), fence, terminals)
        });
        Agent { runtime, dispatcher, _dir: dir, root, outside, canary, inputs: Default::default() }
    })
}

fn listing(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    names
}

/// Empties the workspace root but for the escape symlink.
fn wipe(root: &Path) {
    for entry in std::fs::read_dir(root).expect("list root").flatten() {
        let path = entry.path();
        if entry.file_name() == "escape" {
            continue;
        }
        let _ = match entry.file_type().map(|t| t.is_dir()) {
            Ok(true) => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

/// One input through the agent's dispatcher: see the module doc.
pub fn control_request(data: &[u8]) {
    let agent = agent();
    let n = agent.inputs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n % WIPE_EVERY == WIPE_EVERY - 1 {
        wipe(&agent.root);
    }
    let outside_before = listing(&agent.outside);
    let payload = Bytes::copy_from_slice(data);
    let reply = agent.runtime.block_on(agent.dispatcher.handle(payload, MAX_PAYLOAD));
    assert!(reply.len() <= MAX_PAYLOAD, "a reply of {} bytes over max_payload", reply.len());
    let response = pb::ControlResponse::decode(reply).expect("every reply decodes");
    if let Ok(request) = pb::ControlRequest::decode(data) {
        assert_eq!(response.request_id, request.request_id, "the reply names another request");
    } else {
        let error = response.error.expect("undecodable bytes get an error");
        assert_eq!(error.code, pb::ErrorCode::Protocol as i32, "{error:?}");
    }
    assert_eq!(listing(&agent.outside), outside_before, "something appeared outside the root");
    assert_eq!(
        std::fs::read(agent.outside.join("canary")).expect("canary"),
        agent.canary,
        "the canary outside the root changed"
    );
}

/// The tokens minted with the fuzz secrets: the only ones that may ever be accepted.
pub fn minted_tokens() -> Vec<String> {
    let producer = ProducerClaims { workspace_id: "ws".into(), agent_id: "a".into(), exp: NOW + 3600 };
    let viewer = |mode, channel: Option<&str>, read_only| ViewerClaims {
        workspace_id: "ws".into(),
        session_id: "s".into(),
        viewer_id: "v".into(),
        lease_epoch: 1,
        mode,
        port: 7681,
        exp: NOW + 3600,
        subject_id: None,
        authority_epoch: None,
        agent_id: Some("a".into()),
        channel_id: channel.map(str::to_owned),
        read_only,
    };
    vec![
        token::mint_producer(PRODUCER_SECRET, &producer),
        token::mint_viewer(VIEWER_SECRET, &viewer(ViewerMode::Control, Some("pty-1"), false)),
        token::mint_viewer(VIEWER_SECRET, &viewer(ViewerMode::View, None, true)),
    ]
}

fn minted() -> &'static [String] {
    static MINTED: OnceLock<Vec<String>> = OnceLock::new();
    MINTED.get_or_init(minted_tokens)
}

/// One input as a relay websocket message: see the module doc.
pub fn relay_frames(data: &[u8]) {
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) else { return };
    let again = Frame::decode(frame.encode()).expect("a re-encoded frame decodes");
    assert_eq!(again, frame, "a frame changed on its way through encode and decode");
    let Frame::Open(open) = frame else { return };
    static CONFIG: OnceLock<RelayConfig> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| RelayConfig::with_secrets(Secret::new(PRODUCER_SECRET), Secret::new(VIEWER_SECRET)));
    // The query names the channel the open names, so the token checks are reached.
    let query = open
        .channel
        .as_ref()
        .map(|c| {
            [
                ("ws", c.workspace_id.clone()),
                ("agent", c.agent_id.clone()),
                ("port", c.port.to_string()),
                ("channel", c.channel_id.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        })
        .unwrap_or_default();
    if tether_relay::handshake::admit(&query, &open, config, NOW).is_ok() {
        assert!(minted().contains(&open.token), "a token the relay never minted was admitted");
    }
}

/// One input as a token of either kind: see the module doc.
pub fn tokens(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let accepted = token::verify_producer(PRODUCER_SECRET, text, NOW).is_ok()
        || token::verify_viewer(VIEWER_SECRET, text, NOW).is_ok();
    if accepted {
        assert!(minted().iter().any(|t| t == text), "an unminted token was accepted");
    }
}
