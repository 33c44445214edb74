"""Sans-IO parsing of the Sell Sync API: session starts, queue pages, errors, acks.

Every function takes what came off the wire (status code and decoded JSON) and
returns plain data, so the protocol rules are testable without a network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from replicad.connectors.errors import ProtocolError as AnyProtocolError
from replicad.connectors.pull_model import (
    BadItem,
    FailedObject,
    PageBatch,
    RecordChange,
    dumps_raw,
)
from replicad.connectors.salvage import NotAPage, ack_key_in, split_page, storable

# SQLite stores integers in 64 bits: an id or revision outside cannot be stored.
_INT64 = 2**63


class ProtocolError(AnyProtocolError):
    """The server answered something the Sync API does not allow."""


@dataclass(frozen=True, slots=True)
class SyncSession:
    """A started session: its id and the size of its main queue."""

    id: str
    pages: int | None
    total_count: int | None


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One 200 answer of the main queue (possibly with no items)."""

    batch: PageBatch
    count: int
    count_left: int | None


def parse_start(status: int, body: Any) -> SyncSession | None:
    """A 201 starts a session; a 204 means there is nothing to synchronize."""
    if status == 204:
        return None
    if status not in (200, 201):
        raise ProtocolError(f"unexpected status {status} from sync/start")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str | int):
        raise ProtocolError("sync/start answered without a session id")
    pages = total = None
    for queue in data.get("queues") or []:
        q = queue.get("data") if isinstance(queue, dict) else None
        if isinstance(q, dict) and q.get("name") == "main":
            pages = q.get("pages") if isinstance(q.get("pages"), int) else None
            total = q.get("total_count") if isinstance(q.get("total_count"), int) else None
    return SyncSession(str(data["id"]), pages, total)


def parse_page(status: int, body: Any) -> QueuePage | None:
    """A 200 is a page (even an empty one); only a 204 ends the session."""
    if status == 204:
        return None
    if status != 200:
        raise ProtocolError(f"unexpected status {status} from the main queue")
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ProtocolError("queue page without an items array")
    return _page([parse_item(item) for item in body["items"]], body.get("meta"))


def _page(parsed: list[RecordChange | BadItem], meta: Any) -> QueuePage:
    if not isinstance(meta, dict):
        meta = {}
    if not isinstance(meta.get("failed_objects") or [], list):
        raise ProtocolError("queue page whose meta.failed_objects is not an array")
    changes: list[RecordChange] = []
    bad: list[BadItem] = []
    for p in parsed:
        if isinstance(p, RecordChange):
            changes.append(p)
        else:
            bad.append(p)
    failed = [
        FailedObject(str(f.get("type")), str(f.get("id")))
        for f in meta.get("failed_objects") or []
        if isinstance(f, dict)
    ]
    count_left = meta.get("count_left")
    return QueuePage(
        PageBatch(changes, bad, failed),
        count=len(parsed),
        count_left=count_left if type(count_left) is int else None,
    )


def decode_page(content: bytes) -> QueuePage:
    """The body of a 200 queue answer as a page; ProtocolError if it is not a page.

    Quarantine is per item, never per page: a body that does not decode as a whole
    (an item nested too deeply, invalid UTF-8, a broken item) is split into its items,
    each decoded on its own; only a body that is not structurally a page (cut short)
    is a lost page. Items holding what cannot be stored (lone surrogates, NaN or
    Infinity) are quarantined. Pure CPU work, run wherever it is cheapest (the pull
    runs it on the replica's writer thread, next to applying the page).
    """
    constants: list[str] = []
    try:
        body = fast_loads(content)
    except ValueError:
        try:
            body = json.loads(
                content, parse_constant=_noting(constants), parse_float=_overflow(constants)
            )
        except (ValueError, RecursionError):  # RecursionError: nesting too deep to decode
            return _salvaged(content)
    page = parse_page(200, body)
    assert page is not None  # only a 204 ends a session
    # Only a \\uD8xx-style escape decodes to a surrogate, only NaN, Infinity or a
    # number past a double's range (1e400) to a float that cannot be kept: the items
    # are checked when the body has either. (orjson refuses all three: the standard
    # decoder, which notes them, has read such a body.)
    if constants or b"\\ud" in content or b"\\uD" in content:
        page = _without_unstorable(page)
    return page


