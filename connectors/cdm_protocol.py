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

# 4xx answers to a write that refuse the record: retrying the same body will not help,
# and the next item of the batch may still go through. 401/403 stop the batch (the
# token), and 408/425/429 are retried.
REJECT_STATUS = frozenset(range(400, 500)) - {401, 403, 408, 425, 429}

# Answers to a lookup that say this server cannot list records by a field.
NO_LOOKUP_STATUS = frozenset({404, 405})

# Where a body may carry the tracking id's echo (the seed says only that it is
# "reflected back in any API responses").
ECHO_KEYS = ("tracking_id", "trackingId", "X-Tracking-ID")

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


@dataclass(frozen=True, slots=True)
class Written:
    """What a 2xx answer to a write says: the outcome, and whether it echoed our
    tracking id (False: no echo at all, which is legal but worth a warning)."""

    outcome: PushOutcome
    echoed: bool


def parse_written(
    status: int,
    body: Any,
    *,
    entry: int,
    tracking_id: str,
    echoed: str | None,
    sync_id: str | None,
) -> Written:
    """A 2xx answer to a write: the destination accepted the record.

    200/201 with the record give its id. A 202 or 204, a body that cannot be read or
    a record without an id still mean accepted: the entry is confirmed without a
    remote id (the pull, or the natural-key lookup, brings it later), and never sent
    again, since CDM writes carry no idempotency key. The tracking echo may come as
    the ``X-Tracking-ID`` header or in the body; one that names another request
    means the answer is not ours (a confused proxy or cache): a protocol error.
    """
    if not 200 <= status < 300:
        raise CdmProtocolError(f"unexpected status {status} from a write")
    echo = echoed if echoed is not None else _body_echo(body)
    if echo is not None and echo != tracking_id:
        raise CdmProtocolError(f"write of {tracking_id} answered with X-Tracking-ID {echo[:80]!r}")
    rid = None
    if isinstance(body, dict):
        data = body.get("data")
        rid = record_id((data if isinstance(data, dict) else body).get("id"))
    return Written(PushOutcome(entry, id=rid, sync_id=sync_id or None), echo is not None)


def _body_echo(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    # A record answered at the top level may have a field of that name: only an
    # envelope ({"data": …}) carries the echo beside the record.
    places = (body, body.get("meta")) if isinstance(body.get("data"), dict) else (body.get("meta"),)
    for where in places:
        if isinstance(where, dict):
            for key in ECHO_KEYS:
                if isinstance(where.get(key), str):
                    return str(where[key])
    return None


def rejection(status: int, body: Any) -> str:
    """The reason kept in the outbox for a 4xx answer that refuses a record."""
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
