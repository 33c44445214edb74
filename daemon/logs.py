"""structlog on stderr: JSON lines off a terminal, readable lines on one.

Secrets are redacted by a processor (keys that name a secret, and any registered
token value wherever it appears), and httpx/httpcore stay at WARNING so request URLs
and headers never reach the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = {"token", "authorization", "password", "secret", "api_key"}
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Make sure a value (a token) is never logged, whatever key it hides under."""
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """Replace registered secrets in a string."""
    for s in _secrets:
        text = text.replace(s, "***")
    return text


def redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret keys and registered secret values."""
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(value, str) and _secrets:
            event[key] = redact(value)
    return event


def configure(level: str = "info", *, force_json: bool = False) -> None:
    """Set up structlog for this process (idempotent)."""
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pretty = sys.stderr.isatty() and not force_json
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer()
    )
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
