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
        # State changes that could not be sent yet (a full socket buffer).
        self._held: list[str] = []

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

    def send(self, message: str, *, keep: bool = False) -> bool:
        """Send one datagram without ever blocking; whether it went.

        The socket is non-blocking: a receiver that does not read (a full buffer)
        must never stall the event loop. A message that cannot go now is dropped,
        unless ``keep``: then it is sent before anything else on the next call (the
        state changes systemd must see: READY, RELOADING, STOPPING). Failures are
        logged, never raised (the daemon runs on).
        """
        if self._address is None:
            return True
        if keep:
            self._held.append(message)
        elif not self._flush():
            return False
        if keep:
            return self._flush()
        return self._sendto(message)

    def _flush(self) -> bool:
        while self._held:
            if not self._sendto(self._held[0]):
                return False
            self._held.pop(0)
        return True

    def _sendto(self, message: str) -> bool:
        assert self._address is not None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except BlockingIOError:
            log.debug("notify.busy", message=message.split("=", 1)[0])
            return False
        except OSError as e:
            log.warning("notify.failed", error=str(e))
            return False
        return True

    def ready(self, status: str) -> None:
        """The replica is open and the syncs are scheduled."""
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}", keep=True)

    def status(self, text: str) -> None:
        """A one-line summary shown by ``systemctl status`` (sent only when it changes).

        Dropped when the socket is full: the next change carries the news.
        """
        line = text.replace("\n", " ")
        if line != self._last_status and self.send(f"STATUS={line}"):
            self._last_status = line

    def watchdog(self) -> bool:
        """The loops are healthy; False when the ping could not go (retry next tick)."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A config reload started."""
        self.send("RELOADING=1", keep=True)

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1", keep=True)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
