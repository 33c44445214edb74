"""Applying one page of queue items to the replica, in one transaction.

Rows, tombstones, quarantined items, failed objects, the page's ack keys and the
sync's progress commit together, so an ack key is never recorded (or sent) for an
item that is not in the replica, and a crash at any moment leaves either the whole
page or none of it.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

from replicad.connectors.pull_model import dumps_raw
from replicad.store.history import append_history, history_name
from replicad.store.identity import note_seen
from replicad.store.local_edits import (
    cancel_entries,
    conflict_mode,
    has_open_edits,
    journal,
    open_edits,
    row_values,
    settle_pending_flag,
)
from replicad.store.model import ApplyResult, BadItem, PageBatch, PullTarget, RecordChange
from replicad.store.names import UnstorableName, quote, table_name
from replicad.store.outbox import adopt_pulled_creates
from replicad.store.plan import (
    UNKNOWN_REVISION,
    TablePlan,
    merge_remote,
    plan_table,
    split_runs,
)
from replicad.store.tables import TableCatalog
from replicad.store.values import SQLValue, to_sql

_ENCODE_KEYS = json.JSONEncoder(separators=(",", ":")).encode

# Unique across processes (random salt) and within one (counter), without a syscall
# per row as uuid4/os.urandom would need.
_PROCESS_SALT = os.urandom(6).hex()
_SEQUENCE = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _internal_id() -> str:
    """A UUIDv7-like key: time-ordered, so index inserts append instead of scattering
    over the whole B-tree (random keys made large initial syncs 2-3x slower)."""
    return f"{time.time_ns() // 1_000_000:012x}{_PROCESS_SALT}{next(_SEQUENCE) & 0xFFFFFFFF:08x}"


def apply_page(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    target: PullTarget,
    batch: PageBatch,
    now: str,
    *,
    exact: bool = False,
) -> ApplyResult:
    """Apply a page; everything or nothing is committed.

    Values are bound as they came (``store.values`` registers the adapters), which
    refuses an integer past 64 bits with OverflowError, before anything commits; the
    caller then applies the page again with ``exact``, which converts every value with
    ``to_sql`` (such an integer is kept as its decimal text).
    """
    result = ApplyResult()
    routed, bad, skipped = _route(db, catalog, target, batch.changes)
    bad.extend(batch.bad_items)
    result.skipped = skipped
    history = target.operation == "append"
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO _replicad_applying (flag) VALUES (1)")
        fields: dict[str, dict[str, None]] = defaultdict(dict)
        per_table: dict[str, list[RecordChange]] = defaultdict(list)
        for tbl, change in routed:
            fields[tbl].update(dict.fromkeys(change.data))
            per_table[tbl].append(change)
        for tbl, flds in fields.items():
            changes = per_table[tbl]
            type_ = changes[0].type
            namer = None
            if target.naming is not None:
                namer = partial(target.naming.column, type_)
                # A mapped field has its column from the start, NULL until it arrives.
                flds.update(dict.fromkeys(target.naming.mapped.get(type_, ())))
            result.new_columns += catalog.ensure(
                db, tbl, type_, target.sync, list(flds), now, history=history, namer=namer
            )
            _learn_kinds(db, catalog, tbl, changes)
        for tbl, changes in per_table.items() if history else ():
            append_history(db, catalog, tbl, changes, now, result)
        for run in split_runs(routed) if not history else ():
            by_table: dict[str, list[RecordChange]] = defaultdict(list)
            for tbl, change in run:
                by_table[tbl].append(change)
            for tbl, changes in by_table.items():
                _apply_table(db, catalog, tbl, changes, target, now, result, exact)
        if target.resync:
            note_seen(db, _seen(target, routed, bad), target.connection, target.resync)
        _quarantine(db, target.sync, bad, now)
        result.quarantined = len(bad)
        _failed_objects(db, target, batch, routed, now)
        keys = [c.ack_key for c in batch.changes] + [b.ack_key for b in bad if b.ack_key]
        # Routed changes and quarantined ones overlap only by ack key; dedupe.
        unique = list(dict.fromkeys(keys))
        if unique:
            db.execute(
                "INSERT INTO _replicad_pending_acks (connection, keys, n) VALUES (?, ?, ?)",
                (target.connection, _ENCODE_KEYS(unique), len(unique)),
            )
        result.ack_keys = len(unique)
        applied = result.inserted + result.updated + result.deleted
        db.execute(
            "UPDATE _replicad_syncs SET items_done = coalesce(items_done, 0) + ?, "
            "records_applied = records_applied + ?, updated_at = ? WHERE sync = ?",
            (len(batch.changes) + len(batch.bad_items), applied, now, target.sync),
        )
        db.execute("DELETE FROM _replicad_applying")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


# SQLite's default limit is 2000 columns per table; five are the replica's own.
MAX_FIELDS = 1990


def _seen(
    target: PullTarget, routed: list[tuple[str, RecordChange]], bad: list[BadItem]
) -> list[tuple[str, int] | None]:
    """What a full pull's page brought: stored records, quarantined records whose id is
    known (they exist remotely), and None for an item whose record is unknown."""
    out: list[tuple[str, int] | None] = [(tbl, c.id) for tbl, c in routed]
    for b in bad:
        if b.id is None or b.type is None:
            out.append(None)
            continue
        try:
            out.append((table_name(target.prefix, b.type), b.id))
        except UnstorableName:
            continue  # no table can hold it: no row of it to keep
    return out


def _route(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    target: PullTarget,
    changes: Iterable[RecordChange],
) -> tuple[list[tuple[str, RecordChange]], list[BadItem], int]:
    """Pair each change with its table; changes that cannot be stored become BadItems.

    Checked here, before the page's transaction, so that one such item is quarantined
    instead of failing the page on every attempt: a name that is no identifier, a
    table of another sync, a new type whose name differs only in case from an existing
    table (SQLite's names are case-insensitive) or names an app's own table, and a
    type that would pass SQLite's column limit.
    """
    routed: list[tuple[str, RecordChange]] = []
    bad: list[BadItem] = []
    skipped = 0
    known: dict[str, set[str]] = {}  # fields per table, with those this page adds
    names: dict[str, str] = {}  # type → table, for the page (a page has few types)
    for change in changes:
        if target.types is not None and change.type not in target.types:
            skipped += 1  # not kept, but acknowledged with the page
            continue
        naming = target.naming
        if naming is not None and not naming.keep_all:
            # specific_properties: only the mapped fields are stored.
            kept = {f: v for f, v in change.data.items() if naming.keeps(change.type, f)}
            if len(kept) != len(change.data):
                change = replace(change, data=kept)
        tbl = names.get(change.type)
        if tbl is None:
            try:
                tbl = table_name(target.prefix, change.type)
                if target.operation == "append":
                    tbl = history_name(tbl)
            except UnstorableName as e:
                bad.append(BadItem(_raw(change), str(e), change.ack_key))  # no table: no row
                continue
            names[change.type] = tbl
        owner = catalog.tables.get(tbl)
        reason = None
        if owner is not None and owner.sync != target.sync:
            reason = f"table {tbl} belongs to sync {owner.sync!r}"
        elif owner is None and tbl not in known:
            reason = _name_taken(db, catalog, tbl, known)
        if reason is None:
            fields = known.get(tbl)
            if fields is None:
                fields = known[tbl] = {"id", *(owner.columns if owner is not None else ())}
            if not fields.issuperset(change.data):  # the usual case costs one C call
                new = [f for f in change.data if f not in fields]
                # fields holds "id", which has no column of its own.
                if len(fields) - 1 + len(new) > MAX_FIELDS:
                    reason = f"type {change.type} would have more than {MAX_FIELDS} fields"
                else:
                    fields.update(new)
        if reason is not None:
            bad.append(BadItem(_raw(change), reason, change.ack_key, change.type, change.id))
            continue
        routed.append((tbl, change))
    return routed, bad, skipped


def _name_taken(
    db: sqlite3.Connection, catalog: TableCatalog, tbl: str, page: Iterable[str]
) -> str | None:
    """Why a new type's table name cannot be used, if it cannot (``page``: the tables
    this page already routes to, new ones included)."""
    lower = tbl.lower()
    for name in (*catalog.tables, *page):
        if name.lower() == lower:
            return f"type name differs only in case from table {name}"
    row = db.execute(
        "SELECT name FROM sqlite_master WHERE lower(name) = ? LIMIT 1", (lower,)
    ).fetchone()
    if row is not None:
        return f"table name {tbl} is taken by {row[0]}, which replicad does not manage"
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict | list):
        return "json"
    return "scalar"


def _learn_kinds(
    db: sqlite3.Connection, catalog: TableCatalog, tbl: str, changes: list[RecordChange]
) -> None:
    """Record each field's JSON kind from its first non-null value (see values.from_sql)."""
    info = catalog.tables[tbl]
    unknown = {f: c for f, c in info.columns.items() if c not in info.kinds}
    if not unknown:
        return
    found: dict[str, str] = {}
    for change in changes:
        for f, col in unknown.items():
            value = change.data.get(f)
            if value is not None and col not in found:
                found[col] = _kind(value)
        if len(found) == len(unknown):
            break
    catalog.learn_kinds(db, tbl, found)


