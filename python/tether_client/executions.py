"""Long-running commands (README "Long-running commands"): the result types, the stdin and wait
loops, and `OutputStream`, which follows an execution's output.

An `OutputStream` subscribes to a subject of its own under the agent's
(`agent.<ws>.<id>.exec.<exec_id>.<unique>`: an agent enrolled with least privilege may publish
only there), attaches from a seq and acknowledges what it received, so the agent never runs more
than a window ahead of a slow consumer. It attaches again from the next seq it lacks whenever a
seq is skipped without a gap that accounts for it, or nothing arrives for `SILENCE` seconds (a
NATS restart, a lost message, or merely a quiet command), so the consumer gets every chunk
exactly once and in order, as the Rust client's stream does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from ._proto import tether_pb2 as pb
from .errors import AgentOfflineError, ProtocolError, RequestTimeoutError, TetherError

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .agent import Agent

#: With nothing received for this many seconds, the stream attaches again from where it is.
SILENCE = 2.0
#: Acknowledge after this many bytes received (the agent's default window is 4 MiB).
ACK_EVERY = 512 << 10
#: Seconds re-attaching keeps retrying while the agent cannot be reached (NATS restarting).
REATTACH_PATIENCE = 120.0
#: Longest wait (seconds) one exec_wait request asks the agent for (it caps them at 60).
WAIT_SLICE = 20.0
#: Longest exec_id the agent takes (bytes).
MAX_EXEC_ID = 128

_STATUS = {
    pb.EXEC_STATUS_RUNNING: "running",
    pb.EXEC_STATUS_EXITED: "exited",
    pb.EXEC_STATUS_KILLED: "killed",
    pb.EXEC_STATUS_LOST: "lost",
}
_SIGNALS = {
    "TERM": pb.EXEC_SIGNAL_TERM,
    "INT": pb.EXEC_SIGNAL_INT,
    "KILL": pb.EXEC_SIGNAL_KILL,
    "HUP": pb.EXEC_SIGNAL_HUP,
}
_SIGNAL_NUMBERS = {15: "TERM", 2: "INT", 9: "KILL", 1: "HUP"}


@dataclass(frozen=True)
class ExecState:
    """Where an execution stands.

    `status` is "running", "exited" (by itself: `exit_code`; by a signal: `signal`; by its
    deadline: `timed_out`), "killed" (an epoch advance of its fence scope or agent shutdown) or
    "lost" (it ran under a previous agent instance). `exit_code` is -1 unless it exited by
    itself. `next_seq` is the number of output chunks so far.
    """

    exec_id: str
    command: list[str]
    status: str
    end_reason: str
    exit_code: int
    signal: int
    timed_out: bool
    started_at_ms: int
    duration_ms: int
    stdout_bytes: int
    stderr_bytes: int
    next_seq: int
    dropped_bytes: int
    previous_instance: bool
    pid: int
    raw: pb.ExecState = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, s: pb.ExecState) -> ExecState:
        return cls(
            exec_id=s.exec_id,
            command=list(s.command),
            status=_STATUS.get(s.status, "unspecified"),
            end_reason=s.end_reason,
            exit_code=s.exit_code,
            signal=s.signal,
            timed_out=s.timed_out,
            started_at_ms=s.started_at_ms,
            duration_ms=s.duration_ms,
            stdout_bytes=s.stdout_bytes,
            stderr_bytes=s.stderr_bytes,
            next_seq=s.next_seq,
            dropped_bytes=s.dropped_bytes,
            previous_instance=s.previous_instance,
            pid=s.pid,
            raw=s,
        )

    @property
    def running(self) -> bool:
        """The command has not ended yet."""
        return self.status == "running"

    @property
    def ok(self) -> bool:
        """It ended by itself with exit code 0."""
        return self.status == "exited" and self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class ExecStarted:
    """What `exec_start` answered: the execution's state, and whether this call started it
    (`created` False: an execution of that id already existed and nothing was started)."""

    state: ExecState
    created: bool


@dataclass(frozen=True)
class OutputChunk:
    """Bytes the command wrote, in order. `stream` is "stdout" or "stderr"; `offset` counts the
    output bytes (both streams) before this chunk; `gap_bytes` > 0 says the agent dropped that
    much output (past its spill cap) just before it."""

    seq: int
    stream: str
    data: bytes
    offset: int
    gap_bytes: int

    @property
    def text(self) -> str:
        """`data` decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


