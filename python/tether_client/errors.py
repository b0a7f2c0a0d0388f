"""Every failure of a call is one `TetherError`, with a subclass per protocol `ErrorCode`.

The agent's own `AgentError` (code, message, retryable, detail) becomes the subclass of its code;
transport failures become the codes the protocol reserves for them, as the Rust client does:
NATS "no responders" is `AgentOfflineError`, no reply in time is `RequestTimeoutError`, a request
over the connection's max_payload is `PayloadTooLargeError`, a reply that breaks the protocol is
`ProtocolError`. The mapping lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._proto import tether_pb2 as pb


class TetherError(Exception):
    """A failed Tether operation.

    Attributes:
        code: the protocol `ErrorCode` number (see `code_name`).
        message: what went wrong, as the agent (or the client) said it.
        retryable: whether the same call may succeed if tried again.
        detail: the agent's detail map (e.g. `path`, `held_epoch`); empty when it gave none.
    """

    #: The ErrorCode this class stands for (subclasses set it).
    CODE: int = pb.ERROR_CODE_UNSPECIFIED

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        retryable: bool = False,
        detail: Mapping[str, str] | None = None,
    ) -> None:
        self.code: int = self.CODE if code is None else code
        self.message: str = message
        self.retryable: bool = retryable
        self.detail: dict[str, str] = dict(detail or {})
        super().__init__(message)

    @property
    def code_name(self) -> str:
        """The code's protocol name, e.g. `ERROR_CODE_NOT_FOUND`."""
        try:
            return pb.ErrorCode.Name(self.code)
        except ValueError:
            return f"ERROR_CODE_{self.code}"

    def __str__(self) -> str:
        extra = sorted(
            (k, v) for k, v in self.detail.items() if v and v not in self.message
        )
        if not extra:
            return self.message
        return f"{self.message} ({', '.join(f'{k}={v}' for k, v in extra)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code_name}, "
            f"retryable={self.retryable}, detail={self.detail!r})"
        )


class UnspecifiedError(TetherError):
    """The agent failed without a more precise code (or with one this client does not know)."""


class UnsupportedError(TetherError):
    """The agent does not offer this op here (no relay, no display, an older agent)."""

    CODE = pb.ERROR_CODE_UNSUPPORTED


class AgentOSError(TetherError):
    """The operating system refused (detail `errno` when there is one)."""

    CODE = pb.ERROR_CODE_OS


class NotFoundError(TetherError):
    """A path, cwd, terminal or executable does not exist."""

    CODE = pb.ERROR_CODE_NOT_FOUND


class ConsentRequiredError(TetherError):
    """The machine's owner has not consented (a path outside the workspace, screen control)."""

    CODE = pb.ERROR_CODE_CONSENT_REQUIRED


class RequestTimeoutError(TetherError):
    """No reply in time (from the agent or from NATS)."""

    CODE = pb.ERROR_CODE_TIMEOUT


class DrainingError(TetherError):
    """The agent is shutting down and takes no new work."""

    CODE = pb.ERROR_CODE_DRAINING


class ProtocolError(TetherError):
    """A request or reply that breaks the wire contract (bad arguments count too)."""

    CODE = pb.ERROR_CODE_PROTOCOL


class StreamError(TetherError):
    """The relay refused or lost a stream."""

    CODE = pb.ERROR_CODE_STREAM


class AgentOfflineError(TetherError):
    """Nobody serves the agent's subject (NATS "no responders")."""

    CODE = pb.ERROR_CODE_AGENT_OFFLINE


class FencedError(TetherError):
    """The request's epoch is older than the one the agent holds for its fence scope
    (detail `op_epoch`, `held_epoch`, `fence_scope`)."""

    CODE = pb.ERROR_CODE_FENCED


class PayloadTooLargeError(TetherError):
    """A request or reply cannot fit the NATS server's max_payload."""

    CODE = pb.ERROR_CODE_PAYLOAD_TOO_LARGE


class FileChangedError(TetherError):
    """A file changed under a chunked transfer, so its pieces no longer add up."""


_BY_CODE: dict[int, type[TetherError]] = {
    cls.CODE: cls
    for cls in (
        UnspecifiedError,
        UnsupportedError,
        AgentOSError,
        NotFoundError,
        ConsentRequiredError,
        RequestTimeoutError,
        DrainingError,
        ProtocolError,
        StreamError,
        AgentOfflineError,
        FencedError,
        PayloadTooLargeError,
    )
}


def error_class(code: int) -> type[TetherError]:
    """The subclass for an ErrorCode number (`UnspecifiedError` for one this client lacks)."""
    return _BY_CODE.get(code, UnspecifiedError)


def from_agent_error(error: pb.AgentError) -> TetherError:
    """Converts the `AgentError` of a reply (or of a relay refusal) into its subclass."""
    cls = error_class(error.code)
    return cls(
        error.message or cls.__name__,
        code=error.code,
        retryable=error.retryable,
        detail=dict(error.detail),
    )
