//! The one place a `ControlRequest` is built and a `ControlResponse` is opened (PROTOCOL.md §2).
//! Pure functions over protobuf values, so the envelope rules are tested without a network.

use bytes::Bytes;
use prost::Message;
use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as OpResult;

use crate::error::ClientError;

/// Builds the request envelope. `fence_scope` is always sent (our client is scope-aware, §3).
pub fn build_request(request_id: String, epoch: u32, fence_scope: &str, op: Op) -> pb::ControlRequest {
    pb::ControlRequest {
        request_id,
        epoch,
        resource_policy: None,
        fence_scope: fence_scope.to_owned(),
        op: Some(op),
    }
}

/// Decodes a reply and checks it answers `sent_id`; returns the op's result or the agent's
/// error. Given the reply as `Bytes`, the bytes fields of the result (a read's content) are
/// slices of it, not copies. An agent that could not decode our request answers with an empty request id and a
/// `PROTOCOL` error: that error is surfaced as is, since it explains the failure.
pub fn open_response(sent_id: &str, payload: impl bytes::Buf) -> Result<OpResult, ClientError> {
    let len = payload.remaining();
    let response = pb::ControlResponse::decode(payload)
        .map_err(|e| ClientError::Protocol(format!("undecodable ControlResponse ({len} bytes): {e}")))?;
    if response.request_id != sent_id && !(response.request_id.is_empty() && response.error.is_some()) {
        return Err(ClientError::Protocol(format!(
            "reply echoes request id {:?}, expected {sent_id:?}",
            response.request_id
        )));
    }
    if let Some(error) = response.error {
        return Err(ClientError::from_agent(error));
    }
    response.result.ok_or_else(|| ClientError::Protocol("reply carries neither a result nor an error".into()))
}

/// Encodes a request for the wire.
pub fn encode_request(request: &pb::ControlRequest) -> Bytes {
    Bytes::from(request.encode_to_vec())
}

/// The protocol name of an op, for logs and error messages.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Ping(_) => "ping",
        Op::Exec(_) => "exec",
        Op::FsRead(_) => "fs_read",
        Op::FsWrite(_) => "fs_write",
        Op::FsList(_) => "fs_list",
        Op::FsMkdir(_) => "fs_mkdir",
        Op::FsMove(_) => "fs_move",
        Op::FsStat(_) => "fs_stat",
        Op::FsRemove(_) => "fs_remove",
        Op::Git(_) => "git",
        Op::PtyOpen(_) => "pty_open",
        Op::PtyWrite(_) => "pty_write",
        Op::PtyResize(_) => "pty_resize",
        Op::PtyClose(_) => "pty_close",
        Op::DesktopEnsure(_) => "desktop_ensure",
        Op::Metrics(_) => "metrics",
        Op::DesktopInput(_) => "desktop_input",
        Op::DesktopScreenshot(_) => "desktop_screenshot",
        Op::TransferOpen(_) => "transfer_open",
        Op::TransferCommit(_) => "transfer_commit",
        Op::TransferAbort(_) => "transfer_abort",
        Op::FsDigest(_) => "fs_digest",
        Op::DesktopAct(_) => "desktop_act",
        Op::TreeManifest(_) => "tree_manifest",
        Op::BatchWrite(_) => "batch_write",
        Op::BatchRead(_) => "batch_read",
        Op::ExecStart(_) => "exec_start",
        Op::ExecAttach(_) => "exec_attach",
        Op::ExecAck(_) => "exec_ack",
        Op::ExecStdin(_) => "exec_stdin",
        Op::ExecSignal(_) => "exec_signal",
        Op::ExecWait(_) => "exec_wait",
        Op::ExecList(_) => "exec_list",
    }
}

