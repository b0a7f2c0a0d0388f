"""Whole-file transfer of any size over messages capped at the connection's max_payload.

Reads are ranged fs_reads sized to fit a reply, a window of them in flight, driven by the
`total_size` of the first reply. Writes that fit one message are one truncating fs_write
(atomic on the agent); larger ones are written in positional chunks to a hidden sibling file
that is then moved over the target, so a reader sees the old file or the new one, never a half:
the same plain chunked path as the Rust client's, with the same temporary name.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from ._proto import tether_pb2 as pb
from .errors import AgentOfflineError, FileChangedError, ProtocolError, TetherError

if TYPE_CHECKING:
    from .agent import Agent

#: Room left in every message for the envelope and the other fields.
ENVELOPE_ALLOWANCE = 4 * 1024
#: Smallest chunk ever used, whatever the server says.
MIN_CHUNK = 1024
#: Bytes a temporary upload name adds to the target path.
TEMP_NAME_EXTRA = 48
#: Longest part of the target's file name kept in the temporary name.
TEMP_NAME_KEEP = 200
#: Chunk requests kept in flight.
WINDOW = 4

T = TypeVar("T")


def chunk_size(max_payload: int) -> int:
    """Largest payload chunk (read or write) for a connection with this max_payload."""
    return max(max_payload - ENVELOPE_ALLOWANCE, MIN_CHUNK)


def write_chunk_size(max_payload: int, path_len: int) -> int:
    """Largest content of one fs_write to a path of `path_len` bytes."""
    return max(chunk_size(max_payload) - path_len - TEMP_NAME_EXTRA, MIN_CHUNK)


def temp_upload_path(path: str, suffix: int) -> str:
    """The hidden sibling `<dir>/.<name>.tether-upload-<16 hex>` a chunked upload goes to.
    Raises ValueError for paths that do not name a file."""
    cut = path.rfind("/") + 1
    directory, name = path[:cut], path[cut:]
    if name in ("", ".", "..") or (directory == "" and name == "~"):
        raise ValueError(f"{path!r} does not name a file")
    keep = name.encode()[:TEMP_NAME_KEEP].decode("utf-8", "ignore")
    return f"{directory}.{keep}.tether-upload-{suffix:016x}"


async def _windowed(jobs: list[Awaitable[T]], window: int) -> list[T]:
    """Runs the coroutines of `jobs` with at most `window` in flight; results in order. The
    first failure cancels the rest and is raised."""
    gate = asyncio.Semaphore(window)

    async def gated(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    tasks = [asyncio.ensure_future(gated(j)) for j in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


async def read_whole(agent: Agent, path: str) -> bytes:
    """Reads `path` whole: a first ranged read learns the size, the rest follow windowed."""
    chunk = chunk_size(agent.max_payload)
    first = await agent.read(path, 0, chunk)
    total = first.total_size
    head = first.content[: min(total, chunk)]
    parts = [await _fill(agent, path, 0, min(total, chunk), head)]
    offsets = range(chunk, total, chunk)

    async def piece(offset: int) -> bytes:
        length = min(chunk, total - offset)
        reply = await agent.read(path, offset, length)
        return await _fill(agent, path, offset, length, reply.content)

    parts += await _windowed([piece(o) for o in offsets], WINDOW)
    return b"".join(parts)


async def _fill(agent: Agent, path: str, offset: int, length: int, content: bytes) -> bytes:
    """Completes the range `offset..offset+length` whose reply brought `content` (the agent may
    cap a reply), reading again until it is whole."""
    out = bytearray(content[:length])
    while len(out) < length:
        more = await agent.read(path, offset + len(out), length - len(out))
        if not more.content:
            raise FileChangedError(
                f"{path}: file shrank to {more.total_size} bytes while being read "
                f"(expected more than {offset + len(out)})"
            )
        out += more.content[: length - len(out)]
    return bytes(out)


async def write_whole(
    agent: Agent, path: str, content: bytes, *, mode: int, create_parents: bool
) -> int:
    """Writes `content` to `path` atomically (see the module doc); returns the bytes written."""
    chunk = write_chunk_size(agent.max_payload, len(path.encode()))
    if len(content) <= chunk:
        request = pb.FsWriteRequest(
            path=path, content=content, mode=mode, create_parents=create_parents
        )
        return await agent.write(request)
    temp = temp_upload_path(path, secrets.randbits(64))
    keep_mode = mode or await _mode_to_keep(agent, path)
    try:
        written = await _write_chunks(agent, temp, content, chunk, keep_mode, create_parents)
        await agent.move(temp, path, overwrite=True)
    except BaseException as exc:
        if not isinstance(exc, AgentOfflineError):
            await _discard(agent, temp)
        raise
    return written


async def _mode_to_keep(agent: Agent, path: str) -> int:
    """The replaced file's permission bits (a fresh temp file would get the default mode)."""
    entry = await agent.stat(path)
    return entry.mode & 0o7777 if entry is not None and entry.is_file else 0


async def _write_chunks(
    agent: Agent, temp: str, content: bytes, chunk: int, mode: int, create_parents: bool
) -> int:
    """The first chunk as a truncating write that creates `temp`, the rest positionally."""
    view = memoryview(content)
    first = pb.FsWriteRequest(
        path=temp, content=bytes(view[:chunk]), mode=mode, create_parents=create_parents
    )
    _check_written(temp, 0, chunk, await agent.write(first))

    async def piece(offset: int) -> None:
        data = bytes(view[offset : offset + chunk])
        request = pb.FsWriteRequest(path=temp, content=data, offset=offset, use_offset=True)
        _check_written(temp, offset, len(data), await agent.write(request))

    await _windowed([piece(o) for o in range(chunk, len(content), chunk)], WINDOW)
    return len(content)


def _check_written(path: str, offset: int, sent: int, written: int) -> None:
    """A chunk write must report every byte written; anything else would leave a hole."""
    if written != sent:
        raise ProtocolError(f"agent wrote {written} of {sent} bytes at offset {offset} of {path}")


async def _discard(agent: Agent, temp: str) -> None:
    """Best-effort removal of a failed upload's temporary file."""
    try:
        await asyncio.shield(agent.remove(temp))
    except (TetherError, asyncio.CancelledError):
        pass
