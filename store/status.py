"""Reading the replica from outside the daemon (no lock needed): the status report."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from replicad.store.lock import is_held
from replicad.store.names import quote
from replicad.store.readonly import open_readonly
from replicad.store.schema import APPLICATION_ID


def _local_edits(db: sqlite3.Connection, syncs: list[dict[str, Any]]) -> None:
    """Outbox and conflict counts per push sync."""
    counts: dict[str, dict[str, int]] = {}
    for sync, state, n in db.execute(
        "SELECT p.sync, o.state, count(*) FROM _replicad_outbox o "
        "JOIN _replicad_push p ON p.tbl = o.tbl GROUP BY p.sync, o.state"
    ):
        counts.setdefault(sync, {})[state] = n
    conflicts = dict(
        db.execute(
            "SELECT p.sync, count(*) FROM _replicad_conflicts c "
            "JOIN _replicad_push p ON p.tbl = c.tbl GROUP BY p.sync"
        ).fetchall()
    )
    for s in syncs:
        c = counts.get(s["sync"], {})
        s["pending_local_edits"] = c.get("pending", 0) + c.get("in_flight", 0)
        s["in_flight_local_edits"] = c.get("in_flight", 0)
        s["failed_local_edits"] = c.get("rejected", 0) + c.get("in_doubt", 0)
        s["in_doubt_local_edits"] = c.get("in_doubt", 0)
        s["confirmed_local_edits"] = c.get("confirmed", 0)
        s["conflicts"] = conflicts.get(s["sync"], 0)


def _runs_and_alerts(db: sqlite3.Connection, syncs: list[dict[str, Any]]) -> None:
    """Each sync's open alerts and last run (``replicad_runs``, ``replicad_alerts``)."""
    for sync in syncs:
        sync["alerts"] = [
            dict(r)
            for r in db.execute(
                "SELECT type, raised_at, message FROM replicad_alerts WHERE sync = ? AND open "
                "ORDER BY alert",
                (sync["sync"],),
            )
        ]
        last = db.execute(
            "SELECT started_at, finished_at, status, processed, created, updated, deleted, "
            "rejected, not_found, quarantined, skipped, error FROM replicad_runs "
            "WHERE sync = ? ORDER BY run DESC LIMIT 1",
            (sync["sync"],),
        ).fetchone()
        sync["last_run"] = None if last is None else dict(last)


# + sync label: until when the sync's next request waits for the rate budget.
BUDGET_WAIT_KEY = "budget_wait."


def read_status(path: Path) -> dict[str, Any]:
    """Status of a replica as plain data; works whether or not the daemon runs."""
    pid = is_held(path)
    report: dict[str, Any] = {
        "replica": str(path),
        "exists": path.exists(),
        "daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None},
        "syncs": [],
        "tables": [],
    }
    if not path.exists():
        return report
    db = open_readonly(path, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise ValueError(f"{path} is not a replicad replica")
        report["schema_version"] = db.execute("PRAGMA user_version").fetchone()[0]
        report["syncs"] = [dict(r) for r in db.execute("SELECT * FROM replicad_syncs")]
        if pid is None:
            for sync in report["syncs"]:
                if sync.get("state") == "syncing":
                    # No process holds the replica: the cycle ended without recording
                    # its outcome (killed, or its last write hit a locked file).
                    sync["state"] = "interrupted"
        if report["schema_version"] >= 2:
            _local_edits(db, report["syncs"])
        if report["schema_version"] >= 4:
            _runs_and_alerts(db, report["syncs"])
        resyncs = dict(
            db.execute(
                "SELECT substr(key, 8), value FROM _replicad_meta WHERE key LIKE 'resync.%'"
            ).fetchall()
        )
        waits = dict(
            db.execute(
                "SELECT substr(key, ?), value FROM _replicad_meta WHERE key LIKE ?",
                (len(BUDGET_WAIT_KEY) + 1, BUDGET_WAIT_KEY + "%"),
            ).fetchall()
        )
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for sync in report["syncs"]:
            if pid is not None and waits.get(sync["sync"], "") > now:
                # A running sync waits for the connection's rate budget until then.
                sync["waiting_for_budget_until"] = waits[sync["sync"]]
            if sync.get("direction") == "pull" and sync.get("connection") in resyncs:
                # A full pull (a copy's, or `replicad resync`) runs since then.
                sync["resync_since"] = resyncs[sync["connection"]]
        for r in db.execute("SELECT name, type, sync FROM replicad_tables ORDER BY name"):
            rows = db.execute(f"SELECT count(*) FROM {quote(r['name'])}").fetchone()[0]
            report["tables"].append({**dict(r), "rows": rows})
    finally:
        db.close()
    return report


def seen_fields(path: Path, sync: str) -> dict[str, set[str]]:
    """Per remote type, the fields a pull sync has received a value of (read only).

    A mapped field has its column from the start; its kind is learnt from its first
    non-null value, so a field without a kind has not brought anything yet."""
    if not path.exists():
        return {}
    db = open_readonly(path, timeout=5)
    try:
        out: dict[str, set[str]] = {}
        for type_, name in db.execute(
            "SELECT t.type, f.field FROM _replicad_fields f JOIN _replicad_types t "
            "ON t.tbl = f.tbl WHERE t.sync = ? AND f.kind IS NOT NULL",
            (sync,),
        ):
            out.setdefault(str(type_), set()).add(str(name))
        return out
    except sqlite3.OperationalError:
        return {}  # not a replica yet, or an older schema: nothing to say
    finally:
        db.close()
