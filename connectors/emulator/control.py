"""Test-only control routes under ``/_emulator/`` (no authentication).

* ``GET /_emulator/state`` → ``{"records": {type: {str(id): data}},
  "revisions": {type: {str(id): revision}}, "deleted": {type: [ids]}}``
* ``POST /_emulator/mutate`` (see :mod:`connectors.emulator.mutations`) →
  ``{"results": [{"op", "type", "id", "revision"}]}``
* ``GET /_emulator/faults`` → ``{"rules": [...]}``; ``POST`` ``{"rules": [...]}``
  appends rules; ``DELETE`` removes them all.
* ``GET /_emulator/stats`` → request counters and device queues;
  ``POST /_emulator/stats/reset`` zeroes the counters.
* ``GET /_emulator/pushes`` → ``{"requests": [...]}``, every push request received,
  oldest first; ``POST /_emulator/pushes/reset`` empties the list.

Errors answer ``{"error": message}`` with a 4xx status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from replicad.connectors.emulator.dataset import TYPES
from replicad.connectors.emulator.faults import FaultRuleError, parse_rules
from replicad.connectors.emulator.mutations import MutationError, apply_mutations
from replicad.connectors.emulator.records import RecordStore
from replicad.connectors.emulator.responses import JSON_MEDIA_TYPE, dump_json, json_response
from replicad.connectors.emulator.runtime import emulator_of

# Records serialized per json.dumps call while streaming the state: large
# enough to amortize the call, small enough to keep memory flat at 1M records.
_STATE_BATCH: Final = 2000

_Rows = dict[str, list[tuple[int, dict[str, Any] | None, int]]]


def _error(status_code: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status_code)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None


def _object_members(pairs: Iterator[tuple[str, Any]]) -> Iterator[bytes]:
    """Serialize ``"key":value`` members in batches, comma-separated across batches."""
    first = True
    while True:
        batch = {}
        for key, value in pairs:
            batch[key] = value
            if len(batch) == _STATE_BATCH:
                break
        if not batch:
            return
        # Strip the braces of the batch object to splice it into the outer one.
        yield (b"" if first else b",") + dump_json(batch)[1:-1]
        first = False


def _state_chunks(
    store: RecordStore, rows: _Rows, deleted: dict[str, list[int]]
) -> Iterator[bytes]:
    for section in ("records", "revisions"):
        yield b'{"records":{' if section == "records" else b'},"revisions":{'
        for position, type_ in enumerate(TYPES):
            yield (b"," if position else b"") + dump_json(type_) + b":{"
            pairs: Iterator[tuple[str, Any]]
            if section == "records":
                pairs = (
                    (str(id_), store.materialize(type_, id_, data)) for id_, data, _ in rows[type_]
                )
            else:
                pairs = ((str(id_), revision) for id_, _, revision in rows[type_])
            yield from _object_members(pairs)
            yield b"}"
    yield b'},"deleted":' + dump_json(deleted) + b"}"


async def get_state(request: Request) -> Response:
    """Stream every live record, its revision, and the deleted ids."""
    store = emulator_of(request).state.store
    # Snapshot now; untouched records are rebuilt while streaming, which is
    # consistent because base data never changes (mutations copy, not modify).
    rows = {type_: store.snapshot(type_) for type_ in TYPES}
    deleted = {type_: store.deleted_ids(type_) for type_ in TYPES}

    async def stream() -> AsyncIterator[bytes]:
        for chunk in _state_chunks(store, rows, deleted):
            yield chunk

    return StreamingResponse(stream(), media_type=JSON_MEDIA_TYPE)


async def mutate(request: Request) -> Response:
    """Apply explicit and/or random mutations."""
    state = emulator_of(request).state
    try:
        changes = apply_mutations(state, await _json_body(request))
    except MutationError as exc:
        results = [change.to_json() for change in exc.results]
        return _error(exc.status, exc.message, results=results)
    return json_response({"results": [change.to_json() for change in changes]})


async def faults(request: Request) -> Response:
    """List (GET), append (POST) or clear (DELETE) fault rules."""
    plan = emulator_of(request).faults
    if request.method == "POST":
        try:
            plan.add(parse_rules(await _json_body(request)))
        except FaultRuleError as exc:
            return _error(422, str(exc))
    elif request.method == "DELETE":
        plan.clear()
    return json_response({"rules": plan.to_json()})


async def stats(request: Request) -> Response:
    """Request counters, acknowledged keys, sessions started and device queues."""
    return json_response(emulator_of(request).stats_json())


async def reset_stats(request: Request) -> Response:
    """Zero the counters (device queues are state, not statistics, and stay)."""
    emulator = emulator_of(request)
    emulator.stats.reset()
    return json_response(emulator.stats_json())


async def pushes(request: Request) -> Response:
    """Every push request received, oldest first (docs/push-wire.md)."""
    return json_response(emulator_of(request).pushes.log.to_json())


async def reset_pushes(request: Request) -> Response:
    """Forget the push requests received (the records they wrote stay)."""
    log = emulator_of(request).pushes.log
    log.clear()
    return json_response(log.to_json())


def control_routes() -> list[BaseRoute]:
    """The ``/_emulator/`` routes."""
    return [
        Route("/_emulator/state", get_state, methods=["GET"]),
        Route("/_emulator/mutate", mutate, methods=["POST"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/stats/reset", reset_stats, methods=["POST"]),
        Route("/_emulator/pushes", pushes, methods=["GET"]),
        Route("/_emulator/pushes/reset", reset_pushes, methods=["POST"]),
    ]
