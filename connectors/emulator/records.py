"""Record storage of the emulated Sell account: generated base data plus mutations.

The seeded :class:`~connectors.emulator.dataset.Dataset` is the immutable base.
Only records touched by a mutation are stored explicitly (``_current``), deleted
ones are remembered in ``_deleted``.  Small accounts are generated eagerly so
the fetch path is a dictionary lookup; large ones are rebuilt on demand so a
million-record account starts instantly and costs almost no memory.

Revisions come from one global counter: base record ``index`` has revision
``REVISION_BASE + index + 1`` and every create or update takes the next value.
The offset keeps revisions numerically distinct from ids, so a client that
confuses the two fails loudly instead of by coincidence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from replicad.connectors.emulator.dataset import TYPES, Dataset, index_of, locate

REVISION_BASE: Final = 1_000_000
# Below this size the whole dataset is generated at start-up (about 13 µs and
# 2 KB per record): fetches then skip regeneration, which keeps the emulator out
# of the way when the daemon is benchmarked.  Above it records are lazy.
EAGER_LIMIT: Final = 250_000
_MUTATION_EPOCH: Final = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

Key = tuple[str, int]
EventType = Literal["created", "updated", "deleted"]
Op = Literal["create", "update", "delete"]


class RecordError(Exception):
    """A mutation refers to a record in a way the account does not allow."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Change:
    """Outcome of one mutation; ``revision`` is 0 for deletes."""

    op: Op
    type: str
    id: int
    revision: int

    def to_json(self) -> dict[str, Any]:
        """The ``results`` entry of ``POST /_emulator/mutate``."""
        return {"op": self.op, "type": self.type, "id": self.id, "revision": self.revision}


def check_type(type_: object) -> str:
    """Return ``type_`` if it is a known record type, else raise :class:`RecordError`."""
    if not isinstance(type_, str) or type_ not in TYPES:
        raise RecordError(422, f"unknown record type {type_!r}; expected one of {TYPES}")
    return type_


