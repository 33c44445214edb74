"""Putting the replica's own schema back after an app changed it.

Apps share the file and may run any DDL. Two changes would otherwise break the sync
for good: a data column renamed (or dropped) by an app, after which every page of its
type fails on "no such column", and a replicad trigger dropped or altered, after which
edits are silently not captured (or not guarded). ``reconcile`` compares each type
table with the catalog and with the triggers this version generates, and repairs:

- a column renamed by an app (exactly one column missing and one unknown column
  present): the field follows the new name, so the data stays where the app put it;
- any other missing column is added back (empty; the next pulls fill it);
- a missing or different replicad trigger is recreated, an unknown one dropped;
- a missing or altered ``replicad_*`` status view is made again.

It runs at open and whenever a page fails on a missing column, inside one write
transaction, and returns one line per repair for the log.
"""

from __future__ import annotations

import sqlite3

from replicad.store.identity import request_resync_in
from replicad.store.names import SYSTEM_COLUMNS, quote
from replicad.store.outbox import utcnow
from replicad.store.schema import current_views
from replicad.store.tables import (
    HISTORY_COLUMNS,
    TableCatalog,
    TableInfo,
    create_table_sql,
    history_table_sql,
    table_triggers,
    triggers_by_name,
)


def reconcile(db: sqlite3.Connection, catalog: TableCatalog) -> list[str]:
    """Repair every type table's columns and triggers; what was repaired. Runs its own
    transaction (and reloads the catalog)."""
    repairs: list[str] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for tbl, info in list(catalog.tables.items()):
            actual = [str(r[1]) for r in db.execute(f"PRAGMA table_info({quote(tbl)})").fetchall()]
            if not actual:
                repairs.append(_remake(db, tbl, info))
                continue  # made with every column and its triggers
            own = HISTORY_COLUMNS if info.history else SYSTEM_COLUMNS
            repairs += _own_columns(db, tbl, info.columns, actual, own)
            repairs += _columns(db, tbl, info.columns, actual, own)
            cols = [
                str(c)
                for (c,) in db.execute(
                    "SELECT col FROM _replicad_fields WHERE tbl = ? ORDER BY position", (tbl,)
                )
            ]
            repairs += _triggers(db, tbl, info.sync, cols, info.history)
        repairs += restore_views(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        catalog.load(db)
    return repairs


def stale_views(db: sqlite3.Connection) -> list[str]:
    """The ``replicad_*`` views missing or different from this version's."""
    have = {str(n): str(s) for n, s in db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'view'")}  # fmt: skip
    return [n for n, sql in current_views().items() if _norm(have.get(n, "")) != _norm(sql)]


def restore_views(db: sqlite3.Connection) -> list[str]:
    """Make the stale views again, inside the caller's transaction; what was done."""
    done = []
    for name in stale_views(db):
        gone = (
            db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?", (name,)
            ).fetchone()
            is None
        )
        db.execute(f"DROP VIEW IF EXISTS {quote(name)}")
        db.execute(current_views()[name])
        done.append(f"view {name} {'restored' if gone else 'rebuilt'}")
    return done


def _norm(sql: str) -> str:
    return " ".join(sql.split())


def _remake(db: sqlite3.Connection, tbl: str, info: TableInfo) -> str:
    """An app dropped a type table: made again, empty, and its connection pulls
    everything again to fill it (the rows apps had are gone with the table)."""
    cols = list(info.columns.values())
    db.execute(history_table_sql(tbl, cols) if info.history else create_table_sql(tbl, cols))
    for trigger in table_triggers(tbl, info):
        db.execute(trigger)
    db.execute("DELETE FROM _replicad_tombstones WHERE tbl = ?", (tbl,))
    conn = db.execute("SELECT connection FROM _replicad_syncs WHERE sync = ?", (info.sync,))
    row = conn.fetchone()
    if row is not None:
        request_resync_in(db, [str(row[0])], utcnow())
    return f"table {tbl} was dropped by an app: made again, empty; a full pull fills it"


# How replicad's own columns are declared when one must be added back.
_OWN_DECLARED = {
    "_revision": "_revision INTEGER NOT NULL DEFAULT 0",
    "_synced_at": "_synced_at TEXT",
    "_pending": "_pending INTEGER NOT NULL DEFAULT 0",
    "_received_at": "_received_at TEXT NOT NULL DEFAULT ''",
    "_event_type": "_event_type TEXT NOT NULL DEFAULT ''",
}


def _present_and_known(
    mapped: dict[str, str], actual: list[str], own: tuple[str, ...]
) -> tuple[set[str], set[str]]:
    """The table's columns, and the ones replicad expects (data and own), folded to
    lower case as SQLite compares names."""
    present = {c.lower() for c in actual}
    known = {c.lower() for c in mapped.values()} | {c.lower() for c in own}
    return present, known


def _own_columns(
    db: sqlite3.Connection,
    tbl: str,
    mapped: dict[str, str],
    actual: list[str],
    own: tuple[str, ...],
) -> list[str]:
    """replicad's own columns, which an app renamed or dropped: renamed back (they
    come first, so a rename keeps the position) or added back. ``actual`` is updated."""
    present, known = _present_and_known(mapped, actual, own)
    out = []
    for i, col in enumerate(own):
        if col.lower() in present:
            continue
        if i < len(actual) and actual[i].lower() not in known:
            db.execute(f"ALTER TABLE {quote(tbl)} RENAME COLUMN {quote(actual[i])} TO {quote(col)}")
            out.append(f"{tbl}.{col} was renamed to {actual[i]} by an app: named back")
            actual[i] = col
        elif col in _OWN_DECLARED:
            db.execute(f"ALTER TABLE {quote(tbl)} ADD COLUMN {_OWN_DECLARED[col]}")
            out.append(f"{tbl}.{col} was dropped by an app: added back")
            actual.append(col)
        else:
            # id, _internal_id, _seq cannot be added back (UNIQUE / key): a rebuild can.
            out.append(f"{tbl}.{col} was dropped by an app: run `replicad doctor --repair`")
    return out


def _columns(
    db: sqlite3.Connection,
    tbl: str,
    mapped: dict[str, str],
    actual: list[str],
    own: tuple[str, ...],
) -> list[str]:
    present, known = _present_and_known(mapped, actual, own)
    missing = [(f, c) for f, c in mapped.items() if c.lower() not in present]
    unknown = [c for c in actual if c.lower() not in known]
    if not missing:
        return []
    if (
        len(missing) == 1
        and len(unknown) == 1
        and _in_place(mapped, actual, *missing[0], unknown[0])
    ):
        (field, old), new = missing[0], unknown[0]
        db.execute(
            "UPDATE _replicad_fields SET col = ? WHERE tbl = ? AND field = ?", (new, tbl, field)
        )
        return [f"{tbl}.{old} was renamed to {new} by an app: field {field!r} follows it"]
    out = []
    for field, col in missing:
        db.execute(f"ALTER TABLE {quote(tbl)} ADD COLUMN {quote(col)}")
        out.append(f"{tbl}.{col} (field {field!r}) was missing: added back, empty")
    return out


def _in_place(mapped: dict[str, str], actual: list[str], _field: str, old: str, new: str) -> bool:
    """Whether ``new`` stands where ``old`` stood (RENAME COLUMN keeps the position): with
    it read as ``old``, the mapped columns keep their order. An app's own column added
    elsewhere is not taken for the field."""
    order = [old if c == new else c for c in actual]
    wanted = [c.lower() for c in mapped.values()]
    seen = [c.lower() for c in order if c.lower() in set(wanted)]
    return seen == wanted


def _triggers(
    db: sqlite3.Connection, tbl: str, sync: str, cols: list[str], history: bool
) -> list[str]:
    want = triggers_by_name(tbl, sync, cols, history=history)
    have = {
        str(name): str(sql)
        for name, sql in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
            "AND name LIKE '\\_replicad\\_%' ESCAPE '\\'",
            (tbl,),
        )
    }
    out = []
    for name, sql in want.items():
        if have.get(name) == sql:
            continue
        db.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
        db.execute(sql)
        out.append(f"trigger {name} was {'different' if name in have else 'missing'}: restored")
    for name in have.keys() - want.keys():
        db.execute(f"DROP TRIGGER {quote(name)}")
        out.append(f"trigger {name} is not replicad's any more: dropped")
    return out