def check_exec_id(exec_id: str) -> None:
    """`ValueError` unless `exec_id` is one NATS token of at most 128 bytes."""
    if (
        not exec_id
        or len(exec_id.encode()) > MAX_EXEC_ID
        or any(c in exec_id for c in ".*> \t\r\n")
    ):
        raise ValueError(f"exec_id {exec_id!r} is not one NATS token of at most 128 bytes")


def signal_value(signal: str | int) -> int:
    """The ExecSignal of a name ("TERM", "SIGTERM", "term") or a POSIX signal number (15,
    `signal.SIGTERM`); only TERM, INT, KILL and HUP are served."""
    if isinstance(signal, str):
        name = signal.upper().removeprefix("SIG")
        if name in _SIGNALS:
            return _SIGNALS[name]
    elif int(signal) in _SIGNAL_NUMBERS:
        return _SIGNALS[_SIGNAL_NUMBERS[int(signal)]]
    raise ValueError(f"signal {signal!r}: expected TERM, INT, KILL or HUP")


def transient(exc: BaseException) -> bool:
    """Errors worth retrying an attach or a stdin write for: the agent or NATS is briefly away."""
    return isinstance(exc, (AgentOfflineError, RequestTimeoutError)) or (
        isinstance(exc, TetherError) and exc.retryable
    )


def start_request(
    exec_id: str,
    exec_request: pb.ExecRequest,
    *,
    stdin_open: bool,
    merge_output: bool,
) -> pb.ExecStartRequest:
    """The exec_start op for an exec request built like `Agent.exec` builds one."""
    check_exec_id(exec_id)
    request = pb.ExecStartRequest(exec_id=exec_id, merge_output=merge_output, stdin_open=stdin_open)
    request.exec.CopyFrom(exec_request)
    return request


async def write_stdin(
    agent: Agent, exec_id: str, data: bytes, offset: int, close: bool
) -> pb.ExecStdinResponse:
    """Writes `data` at stdin position `offset` in pieces that fit a message, retrying a
    transient failure at the same offset (the agent skips bytes it already took), then closes
    stdin if asked. Returns the last reply."""
    check_exec_id(exec_id)
    piece = max(1024, min(256 << 10, agent.max_payload - 1024))
    position = offset
    rest = memoryview(data)
    while True:
        chunk, rest = rest[:piece], rest[piece:]
        last = len(rest) == 0
        request = pb.ExecStdinRequest(
            exec_id=exec_id, data=bytes(chunk), offset=position, close=close and last
        )
        for attempt in range(6):
            try:
                reply = await agent.call("exec_stdin", request)
                break
            except TetherError as exc:
                if attempt == 5 or not transient(exc):
                    raise
                await asyncio.sleep(0.1)
        position += len(chunk)
        if reply.written < position:
            raise ProtocolError(f"the agent took stdin only up to {reply.written} of {position}")
        if last:
            return reply  # type: ignore[no-any-return]


async def wait(agent: Agent, exec_id: str, timeout: float | None) -> ExecState:
    """exec_wait in slices until the execution ends or `timeout` seconds passed (None: however
    long it takes); returns the last state."""
    check_exec_id(exec_id)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
        slice_ms = max(0, round(left * 1000))
        reply = await agent.call(
            "exec_wait",
            pb.ExecWaitRequest(exec_id=exec_id, timeout_ms=slice_ms),
            timeout=agent.timeout + slice_ms / 1000,
        )
        state = ExecState.from_proto(reply)
        if not state.running or (deadline is not None and time.monotonic() >= deadline):
            return state


