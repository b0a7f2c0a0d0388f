"""A terminal viewer over the relay (PROTOCOL.md §7) that survives relay restarts.

It keeps the cursor of the next agent-to-viewer seq it wants, reconnects with backoff when the
connection is lost or the relay says TRANSPORT_ERROR, resumes from that cursor, and drops any
frame below it, so the output it yields has no repeats; a gap the relay announces is reported,
never hidden. Keystrokes and resizes share one ordered outbox: the user's order (resize, then a
command that reads the size) is the order the terminal sees. A message leaves the outbox only
once it was written to a connection; on a new connection the rest goes first, and the relay
drops keystroke frames it already had (by this viewer's own seq), so none is typed twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlencode

from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ._proto import tether_pb2 as pb
from .errors import StreamError, from_agent_error

TAG_OPEN, TAG_OPEN_ACK, TAG_DATA, TAG_CLOSE = 1, 2, 3, 4
TAG_DESKTOP_INPUT, TAG_PTY_RESIZE, TAG_VIEWER_PRESENCE = 5, 6, 7

MIN_BACKOFF = 0.1
MAX_BACKOFF = 2.0
OPEN_TIMEOUT = 10.0
#: How long `close()` waits for typed input to be written before hanging up.
HANG_UP_WAIT = 2.0


@dataclass(frozen=True)
class Output:
    """Bytes the terminal printed."""

    data: bytes


@dataclass(frozen=True)
class Gap:
    """Frames `start..end` are gone from the relay's buffer; the stream goes on at `end`."""

    start: int
    end: int


@dataclass(frozen=True)
class Reconnecting:
    """The connection was lost (`reason`); the viewer is reconnecting."""

    reason: str


@dataclass(frozen=True)
class Resumed:
    """Connected again after a `Reconnecting`."""


@dataclass(frozen=True)
class Closed:
    """The channel is over (process exit, close, fence) or the relay refused the viewer.
    `reason` is a `StreamCloseReason` number; `reason_name` its name."""

    reason: int
    message: str

    @property
    def reason_name(self) -> str:
        try:
            return pb.StreamCloseReason.Name(self.reason)
        except ValueError:
            return str(self.reason)


ViewerEvent = Output | Gap | Reconnecting | Resumed | Closed


def encode_frame(tag: int, message: Message) -> bytes:
    """One relay message: the tag byte, then the protobuf body."""
    return bytes([tag]) + message.SerializeToString()


def stream_url(relay_url: str, channel: pb.StreamChannel) -> str:
    """`relay_url?ws=&agent=&port=&channel=` naming `channel` (relay_url: the relay's /stream)."""
    query = urlencode(
        [("ws", channel.workspace_id), ("agent", channel.agent_id),
         ("port", str(channel.port)), ("channel", channel.channel_id)]
    )
    return f"{relay_url}{'&' if '?' in relay_url else '?'}{query}"


class _Refused(Exception):
    """The relay said no for good (bad or expired token, unknown channel)."""


class _Unreachable(Exception):
    """No connection, or one the relay would not open now: worth another try."""