def _raw(change: RecordChange) -> str:
    meta = {
        "type": change.type,
        "sync": {
            "event_type": "deleted" if change.deleted else "updated",
            "ack_key": change.ack_key,
            "revision": change.revision,
        },
    }
    return dumps_raw({"data": change.data, "meta": meta})


def _revisions(
    db: sqlite3.Connection, sql: str, head: tuple[SQLValue, ...], ids: list[int]
) -> dict[int, int]:
    marks = ",".join("?" * len(ids))
    rows = db.execute(sql.format(marks=marks), (*head, *ids))
    return {int(r[0]): int(r[1]) for r in rows}


def _apply_table(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    tbl: str,
    changes: list[RecordChange],
    target: PullTarget,
    now: str,
    result: ApplyResult,
    exact: bool,
) -> None:
    q = quote(tbl)
    ids = [c.id for c in changes]
    existing = _revisions(db, f"SELECT id, _revision FROM {q} WHERE id IN ({{marks}})", (), ids)
    # One probe first: most pages (an initial sync's every page) meet no tombstone
    # of their table, and a hundred probes for none cost more.
    any_tomb = db.execute(
        "SELECT EXISTS (SELECT 1 FROM _replicad_tombstones WHERE tbl = ?)", (tbl,)
    ).fetchone()[0]
    tombs = (
        _revisions(
            db,
            "SELECT id, revision FROM _replicad_tombstones WHERE tbl = ? AND id IN ({marks})",
            (tbl,),
            ids,
        )
        if any_tomb
        else {}
    )
    plan = plan_table(
        changes, existing, tombs, apply_deletes=target.apply_deletes, operation=target.operation
    )
    result.stale += plan.stale
    columns = catalog.tables[tbl].columns
    fields = list(columns)
    cols = ", ".join(quote(columns[f]) for f in fields)
    if plan.revived:
        db.executemany(
            "DELETE FROM _replicad_tombstones WHERE tbl = ? AND id = ?",
            [(tbl, i) for i in plan.revived],
        )
    if plan.inserts:
        marks = ", ".join("?" * (len(fields) + 4))
        sep = ", " if fields else ""
        db.executemany(
            f"INSERT INTO {q} (id, _internal_id, _revision, _synced_at{sep}{cols}, _pending) "
            f"VALUES ({marks}, 0)",
            [
                (c.id, _internal_id(), c.revision, now, *map(to_sql, map(c.data.get, fields)))
                for c in plan.inserts
            ]
            if exact
            else [
                (c.id, _internal_id(), c.revision, now, *map(c.data.get, fields))
                for c in plan.inserts
            ],
        )
        result.inserted += len(plan.inserts)
    if (plan.updates or plan.deletes) and has_open_edits(db, tbl):
        _apply_to_edited_rows(db, tbl, [columns[f] for f in fields], fields, plan, now, result)
    if plan.updates:
        sets = "".join(f", {quote(columns[f])} = ?" for f in fields)
        db.executemany(
            f"UPDATE {q} SET _revision = ?, _synced_at = ?{sets} WHERE id = ?",
            [(c.revision, now, *map(to_sql, map(c.data.get, fields)), c.id) for c in plan.updates]
            if exact
            else [(c.revision, now, *map(c.data.get, fields), c.id) for c in plan.updates],
        )
        result.updated += len(plan.updates)
    if plan.deletes:
        db.executemany(f"DELETE FROM {q} WHERE id = ?", [(i,) for i, _ in plan.deletes])
        db.executemany(
            "INSERT OR REPLACE INTO _replicad_tombstones (tbl, id, revision, deleted_at) "
            "VALUES (?, ?, ?, ?)",
            [(tbl, i, rev, now) for i, rev in plan.deletes],
        )
        result.deleted += len(plan.deletes)
    if plan.unseen_deletes:
        db.executemany(
            "INSERT OR IGNORE INTO _replicad_tombstones (tbl, id, revision, deleted_at) "
            "VALUES (?, ?, ?, ?)",
            [(tbl, i, UNKNOWN_REVISION, now) for i in plan.unseen_deletes],
        )
    pulled = [c.id for c in plan.inserts] + [c.id for c in plan.updates]
    if pulled:
        adopt_pulled_creates(db, catalog, tbl, pulled, now)


