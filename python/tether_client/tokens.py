"""Relay tokens (PROTOCOL.md §7), for a control plane that holds the relay's secrets.

A token is `PREFIX + P + "." + S`: P is the base64url (no padding) of the JSON claims, S the
base64url HMAC-SHA256 of P's ASCII bytes under the secret. `ogs_` tokens let a viewer watch a
channel; `ogr_` tokens let an agent register its channels. Secrets never appear in errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

#: Logical port of terminals.
PTY_PORT = 7681
#: Logical port of the desktop stream.
DESKTOP_PORT = 6080


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mint(prefix: str, secret: bytes | str, claims: dict[str, Any]) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())
    return f"{prefix}{payload}.{signature}"


def mint_viewer_token(
    secret: bytes | str,
    *,
    workspace_id: str,
    session_id: str,
    viewer_id: str,
    port: int = PTY_PORT,
    mode: str = "view",
    lease_epoch: int = 0,
    ttl: float = 3600,
    agent_id: str | None = None,
    channel_id: str | None = None,
    read_only: bool = False,
    subject_id: str | None = None,
    authority_epoch: int | None = None,
) -> str:
    """Mints an `ogs_` viewer token valid for `ttl` seconds.

    `mode` "view" may type into a terminal but not drive a desktop; "control" may do both.
    `agent_id`/`channel_id` pin the token to one agent or channel; `read_only` makes a spectator
    whose input the relay drops. Each live viewer needs its own `viewer_id`.
    """
    if mode not in ("view", "control"):
        raise ValueError(f"mode {mode!r}: expected view or control")
    claims: dict[str, Any] = {
        "workspaceId": workspace_id,
        "sessionId": session_id,
        "viewerId": viewer_id,
        "leaseEpoch": lease_epoch,
        "mode": mode,
        "port": port,
        "exp": int(time.time() + ttl),
    }
    optional = {
        "subjectId": subject_id,
        "authorityEpoch": authority_epoch,
        "agentId": agent_id,
        "channelId": channel_id,
    }
    claims.update({k: v for k, v in optional.items() if v is not None})
    if read_only:
        claims["readOnly"] = True
    return _mint("ogs_", secret, claims)


def mint_producer_token(
    secret: bytes | str, *, workspace_id: str, agent_id: str, ttl: float = 3600
) -> str:
    """Mints an `ogr_` producer token for one agent, valid for `ttl` seconds."""
    claims = {"workspaceId": workspace_id, "agentId": agent_id, "exp": int(time.time() + ttl)}
    return _mint("ogr_", secret, claims)
