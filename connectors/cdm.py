"""The CDM push client (Boss-Insights-style writes): one ``POST api/{object}`` per item.

The CDM has no idempotency key: posting a create twice creates two records. So an
answer lost after a create may have arrived (a transport error mid-exchange, a 500,
502 or 504), or a create in a resent batch, is never posted blindly: the record is
first looked up by the sync's natural key. Updates carry their id and are simply
posted again.

Accepted is never rejected (``docs/push-wire.md``): any 2xx confirms the record, with
its id when the answer carries one; only a 4xx answer to the write rejects it.

Parsing lives in ``replicad.connectors.cdm_protocol``; this module moves bytes through
the shared exchange and never touches SQLite.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx
import structlog

from replicad.connectors.cdm_protocol import (
    NO_LOOKUP_STATUS,
    REJECT_STATUS,
    RETRY_HINT,
    CdmProtocolError,
    NaturalKey,
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
from replicad.connectors.errors import ConnectorError
from replicad.connectors.exchange import ConnectorSettings, Exchange, HttpConnector, MaybeApplied
from replicad.connectors.push_model import PushBatch, PushItem, PushOutcome, PushResult

log = structlog.get_logger("replicad.cdm")


@dataclass(slots=True)
class CdmSettings(ConnectorSettings):
    """What a CDM push connection needs (built by the daemon from the config)."""

    push_to_source: bool = False  # send X-Sync-Data: push (the CDM pushes on to sources)
    sources: tuple[str, ...] = ()  # X-Sync-Sources, only with push_to_source
    natural_key: str | None = None  # the field that finds a create whose answer was lost


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
        self.stats = CdmStats()
        self._warned_no_echo = False
        self._exchange = Exchange(
            settings,
            self.stats,
            transport=transport,
            rng=rng,
            auth_hint="token rejected or missing the api.write scope",
        )

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
            except MaybeApplied as lost:
                attempt = lost.attempt
                found = await self._find_create(batch.object, item, tracking_id)
                if found is not None:
                    return found
                # Nothing arrived: posting again cannot duplicate the record.

    async def _write(self, obj: str, item: PushItem, tracking_id: str, attempt: int) -> PushOutcome:
        """POST the record through the exchange, ``attempt`` retries already used.

        For a create, a failure after which the write may have been applied raises
        ``MaybeApplied`` (after the backoff wait) instead of posting again.
        """
        s = self.settings
        headers = write_headers(tracking_id, push_to_source=s.push_to_source, sources=s.sources)
        if attempt == 0:
            self.stats.write += 1  # later attempts count as retries
        request = self._exchange.http.build_request(
            "POST", object_path(obj), json=write_body(item), headers=headers
        )
        answer = await self._exchange.send(
            request, "write", accept=REJECT_STATUS, resend_unknown=item.id is not None,
            attempt=attempt,
        )  # fmt: skip
        if answer.status in REJECT_STATUS:
            return PushOutcome(item.entry, rejected=rejection(answer.status, answer.json()))
        written = parse_written(
            answer.status,
            answer.json(),
            entry=item.entry,
            tracking_id=tracking_id,
            echoed=answer.headers.get("X-Tracking-ID"),
            sync_id=answer.headers.get("X-Sync-ID"),
        )
        if not written.echoed and not self._warned_no_echo:
            self._warned_no_echo = True
            log.warning("push.no_tracking_echo", tracking_id=tracking_id)
        if written.outcome.id is None:
            log.warning("push.confirmed_without_id", tracking_id=tracking_id, status=answer.status)
        return written.outcome

    async def _find_create(self, obj: str, item: PushItem, tracking_id: str) -> PushOutcome | None:
        """The outcome of a create that may have arrived, or None if it surely did not."""
        key = natural_key(item, self.settings.natural_key)
        if not isinstance(key, NaturalKey):
            return PushOutcome(item.entry, rejected=key)
        self.stats.lookup += 1
        request = self._exchange.http.build_request(
            "GET", object_path(obj), params={key.field: key.value},
            headers={"X-Tracking-ID": tracking_id},
        )  # fmt: skip
        answer = await self._exchange.send(
            request, "lookup", accept=NO_LOOKUP_STATUS, json_required=True
        )
        if answer.status in NO_LOOKUP_STATUS:
            return PushOutcome(
                item.entry,
                rejected=(
                    "create may have reached the destination; this destination cannot look "
                    f"records up by {key.field} (HTTP {answer.status}) — {RETRY_HINT}"
                ),
            )
        ids = parse_matches(answer.status, answer.json(), key)
        log.info("push.lookup", tracking_id=tracking_id, field=key.field, matches=len(ids))
        return resolve_lookup(item.entry, key, ids)


__all__ = ["CdmClient", "CdmProtocolError", "CdmSettings", "CdmStats"]