def _apply_to_edited_rows(
    db: sqlite3.Connection,
    tbl: str,
    cols: list[str],
    fields: list[str],
    plan: TablePlan,
    now: str,
    result: ApplyResult,
) -> None:
    """Merge pulled changes into rows with unconfirmed local edits, journaling what loses.

    Handles those rows itself and removes them from ``plan.updates``; remote deletes
    of edited rows stay in the plan (the row goes) after their edits are journaled and
    their entries cancelled.
    """
    ids = [c.id for c in plan.updates] + [i for i, _ in plan.deletes]
    edits = open_edits(db, tbl, ids)
    if not edits:
        return
    mode = conflict_mode(db, tbl)
    q = quote(tbl)
    plain: list[RecordChange] = []
    for c in plan.updates:
        edit = edits.get(c.id)
        if edit is None:
            plain.append(c)
            continue
        local = row_values(db, tbl, c.id, cols)
        remote = {col: to_sql(c.data.get(f)) for col, f in zip(cols, fields, strict=True)}
        write, conflicts = merge_remote(local, remote, edit.columns, mode)
        sets = "".join(f", {quote(col)} = ?" for col in write)
        db.execute(
            f"UPDATE {q} SET _revision = ?, _synced_at = ?{sets} WHERE id = ?",
            (c.revision, now, *write.values(), c.id),
        )
        resolution = "local kept" if mode == "merge" else "remote won"
        result.conflicts += journal(
            db, tbl, edit.internal_id, c.id, conflicts, c.revision, resolution, now
        )
        if mode == "remote":
            # Entries already sent cannot be called back; the rest are dropped.
            cancel_entries(
                db, tbl, edit.internal_id, "remote won a conflict (conflict = remote)", now,
                ("pending", "rejected"),
            )  # fmt: skip
            settle_pending_flag(db, tbl, edit.internal_id)
        result.updated += 1
    plan.updates = plain
    for id_, revision in plan.deletes:
        edit = edits.get(id_)
        if edit is None:
            continue
        local = row_values(db, tbl, id_, cols)
        lost = [(col, local.get(col), None) for col in (edit.columns or cols)]
        result.conflicts += journal(
            db, tbl, edit.internal_id, id_, lost, revision, "deleted remotely", now
        )
        cancel_entries(db, tbl, edit.internal_id, "record deleted remotely", now)


