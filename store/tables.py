"""Per-type tables: creation, new columns, and the triggers that guard them.

The daemon is the only process that changes the schema, so the field→column map is
cached in memory (``TableCatalog``) and reloaded whenever a transaction rolls back.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from store.names import assign_columns, quote


def _literal(text: str) -> str:
    """A SQL string literal (trigger messages cannot be bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(slots=True)
class TableInfo:
    """A type table's owner and its field→column map in column order."""

    type: str
    sync: str
    columns: dict[str, str] = field(default_factory=dict)


class TableCatalog:
    """In-memory mirror of ``_replicad_types`` and ``_replicad_fields``."""

    def __init__(self) -> None:
        self.tables: dict[str, TableInfo] = {}

    def load(self, db: sqlite3.Connection) -> None:
        """(Re)read the catalog from the replica."""
        self.tables = {}
        for tbl, type_, sync in db.execute("SELECT tbl, type, sync FROM _replicad_types"):
            self.tables[tbl] = TableInfo(type_, sync)
        for tbl, fld, col in db.execute(
            "SELECT tbl, field, col FROM _replicad_fields ORDER BY tbl, position"
        ):
            self.tables[tbl].columns[fld] = col

    def ensure(
        self, db: sqlite3.Connection, tbl: str, type_: str, sync: str, fields: list[str], now: str
    ) -> list[str]:
        """Create the table or add columns for unseen fields; returns new column names.

        Must run inside the caller's write transaction so the ALTER and the rows that
        need it commit (or roll back) together.
        """
        info = self.tables.get(tbl)
        if info is None:
            db.execute(_create_sql(tbl))
            for trigger in _guard_triggers(tbl, sync):
                db.execute(trigger)
            db.execute(
                "INSERT INTO _replicad_types (tbl, type, sync, created_at) VALUES (?, ?, ?, ?)",
                (tbl, type_, sync, now),
            )
            info = self.tables[tbl] = TableInfo(type_, sync)
        new = assign_columns(fields, info.columns)
        position = len(info.columns)
        for fld, col in new.items():
            db.execute(f"ALTER TABLE {quote(tbl)} ADD COLUMN {quote(col)}")
            db.execute(
                "INSERT INTO _replicad_fields (tbl, field, col, position) VALUES (?, ?, ?, ?)",
                (tbl, fld, col, position),
            )
            position += 1
            info.columns[fld] = col
        return [f"{tbl}.{c}" for c in new.values()]


def _create_sql(tbl: str) -> str:
    # Data columns are added later without a declared type (no affinity); only the
    # system columns are typed.
    return (
        f"CREATE TABLE {quote(tbl)} ("
        "id INTEGER UNIQUE, "
        "_internal_id TEXT NOT NULL UNIQUE, "
        "_revision INTEGER NOT NULL DEFAULT 0, "
        "_synced_at TEXT, "
        "_pending INTEGER NOT NULL DEFAULT 0)"
    )


def _guard_triggers(tbl: str, sync: str) -> list[str]:
    """Triggers that refuse app edits on a pull-only table with a clear message."""
    msg = _literal(
        f"replicad: table {tbl} is pulled by sync {sync!r} and no push sync carries "
        "local edits upstream; the edit was refused and nothing changed"
    )
    out = []
    for op in ("INSERT", "UPDATE", "DELETE"):
        name = quote(f"_replicad_guard_{op.lower()}_{tbl}")
        out.append(
            f"CREATE TRIGGER {name} BEFORE {op} ON {quote(tbl)} "
            "WHEN NOT EXISTS (SELECT 1 FROM _replicad_applying) "
            f"BEGIN SELECT RAISE(ABORT, {msg}); END"
        )
    return out
