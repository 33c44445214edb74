"""Sans-IO rules of Boss-Insights-style CDM writes (``docs/push-wire.md``).

Request bodies, headers and paths are built from a ``PushItem``; which requests an
item needs (``plan``: a write, a delete, or a lookup by the sync's key field first)
follows from its op and the batch's operation; answers (status, decoded JSON and the
few response headers that matter) are parsed strictly. Nothing here does I/O. A body
that breaks the contract raises ``CdmProtocolError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import PushBatch, PushItem, PushOutcome

# 4xx answers to a write that refuse the record: retrying the same body will not help,
# and the next item of the batch may still go through. 401/403 stop the batch (the
# token), and 408/425/429 are retried.
REJECT_STATUS = frozenset(range(400, 500)) - {401, 403, 408, 425, 429}

# Answers to a lookup that say this server cannot list records by a field.
NO_LOOKUP_STATUS = frozenset({404, 405})

# Answers to an update or a delete naming an id that say the destination has no such
# record (Census's not_found): final, but not a refusal of the user's data.
NOT_FOUND_STATUS = frozenset({404, 410})

# Where a body may carry the tracking id's echo (the seed says only that it is
# "reflected back in any API responses").
ECHO_KEYS = ("tracking_id", "trackingId", "X-Tracking-ID")

RETRY_HINT = (
    "check the destination for the record, then run `replicad retry ENTRY` to post it again"
)
# An update with no record id: the create was accepted without naming the record, and
# the pull brought no record equal to what it sent (the outbox holds such edits while
# it waits for one).
NO_ID_YET = (
    "the record's id is not known (its create was accepted without one, and no pulled "
    "record matched what it sent); an update without an id would create a second "
    "record. The pull keeps that record as a row of its own: make the change there"
)


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


def record_path(obj: str, rid: str) -> str:
    """``/api/{object}/{id}``, each quoted so it can only ever be one segment (an id
    holding ``/`` or ``..`` must not reach another path)."""
    return object_path(obj) + "/" + quote(rid, safe="")


def item_tracking_id(batch: PushBatch, item: PushItem) -> str:
    """The per-record tracking id: stable across retries and resends of the entry."""
    return f"{batch.tracking_id}.{item.entry}"


# What one match, and what no match, of a lookup by key means for an item.
OnMatch = Literal["update", "confirm"]
OnNone = Literal["create", "not_found"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How an item goes over the wire.

    ``write``: one POST, a create without an id, an update with one (every item of a
    captured table, and any item that carries its id). ``delete``: one DELETE of
    ``item.id``. ``match``: first ``GET api/{object}?{key_field}=value``; one match is
    then updated (``on_match="update"``: the item's data posted with that id) or taken
    as it is (``"confirm"``: an insert never changes an existing record); no match is
    created or ends not_found; several cannot be told apart and reject the item.
    """

    action: Literal["write", "delete", "match"]
    on_match: OnMatch = "update"
    on_none: OnNone = "create"


WRITE = Plan("write")


def plan(batch: PushBatch, item: PushItem) -> Plan:
    """The requests ``item`` needs, by its op, the batch's operation and key field.

    Only a diffed sync (``key_field`` set) looks records up before writing: a
    captured table knows its records by id, and keeps the plain write. ``append``
    always creates; ``update`` never does (an item the destination lacks is
    not_found); ``insert`` never changes an existing record; ``upsert`` and
    ``mirror`` update the record with the item's key, or create it.
    """
    if item.op == "delete":
        return Plan("delete")
    if batch.key_field is None or item.id is not None:
        return WRITE
    if item.op == "update" or batch.operation == "update":
        return Plan("match", on_match="update", on_none="not_found")
    if batch.operation == "append":
        return WRITE
    if batch.operation == "insert":
        return Plan("match", on_match="confirm", on_none="create")
    return Plan("match", on_match="update", on_none="create")


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
    echo = _echo(body, echoed, tracking_id, "write")
    rid = None
    if isinstance(body, dict):
        data = body.get("data")
        rid = record_id((data if isinstance(data, dict) else body).get("id"))
    return Written(PushOutcome(entry, id=rid, sync_id=sync_id or None), echo is not None)


def parse_deleted(
    status: int,
    body: Any,
    *,
    entry: int,
    rid: str,
    tracking_id: str,
    echoed: str | None,
    sync_id: str | None,
) -> Written:
    """A 2xx answer to ``DELETE api/{object}/{id}``: the record is gone.

    Whatever the status (200 with ``{"data": {"id": …}}``, 202, 204) and body, the
    entry is confirmed with the id it deleted; only an echo naming another request is
    refused, as for a write (the answer is not ours).
    """
    if not 200 <= status < 300:
        raise CdmProtocolError(f"unexpected status {status} from a delete")
    echo = _echo(body, echoed, tracking_id, "delete")
    return Written(PushOutcome(entry, id=rid, sync_id=sync_id or None), echo is not None)


def _echo(body: Any, echoed: str | None, tracking_id: str, what: str) -> str | None:
    """The tracking echo of an answer (header first, then body), checked to be ours."""
    echo = echoed if echoed is not None else _body_echo(body)
    if echo is not None and echo != tracking_id:
        raise CdmProtocolError(f"{what} of {tracking_id} answered with X-Tracking-ID {echo[:80]!r}")
    return echo


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


def missing(obj: str, rid: str, status: int, body: Any) -> str:
    """The reason kept for an update or delete of a record the destination lacks."""
    return f"{obj} {rid} does not exist at the destination ({rejection(status, body)})"


def match_key(item: PushItem, field_name: str) -> NaturalKey | str:
    """The lookup that finds the destination's record for ``item`` by the sync's key
    field, or why there can be none (the item has no usable value of it)."""
    value = _scalar_text(item.data.get(field_name))
    if value is None:
        return (
            f"cannot match the record at the destination: no text or integer value of "
            f"{field_name!r}"
        )
    return NaturalKey(field_name, value)


def no_match(obj: str, key: NaturalKey) -> str:
    """The not_found reason of an update whose key the destination does not have."""
    return f"no {obj} with {key.field} = {key.value!r} at the destination"


def ambiguous(obj: str, key: NaturalKey, count: int) -> str:
    """The rejection of an item whose key several destination records share."""
    return (
        f"{count} {obj} records have {key.field} = {key.value!r} at the destination; "
        "cannot tell which one to write"
    )


def cannot_look_up(key: NaturalKey, status: int) -> str:
    """The rejection of an item that must be matched on a server without lookups."""
    return (
        f"cannot match the record at the destination: it cannot look records up by "
        f"{key.field} (HTTP {status})"
    )


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
        in_doubt=True,
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
