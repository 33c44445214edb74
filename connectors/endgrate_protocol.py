"""Sans-IO rules of the Endgrate push API (``docs/push-wire.md``).

Request bodies are built from a ``PushBatch``; answers (status code and decoded JSON)
are parsed strictly into plain data, and the returned rows and errors are mapped back
to one ``PushOutcome`` per item. Nothing here does I/O, so every rule is testable
without a network. A body that breaks the contract raises ``EndgrateProtocolError``:
the batch then stays in flight, which is safe because Endgrate is idempotent by
``internal_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import (
    JSON,
    Associated,
    Operation,
    PushBatch,
    PushItem,
    PushOutcome,
)

MAX_PAGE_LIMIT = 1000  # the most rows api/push/data returns per page
NOT_COMPLETED = "transfer has not yet completed"


class EndgrateProtocolError(ConnectorError):
    """Endgrate answered something its push API does not allow."""


@dataclass(frozen=True, slots=True)
class ReturnedRow:
    """One element of ``api/push/data``: the remote id (None if failed or sample data)."""

    id: str | None


@dataclass(frozen=True, slots=True)
class DataPage:
    """One 200 answer of ``api/push/data``."""

    count: int | None  # the total number of rows of the transfer, when given
    rows: tuple[ReturnedRow, ...]
    has_next: bool


@dataclass(frozen=True, slots=True)
class TransferError:
    """One element of ``api/errors``: which item failed, and why."""

    index: int | None
    internal_id: str | None
    error_type: str
    text: str

    @property
    def reason(self) -> str:
        """The rejection reason kept in the outbox."""
        return f"{self.error_type}: {self.text}" if self.text else self.error_type


# --- requests -------------------------------------------------------------------------


# Operations whose inserts must create a record, never merge into a matching one:
# Endgrate would otherwise upsert a new internal_id into an existing record.
CREATE_ONLY: frozenset[Operation] = frozenset({"insert", "append"})
# Operations a transfer can carry. Endgrate has no delete (mirror) and no write that
# only updates (update): the config refuses those syncs for it.
TRANSFER_OPERATIONS: frozenset[Operation] = frozenset({"upsert", "insert", "append"})


def unsupported(batch: PushBatch) -> str | None:
    """Why ``batch`` cannot go to Endgrate at all, or None.

    The config never builds such a batch (it refuses ``update`` and ``mirror`` for
    Endgrate, and deletes come only from mirror pushes): one arriving is a bug, so it
    fails the push, sending nothing, rather than write what the user did not ask for.
    """
    if batch.operation not in TRANSFER_OPERATIONS:
        return f"endgrate cannot push the {batch.operation!r} operation"
    if any(item.op == "delete" for item in batch.items):
        return "endgrate cannot delete records"
    return None


def transfer_body(
    batch: PushBatch,
    *,
    session_id: str,
    synchronous: bool,
    disable_upsert: bool,
    sample_data: bool,
) -> dict[str, Any]:
    """The ``POST api/push/transfer`` body; ``transfer_data[i]`` is ``batch.items[i]``.

    ``disable_upsert`` is sent true for an ``insert`` or ``append`` sync whatever the
    setting: those create records and never change an existing one.
    """
    return {
        "session_id": session_id,
        "endgrate_type": batch.object,
        "synchronous": synchronous,
        "disable_upsert": disable_upsert or batch.operation in CREATE_ONLY,
        "sample_data": sample_data,
        "transfer_data": [item_payload(item) for item in batch.items],
    }


def item_payload(item: PushItem) -> dict[str, Any]:
    """One ``transfer_data`` element: ``id`` only when the remote id is known."""
    out: dict[str, Any] = {"internal_id": item.internal_id, "data": dict(item.data)}
    if item.id is not None:
        out["id"] = item.id
    if item.associations:
        out["associations"] = associations_payload(item.associations)
    return out


def associations_payload(assocs: Sequence[Associated]) -> dict[str, list[dict[str, JSON]]]:
    """Associated records grouped by their endgrate_type, in first-seen order."""
    grouped: dict[str, list[dict[str, JSON]]] = {}
    for a in assocs:
        entry: dict[str, JSON] = {"internal_id": a.internal_id, "data": dict(a.data)}
        if a.id is not None:
            entry["id"] = a.id
        grouped.setdefault(a.type, []).append(entry)
    return grouped


def data_params(transfer_id: str, limit: int, offset: int) -> dict[str, str | int]:
    """Query parameters of one ``api/push/data`` page."""
    return {"transfer_id": transfer_id, "limit": limit, "offset": offset}


# --- answers --------------------------------------------------------------------------


def is_pending(status: int, body: Any) -> bool:
    """Whether ``api/push/data`` says the transfer is still running (poll again)."""
    if status != 400 or not isinstance(body, dict):
        return False
    message = body.get("message")
    return isinstance(message, str) and NOT_COMPLETED in message.lower()


def parse_transfer(status: int, body: Any) -> str | None:
    """The transfer id of an accepted ``POST api/push/transfer``, if the answer names one.

    Any 2xx is an accepted transfer (the seed fixes neither the status nor the body):
    without a transfer id there is simply no returned data to read.
    """
    if not 200 <= status < 300:
        raise EndgrateProtocolError(f"unexpected status {status} from push/transfer")
    tid = body.get("transfer_id") if isinstance(body, dict) else None
    if _is_int(tid):
        return str(tid)
    return tid if isinstance(tid, str) and tid.strip() else None


def parse_data_page(status: int, body: Any) -> DataPage:
    """One page of returned data: ``transfer_data`` rows in push order.

    Tolerant where the seed is silent: any 2xx; ``success`` may be absent (but not
    false); ``meta`` and ``meta.count`` may be absent; ``meta.next`` may be a link, a
    number (an offset) or null; a row without ``id`` has none.
    """
    _expect_success(status, body, "push/data")
    meta = body.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise EndgrateProtocolError("push/data meta is not an object")
    count = meta.get("count")
    if count is not None and (not _is_int(count) or count < 0):
        raise EndgrateProtocolError("push/data meta.count is not a count")
    nxt = meta.get("next")
    if nxt is not None and not (isinstance(nxt, str) or _is_int(nxt)):
        raise EndgrateProtocolError("push/data meta.next is neither a link, a number nor null")
    raw = body.get("transfer_data")
    if not isinstance(raw, list):
        raise EndgrateProtocolError("push/data answered without a transfer_data array")
    rows: list[ReturnedRow] = []
    for n, row in enumerate(raw):
        if not isinstance(row, dict):
            raise EndgrateProtocolError(f"push/data row {n} is not an object")
        if "data" in row and row["data"] is not None and not isinstance(row["data"], dict):
            raise EndgrateProtocolError(f"push/data row {n} data is not an object")
        rows.append(ReturnedRow(_remote_id(row.get("id"), f"push/data row {n}")))
    return DataPage(count, tuple(rows), nxt is not None and nxt != "")


def next_offset(page: DataPage, *, expected: int, offset: int) -> int | None:
    """Where the next page starts (None after the last), checking the paging adds up.

    Offsets are computed here rather than taken from ``meta.next``: following a link
    the server chose could send the Bearer token to another host, and a number may be
    an offset or a page number.
    """
    if page.count is not None and page.count != expected:
        raise EndgrateProtocolError(
            f"push/data reports {page.count} rows for a transfer of {expected} items"
        )
    end = offset + len(page.rows)
    if end > expected:
        raise EndgrateProtocolError("push/data returned more rows than were pushed")
    if not page.has_next or end == expected:
        if end != expected:
            raise EndgrateProtocolError(
                f"push/data ended after {end} rows for a transfer of {expected} items"
            )
        return None
    if not page.rows:
        # An empty page that still links onwards would make us poll forever.
        raise EndgrateProtocolError("push/data returned an empty page with a next link")
    return end


def parse_errors(status: int, body: Any) -> list[TransferError]:
    """The transfer's errors; each must name its item by ``index`` or ``internal_id``."""
    _expect_success(status, body, "errors")
    raw = body.get("errors")
    if not isinstance(raw, list):
        raise EndgrateProtocolError("errors answered without an errors array")
    out: list[TransferError] = []
    for n, err in enumerate(raw):
        if not isinstance(err, dict):
            raise EndgrateProtocolError(f"errors[{n}] is not an object")
        index = err.get("index")
        internal_id = err.get("internal_id")
        if index is not None and (not _is_int(index) or index < 0):
            raise EndgrateProtocolError(f"errors[{n}].index is not a position")
        if internal_id is not None and not isinstance(internal_id, str):
            raise EndgrateProtocolError(f"errors[{n}].internal_id is not a string")
        if index is None and internal_id is None:
            raise EndgrateProtocolError(f"errors[{n}] names neither an index nor an internal_id")
        error_type = err.get("error_type")
        if not isinstance(error_type, str) or not error_type:
            raise EndgrateProtocolError(f"errors[{n}] has no error_type")
        text = err.get("error_resolve_text")
        if text is not None and not isinstance(text, str):
            raise EndgrateProtocolError(f"errors[{n}].error_resolve_text is not a string")
        out.append(TransferError(index, internal_id, error_type, " ".join((text or "").split())))
    return out


