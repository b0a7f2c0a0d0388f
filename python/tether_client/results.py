"""Plain result types of the `Agent` methods, built from the protobuf replies.

Python callers get attributes with Python types (bytes, str, bool, int) rather than protobuf
messages; the reply each was built from stays reachable as `.raw` for fields added later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._proto import tether_pb2 as pb


@dataclass(frozen=True)
class ExecResult:
    """What a command did.

    `exit_code` is -1 when it was killed (by its timeout: `timed_out`; by a signal: `signal`).
    Output beyond the reply's budget is cut in the middle (head and tail kept): then
    `stdout_truncated`/`stderr_truncated` are set and `*_total_bytes` are the true sizes.
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_ms: int
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_total_bytes: int
    stderr_total_bytes: int
    signal: int
    raw: pb.ExecResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, r: pb.ExecResponse) -> ExecResult:
        return cls(
            exit_code=r.exit_code,
            stdout=r.stdout,
            stderr=r.stderr,
            timed_out=r.timed_out,
            duration_ms=r.duration_ms,
            stdout_truncated=r.stdout_truncated,
            stderr_truncated=r.stderr_truncated,
            stdout_total_bytes=r.stdout_total_bytes,
            stderr_total_bytes=r.stderr_total_bytes,
            signal=r.signal,
            raw=r,
        )

    @property
    def ok(self) -> bool:
        """The command ran to completion with exit code 0."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


_KINDS = {
    pb.FS_ENTRY_KIND_FILE: "file",
    pb.FS_ENTRY_KIND_DIRECTORY: "directory",
    pb.FS_ENTRY_KIND_SYMLINK: "symlink",
    pb.FS_ENTRY_KIND_FIFO: "fifo",
    pb.FS_ENTRY_KIND_SOCKET: "socket",
    pb.FS_ENTRY_KIND_BLOCK_DEVICE: "block_device",
    pb.FS_ENTRY_KIND_CHAR_DEVICE: "char_device",
}


@dataclass(frozen=True)
class Entry:
    """One file system entry. `path` is its full path on the machine, as the agent resolved it
    (pass it back unchanged); `kind` is one of file, directory, symlink, fifo, socket,
    block_device, char_device, unknown. Symlinks are reported, not followed."""

    name: str
    path: str
    kind: str
    size: int
    modified_ms: int
    mode: int
    symlink_target: str
    raw: pb.FsEntry = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, e: pb.FsEntry) -> Entry:
        return cls(
            name=e.name,
            path=e.path,
            kind=_KINDS.get(e.kind, "unknown"),
            size=e.size,
            modified_ms=e.modified_ms,
            mode=e.mode,
            symlink_target=e.symlink_target,
            raw=e,
        )

    @property
    def is_dir(self) -> bool:
        return self.kind == "directory"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@dataclass(frozen=True)
class Listing:
    """A directory listing, sorted by path. `truncated`: more entries exist than were returned
    (the reply was full, or `max_entries` was reached)."""

    entries: list[Entry]
    truncated: bool


@dataclass(frozen=True)
class Screenshot:
    """An encoded screen image. `format` is "png" or "jpeg"; `width`/`height` describe the image,
    `native_width`/`native_height` the screen (the agent may have scaled down to fit)."""

    data: bytes
    format: str
    width: int
    height: int
    native_width: int
    native_height: int
    cursor: bool
    raw: pb.DesktopScreenshotResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, r: pb.DesktopScreenshotResponse) -> Screenshot:
        return cls(
            data=r.png,
            format="jpeg" if r.format == pb.IMAGE_FORMAT_JPEG else "png",
            width=r.width,
            height=r.height,
            native_width=r.native_width,
            native_height=r.native_height,
            cursor=r.cursor,
            raw=r,
        )


@dataclass(frozen=True)
class Terminal:
    """An open terminal: its id (for pty_write/resize/close) and its relay channel (for
    `TerminalViewer`)."""

    pty_id: str
    channel: pb.StreamChannel
