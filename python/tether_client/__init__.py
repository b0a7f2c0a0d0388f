"""Async Python client for Tether agents (PROTOCOL.md): the same wire contract as the Rust
client and `tetherctl`, over nats-py, protobuf and websockets.

    import nats
    from tether_client import Agent

    nc = await nats.connect("nats://127.0.0.1:4222", token="...")
    agent = Agent(nc, "acme", "my-laptop")
    await agent.ping()
    result = await agent.exec(["uname", "-a"])
    await agent.write_file("notes/big.bin", b"\\0" * (20 << 20))
    data = await agent.read_file("notes/big.bin")

Every failure is a `TetherError` subclass per protocol ErrorCode, with `retryable` and
`detail`. `pb` is the generated protobuf module of the contract.
"""

from ._proto import tether_pb2 as pb
from .agent import DEFAULT_TIMEOUT, EXEC_TIMEOUT_MARGIN, Agent, is_retryable
from .errors import (
    AgentOfflineError,
    AgentOSError,
    ConsentRequiredError,
    DrainingError,
    FencedError,
    FileChangedError,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RequestTimeoutError,
    StreamError,
    TetherError,
    UnspecifiedError,
    UnsupportedError,
    error_class,
)
from .events import Event, EventStream
from .executions import ExecStarted, ExecState, OutputChunk, OutputStream
from .results import Entry, ExecResult, Listing, Screenshot, Terminal
from .transfers import Precondition, TransferReport
from .tokens import DESKTOP_PORT, PTY_PORT, mint_producer_token, mint_viewer_token
from .viewer import Closed, Gap, Output, Reconnecting, Resumed, TerminalViewer, ViewerEvent

__all__ = [
    "Precondition",
    "TransferReport",
    "DEFAULT_TIMEOUT",
    "DESKTOP_PORT",
    "EXEC_TIMEOUT_MARGIN",
    "PTY_PORT",
    "Agent",
    "AgentOSError",
    "AgentOfflineError",
    "Closed",
    "ConsentRequiredError",
    "DrainingError",
    "Entry",
    "Event",
    "EventStream",
    "ExecResult",
    "ExecStarted",
    "ExecState",
    "OutputChunk",
    "OutputStream",
    "FencedError",
    "FileChangedError",
    "Gap",
    "Listing",
    "NotFoundError",
    "Output",
    "PayloadTooLargeError",
    "ProtocolError",
    "Reconnecting",
    "RequestTimeoutError",
    "Resumed",
    "Screenshot",
    "StreamError",
    "Terminal",
    "TerminalViewer",
    "TetherError",
    "UnspecifiedError",
    "UnsupportedError",
    "ViewerEvent",
    "error_class",
    "is_retryable",
    "mint_producer_token",
    "mint_viewer_token",
    "pb",
]

__version__ = "0.1.0"
