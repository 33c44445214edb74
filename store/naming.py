"""How a pull names its columns: Census's per-type mappings, field_behavior and
field_normalization (CONTRACT §7), and applying a change of them to existing tables.

A remote field with a mapping is stored in the mapping's column; under
``sync_all_properties`` every other field too, named by ``field_normalization`` (then
made an SQL identifier as any field name is); under ``specific_properties`` only
mapped fields. The field→column map is kept in ``_replicad_fields``, so a push from
the table sends each column back under its remote field's name.

A change that would move or drop data apps read — a field already stored in another
column than its mapping now names, or no longer stored at all — is applied only when
the operator asks for it with ``replicad resync`` (``rename_and_drop``); until then
the config is refused, saying so. A new ``field_normalization`` is such a change too:
the columns named automatically in the old style (kept in ``_replicad_meta``) move to
the new one; a column an app renamed itself is left as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from replicad.store.names import SYSTEM_COLUMNS, normalize_field, quote
from replicad.store.normalize import normalize
from replicad.store.tables import HISTORY_COLUMNS, TableCatalog, TableInfo, table_triggers

STYLE_KEY = "pull_style."  # + sync label: the field_normalization its columns were named in


@dataclass(frozen=True, slots=True)
class Naming:
    """A pull sync's column naming."""

    mapped: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # type→field→col
    keep_all: bool = True  # sync_all_properties
    style: str = "match_source_names"

    def keeps(self, type_: str, name: str) -> bool:
        """Whether a remote field of that type is stored."""
        return self.keep_all or name == "id" or name in self.mapped.get(type_, {})

    def column(self, type_: str, name: str) -> str:
        """The column a field is meant to be stored in (before clashes are resolved)."""
        explicit = self.mapped.get(type_, {}).get(name)
        return explicit if explicit is not None else normalize(name, self.style)


@dataclass(frozen=True, slots=True)
class Change:
    """A stored field whose column the naming moves (``new``) or drops (None)."""

    table: str
    field: str
    column: str
    new: str | None
    key: str = "mappings"  # the config key that asks for it

    def describe(self) -> str:
        """One line for the config error or the log."""
        if self.new is None:
            return f"{self.table}.{self.column} (field {self.field!r}) would no longer be stored"
        return f"{self.table}.{self.column} (field {self.field!r}) would move to {self.new!r}"


def naming_changes(
    catalog: TableCatalog, sync: str, naming: Naming, old_style: str | None = None
) -> list[Change]:
    """What the naming would move or drop in the sync's existing tables.

    ``old_style``: the field_normalization the automatic columns were named in (None
    when unknown: they are then taken to be named as the app has them).
    """
    out: list[Change] = []
    for tbl, info in catalog.tables.items():
        if info.sync != sync:
            continue
        explicit = naming.mapped.get(info.type, {})
        restyle: list[str] = []
        for name, col in info.columns.items():
            if not naming.keeps(info.type, name):
                out.append(Change(tbl, name, col, None))
            elif name in explicit:
                if explicit[name] != col:
                    out.append(Change(tbl, name, col, explicit[name]))
            elif (
                old_style is not None
                and old_style != naming.style
                and _named_in(col, normalize_field(normalize(name, old_style)))
            ):
                restyle.append(name)
        out.extend(_restyled(tbl, info, naming, restyle, out))
    return out


def _named_in(col: str, base: str) -> bool:
    """Whether a column is the automatic name ``base`` (or it with a clash suffix)."""
    if col.lower() == base.lower():
        return True
    head, _, n = col.rpartition("_")
    return n.isdigit() and head.lower() == base.lower()


def _restyled(
    tbl: str, info: TableInfo, naming: Naming, fields: list[str], changes: list[Change]
) -> list[Change]:
    """New-style names for automatically named columns, clear of every other column."""
    moving = {c.field for c in changes if c.table == tbl} | set(fields)
    stays = [col for f, col in info.columns.items() if f not in moving]
    targets = [c.new for c in changes if c.table == tbl and c.new is not None]
    own = HISTORY_COLUMNS if info.history else SYSTEM_COLUMNS
    used = {c.lower() for c in (*stays, *targets, *own)}
    out: list[Change] = []
    for name in fields:
        base = normalize_field(naming.column(info.type, name))
        col, n = base, 1
        while col.lower() in used:
            n += 1
            col = f"{base}_{n}"
        used.add(col.lower())
        if col != info.columns[name]:
            out.append(Change(tbl, name, info.columns[name], col, "field_normalization"))
    return out


def add_mapped(
    db: sqlite3.Connection, catalog: TableCatalog, sync: str, naming: Naming, now: str
) -> list[str]:
    """Give the sync's existing tables a column for each mapped field they lack (NULL
    until the field arrives); returns the new ``table.column`` names."""
    todo = [
        (tbl, info, [f for f in naming.mapped.get(info.type, {}) if f not in info.columns])
        for tbl, info in catalog.tables.items()
        if info.sync == sync
    ]
    todo = [t for t in todo if t[2]]
    if not todo:
        return []
    new: list[str] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for tbl, info, fields in todo:
            namer = partial(naming.column, info.type)
            new += catalog.ensure(
                db, tbl, info.type, sync, fields, now, history=info.history, namer=namer
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        catalog.load(db)
        raise
    return new


def rename_and_drop(db: sqlite3.Connection, catalog: TableCatalog, changes: list[Change]) -> None:
    """Apply the changes in one transaction: columns renamed or dropped, the table's
    triggers (which name its columns) made again."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for tbl in dict.fromkeys(c.table for c in changes):
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
                "AND name LIKE '\\_replicad\\_%' ESCAPE '\\'",
                (tbl,),
            ).fetchall():
                db.execute(f"DROP TRIGGER {quote(str(name))}")
        renames = [c for c in changes if c.new is not None]
        for c in changes:
            if c.new is None:
                db.execute(f"ALTER TABLE {quote(c.table)} DROP COLUMN {quote(c.column)}")
                db.execute(
                    "DELETE FROM _replicad_fields WHERE tbl = ? AND field = ?", (c.table, c.field)
                )
        # Through temporary names first: a new name may be one another column leaves.
        for i, c in enumerate(renames):
            q = quote(c.table)
            db.execute(f"ALTER TABLE {q} RENAME COLUMN {quote(c.column)} TO {quote(_tmp(i))}")
        for i, c in enumerate(renames):
            q, new = quote(c.table), str(c.new)
            db.execute(f"ALTER TABLE {q} RENAME COLUMN {quote(_tmp(i))} TO {quote(new)}")
            db.execute(
                "UPDATE _replicad_fields SET col = ? WHERE tbl = ? AND field = ?",
                (new, c.table, c.field),
            )
        catalog.load(db)
        for tbl in dict.fromkeys(c.table for c in changes):
            for trigger in table_triggers(tbl, catalog.tables[tbl]):
                db.execute(trigger)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        catalog.load(db)
        raise


def _tmp(i: int) -> str:
    return f"_replicad_renaming_{i}"
