"""Validation and normalization of names that come from the remote side.

Remote type and field names end up as SQL identifiers. They are validated (types) or
normalized (fields) here and always double-quoted when spliced, so a hostile name can
never become SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

MAX_NAME = 64
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$|^$")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")
# Columns every type table carries; a remote field may never take these names.
SYSTEM_COLUMNS = ("id", "_internal_id", "_revision", "_synced_at", "_pending")
_RESERVED_TABLE_PREFIXES = ("sqlite_", "replicad_", "_replicad_")
_ROWID_ALIASES = {"rowid", "oid", "_rowid_"}


class UnstorableName(ValueError):
    """A remote name that cannot become a table name."""


def quote(identifier: str) -> str:
    """Double-quote an identifier for SQLite, doubling embedded quotes."""
    return '"' + identifier.replace('"', '""') + '"'


def valid_prefix(prefix: str) -> bool:
    """Whether a sync's table prefix is acceptable (empty or identifier-like)."""
    return bool(_PREFIX_RE.match(prefix)) and len(prefix) <= 32


def table_name(prefix: str, type_name: str) -> str:
    """The replica table for a remote type, or raise UnstorableName saying why not."""
    if not isinstance(type_name, str) or not _TYPE_RE.match(type_name):
        raise UnstorableName(f"type name {type_name!r} is not a plain identifier")
    name = prefix + type_name
    if len(name) > MAX_NAME:
        raise UnstorableName(f"type name {type_name!r} is longer than {MAX_NAME} characters")
    if name.lower().startswith(_RESERVED_TABLE_PREFIXES):
        raise UnstorableName(f"type name {type_name!r} uses a reserved prefix")
    return name


def normalize_field(name: str) -> str:
    """Turn a remote field name into a column name (before collision handling).

    Non-identifier characters become ``_``; a leading digit or underscore gets an
    ``f`` prefix so a field never lands on a system column such as ``_revision``.
    """
    col = _NOT_IDENT.sub("_", name)[:MAX_NAME]
    if not col or col[0].isdigit() or col[0] == "_":
        col = "f" + (col if col.startswith("_") else "_" + col)
    if col.lower() in _ROWID_ALIASES:
        col = "f_" + col
    return col


def assign_columns(
    fields: list[str],
    taken: dict[str, str],
    reserved: Sequence[str] | None = None,
    namer: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """Columns for new fields, given the existing field→column map of the table.

    Column names are compared case-insensitively, as SQLite does; a clash gets a
    numeric suffix. Returns only the new assignments, in the order given. ``reserved``
    are the table's own columns (a type table's by default); ``namer`` gives the name
    a field is meant to have (a pull's mappings and field_normalization).
    """
    own = SYSTEM_COLUMNS if reserved is None else reserved
    used = {c.lower() for c in taken.values()} | {c.lower() for c in own}
    new: dict[str, str] = {}
    for f in fields:
        if f in taken or f in new or f == "id":
            continue
        base = normalize_field(namer(f) if namer is not None else f)
        col, n = base, 1
        while col.lower() in used:
            n += 1
            col = f"{base}_{n}"
        used.add(col.lower())
        new[f] = col
    return new
