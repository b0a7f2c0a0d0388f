"""Failures arrive as the `TetherError` subclass of their ErrorCode, with the agent's
`retryable` flag and `detail`; transport failures map onto the codes reserved for them."""

from __future__ import annotations

import pytest

from tether_client import (
    Agent,
    AgentOfflineError,
    AgentOSError,
    ConsentRequiredError,
    FencedError,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RequestTimeoutError,
    TetherError,
    UnsupportedError,
    pb,
)
from tether_client.envelope import build_request, open_response
from harness import AgentProc


async def test_a_missing_file_is_not_found_with_its_path(agent: Agent, agent_proc: AgentProc) -> None:
    with pytest.raises(NotFoundError) as caught:
        await agent.read_file("no/such/file")
    err = caught.value
    assert err.code == pb.ERROR_CODE_NOT_FOUND and err.code_name == "ERROR_CODE_NOT_FOUND"
    assert not err.retryable
    assert err.detail.get("path") == str(agent_proc.root / "no/such/file")
    with pytest.raises(NotFoundError):
        await agent.remove("no/such/file")


async def test_a_missing_cwd_is_not_found_never_executable_not_found(agent: Agent) -> None:
    with pytest.raises(NotFoundError) as caught:
        await agent.exec(["true"], cwd="nowhere")
    assert "nowhere" in str(caught.value)


async def test_a_stale_epoch_is_fenced_with_the_held_epoch(nc, agent_proc: AgentProc) -> None:  # type: ignore[no-untyped-def]
    current = Agent(nc, agent_proc.ws, agent_proc.id, fence_scope="py-lease-1", epoch=5)
    await current.ping()
    stale = Agent(nc, agent_proc.ws, agent_proc.id, fence_scope="py-lease-1", epoch=3)
    with pytest.raises(FencedError) as caught:
        await stale.exec(["touch", "fenced-marker"])
    err = caught.value
    assert err.retryable
    assert err.detail["held_epoch"] == "5" and err.detail["op_epoch"] == "3"
    assert err.detail["fence_scope"] == "py-lease-1"
    assert not (agent_proc.root / "fenced-marker").exists(), "rejected before any side effect"
    # Another scope is not fenced by this one's epochs.
    other = Agent(nc, agent_proc.ws, agent_proc.id, fence_scope="py-lease-2", epoch=3)
    await other.ping()


async def test_a_path_outside_the_workspace_needs_consent(agent: Agent) -> None:
    with pytest.raises(ConsentRequiredError) as caught:
        await agent.read_file("/etc/hostname")
    assert caught.value.detail.get("path") == "/etc/hostname"


async def test_an_empty_command_is_an_os_error(agent: Agent) -> None:
    with pytest.raises(AgentOSError):
        await agent.exec([])


async def test_terminals_without_a_relay_are_unsupported(agent: Agent) -> None:
    with pytest.raises(UnsupportedError):
        await agent.pty_open()


async def test_a_whole_read_over_max_payload_is_payload_too_large(agent: Agent, agent_proc: AgentProc) -> None:
    (agent_proc.root / "large.bin").write_bytes(b"x" * (2 << 20))
    with pytest.raises(PayloadTooLargeError) as caught:
        await agent.read("large.bin")  # length 0: the rest must fit one reply
    assert caught.value.detail["total_size"] == str(2 << 20)
    assert len(await agent.read_file("large.bin")) == 2 << 20


async def test_nobody_serving_the_subject_is_agent_offline(nc) -> None:  # type: ignore[no-untyped-def]
    ghost = Agent(nc, "ws1", "nobody-here")
    with pytest.raises(AgentOfflineError) as caught:
        await ghost.ping()
    assert caught.value.retryable and caught.value.code == pb.ERROR_CODE_AGENT_OFFLINE
    assert "agent.ws1.nobody-here.rpc" in str(caught.value)


async def test_no_reply_in_time_is_a_timeout(agent: Agent) -> None:
    with pytest.raises(RequestTimeoutError) as caught:
        await agent.exec("sleep 3", reply_timeout=0.3)
    assert caught.value.retryable


def test_replies_that_break_the_protocol_are_protocol_errors() -> None:
    request = build_request("r-1", 0, "s", "ping", pb.PingRequest(nonce=1))
    assert request.fence_scope == "s" and request.WhichOneof("op") == "ping"
    wrong_id = pb.ControlResponse(request_id="r-2")
    wrong_id.ping.nonce = 1
    with pytest.raises(ProtocolError, match="r-2"):
        open_response("r-1", wrong_id.SerializeToString(), "ping")
    with pytest.raises(ProtocolError, match="expected a exec result, got ping"):
        reply = pb.ControlResponse(request_id="r-1")
        reply.ping.nonce = 1
        open_response("r-1", reply.SerializeToString(), "exec")
    with pytest.raises(ProtocolError):
        open_response("r-1", b"\xff\xff\xff", "ping")
    with pytest.raises(ProtocolError, match="neither"):
        open_response("r-1", pb.ControlResponse(request_id="r-1").SerializeToString(), "ping")


def test_unknown_codes_and_detail_rendering() -> None:
    undecodable = pb.ControlResponse(request_id="")
    undecodable.error.code = pb.ERROR_CODE_PROTOCOL
    undecodable.error.message = "undecodable request"
    with pytest.raises(ProtocolError, match="undecodable request"):
        open_response("r-1", undecodable.SerializeToString(), "ping")
    future = pb.ControlResponse(request_id="r-1")
    future.error.code = 999
    future.error.message = "from a newer agent"
    future.error.detail["path"] = "/w/x"
    future.error.detail["action"] = "open"
    with pytest.raises(TetherError) as caught:
        open_response("r-1", future.SerializeToString(), "ping")
    assert type(caught.value).__name__ == "UnspecifiedError" and caught.value.code == 999
    assert str(caught.value) == "from a newer agent (action=open, path=/w/x)"
