"""The diff engine: a source query compared with what was last sent, as outbox entries.

A diffed push sync (CONTRACT §7) names a query, run read-only on the replica or on
another app's SQLite file. Each cycle the query's rows are compared, by primary
identifier, with ``_replicad_diff`` (per sync and key: the values last enqueued, the
entry's internal id, the remote id once known). New keys, changed rows and, for
``mirror``, vanished keys become outbox entries under the sync's outbox name, with the
same states, tracking ids and retries as captured edits; the diff state is written in
the same transaction as the entries it produced, so a crash at any point neither
loses nor repeats a change.

The comparison runs in SQL: the replica is attached read-only to the connection on
the source, and only rows whose values differ come back to Python, so an unchanged
source costs one pass in SQLite and memory stays flat. A source not in WAL mode is
first copied page by page with SQLite's backup API (which lets go of the file between
steps) so the other app's writers are never blocked for long.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicad.store.names import quote
from replicad.store.values import SQLValue

DIFF_PREFIX = "diff:"
# Changed rows taken per write transaction: short transactions, bounded memory.
CHUNK = 2000
# Pages copied per backup step of a source not in WAL mode (its read lock is let go
# between steps, for a short pause in which the app's writers get their turn).
BACKUP_PAGES = 1024
BACKUP_PAUSE = 0.005
# Duplicate identifiers reported in an error (all are counted).
SHOWN_DUPLICATES = 5
_IID_NAMESPACE = uuid.UUID("8d3f6b0e-5c1a-4f57-9b61-3f0c2d7a9e41")


def outbox_name(sync: str) -> str:
    """The name a diffed sync's entries are kept under in the outbox (no table of the
    replica can have it: type tables are plain identifiers)."""
    return DIFF_PREFIX + sync


def is_diffed(tbl: str) -> bool:
    """Whether an outbox name is a diffed sync's."""
    return tbl.startswith(DIFF_PREFIX)


class SourceError(RuntimeError):
    """The source cannot be read as configured (missing file, query error, columns
    or identifier wrong); the run fails and nothing is sent. ``missing`` names the
    configured columns the source does not have."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass(frozen=True, slots=True)
class DiffSpec:
    """What a diffed sync reads and how its rows are compared."""

    sync: str
    query: str
    database: Path | None  # None: the replica
    key: str  # the primary identifier's source column
    columns: tuple[str, ...] | None  # the columns sent (None: every column)
    operation: str
    high_water_mark: str | None = None


@dataclass(slots=True)
class DiffCounts:
    """What one diff did."""

    rows: int = 0  # source rows that differed (or were new, or vanished)
    created: int = 0
    updated: int = 0
    deleted: int = 0
    invalid: int = 0  # rows without an identifier (or mark)


def internal_id(sync: str, key: SQLValue, mark: SQLValue = None) -> str:
    """The stable ``internal_id`` of a source row: the same sync and key always give
    the same id, so a create resent after any failure is recognised by the destination."""
    text = json.dumps([sync, _typed(key), _typed(mark)], ensure_ascii=False)
    return uuid.uuid5(_IID_NAMESPACE, text).hex


def key_text(value: SQLValue) -> str:
    """A key as JSON text that keeps its SQL type (for the keys kept at a mark)."""
    return json.dumps(_typed(value), ensure_ascii=False)


def _typed(value: SQLValue) -> Any:
    # 1 and '1' are different keys; bytes have no JSON form.
    if isinstance(value, bytes):
        return ["blob", value.hex()]
    return [type(value).__name__, value]


@contextmanager
def source_connection(spec: DiffSpec, replica: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection on the source, with the replica attached as ``rd``
    (read-only too) for the diff state. A source not in WAL mode is read from a copy."""
    path = replica if spec.database is None else spec.database
    if not path.is_file():
        raise SourceError(f"source database {path} does not exist")
    db = _open_ro(path)
    try:
        if spec.database is not None and _journal_mode(db) != "wal":
            # A long read of a rollback-journal file would block the app's writers for
            # its whole duration: read a copy taken in short steps instead.
            with tempfile.TemporaryDirectory(prefix="replicad-diff-") as tmp:
                copy = sqlite3.connect(Path(tmp) / "source.db", isolation_level=None)
                try:
                    db.backup(copy, pages=BACKUP_PAGES, sleep=BACKUP_PAUSE)
                finally:
                    copy.close()
                db.close()
                db = _open_ro(Path(tmp) / "source.db")
                _attach(db, replica)
                yield db
                return
        _attach(db, replica)
        yield db
    finally:
        db.close()


def _open_ro(path: Path) -> sqlite3.Connection:
    uri = f"file:{_uri_path(path)}?mode=ro"
    try:
        # mode=ro: the source (and the replica, attached the same way) cannot be
        # written through this connection; its own temp schema (staging) can.
        db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise SourceError(f"cannot open source database {path}: {e}") from None
    return db