def _quarantine(db: sqlite3.Connection, sync: str, bad: list[BadItem], now: str) -> None:
    if bad:
        db.executemany(
            "INSERT INTO _replicad_quarantine (sync, received_at, reason, ack_key, raw) "
            "VALUES (?, ?, ?, ?, ?)",
            [(sync, now, b.reason, b.ack_key, b.raw) for b in bad],
        )


def _failed_objects(
    db: sqlite3.Connection,
    target: PullTarget,
    batch: PageBatch,
    routed: list[tuple[str, RecordChange]],
    now: str,
) -> None:
    """Remember objects the server failed to send; forget them once they arrive."""
    # Usually none are recorded: check once instead of a delete per item.
    if (
        routed
        and db.execute(
            "SELECT EXISTS (SELECT 1 FROM _replicad_failed_objects WHERE sync = ?)", (target.sync,)
        ).fetchone()[0]
    ):
        db.executemany(
            "DELETE FROM _replicad_failed_objects WHERE sync = ? AND type = ? AND id = ?",
            [(target.sync, c.type, str(c.id)) for _, c in routed],
        )
    if batch.failed_objects:
        db.executemany(
            "INSERT INTO _replicad_failed_objects (sync, type, id, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sync, type, id) DO UPDATE SET "
            "last_seen = excluded.last_seen, times = times + 1",
            [
                (target.sync, _storable(f.type), _storable(f.id), now, now)
                for f in batch.failed_objects
            ],
        )


def _storable(text: str) -> str:
    """Text SQLite can keep: a lone surrogate (a JSON escape) is written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
