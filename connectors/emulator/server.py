"""Serving the emulator with uvicorn: as a foreground process or in a test thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import uvicorn
from starlette.types import ASGIApp

from replicad.connectors.emulator.app import create_app
from replicad.connectors.emulator.responses import TruncatedBody
from replicad.connectors.emulator.runtime import DEFAULT_TOKEN
from replicad.connectors.emulator.state import DEFAULT_PAGE_SIZE, DEFAULT_SESSION_TTL

_STARTUP_TIMEOUT: Final = 30.0
_SHUTDOWN_TIMEOUT: Final = 10.0
_POLL_INTERVAL: Final = 0.01


class _InjectedFaultFilter(logging.Filter):
    """Hide uvicorn's error log for connections the "truncate" fault drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, TruncatedBody)


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the listening line once its socket is bound."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # The one line scripts wait for; flushed because stdout may be a pipe.
            print(f"replicad emulator listening on {_url(self)}", flush=True)
            # Not a secret (generated data on loopback), but a client needs it.
            app: Any = self.config.app
            token = app.state.emulator.token
            print(f"replicad emulator: bearer token {token}", file=sys.stderr, flush=True)


def _make_server(
    app: ASGIApp, host: str, port: int, server_class: type[uvicorn.Server] = uvicorn.Server
) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    # Config() (re)configures logging, so the filter goes on afterwards, once.
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _InjectedFaultFilter) for f in error_log.filters):
        error_log.addFilter(_InjectedFaultFilter())
    return server_class(config)


def _url(server: uvicorn.Server) -> str:
    host = server.config.host
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    records: int = 2000,
    seed: int = 1,
    token: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    session_ttl: float = DEFAULT_SESSION_TTL,
    profile: str = "standard",
    latency: float = 0.0,
) -> None:
    """Serve an emulated account until SIGINT or SIGTERM.

    Once the socket listens, prints exactly one line to stdout:
    ``replicad emulator listening on http://HOST:PORT`` (the real port when
    ``port`` is 0), so scripts can wait for it and read the URL.  ``token``
    None means :data:`DEFAULT_TOKEN`.
    """
    app = create_app(
        records=records,
        seed=seed,
        token=DEFAULT_TOKEN if token is None else token,
        page_size=page_size,
        session_ttl=session_ttl,
        profile=profile,
        latency=latency,
    )
    server = _make_server(app, host, port, _AnnouncingServer)
    # uvicorn handles SIGINT/SIGTERM itself, shuts down gracefully, then
    # re-raises the signal; KeyboardInterrupt is the expected way out.  A bind
    # failure exits through uvicorn's own SystemExit(3) after logging why.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


@contextlib.contextmanager
def run_in_thread(
    app: ASGIApp | None = None,
    *,
    host: str = "127.0.0.1",
    records: int = 2000,
    seed: int = 1,
    token: str = DEFAULT_TOKEN,
    page_size: int = DEFAULT_PAGE_SIZE,
    session_ttl: float = DEFAULT_SESSION_TTL,
    profile: str = "standard",
) -> Iterator[str]:
    """Serve ``app`` (or a new :func:`create_app` from the keywords) on an ephemeral port.

    Yields the base URL once the server accepts connections; on exit the
    server is asked to stop and its thread joined.
    """
    if app is None:
        app = create_app(
            records=records,
            seed=seed,
            token=token,
            page_size=page_size,
            session_ttl=session_ttl,
            profile=profile,
        )
    server = _make_server(app, host, 0)
    thread = threading.Thread(target=server.run, name="replicad-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(_SHUTDOWN_TIMEOUT)
            raise RuntimeError("the emulator server did not start")
        time.sleep(_POLL_INTERVAL)
    try:
        yield _url(server)
    finally:
        server.should_exit = True
        thread.join(_SHUTDOWN_TIMEOUT)
