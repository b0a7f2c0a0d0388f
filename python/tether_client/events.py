"""Following what an agent announces: `Hello` on every (re)connect and `AgentEvent`s
(heartbeats, going_offline), merged into one async iterator of decoded `Event`s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from ._proto import tether_pb2 as pb
from .errors import ProtocolError

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .agent import Agent


@dataclass(frozen=True)
class Event:
    """One announcement. `kind` is "hello", "heartbeat" or "going_offline"; the field of that
    name holds the message (the others are None)."""

    kind: str
    hello: pb.Hello | None = None
    heartbeat: pb.Heartbeat | None = None
    going_offline: pb.GoingOffline | None = None


def decode(leaf: str, payload: bytes) -> Event | None:
    """Decodes a message of the `hello` or `events` subject. None for an event kind this client
    does not know (a newer agent); `ProtocolError` for bytes that are not the message."""
    try:
        if leaf == "hello":
            hello = pb.Hello()
            hello.ParseFromString(payload)
            return Event("hello", hello=hello)
        event = pb.AgentEvent()
        event.ParseFromString(payload)
    except Exception as exc:  # protobuf's DecodeError
        raise ProtocolError(f"undecodable message on the {leaf} subject: {exc}") from None
    kind = event.WhichOneof("event")
    if kind == "heartbeat":
        return Event("heartbeat", heartbeat=event.heartbeat)
    if kind == "going_offline":
        return Event("going_offline", going_offline=event.going_offline)
    return None


class EventStream:
    """The async iterator `Agent.events()` returns.

    Entering it (`async with`) subscribes to both subjects and flushes, so everything published
    afterwards is seen; iterating without entering subscribes at the first `__anext__`. An
    undecodable message is raised as `ProtocolError` from `__anext__`; the stream goes on
    after it. Iteration ends when the stream is closed.
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._subs: list[Subscription] = []
        self._closed = False

    async def start(self) -> EventStream:
        """Subscribes (once); returns self."""
        if self._subs or self._closed:
            return self
        for leaf in ("hello", "events"):

            async def handler(msg: Msg, leaf: str = leaf) -> None:
                self._queue.put_nowait((leaf, msg.data))

            self._subs.append(await self._agent.nc.subscribe(self._agent.subject(leaf), cb=handler))
        await self._agent.nc.flush()
        return self

    async def close(self) -> None:
        """Unsubscribes; iteration ends after what was already received."""
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass
        self._queue.put_nowait(None)

    async def __aenter__(self) -> EventStream:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        await self.start()
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # stay ended for later calls
                raise StopAsyncIteration
            event = decode(*item)
            if event is not None:
                return event