class TerminalViewer:
    """Watches one terminal channel: yields `ViewerEvent`s, sends keystrokes and resizes.

    Open it with `await TerminalViewer.connect(relay_url, channel, token)` (the first connection
    must succeed: a refusal raises `StreamError`), iterate it (`async for event in viewer`,
    ending after `Closed`), and `close()` it (or use `async with`).
    """

    def __init__(self, relay_url: str, channel: pb.StreamChannel, token: str, resume_from_seq: int = 0) -> None:
        self.relay_url = relay_url
        self.channel = channel
        self._token = token
        #: Next agent-to-viewer seq wanted.
        self.next_seq = resume_from_seq
        self._input_seq = 0
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_changed = asyncio.Event()
        self._events: asyncio.Queue[ViewerEvent | None] = asyncio.Queue(maxsize=256)
        self._last_size: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False
        self._finished = False

    def __repr__(self) -> str:  # never shows the token
        return f"TerminalViewer(channel={self.channel.channel_id!r}, next_seq={self.next_seq})"

    @classmethod
    async def connect(
        cls, relay_url: str, channel: pb.StreamChannel, token: str, *, resume_from_seq: int = 0
    ) -> TerminalViewer:
        """Connects (the first attempt must succeed) and starts following the channel."""
        viewer = cls(relay_url, channel, token, resume_from_seq)
        try:
            ws = await viewer._open()
        except _Refused as exc:
            raise exc.args[0] from None
        except _Unreachable as exc:
            raise StreamError(f"cannot reach the relay: {exc}", retryable=True) from None
        viewer._task = asyncio.create_task(viewer._run(ws))
        return viewer

    # ------------------------------------------------------------------ the user's side

    def __aiter__(self) -> AsyncIterator[ViewerEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ViewerEvent]:
        while (event := await self.next_event()) is not None:
            yield event

    async def next_event(self, timeout: float | None = None) -> ViewerEvent | None:
        """The next event; None once the viewer has ended (after `Closed`, or `close()`).
        Raises `asyncio.TimeoutError` after `timeout` seconds without one."""
        if (self._done or self._finished) and self._events.empty():
            return None
        item = await asyncio.wait_for(self._events.get(), timeout)
        if item is None:
            self._done = True
        return item

    async def send(self, data: bytes | str) -> None:
        """Types into the terminal (queued while reconnecting)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        frame = pb.StreamFrame(channel_id=self.channel.channel_id, seq=self._input_seq, data=raw)
        self._input_seq += 1
        self._push(encode_frame(TAG_DATA, frame))

    async def resize(self, cols: int, rows: int) -> None:
        """Resizes the terminal, after any input sent before (re-sent after a reconnect)."""
        self._last_size = (cols, rows)
        self._push(encode_frame(TAG_PTY_RESIZE, pb.PtyResize(cols=cols, rows=rows)))

    async def close(self, within: float = HANG_UP_WAIT) -> None:
        """Disconnects once typed input has been written (waiting at most `within` s)."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + within
        while self._outbox and not self._task.done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._done = True

    async def __aenter__(self) -> TerminalViewer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _push(self, message: bytes) -> None:
        self._outbox.append(message)
        self._outbox_changed.set()

    # ------------------------------------------------------------------ the follower task

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                lost = await self._follow(ws)
                if lost is None:
                    return
                await self._events.put(Reconnecting(lost))
                reconnected = await self._reconnect()
                if reconnected is None:
                    return
                ws = reconnected
        finally:
            self._finished = True
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(None)

    async def _reconnect(self) -> ClientConnection | None:
        """Reconnects with backoff; None when the relay refused for good."""
        backoff = MIN_BACKOFF
        while True:
            await asyncio.sleep(backoff)
            try:
                ws = await self._open()
            except _Refused as exc:
                await self._events.put(Closed(pb.STREAM_CLOSE_REASON_UNSPECIFIED, str(exc.args[0])))
                return None
            except _Unreachable:
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            await self._events.put(Resumed())
            if self._last_size is not None:
                cols, rows = self._last_size
                self._outbox.appendleft(encode_frame(TAG_PTY_RESIZE, pb.PtyResize(cols=cols, rows=rows)))
            return ws

    async def _follow(self, ws: ClientConnection) -> str | None:
        """One connection: output in, outbox out. Returns why it was lost, or None when the
        channel is over."""
        writer = asyncio.create_task(self._write(ws))
        try:
            async for raw in ws:
                if not isinstance(raw, bytes) or not raw:
                    continue
                outcome = await self._on_frame(raw)
                if outcome is not None:
                    return outcome or None
            return "the relay closed the connection"
        except ConnectionClosed as exc:
            return f"connection lost: {exc}"
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
            await ws.close()

    async def _write(self, ws: ClientConnection) -> None:
        """Writes the outbox in order; a message leaves it only once written."""
        while True:
            while self._outbox:
                await ws.send(self._outbox[0])
                self._outbox.popleft()
            self._outbox_changed.clear()
            if not self._outbox:
                await self._outbox_changed.wait()

    async def _on_frame(self, raw: bytes) -> str | None:
        """Handles one relay message: None to go on, "" when the channel is over, else the
        reason the connection counts as lost."""
        tag, body = raw[0], raw[1:]
        if tag == TAG_DATA:
            frame = pb.StreamFrame()
            frame.ParseFromString(body)
            if frame.seq < self.next_seq:
                return None  # already handed out
            if frame.seq > self.next_seq:
                await self._events.put(Gap(self.next_seq, frame.seq))
            self.next_seq = frame.seq + 1
            await self._events.put(Output(frame.data))
            return None
        if tag == TAG_CLOSE:
            close = pb.StreamClose()
            close.ParseFromString(body)
            if close.reason == pb.STREAM_CLOSE_REASON_TRANSPORT_ERROR:
                return close.message or "transport error"
            await self._events.put(Closed(close.reason, close.message))
            return ""
        return None

    async def _open(self) -> ClientConnection:
        """Dials the relay and opens the channel as a viewer from `next_seq`; notes the ack."""
        try:
            ws, ack = await asyncio.wait_for(self._dial(), OPEN_TIMEOUT)
        except (_Refused, _Unreachable):
            raise
        except asyncio.TimeoutError:
            raise _Unreachable(f"no StreamOpenAck within {OPEN_TIMEOUT:g} s") from None
        except Exception as exc:  # OSError, ConnectionClosed, websockets' handshake errors
            raise _Unreachable(f"{self.relay_url}: {exc or type(exc).__name__}") from None
        if ack.resume_from_seq > self.next_seq:
            await self._events.put(Gap(self.next_seq, ack.resume_from_seq))
            self.next_seq = ack.resume_from_seq
        return ws

    async def _dial(self) -> tuple[ClientConnection, pb.StreamOpenAck]:
        ws = await connect(stream_url(self.relay_url, self.channel), max_size=None)
        try:
            return ws, await self._handshake(ws)
        except BaseException:
            await ws.close()
            raise

    async def _handshake(self, ws: ClientConnection) -> pb.StreamOpenAck:
        opening = pb.StreamOpen(
            token=self._token, role=pb.STREAM_ROLE_CLIENT, resume_from_seq=self.next_seq
        )
        opening.channel.CopyFrom(self.channel)
        await ws.send(encode_frame(TAG_OPEN, opening))
        async for raw in ws:
            if not isinstance(raw, bytes) or not raw:
                continue
            if raw[0] != TAG_OPEN_ACK:
                raise _Unreachable("the relay did not answer with StreamOpenAck")
            ack = pb.StreamOpenAck()
            ack.ParseFromString(raw[1:])
            if ack.accepted:
                return ack
            error = from_agent_error(ack.error) if ack.HasField("error") else StreamError("refused")
            expired = error.detail.get("reason") == "expired"
            if error.retryable and not expired:
                raise _Unreachable(f"the relay cannot take the viewer now: {error}")
            raise _Refused(StreamError(f"the relay refused the viewer: {error}", detail=error.detail))
        raise _Unreachable("the relay closed the connection during the handshake")

