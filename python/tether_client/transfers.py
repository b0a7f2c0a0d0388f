"""Verified, resumable transfers (README "Transfers"), the way the Rust client drives them.

Uploads: transfer_open (a client-chosen id; the same id finds an unfinished upload again and
reports the byte ranges the agent already holds), positional fs_write chunks carrying the id for
the ranges not held, a window of them in flight, then transfer_commit with the size and the
BLAKE3 of the whole content, which the agent checks before it renames the upload into place.
Downloads: ranged fs_reads, a window in flight, written in order to a hidden partial file and
hashed as they arrive, while the agent hashes the file (fs_digest); the digests must agree
before the partial file is renamed over the target (an interrupted download's partial file is
continued by the next run). Either way at most `window` chunks are in memory, whatever the
file's size.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import blake3

from ._proto import tether_pb2 as pb
from .errors import (
    AgentOfflineError,
    FileChangedError,
    ProtocolError,
    RequestTimeoutError,
    TetherError,
)
from .files import chunk_size, write_chunk_size

if TYPE_CHECKING:
    from .agent import Agent

#: Bytes kept in flight by default; the window is this over the chunk size.
TARGET_IN_FLIGHT = 16 << 20
#: Most chunk requests ever in flight.
MAX_WINDOW = 32
#: The hashing speed a commit's or digest's reply timeout allows for (bytes per second).
SLOWEST_HASH = 50 << 20


@dataclass(frozen=True)
class Precondition:
    """"Fail if the target changed since I read it" (else `AgentOSError` with detail
    reason=precondition_failed, and nothing is written). Build one with `absent()`,
    `digest(...)` or `unchanged(...)`."""

    exists: bool
    size: int = 0
    modified_ms: int = 0
    blake3: bytes = b""

    @classmethod
    def absent(cls) -> Precondition:
        """The target must not exist."""
        return cls(exists=False)

    @classmethod
    def digest(cls, value: bytes | str) -> Precondition:
        """The target's content must have this BLAKE3 digest (32 bytes, or 64 hex digits)."""
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        if len(raw) != 32:
            raise ValueError("a BLAKE3 digest is 32 bytes")
        return cls(exists=True, blake3=raw)

    @classmethod
    def unchanged(cls, size: int, modified_ms: int) -> Precondition:
        """The target must have this size and modification time (as `Agent.stat` reports)."""
        return cls(exists=True, size=size, modified_ms=modified_ms)

    def to_proto(self) -> pb.TransferPrecondition:
        return pb.TransferPrecondition(
            exists=self.exists, size=self.size, modified_ms=self.modified_ms, blake3=self.blake3
        )


@dataclass(frozen=True)
class TransferReport:
    """What a transfer did.

    Attributes:
        size: the content's size in bytes.
        sent: bytes this call moved over the wire (an upload's chunks, a download's reads).
        skipped: bytes not moved because the other side already held them (a resumed upload).
        blake3: the content's BLAKE3, hex.
        resumed: the upload's id named one already open on the agent.
        agent_received: chunk bytes the agent received for this upload over all its sessions
            (uploads only; 0 for downloads).
    """

    size: int
    sent: int
    skipped: int
    blake3: str
    resumed: bool = False
    agent_received: int = 0


