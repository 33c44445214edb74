"""Pure logic of the emulated push destinations (docs/push-wire.md); no HTTP here.

Endgrate transfers and CDM writes go through :class:`~connectors.emulator.state.SyncState`,
the same record store and device queues the Sell Sync API serves, so every pushed
record comes back through the next pull with a new revision.  Creates take the next
free id like any other create; updates merge the pushed fields into the record; a CDM
delete comes back through the pull as a delete entry.

A transfer is applied in full when it is posted, item by item in push order.  An
item and its associations succeed or fail together: all of them are checked first
(validation, reject faults, the ``id`` they name), and only then written,
associations before the item.  The results are kept for ``GET api/push/data``; an
asynchronous transfer reports them only after one poll has been told it has not
yet completed, so clients have to poll.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from replicad.connectors.emulator.dataset import TYPES
from replicad.connectors.emulator.push_match import UpsertMatcher
from replicad.connectors.emulator.records import RecordStore
from replicad.connectors.emulator.state import SyncState

ENDGRATE_TYPES: Final = {
    "crm-contact": "contact",
    "crm-company": "contact",
    "crm-lead": "lead",
    "crm-deal": "deal",
}
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
NOT_COMPLETED: Final = "Transfer has not yet completed"
# Requests remembered for GET /_emulator/pushes: plenty for any test, bounded
# so a long benchmark cannot grow the emulator without limit.
LOG_KEPT: Final = 100_000

# ``(field, message)`` of the reject fault that fires for a pushed record's data.
Rejecter = Callable[[Mapping[str, Any]], tuple[str, str] | None]


class WireError(ValueError):
    """A request is not of the documented shape (answered 400)."""


class UnknownTransferError(KeyError):
    """No transfer has this id."""


# -- Endgrate wire shape ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pushed:
    """One record of a transfer: an item or one of its associations."""

    endgrate_type: str
    internal_id: str
    data: Mapping[str, Any]
    id: str | None = None  # the remote id the client named, as sent

    @property
    def type(self) -> str:
        """The account's record type it is stored as."""
        return ENDGRATE_TYPES[self.endgrate_type]


@dataclass(frozen=True, slots=True)
class TransferItem:
    """One element of ``transfer_data``."""

    record: Pushed
    associations: tuple[Pushed, ...] = ()


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A parsed ``POST api/push/transfer`` body."""

    session_id: str
    endgrate_type: str
    items: tuple[TransferItem, ...]
    synchronous: bool = False
    disable_upsert: bool = False
    sample_data: bool = False


def _endgrate_type(value: object, where: str) -> str:
    if not isinstance(value, str) or value not in ENDGRATE_TYPES:
        raise WireError(f"{where} must be one of {sorted(ENDGRATE_TYPES)}, got {value!r}")
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise WireError(f"{name} must be a boolean, got {value!r}")
    return value


def _pushed(raw: object, endgrate_type: str, where: str) -> Pushed:
    if not isinstance(raw, dict):
        raise WireError(f"{where} must be an object")
    internal_id = raw.get("internal_id")
    if not isinstance(internal_id, str) or not internal_id:
        # Without it the emulator could not keep its idempotency promise.
        raise WireError(f"{where}.internal_id must be a non-empty string")
    id_ = raw.get("id")
    if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, str | int)):
        raise WireError(f"{where}.id must be a string or null, got {id_!r}")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise WireError(f"{where}.data must be an object")
    return Pushed(endgrate_type, internal_id, data, None if id_ is None else str(id_))


def _item(raw: object, endgrate_type: str, index: int) -> TransferItem:
    where = f"transfer_data[{index}]"
    record = _pushed(raw, endgrate_type, where)
    assert isinstance(raw, dict)  # _pushed checked it
    groups = raw.get("associations") or {}
    if not isinstance(groups, dict):
        raise WireError(f"{where}.associations must be an object keyed by endgrate_type")
    associations: list[Pushed] = []
    for type_, entries in groups.items():
        _endgrate_type(type_, f"{where}.associations key")
        if not isinstance(entries, list):
            raise WireError(f"{where}.associations[{type_!r}] must be a list")
        for position, entry in enumerate(entries):
            associations.append(
                _pushed(entry, type_, f"{where}.associations[{type_!r}][{position}]")
            )
    return TransferItem(record, tuple(associations))


def parse_transfer(body: object) -> TransferRequest:
    """Validate a transfer body; raises :class:`WireError` with a readable reason.

    ``synchronous``, ``disable_upsert`` and ``sample_data`` default to false;
    members the contract does not name (webhooks, say) are ignored.
    """
    if not isinstance(body, dict):
        raise WireError("body must be a JSON object")
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise WireError("session_id must be a non-empty string")
    endgrate_type = _endgrate_type(body.get("endgrate_type"), "endgrate_type")
    raw_items = body.get("transfer_data")
    if not isinstance(raw_items, list):
        raise WireError("transfer_data must be a list")
    return TransferRequest(
        session_id=session_id,
        endgrate_type=endgrate_type,
        items=tuple(_item(raw, endgrate_type, index) for index, raw in enumerate(raw_items)),
        synchronous=_flag(body, "synchronous"),
        disable_upsert=_flag(body, "disable_upsert"),
        sample_data=_flag(body, "sample_data"),
    )


def page_bounds(limit: str | None, offset: str | None) -> tuple[int, int]:
    """``(limit, offset)`` of ``GET api/push/data``: limit 1..1000 (larger is capped)."""

    def number(raw: str | None, name: str, default: int, minimum: int) -> int:
        if raw is None:
            return default
        # isdecimal() rejects signs and spaces that int() would accept.
        if not raw.isdecimal() or int(raw) < minimum:
            raise WireError(f"{name} must be an integer >= {minimum}, got {raw!r}")
        return int(raw)

    return min(number(limit, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT), number(offset, "offset", 0, 0)


# -- validation ------------------------------------------------------------------


def _negative(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value < 0
    if isinstance(value, str):
        try:
            return float(value) < 0
        except ValueError:
            return False
    return False


def validation_errors(type_: str, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` of every rule the pushed fields of a ``type_`` record break.

    Only the pushed fields are checked: an update keeps the stored ones, which
    already passed.  A null field counts as absent.
    """
    errors: list[tuple[str, str]] = []
    email = data.get("email")
    if type_ == "contact" and email is not None and not (isinstance(email, str) and "@" in email):
        errors.append(("email", "email must contain @"))
    if type_ == "deal" and _negative(data.get("value")):
        errors.append(("value", "value must not be negative"))
    return errors


