"""Putting the replica's own schema back after an app changed it.

Apps share the file and may run any DDL. Two changes would otherwise break the sync
for good: a data column renamed (or dropped) by an app, after which every page of its
type fails on "no such column", and a replicad trigger dropped or altered, after which
edits are silently not captured (or not guarded). ``reconcile`` compares each type
table with the catalog and with the triggers this version generates, and repairs:

- a column renamed by an app (exactly one column missing and one unknown column
  present): the field follows the new name, so the data stays where the app put it;
- any other missing column is added back (empty; the next pulls fill it);
- a missing or different replicad trigger is recreated, an unknown one dropped.

It runs at open and whenever a page fails on a missing column, inside one write
transaction, and returns one line per repair for the log.
"""

from __future__ import annotations

import sqlite3

from replicad.store.names import SYSTEM_COLUMNS, quote
from replicad.store.tables import HISTORY_COLUMNS, TableCatalog, triggers_by_name


def reconcile(db: sqlite3.Connection, catalog: TableCatalog) -> list[str]:
    """Repair every type table's columns and triggers; what was repaired. Runs its own
    transaction (and reloads the catalog)."""
    repairs: list[str] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for tbl, info in list(catalog.tables.items()):
            actual = [str(r[1]) for r in db.execute(f"PRAGMA table_info({quote(tbl)})").fetchall()]
            if not actual:
                continue  # the table itself is gone: nothing here can bring its rows back
            own = HISTORY_COLUMNS if info.history else SYSTEM_COLUMNS
            repairs += _columns(db, tbl, info.columns, actual, own)
            cols = [
                str(c)
                for (c,) in db.execute(
                    "SELECT col FROM _replicad_fields WHERE tbl = ? ORDER BY position", (tbl,)
                )
            ]
            repairs += _triggers(db, tbl, info.sync, cols, info.history)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        catalog.load(db)
    return repairs


def _columns(
    db: sqlite3.Connection,
    tbl: str,
    mapped: dict[str, str],
    actual: list[str],
    own: tuple[str, ...],
) -> list[str]:
    present = {c.lower() for c in actual}
    known = {c.lower() for c in mapped.values()} | {c.lower() for c in own}
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