def window_for(chunk: int) -> int:
    """Chunks in flight for a chunk size: `TARGET_IN_FLIGHT` worth, 2..`MAX_WINDOW`."""
    return min(max(TARGET_IN_FLIGHT // max(chunk, 1), 2), MAX_WINDOW)


def gaps(held: Iterable[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The `(offset, length)` parts of `[start, end)` outside `held` (sorted, merged ranges)."""
    out: list[tuple[int, int]] = []
    at = start
    for offset, length in held:
        s, e = offset, offset + length
        if e <= at:
            continue
        if s >= end:
            break
        if s > at:
            out.append((at, s - at))
        at = max(at, e)
        if at >= end:
            break
    if at < end:
        out.append((at, end - at))
    return out


def new_transfer_id() -> str:
    """A random transfer id (32 hex digits)."""
    return secrets.token_hex(16)


async def put(
    agent: Agent,
    source: str | os.PathLike[str] | IO[bytes],
    path: str,
    *,
    transfer_id: str | None,
    mode: int,
    create_parents: bool,
    precondition: Precondition | None,
    window: int | None,
) -> TransferReport:
    """Uploads `source` (a local path or a binary file object read from where it stands)."""
    chosen = transfer_id is not None
    tid = transfer_id if transfer_id is not None else new_transfer_id()
    request = pb.TransferOpenRequest(
        transfer_id=tid, path=path, mode=mode, create_parents=create_parents
    )
    if precondition is not None:
        request.precondition.CopyFrom(precondition.to_proto())
    opened = await agent.call("transfer_open", request)
    owned = not hasattr(source, "read")
    stream: IO[bytes] = open(source, "rb") if owned else source  # type: ignore[arg-type]
    try:
        return await _send(agent, path, tid, opened, stream, window)
    except BaseException as exc:
        if not chosen and not isinstance(exc, (AgentOfflineError, RequestTimeoutError)):
            await _abort_quietly(agent, tid)
        raise
    finally:
        if owned:
            stream.close()


async def _send(
    agent: Agent,
    path: str,
    tid: str,
    opened: pb.TransferOpenResponse,
    stream: IO[bytes],
    window: int | None,
) -> TransferReport:
    """Sends what the agent does not hold, then commits with the whole content's digest."""
    held = [(r.offset, r.length) for r in opened.held]
    max_payload = agent.max_payload
    if opened.max_payload:
        max_payload = min(max_payload, opened.max_payload)
    chunk = write_chunk_size(max_payload, len(path.encode()) + len(tid))
    width = max(1, min(window or window_for(chunk), max(opened.window, 1)))
    hasher = blake3.blake3()
    in_flight: set[asyncio.Task[None]] = set()
    pos = sent = 0
    try:
        while True:
            data = await asyncio.to_thread(stream.read, chunk)
            if not data:
                break
            hasher.update(data)
            start, end = pos, pos + len(data)
            pos = end
            for offset, length in gaps(held, start, end):
                while len(in_flight) >= width:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for t in done:
                        t.result()
                piece = data[offset - start : offset - start + length]
                sent += length
                in_flight.add(asyncio.ensure_future(_write_piece(agent, path, tid, offset, piece)))
        if in_flight:
            for t in (await asyncio.wait(in_flight))[0]:
                t.result()
            in_flight = set()
    finally:
        for t in in_flight:
            t.cancel()
    digest = hasher.digest()
    commit = pb.TransferCommitRequest(transfer_id=tid, path=path, size=pos, blake3=digest)
    done_reply = await agent.call(
        "transfer_commit", commit, timeout=agent.timeout + pos / SLOWEST_HASH
    )
    if done_reply.blake3 != digest:
        raise ProtocolError("the agent committed a digest other than the one sent")
    return TransferReport(
        size=pos, sent=sent, skipped=pos - sent, blake3=digest.hex(), resumed=opened.resumed,
        agent_received=done_reply.bytes_received,
    )


async def _write_piece(agent: Agent, path: str, tid: str, offset: int, content: bytes) -> None:
    request = pb.FsWriteRequest(
        path=path, content=content, offset=offset, use_offset=True, transfer_id=tid
    )
    written = await agent.write(request)
    if written != len(content):
        raise ProtocolError(f"agent wrote {written} of {len(content)} bytes at offset {offset}")


async def _abort_quietly(agent: Agent, tid: str) -> None:
    """A failed upload under a random id cannot be resumed: discard it (best effort)."""
    try:
        await asyncio.shield(agent.call("transfer_abort", pb.TransferAbortRequest(transfer_id=tid)))
    except (TetherError, asyncio.CancelledError):
        pass


def partial_path(local: Path) -> Path:
    """The hidden sibling a download is written to before it is verified and renamed."""
    return local.with_name(f".{local.name}.tether-partial")


async def get(
    agent: Agent, path: str, local: str | os.PathLike[str], *, window: int | None
) -> TransferReport:
    """Downloads `path` to `local`: windowed reads to a partial file, checked against the agent's
    digest, then renamed into place. A partial file left by an interrupted run is continued from
    its end, and started over once if the digests then disagree (the remote file changed
    meanwhile). A file that changes during the transfer raises `FileChangedError` and leaves
    `local` untouched."""
    target = Path(local)
    partial = partial_path(target)
    have = await asyncio.to_thread(_size_or_zero, partial)
    try:
        return await _fetch(agent, path, target, partial, have, window)
    except FileChangedError:
        if not have:
            raise
        return await _fetch(agent, path, target, partial, 0, window)


async def _fetch(
    agent: Agent, path: str, target: Path, partial: Path, have: int, window: int | None
) -> TransferReport:
    """Fetches `[have, end)` after the `have` bytes already in `partial`, verifies the whole,
    renames it to `target`. On `FileChangedError` the partial file is removed; on any other
    failure it is kept for the next run."""
    chunk = chunk_size(agent.max_payload)
    width = max(1, window or window_for(chunk))
    first = await agent.read(path, have, chunk)
    total = first.total_size
    digest_wait = agent.timeout + total / SLOWEST_HASH
    digest_task = asyncio.ensure_future(
        agent.call("fs_digest", pb.FsDigestRequest(path=path), timeout=digest_wait)
    )
    hasher = blake3.blake3()
    pending: deque[asyncio.Task[bytes]] = deque()
    sink: IO[bytes] | None = None
    try:
        if total < have:
            raise FileChangedError(f"{path}: it has {total} bytes, fewer than the {have} here")
        sink = await asyncio.to_thread(_open_sink, partial, have, hasher)
        head = first.content[: min(total - have, chunk)]
        await _consume(sink, hasher, head)
        for offset in range(have + len(head), total, chunk):
            length = min(chunk, total - offset)
            pending.append(asyncio.ensure_future(_read_range(agent, path, offset, length)))
            if len(pending) >= width:
                await _consume(sink, hasher, await pending.popleft())
        while pending:
            await _consume(sink, hasher, await pending.popleft())
        theirs = await digest_task
        await asyncio.to_thread(_finish, sink)
        ours = hasher.digest()
        if theirs.blake3 != ours or theirs.size != total:
            raise FileChangedError(
                f"{path}: it changed while being read: the agent now has {theirs.size} bytes "
                "with another BLAKE3"
            )
        await asyncio.to_thread(os.replace, partial, target)
    except BaseException as exc:
        for t in pending:
            t.cancel()
        digest_task.cancel()
        if sink is not None:
            sink.close()
        if isinstance(exc, FileChangedError):
            partial.unlink(missing_ok=True)
        raise
    return TransferReport(size=total, sent=total - have, skipped=have, blake3=ours.hex())


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_sink(partial: Path, have: int, hasher: blake3.blake3) -> IO[bytes]:
    """The partial file, opened to continue after its first `have` bytes (hashed into
    `hasher` first), or created empty."""
    if not have:
        return open(partial, "wb")
    sink = open(partial, "r+b")
    left = have
    while left:
        block = sink.read(min(left, 1 << 20))
        if not block:
            break
        hasher.update(block)
        left -= len(block)
    sink.seek(have)
    sink.truncate()
    return sink


async def _read_range(agent: Agent, path: str, offset: int, length: int) -> bytes:
    """The whole range (the agent may cap a reply); a file that shrank raises."""
    out = bytearray()
    while len(out) < length:
        reply = await agent.read(path, offset + len(out), length - len(out))
        if not reply.content:
            raise FileChangedError(
                f"{path}: file shrank to {reply.total_size} bytes while being read"
            )
        out += reply.content[: length - len(out)]
    return bytes(out)


async def _consume(sink: IO[bytes], hasher: blake3.blake3, data: bytes) -> None:
    hasher.update(data)
    await asyncio.to_thread(sink.write, data)


def _finish(sink: IO[bytes]) -> None:
    sink.flush()
    os.fsync(sink.fileno())
    sink.close()
