"""`tetherctl mcp` driven by a client written with the Python `mcp` package, the way an AI
assistant drives it: over stdio, against a real nats-server and real agents, one of them with
its own Xvfb (--virtual-desktop). What the tools did is checked outside MCP: files on disk, and
the input events an `x-recorder` window on the agent's display received.

Run with the venv of scripts/setup.sh after `cargo build --workspace --bins`:
    target/pyenv/bin/python -m pytest tests/mcp
Every process started here is stopped here; everything listens on loopback; every wait is
bounded.
"""

import base64
import json
import os
import queue
import secrets
import signal
import struct
import subprocess
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client, types

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
WAIT = 20.0  # seconds any one thing may take to become ready
CALL = 60.0  # seconds one MCP session may take
WS = "ws1"
# The agent's screen; screenshots are scaled to fit 1280x800, so 0.8 of it.
SCREEN = (1600, 1000)


class Proc:
    """A child process in its own session, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv, **kwargs):
        self.argv = argv
        self.popen = subprocess.Popen(argv, start_new_session=True, **kwargs)

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def wait_until(what, cond, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Nats:
    """A nats-server on a free loopback port that requires a token."""

    def __init__(self, tmp: Path):
        self.token = "mcp-test-" + secrets.token_hex(12)
        conf = tmp / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:-1"\nports_file_dir: "{tmp}"\n'
            f'authorization {{ token: "{self.token}" }}\n'
        )
        self.proc = Proc(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports = tmp / f"nats-server_{self.proc.popen.pid}.ports"

        def url():
            assert self.proc.alive(), "nats-server exited at start"
            return ports.exists() and ports.read_text() and json.loads(ports.read_text())["nats"][0]

        self.url = wait_until("nats-server's ports file", url)

    def env(self):
        """Credentials the way an operator passes them: in the environment, never in argv."""
        return {"TETHER_NATS_TOKEN": self.token}


class Agent:
    """A tether-agent serving `agent_id`; ready once `tetherctl ping` answers."""

    def __init__(self, nats: Nats, tmp: Path, agent_id: str, args, run=""):
        self.nats, self.id = nats, agent_id
        self.root = tmp / f"{agent_id}{run}-root"
        state = tmp / f"{agent_id}{run}-state"
        self.root.mkdir()
        state.mkdir()
        self.log = tmp / f"{agent_id}{run}.log"
        env = {**os.environ, **nats.env(), "DISPLAY": "", "TETHER_LOG": "info,async_nats=warn"}
        argv = [str(BIN / "tether-agent"), "run", "--nats-url", nats.url, "--workspace-id", WS,
                "--agent-id", agent_id, "--workspace-root", str(self.root), "--state-dir", str(state), *args]
        with open(self.log, "wb") as log:
            self.proc = Proc(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(f"agent {agent_id} to answer a ping", self.answers)

    def conn_args(self):
        return ["--nats-url", self.nats.url, "--workspace-id", WS, "--agent-id", self.id]

    def answers(self):
        assert self.proc.alive(), f"agent exited:\n{self.log.read_text()}"
        env = {**os.environ, **self.nats.env()}
        ping = [str(BIN / "tetherctl"), *self.conn_args(), "--timeout", "2s", "ping"]
        return subprocess.run(ping, env=env, capture_output=True, timeout=10).returncode == 0


class Recorder:
    """The x-recorder test client: a window at (x, y, w, h) that prints the input it gets."""

    def __init__(self, display: str, x, y, w, h):
        env = {**os.environ, "DISPLAY": display}
        argv = [str(BIN / "x-recorder"), str(x), str(y), str(w), str(h)]
        self.proc = Proc(argv, env=env, stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect(lambda line: line.startswith("ready"))

    def _pump(self):
        for line in self.proc.popen.stdout:
            self.lines.put(line.strip())

    def expect(self, want):
        for line in self.seen:
            if want(line):
                return line
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if want(line):
                return line
        raise AssertionError(f"x-recorder never printed the line wanted; it printed {self.seen}")


def free_display(after=0):
    for n in range(max(after + 1, 700 + os.getpid() % 100 * 20), 6000):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise AssertionError("no free X display number")


def desktop_args(number):
    return ["--virtual-desktop", "--virtual-display", f":{number}",
            "--virtual-geometry", f"{SCREEN[0]}x{SCREEN[1]}", "--consent-screen-control"]


@pytest.fixture(scope="module")
def stack():
    """nats-server; agent `desk` with its own Xvfb and screen-control consent; `plain` with
    neither (its screen inputs are refused); `noscreen` with consent but no desktop."""
    tmp_dir = tempfile.TemporaryDirectory(prefix="tether-mcp-")
    tmp = Path(tmp_dir.name)
    started = []
    try:
        nats = Nats(tmp)
        started.append(nats.proc)
        number = free_display()
        agents = {}
        for name, args in [("desk", desktop_args(number)), ("plain", []), ("noscreen", ["--consent-screen-control"])]:
            agent = Agent(nats, tmp, f"{name}{os.getpid()}", args)
            started.append(agent.proc)
            agents[name] = agent
        yield {"nats": nats, "tmp": tmp, "display": f":{number}", **agents}
    finally:
        for proc in reversed(started):
            proc.stop()
        tmp_dir.cleanup()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def session_with(agent: Agent, message_handler=None):
    """An initialized MCP session with `tetherctl mcp` for `agent`."""
    server = StdioServerParameters(
        command=str(BIN / "tetherctl"), args=[*agent.conn_args(), "mcp"], env=agent.nats.env()
    )
    with anyio.fail_after(CALL):
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write, message_handler=message_handler) as session:
                await session.initialize()
                yield session


def text_of(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


async def call(session, tool, **arguments):
    return await session.call_tool(tool, arguments)


@pytest.mark.anyio
async def test_commands_and_files(stack):
    agent = stack["desk"]
    async with session_with(agent) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        expected = {"run_command", "read_file", "write_file", "list_directory", "screenshot", "click",
                    "type_text", "press_keys", "scroll", "desktop_act"}
        assert expected <= set(tools), sorted(tools)
        assert all(tools[name].description for name in expected)

        ran = await call(s, "run_command", command="echo hello; echo oops >&2; exit 3")
        assert not ran.is_error, text_of(ran)
        out = text_of(ran)
        assert out.startswith("exit code 3"), out
        assert "--- stdout ---\nhello\n" in out and "--- stderr ---\noops\n" in out, out

        slow = await call(s, "run_command", command="echo started; sleep 30", timeout_seconds=1)
        assert not slow.is_error, text_of(slow)
        assert text_of(slow).startswith("timed out after "), text_of(slow)
        assert "started" in text_of(slow), "output before the kill is kept"

        big = await call(s, "run_command", command="head -c 300000 /dev/zero | tr '\\0' a; echo END")
        out = text_of(big)
        assert "bytes cut here" in out and "stdout truncated: showing the first" in out, out[-400:]
        assert out.count("a") < 70_000 and "END" in out, "head and tail are kept, the middle is cut"

        wrote = await call(s, "write_file", path="notes/today.txt", content="héllo\nwörld\n")
        assert not wrote.is_error, text_of(wrote)
        assert (agent.root / "notes" / "today.txt").read_text() == "héllo\nwörld\n"

        read = await call(s, "read_file", path="notes/today.txt")
        assert not read.is_error and text_of(read) == "héllo\nwörld\n", text_of(read)

        listed = await call(s, "list_directory", path="notes")
        assert "today.txt" in text_of(listed), text_of(listed)

        missing = await call(s, "read_file", path="notes/absent.txt")
        assert missing.is_error, text_of(missing)
        assert text_of(missing).startswith("NOT_FOUND: "), text_of(missing)

        # The server is still serving after the error.
        again = await call(s, "run_command", command="true")
        assert text_of(again).startswith("exit code 0")


def png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.anyio
async def test_screenshot_then_click_type_and_act(stack):
    recorder = Recorder(stack["display"], 400, 300, 200, 100)
    try:
        async with session_with(stack["desk"]) as s:
            shot = await call(s, "screenshot")
            assert not shot.is_error, text_of(shot)
            images = [c for c in shot.content if c.type == "image"]
            assert len(images) == 1 and images[0].mime_type == "image/png"
            assert png_size(base64.b64decode(images[0].data)) == (1280, 800)
            assert "Screenshot 1280x800 of the 1600x1000 screen, scale 0.800" in text_of(shot), text_of(shot)

            # (360, 280) in the screenshot is (450, 350) on the screen: inside the window.
            clicked = await call(s, "click", x=360, y=280)
            assert not clicked.is_error, text_of(clicked)
            recorder.expect(lambda line: line == "button 1 450 350")

            typed = await call(s, "type_text", text="hi")
            assert not typed.is_error, text_of(typed)
            recorder.expect(lambda line: line == "char h")
            recorder.expect(lambda line: line == "char i")

            acted = await call(s, "desktop_act", actions=[{"action": "click", "x": 400, "y": 300}])
            assert not acted.is_error, text_of(acted)
            assert text_of(acted).startswith("1 actions done; screen "), text_of(acted)
            assert any(c.type == "image" for c in acted.content)
            recorder.expect(lambda line: line == "button 1 500 375")
    finally:
        recorder.proc.stop()


@pytest.mark.anyio
async def test_refused_input_and_an_agent_without_a_desktop(stack):
    async with session_with(stack["plain"]) as s:
        refused = await call(s, "click", x=10, y=10)
        assert refused.is_error, text_of(refused)
        assert text_of(refused).startswith("Refused by the agent"), text_of(refused)

    async with session_with(stack["noscreen"]) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert "screenshot" in names and "desktop_act" not in names, sorted(names)
        shot = await call(s, "screenshot")
        assert shot.is_error and text_of(shot).startswith("UNSUPPORTED: "), text_of(shot)


@pytest.mark.anyio
async def test_desktop_act_is_listed_once_the_agent_says_it_serves_it(stack):
    """The agent behind a running server comes back with a desktop: its Hello updates the tool
    list, and the client is told."""
    old = stack["noscreen"]
    changed = anyio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with session_with(old, on_message) as s:
        assert "desktop_act" not in {t.name for t in (await s.list_tools()).tools}
        old.proc.stop()
        number = free_display(int(stack["display"][1:]))
        new = Agent(stack["nats"], stack["tmp"], old.id, desktop_args(number), run="-again")
        try:
            with anyio.fail_after(WAIT):
                await changed.wait()
            assert "desktop_act" in {t.name for t in (await s.list_tools()).tools}
            acted = await call(s, "desktop_act", actions=[{"action": "wait", "ms": 10}])
            assert not acted.is_error, text_of(acted)
        finally:
            new.proc.stop()
