"""Real parts for the Python tests and benchmarks: a nats-server with a token on a free loopback
port, the real `tether-agent` and `tether-relay` binaries from target/, and Xvfb. Each handle
stops (and reaps) its process in `stop()`; the fixtures in conftest.py call it, so a failing test
leaves nothing behind. Mirrors tests/src/lib.rs, relay.rs and xvfb.rs of the Rust harness.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import nats

from tether_client import mint_producer_token

REPO = Path(__file__).resolve().parents[2]
#: Every wait in the harness gives up (failing the test) after this many seconds.
WAIT = 15.0
PRODUCER_SECRET = "py-e2e-producer-secret-0123456789"
VIEWER_SECRET = "py-e2e-viewer-secret-9876543210"
WS = "ws1"

_ids = itertools.count(1)


def binary(name: str) -> Path:
    """A binary of the workspace: $TETHER_BIN_DIR, else target/debug (scripts/test.sh builds it)."""
    directory = Path(os.environ.get("TETHER_BIN_DIR", REPO / "target" / "debug"))
    path = directory / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any TETHER_* setting or secret, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(extra)
    return env


class Proc:
    """A child process stopped with SIGTERM (then SIGKILL) by `stop()`."""

    def __init__(self, name: str, args: list[str], **popen: object) -> None:
        self.name = name
        self.popen = subprocess.Popen(args, **popen)  # type: ignore[call-overload]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, within: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def _wait_until(what: str, cond, within: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class NatsServer:
    """nats-server requiring a token, on a port it picks itself (reported in a ports file)."""

    def __init__(self, extra_config: str = "") -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="tether-py-nats-")
        self.token = f"py-test-token-{os.getpid()}-{next(_ids)}-{secrets.token_hex(6)}"
        self.extra_config = extra_config
        if shutil.which("nats-server") is None:
            raise RuntimeError("nats-server is missing: scripts/setup.sh installs it")
        self.port = 0
        self._spawn("127.0.0.1:-1")
        self.url = f"nats://127.0.0.1:{self.port}"

    def _spawn(self, listen: str) -> None:
        conf = Path(self.dir.name) / "nats.conf"
        conf.write_text(
            f'listen: "{listen}"\nports_file_dir: "{self.dir.name}"\n'
            f'authorization {{ token: "{self.token}" }}\n{self.extra_config}\n'
        )
        self.proc = Proc("nats-server", ["nats-server", "-c", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports = Path(self.dir.name) / f"nats-server_{self.proc.pid}.ports"

        def listening() -> bool:
            if not self.proc.alive():
                raise RuntimeError("nats-server exited at start")
            try:
                url = json.loads(ports.read_text())["nats"][0]
                self.port = int(url.rsplit(":", 1)[1])
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return True
            except (OSError, ValueError, KeyError, IndexError):
                return False

        _wait_until("nats-server to listen", listening)

    def restart(self) -> None:
        """Kills the server and starts a new one on the same port: every message in flight and
        every subscription is gone until the clients reconnect."""
        self.proc.kill()
        self._spawn(f"127.0.0.1:{self.port}")

    async def connect(self, *, reconnect_wait: float | None = None) -> nats.aio.client.Client:
        """A client connection with the server's token; with `reconnect_wait` it rides out a
        `restart()`, trying again every that many seconds."""
        if reconnect_wait is not None:
            return await nats.connect(self.url, token=self.token, allow_reconnect=True,
                                      reconnect_time_wait=reconnect_wait, max_reconnect_attempts=-1)
        return await nats.connect(self.url, token=self.token, allow_reconnect=False)

    def stop(self) -> None:
        self.proc.stop()
        self.dir.cleanup()


class Relay:
    """The real tether-relay on a free loopback port; `restart()` kills it and starts a new one
    on the same port (all its state is gone)."""

    def __init__(self, bind: str = "127.0.0.1:0") -> None:
        self.log: list[str] = []
        self.addr = self._spawn(bind)

    def _spawn(self, bind: str) -> str:
        env = clean_env(
            TETHER_RELAY_PRODUCER_SECRET=PRODUCER_SECRET,
            TETHER_RELAY_VIEWER_SECRET=VIEWER_SECRET,
            RUST_LOG="info",
        )
        self.proc = Proc("tether-relay", [str(binary("tether-relay")), "--bind", bind], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found: list[str] = []

        def read() -> None:
            assert self.proc.popen.stderr is not None
            for line in self.proc.popen.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"listening on (\S+)", line)
                if m and not found:
                    found.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        _wait_until("the relay to listen", lambda: bool(found) or not self.proc.alive())
        if not found:
            raise RuntimeError("relay exited before listening:\n" + "\n".join(self.log))
        return found[0]

    @property
    def stream_url(self) -> str:
        return f"ws://{self.addr}/stream"

    def restart(self) -> None:
        self.proc.kill()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self._spawn(self.addr)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop()


class AgentProc:
    """The real tether-agent, flags as the Rust harness passes them."""

    def __init__(
        self,
        nats_server: NatsServer,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        relay: Relay | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="tether-py-agent-")
        base = Path(self.dir.name).resolve()
        self.root = base / "root"
        self.state = base / "state"
        self.root.mkdir()
        self.state.mkdir()
        self.log_path = base / "agent.log"
        self.ws = WS
        self.id = agent_id or new_agent_id()
        cmd = [
            str(binary("tether-agent")), "run",
            "--nats-url", nats_server.url, "--workspace-id", self.ws, "--agent-id", self.id,
            "--workspace-root", str(self.root), "--state-dir", str(self.state),
            "--heartbeat-interval", "200ms", *(args or []),
        ]
        child_env = clean_env(TETHER_NATS_TOKEN=nats_server.token, TETHER_LOG="info,async_nats=warn",
                              **(env or {}))
        if relay is not None:
            cmd += ["--relay-url", relay.stream_url]
            child_env["TETHER_RELAY_TOKEN"] = mint_producer_token(
                PRODUCER_SECRET, workspace_id=self.ws, agent_id=self.id)
        with open(self.log_path, "wb") as log:
            self.proc = Proc("tether-agent", cmd, env=child_env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log)
        # In a thread of its own: the constructor may be called from a running event loop.
        failure: list[BaseException] = []

        def wait() -> None:
            try:
                asyncio.run(self._wait_ready(nats_server))
            except BaseException as exc:
                failure.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join()
        if failure:
            self.stop()
            raise failure[0]

    async def _wait_ready(self, nats_server: NatsServer) -> None:
        """Waits until the agent answers a ping on its rpc subject."""
        nc = await nats_server.connect()
        try:
            deadline = time.monotonic() + WAIT
            while True:
                if not self.proc.alive():
                    raise RuntimeError(f"agent exited at start:\n{self.log()}")
                try:
                    await nc.request(f"agent.{self.ws}.{self.id}.rpc", b"", timeout=1)
                    return  # an undecodable request still gets a (PROTOCOL) reply
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agent did not answer within {WAIT} s:\n{self.log()}")
                    await asyncio.sleep(0.05)
        finally:
            await nc.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.proc.stop()
        self.dir.cleanup()


def new_agent_id() -> str:
    """An agent id no other agent of this test run has."""
    return f"pyagent{os.getpid()}-{next(_ids)}"


def _free_display() -> int:
    base = 300 + (os.getpid() % 200) * 20 + 7
    for n in range(base, base + 4000):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


class Xvfb:
    """A real Xvfb on a display no other process holds, with -noreset (else it resets when its
    last client leaves)."""

    def __init__(self, width: int = 1024, height: int = 768) -> None:
        self.width, self.height = width, height
        for _ in range(5):
            self.number = _free_display()
            self.display = f":{self.number}"
            self.proc = Proc("Xvfb", ["Xvfb", self.display, "-screen", "0", f"{width}x{height}x24",
                                      "-nolisten", "tcp", "-noreset"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_until("Xvfb to answer", self._answers)
                return
            except (TimeoutError, RuntimeError):
                self.proc.stop()
        raise RuntimeError("Xvfb did not start on any free display")

    def _answers(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError("Xvfb exited")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(f"/tmp/.X11-unix/X{self.number}")
                return True
            except OSError:
                return False

    def recorder(self, x: int, y: int, w: int, h: int) -> Recorder:
        """Starts the x-recorder test client (a window printing the input it receives)."""
        return Recorder(self.display, x, y, w, h)

    def stop(self) -> None:
        self.proc.stop()


class Recorder:
    """The `x-recorder` window of the Rust tests: prints `button N X Y`, `char C` lines."""

    def __init__(self, display: str, x: int, y: int, w: int, h: int) -> None:
        self.proc = Proc("x-recorder", [str(binary("x-recorder")), str(x), str(y), str(w), str(h)],
                         env={**os.environ, "DISPLAY": display}, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", lambda line: line.startswith("ready"))

    def _read(self) -> None:
        assert self.proc.popen.stdout is not None
        for line in self.proc.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def expect(self, what: str, want, within: float = WAIT) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within
        with self._cond:
            while True:
                for line in self.lines:
                    if want(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"x-recorder never printed {what}; it printed {self.lines}")
                self._cond.wait(left)

    def typed(self) -> str:
        with self._cond:
            return "".join(line[5:] for line in self.lines if line.startswith("char "))

    def stop(self) -> None:
        self.proc.stop()
