"""Tree (workspace sync) ops (README "Workspace sync"): the paged manifest of a directory tree,
and many small files written or read in one request. Paths in these messages are relative to
`root`, '/'-separated; nothing follows a symlink below `root`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ._proto import tether_pb2 as pb
from .errors import PayloadTooLargeError

if TYPE_CHECKING:
    from .agent import Agent


async def manifest(
    agent: Agent, root: str, excludes: Sequence[str], page_size: int
) -> AsyncIterator[pb.TreeEntry]:
    """Every entry below `root`, page after page, in component-wise path order."""
    after = ""
    while True:
        request = pb.TreeManifestRequest(
            root=root, excludes=list(excludes), after=after, max_entries=page_size
        )
        page = await agent.call("tree_manifest", request)
        for entry in page.entries:
            yield entry
        if not page.next_after:
            return
        after = page.next_after


async def read_all(agent: Agent, root: str, paths: Sequence[str]) -> list[pb.BatchFile]:
    """All of `paths` (each reply holds a prefix of what is asked; ask again for the rest)."""
    out: list[pb.BatchFile] = []
    rest = list(paths)
    while rest:
        reply = await agent.call("batch_read", pb.BatchReadRequest(root=root, paths=rest))
        if not reply.files:
            raise PayloadTooLargeError(f"{root}/{rest[0]} does not fit one batch_read reply")
        out.extend(reply.files)
        rest = rest[len(reply.files) :]
    return out
