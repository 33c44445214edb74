"""Plain data that flows from a pull connector into the store.

Nothing here touches SQLite or HTTP: connectors build these values from the wire,
the store applies them, and tests build them by hand. They live under connectors/
because a connector must import nothing from the store; the store imports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
