"""Per-type tables: creation, new columns, and the triggers that guard and capture edits.

A type's table is an ordinary table, so row counts, ``lastrowid`` and ``RETURNING``
behave for apps and ORMs exactly as on any table. Its triggers tell an app's edit
from the daemon's own writes by the ``_replicad_applying`` flag row, which only the
daemon inserts, inside its own transactions, and deletes before commit: other
connections never see it.

- Guards (BEFORE): an edit no push sync can carry upstream fails with a clear SQL
  error and changes nothing. Which tables are push sources is read at edit time from
  ``_replicad_push``, so a config change needs no trigger rebuild.
- Capture (AFTER): an app's INSERT or UPDATE writes an outbox entry in the app's own
  transaction; an UPDATE records exactly the columns it changed, folded into the
  row's entry that is not yet sent (or was rejected) so edits coalesce.

The daemon is the only process that changes the schema, so the field→column map is
cached in memory (``TableCatalog``) and reloaded whenever a transaction rolls back.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from replicad.store.names import assign_columns, quote

_APPLYING = "EXISTS (SELECT 1 FROM _replicad_applying)"
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# json_array takes at most SQLITE_MAX_FUNCTION_ARG (127 by default) arguments.
_ARGS_PER_ARRAY = 100


def literal(text: str) -> str:
    """A SQL string literal (trigger bodies cannot take bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(slots=True)
class TableInfo:
    """A type table's owner, its field→column map in column order, and field kinds."""

    type: str
    sync: str
    columns: dict[str, str] = field(default_factory=dict)
    # column → "boolean" | "json" | "scalar"; absent until a non-null value is seen.
    kinds: dict[str, str] = field(default_factory=dict)
    history: bool = False  # a pull append's <type>_history table (store.history)


class TableCatalog:
    """In-memory mirror of ``_replicad_types`` and ``_replicad_fields``."""

    def __init__(self) -> None:
        self.tables: dict[str, TableInfo] = {}

    def load(self, db: sqlite3.Connection) -> None:
        """(Re)read the catalog from the replica."""
        self.tables = {}
        has_kind = any(r[1] == "kind" for r in db.execute("PRAGMA table_info(_replicad_types)"))
        kinds = "kind" if has_kind else "'table'"  # before v4 (a migration reads it)
        for tbl, type_, sync, kind in db.execute(
            f"SELECT tbl, type, sync, {kinds} FROM _replicad_types"
        ):
            self.tables[tbl] = TableInfo(type_, sync, history=kind == "history")
        for tbl, fld, col, kind in db.execute(
            "SELECT tbl, field, col, kind FROM _replicad_fields ORDER BY tbl, position"
        ):
            info = self.tables[tbl]
            info.columns[fld] = col
            if kind is not None:
                info.kinds[col] = kind

    def ensure(
        self,
        db: sqlite3.Connection,
        tbl: str,
        type_: str,
        sync: str,
        fields: list[str],
        now: str,
        *,
        history: bool = False,
        namer: Callable[[str], str] | None = None,
    ) -> list[str]:
        """Create the table or add columns for unseen fields; returns new column names.

        Must run inside the caller's write transaction so the ALTER, the regenerated
        capture trigger and the rows that need them commit (or roll back) together.
        ``history``: a pull append's history table (``store.history``).
        """
        info = self.tables.get(tbl)
        created = info is None
        if info is None:
            info = TableInfo(type_, sync, history=history)
        new = assign_columns(fields, info.columns, HISTORY_COLUMNS if history else None, namer)
        position = len(info.columns)
        if created:
            # One CREATE with the first page's columns: each ALTER would make SQLite
            # re-read the whole schema.
            make = history_table_sql if history else create_table_sql
            db.execute(make(tbl, list(new.values())))
            db.execute(
                "INSERT INTO _replicad_types (tbl, type, sync, created_at, kind) "
                "VALUES (?, ?, ?, ?, ?)",
                (tbl, type_, sync, now, "history" if history else "table"),
            )
            self.tables[tbl] = info
        for fld, col in new.items():
            if not created:
                db.execute(f"ALTER TABLE {quote(tbl)} ADD COLUMN {quote(col)}")
            db.execute(
                "INSERT INTO _replicad_fields (tbl, field, col, position) VALUES (?, ?, ?, ?)",
                (tbl, fld, col, position),
            )
            position += 1
            info.columns[fld] = col
        if created:
            for trigger in table_triggers(tbl, info):
                db.execute(trigger)
        elif new and not history:
            # The capture trigger lists the data columns it compares.
            db.execute(f"DROP TRIGGER IF EXISTS {quote(_capture_update_name(tbl))}")
            db.execute(_capture_update(tbl, list(info.columns.values())))
        return [f"{tbl}.{c}" for c in new.values()]

    def learn_kinds(self, db: sqlite3.Connection, tbl: str, kinds: dict[str, str]) -> None:
        """Remember the JSON kind of columns first seen with a non-null value."""
        info = self.tables[tbl]
        fresh = {c: k for c, k in kinds.items() if c not in info.kinds}
        if fresh:
            db.executemany(
                "UPDATE _replicad_fields SET kind = ? WHERE tbl = ? AND col = ?",
                [(k, tbl, c) for c, k in fresh.items()],
            )
            info.kinds.update(fresh)


def create_table_sql(tbl: str, columns: list[str], name: str | None = None) -> str:
    """The CREATE TABLE of a type table (optionally under another name, to rebuild)."""
    # Data columns carry no declared type (no affinity). The defaults are what an app's
    # INSERT gets: a fresh random _internal_id unless it gives one, and _pending = 1;
    # the daemon's own inserts set both explicitly. Defaults (not triggers) so that
    # INSERT … RETURNING shows them.
    data = "".join(f", {quote(c)}" for c in columns)
    return (
        f"CREATE TABLE {quote(name or tbl)} ("
        "id INTEGER UNIQUE, "
        "_internal_id TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16)))), "
        "_revision INTEGER NOT NULL DEFAULT 0, "
        "_synced_at TEXT, "
        f"_pending INTEGER NOT NULL DEFAULT 1{data})"
    )


def triggers(tbl: str, sync: str, columns: list[str]) -> list[str]:
    """Every trigger of a type table."""
    q = quote(tbl)
    t = literal(tbl)
    pushed = f"EXISTS (SELECT 1 FROM _replicad_push WHERE tbl = {t})"
    not_pushed = literal(
        f"replicad: table {tbl} is pulled by sync {sync!r} and no push sync carries "
        "local edits upstream; the edit was refused and nothing changed"
    )
    no_delete = literal(
        f"replicad: DELETE on table {tbl} is not carried upstream (only a push sync with "
        "operation 'mirror' deletes records, and only where the destination can); the "
        "row was kept and nothing changed"
    )
    identity = literal(
        f"replicad: id, _internal_id, _revision, _synced_at and _pending of table {tbl} "
        "are managed by replicad and cannot be changed; the edit was refused"
    )
    no_insert = literal(
        f"replicad: table {tbl} is pushed with operation 'update': rows can be changed, "
        "not inserted (the destination only updates records it has); nothing changed"
    )
    no_update = literal(
        f"replicad: table {tbl} is pushed with operation 'insert' or 'append': a row "
        "already sent upstream is never updated there, so the UPDATE was refused and "
        "nothing changed"
    )
    creating = literal(
        f"replicad: this row of table {tbl} is being created upstream and has no id "
        "yet; delete it once its create is settled (a moment after the push, or, for a "
        "create in doubt, once the pull brings the record or `replicad retry` posts it)"
    )
    reinsert = literal(
        f"replicad: an INSERT into table {tbl} may not set id, _revision, _synced_at or "
        "_pending, nor reuse the _internal_id of an existing row (that would replace a "
        "synced record); use UPDATE"
    )
    # One BEFORE trigger per statement kind, its checks in order: the daemon's own
    # writes (a pull applies hundreds of rows a page) then test the flag once, not
    # once per check.
    refuse_unpushed = f"SELECT RAISE(ABORT, {not_pushed}) WHERE NOT {pushed}; "
    out = [
        f"CREATE TRIGGER {quote(f'_replicad_check_insert_{tbl}')} BEFORE INSERT ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN {refuse_unpushed}"
        f"SELECT RAISE(ABORT, {no_insert}) WHERE EXISTS (SELECT 1 FROM _replicad_push "
        f"WHERE tbl = {t} AND operation = 'update'); "
        f"SELECT RAISE(ABORT, {reinsert}) WHERE NEW.id IS NOT NULL OR NEW._revision IS NOT 0 "
        "OR NEW._synced_at IS NOT NULL OR NEW._pending IS NOT 1 OR EXISTS "
        f"(SELECT 1 FROM {q} WHERE _internal_id = NEW._internal_id); END",
        # The bookkeeping columns decide what the pull overwrites (_revision) and what
        # is shown as unsent (_pending): an app setting them would silently break the
        # sync. The capture triggers' own "SET _pending = 1" stays allowed. An insert
        # or append table may still change a row whose create is not sent yet or was
        # rejected (the change rides along with the create; a fix requeues it).
        f"CREATE TRIGGER {quote(f'_replicad_check_update_{tbl}')} BEFORE UPDATE ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN {refuse_unpushed}"
        f"SELECT RAISE(ABORT, {identity}) WHERE NEW.id IS NOT OLD.id "
        "OR NEW._internal_id IS NOT OLD._internal_id OR NEW._revision IS NOT OLD._revision "
        "OR NEW._synced_at IS NOT OLD._synced_at "
        "OR (NEW._pending IS NOT OLD._pending AND NEW._pending IS NOT 1); "
        f"SELECT RAISE(ABORT, {no_update}) WHERE EXISTS (SELECT 1 FROM _replicad_push "
        f"WHERE tbl = {t} AND operation IN ('insert', 'append')) AND NOT EXISTS (SELECT 1 "
        f"FROM _replicad_outbox WHERE tbl = {t} AND internal_id = OLD._internal_id "
        "AND op = 'insert' AND state IN ('pending', 'rejected')); END",
        # A row whose create is in flight (or was accepted without an id) cannot be
        # deleted upstream yet: the delete would have no id to name.
        f"CREATE TRIGGER {quote(f'_replicad_check_delete_{tbl}')} BEFORE DELETE ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN {refuse_unpushed}"
        f"SELECT RAISE(ABORT, {no_delete}) WHERE NOT EXISTS (SELECT 1 FROM _replicad_push "
        f"WHERE tbl = {t} AND can_delete); "
        f"SELECT RAISE(ABORT, {creating}) WHERE OLD.id IS NULL AND EXISTS (SELECT 1 FROM "
        f"_replicad_outbox WHERE tbl = {t} AND internal_id = OLD._internal_id "
        "AND op = 'insert' AND (state = 'in_flight' OR awaiting_id = 1)); END",
    ]
    # mirror: an app's DELETE becomes a delete upstream. Entries not yet sent go (the
    # record is going); a tombstone keeps the pull from bringing the row back before
    # the delete arrives.
    out.append(
        f"CREATE TRIGGER {quote(f'_replicad_capture_delete_{tbl}')} AFTER DELETE ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN "
        f"DELETE FROM _replicad_outbox WHERE tbl = {t} AND internal_id = OLD._internal_id "
        "AND state IN ('pending', 'rejected'); "
        "INSERT INTO _replicad_outbox (tbl, internal_id, op, state, remote_id, created_at, "
        f"updated_at) SELECT {t}, OLD._internal_id, 'delete', 'pending', OLD.id, {_NOW}, "
        f"{_NOW} WHERE OLD.id IS NOT NULL; "
        "INSERT OR REPLACE INTO _replicad_tombstones (tbl, id, revision, deleted_at) "
        f"SELECT {t}, OLD.id, OLD._revision, {_NOW} WHERE OLD.id IS NOT NULL; "
        "END"
    )
    out.append(
        f"CREATE TRIGGER {quote(f'_replicad_capture_insert_{tbl}')} AFTER INSERT ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN "
        # An app-chosen _internal_id may name a row whose earlier entry was cancelled or
        # confirmed; the partial unique index only covers entries still to be sent.
        "INSERT INTO _replicad_outbox (tbl, internal_id, op, state, created_at, updated_at) "
        f"VALUES ({t}, NEW._internal_id, 'insert', 'pending', {_NOW}, {_NOW}); "
        f"UPDATE {q} SET _pending = 1 WHERE rowid = NEW.rowid AND _pending IS NOT 1; "
        "END"
    )
    out.append(_capture_update(tbl, columns))
    return out


_TRIGGER_NAME = re.compile(r'^CREATE TRIGGER "((?:[^"]|"")+)"')


def table_triggers(tbl: str, info: TableInfo) -> list[str]:
    """The triggers a managed table has: a type table's, or a history table's."""
    if info.history:
        return history_triggers(tbl)
    return triggers(tbl, info.sync, list(info.columns.values()))


def triggers_by_name(
    tbl: str, sync: str, columns: list[str], *, history: bool = False
) -> dict[str, str]:
    """Every trigger of a managed table, by name (what reconcile and doctor compare the
    schema with)."""
    out = {}
    for sql in history_triggers(tbl) if history else triggers(tbl, sync, columns):
        m = _TRIGGER_NAME.match(sql)
        assert m is not None
        out[m.group(1).replace('""', '"')] = sql
    return out


# A history table's own columns (store.history); data columns never take these names.
HISTORY_COLUMNS = ("_seq", "id", "_event_type", "_revision", "_received_at")


def history_table_sql(tbl: str, columns: list[str]) -> str:
    """A pull append's history table: one row per item received, never updated.

    A redelivered item (same record, event and revision) is not appended twice.
    """
    data = "".join(f", {quote(c)}" for c in columns)
    return (
        f"CREATE TABLE {quote(tbl)} (_seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, "
        "_event_type TEXT NOT NULL, _revision INTEGER NOT NULL, _received_at TEXT NOT NULL"
        f"{data}, UNIQUE (id, _event_type, _revision))"
    )


def history_triggers(tbl: str) -> list[str]:
    """A history table is append-only for apps: every edit is refused."""
    q = quote(tbl)
    refused = literal(
        f"replicad: table {tbl} is a change history (a pull with operation 'append'); it "
        "only grows as items arrive, and apps cannot change it"
    )
    return [
        f"CREATE TRIGGER {quote(f'_replicad_history_{op.lower()}_{tbl}')} BEFORE {op} ON {q} "
        f"WHEN NOT {_APPLYING} BEGIN SELECT RAISE(ABORT, {refused}); END"
        for op in ("INSERT", "UPDATE", "DELETE")
    ]


def _capture_update_name(tbl: str) -> str:
    return f"_replicad_capture_update_{tbl}"


def _changed_columns(columns: list[str]) -> str:
    """SQL for the JSON array of the data columns an UPDATE changed (may be '[]')."""
    if not columns:
        return "'[]'"
    arrays = []
    for i in range(0, len(columns), _ARGS_PER_ARRAY):
        chunk = columns[i : i + _ARGS_PER_ARRAY]
        cases = ", ".join(
            f"CASE WHEN NEW.{quote(c)} IS NOT OLD.{quote(c)} THEN {literal(c)} END" for c in chunk
        )
        arrays.append(f"SELECT value FROM json_each(json_array({cases}))")
    union = " UNION ALL ".join(arrays)
    return f"(SELECT json_group_array(value) FROM ({union}) WHERE value IS NOT NULL)"


def _capture_update(tbl: str, columns: list[str]) -> str:
    q = quote(tbl)
    t = literal(tbl)
    changed = _changed_columns(columns)
    open_entry = (
        f"tbl = {t} AND internal_id = NEW._internal_id AND state IN ('pending', 'rejected')"
    )
    return (
        f"CREATE TRIGGER {quote(_capture_update_name(tbl))} AFTER UPDATE ON {q} "
        f"WHEN NOT {_APPLYING} AND {changed} <> '[]' BEGIN "
        # Fold into the row's entry not yet sent (or rejected: editing the row again
        # requeues it). An insert entry sends the whole row, so it needs no field list.
        "UPDATE _replicad_outbox SET state = 'pending', updated_at = "
        f"{_NOW}, payload = NULL, batch = NULL, fields = CASE WHEN op = 'insert' THEN NULL "
        "ELSE (SELECT json_group_array(value) FROM (SELECT value FROM json_each(fields) "
        f"UNION SELECT value FROM json_each({changed}))) END "
        f"WHERE {open_entry}; "
        "INSERT INTO _replicad_outbox (tbl, internal_id, op, fields, state, created_at, "
        f"updated_at) SELECT {t}, NEW._internal_id, 'update', {changed}, 'pending', "
        f"{_NOW}, {_NOW} WHERE NOT EXISTS (SELECT 1 FROM _replicad_outbox WHERE {open_entry}); "
        f"UPDATE {q} SET _pending = 1 WHERE rowid = NEW.rowid AND _pending IS NOT 1; "
        "END"
    )


def rebuild(db: sqlite3.Connection, tbl: str, sync: str, columns: list[str]) -> None:
    """Recreate a type table with the current definition and triggers, keeping rows.

    For migrations: SQLite cannot change a column's default in place. Runs inside the
    caller's transaction.
    """
    tmp = "_replicad_rebuild"
    # Indexes and triggers an app added to the table go with DROP TABLE: keep them.
    extras = [
        str(sql)
        for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', "
            "'trigger') AND sql IS NOT NULL AND name NOT LIKE '\\_replicad\\_%' ESCAPE '\\'",
            (tbl,),
        )
    ]
    # Without legacy mode, RENAME re-checks every view, and an app's view of this
    # table fails while the table is briefly gone.
    db.execute("PRAGMA legacy_alter_table = ON")
    db.execute(create_table_sql(tbl, columns, name=tmp))
    cols = ", ".join(
        ["rowid", "id", "_internal_id", "_revision", "_synced_at", "_pending"]
        + [quote(c) for c in columns]
    )
    db.execute(f"INSERT INTO {quote(tmp)} ({cols}) SELECT {cols} FROM {quote(tbl)}")
    db.execute(f"DROP TABLE {quote(tbl)}")
    db.execute(f"ALTER TABLE {quote(tmp)} RENAME TO {quote(tbl)}")
    db.execute("PRAGMA legacy_alter_table = OFF")
    for trigger in triggers(tbl, sync, columns):
        db.execute(trigger)
    for sql in extras:
        db.execute(sql)
