"""The terminal viewer against the real relay and a real agent's PTYs: output and input, resize,
a refused token, and resuming after the relay is killed and restarted without a repeated or
missing byte."""

from __future__ import annotations

import asyncio

import pytest

from tether_client import (
    Agent,
    Closed,
    Gap,
    Output,
    StreamError,
    TerminalViewer,
    mint_viewer_token,
    pb,
)
from harness import VIEWER_SECRET, AgentProc, Relay

WITHIN = 20.0


def token_for(channel: pb.StreamChannel, viewer_id: str, secret: str = VIEWER_SECRET) -> str:
    return mint_viewer_token(
        secret,
        workspace_id=channel.workspace_id,
        session_id="py-sess",
        viewer_id=viewer_id,
        port=channel.port,
        agent_id=channel.agent_id,
        channel_id=channel.channel_id,
    )


def shows_line(text: str, output: str) -> bool:
    """A line ending with `output` that is not the echo of the typed command."""
    return any(line.endswith(output) and "echo " not in line for line in text.replace("\r", "\n").split("\n"))


class Seen:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: Closed | None = None
        self.gaps = 0
        self.kinds: list[str] = []

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


async def collect_until(viewer: TerminalViewer, seen: Seen, done, within: float = WITHIN) -> None:  # type: ignore[no-untyped-def]
    """Takes events until `done(seen)` holds or the channel closes; fails after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not done(seen) and seen.closed is None:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"viewer waited {within} s; saw:\n{seen.text}")
        try:
            event = await viewer.next_event(timeout=left)
        except asyncio.TimeoutError:
            raise AssertionError(f"viewer waited {within} s; saw:\n{seen.text}") from None
        if event is None:
            raise AssertionError(f"viewer ended without a close; saw:\n{seen.text}")
        seen.kinds.append(type(event).__name__)
        if isinstance(event, Output):
            seen.data += event.data
        elif isinstance(event, Closed):
            seen.closed = event
        elif isinstance(event, Gap):
            seen.gaps += 1


@pytest.fixture
def terminal_agent(nc, relay_agent: AgentProc) -> Agent:  # type: ignore[no-untyped-def]
    return Agent(nc, relay_agent.ws, relay_agent.id)


async def test_typed_input_and_resizes_reach_the_terminal(terminal_agent: Agent, relay: Relay) -> None:
    term = await terminal_agent.pty_open(["sh"])
    assert term.channel.port == 7681 and term.channel.kind == pb.STREAM_KIND_PTY
    viewer = await TerminalViewer.connect(relay.stream_url, term.channel, token_for(term.channel, "py-v1"))
    async with viewer:
        await viewer.send("echo ready-$((6*7))\n")
        seen = Seen()
        await collect_until(viewer, seen, lambda s: shows_line(s.text, "ready-42"))
        for cols, rows in ((100, 40), (91, 31)):
            await viewer.resize(cols, rows)
            await viewer.send(f"stty size; echo done-{cols}\n")
            seen = Seen()
            await collect_until(viewer, seen, lambda s: shows_line(s.text, f"done-{cols}"))
            assert shows_line(seen.text, f"{rows} {cols}"), seen.text
        # pty_write types through NATS into the same terminal the viewer watches.
        assert await terminal_agent.pty_write(term.pty_id, "echo via-nats-$((2+3))\n") > 0
        await collect_until(viewer, seen, lambda s: shows_line(s.text, "via-nats-5"))
        await terminal_agent.pty_resize(term.pty_id, 120, 50)
        assert await terminal_agent.pty_close(term.pty_id) == -1
        await collect_until(viewer, seen, lambda s: False)
        assert seen.closed is not None


async def test_the_channel_closes_with_the_process_exit(terminal_agent: Agent, relay: Relay) -> None:
    term = await terminal_agent.pty_open(["sh", "-c", "echo bye-now; exit 0"])
    viewer = await TerminalViewer.connect(relay.stream_url, term.channel, token_for(term.channel, "py-v2"))
    async with viewer:
        seen = Seen()
        await collect_until(viewer, seen, lambda s: False)
        assert seen.closed is not None
        assert seen.closed.reason == pb.STREAM_CLOSE_REASON_PROCESS_EXIT, seen.closed
        assert "bye-now" in seen.text
        assert await viewer.next_event(timeout=5) is None, "nothing after Closed"


async def test_a_token_signed_with_another_secret_is_refused(terminal_agent: Agent, relay: Relay) -> None:
    term = await terminal_agent.pty_open(["sh"])
    with pytest.raises(StreamError, match="refused"):
        await TerminalViewer.connect(relay.stream_url, term.channel, token_for(term.channel, "py-v3", "wrong-secret"))
    await terminal_agent.pty_close(term.pty_id)


async def test_output_survives_a_relay_restart_exactly_once_and_in_order(terminal_agent: Agent, relay: Relay) -> None:
    script = "i=1; while [ $i -le 3000 ]; do echo L$i; i=$((i+1)); sleep 0.001; done"
    term = await terminal_agent.pty_open(["sh", "-c", script])
    viewer = await TerminalViewer.connect(relay.stream_url, term.channel, token_for(term.channel, "py-v4"))
    async with viewer:
        seen = Seen()
        await collect_until(viewer, seen, lambda s: shows_line(s.text, "L300"))
        assert not shows_line(seen.text, "L3000"), "the loop must still be running when the relay dies"
        relay.restart()
        await collect_until(viewer, seen, lambda s: False, within=60)
        assert seen.closed is not None and seen.closed.reason == pb.STREAM_CLOSE_REASON_PROCESS_EXIT
        assert "Reconnecting" in seen.kinds and "Resumed" in seen.kinds, seen.kinds
        assert seen.gaps == 0, "nothing was evicted, so no gap may be announced"
        lines = [line for line in seen.text.replace("\r", "\n").split("\n") if line]
        assert len(lines) == 3000, "every line exactly once"
        assert lines == [f"L{i}" for i in range(1, 3001)], "lines out of order or altered"
