"""The Endgrate push client: one transfer per batch, then its returned data and errors.

A batch becomes one ``POST api/push/transfer`` whose ``transfer_data[i]`` is
``batch.items[i]``; the client then pages through ``api/push/data`` (polling while the
transfer runs) and reads ``api/errors``, and maps both back to one outcome per item.
Endgrate keys every record by ``internal_id`` within a session, so posting a transfer
again — after a lost answer, or when the batch is resent — updates the same records
and never duplicates them: every request here may simply be retried.

Parsing lives in ``connectors.endgrate_protocol``; this module moves bytes, decides on
retries, and never touches SQLite.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import structlog

from replicad.connectors.endgrate_protocol import (
    MAX_PAGE_LIMIT,
    EndgrateProtocolError,
    ReturnedRow,
    TransferError,
    data_params,
    error_message,
    is_pending,
    next_offset,
    outcomes,
    parse_data_page,
    parse_errors,
    parse_transfer,
    transfer_body,
)
from replicad.connectors.errors import AuthRefused, ConnectorError, RemoteRefused, RemoteUnreachable
from replicad.connectors.http import HttpConnector, async_client
from replicad.connectors.push_model import PushBatch, PushResult
from replicad.connectors.ratelimit import TokenBucket, parse_rate
from replicad.connectors.retry import RETRYABLE_STATUS, RetryPolicy, checked_retry_after, next_wait

log = structlog.get_logger("replicad.endgrate")


@dataclass(slots=True)
class EndgrateSettings:
    """What an Endgrate push connection needs (built by the daemon from the config)."""

    base_url: str
    token: str = field(repr=False)
    session_id: str
    disable_upsert: bool = False
    sample_data: bool = False
    synchronous: bool = True
    page_limit: int = 100  # rows per api/push/data page (Endgrate allows 1..1000)
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: str | None = None  # e.g. "600/m"; None sends without a client-side budget
    poll_interval: float = 0.5  # seconds between polls of a transfer still running

    def __post_init__(self) -> None:
        if not 1 <= self.page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be within 1..{MAX_PAGE_LIMIT}")
        if self.poll_interval < 0:
            raise ValueError("poll_interval must not be negative")


@dataclass(slots=True)
class EndgrateStats:
    """Counts of what went over the wire, for progress, logs and benchmarks."""

    transfer: int = 0
    data: int = 0  # api/push/data requests, polls of a running transfer included
    errors: int = 0
    retries: int = 0

    @property
    def total(self) -> int:
        """All HTTP requests, retries included."""
        return self.transfer + self.data + self.errors + self.retries


class EndgrateClient(HttpConnector):
    """An async Endgrate push client bound to one session (satisfies PushConnector)."""

    def __init__(
        self,
        settings: EndgrateSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = TokenBucket(parse_rate(settings.rate_limit)) if settings.rate_limit else None
        self.stats = EndgrateStats()
        self._rng = rng or random.Random()
        self._http = async_client(settings.base_url, settings.token, settings.timeout, transport)

    async def push(self, batch: PushBatch) -> PushResult:
        """Send a batch as one transfer; remote failures go to ``PushResult.error``.

        Outcomes come all at once or not at all: until both the returned data and the
        errors have been read, no item is known to be written, so all stay in flight.
        """
        if not batch.items:
            return PushResult()
        try:
            transfer_id = await self._transfer(batch)
            rows = await self._returned_rows(batch, transfer_id)
            errors = await self._errors(batch, transfer_id)
            result = outcomes(
                batch, transfer_id, rows, errors, sample_data=self.settings.sample_data
            )
        except ConnectorError as e:
            log.warning(
                "push.failed",
                tracking_id=batch.tracking_id,
                error=type(e).__name__,
                message=str(e),
            )
            return PushResult(error=e)
        rejected = sum(1 for o in result if not o.confirmed)
        log.info(
            "push.done",
            tracking_id=batch.tracking_id,
            transfer_id=transfer_id,
            items=len(result),
            rejected=rejected,
        )
        return PushResult(result)

    async def _transfer(self, batch: PushBatch) -> str:
        s = self.settings
        body = transfer_body(
            batch,
            session_id=s.session_id,
            synchronous=s.synchronous,
            disable_upsert=s.disable_upsert,
            sample_data=s.sample_data,
        )
        self.stats.transfer += 1
        status, answer = await self._request(
            "POST", "/api/push/transfer", "push/transfer", batch.tracking_id, json_body=body
        )
        return parse_transfer(status, answer)

    async def _returned_rows(self, batch: PushBatch, transfer_id: str) -> list[ReturnedRow]:
        """Page through api/push/data, polling while the transfer has not completed.

        The wait is bounded by the retry policy's ``max_retry_after``: a transfer still
        running after that is treated like an outage, and the batch is resent later
        (harmless, since Endgrate is idempotent by internal_id).
        """
        s = self.settings
        expected = len(batch.items)
        rows: list[ReturnedRow] = []
        offset: int | None = 0
        deadline = anyio.current_time() + s.retry.max_retry_after
        while offset is not None:
            self.stats.data += 1
            status, body = await self._request(
                "GET",
                "/api/push/data",
                "push/data",
                batch.tracking_id,
                params=data_params(transfer_id, s.page_limit, offset),
                passthrough=(400,),
            )
            if is_pending(status, body):
                if rows:
                    raise EndgrateProtocolError("push/data went back to pending mid-way")
                if anyio.current_time() + s.poll_interval > deadline:
                    raise RemoteUnreachable(
                        f"push/data: transfer {transfer_id} has not completed after "
                        f"{s.retry.max_retry_after:.0f}s"
                    )
                log.debug("push.pending", tracking_id=batch.tracking_id, transfer_id=transfer_id)
                await anyio.sleep(s.poll_interval)
                continue
            if status == 400:
                raise RemoteRefused(f"push/data: {error_message(status, body)}")
            page = parse_data_page(status, body)
            next_at = next_offset(page, expected=expected, offset=offset)
            rows.extend(page.rows)
            offset = next_at
        return rows

    async def _errors(self, batch: PushBatch, transfer_id: str) -> list[TransferError]:
        self.stats.errors += 1
        status, body = await self._request(
            "GET", "/api/errors", "errors", batch.tracking_id, params={"transfer_id": transfer_id}
        )
        return parse_errors(status, body)

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        tracking_id: str,
        *,
        json_body: Any = None,
        params: dict[str, str | int] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """One request with bounded retries; 2xx and ``passthrough`` statuses return.

        Every Endgrate request is idempotent (a transfer is keyed by internal_id), so
        an answer lost after the request may have arrived is simply retried.
        """
        policy = self.settings.retry
        headers = {"X-Tracking-ID": tracking_id}
        attempt = 0
        while True:
            if self.bucket is not None:
                await self.bucket.acquire()
            delay: float | None = None
            try:
                resp = await self._http.request(
                    method, path, json=json_body, params=params, headers=headers
                )
                content = resp.content
            except (httpx.TransportError, httpx.DecodingError) as e:
                reason = type(e).__name__
            else:
                status = resp.status_code
                body = _decode(content)
                if status in (401, 403):
                    raise AuthRefused(
                        self._safe(
                            f"{what}: token rejected or not allowed to push "
                            f"({error_message(status, body)})"
                        )
                    )
                if status < 300 or status in passthrough:
                    if status < 300 and body is None:
                        raise EndgrateProtocolError(f"{what} answered HTTP {status} without JSON")
                    return status, body
                if status not in RETRYABLE_STATUS:
                    raise RemoteRefused(self._safe(f"{what}: {error_message(status, body)}"))
                reason = f"HTTP {status}"
                delay = checked_retry_after(resp.headers.get("Retry-After"), policy, what)
            attempt += 1
            wait = next_wait(policy, attempt, delay, self._rng, what, reason)
            self.stats.retries += 1
            log.warning(
                "push.retry",
                request=what,
                tracking_id=tracking_id,
                reason=reason,
                attempt=attempt,
                wait=wait,
            )
            await anyio.sleep(wait)

    def _safe(self, message: str) -> str:
        # Server messages are echoed into errors; a server that echoes the
        # Authorization header must not get the token into logs or the status page.
        return message.replace(self.settings.token, "***") if self.settings.token else message


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


__all__ = ["EndgrateClient", "EndgrateProtocolError", "EndgrateSettings", "EndgrateStats"]