class OutputStream:
    """The output of one execution as an async iterator (`Agent.attach`): `OutputChunk`s in
    order, then, as the last item, the execution's `ExecState` when it ends (also kept in
    `end`).

    Use `async with agent.attach(exec_id) as out: async for item in out: ...` so the
    subscription is dropped however the block is left; it is also dropped when the stream
    ends or fails. Iterating without entering attaches at the first `__anext__`.
    """

    def __init__(self, agent: Agent, exec_id: str, from_seq: int = 0, from_offset: int = 0) -> None:
        check_exec_id(exec_id)
        self._agent = agent
        self.exec_id = exec_id
        unique = agent.nc.new_inbox().rsplit(".", 1)[-1] or secrets.token_hex(11)
        #: The subject the agent publishes this attachment's chunks to.
        self.subject = agent.subject(f"exec.{exec_id}.{unique}")
        self._next = from_seq
        self._offset = from_offset
        self._acked = from_offset
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self._done = False
        self._end_given = False
        #: The execution's final state, once the stream has reached it.
        self.end: ExecState | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> OutputStream:
        """Subscribes and attaches (once); returns self. If the execution belongs to a previous
        agent instance (no chunk will come), the stream ends at once with its state."""
        if self._sub is not None or self._done:
            return self

        async def handler(msg: Msg) -> None:
            self._queue.put_nowait(msg.data)

        self._sub = await self._agent.nc.subscribe(self.subject, cb=handler)
        try:
            # The subscription must be live on the server before the agent publishes to it.
            await self._agent.nc.flush()
            reply = await self._attach()
        except BaseException:
            await self.close()
            raise
        self._ended_elsewhere(reply)
        return self

    async def close(self) -> None:
        """Stops following: unsubscribes; iteration ends."""
        self._done = True
        for task in list(self._acks):
            task.cancel()  # an acknowledgement matters no more
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass

    async def __aenter__(self) -> OutputStream:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> OutputChunk | ExecState:
        await self.start()
        try:
            return await self._next_item()
        except BaseException:
            await self.close()
            raise

    # ------------------------------------------------------------------ following

    async def _next_item(self) -> OutputChunk | ExecState:
        while True:
            if self._done:
                if self.end is not None and not self._end_given:
                    self._end_given = True
                    return self.end
                raise StopAsyncIteration
            try:
                payload = await asyncio.wait_for(self._queue.get(), SILENCE)
            except asyncio.TimeoutError:
                self._ended_elsewhere(await self._reattach())
                continue
            out = pb.ExecOutput()
            try:
                out.ParseFromString(payload)
            except Exception:  # protobuf's DecodeError: not ours, skip it
                continue
            if out.seq < self._next:
                continue  # a replay of what we have
            # A seq jump is legitimate only over output the agent dropped (a gap that accounts
            # for every byte); otherwise chunks went missing on the way: ask again from the
            # first one we lack.
            if out.seq > self._next and out.offset != self._offset + out.gap_bytes:
                await self._reattach()
                continue
            if out.HasField("end"):
                self.end = ExecState.from_proto(out.end)
                await self.close()
                continue
            self._next = out.seq + 1
            self._offset = out.offset + len(out.data)
            if self._offset - self._acked >= ACK_EVERY:
                self._ack()
            stream = "stderr" if out.stream == pb.EXEC_STREAM_STDERR else "stdout"
            return OutputChunk(out.seq, stream, bytes(out.data), out.offset, out.gap_bytes)

    def _ended_elsewhere(self, reply: pb.ExecAttachResponse) -> None:
        """Ends the stream when the attach reply says the execution is one of a previous agent
        instance: no chunk (and no end message) will come."""
        if reply.HasField("state") and reply.state.previous_instance:
            self.end = ExecState.from_proto(reply.state)
            self._done = True

    async def _attach(self) -> pb.ExecAttachResponse:
        request = pb.ExecAttachRequest(
            exec_id=self.exec_id,
            from_seq=self._next,
            subject=self.subject,
            from_offset=self._offset,
        )
        reply = await self._agent.call("exec_attach", request)
        self._acked = self._offset
        return reply  # type: ignore[no-any-return]

    async def _reattach(self) -> pb.ExecAttachResponse:
        """Attaches again from the next seq wanted, retrying while the agent is unreachable."""
        give_up = time.monotonic() + REATTACH_PATIENCE
        while True:
            try:
                return await self._attach()
            except TetherError as exc:
                if time.monotonic() >= give_up or not transient(exc):
                    raise
                await asyncio.sleep(0.25)

    def _ack(self) -> None:
        """Acknowledges every chunk below the next seq, in the background (a lost ack only
        slows the agent until the next one or a re-attach)."""
        self._acked = self._offset
        seq = self._next

        async def send() -> None:
            try:
                await self._agent.call(
                    "exec_ack", pb.ExecAckRequest(exec_id=self.exec_id, subject=self.subject, seq=seq)
                )
            except TetherError:
                pass

        task = asyncio.get_running_loop().create_task(send())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)


def exec_request(
    command: str | Sequence[str],
    *,
    shell: bool | None,
    cwd: str,
    env: Mapping[str, str] | None,
    stdin: bytes | str,
    timeout: float | None,
) -> pb.ExecRequest:
    """The ExecRequest of `Agent.exec` and `Agent.exec_start`: a string is run by the shell
    unless `shell=False`; `timeout` in seconds (None: no deadline)."""
    argv = [command] if isinstance(command, str) else list(command)
    use_shell = isinstance(command, str) if shell is None else shell
    return pb.ExecRequest(
        command=argv,
        shell=use_shell,
        cwd=cwd,
        env=dict(env or {}),
        stdin=stdin.encode() if isinstance(stdin, str) else bytes(stdin),
        timeout_ms=0 if timeout is None else max(1, round(timeout * 1000)),
    )
