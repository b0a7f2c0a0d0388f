"""The one place a `ControlRequest` is built and a `ControlResponse` is opened (PROTOCOL.md §2).

Pure functions over protobuf values, so the envelope rules are tested without a network, and
the one function that maps NATS failures onto `TetherError`s.
"""

from __future__ import annotations

import os
import secrets
import time

from nats import errors as nats_errors

from ._proto import tether_pb2 as pb
from .errors import (
    AgentOfflineError,
    PayloadTooLargeError,
    ProtocolError,
    RequestTimeoutError,
    TetherError,
    from_agent_error,
)


def build_request(
    request_id: str, epoch: int, fence_scope: str, op_name: str, op: object
) -> pb.ControlRequest:
    """Wraps the message of one op (field `op_name` of the `op` oneof) in an envelope."""
    request = pb.ControlRequest(request_id=request_id, epoch=epoch, fence_scope=fence_scope)
    getattr(request, op_name).CopyFrom(op)
    return request


def open_response(sent_id: str, payload: bytes, expected: str) -> object:
    """Decodes a reply, checks it answers `sent_id` with a result of kind `expected`, and returns
    that result message; the agent's error is raised as its `TetherError` subclass.

    An agent that could not decode the request answers with an empty request id and a PROTOCOL
    error: that error is raised as is, since it explains the failure.
    """
    response = pb.ControlResponse()
    try:
        response.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise ProtocolError(f"undecodable ControlResponse ({len(payload)} bytes): {exc}") from None
    has_error = response.HasField("error")
    if response.request_id != sent_id and not (response.request_id == "" and has_error):
        raise ProtocolError(
            f"reply echoes request id {response.request_id!r}, expected {sent_id!r}"
        )
    if has_error:
        raise from_agent_error(response.error)
    kind = response.WhichOneof("result")
    if kind is None:
        raise ProtocolError("reply carries neither a result nor an error")
    if kind != expected:
        raise ProtocolError(f"expected a {expected} result, got {kind}")
    return getattr(response, kind)


def transport_error(exc: BaseException, subject: str, timeout: float) -> TetherError:
    """Maps a nats-py request failure on `subject` (after waiting `timeout` s)."""
    if isinstance(exc, nats_errors.NoRespondersError):
        return AgentOfflineError(
            f"no agent is serving {subject} (NATS: no responders); "
            "is the agent running and connected?",
            retryable=True,
        )
    if isinstance(exc, nats_errors.TimeoutError):
        return RequestTimeoutError(f"no reply on {subject} within {timeout:g} s", retryable=True)
    if isinstance(exc, nats_errors.MaxPayloadError):
        return PayloadTooLargeError(f"request too large for this NATS connection: {exc}")
    return TetherError(f"NATS: request on {subject} failed: {exc}", retryable=True)


def new_id_prefix() -> str:
    """16 hex digits that make this client's request ids unique."""
    return secrets.token_hex(8)


def default_fence_scope() -> str:
    """One fresh scope per client, so two programs never share an epoch sequence by accident."""
    return f"tether-py-{os.getpid()}-{time.time_ns()}"
