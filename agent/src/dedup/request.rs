//! Which requests the reply cache remembers, and the fingerprint that tells a retry (the same
//! request again) from a different request that reuses an id.

use std::collections::HashMap;

use prost::Message;
use tether_proto::pb::{self, control_request::Op};

use crate::error::{OpError, OpResult};

/// Requests larger than this are hashed off the async workers.
const INLINE_HASH_MAX: usize = 64 << 10;

/// BLAKE3 of a request's canonical form (all but its id and scope, which are the cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub(super) [u8; 32]);

/// Whether the reply of `op` is remembered so that a retry does not run it again.
///
/// The rule: every op whose second run differs from its first is remembered; ops that are
/// read-only, or idempotent by construction, are not (storing them would only push useful
/// replies out of the cache). So a client may retry *any* op with the same id.
pub fn remembered(op: &Op) -> bool {
    match op {
        // A second run is a second command, a second append, a write over a change made since,
        // NOT_FOUND for a move or removal that succeeded, an "exists" error for a mkdir, a
        // second shell, text typed twice, a terminal already closed.
        Op::Exec(_)
        | Op::FsMove(_)
        | Op::FsRemove(_)
        | Op::FsMkdir(_)
        | Op::BatchWrite(_)
        | Op::PtyOpen(_)
        | Op::PtyWrite(_)
        | Op::PtyClose(_) => true,
        // A chunk of a verified upload is a positional write of the same bytes into the
        // upload's own hidden temp file (the running digest copes with a rewrite): running it
        // twice is harmless, and a 1 GiB upload would otherwise push a thousand entries through
        // the cache. A plain fs_write is remembered.
        Op::FsWrite(write) => write.transfer_id.is_empty(),
        // A retried commit after a success would find the upload gone (NOT_FOUND).
        Op::TransferCommit(_) => true,
        // transfer_open finds an open upload again by its id and reports what it holds now,
        // which is more useful to a retry than the first answer; an abort is idempotent.
        Op::TransferOpen(_) | Op::TransferAbort(_) => false,
        // A click, key or scroll repeated is a second click. A pointer move goes to absolute
        // coordinates (repeating it changes nothing) and is by far the most frequent event.
        Op::DesktopInput(input) => !is_pointer_move(input),
        Op::DesktopAct(_) => true,
        // Idempotent by design: one desktop channel per agent, reused; a resize to a size.
        Op::DesktopEnsure(_) | Op::PtyResize(_) => false,
        // Read-only.
        Op::Ping(_)
        | Op::FsRead(_)
        | Op::FsList(_)
        | Op::FsStat(_)
        | Op::FsDigest(_)
        | Op::Metrics(_)
        | Op::TreeManifest(_)
        | Op::BatchRead(_)
        | Op::DesktopScreenshot(_) => false,
        // A second signal is a second signal (a second INT can mean "stop now").
        Op::ExecSignal(_) => true,
        // Idempotent by construction: a start of an existing exec_id answers its state, stdin
        // carries its offset (a repeat is applied once), attach and ack set a position.
        Op::ExecStart(_) | Op::ExecAttach(_) | Op::ExecAck(_) | Op::ExecStdin(_) => false,
        // Read-only.
        Op::ExecWait(_) | Op::ExecList(_) => false,
        // Not served (answered UNSUPPORTED before the cache).
        Op::Git(_) => false,
    }
}

fn is_pointer_move(input: &pb::DesktopInputRequest) -> bool {
    use pb::desktop_input_request::Event;
    matches!(&input.event, Some(Event::Pointer(p)) if p.action == pb::PointerAction::Move as i32)
}

/// The fingerprint of `request`, hashed off the async workers when it is large. Returns the
/// request back.
pub async fn fingerprint(request: pb::ControlRequest) -> OpResult<(pb::ControlRequest, Fingerprint)> {
    if request.encoded_len() <= INLINE_HASH_MAX {
        let print = hash(&request);
        return Ok((request, print));
    }
    tokio::task::spawn_blocking(move || {
        let print = hash(&request);
        (request, print)
    })
    .await
    .map_err(|e| OpError::os(format!("hashing the request failed: {e}")))
}

