"""Upsert matching of pushed Endgrate records against the account's contacts.

A ``crm-contact`` matches a person contact (``is_organization`` not true) by
``email``, then ``phone``, then full name (``first_name`` + ``last_name``); a
``crm-company`` matches an organization by ``domain``, then ``name``.  The
first criterion the pushed data has a value for *and* that finds a record wins;
among several records the lowest id wins, so matching is deterministic.
Values compare exactly (no case folding): the contract promises nothing more.

Scanning every contact per pushed item would cost seconds on a lazily generated
million-record account, so an index maps each criterion's value to the ids that
held it.  It is built on first use and then kept current by replaying the
store's change log, which also covers records changed through
``/_emulator/mutate``.  Entries are never removed: a changed or deleted record
leaves a stale id behind, and lookups check each candidate against the record
as it is now, pruning the stale ones.  That keeps the index to one small entry
per value instead of a reverse map per record.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Final

from replicad.connectors.emulator.records import RecordStore

# Criteria in matching order, per pushed type; each is the fields that must all match.
CRITERIA: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "crm-contact": (("email",), ("phone",), ("first_name", "last_name")),
    "crm-company": (("domain",), ("name",)),
}
_ORGANIZATION: Final = {"crm-contact": False, "crm-company": True}

# (is_organization, criterion fields, their values)
_IndexKey = tuple[bool, tuple[str, ...], tuple[Hashable, ...]]


def _values(data: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str, ...] | None:
    """The criterion's values in ``data``, or None unless every one is a non-empty string."""
    values = []
    for name in fields:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            return None
        values.append(value)
    return tuple(values)


def _is_organization(data: Mapping[str, Any]) -> bool:
    return data.get("is_organization") is True


class UpsertMatcher:
    """Finds the existing contact a pushed ``crm-contact`` or ``crm-company`` upserts into."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store
        self._position: int | None = None  # None until the index is built
        # One id per value in the common case; a list only when values collide.
        self._index: dict[_IndexKey, int | list[int]] = {}

    def match(self, endgrate_type: str, data: Mapping[str, Any]) -> int | None:
        """The id of the contact that ``data`` pushed as ``endgrate_type`` upserts into."""
        criteria = CRITERIA.get(endgrate_type)
        if criteria is None:
            return None
        self._catch_up()
        organization = _ORGANIZATION[endgrate_type]
        for fields in criteria:
            values = _values(data, fields)
            if values is None:
                continue
            found = self._lookup((organization, fields, values))
            if found is not None:
                return found
        return None

    def _lookup(self, key: _IndexKey) -> int | None:
        entry = self._index.get(key)
        if entry is None:
            return None
        candidates = [entry] if isinstance(entry, int) else entry
        organization, fields, values = key
        live = []
        for id_ in candidates:
            if not self._store.exists(("contact", id_)):
                continue
            data = self._store.current(("contact", id_))[0]
            assert data is not None  # exists() guarantees a live record
            if _is_organization(data) == organization and _values(data, fields) == values:
                live.append(id_)
        if not live:
            del self._index[key]
            return None
        self._index[key] = live[0] if len(live) == 1 else live
        return min(live)

    def _catch_up(self) -> None:
        if self._position is None:
            # Everything here is synchronous, so no change can slip in between.
            _, self._position = self._store.changes_since(0)
            for id_, data, _ in self._store.iter_records("contact"):
                self._add(id_, data)
            return
        keys, self._position = self._store.changes_since(self._position)
        for type_, id_ in dict.fromkeys(keys):
            if type_ != "contact" or not self._store.exists((type_, id_)):
                continue
            current = self._store.current((type_, id_))[0]
            assert current is not None  # exists() guarantees a live record
            self._add(id_, current)

    def _add(self, id_: int, data: Mapping[str, Any]) -> None:
        organization = _is_organization(data)
        type_ = "crm-company" if organization else "crm-contact"
        for fields in CRITERIA[type_]:
            values = _values(data, fields)
            if values is None:
                continue
            key: _IndexKey = (organization, fields, values)
            entry = self._index.get(key)
            if entry is None:
                self._index[key] = id_
            elif isinstance(entry, int):
                if entry != id_:
                    self._index[key] = [entry, id_]
            elif id_ not in entry:
                entry.append(id_)