def record_id(raw: object) -> int | None:
    """The account id a pushed ``id`` names (an integer or its decimal text), else None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if raw >= 1 else None
    if isinstance(raw, str) and raw.isdecimal():
        return int(raw)
    return None


# -- Endgrate transfers ------------------------------------------------------------


@dataclass(slots=True)
class Transfer:
    """One posted transfer: its per-item results and errors."""

    id: str
    completed: bool
    # (id as text, stored data) per item in push order; (None, {}) for failed items.
    results: list[tuple[str | None, Mapping[str, Any]]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def written(self) -> bool:
        """Whether any item was written to the account."""
        return any(id_ is not None for id_, _ in self.results)

    def page(self, limit: int, offset: int) -> list[dict[str, Any]]:
        """The ``transfer_data`` elements of one ``GET api/push/data`` page."""
        return [{"id": id_, "data": data} for id_, data in self.results[offset : offset + limit]]


class PushState:
    """Transfers, the Endgrate idempotency map and upsert index, and the request log."""

    def __init__(self, state: SyncState) -> None:
        self.state = state
        self.log = PushLog()
        self._matcher = UpsertMatcher(state.store)
        # (session_id, endgrate_type, internal_id) -> id of the record it maps to.
        self._ids: dict[tuple[str, str, str], int] = {}
        self._transfers: dict[str, Transfer] = {}

    def transfer(self, request: TransferRequest, reject: Rejecter) -> Transfer:
        """Apply a transfer and remember its results under a new transfer id."""
        transfer = Transfer(id=str(uuid.uuid4()), completed=request.synchronous)
        self._transfers[transfer.id] = transfer
        for index, item in enumerate(request.items):
            if request.sample_data:
                # Sample data only shows the shape during field selection.
                transfer.results.append((None, {}))
                continue
            records = (item.record, *item.associations)
            failures = [error for record in records for error in self._check(record, index, reject)]
            if failures:
                transfer.errors.extend(failures)
                transfer.results.append((None, {}))
                continue
            for association in item.associations:
                self._write(request, association)
            transfer.results.append(self._write(request, item.record))
        return transfer

    def _check(self, record: Pushed, index: int, reject: Rejecter) -> list[dict[str, Any]]:
        def error(error_type: str, text: str) -> dict[str, Any]:
            return {
                "internal_id": record.internal_id,
                "index": index,
                "error_type": error_type,
                "error_resolve_text": text,
            }

        if record.id is not None:
            target = record_id(record.id)
            if target is None or not self.state.store.exists((record.type, target)):
                return [error("not_found", f"{record.endgrate_type} {record.id} does not exist")]
        failures = validation_errors(record.type, record.data)
        if not failures:
            # Consulted only for records that pass, so no rule is spent on a doomed one.
            rejected = reject(record.data)
            failures = [] if rejected is None else [rejected]
        return [error("validation", message) for _, message in failures]

    def _write(self, request: TransferRequest, record: Pushed) -> tuple[str, Mapping[str, Any]]:
        data = {name: value for name, value in record.data.items() if name != "id"}
        if record.endgrate_type == "crm-company":
            data["is_organization"] = True
        key = (request.session_id, record.endgrate_type, record.internal_id)
        target = self._target(request, record, key, data)
        if target is None:
            change = self.state.create(record.type, data)
        else:
            change = self.state.update(record.type, target, data)
        self._ids[key] = change.id
        stored = self.state.store.current((record.type, change.id))[0]
        assert stored is not None  # just written
        return str(change.id), stored

    def _target(
        self,
        request: TransferRequest,
        record: Pushed,
        key: tuple[str, str, str],
        data: Mapping[str, Any],
    ) -> int | None:
        """The record to update, or None to create one."""
        if record.id is not None:
            return record_id(record.id)  # _check made sure it exists
        mapped = self._ids.get(key)
        # A mapped record deleted since is gone: the item falls through to a new one.
        if mapped is not None and self.state.store.exists((record.type, mapped)):
            return mapped
        if request.disable_upsert:
            return None
        return self._matcher.match(record.endgrate_type, data)

    def get(self, transfer_id: str) -> Transfer:
        """The transfer ``transfer_id``; raises :class:`UnknownTransferError`."""
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            raise UnknownTransferError(transfer_id)
        return transfer

    def poll(self, transfer_id: str) -> Transfer | None:
        """The transfer if it has completed, else None.

        An asynchronous transfer completes as this None is handed out, so exactly
        one poll answers "not yet completed".
        """
        transfer = self.get(transfer_id)
        if transfer.completed:
            return transfer
        transfer.completed = True
        return None


# -- CDM writes --------------------------------------------------------------------


class CdmError(Exception):
    """A CDM write refused: the status plus, for 422, the per-field errors."""

    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


@dataclass(frozen=True, slots=True)
class CdmWrite:
    """A CDM write carried out: whether it created the record, and the record as stored."""

    created: bool
    data: Mapping[str, Any]


def cdm_type(object_: str) -> str | None:
    """The account type a CDM ``object`` path names, None if unknown."""
    return object_ if object_ in TYPES else None


def cdm_write(state: SyncState, type_: str, body: object, reject: Rejecter) -> CdmWrite:
    """Create a record, or update the one ``body["id"]`` names; raises :class:`CdmError`.

    No idempotency key: every create makes a new record.
    """
    if not isinstance(body, dict):
        raise CdmError(400, "body must be a JSON object of the record's fields")
    raw_id = body.get("id")
    data = {name: value for name, value in body.items() if name != "id"}
    target = None
    if raw_id is not None:
        target = record_id(raw_id)
        if target is None or not state.store.exists((type_, target)):
            raise CdmError(404, f"{type_} {raw_id!r} does not exist")
    failures = validation_errors(type_, data)
    if not failures:
        rejected = reject(data)
        failures = [] if rejected is None else [rejected]
    if failures:
        errors = [{"field": name, "message": message} for name, message in failures]
        raise CdmError(422, failures[0][1], errors)
    change = state.create(type_, data) if target is None else state.update(type_, target, data)
    stored = state.store.current((type_, change.id))[0]
    assert stored is not None  # just written
    return CdmWrite(created=target is None, data=stored)


def cdm_delete(state: SyncState, type_: str, raw_id: str) -> int:
    """Delete the record ``raw_id`` names and return its id; raises :class:`CdmError`
    (404) when there is no such live record (never was, or already deleted).

    Goes through :meth:`SyncState.delete`, so the deletion reaches every device's
    Sell sync queue as a delete entry.
    """
    target = record_id(raw_id)
    if target is None or not state.store.exists((type_, target)):
        raise CdmError(404, f"{type_} {raw_id!r} does not exist")
    state.delete(type_, target)
    return target


def _text(value: object) -> str:
    """How a stored value compares with a query string: strings as they are, other
    values as their JSON text (``5``, ``true``, ``null``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def cdm_list(store: RecordStore, type_: str, filters: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """Every live ``type_`` record (by id) whose fields equal all of ``filters`` exactly.

    A field the record lacks matches nothing; no filters lists every record.
    """
    return [
        data
        for _, data, _ in store.iter_records(type_)
        if all(name in data and _text(data[name]) == wanted for name, wanted in filters.items())
    ]


# -- request log -------------------------------------------------------------------


class PushLog:
    """Every push request received, oldest first, for ``GET /_emulator/pushes``."""

    def __init__(self) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=LOG_KEPT)

    def add(
        self,
        *,
        endpoint: str,
        tracking_id: str | None,
        headers: Mapping[str, str],
        items: int,
        applied: bool,
        status: int,
    ) -> None:
        """Record one request; ``applied`` means it wrote at least one record."""
        self._entries.append(
            {
                "endpoint": endpoint,
                "tracking_id": tracking_id,
                "headers": dict(headers),
                "items": items,
                "applied": applied,
                "status": status,
            }
        )

    def clear(self) -> None:
        """Forget every request."""
        self._entries.clear()

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /_emulator/pushes``."""
        return {"requests": list(self._entries)}
