"""The emulator's ASGI application: the Sell Sync API routes, push routes, control routes.

Besides the three Sync API routes it answers ``GET /v2/users/self``, which
clients call to check a token without starting a session.  The push destination
routes (``/api/...``, docs/push-wire.md) live in
:mod:`connectors.emulator.push_routes` and write to the same account.

Every Sell route checks, in this order: the bearer token (401), the
``X-Basecrm-Device-UUID`` header (400), the session for fetches (404), then
the fault rules, and only then touches state.  A fault answering an error
status therefore never changes state.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from replicad.connectors.emulator.control import control_routes
from replicad.connectors.emulator.faults import FaultRule, malformed_items
from replicad.connectors.emulator.push_routes import push_routes
from replicad.connectors.emulator.responses import (
    JSON_MEDIA_TYPE,
    TruncatedResponse,
    dump_json,
    error_code,
    error_response,
    json_response,
)
from replicad.connectors.emulator.runtime import DEFAULT_TOKEN, Emulator, emulator_of, has_token
from replicad.connectors.emulator.state import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SESSION_TTL,
    Page,
    SessionLimitError,
    UnknownSessionError,
)

DEVICE_HEADER = "X-Basecrm-Device-UUID"
_OWNER: Final = {
    "id": 1,
    "name": "Emulator Admin",
    "email": "admin@example.com",
    "role": "admin",
    "status": "active",
    "confirmed": True,
    "timezone": "UTC",
    "created_at": "2015-01-01T00:00:00Z",
    "updated_at": "2015-01-01T00:00:00Z",
}


def _refuse_token(request: Request, emulator: Emulator) -> Response | None:
    """The 401 to send unless the request carries ``Authorization: Bearer <token>``."""
    if has_token(request, emulator.token):
        return None
    return error_response(
        401, "unauthorized", "Missing or invalid access token", "Authorization: Bearer required"
    )


def _authorize(request: Request, emulator: Emulator) -> str | Response:
    """The device UUID of an acceptable Sync API request, else the error response to send."""
    refused = _refuse_token(request, emulator)
    if refused is not None:
        return refused
    device = request.headers.get(DEVICE_HEADER, "").strip()
    if not device:
        return error_response(400, "missing_device_uuid", f"The {DEVICE_HEADER} header is required")
    return device


async def _apply_generic(rule: FaultRule | None, request: Request) -> Response | None:
    """Carry out a ``status`` or ``delay`` rule; an error response for ``status``."""
    if rule is None:
        return None
    if rule.action == "status":
        return error_response(
            rule.status,
            error_code(rule.status),
            rule.fault_message(request.headers.get("authorization", "")),
            "emulator fault rule",
            retry_after=rule.retry_after,
        )
    if rule.action == "delay":
        await asyncio.sleep(rule.seconds)
    return None


def _admit(request: Request, endpoint: str) -> tuple[Emulator, str] | Response:
    """Count the request, then check token and device: the emulator and the device
    UUID, or the refusal to send."""
    emulator = emulator_of(request)
    emulator.stats.requests[endpoint] += 1
    device = _authorize(request, emulator)
    if isinstance(device, Response):
        return device
    return emulator, device


async def start_session(request: Request) -> Response:
    """``POST /v2/sync/start``: 201 with the session, or 204 when nothing is queued."""
    admitted = _admit(request, "start")
    if isinstance(admitted, Response):
        return admitted
    emulator, device = admitted
    failure = await _apply_generic(emulator.faults.take("start"), request)
    if failure is not None:
        return failure
    state = emulator.state
    try:
        session = state.start(device)
    except SessionLimitError as exc:
        return error_response(
            429, "too_many_sessions", str(exc), retry_after=float(exc.retry_after)
        )
    if session is None:
        return Response(status_code=204)
    emulator.stats.sessions_started += 1
    base = str(request.base_url).rstrip("/")
    body = {
        "data": {
            "id": session.id,
            "queues": [
                {
                    "data": {
                        "name": "main",
                        "pages": state.pages(session),
                        "total_count": session.total,
                    },
                    "meta": {
                        "type": "sync_queue",
                        "links": {"self": f"{base}/v2/sync/{session.id}/queues/main"},
                    },
                }
            ],
        },
        "meta": {"type": "sync_session"},
    }
    return json_response(body, 201)


def _page_body(page: Page, extra_items: list[dict[str, Any]] | None = None) -> bytes:
    items = page.items + extra_items if extra_items else page.items
    return dump_json(
        {
            "items": items,
            "meta": {
                "type": "collection",
                "count": len(items),
                "count_left": page.count_left,
                "failed_objects": page.failed_objects,
            },
        }
    )


def _unknown_session() -> Response:
    return error_response(404, "not_found", "Unknown synchronization session")


async def fetch_queue(request: Request) -> Response:
    """``GET /v2/sync/{session_id}/queues/main``: 200 with a page, 204 once drained."""
    admitted = _admit(request, "fetch")
    if isinstance(admitted, Response):
        return admitted
    emulator, device = admitted
    state = emulator.state
    session_id = request.path_params["session_id"]
    try:
        session = state.session(device, session_id)
    except UnknownSessionError:
        return _unknown_session()
    page_available = session is not None and state.has_page(session)
    rule = emulator.faults.take("fetch", page_available=page_available)
    failure = await _apply_generic(rule, request)
    if failure is not None:
        return failure
    if rule is not None and rule.action == "delay":
        # The session may have expired or ended while this request slept.
        try:
            session = state.session(device, session_id)
        except UnknownSessionError:
            return _unknown_session()
    if session is None:
        return Response(status_code=204)
    action = rule.action if rule is not None else None
    if action == "empty_page":
        return json_response(
            {
                "items": [],
                "meta": {
                    "type": "collection",
                    "count": 0,
                    "count_left": session.remaining,
                    "failed_objects": [],
                },
            }
        )
    leave_out = rule.count if rule is not None and action == "failed_objects" else 0
    page = state.fetch(session, leave_out=leave_out)
    if page is None:
        return Response(status_code=204)
    body = _page_body(page, malformed_items() if action == "malformed" else None)
    if action == "truncate":
        return TruncatedResponse(body, 200, media_type=JSON_MEDIA_TYPE)
    return Response(body, 200, media_type=JSON_MEDIA_TYPE)


def _ack_keys(raw: bytes) -> list[str] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    data = body.get("data") if isinstance(body, dict) else None
    keys = data.get("ack_keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return None
    return keys


async def acknowledge(request: Request) -> Response:
    """``POST /v2/sync/ack``: 202 once the keys are applied."""
    admitted = _admit(request, "ack")
    if isinstance(admitted, Response):
        return admitted
    emulator, device = admitted
    failure = await _apply_generic(emulator.faults.take("ack"), request)
    if failure is not None:
        return failure
    keys = _ack_keys(await request.body())
    if keys is None:
        return error_response(
            422,
            "invalid_argument",
            'Body must be {"data": {"ack_keys": [string, ...]}}',
        )
    emulator.stats.acked_keys += len(keys)
    emulator.stats.ack_keys_applied += emulator.state.ack(device, keys)
    if emulator.variant:
        return Response(b"OK", 200, media_type="text/plain")
    # The basecrm client unwraps every JSON answer's "data" member, so a bare {}
    # would crash it; an empty data object is the smallest body it accepts.
    return json_response({"data": {}}, 202)


async def users_self(request: Request) -> Response:
    """``GET /v2/users/self``: the token's owner, which clients use to check credentials.

    Not part of the Sync API, so it needs no device header, is not counted in
    the statistics and is never subject to fault rules.
    """
    refused = _refuse_token(request, emulator_of(request))
    if refused is not None:
        return refused
    return json_response({"data": _OWNER, "meta": {"type": "user"}})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in Sell's envelope too, not plain text."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
    return error_response(status, error_code(status), detail)


class Latency:
    """Every API request waits ``seconds`` before it is handled, as over a network
    (a round trip's worth; the control routes a benchmark uses answer at once)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not str(scope["path"]).startswith("/_emulator/"):
            await asyncio.sleep(self.seconds)
        await self.app(scope, receive, send)


def create_app(
    *,
    records: int = 2000,
    seed: int = 1,
    token: str = DEFAULT_TOKEN,
    page_size: int = DEFAULT_PAGE_SIZE,
    session_ttl: float = DEFAULT_SESSION_TTL,
    profile: str = "standard",
    latency: float = 0.0,
) -> Starlette:
    """An emulated Sell account of ``records`` seeded records, as an ASGI app.

    ``latency``: seconds every API request waits before its answer (``Latency``).

    The :class:`~connectors.emulator.runtime.Emulator` behind it is available as
    ``app.state.emulator`` for in-process tests.
    """
    emulator = Emulator.build(
        records=records,
        seed=seed,
        token=token,
        page_size=page_size,
        session_ttl=session_ttl,
        profile=profile,
    )
    routes = [
        Route("/v2/sync/start", start_session, methods=["POST"]),
        Route("/v2/sync/{session_id}/queues/main", fetch_queue, methods=["GET"]),
        Route("/v2/sync/ack", acknowledge, methods=["POST"]),
        Route("/v2/users/self", users_self, methods=["GET"]),
        *push_routes(),
        *control_routes(),
    ]
    middleware = [Middleware(Latency, seconds=latency)] if latency > 0 else []
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: _http_error}, middleware=middleware
    )
    app.state.emulator = emulator
    return app
