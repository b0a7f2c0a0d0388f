"""The example in python/examples runs as documented against a real agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import AgentProc, NatsServer, clean_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs_against_the_agent(nats_server: NatsServer, agent_proc: AgentProc, tmp_path: Path) -> None:
    env = clean_env(TETHER_NATS_URL=nats_server.url, TETHER_NATS_TOKEN=nats_server.token,
                    TETHER_WORKSPACE_ID=agent_proc.ws, TETHER_AGENT_ID=agent_proc.id)
    env.pop("DISPLAY", None)
    out = subprocess.run([sys.executable, str(EXAMPLE)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "hello from Python" in out.stdout
    assert "typed error: ERROR_CODE_NOT_FOUND, retryable=False" in out.stdout
    assert "event: heartbeat" in out.stdout
    assert "no desktop:" in out.stdout
    assert not (agent_proc.root / "tether-py-demo").exists()
