"""The push destination routes of docs/push-wire.md: Endgrate's push API and CDM writes.

* ``POST /api/push/transfer``, ``GET /api/push/data``, ``GET /api/errors`` (Endgrate)
* ``POST /api/{object}``, ``GET /api/{object}?field=value``, ``DELETE /api/{object}/{id}``
  (CDM, Boss-Insights style)

Every route counts the request, checks the bearer token (401; no device header is
needed), consults the fault rules, and only then touches state, so a ``status``
fault never changes anything; ``lost_response`` lets the request run in full and
then answers 502 instead.  Every answer echoes the request's ``X-Tracking-ID``,
and every request is logged for ``GET /_emulator/pushes``.  The logic lives in
:mod:`connectors.emulator.push_state`; this module only speaks HTTP.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from replicad.connectors.emulator.push_state import (
    NOT_COMPLETED,
    CdmError,
    Rejecter,
    Transfer,
    UnknownTransferError,
    WireError,
    cdm_delete,
    cdm_list,
    cdm_type,
    cdm_write,
    page_bounds,
    parse_transfer,
)
from replicad.connectors.emulator.responses import json_response
from replicad.connectors.emulator.runtime import Emulator, emulator_of, has_token

# Request headers worth keeping in the push log: how the client asked for the sync.
LOGGED_HEADERS: Final = ("x-sync-data", "x-sync-sources")
# Stands for a POST body that is not JSON at all.
_NOT_JSON: Final = object()


@dataclass(slots=True)
class Answer:
    """A route's response, and whether the request wrote to the account."""

    response: Response
    applied: bool = False


Handler = Callable[[Request, Emulator, str, object], Awaitable[Answer]]


def push_error(status: int, message: str, *, retry_after: float | None = None) -> Response:
    """``{"success": false, "message": ...}``, the push routes' error body."""
    headers = None
    if retry_after is not None:
        # Retry-After must be whole seconds; round up so clients never retry early.
        headers = {"Retry-After": str(max(0, math.ceil(retry_after)))}
    return json_response({"success": False, "message": message}, status, headers)


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _items_in(endpoint: str, body: object) -> int:
    """How many records a request pushes, for the log (reads push none)."""
    if endpoint == "transfer" and isinstance(body, dict):
        data = body.get("transfer_data")
        return len(data) if isinstance(data, list) else 0
    if endpoint == "cdm_delete":
        return 1
    return 1 if endpoint == "cdm_write" and isinstance(body, dict) else 0


def _rejecter(emulator: Emulator, endpoint: str) -> Rejecter:
    return lambda data: emulator.faults.rejection(endpoint, data)


async def _serve(
    request: Request, emulator: Emulator, endpoint: str, handler: Handler, body: object
) -> Answer:
    if not has_token(request, emulator.token):
        return Answer(push_error(401, "Missing or invalid access token"))
    rule = emulator.faults.take(endpoint)
    if rule is not None and rule.action == "status":
        message = rule.fault_message(request.headers.get("authorization", ""))
        return Answer(push_error(rule.status, message, retry_after=rule.retry_after))
    if rule is not None and rule.action == "delay":
        await asyncio.sleep(rule.seconds)
    answer = await handler(request, emulator, endpoint, body)
    if rule is not None and rule.action == "lost_response":
        # The work is done and stays done; only its answer goes missing, as when a
        # proxy times out after the destination committed.
        return Answer(push_error(502, "Injected fault: response lost"), answer.applied)
    return answer


