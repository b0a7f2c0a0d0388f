"""Fixtures: one nats-server and one agent for the whole session (most tests only need a fresh
client), and the relay, desktop and restart stories their own processes. Every process a fixture
starts is stopped when it goes out of scope."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import AgentProc, NatsServer, Relay, Xvfb  # noqa: E402

from tether_client import Agent  # noqa: E402


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def agent_proc(nats_server: NatsServer) -> Iterator[AgentProc]:
    proc = AgentProc(nats_server)
    yield proc
    proc.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[object]:
    conn = await nats_server.connect()
    yield conn
    await conn.close()


@pytest.fixture
def agent(nc: object, agent_proc: AgentProc) -> Agent:
    """A client of the shared agent with a fresh fence scope."""
    return Agent(nc, agent_proc.ws, agent_proc.id)  # type: ignore[arg-type]


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay()
    yield r
    r.stop()


@pytest.fixture
def relay_agent(nats_server: NatsServer, relay: Relay) -> Iterator[AgentProc]:
    """An agent streaming terminals through its own relay."""
    proc = AgentProc(nats_server, relay=relay)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def xvfb() -> Iterator[Xvfb]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb; scripts/setup.sh installs it)")
    x = Xvfb(1024, 768)
    yield x
    x.stop()


@pytest.fixture(scope="session")
def desktop_proc(nats_server: NatsServer, xvfb: Xvfb) -> Iterator[AgentProc]:
    """An agent on the test Xvfb, with screen-control consent."""
    proc = AgentProc(nats_server, args=["--consent-screen-control"], env={"DISPLAY": xvfb.display})
    yield proc
    proc.stop()


@pytest.fixture
def desktop(nc: object, desktop_proc: AgentProc) -> Agent:
    return Agent(nc, desktop_proc.ws, desktop_proc.id)  # type: ignore[arg-type]