# A run of 19 digits may be an integer past 64 bits, which orjson would turn into a
# float: such a body (rare) takes the standard library's decoder, which keeps it exact.
# Found by mapping every digit to "0" and searching for 19 of them (C speed: a regular
# expression tries a match at every digit, ten times slower).
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def fast_loads(content: bytes) -> Any:
    """``json.loads(content)``, about twice as fast (orjson), or ValueError where the
    two could differ or orjson refuses (NaN and Infinity, lone surrogates, invalid
    UTF-8, long integers, deep nesting): the caller then uses the standard decoder,
    whose handling of each stays as it was."""
    if _LONG_NUMBER in content.translate(_DIGITS):
        raise ValueError("an integer that may be past 64 bits")
    body = orjson.loads(content)  # orjson.JSONDecodeError is a ValueError
    try:
        # orjson reads 1024 levels, the standard decoder (which quarantines an item
        # too deep for the encoder to store again) fewer: a body nested past orjson's
        # 254-level writer is left to it. Writing a page back costs ~25 µs.
        orjson.dumps(body)
    except TypeError:
        raise ValueError("nested deeply") from None
    return body


def _overflow(seen: list[str]) -> Callable[[str], float]:
    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            seen.append(text)
        return value

    return number


def _noting(seen: list[str]) -> Callable[[str], float]:
    def constant(name: str) -> float:
        seen.append(name)
        return float(name)

    return constant


def _salvaged(content: bytes) -> QueuePage:
    """The items of a body that did not decode as a whole, each decoded on its own."""
    text = content.decode("utf-8", "surrogateescape")
    try:
        texts, meta_text = split_page(text)
    except NotAPage:
        raise ProtocolError("malformed JSON body") from None
    parsed: list[RecordChange | BadItem] = []
    for t in texts:
        try:
            parsed.append(parse_item(json.loads(t)))
        except RecursionError:
            parsed.append(BadItem(storable(t), "item nested too deeply to decode", _key_in(t)))
        except ValueError:
            parsed.append(BadItem(storable(t), "item is not valid JSON", _key_in(t)))
    meta: Any = None
    if meta_text is not None:
        try:
            meta = json.loads(meta_text)
        except (ValueError, RecursionError):
            # Its failed_objects would be lost while the items are acknowledged.
            raise ProtocolError("malformed page meta") from None
    return _without_unstorable(_page(parsed, meta))


def _key_in(text: str) -> str | None:
    """The ack key an undecodable item names, when it can be sent as it is."""
    key = ack_key_in(text)
    return key if key is not None and _unstorable(key) is None else None


def _without_unstorable(page: QueuePage) -> QueuePage:
    """Items holding a value that cannot be stored as it came move to quarantine: a
    lone surrogate (from invalid UTF-8 or a \\uD8xx escape) in a value or a field
    name, or NaN or Infinity (not JSON; SQLite would keep NaN as NULL)."""
    keep: list[RecordChange] = []
    bad = list(page.batch.bad_items)
    for change in page.batch.changes:
        reason = _unstorable(change.type) or _unstorable(change.data)
        ack_key: str | None = change.ack_key
        if _unstorable(ack_key) is not None:
            # Acknowledging a mangled key would ack nothing (or something else).
            reason, ack_key = reason or "item ack key is not valid Unicode", None
        if reason is None:
            keep.append(change)
        else:
            raw = {"data": change.data, "meta": {"type": change.type}}
            bad.append(BadItem(dumps_raw(raw), reason, ack_key, change.type, change.id))
    batch = PageBatch(keep, bad, page.batch.failed_objects)
    return QueuePage(batch, page.count, page.count_left)


