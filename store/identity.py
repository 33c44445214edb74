"""The replica's identity, and the full pull (resync) that a copy or ``resync`` starts.

Sell keeps one change queue per device UUID, and the UUID lives inside the file. A
copy of the file (``.backup``, ``cp``, a restored backup, another machine) would drain
the same queue as its original, so each would miss what the other took. A replica
therefore remembers which file it is (device and inode): a file that is not the one
it was created as is a copy. A copy forgets its device UUIDs and the acknowledgements
it had not sent (both belong to the original), and pulls everything again under a new
identity, merging by revision and keeping its outbox. Renaming or moving the file
within its filesystem keeps the inode: not a copy.

While a connection resyncs, every id a page brings is noted. Once the full pull has
drained, rows of its tables that it did not bring, that have no unconfirmed local
edits and that the server did not report as failed, are remote deletes the replica
missed: they are removed (and tombstoned). Each request is told apart
(``resync_request``): a pull notes ids and removes rows only for the request it
started under, so a second request while a full pull runs starts over instead of
sweeping what the first had already brought.

A full pull needs a new device. Where the config pins the device UUID, the device the
replica drained before is remembered with the request, and the pull refuses to run
under it (``resync_device``): under the same device the queue brings only what is
new, and the sweep would remove nearly every row.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from replicad.store.names import quote

IDENTITY_KEY = "identity.file"
_RESYNC = "resync."
# The newest confirmed checkpoint token of a connection (store.replica.forget_acks).
CHECKPOINT_KEY = "checkpoint."
# Set while a full pull has met an item it could not identify (see note_seen).
_UNSURE = "resync_unsure."
# The device a connection used before its full pull was requested.
_FROM_DEVICE = "resync_from_device."
# What tells one request for a full pull from the next (two may share a millisecond).
_REQUEST = "resync_request."


def file_identity(path: Path) -> str:
    """What tells this file from a copy of it: its device and inode."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def check_identity(db: sqlite3.Connection, path: Path, now: str) -> list[str]:
    """Take a new identity if the file is a copy; what was done, for the log."""
    current = file_identity(path)
    row = db.execute("SELECT value FROM _replicad_meta WHERE key = ?", (IDENTITY_KEY,)).fetchone()
    if row is not None and row[0] == current:
        return []
    db.execute("BEGIN IMMEDIATE")
    try:
        _set(db, IDENTITY_KEY, current)
        if row is None:
            db.execute("COMMIT")  # first open (or a replica from before identities)
            return []
        connections = _forget_devices(db, None, now)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if not connections:
        return ["this replica is a copy of another file: it takes its own identity"]
    return [
        "this replica is a copy of another file: new device identity and a full pull "
        f"for {', '.join(connections)} (the original is not affected)"
    ]


def request_resync(db: sqlite3.Connection, connections: Iterable[str], now: str) -> list[str]:
    """Start a full pull of these connections (``replicad resync``); the ones started."""
    db.execute("BEGIN IMMEDIATE")
    try:
        done = _forget_devices(db, list(connections), now)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return done


def request_resync_in(db: sqlite3.Connection, connections: list[str], now: str) -> list[str]:
    """``request_resync`` inside the caller's transaction."""
    return _forget_devices(db, connections, now)


def _forget_devices(db: sqlite3.Connection, connections: list[str] | None, now: str) -> list[str]:
    """New device identities (the next pull generates them) and a resync for these
    connections (None: every connection that has a device identity)."""
    if connections is None:
        connections = [
            str(k).removeprefix("device_uuid.")
            for (k,) in db.execute("SELECT key FROM _replicad_meta WHERE key LIKE 'device_uuid.%'")
        ]
    for conn in connections:
        device = db.execute(
            "SELECT value FROM _replicad_meta WHERE key = ?", (f"device_uuid.{conn}",)
        ).fetchone()
        if device is not None:
            _set(db, _FROM_DEVICE + conn, str(device[0]))
        db.execute(
            "DELETE FROM _replicad_meta WHERE key IN (?, ?)",
            (f"device_uuid.{conn}", CHECKPOINT_KEY + conn),
        )
        # Keys of the old identity: sending them would drain the original's queue.
        db.execute("DELETE FROM _replicad_pending_acks WHERE connection = ?", (conn,))
        _set(db, _RESYNC + conn, now)
        _set(db, _REQUEST + conn, uuid.uuid4().hex)
        db.execute("DELETE FROM _replicad_meta WHERE key = ?", (_UNSURE + conn,))
        db.execute(
            "DELETE FROM _replicad_resync_seen WHERE tbl IN (SELECT t.tbl FROM _replicad_types t "
            "JOIN _replicad_syncs s ON s.sync = t.sync WHERE s.connection = ?)",
            (conn,),
        )
    return connections


