"""The Sell Sync API client: start a session, drain the main queue, acknowledge.

One keep-alive ``httpx.AsyncClient`` per connection, a token bucket for the remote's
budget, bounded retries with jittered backoff and ``Retry-After``. Parsing lives in
``connectors.sell_protocol``; this module only moves bytes and decides on retries.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import structlog

from replicad.connectors.errors import AuthRefused, RemoteRefused
from replicad.connectors.http import HttpConnector, async_client
from replicad.connectors.ratelimit import SELL_DEFAULT, TokenBucket, parse_rate
from replicad.connectors.retry import RETRYABLE_STATUS, RetryPolicy, checked_retry_after, next_wait
from replicad.connectors.sell_protocol import (
    ProtocolError,
    SyncSession,
    ack_body,
    error_message,
    parse_start,
)

log = structlog.get_logger("replicad.sell")


@dataclass(slots=True)
class SellSettings:
    """What a Sell connection needs (built by the daemon from the config)."""

    base_url: str
    token: str = field(repr=False)
    device_uuid: str
    rate_limit: str = SELL_DEFAULT
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(slots=True)
class RequestStats:
    """Counts of what went over the wire, for progress, logs and benchmarks."""

    start: int = 0
    fetch: int = 0
    ack: int = 0
    retries: int = 0

    @property
    def total(self) -> int:
        """All HTTP requests, retries included."""
        return self.start + self.fetch + self.ack + self.retries


class SellClient(HttpConnector):
    """An async Sell Sync API client bound to one device UUID."""

    def __init__(
        self,
        settings: SellSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        bucket: TokenBucket | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = bucket or TokenBucket(parse_rate(settings.rate_limit))
        self.stats = RequestStats()
        self._rng = rng or random.Random()
        self._queue_request: tuple[str, httpx.Request] | None = None
        self._http = async_client(
            settings.base_url.rstrip("/") + "/v2",
            settings.token,
            settings.timeout,
            transport,
            {"X-Basecrm-Device-UUID": settings.device_uuid},
        )

    async def check_credentials(self) -> None:
        """Ask who the token belongs to (read-only); raises AuthRefused if refused."""
        await self._request("GET", "/users/self", "credentials check")

    async def start(self) -> SyncSession | None:
        """Start a session; None when there is nothing new (204)."""
        self.stats.start += 1
        status, body, _ = await self._request("POST", "/sync/start", "start")
        return parse_start(status, body)

    async def fetch(self, session_id: str) -> tuple[bytes | None, bool]:
        """Next page of the main queue as its undecoded body, None at the end (204).

        Decoding is left to the caller (``sell_protocol.decode_page``), so it can run
        off the event loop. The boolean says whether the page was retried after a
        failure that may have consumed a page on the server (a lost answer): its items
        were not acknowledged, so a later session delivers them again, and the caller
        should start one.
        """
        if self._queue_request is None or self._queue_request[0] != session_id:
            # The same GET for every page of a session: built once, because building
            # (URL parsing, header merging) costs about as much as a third of sending.
            # It carries no cookies set later; the Sync API authenticates by token.
            request = self._http.build_request("GET", f"/sync/{session_id}/queues/main")
            self._queue_request = (session_id, request)
        self.stats.fetch += 1
        status, content, lossy = await self._send(self._queue_request[1], "fetch", decode=False)
        if status == 204:
            return None, lossy
        if status != 200:
            raise ProtocolError(f"unexpected status {status} from the main queue")
        return content, lossy

    async def ack(self, keys: list[str]) -> None:
        """Acknowledge committed items."""
        self.stats.ack += 1
        await self._request("POST", "/sync/ack", "ack", json_body=ack_body(keys))

    async def _request(
        self, method: str, path: str, what: str, json_body: Any = None
    ) -> tuple[int, Any, bool]:
        return await self._send(self._http.build_request(method, path, json=json_body), what)

    async def _send(
        self, request: httpx.Request, what: str, *, decode: bool = True
    ) -> tuple[int, Any, bool]:
        """Send with the rate limit, retries and backoff; (status, body decoded from
        JSON (or its bytes, with ``decode=False``), whether a retry followed a failure
        that may have reached the server)."""
        policy = self.settings.retry
        attempt = 0
        lossy = False
        while True:
            await self.bucket.acquire()
            delay: float | None = None
            reason = ""
            try:
                resp = await self._http.send(request)
                content = resp.content
            except (httpx.TransportError, httpx.DecodingError) as e:
                # The request may have reached the server: for a queue fetch, the page
                # it asked for may be gone from this session.
                lossy = True
                reason = type(e).__name__
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise AuthRefused(
                        f"{what}: token rejected or missing the sync scope "
                        f"({error_message(status, _decode(content))})"
                    )
                if status < 300:
                    if not decode:
                        return status, content, lossy
                    if status == 204 or not content:
                        return status, None, lossy
                    try:
                        return status, json.loads(content), lossy
                    except ValueError:
                        lossy = True
                        reason = "malformed JSON body"
                elif status in RETRYABLE_STATUS:
                    lossy = lossy or status >= 500
                    reason = f"HTTP {status}"
                    delay = checked_retry_after(resp.headers.get("Retry-After"), policy, what)
                else:
                    raise RemoteRefused(f"{what}: {error_message(status, _decode(content))}")
            attempt += 1
            wait = next_wait(policy, attempt, delay, self._rng, what, reason)
            self.stats.retries += 1
            log.warning("http.retry", request=what, reason=reason, attempt=attempt, wait=wait)
            await anyio.sleep(wait)


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


__all__ = ["ProtocolError", "SellClient", "SellSettings", "SyncSession"]