/// Hashes the epoch, the resource policy and the op. Protobuf maps (`env`) encode in no fixed
/// order, so they are taken out of the op and hashed sorted: the same request re-encoded by
/// another client, or decoded twice here, hashes the same. An fs_write's content is hashed
/// where it lies instead of being copied into the encoding first.
fn hash(request: &pb::ControlRequest) -> Fingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&request.epoch.to_le_bytes());
    match &request.resource_policy {
        Some(policy) => hasher.update(&[1]).update(&policy.encode_to_vec()),
        None => hasher.update(&[0]),
    };
    let (op, env, content) = match &request.op {
        Some(Op::Exec(exec)) => {
            (Some(Op::Exec(pb::ExecRequest { env: HashMap::new(), ..exec.clone() })), Some(&exec.env), None)
        }
        Some(Op::PtyOpen(pty)) => (
            Some(Op::PtyOpen(pb::PtyOpenRequest { env: HashMap::new(), ..pty.clone() })),
            Some(&pty.env),
            None,
        ),
        Some(Op::FsWrite(write)) => {
            let bare = pb::FsWriteRequest { content: Default::default(), ..write.clone() };
            (Some(Op::FsWrite(bare)), None, Some(&write.content))
        }
        _ => (None, None, None),
    };
    let mut encoded = Vec::new();
    if let Some(op) = op.as_ref().or(request.op.as_ref()) {
        encoded.reserve(op.encoded_len());
        op.encode(&mut encoded);
    }
    hasher.update(&(encoded.len() as u64).to_le_bytes()).update(&encoded);
    if let Some(content) = content {
        hasher.update(&(content.len() as u64).to_le_bytes()).update(content);
    }
    let mut env: Vec<_> = env.into_iter().flatten().collect();
    env.sort();
    for (name, value) in env {
        for field in [name, value] {
            hasher.update(&(field.len() as u64).to_le_bytes()).update(field.as_bytes());
        }
    }
    Fingerprint(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: Op, epoch: u32) -> pb::ControlRequest {
        pb::ControlRequest { request_id: "r".into(), epoch, op: Some(op), ..Default::default() }
    }

    fn exec_with_env(pairs: &[(&str, &str)]) -> Op {
        let env: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Op::Exec(pb::ExecRequest { command: vec!["true".into()], env, ..Default::default() })
    }

    #[test]
    fn the_same_request_hashes_the_same_whatever_its_map_order_and_id() {
        let pairs: Vec<(String, String)> = (0..40).map(|i| (format!("K{i}"), format!("v{i}"))).collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reversed: Vec<_> = pairs.iter().rev().copied().collect();
        let a = hash(&request(exec_with_env(&pairs), 3));
        let mut other = request(exec_with_env(&reversed), 3);
        other.request_id = "another id".into();
        assert_eq!(a, hash(&other));
    }

    #[test]
    fn any_difference_changes_the_fingerprint() {
        let base = hash(&request(exec_with_env(&[("A", "1")]), 3));
        assert_ne!(base, hash(&request(exec_with_env(&[("A", "2")]), 3)), "env value");
        assert_ne!(base, hash(&request(exec_with_env(&[("A", "1"), ("B", "")]), 3)), "env entry");
        assert_ne!(base, hash(&request(exec_with_env(&[("A", "1")]), 4)), "epoch");
        let mut limited = request(exec_with_env(&[("A", "1")]), 3);
        limited.resource_policy = Some(pb::OperationResourcePolicy::default());
        assert_ne!(base, hash(&limited), "resource policy");
        let write = |content: &'static [u8]| {
            Op::FsWrite(pb::FsWriteRequest {
                path: "f".into(),
                content: content.into(),
                ..Default::default()
            })
        };
        assert_ne!(hash(&request(write(b"a"), 0)), hash(&request(write(b"b"), 0)), "content");
        let remove = Op::FsRemove(pb::FsRemoveRequest { path: "f".into(), recursive: false });
        let mkdir = Op::FsMkdir(pb::FsMkdirRequest { path: "f".into(), ..Default::default() });
        assert_ne!(hash(&request(remove, 0)), hash(&request(mkdir, 0)), "op kind");
    }

    #[test]
    fn mutations_are_remembered_and_reads_and_idempotent_ops_are_not() {
        let write = pb::FsWriteRequest { path: "f".into(), ..Default::default() };
        assert!(remembered(&Op::FsWrite(write.clone())));
        assert!(!remembered(&Op::FsWrite(pb::FsWriteRequest { transfer_id: "t".into(), ..write })));
        assert!(remembered(&exec_with_env(&[])));
        assert!(!remembered(&Op::FsRead(pb::FsReadRequest::default())));
        assert!(!remembered(&Op::Ping(pb::PingRequest { nonce: 1 })));
        let pointer = |action: pb::PointerAction| {
            Op::DesktopInput(pb::DesktopInputRequest {
                event: Some(pb::desktop_input_request::Event::Pointer(pb::PointerEvent {
                    action: action as i32,
                    ..Default::default()
                })),
            })
        };
        assert!(remembered(&pointer(pb::PointerAction::Click)));
        assert!(!remembered(&pointer(pb::PointerAction::Move)));
    }
}
