"""Every request/reply method of `Agent` against the real agent over a real nats-server."""

from __future__ import annotations

import os

from tether_client import Agent, ExecResult, pb
from harness import AgentProc, NatsServer


async def test_ping_echoes_the_nonce(agent: Agent) -> None:
    pong = await agent.ping(4242)
    assert pong.nonce == 4242
    assert pong.agent_monotonic_ms > 0


async def test_exec_argv_with_cwd_env_and_stdin(agent: Agent, agent_proc: AgentProc) -> None:
    (agent_proc.root / "sub").mkdir(exist_ok=True)
    result = await agent.exec(
        ["sh", "-c", 'pwd; echo "$GREETING"; cat; echo oops >&2; exit 3'],
        cwd="sub",
        env={"GREETING": "hi there"},
        stdin="from stdin",
    )
    assert isinstance(result, ExecResult)
    assert result.exit_code == 3 and not result.ok
    assert result.stdout.decode().splitlines() == [str(agent_proc.root / "sub"), "hi there", "from stdin"]
    assert result.stderr == b"oops\n"
    assert not result.timed_out and not result.stdout_truncated and result.signal == 0


async def test_exec_shell_string(agent: Agent) -> None:
    result = await agent.exec("echo $((6*7)) | tr 4 X")
    assert result.ok and result.text == "X2\n"


async def test_exec_timeout_kills_and_keeps_output(agent: Agent) -> None:
    result = await agent.exec("echo started; sleep 30", timeout=0.5)
    assert result.timed_out and result.exit_code == -1
    assert result.stdout == b"started\n"


async def test_exec_output_over_the_budget_is_truncated_and_says_so(agent: Agent) -> None:
    result = await agent.exec("head -c 3000000 /dev/zero | tr '\\0' a; echo; echo tail-end")
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout_total_bytes == 3_000_000 + 1 + 9
    assert len(result.stdout) < agent.max_payload
    assert result.stdout.startswith(b"aaaa") and result.stdout.endswith(b"tail-end\n")


async def test_metrics_sample_the_machine(agent: Agent) -> None:
    sample = await agent.metrics()
    assert isinstance(sample, pb.MetricsSample)
    assert sample.mem_total_bytes > 0 and sample.sampled_at_ms > 0


async def test_small_file_round_trip_stat_list_mkdir_move_remove(agent: Agent, agent_proc: AgentProc) -> None:
    await agent.mkdir("d/e", parents=True)
    assert (agent_proc.root / "d" / "e").is_dir()
    assert await agent.write_file("d/e/a.txt", "hello", mode=0o600) == 5
    assert (agent_proc.root / "d/e/a.txt").read_bytes() == b"hello"
    assert await agent.read_file("d/e/a.txt") == b"hello"

    entry = await agent.stat("d/e/a.txt")
    assert entry is not None and entry.is_file and entry.size == 5 and entry.mode & 0o777 == 0o600
    assert entry.path == str(agent_proc.root / "d/e/a.txt")
    assert await agent.stat("d/e/missing") is None

    await agent.move("d/e/a.txt", "d/b.txt")
    assert not (agent_proc.root / "d/e/a.txt").exists()
    listing = await agent.list("d")
    assert [(e.name, e.kind) for e in listing.entries] == [("b.txt", "file"), ("e", "directory")]
    assert not listing.truncated
    deep = await agent.list("/workspace/d", recursive=True, max_entries=1)
    assert len(deep.entries) == 1 and deep.truncated

    await agent.remove("d", recursive=True)
    assert not (agent_proc.root / "d").exists()


async def test_a_5_mib_file_round_trips_in_chunks_atomically(agent: Agent, agent_proc: AgentProc) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    target = agent_proc.root / "big" / "blob.bin"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"old")
    target.chmod(0o640)
    assert await agent.write_file("big/blob.bin", data) == len(data)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o640, "the replaced file's mode is kept"
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"], "no temp file left behind"
    assert await agent.read_file("big/blob.bin") == data


async def test_an_empty_file_round_trips(agent: Agent, agent_proc: AgentProc) -> None:
    await agent.write_file("empty", b"", create_parents=True)
    assert (agent_proc.root / "empty").read_bytes() == b""
    assert await agent.read_file("empty") == b""


async def test_files_chunk_to_a_small_max_payload() -> None:
    # A server with 64 KiB messages: 300 KB takes several chunks each way.
    server = NatsServer("max_payload: 65536")
    proc = AgentProc(server)
    nc = await server.connect()
    try:
        agent = Agent(nc, proc.ws, proc.id)
        assert agent.max_payload == 65536
        data = os.urandom(300_000)
        assert await agent.write_file("chunks.bin", data) == len(data)
        assert (proc.root / "chunks.bin").read_bytes() == data
        assert await agent.read_file("chunks.bin") == data
    finally:
        await nc.close()
        proc.stop()
        server.stop()
