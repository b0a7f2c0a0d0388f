"""Verified transfers (put_file/get_file) and the tree (sync) ops against the real agent."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import blake3
import pytest

from tether_client import Agent, AgentOSError, Precondition, pb
from harness import AgentProc

MIB = 1 << 20


def _pattern(size: int) -> bytes:
    """Content that differs at every offset a chunk could start, so a misplaced chunk shows."""
    return os.urandom(size)


async def test_put_and_get_20_mib_round_trip(agent: Agent, agent_proc: AgentProc, tmp_path: Path) -> None:
    content = _pattern(20 * MIB)
    src = tmp_path / "big.bin"
    src.write_bytes(content)
    digest = blake3.blake3(content).hexdigest()

    up = await agent.put_file(src, "xfer/big.bin", create_parents=True, mode=0o640)
    assert (up.size, up.sent, up.skipped, up.blake3) == (len(content), len(content), 0, digest)
    assert not up.resumed and up.agent_received == len(content)
    on_agent = agent_proc.root / "xfer" / "big.bin"
    assert on_agent.read_bytes() == content
    assert stat.S_IMODE(on_agent.stat().st_mode) == 0o640
    assert (await agent.fs_digest("xfer/big.bin")).blake3.hex() == digest

    dst = tmp_path / "back.bin"
    down = await agent.get_file("xfer/big.bin", dst)
    assert (down.size, down.blake3) == (len(content), digest)
    assert dst.read_bytes() == content
    assert not (tmp_path / ".back.bin.tether-partial").exists()


async def test_resumed_upload_sends_only_the_rest(agent: Agent, agent_proc: AgentProc) -> None:
    content = _pattern(3 * MIB + 12345)
    tid = "py-resume-0001"
    chunk = 256 * 1024
    opened = await agent.transfer_open(pb.TransferOpenRequest(transfer_id=tid, path="resumed.bin"))
    assert not opened.resumed and not opened.held
    first_part = 4 * chunk  # an interrupted run got this far
    for offset in range(0, first_part, chunk):
        piece = content[offset : offset + chunk]
        written = await agent.write(pb.FsWriteRequest(
            path="resumed.bin", content=piece, offset=offset, use_offset=True, transfer_id=tid
        ))
        assert written == len(piece)
    assert not (agent_proc.root / "resumed.bin").exists()

    report = await agent.put_file(io.BytesIO(content), "resumed.bin", transfer_id=tid)
    assert report.resumed
    assert report.skipped == first_part and report.sent == len(content) - first_part
    assert report.agent_received == len(content)
    assert (agent_proc.root / "resumed.bin").read_bytes() == content
    assert not await agent.transfer_abort(tid)  # committed: nothing left open


async def test_digest_precondition_refuses_a_changed_target(agent: Agent, agent_proc: AgentProc) -> None:
    target = agent_proc.root / "guarded.txt"
    target.write_bytes(b"version one\n")
    seen = (await agent.fs_digest("guarded.txt")).blake3
    target.write_bytes(b"someone else's edit\n")

    with pytest.raises(AgentOSError) as refused:
        await agent.put_file(io.BytesIO(b"mine\n"), "guarded.txt",
                             precondition=Precondition.digest(seen))
    assert refused.value.detail.get("reason") == "precondition_failed"
    assert target.read_bytes() == b"someone else's edit\n"

    now = (await agent.fs_digest("guarded.txt")).blake3
    report = await agent.put_file(io.BytesIO(b"mine\n"), "guarded.txt",
                                  precondition=Precondition.digest(now.hex()))
    assert report.size == 5 and target.read_bytes() == b"mine\n"


async def test_manifest_of_a_small_tree_with_an_exclude(agent: Agent, agent_proc: AgentProc) -> None:
    root = agent_proc.root / "mtree"
    (root / "src").mkdir(parents=True)
    (root / "build").mkdir()
    (root / "src" / "a.txt").write_bytes(b"alpha")
    (root / "src" / "b.log").write_bytes(b"noise")
    (root / "build" / "out.o").write_bytes(b"obj")
    (root / "top.txt").write_bytes(b"top")
    os.symlink("src/a.txt", root / "link")

    entries = [e async for e in agent.tree_manifest("mtree", excludes=["*.log", "build/"], page_size=2)]
    by_path = {e.path: e for e in entries}
    assert [e.path for e in entries] == ["link", "src", "src/a.txt", "top.txt"]
    assert by_path["src"].kind == pb.FS_ENTRY_KIND_DIRECTORY
    assert by_path["link"].kind == pb.FS_ENTRY_KIND_SYMLINK
    assert by_path["link"].symlink_target == "src/a.txt"
    assert by_path["src/a.txt"].digest == blake3.blake3(b"alpha").digest()
    assert by_path["top.txt"].size == 3
    assert [e async for e in agent.tree_manifest("no-such-tree")] == []


async def test_batch_write_then_batch_read_with_a_symlink_and_modes(
    agent: Agent, agent_proc: AgentProc
) -> None:
    entries = [
        pb.BatchEntry(path="bin", kind=pb.FS_ENTRY_KIND_DIRECTORY, mode=0o750),
        pb.BatchEntry(path="bin/run.sh", kind=pb.FS_ENTRY_KIND_FILE, content=b"#!/bin/sh\necho hi\n",
                      mode=0o755),
        pb.BatchEntry(path="notes.txt", kind=pb.FS_ENTRY_KIND_FILE, content=b"private", mode=0o600),
        pb.BatchEntry(path="run", kind=pb.FS_ENTRY_KIND_SYMLINK, symlink_target="bin/run.sh"),
    ]
    wrote = await agent.batch_write("btree", entries)
    assert wrote.written == 4 and wrote.bytes == len(b"#!/bin/sh\necho hi\n") + len(b"private")
    root = agent_proc.root / "btree"
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "bin" / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(root / "run") == "bin/run.sh"

    files = await agent.batch_read("btree", ["bin/run.sh", "notes.txt", "gone.txt", "run"])
    assert [f.path for f in files] == ["bin/run.sh", "notes.txt", "gone.txt", "run"]
    assert (files[0].content, files[0].mode & 0o777) == (b"#!/bin/sh\necho hi\n", 0o755)
    assert (files[1].content, files[1].mode & 0o777) == (b"private", 0o600)
    assert files[2].missing and files[3].missing  # a symlink is not a regular file

    removed = await agent.batch_write("btree", [], remove=["notes.txt", "run"])
    assert removed.removed == 2
    assert not (root / "notes.txt").exists() and not os.path.lexists(root / "run")


async def test_absent_and_unchanged_preconditions(agent: Agent, agent_proc: AgentProc) -> None:
    target = agent_proc.root / "fresh.txt"
    first = await agent.put_file(io.BytesIO(b"one\n"), "fresh.txt", precondition=Precondition.absent())
    assert first.size == 4 and target.read_bytes() == b"one\n"
    with pytest.raises(AgentOSError) as exists:
        await agent.put_file(io.BytesIO(b"two\n"), "fresh.txt", precondition=Precondition.absent())
    assert exists.value.detail.get("reason") == "precondition_failed"

    seen = await agent.stat("fresh.txt")
    assert seen is not None
    unchanged = Precondition.unchanged(seen.size, seen.modified_ms)
    await agent.put_file(io.BytesIO(b"three\n"), "fresh.txt", precondition=unchanged)
    assert target.read_bytes() == b"three\n"
    with pytest.raises(AgentOSError):  # the size changed since `seen`
        await agent.put_file(io.BytesIO(b"four\n"), "fresh.txt", precondition=unchanged)
    assert target.read_bytes() == b"three\n"


async def test_get_file_of_a_missing_file_leaves_nothing(agent: Agent, tmp_path: Path) -> None:
    from tether_client import NotFoundError

    with pytest.raises(NotFoundError):
        await agent.get_file("no/such/file", tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


async def test_get_file_continues_a_partial_file(
    agent: Agent, agent_proc: AgentProc, tmp_path: Path
) -> None:
    content = _pattern(2 * MIB + 777)
    (agent_proc.root / "dl.bin").write_bytes(content)
    dst = tmp_path / "dl.bin"
    (tmp_path / ".dl.bin.tether-partial").write_bytes(content[: MIB + 5])  # an interrupted run
    report = await agent.get_file("dl.bin", dst)
    assert (report.skipped, report.sent) == (MIB + 5, len(content) - MIB - 5)
    assert dst.read_bytes() == content

    # A partial file of another version of the remote file: the digests disagree, start over.
    (tmp_path / ".dl.bin.tether-partial").write_bytes(b"x" * 1000)
    dst.unlink()
    again = await agent.get_file("dl.bin", dst)
    assert (again.skipped, again.sent) == (0, len(content))
    assert dst.read_bytes() == content and not (tmp_path / ".dl.bin.tether-partial").exists()
