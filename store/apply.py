"""Applying one page of queue items to the replica, in one transaction.

Rows, tombstones, quarantined items, failed objects, the page's ack keys and the
sync's progress commit together, so an ack key is never recorded (or sent) for an
item that is not in the replica, and a crash at any moment leaves either the whole
page or none of it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

import aiosqlite

from store.model import ApplyResult, BadItem, PageBatch, PullTarget, RecordChange
from store.names import UnstorableName, quote, table_name
from store.plan import plan_table, split_runs
from store.tables import TableCatalog
from store.values import SQLValue, dumps_raw, to_sql


def _internal_id() -> str:
    return uuid.uuid4().hex


async def apply_page(
    db: aiosqlite.Connection,
    catalog: TableCatalog,
    target: PullTarget,
    batch: PageBatch,
    now: str,
) -> ApplyResult:
    """Apply a page; everything or nothing is committed."""
    result = ApplyResult()
    routed, bad = _route(catalog, target, batch.changes)
    bad.extend(batch.bad_items)
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("INSERT INTO _replicad_applying (flag) VALUES (1)")
        fields: dict[str, dict[str, None]] = defaultdict(dict)
        for tbl, change in routed:
            fields[tbl].update(dict.fromkeys(change.data))
        for tbl, flds in fields.items():
            type_ = next(c.type for t, c in routed if t == tbl)
            result.new_columns += await catalog.ensure(db, tbl, type_, target.sync, list(flds), now)
        for run in split_runs(routed):
            by_table: dict[str, list[RecordChange]] = defaultdict(list)
            for tbl, change in run:
                by_table[tbl].append(change)
            for tbl, changes in by_table.items():
                await _apply_table(db, catalog, tbl, changes, target, now, result)
        await _quarantine(db, target.sync, bad, now)
        result.quarantined = len(bad)
        await _failed_objects(db, target, batch, routed, now)
        keys = [c.ack_key for c in batch.changes] + [b.ack_key for b in bad if b.ack_key]
        # Routed changes and quarantined ones overlap only by ack key; dedupe.
        unique = list(dict.fromkeys(keys))
        await db.executemany(
            "INSERT OR IGNORE INTO _replicad_pending_acks (connection, ack_key) VALUES (?, ?)",
            [(target.connection, k) for k in unique],
        )
        result.ack_keys = len(unique)
        applied = result.inserted + result.updated + result.deleted
        await db.execute(
            "UPDATE _replicad_syncs SET items_done = coalesce(items_done, 0) + ?, "
            "records_applied = records_applied + ?, updated_at = ? WHERE sync = ?",
            (len(batch.changes) + len(batch.bad_items), applied, now, target.sync),
        )
        await db.execute("DELETE FROM _replicad_applying")
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.rollback()
        raise
    return result


def _route(
    catalog: TableCatalog, target: PullTarget, changes: Iterable[RecordChange]
) -> tuple[list[tuple[str, RecordChange]], list[BadItem]]:
    """Pair each change with its table; changes that cannot be stored become BadItems."""
    routed: list[tuple[str, RecordChange]] = []
    bad: list[BadItem] = []
    for change in changes:
        try:
            tbl = table_name(target.prefix, change.type)
        except UnstorableName as e:
            bad.append(BadItem(_raw(change), str(e), change.ack_key))
            continue
        owner = catalog.tables.get(tbl)
        if owner is not None and owner.sync != target.sync:
            reason = f"table {tbl} belongs to sync {owner.sync!r}"
            bad.append(BadItem(_raw(change), reason, change.ack_key))
            continue
        routed.append((tbl, change))
    return routed, bad


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


async def _revisions(
    db: aiosqlite.Connection, sql: str, head: tuple[SQLValue, ...], ids: list[int]
) -> dict[int, int]:
    marks = ",".join("?" * len(ids))
    rows = await db.execute_fetchall(sql.format(marks=marks), (*head, *ids))
    return {int(r[0]): int(r[1]) for r in rows}


async def _apply_table(
    db: aiosqlite.Connection,
    catalog: TableCatalog,
    tbl: str,
    changes: list[RecordChange],
    target: PullTarget,
    now: str,
    result: ApplyResult,
) -> None:
    q = quote(tbl)
    ids = [c.id for c in changes]
    existing = await _revisions(
        db, f"SELECT id, _revision FROM {q} WHERE id IN ({{marks}})", (), ids
    )
    tombs = await _revisions(
        db,
        "SELECT id, revision FROM _replicad_tombstones WHERE tbl = ? AND id IN ({marks})",
        (tbl,),
        ids,
    )
    plan = plan_table(changes, existing, tombs, apply_deletes=target.apply_deletes)
    result.stale += plan.stale
    columns = catalog.tables[tbl].columns
    fields = list(columns)
    cols = ", ".join(quote(columns[f]) for f in fields)
    if plan.revived:
        await db.executemany(
            "DELETE FROM _replicad_tombstones WHERE tbl = ? AND id = ?",
            [(tbl, i) for i in plan.revived],
        )
    if plan.inserts:
        marks = ", ".join("?" * (len(fields) + 4))
        sep = ", " if fields else ""
        await db.executemany(
            f"INSERT INTO {q} (id, _internal_id, _revision, _synced_at{sep}{cols}) "
            f"VALUES ({marks})",
            [
                (c.id, _internal_id(), c.revision, now, *(to_sql(c.data.get(f)) for f in fields))
                for c in plan.inserts
            ],
        )
        result.inserted += len(plan.inserts)
    if plan.updates:
        sets = "".join(f", {quote(columns[f])} = ?" for f in fields)
        await db.executemany(
            f"UPDATE {q} SET _revision = ?, _synced_at = ?{sets} WHERE id = ?",
            [
                (c.revision, now, *(to_sql(c.data.get(f)) for f in fields), c.id)
                for c in plan.updates
            ],
        )
        result.updated += len(plan.updates)
    if plan.deletes:
        await db.executemany(f"DELETE FROM {q} WHERE id = ?", [(i,) for i, _ in plan.deletes])
        await db.executemany(
            "INSERT OR REPLACE INTO _replicad_tombstones (tbl, id, revision, deleted_at) "
            "VALUES (?, ?, ?, ?)",
            [(tbl, i, rev, now) for i, rev in plan.deletes],
        )
        result.deleted += len(plan.deletes)


async def _quarantine(db: aiosqlite.Connection, sync: str, bad: list[BadItem], now: str) -> None:
    if bad:
        await db.executemany(
            "INSERT INTO _replicad_quarantine (sync, received_at, reason, ack_key, raw) "
            "VALUES (?, ?, ?, ?, ?)",
            [(sync, now, b.reason, b.ack_key, b.raw) for b in bad],
        )


async def _failed_objects(
    db: aiosqlite.Connection,
    target: PullTarget,
    batch: PageBatch,
    routed: list[tuple[str, RecordChange]],
    now: str,
) -> None:
    """Remember objects the server failed to send; forget them once they arrive."""
    rows = await db.execute_fetchall(
        "SELECT EXISTS (SELECT 1 FROM _replicad_failed_objects WHERE sync = ?)", (target.sync,)
    )
    if routed and next(iter(rows))[0]:
        await db.executemany(
            "DELETE FROM _replicad_failed_objects WHERE sync = ? AND type = ? AND id = ?",
            [(target.sync, c.type, str(c.id)) for _, c in routed],
        )
    if batch.failed_objects:
        await db.executemany(
            "INSERT INTO _replicad_failed_objects (sync, type, id, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sync, type, id) DO UPDATE SET "
            "last_seen = excluded.last_seen, times = times + 1",
            [(target.sync, f.type, f.id, now, now) for f in batch.failed_objects],
        )