class RecordStore:
    """Current data and revision of every record, live or deleted."""

    def __init__(self, records: int, seed: int, *, eager_limit: int = EAGER_LIMIT) -> None:
        self.dataset = Dataset(records, seed)
        self._revision = REVISION_BASE + records
        # Explicitly stored records: (data, revision, event type).  Stored dicts
        # are replaced, never modified in place, so readers may keep references.
        self._current: dict[Key, tuple[dict[str, Any], int, EventType]] = {}
        self._deleted: set[Key] = set()
        self._max_id = dict(self.dataset.counts)
        self._eager: dict[str, list[dict[str, Any]]] | None = None
        self._base_keys: list[Key] | None = None
        # Every key a create, update or delete touched, in order: derived indexes
        # (the push emulator's upsert matching) catch up by replaying the tail
        # instead of rescanning the whole account.
        self._changes: list[Key] = []
        if records <= eager_limit:
            self._eager = {type_: [] for type_ in TYPES}
            for type_, data in self.dataset:
                self._eager[type_].append(data)

    @property
    def revision_counter(self) -> int:
        """The last revision handed out."""
        return self._revision

    def max_id(self, type_: str) -> int:
        """Highest id ever used for ``type_`` (live or deleted)."""
        return self._max_id[type_]

    def _base(self, type_: str, id_: int) -> dict[str, Any]:
        if self._eager is not None:
            return self._eager[type_][id_ - 1]
        return self.dataset.record(type_, id_)

    def current(self, key: Key) -> tuple[dict[str, Any] | None, int, EventType]:
        """``(data, revision, event_type)`` of ``key``; data is None and revision 0 if deleted.

        The returned dict is shared: callers must not modify it.  Raises
        ``KeyError`` for keys that never existed.
        """
        entry = self._current.get(key)
        if entry is not None:
            return entry
        if key in self._deleted:
            return None, 0, "deleted"
        type_, id_ = key
        if not self.dataset.contains(type_, id_):
            raise KeyError(key)
        return self._base(type_, id_), REVISION_BASE + index_of(type_, id_) + 1, "created"

    def exists(self, key: Key) -> bool:
        """Whether ``key`` is a live record."""
        if key in self._current:
            return True
        return key not in self._deleted and self.dataset.contains(*key)

    def revision(self, key: Key) -> int | None:
        """Revision of ``key`` (0 when deleted), None if it never existed."""
        try:
            return self.current(key)[1]
        except KeyError:
            return None

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _stamp(self, revision: int) -> str:
        # Mutation timestamps derive from the revision so that replaying the
        # same mutations yields byte-identical data.
        moment = _MUTATION_EPOCH + dt.timedelta(seconds=revision - REVISION_BASE)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def create(self, type_: str, data: Mapping[str, Any]) -> Change:
        """Create a record; ``data["id"]`` is used if present, else the next free id."""
        check_type(type_)
        id_ = data.get("id")
        if id_ is None:
            id_ = self._max_id[type_] + 1
        elif not isinstance(id_, int) or isinstance(id_, bool) or id_ < 1:
            raise RecordError(422, f"id must be a positive integer, got {id_!r}")
        key = (type_, id_)
        if self.exists(key):
            raise RecordError(409, f"{type_} {id_} already exists")
        revision = self._next_revision()
        stamp = self._stamp(revision)
        record = {"created_at": stamp, "updated_at": stamp, **data, "id": id_}
        self._current[key] = (record, revision, "created")
        self._deleted.discard(key)
        self._max_id[type_] = max(self._max_id[type_], id_)
        self._changes.append(key)
        return Change("create", type_, id_, revision)

    def update(self, type_: str, id_: int, data: Mapping[str, Any]) -> Change:
        """Merge the top-level fields of ``data`` into a live record."""
        check_type(type_)
        key = (type_, id_)
        if not self.exists(key):
            raise RecordError(404, f"{type_} {id_} does not exist")
        old, _, _ = self.current(key)
        assert old is not None  # exists() guarantees a live record
        revision = self._next_revision()
        record = {**old, "updated_at": self._stamp(revision), **data, "id": id_}
        self._current[key] = (record, revision, "updated")
        self._changes.append(key)
        return Change("update", type_, id_, revision)

    def delete(self, type_: str, id_: int) -> Change:
        """Delete a live record; it is remembered as deleted."""
        check_type(type_)
        key = (type_, id_)
        if not self.exists(key):
            raise RecordError(404, f"{type_} {id_} does not exist")
        self._current.pop(key, None)
        self._deleted.add(key)
        self._changes.append(key)
        return Change("delete", type_, id_, 0)

    def changes_since(self, position: int) -> tuple[list[Key], int]:
        """Keys touched after ``position`` of the change log (oldest first, repeats kept),
        and the position to pass next time; position 0 is the seeded account."""
        return self._changes[position:], len(self._changes)

    def live_keys(self) -> list[Key]:
        """Every live record key: base records in index order, then mutated ones by revision."""
        if self._base_keys is None:
            # Built once and shared by every device queue, so a million keys
            # cost their tuples only once.
            self._base_keys = [locate(index) for index in range(self.dataset.records)]
        touched_keys = self._current.keys() | self._deleted
        keys = [key for key in self._base_keys if key not in touched_keys]
        keys.extend(sorted(self._current, key=lambda key: self._current[key][1]))
        return keys

    def live_ids(self, type_: str) -> list[int]:
        """Sorted ids of the live records of ``type_``."""
        base = range(1, self.dataset.counts[type_] + 1)
        extra = sorted(id_ for t, id_ in self._current if t == type_ and id_ > len(base))
        deleted = {id_ for t, id_ in self._deleted if t == type_}
        return [id_ for id_ in base if id_ not in deleted] + extra

    def deleted_ids(self, type_: str) -> list[int]:
        """Sorted ids of the deleted records of ``type_``."""
        return sorted(id_ for t, id_ in self._deleted if t == type_)

    def snapshot(self, type_: str) -> list[tuple[int, dict[str, Any] | None, int]]:
        """``(id, data, revision)`` of every live record of ``type_``, by id.

        ``data`` is None for untouched base records: they never change, so
        :meth:`materialize` can rebuild them later while the snapshot stays
        consistent even if mutations happen in between.
        """
        rows: list[tuple[int, dict[str, Any] | None, int]] = []
        for id_ in self.live_ids(type_):
            entry = self._current.get((type_, id_))
            if entry is None:
                rows.append((id_, None, REVISION_BASE + index_of(type_, id_) + 1))
            else:
                rows.append((id_, entry[0], entry[1]))
        return rows

    def materialize(self, type_: str, id_: int, data: dict[str, Any] | None) -> dict[str, Any]:
        """The data of a :meth:`snapshot` row."""
        return self._base(type_, id_) if data is None else data

    def iter_records(self, type_: str) -> Iterator[tuple[int, dict[str, Any], int]]:
        """``(id, data, revision)`` of every live record of ``type_``, by id."""
        for id_, data, revision in self.snapshot(type_):
            yield id_, self.materialize(type_, id_, data), revision
