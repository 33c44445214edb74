"""The Sell Sync API client: start a session, drain the main queue, acknowledge.

One keep-alive ``httpx.AsyncClient`` per connection, a token bucket for the remote's
budget, bounded retries with jittered backoff and ``Retry-After``. Parsing lives in
``connectors.sell_protocol``; this module only moves bytes and decides on retries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from replicad.connectors.exchange import Answer, ConnectorSettings, Exchange, HttpConnector
from replicad.connectors.ratelimit import SELL_DEFAULT, TokenBucket, parse_rate
from replicad.connectors.sell_protocol import (
    ProtocolError,
    QueuePage,
    SyncSession,
    ack_body,
    decode_page,
    error_message,
    parse_start,
)

log = structlog.get_logger("replicad.sell")


@dataclass(slots=True)
class SellSettings(ConnectorSettings):
    """What a Sell connection needs (built by the daemon from the config)."""

    device_uuid: str = ""
    rate_limit: str | None = SELL_DEFAULT
    ack_batch: int = 1000  # ack keys per ack request


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
        self._bucket = bucket or TokenBucket(parse_rate(settings.rate_limit or SELL_DEFAULT))
        self.stats = RequestStats()
        self._queue_request: tuple[str, httpx.Request] | None = None
        self._exchange = Exchange(
            settings,
            self.stats,
            path="/v2",
            headers={"X-Basecrm-Device-UUID": settings.device_uuid},
            transport=transport,
            bucket=self._bucket,
            rng=rng,
            describe=error_message,
            auth_hint="token rejected or missing the sync scope",
        )

    @property
    def bucket(self) -> TokenBucket:
        """The connection's budget (Sell always has one; its state outlives restarts)."""
        return self._bucket

    async def check_credentials(self) -> None:
        """Ask who the token belongs to (read-only); raises AuthRefused if refused."""
        await self._send("GET", "/users/self", "credentials check")

    async def start(self, checkpoint: str | None = None) -> SyncSession | None:
        """Start a session; None when there is nothing new (204). The server keeps
        the device's queue, so a checkpoint means nothing here."""
        self.stats.start += 1
        answer = await self._send("POST", "/sync/start", "start", json_required=True)
        return parse_start(answer.status, answer.json())

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
            request = self._exchange.http.build_request("GET", f"/sync/{session_id}/queues/main")
            self._queue_request = (session_id, request)
        self.stats.fetch += 1
        answer = await self._exchange.send(self._queue_request[1], "fetch")
        if answer.status == 204:
            return None, answer.lossy
        if answer.status != 200:
            raise ProtocolError(f"unexpected status {answer.status} from the main queue")
        return answer.content, answer.lossy

    @property
    def identity(self) -> str:
        """The device UUID the Sync API knows this replica by."""
        return self.settings.device_uuid

    @property
    def confirm_batch(self) -> int:
        """Ack keys per ack request (``ack_batch``)."""
        return self.settings.ack_batch

    def decode(self, raw: bytes) -> QueuePage:
        """A page body as neutral items (``sell_protocol.decode_page``; pure, so the
        daemon runs it off the event loop)."""
        return decode_page(raw)

    async def confirm(self, tokens: list[str]) -> None:
        """Acknowledge committed items (the seam's name for it)."""
        await self.ack(tokens)

    async def ack(self, keys: list[str]) -> None:
        """Acknowledge committed items: any 2xx is success, whatever its body (the
        reference shows none)."""
        self.stats.ack += 1
        await self._send("POST", "/sync/ack", "ack", json_body=ack_body(keys))

    async def _send(
        self,
        method: str,
        path: str,
        what: str,
        json_body: Any = None,
        *,
        json_required: bool = False,
    ) -> Answer:
        request = self._exchange.http.build_request(method, path, json=json_body)
        return await self._exchange.send(request, what, json_required=json_required)


__all__ = ["ProtocolError", "SellClient", "SellSettings", "SyncSession"]
