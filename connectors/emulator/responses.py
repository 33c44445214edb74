"""HTTP responses of the emulator: JSON bodies, Sell error envelopes, truncated bodies."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

JSON_MEDIA_TYPE: Final = "application/json"

_ERROR_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "invalid_argument",
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def dump_json(payload: Any) -> bytes:
    """Serialize compactly, keeping non-ASCII text as UTF-8 like the real API."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(
    payload: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response serialized in one ``json.dumps`` call."""
    return Response(dump_json(payload), status_code, headers, media_type=JSON_MEDIA_TYPE)


def status_line(status_code: int) -> str:
    """``"401 Unauthorized"``, as in the envelope's ``meta.http_status``."""
    try:
        return f"{status_code} {HTTPStatus(status_code).phrase}"
    except ValueError:
        return str(status_code)


def error_code(status_code: int) -> str:
    """A Sell-style error code for a bare HTTP status."""
    return _ERROR_CODES.get(status_code, "server_error" if status_code >= 500 else "client_error")


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: str = "",
    *,
    retry_after: float | None = None,
) -> Response:
    """An error answer in Sell's envelope, with a fresh ``logref``."""
    body = {
        "errors": [
            {
                "error": {"code": code, "message": message, "details": details or message},
                "meta": {"type": "error"},
            }
        ],
        "meta": {
            "type": "errors",
            "http_status": status_line(status_code),
            "logref": str(uuid.uuid4()),
        },
    }
    headers = None
    if retry_after is not None:
        # Retry-After must be whole seconds; round up so clients never retry early.
        headers = {"Retry-After": str(max(0, math.ceil(retry_after)))}
    return json_response(body, status_code, headers)


class TruncatedBody(ConnectionAbortedError):
    """Raised by :class:`TruncatedResponse` after sending half of its body.

    Under uvicorn an exception after the response started makes the server
    close the connection, so the client sees a body shorter than its declared
    Content-Length (``httpx.RemoteProtocolError``). In-process, through
    ``httpx.ASGITransport``, the exception itself reaches the caller. The server
    side uses no client library's error classes.
    """


class TruncatedResponse(Response):
    """Declares the full Content-Length, sends half of the body, then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise TruncatedBody(
            f"emulator fault: sent {len(half)} of {len(self.body)} bytes, then closed"
        )
