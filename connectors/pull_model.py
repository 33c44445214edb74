"""Plain data that flows from a pull connector into the store.

Nothing here touches SQLite or HTTP: connectors build these values from the wire,
the store applies them, and tests build them by hand. They live under connectors/
because a connector must import nothing from the store; the store imports them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

JSONObject = dict[str, Any]


def dumps_raw(value: Any) -> str:
    """Compact JSON for quarantined items; never fails on odd input, and always
    storable as text (lone surrogates are written as \\u escapes)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value).encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text


@dataclass(frozen=True, slots=True)
class RecordChange:
    """One structurally valid queue item: an upsert, or a delete (ids only)."""

    type: str
    id: int
    revision: int
    ack_key: str
    deleted: bool
    data: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadItem:
    """A queue item that cannot be stored; it is quarantined with its raw JSON."""

    raw: str
    reason: str
    ack_key: str | None
    # The record it is about, when the item said so: a full pull must not take a
    # record it could not store for one the remote deleted.
    type: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class FailedObject:
    """An object the server said it failed to include in a page."""

    type: str
    id: str


@dataclass(frozen=True, slots=True)
class PageBatch:
    """Everything one page asks the replica to do, in one transaction."""

    changes: list[RecordChange]
    bad_items: list[BadItem] = field(default_factory=list)
    failed_objects: list[FailedObject] = field(default_factory=list)


class PullSession(Protocol):
    """A started pull session: its id and, when the remote says, how many items wait."""

    @property
    def id(self) -> str:
        """The session's id, given back to ``fetch``."""
        ...

    @property
    def total_count(self) -> int | None:
        """Items waiting, if known (for progress)."""
        ...


class PulledPage(Protocol):
    """One decoded page: what the store applies, how many items, how many are left."""

    @property
    def batch(self) -> PageBatch:
        """The page's items, for one transaction."""
        ...

    @property
    def count(self) -> int:
        """Items on the page."""
        ...

    @property
    def count_left(self) -> int | None:
        """Items still waiting after it, if known."""
        ...


class RequestCount(Protocol):
    """A connector's request counter."""

    @property
    def total(self) -> int:
        """Every request sent, retries included."""
        ...


class Budget(Protocol):
    """A connection's rate budget, kept across restarts (``connectors.ratelimit``)."""

    # Told of a long wait before it starts (see ``TokenBucket.on_wait``).
    on_wait: Callable[[float], Awaitable[None]] | None

    @property
    def per_second(self) -> float:
        """Requests per second the budget allows in the long run."""
        ...

    def state(self, wall: float) -> dict[str, Any]:
        """What to keep."""
        ...

    def restore(self, state: Any, wall: float) -> bool:
        """Take over a kept state; False if it does not fit."""
        ...


class PullConnector(Protocol):
    """The seam every pull kind implements; the drain loop (``daemon.pull``) lives once
    above it.

    A cycle: ``start`` a session, ``fetch`` raw pages until None, ``decode`` each (a
    pure function; the daemon runs it on the replica's writer thread), and after the
    store has committed a page's checkpoint tokens (each item's ``ack_key``) in the
    page's transaction, ``confirm`` them. The newest confirmed token is kept and handed
    to the next ``start``. Sell acknowledges its ack keys and ignores the checkpoint
    (the server keeps the queue); a cursor kind confirms nothing remotely and starts
    from the checkpoint. The tokens are opaque to the store and the daemon.
    """

    @property
    def identity(self) -> str:
        """Who the remote knows this replica as (Sell: the device UUID)."""
        ...

    @property
    def bucket(self) -> Budget:
        """The connection's rate budget."""
        ...

    @property
    def confirm_batch(self) -> int:
        """How many tokens one ``confirm`` takes at most."""
        ...

    @property
    def stats(self) -> RequestCount:
        """Requests sent so far."""
        ...

    async def check_credentials(self) -> None:
        """A read-only request; raises AuthRefused when the token is refused."""
        ...

    async def start(self, checkpoint: str | None = None) -> PullSession | None:
        """Start a session after ``checkpoint`` (the newest confirmed token, kept by
        the store; None at first or after a resync); None when there is nothing new."""
        ...

    async def fetch(self, session_id: str) -> tuple[bytes | None, bool]:
        """The next raw page (None at the end) and whether one may have been lost."""
        ...

    def decode(self, raw: bytes) -> PulledPage:
        """A raw page as neutral items; raises a ConnectorError if malformed."""
        ...

    async def confirm(self, tokens: list[str]) -> None:
        """Tell the remote that these committed tokens are stored."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...