def _uri_path(path: Path) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(str(path.resolve()))


def _journal_mode(db: sqlite3.Connection) -> str:
    return str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def _attach(db: sqlite3.Connection, replica: Path) -> None:
    if not replica.exists():
        return  # checks before the first run (validate, sync's start) need no state
    db.execute("ATTACH DATABASE ? AS rd", (f"file:{_uri_path(replica)}?mode=ro",))


def source_columns(db: sqlite3.Connection, query: str) -> list[str]:
    """The columns the source query gives (it is prepared, not run to the end)."""
    try:
        cur = db.execute(f"SELECT * FROM ({query}\n) LIMIT 0")
    except sqlite3.Error as e:
        raise SourceError(f"source query failed: {e}") from None
    return [str(d[0]) for d in cur.description]


def duplicate_keys(db: sqlite3.Connection, spec: DiffSpec) -> tuple[int, list[SQLValue]]:
    """How many identifiers the source has more than once, and a few of them."""
    k = quote(spec.key)
    try:
        rows = db.execute(
            f"SELECT {k} FROM ({spec.query}\n) WHERE {k} IS NOT NULL GROUP BY {k} "
            "HAVING count(*) > 1"
        ).fetchall()
    except sqlite3.Error as e:
        raise SourceError(f"source query failed: {e}") from None
    return len(rows), [r[0] for r in rows[:SHOWN_DUPLICATES]]


def check_source(db: sqlite3.Connection, spec: DiffSpec) -> list[str]:
    """The source's columns, after checking the identifier, mapped columns and the
    mark exist and the identifier is unique; raises SourceError saying what is wrong."""
    cols = source_columns(db, spec.query)
    needed = [spec.key, *(spec.columns or ()), spec.high_water_mark]
    missing = [c for c in needed if c is not None and c not in cols]
    if missing:
        names = list(dict.fromkeys(missing))
        raise SourceError(
            f"source has no column {', '.join(repr(c) for c in names)} "
            f"(its columns: {', '.join(cols)})",
            names,
        )
    if len(set(cols)) != len(cols):
        twice = sorted({c for c in cols if cols.count(c) > 1})
        raise SourceError(f"source query names column(s) {', '.join(twice)} twice; alias them")
    count, some = duplicate_keys(db, spec)
    if count:
        shown = ", ".join(repr(k) for k in some)
        raise SourceError(
            f"primary identifier {spec.key!r} is not unique: {count} value(s) occur more "
            f"than once (e.g. {shown}); nothing was sent"
        )
    return cols


# A real as its exact text (quote() writes as many digits as the value needs; json_*
# would round it to 15 and miss a change in the 16th); infinities stay as they are.
_EXACT = (
    "CASE WHEN typeof(q.{c}) = 'real' AND abs(q.{c}) <= 1.7976931348623157e308 "
    "THEN json(quote(q.{c})) ELSE q.{c} END"
)


