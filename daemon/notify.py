"""systemd's notify protocol, hand-written: one datagram per state change.

``$NOTIFY_SOCKET`` names a unix datagram socket, a path or an abstract one (``@name``).
The daemon sends ``READY=1`` once the replica is open and the syncs are scheduled,
``STATUS=…`` lines, ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` while its loops are
healthy, and ``STOPPING=1`` on shutdown. Without ``$NOTIFY_SOCKET`` every call is a
no-op, so the same code runs under systemd, launchd or a terminal.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("replicad.notify")


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock and other schemes are not used for services like this one


class Notifier:
    """Sends notify messages to systemd (or to a test's socket)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_status = ""

    @classmethod
    def from_env(cls) -> Notifier:
        """From ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (when meant for this process)."""
        raw = os.environ.get("NOTIFY_SOCKET", "")
        usec_raw = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        usec = int(usec_raw) if usec_raw.isdigit() and int(usec_raw) > 0 else None
        if pid and pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process
        return cls(_address(raw) if raw else None, usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self._address is not None

    def send(self, message: str) -> None:
        """Send one datagram; failures are logged, never raised (the daemon runs on)."""
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as e:
            log.warning("notify.failed", error=str(e))

    def ready(self, status: str) -> None:
        """The replica is open and the syncs are scheduled."""
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        """A one-line summary shown by ``systemctl status`` (sent only when it changes)."""
        line = text.replace("\n", " ")
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        """The loops are healthy."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A config reload started."""
        self.send("RELOADING=1")

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
