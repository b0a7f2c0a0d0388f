from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_UNSUPPORTED: _ClassVar[ErrorCode]
    ERROR_CODE_OS: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_CONSENT_REQUIRED: _ClassVar[ErrorCode]
    ERROR_CODE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_DRAINING: _ClassVar[ErrorCode]
    ERROR_CODE_PROTOCOL: _ClassVar[ErrorCode]
    ERROR_CODE_STREAM: _ClassVar[ErrorCode]
    ERROR_CODE_AGENT_OFFLINE: _ClassVar[ErrorCode]
    ERROR_CODE_FENCED: _ClassVar[ErrorCode]
    ERROR_CODE_PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]

class ExecSignal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_SIGNAL_UNSPECIFIED: _ClassVar[ExecSignal]
    EXEC_SIGNAL_TERM: _ClassVar[ExecSignal]
    EXEC_SIGNAL_INT: _ClassVar[ExecSignal]
    EXEC_SIGNAL_KILL: _ClassVar[ExecSignal]
    EXEC_SIGNAL_HUP: _ClassVar[ExecSignal]

class ExecStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_STATUS_UNSPECIFIED: _ClassVar[ExecStatus]
    EXEC_STATUS_RUNNING: _ClassVar[ExecStatus]
    EXEC_STATUS_EXITED: _ClassVar[ExecStatus]
    EXEC_STATUS_KILLED: _ClassVar[ExecStatus]
    EXEC_STATUS_LOST: _ClassVar[ExecStatus]

class ExecStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_STREAM_STDOUT: _ClassVar[ExecStream]
    EXEC_STREAM_STDERR: _ClassVar[ExecStream]

class FsEntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FS_ENTRY_KIND_UNSPECIFIED: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_FILE: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_DIRECTORY: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_SYMLINK: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_FIFO: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_SOCKET: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_BLOCK_DEVICE: _ClassVar[FsEntryKind]
    FS_ENTRY_KIND_CHAR_DEVICE: _ClassVar[FsEntryKind]

class GitOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GIT_OP_UNSPECIFIED: _ClassVar[GitOp]
    GIT_OP_STATUS: _ClassVar[GitOp]
    GIT_OP_DIFF: _ClassVar[GitOp]
    GIT_OP_LOG: _ClassVar[GitOp]
    GIT_OP_ADD: _ClassVar[GitOp]
    GIT_OP_COMMIT: _ClassVar[GitOp]
    GIT_OP_BRANCH: _ClassVar[GitOp]
    GIT_OP_CHECKOUT: _ClassVar[GitOp]
    GIT_OP_PULL: _ClassVar[GitOp]
    GIT_OP_PUSH: _ClassVar[GitOp]
    GIT_OP_RAW: _ClassVar[GitOp]

class DesktopFrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESKTOP_FRAME_ENCODING_WHOLE: _ClassVar[DesktopFrameEncoding]
    DESKTOP_FRAME_ENCODING_TILES: _ClassVar[DesktopFrameEncoding]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]

class SettleOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTLE_OUTCOME_UNSPECIFIED: _ClassVar[SettleOutcome]
    SETTLE_OUTCOME_CHANGED: _ClassVar[SettleOutcome]
    SETTLE_OUTCOME_UNCHANGED: _ClassVar[SettleOutcome]
    SETTLE_OUTCOME_DEADLINE: _ClassVar[SettleOutcome]

class PointerAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POINTER_ACTION_UNSPECIFIED: _ClassVar[PointerAction]
    POINTER_ACTION_MOVE: _ClassVar[PointerAction]
    POINTER_ACTION_DOWN: _ClassVar[PointerAction]
    POINTER_ACTION_UP: _ClassVar[PointerAction]
    POINTER_ACTION_CLICK: _ClassVar[PointerAction]
    POINTER_ACTION_DOUBLE_CLICK: _ClassVar[PointerAction]

