"""Errors a connector raises; the daemon maps them to exit codes and status."""

from __future__ import annotations

from typing import Any


class ConnectorError(RuntimeError):
    """A remote exchange failed; the message is one line, safe to show."""


class AuthRefused(ConnectorError):
    """401/403: the token is wrong, expired or lacks the needed scope."""


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
