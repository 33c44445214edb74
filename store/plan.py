"""Pure merge rules for applying queue items: which rows to insert, update or delete.

Kept free of I/O so the rules can be checked exhaustively (see tests/unit). The store
reads the current revisions and tombstones, asks ``plan_table`` what to do, and runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from replicad.store.model import RecordChange
from replicad.store.values import SQLValue

# The revision of a tombstone left by a delete of a record the replica never had: its
# real last revision is unknown, and Sell does not bring deleted records back, so no
# later item may revive it.
UNKNOWN_REVISION = 2**63 - 1


@dataclass(slots=True)
class TablePlan:
    """The writes one run of changes needs on one table."""

    inserts: list[RecordChange] = field(default_factory=list)
    updates: list[RecordChange] = field(default_factory=list)
    # (id, last known revision) of rows to delete and remember as tombstones.
    deletes: list[tuple[int, int]] = field(default_factory=list)
    # Tombstones superseded by a genuinely newer revision of the record.
    revived: list[int] = field(default_factory=list)
    # Ids deleted before the replica ever had them: remembered as deleted at an unknown
    # revision, so that an older create delivered late cannot bring the record back.
    unseen_deletes: list[int] = field(default_factory=list)
    stale: int = 0


def split_runs(
    items: Iterable[tuple[str, RecordChange]],
) -> list[list[tuple[str, RecordChange]]]:
    """Cut a page into runs in which no (table, id) repeats.

    Within a run the order of items does not matter, so each run can be applied with
    one batched statement per table and kind; a repeated id starts a new run so that
    sequential semantics hold when a page carries the same record twice.
    """
    runs: list[list[tuple[str, RecordChange]]] = []
    current: list[tuple[str, RecordChange]] = []
    seen: set[tuple[str, int]] = set()
    for tbl, change in items:
        key = (tbl, change.id)
        if key in seen:
            runs.append(current)
            current, seen = [], set()
        seen.add(key)
        current.append((tbl, change))
    if current:
        runs.append(current)
    return runs


def plan_table(
    changes: Iterable[RecordChange],
    existing: Mapping[int, int],
    tombstones: Mapping[int, int],
    *,
    apply_deletes: bool = True,
    operation: str = "mirror",
) -> TablePlan:
    """Decide the writes for changes to one table, given current revisions.

    ``existing`` maps id → revision of live rows, ``tombstones`` id → last known
    revision of deleted ones. An upsert wins only with a strictly higher revision;
    a delete (revision 0 on the wire) removes a live row and keeps its revision as
    the tombstone; a delete of a record never seen leaves a tombstone at an unknown
    revision (``UNKNOWN_REVISION``: no later item revives it); a delete of a record
    already deleted does nothing.

    ``operation`` (CONTRACT §7): ``insert`` never changes a row once there, ``update``
    changes only rows already there (new records are skipped); neither applies
    deletes. A skipped item counts as stale.
    """
    plan = TablePlan()
    if operation in ("insert", "update"):
        apply_deletes = False
    for c in changes:
        if operation == "insert" and not c.deleted and c.id in existing:
            plan.stale += 1
            continue
        if operation == "update" and not c.deleted and c.id not in existing:
            plan.stale += 1
            continue
        if c.deleted:
            if apply_deletes and c.id in existing:
                plan.deletes.append((c.id, existing[c.id]))
            else:
                if apply_deletes and c.id not in tombstones:
                    plan.unseen_deletes.append(c.id)
                plan.stale += 1
        elif c.id in existing:
            if c.revision > existing[c.id]:
                plan.updates.append(c)
            else:
                plan.stale += 1
        elif c.id in tombstones:
            if c.revision > tombstones[c.id]:
                plan.revived.append(c.id)
                plan.inserts.append(c)
            else:
                plan.stale += 1
        else:
            plan.inserts.append(c)
    return plan


Resolution = str  # "local kept" | "remote won"


def _same(a: SQLValue, b: SQLValue) -> bool:
    # 1, 1.0 and True compare equal in Python but are different cells in SQLite.
    return type(a) is type(b) and a == b


def merge_remote(
    local: Mapping[str, SQLValue],
    remote: Mapping[str, SQLValue],
    protected: AbstractSet[str] | None,
    mode: str,
) -> tuple[dict[str, SQLValue], list[tuple[str, SQLValue, SQLValue]]]:
    """Merge a pulled record into a row with unconfirmed local edits.

    ``protected`` are the columns the local edits changed (None: the whole row, a local
    insert). ``mode`` "merge" keeps the local values of protected columns and takes
    the remote for the rest; "remote" takes every remote value. Returns the values to
    write and the conflicts (column, local value, remote value): the side that lost
    where the two differ, so nothing is dropped silently.
    """
    guarded = set(remote) if protected is None else set(protected) & set(remote)
    conflicts = [
        (c, local.get(c), remote[c])
        for c in remote
        if c in guarded and not _same(local.get(c), remote[c])
    ]
    if mode == "remote":
        return dict(remote), conflicts
    return {c: v for c, v in remote.items() if c not in guarded}, conflicts
