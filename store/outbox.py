"""The outbox: taking local edits to push, and recording what the destination said.

Entries are written by the capture triggers (``store.tables``) in the app's own
transaction. The daemon moves them pending → in_flight (payload and tracking id fixed
in the same transaction, so a resend after a crash or a lost answer is identical) →
confirmed | rejected. Every function here is one short write transaction.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from replicad.connectors.push_model import Associated, Op, PushItem
from replicad.store.diff import DIFF_PREFIX, is_diffed
from replicad.store.local_edits import journal, open_columns, settle_pending_flag
from replicad.store.model import OutboxBatch, Outcome, OutcomeCounts, PushSource
from replicad.store.names import quote
from replicad.store.schema import APPLICATION_ID
from replicad.store.tables import TableCatalog, TableInfo
from replicad.store.values import SQLValue, from_sql, spellings


def utcnow() -> str:
    """Timestamps in the replica: ISO 8601, UTC, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Confirmed and cancelled entries stay visible in replicad_outbox this long.
KEEP_FINISHED = "-7 days"


def register_push(db: sqlite3.Connection, sources: Iterable[PushSource]) -> None:
    """Make exactly these tables writable by apps (the guard triggers read this)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM _replicad_push")
        db.executemany(
            "INSERT INTO _replicad_push (tbl, sync, conflict, operation, can_delete, "
            "creates_may_merge) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    s.table,
                    s.sync,
                    s.conflict,
                    s.operation,
                    s.operation == "mirror",
                    s.creates_may_merge,
                )
                for s in sources
            ],
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def take_batch(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    source: PushSource,
    limit: int,
    now: str,
    busy: Collection[str] = (),
) -> OutboxBatch | None:
    """The next batch to send: an unconfirmed in-flight batch first (resent as it was),
    else up to ``limit`` pending entries, oldest first, but those ``held`` back. None
    when nothing can be sent now.

    ``busy``: tracking ids of batches being sent right now (batches overlap): never
    taken again, and no entry of a row with an entry among them is taken either, so
    the edits of one row reach the destination in the order they were made.
    """
    info = catalog.tables.get(source.table)
    if info is None and not is_diffed(source.table):
        return None
    db.execute("BEGIN IMMEDIATE")
    try:
        batch = _in_flight(db, source.table, now, busy) or _new_batch(
            db, catalog, info, source, limit, now, bool(busy)
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return batch


def held(source: PushSource) -> str:
    """SQL over an outbox entry ``o``: `` AND NOT`` (it waits for its row's create).

    An update of a row whose create is in doubt waits for it to be settled (the pull
    brings the record, or the operator retries): sent before, it could change or make
    a record the create then makes again. Where updates name the record by its id, it
    also waits for a create accepted without one (sent before, it would be a second
    create) — for as long as such an entry is kept (KEEP_FINISHED): then the edit goes,
    and its refusal is visible. A diffed source's record is found by its identifier
    instead.
    """
    known = "c.state = 'in_doubt'" + (
        " OR (c.state = 'confirmed' AND c.finished_at >= "
        f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{KEEP_FINISHED}'))"
        if source.updates_need_id and not is_diffed(source.table)
        else ""
    )
    return (
        " AND NOT (o.op = 'update' AND EXISTS (SELECT 1 FROM _replicad_outbox c "
        "WHERE c.tbl = o.tbl AND c.internal_id = o.internal_id AND c.op = 'insert' "
        f"AND c.awaiting_id = 1 AND ({known})))"
    )


def work_query(source: PushSource) -> str:
    """SQL (one parameter: the table) for whether a push source has entries to send:
    in flight unconfirmed, or pending and not held (``held``)."""
    return (
        "SELECT EXISTS (SELECT 1 FROM _replicad_outbox o WHERE o.tbl = ? AND "
        f"(o.state = 'in_flight' OR (o.state = 'pending'{held(source)})))"
    )


def _in_flight(
    db: sqlite3.Connection, tbl: str, now: str, busy: Collection[str]
) -> OutboxBatch | None:
    row = db.execute(
        "SELECT batch FROM _replicad_outbox WHERE state = 'in_flight' AND tbl = ? "
        "AND batch NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT 1",
        (tbl, json.dumps(list(busy))),
    ).fetchone()
    if row is None:
        return None
    tracking = str(row[0])
    items = [
        _decode_item(int(seq), str(iid), str(op), str(payload))
        for seq, iid, op, payload in db.execute(
            "SELECT seq, internal_id, op, payload FROM _replicad_outbox "
            "WHERE state = 'in_flight' AND batch = ? ORDER BY seq",
            (tracking,),
        )
    ]
    db.execute(
        "UPDATE _replicad_outbox SET attempts = attempts + 1, sent_at = ?, updated_at = ? "
        "WHERE state = 'in_flight' AND batch = ?",
        (now, now, tracking),
    )
    return OutboxBatch(tracking, tuple(items), resend=True)


def _new_batch(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    info: TableInfo | None,
    source: PushSource,
    limit: int,
    now: str,
    overlapping: bool,
) -> OutboxBatch | None:
    tbl = source.table
    # While other batches are out, a row with an entry among them waits for it.
    wait = (
        " AND NOT EXISTS (SELECT 1 FROM _replicad_outbox f WHERE f.tbl = o.tbl "
        "AND f.internal_id = o.internal_id AND f.state = 'in_flight')"
        if overlapping
        else ""
    )
    hold = held(source)
    pending = db.execute(
        "SELECT seq, internal_id, op, fields, payload, remote_id "
        f"FROM _replicad_outbox o WHERE state = 'pending' AND tbl = ?{wait}{hold} "
        "ORDER BY seq LIMIT ?",
        (tbl, limit),
    ).fetchall()
    if not pending:
        return None
    tracking = str(uuid.uuid4())
    items: list[PushItem] = []
    for seq, iid, op, fields, payload, remote in pending:
        if op == "delete" or info is None:
            # A delete (its row is gone) or a diffed source's entry: the values were
            # fixed when the entry was made.
            item = _fixed_item(db, tbl, int(seq), str(iid), str(op), payload, remote)
            encoded = _encode_item(item)
            db.execute(
                "UPDATE _replicad_outbox SET state = 'in_flight', batch = ?, payload = ?, "
                "attempts = attempts + 1, sent_at = ?, updated_at = ?, creates_may_merge = ? "
                "WHERE seq = ?",
                (tracking, encoded, now, now, source.creates_may_merge, seq),
            )
            items.append(item)
            continue
        row = _row(db, tbl, info, str(iid))
        if row is None:
            # Apps cannot delete rows of a pushed table; only a remote delete removes
            # one, and that cancels its entries. Defensive: never send a ghost.
            db.execute(
                "UPDATE _replicad_outbox SET state = 'cancelled', reason = 'row no longer "
                "exists', finished_at = ?, updated_at = ? WHERE seq = ?",
                (now, now, seq),
            )
            continue
        remote_id, values = row
        if op == "insert":
            data = {f: v for f, v in values.items() if v is not None}
        else:
            changed = set(json.loads(fields or "[]"))
            data = {f: v for f, v in values.items() if info.columns[f] in changed}
        item = PushItem(
            int(seq),
            str(iid),
            _op(str(op)),
            data,
            None if remote_id is None else str(remote_id),
            _associations(db, catalog, source, info, values, data),
        )
        try:
            encoded = _encode_item(item)
        except (TypeError, ValueError) as e:
            # A BLOB (or NaN) written by an app has no JSON form: refuse this entry
            # alone, visibly, rather than fail the whole batch on every attempt.
            db.execute(
                "UPDATE _replicad_outbox SET state = 'rejected', reason = ?, finished_at = ?, "
                "updated_at = ? WHERE seq = ?",
                (f"a value of the row cannot be sent as JSON ({e}); fix the row", now, now, seq),
            )
            continue
        db.execute(
            "UPDATE _replicad_outbox SET state = 'in_flight', batch = ?, payload = ?, "
            "attempts = attempts + 1, sent_at = ?, updated_at = ?, creates_may_merge = ? "
            "WHERE seq = ?",
            (tracking, encoded, now, now, source.creates_may_merge, seq),
        )
        items.append(item)
    return OutboxBatch(tracking, tuple(items), resend=False) if items else None


def _fixed_item(
    db: sqlite3.Connection,
    tbl: str,
    seq: int,
    iid: str,
    op: str,
    payload: str | None,
    remote: str | None,
) -> PushItem:
    """An entry whose values were fixed when it was made (deletes, diffed rows). An
    update of a diffed row takes the remote id its create has learned since."""
    if payload is None:
        return PushItem(seq, iid, _op(op), {}, remote)
    item = _decode_item(seq, iid, op, payload)
    if item.id is None and is_diffed(tbl):
        hit = db.execute(
            "SELECT remote_id FROM _replicad_diff WHERE internal_id = ? AND sync = ?",
            (iid, tbl[len(DIFF_PREFIX) :]),
        ).fetchone()
        if hit is not None and hit[0] is not None:
            return PushItem(seq, iid, item.op, item.data, str(hit[0]))
    return item


def _op(op: str) -> Op:
    if op == "insert":
        return "insert"
    if op == "delete":
        return "delete"
    return "update"


def _encode_item(item: PushItem) -> str:
    """The entry's values as kept in ``payload`` (also shown by ``replicad_outbox``):
    ``{"data": {...}, "id": str | null, "associations": [...]}``.

    allow_nan=False: httpx refuses ±Infinity too, so such a row could never go.
    """
    payload = {
        "data": dict(item.data),
        "id": item.id,
        "associations": [
            {"type": a.type, "internal_id": a.internal_id, "id": a.id, "data": dict(a.data)}
            for a in item.associations
        ],
    }
    return json.dumps(payload, ensure_ascii=False, allow_nan=False)


def _decode_item(seq: int, iid: str, op: str, payload: str) -> PushItem:
    """The item a stored payload was encoded from (``_encode_item``'s inverse)."""
    p = json.loads(payload)
    return PushItem(
        seq,
        iid,
        _op(op),
        p["data"],
        p.get("id"),
        tuple(
            Associated(a["type"], a["internal_id"], a["data"], a.get("id"))
            for a in p.get("associations", [])
        ),
    )


def _row(
    db: sqlite3.Connection, tbl: str, info: TableInfo, internal_id: str
) -> tuple[SQLValue, dict[str, Any]] | None:
    """A row's remote id and its data by field name, in JSON types."""
    fields = list(info.columns)
    cols = "".join(f", {quote(info.columns[f])}" for f in fields)
    row = db.execute(
        f"SELECT id{cols} FROM {quote(tbl)} WHERE _internal_id = ?", (internal_id,)
    ).fetchone()
    if row is None:
        return None
    values = {
        f: from_sql(v, info.kinds.get(info.columns[f]))
        for f, v in zip(fields, row[1:], strict=True)
    }
    return row[0], values


def _associations(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    source: PushSource,
    info: TableInfo,
    values: dict[str, Any],
    data: dict[str, Any],
) -> tuple[Associated, ...]:
    """Rows of other tables named by the association columns being sent."""
    by_col = {c: f for f, c in info.columns.items()}
    out: list[Associated] = []
    for a in source.associations:
        field = by_col.get(a.column)
        ref = values.get(field) if field is not None and field in data else None
        other = catalog.tables.get(a.table)
        if ref is None or other is None:
            continue
        hit = db.execute(
            f"SELECT _internal_id FROM {quote(a.table)} WHERE _internal_id = ? OR id = ? LIMIT 1",
            (ref, ref),
        ).fetchone()
        if hit is None:
            continue
        row = _row(db, a.table, other, str(hit[0]))
        assert row is not None
        out.append(
            Associated(
                a.object,
                str(hit[0]),
                {f: v for f, v in row[1].items() if v is not None},
                None if row[0] is None else str(row[0]),
            )
        )
    return tuple(out)


def record_outcomes(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    tbl: str,
    outcomes: Iterable[Outcome],
    now: str,
) -> OutcomeCounts:
    """Record confirmations (remote ids onto rows) and rejections, in one transaction."""
    counts = OutcomeCounts()
    awaiting = False
    diffed = is_diffed(tbl)
    db.execute("BEGIN IMMEDIATE")
    try:
        # Writing ids onto rows (and merging duplicates) must not look like app edits.
        db.execute("INSERT INTO _replicad_applying (flag) VALUES (1)")
        for outcome in outcomes:
            row = db.execute(
                "SELECT internal_id, op, fields, payload FROM _replicad_outbox "
                "WHERE seq = ? AND state = 'in_flight'",
                (outcome.entry,),
            ).fetchone()
            if row is None:
                continue  # cancelled meanwhile (a remote delete), or already recorded
            iid = str(row[0])
            if outcome.rejected is None:
                db.execute(
                    "UPDATE _replicad_outbox SET state = 'confirmed', "
                    "remote_id = coalesce(?, remote_id), sync_id = ?, transfer_id = ?, "
                    # With the record's id known, nothing waits for the pull any more.
                    "awaiting_id = iif(? IS NULL, awaiting_id, 0), "
                    "reason = NULL, finished_at = ?, updated_at = ? WHERE seq = ?",
                    (
                        outcome.id, outcome.sync_id, outcome.transfer_id, outcome.id, now,
                        now, outcome.entry,
                    ),
                )  # fmt: skip
                counts.confirmed += 1
                _count_op(counts, str(row[1]))
                sent = list(json.loads(row[3] or "{}").get("data", {}))
                if diffed:
                    if row[1] != "delete":
                        # A delete's answer names the record of a key's earlier life:
                        # never the id of a row that came back since.
                        db.execute(
                            "UPDATE _replicad_diff SET remote_id = coalesce(?, remote_id), "
                            "confirmed = 1 WHERE internal_id = ? AND sync = ?",
                            (outcome.id, iid, tbl[len(DIFF_PREFIX) :]),
                        )
                    continue
                if outcome.id is not None and _learn_id(
                    db, catalog, tbl, iid, outcome.id, sent, now
                ):
                    counts.merged += 1
                elif outcome.id is None and row[1] == "insert" and outcome.written:
                    # Accepted without naming the record: the pull brings it.
                    db.execute(
                        "UPDATE _replicad_outbox SET awaiting_id = 1 WHERE seq = ?",
                        (outcome.entry,),
                    )
                    awaiting = True
            elif outcome.not_found:
                # Final, like a rejection, but the record simply is not there (an
                # update operation, a delete of a record already gone): counted apart.
                db.execute(
                    "UPDATE _replicad_outbox SET state = 'not_found', reason = ?, "
                    "finished_at = ?, updated_at = ? WHERE seq = ?",
                    (outcome.rejected, now, now, outcome.entry),
                )
                counts.not_found += 1
            elif outcome.in_doubt and row[1] == "insert":
                # The create may have arrived: never posted again by itself. The record
                # the pull brings, equal to what was sent, is this row's
                # (adopt_pulled_creates; a diffed source's rows are not pulled). Its
                # sent values stay as they are: an edit made since (or meanwhile) waits
                # apart, held until the record is known (_new_batch).
                db.execute(
                    "UPDATE _replicad_outbox SET state = 'in_doubt', awaiting_id = 1, "
                    "reason = ?, finished_at = ?, updated_at = ? WHERE seq = ?",
                    (outcome.rejected, now, now, outcome.entry),
                )
                counts.rejected += 1
                awaiting = awaiting or not diffed
            else:
                _reject(
                    db, tbl, outcome.entry, iid, str(row[1]), row[2], outcome.rejected, now,
                    diffed=diffed, payload=row[3],
                )  # fmt: skip
                counts.rejected += 1
            if not diffed:
                settle_pending_flag(db, tbl, iid)
        if awaiting:
            # The pull may have brought the record before its create was confirmed.
            counts.merged += adopt_pulled_creates(db, catalog, tbl, None, now)
        db.execute(
            "DELETE FROM _replicad_outbox WHERE state IN ('confirmed', 'cancelled', "
            "'not_found') AND finished_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)",
            (KEEP_FINISHED,),
        )
        db.execute("DELETE FROM _replicad_applying")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return counts


def _count_op(counts: OutcomeCounts, op: str) -> None:
    if op == "insert":
        counts.created += 1
    elif op == "delete":
        counts.deleted += 1
    else:
        counts.updated += 1


def _reject(
    db: sqlite3.Connection,
    tbl: str,
    seq: int,
    iid: str,
    op: str,
    fields: str | None,
    reason: str,
    now: str,
    *,
    diffed: bool = False,
    payload: str | None = None,
) -> None:
    """Mark an entry rejected, keeping its payload and the reason.

    A newer edit of the row made while this one was in flight is folded in and the
    entry requeued: the row has one open upstream change, and the app edited it
    again after the attempt (a fix, likely).
    """
    newer = db.execute(
        "SELECT seq, op, fields FROM _replicad_outbox "
        "WHERE tbl = ? AND internal_id = ? AND state = 'pending'",
        (tbl, iid),
    ).fetchone()
    if newer is None:
        db.execute(
            "UPDATE _replicad_outbox SET state = 'rejected', reason = ?, finished_at = ?, "
            "updated_at = ? WHERE seq = ?",
            (reason, now, now, seq),
        )
        return
    why = f"requeued after a newer edit; last rejection: {reason}"
    if diffed:
        # A diffed entry's payload is its only copy of the values: merge, never drop.
        newer_payload = db.execute(
            "SELECT payload FROM _replicad_outbox WHERE seq = ?", (newer[0],)
        ).fetchone()[0]
        merged_op, merged = merge_payloads(op, payload, str(newer[1]), newer_payload)
        db.execute("DELETE FROM _replicad_outbox WHERE seq = ?", (newer[0],))
        db.execute(
            "UPDATE _replicad_outbox SET state = 'pending', op = ?, payload = ?, batch = NULL, "
            "reason = ?, updated_at = ? WHERE seq = ?",
            (merged_op, merged, why, now, seq),
        )
        return
    _fold(db, (seq, op, fields), newer, now, why)


def merge_payloads(old_op: str, old: str | None, new_op: str, new: str | None) -> tuple[str, str]:
    """Two entries of one diffed row as one (the newer values win): an insert absorbs
    an update; a delete after anything is a delete; anything after a delete is the
    newer entry (the row came back)."""
    a = json.loads(old or '{"data": {}}')
    b = json.loads(new or '{"data": {}}')
    if new_op == "delete":
        return new_op, json.dumps(b, ensure_ascii=False)
    if old_op == "delete":
        # The row came back before its delete went: the record is still there.
        if a.get("id") is None:
            return new_op, json.dumps(b, ensure_ascii=False)
        back = {"data": b.get("data", {}), "id": a["id"], "associations": []}
        return "update", json.dumps(back, ensure_ascii=False, allow_nan=False)
    op = "insert" if "insert" in (old_op, new_op) else "update"
    data = {**a.get("data", {}), **b.get("data", {})}
    merged = {"data": data, "id": b.get("id") or a.get("id"), "associations": []}
    return op, json.dumps(merged, ensure_ascii=False, allow_nan=False)


def _remote_id(value: str) -> int | str:
    try:
        number = int(value)
    except ValueError:
        return value
    return number if str(number) == value and -(2**63) <= number < 2**63 else value


def _fold(
    db: sqlite3.Connection,
    keep: tuple[int, str, str | None],
    drop: tuple[int, str, str | None],
    now: str,
    reason: str | None = None,
) -> None:
    """Fold one open entry (seq, op, fields) of a row into another, which is requeued:
    a row has one open upstream change. An insert absorbs anything (it sends the whole
    row); two updates send the union of their fields."""
    op = "insert" if "insert" in (keep[1], drop[1]) else "update"
    union = set(json.loads(keep[2] or "[]")) | set(json.loads(drop[2] or "[]"))
    fields = None if op == "insert" else json.dumps(sorted(union))
    db.execute("DELETE FROM _replicad_outbox WHERE seq = ?", (drop[0],))
    db.execute(
        "UPDATE _replicad_outbox SET state = 'pending', op = ?, fields = ?, payload = NULL, "
        "batch = NULL, reason = coalesce(?, reason), updated_at = ? WHERE seq = ?",
        (op, fields, reason, now, keep[0]),
    )


def _adopt_entries(db: sqlite3.Connection, tbl: str, source: str, target: str, now: str) -> None:
    """Move a merged-away row's outbox entries onto the row that stays: its local edits
    are kept and still pushed (one open entry per row: open ones fold together)."""
    mine = db.execute(
        "SELECT seq, op, fields FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? "
        "AND state IN ('pending', 'rejected')",
        (tbl, target),
    ).fetchone()
    theirs = db.execute(
        "SELECT seq, op, fields FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? "
        "AND state IN ('pending', 'rejected')",
        (tbl, source),
    ).fetchone()
    if mine is not None and theirs is not None:
        _fold(db, mine, theirs, now)
    db.execute(
        "UPDATE _replicad_outbox SET internal_id = ?, updated_at = ? "
        "WHERE tbl = ? AND internal_id = ?",
        (target, now, tbl, source),
    )


def _learn_id(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    tbl: str,
    iid: str,
    remote: str,
    sent: list[str],
    now: str,
) -> bool:
    """Write a confirmed create's remote id onto its row; True if two rows merged.

    If the pull already brought the record (a row with that id and another
    _internal_id), that row's remote values are folded into this one, which keeps its
    _internal_id, and the duplicate goes: one row per remote id.
    """
    q = quote(tbl)
    rid = _remote_id(remote)
    row = db.execute(f"SELECT id FROM {q} WHERE _internal_id = ?", (iid,)).fetchone()
    if row is None or row[0] is not None:
        return False  # gone, or already known (an update's answer)
    info = catalog.tables[tbl]
    cols = list(info.columns.values())
    select = "".join(f", {quote(c)}" for c in cols)
    dup = db.execute(
        f"SELECT _internal_id, _revision, _synced_at{select} FROM {q} WHERE id = ?", (rid,)
    ).fetchone()
    if dup is not None:
        # The pulled copy's values win where an app edited that copy (its edits move
        # over below); this row's own values win for every field its confirmed create
        # carried (the remote has them; the copy may predate them) and every field
        # with its own unconfirmed edits; the copy's (remote) values fill the rest.
        dup_iid = str(dup[0])
        theirs = open_columns(db, tbl, dup_iid)
        ours = open_columns(db, tbl, iid)
        sent_cols = {info.columns[f] for f in sent if f in info.columns}
        mine: set[str] | None = None if ours is None else ours | sent_cols
        remote_values = dict(zip(cols, dup[3:], strict=True))
        take = {
            c: v
            for c, v in remote_values.items()
            if (theirs is None or c in theirs) or (mine is not None and c not in mine)
        }
        # Before its entries move: was the other row an app's insert, not a pull?
        both_local = _created_locally(db, tbl, dup_iid)
        _adopt_entries(db, tbl, dup_iid, iid, now)
        db.execute(f"DELETE FROM {q} WHERE id = ?", (rid,))
        sets = "".join(f", {quote(c)} = ?" for c in take)
        db.execute(
            f"UPDATE {q} SET id = ?, _revision = ?, _synced_at = ?{sets} WHERE _internal_id = ?",
            (rid, dup[1], dup[2], *take.values(), iid),
        )
        if both_local:
            # Two local rows the destination made one record (Endgrate's upsert by
            # email, phone or name): the row that goes keeps its values in the journal.
            kept = _values_of(db, tbl, cols, iid)
            lost = [("_internal_id", dup_iid, iid)] + [
                (c, v, kept[c]) for c, v in remote_values.items() if v != kept[c]
            ]
            resolution = f"merged by the destination into row {iid}"
            journal(db, tbl, dup_iid, rid, lost, dup[1], resolution, now)
        return True
    db.execute(f"UPDATE {q} SET id = ? WHERE _internal_id = ?", (rid, iid))
    return False


def adopt_pulled_creates(
    db: sqlite3.Connection,
    catalog: TableCatalog,
    tbl: str,
    ids: Sequence[int] | None,
    now: str,
) -> int:
    """Creates confirmed without a remote id take the record the pull brought; how many.

    A destination may accept a create without naming the record (a 202 or 204, a
    transfer without returned data). The local row then has no id, and the record,
    when the pull brings it, would become a second row. A pulled row (among ``ids``;
    with None, any row synced since the create was sent) whose values equal every
    field the create sent is taken to be that record and merges into the local row,
    as a confirmed id would (``_learn_id``). Runs inside the caller's transaction.
    """
    # A create accepted without an id (confirmed), or in doubt (its answer was lost).
    waiting = db.execute(
        "SELECT seq, internal_id, payload, created_at, state, creates_may_merge "
        "FROM _replicad_outbox WHERE awaiting_id = 1 AND tbl = ? "
        "AND state IN ('confirmed', 'in_doubt') ORDER BY seq",
        (tbl,),
    ).fetchall()
    if not waiting:
        return 0
    info = catalog.tables[tbl]
    q = quote(tbl)
    merged = 0
    # An entry sent before this was recorded with it: the push sync's rule as now
    # configured, or none (a process without it): the strict rule.
    push = db.execute("SELECT creates_may_merge FROM _replicad_push WHERE tbl = ?", (tbl,))
    configured = push.fetchone()
    for seq, iid, payload, created, state, sent_may_merge in waiting:
        may_merge = bool(
            (configured is not None and configured[0]) if sent_may_merge is None else sent_may_merge
        )
        own = db.execute(f"SELECT id, rowid FROM {q} WHERE _internal_id = ?", (iid,)).fetchone()
        if own is None or own[0] is not None:
            # The row is gone, or learned its id another way: nothing to wait for.
            db.execute(
                "UPDATE _replicad_outbox SET awaiting_id = 0, remote_id = ? WHERE seq = ?",
                (None if own is None else str(own[0]), seq),
            )
            continue
        data: dict[str, Any] = json.loads(payload or "{}").get("data", {})
        if not data or any(f not in info.columns for f in data):
            continue
        same, values = _equal_to_any(info, _states_sent(db, tbl, iid, seq, data, info))
        if ids is None:
            # Since the edit was made (not the last send: a resend moves that on).
            scope, head = "_synced_at >= ?", [created]
        else:
            scope, head = f"id IN ({','.join('?' * len(ids))})", list(ids)
        if not may_merge:
            # The destination makes a new record for each create: not one the replica
            # held before the create was made (a later rowid: a new row of a rowid
            # table always takes one past every row there is), which a remote edit may
            # have made equal to it.
            scope += " AND t.rowid > ?"
            head.append(own[1])
        # Only a pulled row qualifies: not another local create (with or without its
        # id), nor a row an earlier entry of this loop has just claimed. Rows new since
        # the create come first.
        hits = db.execute(
            f"SELECT id, t.rowid > ? FROM {q} t WHERE id IS NOT NULL AND {scope} AND ({same}) "
            "AND NOT EXISTS (SELECT 1 FROM _replicad_outbox o WHERE o.tbl = ? "
            "AND o.internal_id = t._internal_id AND o.op = 'insert') "
            "ORDER BY 2 DESC, _synced_at LIMIT 2",
            (own[1], *head, *values, tbl),
        ).fetchall()
        # An accepted create (confirmed) surely made a record: the first new equal one
        # is it. One in doubt may not have, and an older record may be another one a
        # remote edit made equal: only a single candidate is taken for either.
        if not hits or ((state == "in_doubt" or not hits[0][1]) and len(hits) > 1):
            continue
        hit = hits[0]
        # A create in doubt has now arrived; confirmed first, so the merge takes the
        # remote's values for what it did not send (and keeps the row's later edits),
        # as for any confirmed create.
        db.execute(
            "UPDATE _replicad_outbox SET awaiting_id = 0, remote_id = ?, updated_at = ?, "
            "state = iif(state = 'in_doubt', 'confirmed', state), "
            "reason = iif(state = 'in_doubt', NULL, reason) WHERE seq = ?",
            (str(hit[0]), now, seq),
        )
        _learn_id(db, catalog, tbl, str(iid), str(hit[0]), list(data), now)
        settle_pending_flag(db, tbl, str(iid))
        merged += 1
    return merged


def _states_sent(
    db: sqlite3.Connection, tbl: str, iid: str, seq: int, data: dict[str, Any], info: TableInfo
) -> list[dict[str, Any]]:
    """The values the record may hold upstream: what its create sent, then that with
    each later update of the row that was sent (where updates need no id, an edit goes
    on its own while the create waits; the pull may bring the record before or after
    the destination applied it)."""
    states = [data]
    later = db.execute(
        "SELECT payload FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? AND seq > ? "
        "AND op = 'update' AND state IN ('in_flight', 'confirmed') AND payload IS NOT NULL "
        "ORDER BY seq",
        (tbl, iid, seq),
    ).fetchall()
    for (payload,) in later:
        changed: dict[str, Any] = json.loads(payload).get("data", {})
        if any(f not in info.columns for f in changed):
            break
        state = {**states[-1], **changed}
        if state != states[-1]:
            states.append(state)
    return states


def _equal_to_any(info: TableInfo, states: list[dict[str, Any]]) -> tuple[str, list[SQLValue]]:
    """SQL (and its values) that holds for a row equal to one of ``states``: each value
    as this version stores it, or as an earlier one did (a record pulled before the
    upgrade keeps that spelling)."""
    alternatives, values = [], []
    for state in states:
        cells = [spellings(v) for v in state.values()]
        alternatives.append(
            " AND ".join(
                "(" + " OR ".join(f"{quote(info.columns[f])} IS ?" for _ in spelt) + ")"
                for f, spelt in zip(state, cells, strict=True)
            )
        )
        values += [c for spelt in cells for c in spelt]
    return " OR ".join(f"({a})" for a in alternatives), values


def _values_of(db: sqlite3.Connection, tbl: str, cols: list[str], iid: str) -> dict[str, SQLValue]:
    if not cols:
        return {}
    select = ", ".join(quote(c) for c in cols)
    row = db.execute(f"SELECT {select} FROM {quote(tbl)} WHERE _internal_id = ?", (iid,)).fetchone()
    return dict(zip(cols, row, strict=True))


def _created_locally(db: sqlite3.Connection, tbl: str, iid: str) -> bool:
    """Whether the row was inserted by an app (pushed as a create), not pulled."""
    return (
        db.execute(
            "SELECT 1 FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? AND op = 'insert'",
            (tbl, iid),
        ).fetchone()
        is not None
    )


def requeue_at(path: Path, entry: int | None) -> int:
    """``requeue`` from another process than the daemon (no replica lock needed)."""
    if not path.exists():
        raise FileNotFoundError(f"no replica at {path}")
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        app_id, version = (
            db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")
        )
        if app_id != APPLICATION_ID or version < 2:
            raise ValueError(f"{path} is not a replica with an outbox (run replicad once)")
        return requeue(db, entry, utcnow())
    finally:
        db.close()


def requeue(db: sqlite3.Connection, entry: int | None, now: str) -> int:
    """Rejected entries (one, or all) back to pending, and a create in doubt named by
    its entry; how many.

    A create in doubt may already exist at the destination: it is posted again only
    when the operator names it (after checking), never by "all". It is then posted
    unchecked and takes along the edit of its row that waited for it (one create of
    the row as it is). Runs in its own transaction.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        n = _requeue(db, entry, now)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return n


def _requeue(db: sqlite3.Connection, entry: int | None, now: str) -> int:
    which, states = "", "('rejected')"
    args: tuple[int, ...] = ()
    doubts: list[Any] = []
    if entry is not None:
        which, args, states = " AND seq = ?", (entry,), "('rejected', 'in_doubt')"
        doubts = db.execute(
            "SELECT seq, tbl, internal_id, op, payload FROM _replicad_outbox "
            "WHERE state = 'in_doubt' AND seq = ?",
            (entry,),
        ).fetchall()
    for seq, tbl, iid, op, sent in doubts:
        waiting = db.execute(
            "SELECT seq, op, fields, payload FROM _replicad_outbox WHERE tbl = ? "
            "AND internal_id = ? AND state IN ('pending', 'rejected')",
            (tbl, iid),
        ).fetchone()
        if waiting is not None:
            # One open entry per row (the unique index): the edit joins the create.
            db.execute("DELETE FROM _replicad_outbox WHERE seq = ?", (waiting[0],))
            if is_diffed(str(tbl)):
                # A diffed entry's payload is its only copy of the values: merge.
                _, merged = merge_payloads(str(op), sent, str(waiting[1]), waiting[3])
                db.execute("UPDATE _replicad_outbox SET payload = ? WHERE seq = ?", (merged, seq))
    # A diffed entry keeps its payload: it is the only copy of the values it sends
    # (a captured entry's are read from its row again).
    cur = db.execute(
        "UPDATE _replicad_outbox SET state = 'pending', batch = NULL, awaiting_id = 0, "
        f"payload = CASE WHEN tbl LIKE '{DIFF_PREFIX}%' THEN payload END, updated_at = ? "
        f"WHERE state IN {states}{which}",
        (now, *args),
    )
    return cur.rowcount
