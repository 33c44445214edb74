"""Runs and alerts: one row per cycle of every sync, and the alerts raised on them.

``replicad_runs`` shows every cycle (kept 30 days); ``replicad_alerts`` every alert,
open until resolved. Deciding when an alert is raised is the daemon's business
(``daemon.alerts``); here they are only kept, each write its own short transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

KEEP_RUNS = "-30 days"


@dataclass(slots=True)
class RunCounts:
    """What one cycle did, in Census's terms (CONTRACT §7)."""

    processed: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    rejected: int = 0
    not_found: int = 0
    quarantined: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Run:
    """A finished cycle."""

    sync: str
    direction: str
    started_at: str
    finished_at: str
    status: str  # "succeeded" | "failed" | "stopped"
    counts: RunCounts
    error: str | None = None


def record_run(db: sqlite3.Connection, run: Run) -> None:
    """Keep a run (and forget runs older than 30 days)."""
    c = run.counts
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "INSERT INTO _replicad_runs (sync, direction, started_at, finished_at, status, "
            "processed, created, updated, deleted, rejected, not_found, quarantined, skipped, "
            "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.sync, run.direction, run.started_at, run.finished_at, run.status,
                c.processed, c.created, c.updated, c.deleted, c.rejected, c.not_found,
                c.quarantined, c.skipped, run.error,
            ),
        )  # fmt: skip
        db.execute(
            "DELETE FROM _replicad_runs WHERE finished_at < "
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)",
            (KEEP_RUNS,),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def raise_alert(db: sqlite3.Connection, sync: str, type_: str, message: str, now: str) -> bool:
    """Open an alert unless one of that type is open for the sync; True if opened."""
    cur = db.execute(
        "INSERT INTO _replicad_alerts (sync, type, raised_at, message) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sync, type) WHERE resolved_at IS NULL DO NOTHING",
        (sync, type_, now, message),
    )
    return cur.rowcount == 1


def resolve_alert(db: sqlite3.Connection, sync: str, type_: str, now: str) -> str | None:
    """Close the open alert of that type, if any; its message."""
    row = db.execute(
        "UPDATE _replicad_alerts SET resolved_at = ? WHERE sync = ? AND type = ? "
        "AND resolved_at IS NULL RETURNING message",
        (now, sync, type_),
    ).fetchone()
    return None if row is None else str(row[0])


def open_alerts(db: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """(sync, type, raised_at, message) of every open alert, oldest first."""
    return [
        (str(a), str(b), str(c), str(d))
        for a, b, c, d in db.execute(
            "SELECT sync, type, raised_at, message FROM _replicad_alerts "
            "WHERE resolved_at IS NULL ORDER BY seq"
        )
    ]


def last_success(db: sqlite3.Connection, sync: str) -> str | None:
    """When the sync's last successful cycle finished (from ``replicad_syncs``)."""
    row = db.execute("SELECT last_success FROM _replicad_syncs WHERE sync = ?", (sync,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])
