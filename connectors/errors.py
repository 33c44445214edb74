"""Errors a connector raises; the daemon maps them to exit codes and status."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


class ConnectorError(RuntimeError):
    """A remote exchange failed; the message is one line, safe to show."""


class AuthRefused(ConnectorError):
    """401/403: the token is wrong, expired or lacks the needed scope."""


class ProtocolError(ConnectorError):
    """The remote answered something its protocol does not allow (each kind's own
    protocol errors derive from this; the pull's drain loop catches it)."""


class RemoteRefused(ConnectorError):
    """The remote refused the request for a reason retrying will not fix."""


class RemoteUnreachable(ConnectorError):
    """Network errors or server failures outlasted the bounded retries."""


def plain_message(status: int, body: Any) -> str:
    """One line from a ``{"message": …}`` error body (the push destinations' envelope)."""
    detail = ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        detail = " ".join(body["message"].split())[:300]
    return f"HTTP {status}" + (f" ({detail})" if detail else "")


# A credential a server may echo back: "Bearer <token>", or the value of an
# Authorization header or field (any scheme), up to a quote, comma or line end.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;)}\]]+")
_AUTHORIZATION = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)[^\"',;\n\r}\]]+")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: the given secrets, and any Bearer token or
    Authorization value, become ``***``. Applied to every message that can reach a
    log, the replica, the status or the terminal."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1***", text)
    return _AUTHORIZATION.sub(r"\1***", text)
