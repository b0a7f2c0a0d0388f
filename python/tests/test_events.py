"""`Agent.events()`: hello on connect, heartbeats, going_offline on a clean stop."""

from __future__ import annotations

import asyncio

from tether_client import Agent, pb
from harness import AgentProc, NatsServer, new_agent_id


async def test_hello_heartbeats_and_going_offline_arrive_in_order(nc, nats_server: NatsServer) -> None:  # type: ignore[no-untyped-def]
    agent_id = new_agent_id()
    agent = Agent(nc, "ws1", agent_id)
    async with agent.events() as events:
        proc = AgentProc(nats_server, agent_id=agent_id)
        try:
            seen: list[str] = []
            async def until(kind: str):  # type: ignore[no-untyped-def]
                async for event in events:
                    seen.append(event.kind)
                    if event.kind == kind:
                        return event
            hello = await asyncio.wait_for(until("hello"), 15)
            assert hello.hello.agent_id == agent_id and hello.hello.workspace_id == "ws1"
            assert hello.hello.capabilities.fence_scoped and hello.hello.capabilities.exec
            beat = await asyncio.wait_for(until("heartbeat"), 15)
            second = await asyncio.wait_for(until("heartbeat"), 15)
            assert second.heartbeat.seq > beat.heartbeat.seq
        finally:
            proc.stop()
        bye = await asyncio.wait_for(until("going_offline"), 15)
        assert bye.going_offline.reason == pb.GOING_OFFLINE_REASON_USER_STOP
        assert seen[0] == "hello"
    # Closed: iteration ends (after whatever was already received).
    rest = await asyncio.wait_for(_drain(events), 5)
    assert "hello" not in rest


async def _drain(events) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.kind async for e in events]
