"""Sans-IO rules of Boss-Insights-style CDM writes (``docs/push-wire.md``).

Request bodies, headers and paths are built from a ``PushItem``; answers (status,
decoded JSON and the few response headers that matter) are parsed strictly. Nothing
here does I/O. A body that breaks the contract raises ``CdmProtocolError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import PushBatch, PushItem, PushOutcome

# Statuses that reject one record: retrying the same body will not help, and the next
# item of the batch may still go through.
REJECT_STATUS = frozenset({400, 404, 422})

RETRY_HINT = "run `replicad retry` to post again"


class CdmProtocolError(ConnectorError):
    """The CDM answered something its write API does not allow."""


@dataclass(frozen=True, slots=True)
class NaturalKey:
    """How to find a record by the sync's natural key: ``GET api/{object}?field=value``."""

    field: str
    value: str


def object_path(obj: str) -> str:
    """``/api/{object}``, with the object quoted so it can only ever be one segment."""
    return "/api/" + quote(obj, safe="")


def item_tracking_id(batch: PushBatch, item: PushItem) -> str:
    """The per-record tracking id: stable across retries and resends of the entry."""
    return f"{batch.tracking_id}.{item.entry}"


def write_body(item: PushItem) -> dict[str, Any]:
    """The record's fields, plus ``id`` for an update.

    An ``id`` field left in the data of a create is dropped: on the CDM a body with
    an ``id`` is an update, and a create must never overwrite some other record.
    """
    body = {k: v for k, v in item.data.items() if k != "id"}
    if item.id is not None:
        body["id"] = item.id
    return body


def write_headers(
    tracking_id: str, *, push_to_source: bool, sources: Sequence[str]
) -> dict[str, str]:
    """``X-Tracking-ID`` always; ``X-Sync-Data``/``X-Sync-Sources`` when pushing to sources."""
    headers = {"X-Tracking-ID": tracking_id}
    if push_to_source:
        headers["X-Sync-Data"] = "push"
        if sources:
            headers["X-Sync-Sources"] = ",".join(sources)
    return headers


def parse_written(
    status: int,
    body: Any,
    *,
    entry: int,
    tracking_id: str,
    echoed: str | None,
    sync_id: str | None,
) -> PushOutcome:
    """A 200/201 answer: the record's id, checked against the echoed tracking id.

    An answer whose ``X-Tracking-ID`` is not ours may belong to another request (a
    confused proxy or cache): its id must not be recorded against this entry.
    """
    if status not in (200, 201):
        raise CdmProtocolError(f"unexpected status {status} from a write")
    if echoed != tracking_id:
        got = "no X-Tracking-ID" if echoed is None else f"X-Tracking-ID {echoed[:80]!r}"
        raise CdmProtocolError(f"write of {tracking_id} answered with {got}")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise CdmProtocolError(f"write of {tracking_id} answered without a data object")
    rid = record_id(data.get("id"))
    if rid is None:
        raise CdmProtocolError(f"write of {tracking_id} answered without a record id")
    return PushOutcome(entry, id=rid, sync_id=sync_id or None)


def rejection(status: int, body: Any) -> str:
    """The reason kept in the outbox for a 400/404/422 answer."""
    message = ""
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            message = body["message"]
        fields = [
            f"{e['field']}: {e['message']}"
            for e in body.get("errors") or []
            if isinstance(e, dict) and isinstance(e.get("field"), str)
            if isinstance(e.get("message"), str) and e["message"] not in message
        ]
        message = "; ".join(p for p in [message, *fields] if p)
    message = " ".join(message.split())[:300]
    if status == 422 and message:
        return message
    return f"HTTP {status}" + (f": {message}" if message else "")


def error_message(status: int, body: Any) -> str:
    """One line for an error that stops the batch (never echoes request headers)."""
    detail = ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        detail = " ".join(body["message"].split())[:300]
    return f"HTTP {status}" + (f" ({detail})" if detail else "")


def natural_key(item: PushItem, field_name: str | None) -> NaturalKey | str:
    """The lookup for a create whose answer may be lost, or why there can be none."""
    if field_name is None:
        return (
            "create may have reached the destination; cannot check without a natural "
            f"key (none configured) — {RETRY_HINT}"
        )
    value = _scalar_text(item.data.get(field_name))
    if value is None:
        return (
            "create may have reached the destination; cannot check without natural key "
            f"{field_name!r} — {RETRY_HINT}"
        )
    return NaturalKey(field_name, value)


def parse_matches(status: int, body: Any, key: NaturalKey) -> list[str]:
    """Ids of the listed records whose natural key equals the value exactly.

    The filter is applied again here: a server that ignored the query parameter and
    answered every record must not make an unrelated record look like ours.
    """
    if status != 200:
        raise CdmProtocolError(f"unexpected status {status} from a lookup")
    records = body.get("data") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise CdmProtocolError("lookup answered without a data array")
    ids: list[str] = []
    for n, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise CdmProtocolError(f"lookup record {n} is not an object")
        if _scalar_text(rec.get(key.field)) != key.value:
            continue
        rid = record_id(rec.get("id"))
        if rid is None:
            raise CdmProtocolError(f"lookup record {n} has no id")
        ids.append(rid)
    return ids


def resolve_lookup(entry: int, key: NaturalKey, ids: Sequence[str]) -> PushOutcome | None:
    """One match is the create that arrived; none means post; several cannot be told apart."""
    if len(ids) == 1:
        return PushOutcome(entry, id=ids[0])
    if not ids:
        return None
    return PushOutcome(
        entry,
        rejected=(
            f"create may have reached the destination; {len(ids)} records have "
            f"{key.field} {key.value!r}, cannot tell which — {RETRY_HINT}"
        ),
    )


def record_id(value: Any) -> str | None:
    """A record id as the outbox keeps it (a string), or None if absent or malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value):
        return str(value)
    return None


def _scalar_text(value: Any) -> str | None:
    # Query strings are text: only strings and integers compare reliably both ways.
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
