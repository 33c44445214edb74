"""Plain data exchanged between the push engine and the push connectors.

The daemon builds a ``PushBatch`` from the outbox (the store snapshots each entry's
values when it is first sent), hands it to a connector, and records the
``PushResult`` back in the outbox. Connectors know nothing of SQLite; the store
knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JSON = Any  # a value json.dumps can write: None, bool, int, float, str, list, dict

# delete: only for destinations that can delete (mirror pushes).
Op = Literal["insert", "update", "delete"]

# The five Census operations of a push sync (CONTRACT §7).
Operation = Literal["mirror", "upsert", "insert", "update", "append"]


@dataclass(frozen=True, slots=True)
class Associated:
    """A record pushed along with an item (Endgrate ``associations``)."""

    type: str  # the associated record's endgrate_type
    internal_id: str
    data: Mapping[str, JSON]
    id: str | None = None


@dataclass(frozen=True, slots=True)
class PushItem:
    """One outbox entry as it goes over the wire."""

    entry: int  # the outbox entry's id: outcomes are matched back by it
    internal_id: str
    op: Op
    data: Mapping[str, JSON]  # insert: the whole row; update: the changed fields
    id: str | None = None  # the remote id, when known
    associations: tuple[Associated, ...] = ()


@dataclass(frozen=True, slots=True)
class PushBatch:
    """Entries sent together under one stable tracking id.

    ``resend`` is true when the batch was sent before without a confirmed answer (a
    timeout, a lost response, a crash): a connector whose destination has no
    idempotency key must check what already arrived before posting again.
    """

    tracking_id: str
    object: str  # the destination's type (Endgrate endgrate_type, CDM object)
    items: tuple[PushItem, ...]
    resend: bool = False
    # The sync's operation: an insert item of an ``upsert`` may update the record the
    # destination already has under ``key_field``; of an ``insert`` it never changes
    # one; an update item without an id (``update`` of a diffed source) is matched by
    # ``key_field`` and ends not_found when the destination has no such record.
    operation: Operation = "upsert"
    # The destination field of a diffed sync's primary identifier (its value is in
    # every item's data); None for a captured table (records are known by id).
    key_field: str | None = None


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What the destination said about one entry: confirmed (with its id) or rejected."""

    entry: int
    id: str | None = None
    rejected: str | None = None  # the destination's reason, for the outbox
    sync_id: str | None = None  # CDM ``X-Sync-ID`` of the asynchronous push to sources
    transfer_id: str | None = None  # Endgrate transfer that carried it
    # False when the destination wrote nothing (Endgrate sample_data): no record will
    # ever come back through the pull for a create confirmed without an id.
    written: bool = True
    # An update (or delete) of a record the destination does not have: final, counted
    # apart from rejections (Census's not_found). ``rejected`` carries the reason.
    not_found: bool = False
    # Rejected only because it cannot be told whether a create arrived (its answer was
    # lost and the record cannot be looked up): if the pull brings the record, it is
    # the entry's, and confirms it.
    in_doubt: bool = False

    @property
    def confirmed(self) -> bool:
        """Whether the destination accepted the entry."""
        return self.rejected is None


@dataclass(slots=True)
class PushResult:
    """Outcomes for the entries that got one, and the error that stopped the rest.

    Entries without an outcome stay in flight and are sent again (same tracking id,
    same internal_id) on the next attempt.
    """

    outcomes: list[PushOutcome] = field(default_factory=list)
    error: Exception | None = None


class PushConnector(Protocol):
    """A destination that local edits are pushed to."""

    async def push(self, batch: PushBatch) -> PushResult:
        """Send a batch; never raises for remote failures (see ``PushResult.error``)."""
        ...

    async def check_credentials(self, object: str) -> None:
        """Try the token with one read-only request about ``object`` (``replicad
        validate``); nothing is written.

        Returns when the server answered past authentication; raises ``AuthRefused``
        on 401/403, and another ``ConnectorError`` when the destination cannot be
        reached (transport errors, 5xx after the retries).
        """
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...