def _values_sql(cols: Sequence[str]) -> str:
    """SQL for a row's compared values as JSON text: an array of objects by column name
    (json_object takes at most 127 arguments, so 60 columns per object), so values
    stored under an earlier column layout (other mappings) still decode by name."""
    parts = []
    for i in range(0, len(cols), 60):
        pairs = ", ".join(f"{_literal(c)}, " + _EXACT.format(c=quote(c)) for c in cols[i : i + 60])
        parts.append(f"json_object({pairs})")
    if not parts:
        return "'[]'"
    return "'[' || " + " || ',' || ".join(parts) + " || ']'"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _decode_values(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    out: dict[str, Any] = {}
    for chunk in json.loads(text):
        out.update(chunk)
    return out


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A source row that differs from what was last enqueued."""

    key: SQLValue
    values: dict[str, SQLValue]  # the compared columns, as the source has them
    fingerprint: str  # the compared values as stored in the diff state
    internal_id: str | None  # None: a new key
    remote_id: str | None
    previous: dict[str, Any] | None  # the values last enqueued (None: a new key)
    mark: SQLValue = None


def compared_columns(spec: DiffSpec, cols: list[str]) -> list[str]:
    """The columns a row is compared (and sent) by: the identifier first."""
    chosen = list(spec.columns) if spec.columns is not None else cols
    return [spec.key, *(c for c in chosen if c != spec.key)]


def changed_rows(
    db: sqlite3.Connection, spec: DiffSpec, compared: list[str]
) -> Iterator[SourceRow]:
    """Rows that are new or differ from the diff state (new only, for insert and
    append). For an append with a high-water mark: rows at or past the mark whose
    (key, mark) was not sent yet, in mark order."""
    fingerprint = _values_sql(compared)
    # ``+``: no affinity, so staging the rows in a temporary table keeps each value's
    # type ('7' stays text even where a UNION mixes column types).
    select = ", ".join(f"+q.{quote(c)}" for c in compared)
    # ``+q.key``: no affinity on the source's side, so the comparison is exact (1 and
    # '1' stay apart) and SQLite can use the diff state's primary key; with the
    # column's affinity it would scan the whole state for every source row.
    k = quote(spec.key)
    if spec.high_water_mark is not None:
        yield from _past_mark(db, spec, compared, select, fingerprint)
        return
    only_new = spec.operation in ("insert", "append")
    where = "d.key IS NULL" if only_new else f"d.vals IS NOT {fingerprint}"
    sql = (
        f"SELECT {select}, {fingerprint}, d.vals, d.internal_id, d.remote_id "
        f"FROM ({spec.query}\n) AS q LEFT JOIN rd._replicad_diff d "
        f"ON d.sync = ? AND d.key = +q.{k} WHERE q.{k} IS NOT NULL AND {where}"
    )
    n = len(compared)
    for row in _run(db, sql, (spec.sync,)):
        values = dict(zip(compared, row[:n], strict=True))
        yield SourceRow(
            key=values[spec.key],
            values=values,
            fingerprint=str(row[n]),
            internal_id=None if row[n + 2] is None else str(row[n + 2]),
            remote_id=None if row[n + 3] is None else str(row[n + 3]),
            previous=_decode_values(row[n + 1]),
        )


def _past_mark(
    db: sqlite3.Connection, spec: DiffSpec, compared: list[str], select: str, fingerprint: str
) -> Iterator[SourceRow]:
    assert spec.high_water_mark is not None
    m = quote(spec.high_water_mark)
    k = quote(spec.key)
    state = db.execute(
        "SELECT mark, mark_keys FROM rd._replicad_diff_syncs WHERE sync = ? AND mark_keys "
        "IS NOT NULL",
        (spec.sync,),
    ).fetchone()
    # Rows exactly at the mark may have been sent already (ties): their keys are kept
    # with the mark and skipped; everything strictly past it is new.
    mark, sent = (None, []) if state is None else (state[0], json.loads(state[1]))
    sql = (
        f"SELECT {select}, {fingerprint}, +q.{m} FROM ({spec.query}\n) AS q "
        f"WHERE q.{k} IS NOT NULL AND q.{m} IS NOT NULL"
        + ("" if state is None else f" AND q.{m} >= ?")
        + f" ORDER BY q.{m}, q.{k}"
    )
    skip = set(sent)
    n = len(compared)
    for row in _run(db, sql, () if state is None else (mark,)):
        values = dict(zip(compared, row[:n], strict=True))
        row_mark = row[n + 1]
        if row_mark == mark and key_text(values[spec.key]) in skip:
            continue
        yield SourceRow(values[spec.key], values, str(row[n]), None, None, None, row_mark)


def vanished_keys(
    db: sqlite3.Connection, spec: DiffSpec
) -> Iterator[tuple[SQLValue, str, str | None, bool]]:
    """(key, internal id, remote id, create confirmed) of keys last enqueued that the
    source no longer has."""
    k = quote(spec.key)
    sql = (
        "SELECT d.key, d.internal_id, d.remote_id, d.confirmed FROM rd._replicad_diff d "
        f"WHERE d.sync = ? AND d.key NOT IN (SELECT +q.{k} FROM ({spec.query}\n) AS q "
        f"WHERE q.{k} IS NOT NULL)"
    )
    for key, iid, rid, confirmed in _run(db, sql, (spec.sync,)):
        yield key, str(iid), None if rid is None else str(rid), bool(confirmed)


def invalid_rows(db: sqlite3.Connection, spec: DiffSpec) -> int:
    """Source rows without an identifier: never sent, counted as invalid."""
    k = quote(spec.key)
    # An append's rows without a mark are never read either.
    mark = "" if spec.high_water_mark is None else f" OR {quote(spec.high_water_mark)} IS NULL"
    try:
        return int(
            db.execute(f"SELECT count(*) FROM ({spec.query}\n) WHERE {k} IS NULL{mark}").fetchone()[
                0
            ]
        )
    except sqlite3.Error as e:
        raise SourceError(f"source query failed: {e}") from None


def _run(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql``, staged in a temporary table first.

    The query reads the source and the replica's diff state in one statement, which
    ends (and lets go of both files' read snapshots) before the first row is
    handed out. The caller then commits outbox entries between chunks: a read held
    open on the replica meanwhile would keep its WAL from being reset, and every
    commit of a long diff would make it grow.
    """
    try:
        db.execute("DROP TABLE IF EXISTS temp._replicad_stage")
        db.execute(f"CREATE TEMP TABLE _replicad_stage AS {sql}", args)
        cur = db.execute("SELECT * FROM temp._replicad_stage ORDER BY rowid")
        while rows := cur.fetchmany(500):
            yield from rows
        db.execute("DROP TABLE IF EXISTS temp._replicad_stage")
    except sqlite3.Error as e:
        text = str(e)
        if "BLOB" in text:
            text += " (a source column holds binary data, which cannot be sent as JSON)"
        raise SourceError(f"source query failed: {text}") from None
