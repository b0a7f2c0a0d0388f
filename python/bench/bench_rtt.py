#!/usr/bin/env python3
"""Round trips of the Python client next to the Rust client's, measured in the same run.

Starts a loopback nats-server and one real agent (the harness of python/tests), measures
`ping` and `exec true` with `tether_client.Agent`, then runs the Rust `bench-client-rtt` on the
same agent, and prints p50/p99 of both and the Python/Rust ratios (two passes each, A-B-B-A,
averaged). Figures go in BENCHMARKS.md.

    cargo build --release --workspace --bins
    TETHER_BIN_DIR=target/release target/pyenv/bin/python python/bench/bench_rtt.py [PING_ROUNDS]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import AgentProc, NatsServer, binary, clean_env  # noqa: E402

from tether_client import Agent  # noqa: E402


def percentile(sorted_samples: list[float], p: float) -> float:
    return sorted_samples[round((len(sorted_samples) - 1) * p)]


async def measure(rounds: int, once) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Warms up with a tenth of `rounds`, then times `rounds` calls; p50/p99 in µs."""
    for _ in range(rounds // 10):
        await once()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await once()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"rounds": rounds, "p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99),
            "mean_us": statistics.fmean(samples)}


async def python_side(server: NatsServer, proc: AgentProc, ping_rounds: int, exec_rounds: int) -> dict:
    nc = await server.connect()
    try:
        agent = Agent(nc, proc.ws, proc.id)

        async def ping() -> None:
            await agent.ping(7)

        async def exec_true() -> None:
            result = await agent.exec(["true"])
            assert result.exit_code == 0

        return {"ping": await measure(ping_rounds, ping), "exec_true": await measure(exec_rounds, exec_true)}
    finally:
        await nc.close()


def rust_side(server: NatsServer, proc: AgentProc, ping_rounds: int, exec_rounds: int) -> dict:
    env = clean_env(TETHER_NATS_URL=server.url, TETHER_NATS_TOKEN=server.token,
                    TETHER_WORKSPACE_ID=proc.ws, TETHER_AGENT_ID=proc.id)
    out = subprocess.run([str(binary("bench-client-rtt")), str(ping_rounds), str(exec_rounds)],
                         env=env, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)


def average(a: dict, b: dict) -> dict:
    return {op: {k: (a[op][k] + b[op][k]) / 2 for k in ("p50_us", "p99_us")} for op in a}


def main() -> None:
    ping_rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    exec_rounds = max(ping_rounds // 4, 10)
    print(f"binaries: {binary('tether-agent').parent}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} cpus; ping x{ping_rounds}, exec true x{exec_rounds}")
    server = NatsServer()
    proc = AgentProc(server)
    try:
        # A-B-B-A order, averaged: a drift in the machine's load during the run (it is shared)
        # weighs on both clients alike.
        py1 = asyncio.run(python_side(server, proc, ping_rounds, exec_rounds))
        rs1 = rust_side(server, proc, ping_rounds, exec_rounds)
        rs2 = rust_side(server, proc, ping_rounds, exec_rounds)
        py2 = asyncio.run(python_side(server, proc, ping_rounds, exec_rounds))
        py, rs = average(py1, py2), average(rs1, rs2)
    finally:
        proc.stop()
        server.stop()
    print(f"{'op':<10} {'client':<7} {'p50 µs':>9} {'p99 µs':>9}")
    for op in ("ping", "exec_true"):
        for name, side in (("rust", rs), ("python", py)):
            print(f"{op:<10} {name:<7} {side[op]['p50_us']:>9.0f} {side[op]['p99_us']:>9.0f}")
        print(f"{op:<10} {'ratio':<7} {py[op]['p50_us'] / rs[op]['p50_us']:>8.2f}x "
              f"{py[op]['p99_us'] / rs[op]['p99_us']:>8.2f}x   (python / rust)")


if __name__ == "__main__":
    main()
