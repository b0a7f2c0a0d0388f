"""Long-running commands through the Python client against the real agent: output streamed as
it is printed, one run per id, replay after the end, stdin, signals, list, errors."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from harness import AgentProc, NatsServer
from tether_client import Agent, ExecState, NotFoundError, OutputChunk


def new_id(what: str) -> str:
    return f"{what}-{secrets.token_hex(4)}"


async def collect(agent: Agent, exec_id: str, from_seq: int = 0) -> tuple[list[OutputChunk], ExecState]:
    """Every chunk of the stream and its end state, checking the end comes last and once."""
    chunks: list[OutputChunk] = []
    end: ExecState | None = None
    async with agent.attach(exec_id, from_seq) as out:
        async for item in out:
            assert end is None, "nothing may follow the end state"
            if isinstance(item, ExecState):
                end = item
            else:
                chunks.append(item)
    assert end is not None and out.end == end
    return chunks, end


async def test_output_arrives_as_it_is_printed(agent: Agent) -> None:
    exec_id = new_id("live")
    started = await agent.exec_start(exec_id, "for i in 1 2 3; do echo $i; sleep 0.2; done")
    assert started.created and started.state.running
    chunks: list[OutputChunk] = []
    running_when_first_arrived: bool | None = None
    end: ExecState | None = None
    async with agent.attach(exec_id) as out:
        async for item in out:
            if isinstance(item, ExecState):
                end = item
                continue
            if not chunks:
                # The command is still sleeping between its lines: the first line came live,
                # not in one piece at the end.
                running_when_first_arrived = (await agent.exec_wait(exec_id, timeout=0)).running
            chunks.append(item)
    assert running_when_first_arrived is True
    assert b"".join(c.data for c in chunks) == b"1\n2\n3\n"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.stream == "stdout" and c.gap_bytes == 0 for c in chunks)
    assert end is not None and end.status == "exited" and end.exit_code == 0 and end.ok
    assert end.next_seq == len(chunks)


async def test_a_repeated_start_runs_once(agent: Agent, agent_proc: AgentProc) -> None:
    exec_id = new_id("once")
    target = agent_proc.root / f"{exec_id}.txt"
    first = await agent.exec_start(exec_id, f"echo ran >> {exec_id}.txt")
    again = await agent.exec_start(exec_id, f"echo ran >> {exec_id}.txt")
    assert first.created and not again.created
    assert again.state.exec_id == exec_id
    state = await agent.exec_wait(exec_id)
    assert state.ok
    # Started a third time after it ended: still nothing runs.
    assert not (await agent.exec_start(exec_id, f"echo ran >> {exec_id}.txt")).created
    assert target.read_text() == "ran\n"


async def test_attach_from_zero_after_the_end_replays_everything(agent: Agent) -> None:
    exec_id = new_id("replay")
    # 3 MB on stdout (more than one chunk and several acknowledgements), a line on stderr.
    await agent.exec_start(
        exec_id, "head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2; exit 4"
    )
    state = await agent.exec_wait(exec_id)
    assert state.status == "exited" and state.exit_code == 4
    chunks, end = await collect(agent, exec_id)
    stdout = b"".join(c.data for c in chunks if c.stream == "stdout")
    stderr = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert stdout == b"a" * 3_000_000 and stderr == b"done\n"
    assert len(chunks) > 1 and [c.seq for c in chunks] == list(range(len(chunks)))
    assert end.exit_code == 4 and end.stdout_bytes == 3_000_000 and end.stderr_bytes == 5
    # From a later seq: only the rest.
    later, _ = await collect(agent, exec_id, from_seq=len(chunks) - 1)
    assert later == chunks[-1:]


async def test_merged_output_and_a_deadline(agent: Agent) -> None:
    exec_id = new_id("merged")
    await agent.exec_start(
        exec_id, "echo a; echo b >&2; sleep 30", merge_output=True, timeout=0.5
    )
    chunks, end = await collect(agent, exec_id)
    assert b"".join(c.data for c in chunks) == b"a\nb\n"
    assert all(c.stream == "stdout" for c in chunks)
    assert end.timed_out and end.exit_code == -1 and end.stderr_bytes == 0


async def test_two_readers_each_get_everything(agent: Agent) -> None:
    exec_id = new_id("two")
    await agent.exec_start(exec_id, "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done")
    (a, end_a), (b, end_b) = await asyncio.gather(collect(agent, exec_id), collect(agent, exec_id))
    assert b"".join(c.data for c in a) == b"".join(c.data for c in b) == b"1\n2\n3\n4\n5\n"
    assert end_a.ok and end_b.ok


async def test_stdin_to_wc(agent: Agent) -> None:
    exec_id = new_id("stdin")
    await agent.exec_start(exec_id, ["wc", "-c"], stdin=b"abc", stdin_open=True)
    reply = await agent.exec_stdin(exec_id, "hello", 3)
    assert reply.written == 8 and not reply.closed
    # A retried write at the same offset is applied once.
    assert (await agent.exec_stdin(exec_id, "hello", 3)).written == 8
    big = b"x" * (3 << 20)  # more than one message
    reply = await agent.exec_stdin(exec_id, big, 8, close=True)
    assert reply.written == 8 + len(big) and reply.closed
    chunks, end = await collect(agent, exec_id)
    assert end.ok
    assert b"".join(c.data for c in chunks).strip() == str(8 + len(big)).encode()


async def test_a_signal_ends_sleep_and_list_shows_it(agent: Agent) -> None:
    exec_id = new_id("sleep")
    await agent.exec_start(exec_id, ["sleep", "100"])
    listed = {s.exec_id: s for s in await agent.exec_list()}
    assert listed[exec_id].running and listed[exec_id].command == ["sleep", "100"]
    assert listed[exec_id].pid > 0
    still = await agent.exec_wait(exec_id, timeout=0.2)
    assert still.running
    await agent.exec_signal(exec_id, "SIGTERM")
    end = await agent.exec_wait(exec_id)
    assert end.status == "exited" and end.signal == 15 and end.exit_code == -1 and not end.ok
    listed = {s.exec_id: s for s in await agent.exec_list()}
    assert listed[exec_id].status == "exited" and listed[exec_id].signal == 15
    # Another client's fence scope does not see it.
    other = Agent(agent.nc, agent.workspace_id, agent.agent_id)
    assert exec_id not in {s.exec_id for s in await other.exec_list()}


async def test_errors_are_typed(agent: Agent) -> None:
    with pytest.raises(NotFoundError):
        await agent.exec_wait("no-such-exec", timeout=0)
    with pytest.raises(NotFoundError):
        async for _ in agent.attach("no-such-exec"):
            pass
    with pytest.raises(ValueError):
        await agent.exec_start("a.b", "true")
    with pytest.raises(ValueError):
        await agent.exec_signal("x", "STOP")


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    server = NatsServer()
    yield server
    server.stop()


@pytest.fixture
def own_agent(own_nats: NatsServer) -> Iterator[AgentProc]:
    proc = AgentProc(own_nats)
    yield proc
    proc.stop()


async def test_the_stream_rides_out_a_nats_restart(own_nats: NatsServer, own_agent: AgentProc) -> None:
    """The server is killed and started again while the command prints, and this client comes
    back a while after the agent: what the agent published meanwhile is lost on the way, and
    the stream re-attaches from the chunk it lacks, so every line arrives exactly once and in
    order."""
    nc = await own_nats.connect(reconnect_wait=1.5)
    try:
        agent = Agent(nc, own_agent.ws, own_agent.id, timeout=2)
        exec_id = new_id("restart")
        await agent.exec_start(exec_id, "for i in $(seq 1 40); do echo $i; sleep 0.1; done")
        chunks: list[OutputChunk] = []
        end: ExecState | None = None

        async def follow() -> None:
            nonlocal end
            async with agent.attach(exec_id) as out:
                async for item in out:
                    if isinstance(item, ExecState):
                        end = item
                        continue
                    chunks.append(item)
                    if len(chunks) == 1:
                        await asyncio.to_thread(own_nats.restart)

        # Bounded: a stream that never learns of the lost chunks (and the lost end) would
        # wait forever.
        await asyncio.wait_for(follow(), 60)
        assert end is not None and end.ok
        assert b"".join(c.data for c in chunks).split() == [str(i).encode() for i in range(1, 41)]
        assert [c.seq for c in chunks] == list(range(len(chunks)))
    finally:
        await nc.close()
