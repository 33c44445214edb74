"""Reading a replica without writing anything, even from a folder this user cannot
write (``status``, ``doctor``, ``backup`` and ``validate`` read; only the daemon writes).

A reader of a WAL database creates ``-shm`` beside it when it is missing (after a
clean stop the daemon leaves only the file). In a folder the user cannot write that
fails with "attempt to write a readonly database". With no ``-wal`` content the file
alone is the whole database, so it is read as immutable (no ``-shm`` needed); with
``-wal`` content it cannot be read correctly that way, and the error says why.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from replicad.store.lock import is_held


class ReplicaUnreadable(RuntimeError):
    """The replica cannot be read by this user from where it is."""


def open_readonly(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    """A read-only connection to the replica at ``path`` (which must exist)."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
    try:
        db.execute("PRAGMA user_version").fetchone()  # the first read opens the WAL index
        return db
    except sqlite3.OperationalError as e:
        db.close()
        if "readonly" not in str(e) and "unable to open" not in str(e):
            raise
        reason = str(e)
    wal = path.with_name(path.name + "-wal")
    # Immutable only while no replicad writes it: a daemon starting meanwhile could
    # change the file under a read that assumes it cannot change.
    if is_held(path) is None and (not wal.exists() or wal.stat().st_size == 0):
        return sqlite3.connect(
            f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout, isolation_level=None
        )
    raise ReplicaUnreadable(
        f"cannot read {path} ({reason}): its folder {path.parent} is not writable by this "
        f"user, and reading the changes still in {wal.name} needs {path.name}-shm beside "
        "it; run this as the replica's owner, or make the folder writable for your group"
    )