/// The protocol name of a result, for "expected X, got Y" messages.
pub fn result_name(result: &OpResult) -> &'static str {
    match result {
        OpResult::Ping(_) => "ping",
        OpResult::Exec(_) => "exec",
        OpResult::FsRead(_) => "fs_read",
        OpResult::FsWrite(_) => "fs_write",
        OpResult::FsList(_) => "fs_list",
        OpResult::FsMkdir(_) => "fs_mkdir",
        OpResult::FsMove(_) => "fs_move",
        OpResult::FsStat(_) => "fs_stat",
        OpResult::FsRemove(_) => "fs_remove",
        OpResult::Git(_) => "git",
        OpResult::PtyOpen(_) => "pty_open",
        OpResult::PtyWrite(_) => "pty_write",
        OpResult::PtyResize(_) => "pty_resize",
        OpResult::PtyClose(_) => "pty_close",
        OpResult::DesktopEnsure(_) => "desktop_ensure",
        OpResult::Metrics(_) => "metrics",
        OpResult::DesktopInput(_) => "desktop_input",
        OpResult::DesktopScreenshot(_) => "desktop_screenshot",
        OpResult::TransferOpen(_) => "transfer_open",
        OpResult::TransferCommit(_) => "transfer_commit",
        OpResult::TransferAbort(_) => "transfer_abort",
        OpResult::FsDigest(_) => "fs_digest",
        OpResult::DesktopAct(_) => "desktop_act",
        OpResult::TreeManifest(_) => "tree_manifest",
        OpResult::BatchWrite(_) => "batch_write",
        OpResult::BatchRead(_) => "batch_read",
        OpResult::ExecStart(_) => "exec_start",
        OpResult::ExecAttach(_) => "exec_attach",
        OpResult::ExecAck(_) => "exec_ack",
        OpResult::ExecStdin(_) => "exec_stdin",
        OpResult::ExecSignal(_) => "exec_signal",
        OpResult::ExecWait(_) => "exec_wait",
        OpResult::ExecList(_) => "exec_list",
    }
}

/// The error for a reply whose result is not the kind the op asked for.
pub fn unexpected_result(expected: &str, got: &OpResult) -> ClientError {
    ClientError::Protocol(format!("expected a {expected} result, got {}", result_name(got)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(request_id: &str, error: Option<pb::AgentError>, result: Option<OpResult>) -> Vec<u8> {
        pb::ControlResponse { request_id: request_id.into(), error, result }.encode_to_vec()
    }

    #[test]
    fn request_carries_id_epoch_scope_and_op_through_the_wire() {
        let req = build_request("r-1".into(), 9, "scope-a", Op::Ping(pb::PingRequest { nonce: 42 }));
        let decoded = pb::ControlRequest::decode(encode_request(&req)).unwrap();
        assert_eq!(decoded.request_id, "r-1");
        assert_eq!(decoded.epoch, 9);
        assert_eq!(decoded.fence_scope, "scope-a");
        assert_eq!(decoded.op, Some(Op::Ping(pb::PingRequest { nonce: 42 })));
    }

    #[test]
    fn matching_reply_yields_its_result() {
        let ping = OpResult::Ping(pb::PingResponse { nonce: 1, agent_monotonic_ms: 5 });
        let got = open_response("r-1", &reply("r-1", None, Some(ping.clone()))[..]).unwrap();
        assert_eq!(got, ping);
    }

    #[test]
    fn agent_error_wins_over_result() {
        let err = pb::AgentError {
            code: pb::ErrorCode::NotFound as i32,
            message: "no such file: /x".into(),
            ..Default::default()
        };
        let got = open_response("r-1", &reply("r-1", Some(err), None)[..]).unwrap_err();
        assert_eq!(got.code(), Some(pb::ErrorCode::NotFound));
        assert_eq!(got.to_string(), "no such file: /x");
    }

    #[test]
    fn mismatched_request_id_is_a_protocol_error() {
        let ping = OpResult::Ping(pb::PingResponse::default());
        let got = open_response("r-1", &reply("r-2", None, Some(ping))[..]).unwrap_err();
        assert!(matches!(got, ClientError::Protocol(ref m) if m.contains("r-2")), "{got}");
    }

    #[test]
    fn undecodable_request_reply_surfaces_the_agents_protocol_error() {
        let err = pb::AgentError {
            code: pb::ErrorCode::Protocol as i32,
            message: "undecodable request".into(),
            ..Default::default()
        };
        let got = open_response("r-1", &reply("", Some(err), None)[..]).unwrap_err();
        assert!(matches!(got, ClientError::Agent { code: pb::ErrorCode::Protocol, .. }), "{got:?}");
    }

    #[test]
    fn empty_or_garbage_replies_are_protocol_errors() {
        let got = open_response("r-1", &reply("r-1", None, None)[..]).unwrap_err();
        assert_eq!(got.code(), Some(pb::ErrorCode::Protocol));
        let got = open_response("r-1", &[0xffu8, 0xff, 0xff][..]).unwrap_err();
        assert_eq!(got.code(), Some(pb::ErrorCode::Protocol));
    }

    #[test]
    fn unexpected_result_names_both_kinds() {
        let err = unexpected_result("fs_read", &OpResult::Ping(pb::PingResponse::default()));
        assert_eq!(err.to_string(), "protocol violation: expected a fs_read result, got ping");
    }
}