def resync_since(db: sqlite3.Connection, connection: str) -> str | None:
    """When the connection's running full pull started, if one is running."""
    row = db.execute(
        "SELECT value FROM _replicad_meta WHERE key = ?", (_RESYNC + connection,)
    ).fetchone()
    return None if row is None else str(row[0])


def resync_request(db: sqlite3.Connection, connection: str) -> str | None:
    """What identifies the connection's running full pull request (None: none runs).
    A request from before requests were told apart is known by its start time."""
    row = db.execute(
        "SELECT coalesce((SELECT value FROM _replicad_meta WHERE key = ?), value) "
        "FROM _replicad_meta WHERE key = ?",
        (_REQUEST + connection, _RESYNC + connection),
    ).fetchone()
    return None if row is None else str(row[0])


def resync_device(db: sqlite3.Connection, connection: str) -> str | None:
    """The device the connection used before its running full pull was requested (a
    full pull under it would bring only what is new); None if none is known."""
    row = db.execute(
        "SELECT value FROM _replicad_meta WHERE key = ?", (_FROM_DEVICE + connection,)
    ).fetchone()
    return None if row is None else str(row[0])


def note_seen(
    db: sqlite3.Connection,
    pairs: Sequence[tuple[str, int] | None],
    connection: str,
    request: str,
) -> None:
    """Remember the records a resync's page brought (inside the page's transaction);
    None stands for an item whose record is unknown (quarantined before its id could
    be read): then no row may be taken for deleted when the full pull ends. Nothing is
    noted once another request has replaced the one the pull started under
    (``request``): that request's own full pull notes what it brings."""
    if resync_request(db, connection) != request:
        return
    known = [p for p in pairs if p is not None]
    db.executemany("INSERT OR IGNORE INTO _replicad_resync_seen (tbl, id) VALUES (?, ?)", known)
    if len(known) < len(pairs):
        _set(db, _UNSURE + connection, "1")


def finish_resync(
    db: sqlite3.Connection, sync: str, connection: str, request: str, apply_deletes: bool, now: str
) -> int | None:
    """The full pull of ``request`` (``resync_request``) drained: remove the rows it did
    not bring; how many went (None when none may be removed: the sync keeps remote
    deletes, an item it could not identify may be one of those rows, or another request
    has replaced this one — its own full pull finishes it)."""
    removed: int | None = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        if resync_request(db, connection) != request:
            db.execute("COMMIT")
            return None
        db.execute("INSERT INTO _replicad_applying (flag) VALUES (1)")
        unsure = db.execute(
            "SELECT 1 FROM _replicad_meta WHERE key = ?", (_UNSURE + connection,)
        ).fetchone()
        sweep = apply_deletes and unsure is None
        tables = [
            str(t) for (t,) in db.execute("SELECT tbl FROM _replicad_types WHERE sync = ?", (sync,))
        ]
        for tbl in tables if sweep else ():
            q = quote(tbl)
            gone = db.execute(
                f"SELECT id, _revision FROM {q} WHERE id IS NOT NULL AND _pending = 0 "
                "AND id NOT IN (SELECT id FROM _replicad_resync_seen WHERE tbl = ?) "
                "AND CAST(id AS TEXT) NOT IN (SELECT f.id FROM _replicad_failed_objects f "
                "JOIN _replicad_types t ON t.type = f.type AND t.tbl = ? WHERE f.sync = ?)",
                (tbl, tbl, sync),
            ).fetchall()
            db.executemany(f"DELETE FROM {q} WHERE id = ?", [(i,) for i, _ in gone])
            db.executemany(
                "INSERT OR REPLACE INTO _replicad_tombstones (tbl, id, revision, deleted_at) "
                "VALUES (?, ?, ?, ?)",
                [(tbl, i, rev, now) for i, rev in gone],
            )
            removed = (removed or 0) + len(gone)
        if not sweep:
            removed = None
        db.executemany("DELETE FROM _replicad_resync_seen WHERE tbl = ?", [(t,) for t in tables])
        db.execute(
            "DELETE FROM _replicad_meta WHERE key IN (?, ?, ?, ?)",
            (
                _RESYNC + connection,
                _UNSURE + connection,
                _FROM_DEVICE + connection,
                _REQUEST + connection,
            ),
        )
        db.execute("DELETE FROM _replicad_applying")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return removed


def _set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO _replicad_meta (key, value) VALUES (?, ?)", (key, value))
