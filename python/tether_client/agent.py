"""`Agent`: one typed async method per agent op over a nats-py connection.

Every method funnels into `Agent.call`, which builds the envelope (a unique request id, the
agent's epoch and fence scope), sends it with NATS request/reply on `agent.<ws>.<id>.rpc`, and
opens the reply, as the Rust client does. Whole-file transfer lives in `files.py`, the
hello/events subscription in `events.py`, the terminal viewer in `viewer.py`.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
import os
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any

from . import envelope, executions, files, transfers, tree
from ._proto import tether_pb2 as pb
from .errors import ProtocolError, TetherError
from .executions import ExecStarted, ExecState, OutputStream
from .results import Entry, ExecResult, Listing, Screenshot, Terminal
from .transfers import Precondition, TransferReport

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from .events import EventStream

#: Seconds to wait for a reply unless a call says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Extra seconds an exec reply may take beyond the command's own deadline.
EXEC_TIMEOUT_MARGIN = 10.0

_BUTTONS = {
    "left": pb.POINTER_BUTTON_LEFT,
    "right": pb.POINTER_BUTTON_RIGHT,
    "middle": pb.POINTER_BUTTON_MIDDLE,
}
_KEY_ACTIONS = {"press": pb.KEY_ACTION_PRESS, "down": pb.KEY_ACTION_DOWN, "up": pb.KEY_ACTION_UP}


def _is_token(s: str) -> bool:
    return bool(s) and not any(c in s for c in ".*> \t\r\n")


class Agent:
    """A connection to one agent over an existing, connected nats-py client.

    Args:
        nc: the NATS connection (its servers and credentials are the caller's business).
        workspace_id, agent_id: the agent's address; each one NATS subject token.
        fence_scope: the session the epochs belong to (PROTOCOL.md §3); a fresh one per
            `Agent` when omitted, so two programs never fence each other by accident.
        epoch: sent with every request; raise it (`agent.epoch = n`) when the session moves to
            a new lease, and the agent cancels the work of older epochs of the same scope.
        timeout: seconds to wait for a reply by default.
    """

    def __init__(
        self,
        nc: NatsClient,
        workspace_id: str,
        agent_id: str,
        *,
        fence_scope: str | None = None,
        epoch: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        for what, value in (("workspace_id", workspace_id), ("agent_id", agent_id)):
            if not _is_token(value):
                raise ValueError(f"{what} {value!r} is not a single NATS subject token")
        if fence_scope is not None and not fence_scope:
            raise ValueError("fence_scope must not be empty (omit it for a fresh one)")
        if not 0 <= epoch < 2**32:
            raise ValueError(f"epoch {epoch} is not a uint32")
        self.nc = nc
        self.workspace_id = workspace_id
        self.agent_id = agent_id
        self.fence_scope: str = fence_scope or envelope.default_fence_scope()
        self.epoch: int = epoch
        self.timeout: float = timeout
        self._prefix = envelope.new_id_prefix()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return (
            f"Agent({self.workspace_id}.{self.agent_id}, fence_scope={self.fence_scope!r}, "
            f"epoch={self.epoch})"
        )

    # ------------------------------------------------------------------ subjects and sizes

    def subject(self, leaf: str) -> str:
        """`agent.<ws>.<id>.<leaf>` (leaf: rpc, hello, events)."""
        return f"agent.{self.workspace_id}.{self.agent_id}.{leaf}"

    @property
    def max_payload(self) -> int:
        """The connection's negotiated maximum message size in bytes."""
        return int(self.nc.max_payload)

    # ------------------------------------------------------------------ the one call path

    async def call(
        self, op_name: str, op: Any, *, expect: str | None = None, timeout: float | None = None
    ) -> Any:
        """Sends one op (the message `op` in field `op_name` of the request oneof) and returns the
        result message of kind `expect` (default: the same name). Raises `TetherError`."""
        wait = self.timeout if timeout is None else timeout
        request_id = f"{self._prefix}-{next(self._ids)}"
        request = envelope.build_request(request_id, self.epoch, self.fence_scope, op_name, op)
        subject = self.subject("rpc")
        try:
            reply = await self.nc.request(subject, request.SerializeToString(), timeout=wait)
        except Exception as exc:  # nats-py raises its own error family; map them in one place
            raise envelope.transport_error(exc, subject, wait) from exc
        return envelope.open_response(request_id, reply.data, expect or op_name)

    # ------------------------------------------------------------------ ping, exec, metrics

    async def ping(self, nonce: int | None = None) -> pb.PingResponse:
        """Round trip to the agent; checks the nonce is echoed. Fenced like any op."""
        nonce = secrets.randbits(63) if nonce is None else nonce
        pong = await self.call("ping", pb.PingRequest(nonce=nonce))
        if pong.nonce != nonce:
            raise ProtocolError(f"ping nonce {nonce} echoed as {pong.nonce}")
        return pong

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        shell: bool | None = None,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        stdin: bytes | str = b"",
        timeout: float | None = None,
        reply_timeout: float | None = None,
    ) -> ExecResult:
        """Runs a command and returns its exit code and output.

        Args:
            command: an argv list (run directly), or a string (run by the user's shell with
                `-c`, unless `shell=False` says it is one program name).
            shell: force shell (True) or argv (False) mode; by default a string means shell.
            cwd: working directory (resolved like any path; missing -> `NotFoundError`).
            env: variables added to the agent's (secret-free) environment.
            stdin: fed to the command, then closed (empty: closed at once).
            timeout: seconds after which the agent kills the command's process group and
                replies with `timed_out` and the output so far (None: no deadline).
            reply_timeout: seconds to wait for the reply (default: `timeout` plus a margin, at
                least the agent's default timeout).
        """
        request = executions.exec_request(
            command, shell=shell, cwd=cwd, env=env, stdin=stdin, timeout=timeout
        )
        timeout_ms = request.timeout_ms
        if reply_timeout is None:
            reply_timeout = self.timeout
            if timeout_ms:
                reply_timeout = max(self.timeout, timeout_ms / 1000 + EXEC_TIMEOUT_MARGIN)
        return ExecResult.from_proto(await self.call("exec", request, timeout=reply_timeout))

    async def metrics(self) -> pb.MetricsSample:
        """Samples the machine: CPU, load, memory, disk, GPUs."""
        return await self.call("metrics", pb.MetricsRequest())

    # ------------------------------------------------------------------ long-running commands

    async def exec_start(
        self,
        exec_id: str,
        command: str | Sequence[str],
        *,
        shell: bool | None = None,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        stdin: bytes | str = b"",
        stdin_open: bool = False,
        merge_output: bool = False,
        timeout: float | None = None,
    ) -> ExecStarted:
        """Starts a long-running command under `exec_id` (one NATS token of at most 128 bytes,
        unique in this fence scope) and returns at once; follow it with `attach`.

        Starting an id that exists (running, ended, or of a previous agent instance) starts
        nothing and answers that execution's state with `created` False, so a retried start
        never runs the command twice. `command`, `shell`, `cwd`, `env` and `timeout` are as
        for `exec`; `stdin` is fed first, then stdin is closed unless `stdin_open` (then write
        more with `exec_stdin`); `merge_output` puts stderr into stdout's pipe (one stream, in
        write order).
        """
        request = executions.start_request(
            exec_id,
            executions.exec_request(
                command, shell=shell, cwd=cwd, env=env, stdin=stdin, timeout=timeout
            ),
            stdin_open=stdin_open,
            merge_output=merge_output,
        )
        reply = await self.call("exec_start", request)
        return ExecStarted(ExecState.from_proto(reply.state), bool(reply.created))

    def attach(self, exec_id: str, from_seq: int = 0, *, from_offset: int = 0) -> OutputStream:
        """Follows an execution's output from chunk `from_seq` (what is kept is replayed, then
        it follows live): `async with agent.attach(id) as out: async for item in out:` yields
        `OutputChunk`s (`seq`, `stream`, `data`, `offset`, `gap_bytes`) exactly once and in
        order, and last the execution's `ExecState` when it ends. It acknowledges as it goes
        and attaches again after a skipped seq or 2 s of silence, so it rides out a NATS
        restart. `from_offset`: output bytes already held below `from_seq` (for exact gaps)."""
        return OutputStream(self, exec_id, from_seq, from_offset)

    async def exec_stdin(
        self, exec_id: str, data: bytes | str, offset: int, *, close: bool = False
    ) -> pb.ExecStdinResponse:
        """Writes `data` to the execution's stdin at stdin position `offset` (the bytes written
        before it; bytes the agent already took are skipped, so a retry is safe), in pieces
        that fit a message, then closes stdin if `close`. Returns the reply (`written`: stdin
        bytes taken so far, `closed`). Needs `stdin_open` at start."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return await executions.write_stdin(self, exec_id, raw, offset, close)

    async def exec_signal(self, exec_id: str, signal: str | int = "TERM") -> None:
        """Sends TERM, INT, KILL or HUP (a name, "SIG..." or the signal number) to the
        execution's process group while it runs."""
        executions.check_exec_id(exec_id)
        request = pb.ExecSignalRequest(exec_id=exec_id, signal=executions.signal_value(signal))
        await self.call("exec_signal", request)

    async def exec_wait(self, exec_id: str, *, timeout: float | None = None) -> ExecState:
        """Waits until the execution ends and returns its final state (exit code, signal,
        timed-out flag, duration, bytes per stream). With `timeout` (seconds) it returns the
        state after that long even if it is still `running`; 0 answers at once."""
        return await executions.wait(self, exec_id, timeout)

    async def exec_list(self) -> list[ExecState]:
        """The executions of this fence scope, running and recently ended."""
        reply = await self.call("exec_list", pb.ExecListRequest())
        return [ExecState.from_proto(s) for s in reply.executions]

    # ------------------------------------------------------------------ files

    async def read(self, path: str, offset: int = 0, length: int = 0) -> pb.FsReadResponse:
        """One ranged read (length 0 = to EOF, which fails with `PayloadTooLargeError` when the
        rest does not fit one reply). The agent may return fewer bytes than asked; `read_file`
        reads whole files of any size."""
        return await self.call("fs_read", pb.FsReadRequest(path=path, offset=offset, length=length))

    async def write(self, request: pb.FsWriteRequest) -> int:
        """One fs_write as given (it must fit one message); returns the bytes written."""
        return (await self.call("fs_write", request)).bytes_written

    async def read_file(self, path: str) -> bytes:
        """Reads a whole file of any size (ranged reads sized to the connection, several in
        flight). A file that shrinks while read raises `FileChangedError`."""
        return await files.read_whole(self, path)

    async def write_file(
        self,
        path: str,
        data: bytes | str,
        *,
        mode: int = 0,
        create_parents: bool = False,
    ) -> int:
        """Writes `data` to `path`, replacing it atomically: a reader sees the old file or the
        new one, never a part. Content that fits one message is one truncating fs_write; larger
        content goes in positional chunks to a hidden sibling file that is then moved over the
        target. `mode` 0 keeps an existing file's permission bits. Returns the bytes written."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        return await files.write_whole(self, path, content, mode=mode, create_parents=create_parents)

    async def list(self, path: str = "", *, recursive: bool = False, max_entries: int = 0) -> Listing:
        """Lists a directory (`max_entries` 0 = as many as fit one reply; see `truncated`)."""
        request = pb.FsListRequest(path=path, recursive=recursive, max_entries=max_entries)
        reply = await self.call("fs_list", request)
        return Listing([Entry.from_proto(e) for e in reply.entries], reply.truncated)

    async def stat(self, path: str) -> Entry | None:
        """Stats a path without following a final symlink; None when it does not exist."""
        reply = await self.call("fs_stat", pb.FsStatRequest(path=path))
        return Entry.from_proto(reply.entry) if reply.exists else None

    async def mkdir(self, path: str, *, parents: bool = False, mode: int = 0) -> None:
        """Creates a directory (`parents`: with missing parents, like `mkdir -p`)."""
        await self.call("fs_mkdir", pb.FsMkdirRequest(path=path, parents=parents, mode=mode))

    async def move(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Moves `src` to `dst` (across file systems too); `overwrite` replaces an existing
        target."""
        request = pb.FsMoveRequest(to=dst, overwrite=overwrite)
        setattr(request, "from", src)  # `from` is a Python keyword
        await self.call("fs_move", request)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, a symlink (never what it points to) or a directory (non-empty ones
        need `recursive`). Missing -> `NotFoundError`."""
        await self.call("fs_remove", pb.FsRemoveRequest(path=path, recursive=recursive))

    # ------------------------------------------------------------------ verified transfers

    async def put_file(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        path: str,
        *,
        transfer_id: str | None = None,
        mode: int = 0,
        create_parents: bool = False,
        precondition: Precondition | None = None,
        window: int | None = None,
    ) -> TransferReport:
        """Uploads a local file (a path, or a binary file object read from where it stands) to
        `path`: verified with BLAKE3 and renamed into place by the agent, chunks windowed, memory
        bounded by the window whatever the size (README "Transfers").

        Args:
            transfer_id: 8..64 of [A-Za-z0-9_-]; calling again with the same id after a failure
                resumes the upload and sends only what the agent does not hold (see the report's
                `skipped` and `agent_received`). Without one a random id is used, and a failed
                upload is discarded.
            mode: permission bits (0 keeps the existing file's).
            precondition: `Precondition.absent()`, `.digest(blake3)` or `.unchanged(size,
                modified_ms)`, checked at open and again at commit; when it does not hold,
                `AgentOSError` with detail reason=precondition_failed and nothing is written.
            window: chunk writes in flight (default: 16 MiB worth, within the agent's window).
        """
        return await transfers.put(
            self, source, path, transfer_id=transfer_id, mode=mode,
            create_parents=create_parents, precondition=precondition, window=window,
        )

    async def get_file(
        self, path: str, local: str | os.PathLike[str], *, window: int | None = None
    ) -> TransferReport:
        """Downloads `path` to the local file `local`: windowed ranged reads to a hidden partial
        file, hashed as they arrive and checked against the agent's BLAKE3 (fs_digest), then
        renamed into place. A file that changes meanwhile raises `FileChangedError`."""
        return await transfers.get(self, path, local, window=window)

    async def fs_digest(self, path: str) -> pb.FsDigestResponse:
        """The agent's BLAKE3 of a whole file, with its size and modification time."""
        reply = await self.call("fs_digest", pb.FsDigestRequest(path=path))
        return reply  # type: ignore[no-any-return]

    async def transfer_open(self, request: pb.TransferOpenRequest) -> pb.TransferOpenResponse:
        """Opens (or finds again by id) an upload; `put_file` drives the whole transfer."""
        return await self.call("transfer_open", request)  # type: ignore[no-any-return]

    async def transfer_abort(self, transfer_id: str) -> bool:
        """Discards an unfinished upload; whether the agent had it."""
        reply = await self.call("transfer_abort", pb.TransferAbortRequest(transfer_id=transfer_id))
        return bool(reply.found)

    # ------------------------------------------------------------------ tree (sync) ops

    def tree_manifest(
        self, root: str, *, excludes: Sequence[str] = (), page_size: int = 0
    ) -> AsyncIterator[pb.TreeEntry]:
        """Every entry below `root` (path relative to it, kind, size, mode, mtime, symlink
        target, BLAKE3 of files), over all pages: `async for e in agent.tree_manifest(...)`.
        `excludes` are gitignore-style patterns applied on the agent; `page_size` 0 = as many
        as fit a reply. A missing root yields nothing."""
        return tree.manifest(self, root, excludes, page_size)

    async def batch_write(
        self,
        root: str,
        entries: Sequence[pb.BatchEntry],
        *,
        remove: Sequence[str] = (),
    ) -> pb.BatchWriteResponse:
        """Writes many small entries below `root` (created when missing) in one request:
        removals first, then files, directories and symlinks in order, each file atomically.
        Build entries with `pb.BatchEntry(path=..., kind=pb.FS_ENTRY_KIND_FILE, content=...,
        mode=...)` (or DIRECTORY, SYMLINK with `symlink_target`)."""
        request = pb.BatchWriteRequest(root=root, entries=list(entries), remove=list(remove))
        return await self.call("batch_write", request)  # type: ignore[no-any-return]

    async def batch_read(self, root: str, paths: Sequence[str]) -> list[pb.BatchFile]:
        """Reads many small regular files below `root`, in order (content, mode, `missing`),
        asking again when a reply holds only a prefix."""
        return await tree.read_all(self, root, paths)

    # ------------------------------------------------------------------ terminals

    async def pty_open(
        self,
        command: Sequence[str] = (),
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        cols: int = 80,
        rows: int = 24,
        term: str = "",
        scope_id: str = "",
    ) -> Terminal:
        """Opens a terminal (empty command: the user's login shell) streamed through the agent's
        relay; watch it with `TerminalViewer`. A `scope_id` returns the live terminal of that
        scope instead of starting another. Without a relay -> `UnsupportedError`."""
        request = pb.PtyOpenRequest(
            command=list(command), cwd=cwd, env=dict(env or {}), cols=cols, rows=rows,
            term=term, scope_id=scope_id,
        )
        reply = await self.call("pty_open", request)
        return Terminal(pty_id=reply.pty_id, channel=reply.channel)

    async def pty_write(self, pty_id: str, data: bytes | str) -> int:
        """Types into a terminal; returns the bytes written."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return (await self.call("pty_write", pb.PtyWriteRequest(pty_id=pty_id, data=raw))).bytes_written

    async def pty_resize(self, pty_id: str, cols: int, rows: int) -> None:
        """Resizes a terminal."""
        await self.call("pty_resize", pb.PtyResizeRequest(pty_id=pty_id, cols=cols, rows=rows))

    async def pty_close(self, pty_id: str) -> int:
        """Ends a terminal; returns its exit code (-1 if it was still running and was killed)."""
        return (await self.call("pty_close", pb.PtyCloseRequest(pty_id=pty_id))).exit_code

    # ------------------------------------------------------------------ desktop

    async def screenshot(
        self,
        *,
        max_width: int = 0,
        max_height: int = 0,
        format: str = "png",
        quality: int = 0,
        cursor: bool = False,
    ) -> Screenshot:
        """Captures the screen (view only: no consent needed).

        Args:
            max_width, max_height: scale down to fit, keeping the aspect ratio (0 = native).
            format: "png" (lossless, the default) or "jpeg".
            quality: JPEG quality 1..100 (0 = 80).
            cursor: draw the pointer into the image.
        The reply always fits the connection: the agent shrinks the image until it does.
        """
        formats = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "jpg": pb.IMAGE_FORMAT_JPEG}
        if format.lower() not in formats:
            raise ValueError(f"format {format!r}: expected png or jpeg")
        request = pb.DesktopScreenshotRequest(
            max_width=max_width, max_height=max_height, format=formats[format.lower()],
            quality=quality, cursor=cursor,
        )
        return Screenshot.from_proto(await self.call("desktop_screenshot", request))

    async def desktop_input(self, event: pb.PointerEvent | pb.KeyEvent | pb.ScrollEvent) -> None:
        """Injects one input event (needs the owner's screen-control consent, else
        `ConsentRequiredError` and nothing is touched)."""
        field_name = {
            pb.PointerEvent: "pointer", pb.KeyEvent: "key", pb.ScrollEvent: "scroll"
        }.get(type(event))
        if field_name is None:
            raise TypeError(f"not a desktop input event: {type(event).__name__}")
        request = pb.DesktopInputRequest()
        getattr(request, field_name).CopyFrom(event)
        await self.call("desktop_input", request)

    async def click(
        self,
        x: int,
        y: int,
        *,
        button: str = "left",
        double: bool = False,
        space: tuple[int, int] | None = None,
    ) -> None:
        """Clicks at (x, y). `button`: left, right or middle. `space=(w, h)`: the coordinates
        are in a screenshot of that size, and the agent maps them to native pixels."""
        if button not in _BUTTONS:
            raise ValueError(f"button {button!r}: expected left, right or middle")
        action = pb.POINTER_ACTION_DOUBLE_CLICK if double else pb.POINTER_ACTION_CLICK
        sw, sh = space or (0, 0)
        await self.desktop_input(
            pb.PointerEvent(x=x, y=y, action=action, button=_BUTTONS[button],
                            space_width=sw, space_height=sh)
        )

    async def move_pointer(self, x: int, y: int, *, space: tuple[int, int] | None = None) -> None:
        """Moves the pointer to (x, y) (see `click` for `space`)."""
        sw, sh = space or (0, 0)
        await self.desktop_input(
            pb.PointerEvent(x=x, y=y, action=pb.POINTER_ACTION_MOVE, space_width=sw, space_height=sh)
        )

    async def scroll(
        self,
        dx: int = 0,
        dy: int = 0,
        *,
        at: tuple[int, int] | None = None,
        space: tuple[int, int] | None = None,
    ) -> None:
        """Scrolls the wheel `dy` notches down (negative: up) and `dx` right, at most 50 each; at
        the point `at`, or where the pointer is when `at` is None."""
        sw, sh = space or (0, 0)
        x, y = at or (0, 0)
        await self.desktop_input(
            pb.ScrollEvent(x=x, y=y, delta_x=dx, delta_y=dy, space_width=sw, space_height=sh,
                           at_pointer=at is None)
        )

    async def key(self, chord: str, *, action: str = "press") -> None:
        """Presses a key or chord such as "Enter", "ctrl+c", "shift+Tab" (`action`: press, down
        or up)."""
        if action not in _KEY_ACTIONS:
            raise ValueError(f"action {action!r}: expected press, down or up")
        await self.desktop_input(pb.KeyEvent(key=chord, is_text=False, action=_KEY_ACTIONS[action]))

    async def type_text(self, text: str) -> None:
        """Types `text` (any Unicode, including characters the keymap lacks)."""
        await self.desktop_input(pb.KeyEvent(key=text, is_text=True, action=pb.KEY_ACTION_PRESS))

    # ------------------------------------------------------------------ events

    def events(self) -> EventStream:
        """The agent's announcements (hello, heartbeat, going_offline) as an async iterator.

        Use `async with agent.events() as events: async for e in events: ...` so the
        subscription is live (and nothing published afterwards is missed) when the block
        starts, and is dropped when it ends."""
        from .events import EventStream

        return EventStream(self)


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` is a `TetherError` that may succeed if the call is tried again."""
    return isinstance(exc, TetherError) and exc.retryable