def _unstorable(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "item text is not valid Unicode"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "item has a NaN or Infinity value"
    if isinstance(value, dict):
        for k, v in value.items():
            reason = _unstorable(k) or _unstorable(v)
            if reason:
                return reason
    elif isinstance(value, list):
        for v in value:
            reason = _unstorable(v)
            if reason:
                return reason
    return None


def parse_item(item: Any) -> RecordChange | BadItem:
    """One queue item, or the reason it cannot be stored (kept raw in quarantine)."""
    # The well-formed case first, with exact type checks (json.loads makes exact
    # dicts, ints and strs; ``type(x) is int`` also rules out booleans): this runs for
    # every item pulled. Anything else takes the checks below, which say why.
    try:
        meta, data = item["meta"], item["data"]
        sync, type_, rid = meta["sync"], meta["type"], data["id"]
        ack_key, revision = sync["ack_key"], sync["revision"]
    except (KeyError, TypeError):
        pass
    else:
        if (
            type(ack_key) is str
            and ack_key
            and type(revision) is int
            and type(type_) is str
            and type(data) is dict
            and type(rid) is int
            and -_INT64 <= rid < _INT64
            and -_INT64 <= revision < _INT64
            and type(item) is dict
            and type(meta) is dict
            and type(sync) is dict
        ):
            deleted = sync.get("event_type") == "deleted" or (revision == 0 and len(data) == 1)
            return RecordChange(type_, rid, revision, ack_key, deleted, {} if deleted else data)
    return _parse_odd_item(item)


def _parse_odd_item(item: Any) -> RecordChange | BadItem:
    if not isinstance(item, dict):
        return BadItem(dumps_raw(item), "item is not an object", None)
    meta = item.get("meta")
    sync = meta.get("sync") if isinstance(meta, dict) else None
    ack_key = sync.get("ack_key") if isinstance(sync, dict) else None
    if not isinstance(ack_key, str) or not ack_key:
        return BadItem(dumps_raw(item), "item has no meta.sync.ack_key", None)
    assert isinstance(meta, dict) and isinstance(sync, dict)
    type_ = meta.get("type")
    data = item.get("data")
    revision = sync.get("revision")
    reason = None
    if not isinstance(type_, str):
        reason = "item has no meta.type"
    elif not isinstance(data, dict):
        reason = "item data is not an object"
    elif not isinstance(data.get("id"), int) or isinstance(data.get("id"), bool):
        reason = "item data has no integer id"
    elif not isinstance(revision, int) or isinstance(revision, bool):
        reason = "item has no integer meta.sync.revision"
    elif not -_INT64 <= data["id"] < _INT64:
        reason = "item id does not fit a 64-bit integer"
    elif not -_INT64 <= revision < _INT64:
        reason = "item revision does not fit a 64-bit integer"
    if reason is not None:
        return BadItem(dumps_raw(item), reason, ack_key)
    assert isinstance(type_, str) and isinstance(data, dict) and isinstance(revision, int)
    rid: int = data["id"]
    deleted = sync.get("event_type") == "deleted" or (revision == 0 and set(data) == {"id"})
    return RecordChange(type_, rid, revision, ack_key, deleted, {} if deleted else data)


def ack_body(keys: list[str]) -> dict[str, Any]:
    """The ack request body: Sell wraps every request body in a data envelope."""
    return {"data": {"ack_keys": keys}}


def error_message(status: int, body: Any) -> str:
    """A one-line message from Sell's error envelope (never echoes request headers)."""
    parts: list[str] = []
    if isinstance(body, dict):
        for entry in body.get("errors") or []:
            err = entry.get("error") if isinstance(entry, dict) else None
            if isinstance(err, dict):
                text = err.get("message") or err.get("code") or ""
                details = err.get("details")
                parts.append(f"{text}: {details}" if details else str(text))
    detail = "; ".join(p for p in parts if p)[:300]
    return f"HTTP {status}" + (f" ({detail})" if detail else "")
