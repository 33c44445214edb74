"""Plain data of the store: pull targets, push sources, outbox batches, results.

The pull's items and pages are the connectors' neutral types
(``replicad.connectors.pull_model``), re-exported here for the store's callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from replicad.connectors.pull_model import (
    BadItem,
    FailedObject,
    JSONObject,
    PageBatch,
    RecordChange,
)
from replicad.connectors.push_model import PushItem
from replicad.store.naming import Naming

__all__ = [
    "ApplyResult",
    "Association",
    "BadItem",
    "FailedObject",
    "JSONObject",
    "OutboxBatch",
    "OutcomeCounts",
    "PageBatch",
    "PullTarget",
    "PushSource",
    "RecordChange",
]


@dataclass(frozen=True, slots=True)
class PullTarget:
    """Where a pull sync writes: its label, connection and table naming."""

    sync: str
    connection: str
    prefix: str = ""
    apply_deletes: bool = True
    # A full pull is running for this request (``Replica.resync_request``): every id
    # it brings is noted, and only a pull of that same request removes what it did
    # not bring (see store.identity). None: an ordinary pull.
    resync: str | None = None
    operation: str = "mirror"  # CONTRACT §7: mirror | upsert | insert | update | append
    types: frozenset[str] | None = None  # only these types are kept (None: every type)
    naming: Naming | None = None  # mappings, field_behavior, field_normalization


@dataclass(slots=True)
class ApplyResult:
    """What applying one page did, for logs and progress."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    stale: int = 0
    quarantined: int = 0
    skipped: int = 0  # items of types the sync does not keep (acknowledged)
    ack_keys: int = 0
    conflicts: int = 0
    new_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Association:
    """A column of a pushed row that names a row of another table (by id or
    _internal_id); that row is pushed along with it."""

    column: str
    table: str
    object: str  # the associated record's destination type


@dataclass(frozen=True, slots=True)
class PushSource:
    """Where a push sync reads: its label, table and conflict rule."""

    sync: str
    table: str  # a type table (captured), or the diffed sync's outbox name
    conflict: str = "merge"
    associations: tuple[Association, ...] = ()
    operation: str = "upsert"
    # The destination names a record to update by its remote id (CDM), not by our
    # internal id (Endgrate): an update of a row whose id is not known yet waits.
    updates_need_id: bool = False
    # A create may land on a record the destination already has (Endgrate upserts):
    # a create accepted without an id may then be a record the replica held before.
    creates_may_merge: bool = True


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """Entries taken from the outbox under one tracking id, as typed push items (the
    connectors alone decide their wire shape). Each item's values are fixed at its
    first send, so a resend is identical."""

    tracking_id: str
    items: tuple[PushItem, ...]
    resend: bool


class Outcome(Protocol):
    """What the destination said about one entry (connectors' PushOutcome fits)."""

    @property
    def entry(self) -> int: ...
    @property
    def id(self) -> str | None: ...
    @property
    def rejected(self) -> str | None: ...
    @property
    def sync_id(self) -> str | None: ...
    @property
    def transfer_id(self) -> str | None: ...
    @property
    def written(self) -> bool: ...
    @property
    def not_found(self) -> bool: ...
    @property
    def in_doubt(self) -> bool: ...


@dataclass(slots=True)
class OutcomeCounts:
    """What recording a batch's outcomes did."""

    confirmed: int = 0
    rejected: int = 0
    merged: int = 0
    not_found: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