def rows_all_have_ids(rows: Sequence[ReturnedRow], expected: int) -> bool:
    """Whether every pushed item came back with its remote id: then each was written,
    and the errors list need not be read."""
    return len(rows) == expected and all(row.id is not None for row in rows)


@dataclass(slots=True)
class Outcomes:
    """The outcomes of a transfer, and the items still without an answer.

    ``unresolved`` lists positions whose row has no id and that no error names: the
    destination accepted them (the transfer did), but their id may come on a re-read.
    """

    outcomes: list[PushOutcome]
    unresolved: list[int]


def outcomes(
    batch: PushBatch,
    transfer_id: str,
    rows: Sequence[ReturnedRow],
    errors: Sequence[TransferError] | None,
    *,
    sample_data: bool,
    final: bool,
) -> Outcomes:
    """One outcome per item, in push order.

    An item that came back with its id was written and is confirmed with it. An item
    without one is rejected when the errors list names it: that is the only explicit
    refusal of an item. Every other item was accepted: confirmed (no
    id: the destination returns none, or ``errors`` is None because the server has no
    errors list) confirmed without one once ``final``, and left unresolved before.
    """
    items = batch.items
    if len(rows) != len(items):
        raise EndgrateProtocolError(
            f"push/data returned {len(rows)} rows for a transfer of {len(items)} items"
        )
    reasons: dict[int, list[str]] = {}
    for err in errors or ():
        for i in _error_positions(items, err):
            reasons.setdefault(i, []).append(err.reason)
    out: list[PushOutcome] = []
    unresolved: list[int] = []
    for i, (item, row) in enumerate(zip(items, rows, strict=True)):
        if row.id is not None and not sample_data:
            # Written: the record has its id. An error naming the item (or one of its
            # associations) cannot undo that; rejecting it would drop the id and the
            # pull would bring the record back as a second row.
            out.append(PushOutcome(item.entry, id=row.id, transfer_id=transfer_id))
        elif i in reasons:
            out.append(
                PushOutcome(item.entry, rejected="; ".join(reasons[i]), transfer_id=transfer_id)
            )
        elif sample_data or row.id is not None or final:
            rid = None if sample_data else row.id
            out.append(
                PushOutcome(item.entry, id=rid, transfer_id=transfer_id, written=not sample_data)
            )
        else:
            unresolved.append(i)
    return Outcomes(out, unresolved)


