"""What the pull must know about unconfirmed local edits, and the conflict journal.

A row with outbox entries that are not confirmed (pending, in flight, rejected, or a
create in doubt) has local values the remote does not have yet. The pull merges into
such rows field by field (``store.plan.merge_remote``) and journals the values that lose.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from replicad.store.names import quote
from replicad.store.values import SQLValue

# in_doubt: a create whose arrival cannot be told (its answer was lost and the record
# cannot be looked up); it waits for the pull to bring the record, or for the operator.
OPEN_STATES = ("pending", "in_flight", "rejected", "in_doubt")
OPEN_SQL = "state IN ('pending', 'in_flight', 'rejected', 'in_doubt')"


@dataclass(slots=True)
class OpenEdit:
    """A row's unconfirmed local edits: the columns they changed (None: a whole insert)."""

    internal_id: str
    columns: set[str] | None


def has_open_edits(db: sqlite3.Connection, tbl: str) -> bool:
    """Whether any row of ``tbl`` has unconfirmed local edits (one index probe)."""
    row = db.execute(
        f"SELECT EXISTS (SELECT 1 FROM _replicad_outbox WHERE {OPEN_SQL} AND tbl = ?)", (tbl,)
    ).fetchone()
    return bool(row[0])


def open_edits(db: sqlite3.Connection, tbl: str, ids: list[int]) -> dict[int, OpenEdit]:
    """Unconfirmed local edits of the rows with these remote ids."""
    edits: dict[int, OpenEdit] = {}
    if not ids:
        return edits
    marks = ",".join("?" * len(ids))
    rows = db.execute(
        f"SELECT t.id, t._internal_id, o.op, o.fields FROM {quote(tbl)} t "
        "JOIN _replicad_outbox o ON o.tbl = ? AND o.internal_id = t._internal_id "
        f"AND o.{OPEN_SQL} WHERE t.id IN ({marks})",
        (tbl, *ids),
    )
    entries: dict[int, list[tuple[str, str | None]]] = {}
    for id_, iid, op, fields in rows:
        edits.setdefault(int(id_), OpenEdit(str(iid), set()))
        entries.setdefault(int(id_), []).append((op, fields))
    for id_, edit in edits.items():
        edit.columns = _columns(entries[id_])
    return edits


def _columns(entries: Iterable[tuple[str, str | None]]) -> set[str] | None:
    """The columns (op, fields) entries changed; None when one is an insert (all)."""
    cols: set[str] = set()
    for op, fields in entries:
        if op == "insert":
            return None
        cols.update(json.loads(fields or "[]"))
    return cols


def open_columns(db: sqlite3.Connection, tbl: str, iid: str) -> set[str] | None:
    """Columns a row's unconfirmed entries changed (None: a whole insert)."""
    return _columns(
        db.execute(
            "SELECT op, fields FROM _replicad_outbox "
            f"WHERE tbl = ? AND internal_id = ? AND {OPEN_SQL}",
            (tbl, iid),
        )
    )


def conflict_mode(db: sqlite3.Connection, tbl: str) -> str:
    """The push sync's ``conflict`` setting; "merge" when no push sync is configured
    (the local edits then wait, kept, for one to come back)."""
    row = db.execute("SELECT conflict FROM _replicad_push WHERE tbl = ?", (tbl,)).fetchone()
    return str(row[0]) if row else "merge"


def row_values(
    db: sqlite3.Connection, tbl: str, id_: int, columns: list[str]
) -> dict[str, SQLValue]:
    """The current values of a row's data columns."""
    if not columns:
        return {}
    cols = ", ".join(quote(c) for c in columns)
    row = db.execute(f"SELECT {cols} FROM {quote(tbl)} WHERE id = ?", (id_,)).fetchone()
    return dict(zip(columns, row, strict=True)) if row else {}


def journal(
    db: sqlite3.Connection,
    tbl: str,
    internal_id: str,
    id_: int | str | None,
    conflicts: Iterable[tuple[str, SQLValue, SQLValue]],
    revision: int | None,
    resolution: str,
    now: str,
) -> int:
    """Keep the losing side of each conflicting column in the journal."""
    rows = [
        (tbl, internal_id, id_, col, local, remote, revision, resolution, now)
        for col, local, remote in conflicts
    ]
    db.executemany(
        "INSERT INTO _replicad_conflicts (tbl, internal_id, id, field, local_value, "
        "remote_value, revision, resolution, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def cancel_entries(
    db: sqlite3.Connection,
    tbl: str,
    internal_id: str,
    reason: str,
    now: str,
    states: tuple[str, ...] = OPEN_STATES,
) -> None:
    """Cancel a row's unconfirmed entries (the remote deleted it, or won a conflict)."""
    marks = ",".join("?" * len(states))
    db.execute(
        "UPDATE _replicad_outbox SET state = 'cancelled', reason = ?, finished_at = ?, "
        f"updated_at = ? WHERE tbl = ? AND internal_id = ? AND state IN ({marks})",
        (reason, now, now, tbl, internal_id, *states),
    )


def settle_pending_flag(db: sqlite3.Connection, tbl: str, internal_id: str) -> None:
    """``_pending`` = 1 exactly while the row has unconfirmed entries."""
    db.execute(
        f"UPDATE {quote(tbl)} SET _pending = EXISTS (SELECT 1 FROM _replicad_outbox "
        f"WHERE tbl = ? AND internal_id = ? AND {OPEN_SQL}) WHERE _internal_id = ?",
        (tbl, internal_id, internal_id),
    )