class PointerButton(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POINTER_BUTTON_UNSPECIFIED: _ClassVar[PointerButton]
    POINTER_BUTTON_LEFT: _ClassVar[PointerButton]
    POINTER_BUTTON_RIGHT: _ClassVar[PointerButton]
    POINTER_BUTTON_MIDDLE: _ClassVar[PointerButton]

class KeyAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ACTION_UNSPECIFIED: _ClassVar[KeyAction]
    KEY_ACTION_DOWN: _ClassVar[KeyAction]
    KEY_ACTION_UP: _ClassVar[KeyAction]
    KEY_ACTION_PRESS: _ClassVar[KeyAction]

class Os(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OS_UNSPECIFIED: _ClassVar[Os]
    OS_LINUX: _ClassVar[Os]
    OS_MACOS: _ClassVar[Os]
    OS_WINDOWS: _ClassVar[Os]

class Arch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARCH_UNSPECIFIED: _ClassVar[Arch]
    ARCH_X86_64: _ClassVar[Arch]
    ARCH_AARCH64: _ClassVar[Arch]

class LimitEnforcement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_ENFORCEMENT_NONE: _ClassVar[LimitEnforcement]
    LIMIT_ENFORCEMENT_CGROUP: _ClassVar[LimitEnforcement]
    LIMIT_ENFORCEMENT_RLIMIT: _ClassVar[LimitEnforcement]

class UnixSocketConfinement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNIX_SOCKET_CONFINEMENT_NONE: _ClassVar[UnixSocketConfinement]
    UNIX_SOCKET_CONFINEMENT_LANDLOCK: _ClassVar[UnixSocketConfinement]
    UNIX_SOCKET_CONFINEMENT_SECCOMP: _ClassVar[UnixSocketConfinement]

class GoingOfflineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOING_OFFLINE_REASON_UNSPECIFIED: _ClassVar[GoingOfflineReason]
    GOING_OFFLINE_REASON_USER_STOP: _ClassVar[GoingOfflineReason]
    GOING_OFFLINE_REASON_UPDATE: _ClassVar[GoingOfflineReason]
    GOING_OFFLINE_REASON_HOST_SHUTDOWN: _ClassVar[GoingOfflineReason]

class StreamKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_KIND_UNSPECIFIED: _ClassVar[StreamKind]
    STREAM_KIND_PTY: _ClassVar[StreamKind]
    STREAM_KIND_DESKTOP: _ClassVar[StreamKind]

class StreamRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_ROLE_UNSPECIFIED: _ClassVar[StreamRole]
    STREAM_ROLE_AGENT: _ClassVar[StreamRole]
    STREAM_ROLE_CLIENT: _ClassVar[StreamRole]

class StreamCloseReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_CLOSE_REASON_UNSPECIFIED: _ClassVar[StreamCloseReason]
    STREAM_CLOSE_REASON_NORMAL: _ClassVar[StreamCloseReason]
    STREAM_CLOSE_REASON_PROCESS_EXIT: _ClassVar[StreamCloseReason]
    STREAM_CLOSE_REASON_FENCED: _ClassVar[StreamCloseReason]
    STREAM_CLOSE_REASON_TRANSPORT_ERROR: _ClassVar[StreamCloseReason]
    STREAM_CLOSE_REASON_RATE_LIMITED: _ClassVar[StreamCloseReason]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_UNSUPPORTED: ErrorCode
ERROR_CODE_OS: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_CONSENT_REQUIRED: ErrorCode
ERROR_CODE_TIMEOUT: ErrorCode
ERROR_CODE_DRAINING: ErrorCode
ERROR_CODE_PROTOCOL: ErrorCode
ERROR_CODE_STREAM: ErrorCode
ERROR_CODE_AGENT_OFFLINE: ErrorCode
ERROR_CODE_FENCED: ErrorCode
ERROR_CODE_PAYLOAD_TOO_LARGE: ErrorCode
EXEC_SIGNAL_UNSPECIFIED: ExecSignal
EXEC_SIGNAL_TERM: ExecSignal
EXEC_SIGNAL_INT: ExecSignal
EXEC_SIGNAL_KILL: ExecSignal
EXEC_SIGNAL_HUP: ExecSignal
EXEC_STATUS_UNSPECIFIED: ExecStatus
EXEC_STATUS_RUNNING: ExecStatus
EXEC_STATUS_EXITED: ExecStatus
EXEC_STATUS_KILLED: ExecStatus
EXEC_STATUS_LOST: ExecStatus
EXEC_STREAM_STDOUT: ExecStream
EXEC_STREAM_STDERR: ExecStream
FS_ENTRY_KIND_UNSPECIFIED: FsEntryKind
FS_ENTRY_KIND_FILE: FsEntryKind
FS_ENTRY_KIND_DIRECTORY: FsEntryKind
FS_ENTRY_KIND_SYMLINK: FsEntryKind
FS_ENTRY_KIND_FIFO: FsEntryKind
FS_ENTRY_KIND_SOCKET: FsEntryKind
FS_ENTRY_KIND_BLOCK_DEVICE: FsEntryKind
FS_ENTRY_KIND_CHAR_DEVICE: FsEntryKind
GIT_OP_UNSPECIFIED: GitOp
GIT_OP_STATUS: GitOp
GIT_OP_DIFF: GitOp
GIT_OP_LOG: GitOp
GIT_OP_ADD: GitOp
GIT_OP_COMMIT: GitOp
GIT_OP_BRANCH: GitOp
GIT_OP_CHECKOUT: GitOp
GIT_OP_PULL: GitOp
GIT_OP_PUSH: GitOp
GIT_OP_RAW: GitOp
DESKTOP_FRAME_ENCODING_WHOLE: DesktopFrameEncoding
DESKTOP_FRAME_ENCODING_TILES: DesktopFrameEncoding
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
SETTLE_OUTCOME_UNSPECIFIED: SettleOutcome
SETTLE_OUTCOME_CHANGED: SettleOutcome
SETTLE_OUTCOME_UNCHANGED: SettleOutcome
SETTLE_OUTCOME_DEADLINE: SettleOutcome
POINTER_ACTION_UNSPECIFIED: PointerAction
POINTER_ACTION_MOVE: PointerAction
POINTER_ACTION_DOWN: PointerAction
POINTER_ACTION_UP: PointerAction
POINTER_ACTION_CLICK: PointerAction
POINTER_ACTION_DOUBLE_CLICK: PointerAction
POINTER_BUTTON_UNSPECIFIED: PointerButton
POINTER_BUTTON_LEFT: PointerButton
POINTER_BUTTON_RIGHT: PointerButton
POINTER_BUTTON_MIDDLE: PointerButton
KEY_ACTION_UNSPECIFIED: KeyAction
KEY_ACTION_DOWN: KeyAction
KEY_ACTION_UP: KeyAction
KEY_ACTION_PRESS: KeyAction
OS_UNSPECIFIED: Os
OS_LINUX: Os
OS_MACOS: Os
OS_WINDOWS: Os
ARCH_UNSPECIFIED: Arch
ARCH_X86_64: Arch
ARCH_AARCH64: Arch
LIMIT_ENFORCEMENT_NONE: LimitEnforcement
LIMIT_ENFORCEMENT_CGROUP: LimitEnforcement
LIMIT_ENFORCEMENT_RLIMIT: LimitEnforcement
UNIX_SOCKET_CONFINEMENT_NONE: UnixSocketConfinement
UNIX_SOCKET_CONFINEMENT_LANDLOCK: UnixSocketConfinement
UNIX_SOCKET_CONFINEMENT_SECCOMP: UnixSocketConfinement
GOING_OFFLINE_REASON_UNSPECIFIED: GoingOfflineReason
GOING_OFFLINE_REASON_USER_STOP: GoingOfflineReason
GOING_OFFLINE_REASON_UPDATE: GoingOfflineReason
GOING_OFFLINE_REASON_HOST_SHUTDOWN: GoingOfflineReason
STREAM_KIND_UNSPECIFIED: StreamKind
STREAM_KIND_PTY: StreamKind
STREAM_KIND_DESKTOP: StreamKind
STREAM_ROLE_UNSPECIFIED: StreamRole
STREAM_ROLE_AGENT: StreamRole
STREAM_ROLE_CLIENT: StreamRole
STREAM_CLOSE_REASON_UNSPECIFIED: StreamCloseReason
STREAM_CLOSE_REASON_NORMAL: StreamCloseReason
STREAM_CLOSE_REASON_PROCESS_EXIT: StreamCloseReason
STREAM_CLOSE_REASON_FENCED: StreamCloseReason
STREAM_CLOSE_REASON_TRANSPORT_ERROR: StreamCloseReason
STREAM_CLOSE_REASON_RATE_LIMITED: StreamCloseReason

class ControlRequest(_message.Message):
    __slots__ = ("request_id", "epoch", "resource_policy", "fence_scope", "ping", "exec", "fs_read", "fs_write", "fs_list", "fs_mkdir", "fs_move", "fs_stat", "fs_remove", "git", "pty_open", "pty_write", "pty_resize", "pty_close", "desktop_ensure", "metrics", "desktop_input", "desktop_screenshot", "desktop_act", "transfer_open", "transfer_commit", "transfer_abort", "fs_digest", "tree_manifest", "batch_write", "batch_read", "exec_start", "exec_attach", "exec_ack", "exec_stdin", "exec_signal", "exec_wait", "exec_list")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_POLICY_FIELD_NUMBER: _ClassVar[int]
    FENCE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    FS_READ_FIELD_NUMBER: _ClassVar[int]
    FS_WRITE_FIELD_NUMBER: _ClassVar[int]
    FS_LIST_FIELD_NUMBER: _ClassVar[int]
    FS_MKDIR_FIELD_NUMBER: _ClassVar[int]
    FS_MOVE_FIELD_NUMBER: _ClassVar[int]
    FS_STAT_FIELD_NUMBER: _ClassVar[int]
    FS_REMOVE_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    PTY_OPEN_FIELD_NUMBER: _ClassVar[int]
    PTY_WRITE_FIELD_NUMBER: _ClassVar[int]
    PTY_RESIZE_FIELD_NUMBER: _ClassVar[int]
    PTY_CLOSE_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_ENSURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_INPUT_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_ACT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_OPEN_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ABORT_FIELD_NUMBER: _ClassVar[int]
    FS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TREE_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    BATCH_WRITE_FIELD_NUMBER: _ClassVar[int]
    BATCH_READ_FIELD_NUMBER: _ClassVar[int]
    EXEC_START_FIELD_NUMBER: _ClassVar[int]
    EXEC_ATTACH_FIELD_NUMBER: _ClassVar[int]
    EXEC_ACK_FIELD_NUMBER: _ClassVar[int]
    EXEC_STDIN_FIELD_NUMBER: _ClassVar[int]
    EXEC_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    EXEC_WAIT_FIELD_NUMBER: _ClassVar[int]
    EXEC_LIST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    epoch: int
    resource_policy: OperationResourcePolicy
    fence_scope: str
    ping: PingRequest
    exec: ExecRequest
    fs_read: FsReadRequest
    fs_write: FsWriteRequest
    fs_list: FsListRequest
    fs_mkdir: FsMkdirRequest
    fs_move: FsMoveRequest
    fs_stat: FsStatRequest
    fs_remove: FsRemoveRequest
    git: GitRequest
    pty_open: PtyOpenRequest
    pty_write: PtyWriteRequest
    pty_resize: PtyResizeRequest
    pty_close: PtyCloseRequest
    desktop_ensure: DesktopEnsureRequest
    metrics: MetricsRequest
    desktop_input: DesktopInputRequest
    desktop_screenshot: DesktopScreenshotRequest
    desktop_act: DesktopActRequest
    transfer_open: TransferOpenRequest
    transfer_commit: TransferCommitRequest
    transfer_abort: TransferAbortRequest
    fs_digest: FsDigestRequest
    tree_manifest: TreeManifestRequest
    batch_write: BatchWriteRequest
    batch_read: BatchReadRequest
    exec_start: ExecStartRequest
    exec_attach: ExecAttachRequest
    exec_ack: ExecAckRequest
    exec_stdin: ExecStdinRequest
    exec_signal: ExecSignalRequest
    exec_wait: ExecWaitRequest
    exec_list: ExecListRequest
    def __init__(self, request_id: _Optional[str] = ..., epoch: _Optional[int] = ..., resource_policy: _Optional[_Union[OperationResourcePolicy, _Mapping]] = ..., fence_scope: _Optional[str] = ..., ping: _Optional[_Union[PingRequest, _Mapping]] = ..., exec: _Optional[_Union[ExecRequest, _Mapping]] = ..., fs_read: _Optional[_Union[FsReadRequest, _Mapping]] = ..., fs_write: _Optional[_Union[FsWriteRequest, _Mapping]] = ..., fs_list: _Optional[_Union[FsListRequest, _Mapping]] = ..., fs_mkdir: _Optional[_Union[FsMkdirRequest, _Mapping]] = ..., fs_move: _Optional[_Union[FsMoveRequest, _Mapping]] = ..., fs_stat: _Optional[_Union[FsStatRequest, _Mapping]] = ..., fs_remove: _Optional[_Union[FsRemoveRequest, _Mapping]] = ..., git: _Optional[_Union[GitRequest, _Mapping]] = ..., pty_open: _Optional[_Union[PtyOpenRequest, _Mapping]] = ..., pty_write: _Optional[_Union[PtyWriteRequest, _Mapping]] = ..., pty_resize: _Optional[_Union[PtyResizeRequest, _Mapping]] = ..., pty_close: _Optional[_Union[PtyCloseRequest, _Mapping]] = ..., desktop_ensure: _Optional[_Union[DesktopEnsureRequest, _Mapping]] = ..., metrics: _Optional[_Union[MetricsRequest, _Mapping]] = ..., desktop_input: _Optional[_Union[DesktopInputRequest, _Mapping]] = ..., desktop_screenshot: _Optional[_Union[DesktopScreenshotRequest, _Mapping]] = ..., desktop_act: _Optional[_Union[DesktopActRequest, _Mapping]] = ..., transfer_open: _Optional[_Union[TransferOpenRequest, _Mapping]] = ..., transfer_commit: _Optional[_Union[TransferCommitRequest, _Mapping]] = ..., transfer_abort: _Optional[_Union[TransferAbortRequest, _Mapping]] = ..., fs_digest: _Optional[_Union[FsDigestRequest, _Mapping]] = ..., tree_manifest: _Optional[_Union[TreeManifestRequest, _Mapping]] = ..., batch_write: _Optional[_Union[BatchWriteRequest, _Mapping]] = ..., batch_read: _Optional[_Union[BatchReadRequest, _Mapping]] = ..., exec_start: _Optional[_Union[ExecStartRequest, _Mapping]] = ..., exec_attach: _Optional[_Union[ExecAttachRequest, _Mapping]] = ..., exec_ack: _Optional[_Union[ExecAckRequest, _Mapping]] = ..., exec_stdin: _Optional[_Union[ExecStdinRequest, _Mapping]] = ..., exec_signal: _Optional[_Union[ExecSignalRequest, _Mapping]] = ..., exec_wait: _Optional[_Union[ExecWaitRequest, _Mapping]] = ..., exec_list: _Optional[_Union[ExecListRequest, _Mapping]] = ...) -> None: ...

class ControlResponse(_message.Message):
    __slots__ = ("request_id", "error", "ping", "exec", "fs_read", "fs_write", "fs_list", "fs_mkdir", "fs_move", "fs_stat", "fs_remove", "git", "pty_open", "pty_write", "pty_resize", "pty_close", "desktop_ensure", "metrics", "desktop_input", "desktop_screenshot", "desktop_act", "transfer_open", "transfer_commit", "transfer_abort", "fs_digest", "tree_manifest", "batch_write", "batch_read", "exec_start", "exec_attach", "exec_ack", "exec_stdin", "exec_signal", "exec_wait", "exec_list")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    FS_READ_FIELD_NUMBER: _ClassVar[int]
    FS_WRITE_FIELD_NUMBER: _ClassVar[int]
    FS_LIST_FIELD_NUMBER: _ClassVar[int]
    FS_MKDIR_FIELD_NUMBER: _ClassVar[int]
    FS_MOVE_FIELD_NUMBER: _ClassVar[int]
    FS_STAT_FIELD_NUMBER: _ClassVar[int]
    FS_REMOVE_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    PTY_OPEN_FIELD_NUMBER: _ClassVar[int]
    PTY_WRITE_FIELD_NUMBER: _ClassVar[int]
    PTY_RESIZE_FIELD_NUMBER: _ClassVar[int]
    PTY_CLOSE_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_ENSURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_INPUT_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_ACT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_OPEN_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ABORT_FIELD_NUMBER: _ClassVar[int]
    FS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TREE_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    BATCH_WRITE_FIELD_NUMBER: _ClassVar[int]
    BATCH_READ_FIELD_NUMBER: _ClassVar[int]
    EXEC_START_FIELD_NUMBER: _ClassVar[int]
    EXEC_ATTACH_FIELD_NUMBER: _ClassVar[int]
    EXEC_ACK_FIELD_NUMBER: _ClassVar[int]
    EXEC_STDIN_FIELD_NUMBER: _ClassVar[int]
    EXEC_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    EXEC_WAIT_FIELD_NUMBER: _ClassVar[int]
    EXEC_LIST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    error: AgentError
    ping: PingResponse
    exec: ExecResponse
    fs_read: FsReadResponse
    fs_write: FsWriteResponse
    fs_list: FsListResponse
    fs_mkdir: FsMkdirResponse
    fs_move: FsMoveResponse
    fs_stat: FsStatResponse
    fs_remove: FsRemoveResponse
    git: GitResponse
    pty_open: PtyOpenResponse
    pty_write: PtyWriteResponse
    pty_resize: PtyResizeResponse
    pty_close: PtyCloseResponse
    desktop_ensure: DesktopEnsureResponse
    metrics: MetricsSample
    desktop_input: DesktopInputResponse
    desktop_screenshot: DesktopScreenshotResponse
    desktop_act: DesktopActResponse
    transfer_open: TransferOpenResponse
    transfer_commit: TransferCommitResponse
    transfer_abort: TransferAbortResponse
    fs_digest: FsDigestResponse
    tree_manifest: TreeManifestResponse
    batch_write: BatchWriteResponse
    batch_read: BatchReadResponse
    exec_start: ExecStartResponse
    exec_attach: ExecAttachResponse
    exec_ack: ExecAckResponse
    exec_stdin: ExecStdinResponse
    exec_signal: ExecSignalResponse
    exec_wait: ExecState
    exec_list: ExecListResponse
    def __init__(self, request_id: _Optional[str] = ..., error: _Optional[_Union[AgentError, _Mapping]] = ..., ping: _Optional[_Union[PingResponse, _Mapping]] = ..., exec: _Optional[_Union[ExecResponse, _Mapping]] = ..., fs_read: _Optional[_Union[FsReadResponse, _Mapping]] = ..., fs_write: _Optional[_Union[FsWriteResponse, _Mapping]] = ..., fs_list: _Optional[_Union[FsListResponse, _Mapping]] = ..., fs_mkdir: _Optional[_Union[FsMkdirResponse, _Mapping]] = ..., fs_move: _Optional[_Union[FsMoveResponse, _Mapping]] = ..., fs_stat: _Optional[_Union[FsStatResponse, _Mapping]] = ..., fs_remove: _Optional[_Union[FsRemoveResponse, _Mapping]] = ..., git: _Optional[_Union[GitResponse, _Mapping]] = ..., pty_open: _Optional[_Union[PtyOpenResponse, _Mapping]] = ..., pty_write: _Optional[_Union[PtyWriteResponse, _Mapping]] = ..., pty_resize: _Optional[_Union[PtyResizeResponse, _Mapping]] = ..., pty_close: _Optional[_Union[PtyCloseResponse, _Mapping]] = ..., desktop_ensure: _Optional[_Union[DesktopEnsureResponse, _Mapping]] = ..., metrics: _Optional[_Union[MetricsSample, _Mapping]] = ..., desktop_input: _Optional[_Union[DesktopInputResponse, _Mapping]] = ..., desktop_screenshot: _Optional[_Union[DesktopScreenshotResponse, _Mapping]] = ..., desktop_act: _Optional[_Union[DesktopActResponse, _Mapping]] = ..., transfer_open: _Optional[_Union[TransferOpenResponse, _Mapping]] = ..., transfer_commit: _Optional[_Union[TransferCommitResponse, _Mapping]] = ..., transfer_abort: _Optional[_Union[TransferAbortResponse, _Mapping]] = ..., fs_digest: _Optional[_Union[FsDigestResponse, _Mapping]] = ..., tree_manifest: _Optional[_Union[TreeManifestResponse, _Mapping]] = ..., batch_write: _Optional[_Union[BatchWriteResponse, _Mapping]] = ..., batch_read: _Optional[_Union[BatchReadResponse, _Mapping]] = ..., exec_start: _Optional[_Union[ExecStartResponse, _Mapping]] = ..., exec_attach: _Optional[_Union[ExecAttachResponse, _Mapping]] = ..., exec_ack: _Optional[_Union[ExecAckResponse, _Mapping]] = ..., exec_stdin: _Optional[_Union[ExecStdinResponse, _Mapping]] = ..., exec_signal: _Optional[_Union[ExecSignalResponse, _Mapping]] = ..., exec_wait: _Optional[_Union[ExecState, _Mapping]] = ..., exec_list: _Optional[_Union[ExecListResponse, _Mapping]] = ...) -> None: ...

class AgentError(_message.Message):
    __slots__ = ("code", "message", "retryable", "detail")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    retryable: bool
    detail: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., detail: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OperationResourcePolicy(_message.Message):
    __slots__ = ("memory_max_bytes", "memory_high_bytes", "cpu_max_millicores")
    MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_HIGH_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_MAX_MILLICORES_FIELD_NUMBER: _ClassVar[int]
    memory_max_bytes: int
    memory_high_bytes: int
    cpu_max_millicores: int
    def __init__(self, memory_max_bytes: _Optional[int] = ..., memory_high_bytes: _Optional[int] = ..., cpu_max_millicores: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("nonce", "agent_monotonic_ms")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    AGENT_MONOTONIC_MS_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    agent_monotonic_ms: int
    def __init__(self, nonce: _Optional[int] = ..., agent_monotonic_ms: _Optional[int] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("command", "shell", "cwd", "env", "stdin", "timeout_ms")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    shell: bool
    cwd: str
    env: _containers.ScalarMap[str, str]
    stdin: bytes
    timeout_ms: int
    def __init__(self, command: _Optional[_Iterable[str]] = ..., shell: _Optional[bool] = ..., cwd: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., stdin: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("exit_code", "stdout", "stderr", "timed_out", "duration_ms", "stdout_truncated", "stderr_truncated", "stdout_total_bytes", "stderr_total_bytes", "signal")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, exit_code: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., timed_out: _Optional[bool] = ..., duration_ms: _Optional[int] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., stdout_total_bytes: _Optional[int] = ..., stderr_total_bytes: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class ExecStartRequest(_message.Message):
    __slots__ = ("exec_id", "exec", "merge_output", "stdin_open")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    MERGE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STDIN_OPEN_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    exec: ExecRequest
    merge_output: bool
    stdin_open: bool
    def __init__(self, exec_id: _Optional[str] = ..., exec: _Optional[_Union[ExecRequest, _Mapping]] = ..., merge_output: _Optional[bool] = ..., stdin_open: _Optional[bool] = ...) -> None: ...

class ExecStartResponse(_message.Message):
    __slots__ = ("state", "created")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    state: ExecState
    created: bool
    def __init__(self, state: _Optional[_Union[ExecState, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ExecAttachRequest(_message.Message):
    __slots__ = ("exec_id", "from_seq", "subject", "window_bytes", "from_offset")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    from_seq: int
    subject: str
    window_bytes: int
    from_offset: int
    def __init__(self, exec_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., subject: _Optional[str] = ..., window_bytes: _Optional[int] = ..., from_offset: _Optional[int] = ...) -> None: ...

class ExecAttachResponse(_message.Message):
    __slots__ = ("state", "subject", "first_seq", "max_chunk")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_FIELD_NUMBER: _ClassVar[int]
    state: ExecState
    subject: str
    first_seq: int
    max_chunk: int
    def __init__(self, state: _Optional[_Union[ExecState, _Mapping]] = ..., subject: _Optional[str] = ..., first_seq: _Optional[int] = ..., max_chunk: _Optional[int] = ...) -> None: ...

class ExecAckRequest(_message.Message):
    __slots__ = ("exec_id", "subject", "seq")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    subject: str
    seq: int
    def __init__(self, exec_id: _Optional[str] = ..., subject: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class ExecAckResponse(_message.Message):
    __slots__ = ("attached",)
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    attached: bool
    def __init__(self, attached: _Optional[bool] = ...) -> None: ...

class ExecStdinRequest(_message.Message):
    __slots__ = ("exec_id", "data", "offset", "close")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    data: bytes
    offset: int
    close: bool
    def __init__(self, exec_id: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., close: _Optional[bool] = ...) -> None: ...

class ExecStdinResponse(_message.Message):
    __slots__ = ("written", "closed")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    written: int
    closed: bool
    def __init__(self, written: _Optional[int] = ..., closed: _Optional[bool] = ...) -> None: ...

class ExecSignalRequest(_message.Message):
    __slots__ = ("exec_id", "signal")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    signal: ExecSignal
    def __init__(self, exec_id: _Optional[str] = ..., signal: _Optional[_Union[ExecSignal, str]] = ...) -> None: ...

class ExecSignalResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecWaitRequest(_message.Message):
    __slots__ = ("exec_id", "timeout_ms")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    timeout_ms: int
    def __init__(self, exec_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ExecListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecListResponse(_message.Message):
    __slots__ = ("executions",)
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[ExecState]
    def __init__(self, executions: _Optional[_Iterable[_Union[ExecState, _Mapping]]] = ...) -> None: ...

class ExecState(_message.Message):
    __slots__ = ("exec_id", "command", "status", "end_reason", "exit_code", "signal", "timed_out", "started_at_ms", "duration_ms", "stdout_bytes", "stderr_bytes", "next_seq", "dropped_bytes", "previous_instance", "pid")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    status: ExecStatus
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
    def __init__(self, exec_id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[ExecStatus, str]] = ..., end_reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., timed_out: _Optional[bool] = ..., started_at_ms: _Optional[int] = ..., duration_ms: _Optional[int] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., next_seq: _Optional[int] = ..., dropped_bytes: _Optional[int] = ..., previous_instance: _Optional[bool] = ..., pid: _Optional[int] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("exec_id", "seq", "stream", "data", "offset", "gap_bytes", "end")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    GAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    seq: int
    stream: ExecStream
    data: bytes
    offset: int
    gap_bytes: int
    end: ExecState
    def __init__(self, exec_id: _Optional[str] = ..., seq: _Optional[int] = ..., stream: _Optional[_Union[ExecStream, str]] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., gap_bytes: _Optional[int] = ..., end: _Optional[_Union[ExecState, _Mapping]] = ...) -> None: ...

class FsReadRequest(_message.Message):
    __slots__ = ("path", "offset", "length")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    length: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class FsReadResponse(_message.Message):
    __slots__ = ("content", "total_size")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    total_size: int
    def __init__(self, content: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class FsWriteRequest(_message.Message):
    __slots__ = ("path", "content", "create_parents", "append", "mode", "offset", "use_offset", "transfer_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    USE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    create_parents: bool
    append: bool
    mode: int
    offset: int
    use_offset: bool
    transfer_id: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., create_parents: _Optional[bool] = ..., append: _Optional[bool] = ..., mode: _Optional[int] = ..., offset: _Optional[int] = ..., use_offset: _Optional[bool] = ..., transfer_id: _Optional[str] = ...) -> None: ...

class FsWriteResponse(_message.Message):
    __slots__ = ("bytes_written",)
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    def __init__(self, bytes_written: _Optional[int] = ...) -> None: ...

class TransferOpenRequest(_message.Message):
    __slots__ = ("transfer_id", "path", "mode", "create_parents", "precondition")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    PRECONDITION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    path: str
    mode: int
    create_parents: bool
    precondition: TransferPrecondition
    def __init__(self, transfer_id: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., create_parents: _Optional[bool] = ..., precondition: _Optional[_Union[TransferPrecondition, _Mapping]] = ...) -> None: ...

class TransferPrecondition(_message.Message):
    __slots__ = ("exists", "size", "modified_ms", "blake3")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_MS_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    size: int
    modified_ms: int
    blake3: bytes
    def __init__(self, exists: _Optional[bool] = ..., size: _Optional[int] = ..., modified_ms: _Optional[int] = ..., blake3: _Optional[bytes] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TransferOpenResponse(_message.Message):
    __slots__ = ("held", "resumed", "max_payload", "window", "idle_timeout_ms")
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    held: _containers.RepeatedCompositeFieldContainer[ByteRange]
    resumed: bool
    max_payload: int
    window: int
    idle_timeout_ms: int
    def __init__(self, held: _Optional[_Iterable[_Union[ByteRange, _Mapping]]] = ..., resumed: _Optional[bool] = ..., max_payload: _Optional[int] = ..., window: _Optional[int] = ..., idle_timeout_ms: _Optional[int] = ...) -> None: ...

class TransferCommitRequest(_message.Message):
    __slots__ = ("transfer_id", "path", "size", "blake3")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    path: str
    size: int
    blake3: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., blake3: _Optional[bytes] = ...) -> None: ...

class TransferCommitResponse(_message.Message):
    __slots__ = ("size", "blake3", "bytes_received")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    size: int
    blake3: bytes
    bytes_received: int
    def __init__(self, size: _Optional[int] = ..., blake3: _Optional[bytes] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class TransferAbortRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class TransferAbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class FsDigestRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FsDigestResponse(_message.Message):
    __slots__ = ("size", "modified_ms", "blake3")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_MS_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    size: int
    modified_ms: int
    blake3: bytes
    def __init__(self, size: _Optional[int] = ..., modified_ms: _Optional[int] = ..., blake3: _Optional[bytes] = ...) -> None: ...

class FsListRequest(_message.Message):
    __slots__ = ("path", "recursive", "max_entries")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    path: str
    recursive: bool
    max_entries: int
    def __init__(self, path: _Optional[str] = ..., recursive: _Optional[bool] = ..., max_entries: _Optional[int] = ...) -> None: ...

class FsListResponse(_message.Message):
    __slots__ = ("entries", "truncated")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FsEntry]
    truncated: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[FsEntry, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class FsEntry(_message.Message):
    __slots__ = ("name", "path", "kind", "size", "modified_ms", "mode", "symlink_target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    kind: FsEntryKind
    size: int
    modified_ms: int
    mode: int
    symlink_target: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., kind: _Optional[_Union[FsEntryKind, str]] = ..., size: _Optional[int] = ..., modified_ms: _Optional[int] = ..., mode: _Optional[int] = ..., symlink_target: _Optional[str] = ...) -> None: ...

class FsStatRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FsStatResponse(_message.Message):
    __slots__ = ("exists", "entry")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    entry: FsEntry
    def __init__(self, exists: _Optional[bool] = ..., entry: _Optional[_Union[FsEntry, _Mapping]] = ...) -> None: ...

class FsMkdirRequest(_message.Message):
    __slots__ = ("path", "parents", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    parents: bool
    mode: int
    def __init__(self, path: _Optional[str] = ..., parents: _Optional[bool] = ..., mode: _Optional[int] = ...) -> None: ...

class FsMkdirResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FsMoveRequest(_message.Message):
    __slots__ = ("to", "overwrite")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    to: str
    overwrite: bool
    def __init__(self, to: _Optional[str] = ..., overwrite: _Optional[bool] = ..., **kwargs) -> None: ...

class FsMoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FsRemoveRequest(_message.Message):
    __slots__ = ("path", "recursive")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    path: str
    recursive: bool
    def __init__(self, path: _Optional[str] = ..., recursive: _Optional[bool] = ...) -> None: ...

class FsRemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TreeManifestRequest(_message.Message):
    __slots__ = ("root", "excludes", "after", "max_entries")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDES_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    root: str
    excludes: _containers.RepeatedScalarFieldContainer[str]
    after: str
    max_entries: int
    def __init__(self, root: _Optional[str] = ..., excludes: _Optional[_Iterable[str]] = ..., after: _Optional[str] = ..., max_entries: _Optional[int] = ...) -> None: ...

class TreeManifestResponse(_message.Message):
    __slots__ = ("entries", "next_after", "files_hashed", "bytes_hashed", "digests_cached", "root_missing")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    FILES_HASHED_FIELD_NUMBER: _ClassVar[int]
    BYTES_HASHED_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_CACHED_FIELD_NUMBER: _ClassVar[int]
    ROOT_MISSING_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TreeEntry]
    next_after: str
    files_hashed: int
    bytes_hashed: int
    digests_cached: int
    root_missing: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[TreeEntry, _Mapping]]] = ..., next_after: _Optional[str] = ..., files_hashed: _Optional[int] = ..., bytes_hashed: _Optional[int] = ..., digests_cached: _Optional[int] = ..., root_missing: _Optional[bool] = ...) -> None: ...

class TreeEntry(_message.Message):
    __slots__ = ("path", "kind", "size", "mode", "modified_ms", "symlink_target", "digest")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_MS_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: FsEntryKind
    size: int
    mode: int
    modified_ms: int
    symlink_target: str
    digest: bytes
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[FsEntryKind, str]] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., modified_ms: _Optional[int] = ..., symlink_target: _Optional[str] = ..., digest: _Optional[bytes] = ...) -> None: ...

class BatchWriteRequest(_message.Message):
    __slots__ = ("root", "entries", "remove")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    root: str
    entries: _containers.RepeatedCompositeFieldContainer[BatchEntry]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, root: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[BatchEntry, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchEntry(_message.Message):
    __slots__ = ("path", "kind", "content", "mode", "symlink_target", "mode_only")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_ONLY_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: FsEntryKind
    content: bytes
    mode: int
    symlink_target: str
    mode_only: bool
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[FsEntryKind, str]] = ..., content: _Optional[bytes] = ..., mode: _Optional[int] = ..., symlink_target: _Optional[str] = ..., mode_only: _Optional[bool] = ...) -> None: ...

class BatchWriteResponse(_message.Message):
    __slots__ = ("written", "removed", "bytes")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    written: int
    removed: int
    bytes: int
    def __init__(self, written: _Optional[int] = ..., removed: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class BatchReadRequest(_message.Message):
    __slots__ = ("root", "paths")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    root: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, root: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchReadResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[BatchFile]
    def __init__(self, files: _Optional[_Iterable[_Union[BatchFile, _Mapping]]] = ...) -> None: ...

class BatchFile(_message.Message):
    __slots__ = ("path", "content", "mode", "missing")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    mode: int
    missing: bool
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., mode: _Optional[int] = ..., missing: _Optional[bool] = ...) -> None: ...

class GitRequest(_message.Message):
    __slots__ = ("op", "cwd", "args")
    OP_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    op: GitOp
    cwd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op: _Optional[_Union[GitOp, str]] = ..., cwd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class GitResponse(_message.Message):
    __slots__ = ("exit_code", "stdout", "stderr", "status")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    stdout: bytes
    stderr: bytes
    status: GitStatus
    def __init__(self, exit_code: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., status: _Optional[_Union[GitStatus, _Mapping]] = ...) -> None: ...

class GitStatus(_message.Message):
    __slots__ = ("branch", "upstream", "ahead", "behind", "files", "clean")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    branch: str
    upstream: str
    ahead: int
    behind: int
    files: _containers.RepeatedCompositeFieldContainer[GitFileStatus]
    clean: bool
    def __init__(self, branch: _Optional[str] = ..., upstream: _Optional[str] = ..., ahead: _Optional[int] = ..., behind: _Optional[int] = ..., files: _Optional[_Iterable[_Union[GitFileStatus, _Mapping]]] = ..., clean: _Optional[bool] = ...) -> None: ...

class GitFileStatus(_message.Message):
    __slots__ = ("path", "code", "staged")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    path: str
    code: str
    staged: bool
    def __init__(self, path: _Optional[str] = ..., code: _Optional[str] = ..., staged: _Optional[bool] = ...) -> None: ...

class PtyOpenRequest(_message.Message):
    __slots__ = ("command", "cwd", "env", "cols", "rows", "term", "scope_id")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    env: _containers.ScalarMap[str, str]
    cols: int
    rows: int
    term: str
    scope_id: str
    def __init__(self, command: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cols: _Optional[int] = ..., rows: _Optional[int] = ..., term: _Optional[str] = ..., scope_id: _Optional[str] = ...) -> None: ...

class PtyOpenResponse(_message.Message):
    __slots__ = ("pty_id", "channel")
    PTY_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    pty_id: str
    channel: StreamChannel
    def __init__(self, pty_id: _Optional[str] = ..., channel: _Optional[_Union[StreamChannel, _Mapping]] = ...) -> None: ...

class PtyWriteRequest(_message.Message):
    __slots__ = ("pty_id", "data")
    PTY_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    pty_id: str
    data: bytes
    def __init__(self, pty_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PtyWriteResponse(_message.Message):
    __slots__ = ("bytes_written",)
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    def __init__(self, bytes_written: _Optional[int] = ...) -> None: ...

class PtyResizeRequest(_message.Message):
    __slots__ = ("pty_id", "cols", "rows")
    PTY_ID_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    pty_id: str
    cols: int
    rows: int
    def __init__(self, pty_id: _Optional[str] = ..., cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class PtyResizeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PtyCloseRequest(_message.Message):
    __slots__ = ("pty_id",)
    PTY_ID_FIELD_NUMBER: _ClassVar[int]
    pty_id: str
    def __init__(self, pty_id: _Optional[str] = ...) -> None: ...

class PtyCloseResponse(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class DesktopEnsureRequest(_message.Message):
    __slots__ = ("width", "height", "frame_encoding")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_ENCODING_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    frame_encoding: DesktopFrameEncoding
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., frame_encoding: _Optional[_Union[DesktopFrameEncoding, str]] = ...) -> None: ...

class DesktopEnsureResponse(_message.Message):
    __slots__ = ("channel", "display", "frame_encoding")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    FRAME_ENCODING_FIELD_NUMBER: _ClassVar[int]
    channel: StreamChannel
    display: Display
    frame_encoding: DesktopFrameEncoding
    def __init__(self, channel: _Optional[_Union[StreamChannel, _Mapping]] = ..., display: _Optional[_Union[Display, _Mapping]] = ..., frame_encoding: _Optional[_Union[DesktopFrameEncoding, str]] = ...) -> None: ...

class DesktopInputRequest(_message.Message):
    __slots__ = ("pointer", "key", "scroll")
    POINTER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCROLL_FIELD_NUMBER: _ClassVar[int]
    pointer: PointerEvent
    key: KeyEvent
    scroll: ScrollEvent
    def __init__(self, pointer: _Optional[_Union[PointerEvent, _Mapping]] = ..., key: _Optional[_Union[KeyEvent, _Mapping]] = ..., scroll: _Optional[_Union[ScrollEvent, _Mapping]] = ...) -> None: ...

class DesktopInputResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DesktopScreenshotRequest(_message.Message):
    __slots__ = ("max_width", "max_height", "format", "quality", "cursor")
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    max_width: int
    max_height: int
    format: ImageFormat
    quality: int
    cursor: bool
    def __init__(self, max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ..., cursor: _Optional[bool] = ...) -> None: ...

class DesktopScreenshotResponse(_message.Message):
    __slots__ = ("png", "width", "height", "native_width", "native_height", "format", "cursor")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NATIVE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NATIVE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    native_width: int
    native_height: int
    format: ImageFormat
    cursor: bool
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., native_width: _Optional[int] = ..., native_height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., cursor: _Optional[bool] = ...) -> None: ...

class DesktopActRequest(_message.Message):
    __slots__ = ("actions", "screenshot", "settle_timeout_ms", "settle_quiet_ms")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    SETTLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SETTLE_QUIET_MS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[DesktopAction]
    screenshot: DesktopScreenshotRequest
    settle_timeout_ms: int
    settle_quiet_ms: int
    def __init__(self, actions: _Optional[_Iterable[_Union[DesktopAction, _Mapping]]] = ..., screenshot: _Optional[_Union[DesktopScreenshotRequest, _Mapping]] = ..., settle_timeout_ms: _Optional[int] = ..., settle_quiet_ms: _Optional[int] = ...) -> None: ...

class DesktopActResponse(_message.Message):
    __slots__ = ("screenshot", "actions_done", "settle", "settle_waited_ms")
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    SETTLE_FIELD_NUMBER: _ClassVar[int]
    SETTLE_WAITED_MS_FIELD_NUMBER: _ClassVar[int]
    screenshot: DesktopScreenshotResponse
    actions_done: int
    settle: SettleOutcome
    settle_waited_ms: int
    def __init__(self, screenshot: _Optional[_Union[DesktopScreenshotResponse, _Mapping]] = ..., actions_done: _Optional[int] = ..., settle: _Optional[_Union[SettleOutcome, str]] = ..., settle_waited_ms: _Optional[int] = ...) -> None: ...

class DesktopAction(_message.Message):
    __slots__ = ("pointer", "key", "scroll", "drag", "wait_ms")
    POINTER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCROLL_FIELD_NUMBER: _ClassVar[int]
    DRAG_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    pointer: PointerEvent
    key: KeyEvent
    scroll: ScrollEvent
    drag: DragAction
    wait_ms: int
    def __init__(self, pointer: _Optional[_Union[PointerEvent, _Mapping]] = ..., key: _Optional[_Union[KeyEvent, _Mapping]] = ..., scroll: _Optional[_Union[ScrollEvent, _Mapping]] = ..., drag: _Optional[_Union[DragAction, _Mapping]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class DragAction(_message.Message):
    __slots__ = ("from_x", "from_y", "to_x", "to_y", "button", "space_width", "space_height")
    FROM_X_FIELD_NUMBER: _ClassVar[int]
    FROM_Y_FIELD_NUMBER: _ClassVar[int]
    TO_X_FIELD_NUMBER: _ClassVar[int]
    TO_Y_FIELD_NUMBER: _ClassVar[int]
    BUTTON_FIELD_NUMBER: _ClassVar[int]
    SPACE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SPACE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    from_x: int
    from_y: int
    to_x: int
    to_y: int
    button: PointerButton
    space_width: int
    space_height: int
    def __init__(self, from_x: _Optional[int] = ..., from_y: _Optional[int] = ..., to_x: _Optional[int] = ..., to_y: _Optional[int] = ..., button: _Optional[_Union[PointerButton, str]] = ..., space_width: _Optional[int] = ..., space_height: _Optional[int] = ...) -> None: ...

class PointerEvent(_message.Message):
    __slots__ = ("x", "y", "action", "button", "space_width", "space_height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUTTON_FIELD_NUMBER: _ClassVar[int]
    SPACE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SPACE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    action: PointerAction
    button: PointerButton
    space_width: int
    space_height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., action: _Optional[_Union[PointerAction, str]] = ..., button: _Optional[_Union[PointerButton, str]] = ..., space_width: _Optional[int] = ..., space_height: _Optional[int] = ...) -> None: ...

class KeyEvent(_message.Message):
    __slots__ = ("key", "is_text", "action")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IS_TEXT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    key: str
    is_text: bool
    action: KeyAction
    def __init__(self, key: _Optional[str] = ..., is_text: _Optional[bool] = ..., action: _Optional[_Union[KeyAction, str]] = ...) -> None: ...

class ScrollEvent(_message.Message):
    __slots__ = ("x", "y", "delta_x", "delta_y", "space_width", "space_height", "at_pointer")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    DELTA_X_FIELD_NUMBER: _ClassVar[int]
    DELTA_Y_FIELD_NUMBER: _ClassVar[int]
    SPACE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SPACE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AT_POINTER_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    delta_x: int
    delta_y: int
    space_width: int
    space_height: int
    at_pointer: bool
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., delta_x: _Optional[int] = ..., delta_y: _Optional[int] = ..., space_width: _Optional[int] = ..., space_height: _Optional[int] = ..., at_pointer: _Optional[bool] = ...) -> None: ...

class Display(_message.Message):
    __slots__ = ("id", "width", "height", "virtual")
    ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    width: int
    height: int
    virtual: bool
    def __init__(self, id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., virtual: _Optional[bool] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricsSample(_message.Message):
    __slots__ = ("sampled_at_ms", "cpu_percent", "load1", "load5", "load15", "mem_used_bytes", "mem_total_bytes", "disk_used_bytes", "disk_total_bytes", "run_queue", "gpus")
    SAMPLED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUN_QUEUE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    sampled_at_ms: int
    cpu_percent: float
    load1: float
    load5: float
    load15: float
    mem_used_bytes: int
    mem_total_bytes: int
    disk_used_bytes: int
    disk_total_bytes: int
    run_queue: float
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    def __init__(self, sampled_at_ms: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ..., run_queue: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("name", "util_percent", "mem_used_bytes", "mem_total_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UTIL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    util_percent: float
    mem_used_bytes: int
    mem_total_bytes: int
    def __init__(self, name: _Optional[str] = ..., util_percent: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "workspace_id", "agent_version", "os", "arch", "machine_name", "workspace_root", "capabilities", "update_channel", "resume_token", "binary_sha256")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    MACHINE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ROOT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BINARY_SHA256_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    workspace_id: str
    agent_version: str
    os: Os
    arch: Arch
    machine_name: str
    workspace_root: str
    capabilities: Capabilities
    update_channel: str
    resume_token: str
    binary_sha256: str
    def __init__(self, agent_id: _Optional[str] = ..., workspace_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., os: _Optional[_Union[Os, str]] = ..., arch: _Optional[_Union[Arch, str]] = ..., machine_name: _Optional[str] = ..., workspace_root: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., update_channel: _Optional[str] = ..., resume_token: _Optional[str] = ..., binary_sha256: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("exec", "filesystem", "git", "pty", "desktop", "consented_whole_machine", "consented_screen_control", "display", "desktop_unavailable_reason", "virtual_root", "fence_scoped", "max_payload", "commands_confined", "landlock_abi", "unconfined_commands_allowed", "commands_unconfined_reason", "memory_limit", "memory_high_limit", "cpu_limit", "max_processes", "process_limit", "commands_scoped", "unix_sockets", "nats_unauthenticated", "network_confined", "max_total_processes", "default_memory_max_bytes", "transfers", "transfer_window", "transfer_idle_ms", "desktop_act", "desktop_backend", "desktop_input", "tree_sync", "exec_stream", "exec_memory_bytes", "exec_spill_bytes", "exec_window_bytes", "exec_retention_ms", "exec_retained", "request_dedup")
    EXEC_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    PTY_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_FIELD_NUMBER: _ClassVar[int]
    CONSENTED_WHOLE_MACHINE_FIELD_NUMBER: _ClassVar[int]
    CONSENTED_SCREEN_CONTROL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_ROOT_FIELD_NUMBER: _ClassVar[int]
    FENCE_SCOPED_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_CONFINED_FIELD_NUMBER: _ClassVar[int]
    LANDLOCK_ABI_FIELD_NUMBER: _ClassVar[int]
    UNCONFINED_COMMANDS_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_UNCONFINED_REASON_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_HIGH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CPU_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PROCESS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_SCOPED_FIELD_NUMBER: _ClassVar[int]
    UNIX_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    NATS_UNAUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CONFINED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_WINDOW_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_ACT_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DESKTOP_INPUT_FIELD_NUMBER: _ClassVar[int]
    TREE_SYNC_FIELD_NUMBER: _ClassVar[int]
    EXEC_STREAM_FIELD_NUMBER: _ClassVar[int]
    EXEC_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXEC_SPILL_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXEC_WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXEC_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    EXEC_RETAINED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DEDUP_FIELD_NUMBER: _ClassVar[int]
    exec: bool
    filesystem: bool
    git: bool
    pty: bool
    desktop: bool
    consented_whole_machine: bool
    consented_screen_control: bool
    display: Display
    desktop_unavailable_reason: str
    virtual_root: str
    fence_scoped: bool
    max_payload: int
    commands_confined: bool
    landlock_abi: int
    unconfined_commands_allowed: bool
    commands_unconfined_reason: str
    memory_limit: LimitEnforcement
    memory_high_limit: bool
    cpu_limit: bool
    max_processes: int
    process_limit: LimitEnforcement
    commands_scoped: bool
    unix_sockets: UnixSocketConfinement
    nats_unauthenticated: bool
    network_confined: bool
    max_total_processes: int
    default_memory_max_bytes: int
    transfers: bool
    transfer_window: int
    transfer_idle_ms: int
    desktop_act: bool
    desktop_backend: str
    desktop_input: bool
    tree_sync: bool
    exec_stream: bool
    exec_memory_bytes: int
    exec_spill_bytes: int
    exec_window_bytes: int
    exec_retention_ms: int
    exec_retained: int
    request_dedup: RequestDedup
    def __init__(self, exec: _Optional[bool] = ..., filesystem: _Optional[bool] = ..., git: _Optional[bool] = ..., pty: _Optional[bool] = ..., desktop: _Optional[bool] = ..., consented_whole_machine: _Optional[bool] = ..., consented_screen_control: _Optional[bool] = ..., display: _Optional[_Union[Display, _Mapping]] = ..., desktop_unavailable_reason: _Optional[str] = ..., virtual_root: _Optional[str] = ..., fence_scoped: _Optional[bool] = ..., max_payload: _Optional[int] = ..., commands_confined: _Optional[bool] = ..., landlock_abi: _Optional[int] = ..., unconfined_commands_allowed: _Optional[bool] = ..., commands_unconfined_reason: _Optional[str] = ..., memory_limit: _Optional[_Union[LimitEnforcement, str]] = ..., memory_high_limit: _Optional[bool] = ..., cpu_limit: _Optional[bool] = ..., max_processes: _Optional[int] = ..., process_limit: _Optional[_Union[LimitEnforcement, str]] = ..., commands_scoped: _Optional[bool] = ..., unix_sockets: _Optional[_Union[UnixSocketConfinement, str]] = ..., nats_unauthenticated: _Optional[bool] = ..., network_confined: _Optional[bool] = ..., max_total_processes: _Optional[int] = ..., default_memory_max_bytes: _Optional[int] = ..., transfers: _Optional[bool] = ..., transfer_window: _Optional[int] = ..., transfer_idle_ms: _Optional[int] = ..., desktop_act: _Optional[bool] = ..., desktop_backend: _Optional[str] = ..., desktop_input: _Optional[bool] = ..., tree_sync: _Optional[bool] = ..., exec_stream: _Optional[bool] = ..., exec_memory_bytes: _Optional[int] = ..., exec_spill_bytes: _Optional[int] = ..., exec_window_bytes: _Optional[int] = ..., exec_retention_ms: _Optional[int] = ..., exec_retained: _Optional[int] = ..., request_dedup: _Optional[_Union[RequestDedup, _Mapping]] = ...) -> None: ...

class RequestDedup(_message.Message):
    __slots__ = ("max_entries", "ttl_ms", "max_bytes")
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_entries: int
    ttl_ms: int
    max_bytes: int
    def __init__(self, max_entries: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class HelloAck(_message.Message):
    __slots__ = ("epoch", "resume_token", "heartbeat_interval_ms")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    resume_token: str
    heartbeat_interval_ms: int
    def __init__(self, epoch: _Optional[int] = ..., resume_token: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("agent_id", "heartbeat", "going_offline")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    GOING_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat: Heartbeat
    going_offline: GoingOffline
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., going_offline: _Optional[_Union[GoingOffline, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "uptime_ms", "active_sessions", "metrics", "draining")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    seq: int
    uptime_ms: int
    active_sessions: int
    metrics: MetricsSample
    draining: bool
    def __init__(self, seq: _Optional[int] = ..., uptime_ms: _Optional[int] = ..., active_sessions: _Optional[int] = ..., metrics: _Optional[_Union[MetricsSample, _Mapping]] = ..., draining: _Optional[bool] = ...) -> None: ...

class GoingOffline(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: GoingOfflineReason
    message: str
    def __init__(self, reason: _Optional[_Union[GoingOfflineReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class StreamChannel(_message.Message):
    __slots__ = ("channel_id", "workspace_id", "agent_id", "kind", "port")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    workspace_id: str
    agent_id: str
    kind: StreamKind
    port: int
    def __init__(self, channel_id: _Optional[str] = ..., workspace_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., kind: _Optional[_Union[StreamKind, str]] = ..., port: _Optional[int] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("channel", "token", "role", "resume_from_seq")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel: StreamChannel
    token: str
    role: StreamRole
    resume_from_seq: int
    def __init__(self, channel: _Optional[_Union[StreamChannel, _Mapping]] = ..., token: _Optional[str] = ..., role: _Optional[_Union[StreamRole, str]] = ..., resume_from_seq: _Optional[int] = ...) -> None: ...

class StreamOpenAck(_message.Message):
    __slots__ = ("accepted", "error", "resume_from_seq")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    error: AgentError
    resume_from_seq: int
    def __init__(self, accepted: _Optional[bool] = ..., error: _Optional[_Union[AgentError, _Mapping]] = ..., resume_from_seq: _Optional[int] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("channel_id", "seq", "data", "produced_at_ms", "delta")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    seq: int
    data: bytes
    produced_at_ms: int
    delta: bool
    def __init__(self, channel_id: _Optional[str] = ..., seq: _Optional[int] = ..., data: _Optional[bytes] = ..., produced_at_ms: _Optional[int] = ..., delta: _Optional[bool] = ...) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ("channel_id", "reason", "message")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    reason: StreamCloseReason
    message: str
    def __init__(self, channel_id: _Optional[str] = ..., reason: _Optional[_Union[StreamCloseReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class DesktopInput(_message.Message):
    __slots__ = ("channel_id", "pointer", "key", "scroll")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    POINTER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCROLL_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    pointer: PointerEvent
    key: KeyEvent
    scroll: ScrollEvent
    def __init__(self, channel_id: _Optional[str] = ..., pointer: _Optional[_Union[PointerEvent, _Mapping]] = ..., key: _Optional[_Union[KeyEvent, _Mapping]] = ..., scroll: _Optional[_Union[ScrollEvent, _Mapping]] = ...) -> None: ...

class PtyResize(_message.Message):
    __slots__ = ("cols", "rows")
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    cols: int
    rows: int
    def __init__(self, cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ViewerPresence(_message.Message):
    __slots__ = ("channel_id", "viewers")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    VIEWERS_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    viewers: int
    def __init__(self, channel_id: _Optional[str] = ..., viewers: _Optional[int] = ...) -> None: ...
