"""The lock beside the replica that keeps a second replicad process out.

An ``flock`` on ``<replica>.lock``: the kernel releases it when the holder dies, even
by ``kill -9``, so a stale file never blocks a restart. The holder's pid is written
into the file so the refused process can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from pathlib import Path


class ReplicaBusy(RuntimeError):
    """Another process holds the replica."""


def lock_path(replica: Path) -> Path:
    """Where the lock for a replica lives."""
    return replica.with_name(replica.name + ".lock")


@functools.cache
def private_mode() -> int:
    """The mode of files the daemon creates: 0600, or 0640 when the umask shuts others
    out but lets the group read (the system unit's UMask=0027: its group reads the
    replica). Read once: reading the umask means setting it, which is process-wide."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o640 if umask & 0o007 == 0o007 and not umask & 0o040 else 0o600


def create_private(path: Path) -> None:
    """Create ``path`` empty with ``private_mode()`` unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, private_mode())
    except FileExistsError:
        return
    os.close(fd)


class ReplicaLock:
    """An exclusive, non-blocking lock held for the life of the daemon."""

    def __init__(self, replica: Path, daemon: bool = False) -> None:
        self.path = lock_path(replica)
        # Written beside the pid: other commands signal a holder only if it is the
        # daemon (its signal handlers); any other replicad process would die of them.
        self.role = DAEMON if daemon else COMMAND
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ReplicaBusy naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, private_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_pid(self.path)
            who = f"replicad process {holder}" if holder else "another replicad process"
            raise ReplicaBusy(
                f"replica {self.path.with_suffix('')} is in use by {who}; "
                "stop it first or use another replica path"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; it is harmless)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


DAEMON = "daemon"
COMMAND = "command"


def holder_pid(path: Path) -> int | None:
    """The pid written by the current holder, if any."""
    pid, _ = holder(path)
    return pid


def holder(path: Path) -> tuple[int | None, str | None]:
    """The pid and the role (``DAEMON`` or ``COMMAND``; None: a version that did not
    say) the last holder wrote, in one read."""
    try:
        words = path.read_text().split()
    except OSError:
        return None, None
    pid = int(words[0]) if words and words[0].isdigit() else None
    return pid, words[1] if len(words) > 1 else None


def is_held(replica: Path) -> int | None:
    """The pid of a live holder of the replica's lock, or None (does not keep it)."""
    path = lock_path(replica)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder_pid(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
