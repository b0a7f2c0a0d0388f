//! Writes the seed corpus (`corpus/<target>/`): one valid example of each kind of input, so the
//! fuzzer starts from requests, frames and tokens that reach deep, and mutates from there.
//! `cargo run --release --bin make_seeds` (from `fuzz/`); the output is committed.

use std::path::Path;

use prost::Message;
use tether_proto::frame::Frame;
use tether_proto::pb::{self, control_request::Op};

fn request(id: &str, op: Op) -> Vec<u8> {
    pb::ControlRequest {
        request_id: id.into(),
        fence_scope: "s".into(),
        epoch: 1,
        op: Some(op),
        ..Default::default()
    }
    .encode_to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dir = corpus.join("control_request");
    let file = |path: &str, content: &[u8]| pb::FsWriteRequest {
        path: path.into(),
        content: content.to_vec().into(),
        create_parents: true,
        mode: 0o644,
        ..Default::default()
    };
    let seeds: Vec<(&str, Op)> = vec![
        ("ping", Op::Ping(pb::PingRequest { nonce: 7 })),
        ("write", Op::FsWrite(file("/workspace/a/b.txt", b"hello"))),
        ("write_escape", Op::FsWrite(file("escape/canary", b"overwritten"))),
        ("write_dotdot", Op::FsWrite(file("/workspace/../outside/x", b"x"))),
        (
            "write_offset",
            Op::FsWrite(pb::FsWriteRequest { offset: 1 << 20, use_offset: true, ..file("sparse", b"z") }),
        ),
        ("read", Op::FsRead(pb::FsReadRequest { path: "a/b.txt".into(), ..Default::default() })),
        (
            "list",
            Op::FsList(pb::FsListRequest {
                path: "/workspace".into(),
                recursive: true,
                ..Default::default()
            }),
        ),
        ("stat", Op::FsStat(pb::FsStatRequest { path: "escape".into() })),
        ("mkdir", Op::FsMkdir(pb::FsMkdirRequest { path: "d/e/f".into(), parents: true, mode: 0o755 })),
        ("move", Op::FsMove(pb::FsMoveRequest { from: "a".into(), to: "escape/a".into(), overwrite: true })),
        ("remove", Op::FsRemove(pb::FsRemoveRequest { path: "escape/".into(), recursive: true })),
        ("digest", Op::FsDigest(pb::FsDigestRequest { path: "a/b.txt".into() })),
        (
            "transfer_open",
            Op::TransferOpen(pb::TransferOpenRequest {
                transfer_id: "abcdefgh".into(),
                path: "up.bin".into(),
                create_parents: true,
                ..Default::default()
            }),
        ),
        (
            "manifest",
            Op::TreeManifest(pb::TreeManifestRequest {
                root: ".".into(),
                excludes: vec!["*.o".into(), "!keep.o".into(), "target/".into()],
                ..Default::default()
            }),
        ),
        (
            "batch_write",
            Op::BatchWrite(pb::BatchWriteRequest {
                root: "tree".into(),
                entries: vec![
                    pb::BatchEntry {
                        path: "x/y".into(),
                        kind: pb::FsEntryKind::File as i32,
                        content: b"y".to_vec().into(),
                        ..Default::default()
                    },
                    pb::BatchEntry {
                        path: "link".into(),
                        kind: pb::FsEntryKind::Symlink as i32,
                        symlink_target: "../../outside/canary".into(),
                        ..Default::default()
                    },
                ],
                remove: vec!["old".into()],
            }),
        ),
        (
            "batch_read",
            Op::BatchRead(pb::BatchReadRequest {
                root: "tree".into(),
                paths: vec!["x/y".into(), "link".into()],
            }),
        ),
        (
            "exec",
            Op::Exec(pb::ExecRequest {
                command: vec!["touch".into(), "../outside/ran".into()],
                ..Default::default()
            }),
        ),
        ("exec_list", Op::ExecList(pb::ExecListRequest::default())),
    ];
    for (name, op) in seeds {
        write(&dir, name, &request(name, op));
    }

    let dir = corpus.join("relay_frames");
    let tokens = tether_fuzz::minted_tokens();
    let channel = |kind: pb::StreamKind, port, id: &str| pb::StreamChannel {
        workspace_id: "ws".into(),
        agent_id: "a".into(),
        port,
        channel_id: id.into(),
        kind: kind as i32,
    };
    let open = |role: pb::StreamRole, token: &str, channel| {
        Frame::Open(pb::StreamOpen {
            role: role as i32,
            token: token.into(),
            channel: Some(channel),
            ..Default::default()
        })
    };
    let frames = [
        (
            "open_producer",
            open(pb::StreamRole::Agent, &tokens[0], channel(pb::StreamKind::Pty, 7681, "pty-1")),
        ),
        (
            "open_viewer",
            open(pb::StreamRole::Client, &tokens[1], channel(pb::StreamKind::Pty, 7681, "pty-1")),
        ),
        (
            "open_spectator",
            open(pb::StreamRole::Client, &tokens[2], channel(pb::StreamKind::Desktop, 7681, "d")),
        ),
        (
            "data",
            Frame::Data(pb::StreamFrame { seq: 3, data: b"ls\r".to_vec().into(), ..Default::default() }),
        ),
        ("resize", Frame::PtyResize(pb::PtyResize { cols: 80, rows: 24 })),
        ("close", Frame::Close(pb::StreamClose { message: "bye".into(), ..Default::default() })),
    ];
    for (name, frame) in frames {
        write(&dir, name, &frame.encode());
    }

    let dir = corpus.join("tokens");
    for (i, token) in tokens.iter().enumerate() {
        write(&dir, &format!("minted_{i}"), token.as_bytes());
    }
}
