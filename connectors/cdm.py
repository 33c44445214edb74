"""The CDM push client (Boss-Insights-style writes): one ``POST api/{object}`` per item.

The CDM has no idempotency key: posting a create twice creates two records. So an
answer lost after a create may have arrived (a transport error mid-exchange, a 500,
502 or 504), or a create in a resent batch, is never posted blindly: the record is
first looked up by the sync's natural key. Updates carry their id and are simply
posted again.

Parsing lives in ``connectors.cdm_protocol``; this module moves bytes, decides on
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

from replicad.connectors.cdm_protocol import (
    REJECT_STATUS,
    CdmProtocolError,
    NaturalKey,
    error_message,
    item_tracking_id,
    natural_key,
    object_path,
    parse_matches,
    parse_written,
    rejection,
    resolve_lookup,
    write_body,
    write_headers,
)
from replicad.connectors.errors import AuthRefused, ConnectorError, RemoteRefused
from replicad.connectors.http import HttpConnector, async_client
from replicad.connectors.push_model import PushBatch, PushItem, PushOutcome, PushResult
from replicad.connectors.ratelimit import TokenBucket, parse_rate
from replicad.connectors.retry import RETRYABLE_STATUS, RetryPolicy, checked_retry_after, next_wait

log = structlog.get_logger("replicad.cdm")

# Server failures after which a write may have been applied. 408, 425, 429 and 503
# say the request was not (or not yet) handled, so they are retried as they are.
MAYBE_APPLIED_STATUS = frozenset({500, 502, 504})

# Transport errors raised before the request could have left this host: no lookup is
# needed before trying again. Any other transport error may follow a delivered request.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(slots=True)
class CdmSettings:
    """What a CDM push connection needs (built by the daemon from the config)."""

    base_url: str
    token: str = field(repr=False)
    push_to_source: bool = False  # send X-Sync-Data: push (the CDM pushes on to sources)
    sources: tuple[str, ...] = ()  # X-Sync-Sources, only with push_to_source
    natural_key: str | None = None  # the field that finds a create whose answer was lost
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: str | None = None  # e.g. "600/m"; None sends without a client-side budget


@dataclass(slots=True)
class CdmStats:
    """Counts of what went over the wire, for progress, logs and benchmarks."""

    write: int = 0
    lookup: int = 0
    retries: int = 0

    @property
    def total(self) -> int:
        """All HTTP requests, retries included."""
        return self.write + self.lookup + self.retries


class _LostAnswer(Exception):
    """A write may have been applied but its answer is gone (internal signal)."""

    def __init__(self, attempt: int) -> None:
        super().__init__(attempt)
        self.attempt = attempt  # retries used so far: the budget spans the lookups


class CdmClient(HttpConnector):
    """An async CDM write client (satisfies PushConnector)."""

    def __init__(
        self,
        settings: CdmSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = TokenBucket(parse_rate(settings.rate_limit)) if settings.rate_limit else None
        self.stats = CdmStats()
        self._rng = rng or random.Random()
        self._http = async_client(settings.base_url, settings.token, settings.timeout, transport)

    async def push(self, batch: PushBatch) -> PushResult:
        """Write the items in order; remote failures go to ``PushResult.error``.

        A rejected item does not stop the batch. An error that does (auth, outage,
        a malformed answer) returns the outcomes so far; the rest stay in flight.
        """
        result = PushResult()
        for item in batch.items:
            try:
                outcome = await self._push_item(batch, item)
            except ConnectorError as e:
                log.warning(
                    "push.failed",
                    tracking_id=item_tracking_id(batch, item),
                    error=type(e).__name__,
                    message=str(e),
                )
                result.error = e
                break
            if not outcome.confirmed:
                log.info(
                    "push.rejected", tracking_id=item_tracking_id(batch, item), entry=item.entry
                )
            result.outcomes.append(outcome)
        return result

    async def _push_item(self, batch: PushBatch, item: PushItem) -> PushOutcome:
        tracking_id = item_tracking_id(batch, item)
        create = item.id is None
        if create and batch.resend:
            # The earlier attempt may have created the record: look before posting.
            found = await self._find_create(batch.object, item, tracking_id)
            if found is not None:
                return found
        attempt = 0
        while True:
            try:
                return await self._write(batch.object, item, tracking_id, attempt)
            except _LostAnswer as lost:
                attempt = lost.attempt
                found = await self._find_create(batch.object, item, tracking_id)
                if found is not None:
                    return found
                # Nothing arrived: posting again cannot duplicate the record.

    async def _write(self, obj: str, item: PushItem, tracking_id: str, attempt: int) -> PushOutcome:
        """POST the record with bounded retries, ``attempt`` of them already used.

        For a create, a failure after which the write may have been applied raises
        ``_LostAnswer`` (after the backoff wait) instead of posting again.
        """
        s = self.settings
        policy = s.retry
        headers = write_headers(tracking_id, push_to_source=s.push_to_source, sources=s.sources)
        body = write_body(item)
        create = item.id is None
        if attempt == 0:
            self.stats.write += 1  # later attempts count as retries
        while True:
            if self.bucket is not None:
                await self.bucket.acquire()
            delay: float | None = None
            try:
                resp = await self._http.post(object_path(obj), json=body, headers=headers)
                content = resp.content
            except (httpx.TransportError, httpx.DecodingError) as e:
                maybe_applied = not isinstance(e, NOT_SENT_ERRORS)
                reason = type(e).__name__
            else:
                status = resp.status_code
                answer = _decode(content)
                if status in (401, 403):
                    raise AuthRefused(self._auth_message("write", status, answer))
                if status in (200, 201):
                    return parse_written(
                        status,
                        answer,
                        entry=item.entry,
                        tracking_id=tracking_id,
                        echoed=resp.headers.get("X-Tracking-ID"),
                        sync_id=resp.headers.get("X-Sync-ID"),
                    )
                if status in REJECT_STATUS:
                    return PushOutcome(item.entry, rejected=rejection(status, answer))
                if status not in RETRYABLE_STATUS:
                    raise RemoteRefused(self._safe(f"write: {error_message(status, answer)}"))
                maybe_applied = status in MAYBE_APPLIED_STATUS
                reason = f"HTTP {status}"
                delay = checked_retry_after(resp.headers.get("Retry-After"), policy, "write")
            attempt += 1
            wait = next_wait(policy, attempt, delay, self._rng, "write", reason)
            self.stats.retries += 1
            log.warning(
                "push.retry",
                request="write",
                tracking_id=tracking_id,
                reason=reason,
                attempt=attempt,
                wait=wait,
                lookup=create and maybe_applied,
            )
            await anyio.sleep(wait)
            if create and maybe_applied:
                raise _LostAnswer(attempt)

    async def _find_create(self, obj: str, item: PushItem, tracking_id: str) -> PushOutcome | None:
        """The outcome of a create that may have arrived, or None if it surely did not."""
        key = natural_key(item, self.settings.natural_key)
        if not isinstance(key, NaturalKey):
            return PushOutcome(item.entry, rejected=key)
        self.stats.lookup += 1
        status, body = await self._lookup(obj, key, tracking_id)
        if status in REJECT_STATUS:
            return PushOutcome(
                item.entry,
                rejected=(
                    "create may have reached the destination; checking failed "
                    f"({rejection(status, body)}) — run `replicad retry` to post again"
                ),
            )
        ids = parse_matches(status, body, key)
        log.info("push.lookup", tracking_id=tracking_id, field=key.field, matches=len(ids))
        return resolve_lookup(item.entry, key, ids)

    async def _lookup(self, obj: str, key: NaturalKey, tracking_id: str) -> tuple[int, Any]:
        """GET api/{object}?{field}={value} with bounded retries (a read is safe to repeat)."""
        policy = self.settings.retry
        attempt = 0
        while True:
            if self.bucket is not None:
                await self.bucket.acquire()
            delay: float | None = None
            try:
                resp = await self._http.get(
                    object_path(obj),
                    params={key.field: key.value},
                    headers={"X-Tracking-ID": tracking_id},
                )
                content = resp.content
            except (httpx.TransportError, httpx.DecodingError) as e:
                reason = type(e).__name__
            else:
                status = resp.status_code
                answer = _decode(content)
                if status in (401, 403):
                    raise AuthRefused(self._auth_message("lookup", status, answer))
                if status < 300 or status in REJECT_STATUS:
                    return status, answer
                if status not in RETRYABLE_STATUS:
                    raise RemoteRefused(self._safe(f"lookup: {error_message(status, answer)}"))
                reason = f"HTTP {status}"
                delay = checked_retry_after(resp.headers.get("Retry-After"), policy, "lookup")
            attempt += 1
            wait = next_wait(policy, attempt, delay, self._rng, "lookup", reason)
            self.stats.retries += 1
            log.warning(
                "push.retry",
                request="lookup",
                tracking_id=tracking_id,
                reason=reason,
                attempt=attempt,
                wait=wait,
            )
            await anyio.sleep(wait)

    def _auth_message(self, what: str, status: int, body: Any) -> str:
        return self._safe(
            f"{what}: token rejected or missing the api.write scope ({error_message(status, body)})"
        )

    def _safe(self, message: str) -> str:
        # Server messages are echoed into errors; a server that echoes the
        # Authorization header must not get the token into logs or the status page.
        return message.replace(self.settings.token, "***") if self.settings.token else message


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


__all__ = ["CdmClient", "CdmProtocolError", "CdmSettings", "CdmStats"]
