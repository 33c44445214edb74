"""structlog on stderr: JSON lines off a terminal, readable lines on one.

Under journald (``$JOURNAL_STREAM`` names stderr's device and inode) each JSON line
starts with the syslog priority ``<N>``, so the journal files it at the right level.
Secrets are redacted by a processor (keys that name a secret, and any registered
token value wherever it appears), and httpx/httpcore stay at WARNING so request URLs
and headers never reach the log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from replicad.connectors.errors import scrub

_SECRET_KEYS = {"token", "authorization", "password", "secret", "api_key"}
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Make sure a value (a token) is never logged, whatever key it hides under."""
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` without registered secrets, Bearer tokens or Authorization values."""
    return scrub(text, _secrets)


def redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret keys and registered secret values."""
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def under_journald() -> bool:
    """Whether stderr is the journal stream systemd set up for this service."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalRenderer:
    """JSON lines prefixed with the ``<N>`` syslog priority of their level."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        """Render one event."""
        # ``syslog_priority`` names a level Python's logging lacks (notice).
        level = event.pop("syslog_priority", None) or event.get("level", "info")
        priority = _PRIORITY.get(str(level), 6)
        rendered = self._json(logger, name, event)
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return f"<{priority}>{text}"


def configure(level: str = "info", *, force_json: bool = False) -> None:
    """Set up structlog for this process (idempotent)."""
    for noisy in ("httpx", "httpcore", "uvicorn.access", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: Any
    if under_journald():
        renderer = JournalRenderer()
    elif sys.stderr.isatty() and not force_json:
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
