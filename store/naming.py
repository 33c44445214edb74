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
the config is refused, saying so. An automatic name written in a new style applies to
fields first seen after the change (existing columns keep their names).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

from replicad.store.names import quote
from replicad.store.normalize import normalize
from replicad.store.tables import TableCatalog, table_triggers


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

    def describe(self) -> str:
        """One line for the config error or the log."""
        if self.new is None:
            return f"{self.table}.{self.column} (field {self.field!r}) would no longer be stored"
        return f"{self.table}.{self.column} (field {self.field!r}) would move to {self.new!r}"


def naming_changes(catalog: TableCatalog, sync: str, naming: Naming) -> list[Change]:
    """What the naming would move or drop in the sync's existing tables."""
    out: list[Change] = []
    for tbl, info in catalog.tables.items():
        if info.sync != sync:
            continue
        explicit = naming.mapped.get(info.type, {})
        for name, col in info.columns.items():
            if not naming.keeps(info.type, name):
                out.append(Change(tbl, name, col, None))
            elif name in explicit and explicit[name] != col:
                out.append(Change(tbl, name, col, explicit[name]))
    return out


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
        for c in changes:
            if c.new is None:
                db.execute(f"ALTER TABLE {quote(c.table)} DROP COLUMN {quote(c.column)}")
                db.execute(
                    "DELETE FROM _replicad_fields WHERE tbl = ? AND field = ?", (c.table, c.field)
                )
            else:
                q = quote(c.table)
                db.execute(f"ALTER TABLE {q} RENAME COLUMN {quote(c.column)} TO {quote(c.new)}")
                db.execute(
                    "UPDATE _replicad_fields SET col = ? WHERE tbl = ? AND field = ?",
                    (c.new, c.table, c.field),
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