def accepted_without_data(batch: PushBatch) -> list[PushOutcome]:
    """Outcomes of a transfer accepted without a transfer id: every item confirmed,
    without a remote id (the pull brings the records)."""
    return [PushOutcome(item.entry) for item in batch.items]


def _error_positions(items: Sequence[PushItem], err: TransferError) -> list[int]:
    """The items an error is about: by index, else every item carrying its internal_id.

    An ``internal_id`` may be an associated record's: the item it was pushed with is
    the one the outbox can show the reason on.
    """
    if err.index is not None:
        if err.index >= len(items):
            raise EndgrateProtocolError(
                f"errors names index {err.index} of a transfer of {len(items)} items"
            )
        if err.internal_id is not None and err.internal_id not in _ids_of(items[err.index]):
            raise EndgrateProtocolError(
                f"errors names index {err.index} with another item's internal_id"
            )
        return [err.index]
    found = [i for i, item in enumerate(items) if err.internal_id in _ids_of(item)]
    if not found:
        raise EndgrateProtocolError("errors names an internal_id that was not pushed")
    return found


def _ids_of(item: PushItem) -> set[str]:
    return {item.internal_id, *(a.internal_id for a in item.associations)}


def _expect_success(status: int, body: Any, what: str) -> None:
    if not 200 <= status < 300:
        raise EndgrateProtocolError(f"unexpected status {status} from {what}")
    if not isinstance(body, dict):
        raise EndgrateProtocolError(f"{what} answered without a JSON object")
    if body.get("success") is False:
        raise EndgrateProtocolError(f"{what} answered success: false")


def _is_int(value: Any) -> TypeGuard[int]:
    # bool is an int subclass; a JSON true is never a count or a position.
    return isinstance(value, int) and not isinstance(value, bool)


def _remote_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if _is_int(value) or (isinstance(value, str) and value):
        return str(value)
    raise EndgrateProtocolError(f"{where} id is neither a string, an integer nor null")
