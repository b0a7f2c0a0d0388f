#!/usr/bin/env python3
"""A tour of tether_client against a running agent: ping, a command, a file round trip, a
directory listing, typed errors, a few events and, when the agent has a display, a screenshot.

    export TETHER_NATS_URL=nats://127.0.0.1:4222 TETHER_NATS_TOKEN=... \\
           TETHER_WORKSPACE_ID=acme TETHER_AGENT_ID=my-laptop
    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import os

import nats

from tether_client import Agent, NotFoundError, UnsupportedError


async def main() -> None:
    nc = await nats.connect(
        os.environ.get("TETHER_NATS_URL", "nats://127.0.0.1:4222"),
        token=os.environ.get("TETHER_NATS_TOKEN"),
    )
    agent = Agent(nc, os.environ["TETHER_WORKSPACE_ID"], os.environ["TETHER_AGENT_ID"])
    try:
        pong = await agent.ping()
        print(f"agent up for {pong.agent_monotonic_ms} ms")

        result = await agent.exec("uname -a; echo to-stderr >&2", timeout=10)
        print(f"exit {result.exit_code}: {result.text.strip()} / {result.stderr.decode().strip()}")

        await agent.write_file("tether-py-demo/hello.txt", "hello from Python\n", create_parents=True)
        print((await agent.read_file("tether-py-demo/hello.txt")).decode(), end="")
        for entry in (await agent.list("tether-py-demo")).entries:
            print(f"{entry.kind:9} {entry.size:6} {entry.path}")
        await agent.remove("tether-py-demo", recursive=True)

        try:
            await agent.read_file("tether-py-demo/hello.txt")
        except NotFoundError as err:
            print(f"typed error: {err.code_name}, retryable={err.retryable}, detail={err.detail}")

        async with agent.events() as events:
            async for event in events:
                print(f"event: {event.kind}")
                if event.kind == "heartbeat":
                    break

        try:
            shot = await agent.screenshot(max_width=1280, format="jpeg")
            with open("screen.jpg", "wb") as f:
                f.write(shot.data)
            print(f"screenshot {shot.width}x{shot.height} of {shot.native_width}x{shot.native_height}")
        except UnsupportedError as err:
            print(f"no desktop: {err}")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
