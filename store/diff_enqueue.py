"""Writing a diff's findings: outbox entries and the diff state, in one transaction.

``run_diff`` drives one diff of a sync: it reads the source (``store.diff``) and, per
chunk of changed rows, commits their outbox entries together with the new diff state,
so whatever was committed is exactly what will be sent, and a crash between chunks
resumes where the last chunk ended. A row has one open entry: a newer change of a
row not sent yet (or rejected) folds into that entry, as captured edits do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from replicad.store.diff import (
    CHUNK,
    DiffCounts,
    DiffSpec,
    SourceRow,
    changed_rows,
    check_source,
    compared_columns,
    internal_id,
    invalid_rows,
    key_text,
    outbox_name,
    source_connection,
    vanished_keys,
)
from replicad.store.outbox import merge_payloads
from replicad.store.values import SQLValue

_ABSENT = object()


def run_diff(
    db: sqlite3.Connection,
    replica: Path,
    spec: DiffSpec,
    now: Callable[[], str],
) -> DiffCounts:
    """Diff the sync's source against what was last enqueued and enqueue the changes.

    Raises ``SourceError`` (nothing enqueued by this call's failed chunk) when the
    source cannot be read as configured.
    """
    counts = DiffCounts()
    with source_connection(spec, replica) as src:
        cols = check_source(src, spec)
        compared = compared_columns(spec, cols)
        counts.invalid = invalid_rows(src, spec)
        chunk: list[SourceRow] = []
        for row in changed_rows(src, spec, compared):
            chunk.append(row)
            if len(chunk) >= CHUNK:
                _commit(db, _enqueue_rows, spec, chunk, now(), counts)
                chunk = []
        _commit(db, _enqueue_rows, spec, chunk, now(), counts)
        if spec.operation == "mirror":
            gone = list(vanished_keys(src, spec))
            for i in range(0, len(gone), CHUNK):
                _commit(db, _enqueue_deletes, spec, gone[i : i + CHUNK], now(), counts)
    return counts


def _commit(db: sqlite3.Connection, work: Callable[..., None], *args: Any) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        work(db, *args)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _enqueue_rows(
    db: sqlite3.Connection,
    spec: DiffSpec,
    rows: list[SourceRow],
    now: str,
    counts: DiffCounts,
) -> None:
    tbl = outbox_name(spec.sync)
    done: list[SourceRow] = []
    for r in rows:
        new = r.internal_id is None
        iid = r.internal_id or internal_id(spec.sync, r.key, r.mark)
        if new:
            op = "update" if spec.operation == "update" else "insert"
            data = {c: v for c, v in r.values.items() if v is not None or op == "update"}
            counts.created += op == "insert"
            counts.updated += op == "update"
        else:
            op = "update"
            prev = r.previous or {}
            data = {c: v for c, v in r.values.items() if prev.get(c, _ABSENT) != v}
            data[spec.key] = r.key  # the destination may find the record by it
            counts.updated += 1
        try:
            _put(db, tbl, iid, op, {"data": data, "id": r.remote_id, "associations": []}, now)
        except ValueError:
            # ±Infinity (SQLite stores it; JSON has none): never sendable, so the row
            # is counted invalid each cycle until the app fixes it.
            counts.invalid += 1
            counts.created -= new and op == "insert"
            counts.updated -= not (new and op == "insert")
            continue
        counts.rows += 1
        done.append(r)
        if spec.high_water_mark is None:
            db.execute(
                "INSERT INTO _replicad_diff (sync, key, vals, internal_id) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sync, key) DO UPDATE SET vals = excluded.vals",
                (spec.sync, r.key, r.fingerprint, iid),
            )
    # A row that could not be enqueued is not past the mark: it is read again.
    if spec.high_water_mark is not None:
        _save_mark(db, spec, done)


def _save_mark(db: sqlite3.Connection, spec: DiffSpec, rows: list[SourceRow]) -> None:
    """An append's high-water mark and the keys sent at exactly that mark (rows come in
    mark order)."""
    old = db.execute(
        "SELECT mark, mark_keys FROM _replicad_diff_syncs WHERE sync = ?", (spec.sync,)
    ).fetchone()
    mark: SQLValue = None
    keys: list[str] | None = None
    if old is not None:
        mark, keys = old[0], _keys(old[1])
    for r in rows:
        if keys is None or r.mark != mark:
            mark, keys = r.mark, []
        keys.append(key_text(r.key))
    if keys is None:
        return  # nothing sent yet: no mark
    db.execute(
        "INSERT INTO _replicad_diff_syncs (sync, mark, mark_keys) VALUES (?, ?, ?) "
        "ON CONFLICT (sync) DO UPDATE SET mark = excluded.mark, mark_keys = excluded.mark_keys",
        (spec.sync, mark, json.dumps(keys)),
    )


def _keys(text: str | None) -> list[str] | None:
    return None if text is None else list(json.loads(text))


def _enqueue_deletes(
    db: sqlite3.Connection,
    spec: DiffSpec,
    gone: Iterable[tuple[SQLValue, str, str | None, bool]],
    now: str,
    counts: DiffCounts,
) -> None:
    """Keys the source no longer has (mirror): a delete upstream once the record's
    create was confirmed (by id, or found by its identifier); a create never sent is
    simply dropped; a create in flight is left for a later cycle."""
    tbl = outbox_name(spec.sync)
    for key, iid, remote, confirmed in gone:
        if not confirmed:
            sending = db.execute(
                "SELECT 1 FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? "
                "AND state = 'in_flight' AND op <> 'delete'",
                (tbl, iid),
            ).fetchone()
            if sending is not None:
                continue  # its create may be arriving: decide once it has an outcome
            # Never created upstream (not sent yet, or refused): nothing to delete.
            db.execute(
                "DELETE FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? "
                "AND state IN ('pending', 'rejected')",
                (tbl, iid),
            )
            # A create in doubt may have made a record, which cannot be found (that
            # is why it is in doubt): never posted now, and left visible.
            db.execute(
                "UPDATE _replicad_outbox SET state = 'cancelled', awaiting_id = 0, "
                "reason = 'the source row is gone; if this create arrived, its record "
                "is still at the destination', finished_at = ?, updated_at = ? "
                "WHERE tbl = ? AND internal_id = ? AND state = 'in_doubt'",
                (now, now, tbl, iid),
            )
        else:
            # Without a known id (a create accepted with none) the destination finds
            # the record by the primary identifier, which the delete carries.
            payload: dict[str, Any] = {"data": {spec.key: key}, "id": remote, "associations": []}
            _put(db, tbl, iid, "delete", payload, now)
            counts.deleted += 1
            counts.rows += 1
        db.execute("DELETE FROM _replicad_diff WHERE sync = ? AND key = ?", (spec.sync, key))


def _put(
    db: sqlite3.Connection, tbl: str, iid: str, op: str, payload: dict[str, Any], now: str
) -> None:
    """A new pending entry, or folded into the row's open one (pending or rejected)."""
    encoded = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    open_entry = db.execute(
        "SELECT seq, op, payload, state FROM _replicad_outbox WHERE tbl = ? AND internal_id = ? "
        "AND state IN ('pending', 'rejected')",
        (tbl, iid),
    ).fetchone()
    if open_entry is None:
        db.execute(
            "INSERT INTO _replicad_outbox (tbl, internal_id, op, state, payload, remote_id, "
            "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
            (tbl, iid, op, encoded, payload.get("id"), now, now),
        )
        return
    seq, old_op, old_payload, state = open_entry
    if op == "delete" and old_op == "insert":
        merged_op, merged = op, encoded
    else:
        merged_op, merged = merge_payloads(str(old_op), old_payload, op, encoded)
    reason = "requeued after a newer change" if state == "rejected" else None
    db.execute(
        "UPDATE _replicad_outbox SET op = ?, payload = ?, state = 'pending', batch = NULL, "
        "reason = coalesce(? || '; last rejection: ' || reason, reason), updated_at = ? "
        "WHERE seq = ?",
        (merged_op, merged, reason, now, seq),
    )