def push_route(endpoint: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint serving ``handler`` as fault endpoint ``endpoint``."""

    async def route(request: Request) -> Response:
        emulator = emulator_of(request)
        emulator.stats.count(endpoint)
        body = await _json_body(request) if request.method == "POST" else None
        answer = await _serve(request, emulator, endpoint, handler, body)
        tracking_id = request.headers.get("x-tracking-id")
        if tracking_id is not None and not emulator.variant:
            answer.response.headers["X-Tracking-ID"] = tracking_id
        emulator.pushes.log.add(
            endpoint=endpoint,
            tracking_id=tracking_id,
            headers={
                name: request.headers[name] for name in LOGGED_HEADERS if name in request.headers
            },
            items=_items_in(endpoint, body),
            applied=answer.applied,
            status=answer.response.status_code,
        )
        return answer.response

    return route


# -- Endgrate ----------------------------------------------------------------------


async def transfer(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``POST /api/push/transfer``: apply the items, answer the transfer id."""
    try:
        push = parse_transfer(body)
    except WireError as exc:
        return Answer(push_error(400, str(exc)))
    done = emulator.pushes.transfer(push, _rejecter(emulator, endpoint))
    if emulator.variant:
        # 201 and 202 in turn, without the "success" member.
        status = 201 if emulator.stats.requests.get("transfer", 0) % 2 else 202
        return Answer(json_response({"transfer_id": done.id}, status), applied=done.written)
    return Answer(json_response({"success": True, "transfer_id": done.id}), applied=done.written)


def _transfer_of(request: Request, emulator: Emulator) -> Transfer | Response:
    transfer_id = request.query_params.get("transfer_id")
    if not transfer_id:
        return push_error(400, "transfer_id is required")
    try:
        return emulator.pushes.get(transfer_id)
    except UnknownTransferError:
        return push_error(404, "Unknown transfer")


async def push_data(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``GET /api/push/data``: one page of a completed transfer's results."""
    params = request.query_params
    try:
        limit, offset = page_bounds(params.get("limit"), params.get("offset"))
    except WireError as exc:
        return Answer(push_error(400, str(exc)))
    found = _transfer_of(request, emulator)
    if isinstance(found, Response):
        return Answer(found)
    if emulator.pushes.poll(found.id) is None:
        return Answer(push_error(400, NOT_COMPLETED))
    count = len(found.results)

    def link(at: int) -> str:
        return str(request.url.include_query_params(limit=limit, offset=at))

    page = found.page(limit, offset)
    more = offset + limit < count
    if emulator.variant:
        # meta.next as the next page's offset, no count, no "success".
        variant_meta = {"next": offset + limit if more else None}
        return Answer(json_response({"meta": variant_meta, "transfer_data": page}))
    meta = {
        "count": count,
        "previous": link(max(0, offset - limit)) if offset > 0 else None,
        "next": link(offset + limit) if more else None,
    }
    return Answer(json_response({"success": True, "meta": meta, "transfer_data": page}))


async def push_errors(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``GET /api/errors``: the failed items of a transfer (known as soon as it is posted).

    The variant profile has no errors list (Endgrate's own document offers a webhook).
    """
    if emulator.variant:
        return Answer(push_error(404, "Not Found"))
    found = _transfer_of(request, emulator)
    if isinstance(found, Response):
        return Answer(found)
    return Answer(json_response({"success": True, "errors": found.errors}))


# -- CDM ---------------------------------------------------------------------------


async def cdm_post(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``POST /api/{object}``: 201 created or 200 updated, 422 invalid, 404 unknown."""
    type_ = cdm_type(request.path_params["object"])
    if type_ is None:
        return Answer(push_error(404, "Unknown object"))
    try:
        written = cdm_write(emulator.state, type_, body, _rejecter(emulator, endpoint))
    except CdmError as exc:
        if exc.status == 422:
            return Answer(json_response({"message": exc.message, "errors": exc.errors}, 422))
        return Answer(push_error(exc.status, exc.message))
    headers: Mapping[str, str] = {}
    if request.headers.get("x-sync-data", "").strip().lower() == "push":
        # Names the asynchronous push to the source systems, which the emulator
        # does not model beyond handing out its id.
        headers = {"X-Sync-ID": str(uuid.uuid4())}
    if emulator.variant:
        # Accepted without a body: 202 for a create, 204 for an update.
        status = 202 if written.created else 204
        return Answer(Response(status_code=status, headers=headers), applied=True)
    status = 201 if written.created else 200
    return Answer(json_response({"data": written.data}, status, headers), applied=True)


async def cdm_get(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``GET /api/{object}?field=value``: the records matching every filter exactly."""
    type_ = cdm_type(request.path_params["object"])
    if type_ is None:
        return Answer(push_error(404, "Unknown object"))
    records = cdm_list(emulator.state.store, type_, dict(request.query_params))
    return Answer(json_response({"data": records}))


async def cdm_remove(request: Request, emulator: Emulator, endpoint: str, body: object) -> Answer:
    """``DELETE /api/{object}/{id}``: 200 ``{"data": {"id": …}}`` (variant: 204, no
    body), 404 when the object is unknown or the record does not exist (any more)."""
    type_ = cdm_type(request.path_params["object"])
    if type_ is None:
        return Answer(push_error(404, "Unknown object"))
    try:
        deleted = cdm_delete(emulator.state, type_, request.path_params["id"])
    except CdmError as exc:
        return Answer(push_error(exc.status, exc.message))
    if emulator.variant:
        return Answer(Response(status_code=204), applied=True)
    return Answer(json_response({"data": {"id": deleted}}), applied=True)


def push_routes() -> list[BaseRoute]:
    """The push destination routes; ``/api/{object}`` and ``/api/{object}/{id}`` come
    last so they never shadow the rest (each route also matches by method)."""
    return [
        Route("/api/push/transfer", push_route("transfer", transfer), methods=["POST"]),
        Route("/api/push/data", push_route("push_data", push_data), methods=["GET"]),
        Route("/api/errors", push_route("push_errors", push_errors), methods=["GET"]),
        Route("/api/{object}", push_route("cdm_write", cdm_post), methods=["POST"]),
        Route("/api/{object}", push_route("cdm_list", cdm_get), methods=["GET"]),
        Route("/api/{object}/{id}", push_route("cdm_delete", cdm_remove), methods=["DELETE"]),
    ]
