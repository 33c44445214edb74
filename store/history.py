"""A pull ``append``'s change history: every item received, one row each, never updated.

Under ``operation = "append"`` (CONTRACT §7) a pull keeps no ``<type>`` table: each
item (deletes too) is appended to ``<prefix><type>_history`` with ``_seq`` (the order
received), ``_event_type`` (``updated`` or ``deleted``), ``_revision``,
``_received_at`` and the record's fields. A redelivered item — the same record, event
and revision, as after a crash before its ack went out — is not appended again (the
table's UNIQUE constraint). Apps read the table; the triggers refuse their edits.
"""

from __future__ import annotations

import sqlite3

from replicad.store.model import ApplyResult, RecordChange
from replicad.store.names import MAX_NAME, UnstorableName, quote
from replicad.store.tables import TableCatalog
from replicad.store.values import to_sql

SUFFIX = "_history"


def history_name(table: str) -> str:
    """The history table of a type's table name."""
    name = table + SUFFIX
    if len(name) > MAX_NAME:
        raise UnstorableName(f"history table name {name!r} is too long")
    return name


def append_history(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    tbl: str,
    changes: list[RecordChange],
    now: str,
    result: ApplyResult,
) -> None:
    """Append the page's items for one type, in the order they came (inside the
    page's transaction); redelivered ones are counted stale."""
    columns = catalog.tables[tbl].columns
    fields = list(columns)
    cols = "".join(f", {quote(columns[f])}" for f in fields)
    marks = ", ?" * len(fields)
    before = db.total_changes
    db.executemany(
        f"INSERT OR IGNORE INTO {quote(tbl)} (id, _event_type, _revision, _received_at{cols}) "
        f"VALUES (?, ?, ?, ?{marks})",
        [
            (
                c.id,
                "deleted" if c.deleted else "updated",
                c.revision,
                now,
                *(to_sql(c.data.get(f)) for f in fields),
            )
            for c in changes
        ],
    )
    added = db.total_changes - before
    result.inserted += added
    result.stale += len(changes) - added
